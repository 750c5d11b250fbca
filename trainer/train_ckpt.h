/* train_ckpt.h: trainer glue between the training loop and checkpoint/ckpt.h: which of the
 * trainer's state a checkpoint holds (parameters, AdamW moments, extra flat buffers such as the
 * EWC pairs, small blobs such as the data reader's position and the run's state), how
 * train.resume picks a checkpoint, and the export at the end (export.*). The loop decides when:
 * it calls these before the first step, after each step, between phases and at the end. */
#ifndef DSTRAIN_TRAIN_CKPT_H
#define DSTRAIN_TRAIN_CKPT_H

#include "../checkpoint/ckpt.h"
#include "config.h"
#include "model.h"
#include "optim.h"

/* How this rank sits in the world. NULL everywhere below means one process. */
typedef struct TrainCkptWorld {
    CkptLayout layout;
    CkptAllMinFn all_min; /* all-reduce MIN of an int over every rank that saves (the world
                           * communicator); NULL with one rank */
    void *comm_ctx;
    long tmp_tag;                  /* rank 0's pid, the same on every rank */
    size_t optim_begin, optim_end; /* this rank's ZeRO range of the moments; 0, 0 = all */
} TrainCkptWorld;

typedef struct TrainCkpt TrainCkpt;

/* Open the checkpoint writer for a run of total_steps steps. Collective with several ranks: it
 * returns on no rank before rank 0's writer has removed the temporary directories of crashed
 * runs, so any rank may save right after it; it fails on every rank when one could not open. */
int train_ckpt_open(const Config *cfg, const char *run_dir, const ModelConfig *mc, Model *model,
                    Optimizer *opt, int total_steps, const TrainCkptWorld *world,
                    TrainCkpt **out);
/* Resolve train.resume (none | auto | PATH) and, when there is a checkpoint, load parameters,
 * moments and the AdamW step; *start_step gets the steps already done (0 when starting fresh).
 * Blobs and extra buffers are read afterwards (train_ckpt_read_blob, train_ckpt_add_buffer).
 * Collective like open: fails on every rank when one rank could not resume. */
int train_ckpt_resume(TrainCkpt *tc, int *start_step);
/* The checkpoint resumed from ("" when none). */
const char *train_ckpt_resumed_path(const TrainCkpt *tc);
/* A blob of the resumed checkpoint saved by world rank 0: its size (*size 0 when absent), and
 * its bytes (size must match). */
int train_ckpt_blob_size(TrainCkpt *tc, const char *name, size_t *size);
int train_ckpt_read_blob(TrainCkpt *tc, const char *name, void *out, size_t size);
/* One more flat buffer laid out by the parameter table (EWC Fisher and anchor, ...), in the
 * model backend's memory, saved with every checkpoint under prefix and, when the resumed
 * checkpoint has it, loaded back ([begin, end) as for CkptBuffer). Not inside the step loop. */
int train_ckpt_add_buffer(TrainCkpt *tc, const char *prefix, float *base, size_t begin, size_t end,
                          int replicated_over_dp);
/* The blobs saved with every checkpoint from now on (the pointers must stay valid; their bytes
 * are read at each save). At most 8. */
int train_ckpt_set_blobs(TrainCkpt *tc, const CkptBlob *blobs, int n);
/* After `step` steps are done: save when checkpoint.every says so and step < limit (the end of
 * the phase, saved by the caller), report finished saves. A failed save stops the run (status
 * returned) or, with checkpoint.on_error: continue, warns. */
int train_ckpt_after_step(TrainCkpt *tc, int step, int limit, float lr);
/* Whether train_ckpt_after_step(tc, step, limit, ...) will save (the caller prepares its blobs). */
int train_ckpt_due(const TrainCkpt *tc, int step, int limit);
/* Save at `step` now unless that step is already saved with the same blobs, and wait until it
 * is complete (signals, phase boundaries, a stop on non-finite steps). force: save even when
 * this step was saved before (the blobs changed). */
int train_ckpt_save_now(TrainCkpt *tc, int step, float lr, int force);
/* End of the run: the final save (unless this step was just saved), wait for it, and export
 * to <run.dir>/export when export.enabled. */
int train_ckpt_finish(TrainCkpt *tc, int step, float lr);
void train_ckpt_close(TrainCkpt *tc);

#endif
