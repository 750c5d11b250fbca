/* model.h: the decoder of every architecture (Llama, Qwen2 as Hugging Face stores them), built
 * from backend ops over one activation arena. Its shape, its architecture's table and its
 * parameter table are in param_table.h; each architecture's layer is in its own file
 * (trainer/arch_*.c, seen through model_layers.h). */
#ifndef DSTRAIN_MODEL_H
#define DSTRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "../kernels/ops.h"
#include "param_table.h"

/* Per-layer views into the flat buffer (parameters or gradients alike), bound from the
 * architecture's table (ArchTensor.bind); a field the layer lacks stays NULL. */
typedef struct LayerWeights {
    /* norms and the attention of every architecture; q, k, v for grouped-query attention */
    float *ln1, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    float *ln2;
    /* a dense MLP (a DeepSeek MoE layer's shared experts use the same fields) */
    float *wgate, *bgate, *wup, *bup, *wdown, *bdown;
    /* multi-head latent attention (DeepSeek): q through a low-rank latent (or wq), the kv latent
     * with the shared rotary key, its norm, and its expansion into per-head k and v */
    float *wq_a, *q_a_norm, *wq_b, *wkv_a, *kv_a_norm, *wkv_b;
    /* mixture of experts (DeepSeek): the router, its frozen score correction, and per routed
     * expert [n_routed_experts] pointers to gate, up and down */
    float *router, *router_bias;
    float **expert_gate, **expert_up, **expert_down;
} LayerWeights;

typedef struct ModelWeights {
    float *embed;   /* [V, C] */
    float *norm;    /* [C] */
    float *lm_head; /* [V, C]; == embed when tied */
    float *score;   /* [num_labels, C] classification head, NULL for causal LM */
    LayerWeights *layers;
} ModelWeights;

/* The model: config, parameter table, flat parameter and gradient buffers, one activation
 * arena sized for (B, T) at model_init, and the backend every op goes through. */
typedef struct Model {
    ModelConfig cfg;
    const Architecture *arch;
    ParamTable table;
    const Backend *be;
    float *params;
    float *grads;
    ModelWeights w, g;
    int B, T;
    void *arena; /* activations; nothing is allocated inside a step */
    size_t arena_bytes;
    size_t act_size; /* bytes of one Act element in this model's backend (ops.h) */
    float *rope_cos, *rope_sin; /* [T, D/2] */
    int32_t *inputs, *targets;  /* [B*T] */
    float *loss_weights;        /* [B*T] */
    float *losses;              /* [B*T] */
    int32_t *cls_last;          /* [B] classification: row b's last non-padding position */
    float *cls_row;             /* [C] host scratch for moving one hidden row */
    struct ModelActivations *act;
    /* tensor parallelism (model_init_parallel): this rank's heads, kv heads, intermediate size
     * and vocabulary slice; the full sizes when tp = 1 */
    int tp_rank, tp_size;
    int tp_heads, tp_kv_heads, tp_inter, tp_vocab, tp_vocab_start;
    const CommGroup *tp; /* the tensor-parallel group; NULL when tp = 1 (no communication) */
    CommGroup *tp_kv;    /* ranks holding the same kv head (fewer kv heads than tp), or NULL */
    /* expert parallelism: this rank holds routed experts [expert_first, expert_first +
     * experts_local) of every MoE layer (LayerWeights.expert_* index them from 0); ep the
     * expert-parallel group, NULL when ep = 1 */
    int ep_rank, ep_size, expert_first, experts_local;
    const CommGroup *ep;
    void *ep_state; /* the architecture's expert-parallel buffers (arch_deepseek.c) */
    /* mixture of experts: tokens each routed expert of each layer received ([L * E], host) in
     * the forwards since model_expert_load_reset (a recomputation is not counted); NULL for a
     * model without experts */
    double *expert_tokens;
    /* the sequence-wise balance loss (ModelConfig.moe_balance_alpha) of the backward passes
     * since model_expert_load_reset, this rank's share */
    double balance_loss;
} Model;

/* Bytes one rank holds for a layout (tp x dp, ZeRO-1 or not), as model_init_parallel and
 * optim_init_sharded allocate them on the CPU (fp32 activations: bf16 ones on a GPU take less);
 * activations follow mc->activation_checkpointing. */
typedef struct ModelMemory {
    size_t params, grads, optimizer, activations;
} ModelMemory;
int model_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero,
                          ModelMemory *out);
/* The same with the routed experts split over ep of the dp ranks (parallel.ep); the experts'
 * rows that travel to this rank are counted at 1.25 times an even share. */
int model_memory_estimate_ep(const ModelConfig *mc, int B, int T, int tp, int dp, int ep,
                             int zero, ModelMemory *out);

/* Allocate parameters (zeroed), gradients and activations for micro-batches of B x T. */
int model_init(Model *m, const ModelConfig *mc, const Backend *be, int B, int T);
/* model_init for this rank of grid (NULL: a single process): the tensor-parallel slice of every
 * parameter, activations for the local heads and vocabulary, the flat buffers padded to a
 * multiple of 64 x dp floats so that ZeRO shards are equal and aligned. Collective over the
 * tensor-parallel group (it may split off the shared-kv-head group). */
int model_init_parallel(Model *m, const ModelConfig *mc, const Backend *be, int B, int T,
                        const ProcessGrid *grid);
void model_free(Model *m);
/* Seeded initialization for training from scratch: normal(0, std) for matrices, 1 for norms,
 * 0 for biases. */
void model_init_weights(Model *m, uint64_t seed, float std);

/* Forward over m->inputs; with targets, returns sum(weights[i] * loss[i]) and fills m->losses.
 * logits_out (host memory, may be NULL) receives logits [B*T, V] (this rank's vocabulary slice
 * under tensor parallelism). The LM head and the loss run over the rows in chunks, so the logits
 * of the whole micro-batch are never held in the arena; nothing is written to m->grads. */
double model_forward(Model *m, const int32_t *inputs, const int32_t *targets,
                     const float *loss_weights, float *logits_out);
/* Classification models (cfg.num_labels > 0): targets are labels [B] and loss_weights [B] (one
 * per row); the head reads the final hidden state of each row's last token that is not
 * pad_token_id (the last token when pad_token_id is -1), as transformers does; logits_out gets
 * [B, num_labels]; losses[0..B) the per-row losses. */
/* model_forward for a training micro-step, to be followed by model_backward: the same loss and
 * logits, and each chunk's LM-head backward done right after its loss (the head's weight
 * gradient already ACCUMULATED into m->grads on return), so that backward does not compute
 * the head's logits a second time. model_backward after plain model_forward gives the same
 * gradients, bit for bit, at the price of that second head forward. */
double model_forward_train(Model *m, const int32_t *inputs, const int32_t *targets,
                           const float *loss_weights, float *logits_out);

/* Backward of the last model_forward (or model_forward_train) with targets; gradients
 * ACCUMULATE in m->grads. */
void model_backward(Model *m);
void model_zero_grad(Model *m);
/* Sum the gradients of kv heads that several tensor-parallel ranks hold (each computed its
 * part from its own query heads). Once per step, after the last micro-batch. */
int model_reduce_shared_grads(Model *m);

/* Zero the expert token counts (Model.expert_tokens). */
void model_expert_load_reset(Model *m);
/* ratio[l] = tokens of layer l's busiest routed expert over the mean of its experts, from
 * Model.expert_tokens (NAN for a dense layer or a layer that saw no tokens). Returns the number
 * of MoE layers (0: no experts, ratio untouched). */
int model_expert_load(const Model *m, double *ratio);

/* DeepSeek-V3's auxiliary-loss-free balancing: every MoE layer's score correction bias moves
 * by rate toward balance, b_e += rate * sign(mean - tokens_e), from Model.expert_tokens (the
 * same on every rank when those are summed over data parallelism). Nothing for a model without
 * a score correction. */
void model_update_router_bias(Model *m, float rate);

/* The routing of MoE layer l in the last forward (tests, metrics): index and weight [N, k] (each
 * row's experts ascending) and the tokens of each expert, counts [n_routed_experts], in backend
 * memory (counts on the host). 0 for a dense layer or a model without experts. */
int model_moe_routing(const Model *m, int l, const int32_t **index, const float **weight,
                      const int **counts);

#endif
