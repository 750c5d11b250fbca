/* continual.c: the continual-learning driver (see continual.h). One model, one optimizer, one
 * EWC state and one replay buffer live through the whole task sequence; each task gets its own
 * learning-rate schedule and fresh Adam moments. Everything a step touches is allocated before
 * the first task. Single process: EWC's shard is the whole layout, the buffer has one rank.
 * The tasks list is its own YAML file (continual.tasks) so the scalar config schema stays flat. */
#include "continual.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "../checkpoint/hf_model.h"
#include "../checkpoint/train_ckpt.h"
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
 * eval.batches batches of an LM eval file (the same windows every time). */
static int evaluate(Model *m, const Config *cfg, const char *path, double *metric, float *logits)
{
    const int B = m->B, T = m->T, L = m->cfg.num_labels;
    TaskStream s;
    DS_TRY(stream_open(&s, path, &m->cfg, T, 0));
    int status = DS_OK;
    if (s.classification) {
        int64_t correct = 0;
        for (int64_t first = 0; first < s.n; first += B) {
            int rows = s.n - first < B ? (int)(s.n - first) : B;
            for (int r = 0; r < B; r++) {
                int64_t d = first + (r < rows ? r : 0);
                memcpy(m->inputs + (size_t)r * T, s.rows + (size_t)d * T,
                       (size_t)T * sizeof(int32_t));
            }
            model_forward(m, m->inputs, NULL, NULL, logits);
            for (int r = 0; r < rows; r++) {
                const float *row = logits + (size_t)r * L;
                int best = 0;
                for (int c = 1; c < L; c++)
                    if (row[c] > row[best]) best = c;
                correct += best == s.labels[first + r];
            }
        }
        *metric = (double)correct / (double)s.n;
    } else {
        double sum = 0.0, count = 0.0;
        for (int b = 0; b < cfg->eval_batches && status == DS_OK; b++) {
            status = lm_reader_next(s.lm, B, m->inputs, m->targets, m->loss_weights);
            if (status != DS_OK) break;
            for (int i = 0; i < B * T; i++)
                count += m->loss_weights[i];
            memcpy(logits, m->loss_weights, (size_t)B * T * sizeof(float));
            sum += model_forward(m, m->inputs, m->targets, logits, NULL);
        }
        *metric = count > 0 ? sum / count : NAN;
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
    Model model, fisher_model;
    Optimizer opt;
    EwcState ewc;
    ReplayBuffer replay;
    TaskStream train, fisher_stream;
    float *fisher, *logits;
    int32_t *labels, *fresh_labels; /* [B] per micro-batch: row labels */
    float *row_weights;             /* [B] classification, [B*T] LM */
    int32_t *row_task;              /* [B] */
    uint8_t *row_fresh;             /* [B] 1 = from the task, 0 = replayed */
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
    free(d->labels);
    free(d->fresh_labels);
    free(d->row_weights);
    free(d->row_task);
    free(d->row_fresh);
    free(d->R);
    ewc_free(&d->ewc);
    replay_free(&d->replay);
    optim_free(&d->opt);
    model_free(&d->model);
    model_free(&d->fisher_model);
}

/* Fill micro-batch rows: the first n_replay from the buffer, the rest from the task. */
static int fill_micro_batch(Driver *d, int n_replay, int task_index)
{
    Model *m = &d->model;
    const int B = m->B, T = m->T, cls = m->cfg.num_labels > 0;
    for (int r = 0; r < B; r++) {
        int32_t *in = m->inputs + (size_t)r * T, *tg = m->targets + (size_t)r * T;
        float *w = m->loss_weights + (size_t)r * T;
        int32_t label;
        if (r < n_replay) {
            int64_t l;
            DS_TRY(replay_sample(&d->replay, in, tg, w, &l, &d->row_task[r]));
            label = (int32_t)l;
            d->row_fresh[r] = 0;
        } else {
            DS_TRY(stream_next(&d->train, in, tg, w, &label));
            d->row_task[r] = task_index;
            d->row_fresh[r] = 1;
        }
        d->labels[r] = label;
    }
    (void)cls;
    return DS_OK;
}

int continual_run(const Config *cfg)
{
    int status = DS_OK;
    Driver d;
    memset(&d, 0, sizeof(d));
    ContinualTasks *tasks = ds_calloc(1, sizeof(ContinualTasks));
    if (!tasks) return DS_ERR_INTERNAL;
    char run_dir[CONFIG_STR_MAX], path[CONFIG_STR_MAX + 64], state_dir[CONFIG_STR_MAX + 64];
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
    FILE *cf = fopen(path, "w");
    if (!cf) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    config_write_yaml(cfg, cf, 0);
    fclose(cf);

    /* model */
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
    }
    const int B = cfg->train_micro_batch_size, T = cfg->train_seq_len,
              accum = cfg->train_grad_accum;
    if ((status = model_init(&d.model, &mc, backend_cpu(), B, T)) != DS_OK) goto done;
    if (cfg->model_path[0] && !cfg->model_random_init) {
        if ((status = hf_load_weights(cfg->model_path, &mc, &d.model.table, d.model.params)) !=
            DS_OK)
            goto done;
    } else {
        model_init_weights(&d.model, (uint64_t)cfg->train_seed, cfg->model_init_std);
    }
    const size_t total = d.model.table.total;
    if ((status = optim_init(&d.opt, &d.model.table)) != DS_OK) goto done;

    /* EWC, replay, and what the Fisher pass needs */
    FisherOptions fopt = {.samples = cfg->continual_ewc_fisher_samples,
                          .batched = cfg->continual_ewc_fisher_batched,
                          .seed = (uint64_t)cfg->train_seed + 17};
    EwcMode mode;
    if ((status = ewc_mode_parse(cfg->continual_ewc_mode, &mode)) != DS_OK ||
        (status = fisher_type_parse(cfg->continual_ewc_fisher_type, &fopt.type)) != DS_OK ||
        (status = ewc_init(&d.ewc, mode, cfg->continual_ewc_lambda, cfg->continual_ewc_gamma, 0,
                           total)) != DS_OK)
        goto done;
    if (cfg->continual_ewc_enabled) {
        if (fopt.type == FISHER_EXACT && !cls) {
            status = ds_error(DS_ERR_INPUT, "continual.ewc.fisher.type: exact needs task.type "
                                            "classification");
            goto done;
        }
        d.opt.ewc = &d.ewc;
        if ((status = model_init(&d.fisher_model, &mc, backend_cpu(), fopt.batched ? B : 1, T)) !=
            DS_OK)
            goto done;
        d.fisher = ds_malloc(total * sizeof(float));
        if (!d.fisher) {
            status = DS_ERR_INTERNAL;
            goto done;
        }
    }
    ReplayPolicy policy;
    if ((status = replay_policy_parse(cfg->continual_replay_policy, &policy)) != DS_OK ||
        (status = replay_init(&d.replay, policy, cfg->continual_replay_capacity, T, 0, 1,
                              (uint64_t)cfg->train_seed + 29)) != DS_OK)
        goto done;
    if (cfg->continual_state[0]) {
        char p2[CONFIG_STR_MAX + 64];
        snprintf(p2, sizeof(p2), "%s/ewc.h5", cfg->continual_state);
        struct stat st;
        if (cfg->continual_ewc_enabled && stat(p2, &st) == 0 &&
            (status = ewc_load(&d.ewc, p2, total)) != DS_OK)
            goto done;
        snprintf(p2, sizeof(p2), "%s/replay-rank-00000.h5", cfg->continual_state);
        if (cfg->continual_replay_capacity > 0 && stat(p2, &st) == 0 &&
            (status = replay_load(&d.replay, cfg->continual_state)) != DS_OK)
            goto done;
        printf("continual: state from %s: %d Fisher set(s), %d replay example(s)\n",
               cfg->continual_state, d.ewc.n_sets, d.replay.count);
    }
    const int L = cls ? mc.num_labels : mc.vocab_size;
    d.logits =
        ds_malloc((size_t)B * (cls ? 1 : T) * L * sizeof(float) + (size_t)B * T * sizeof(float));
    d.labels = ds_malloc((size_t)B * sizeof(int32_t));
    d.fresh_labels = ds_malloc((size_t)B * sizeof(int32_t));
    d.row_weights = ds_malloc((size_t)B * T * sizeof(float));
    d.row_task = ds_malloc((size_t)B * sizeof(int32_t));
    d.row_fresh = ds_malloc((size_t)B);
    d.R = ds_calloc((size_t)K * K, sizeof(double));
    if (!d.logits || !d.labels || !d.fresh_labels || !d.row_weights || !d.row_task ||
        !d.row_fresh || !d.R) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
    if (!(d.metrics = fopen(path, "w"))) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    printf("continual: %d tasks, %s, EWC %s (lambda %g, %s, Fisher %s over %d examples%s), "
           "replay %d examples at ratio %g (%s)\n",
           K, cls ? "classification" : "causal LM", cfg->continual_ewc_enabled ? "on" : "off",
           cfg->continual_ewc_lambda, cfg->continual_ewc_mode, cfg->continual_ewc_fisher_type,
           cfg->continual_ewc_fisher_samples, fopt.batched ? ", batched" : "",
           cfg->continual_replay_capacity, cfg->continual_replay_ratio,
           cfg->continual_replay_policy);

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
        const int n_replay_rows = cfg->continual_replay_capacity > 0
                                      ? (int)floor(cfg->continual_replay_ratio * B + 0.5)
                                      : 0;
        int steps = task->steps;
        if (!steps) {
            int fresh = (B - (k > 0 || d.replay.count ? n_replay_rows : 0)) * accum;
            steps = (int)ceil(task->epochs * (double)d.train.n / (fresh > 0 ? fresh : 1));
        }
        total_steps += steps;
        Config tc = *cfg; /* this task's schedule */
        tc.train_steps = steps;
        /* fresh Adam moments per task, as Avalanche's default strategies reset the optimizer */
        memset(d.opt.m, 0, total * sizeof(float));
        memset(d.opt.v, 0, total * sizeof(float));
        d.opt.t = 0;
        double loss = NAN, penalty = 0.0;
        for (int step = 0; step < steps; step++) {
            if (signals_pending()) {
                /* a task sequence has no mid-run checkpoint yet: a requeued run starts it again
                 * from the same model and state, which the nightly command relies on */
                status = ds_error(DS_EXIT_REQUEUE,
                                  "%s during task %s: stopping; a restart runs the task sequence "
                                  "again from its start",
                                  signals_name(signals_pending()), task->id);
                goto done;
            }
            model_zero_grad(&d.model);
            loss = 0.0;
            int replayed = 0;
            for (int a = 0; a < accum; a++) {
                int n_rep = d.replay.count > 0 ? n_replay_rows : 0;
                replayed += n_rep;
                if ((status = fill_micro_batch(&d, n_rep, task_id)) != DS_OK) goto done;
                if (cls) {
                    for (int r = 0; r < B; r++)
                        d.row_weights[r] = 1.0f / (float)(B * accum);
                    loss += model_forward(&d.model, d.model.inputs, d.labels, d.row_weights, NULL);
                } else {
                    double count = 0.0;
                    for (int i = 0; i < B * T; i++)
                        count += d.model.loss_weights[i];
                    for (int i = 0; i < B * T; i++)
                        d.row_weights[i] =
                            count > 0 ? (float)(d.model.loss_weights[i] / (count * accum)) : 0.0f;
                    loss += model_forward(&d.model, d.model.inputs, d.model.targets, d.row_weights,
                                          NULL);
                }
                model_backward(&d.model);
                /* everything trained on is offered to the buffer (replayed rows are not new) */
                if (cfg->continual_replay_capacity > 0) {
                    for (int r = 0; r < B; r++) {
                        if (!d.row_fresh[r]) continue;
                        /* the LM rows' loss mask was scaled into row_weights: offer the mask */
                        status = replay_add(&d.replay, d.model.inputs + (size_t)r * T,
                                            cls ? NULL : d.model.targets + (size_t)r * T,
                                            cls ? NULL : d.model.loss_weights + (size_t)r * T,
                                            cls ? d.labels[r] : -1, task_id);
                        if (status != DS_OK) goto done;
                    }
                }
            }
            const double grad_norm = optim_grad_norm(&d.model);
            const float scale = optim_clip_scale(grad_norm, cfg->optim_clip_grad_norm);
            const float lr = optim_lr_at(&tc, step);
            optim_step(&d.opt, &d.model, &tc, lr, scale);
            penalty = d.opt.ewc_penalty;
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
            if ((status = evaluate(&d.model, cfg, tasks->items[j].eval, &metric, d.logits)) !=
                DS_OK)
                goto done;
            d.R[(size_t)k * K + j] = metric;
            fprintf(d.metrics, "{\"task\": \"%s\", \"eval_task\": \"%s\", \"%s\": %.7g}\n",
                    task->id, tasks->items[j].id, cls ? "eval_accuracy" : "eval_loss", metric);
        }
        fflush(d.metrics);

        /* consolidate: the Fisher at the parameters that finished this task */
        if (cfg->continual_ewc_enabled) {
            const double tf = ds_now();
            memcpy(d.fisher_model.params, d.model.params, total * sizeof(float));
            ProgressTask fisher_task;
            char fisher_what[192];
            snprintf(fisher_what, sizeof(fisher_what), "Fisher pass for task %s (%d examples)",
                     task->id, fopt.samples);
            progress_task_begin(&fisher_task, fisher_what, 0, "");
            stream_close(&d.fisher_stream);
            if ((status = stream_open(&d.fisher_stream, task->train, &mc, T,
                                      (uint64_t)cfg->train_seed * 7919ull + (uint64_t)k + 101)) !=
                    DS_OK ||
                (status = ewc_estimate_fisher(&d.fisher_model, &fopt, fisher_next, &d.fisher_stream,
                                              d.fisher)) != DS_OK ||
                (status = ewc_consolidate(&d.ewc, d.fisher, d.model.params, task_id)) != DS_OK)
                goto done;
            progress_task_end(&fisher_task);
            double fsum = 0.0, fmax = 0.0;
            for (size_t i = 0; i < total; i++) {
                fsum += d.fisher[i];
                if (d.fisher[i] > fmax) fmax = d.fisher[i];
            }
            printf("continual: task %s: Fisher over %d examples in %.1fs (mean %.3g, max %.3g)\n",
                   task->id, fopt.samples, ds_now() - tf, fsum / (double)total, fmax);
            snprintf(path, sizeof(path), "%s/ewc.h5", state_dir);
            if ((status = ewc_save(&d.ewc, path, total, 1)) != DS_OK) goto done;
        }
        if (cfg->continual_replay_capacity > 0 &&
            (status = replay_save(&d.replay, state_dir)) != DS_OK)
            goto done;
    }

    ContinualSummary sum;
    continual_summarize(d.R, K, cls, &sum);
    print_matrix(tasks, d.R, K, cls);
    printf("continual: average %s %.4f, backward transfer %.4f, forgetting %.4f (%.1fs)\n",
           cls ? "accuracy" : "loss", sum.average, sum.backward_transfer, sum.forgetting,
           ds_now() - t_start);
    snprintf(path, sizeof(path), "%s/continual.json", run_dir);
    if ((status = write_report(path, tasks, d.R, K, cls, &sum, cfg)) != DS_OK) goto done;
    printf("continual: matrix and summary in %s\n", path);

    /* The trained weights: a checkpoint in <run.dir>/checkpoints and, for causal LM, the Hugging
     * Face export in <run.dir>/export, which the next run (tomorrow night's) starts from with
     * model.path, beside continual.state. */
    Config final_cfg = *cfg;
    snprintf(final_cfg.train_resume, sizeof(final_cfg.train_resume), "none");
    if (cls) final_cfg.export_enabled = 0; /* sequence-classification export: not yet */
    TrainCkpt *ckpts = NULL;
    int start_step = 0;
    if ((status = train_ckpt_open(&final_cfg, run_dir, &mc, &d.model, &d.opt, NULL, NULL, NULL,
                                  &ckpts, &start_step)) == DS_OK)
        status = train_ckpt_finish(ckpts, total_steps, cfg->optim_lr * cfg->optim_min_lr_ratio);
    train_ckpt_close(ckpts);
    if (status != DS_OK) goto done;

done:
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
