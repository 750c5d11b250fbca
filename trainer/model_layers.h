/* model_layers.h: what an architecture's layer code (trainer/arch_*.c) sees of the model: the
 * activations every architecture shares (the residual stream, its gradient, the head's), the
 * cursor its own activations are laid out with in the one arena, and the model's helpers (Act
 * offsets, tensor-parallel reductions). Only model.c and the architectures include it; the rest
 * of dstrain goes through model.h. */
#ifndef DSTRAIN_MODEL_LAYERS_H
#define DSTRAIN_MODEL_LAYERS_H

#include "model.h"

/* Lays blocks out one after another from base, each 64-byte aligned so that vectorized kernels
 * see aligned rows; with base NULL it only counts (used) and every pointer is NULL. */
typedef struct ArenaCursor {
    unsigned char *base;
    size_t used;
} ArenaCursor;

float *arena_take_f32(ArenaCursor *c, size_t count);
Act *arena_take_act(const Model *m, ArenaCursor *c, size_t count); /* count Act elements */

/* Everything forward saves for backward that every architecture has, and backward's shared
 * scratch, as pointers into the arena. The residual stream, its gradient and the statistics are
 * fp32; every Act is in the backend's activation type (ops.h: bf16 on a GPU in mixed
 * precision). The architecture's own per-layer activations are at layers (act_bytes of them). */
typedef struct ModelActivations {
    float **resid_in;  /* [L] each [N, C]: the residual stream entering layer l */
    void *layers;      /* the architecture's activations (Architecture.act_bytes) */
    float *resid_out;  /* [N, C] residual after the last layer */
    Act *final_norm;   /* [N, C] */
    float *final_rstd; /* [N] */
    Act *logits;       /* [R, V] one chunk of rows (head_rows); its dlogits after the loss */
    Act *tmp;          /* [N, C] projection outputs before the residual add */
    /* backward: the residual stream's gradient: the gradient of a layer's output when its
     * backward starts, of its input when it returns */
    float *dresid;         /* [N, C] */
    Act *dresid_act, *dln; /* [N, C] dresid as an Act (the projections' dout); the gradient of
                            * a norm's output (the sum of its projections' dinp) */
    /* classification head: last-token hidden rows, class logits (then their gradient) */
    Act *cls_hidden, *cls_dhidden; /* [B, C] */
    Act *cls_logits;               /* [B, L] */
    /* vocab-parallel cross-entropy of a chunk: row maxima [R], {sum exp, target logit, owner}
     * [R, 3] */
    float *ce_max, *ce_stats;
    /* the backend's copies of the host-side token buffers (the same data on the CPU) */
    int32_t *dev_inputs, *dev_targets; /* [N] */
    float *dev_weights, *dev_losses;   /* [N] */
    int head_rows;                     /* R: rows per LM-head chunk (lm_head_rows) */
    int head_grads_next;               /* set by model_forward_train for the forward it calls */
    enum {
        HEAD_NONE,         /* no loss computed (no targets, or a classification model) */
        HEAD_LOSS,         /* loss computed: backward runs the head's chunks again */
        HEAD_BACKWARD_DONE /* the head's backward is done: dln holds its gradient */
    } head;
    int work_layer; /* checkpointing: the layer whose activations the shared working set holds */
} ModelActivations;

/* The Act elems elements past x. */
Act *model_act_at(const Model *m, const Act *x, size_t elems);
/* All-reduce over the tensor-parallel group (nothing when tp = 1); a failure takes the job
 * down (comm_fail), as nothing inside a step can continue after it. */
void model_tp_reduce(const Model *m, float *x, size_t n, CommOp op);
/* model_tp_reduce of an Act tensor (a row-parallel projection's partial sums, a norm input's
 * gradient), summed in the activation type, as the tensor is stored. */
void model_tp_reduce_act(const Model *m, Act *x, size_t n);

/* Entries of the model's own tensors that every architecture's table starts and ends with. */
#define ARCH_TENSORS_EMBED                                                                         \
    {                                                                                              \
        "model.embed_tokens.weight", SCOPE_MODEL, dim_vocab, dim_hidden, NULL, TP_VOCAB, 1,        \
            INIT_NORMAL, offsetof(ModelWeights, embed)                                             \
    }
#define ARCH_TENSORS_HEAD                                                                          \
    {                                                                                              \
        "model.norm.weight",                                                                       \
        SCOPE_MODEL,                                                                               \
        dim_hidden,                                                                                \
        NULL,                                                                                      \
        NULL,                                                                                      \
        TP_REPLICATED,                                                                             \
        0,                                                                                         \
        INIT_ONES,                                                                                 \
        offsetof(ModelWeights, norm)},                                                             \
        {"score.weight",                                                                           \
         SCOPE_MODEL,                                                                              \
         dim_labels,                                                                               \
         dim_hidden,                                                                               \
         when_classifier,                                                                          \
         TP_REPLICATED,                                                                            \
         1,                                                                                        \
         INIT_NORMAL,                                                                              \
         offsetof(ModelWeights, score)},                                                           \
    {                                                                                              \
        "lm_head.weight", SCOPE_MODEL, dim_vocab, dim_hidden, when_lm_head, TP_VOCAB, 1,           \
            INIT_NORMAL, offsetof(ModelWeights, lm_head)                                           \
    }

#endif
