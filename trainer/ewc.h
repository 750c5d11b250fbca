/* ewc.h: elastic weight consolidation. The diagonal Fisher F and the anchor theta* are flat
 * buffers in the parameter table's layout, restricted to this rank's optimizer shard [lo, hi)
 * (the same offsets as the Adam moments), so ZeRO sharding, checkpoints and the fused update
 * address them like the optimizer state. Not here: when tasks end (trainer/continual.c). */
#ifndef DSTRAIN_EWC_H
#define DSTRAIN_EWC_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef enum EwcMode { EWC_ONLINE = 0, EWC_SEPARATE } EwcMode;
typedef enum FisherType { FISHER_EMPIRICAL = 0, FISHER_SAMPLED, FISHER_EXACT } FisherType;

#define EWC_MAX_SETS 256

/* online: at most one (F, theta*) pair, F <- gamma F + F_new, theta* <- theta after each task.
 * separate: one pair per consolidated task; the penalty sums over them. */
typedef struct EwcState {
    EwcMode mode;
    float lambda, gamma;
    size_t lo, hi;  /* this rank's shard of the flat layout, in elements */
    int n_sets;     /* consolidated pairs held (online: 0 or 1) */
    int tasks_seen; /* consolidations so far */
    float *fisher[EWC_MAX_SETS], *anchor[EWC_MAX_SETS]; /* each [hi - lo] */
    int task_id[EWC_MAX_SETS];                          /* task of each pair (separate mode) */
} EwcState;

int ewc_init(EwcState *e, EwcMode mode, float lambda, float gamma, size_t lo, size_t hi);
void ewc_free(EwcState *e);
int ewc_mode_parse(const char *text, EwcMode *out);
int fisher_type_parse(const char *text, FisherType *out);

/* Fold a new Fisher estimate in. fisher_new and params are full flat buffers (the table's
 * layout, this tensor-parallel rank's slices); only [lo, hi) is read. */
int ewc_consolidate(EwcState *e, const float *fisher_new, const float *params, int task_id);

/* (lambda / 2) sum F (theta - theta*)^2 over this shard; params is the full flat buffer. */
double ewc_penalty(const EwcState *e, const float *params);

/* AdamW (torch semantics, as the backend's adamw_update) over n elements that start at flat
 * index offset (inside [lo, hi)), with the EWC gradient lambda F (theta - theta*) added to
 * grad_scale * grad in the same pass: no extra forward, backward or pass over memory. The
 * penalty of the parameters before the update is added to *penalty. With e NULL or empty this is
 * plain AdamW. The penalty gradient is not clipped: clipping bounds the data gradient only. */
void ewc_adamw_update(const EwcState *e, size_t offset, float *param, const float *grad, float *m,
                      float *v, size_t n, float lr, float beta1, float beta2, float eps,
                      float weight_decay, float grad_scale, int t, double *penalty);

/* One training example as the Fisher pass sees it: inputs [T]; for causal LM targets [T] and
 * weights [T] (loss mask); for classification targets[0] is the label. Returns DS_OK or an
 * error; called `samples` times. */
typedef int (*EwcExampleFn)(void *ctx, int32_t *inputs, int32_t *targets, float *weights);

typedef struct FisherOptions {
    FisherType type;
    int samples;   /* examples of the finished task */
    int batched;   /* 0: per-example gradients (batch 1); 1: B * (mean gradient of a batch)^2 */
    uint64_t seed; /* labels drawn by the sampled type */
    /* data parallelism: every rank reads all `samples` examples in the same order, and computes
     * only the units (examples; batches when batched) whose index % shard_size is shard_rank.
     * The result is this rank's part of the average: summed over the ranks it is the average
     * of one process. 0 / 0 (or 0 / 1): all of them. The sampled type draws from each rank's own
     * random sequence, so its labels depend on the layout. */
    int shard_rank, shard_size;
} FisherOptions;

/* The diagonal Fisher of model m at its current parameters, into fisher (full flat buffer,
 * overwritten, averaged over the examples). Per-example mode needs a model with B == 1 and
 * the parameters of the trained model (work may be m itself when m->B == 1); batched mode uses
 * m with its own B. Gradients of work are clobbered. exact needs a classification model. */
int ewc_estimate_fisher(Model *work, const FisherOptions *opt, EwcExampleFn next, void *ctx,
                        float *fisher);

/* Save / load the EWC state as HDF5 (datasets fisher_K, anchor_K of the full flat length,
 * attributes mode, lambda, gamma, n_sets, tasks_seen, task_ids, total). Each rank writes its own
 * [lo, hi) into the same file in turn (rank 0 creates it with create=1); a load reads [lo, hi)
 * whatever the number of ranks that wrote it. */
int ewc_save(const EwcState *e, const char *path, size_t total, int create);
int ewc_load(EwcState *e, const char *path, size_t total);

/* The same state as a file of whole tensors (format 2), free of any layout: for each set k,
 * datasets fisher_k/<tensor> and anchor_k/<tensor> of the tensor's full (unsplit) shape, named
 * as in the parameter table, so that a run at another tp x dp (or ZeRO) loads it.
 * ewc_save_begin creates the file with the attributes (one rank). ewc_save_set writes set k
 * from full flat buffers of this tensor-parallel rank's layout (pt; the shard gathered over
 * data-parallel ranks): the slices this rank holds and no other rank writes instead (tp_copy).
 * The tensor-parallel ranks call it in turn. */
int ewc_save_begin(const EwcState *e, const char *path);
int ewc_save_set(const char *path, const ParamTable *pt, int k, const float *fisher,
                 const float *anchor);
/* Load a format-2 file into [lo, hi) of this rank's layout pt (what the padding between
 * tensors holds is 0). A format-1 file is read as ewc_load does (same layout only). */
int ewc_load_tensors(EwcState *e, const char *path, const ParamTable *pt);

/* Bytes of EWC state (Fisher and anchor, n_sets pairs) one rank holds for a layout: the
 * optimizer's shard, so 1/(tp x dp) of the model with ZeRO-1 (model_memory_estimate's
 * optimizer figure, which is two moments of that shard, times n_sets). */
int ewc_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero, int n_sets,
                        size_t *bytes);

#endif
