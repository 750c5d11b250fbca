/* run.h: the state of one training run, shared by the one training loop (train.c) and the work
 * a task sequence does between its phases (continual.c). A plain run is the loop over one phase
 * (data.train); a task sequence is the same loop over one phase per task, with the Fisher pass,
 * the evaluation of every task seen so far and the continual state written between phases.
 * Everything a step touches is allocated before the first step. */
#ifndef DSTRAIN_RUN_H
#define DSTRAIN_RUN_H

#include <stdio.h>

#include "../comm/comm.h"
#include "../data/reader.h"
#include "../data/replay.h"
#include "config.h"
#include "continual.h"
#include "ewc.h"
#include "metrics_server.h"
#include "model.h"
#include "optim.h"
#include "train_ckpt.h"

/* One phase of the run: a task of the sequence, or the whole plain run. */
typedef struct Phase {
    char id[128];
    DataSource sources[DATA_MAX_SOURCES]; /* paths point into the config or the tasks file */
    int n_sources;
    const char *eval[CONFIG_DATA_FILES_MAX]; /* files scored every eval.every steps */
    int n_eval;
    const char *matrix_eval; /* task sequences: the file of this task's column of R */
    int steps;               /* resolved from epochs when given so */
    int first_step;          /* global steps done before this phase */
    char where[CONFIG_STR_MAX + 64];      /* "tasks.yaml:3: tasks[1]" or "cfg.yaml:7: data" */
    char where_eval[CONFIG_STR_MAX + 64]; /* the same for the eval files */
} Phase;

#define RUN_STATE_VERSION 1

/* What a checkpoint records of the run besides parameters, moments and EWC buffers (blob
 * "run.state", rank 0's copy serves any layout). */
typedef struct RunState {
    int32_t version;
    int32_t phases;       /* phases in the run (a check on resume) */
    int32_t phase_done;   /* phases whose between-phase work is complete */
    int32_t reader_phase; /* phase the saved reader position belongs to, -1 = none */
    int32_t ewc_sets, ewc_tasks_seen;
    int32_t ewc_task_id[EWC_MAX_SETS];
    int64_t nonfinite_total;
    int64_t replay_bytes; /* size of blob "run.replay" (0 = none) */
} RunState;

typedef struct Run {
    const Config *cfg;
    ProcessGrid grid;
    const Backend *be;
    int weight_copy; /* bf16 on a GPU: the weights' bf16 working copy is kept (cuda.weight_copy) */
    ModelConfig mc;
    Model model;
    Optimizer opt;
    int cls;                     /* task.type classification */
    DataMode mode;               /* data.mode; classification follows task.type */
    int B, T, G, accum;          /* G = B x dp: rows of a global micro-batch */
    size_t n_params;             /* the whole model's */
    char run_dir[CONFIG_STR_MAX];

    /* phases */
    ContinualTasks *tasks; /* NULL for a plain run */
    Phase *phases;
    int n_phases, total_steps;
    int sequence; /* a task sequence (continual.tasks): the accuracy/loss matrix R is kept */
    double *R;    /* [n_phases x n_phases], row i after phase i */

    /* data: the phase's training reader; with replay on, every rank reads the global order one
     * row at a time (global_rows) so that the buffer's choices are the same on every rank */
    DataReader *reader;
    int global_rows;
    DataReader *eval[CONFIG_DATA_FILES_MAX];
    int n_eval;
    /* the step's rows on this rank, [accum][B*T] (classification: targets/weights [B] first) */
    int32_t *inputs, *targets;
    float *weights;
    float *eval_weights; /* [B*T] scratch for evaluation */
    float *logits;       /* [B x num_labels] classification evaluation */
    /* global_rows: one global micro-batch, the replayed rows first */
    int32_t *g_inputs, *g_targets, *g_labels; /* [G*T], [G*T], [G] */
    float *g_weights;                         /* [G*T] */
    int32_t *row_in, *row_tg;                 /* [T] one row from the reader */
    float *row_w;                             /* [T] */

    /* continual learning */
    EwcState ewc;
    int ewc_on;
    FisherOptions fisher_opt;
    Model fisher_model; /* one row per example when micro_batch_size > 1 */
    Model *fisher_work;
    float *fisher; /* full-layout host buffer */
    ReplayBuffer replay;
    int replay_on, n_replay_rows;
    uint64_t replay_seed;
    void *replay_blob; /* serialized whole buffer for checkpoints */
    size_t replay_blob_cap;
    int replay_rows_step; /* rows replayed in the last step */

    /* output */
    FILE *metrics;
    TrainCkpt *ckpts;
    MetricsServer *server;
    RunState state;
    float last_lr; /* of the last step: recorded in checkpoints */
    DataReaderState reader_state;
} Run;

/* ---- between phases (continual.c) ---- */

/* Accuracy (classification) or mean token loss (eval.batches batches) of the model on the file
 * at path, the same whatever the layout. Collective over the grid. */
int continual_evaluate(Run *r, const char *path, double *metric);
/* The Fisher pass of phase k at the current parameters, folded into the EWC state. Collective. */
int continual_fisher(Run *r, int k);
/* The EWC state and the replay buffer into dir (ewc.h5, replay-rank-00000.h5), whole tensors
 * and one buffer whatever the layout. Collective. */
int continual_state_save(Run *r, const char *dir);
/* The whole replay buffer (an unsharded copy, tokens summed over dp) on every rank; the caller
 * frees it. Collective over dp. */
int continual_replay_gather(Run *r, ReplayBuffer *whole);
/* Load continual.state into a fresh run. */
int continual_state_load(Run *r, const char *dir);
/* Print the matrix and the summary, write <run.dir>/continual.json (rank 0). */
int continual_report(Run *r);

#endif
