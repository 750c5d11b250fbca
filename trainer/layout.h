/* layout.h: a run's parallel layout chosen before it starts (`dstrain submit`, and nightly.sh
 * through `dstrain submit --layout`): what one rank holds on its device for a config at tp x dp,
 * and the fewest ranks whose estimate fits a GPU. Reads the model's shape only, never weights. */
#ifndef DSTRAIN_LAYOUT_H
#define DSTRAIN_LAYOUT_H

#include "config.h"
#include "model.h"

/* Bytes one rank holds on its device. */
typedef struct RunMemory {
    double params, grads, optimizer, activations; /* model_memory_estimate's buffers */
    double ewc;          /* Fisher and anchor pairs on the optimizer's shard */
    double fisher_model; /* the Fisher pass's one-row model (per example, micro_batch_size > 1) */
    double weights_bf16; /* the bf16 working copies of the weights (cuda, precision bf16/auto) */
    double total;
} RunMemory;

/* The estimate for cfg (model shape mc) at tp x dp. Activations are counted in fp32, as the CPU
 * holds them (bf16 ones on a GPU take less), so the figure is an upper bound of the buffers; it
 * leaves out the CUDA libraries' own workspaces. DS_ERR_INPUT when the model does not split tp
 * ways. */
int layout_memory_estimate(const Config *cfg, const ModelConfig *mc, int tp, int dp,
                           RunMemory *out);

typedef struct LayoutRequest {
    int tp, dp;     /* the config's parallel.tp and parallel.dp; 0 = auto */
    int world;      /* ranks the job must have (its nodes x tasks per node); 0 = choose */
    int nodes;      /* nodes the job must have; 0 = as few as the layout needs */
    int node_ranks; /* the most ranks (GPUs) on one node; a tp group never crosses nodes */
    double budget;  /* bytes one rank may hold; 0 = not checked (the CPU) */
} LayoutRequest;

typedef struct Layout {
    int tp, dp, nodes, ranks_per_node;
    RunMemory memory;
    int fits; /* memory.total <= budget, or no budget */
} Layout;

/* With a budget, the layout of the fewest ranks that satisfies rq and fits it (equal rank
 * counts: the smaller dp, since dp changes the global batch and tp is what cuts memory); with
 * none (the CPU), the trainer's own auto: tp = world / dp, 1 when dp is auto too, and one rank
 * when nothing fixes the world.
 * A layout the config fixes whole (tp and dp both set) is returned even when it does not fit
 * (fits = 0: the caller warns); otherwise nothing fitting is DS_ERR_INPUT with one line naming
 * the least memory any layout needs. */
int layout_choose(const Config *cfg, const ModelConfig *mc, const LayoutRequest *rq, Layout *out);

#endif
