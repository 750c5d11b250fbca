/* progress.h: what a person watching a run sees. Rank 0's step line (a live bar on a terminal,
 * plain lines in a pipe or a Slurm log), warnings that stand out ("dstrain: warning: ..." on
 * stderr), the non-finite step guard, the values the metrics endpoint serves, and a small
 * progress API for long preparations (loading weights, packing, Fisher passes, export).
 * One run per process: the state is process-wide so that any module can report into it. */
#ifndef DSTRAIN_PROGRESS_H
#define DSTRAIN_PROGRESS_H

#include <stdio.h>

#include "log.h"
#include "metrics_server.h"

/* One step's figures, as the step loop has them. */
typedef struct ProgressStep {
    int step;    /* steps done, this one included (1-based) */
    double loss; /* NAN for a skipped step */
    double lr, grad_norm;
    double tokens;    /* trained tokens this step, all ranks */
    double seconds;   /* wall time of the step */
    double data_wait; /* of which waiting for the data reader (a driver may pass the largest
                       * over ranks: the line shows it and the warning judges it) */
    double eval_loss; /* NAN when no evaluation ran after this step */
    int skipped;      /* non-finite: no optimizer update */
} ProgressStep;

typedef struct ProgressOptions {
    FILE *out;       /* the step line (stdout); warnings go to stderr */
    int interactive; /* -1: a bar on a terminal outside a launcher (DSTRAIN_PROGRESS=bar|plain
                      * overrides); 0: plain lines; 1: live bar */
    int total_steps, start_step;
    int log_every;
    int rank; /* this process's world rank: the run's own warnings (loss spike, slow reader,
               * non-finite steps, checkpoint stalls) are printed by rank 0 alone, on the
               * figures its line shows (a launcher's rank variable, when set, counts too) */
    double flops_per_token; /* 6 N (+ attention); 0: no MFU */
    double peak_flops;      /* all ranks together; 0: no MFU (CPU runs) */
} ProgressOptions;

/* Start a run's progress (resets counters, warnings, the published snapshot). Reads the
 * fault-injection hook DSTRAIN_INJECT_NAN_STEP=K[:N] (steps K..K+N-1, 1-based, report a
 * non-finite loss and gradient norm) and DSTRAIN_STEP_SLEEP_MS=M (every step sleeps M ms
 * after it is measured, so that a short run lasts long enough to be scraped), for tests. */
void progress_begin(const ProgressOptions *opt);

/* The non-finite guard, called once per step after the loss and gradient norm are known (all
 * ranks hold the same values, so all ranks decide alike). Applies the injection hook, counts,
 * warns. Returns 1 when the step may update the weights, 0 when it must be skipped. */
int progress_check_finite(int step, double *loss, double *grad_norm);
/* Non-finite steps in a row (0 after a finite step) and in total. */
int progress_nonfinite_in_row(void);
long long progress_nonfinite_total(void);

/* After each step: updates the snapshot and publishes it (no allocation), prints the step line
 * every log_every steps (and on the first, the last and evaluation steps), and warns on loss
 * spikes and a data reader falling behind. */
void progress_step(const ProgressStep *s);

/* Finish the live line (newline) if one is open. */
void progress_end(void);

/* ---- for other modules: checkpoint, EWC, replay, GPU memory -------------------------------- */

/* Short text shown in the step line's checkpoint field ("saving step 100", "saved 100"). */
void progress_set_checkpoint_state(const char *state);
/* A save finished: duration (start to commit), stall (seconds the step loop was blocked by it),
 * ok. Sets the field, the metrics (duration, last success time), and warns when the stall is
 * long (more than 1 s and more than 5 mean steps). */
void progress_checkpoint_done(int step, double duration_seconds, double stall_seconds, int ok);
void progress_set_ewc_penalty(double penalty);
void progress_set_replay_size(double examples);
/* Share of the last step's rows that were replayed. */
void progress_set_replay_share(double share);
/* Mixture of experts: per layer, the busiest expert's tokens over the mean (NAN: dense). */
void progress_set_expert_load(const double *ratio, int layers);
/* A task sequence: task k of K (0-based) is trained now; the step line shows it. */
void progress_set_task(int k, int K, const char *id);
/* A resumed run goes on counting non-finite steps from the checkpoint's total. */
void progress_restore_nonfinite(long long total);
void progress_set_gpu_memory(double bytes);
/* The current snapshot (for tests and the final summary). */
void progress_snapshot(MetricsSnapshot *out);

/* The step line for s as it would be printed (no bar), into buf. For tests. */
void progress_format_line(const ProgressStep *s, char *buf, size_t cap);

#endif
