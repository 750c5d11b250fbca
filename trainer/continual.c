/* continual.c: the continual-learning driver (see continual.h). One model, one optimizer, one
 * EWC state and one replay buffer live through the whole task sequence; each task gets its own
 * learning-rate schedule and fresh Adam moments. Everything a step touches is allocated before
 * the first task. Every rank of the process grid runs it in step, as the plain driver
 * (train.c): EWC lives on the optimizer's shard, the replay buffer's tokens are sharded over dp,
 * and each global batch (micro_batch_size x dp rows), replay draw, Fisher example and eval row
 * is the one a single process would take, so results do not depend on the layout. World rank 0
 * alone prints and writes the run's shared files. The tasks list is its own YAML file
 * (continual.tasks) so the scalar config schema stays flat. */
#include "continual.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "../checkpoint/export.h"
#include "../checkpoint/hf_model.h"
#include "../checkpoint/train_ckpt.h"
#include "../comm/comm.h"
#include "../data/dataset.h"
#include "../data/replay.h"
#include "common.h"
#include "ewc.h"
#include "optim.h"
#include "progress.h"
#include "signals.h"
#include "train.h"

/* ---- the tasks file -------------------------------------------------------------------------- */

static const char *scalar_text(yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int tasks_error(const char *path, yaml_node_t *n, const char *fmt, const char *a,
                       const char *b)
{
    return ds_error(DS_ERR_INPUT, "%s:%zu: %s%s%s", path, n ? n->start_mark.line + 1 : (size_t)1, a,
                    fmt, b ? b : "");
}

static int parse_task(yaml_document_t *doc, yaml_node_t *node, int index, const char *path,
                      ContinualTask *t)
{
    char where[64];
    snprintf(where, sizeof(where), "tasks[%d]", index);
    memset(t, 0, sizeof(*t));
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
        if (!val || !*val) return tasks_error(path, v, ": expected a value", full, NULL);
        if (strcmp(key, "id") == 0) {
            if (strlen(val) >= sizeof(t->id)) return tasks_error(path, v, ": too long", full, NULL);
            snprintf(t->id, sizeof(t->id), "%s", val);
            have_id = 1;
        } else if (strcmp(key, "train") == 0 || strcmp(key, "eval") == 0) {
            char *dst = key[0] == 't' ? t->train : t->eval;
            if (strlen(val) >= CONFIG_STR_MAX)
                return tasks_error(path, v, ": too long", full, NULL);
            snprintf(dst, CONFIG_STR_MAX, "%s", val);
            if (key[0] == 't')
                have_train = 1;
            else
                have_eval = 1;
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
    FILE *f = fopen(path, "rb");
    if (!f) return ds_error(DS_ERR_INPUT, "continual.tasks: %s: %s", path, strerror(errno));
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
            status = ds_error(DS_ERR_INPUT, "%s:%zu: %s: unknown key (expected tasks)", path,
                              k->start_mark.line + 1, key ? key : "?");
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
                status =
                    ds_error(DS_ERR_INPUT, "%s:%zu: tasks[%d].id: \"%s\" is also tasks[%d]'s", path,
                             n->start_mark.line + 1, out->count, out->items[out->count].id, j);
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

/* ---- task data ---------------------------------------------------------------------------------
 */

static uint64_t mix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A task's examples as the driver sees them, one at a time. Classification files are small
 * enough to hold (one padded row per document); LM files stream through an LMReader. */
typedef struct TaskStream {
    int classification;
    int T;
    int64_t n;       /* examples per epoch */
    int32_t *rows;   /* classification: [n, T] */
    int32_t *labels; /* [n] */
    int64_t *order, pos;
    uint64_t rng;
    LMReader *lm;
} TaskStream;

static void stream_close(TaskStream *s)
{
    free(s->rows);
    free(s->labels);
    free(s->order);
    lm_reader_close(s->lm);
    memset(s, 0, sizeof(*s));
}

static void stream_shuffle(TaskStream *s)
{
    for (int64_t i = 0; i < s->n; i++)
        s->order[i] = i;
    if (!s->rng) return; /* seed 0: file order (evaluation) */
    for (int64_t i = s->n - 1; i > 0; i--) {
        int64_t j = (int64_t)(mix64(&s->rng) % (uint64_t)(i + 1));
        int64_t tmp = s->order[i];
        s->order[i] = s->order[j];
        s->order[j] = tmp;
    }
}

static int stream_open(TaskStream *s, const char *path, const ModelConfig *mc, int T, uint64_t seed)
{
    memset(s, 0, sizeof(*s));
    s->T = T;
    s->classification = mc->num_labels > 0;
    if (!s->classification) {
        DS_TRY(lm_reader_open(path, mc->vocab_size, T, seed, 0, 1, &s->lm));
        s->n = lm_reader_windows_per_epoch(s->lm);
        return DS_OK;
    }
    TokenDataset *ds;
    DS_TRY(dataset_open(path, mc->vocab_size, &ds));
    const DatasetInfo *info = dataset_info(ds);
    int status = DS_OK;
    if (!info->has_labels) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: dataset \"labels\": missing (task.type "
                          "classification needs one label per document)",
                          path);
        goto out;
    }
    s->n = info->n_docs;
    s->rows = ds_malloc((size_t)s->n * T * sizeof(int32_t));
    s->labels = ds_malloc((size_t)s->n * sizeof(int32_t));
    s->order = ds_malloc((size_t)s->n * sizeof(int64_t));
    int64_t *labels = ds_malloc((size_t)s->n * sizeof(int64_t));
    if (!s->rows || !s->labels || !s->order || !labels) {
        free(labels);
        status = DS_ERR_INTERNAL;
        goto out;
    }
    if ((status = dataset_read_labels(ds, 0, s->n, labels)) != DS_OK) goto labels_done;
    for (int64_t d = 0; d < s->n && status == DS_OK; d++) {
        if (labels[d] < 0 || labels[d] >= mc->num_labels) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: dataset \"labels\": label %lld of document %lld "
                              "is outside [0, task.num_labels = %d)",
                              path, (long long)labels[d], (long long)d, mc->num_labels);
            break;
        }
        s->labels[d] = (int32_t)labels[d];
        int64_t len = dataset_doc_length(ds, d), take = len < T ? len : T;
        int32_t *row = s->rows + (size_t)d * T;
        if (take < T && mc->pad_token_id < 0) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: document %lld has %lld tokens, fewer than "
                              "train.seq_len %d, and the file has no pad_id",
                              path, (long long)d, (long long)len, T);
            break;
        }
        /* longer documents keep their first seq_len tokens */
        status = dataset_read_doc(ds, d, 0, take, row, NULL);
        for (int64_t t = take; t < T; t++)
            row[t] = mc->pad_token_id;
    }
labels_done:
    free(labels);
    s->rng = seed;
    if (status == DS_OK) stream_shuffle(s);
out:
    dataset_close(ds);
    if (status != DS_OK) stream_close(s);
    return status;
}

/* The next example: inputs [T]; LM: targets and weights [T]; classification: *label. */
static int stream_next(TaskStream *s, int32_t *inputs, int32_t *targets, float *weights,
                       int32_t *label)
{
    if (!s->classification) {
        *label = -1;
        return lm_reader_next(s->lm, 1, inputs, targets, weights);
    }
    if (s->pos == s->n) {
        stream_shuffle(s);
        s->pos = 0;
    }
    int64_t d = s->order[s->pos++];
    memcpy(inputs, s->rows + (size_t)d * s->T, (size_t)s->T * sizeof(int32_t));
    *label = s->labels[d];
    if (targets) targets[0] = *label;
    if (weights)
        for (int t = 0; t < s->T; t++)
            weights[t] = 1.0f;
    return DS_OK;
}

static int fisher_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    int32_t label;
    return stream_next(ctx, inputs, targets, weights, &label);
}

/* ---- evaluation --------------------------------------------------------------------------------
 */

/* Accuracy over every example of a classification eval file, or mean token loss over
 * eval.batches batches of an LM eval file (the same windows every time). Every data-parallel
 * rank reads the whole file and takes its own rows of each global batch of micro_batch_size x dp
 * rows; the counts are summed over dp, so the result does not depend on the layout. rows, tg, w
 * are scratch for one global batch. */
static int evaluate(Model *m, const Config *cfg, const char *path, double *metric, float *logits,
                    const ProcessGrid *g, int32_t *rows_in, int32_t *rows_tg, float *rows_w)
{
    const int B = m->B, T = m->T, L = m->cfg.num_labels, G = B * g->dp_size;
    const int64_t mine = (int64_t)g->dp_rank * B; /* this rank's first row of a global batch */
    TaskStream s;
    DS_TRY(stream_open(&s, path, &m->cfg, T, 0));
    int status = DS_OK;
    if (s.classification) {
        int64_t correct = 0;
        for (int64_t first = 0; first < s.n; first += G) {
            int64_t rows = s.n - first - mine;
            rows = rows < 0 ? 0 : rows > B ? B : rows;
            for (int r = 0; r < B; r++) {
                int64_t d = r < rows ? first + mine + r : 0; /* padding rows: not counted */
                memcpy(m->inputs + (size_t)r * T, s.rows + (size_t)d * T,
                       (size_t)T * sizeof(int32_t));
            }
            model_forward(m, m->inputs, NULL, NULL, logits);
            for (int r = 0; r < rows; r++) {
                const float *row = logits + (size_t)r * L;
                int best = 0;
                for (int c = 1; c < L; c++)
                    if (row[c] > row[best]) best = c;
                correct += best == s.labels[first + mine + r];
            }
        }
        status = comm_all_reduce(&g->dp, &correct, 1, COMM_I64, COMM_SUM);
        *metric = (double)correct / (double)s.n;
    } else {
        double sums[2] = {0.0, 0.0}; /* loss, tokens */
        const size_t at = (size_t)mine * T, n = (size_t)B * T;
        for (int b = 0; b < cfg->eval_batches && status == DS_OK; b++) {
            status = lm_reader_next(s.lm, G, rows_in, rows_tg, rows_w);
            if (status != DS_OK) break;
            memcpy(m->inputs, rows_in + at, n * sizeof(int32_t));
            memcpy(m->targets, rows_tg + at, n * sizeof(int32_t));
            memcpy(m->loss_weights, rows_w + at, n * sizeof(float));
            for (size_t i = 0; i < n; i++)
                sums[1] += m->loss_weights[i];
            memcpy(logits, m->loss_weights, n * sizeof(float));
            sums[0] += model_forward(m, m->inputs, m->targets, logits, NULL);
        }
        /* every rank takes part in the sum, even after its reader failed */
        int reduced = comm_all_reduce(&g->dp, sums, 2, COMM_F64, COMM_SUM);
        if (status == DS_OK) status = reduced;
        *metric = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    }
    stream_close(&s);
    return status;
}

/* ---- the driver ---------------------------------------------------------------------------------
 */

static int make_dir(const char *path)
{
    char tmp[CONFIG_STR_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return ds_error(DS_ERR_INPUT, "%s: cannot create: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return ds_error(DS_ERR_INPUT, "%s: cannot create: %s", tmp, strerror(errno));
    return DS_OK;
}

static int write_report(const char *path, const ContinualTasks *tasks, const double *R, int K,
                        int accuracy, const ContinualSummary *sum, const Config *cfg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "metric", accuracy ? "accuracy" : "loss");
    cJSON *ids = cJSON_AddArrayToObject(root, "tasks");
    for (int i = 0; i < K; i++)
        cJSON_AddItemToArray(ids, cJSON_CreateString(tasks->items[i].id));
    cJSON *rows = cJSON_AddArrayToObject(root, "R");
    for (int i = 0; i < K; i++) {
        cJSON *row = cJSON_CreateArray();
        for (int j = 0; j < K; j++)
            cJSON_AddItemToArray(row, j <= i ? cJSON_CreateNumber(R[(size_t)i * K + j])
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
    FILE *f = fopen(path, "w");
    int status = DS_OK;
    if (!f || fprintf(f, "%s\n", text) < 0)
        status = ds_error(DS_ERR_INPUT, "%s: cannot write", path);
    if (f && fclose(f) != 0 && status == DS_OK)
        status = ds_error(DS_ERR_INPUT, "%s: cannot write", path);
    free(text);
    return status;
}

static void print_matrix(const ContinualTasks *tasks, const double *R, int K, int accuracy)
{
    printf("continual: %s after each task (rows) on each task (columns)\n",
           accuracy ? "accuracy" : "eval loss");
    printf("%-16s", "after \\ on");
    for (int j = 0; j < K; j++)
        printf(" %10.10s", tasks->items[j].id);
    printf("\n");
    for (int i = 0; i < K; i++) {
        printf("%-16.16s", tasks->items[i].id);
        for (int j = 0; j < K; j++) {
            if (j <= i)
                printf(" %10.4f", R[(size_t)i * K + j]);
            else
                printf(" %10s", "-");
        }
        printf("\n");
    }
}

typedef struct Driver {
    ProcessGrid grid;
    const Backend *be;
    Model model, fisher_model; /* fisher_model: per-example Fisher at micro_batch_size > 1 */
    Model *fisher_work;        /* the model the Fisher pass runs: model or fisher_model */
    Optimizer opt;
    EwcState ewc;
    ReplayBuffer replay;
    TaskStream train, fisher_stream;
    float *fisher, *logits; /* fisher: the Fisher pass's full-layout estimate, host memory */
    /* one global micro-batch, micro_batch_size x dp rows, the same on every rank: the replayed
     * rows first, then the task's; rank r trains rows [r B, (r + 1) B) */
    int32_t *g_inputs, *g_targets; /* [G*T] */
    float *g_weights;              /* [G*T] loss mask */
    int32_t *g_labels, *g_task;    /* [G] */
    int32_t *g_slot;               /* [G] replayed rows: the buffer slot */
    float *row_weights;            /* [B] classification, [B*T] LM */
    double *R;
    FILE *metrics;
} Driver;

static void driver_free(Driver *d)
{
    if (d->metrics) fclose(d->metrics);
    stream_close(&d->train);
    stream_close(&d->fisher_stream);
    free(d->fisher);
    free(d->logits);
    free(d->g_inputs);
    free(d->g_targets);
    free(d->g_weights);
    free(d->g_labels);
    free(d->g_task);
    free(d->g_slot);
    free(d->row_weights);
    free(d->R);
    ewc_free(&d->ewc);
    replay_free(&d->replay);
    optim_free(&d->opt);
    model_free(&d->model);
    model_free(&d->fisher_model);
    comm_grid_free(&d->grid);
}

/* Fill the global micro-batch: n_replay rows drawn from the buffer (every rank draws the same
 * slots; the rank holding a slot's tokens hands them to all through one sum over dp), the rest
 * read from the task (every rank reads them all, in the same order). Then this rank's rows go to
 * the model's inputs, targets, loss weights and labels. */
static int fill_micro_batch(Driver *d, int n_replay, int task_index, int32_t *labels)
{
    Model *m = &d->model;
    const int B = m->B, T = m->T, G = B * d->grid.dp_size;
    const size_t nT = (size_t)n_replay * T;
    if (n_replay > 0) {
        memset(d->g_inputs, 0, nT * sizeof(int32_t));
        memset(d->g_targets, 0, nT * sizeof(int32_t));
        memset(d->g_weights, 0, nT * sizeof(float));
    }
    for (int r = 0; r < n_replay; r++) {
        int slot;
        DS_TRY(replay_draw(&d->replay, &slot));
        d->g_slot[r] = slot;
        d->g_labels[r] = (int32_t)d->replay.labels[slot];
        d->g_task[r] = d->replay.task_ids[slot];
        if (replay_holds(&d->replay, slot))
            DS_TRY(replay_read(&d->replay, slot, d->g_inputs + (size_t)r * T,
                               d->g_targets + (size_t)r * T, d->g_weights + (size_t)r * T, NULL,
                               NULL));
    }
    if (n_replay > 0 && d->grid.dp_size > 1) {
        DS_TRY(comm_all_reduce(&d->grid.dp, d->g_inputs, nT, COMM_I32, COMM_SUM));
        DS_TRY(comm_all_reduce(&d->grid.dp, d->g_targets, nT, COMM_I32, COMM_SUM));
        DS_TRY(comm_all_reduce(&d->grid.dp, d->g_weights, nT, COMM_F32, COMM_SUM));
    }
    for (int r = n_replay; r < G; r++) {
        DS_TRY(stream_next(&d->train, d->g_inputs + (size_t)r * T, d->g_targets + (size_t)r * T,
                           d->g_weights + (size_t)r * T, &d->g_labels[r]));
        d->g_task[r] = task_index;
        d->g_slot[r] = -1;
    }
    const size_t at = (size_t)d->grid.dp_rank * B * T, n = (size_t)B * T;
    memcpy(m->inputs, d->g_inputs + at, n * sizeof(int32_t));
    memcpy(m->targets, d->g_targets + at, n * sizeof(int32_t));
    memcpy(m->loss_weights, d->g_weights + at, n * sizeof(float));
    memcpy(labels, d->g_labels + (size_t)d->grid.dp_rank * B, (size_t)B * sizeof(int32_t));
    return DS_OK;
}

/* The EWC penalty over the whole model, each element once: the fused update sums this rank's
 * shard, in which tensors another tensor-parallel rank also holds (tp_copy) and, without ZeRO,
 * every data-parallel rank's copy would count again. This is the part of the tp copies, of the
 * parameters before the update (the model's, in the backend's memory: only the copies' ranges,
 * small vectors, are read back from a device). */
static double ewc_penalty_copies(const Driver *d, const float *params)
{
    const EwcState *e = &d->ewc;
    double dup = 0.0;
    for (int i = 0; i < d->model.table.count && e->n_sets > 0; i++) {
        const ParamInfo *p = &d->model.table.items[i];
        size_t b = p->offset > e->lo ? p->offset : e->lo;
        size_t end = p->offset + p->numel < e->hi ? p->offset + p->numel : e->hi;
        if (!p->tp_copy || b >= end) continue;
        ewc_penalty_accumulate(e, params, b, end, &dup);
    }
    return 0.5 * e->lambda * dup;
}

/* shard_penalty (the fused update's) less copies (ewc_penalty_copies of the same parameters),
 * summed over the world. */
static int ewc_penalty_global(const Driver *d, double shard_penalty, double copies, double *out)
{
    double v = shard_penalty - copies;
    if (!d->opt.zero && d->grid.dp_rank != 0) v = 0.0;
    DS_TRY(comm_all_reduce(&d->grid.world, &v, 1, COMM_F64, COMM_SUM));
    *out = v;
    return DS_OK;
}

/* A copy of a dp-sharded flat buffer in the backend's memory (an EWC pair: this rank's shard
 * only), gathered over dp into full, a host buffer of this tensor-parallel rank's whole layout. */
static int gather_shard(const Driver *d, const float *shard, float *full)
{
    const size_t lo = d->opt.shard_begin, n = d->opt.n;
    d->be->mem_to_host(full + lo, shard, n * sizeof(float)); /* memcpy on the CPU */
    if (!d->opt.zero || d->grid.dp_size == 1) return DS_OK;
    return comm_all_gather(&d->grid.dp, full, n, COMM_F32);
}

/* <dir>/ewc.h5 and <dir>/replay-rank-00000.h5, whole tensors and one buffer whatever the
 * layout, so that a run at another tp x dp loads them. Collective over the world: each half of
 * each EWC set is gathered over dp into scratch (host, the layout's size) and each
 * tensor-parallel rank's data-parallel rank 0 writes its slices in turn; the replay tokens are
 * summed over dp and world rank 0 writes them. */
static int continual_state_save(Driver *d, const char *dir, int save_ewc, int save_replay,
                                float *scratch, uint64_t replay_seed)
{
    const ProcessGrid *g = &d->grid;
    char path[CONFIG_STR_MAX + 96], tmp[CONFIG_STR_MAX + 128];
    int status = DS_OK;
    if (save_ewc) {
        snprintf(path, sizeof(path), "%s/ewc.h5", dir);
        snprintf(tmp, sizeof(tmp), "%s/ewc.h5.tmp", dir);
        if (g->world_rank == 0) status = ewc_save_begin(&d->ewc, tmp);
        DS_TRY(comm_broadcast(&g->world, &status, 1, COMM_I32, 0));
        if (status != DS_OK) return g->world_rank == 0 ? status : DS_ERR_INTERNAL;
        for (int k = 0; k < d->ewc.n_sets; k++) {
            for (int which = 0; which < 2; which++) { /* the Fisher, then the anchor */
                DS_TRY(gather_shard(d, which ? d->ewc.anchor[k] : d->ewc.fisher[k], scratch));
                for (int r = 0; r < g->tp_size; r++) {
                    if (g->tp_rank == r && g->dp_rank == 0)
                        DS_TRY(ewc_save_set(tmp, &d->model.table, k, which ? NULL : scratch,
                                            which ? scratch : NULL));
                    DS_TRY(comm_barrier(&g->world));
                }
            }
        }
        if (g->world_rank == 0 && rename(tmp, path) != 0)
            return ds_error(DS_ERR_INPUT, "%s: rename failed: %s", path, strerror(errno));
    }
    if (save_replay) {
        ReplayBuffer whole;
        const ReplayBuffer *rb = &d->replay;
        DS_TRY(replay_init(&whole, rb->policy, rb->capacity_total, rb->T, 0, 1, replay_seed));
        replay_shard_to_whole(rb, &whole);
        const size_t n = (size_t)rb->count * rb->T;
        if (g->dp_size > 1 &&
            ((status = comm_all_reduce(&g->dp, whole.inputs, n, COMM_I32, COMM_SUM)) != DS_OK ||
             (status = comm_all_reduce(&g->dp, whole.targets, n, COMM_I32, COMM_SUM)) != DS_OK ||
             (status = comm_all_reduce(&g->dp, whole.mask, n, COMM_U8, COMM_SUM)) != DS_OK)) {
            replay_free(&whole);
            return status;
        }
        if (g->world_rank == 0) {
            status = replay_save(&whole, dir);
            /* files of a run with more ranks would say the buffer has more parts */
            for (int r = 1; status == DS_OK; r++) {
                snprintf(path, sizeof(path), "%s/replay-rank-%05d.h5", dir, r);
                if (remove(path) != 0) break;
            }
        }
        replay_free(&whole);
    }
    return status;
}

/* Collective over the world: ranks other than 0 get DS_ERR_INTERNAL when rank 0 failed. */
static int agree(const ProcessGrid *g, int status)
{
    int64_t worst = status;
    if (g->world_size > 1 &&
        comm_all_reduce(&g->world, &worst, 1, COMM_I64, COMM_MAX) != DS_OK)
        return DS_ERR_INTERNAL;
    if (status != DS_OK) return status;
    return worst != DS_OK ? ds_error(DS_ERR_INTERNAL, "another rank failed") : DS_OK;
}

/* CkptAllMinFn over a comm group: MIN as the MAX of the negation. */
static int continual_all_min(void *group, int local, int *global)
{
    int64_t v = -(int64_t)local;
    DS_TRY(comm_all_reduce((const CommGroup *)group, &v, 1, COMM_I64, COMM_MAX));
    *global = (int)-v;
    return DS_OK;
}

/* Copy model parameters between two models of one layout (through host scratch of the
 * table's size on a device backend). */
static void params_copy(Model *dst, const Model *src, float *host_scratch)
{
    const size_t bytes = src->table.total * sizeof(float);
    if (src->be->host_memory) {
        memcpy(dst->params, src->params, bytes);
        return;
    }
    src->be->mem_to_host(host_scratch, src->params, bytes);
    dst->be->mem_to_device(dst->params, host_scratch, bytes);
}

int continual_run(const Config *cfg)
{
    int status = DS_OK;
    Driver d;
    memset(&d, 0, sizeof(d));
    TrainCkpt *ckpts = NULL;
    int32_t *labels = NULL; /* [B] this rank's rows' labels */
    ContinualTasks *tasks = ds_calloc(1, sizeof(ContinualTasks));
    if (!tasks) return DS_ERR_INTERNAL;
    char run_dir[CONFIG_STR_MAX], path[CONFIG_STR_MAX + 64], state_dir[CONFIG_STR_MAX + 64];
    /* the process grid first (MPI when a launcher started us), as the plain driver does */
    if ((status = comm_grid_init(&d.grid, cfg->parallel_tp, cfg->parallel_dp)) != DS_OK)
        goto done;
    ProcessGrid *grid = &d.grid;
    if (strcmp(cfg->device, "cuda") == 0 && grid->world_size > 1 &&
        (status = comm_grid_enable_nccl(grid)) != DS_OK)
        goto done;
    if (grid->world_rank != 0 && !freopen("/dev/null", "w", stdout)) {
        status = ds_error(DS_ERR_INTERNAL, "rank %d: cannot silence stdout", grid->world_rank);
        goto done;
    }
    const int writer = grid->world_rank == 0; /* one rank writes the run's shared files */
    if (!cfg->continual_tasks[0]) {
        status = ds_error(DS_ERR_INPUT,
                          "task.type: %s trains from a task list: set "
                          "continual.tasks (one task is fine; docs/continual.md)",
                          cfg->task_type);
        goto done;
    }
    if ((status = continual_tasks_load(cfg->continual_tasks, tasks)) != DS_OK) goto done;
    const int K = tasks->count;
    int total_steps = 0; /* over all tasks: the step number of the final checkpoint */

    /* run directory and the resolved config */
    snprintf(run_dir, sizeof(run_dir), "%s", cfg->run_dir[0] ? cfg->run_dir : "runs/continual");
    if ((status = make_dir(run_dir)) != DS_OK) goto done;
    snprintf(state_dir, sizeof(state_dir), "%s/continual-state", run_dir);
    if ((status = make_dir(state_dir)) != DS_OK) goto done;
    snprintf(path, sizeof(path), "%s/config.yaml", run_dir);
    if (!writer) snprintf(path, sizeof(path), "/dev/null");
    FILE *cf = fopen(path, "w");
    if (!cf) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    config_write_yaml(cfg, cf, 0);
    fclose(cf);

    /* model, on this rank's device and tensor-parallel slice */
    ModelConfig mc;
    if ((status = train_model_config(cfg, &mc)) != DS_OK) goto done;
    const int cls = strcmp(cfg->task_type, "classification") == 0;
    if (cls) {
        if (cfg->task_num_labels < 2) {
            status = ds_error(DS_ERR_INPUT,
                              "task.num_labels: task.type classification needs at "
                              "least 2 labels, got %d",
                              cfg->task_num_labels);
            goto done;
        }
        mc.num_labels = cfg->task_num_labels;
        /* the export's class names (task.labels), checked now rather than after the last task */
        char *probe = NULL;
        if ((status = hf_config_json_text(&mc, cfg->model_path, &probe)) == DS_OK)
            status = hf_config_json_classification(&mc, cfg->task_labels, &probe);
        free(probe);
        if (status != DS_OK) goto done;
    }
    const int B = cfg->train_micro_batch_size, T = cfg->train_seq_len,
              accum = cfg->train_grad_accum, G = B * grid->dp_size;
    if ((status = train_backend(cfg, &d.be)) != DS_OK ||
        (status = model_init_parallel(&d.model, &mc, d.be, B, T, grid)) != DS_OK)
        goto done;
    const size_t total = d.model.table.total;
    if (cfg->model_path[0] && !cfg->model_random_init) {
        float *staging = d.be->host_memory ? d.model.params
                                           : ds_aligned_alloc(PARAM_ALIGN_BYTES,
                                                              total * sizeof(float));
        if (!staging) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
        status = hf_load_weights(cfg->model_path, &mc, &d.model.table, staging);
        if (status == DS_OK && !d.be->host_memory)
            d.be->mem_to_device(d.model.params, staging, total * sizeof(float));
        if (!d.be->host_memory) free(staging);
        if (status != DS_OK) goto done;
    } else {
        model_init_weights(&d.model, (uint64_t)cfg->train_seed, cfg->model_init_std);
    }
    if ((status = optim_init_sharded(&d.opt, &d.model.table, d.be, grid, cfg->parallel_zero)) !=
        DS_OK)
        goto done;
    const size_t lo = d.opt.shard_begin, hi = d.opt.shard_begin + d.opt.n;

    /* EWC on this rank's optimizer shard, replay, and what the Fisher pass needs */
    FisherOptions fopt = {.samples = cfg->continual_ewc_fisher_samples,
                          .batched = cfg->continual_ewc_fisher_batched,
                          .seed = (uint64_t)cfg->train_seed + 17,
                          .shard_rank = grid->dp_rank,
                          .shard_size = grid->dp_size};
    EwcMode mode;
    if ((status = ewc_mode_parse(cfg->continual_ewc_mode, &mode)) != DS_OK ||
        (status = fisher_type_parse(cfg->continual_ewc_fisher_type, &fopt.type)) != DS_OK ||
        (status = ewc_init_on(&d.ewc, mode, cfg->continual_ewc_lambda, cfg->continual_ewc_gamma, lo,
                              hi, d.be)) != DS_OK)
        goto done;
    size_t fisher_model_bytes = 0;
    if (cfg->continual_ewc_enabled) {
        if (fopt.type == FISHER_EXACT && !cls) {
            status = ds_error(DS_ERR_INPUT, "continual.ewc.fisher.type: exact needs task.type "
                                            "classification");
            goto done;
        }
        if (fopt.type == FISHER_SAMPLED && !cls && grid->tp_size > 1) {
            status = ds_error(DS_ERR_INPUT,
                              "continual.ewc.fisher.type: sampled draws tokens from the whole "
                              "vocabulary, which parallel.tp splits; use empirical at tp %d",
                              grid->tp_size);
            goto done;
        }
        /* the pairs sit beside the moments: optim_step fuses the update on the device */
        d.opt.ewc = &d.ewc;
        /* per example: a model of one row unless the training one has one row already */
        d.fisher_work = &d.model;
        if (!fopt.batched && B != 1) {
            if ((status = model_init_parallel(&d.fisher_model, &mc, d.be, 1, T, grid)) != DS_OK)
                goto done;
            d.fisher_work = &d.fisher_model;
            fisher_model_bytes = 2 * total * sizeof(float) + d.fisher_model.arena_bytes;
        }
        d.fisher = ds_aligned_alloc(PARAM_ALIGN_BYTES, total * sizeof(float));
        if (!d.fisher) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
    }
    ReplayPolicy policy;
    const uint64_t replay_seed = (uint64_t)cfg->train_seed + 29;
    if ((status = replay_policy_parse(cfg->continual_replay_policy, &policy)) != DS_OK ||
        (status = replay_init_sharded(&d.replay, policy, cfg->continual_replay_capacity, T,
                                      grid->dp_rank, grid->dp_size, replay_seed)) != DS_OK)
        goto done;
    if (cfg->continual_state[0]) {
        /* a state saved at any layout: whole tensors and one buffer */
        char p2[CONFIG_STR_MAX + 64];
        snprintf(p2, sizeof(p2), "%s/ewc.h5", cfg->continual_state);
        struct stat st;
        if (cfg->continual_ewc_enabled && stat(p2, &st) == 0 &&
            (status = ewc_load_tensors(&d.ewc, p2, &d.model.table)) != DS_OK)
            goto done;
        snprintf(p2, sizeof(p2), "%s/replay-rank-00000.h5", cfg->continual_state);
        if (cfg->continual_replay_capacity > 0 && stat(p2, &st) == 0) {
            ReplayBuffer whole;
            if ((status = replay_init(&whole, policy, cfg->continual_replay_capacity, T, 0, 1,
                                      replay_seed)) != DS_OK)
                goto done;
            if ((status = replay_load(&whole, cfg->continual_state)) == DS_OK)
                status = replay_shard_from_whole(&d.replay, &whole);
            replay_free(&whole);
            if (status != DS_OK) goto done;
        }
        printf("continual: state from %s: %d Fisher set(s), %d replay example(s)\n",
               cfg->continual_state, d.ewc.n_sets, d.replay.count);
    }
    const int L = cls ? mc.num_labels : mc.vocab_size;
    d.logits = ds_malloc((size_t)B * (cls ? 1 : T) * L * sizeof(float) +
                         (size_t)B * T * sizeof(float));
    d.g_inputs = ds_malloc((size_t)G * T * sizeof(int32_t));
    d.g_targets = ds_malloc((size_t)G * T * sizeof(int32_t));
    d.g_weights = ds_malloc((size_t)G * T * sizeof(float));
    d.g_labels = ds_malloc((size_t)G * sizeof(int32_t));
    d.g_task = ds_malloc((size_t)G * sizeof(int32_t));
    d.g_slot = ds_malloc((size_t)G * sizeof(int32_t));
    d.row_weights = ds_malloc((size_t)B * T * sizeof(float));
    labels = ds_malloc((size_t)B * sizeof(int32_t));
    d.R = ds_calloc((size_t)K * K, sizeof(double));
    if (!d.logits || !d.g_inputs || !d.g_targets || !d.g_weights || !d.g_labels || !d.g_task ||
        !d.g_slot || !d.row_weights || !labels || !d.R) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
    if (!writer) snprintf(path, sizeof(path), "/dev/null");
    if (!(d.metrics = fopen(path, "w"))) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    size_t n_params = 0; /* the whole model's, not this rank's slice */
    for (int i = 0; i < d.model.table.count; i++)
        n_params += (size_t)d.model.table.items[i].shape[0] *
                    (size_t)(d.model.table.items[i].ndim == 2 ? d.model.table.items[i].shape[1] : 1);
    /* memory per rank as the plain driver prints it, plus EWC's Fisher and anchor (one pair
     * online, one per task separate) on the optimizer's shard, the Fisher pass's buffer, and the
     * one-row model of the per-example Fisher */
    const double MiB = 1.0 / 1048576;
    const int ewc_sets = !cfg->continual_ewc_enabled ? 0 : mode == EWC_ONLINE ? 1 : K + d.ewc.n_sets;
    printf("dstrain: %d ranks (tp %d x dp %d, zero %d); memory per rank: parameters %.2f MiB, "
           "gradients %.2f MiB, optimizer %.2f MiB, activations %.2f MiB, EWC %.2f MiB "
           "(Fisher and anchor x %d), Fisher pass %.2f MiB%s\n",
           grid->world_size, grid->tp_size, grid->dp_size, d.opt.zero, total * 4.0 * MiB,
           total * 4.0 * MiB, d.opt.n * 8.0 * MiB, d.model.arena_bytes * MiB,
           ewc_sets * d.opt.n * 8.0 * MiB, ewc_sets,
           ((d.fisher ? total * 4.0 : 0.0) + fisher_model_bytes) * MiB,
           d.be->host_memory || !d.fisher ? "" : " (the Fisher buffer in host memory)");
    printf("continual: %d tasks, %s, %zu parameters, EWC %s (lambda %g, %s, Fisher %s over %d "
           "examples%s), replay %d examples at ratio %g (%s)\n",
           K, cls ? "classification" : "causal LM", n_params,
           cfg->continual_ewc_enabled ? "on" : "off", cfg->continual_ewc_lambda,
           cfg->continual_ewc_mode, cfg->continual_ewc_fisher_type,
           cfg->continual_ewc_fisher_samples, fopt.batched ? ", batched" : "",
           cfg->continual_replay_capacity, cfg->continual_replay_ratio,
           cfg->continual_replay_policy);
    /* fault-injection hook for tests, as in the plain driver: DSTRAIN_FAIL_RANK=k fails world
     * rank k here while the others go on into the first collective */
    const char *fail_rank = getenv("DSTRAIN_FAIL_RANK");
    char *fail_end = NULL;
    if (fail_rank && *fail_rank && strtol(fail_rank, &fail_end, 10) == grid->world_rank &&
        *fail_end == 0) {
        status = ds_error(DS_ERR_INPUT, "DSTRAIN_FAIL_RANK=%s: injected failure on rank %d",
                          fail_rank, grid->world_rank);
        goto done;
    }

    const int task_base = d.ewc.tasks_seen; /* task ids continue across runs */
    const double t_start = ds_now();
    for (int k = 0; k < K; k++) {
        const ContinualTask *task = &tasks->items[k];
        const int task_id = task_base + k;
        stream_close(&d.train);
        if ((status = stream_open(&d.train, task->train, &mc, T,
                                  (uint64_t)cfg->train_seed * 1000003ull + (uint64_t)k + 1)) !=
            DS_OK)
            goto done;
        /* replayed rows of each global micro-batch (micro_batch_size x dp rows) */
        const int n_replay_rows = cfg->continual_replay_capacity > 0
                                      ? (int)floor(cfg->continual_replay_ratio * G + 0.5)
                                      : 0;
        int steps = task->steps;
        if (!steps) {
            int fresh = (G - (k > 0 || d.replay.count ? n_replay_rows : 0)) * accum;
            steps = (int)ceil(task->epochs * (double)d.train.n / (fresh > 0 ? fresh : 1));
        }
        total_steps += steps;
        Config tc = *cfg; /* this task's schedule */
        tc.train_steps = steps;
        /* fresh Adam moments per task, as Avalanche's default strategies reset the optimizer */
        d.be->mem_zero(d.opt.m + d.opt.shard_begin, d.opt.n * sizeof(float));
        d.be->mem_zero(d.opt.v + d.opt.shard_begin, d.opt.n * sizeof(float));
        d.opt.t = 0;
        double loss = NAN, penalty = 0.0;
        for (int step = 0; step < steps; step++) {
            /* every rank learns of a signal any rank got, at the same step */
            int64_t signal = signals_pending();
            if (grid->world_size > 1 &&
                (status = comm_all_reduce(&grid->world, &signal, 1, COMM_I64, COMM_MAX)) != DS_OK)
                goto done;
            if (signal) {
                /* a task sequence has no mid-run checkpoint yet: a requeued run starts it again
                 * from the same model and state, which the nightly command relies on */
                status = ds_error(DS_EXIT_REQUEUE,
                                  "%s during task %s: stopping; a restart runs the task sequence "
                                  "again from its start",
                                  signals_name((int)signal), task->id);
                goto done;
            }
            model_zero_grad(&d.model);
            loss = 0.0;
            int replayed = 0;
            for (int a = 0; a < accum; a++) {
                int n_rep = d.replay.count > 0 ? n_replay_rows : 0;
                replayed += n_rep;
                if ((status = fill_micro_batch(&d, n_rep, task_id, labels)) != DS_OK)
                    goto done;
                if (cls) {
                    for (int r = 0; r < B; r++)
                        d.row_weights[r] = 1.0f / (float)(G * accum);
                    loss += model_forward_train(&d.model, d.model.inputs, labels, d.row_weights,
                                                NULL);
                } else {
                    /* the mean over the global micro-batch's trained tokens */
                    double count = 0.0;
                    for (size_t i = 0; i < (size_t)G * T; i++)
                        count += d.g_weights[i];
                    for (int i = 0; i < B * T; i++)
                        d.row_weights[i] =
                            count > 0 ? (float)(d.model.loss_weights[i] / (count * accum)) : 0.0f;
                    loss += model_forward_train(&d.model, d.model.inputs, d.model.targets,
                                                d.row_weights, NULL);
                }
                model_backward(&d.model);
                /* everything trained on is offered to the buffer (replayed rows are not new),
                 * the whole global micro-batch on every rank, in one order */
                if (cfg->continual_replay_capacity > 0) {
                    for (int r = n_rep; r < G; r++) {
                        status = replay_add(&d.replay, d.g_inputs + (size_t)r * T,
                                            cls ? NULL : d.g_targets + (size_t)r * T,
                                            cls ? NULL : d.g_weights + (size_t)r * T,
                                            cls ? d.g_labels[r] : -1, task_id);
                        if (status != DS_OK) goto done;
                    }
                }
            }
            /* communication only now, after the last micro-batch */
            if ((status = comm_all_reduce(&grid->dp, &loss, 1, COMM_F64, COMM_SUM)) != DS_OK ||
                (status = optim_reduce_grads(&d.opt, &d.model, grid)) != DS_OK)
                goto done;
            double grad_norm = 0.0;
            if ((status = optim_grad_norm_global(&d.opt, &d.model, grid, &grad_norm)) != DS_OK)
                goto done;
            const float scale = optim_clip_scale(grad_norm, cfg->optim_clip_grad_norm);
            const float lr = optim_lr_at(&tc, step);
            const double copies = d.ewc.n_sets > 0 ? ewc_penalty_copies(&d, d.model.params) : 0.0;
            double dup_free = 0.0; /* the penalty before the update, each element once */
            optim_step(&d.opt, &d.model, &tc, lr, scale);
            if ((status = ewc_penalty_global(&d, d.opt.ewc_penalty, copies, &dup_free)) !=
                    DS_OK ||
                (status = optim_gather_params(&d.opt, &d.model, grid)) != DS_OK)
                goto done;
            penalty = dup_free;
            fprintf(d.metrics,
                    "{\"task\": \"%s\", \"step\": %d, \"loss\": %.7g, \"ewc_penalty\": %.7g, "
                    "\"lr\": %.7g, \"grad_norm\": %.7g, \"replay_rows\": %d}\n",
                    task->id, step + 1, loss, penalty, lr, grad_norm, replayed);
            if ((step + 1) % cfg->log_every == 0 || step + 1 == steps)
                printf("task %s step %d/%d | loss %.4f | ewc penalty %.4g | lr %.3e | %.0fs\n",
                       task->id, step + 1, steps, loss, penalty, lr, ds_now() - t_start);
            if (!isfinite(loss)) {
                status = ds_error(DS_ERR_INTERNAL, "task %s step %d: loss is not finite (%g)",
                                  task->id, step + 1, loss);
                goto done;
            }
        }
        fflush(d.metrics);

        /* evaluation on every task seen so far */
        for (int j = 0; j <= k; j++) {
            double metric;
            if ((status = evaluate(&d.model, cfg, tasks->items[j].eval, &metric, d.logits, grid,
                                   d.g_inputs, d.g_targets, d.g_weights)) != DS_OK)
                goto done;
            d.R[(size_t)k * K + j] = metric;
            fprintf(d.metrics, "{\"task\": \"%s\", \"eval_task\": \"%s\", \"%s\": %.7g}\n",
                    task->id, tasks->items[j].id, cls ? "eval_accuracy" : "eval_loss", metric);
        }
        fflush(d.metrics);

        /* consolidate: the Fisher at the parameters that finished this task, each
         * data-parallel rank over its share of the examples, summed into the shards */
        if (cfg->continual_ewc_enabled) {
            const double tf = ds_now();
            if (d.fisher_work != &d.model) params_copy(d.fisher_work, &d.model, d.fisher);
            ProgressTask fisher_task;
            char fisher_what[192];
            snprintf(fisher_what, sizeof(fisher_what), "Fisher pass for task %s (%d examples)",
                     task->id, fopt.samples);
            progress_task_begin(&fisher_task, fisher_what, 0, "");
            stream_close(&d.fisher_stream);
            if ((status = stream_open(&d.fisher_stream, task->train, &mc, T,
                                      (uint64_t)cfg->train_seed * 7919ull + (uint64_t)k + 101)) !=
                    DS_OK ||
                (status = ewc_estimate_fisher(d.fisher_work, &fopt, fisher_next, &d.fisher_stream,
                                              d.fisher)) != DS_OK)
                goto done;
            if (grid->dp_size > 1)
                status = d.opt.zero
                             ? comm_reduce_scatter(&grid->dp, d.fisher, d.opt.n, COMM_F32)
                             : comm_all_reduce(&grid->dp, d.fisher, total, COMM_F32, COMM_SUM);
            if (status != DS_OK ||
                (status = ewc_consolidate(&d.ewc, d.fisher, d.model.params, task_id)) != DS_OK)
                goto done;
            progress_task_end(&fisher_task);
            /* mean and largest over the model, each element once */
            double fs[2] = {0.0, 0.0};
            for (int i = 0; i < d.model.table.count; i++) {
                const ParamInfo *p = &d.model.table.items[i];
                size_t b = p->offset > lo ? p->offset : lo;
                size_t e = p->offset + p->numel < hi ? p->offset + p->numel : hi;
                if (p->tp_copy || (!d.opt.zero && grid->dp_rank != 0)) continue;
                for (; b < e; b++) {
                    fs[0] += d.fisher[b];
                    if (d.fisher[b] > fs[1]) fs[1] = d.fisher[b];
                }
            }
            if ((status = comm_all_reduce(&grid->world, &fs[0], 1, COMM_F64, COMM_SUM)) != DS_OK ||
                (status = comm_all_reduce(&grid->world, &fs[1], 1, COMM_F64, COMM_MAX)) != DS_OK)
                goto done;
            printf("continual: task %s: Fisher over %d examples in %.1fs (mean %.3g, max %.3g)\n",
                   task->id, fopt.samples, ds_now() - tf, fs[0] / (double)n_params, fs[1]);
        }
        /* the state after every task: what tomorrow night's run (at any layout) starts from;
         * the Fisher buffer is free now and serves as scratch */
        if ((status = continual_state_save(&d, state_dir, cfg->continual_ewc_enabled,
                                           cfg->continual_replay_capacity > 0, d.fisher,
                                           replay_seed)) != DS_OK)
            goto done;
    }

    ContinualSummary sum;
    continual_summarize(d.R, K, cls, &sum);
    print_matrix(tasks, d.R, K, cls);
    printf("continual: average %s %.4f, backward transfer %.4f, forgetting %.4f (%.1fs)\n",
           cls ? "accuracy" : "loss", sum.average, sum.backward_transfer, sum.forgetting,
           ds_now() - t_start);
    snprintf(path, sizeof(path), "%s/continual.json", run_dir);
    if (writer) status = write_report(path, tasks, d.R, K, cls, &sum, cfg);
    if ((status = agree(grid, status)) != DS_OK) goto done;
    printf("continual: matrix and summary in %s\n", path);

    /* The trained weights: a checkpoint in <run.dir>/checkpoints and the Hugging Face export
     * in <run.dir>/export (a *ForSequenceClassification for a classifier), which the next run
     * (tomorrow night's) starts from with model.path, beside continual.state. Collective, as in
     * the plain driver: every rank writes its shard, the export is put together from the
     * tensor-parallel slices. */
    Config final_cfg = *cfg;
    snprintf(final_cfg.train_resume, sizeof(final_cfg.train_resume), "none");
    int start_step = 0;
    TrainCkptWorld ckpt_world = {
        .layout = {grid->tp_size, grid->dp_size, d.opt.zero, grid->tp_rank, grid->dp_rank},
        .all_min = grid->world_size > 1 ? continual_all_min : NULL,
        .comm_ctx = &grid->world,
        .tmp_tag = (long)getpid(),
        .optim_begin = d.opt.shard_begin,
        .optim_end = d.opt.zero ? d.opt.shard_begin + d.opt.n : 0,
    };
    int64_t rank0_pid = ckpt_world.tmp_tag;
    if ((status = comm_broadcast(&grid->world, &rank0_pid, 1, COMM_I64, 0)) != DS_OK)
        goto done;
    ckpt_world.tmp_tag = (long)rank0_pid;
    status = train_ckpt_open(&final_cfg, run_dir, &mc, &d.model, &d.opt, NULL, NULL,
                             grid->world_size > 1 ? &ckpt_world : NULL, &ckpts, &start_step);
    /* the EWC state goes into the checkpoint too, sharded like the moments (online: one pair;
     * separate: the first three, the continual-state directory holds them all) */
    for (int k = 0; k < d.ewc.n_sets && k < 3 && status == DS_OK; k++) {
        char name[32];
        snprintf(name, sizeof(name), "ewc.fisher_%d", k);
        status = train_ckpt_add_buffer(ckpts, name, d.ewc.fisher[k] - lo, lo, hi, !d.opt.zero);
        snprintf(name, sizeof(name), "ewc.anchor_%d", k);
        if (status == DS_OK)
            status = train_ckpt_add_buffer(ckpts, name, d.ewc.anchor[k] - lo, lo, hi, !d.opt.zero);
    }
    if (status == DS_OK)
        status = train_ckpt_finish(ckpts, total_steps, cfg->optim_lr * cfg->optim_min_lr_ratio);
    if (status == DS_OK && cfg->run_save_final)
        status = train_save_final(&d.model, grid, run_dir);

done:
    free(labels);
    if (status != DS_OK && status != DS_EXIT_REQUEUE && d.grid.world_size > 1) {
        /* one rank's failure ends every rank, with its message: never a hang in a collective */
        fflush(stdout);
        fprintf(stderr, "dstrain: error: rank %d: %s\n", d.grid.world_rank, ds_last_error());
        comm_abort(&d.grid, status);
    }
    train_ckpt_close(ckpts);
    driver_free(&d);
    free(tasks);
    return status;
}

/* ---- export fields ------------------------------------------------------------------------------
 */

static void json_set(cJSON *obj, const char *key, cJSON *value)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, value);
    else
        cJSON_AddItemToObject(obj, key, value);
}

int continual_hf_classification_fields(cJSON *config, const ModelConfig *mc,
                                       const char *const *labels)
{
    if (mc->num_labels <= 0)
        return ds_error(DS_ERR_INTERNAL, "classification export of a model without num_labels");
    const char *arch = mc->arch == ARCH_QWEN2 ? "Qwen2ForSequenceClassification"
                                              : "LlamaForSequenceClassification";
    cJSON *archs = cJSON_CreateArray();
    cJSON *id2label = cJSON_CreateObject(), *label2id = cJSON_CreateObject();
    if (!archs || !id2label || !label2id) {
        cJSON_Delete(archs);
        cJSON_Delete(id2label);
        cJSON_Delete(label2id);
        return ds_error(DS_ERR_INTERNAL, "cJSON: out of memory");
    }
    cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
    for (int i = 0; i < mc->num_labels; i++) {
        char id[16], name[64];
        snprintf(id, sizeof(id), "%d", i);
        if (labels && labels[i])
            snprintf(name, sizeof(name), "%s", labels[i]);
        else
            snprintf(name, sizeof(name), "LABEL_%d", i);
        cJSON_AddItemToObject(id2label, id, cJSON_CreateString(name));
        cJSON_AddItemToObject(label2id, name, cJSON_CreateNumber(i));
    }
    json_set(config, "architectures", archs);
    json_set(config, "num_labels", cJSON_CreateNumber(mc->num_labels));
    json_set(config, "id2label", id2label);
    json_set(config, "label2id", label2id);
    json_set(config, "problem_type", cJSON_CreateString("single_label_classification"));
    /* transformers finds the last non-padding token through pad_token_id; without one it uses
     * the last position, as dstrain does */
    json_set(config, "pad_token_id",
             mc->pad_token_id >= 0 ? cJSON_CreateNumber(mc->pad_token_id) : cJSON_CreateNull());
    return DS_OK;
}
