/* param_table.h: the model's shape (ModelConfig) and its parameter table, the one place that
 * lists every tensor with its Hugging Face name and shape; parameters, gradients, master weights,
 * optimizer moments and EWC state all share its flat layout. Part of the base layer with
 * common.h and log.h: the folders below trainer/ (checkpoint/, data/) may include these three and
 * nothing else of trainer/, and these include nothing else of trainer/ either. */
#ifndef DSTRAIN_PARAM_TABLE_H
#define DSTRAIN_PARAM_TABLE_H

#include <stddef.h>
#include <stdint.h>

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

#endif
