/* train.c: the training driver. One step reads a batch, runs forward and backward over the
 * micro-batches, clips, steps AdamW and logs; everything it touches was allocated before the
 * first step. Every rank of the process grid (comm/) runs it in step; world rank 0 alone writes
 * the run directory's shared files and prints, and a rank that fails takes the job down. */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../checkpoint/hf_model.h"
#include "../checkpoint/safetensors.h"
#include "../checkpoint/train_ckpt.h"
#include "../data/dataset.h"
#include "../data/reader.h"
#include "common.h"
#include "continual.h"
#include "metrics_server.h"
#include "optim.h"
#include "signals.h"
#include "progress.h"
#ifdef DSTRAIN_HAVE_CUDA
#include "../kernels/cuda/cuda_ops.h"
#endif

int train_model_config(const Config *cfg, ModelConfig *mc)
{
    if (cfg->model_path[0]) {
        DS_TRY(hf_config_load(cfg->model_path, mc));
        if (mc->num_labels > 0 && strcmp(cfg->task_type, "classification") != 0)
            return ds_error(DS_ERR_INPUT,
                            "model.path: %s is a sequence classifier (%d labels); set "
                            "task.type: classification and task.num_labels: %d",
                            cfg->model_path, mc->num_labels, mc->num_labels);
    } else
        DS_TRY(model_preset(cfg->model_preset, mc));
    mc->activation_checkpointing = cfg->train_activation_checkpointing;
    return cfg->model_path[0] ? DS_OK : model_config_check(mc, "model.preset");
}

const char *train_data_path(const char *configured, const char *bundled_name, char *buf,
                            size_t size)
{
    if (configured[0]) return configured;
    snprintf(buf, size, "%s/data/bundled/%s", DSTRAIN_SOURCE_DIR, bundled_name);
    return buf;
}

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

/* A window of batch rows for all micro-batches of one step, read before the step starts so that
 * the loss can be normalized by the step's total count of trained tokens. */
typedef struct StepBatch {
    int32_t *inputs, *targets;
    float *weights;
} StepBatch;

/* run.save_final: the full fp32 parameters in <run_dir>/final.safetensors, each tensor put
 * together on world rank 0 from the tensor-parallel slices (a check and debugging aid, not the
 * export: it holds the whole model in rank 0's memory). Collective over the grid. */
int train_save_final(const Model *m, const ProcessGrid *g, const char *run_dir)
{
    const ParamTable *pt = &m->table;
    const int tp = g->tp_size, writer = g->world_rank == 0;
    int status = DS_OK;
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
        m->be->mem_to_host(gathered + (size_t)g->tp_rank * p->numel, m->params + p->offset,
                           p->numel * sizeof(float));
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

/* Mean loss over `batches` micro-batches of every data-parallel rank (each reads its own share
 * of the eval set); every rank of dp takes part in the sum, even after its reader failed. */
static double eval_loss_on(Model *m, DataReader *reader, int batches, float *weights_scratch,
                           const CommGroup *dp)
{
    const int N = m->B * m->T;
    double sum = 0.0, count = 0.0;
    for (int b = 0; b < batches; b++) {
        if (data_reader_next(reader, m->inputs, m->targets, m->loss_weights, NULL) != DS_OK) {
            sum = NAN;
            break;
        }
        for (int i = 0; i < N; i++) count += m->loss_weights[i];
        memcpy(weights_scratch, m->loss_weights, (size_t)N * sizeof(float));
        sum += model_forward(m, m->inputs, m->targets, weights_scratch, NULL);
    }
    double totals[2] = {sum, count};
    if (comm_all_reduce(dp, totals, 2, COMM_F64, COMM_SUM) != DS_OK) return NAN;
    return totals[1] > 0 ? totals[0] / totals[1] : NAN;
}

/* The backend device: names (cpu, cuda) selects. A build without CUDA says so for cuda. */
int train_backend(const Config *cfg, const Backend **be)
{
    const char *device = cfg->device, *precision = cfg->precision;
    if (strcmp(device, "cpu") == 0) {
        if (strcmp(precision, "bf16") == 0)
            return ds_error(DS_ERR_INPUT, "precision: bf16 needs device: cuda (the CPU backend "
                                          "computes in fp32 only; use auto or fp32)");
        *be = backend_cpu();
        return DS_OK;
    }
    if (strcmp(device, "cuda") == 0) {
#ifdef DSTRAIN_HAVE_CUDA
        *be = backend_cuda(); /* NULL when no GPU is usable: the config asks for too much */
        if (!*be) return DS_ERR_INPUT;
        /* auto: mixed precision, unless DSTRAIN_CUDA_MATMUL chose a mode for an experiment */
        const char *env = getenv("DSTRAIN_CUDA_MATMUL");
        if (strcmp(precision, "auto") != 0)
            return cuda_matmul_precision(precision);
        return env && env[0] ? DS_OK : cuda_matmul_precision("bf16");
#else
        return ds_error(DS_ERR_INPUT, "device: cuda: this dstrain was built without CUDA "
                                      "(nvcc was not found, or -DDSTRAIN_CUDA=OFF)");
#endif
    }
    return ds_error(DS_ERR_INPUT, "device: unknown device \"%s\" (known: cpu, cuda)", device);
}

/* Weights are read into host memory; on a device backend through a host staging buffer. */
static int train_load_weights(const char *dir, const ModelConfig *mc, Model *m)
{
    if (m->be->host_memory) return hf_load_weights(dir, mc, &m->table, m->params);
    const size_t bytes = m->table.total * sizeof(float);
    float *staging = ds_aligned_alloc(PARAM_ALIGN_BYTES, bytes);
    if (!staging) return DS_ERR_INTERNAL;
    int status = hf_load_weights(dir, mc, &m->table, staging);
    if (status == DS_OK) m->be->mem_to_device(m->params, staging, bytes);
    free(staging);
    return status;
}

int train_run(const Config *cfg)
{
    /* a sequence of tasks runs in the continual driver; one data set (causal LM, SFT or
     * classification) trains here */
    if (cfg->continual_tasks[0]) return continual_run(cfg);
    int status = DS_OK;
    Model model = {0};
    Optimizer opt = {0};
    DataReader *data = NULL, *eval_data[CONFIG_DATA_FILES_MAX];
    int n_eval = 0;
    LMReader *reader = NULL; /* the checkpoint code's view of data */
    FILE *metrics = NULL;
    StepBatch sb = {0};
    float *eval_weights = NULL;
    ProcessGrid grid = {0};
    TrainCkpt *ckpts = NULL; /* checkpoints, resume and export (checkpoint/train_ckpt.h) */
    MetricsServer *metrics_server = NULL; /* metrics.listen, rank 0 (trainer/metrics_server.c) */
    int start_step = 0;
    char run_dir[CONFIG_STR_MAX], path[CONFIG_STR_MAX + 64];

    /* the process grid first (MPI when a launcher started us); other ranks print nothing */
    if ((status = comm_grid_init(&grid, cfg->parallel_tp, cfg->parallel_dp)) != DS_OK) goto done;
    /* several ranks on GPUs talk NCCL; each binds its GPU (local rank) before the backend */
    if (strcmp(cfg->device, "cuda") == 0 && grid.world_size > 1 &&
        (status = comm_grid_enable_nccl(&grid)) != DS_OK)
        goto done;
    if (grid.world_rank != 0 && !freopen("/dev/null", "w", stdout)) {
        status = ds_error(DS_ERR_INTERNAL, "rank %d: cannot silence stdout", grid.world_rank);
        goto done;
    }

    /* run directory (named by rank 0: clocks may cross a second), resolved config */
    if (cfg->run_dir[0]) {
        snprintf(run_dir, sizeof(run_dir), "%s", cfg->run_dir);
    } else {
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(run_dir, sizeof(run_dir), "runs/%Y%m%d-%H%M%S", &tm);
    }
    if ((status = comm_broadcast(&grid.world, run_dir, sizeof(run_dir), COMM_U8, 0)) != DS_OK)
        goto done;
    if ((status = make_dirs(run_dir)) != DS_OK) goto done;
    snprintf(path, sizeof(path), "%s/config.yaml", run_dir);
    if (grid.world_rank != 0) snprintf(path, sizeof(path), "/dev/null"); /* one writer */
    FILE *cf = fopen(path, "w");
    if (!cf) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    Config resolved = *cfg;
    snprintf(resolved.run_dir, sizeof(resolved.run_dir), "%s", run_dir);
    config_write_yaml(&resolved, cf, 0);
    fclose(cf);
    printf("dstrain: resolved config (saved in %s):\n", path);
    config_write_yaml(&resolved, stdout, 0);
    if (grid.world_rank == 0 && cfg->metrics_listen[0]) {
        int port = 0;
        if ((status = metrics_server_start(cfg->metrics_listen, cfg->metrics_allow_remote,
                                           &metrics_server, &port)) != DS_OK)
            goto done;
        printf("dstrain: metrics on %s/metrics\n", metrics_server_url(metrics_server));
        fflush(stdout);
    }

    /* model */
    ModelConfig mc;
    if ((status = train_model_config(cfg, &mc)) != DS_OK) goto done;
    if (strcmp(cfg->task_type, "classification") == 0) mc.num_labels = cfg->task_num_labels;
    const int B = cfg->train_micro_batch_size, T = cfg->train_seq_len, N = B * T;
    const Backend *be = NULL;
    if ((status = train_backend(cfg, &be)) != DS_OK) goto done;
    if ((status = model_init_parallel(&model, &mc, be, B, T, &grid)) != DS_OK) goto done;
    if (cfg->model_path[0] && !cfg->model_random_init) {
        ProgressTask load;
        char what[CONFIG_STR_MAX + 32];
        snprintf(what, sizeof(what), "loading weights from %s", cfg->model_path);
        progress_task_begin(&load, what, 0, "");
        if ((status = train_load_weights(cfg->model_path, &mc, &model)) != DS_OK)
            goto done;
        progress_task_end(&load);
    } else {
        model_init_weights(&model, (uint64_t)cfg->train_seed, cfg->model_init_std);
    }
    if ((status = optim_init_sharded(&opt, &model.table, be, &grid, cfg->parallel_zero)) != DS_OK)
        goto done;
    size_t n_params = 0; /* the whole model's, not this rank's slice */
    for (int i = 0; i < model.table.count; i++)
        n_params += (size_t)model.table.items[i].shape[0] *
                    (size_t)(model.table.items[i].ndim == 2 ? model.table.items[i].shape[1] : 1);
    printf("dstrain: model %s, %d layers, hidden %d, %zu parameters\n", model_arch_name(mc.arch),
           mc.num_layers, mc.hidden_size, n_params);
    printf("dstrain: %d ranks (tp %d x dp %d, zero %d); memory per rank: parameters %.2f MiB, "
           "gradients %.2f MiB, optimizer %.2f MiB, activations %.2f MiB\n",
           grid.world_size, grid.tp_size, grid.dp_size, opt.zero, model.table.total * 4.0 / 1048576,
           model.table.total * 4.0 / 1048576, opt.n * 8.0 / 1048576,
           model.arena_bytes / 1048576.0);
#ifdef DSTRAIN_HAVE_CUDA
    if (!be->host_memory && cuda_matmul_is_bf16())
        printf("dstrain: precision bf16: the weights' bf16 working copy takes %.2f MiB per rank\n",
               model.table.total * 2.0 / 1048576);
#endif

    /* data */
    if ((status = data_readers_open(cfg, mc.vocab_size, grid.dp_rank, grid.dp_size, &data,
                                    eval_data, &n_eval)) != DS_OK ||
        (status = lm_reader_view(data, &reader)) != DS_OK)
        goto done;
    const int accum = cfg->train_grad_accum;
    sb.inputs = ds_malloc((size_t)N * accum * sizeof(int32_t));
    sb.targets = ds_malloc((size_t)N * accum * sizeof(int32_t));
    sb.weights = ds_malloc((size_t)N * accum * sizeof(float));
    eval_weights = ds_malloc((size_t)N * sizeof(float));
    if (!sb.inputs || !sb.targets || !sb.weights || !eval_weights) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    /* how this rank sits in the grid, for the checkpoint layout */
    TrainCkptWorld ckpt_world = {
        .layout = {grid.tp_size, grid.dp_size, opt.zero, grid.tp_rank, grid.dp_rank},
        .all_min = grid.world_size > 1 ? train_all_min : NULL,
        .comm_ctx = &grid.world,
        .tmp_tag = (long)getpid(),
        .optim_begin = opt.shard_begin,
        .optim_end = opt.zero ? opt.shard_begin + opt.n : 0,
    };
    int64_t rank0_pid = ckpt_world.tmp_tag;
    if ((status = comm_broadcast(&grid.world, &rank0_pid, 1, COMM_I64, 0)) != DS_OK) goto done;
    ckpt_world.tmp_tag = (long)rank0_pid;
    if ((status = train_ckpt_open(cfg, run_dir, &mc, &model, &opt, reader, NULL,
                                  grid.world_size > 1 ? &ckpt_world : NULL, &ckpts,
                                  &start_step)) != DS_OK)
        goto done;
    snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
    if (grid.world_rank != 0) snprintf(path, sizeof(path), "/dev/null"); /* one writer */
    metrics = fopen(path, start_step > 0 ? "a" : "w");
    if (!metrics) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }

    /* fault-injection hook for tests: DSTRAIN_FAIL_RANK=k makes world rank k fail here as on
     * bad input, while the other ranks go on into the step's first collective */
    const char *fail_rank = getenv("DSTRAIN_FAIL_RANK");
    char *fail_end = NULL;
    if (fail_rank && *fail_rank && strtol(fail_rank, &fail_end, 10) == grid.world_rank &&
        *fail_end == 0) {
        status = ds_error(DS_ERR_INPUT, "DSTRAIN_FAIL_RANK=%s: injected failure on rank %d",
                          fail_rank, grid.world_rank);
        goto done;
    }
    const double t_start = ds_now();
    const int on_gpu = !be->host_memory;
    const char *peak_env = getenv("DSTRAIN_PEAK_FLOPS"); /* per GPU; default: H100/H200 bf16 */
    progress_begin(&(ProgressOptions){
        .out = stdout, .interactive = -1, .total_steps = cfg->train_steps,
        .start_step = start_step, .log_every = cfg->log_every,
        .flops_per_token = 6.0 * (double)n_params +
                           12.0 * mc.num_layers * (double)mc.hidden_size * T,
        .peak_flops = on_gpu ? (peak_env ? atof(peak_env) : 989e12) * grid.world_size : 0.0});
    if (on_gpu) /* what this rank's buffers hold on the device, as the memory line above */
        progress_set_gpu_memory(4.0 * (2.0 * model.table.total + 2.0 * opt.n) +
                                (double)model.arena_bytes);
    double first_loss = NAN, last_loss = NAN;
    for (int step = start_step; step < cfg->train_steps; step++) {
        const double t0 = ds_now();
        double data_wait = 0.0, tokens = 0.0;
        for (int a = 0; a < accum; a++) {
            double td = ds_now();
            if ((status = data_reader_next(data, sb.inputs + (size_t)a * N,
                                           sb.targets + (size_t)a * N,
                                           sb.weights + (size_t)a * N, NULL)) != DS_OK)
                goto done;
            data_wait += ds_now() - td;
        }
        for (size_t i = 0; i < (size_t)N * accum; i++) tokens += sb.weights[i];
        /* the loss is the mean over the step's tokens on all data-parallel ranks */
        if ((status = comm_all_reduce(&grid.dp, &tokens, 1, COMM_F64, COMM_SUM)) != DS_OK)
            goto done;
        const float inv_tokens = tokens > 0 ? (float)(1.0 / tokens) : 0.0f;
        for (size_t i = 0; i < (size_t)N * accum; i++) sb.weights[i] *= inv_tokens;

        model_zero_grad(&model);
        double loss = 0.0;
        for (int a = 0; a < accum; a++) {
            loss += model_forward_train(&model, sb.inputs + (size_t)a * N,
                                        sb.targets + (size_t)a * N, sb.weights + (size_t)a * N,
                                        NULL);
            model_backward(&model);
        }
        /* communication only now, after the last micro-batch */
        if ((status = comm_all_reduce(&grid.dp, &loss, 1, COMM_F64, COMM_SUM)) != DS_OK ||
            (status = optim_reduce_grads(&opt, &model, &grid)) != DS_OK)
            goto done;
        double grad_norm = 0.0;
        if ((status = optim_grad_norm_global(&opt, &model, &grid, &grad_norm)) != DS_OK) goto done;
        const float lr = optim_lr_at(cfg, step);
        /* a non-finite loss or gradient: skip the update (every rank holds the same values) */
        const int finite = progress_check_finite(step + 1, &loss, &grad_norm);
        if (finite) {
            const float scale = optim_clip_scale(grad_norm, cfg->optim_clip_grad_norm);
            optim_step(&opt, &model, cfg, lr, scale);
            if ((status = optim_gather_params(&opt, &model, &grid)) != DS_OK) goto done;
        }

        const double dt = ds_now() - t0;
        const double tok_per_s = (double)N * accum * grid.dp_size / dt;
        if (finite && isnan(first_loss)) first_loss = loss;
        if (finite) last_loss = loss;
        if (finite)
            fprintf(metrics,
                    "{\"step\": %d, \"loss\": %.7g, \"lr\": %.7g, \"grad_norm\": %.7g, "
                    "\"tokens_per_second\": %.1f, \"step_seconds\": %.5f, "
                    "\"data_wait_seconds\": %.6f, \"tokens\": %.0f, \"nonfinite_steps\": %lld}\n",
                    step + 1, loss, lr, grad_norm, tok_per_s, dt, data_wait, tokens,
                    progress_nonfinite_total());
        else /* JSON has no NaN: the loss is null and the step marked */
            fprintf(metrics,
                    "{\"step\": %d, \"loss\": null, \"skipped\": true, \"lr\": %.7g, "
                    "\"step_seconds\": %.5f, \"nonfinite_steps\": %lld}\n",
                    step + 1, lr, dt, progress_nonfinite_total());
        double eval_loss = NAN;
        if (n_eval && ((step + 1) % cfg->eval_every == 0 || step + 1 == cfg->train_steps)) {
            for (int e = 0; e < n_eval; e++) { /* each file from its start; the first is shown */
                if ((status = data_reader_rewind(eval_data[e])) != DS_OK) goto done;
                double l = eval_loss_on(&model, eval_data[e], cfg->eval_batches, eval_weights,
                                         &grid.dp);
                if (e == 0) eval_loss = l;
                fprintf(metrics, "{\"step\": %d, \"eval_loss\": %.7g, \"eval_set\": %d}\n",
                        step + 1, l, e);
            }
        }
        fflush(metrics);
        progress_step(&(ProgressStep){.step = step + 1, .loss = loss, .lr = lr,
                                      .grad_norm = grad_norm,
                                      .tokens = (double)N * accum * grid.dp_size, .seconds = dt,
                                      .data_wait = data_wait, .eval_loss = eval_loss,
                                      .skipped = !finite});
        if (progress_nonfinite_in_row() >= cfg->train_max_nonfinite) {
            status = ds_error(DS_ERR_INTERNAL,
                              "step %d: %d steps in a row had a non-finite loss or gradient "
                              "(train.max_nonfinite: %d); stopping. The weights are those of the "
                              "last good step; resume from the last checkpoint with a lower "
                              "optim.lr or check the data",
                              step + 1, progress_nonfinite_in_row(), cfg->train_max_nonfinite);
            /* skipped steps changed nothing: this checkpoint holds the last good state */
            int saved = train_ckpt_save_now(ckpts, step + 1, lr);
            if (saved != DS_OK) status = saved;
            goto done;
        }
        if ((status = train_ckpt_after_step(ckpts, step + 1, lr)) != DS_OK) goto done;
        /* preemption: every rank learns of a signal any rank got, at the same step boundary */
        int64_t signal = signals_pending();
        if (grid.world_size > 1 &&
            (status = comm_all_reduce(&grid.world, &signal, 1, COMM_I64, COMM_MAX)) != DS_OK)
            goto done;
        if (signal && step + 1 < cfg->train_steps) {
            if ((status = train_ckpt_save_now(ckpts, step + 1, lr)) != DS_OK) goto done;
            status = ds_error(DS_EXIT_REQUEUE,
                              "%s at step %d: checkpoint written, exiting %d to be requeued",
                              signals_name((int)signal), step + 1, DS_EXIT_REQUEUE);
            goto done;
        }
    }
    if ((status = train_ckpt_finish(ckpts, cfg->train_steps,
                                    optim_lr_at(cfg, cfg->train_steps - 1))) != DS_OK)
        goto done;
    if (cfg->run_save_final && (status = train_save_final(&model, &grid, run_dir)) != DS_OK)
        goto done;
    progress_end();
    printf("dstrain: done: %d steps in %.1fs, loss %.4f -> %.4f, run directory %s\n",
           cfg->train_steps, ds_now() - t_start, first_loss, last_loss, run_dir);

done:
    progress_end();
    metrics_server_stop(metrics_server);
    if (status != DS_OK && status != DS_EXIT_REQUEUE && grid.world_size > 1) {
        /* one rank's failure ends every rank, with its message: never a hang in a collective */
        fflush(stdout);
        fprintf(stderr, "dstrain: error: rank %d: %s\n", grid.world_rank, ds_last_error());
        comm_abort(&grid, status);
    }
    train_ckpt_close(ckpts);
    if (metrics) fclose(metrics);
    free(sb.inputs);
    free(sb.targets);
    free(sb.weights);
    free(eval_weights);
    lm_reader_close(reader);
    data_reader_close(data);
    for (int e = 0; e < n_eval; e++) data_reader_close(eval_data[e]);
    optim_free(&opt);
    model_free(&model);
    comm_grid_free(&grid);
    return status;
}

static void train_usage(FILE *out)
{
    fprintf(out, "usage: dstrain train [-c CONFIG.yaml] [key=value ...]\n"
                 "  With no arguments, trains the tiny preset on the bundled dataset.\n"
                 "  Keys: see `dstrain config --defaults` and docs/config.md.\n");
}

int train_main(int argc, char **argv)
{
    /* first thing: a preemption warning may arrive while the job is still starting up, and its
     * default action would end the process without a checkpoint */
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
