/* ewc.h: elastic weight consolidation. The diagonal Fisher F and the anchor theta* are flat
 * buffers in the parameter table's layout, restricted to this rank's optimizer shard [lo, hi)
 * (the same offsets as the Adam moments), so ZeRO sharding, checkpoints and the fused update
 * address them like the optimizer state. They live in the memory of the state's backend (device
 * memory on CUDA, beside the moments), so the fused update runs where the parameters are; what
 * must touch the host (files, consolidation, the Fisher's squares) goes through staging buffers
 * of bounded size. Not here: when tasks end (trainer/continual.c). */
#ifndef DSTRAIN_EWC_H
#define DSTRAIN_EWC_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef enum EwcMode { EWC_ONLINE = 0, EWC_SEPARATE } EwcMode;
/* identity: F = 1 on every parameter (an L2 pull toward the anchor; no Fisher pass) */
typedef enum FisherType {
    FISHER_EMPIRICAL = 0,
    FISHER_SAMPLED,
    FISHER_EXACT,
    FISHER_IDENTITY
} FisherType;
/* Where AdamW's decoupled weight decay pulls a tensor that has weight decay once EWC holds an
 * anchor: toward the latest anchor theta* (the default: a weight the Fisher does not protect
 * stays where the last consolidation left it, instead of shrinking a little more every night
 * while each re-anchoring forgives the shrinkage), or toward 0 as plain AdamW. Before the first
 * consolidation there is no anchor and the decay is AdamW's. */
typedef enum EwcDecay { EWC_DECAY_ANCHOR = 0, EWC_DECAY_ZERO } EwcDecay;

#define EWC_MAX_SETS 256
/* floats per host staging chunk on a device backend (16 MiB): bounds the host memory EWC needs
 * for its own state whatever the model size */
#define EWC_STAGE_FLOATS ((size_t)1 << 22)

/* online: at most one (F, theta*) pair, F <- gamma F + F_new, theta* <- theta after each task.
 * separate: one pair per consolidated task; the penalty sums over them. */
typedef struct EwcState {
    EwcMode mode;
    float lambda, gamma;
    EwcDecay decay; /* ewc_init_on sets EWC_DECAY_ANCHOR; the caller may change it */
    size_t lo, hi;  /* this rank's shard of the flat layout, in elements */
    int n_sets;     /* consolidated pairs held (online: 0 or 1) */
    int tasks_seen; /* consolidations so far */
    float *fisher[EWC_MAX_SETS], *anchor[EWC_MAX_SETS]; /* each [hi - lo], be's memory */
    int task_id[EWC_MAX_SETS];                          /* task of each pair (separate mode) */
    const Backend *be;                                  /* whose memory fisher and anchor live in */
    float *staging; /* device backends: 3 x EWC_STAGE_FLOATS host floats; NULL otherwise */
} EwcState;

/* ewc_init_on with the CPU backend (host memory). */
int ewc_init(EwcState *e, EwcMode mode, float lambda, float gamma, size_t lo, size_t hi);
/* An empty state whose pairs will live in the memory of backend be (that of the optimizer's
 * moments: device memory for CUDA). */
int ewc_init_on(EwcState *e, EwcMode mode, float lambda, float gamma, size_t lo, size_t hi,
                const Backend *be);
void ewc_free(EwcState *e);
int ewc_mode_parse(const char *text, EwcMode *out);
int fisher_type_parse(const char *text, FisherType *out);
/* continual.ewc.decay: anchor | zero. */
int ewc_decay_parse(const char *text, EwcDecay *out);

/* Fold a new Fisher estimate in. fisher_new (host memory: the Fisher pass's result) and params
 * (e->be's memory: the model's) are full flat buffers (the table's layout, this tensor-parallel
 * rank's slices); only [lo, hi) is read. */
int ewc_consolidate(EwcState *e, const float *fisher_new, const float *params, int task_id);

/* Make room for n_sets zeroed pairs (task ids as given) in an empty state, to be filled from a
 * checkpoint; tasks_seen as saved. */
int ewc_reserve_sets(EwcState *e, int n_sets, const int32_t *task_ids, int tasks_seen);

/* (lambda / 2) sum F (theta - theta*)^2 over this shard; params is the full flat buffer, in
 * e->be's memory. */
double ewc_penalty(const EwcState *e, const float *params);
/* *sum += sum_k sum_{j in [begin, end)} F_k[j] (theta_j - theta*_k[j])^2 (no lambda / 2), set by
 * set, in index order: the penalty of a part of the shard ([begin, end) inside [lo, hi)),
 * summed in the same order as ewc_penalty. params as there. */
void ewc_penalty_accumulate(const EwcState *e, const float *params, size_t begin, size_t end,
                            double *sum);

/* The fused update (Backend.adamw_ewc_update) of the n elements from flat index offset (inside
 * [lo, hi)) reads set k at fisher[k], anchor[k]: fills both arrays (EWC_MAX_SETS each) and
 * returns n_sets. */
int ewc_sets_at(const EwcState *e, size_t offset, const float **fisher, const float **anchor);

/* One training example as the Fisher pass sees it: inputs [T]; for causal LM targets [T] and
 * weights [T] (loss mask: 0 = not trained; usually 0 or 1); for classification targets[0] is
 * the label. Returns DS_OK or an error; called `samples` times (never for the identity type). */
typedef int (*EwcExampleFn)(void *ctx, int32_t *inputs, int32_t *targets, float *weights);

typedef struct FisherOptions {
    FisherType type;
    int samples;   /* examples of the finished task */
    int batched;   /* 0: per-example gradients (batch 1); 1: one gradient per batch (below) */
    uint64_t seed; /* labels drawn by the sampled type; the causal-LM token signs */
    /* data parallelism: every rank reads all `samples` examples in the same order, and computes
     * only the units (examples; batches when batched) whose index % shard_size is shard_rank.
     * The result is this rank's part of the average: summed over the ranks it is the average
     * of one process. 0 / 0 (or 0 / 1): all of them. The sampled type draws from each rank's own
     * random sequence, so its labels depend on the layout. */
    int shard_rank, shard_size;
    /* expert parallelism (the model's Model.ep): the ep ranks of a group (consecutive shard
     * ranks) pass each of their units together, its owner with the examples and the others with
     * zero loss weights, so that the experts a rank holds see one unit's rows at a time and
     * square that unit's gradient (ep times the forward passes). NULL: none. */
    const CommGroup *ep;
} FisherOptions;

/* The diagonal Fisher of model m at its current parameters, into fisher (full flat buffer in
 * host memory, overwritten; a device model's gradients are squared on the host, staged in chunks
 * of EWC_STAGE_FLOATS). Per-example mode needs a model with B == 1 and the parameters of the
 * trained model (work may be m itself when m->B == 1); batched mode uses m with its own B.
 * Gradients of work are clobbered. exact needs a classification model.
 *
 * Classification: the mean over examples of g^2, g the gradient of the example's loss; batched:
 * the mean over batches of B * (mean gradient of the batch)^2.
 * Causal LM: a per-token quantity, the mean over every trained token of the pass (loss-mask
 * weight w_t, usually 1) of the squared gradient of that token's loss, F = sum w_t^2 g_t^2 /
 * sum w_t^2, whatever seq_len, the loss mask or the batch. One backward per example (or batch)
 * estimates it without bias: the loss is sum_t s_t w_t l_t with independent random signs s_t =
 * +-1 (seeded per example, so the estimate does not depend on the layout), whose squared
 * gradient (sum s_t w_t g_t)^2 has the expectation sum w_t^2 g_t^2 (the cross terms have mean
 * 0). The squares are summed over examples and divided by sum w_t^2 over all of them. Batched
 * and per-example passes estimate the same quantity.
 * identity: F = 1 on every element of every tensor (0 in the padding between them), without a
 * pass; with data-parallel shards, shard 0 holds the 1s (the sum over shards is 1). */
int ewc_estimate_fisher(Model *work, const FisherOptions *opt, EwcExampleFn next, void *ctx,
                        float *fisher);

/* Save / load the EWC state as HDF5 (datasets fisher_K, anchor_K of the full flat length,
 * attributes mode, lambda, gamma, n_sets, tasks_seen, task_ids, total). Each rank writes its own
 * [lo, hi) into the same file in turn (rank 0 creates it with create=1); a load reads [lo, hi)
 * whatever the number of ranks that wrote it (into e->be's memory). */
int ewc_save(const EwcState *e, const char *path, size_t total, int create);
int ewc_load(EwcState *e, const char *path, size_t total);

/* The same state as a file of whole tensors (format 2), free of any layout: for each set k,
 * datasets fisher_k/<tensor> and anchor_k/<tensor> of the tensor's full (unsplit) shape, named
 * as in the parameter table, so that a run at another tp x dp (or ZeRO) loads it.
 * ewc_save_begin creates the file with the attributes (one rank). ewc_save_set writes set k
 * from full flat host buffers of this tensor-parallel rank's layout (pt; the shard gathered over
 * data-parallel ranks): the slices this rank holds and no other rank writes instead (tp_copy).
 * The tensor-parallel ranks call it in turn. fisher or anchor may be NULL: that half is left
 * for another call, so one host buffer of the layout's size serves both. */
int ewc_save_begin(const EwcState *e, const char *path);
int ewc_save_set(const char *path, const ParamTable *pt, int k, const float *fisher,
                 const float *anchor);
/* Load a format-2 file into [lo, hi) of this rank's layout pt (what the padding between
 * tensors holds is 0), in e->be's memory. A format-1 file is read as ewc_load does (same layout
 * only). */
int ewc_load_tensors(EwcState *e, const char *path, const ParamTable *pt);

/* Bytes of EWC state (Fisher and anchor, n_sets pairs) one rank holds for a layout: the
 * optimizer's shard, so 1/(tp x dp) of the model with ZeRO-1 (model_memory_estimate's
 * optimizer figure, which is two moments of that shard, times n_sets). */
int ewc_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero, int n_sets,
                        size_t *bytes);

#endif
