/* train_ckpt.c: the trainer's side of checkpoints (see train_ckpt.h). A CPU run has no RNG
 * state beyond train.seed (data order is a function of seed and position, there is no dropout),
 * so a resumed run that restores parameters, moments, the AdamW step and the reader positions
 * continues bitwise as if it had never stopped. */
#define _GNU_SOURCE /* open_memstream */
#include "train_ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export.h"

struct TrainCkpt {
    const Config *cfg;
    char run_dir[CONFIG_STR_MAX];
    char dir[CONFIG_STR_MAX + 32];
    Model *model;
    Optimizer *opt;
    LMReader *reader, *eval_reader;
    TrainCkptWorld world;
    CkptWriter *writer;
    char *config_yaml, *hf_config_json;
    int64_t positions[2];
    int failed_step;     /* the last save that failed (on_error: continue), or -1 */
    CkptBuffer extra[8]; /* train_ckpt_add_buffer */
    char extra_names[8][40];
    int n_extra;
    int resumed_step; /* the step resumed from, or -1 */
    char resumed_path[CONFIG_STR_MAX + 64];
};

static int is_rank0(const TrainCkpt *tc)
{
    return tc->world.layout.tp_rank == 0 && tc->world.layout.dp_rank == 0;
}

/* Read flat range [lo, hi) of one buffer (0, 0: all of it) into device or host memory; base is
 * indexed by flat offset, and only the range is written: a ZeRO shard's allocation holds no
 * more. Device memory is filled through a host staging buffer of the range's size. */
static int load_buffer(Ckpt *c, const char *prefix, const Model *m, float *base, size_t lo,
                       size_t hi)
{
    if (m->be->host_memory) return ckpt_read_buffer(c, prefix, &m->table, base, lo, hi);
    if (!hi) hi = m->table.total;
    const size_t bytes = (hi - lo) * sizeof(float);
    float *staging = ds_aligned_alloc(PARAM_ALIGN_BYTES, bytes ? bytes : sizeof(float));
    if (!staging) return DS_ERR_INTERNAL;
    int status = ckpt_read_buffer(c, prefix, &m->table, staging - lo, lo, hi);
    if (status == DS_OK) m->be->mem_to_device(base + lo, staging, bytes);
    free(staging);
    return status;
}

static int resume_from(TrainCkpt *tc, const char *path, int verify, int *start_step)
{
    Ckpt *c;
    DS_TRY(ckpt_open(path, &c));
    int status = verify ? ckpt_verify(c) : DS_OK;
    const CkptLayout *now = &tc->world.layout;
    const CkptLayout saved = ckpt_layout(c);
    long long optim_t = 0;
    if (status == DS_OK) status = ckpt_state_int(c, "optim_t", &optim_t);
    if (status == DS_OK && (optim_t < 0 || optim_t > 2000000000))
        status = ds_error(DS_ERR_INPUT, "%s: state.optim_t out of range", path);
    if (status == DS_OK) status = load_buffer(c, "params", tc->model, tc->model->params, 0, 0);
    if (status == DS_OK)
        status = load_buffer(c, "optim.m", tc->model, tc->opt->m, tc->world.optim_begin,
                             tc->world.optim_end);
    if (status == DS_OK)
        status = load_buffer(c, "optim.v", tc->model, tc->opt->v, tc->world.optim_begin,
                             tc->world.optim_end);
    /* The trainer's reader is a view of the DataReader: its position is the global sample
     * index of the next step, the same on every rank and independent of the dp size, so rank
     * (0, 0)'s copy serves any layout. */
    int64_t pos = 0;
    if (status == DS_OK && tc->reader)
        status = ckpt_read_blob(c, "reader.train", 0, 0, &pos, sizeof(pos));
    if (status == DS_OK && tc->reader) status = lm_reader_seek(tc->reader, pos);
    if (status == DS_OK && tc->eval_reader &&
        ckpt_read_blob(c, "reader.eval", 0, 0, &pos, sizeof(pos)) == DS_OK)
        status = lm_reader_seek(tc->eval_reader, pos);
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
    }
    ckpt_close(c);
    return status;
}

/* This rank's half of train_ckpt_open: resume, then open the writer. *out is set as soon as
 * there is something to free, even on failure. */
static int open_on_this_rank(const Config *cfg, const char *run_dir, const ModelConfig *mc,
                             Model *model, Optimizer *opt, LMReader *reader, LMReader *eval_reader,
                             const TrainCkptWorld *world, TrainCkpt **out, int *start_step)
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
    tc->reader = reader;
    tc->eval_reader = eval_reader;
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

    /* resume */
    const char *resume = cfg->train_resume;
    if (status == DS_OK && strcmp(resume, "none") != 0) {
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
                    Optimizer *opt, LMReader *reader, LMReader *eval_reader,
                    const TrainCkptWorld *world, TrainCkpt **out, int *start_step)
{
    *out = NULL;
    *start_step = 0;
    TrainCkpt *tc = NULL;
    int status = open_on_this_rank(cfg, run_dir, mc, model, opt, reader, eval_reader, world, &tc,
                                   start_step);
    /* Rank 0's writer removed the temporary directories of crashed runs as it opened, and this
     * run's ranks write into a directory of the same pattern: until every rank is past this
     * agreement, one that saved at once could lose its shard to that cleanup. It also ends the
     * open on every rank alike when one of them failed to resume or to open. */
    if (world && world->all_min) {
        int all_ok = 0;
        const int rc = world->all_min(world->comm_ctx, status == DS_OK, &all_ok);
        if (status == DS_OK && rc != DS_OK) status = rc;
        if (status == DS_OK && !all_ok)
            status = ds_error(DS_ERR_INTERNAL,
                              "checkpoint: another rank could not resume or open its writer");
    }
    if (status != DS_OK) {
        train_ckpt_close(tc);
        *start_step = 0;
        return status;
    }
    *out = tc;
    return DS_OK;
}

/* A save's failure under checkpoint.on_error. */
static int on_save_error(TrainCkpt *tc, int status, int step)
{
    if (status == DS_OK) return DS_OK;
    if (strcmp(tc->cfg->checkpoint_on_error, "continue") != 0) return status;
    fprintf(stderr, "dstrain: warning: %s; training continues (checkpoint.on_error: continue)\n",
            ds_last_error());
    tc->failed_step = step;
    ds_clear_error();
    return DS_OK;
}

static int save_now(TrainCkpt *tc, int step, float lr)
{
    const Backend *be = tc->model->be;
    void (*to_host)(void *, const void *, size_t) = be->host_memory ? NULL : be->mem_to_host;
    const int zero = tc->world.layout.zero;
    CkptBuffer bufs[3 + 8] = {
        {.prefix = "params",
         .base = tc->model->params,
         .replicated_over_dp = 1,
         .to_host = to_host},
        {.prefix = "optim.m",
         .base = tc->opt->m,
         .flat_begin = tc->world.optim_begin,
         .flat_end = tc->world.optim_end,
         .replicated_over_dp = !zero,
         .to_host = to_host},
        {.prefix = "optim.v",
         .base = tc->opt->v,
         .flat_begin = tc->world.optim_begin,
         .flat_end = tc->world.optim_end,
         .replicated_over_dp = !zero,
         .to_host = to_host},
    };
    CkptBlob blobs[2];
    int nblobs = 0;
    if (tc->reader) { /* none for a state that no single reader produced (task sequences) */
        lm_reader_position(tc->reader, &tc->positions[0]);
        blobs[nblobs++] = (CkptBlob){"reader.train", &tc->positions[0], sizeof(int64_t)};
    }
    if (tc->eval_reader) {
        lm_reader_position(tc->eval_reader, &tc->positions[1]);
        blobs[nblobs++] = (CkptBlob){"reader.eval", &tc->positions[1], sizeof(int64_t)};
    }
    const Config *cfg = tc->cfg;
    CkptMeta meta = {
        .step = step,
        .optim_t = tc->opt->t,
        .lr = lr,
        .seed = cfg->train_seed,
        .train_steps = cfg->train_steps,
        .model_path = cfg->model_path,
        .model_preset = cfg->model_preset,
        .config_yaml = tc->config_yaml,
        .hf_config_json = tc->hf_config_json,
    };
    double stall = 0;
    for (int i = 0; i < tc->n_extra; i++)
        bufs[3 + i] = tc->extra[i];
    int status = ckpt_writer_save(tc->writer, &meta, bufs, 3 + tc->n_extra, blobs, nblobs, &stall);
    return on_save_error(tc, status, step);
}

int train_ckpt_after_step(TrainCkpt *tc, int step, float lr)
{
    if (!tc) return DS_OK;
    DS_TRY(on_save_error(tc, ckpt_writer_poll(tc->writer), step));
    const int every = tc->cfg->checkpoint_every;
    if (every > 0 && step % every == 0 && step < tc->cfg->train_steps)
        return save_now(tc, step, lr);
    return DS_OK;
}

int train_ckpt_add_buffer(TrainCkpt *tc, const char *prefix, float *base, size_t begin, size_t end,
                          int replicated_over_dp)
{
    if (!tc) return DS_OK;
    if (tc->n_extra == 8 || strlen(prefix) >= sizeof(tc->extra_names[0]))
        return ds_error(DS_ERR_INTERNAL, "checkpoint: too many buffers or a long name");
    snprintf(tc->extra_names[tc->n_extra], sizeof(tc->extra_names[0]), "%s", prefix);
    const Backend *be = tc->model->be; /* the buffer lives in the model's backend memory */
    tc->extra[tc->n_extra] = (CkptBuffer){.prefix = tc->extra_names[tc->n_extra],
                                          .base = base,
                                          .flat_begin = begin,
                                          .flat_end = end,
                                          .replicated_over_dp = replicated_over_dp,
                                          .to_host = be->host_memory ? NULL : be->mem_to_host};
    tc->n_extra++;
    if (tc->resumed_path[0]) {
        Ckpt *c;
        DS_TRY(ckpt_open(tc->resumed_path, &c));
        int status = ckpt_has_buffer(c, prefix)
                         ? load_buffer(c, prefix, tc->model, base, begin, end)
                         : DS_OK;
        ckpt_close(c);
        return status;
    }
    return DS_OK;
}

int train_ckpt_save_now(TrainCkpt *tc, int step, float lr)
{
    if (!tc) return DS_OK;
    DS_TRY(on_save_error(tc, ckpt_writer_wait(tc->writer), step));
    if (ckpt_writer_last_step(tc->writer) == step || tc->resumed_step == step) return DS_OK;
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
        fprintf(stderr, "dstrain: warning: the final checkpoint was not saved; no export\n");
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
    printf("dstrain: exported the model to %s (%s, %.2fs)\n", out, tc->cfg->export_dtype,
           ds_now() - t0);
    return DS_OK;
}

void train_ckpt_close(TrainCkpt *tc)
{
    if (!tc) return;
    ckpt_writer_close(tc->writer);
    free(tc->config_yaml);
    free(tc->hf_config_json);
    free(tc);
}
