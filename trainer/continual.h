/* continual.h: task sequences (continual learning): the tasks file, and the summary numbers of
 * the accuracy (or loss) matrix. A task sequence trains through the one training loop
 * (train.c), one phase per task; what happens between phases (evaluation of every task seen,
 * the Fisher pass, the continual state) is declared in run.h and lives in continual.c. */
#ifndef DSTRAIN_CONTINUAL_H
#define DSTRAIN_CONTINUAL_H

#include "config.h"

#define CONTINUAL_MAX_TASKS 256

typedef struct ContinualTask {
    char id[128];
    ConfigDataFiles train; /* one file, or a weighted mixture as data.train takes it */
    char eval[CONFIG_STR_MAX];
    int steps;     /* 0 when given as epochs */
    double epochs; /* 0 when given as steps */
    int line;      /* of the task in the tasks file, for messages */
    int train_line, eval_line; /* of its train and eval keys */
} ContinualTask;

typedef struct ContinualTasks {
    int count;
    ContinualTask items[CONTINUAL_MAX_TASKS];
} ContinualTasks;

/* Parse the tasks file: a mapping with one key `tasks`, a list of mappings
 * {id, train, eval, steps | epochs}; train is a path or a list of paths and {path, weight}.
 * Errors "FILE:LINE: tasks[i].key: problem" (DS_ERR_INPUT). */
int continual_tasks_load(const char *path, ContinualTasks *out);

/* Summary numbers of an accuracy (higher_is_better) or loss matrix R[i][j] (row i: after
 * training task i; only j <= i filled), K tasks, row-major K x K. */
typedef struct ContinualSummary {
    double average;           /* mean of the last row */
    double backward_transfer; /* mean over j < K-1 of R[K-1][j] - R[j][j] */
    double forgetting;        /* mean over j < K-1 of the largest drop from an earlier row */
} ContinualSummary;
void continual_summarize(const double *R, int K, int higher_is_better, ContinualSummary *out);

#endif
