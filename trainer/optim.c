/* optim.c: AdamW, LR schedule and gradient clipping; see optim.h. Matches torch.optim.AdamW
 * with torch.nn.utils.clip_grad_norm_ semantics, which the parity tests check. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ewc.h"

int optim_init(Optimizer *opt, const ParamTable *table)
{
    return optim_init_on(opt, table, backend_cpu());
}

int optim_init_on(Optimizer *opt, const ParamTable *table, const Backend *be)
{
    memset(opt, 0, sizeof(*opt));
    opt->be = be;
    opt->n = table->total;
    /* zeroed, in the memory the backend's adamw_update works on */
    opt->m = be->mem_alloc(opt->n * sizeof(float));
    opt->v = be->mem_alloc(opt->n * sizeof(float));
    return opt->m && opt->v ? DS_OK : DS_ERR_INTERNAL;
}

void optim_free(Optimizer *opt)
{
    if (opt->be) {
        opt->be->mem_free(opt->m);
        opt->be->mem_free(opt->v);
    }
    memset(opt, 0, sizeof(*opt));
}

float optim_lr_at(const Config *cfg, int step)
{
    const double peak = cfg->optim_lr, floor_lr = cfg->optim_lr * cfg->optim_min_lr_ratio;
    const int warmup = cfg->optim_warmup_steps, total = cfg->train_steps;
    if (step < warmup) return (float)(peak * (step + 1) / warmup);
    if (strcmp(cfg->optim_schedule, "constant") == 0 || total <= warmup) return (float)peak;
    double progress = (double)(step - warmup) / (double)(total - warmup);
    if (progress > 1.0) progress = 1.0;
    double decay = strcmp(cfg->optim_schedule, "linear") == 0
                       ? 1.0 - progress
                       : 0.5 * (1.0 + cos(M_PI * progress));
    return (float)(floor_lr + (peak - floor_lr) * decay);
}

double optim_grad_norm(const Model *m)
{
    double sum = 0.0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        sum += m->be->sum_squares(m->grads + p->offset, p->numel);
    }
    return sqrt(sum);
}

float optim_clip_scale(double grad_norm, float max_norm)
{
    if (max_norm <= 0 || grad_norm <= max_norm) return 1.0f;
    return (float)(max_norm / (grad_norm + 1e-6));
}

void optim_step(Optimizer *opt, Model *m, const Config *cfg, float lr, float grad_scale)
{
    opt->t++;
    opt->ewc_penalty = 0.0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        float wd = p->weight_decay ? cfg->optim_weight_decay : 0.0f;
        if (opt->ewc && opt->ewc->n_sets > 0) {
            ewc_adamw_update(opt->ewc, p->offset, m->params + p->offset, m->grads + p->offset,
                             opt->m + p->offset, opt->v + p->offset, p->numel, lr,
                             cfg->optim_beta1, cfg->optim_beta2, cfg->optim_eps, wd, grad_scale,
                             opt->t, &opt->ewc_penalty);
            continue;
        }
        m->be->adamw_update(m->params + p->offset, m->grads + p->offset, opt->m + p->offset,
                            opt->v + p->offset, p->numel, lr, cfg->optim_beta1, cfg->optim_beta2,
                            cfg->optim_eps, wd, grad_scale, opt->t);
    }
}
