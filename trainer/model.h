/* model.h: the DeepSeek dense decoder (Llama and Qwen2 layouts as Hugging Face stores them).
 * The parameter table is the one place that lists every tensor with its HF name and shape;
 * parameters, gradients, master weights and optimizer moments all share its flat layout. */
#ifndef DSTRAIN_MODEL_H
#define DSTRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "../kernels/ops.h"

typedef enum ModelArch { ARCH_LLAMA = 0, ARCH_QWEN2 } ModelArch;
typedef enum RopeType { ROPE_DEFAULT = 0, ROPE_LINEAR, ROPE_LLAMA3 } RopeType;

typedef struct ModelConfig {
    ModelArch arch;
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    int max_position_embeddings;
    float rms_norm_eps;
    double rope_theta;
    RopeType rope_type;
    double rope_factor;             /* linear and llama3 */
    double rope_low_freq_factor;    /* llama3 */
    double rope_high_freq_factor;   /* llama3 */
    int rope_original_max_position; /* llama3 */
    int tie_word_embeddings;
    int qkv_bias;                   /* q, k, v projections carry a bias (Qwen2; Llama attention_bias) */
    int o_bias;                     /* o_proj carries a bias (Llama attention_bias) */
    int mlp_bias;                   /* gate, up, down carry biases (Llama mlp_bias) */
    int bos_token_id;               /* -1 when unset */
    int eos_token_id;
    int pad_token_id;
    int new_form;                   /* config.json used rope_parameters / dtype (transformers 5) */
    char torch_dtype[16];           /* dtype the weights were published in: bfloat16, float32 ... */
    int num_labels;                 /* > 0: sequence classification: a head score.weight
                                     * [num_labels, C] on the last non-padding token replaces
                                     * lm_head (HF *ForSequenceClassification) */
    int activation_checkpointing;   /* a training option, not from config.json: forward keeps
                                     * only each layer's input and backward recomputes the layer
                                     * into one shared working set (train.activation_checkpointing).
                                     * Same results, less activation memory, one more forward. */
    int lm_head_chunk_rows;         /* not from config.json: rows of the LM head and its
                                     * cross-entropy computed at once; 0 (the default) keeps a
                                     * chunk's logits near 256 MiB of fp32 (model.c); tests set a
                                     * few rows to run several chunks */
} ModelConfig;

const char *model_arch_name(ModelArch arch); /* "LlamaForCausalLM", "Qwen2ForCausalLM" */

/* Built-in shapes for training from scratch ("tiny", ...). DS_ERR_INPUT names the known ones. */
int model_preset(const char *name, ModelConfig *mc);
/* Reject shapes the model code cannot run (heads not divisible, odd head_dim, ...). */
int model_config_check(const ModelConfig *mc, const char *where);

#define PARAM_NAME_MAX 96
#define PARAM_ALIGN_BYTES 256
#define PARAM_MAX_LAYERS 16384 /* num_hidden_layers beyond any model (DeepSeek-V3 has 61) */

typedef struct ParamInfo {
    char name[PARAM_NAME_MAX]; /* HF name, e.g. "model.layers.0.self_attn.q_proj.weight" */
    int ndim;
    int64_t shape[2];          /* full (unsharded) shape */
    int split_dim;             /* -1 replicated, else the dim split over tensor-parallel ranks */
    int64_t slice_start;       /* this rank's slice along split_dim */
    int64_t slice_len;
    size_t numel;              /* elements this rank holds */
    size_t offset;             /* in elements, into the flat buffer; 256-byte aligned */
    int weight_decay;          /* 0 for norms and biases */
    int tp_copy;               /* 1 when another tensor-parallel rank holds the same values and
                                * counts them in global sums instead (replicated tensors on
                                * tp_rank > 0, kv heads shared by several ranks) */
} ParamInfo;

typedef struct ParamTable {
    int count;
    ParamInfo *items;
    size_t total; /* elements in the flat buffer, including alignment padding */
} ParamTable;

int param_table_build(const ModelConfig *mc, ParamTable *pt);
/* The table of tensor-parallel rank tp_rank of tp_size (Megatron layout): q, k, v, gate, up and
 * their biases split along dim 0 (column parallel), o and down along dim 1 (row parallel; their
 * biases replicated), embedding and lm_head along dim 0 (vocab parallel), norms replicated. kv
 * heads are split when tp divides them, else each rank holds kv head tp_rank / (tp / KVH).
 * Call model_tp_check first. */
int param_table_build_tp(const ModelConfig *mc, int tp_rank, int tp_size, ParamTable *pt);
/* Whether tp ranks can split this model: DS_ERR_INPUT naming parallel.tp and the field. */
int model_tp_check(const ModelConfig *mc, int tp, const char *where);
void param_table_free(ParamTable *pt);
const ParamInfo *param_table_find(const ParamTable *pt, const char *name);

/* Per-layer views into the flat buffer (parameters or gradients alike). */
typedef struct LayerWeights {
    float *ln1, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    float *ln2, *wgate, *bgate, *wup, *bup, *wdown, *bdown;
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
} Model;

/* Bytes one rank holds for a layout (tp x dp, ZeRO-1 or not), as model_init_parallel and
 * optim_init_sharded allocate them on the CPU (fp32 activations: bf16 ones on a GPU take less);
 * activations follow mc->activation_checkpointing. */
typedef struct ModelMemory {
    size_t params, grads, optimizer, activations;
} ModelMemory;
int model_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero,
                          ModelMemory *out);

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

#endif
