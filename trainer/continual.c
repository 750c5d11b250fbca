/* continual.c: what a task sequence adds to the one training loop (train.c), between its
 * phases: the tasks file, the evaluation of every task seen so far (the accuracy or loss matrix
 * R and its summary), the Fisher pass that consolidates EWC, and the continual state (EWC pairs
 * and replay buffer) that tomorrow night's run starts from. Every function here is collective
 * over the process grid and gives the same result whatever the layout. Not here: the step, the
 * loop, checkpoints (train.c), the EWC arithmetic (ewc.c), the buffer (data/replay.c). */
#include "continual.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#include <cjson/cJSON.h>

#include "../comm/comm.h"
#include "../data/reader.h"
#include "../data/replay.h"
#include "common.h"
#include "ewc.h"
#include "progress.h"
#include "run.h"

/* ---- the tasks file -------------------------------------------------------------------------- */

static const char *scalar_text(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* "PATH:LINE: <a><fmt><b>": a (where: tasks[i].key, the key as written) and b (a value) come
 * from the file and are escaped, so that a key or value cannot add a line to the message. */
static int tasks_error(const char *path, yaml_node_t *n, const char *fmt, const char *a,
                       const char *b)
{
    char shown_path[600], shown_a[400], shown_b[200];
    return ds_error(DS_ERR_INPUT, "%s:%zu: %s%s%s", ds_printable(shown_path, sizeof(shown_path), path, 500),
                    n ? n->start_mark.line + 1 : (size_t)1,
                    ds_printable(shown_a, sizeof(shown_a), a, 300), fmt,
                    b ? ds_quoted(shown_b, sizeof(shown_b), b, 80) : "");
}

/* Ids and file names are pasted into messages, progress lines and file names: no control
 * characters in them. */
static int tasks_check_name(const char *path, yaml_node_t *n, const char *full, const char *v)
{
    return ds_has_control_chars(v) ? tasks_error(path, n, ": holds a control character: ", full, v)
                                   : DS_OK;
}

/* train: [a.h5, {path: b.h5, weight: 0.3}]: a mixture, as data.train takes it. */
static int parse_train_list(yaml_document_t *doc, yaml_node_t *list, const char *path,
                            const char *full, ConfigDataFiles *files)
{
    int i = 0;
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++, i++) {
        yaml_node_t *n = yaml_document_get_node(doc, *it);
        char item[300];
        snprintf(item, sizeof(item), "%s[%d]", full, i);
        if (i >= CONFIG_DATA_FILES_MAX)
            return tasks_error(path, n, ": at most 16 files in a mixture", item, NULL);
        ConfigDataFile *f = &files->items[i];
        f->weight = 1.0f;
        const char *p = scalar_text(n);
        if (!p && n->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < n->data.mapping.pairs.top;
                 q++) {
                const char *k = scalar_text(yaml_document_get_node(doc, q->key));
                yaml_node_t *vn = yaml_document_get_node(doc, q->value);
                const char *v = scalar_text(vn);
                if (!k || !v || !*v)
                    return tasks_error(path, vn, ": expected {path: FILE.h5, weight: W}", item,
                                       NULL);
                if (strcmp(k, "path") == 0) {
                    p = v;
                } else if (strcmp(k, "weight") == 0) {
                    char *end;
                    double w = strtod(v, &end);
                    if (*end || !(w > 0) || w > 1e6)
                        return tasks_error(path, vn, ".weight: expected a number in (0, 1e6], got ",
                                           item, v);
                    f->weight = (float)w;
                } else {
                    return tasks_error(path, vn, ": unknown key (expected path and weight)", item,
                                       NULL);
                }
            }
        }
        if (!p || !*p || strlen(p) >= CONFIG_STR_MAX)
            return tasks_error(path, n, ": expected a path or {path, weight}", item, NULL);
        DS_TRY(tasks_check_name(path, n, item, p));
        snprintf(f->path, CONFIG_STR_MAX, "%s", p);
    }
    if (i == 0) return tasks_error(path, list, ": an empty list", full, NULL);
    files->count = i;
    return DS_OK;
}

static int parse_task(yaml_document_t *doc, yaml_node_t *node, int index, const char *path,
                      ContinualTask *t)
{
    char where[64];
    snprintf(where, sizeof(where), "tasks[%d]", index);
    memset(t, 0, sizeof(*t));
    t->line = (int)node->start_mark.line + 1;
    if (node->type != YAML_MAPPING_NODE)
        return tasks_error(path, node, ": expected a mapping {id, train, eval, steps | epochs}",
                           where, NULL);
    int have_id = 0, have_train = 0, have_eval = 0;
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        const char *key = scalar_text(k), *val = scalar_text(v);
        char full[256];
        snprintf(full, sizeof(full), "%s.%s", where, key ? key : "?");
        if (!key) return tasks_error(path, k, ": a key must be a name", where, NULL);
        const int list = strcmp(key, "train") == 0 && v && v->type == YAML_SEQUENCE_NODE;
        if (!list && (!val || !*val)) return tasks_error(path, v, ": expected a value", full, NULL);
        if (!list) DS_TRY(tasks_check_name(path, v, full, val));
        if (strcmp(key, "train") == 0) t->train_line = (int)k->start_mark.line + 1;
        if (strcmp(key, "eval") == 0) t->eval_line = (int)k->start_mark.line + 1;
        if (strcmp(key, "id") == 0) {
            if (strlen(val) >= sizeof(t->id)) return tasks_error(path, v, ": too long", full, NULL);
            snprintf(t->id, sizeof(t->id), "%s", val);
            have_id = 1;
        } else if (strcmp(key, "train") == 0 && v && v->type == YAML_SEQUENCE_NODE) {
            DS_TRY(parse_train_list(doc, v, path, full, &t->train));
            have_train = 1;
        } else if (strcmp(key, "train") == 0 || strcmp(key, "eval") == 0) {
            if (strlen(val) >= CONFIG_STR_MAX)
                return tasks_error(path, v, ": too long", full, NULL);
            if (key[0] == 't') {
                snprintf(t->train.items[0].path, CONFIG_STR_MAX, "%s", val);
                t->train.items[0].weight = 1.0f;
                t->train.count = 1;
                have_train = 1;
            } else {
                snprintf(t->eval, CONFIG_STR_MAX, "%s", val);
                have_eval = 1;
            }
        } else if (strcmp(key, "steps") == 0) {
            char *end;
            errno = 0;
            long s = strtol(val, &end, 10);
            if (*end || errno || s <= 0 || s > 1000000000)
                return tasks_error(path, v, ": expected a positive integer, got ", full, val);
            t->steps = (int)s;
        } else if (strcmp(key, "epochs") == 0) {
            char *end;
            double e = strtod(val, &end);
            if (*end || !(e > 0) || e > 1e6)
                return tasks_error(path, v, ": expected a positive number, got ", full, val);
            t->epochs = e;
        } else {
            return tasks_error(path, k, ": unknown key (expected id, train, eval, steps, epochs)",
                               full, NULL);
        }
    }
    if (!have_id) return tasks_error(path, node, ": id: missing", where, NULL);
    if (!have_train) return tasks_error(path, node, ": train: missing", where, NULL);
    if (!have_eval) return tasks_error(path, node, ": eval: missing", where, NULL);
    if ((t->steps > 0) == (t->epochs > 0))
        return tasks_error(path, node, ": give exactly one of steps and epochs", where, NULL);
    return DS_OK;
}

int continual_tasks_load(const char *path, ContinualTasks *out)
{
    memset(out, 0, sizeof(*out));
    /* a FIFO is refused, and a file nested deeper than any tasks list before it is loaded */
    int depth = config_yaml_check_depth(path, CONFIG_YAML_MAX_DEPTH);
    if (depth != DS_OK) return ds_error_context(depth, "continual.tasks");
    FILE *f = ds_fopen_regular(path, "rb");
    if (!f) return ds_error_context(DS_ERR_INPUT, "continual.tasks");
    yaml_parser_t parser;
    yaml_document_t doc;
    int status = DS_OK, have_doc = 0;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return ds_error(DS_ERR_INTERNAL, "libyaml: cannot initialize a parser");
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        status =
            ds_error(DS_ERR_INPUT, "%s:%zu: invalid YAML: %s", path, parser.problem_mark.line + 1,
                     parser.problem ? parser.problem : "unreadable input");
        goto done;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || root->type != YAML_MAPPING_NODE) {
        status = ds_error(DS_ERR_INPUT, "%s:%zu: expected a mapping with the key tasks", path,
                          root ? root->start_mark.line + 1 : (size_t)1);
        goto done;
    }
    yaml_node_t *list = NULL;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(&doc, p->key);
        const char *key = scalar_text(k);
        if (!key || strcmp(key, "tasks") != 0) {
            status = tasks_error(path, k, ": unknown key (expected tasks)", key ? key : "?", NULL);
            goto done;
        }
        list = yaml_document_get_node(&doc, p->value);
    }
    if (!list || list->type != YAML_SEQUENCE_NODE ||
        list->data.sequence.items.top == list->data.sequence.items.start) {
        status = ds_error(DS_ERR_INPUT, "%s:%zu: tasks: expected a non-empty list", path,
                          list ? list->start_mark.line + 1 : root->start_mark.line + 1);
        goto done;
    }
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top;
         it++) {
        yaml_node_t *n = yaml_document_get_node(&doc, *it);
        if (out->count >= CONTINUAL_MAX_TASKS) {
            status = ds_error(DS_ERR_INPUT, "%s:%zu: tasks: at most %d tasks", path,
                              n->start_mark.line + 1, CONTINUAL_MAX_TASKS);
            goto done;
        }
        if ((status = parse_task(&doc, n, out->count, path, &out->items[out->count])) != DS_OK)
            goto done;
        for (int j = 0; j < out->count; j++)
            if (strcmp(out->items[j].id, out->items[out->count].id) == 0) {
                char shown[300];
                status = ds_error(DS_ERR_INPUT, "%s:%zu: tasks[%d].id: %s is also tasks[%d]'s",
                                  path, n->start_mark.line + 1, out->count,
                                  ds_quoted(shown, sizeof(shown), out->items[out->count].id, 120),
                                  j);
                goto done;
            }
        out->count++;
    }
done:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return status;
}

/* ---- summary numbers ---------------------------------------------------------------------------
 */

void continual_summarize(const double *R, int K, int higher_is_better, ContinualSummary *out)
{
    memset(out, 0, sizeof(*out));
    if (K <= 0) return;
    const double sign = higher_is_better ? 1.0 : -1.0;
    for (int j = 0; j < K; j++)
        out->average += R[(size_t)(K - 1) * K + j];
    out->average /= K;
    if (K < 2) return;
    for (int j = 0; j < K - 1; j++) {
        double last = R[(size_t)(K - 1) * K + j];
        out->backward_transfer += last - R[(size_t)j * K + j];
        double best = R[(size_t)j * K + j];
        for (int l = j; l < K - 1; l++) {
            double v = R[(size_t)l * K + j];
            if (sign * v > sign * best) best = v;
        }
        out->forgetting += sign * (best - last);
    }
    out->backward_transfer /= K - 1;
    out->forgetting /= K - 1;
}

/* ---- evaluation -------------------------------------------------------------------------------- */

int continual_evaluate(Run *r, const char *path, double *metric)
{
    Model *m = &r->model;
    const int B = r->B, T = r->T, L = r->cls ? r->mc.num_labels : 0, G = r->G;
    const DataMode mode = r->mode;
    /* this rank's B rows of each global batch of G, in a fixed order (seed 0), as the loop's
     * evaluation readers */
    DataSource src = {path, 1.0};
    DataReaderOptions o = {.mode = mode,
                           .sources = &src,
                           .n_sources = 1,
                           .model_vocab = r->mc.vocab_size,
                           .num_labels = r->cls ? r->cfg->task_num_labels : 0,
                           .seq_len = T,
                           .micro_batch = B,
                           .grad_accum = 1,
                           .dp_rank = r->grid.dp_rank,
                           .dp_size = r->grid.dp_size,
                           .seed = 0,
                           .prefetch = 2,
                           .has_fallback_pad = r->mc.pad_token_id >= 0,
                           .fallback_pad_id = r->mc.pad_token_id};
    DataReader *rd = NULL;
    DS_TRY(data_reader_open(&o, &rd));
    int status = DS_OK;
    if (r->cls) {
        /* every example once: one epoch, rows past it not counted */
        const int64_t n = data_reader_samples_per_epoch(rd, 0);
        int64_t counts[2] = {0, 0}; /* correct, seen */
        for (int64_t first = 0; first < n && status == DS_OK; first += G) {
            status = data_reader_next(rd, m->inputs, m->targets, m->loss_weights, NULL);
            if (status != DS_OK) break;
            model_forward(m, m->inputs, NULL, NULL, r->logits);
            for (int b = 0; b < B; b++) {
                if (first + (int64_t)r->grid.dp_rank * B + b >= n) break;
                const float *row = r->logits + (size_t)b * L;
                int best = 0;
                for (int c = 1; c < L; c++)
                    if (row[c] > row[best]) best = c;
                counts[0] += best == m->targets[b];
                counts[1]++;
            }
        }
        /* every rank takes part in the sum, even after its reader failed */
        int reduced = comm_all_reduce(&r->grid.dp, counts, 2, COMM_I64, COMM_SUM);
        if (status == DS_OK) status = reduced;
        *metric = counts[1] > 0 ? (double)counts[0] / (double)counts[1] : NAN;
    } else {
        double sums[2] = {0.0, 0.0}; /* loss, tokens */
        const size_t N = (size_t)B * T;
        for (int b = 0; b < r->cfg->eval_batches && status == DS_OK; b++) {
            status = data_reader_next(rd, m->inputs, m->targets, m->loss_weights, NULL);
            if (status != DS_OK) break;
            for (size_t i = 0; i < N; i++) sums[1] += m->loss_weights[i];
            memcpy(r->eval_weights, m->loss_weights, N * sizeof(float));
            sums[0] += model_forward(m, m->inputs, m->targets, r->eval_weights, NULL);
        }
        int reduced = comm_all_reduce(&r->grid.dp, sums, 2, COMM_F64, COMM_SUM);
        if (status == DS_OK) status = reduced;
        *metric = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    }
    data_reader_close(rd);
    return status;
}

/* ---- the Fisher pass ------------------------------------------------------------------------ */

static int fisher_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    return data_reader_next(ctx, inputs, targets, weights, NULL);
}

int continual_fisher(Run *r, int k)
{
    const Phase *ph = &r->phases[k];
    const ProcessGrid *grid = &r->grid;
    const size_t lo = r->ewc.lo, hi = r->ewc.hi;
    const double tf = ds_now();
    if (r->fisher_work != &r->model) /* a model of the same layout on the same backend */
        r->model.be->mem_copy(r->model.be, r->fisher_work->params, r->model.params,
                              r->model.table.total * sizeof(float));
    /* the phase's examples one at a time, the same order on every rank (each computes its
     * share of the units), an order of their own */
    const DataMode mode = r->mode;
    DataReaderOptions o = {.mode = mode,
                           .sources = ph->sources,
                           .n_sources = ph->n_sources,
                           .model_vocab = r->mc.vocab_size,
                           .num_labels = r->cls ? r->cfg->task_num_labels : 0,
                           .seq_len = r->T,
                           .micro_batch = 1,
                           .grad_accum = 1,
                           .dp_rank = 0,
                           .dp_size = 1,
                           .seed = (uint64_t)r->cfg->train_seed * 7919ull + (uint64_t)k + 101,
                           .prefetch = 8,
                           .has_fallback_pad = r->mc.pad_token_id >= 0,
                           .fallback_pad_id = r->mc.pad_token_id};
    DataReader *rd = NULL;
    DS_TRY(data_reader_open(&o, &rd));
    ProgressTask task;
    char what[192];
    snprintf(what, sizeof(what), "Fisher pass for %s (%d examples)", ph->id,
             r->fisher_opt.samples);
    progress_task_begin(&task, what, 0, "");
    int status = ewc_estimate_fisher(r->fisher_work, &r->fisher_opt, fisher_next, rd, r->fisher);
    data_reader_close(rd);
    DS_TRY(status);
    DS_TRY(optim_reduce_flat(&r->opt, &r->model.table, r->fisher, grid));
    DS_TRY(ewc_consolidate(&r->ewc, r->fisher, r->model.params, r->ewc.tasks_seen));
    progress_task_end(&task);
    /* mean and largest over the model, each element once */
    double fs[2] = {0.0, 0.0};
    for (int i = 0; i < r->model.table.count; i++) {
        const ParamInfo *p = &r->model.table.items[i];
        size_t b = p->offset > lo ? p->offset : lo;
        size_t e = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        if (p->tp_copy || (!r->opt.zero && grid->edp_rank != 0)) continue;
        for (; b < e; b++) {
            fs[0] += r->fisher[b];
            if (r->fisher[b] > fs[1]) fs[1] = r->fisher[b];
        }
    }
    DS_TRY(comm_all_reduce(&grid->world, &fs[0], 1, COMM_F64, COMM_SUM));
    DS_TRY(comm_all_reduce(&grid->world, &fs[1], 1, COMM_F64, COMM_MAX));
    progress_note("dstrain: task %s: Fisher over %d examples in %.1fs (mean %.3g, max %.3g)",
                  ph->id, r->fisher_opt.samples, ds_now() - tf, fs[0] / (double)r->n_params,
                  fs[1]);
    return DS_OK;
}

/* ---- the continual state between runs ----------------------------------------------------- */

/* A dp-sharded flat buffer in the backend's memory (an EWC pair: this rank's shard only),
 * gathered over dp into full, a host buffer of this tensor-parallel rank's whole layout. */
static int gather_shard(const Run *r, const float *shard, float *full)
{
    const size_t lo = r->opt.shard_begin, n = r->opt.n;
    r->be->mem_to_host(r->be, full + lo, shard, n * sizeof(float)); /* memcpy on the CPU */
    if (!r->opt.zero || r->grid.edp_size == 1) return DS_OK;
    return comm_all_gather(comm_edp(&r->grid), full, n, COMM_F32);
}

int continual_replay_gather(Run *r, ReplayBuffer *whole)
{
    const ReplayBuffer *rb = &r->replay;
    DS_TRY(replay_init_whole(whole, rb, r->replay_seed));
    replay_shard_to_whole(rb, whole);
    const size_t n = (size_t)rb->count * rb->T;
    int status = DS_OK;
    if (r->grid.dp_size > 1 &&
        ((status = comm_all_reduce(&r->grid.dp, whole->inputs, n, COMM_I32, COMM_SUM)) != DS_OK ||
         (status = comm_all_reduce(&r->grid.dp, whole->targets, n, COMM_I32, COMM_SUM)) != DS_OK ||
         (status = comm_all_reduce(&r->grid.dp, whole->mask, n, COMM_U8, COMM_SUM)) != DS_OK))
        replay_free(whole);
    return status;
}

int continual_state_save(Run *r, const char *dir)
{
    const ProcessGrid *g = &r->grid;
    char path[CONFIG_STR_MAX + 96], tmp[CONFIG_STR_MAX + 128];
    int status = DS_OK;
    float *scratch = r->fisher;
    int own_scratch = 0;
    if (r->ewc_on && r->ewc.n_sets > 0) {
        if (!scratch) {
            scratch = ds_aligned_alloc(PARAM_ALIGN_BYTES, r->model.table.total * sizeof(float));
            if (!scratch) return DS_ERR_INTERNAL;
            own_scratch = 1;
        }
        snprintf(path, sizeof(path), "%s/ewc.h5", dir);
        snprintf(tmp, sizeof(tmp), "%s/ewc.h5.tmp", dir);
        if (g->world_rank == 0) status = ewc_save_begin(&r->ewc, tmp);
        int32_t st = status;
        if (comm_broadcast(&g->world, &st, 1, COMM_I32, 0) != DS_OK) st = DS_ERR_INTERNAL;
        if (st != DS_OK) status = g->world_rank == 0 ? status : DS_ERR_INTERNAL;
        for (int k = 0; k < r->ewc.n_sets && status == DS_OK; k++) {
            for (int which = 0; which < 2 && status == DS_OK; which++) { /* Fisher, anchor */
                status = gather_shard(r, which ? r->ewc.anchor[k] : r->ewc.fisher[k], scratch);
                /* one writer at a time: each tensor-parallel slice, and with expert
                 * parallelism each expert-parallel rank's experts (the first dp ranks) */
                for (int t = 0; t < g->tp_size * g->ep_size && status == DS_OK; t++) {
                    if (g->tp_rank == t % g->tp_size && g->dp_rank == t / g->tp_size)
                        status = ewc_save_set(tmp, &r->model.table, k, which ? NULL : scratch,
                                              which ? scratch : NULL);
                    if (status == DS_OK) status = comm_barrier(&g->world);
                }
            }
        }
        if (status == DS_OK && g->world_rank == 0 && rename(tmp, path) != 0)
            status = ds_error(DS_ERR_INPUT, "%s: rename failed: %s", path, strerror(errno));
        if (own_scratch) free(scratch);
        DS_TRY(status);
    }
    if (r->replay_on) {
        ReplayBuffer whole;
        DS_TRY(continual_replay_gather(r, &whole));
        if (g->world_rank == 0) {
            status = replay_save(&whole, dir);
            /* files of a run with more ranks would say the buffer has more parts */
            for (int k = 1; status == DS_OK; k++) {
                snprintf(path, sizeof(path), "%s/replay-rank-%05d.h5", dir, k);
                if (remove(path) != 0) break;
            }
        }
        replay_free(&whole);
    }
    /* ranks other than 0 learn of rank 0's failure */
    int64_t worst = status;
    DS_TRY(comm_all_reduce(&g->world, &worst, 1, COMM_I64, COMM_MAX));
    if (status != DS_OK) return status;
    return worst != DS_OK ? ds_error(DS_ERR_INTERNAL, "rank 0 could not save the continual state")
                          : DS_OK;
}

int continual_state_load(Run *r, const char *dir)
{
    char path[CONFIG_STR_MAX + 64];
    struct stat st;
    snprintf(path, sizeof(path), "%s/ewc.h5", dir);
    if (r->ewc_on && stat(path, &st) == 0) DS_TRY(ewc_load_tensors(&r->ewc, path, &r->model.table));
    snprintf(path, sizeof(path), "%s/replay-rank-00000.h5", dir);
    if (r->replay_on && stat(path, &st) == 0) {
        ReplayBuffer whole;
        DS_TRY(replay_init_whole(&whole, &r->replay, r->replay_seed));
        int status = replay_load(&whole, dir);
        if (status == DS_OK) status = replay_shard_from_whole(&r->replay, &whole);
        replay_free(&whole);
        DS_TRY(status);
    }
    printf("dstrain: continual state from %s: %d Fisher set(s), %d replay example(s)\n", dir,
           r->ewc.n_sets, r->replay.count);
    return DS_OK;
}

/* ---- the report --------------------------------------------------------------------------- */

static int write_report(const char *path, const Run *r, const ContinualSummary *sum)
{
    const Config *cfg = r->cfg;
    const int K = r->n_phases;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "metric", r->cls ? "accuracy" : "loss");
    cJSON *ids = cJSON_AddArrayToObject(root, "tasks");
    for (int i = 0; i < K; i++) cJSON_AddItemToArray(ids, cJSON_CreateString(r->phases[i].id));
    cJSON *rows = cJSON_AddArrayToObject(root, "R");
    for (int i = 0; i < K; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int j = 0; j < K; j++)
            cJSON_AddItemToArray(row, j <= i ? cJSON_CreateNumber(r->R[(size_t)i * K + j])
                                             : cJSON_CreateNull());
        cJSON_AddItemToArray(rows, row);
    }
    cJSON_AddNumberToObject(root, "average", sum->average);
    cJSON_AddNumberToObject(root, "backward_transfer", sum->backward_transfer);
    cJSON_AddNumberToObject(root, "forgetting", sum->forgetting);
    cJSON_AddBoolToObject(root, "ewc", cfg->continual_ewc_enabled);
    cJSON_AddNumberToObject(root, "ewc_lambda", cfg->continual_ewc_lambda);
    cJSON_AddNumberToObject(root, "replay_capacity", cfg->continual_replay_capacity);
    cJSON_AddNumberToObject(root, "replay_ratio", cfg->continual_replay_ratio);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return ds_error(DS_ERR_INTERNAL, "cJSON: out of memory");
    char tmp[CONFIG_STR_MAX + 96];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    int status = DS_OK;
    if (!f || fprintf(f, "%s\n", text) < 0) status = ds_error(DS_ERR_INPUT, "%s: cannot write", path);
    if (f && fclose(f) != 0 && status == DS_OK)
        status = ds_error(DS_ERR_INPUT, "%s: cannot write", path);
    if (status == DS_OK && rename(tmp, path) != 0)
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
    free(text);
    return status;
}

int continual_report(Run *r)
{
    const int K = r->n_phases, acc = r->cls;
    printf("continual: %s after each task (rows) on each task (columns)\n",
           acc ? "accuracy" : "eval loss");
    printf("%-16s", "after \\ on");
    for (int j = 0; j < K; j++) printf(" %10.10s", r->phases[j].id);
    printf("\n");
    for (int i = 0; i < K; i++) {
        printf("%-16.16s", r->phases[i].id);
        for (int j = 0; j < K; j++) {
            if (j <= i)
                printf(" %10.4f", r->R[(size_t)i * K + j]);
            else
                printf(" %10s", "-");
        }
        printf("\n");
    }
    ContinualSummary sum;
    continual_summarize(r->R, K, acc, &sum);
    printf("continual: average %s %.4f, backward transfer %.4f, forgetting %.4f\n",
           acc ? "accuracy" : "loss", sum.average, sum.backward_transfer, sum.forgetting);
    char path[CONFIG_STR_MAX + 64];
    snprintf(path, sizeof(path), "%s/continual.json", r->run_dir);
    if (r->grid.world_rank != 0) return DS_OK;
    DS_TRY(write_report(path, r, &sum));
    printf("continual: matrix and summary in %s\n", path);
    return DS_OK;
}
