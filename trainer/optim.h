/* optim.h: AdamW over the flat parameter layout (decay only on matrices), the learning-rate
 * schedule, and global gradient-norm clipping. The moments follow the parameter table, so
 * sharding, checkpoints and EWC all address them by the same offsets. */
#ifndef DSTRAIN_OPTIM_H
#define DSTRAIN_OPTIM_H

#include "config.h"
#include "model.h"

typedef struct Optimizer {
    float *m, *v; /* first and second moments, laid out like the parameters */
    size_t n;
    int t;        /* steps taken (AdamW bias correction) */
    /* ZeRO-1: m and v hold only flat elements [shard_begin, shard_begin + n), this rank's share
     * among the ranks that hold the same experts (1/dp, or 1/(dp/ep) with expert parallelism;
     * 0 and the whole layout otherwise), but are indexed by flat offset like the
     * parameters: m[p->offset] is parameter p's moment, for offsets inside the shard */
    size_t shard_begin;
    int zero;          /* 1: gradients reduce-scattered and parameters all-gathered over dp */
    const Backend *be; /* whose memory m and v live in */
    /* EWC (trainer/ewc.h): when set and holding a Fisher, optim_step adds lambda F (theta -
     * theta*) to the gradient inside the AdamW pass (the backend's adamw_ewc_update), decays
     * toward the latest anchor or toward 0 as ewc->decay says, and leaves the penalty of the
     * parameters it started from in ewc_penalty (this rank's shard). Its pairs live in the
     * memory of the backend be (ewc_init_on). */
    const struct EwcState *ewc;
    double ewc_penalty;
} Optimizer;

int optim_init(Optimizer *opt, const ParamTable *table);
/* optim_init with the moments in the memory of backend be (device memory for CUDA);
 * optim_init is this with the CPU backend. */
int optim_init_on(Optimizer *opt, const ParamTable *table, const Backend *be);
/* optim_init_on for this rank of grid: with zero (ZeRO-1) and dp > 1 the moments cover only
 * this rank's shard (table->total must be a multiple of dp: model_init_parallel pads it). */
int optim_init_sharded(Optimizer *opt, const ParamTable *table, const Backend *be,
                       const ProcessGrid *grid, int zero);
void optim_free(Optimizer *opt);

/* Once per step, after the last micro-batch: sum the gradients of kv heads shared inside the
 * tensor-parallel group, then over data-parallel ranks: reduce-scatter into this rank's shard
 * (ZeRO-1; the rest of the gradient buffer is left undefined) or all-reduce. */
int optim_reduce_grads(const Optimizer *opt, Model *m, const ProcessGrid *grid);
/* The reduction of optim_reduce_grads for any buffer laid out like the parameters (gradients,
 * the Fisher): over the ranks holding the same experts (reduce-scatter into this rank's shard
 * with ZeRO-1, or all-reduce), then, with expert parallelism, the tensors other than the
 * routed experts over the expert-parallel group as well. */
int optim_reduce_flat(const Optimizer *opt, const ParamTable *table, float *buf,
                      const ProcessGrid *grid);
/* The global gradient norm after optim_reduce_grads, each element counted once over all ranks
 * (tensors replicated across tensor-parallel ranks by one of them). */
int optim_grad_norm_global(const Optimizer *opt, const Model *m, const ProcessGrid *grid,
                           double *norm);
/* After optim_step with ZeRO-1: all-gather the updated shards, so that every data-parallel rank
 * holds all of its tensor-parallel slice again. */
int optim_gather_params(const Optimizer *opt, Model *m, const ProcessGrid *grid);

/* Learning rate for step (0-based): linear warmup to optim.lr over warmup_steps, then cosine,
 * linear or constant decay to lr * min_lr_ratio at train.steps. */
float optim_lr_at(const Config *cfg, int step);

/* Global L2 norm of all gradients. */
double optim_grad_norm(const Model *m);

/* The factor clip_grad_norm_ multiplies gradients by: min(1, max_norm / (norm + 1e-6));
 * 1 when max_norm is 0 (clipping off). */
float optim_clip_scale(double grad_norm, float max_norm);

/* One AdamW step with gradients multiplied by grad_scale (clipping), over this rank's shard. */
void optim_step(Optimizer *opt, Model *m, const Config *cfg, float lr, float grad_scale);

#endif
