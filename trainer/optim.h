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
    const Backend *be; /* whose memory m and v live in */
    /* EWC (trainer/ewc.h): when set and holding a Fisher, optim_step adds lambda F (theta -
     * theta*) to the gradient inside the AdamW pass and leaves the penalty of the parameters it
     * started from in ewc_penalty (this rank's shard). Host memory only. */
    const struct EwcState *ewc;
    double ewc_penalty;
} Optimizer;

int optim_init(Optimizer *opt, const ParamTable *table);
/* optim_init with the moments in the memory of backend be (device memory for CUDA);
 * optim_init is this with the CPU backend. */
int optim_init_on(Optimizer *opt, const ParamTable *table, const Backend *be);
void optim_free(Optimizer *opt);

/* Learning rate for step (0-based): linear warmup to optim.lr over warmup_steps, then cosine,
 * linear or constant decay to lr * min_lr_ratio at train.steps. */
float optim_lr_at(const Config *cfg, int step);

/* Global L2 norm of all gradients. */
double optim_grad_norm(const Model *m);

/* The factor clip_grad_norm_ multiplies gradients by: min(1, max_norm / (norm + 1e-6));
 * 1 when max_norm is 0 (clipping off). */
float optim_clip_scale(double grad_norm, float max_norm);

/* One AdamW step with gradients multiplied by grad_scale (clipping). */
void optim_step(Optimizer *opt, Model *m, const Config *cfg, float lr, float grad_scale);

#endif
