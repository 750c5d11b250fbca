/* optim.c: AdamW, LR schedule and gradient clipping; see optim.h. Matches torch.optim.AdamW
 * with torch.nn.utils.clip_grad_norm_ semantics, which the parity tests check. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ewc.h"

int optim_init(Optimizer *opt, const ParamTable *table)
{
    return optim_init_on(opt, table, backend_cpu());
}

int optim_init_on(Optimizer *opt, const ParamTable *table, const Backend *be)
{
    memset(opt, 0, sizeof(*opt));
    opt->be = be;
    opt->n = table->total;
    /* zeroed, in the memory the backend's adamw_update works on */
    opt->m = be->mem_alloc(be, opt->n * sizeof(float));
    opt->v = be->mem_alloc(be, opt->n * sizeof(float));
    return opt->m && opt->v ? DS_OK : DS_ERR_INTERNAL;
}

int optim_init_sharded(Optimizer *opt, const ParamTable *table, const Backend *be,
                       const ProcessGrid *grid, int zero)
{
    /* the ranks that hold the same experts share out the whole layout (all of dp when ep = 1) */
    const int shards = grid ? grid->edp_size : 1;
    if (!zero || shards == 1) {
        return optim_init_on(opt, table, be); /* one shard: plain AdamW, nothing to gather */
    }
    if (table->total % (size_t)shards != 0)
        return ds_error(DS_ERR_INTERNAL,
                        "optim: flat layout of %zu elements does not split into %d shards",
                        table->total, shards);
    memset(opt, 0, sizeof(*opt));
    opt->be = be;
    opt->zero = 1;
    opt->n = table->total / (size_t)shards;
    opt->shard_begin = (size_t)grid->edp_rank * opt->n;
    float *m = be->mem_alloc(be, opt->n * sizeof(float)),
          *v = be->mem_alloc(be, opt->n * sizeof(float));
    if (!m || !v) {
        be->mem_free(be, m);
        be->mem_free(be, v);
        return DS_ERR_INTERNAL;
    }
    /* indexed by flat offset (see optim.h): only [shard_begin, shard_begin + n) is touched */
    opt->m = m - opt->shard_begin;
    opt->v = v - opt->shard_begin;
    return DS_OK;
}

void optim_free(Optimizer *opt)
{
    if (opt->be) {
        opt->be->mem_free(opt->be, opt->m ? opt->m + opt->shard_begin : NULL);
        opt->be->mem_free(opt->be, opt->v ? opt->v + opt->shard_begin : NULL);
    }
    memset(opt, 0, sizeof(*opt));
}

float optim_lr_at(const Config *cfg, int step)
{
    const double peak = cfg->optim_lr, floor_lr = cfg->optim_lr * cfg->optim_min_lr_ratio;
    const int warmup = cfg->optim_warmup_steps, total = cfg->train_steps;
    if (step < warmup) return (float)(peak * (step + 1) / warmup);
    if (strcmp(cfg->optim_schedule, "constant") == 0 || total <= warmup) return (float)peak;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    double decay = strcmp(cfg->optim_schedule, "linear") == 0 ? 1.0 - progress
                                                              : 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(floor_lr + (peak - floor_lr) * decay);
}

/* Sums of squares of ranges of the gradients, added in the order they are given; the backend
 * sums up to SUM_SQUARES_BATCH ranges per call, so a device is waited for once per batch. */
typedef struct SquareSums {
    const Backend *be;
    const float *xs[SUM_SQUARES_BATCH];
    size_t ns[SUM_SQUARES_BATCH];
    int count;
    double total;
} SquareSums;

static void square_sums_flush(SquareSums *s)
{
    double sums[SUM_SQUARES_BATCH];
    s->be->sum_squares_batch(s->be, sums, s->xs, s->ns, s->count);
    for (int i = 0; i < s->count; i++)
        s->total += sums[i];
    s->count = 0;
}

static void square_sums_add(SquareSums *s, const float *x, size_t n)
{
    s->xs[s->count] = x;
    s->ns[s->count] = n;
    if (++s->count == SUM_SQUARES_BATCH) square_sums_flush(s);
}

static double square_sums_total(SquareSums *s)
{
    if (s->count) square_sums_flush(s);
    return s->total;
}

double optim_grad_norm(const Model *m)
{
    SquareSums sums = {.be = m->be};
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        square_sums_add(&sums, m->grads + p->offset, p->numel);
    }
    return sqrt(square_sums_total(&sums));
}

int optim_reduce_flat(const Optimizer *opt, const ParamTable *table, float *buf,
                      const ProcessGrid *grid)
{
    if (!grid || grid->dp_size == 1) return DS_OK;
    /* over the ranks that hold the same experts: reduce-scattered into this rank's shard
     * (ZeRO-1) or all-reduced */
    const CommGroup *edp = comm_edp(grid);
    if (opt->zero)
        DS_TRY(comm_reduce_scatter(edp, buf, opt->n, COMM_F32));
    else
        DS_TRY(comm_all_reduce(edp, buf, table->total, COMM_F32, COMM_SUM));
    if (grid->ep_size == 1) return DS_OK;
    /* the tensors other than the routed experts, alike on the expert-parallel ranks, are summed
     * over those ranks too: the part of [0, experts_begin) this rank holds */
    const size_t lo = opt->zero ? opt->shard_begin : 0;
    const size_t hi = opt->zero ? opt->shard_begin + opt->n : table->total;
    const size_t end = hi < table->experts_begin ? hi : table->experts_begin;
    if (lo >= end) return DS_OK;
    return comm_all_reduce(&grid->ep, buf + lo, end - lo, COMM_F32, COMM_SUM);
}

int optim_reduce_grads(const Optimizer *opt, Model *m, const ProcessGrid *grid)
{
    DS_TRY(model_reduce_shared_grads(m));
    return optim_reduce_flat(opt, &m->table, m->grads, grid);
}

/* [begin, end) of parameter p inside flat range [lo, hi); begin >= end when they miss. */
static void param_range(const ParamInfo *p, size_t lo, size_t hi, size_t *begin, size_t *end)
{
    *begin = p->offset > lo ? p->offset : lo;
    *end = p->offset + p->numel < hi ? p->offset + p->numel : hi;
}

int optim_grad_norm_global(const Optimizer *opt, const Model *m, const ProcessGrid *grid,
                           double *norm)
{
    /* the range this rank counts: its shard, or (gradients replicated over dp) all of them on
     * dp rank 0 only */
    size_t lo = opt->shard_begin, hi = opt->shard_begin + opt->n;
    if (!opt->zero && grid && grid->edp_rank != 0) hi = lo;
    SquareSums sums = {.be = m->be};
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        size_t b, e;
        param_range(p, lo, hi, &b, &e);
        if (p->tp_copy || b >= e) continue;
        square_sums_add(&sums, m->grads + b, e - b);
    }
    double sum = square_sums_total(&sums);
    if (grid) DS_TRY(comm_all_reduce(&grid->world, &sum, 1, COMM_F64, COMM_SUM));
    *norm = sqrt(sum);
    return DS_OK;
}

int optim_gather_params(const Optimizer *opt, Model *m, const ProcessGrid *grid)
{
    if (!opt->zero || !grid || grid->edp_size == 1) return DS_OK;
    DS_TRY(comm_all_gather(comm_edp(grid), m->params, opt->n, COMM_F32));
    /* the other ranks' shards were written outside the backend's ops (ops.h) */
    if (m->be->weights_touched) m->be->weights_touched(m->be, m->params);
    return DS_OK;
}

float optim_clip_scale(double grad_norm, float max_norm)
{
    if (max_norm <= 0 || grad_norm <= max_norm) return 1.0f;
    return (float)(max_norm / (grad_norm + 1e-6));
}

void optim_step(Optimizer *opt, Model *m, const Config *cfg, float lr, float grad_scale)
{
    opt->t++;
    opt->ewc_penalty = 0.0;
    /* each parameter's part inside this rank's shard (all of it without ZeRO), so that weight
     * decay follows the parameter */
    const size_t lo = opt->shard_begin, hi = opt->shard_begin + opt->n;
    const float *fisher[EWC_MAX_SETS], *anchor[EWC_MAX_SETS]; /* EWC's pairs at this parameter */
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        float wd = p->weight_decay ? cfg->optim_weight_decay : 0.0f;
        size_t b, e;
        param_range(p, lo, hi, &b, &e);
        if (b >= e) continue;
        if (opt->ewc && opt->ewc->n_sets > 0) {
            /* the pairs lie in the backend's memory beside the moments (ewc_init_on) */
            const int sets = ewc_sets_at(opt->ewc, b, fisher, anchor);
            m->be->adamw_ewc_update(m->be, m->params + b, m->grads + b, opt->m + b, opt->v + b,
                                    e - b, lr, cfg->optim_beta1, cfg->optim_beta2, cfg->optim_eps,
                                    wd, grad_scale, opt->t, fisher, anchor, sets, opt->ewc->lambda,
                                    opt->ewc->decay == EWC_DECAY_ANCHOR, &opt->ewc_penalty);
            continue;
        }
        m->be->adamw_update(m->be, m->params + b, m->grads + b, opt->m + b, opt->v + b, e - b, lr,
                            cfg->optim_beta1, cfg->optim_beta2, cfg->optim_eps, wd, grad_scale,
                            opt->t);
    }
}
