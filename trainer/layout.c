/* layout.c: the parallel layout of a run chosen before it is queued. The estimate adds to
 * model_memory_estimate's buffers (the ones model_init_parallel and optim_init_sharded allocate)
 * what train_run puts beside them on the device: EWC's pairs, the Fisher pass's one-row model and
 * the bf16 weight copies; train_run prints the same figures at start. The search walks rank
 * counts upward, so the first layout that fits holds the fewest GPUs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "continual.h"
#include "layout.h"

#define LAYOUT_GIB (1024.0 * 1024.0 * 1024.0)
#define LAYOUT_MAX_TP 4096         /* parallel.tp's schema bound */
#define LAYOUT_MAX_WORLD (1 << 20) /* parallel.dp's schema bound */

/* EWC pairs held: one online; one per task (the tasks file's count) when separate. */
static int ewc_sets(const Config *cfg)
{
    if (!cfg->continual_ewc_enabled) return 0;
    if (strcmp(cfg->continual_ewc_mode, "separate") != 0 || !cfg->continual_tasks[0]) return 1;
    ContinualTasks *tasks = calloc(1, sizeof(*tasks));
    int n = 1;
    if (tasks && continual_tasks_load(cfg->continual_tasks, tasks) == DS_OK && tasks->count > 0)
        n = tasks->count;
    free(tasks);
    return n;
}

int layout_memory_estimate(const Config *cfg, const ModelConfig *mc, int tp, int dp, RunMemory *out)
{
    memset(out, 0, sizeof(*out));
    const int B = cfg->train_micro_batch_size, T = cfg->train_seq_len, zero = cfg->parallel_zero;
    const int ep = cfg->parallel_ep > 1 ? cfg->parallel_ep : 1;
    if (dp % ep != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.ep: %d does not divide parallel.dp %d (the experts are split "
                        "over ep ranks of each data-parallel group)",
                        ep, dp);
    ModelMemory mm;
    DS_TRY(model_memory_estimate_ep(mc, B, T, tp, dp, ep, zero, &mm));
    out->params = (double)mm.params;
    out->grads = (double)mm.grads;
    out->optimizer = (double)mm.optimizer;
    out->activations = (double)mm.activations;
    /* the bf16 working copies: cuda in bf16 (auto is bf16 there; not fp32 or tf32), unless
     * cuda.weight_copy is none (auto counts them: it drops them only where they do not fit) */
    const int bf16 = strcmp(cfg->device, "cuda") == 0 &&
                     (strcmp(cfg->precision, "bf16") == 0 || strcmp(cfg->precision, "auto") == 0) &&
                     strcmp(cfg->cuda_weight_copy, "none") != 0;
    int copies = bf16;
    if (cfg->continual_ewc_enabled) {
        out->ewc = (double)mm.optimizer * ewc_sets(cfg);
        if (!cfg->continual_ewc_fisher_batched && B != 1) { /* as run_setup_continual makes it */
            ModelMemory one;
            DS_TRY(model_memory_estimate_ep(mc, 1, T, tp, dp, ep, zero, &one));
            out->fisher_model = (double)one.params + (double)one.grads + (double)one.activations;
            copies += bf16;
        }
    }
    out->weights_bf16 = copies * (double)mm.params / 2; /* 2 bytes a parameter */
    out->total = out->params + out->grads + out->optimizer + out->activations + out->ewc +
                 out->fisher_model + out->weights_bf16;
    return DS_OK;
}

/* The nodes that hold world ranks in equal shares of whole tensor-parallel groups: the nodes
 * asked for, else one node up to node_ranks ranks and full nodes beyond; 0 when they cannot. */
static int layout_nodes(const LayoutRequest *rq, int tp, int world)
{
    const int n = rq->nodes ? rq->nodes : world <= rq->node_ranks ? 1 : world / rq->node_ranks;
    if (n < 1 || world % n || world / n > rq->node_ranks || (world / n) % tp) return 0;
    return n;
}

/* The checkpointing modes that keep less than the config's, with what the run would take in each
 * at tp x dp, for the refusal's advice ("set train.activation_checkpointing: selective (the
 * least then 93.8 GiB) or true (57.9 GiB), "); "" when the config's keeps the least already. */
static void checkpointing_hint(const Config *cfg, const ModelConfig *mc, int tp, int dp, char *out,
                               size_t cap)
{
    /* from the most kept to the least: none, selective, true */
    static const struct {
        int mode;
        const char *word;
    } modes[] = {{CKPT_NONE, "false"}, {CKPT_SELECTIVE, "selective"}, {CKPT_FULL, "true"}};
    size_t at = 0;
    int from = 0, listed = 0;
    while (from < 3 && modes[from].mode != mc->activation_checkpointing)
        from++;
    out[0] = 0;
    for (int i = from + 1; i < 3; i++) {
        ModelConfig other = *mc;
        other.activation_checkpointing = modes[i].mode;
        RunMemory m;
        if (layout_memory_estimate(cfg, &other, tp, dp, &m) != DS_OK) {
            ds_clear_error(); /* a mode the architecture has not: not offered */
            continue;
        }
        at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "%s%s (%s%.1f GiB)",
                               listed ? " or " : "set train.activation_checkpointing: ",
                               modes[i].word, listed ? "" : "the least then ", m.total / LAYOUT_GIB);
        listed++;
    }
    if (listed && at < cap) snprintf(out + at, cap - at, ", ");
}

int layout_choose(const Config *cfg, const ModelConfig *mc, const LayoutRequest *rq, Layout *out)
{
    memset(out, 0, sizeof(*out));
    const double GiB = LAYOUT_GIB;
    const int max_tp = rq->node_ranks < LAYOUT_MAX_TP ? rq->node_ranks : LAYOUT_MAX_TP;
    if (rq->tp > max_tp)
        return ds_error(DS_ERR_INPUT,
                        "parallel.tp: %d ranks do not fit on one node of %d (--node-gpus); a "
                        "tensor-parallel group shares a node",
                        rq->tp, rq->node_ranks);
    if (rq->tp > 0 && rq->dp > 0) { /* the config fixes the layout: checked, never searched */
        const long long world = (long long)rq->tp * rq->dp;
        if (rq->world > 0 && world != rq->world)
            return ds_error(DS_ERR_INPUT,
                            "parallel.tp x parallel.dp: %d x %d = %lld ranks, but the job has %d "
                            "(--nodes x --gpus-per-node or --tasks-per-node); set parallel.dp: "
                            "auto or leave those options out",
                            rq->tp, rq->dp, world, rq->world);
        if (world > LAYOUT_MAX_WORLD)
            return ds_error(DS_ERR_INPUT, "parallel.tp x parallel.dp: %lld ranks is too many",
                            world);
        const int nodes = layout_nodes(rq, rq->tp, (int)world);
        if (!nodes)
            return ds_error(DS_ERR_INPUT,
                            "parallel.tp x parallel.dp: %d x %d = %lld ranks do not go on %s%d "
                            "node%s of at most %d ranks (--node-gpus) in whole tensor-parallel "
                            "groups",
                            rq->tp, rq->dp, world, rq->nodes ? "" : "any number of ",
                            rq->nodes ? rq->nodes : 1, rq->nodes == 1 ? "" : "s", rq->node_ranks);
        RunMemory m;
        DS_TRY(layout_memory_estimate(cfg, mc, rq->tp, rq->dp, &m));
        *out = (Layout){.tp = rq->tp,
                        .dp = rq->dp,
                        .nodes = nodes,
                        .ranks_per_node = (int)world / nodes,
                        .memory = m,
                        .fits = rq->budget <= 0 || m.total <= rq->budget};
        return DS_OK;
    }

    if (rq->budget <= 0) { /* nothing to fit: the trainer's own auto (comm_grid_init) */
        const int world = rq->world ? rq->world : (rq->tp ? rq->tp : 1) * (rq->dp ? rq->dp : 1);
        const int tp = rq->tp ? rq->tp : rq->dp ? world / rq->dp : 1;
        if (tp < 1 || world % tp || (rq->dp && tp * rq->dp != world))
            return ds_error(DS_ERR_INPUT,
                            "parallel.%s: %d does not divide the job's %d ranks "
                            "(--nodes x --tasks-per-node)",
                            rq->tp ? "tp" : "dp", rq->tp ? rq->tp : rq->dp, world);
        const int nodes = layout_nodes(rq, tp, world);
        if (!nodes)
            return ds_error(DS_ERR_INPUT,
                            "parallel layout: tp %d x dp %d does not go on %d node%s in whole "
                            "tensor-parallel groups",
                            tp, world / tp, rq->nodes, rq->nodes == 1 ? "" : "s");
        RunMemory m;
        DS_TRY(layout_memory_estimate(cfg, mc, tp, world / tp, &m));
        *out = (Layout){.tp = tp,
                        .dp = world / tp,
                        .nodes = nodes,
                        .ranks_per_node = world / nodes,
                        .memory = m,
                        .fits = 1};
        return DS_OK;
    }

    /* Each tp is judged once, at its smallest dp: more data-parallel ranks take off no more
     * than the sharded optimizer and EWC state, so a tp whose rest does not fit never will. */
    enum { TP_UNKNOWN, TP_ALIVE, TP_DEAD };
    char state[LAYOUT_MAX_TP + 1];
    memset(state, TP_UNKNOWN, sizeof(state));
    char refused[512] = "";
    double least = -1, least_floor = -1;
    int least_tp = 0, least_dp = 0, least_floor_tp = 0, alive = 0;
    const int dp_shards = !rq->dp && cfg->parallel_zero;
    const int ep = cfg->parallel_ep > 1 ? cfg->parallel_ep : 1; /* dp is a multiple of it */
    for (int tp = 1; tp <= max_tp; tp++) {
        if ((rq->tp && tp != rq->tp) || (rq->world && rq->world % tp)) continue;
        if (rq->world && rq->dp && tp * rq->dp != rq->world) continue;
        const int dp = rq->dp ? rq->dp : rq->world ? rq->world / tp : ep;
        RunMemory m;
        if (layout_memory_estimate(cfg, mc, tp, dp, &m) != DS_OK) {
            if (rq->tp) return DS_ERR_INPUT; /* the config's own tp: its message stands */
            if (!refused[0]) snprintf(refused, sizeof(refused), "%s", ds_last_error());
            state[tp] = TP_DEAD;
            continue;
        }
        const double floor = dp_shards && !rq->world ? m.total - m.optimizer - m.ewc : m.total;
        if (least < 0 || m.total < least) least = m.total, least_tp = tp, least_dp = dp;
        if (least_floor < 0 || floor < least_floor) least_floor = floor, least_floor_tp = tp;
        state[tp] = rq->budget > 0 && floor > rq->budget ? TP_DEAD : TP_ALIVE;
        alive += state[tp] == TP_ALIVE;
    }

    /* Each live tp's fewest ranks: its smallest dp that fits (found by halving: the estimate
     * falls as dp grows, up to the padding of the shards) and goes on the nodes. */
    int placed = 0;
    Layout best = {0};
    for (int tp = 1; tp <= max_tp; tp++) {
        if (state[tp] != TP_ALIVE) continue;
        const int max_dp = rq->dp ? rq->dp : rq->world ? rq->world / tp : LAYOUT_MAX_WORLD / tp;
        int dp = rq->dp ? rq->dp : rq->world ? rq->world / tp : ep;
        RunMemory m;
        if (rq->budget > 0 && !rq->dp && !rq->world) {
            /* the smallest multiple of ep, lo * ep with lo in [lo, hi], that fits, if any */
            int lo = 1, hi = max_dp / ep > 0 ? max_dp / ep : 1;
            while (lo < hi) {
                const int mid = lo + (hi - lo) / 2;
                DS_TRY(layout_memory_estimate(cfg, mc, tp, mid * ep, &m));
                if (m.total <= rq->budget)
                    hi = mid;
                else
                    lo = mid + 1;
            }
            dp = lo * ep;
        }
        for (const int first = dp; dp <= max_dp && dp - first <= 4096; dp++) {
            if (dp % ep) continue;
            const int nodes = layout_nodes(rq, tp, tp * dp);
            if (!nodes) continue;
            placed = 1;
            DS_TRY(layout_memory_estimate(cfg, mc, tp, dp, &m));
            if (rq->budget <= 0 || m.total <= rq->budget) {
                const int world = tp * dp, best_world = best.tp * best.dp;
                if (!best.tp || world < best_world || (world == best_world && dp < best.dp))
                    best = (Layout){.tp = tp,
                                    .dp = dp,
                                    .nodes = nodes,
                                    .ranks_per_node = world / nodes,
                                    .memory = m,
                                    .fits = 1};
                break;
            }
        }
    }
    if (best.tp) {
        *out = best;
        return DS_OK;
    }

    /* nothing: one line that says why */
    char where[96] = "", sharding[200] = "";
    if (rq->world) snprintf(where, sizeof(where), " on the job's %d ranks", rq->world);
    if (least < 0) /* no tensor-parallel size splits the model */
        return ds_error(DS_ERR_INPUT,
                        "parallel layout: no parallel.tp up to %d%s splits the "
                        "model: %s",
                        max_tp, where, refused);
    if (alive && !placed)
        return ds_error(DS_ERR_INPUT,
                        "parallel layout: no tp x dp%s goes on %s%d node%s of at most %d ranks "
                        "(--node-gpus) in whole tensor-parallel groups",
                        where, rq->nodes ? "" : "any number of ", rq->nodes ? rq->nodes : 1,
                        rq->nodes == 1 ? "" : "s", rq->node_ranks);
    if (dp_shards && !rq->world)
        snprintf(sharding, sizeof(sharding),
                 "; more data-parallel ranks take off only the optimizer and EWC state (at least "
                 "%.1f GiB at tp %d)",
                 least_floor / GiB, least_floor_tp);
    char checkpointing[160];
    checkpointing_hint(cfg, mc, least_tp, least_dp, checkpointing, sizeof(checkpointing));
    return ds_error(DS_ERR_INPUT,
                    "parallel layout: nothing fits %.1f GiB per GPU (--gpu-mem)%s: the least is "
                    "%.1f GiB at tp %d x dp %d for micro_batch_size %d x seq_len %d%s; lower "
                    "train.micro_batch_size or train.seq_len, %sor use GPUs with more memory",
                    rq->budget / GiB, where, least / GiB, least_tp, least_dp,
                    cfg->train_micro_batch_size, cfg->train_seq_len, sharding, checkpointing);
}
