/* train_ckpt.c: the trainer's side of checkpoints (see train_ckpt.h). A CPU run has no RNG
 * state beyond train.seed and what the blobs carry (data order is a function of seed and
 * position, the replay buffer's random state is in its blob, there is no dropout), so a resumed
 * run that restores parameters, moments, the AdamW step, the extra buffers and the blobs
 * continues bitwise as if it had never stopped. */
#define _GNU_SOURCE /* open_memstream */
#include "train_ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../checkpoint/export.h"
#include "../checkpoint/hf_model.h"
#include "progress.h"

#define TRAIN_CKPT_MAX_BLOBS 8

struct TrainCkpt {
    const Config *cfg;
    char run_dir[CONFIG_STR_MAX];
    char dir[CONFIG_STR_MAX + 32];
    Model *model;
    Optimizer *opt;
    int total_steps;
    TrainCkptWorld world;
    CkptWriter *writer;
    char *config_yaml, *hf_config_json;
    int failed_step; /* the last save that failed (on_error: continue), or -1 */
    CkptBuffer *bufs; /* parameters, two moments, then train_ckpt_add_buffer's */
    char (*buf_names)[40];
    int n_bufs, cap_bufs;
    CkptBlob blobs[TRAIN_CKPT_MAX_BLOBS];
    int n_blobs;
    int resumed_step; /* the step resumed from, or -1 */
    char resumed_path[CONFIG_STR_MAX + 64];
    Ckpt *resumed; /* open while the loop reads blobs and buffers back */
};

static int is_rank0(const TrainCkpt *tc)
{
    return tc->world.layout.tp_rank == 0 && tc->world.layout.dp_rank == 0;
}

/* Every rank agrees on status: the first failure on any rank fails all. */
static int agree(const TrainCkpt *tc, int status, const char *what)
{
    if (!tc->world.all_min) return status;
    int all_ok = 0;
    const int rc = tc->world.all_min(tc->world.comm_ctx, status == DS_OK, &all_ok);
    if (status == DS_OK && rc != DS_OK) status = rc;
    if (status == DS_OK && !all_ok)
        status = ds_error(DS_ERR_INTERNAL, "checkpoint: another rank could not %s", what);
    return status;
}

typedef struct {
    Ckpt *c;
    const char *prefix;
    const ParamTable *table;
    size_t lo, hi;
} BufferRead;

static int buffer_read(void *ctx, float *host, size_t first, size_t len)
{
    (void)first, (void)len; /* one piece: the whole range */
    const BufferRead *b = ctx;
    return ckpt_read_buffer(b->c, b->prefix, b->table, host - b->lo, b->lo, b->hi);
}

/* Read flat range [lo, hi) of one buffer (0, 0: all of it) into device or host memory; base is
 * indexed by flat offset, and only the range is written: a ZeRO shard's allocation holds no
 * more. Device memory is filled through a host staging buffer of the range's size. */
static int load_buffer(Ckpt *c, const char *prefix, const Model *m, float *base, size_t lo,
                       size_t hi)
{
    if (!hi) hi = m->table.total;
    BufferRead b = {c, prefix, &m->table, lo, hi};
    return backend_stage(m->be, base + lo, hi - lo, STAGE_WRITE, 0, NULL, buffer_read, &b);
}

static int push_buffer(TrainCkpt *tc, const char *prefix, float *base, size_t begin, size_t end,
                       int replicated_over_dp)
{
    if (strlen(prefix) >= sizeof(tc->buf_names[0]))
        return ds_error(DS_ERR_INTERNAL, "checkpoint: buffer name %s too long", prefix);
    if (tc->n_bufs == tc->cap_bufs) {
        int cap = tc->cap_bufs ? 2 * tc->cap_bufs : 8;
        CkptBuffer *b = realloc(tc->bufs, (size_t)cap * sizeof(*b));
        if (b) tc->bufs = b;
        char(*n)[40] = realloc(tc->buf_names, (size_t)cap * sizeof(*n));
        if (n) tc->buf_names = n;
        if (!b || !n) return ds_error(DS_ERR_INTERNAL, "out of memory");
        tc->cap_bufs = cap;
        for (int i = 0; i < tc->n_bufs; i++) /* names moved with the array */
            tc->bufs[i].prefix = tc->buf_names[i];
    }
    const Backend *be = tc->model->be; /* the buffer lives in the model backend's memory */
    snprintf(tc->buf_names[tc->n_bufs], sizeof(tc->buf_names[0]), "%s", prefix);
    tc->bufs[tc->n_bufs] = (CkptBuffer){.prefix = tc->buf_names[tc->n_bufs],
                                        .base = base,
                                        .flat_begin = begin,
                                        .flat_end = end,
                                        .replicated_over_dp = replicated_over_dp,
                                        .device = be->host_memory ? NULL : be};
    tc->n_bufs++;
    return DS_OK;
}

/* This rank's half of train_ckpt_open. *out is set as soon as there is something to free. */
static int open_on_this_rank(const Config *cfg, const char *run_dir, const ModelConfig *mc,
                             Model *model, Optimizer *opt, int total_steps,
                             const TrainCkptWorld *world, TrainCkpt **out)
{
    uint64_t shard_bytes;
    DType dtype;
    DS_TRY(export_parse_size(cfg->export_max_shard_size, &shard_bytes));
    DS_TRY(export_parse_dtype(cfg->export_dtype, &dtype));
    TrainCkpt *tc = ds_calloc(1, sizeof(*tc));
    if (!tc) return DS_ERR_INTERNAL;
    *out = tc;
    tc->cfg = cfg;
    tc->model = model;
    tc->opt = opt;
    tc->total_steps = total_steps;
    tc->failed_step = -1;
    tc->resumed_step = -1;
    snprintf(tc->run_dir, sizeof(tc->run_dir), "%s", run_dir);
    if (cfg->checkpoint_dir[0])
        snprintf(tc->dir, sizeof(tc->dir), "%s", cfg->checkpoint_dir);
    else
        snprintf(tc->dir, sizeof(tc->dir), "%s/checkpoints", run_dir);
    if (world) {
        tc->world = *world;
    } else {
        tc->world.layout = (CkptLayout){.tp = 1, .dp = 1, .zero = cfg->parallel_zero};
        tc->world.tmp_tag = (long)getpid();
    }
    const int zero = tc->world.layout.zero;
    DS_TRY(push_buffer(tc, "params", model->params, 0, 0, 1));
    DS_TRY(push_buffer(tc, "optim.m", opt->m, tc->world.optim_begin, tc->world.optim_end, !zero));
    DS_TRY(push_buffer(tc, "optim.v", opt->v, tc->world.optim_begin, tc->world.optim_end, !zero));

    /* what every checkpoint records besides the buffers */
    size_t len;
    FILE *mem = open_memstream(&tc->config_yaml, &len);
    int status = mem ? DS_OK : ds_error(DS_ERR_INTERNAL, "out of memory");
    if (mem) {
        Config resolved = *cfg;
        snprintf(resolved.run_dir, sizeof(resolved.run_dir), "%s", run_dir);
        config_write_yaml(&resolved, mem, 0);
        fclose(mem);
    }
    if (status == DS_OK) status = hf_config_json_text(mc, cfg->model_path, &tc->hf_config_json);
    /* a classifier's checkpoints say so, so that the export is a *ForSequenceClassification */
    if (status == DS_OK && mc->num_labels > 0)
        status = hf_config_json_classification(mc, cfg->task_labels, &tc->hf_config_json);
    if (status == DS_OK) {
        CkptWriterOptions wo = {
            .dir = tc->dir,
            .keep = cfg->checkpoint_keep,
            .keep_every = cfg->checkpoint_keep_every,
            .async = cfg->checkpoint_async,
            .layout = tc->world.layout,
            .all_min = tc->world.all_min,
            .comm_ctx = tc->world.comm_ctx,
            .tmp_tag = tc->world.tmp_tag,
        };
        status = ckpt_writer_open(&wo, &model->table, &tc->writer);
        /* parameters and two moments, plus the small blobs */
        if (status == DS_OK)
            status = ckpt_writer_reserve(tc->writer, 3 * model->table.total * sizeof(float) + 64);
    }
    return status;
}

int train_ckpt_open(const Config *cfg, const char *run_dir, const ModelConfig *mc, Model *model,
                    Optimizer *opt, int total_steps, const TrainCkptWorld *world,
                    TrainCkpt **out)
{
    *out = NULL;
    TrainCkpt *tc = NULL;
    int status = open_on_this_rank(cfg, run_dir, mc, model, opt, total_steps, world, &tc);
    /* Rank 0's writer removed the temporary directories of crashed runs as it opened, and this
     * run's ranks write into a directory of the same pattern: until every rank is past this
     * agreement, one that saved at once could lose its shard to that cleanup. */
    if (world && world->all_min) {
        int all_ok = 0;
        const int rc = world->all_min(world->comm_ctx, status == DS_OK, &all_ok);
        if (status == DS_OK && rc != DS_OK) status = rc;
        if (status == DS_OK && !all_ok)
            status = ds_error(DS_ERR_INTERNAL, "checkpoint: another rank could not open its "
                                               "writer");
    }
    if (status != DS_OK) {
        train_ckpt_close(tc);
        return status;
    }
    *out = tc;
    return DS_OK;
}

static int resume_from(TrainCkpt *tc, const char *path, int verify, int *start_step)
{
    Ckpt *c;
    DS_TRY(ckpt_open(path, &c));
    int status = verify ? ckpt_verify(c) : DS_OK;
    const CkptLayout *now = &tc->world.layout;
    const CkptLayout saved = ckpt_layout(c);
    long long optim_t = 0, saved_steps = 0;
    if (status == DS_OK) status = ckpt_state_int(c, "optim_t", &optim_t);
    if (status == DS_OK && (optim_t < 0 || optim_t > 2000000000))
        status = ds_error(DS_ERR_INPUT, "%s: state.optim_t out of range", path);
    if (status == DS_OK && ckpt_step(c) > tc->total_steps)
        status = ds_error(DS_ERR_INPUT,
                          "%s: step %d is beyond this run's %d steps (train.steps, or the tasks' "
                          "steps): resume a checkpoint of this run, or raise the steps",
                          path, ckpt_step(c), tc->total_steps);
    if (status == DS_OK) status = load_buffer(c, "params", tc->model, tc->model->params, 0, 0);
    if (status == DS_OK)
        status = load_buffer(c, "optim.m", tc->model, tc->opt->m, tc->world.optim_begin,
                             tc->world.optim_end);
    if (status == DS_OK)
        status = load_buffer(c, "optim.v", tc->model, tc->opt->v, tc->world.optim_begin,
                             tc->world.optim_end);
    if (status == DS_OK) {
        tc->opt->t = (int)optim_t;
        *start_step = ckpt_step(c);
        tc->resumed_step = *start_step;
        snprintf(tc->resumed_path, sizeof(tc->resumed_path), "%s", path);
        printf("dstrain: resumed from %s at step %d\n", path, *start_step);
        if (saved.tp != now->tp || saved.dp != now->dp)
            printf("dstrain: the checkpoint was saved at tp=%d x dp=%d, this run is tp=%d x "
                   "dp=%d: its shards were reassembled and re-split\n",
                   saved.tp, saved.dp, now->tp, now->dp);
        if (ckpt_state_int(c, "train_steps", &saved_steps) == DS_OK &&
            saved_steps != tc->total_steps && *start_step < tc->total_steps)
            progress_warn("the checkpoint's run had %lld steps, this one has %d: the "
                          "learning-rate schedule from step %d on follows the new length",
                          saved_steps, tc->total_steps, *start_step);
        tc->resumed = c;
        return DS_OK;
    }
    ckpt_close(c);
    return status;
}

int train_ckpt_resume(TrainCkpt *tc, int *start_step)
{
    *start_step = 0;
    const char *resume = tc->cfg->train_resume;
    int status = DS_OK;
    if (strcmp(resume, "none") != 0) {
        char path[CONFIG_STR_MAX + 64];
        int verify = 1;
        if (strcmp(resume, "auto") == 0) {
            status = ckpt_find_latest(tc->dir, path, sizeof(path));
            verify = 0; /* ckpt_find_latest verified it */
            if (status == DS_OK && !path[0])
                printf("dstrain: train.resume: auto: no complete checkpoint in %s yet, starting "
                       "fresh\n",
                       tc->dir);
        } else {
            snprintf(path, sizeof(path), "%s", resume);
        }
        if (status == DS_OK && path[0]) {
            status = resume_from(tc, path, verify, start_step);
            if (status != DS_OK) ds_error_context(status, "train.resume");
        }
    }
    status = agree(tc, status, "resume");
    if (status != DS_OK) *start_step = 0;
    return status;
}

const char *train_ckpt_resumed_path(const TrainCkpt *tc) { return tc->resumed_path; }

int train_ckpt_blob_size(TrainCkpt *tc, const char *name, size_t *size)
{
    *size = 0;
    if (!tc->resumed) return DS_OK;
    return ckpt_blob_size(tc->resumed, name, 0, 0, size);
}

int train_ckpt_read_blob(TrainCkpt *tc, const char *name, void *out, size_t size)
{
    if (!tc->resumed) return ds_error(DS_ERR_INTERNAL, "checkpoint: %s: nothing resumed", name);
    return ckpt_read_blob(tc->resumed, name, 0, 0, out, size);
}

int train_ckpt_add_buffer(TrainCkpt *tc, const char *prefix, float *base, size_t begin, size_t end,
                          int replicated_over_dp)
{
    if (!tc) return DS_OK;
    DS_TRY(push_buffer(tc, prefix, base, begin, end, replicated_over_dp));
    if (tc->resumed && ckpt_has_buffer(tc->resumed, prefix))
        return load_buffer(tc->resumed, prefix, tc->model, base, begin, end);
    return DS_OK;
}

int train_ckpt_set_blobs(TrainCkpt *tc, const CkptBlob *blobs, int n)
{
    if (n > TRAIN_CKPT_MAX_BLOBS) return ds_error(DS_ERR_INTERNAL, "checkpoint: too many blobs");
    memcpy(tc->blobs, blobs, (size_t)n * sizeof(CkptBlob));
    tc->n_blobs = n;
    return DS_OK;
}

/* A save's failure under checkpoint.on_error. */
static int on_save_error(TrainCkpt *tc, int status, int step)
{
    if (status == DS_OK) return DS_OK;
    if (strcmp(tc->cfg->checkpoint_on_error, "continue") != 0) return status;
    progress_warn("%s; training continues (checkpoint.on_error: continue)", ds_last_error());
    tc->failed_step = step;
    ds_clear_error();
    return DS_OK;
}

static int save_now(TrainCkpt *tc, int step, float lr)
{
    const Config *cfg = tc->cfg;
    CkptMeta meta = {
        .step = step,
        .optim_t = tc->opt->t,
        .lr = lr,
        .seed = cfg->train_seed,
        .train_steps = tc->total_steps,
        .model_path = cfg->model_path,
        .model_preset = cfg->model_preset,
        .config_yaml = tc->config_yaml,
        .hf_config_json = tc->hf_config_json,
    };
    double stall = 0;
    int status = ckpt_writer_save(tc->writer, &meta, tc->bufs, tc->n_bufs, tc->blobs, tc->n_blobs,
                                  &stall);
    return on_save_error(tc, status, step);
}

int train_ckpt_due(const TrainCkpt *tc, int step, int limit)
{
    const int every = tc ? tc->cfg->checkpoint_every : 0;
    return every > 0 && step % every == 0 && step < limit;
}

int train_ckpt_after_step(TrainCkpt *tc, int step, int limit, float lr)
{
    if (!tc) return DS_OK;
    DS_TRY(on_save_error(tc, ckpt_writer_poll(tc->writer), step));
    if (train_ckpt_due(tc, step, limit)) return save_now(tc, step, lr);
    return DS_OK;
}

int train_ckpt_save_now(TrainCkpt *tc, int step, float lr, int force)
{
    if (!tc) return DS_OK;
    DS_TRY(on_save_error(tc, ckpt_writer_wait(tc->writer), step));
    if (!force && (ckpt_writer_last_step(tc->writer) == step || tc->resumed_step == step))
        return DS_OK;
    DS_TRY(save_now(tc, step, lr));
    /* here a failure is returned whatever on_error says: the caller is about to stop */
    return ckpt_writer_wait(tc->writer);
}

int train_ckpt_finish(TrainCkpt *tc, int step, float lr)
{
    if (!tc) return DS_OK;
    DS_TRY(on_save_error(tc, ckpt_writer_wait(tc->writer), step));
    /* a run resumed at its last step has nothing new to save */
    const int resumed_here = tc->resumed_step == step && ckpt_writer_last_step(tc->writer) < 0;
    if (!resumed_here && ckpt_writer_last_step(tc->writer) != step) DS_TRY(save_now(tc, step, lr));
    DS_TRY(on_save_error(tc, ckpt_writer_wait(tc->writer), step));
    if (!tc->cfg->export_enabled || !is_rank0(tc)) return DS_OK;
    const char *final = resumed_here ? tc->resumed_path : ckpt_writer_last_path(tc->writer);
    if (!resumed_here && ckpt_writer_last_step(tc->writer) != step) {
        progress_warn("the final checkpoint was not saved; no export");
        return DS_OK;
    }
    DType dtype = DT_BF16;
    uint64_t shard_bytes = 0;
    DS_TRY(export_parse_dtype(tc->cfg->export_dtype, &dtype));
    DS_TRY(export_parse_size(tc->cfg->export_max_shard_size, &shard_bytes));
    char out[CONFIG_STR_MAX + 16];
    snprintf(out, sizeof(out), "%s/export", tc->run_dir);
    const double t0 = ds_now();
    DS_TRY(hf_export_checkpoint(final, out, dtype, shard_bytes, 1));
    progress_note("dstrain: exported the model to %s (%s, %.2fs)", out, tc->cfg->export_dtype,
                  ds_now() - t0);
    return DS_OK;
}

void train_ckpt_close(TrainCkpt *tc)
{
    if (!tc) return;
    ckpt_writer_close(tc->writer);
    if (tc->resumed) ckpt_close(tc->resumed);
    free(tc->config_yaml);
    free(tc->hf_config_json);
    free(tc->bufs);
    free(tc->buf_names);
    free(tc);
}
