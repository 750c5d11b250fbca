/* train_ckpt.h: what the training driver calls to checkpoint, resume and export: it maps the
 * trainer's state (parameters, AdamW moments, reader positions, step) onto ckpt.h and applies
 * the config (checkpoint.*, train.resume, export.*). The driver decides nothing here but calls
 * these at three points: before the first step, after each step, and at the end. */
#ifndef DSTRAIN_TRAIN_CKPT_H
#define DSTRAIN_TRAIN_CKPT_H

#include "../data/dataset.h"
#include "../trainer/config.h"
#include "../trainer/model.h"
#include "../trainer/optim.h"
#include "ckpt.h"

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

/* Resolve train.resume (none | auto | PATH) and, when there is a checkpoint, load parameters,
 * moments, optimizer step and reader positions into the given state; *start_step gets the
 * number of steps already done (0 when starting fresh). Then open the checkpoint writer.
 * Collective with several ranks: it returns on no rank before rank 0's writer has removed the
 * temporary directories of crashed runs, so any rank may save right after it; and it fails on
 * every rank when one rank could not resume or open. */
int train_ckpt_open(const Config *cfg, const char *run_dir, const ModelConfig *mc, Model *model,
                    Optimizer *opt, LMReader *reader, LMReader *eval_reader,
                    const TrainCkptWorld *world, TrainCkpt **out, int *start_step);
/* One more flat buffer laid out by the parameter table (EWC Fisher and anchor, ...), in the
 * model backend's memory, saved with every checkpoint under prefix and, when the resumed
 * checkpoint has it, loaded back ([begin, end) as for CkptBuffer). At most 8. */
int train_ckpt_add_buffer(TrainCkpt *tc, const char *prefix, float *base, size_t begin, size_t end,
                          int replicated_over_dp);
/* After `step` steps are done: save when checkpoint.every says so, report finished saves.
 * A failed save stops the run (status returned) or, with checkpoint.on_error: continue, warns. */
int train_ckpt_after_step(TrainCkpt *tc, int step, float lr);
/* On request (a signal before preemption): save at `step` now, unless it is already saved, and
 * wait until it is complete; then the caller may exit (DS_EXIT_REQUEUE). */
int train_ckpt_save_now(TrainCkpt *tc, int step, float lr);
/* End of the run: the final save (unless this step was just saved), wait for it, and export
 * to <run.dir>/export when export.enabled. */
int train_ckpt_finish(TrainCkpt *tc, int step, float lr);
void train_ckpt_close(TrainCkpt *tc);

#endif
