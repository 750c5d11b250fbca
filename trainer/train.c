/* train.c: the one training loop. A run is a list of phases (a plain run: one, over data.train;
 * a task sequence: one per task of continual.tasks) trained by the same step function and the
 * same loop: checkpoints and resume inside a phase, signals, non-finite skipping, progress,
 * metrics, data mixtures and every parallel layout hold in every phase. Between phases a task
 * sequence runs continual.c's work (evaluation of every task seen, the Fisher pass, the
 * continual state). Every rank of the process grid (comm/) runs the loop in step; world rank 0
 * alone writes the run directory's shared files and prints, and a rank that fails takes the job
 * down. Everything a step touches is allocated before the first step. */
#define _GNU_SOURCE /* strcasestr-free; O_NOFOLLOW, ftw */
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../checkpoint/export.h"
#include "../checkpoint/hf_model.h"
#include "../checkpoint/model_path.h"
#include "../checkpoint/safetensors.h"
#include "../data/dataset.h"
#include "../data/reader.h"
#include "common.h"
#include "continual.h"
#include "layout.h"
#include "memory.h"
#include "metrics_server.h"
#include "optim.h"
#include "progress.h"
#include "run.h"
#include "signals.h"

int train_model_config(const Config *cfg, ModelConfig *mc)
{
    if (cfg->model_path[0]) {
        DS_TRY(hf_config_load_with(cfg->model_path,
                                   cfg->model_allow_extra_tensors ? HF_EXTRA_WARN : HF_EXTRA_REFUSE,
                                   mc));
        if (mc->num_labels > 0 && strcmp(cfg->task_type, "classification") != 0)
            return ds_error(DS_ERR_INPUT,
                            "model.path: %s is a sequence classifier (%d labels); set "
                            "task.type: classification and task.num_labels: %d",
                            cfg->model_path, mc->num_labels, mc->num_labels);
    } else
        DS_TRY(model_preset(cfg->model_preset, mc));
    mc->activation_checkpointing = cfg->train_activation_checkpointing;
    mc->moe_balance_alpha = cfg->moe_balance_loss;
    if (cfg->moe_balance_loss > 0 && mc->n_routed_experts <= 0)
        return ds_error(DS_ERR_INPUT,
                        "moe.balance_loss: %g: the model (%s) has no routed experts; set it to 0",
                        cfg->moe_balance_loss, model_arch_name(mc->arch));
    if (cfg->moe_bias_update_rate > 0 &&
        !(mc->n_routed_experts > 0 && mc->topk_method == MOE_NOAUX_TC))
        return ds_error(DS_ERR_INPUT,
                        "moe.bias_update_rate: %g: the model (%s) has no score correction bias "
                        "to update (only DeepSeek-V3's noaux_tc routing has one); set it to 0",
                        cfg->moe_bias_update_rate, model_arch_name(mc->arch));
    return cfg->model_path[0] ? DS_OK : model_config_check(mc, "model.preset");
}

const char *train_data_path(const char *configured, const char *bundled_name, char *buf,
                            size_t size)
{
    if (configured[0]) return configured;
    snprintf(buf, size, "%s/data/bundled/%s", DSTRAIN_SOURCE_DIR, bundled_name);
    return buf;
}

/* run.save_final: the full fp32 parameters in <run_dir>/final.safetensors, each tensor put
 * together on world rank 0 from the tensor-parallel slices (a check and debugging aid, not the
 * export: it holds the whole model in rank 0's memory). Collective over the grid. */
int train_save_final(const Model *m, const ProcessGrid *g, const char *run_dir)
{
    /* every tensor of this tensor-parallel slice, all experts included: with expert
     * parallelism an expert's slice comes from the rank of the expert-parallel group that
     * holds it (its table lists this rank's experts only) */
    ParamTable whole = {0};
    DS_TRY(param_table_build_tp(&m->cfg, g->tp_rank, g->tp_size, &whole));
    const ParamTable *pt = &whole;
    const int tp = g->tp_size, writer = g->world_rank == 0;
    int status = DS_OK;
    int here = 0; /* the cursor into m->table: its tensors are whole's, in whole's order */
    size_t largest = 0;
    for (int i = 0; i < pt->count; i++)
        if (pt->items[i].numel > largest) largest = pt->items[i].numel;
    ParamTable *tables = ds_calloc((size_t)tp, sizeof(ParamTable)); /* where each slice goes */
    float *gathered = ds_malloc(largest * tp * sizeof(float));
    float **full = ds_calloc((size_t)pt->count, sizeof(float *));
    STWriteItem *items = ds_calloc((size_t)pt->count, sizeof(STWriteItem));
    if (!tables || !gathered || !full || !items) status = DS_ERR_INTERNAL;
    for (int r = 0; r < tp && status == DS_OK; r++)
        status = param_table_build_tp(&m->cfg, r, tp, &tables[r]);
    for (int i = 0; i < pt->count && status == DS_OK; i++) {
        const ParamInfo *p = &pt->items[i];
        const size_t cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
        float *mine = gathered + (size_t)g->tp_rank * p->numel;
        const int held = here < m->table.count && strcmp(m->table.items[here].name, p->name) == 0;
        if (held)
            m->be->mem_to_host(m->be, mine, m->params + m->table.items[here++].offset,
                               p->numel * sizeof(float));
        if (p->expert >= 0 && g->ep_size > 1 &&
            (status = comm_broadcast(&g->ep, mine, p->numel, COMM_F32,
                                     p->expert / m->experts_local)) != DS_OK)
            break;
        if ((status = comm_all_gather(&g->tp, gathered, p->numel, COMM_F32)) != DS_OK) break;
        if (!writer) continue;
        full[i] = ds_malloc((size_t)p->shape[0] * cols * sizeof(float));
        if (!full[i]) {
            status = DS_ERR_INTERNAL;
            break;
        }
        for (int r = 0; r < tp; r++) {
            const ParamInfo *q = &tables[r].items[i];
            const float *src = gathered + (size_t)r * p->numel;
            const size_t s = (size_t)q->slice_start, n = (size_t)q->slice_len;
            if (q->split_dim < 0)
                memcpy(full[i], src, p->numel * sizeof(float));
            else if (q->split_dim == 0)
                memcpy(full[i] + s * cols, src, n * cols * sizeof(float));
            else
                for (size_t row = 0; row < (size_t)p->shape[0]; row++)
                    memcpy(full[i] + row * cols + s, src + row * n, n * sizeof(float));
        }
        items[i].name = p->name;
        items[i].dtype = DT_F32;
        items[i].ndim = p->ndim;
        items[i].shape[0] = p->shape[0];
        items[i].shape[1] = p->shape[1];
        items[i].data = full[i];
    }
    if (status == DS_OK && writer) {
        char path[CONFIG_STR_MAX + 64];
        snprintf(path, sizeof(path), "%s/final.safetensors", run_dir);
        status = safetensors_write(path, items, pt->count, "{\"format\":\"pt\"}");
    }
    for (int i = 0; full && i < pt->count; i++)
        free(full[i]);
    for (int r = 0; tables && r < tp; r++)
        param_table_free(&tables[r]);
    param_table_free(&whole);
    free(tables);
    free(gathered);
    free(full);
    free(items);
    return status;
}

/* CkptAllMinFn over a comm group: MIN as the MAX of the negation. */
static int train_all_min(void *group, int local, int *global)
{
    int64_t v = -(int64_t)local;
    DS_TRY(comm_all_reduce((const CommGroup *)group, &v, 1, COMM_I64, COMM_MAX));
    *global = (int)-v;
    return DS_OK;
}

/* The backend device: names (cpu, cuda) selects, in the precision asked for. */
int train_backend(const Config *cfg, const Backend **be)
{
    BackendOptions o = {.device = cfg->device,
                        .precision = cfg->precision,
                        .attention = cfg->cuda_attention,
                        .experts = cfg->cuda_experts,
                        .weight_copy = cfg->cuda_weight_copy};
    return backend_create(&o, be);
}

typedef struct {
    const char *dir;
    const ModelConfig *mc;
    const ParamTable *table;
    uint64_t seed;
    int resolved; /* dir is a model path (a checkpoint or a Hugging Face directory) */
} WeightsRead;

static int weights_read(void *ctx, float *host, size_t first, size_t len)
{
    (void)first, (void)len; /* one piece: the whole table */
    const WeightsRead *w = ctx;
    return w->resolved ? model_path_load_weights(w->dir, w->mc, w->table, host)
                       : hf_load_weights_seeded(w->dir, w->mc, w->table, host, w->seed);
}

/* Weights are read into host memory; on a device backend through a host staging buffer. */
static int train_load_weights(const char *dir, const ModelConfig *mc, Model *m, uint64_t seed)
{
    WeightsRead w = {dir, mc, &m->table, seed, 0};
    return backend_stage(m->be, m->params, m->table.total, STAGE_WRITE, 0, NULL, weights_read,
                         &w);
}

int model_load_path(Model *m, const char *dir, const ModelConfig *mc)
{
    WeightsRead w = {dir, mc, &m->table, 0, 1};
    return backend_stage(m->be, m->params, m->table.total, STAGE_WRITE, 0, NULL, weights_read,
                         &w);
}

/* ---- phases -------------------------------------------------------------------------------- */

static char bundled_train[CONFIG_STR_MAX];

/* The phases of the run: one per task of the tasks file, or the plain run's one. Steps of
 * phases given in epochs are resolved later, from the data (run_check_data). */
static int run_build_phases(Run *r)
{
    const Config *cfg = r->cfg;
    if (r->tasks) {
        r->n_phases = r->tasks->count;
        r->sequence = 1;
    } else {
        r->n_phases = 1;
    }
    r->phases = ds_calloc((size_t)r->n_phases, sizeof(Phase));
    if (!r->phases) return DS_ERR_INTERNAL;
    for (int k = 0; k < r->n_phases; k++) {
        Phase *ph = &r->phases[k];
        if (r->tasks) {
            const ContinualTask *t = &r->tasks->items[k];
            snprintf(ph->id, sizeof(ph->id), "%s", t->id);
            for (int i = 0; i < t->train.count; i++)
                ph->sources[i] = (DataSource){t->train.items[i].path, t->train.items[i].weight};
            ph->n_sources = t->train.count;
            ph->eval[0] = t->eval;
            ph->n_eval = 1;
            ph->matrix_eval = t->eval;
            ph->steps = t->steps;
            snprintf(ph->where, sizeof(ph->where), "%s:%d: tasks[%d]", cfg->continual_tasks,
                     t->train_line ? t->train_line : t->line, k);
            snprintf(ph->where_eval, sizeof(ph->where_eval), "%s:%d: tasks[%d]",
                     cfg->continual_tasks, t->eval_line ? t->eval_line : t->line, k);
        } else {
            snprintf(ph->id, sizeof(ph->id), "train");
            if (cfg->data_train_files.count == 0) {
                snprintf(bundled_train, sizeof(bundled_train), "%s/data/bundled/kjv-train.h5",
                         DSTRAIN_SOURCE_DIR);
                ph->sources[0] = (DataSource){bundled_train, 1.0};
                ph->n_sources = 1;
            } else {
                for (int i = 0; i < cfg->data_train_files.count; i++)
                    ph->sources[i] = (DataSource){cfg->data_train_files.items[i].path,
                                                  cfg->data_train_files.items[i].weight};
                ph->n_sources = cfg->data_train_files.count;
            }
            if (cfg->eval_every > 0)
                for (int i = 0; i < cfg->data_eval_files.count; i++)
                    ph->eval[ph->n_eval++] = cfg->data_eval_files.items[i].path;
            ph->steps = cfg->train_steps;
            snprintf(ph->where, sizeof(ph->where), "%sdata", cfg->data_train_where);
            snprintf(ph->where_eval, sizeof(ph->where_eval), "%sdata", cfg->data_eval_where);
        }
    }
    return DS_OK;
}

/* Batches read ahead: two steps' worth, at least 4, so one slow read does not stall a step. */
static int run_prefetch(int rows)
{
    return rows < 4 ? 4 : rows > 256 ? 256 : rows;
}

/* The options of phase k's training reader: this rank's rows of every step (sharded over dp),
 * or with replay on every row of the global order, one at a time, on every rank. */
static DataReaderOptions run_reader_options(const Run *r, int k, DataMode mode)
{
    const Config *cfg = r->cfg;
    const Phase *ph = &r->phases[k];
    DataReaderOptions o = {
        .mode = mode,
        .sources = ph->sources,
        .n_sources = ph->n_sources,
        .model_vocab = r->mc.vocab_size,
        .num_labels = r->cls ? cfg->task_num_labels : 0,
        .seq_len = r->T,
        .micro_batch = r->global_rows ? 1 : r->B,
        .grad_accum = r->global_rows ? 1 : r->accum,
        .dp_rank = r->global_rows ? 0 : r->grid.dp_rank,
        .dp_size = r->global_rows ? 1 : r->grid.dp_size,
        /* the plain run keeps train.seed's order; task k its own */
        .seed = r->sequence ? (uint64_t)cfg->train_seed * 1000003ull + (uint64_t)k + 1
                            : (uint64_t)cfg->train_seed,
        .prefetch = run_prefetch(r->global_rows ? 2 * r->G : 2 * r->accum),
        .has_fallback_pad = r->mc.pad_token_id >= 0,
        .fallback_pad_id = r->mc.pad_token_id,
    };
    return o;
}

/* An evaluation reader of one file: this rank's B rows of each global batch, in a fixed order. */
static DataReaderOptions run_eval_options(const Run *r, const DataSource *src, DataMode mode)
{
    DataReaderOptions e = run_reader_options(r, 0, mode);
    e.sources = src;
    e.n_sources = 1;
    e.micro_batch = r->B;
    e.grad_accum = 1;
    e.dp_rank = r->grid.dp_rank;
    e.dp_size = r->grid.dp_size;
    e.seed = 0;
    e.prefetch = 2;
    return e;
}

/* Open (and close again) every data file of every phase before the model's weights are loaded,
 * so that a typo in the last task's path stops the run at once; resolve steps given in epochs. */
static int run_check_data(Run *r, int replay_from_start)
{
    const Config *cfg = r->cfg;
    DS_TRY(data_mode_parse(cfg->data_mode, &r->mode));
    /* task.type classification reads classification examples; data.mode lm is the default */
    if (r->cls && r->mode == DATA_MODE_LM) r->mode = DATA_MODE_CLASSIFICATION;
    if (r->cls != (r->mode == DATA_MODE_CLASSIFICATION))
        return ds_error(DS_ERR_INPUT,
                        "config: data.mode %s does not go with task.type %s (classification "
                        "needs both)",
                        cfg->data_mode, cfg->task_type);
    const DataMode mode = r->mode;
    int first = 0;
    for (int k = 0; k < r->n_phases; k++) {
        Phase *ph = &r->phases[k];
        DataReaderOptions o = run_reader_options(r, k, mode);
        o.prefetch = 0;
        DataReader *rd = NULL;
        int status = data_reader_open(&o, &rd);
        if (status != DS_OK)
            return ds_error_context(status, "%s.train", ph->where);
        int64_t per_epoch = 0;
        for (int s = 0; s < ph->n_sources; s++) per_epoch += data_reader_samples_per_epoch(rd, s);
        data_reader_close(rd);
        for (int e = 0; e < ph->n_eval; e++) {
            DataSource src = {ph->eval[e], 1.0};
            DataReaderOptions eo = run_eval_options(r, &src, mode);
            eo.prefetch = 0;
            if ((status = data_reader_open(&eo, &rd)) != DS_OK)
                return ds_error_context(status, "%s.eval", ph->where_eval);
            data_reader_close(rd);
        }
        if (r->tasks && r->tasks->items[k].epochs > 0) {
            /* fresh rows a step: the replayed ones are not the task's */
            const int replays = r->replay_on && (k > 0 || replay_from_start);
            const int fresh = (r->G - (replays ? r->n_replay_rows : 0)) * r->accum;
            ph->steps = (int)ceil(r->tasks->items[k].epochs * (double)per_epoch /
                                  (fresh > 0 ? fresh : 1));
            if (ph->steps < 1) ph->steps = 1;
        }
        ph->first_step = first;
        if (ph->steps > 1000000000 - first)
            return ds_error(DS_ERR_INPUT, "%s: more than 10^9 steps in all", ph->where);
        first += ph->steps;
    }
    r->total_steps = first;
    return DS_OK;
}

/* ---- the run directory ----------------------------------------------------------------------- */

/* mkdir -p */
static int make_dirs(const char *path)
{
    char tmp[CONFIG_STR_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return ds_error(DS_ERR_INPUT, "run.dir: cannot create %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return ds_error(DS_ERR_INPUT, "run.dir: cannot create %s: %s", tmp, strerror(errno));
    return DS_OK;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) != 0 && errno != ENOENT ? -1 : 0;
}

/* What an earlier run left in the directory: 1 when anything but the lock file is there. */
static int run_dir_used(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int used = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, ".lock"))
            used = 1;
    closedir(d);
    return used;
}

/* Rank 0: take the run directory. A directory another process holds (its lock) is refused; a
 * directory an earlier run filled is refused unless resuming (train.resume) or told to start
 * over (run.overwrite: then its checkpoints, export, metrics and continual files are removed,
 * links not followed). The lock stays held until the process ends. */
static int run_dir_take(const Config *cfg, const char *dir, int *lock_fd)
{
    char path[CONFIG_STR_MAX + 64];
    DS_TRY(make_dirs(dir));
    snprintf(path, sizeof(path), "%s/.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return ds_error(DS_ERR_INPUT, "run.dir: %s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
        holder[n > 0 ? n : 0] = 0;
        holder[strcspn(holder, "\n")] = 0;
        close(fd);
        if (err == EWOULDBLOCK)
            return ds_error(DS_ERR_INPUT,
                            "run.dir: %s is in use by another dstrain process (pid %s); wait for "
                            "it or choose another run.dir",
                            dir, holder[0] ? holder : "?");
        return ds_error(DS_ERR_INPUT,
                        "run.dir: %s: cannot take the lock %s: %s (the file system must support "
                        "flock)",
                        dir, path, strerror(err));
    }
    char pid[32];
    int len = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) { /* best effort */
    }
    *lock_fd = fd;
    if (strcmp(cfg->train_resume, "none") != 0 || !run_dir_used(dir)) return DS_OK;
    if (!cfg->run_overwrite)
        return ds_error(DS_ERR_INPUT,
                        "run.dir: %s holds an earlier run; set train.resume=auto to continue it, "
                        "run.overwrite=true to replace it, or choose another run.dir",
                        dir);
    const char *names[] = {"checkpoints", "export", "metrics.jsonl", "continual.json",
                           "continual-state", "final.safetensors", "config.yaml"};
    for (size_t i = 0; i < DS_ARRAY_LEN(names); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
            return ds_error(DS_ERR_INPUT, "run.overwrite: cannot remove %s: %s", path,
                            strerror(errno));
    }
    if (cfg->checkpoint_dir[0] &&
        nftw(cfg->checkpoint_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return ds_error(DS_ERR_INPUT, "run.overwrite: cannot remove %s: %s", cfg->checkpoint_dir,
                        strerror(errno));
    printf("dstrain: run.overwrite: replaced the earlier run in %s\n", dir);
    return DS_OK;
}

/* Write a file of the run directory: a temporary beside it, then a rename, so that a link
 * planted at the name is replaced, never followed. */
static FILE *run_file_create(const char *path, char *tmp, size_t cap)
{
    snprintf(tmp, cap, "%s.tmp-%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "w");
    if (!f) close(fd);
    return f;
}

/* metrics.jsonl of a resumed run keeps the lines of steps up to the resumed one: the steps after
 * it are trained again and logged again. */
static int metrics_truncate(const char *path, int step)
{
    char tmp[CONFIG_STR_MAX + 96];
    FILE *in = fopen(path, "r");
    if (!in) return DS_OK;
    FILE *out = run_file_create(path, tmp, sizeof(tmp));
    if (!out) {
        fclose(in);
        return ds_error(DS_ERR_INPUT, "%s: cannot rewrite: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, in)) > 0) {
        const char *s = strstr(line, "\"step\": ");
        if (s && atoi(s + 8) > step) continue;
        fwrite(line, 1, (size_t)n, out);
    }
    free(line);
    fclose(in);
    if (fclose(out) != 0 || rename(tmp, path) != 0)
        return ds_error(DS_ERR_INPUT, "%s: cannot rewrite: %s", path, strerror(errno));
    return DS_OK;
}

/* ---- EWC penalty over the world -------------------------------------------------------------- */

/* The fused update sums the penalty over this rank's shard, in which tensors another
 * tensor-parallel rank also holds (tp_copy) and, without ZeRO, every data-parallel rank's copy
 * would count again. This is the part of the tp copies, of the parameters before the update
 * (only the copies' ranges, small vectors, are read back from a device). */
static double ewc_penalty_copies(const Run *r)
{
    const EwcState *e = &r->ewc;
    double dup = 0.0;
    for (int i = 0; i < r->model.table.count && e->n_sets > 0; i++) {
        const ParamInfo *p = &r->model.table.items[i];
        size_t b = p->offset > e->lo ? p->offset : e->lo;
        size_t end = p->offset + p->numel < e->hi ? p->offset + p->numel : e->hi;
        if (!p->tp_copy || b >= end) continue;
        ewc_penalty_accumulate(e, r->model.params, b, end, &dup);
    }
    return 0.5 * e->lambda * dup;
}

/* ---- one step ---------------------------------------------------------------------------------- */

typedef struct StepResult {
    double loss, grad_norm, tokens, data_wait, penalty;
    float lr;
    int finite, replayed;
} StepResult;

/* With replay: one global micro-batch (micro_batch_size x dp rows, the same on every rank), the
 * replayed rows first (every rank draws the same slots; the rank holding a slot's tokens hands
 * them to all through one sum over dp), then the phase's rows, read from the global order one at
 * a time. Every fresh row is offered to the buffer in one order on every rank. This rank's rows
 * go to micro-batch a of the step. */
static int fill_global_micro_batch(Run *r, int a, int task_id, double *data_wait, int *replayed)
{
    const int B = r->B, T = r->T, G = r->G, N = B * T;
    const int n_rep = r->replay.count > 0 ? r->n_replay_rows : 0;
    const size_t nT = (size_t)n_rep * T;
    *replayed += n_rep;
    if (n_rep > 0) {
        memset(r->g_inputs, 0, nT * sizeof(int32_t));
        memset(r->g_targets, 0, nT * sizeof(int32_t));
        memset(r->g_weights, 0, nT * sizeof(float));
    }
    for (int row = 0; row < n_rep; row++) {
        int slot;
        DS_TRY(replay_draw(&r->replay, &slot));
        r->g_labels[row] = (int32_t)r->replay.labels[slot];
        if (replay_holds(&r->replay, slot))
            DS_TRY(replay_read(&r->replay, slot, r->g_inputs + (size_t)row * T,
                               r->g_targets + (size_t)row * T, r->g_weights + (size_t)row * T,
                               NULL, NULL));
    }
    if (n_rep > 0 && r->grid.dp_size > 1) {
        DS_TRY(comm_all_reduce(&r->grid.dp, r->g_inputs, nT, COMM_I32, COMM_SUM));
        DS_TRY(comm_all_reduce(&r->grid.dp, r->g_targets, nT, COMM_I32, COMM_SUM));
        DS_TRY(comm_all_reduce(&r->grid.dp, r->g_weights, nT, COMM_F32, COMM_SUM));
    }
    for (int row = n_rep; row < G; row++) {
        int32_t *in = r->g_inputs + (size_t)row * T, *tg = r->g_targets + (size_t)row * T;
        float *w = r->g_weights + (size_t)row * T;
        const double t0 = ds_now();
        DS_TRY(data_reader_next(r->reader, in, tg, w, NULL));
        *data_wait += ds_now() - t0;
        r->g_labels[row] = r->cls ? tg[0] : -1;
        DS_TRY(replay_add(&r->replay, in, r->cls ? NULL : tg, r->cls ? NULL : w, r->g_labels[row],
                          task_id));
    }
    /* this rank's rows, in the layout model_forward takes */
    const int first = r->grid.dp_rank * B;
    int32_t *inputs = r->inputs + (size_t)a * N, *targets = r->targets + (size_t)a * N;
    float *weights = r->weights + (size_t)a * N;
    memcpy(inputs, r->g_inputs + (size_t)first * T, (size_t)N * sizeof(int32_t));
    if (r->cls) {
        memset(targets, 0, (size_t)N * sizeof(int32_t));
        memset(weights, 0, (size_t)N * sizeof(float));
        for (int b = 0; b < B; b++) {
            targets[b] = r->g_labels[first + b];
            weights[b] = 1.0f;
        }
    } else {
        memcpy(targets, r->g_targets + (size_t)first * T, (size_t)N * sizeof(int32_t));
        memcpy(weights, r->g_weights + (size_t)first * T, (size_t)N * sizeof(float));
    }
    return DS_OK;
}

/* The one step: read the step's micro-batches, forward and backward over them, reduce the
 * gradients, clip, and update (AdamW with the EWC term fused in when the run holds a Fisher).
 * step is the global step (0-based); lr_cfg the phase's schedule. */
static int run_step(Run *r, int task_id, const Config *lr_cfg, int phase_step, int step,
                    StepResult *out)
{
    const int N = r->B * r->T, accum = r->accum;
    memset(out, 0, sizeof(*out));
    for (int a = 0; a < accum; a++) {
        if (r->global_rows) {
            DS_TRY(fill_global_micro_batch(r, a, task_id, &out->data_wait, &out->replayed));
        } else {
            const double t0 = ds_now();
            DS_TRY(data_reader_next(r->reader, r->inputs + (size_t)a * N,
                                    r->targets + (size_t)a * N, r->weights + (size_t)a * N, NULL));
            out->data_wait += ds_now() - t0;
        }
    }
    /* the loss is the mean over the step's trained tokens (rows, for classification) on all
     * data-parallel ranks */
    double tokens = 0.0;
    for (size_t i = 0; i < (size_t)N * accum; i++) tokens += r->weights[i];
    DS_TRY(comm_all_reduce(&r->grid.dp, &tokens, 1, COMM_F64, COMM_SUM));
    const float inv_tokens = tokens > 0 ? (float)(1.0 / tokens) : 0.0f;
    for (size_t i = 0; i < (size_t)N * accum; i++) r->weights[i] *= inv_tokens;
    out->tokens = tokens;

    Model *m = &r->model;
    model_zero_grad(m);
    model_expert_load_reset(m);
    double loss = 0.0;
    for (int a = 0; a < accum; a++) {
        loss += model_forward_train(m, r->inputs + (size_t)a * N, r->targets + (size_t)a * N,
                                    r->weights + (size_t)a * N, NULL);
        model_backward(m);
    }
    /* communication only now, after the last micro-batch */
    DS_TRY(comm_all_reduce(&r->grid.dp, &loss, 1, COMM_F64, COMM_SUM));
    if (m->expert_tokens) { /* every data-parallel rank's tokens count in the expert load */
        DS_TRY(comm_all_reduce(&r->grid.dp, m->expert_tokens,
                               (size_t)m->cfg.num_layers * m->cfg.n_routed_experts, COMM_F64,
                               COMM_SUM));
        DS_TRY(comm_all_reduce(&r->grid.dp, &m->balance_loss, 1, COMM_F64, COMM_SUM));
    }
    DS_TRY(optim_reduce_grads(&r->opt, m, &r->grid));
    double grad_norm = 0.0;
    DS_TRY(optim_grad_norm_global(&r->opt, m, &r->grid, &grad_norm));
    out->lr = optim_lr_at(lr_cfg, phase_step);
    /* a non-finite loss or gradient: skip the update (every rank holds the same values) */
    out->finite = progress_check_finite(step + 1, &loss, &grad_norm);
    out->loss = loss;
    out->grad_norm = grad_norm;
    if (!out->finite) return DS_OK;
    const float scale = optim_clip_scale(grad_norm, r->cfg->optim_clip_grad_norm);
    const double copies = r->ewc.n_sets > 0 ? ewc_penalty_copies(r) : 0.0;
    r->opt.ewc_penalty = 0.0;
    optim_step(&r->opt, m, lr_cfg, out->lr, scale);
    model_update_router_bias(m, r->cfg->moe_bias_update_rate);
    /* the penalty before the update, each element once over the world */
    double penalty = r->ewc.n_sets > 0 ? r->opt.ewc_penalty - copies : 0.0;
    if (!r->opt.zero && r->grid.dp_rank != 0) penalty = 0.0;
    if (r->ewc_on) DS_TRY(comm_all_reduce(&r->grid.world, &penalty, 1, COMM_F64, COMM_SUM));
    out->penalty = penalty;
    return optim_gather_params(&r->opt, m, &r->grid);
}

/* Mean loss over `batches` micro-batches of every data-parallel rank (each reads its own share
 * of the eval set); every rank of dp takes part in the sum, even after its reader failed. */
static double eval_loss_on(Run *r, DataReader *reader, int batches)
{
    Model *m = &r->model;
    const int N = m->B * m->T;
    double sum = 0.0, count = 0.0;
    for (int b = 0; b < batches; b++) {
        if (data_reader_next(reader, m->inputs, m->targets, m->loss_weights, NULL) != DS_OK) {
            sum = NAN;
            break;
        }
        for (int i = 0; i < N; i++) count += m->loss_weights[i];
        memcpy(r->eval_weights, m->loss_weights, (size_t)N * sizeof(float));
        sum += model_forward(m, m->inputs, m->targets, r->eval_weights, NULL);
    }
    double totals[2] = {sum, count};
    if (comm_all_reduce(&r->grid.dp, totals, 2, COMM_F64, COMM_SUM) != DS_OK) return NAN;
    return totals[1] > 0 ? totals[0] / totals[1] : NAN;
}

/* ---- checkpoint blobs -------------------------------------------------------------------------- */

/* Bring the blobs a checkpoint of step `step` stores up to date: the run state, the reader's
 * position and the whole replay buffer (gathered over dp: collective). */
static int run_prepare_blobs(Run *r, int reader_phase)
{
    RunState *st = &r->state;
    st->version = RUN_STATE_VERSION;
    st->phases = r->n_phases;
    st->reader_phase = r->reader ? reader_phase : -1;
    st->ewc_sets = r->ewc.n_sets;
    st->ewc_tasks_seen = r->ewc.tasks_seen;
    for (int k = 0; k < r->ewc.n_sets; k++) st->ewc_task_id[k] = r->ewc.task_id[k];
    st->nonfinite_total = progress_nonfinite_total();
    if (r->reader) DS_TRY(data_reader_get_state(r->reader, &r->reader_state));
    CkptBlob blobs[4];
    int n = 0;
    blobs[n++] = (CkptBlob){"run.state", st, sizeof(*st)};
    if (r->reader) blobs[n++] = (CkptBlob){"reader.state", &r->reader_state, sizeof(r->reader_state)};
    if (r->sequence)
        blobs[n++] = (CkptBlob){"run.R", r->R, (size_t)r->n_phases * r->n_phases * sizeof(double)};
    st->replay_bytes = 0;
    if (r->replay_on) {
        ReplayBuffer whole;
        DS_TRY(continual_replay_gather(r, &whole));
        int status;
        const size_t need = replay_serialized_size(&whole);
        if (need > r->replay_blob_cap) {
            void *p = realloc(r->replay_blob, need);
            if (!p) {
                replay_free(&whole);
                return ds_error(DS_ERR_INTERNAL, "out of memory for the replay buffer's blob");
            }
            r->replay_blob = p;
            r->replay_blob_cap = need;
        }
        status = replay_serialize(&whole, r->replay_blob, need);
        replay_free(&whole);
        DS_TRY(status);
        st->replay_bytes = (int64_t)need;
        blobs[n++] = (CkptBlob){"run.replay", r->replay_blob, need};
    }
    /* only world rank 0's blobs are read back: the others save none */
    return train_ckpt_set_blobs(r->ckpts, blobs, r->grid.world_rank == 0 ? n : 0);
}

/* After a resume: the run state, the EWC pairs, the replay buffer and the matrix R. */
static int run_restore(Run *r, int start_step)
{
    TrainCkpt *tc = r->ckpts;
    size_t size = 0;
    DS_TRY(train_ckpt_blob_size(tc, "run.state", &size));
    if (size != sizeof(RunState))
        return ds_error(DS_ERR_INPUT, "train.resume: %s: no run state of this version (a "
                                      "checkpoint of another dstrain version)",
                        train_ckpt_resumed_path(tc));
    RunState *st = &r->state;
    DS_TRY(train_ckpt_read_blob(tc, "run.state", st, sizeof(*st)));
    if (st->version != RUN_STATE_VERSION || st->phases != r->n_phases || st->phase_done < 0 ||
        st->phase_done > r->n_phases || st->ewc_sets < 0 || st->ewc_sets > EWC_MAX_SETS ||
        st->reader_phase < -1 || st->reader_phase >= r->n_phases)
        return ds_error(DS_ERR_INPUT,
                        "train.resume: %s: run.state: saved by a run of %d phase(s), this one "
                        "has %d (another tasks file?)",
                        train_ckpt_resumed_path(tc), st->phases, r->n_phases);
    /* a run made longer (train.steps, a task's steps) goes on inside the phase the checkpoint
     * finished: that phase's between-phase work runs again at its new end */
    while (st->phase_done > 0 && start_step < r->phases[st->phase_done - 1].first_step +
                                                  r->phases[st->phase_done - 1].steps)
        st->phase_done--;
    const int k = st->phase_done < r->n_phases ? st->phase_done : r->n_phases - 1;
    const Phase *ph = &r->phases[k];
    if (start_step < ph->first_step || start_step > ph->first_step + ph->steps)
        return ds_error(DS_ERR_INPUT,
                        "train.resume: %s: step %d is outside phase %s (steps %d..%d): the "
                        "tasks' steps changed",
                        train_ckpt_resumed_path(tc), start_step, ph->id, ph->first_step,
                        ph->first_step + ph->steps);
    if (st->reader_phase >= 0) {
        DS_TRY(train_ckpt_read_blob(tc, "reader.state", &r->reader_state,
                                    sizeof(r->reader_state)));
    }
    if (r->sequence)
        DS_TRY(train_ckpt_read_blob(tc, "run.R", r->R,
                                    (size_t)r->n_phases * r->n_phases * sizeof(double)));
    if (r->ewc_on && st->ewc_sets > 0)
        DS_TRY(ewc_reserve_sets(&r->ewc, st->ewc_sets, st->ewc_task_id, st->ewc_tasks_seen));
    if (r->replay_on && st->replay_bytes > 0) {
        void *blob = ds_malloc((size_t)st->replay_bytes);
        if (!blob) return DS_ERR_INTERNAL;
        ReplayBuffer whole;
        int status = train_ckpt_read_blob(tc, "run.replay", blob, (size_t)st->replay_bytes);
        if (status == DS_OK)
            status = replay_init_whole(&whole, &r->replay, r->replay_seed);
        if (status == DS_OK) {
            status = replay_deserialize(&whole, blob, (size_t)st->replay_bytes);
            if (status == DS_OK) status = replay_shard_from_whole(&r->replay, &whole);
            replay_free(&whole);
        }
        free(blob);
        if (status != DS_OK) return ds_error_context(status, "train.resume: run.replay");
    }
    progress_restore_nonfinite(st->nonfinite_total);
    return DS_OK;
}

/* The EWC pairs as checkpoint buffers, sharded like the moments; called when sets appear. */
static int run_register_ewc_buffers(Run *r, int from)
{
    const size_t lo = r->ewc.lo, hi = r->ewc.hi;
    for (int k = from; k < r->ewc.n_sets; k++) {
        char name[32];
        snprintf(name, sizeof(name), "ewc.fisher_%d", k);
        DS_TRY(train_ckpt_add_buffer(r->ckpts, name, r->ewc.fisher[k] - lo, lo, hi, !r->opt.zero));
        snprintf(name, sizeof(name), "ewc.anchor_%d", k);
        DS_TRY(train_ckpt_add_buffer(r->ckpts, name, r->ewc.anchor[k] - lo, lo, hi, !r->opt.zero));
    }
    return DS_OK;
}

/* ---- the loop --------------------------------------------------------------------------------- */

/* Train phase k from global step `from` to its end. Returns DS_EXIT_REQUEUE after a signal (a
 * checkpoint written), an error, or DS_OK at the phase's end. */
static int run_phase(Run *r, int k, int from, double *first_loss, double *last_loss)
{
    const Config *cfg = r->cfg;
    const Phase *ph = &r->phases[k];
    const int end = ph->first_step + ph->steps, task_id = r->ewc.tasks_seen;
    Config lr_cfg = *cfg; /* this phase's schedule */
    lr_cfg.train_steps = ph->steps;
    if (r->sequence) progress_set_task(k, r->n_phases, ph->id);
    for (int step = from; step < end; step++) {
        const double t0 = ds_now();
        StepResult s;
        DS_TRY(run_step(r, task_id, &lr_cfg, step - ph->first_step, step, &s));
        const double dt = ds_now() - t0;
        const double rows = (double)r->B * r->accum * r->grid.dp_size;
        const double tok_per_s = rows * r->T / dt;
        if (s.finite && isnan(*first_loss)) *first_loss = s.loss;
        if (s.finite) *last_loss = s.loss;
        r->last_lr = s.lr;
        /* room for the expert load of up to 256 layers */
        char extra[256 + sizeof(ph->id) + 256 * 12] = "";
        if (r->sequence || r->ewc_on || r->replay_on)
            snprintf(extra, sizeof(extra),
                     ", \"task\": \"%s\", \"task_index\": %d, \"task_step\": %d, "
                     "\"ewc_penalty\": %.7g, \"replay_rows\": %d, \"replay_share\": %.4g",
                     ph->id, k, step + 1 - ph->first_step, s.penalty, s.replayed,
                     s.replayed / rows);
        if (r->model.expert_tokens) { /* per layer: null (dense) or busiest expert / mean */
            const int L = r->model.cfg.num_layers;
            double *ratio = ds_calloc((size_t)L, sizeof(double));
            if (!ratio) return DS_ERR_INTERNAL;
            model_expert_load(&r->model, ratio);
            progress_set_expert_load(ratio, L);
            size_t used = strlen(extra);
            used += (size_t)snprintf(extra + used, sizeof(extra) - used, ", \"expert_load\": [");
            for (int l = 0; l < L && used + 16 < sizeof(extra); l++) {
                used += (size_t)(isnan(ratio[l])
                                     ? snprintf(extra + used, sizeof(extra) - used, "%snull",
                                                l ? ", " : "")
                                     : snprintf(extra + used, sizeof(extra) - used, "%s%.4g",
                                                l ? ", " : "", ratio[l]));
            }
            used += (size_t)snprintf(extra + used, sizeof(extra) - used, "]");
            if (r->model.cfg.moe_balance_alpha > 0 && used < sizeof(extra))
                snprintf(extra + used, sizeof(extra) - used, ", \"balance_loss\": %.7g",
                         r->model.balance_loss);
            free(ratio);
        }
        if (s.finite)
            fprintf(r->metrics,
                    "{\"step\": %d, \"loss\": %.7g, \"lr\": %.7g, \"grad_norm\": %.7g, "
                    "\"tokens_per_second\": %.1f, \"step_seconds\": %.5f, "
                    "\"data_wait_seconds\": %.6f, \"tokens\": %.0f, \"nonfinite_steps\": %lld%s}\n",
                    step + 1, s.loss, s.lr, s.grad_norm, tok_per_s, dt, s.data_wait, s.tokens,
                    progress_nonfinite_total(), extra);
        else /* JSON has no NaN: the loss is null and the step marked */
            fprintf(r->metrics,
                    "{\"step\": %d, \"loss\": null, \"skipped\": true, \"lr\": %.7g, "
                    "\"step_seconds\": %.5f, \"nonfinite_steps\": %lld%s}\n",
                    step + 1, s.lr, dt, progress_nonfinite_total(), extra);
        double eval_loss = NAN;
        const int local = step + 1 - ph->first_step;
        if (r->n_eval && cfg->eval_every > 0 && (local % cfg->eval_every == 0 || step + 1 == end)) {
            for (int e = 0; e < r->n_eval; e++) { /* each file from its start; the first shown */
                DS_TRY(data_reader_rewind(r->eval[e]));
                double l = eval_loss_on(r, r->eval[e], cfg->eval_batches);
                if (e == 0) eval_loss = l;
                fprintf(r->metrics, "{\"step\": %d, \"eval_loss\": %.7g, \"eval_set\": %d}\n",
                        step + 1, l, e);
            }
        }
        fflush(r->metrics);
        if (r->ewc_on) progress_set_ewc_penalty(s.penalty);
        if (r->replay_on) {
            progress_set_replay_size(r->replay.count);
            progress_set_replay_share(s.replayed / rows);
        }
        progress_step(&(ProgressStep){.step = step + 1, .loss = s.loss, .lr = s.lr,
                                      .grad_norm = s.grad_norm, .tokens = rows * r->T,
                                      .seconds = dt, .data_wait = s.data_wait,
                                      .eval_loss = eval_loss, .skipped = !s.finite});
        if (progress_nonfinite_in_row() >= cfg->train_max_nonfinite) {
            int status = ds_error(DS_ERR_INTERNAL,
                                  "step %d: %d steps in a row had a non-finite loss or gradient "
                                  "(train.max_nonfinite: %d); stopping. The weights are those of "
                                  "the last good step; resume from the last checkpoint with a "
                                  "lower optim.lr or check the data",
                                  step + 1, progress_nonfinite_in_row(), cfg->train_max_nonfinite);
            /* skipped steps changed nothing: this checkpoint holds the last good state */
            int saved = run_prepare_blobs(r, k);
            if (saved == DS_OK) saved = train_ckpt_save_now(r->ckpts, step + 1, s.lr, 0);
            return saved != DS_OK ? saved : status;
        }
        if (train_ckpt_due(r->ckpts, step + 1, end)) DS_TRY(run_prepare_blobs(r, k));
        DS_TRY(train_ckpt_after_step(r->ckpts, step + 1, end, s.lr));
        /* preemption: every rank learns of a signal any rank got, at the same step boundary */
        int64_t signal = signals_pending();
        if (r->grid.world_size > 1)
            DS_TRY(comm_all_reduce(&r->grid.world, &signal, 1, COMM_I64, COMM_MAX));
        if (signal && step + 1 < r->total_steps) {
            DS_TRY(run_prepare_blobs(r, k));
            DS_TRY(train_ckpt_save_now(r->ckpts, step + 1, s.lr, 0));
            return ds_error(DS_EXIT_REQUEUE,
                            "%s at step %d%s%s: checkpoint written, exiting %d to be requeued",
                            signals_name((int)signal), step + 1, r->sequence ? " of task " : "",
                            r->sequence ? ph->id : "", DS_EXIT_REQUEUE);
        }
    }
    return DS_OK;
}

/* Open phase k's training reader (and its eval readers), positioned at `position` when given. */
static int run_open_phase_data(Run *r, int k, const DataReaderState *position)
{
    data_reader_close(r->reader);
    r->reader = NULL;
    for (int e = 0; e < r->n_eval; e++) data_reader_close(r->eval[e]);
    r->n_eval = 0;
    const Phase *ph = &r->phases[k];
    const DataMode mode = r->mode;
    DataReaderOptions o = run_reader_options(r, k, mode);
    int status = data_reader_open(&o, &r->reader);
    if (status != DS_OK) return ds_error_context(status, "%s.train", ph->where);
    if (position) DS_TRY(data_reader_set_state(r->reader, position));
    for (int e = 0; e < ph->n_eval && r->cfg->eval_every > 0; e++) {
        DataSource src = {ph->eval[e], 1.0};
        DataReaderOptions eo = run_eval_options(r, &src, mode);
        if ((status = data_reader_open(&eo, &r->eval[e])) != DS_OK)
            return ds_error_context(status, "%s.eval", ph->where_eval);
        r->n_eval = e + 1;
    }
    return DS_OK;
}

/* The work between phases of a task sequence (and after a plain run with EWC or replay): the
 * accuracy/loss of every task seen so far, the Fisher pass, the continual state. */
static int run_after_phase(Run *r, int k)
{
    const int K = r->n_phases;
    if (r->sequence) {
        for (int j = 0; j <= k; j++) {
            double metric;
            DS_TRY(continual_evaluate(r, r->phases[j].matrix_eval, &metric));
            r->R[(size_t)k * K + j] = metric;
            fprintf(r->metrics,
                    "{\"step\": %d, \"task\": \"%s\", \"eval_task\": \"%s\", \"%s\": %.7g}\n",
                    r->phases[k].first_step + r->phases[k].steps, r->phases[k].id,
                    r->phases[j].id, r->cls ? "eval_accuracy" : "eval_loss", metric);
        }
        fflush(r->metrics);
    }
    if (r->ewc_on) {
        const int before = r->ewc.n_sets;
        DS_TRY(continual_fisher(r, k));
        DS_TRY(run_register_ewc_buffers(r, before));
    }
    if (r->ewc_on || r->replay_on) {
        char dir[CONFIG_STR_MAX + 64];
        snprintf(dir, sizeof(dir), "%s/continual-state", r->run_dir);
        if (r->grid.world_rank == 0) DS_TRY(make_dirs(dir));
        DS_TRY(continual_state_save(r, dir));
    }
    return DS_OK;
}

static void run_free(Run *r)
{
    if (r->metrics) fclose(r->metrics);
    train_ckpt_close(r->ckpts);
    metrics_server_stop(r->server);
    data_reader_close(r->reader);
    for (int e = 0; e < r->n_eval; e++) data_reader_close(r->eval[e]);
    free(r->inputs);
    free(r->targets);
    free(r->weights);
    free(r->eval_weights);
    free(r->logits);
    free(r->g_inputs);
    free(r->g_targets);
    free(r->g_labels);
    free(r->g_weights);
    free(r->fisher);
    free(r->R);
    free(r->replay_blob);
    free(r->phases);
    free(r->tasks);
    ewc_free(&r->ewc);
    replay_free(&r->replay);
    optim_free(&r->opt);
    model_free(&r->fisher_model);
    model_free(&r->model);
    backend_free(r->be); /* last of what lives in its memory */
    comm_grid_free(&r->grid);
}

/* Collective over the world: ranks other than 0 get DS_ERR_INTERNAL when rank 0 failed. */
static int run_agree(const ProcessGrid *g, int status)
{
    int64_t worst = status;
    if (g->world_size > 1 && comm_all_reduce(&g->world, &worst, 1, COMM_I64, COMM_MAX) != DS_OK)
        return DS_ERR_INTERNAL;
    if (status != DS_OK) return status;
    return worst != DS_OK ? ds_error(DS_ERR_INTERNAL, "another rank failed") : DS_OK;
}

/* EWC, replay and the Fisher pass's model, from continual.*. */
static int run_setup_continual(Run *r)
{
    const Config *cfg = r->cfg;
    const size_t lo = r->opt.shard_begin, hi = r->opt.shard_begin + r->opt.n;
    r->fisher_opt = (FisherOptions){.samples = cfg->continual_ewc_fisher_samples,
                                    .batched = cfg->continual_ewc_fisher_batched,
                                    .seed = (uint64_t)cfg->train_seed + 17,
                                    .shard_rank = r->grid.dp_rank,
                                    .shard_size = r->grid.dp_size,
                                    .ep = r->grid.ep_size > 1 ? &r->grid.ep : NULL};
    EwcMode mode;
    DS_TRY(ewc_mode_parse(cfg->continual_ewc_mode, &mode));
    DS_TRY(fisher_type_parse(cfg->continual_ewc_fisher_type, &r->fisher_opt.type));
    DS_TRY(ewc_init_on(&r->ewc, mode, cfg->continual_ewc_lambda, cfg->continual_ewc_gamma, lo, hi,
                       r->be));
    /* weight decay toward the anchor (default) or toward zero once a Fisher is held */
    DS_TRY(ewc_decay_parse(cfg->continual_ewc_decay, &r->ewc.decay));
    r->ewc_on = cfg->continual_ewc_enabled;
    if (r->ewc_on) {
        if (r->fisher_opt.type == FISHER_EXACT && !r->cls)
            return ds_error(DS_ERR_INPUT, "continual.ewc.fisher.type: exact needs task.type "
                                          "classification");
        if (r->fisher_opt.type == FISHER_SAMPLED && !r->cls && r->grid.tp_size > 1)
            return ds_error(DS_ERR_INPUT,
                            "continual.ewc.fisher.type: sampled draws tokens from the whole "
                            "vocabulary, which parallel.tp splits; use empirical at tp %d",
                            r->grid.tp_size);
        /* the pairs sit beside the moments: optim_step fuses the update on the device */
        r->opt.ewc = &r->ewc;
        r->fisher_work = &r->model;
        if (!r->fisher_opt.batched && r->B != 1) {
            DS_TRY(model_init_parallel(&r->fisher_model, &r->mc, r->be, 1, r->T, &r->grid));
            r->fisher_work = &r->fisher_model;
        }
        r->fisher = ds_aligned_alloc(PARAM_ALIGN_BYTES, r->model.table.total * sizeof(float));
        if (!r->fisher) return DS_ERR_INTERNAL;
    }
    ReplayPolicy policy;
    r->replay_seed = (uint64_t)cfg->train_seed + 29;
    DS_TRY(replay_policy_parse(cfg->continual_replay_policy, &policy));
    DS_TRY(replay_init_sharded(&r->replay, policy, cfg->continual_replay_capacity, r->T,
                               r->grid.dp_rank, r->grid.dp_size, r->replay_seed));
    /* what the buffer holds, saved with it and checked when one is loaded */
    DS_TRY(replay_set_task(&r->replay, r->mc.vocab_size, r->cls ? r->mc.num_labels : 0));
    return DS_OK; /* replay_on, n_replay_rows and global_rows were set with the phases */
}

static int run_alloc_buffers(Run *r)
{
    const size_t N = (size_t)r->B * r->T, GT = (size_t)r->G * r->T;
    r->inputs = ds_malloc(N * r->accum * sizeof(int32_t));
    r->targets = ds_malloc(N * r->accum * sizeof(int32_t));
    r->weights = ds_malloc(N * r->accum * sizeof(float));
    r->eval_weights = ds_malloc(N * sizeof(float));
    r->logits = ds_malloc((size_t)r->B * (r->cls ? r->mc.num_labels : 1) * sizeof(float));
    r->R = ds_calloc((size_t)r->n_phases * r->n_phases, sizeof(double));
    if (!r->inputs || !r->targets || !r->weights || !r->eval_weights || !r->logits || !r->R)
        return DS_ERR_INTERNAL;
    if (r->global_rows) {
        r->g_inputs = ds_malloc(GT * sizeof(int32_t));
        r->g_targets = ds_malloc(GT * sizeof(int32_t));
        r->g_weights = ds_malloc(GT * sizeof(float));
        r->g_labels = ds_malloc((size_t)r->G * sizeof(int32_t));
        if (!r->g_inputs || !r->g_targets || !r->g_weights || !r->g_labels) return DS_ERR_INTERNAL;
    }
    return DS_OK;
}

/* The parameters of the whole model (not this rank's slice). */
/* The whole model's parameters (every expert, however the ranks split them). */
static size_t run_count_params(const Model *m)
{
    double total = 0, active = 0;
    return model_param_counts(&m->cfg, &total, &active) == DS_OK ? (size_t)total : 0;
}

/* A short summary of the run on start; the whole resolved config is in <run.dir>/config.yaml
 * (log.print_config prints it here too). */
static void run_print_summary(const Run *r, const char *config_path)
{
    const Config *cfg = r->cfg;
    printf("dstrain: model %s %s %s, %d layers, hidden %d, %zu parameters\n",
           model_arch_name(r->mc.arch), cfg->model_path[0] ? "from" : "preset",
           cfg->model_path[0] ? cfg->model_path : cfg->model_preset, r->mc.num_layers,
           r->mc.hidden_size, r->n_params);
    if (r->sequence)
        printf("dstrain: %d tasks from %s, %d steps in all, %s, seq_len %d, %d x %d rows a "
               "step\n",
               r->n_phases, cfg->continual_tasks, r->total_steps,
               r->cls ? "classification" : "causal LM", r->T, r->B * r->grid.dp_size, r->accum);
    else
        printf("dstrain: %d steps on %s%s, %s, seq_len %d, %d x %d rows a step, lr %g\n",
               r->total_steps, r->phases[0].sources[0].path,
               r->phases[0].n_sources > 1 ? " (a mixture)" : "",
               r->cls ? "classification" : cfg->data_mode, r->T, r->B * r->grid.dp_size,
               r->accum, cfg->optim_lr);
    if (r->ewc_on || r->replay_on)
        printf("dstrain: continual: EWC %s (lambda %g, %s, Fisher %s over %d examples%s), replay "
               "%d examples at ratio %g (%s)\n",
               r->ewc_on ? "on" : "off", cfg->continual_ewc_lambda, cfg->continual_ewc_mode,
               cfg->continual_ewc_fisher_type, cfg->continual_ewc_fisher_samples,
               cfg->continual_ewc_fisher_batched ? ", batched" : "",
               cfg->continual_replay_capacity, cfg->continual_replay_ratio,
               cfg->continual_replay_policy);
    printf("dstrain: run directory %s (resolved config in %s)\n", r->run_dir, config_path);
}

/* Warnings about settings that are legal but likely wrong. */
static void run_warn_settings(const Run *r)
{
    const Config *cfg = r->cfg;
    if (r->mc.max_position_embeddings > 0 && r->T > r->mc.max_position_embeddings)
        progress_warn("train.seq_len %d is above the model's max_position_embeddings %d: "
                      "positions past it were never trained",
                      r->T, r->mc.max_position_embeddings);
    if (cfg->model_path[0] && !cfg->model_random_init && cfg->optim_lr >= 1e-3f)
        progress_warn("optim.lr %g is a from-scratch rate (the tiny preset's default); "
                      "fine-tuning a pretrained model usually takes 1e-5 to 1e-4",
                      cfg->optim_lr);
}

/* The ranks of the world that run on this host (by host name); collective over the world. */
static int run_ranks_on_host(const ProcessGrid *g, int *count)
{
    *count = 1;
    if (g->world_size <= 1) return DS_OK;
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    uint64_t hash = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = host; *p; p++)
        hash = (hash ^ (unsigned char)*p) * 1099511628211ull;
    int64_t *all = ds_calloc((size_t)g->world_size, sizeof(int64_t));
    if (!all) return DS_ERR_INTERNAL;
    all[g->world_rank] = (int64_t)hash;
    int status = comm_all_gather(&g->world, all, 1, COMM_I64);
    if (status == DS_OK) {
        *count = 0;
        for (int i = 0; i < g->world_size; i++)
            *count += all[i] == (int64_t)hash;
    }
    free(all);
    return status;
}

/* cuda.weight_copy auto, after run_check_memory: the copy is kept on every rank or on none (a
 * rank without it is slower and would set the pace); where it goes, the backend is made again
 * without it. */
static int run_agree_weight_copy(Run *r)
{
    if (strcmp(r->cfg->cuda_weight_copy, "auto") != 0 || r->be->host_memory ||
        r->be->act_size(r->be) != 2) /* no copy outside bf16 */
        return DS_OK;
    int64_t drop = !r->weight_copy; /* on any rank */
    if (r->grid.world_size > 1)
        DS_TRY(comm_all_reduce(&r->grid.world, &drop, 1, COMM_I64, COMM_MAX));
    if (!drop) return DS_OK;
    r->weight_copy = 0;
    Config without = *r->cfg;
    snprintf(without.cuda_weight_copy, sizeof(without.cuda_weight_copy), "none");
    backend_free(r->be); /* nothing is laid out on it yet */
    r->be = NULL;
    return train_backend(&without, &r->be);
}

/* Before anything large is allocated: what one rank will hold (layout_memory_estimate, the
 * figures dstrain submit sizes a layout by, plus the Fisher pass's host buffer on the CPU)
 * against the host's memory for all ranks on this host (device cpu) or the GPU's free memory
 * (device cuda). On a GPU the activations count at their stored size (bf16: half the fp32
 * estimate, at least), so the figure is a lower bound and a refusal is certain. There
 * cuda.weight_copy auto also takes its answer, r->weight_copy: the bf16 working copy is kept when
 * the run fits this GPU with it, else the run is judged without it (run_agree_weight_copy then
 * drops it on every rank if one rank must). train.check_memory=false starts anyway, with a
 * warning. ranks_here: ranks on this host. */
static int run_check_memory(Run *r, int ranks_here)
{
    const Config *cfg = r->cfg;
    const ProcessGrid *g = &r->grid;
    RunMemory rm;
    DS_TRY(layout_memory_estimate(cfg, &r->mc, g->tp_size, g->dp_size, &rm));
    const int on_device = !r->be->host_memory;
    const double act_share = on_device ? r->be->act_size(r->be) / 4.0 : 1.0;
    /* the Fisher pass's model has the same parameters and gradients as the run's */
    const double fisher_acts = rm.fisher_model > 0 ? rm.fisher_model - rm.params - rm.grads : 0;
    const double activations = rm.activations * act_share;
    double ewc = rm.ewc + rm.fisher_model - fisher_acts * (1 - act_share);
    if (!on_device && cfg->continual_ewc_enabled) ewc += rm.params; /* the pass's host buffer */
    /* the bf16 working copies exist when the backend stores bf16 (not in an fp32 experiment)
     * and cuda.weight_copy keeps them */
    double copies = on_device && r->be->act_size(r->be) < 4 && strcmp(cfg->cuda_weight_copy, "none")
                        ? rm.weights_bf16
                        : 0;
    double per_rank = rm.params + rm.grads + rm.optimizer + activations + copies + ewc;
    uint64_t have = 0, total = 0;
    char what[64] = "";
    double need = per_rank;
    if (on_device) {
        DS_TRY(memory_device_free(r->be, &have, &total));
        if (copies > 0 && strcmp(cfg->cuda_weight_copy, "auto") == 0 && need > (double)have) {
            per_rank = need = per_rank - copies;
            copies = 0;
        }
        r->weight_copy = copies > 0;
    } else {
        DS_TRY(memory_host_limit(&have, what, sizeof(what)));
        need = per_rank * ranks_here;
    }
    if (need <= (double)have) return DS_OK;
    char b[8][24], parts[320], ranks[64] = "", line[1000];
    int n = snprintf(parts, sizeof(parts),
                     "parameters %s, gradients %s, optimizer %s, activations %s",
                     memory_bytes_text(b[0], rm.params), memory_bytes_text(b[1], rm.grads),
                     memory_bytes_text(b[2], rm.optimizer), memory_bytes_text(b[3], activations));
    if (copies > 0)
        n += snprintf(parts + n, sizeof(parts) - (size_t)n, ", bf16 copies %s",
                      memory_bytes_text(b[4], copies));
    if (ewc > 0)
        snprintf(parts + n, sizeof(parts) - (size_t)n, ", EWC %s", memory_bytes_text(b[4], ewc));
    if (on_device)
        snprintf(line, sizeof(line),
                 "memory: the run needs at least %s of GPU memory per rank (%s), more than the %s "
                 "free on this rank's GPU (%s in all)",
                 memory_bytes_text(b[5], per_rank), parts, memory_bytes_text(b[6], (double)have),
                 memory_bytes_text(b[7], (double)total));
    else {
        if (ranks_here > 1)
            snprintf(ranks, sizeof(ranks), " for the %d ranks on this host", ranks_here);
        snprintf(line, sizeof(line),
                 "memory: the run needs %s of host memory%s (per rank: %s), more than the %s "
                 "this host has (%s)",
                 memory_bytes_text(b[5], need), ranks, parts,
                 memory_bytes_text(b[6], (double)have), what);
    }
    if (!cfg->train_check_memory) {
        progress_warn("%s; starting anyway (train.check_memory is false)", line);
        return DS_OK;
    }
    return ds_error(DS_ERR_INPUT,
                    "%s; lower train.micro_batch_size or train.seq_len, set "
                    "train.activation_checkpointing, or use more %s (train.check_memory=false "
                    "starts anyway)",
                    line, on_device ? "GPUs" : "hosts");
}

int train_run(const Config *cfg)
{
    int status = DS_OK, lock_fd = -1, start_step = 0;
    Run run;
    Run *r = &run;
    memset(r, 0, sizeof(*r));
    r->cfg = cfg;
    char path[CONFIG_STR_MAX + 64], tmp[CONFIG_STR_MAX + 96];

    /* the process grid first (MPI when a launcher started us); other ranks print nothing */
    if ((status = comm_grid_init(&r->grid, cfg->parallel_tp, cfg->parallel_dp)) != DS_OK) goto done;
    ProcessGrid *grid = &r->grid;
    /* several ranks on GPUs talk NCCL; each binds its GPU (local rank) before the backend */
    if (strcmp(cfg->device, "cuda") == 0 && grid->world_size > 1 &&
        (status = comm_grid_enable_nccl(grid)) != DS_OK)
        goto done;
    if ((status = comm_grid_split_experts(grid, cfg->parallel_ep)) != DS_OK) goto done;
    if (grid->world_rank != 0 && !freopen("/dev/null", "w", stdout)) {
        status = ds_error(DS_ERR_INTERNAL, "rank %d: cannot silence stdout", grid->world_rank);
        goto done;
    }
    const int writer = grid->world_rank == 0;

    /* the model's shape, the phases and every data file, before anything is allocated or
     * written: a typo anywhere stops the run in seconds */
    r->cls = strcmp(cfg->task_type, "classification") == 0;
    if (cfg->continual_tasks[0]) {
        if (!(r->tasks = ds_calloc(1, sizeof(ContinualTasks)))) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
        if ((status = continual_tasks_load(cfg->continual_tasks, r->tasks)) != DS_OK) goto done;
    }
    if ((status = train_model_config(cfg, &r->mc)) != DS_OK) goto done;
    if (r->cls) {
        if (cfg->task_num_labels < 2) {
            status = ds_error(DS_ERR_INPUT,
                              "task.num_labels: task.type classification needs at least 2 "
                              "labels, got %d",
                              cfg->task_num_labels);
            goto done;
        }
        r->mc.num_labels = cfg->task_num_labels;
        /* the export's class names (task.labels), checked now rather than at the end */
        char *probe = NULL;
        if ((status = hf_config_json_text(&r->mc, cfg->model_path, &probe)) == DS_OK)
            status = hf_config_json_classification(&r->mc, cfg->task_labels, &probe);
        free(probe);
        if (status != DS_OK) goto done;
    }
    r->B = cfg->train_micro_batch_size;
    r->T = cfg->train_seq_len;
    r->accum = cfg->train_grad_accum;
    r->G = r->B * grid->dp_size;
    if ((status = run_build_phases(r)) != DS_OK) goto done;
    /* replay decides how the phases read (global rows) and how many rows of each global
     * micro-batch (micro_batch_size x dp rows) are replayed; the buffer itself is made below */
    r->replay_on = cfg->continual_replay_capacity > 0;
    r->global_rows = r->replay_on;
    r->n_replay_rows = r->replay_on ? (int)floor(cfg->continual_replay_ratio * r->G + 0.5) : 0;
    int replay_from_start = 0; /* an earlier run's buffer: the first task replays at once */
    if (cfg->continual_state[0] && r->replay_on) {
        snprintf(path, sizeof(path), "%s/replay-rank-00000.h5", cfg->continual_state);
        struct stat st;
        replay_from_start = stat(path, &st) == 0;
    }
    status = run_check_data(r, replay_from_start);
    if ((status = run_agree(grid, status)) != DS_OK) goto done;

    /* the backend, and whether the run fits in its memory, before anything large is made */
    int ranks_here = 1;
    if ((status = run_ranks_on_host(grid, &ranks_here)) != DS_OK) goto done;
    status = train_backend(cfg, &r->be);
    if (status == DS_OK) status = run_check_memory(r, ranks_here);
    /* the backend made again without the copy may fail on one rank: all hear of it */
    if ((status = run_agree(grid, status)) != DS_OK ||
        (status = run_agree(grid, run_agree_weight_copy(r))) != DS_OK)
        goto done;

    /* the run directory: named by rank 0 (clocks may cross a second), taken with a lock */
    if (cfg->run_dir[0]) {
        snprintf(r->run_dir, sizeof(r->run_dir), "%s", cfg->run_dir);
    } else {
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(r->run_dir, sizeof(r->run_dir), "runs/%Y%m%d-%H%M%S", &tm);
    }
    if ((status = comm_broadcast(&grid->world, r->run_dir, sizeof(r->run_dir), COMM_U8, 0)) !=
        DS_OK)
        goto done;
    if (writer) status = run_dir_take(cfg, r->run_dir, &lock_fd);
    if ((status = run_agree(grid, status)) != DS_OK) goto done;
    snprintf(path, sizeof(path), "%s/config.yaml", r->run_dir);
    if (writer) {
        FILE *cf = run_file_create(path, tmp, sizeof(tmp));
        if (!cf) {
            status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        } else {
            Config resolved = *cfg;
            snprintf(resolved.run_dir, sizeof(resolved.run_dir), "%s", r->run_dir);
            config_write_yaml(&resolved, cf, 0);
            if (fclose(cf) != 0 || rename(tmp, path) != 0)
                status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
            if (status == DS_OK && cfg->log_config_full) {
                printf("dstrain: resolved config:\n");
                config_write_yaml(&resolved, stdout, 0);
            }
        }
    }
    if ((status = run_agree(grid, status)) != DS_OK) goto done;
    if (writer && cfg->metrics_listen[0]) {
        int port = 0;
        if ((status = metrics_server_start(cfg->metrics_listen, cfg->metrics_allow_remote,
                                           &r->server, &port)) != DS_OK)
            goto done;
        printf("dstrain: metrics on %s/metrics\n", metrics_server_url(r->server));
        fflush(stdout);
    }

    /* model, on this rank's device and tensor-parallel slice */
    if ((status = model_init_parallel(&r->model, &r->mc, r->be, r->B, r->T, grid)) != DS_OK)
        goto done;
    r->n_params = run_count_params(&r->model);
    if (cfg->model_path[0] && !cfg->model_random_init) {
        ProgressTask load;
        char what[CONFIG_STR_MAX + 32];
        snprintf(what, sizeof(what), "loading weights from %s", cfg->model_path);
        progress_task_begin(&load, what, 0, "");
        if ((status = train_load_weights(cfg->model_path, &r->mc, &r->model,
                                         (uint64_t)cfg->train_seed)) != DS_OK)
            goto done;
        progress_task_end(&load);
    } else {
        model_init_weights(&r->model, (uint64_t)cfg->train_seed, cfg->model_init_std);
    }
    if ((status = optim_init_sharded(&r->opt, &r->model.table, r->be, grid, cfg->parallel_zero)) !=
            DS_OK ||
        (status = run_setup_continual(r)) != DS_OK || (status = run_alloc_buffers(r)) != DS_OK)
        goto done;
    run_print_summary(r, path);
    run_warn_settings(r);
    const double MiB = 1.0 / 1048576;
    /* EWC's Fisher and anchor (one pair online, one per task separate) sit on the optimizer's
     * shard; the Fisher pass adds a host buffer and, per example, a model of one row */
    const int ewc_sets = !r->ewc_on ? 0
                         : r->ewc.mode == EWC_ONLINE ? 1
                                                     : r->n_phases + r->ewc.n_sets;
    char ewc_memory[160] = "";
    if (r->ewc_on)
        snprintf(ewc_memory, sizeof(ewc_memory),
                 ", EWC %.2f MiB (Fisher and anchor x %d), Fisher pass %.2f MiB",
                 ewc_sets * r->opt.n * 8.0 * MiB, ewc_sets,
                 (r->model.table.total * 4.0 +
                  (r->fisher_work == &r->fisher_model
                       ? 2.0 * r->model.table.total * 4.0 + r->fisher_model.arena_bytes
                       : 0.0)) *
                     MiB);
    char ep_note[32] = "";
    if (grid->ep_size > 1) snprintf(ep_note, sizeof(ep_note), ", ep %d", grid->ep_size);
    printf("dstrain: %d ranks (tp %d x dp %d%s, zero %d); memory per rank: parameters %.2f MiB, "
           "gradients %.2f MiB, optimizer %.2f MiB, activations %.2f MiB%s\n",
           grid->world_size, grid->tp_size, grid->dp_size, ep_note, r->opt.zero,
           r->model.table.total * 4.0 * MiB, r->model.table.total * 4.0 * MiB,
           r->opt.n * 8.0 * MiB, r->model.arena_bytes * MiB, ewc_memory);
    if (r->be->weights_attach && r->be->act_size(r->be) == 2 && r->weight_copy) /* bf16 mode */
        printf("dstrain: precision bf16: the weights' bf16 working copy takes %.2f MiB per rank\n",
               r->model.table.total * 2.0 * MiB);
    else if (r->be->weights_attach && r->be->act_size(r->be) == 2)
        printf("dstrain: precision bf16: no working copy of the weights (cuda.weight_copy %s): "
               "each matmul rounds its weight as it reads it\n",
               strcmp(cfg->cuda_weight_copy, "none") ? "auto: the run does not fit with it"
                                                     : "none");

    /* checkpoints: the writer, then resume (parameters, moments, blobs, EWC pairs, replay) */
    TrainCkptWorld ckpt_world = {
        .layout = {grid->tp_size, grid->dp_size, r->opt.zero, grid->tp_rank, grid->dp_rank,
                   grid->ep_size},
        .all_min = grid->world_size > 1 ? train_all_min : NULL,
        .comm_ctx = &grid->world,
        .tmp_tag = (long)getpid(),
        .optim_begin = r->opt.shard_begin,
        .optim_end = r->opt.zero ? r->opt.shard_begin + r->opt.n : 0,
    };
    int64_t rank0_pid = ckpt_world.tmp_tag;
    if ((status = comm_broadcast(&grid->world, &rank0_pid, 1, COMM_I64, 0)) != DS_OK) goto done;
    ckpt_world.tmp_tag = (long)rank0_pid;
    if ((status = train_ckpt_open(cfg, r->run_dir, &r->mc, &r->model, &r->opt, r->total_steps,
                                  grid->world_size > 1 ? &ckpt_world : NULL, &r->ckpts)) != DS_OK ||
        (status = train_ckpt_resume(r->ckpts, &start_step)) != DS_OK)
        goto done;
    if (start_step > 0 || train_ckpt_resumed_path(r->ckpts)[0]) {
        status = run_restore(r, start_step);
    } else if (cfg->continual_state[0]) {
        status = continual_state_load(r, cfg->continual_state);
    }
    if (status == DS_OK) status = run_register_ewc_buffers(r, 0);
    if ((status = run_agree(grid, status)) != DS_OK) goto done;
    snprintf(path, sizeof(path), "%s/metrics.jsonl", r->run_dir);
    if (writer && start_step > 0 && (status = metrics_truncate(path, start_step)) != DS_OK)
        goto done;
    if (!writer) snprintf(path, sizeof(path), "/dev/null"); /* one writer */
    r->metrics = start_step > 0 || !writer ? fopen(path, "a") : run_file_create(path, tmp, sizeof(tmp));
    if (!r->metrics) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    if (writer && start_step == 0 && rename(tmp, path) != 0) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }

    /* fault-injection hook for tests: DSTRAIN_FAIL_RANK=k makes world rank k fail here as on
     * bad input, while the other ranks go on into the step's first collective */
    const char *fail_rank = getenv("DSTRAIN_FAIL_RANK");
    char *fail_end = NULL;
    if (fail_rank && *fail_rank && strtol(fail_rank, &fail_end, 10) == grid->world_rank &&
        *fail_end == 0) {
        status = ds_error(DS_ERR_INPUT, "DSTRAIN_FAIL_RANK=%s: injected failure on rank %d",
                          fail_rank, grid->world_rank);
        goto done;
    }
    const int K = r->n_phases;
    int k0 = r->state.phase_done; /* the first phase whose between-phase work is not done */
    if (start_step >= r->total_steps && k0 >= K) /* the end's work below is done again */
        printf("dstrain: the run in %s is already complete (step %d of %d); nothing to train\n",
               r->run_dir, start_step, r->total_steps);
    const double t_start = ds_now();
    const int on_gpu = !r->be->host_memory;
    const char *peak_env = getenv("DSTRAIN_PEAK_FLOPS"); /* per GPU; default: H100/H200 bf16 */
    progress_begin(&(ProgressOptions){
        .out = stdout, .interactive = -1, .rank = grid->world_rank, .total_steps = r->total_steps,
        .start_step = start_step, .log_every = cfg->log_every,
        .flops_per_token = model_flops_per_token(&r->mc, r->T),
        .peak_flops = on_gpu ? (peak_env ? atof(peak_env) : 989e12) * grid->world_size : 0.0});
    if (start_step > 0) progress_restore_nonfinite(r->state.nonfinite_total);
    if (on_gpu) /* what this rank's buffers hold on the device, as the memory line above */
        progress_set_gpu_memory(4.0 * (2.0 * r->model.table.total + 2.0 * r->opt.n) +
                                (double)r->model.arena_bytes);
    double first_loss = NAN, last_loss = NAN;
    signals_enter_loop(); /* from here a signal is answered with a checkpoint */
    for (int k = k0; k < K; k++) {
        const Phase *ph = &r->phases[k];
        const int end = ph->first_step + ph->steps;
        const int from = start_step > ph->first_step ? start_step : ph->first_step;
        if (from < end) {
            /* mid-phase: the reader where the checkpoint left it, the moments as saved; a
             * phase from its start: fresh Adam moments (as Avalanche's strategies reset the
             * optimizer), except the plain run's single phase */
            const int mid = from > ph->first_step;
            if ((status = run_open_phase_data(r, k, mid && r->state.reader_phase == k
                                                        ? &r->reader_state
                                                        : NULL)) != DS_OK)
                goto done;
            if (!mid && k > 0) {
                r->be->mem_zero(r->be, r->opt.m + r->opt.shard_begin, r->opt.n * sizeof(float));
                r->be->mem_zero(r->be, r->opt.v + r->opt.shard_begin, r->opt.n * sizeof(float));
                r->opt.t = 0;
            }
            if (r->sequence)
                progress_note("dstrain: task %d/%d: %s, steps %d..%d", k + 1, K, ph->id,
                              ph->first_step + 1, end);
            if ((status = run_phase(r, k, from, &first_loss, &last_loss)) != DS_OK) goto done;
        }
        if (r->sequence || r->ewc_on || r->replay_on) {
            if ((status = run_after_phase(r, k)) != DS_OK) goto done;
        }
        r->state.phase_done = k + 1;
        /* the state after the phase: a restart goes on with the next one */
        if (k + 1 < K) {
            if ((status = run_prepare_blobs(r, k)) != DS_OK ||
                (status = train_ckpt_save_now(r->ckpts, end, r->last_lr, 1)) != DS_OK)
                goto done;
        }
    }
    if ((status = run_prepare_blobs(r, K - 1)) != DS_OK ||
        (status = train_ckpt_finish(r->ckpts, r->total_steps, r->last_lr)) != DS_OK)
        goto done;
    if (cfg->run_save_final && (status = train_save_final(&r->model, grid, r->run_dir)) != DS_OK)
        goto done;
    progress_end();
    if (r->sequence && (status = run_agree(grid, continual_report(r))) != DS_OK) goto done;
    if (isnan(first_loss))
        printf("dstrain: done: %d steps in %.1fs, run directory %s\n", r->total_steps,
               ds_now() - t_start, r->run_dir);
    else
        printf("dstrain: done: %d steps in %.1fs, loss %.4f -> %.4f, run directory %s\n",
               r->total_steps, ds_now() - t_start, first_loss, last_loss, r->run_dir);

done:
    progress_end();
    if (status != DS_OK && status != DS_EXIT_REQUEUE && r->grid.world_size > 1) {
        /* one rank's failure ends every rank, with its message: never a hang in a collective */
        fflush(stdout);
        fprintf(stderr, "dstrain: error: rank %d: %s\n", r->grid.world_rank, ds_last_error());
        comm_abort(&r->grid, status);
    }
    run_free(r);
    if (lock_fd >= 0) close(lock_fd);
    return status;
}

static void train_usage(FILE *out)
{
    fprintf(out,
            "usage: dstrain train [-c CONFIG.yaml] [key=value ...]\n"
            "  Trains a model: a plain run over data.train, or a task sequence (continual.tasks)\n"
            "  through the same loop. With no arguments, trains the tiny preset on the bundled\n"
            "  dataset. The config file is read first, then the overrides in order.\n"
            "  Exit codes: 0 done, 1 internal failure, 2 bad input or config, 75 checkpointed\n"
            "  after a signal (requeue and resume with train.resume=auto).\n\n"
            "Keys (`dstrain config --defaults` for the documented defaults, docs/config.md):\n");
    config_write_help(out);
}

int train_main(int argc, char **argv)
{
    /* first thing: a signal during setup ends the process at once (nothing to save yet), one in
     * the loop is answered with a checkpoint (signals.h) */
    signals_install();
    Config cfg;
    config_set_defaults(&cfg);
    /* the config file first, then overrides in order, whatever their position */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            train_usage(stdout);
            return DS_OK;
        }
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "%s: expects a file name", argv[i]);
            DS_TRY(config_load_yaml(&cfg, argv[++i]));
        }
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            i++;
            continue;
        }
        if (!strchr(argv[i], '='))
            return ds_error(DS_ERR_INPUT,
                            "command line: \"%s\": expected -c CONFIG or key=value", argv[i]);
        DS_TRY(config_apply_override(&cfg, argv[i], "command line"));
    }
    DS_TRY(config_validate(&cfg));
    return train_run(&cfg);
}
