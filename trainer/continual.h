/* continual.h: continual learning over an ordered list of tasks: train on each in turn (replay
 * examples mixed into every batch, the EWC penalty fused into AdamW), estimate the Fisher after
 * each, evaluate every task seen so far, and report the accuracy (or loss) matrix. Not here: the
 * EWC arithmetic (ewc.c), the buffer (data/replay.c), collectives (comm/). */
#ifndef DSTRAIN_CONTINUAL_H
#define DSTRAIN_CONTINUAL_H

#include <cjson/cJSON.h>

#include "config.h"
#include "model.h"

#define CONTINUAL_MAX_TASKS 256

typedef struct ContinualTask {
    char id[128];
    char train[CONFIG_STR_MAX];
    char eval[CONFIG_STR_MAX];
    int steps;     /* 0 when given as epochs */
    double epochs; /* 0 when given as steps */
} ContinualTask;

typedef struct ContinualTasks {
    int count;
    ContinualTask items[CONTINUAL_MAX_TASKS];
} ContinualTasks;

/* Parse the tasks file: a mapping with one key `tasks`, a list of mappings
 * {id, train, eval, steps | epochs}. Errors "FILE:LINE: tasks[i].key: problem" (DS_ERR_INPUT). */
int continual_tasks_load(const char *path, ContinualTasks *out);

/* Summary numbers of an accuracy (higher_is_better) or loss matrix R[i][j] (row i: after
 * training task i; only j <= i filled), K tasks, row-major K x K. */
typedef struct ContinualSummary {
    double average;           /* mean of the last row */
    double backward_transfer; /* mean over j < K-1 of R[K-1][j] - R[j][j] */
    double forgetting;        /* mean over j < K-1 of the largest drop from an earlier row */
} ContinualSummary;
void continual_summarize(const double *R, int K, int higher_is_better, ContinualSummary *out);

/* Run the whole sequence from a validated config with continual.tasks set. */
int continual_run(const Config *cfg);

/* The config.json fields of a Hugging Face sequence-classification export of mc: architectures
 * (LlamaForSequenceClassification / Qwen2ForSequenceClassification), num_labels, id2label,
 * label2id, problem_type, pad_token_id. labels may be NULL (names LABEL_0, LABEL_1, ...). Sets or
 * replaces those keys of an existing config object. */
int continual_hf_classification_fields(cJSON *config, const ModelConfig *mc,
                                       const char *const *labels);

#endif
