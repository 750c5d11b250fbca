/* param_table.h: the model's shape (ModelConfig), the architectures (one table per architecture
 * that describes each tensor once: its Hugging Face name, its shape from the config, its tensor-
 * and expert-parallel split, its decay, its initial values and where it binds), and the parameter
 * table built from them: every tensor with its name, shape, slice and flat offset. Parameters,
 * gradients, master weights, optimizer moments and EWC state all share that flat layout. Part of
 * the base layer with common.h and log.h: the folders below trainer/ (checkpoint/, data/) may
 * include these three and nothing else of trainer/, and these include nothing else of trainer/
 * either. The architectures themselves are defined in their own files (trainer/arch_*.c, with
 * their layer forward and backward) and reached through model_architecture(). */
#ifndef DSTRAIN_PARAM_TABLE_H
#define DSTRAIN_PARAM_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef enum ModelArch { ARCH_LLAMA = 0, ARCH_QWEN2, ARCH_DEEPSEEK_V2, ARCH_DEEPSEEK_V3 } ModelArch;
typedef enum RopeType { ROPE_DEFAULT = 0, ROPE_LINEAR, ROPE_LLAMA3, ROPE_YARN } RopeType;
/* DeepSeek MoE routing: scores, and how the top-k experts are chosen. */
typedef enum MoeScoring { MOE_SOFTMAX = 0, MOE_SIGMOID } MoeScoring;
typedef enum MoeTopk { MOE_GREEDY = 0, MOE_GROUP_LIMITED_GREEDY, MOE_NOAUX_TC } MoeTopk;

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
    int rope_original_max_position; /* llama3, yarn */
    double rope_beta_fast, rope_beta_slow; /* yarn */
    double rope_mscale, rope_mscale_all_dim; /* yarn (DeepSeek); 0 when not given */
    double rope_attention_factor;   /* yarn: cos and sin are scaled by it; 0: derived from factor
                                     * and the mscales, as transformers does */
    int rope_truncate;              /* yarn: the correction range is rounded to whole dims
                                     * (transformers' default, true) */
    int tie_word_embeddings;
    int qkv_bias;                   /* q, k, v projections carry a bias (Qwen2; Llama attention_bias) */
    int o_bias;                     /* o_proj carries a bias (Llama attention_bias) */
    int mlp_bias;                   /* gate, up, down carry biases (Llama mlp_bias) */
    /* DeepSeek V2/V3: multi-head latent attention (MLA) */
    int q_lora_rank;                /* 0: a plain q_proj (V2-Lite's null) */
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int rope_interleave;            /* rotary pairs are adjacent dims (DeepSeek's own layout) */
    /* DeepSeek V2/V3: mixture of experts; n_routed_experts 0 for a dense model */
    int n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size;
    int first_k_dense_replace, moe_layer_freq;
    int n_group, topk_group, norm_topk_prob;
    double routed_scaling_factor;
    MoeScoring scoring;
    MoeTopk topk_method;
    int num_nextn_predict_layers;   /* DeepSeek-V3: multi-token-prediction layers stored after the
                                     * decoder's (model.layers.<num_layers + i>.*): not trained,
                                     * carried unchanged from the base model into the export */
    int bos_token_id;               /* -1 when unset */
    int eos_token_id;
    int pad_token_id;
    int new_form;                   /* config.json used rope_parameters / dtype (transformers 5) */
    char torch_dtype[16];           /* dtype the weights were published in: bfloat16, float32 ... */
    int num_labels;                 /* > 0: sequence classification: a head score.weight
                                     * [num_labels, C] on the last non-padding token replaces
                                     * lm_head (HF *ForSequenceClassification) */
    int activation_checkpointing;   /* a training option, not from config.json
                                     * (train.activation_checkpointing), a CheckpointMode: what
                                     * forward keeps for backward. Same results either way. */
    float moe_balance_alpha;        /* a training option, not from config.json: the weight of
                                     * the sequence-wise expert balance loss added to the
                                     * objective (moe.balance_loss); 0: none */
    int lm_head_chunk_rows;         /* not from config.json: rows of the LM head and its
                                     * cross-entropy computed at once; 0 (the default) keeps a
                                     * chunk's logits near 256 MiB of fp32 (model.c); tests set a
                                     * few rows to run several chunks */
} ModelConfig;

const char *model_arch_name(ModelArch arch); /* "LlamaForCausalLM", "Qwen2ForCausalLM" */

/* ---- architectures ------------------------------------------------------------------------ */

/* How tensor parallelism splits a tensor over the tp ranks (Megatron layout). */
typedef enum TpSplit {
    TP_REPLICATED = 0, /* every rank holds all of it and computes the same gradient (norms, the
                        * bias of a row-parallel projection, added by rank 0 only) */
    TP_COLUMN,         /* dim 0 in tp equal slices: a column-parallel projection's outputs */
    TP_ROW,            /* dim 1 in tp equal slices: a row-parallel projection's inputs (its
                        * partial sums are all-reduced) */
    TP_KV_HEADS,       /* dim 0 by kv heads; with fewer kv heads than ranks, tp / kv heads
                        * consecutive ranks hold the same head and sum their gradients */
    TP_VOCAB,          /* dim 0 by vocabulary rows (embedding, LM head) */
} TpSplit;

/* Initial values when training from scratch (model_init_weights). */
typedef enum ParamInit { INIT_NORMAL = 0, INIT_ONES, INIT_ZEROS } ParamInit;

/* Where a tensor lives: once in the model, once per layer, or once per routed expert of a
 * layer (split over the expert-parallel ranks). */
typedef enum ParamScope { SCOPE_MODEL = 0, SCOPE_LAYER, SCOPE_EXPERT } ParamScope;

typedef int64_t (*ArchDim)(const ModelConfig *mc);
typedef int (*ArchWhen)(const ModelConfig *mc, int layer);

/* One tensor of an architecture. Its full name is name (SCOPE_MODEL), "model.layers.<l>." name
 * (SCOPE_LAYER) or "model.layers.<l>.mlp.experts.<e>." name (SCOPE_EXPERT). */
typedef struct ArchTensor {
    const char *name;
    ParamScope scope;
    ArchDim rows, cols; /* the full shape from the config; cols NULL: a vector */
    ArchWhen when;      /* whether the tensor exists (in layer l); NULL: always */
    TpSplit tp;
    int decay;          /* AdamW's weight decay applies (matrices; not norms, biases) */
    ParamInit init;
    int bind;           /* byte offset of its pointer in ModelWeights (SCOPE_MODEL) or LayerWeights
                         * (trainer/model.h); for SCOPE_EXPERT a float ** array of per-expert
                         * pointers; -1: not bound (a tied LM head reads the embedding) */
} ArchTensor;

/* What forward keeps for backward (ModelConfig.activation_checkpointing). */
typedef enum CheckpointMode {
    CKPT_NONE = 0,     /* every layer's activations */
    CKPT_FULL = 1,     /* each layer's input only; backward recomputes the layer into one
                        * working set that all layers share: one more forward */
    CKPT_SELECTIVE = 2 /* all but the cheap ones (the norms' outputs, the MLP's activation,
                        * the experts' gathered rows), which the layers share and backward
                        * recomputes from what was kept (Architecture.layer_recompute): no
                        * matmul and no collective runs again */
} CheckpointMode;

struct Model;
struct ArenaCursor;
struct cJSON;
struct HfJson; /* a config.json being read (checkpoint/hf_model.h) */

/* An architecture: its tensors, its config.json fields, its layer computation. The table's
 * order is the flat buffer's and the export's: the SCOPE_MODEL entries before the first layer
 * entry, then for each layer its entries (a run of SCOPE_EXPERT entries once per expert), then
 * the remaining SCOPE_MODEL entries; HF's own module order. */
typedef struct Architecture {
    ModelArch id;
    const char *name;            /* architectures[0] of config.json: "LlamaForCausalLM" */
    const char *classifier_name; /* its *ForSequenceClassification, or NULL */
    const char *model_type;      /* "llama" */
    int default_max_positions;   /* max_position_embeddings when config.json has none */
    int rope_yarn;               /* its layer applies yarn rope scaling (config.json may ask) */
    const ArchTensor *tensors;
    int n_tensors;
    ArchDim rope_dim;            /* dimensions each head rotates */
    /* config.json: the fields beyond the common ones (hf_model.c reads those); the export's
     * config.json for a model made from a preset */
    int (*parse_config)(const struct HfJson *json, ModelConfig *mc);
    void (*write_config)(struct cJSON *root, const ModelConfig *mc);
    /* shapes its code cannot run, and tp sizes it cannot split, named by config field */
    int (*check)(const ModelConfig *mc, const char *where);
    int (*tp_check)(const ModelConfig *mc, int tp, const char *where);
    /* the layer (trainer/model_layers.h): bytes of its activation pointers, their layout in the
     * arena, forward from resid_in into resid_out (NULL: the recomputation of activation
     * checkpointing) and backward (model.c's dresid holds the gradient of the layer's output in,
     * its input's out) */
    int needs_latent_ops; /* its layer calls the backend's latent-attention and expert ops */
    size_t (*act_bytes)(const ModelConfig *mc);
    void (*arena_layout)(struct Model *m, struct ArenaCursor *cursor);
    void (*layer_forward)(struct Model *m, int l, float *resid_out);
    void (*layer_backward)(struct Model *m, int l);
    /* CKPT_SELECTIVE: refills layer l's shared cheap activations from what it kept, with the
     * ops and inputs its forward used (so the same bits); NULL: the architecture has no
     * selective mode (model_init refuses it) */
    void (*layer_recompute)(struct Model *m, int l);
    /* expert parallelism (Model.ep set): the buffers of the rows that travel between ranks,
     * made after the arena and freed before it, and their bytes for the estimate; NULL in an
     * architecture without routed experts */
    int (*ep_init)(struct Model *m);
    void (*ep_free)(struct Model *m);
    size_t (*ep_bytes)(const struct Model *m);
} Architecture;

extern const Architecture arch_llama, arch_qwen2, arch_deepseek_v2, arch_deepseek_v3;

/* The architecture of id (NULL when unknown), and the registered ones in order. An
 * architecture whose layer_forward is NULL is described (its table builds) but not loaded. */
const Architecture *model_architecture(ModelArch id);
const Architecture *model_architecture_at(int i); /* NULL past the last */

/* Common dimensions for the tables. */
int64_t dim_hidden(const ModelConfig *mc);
int64_t dim_vocab(const ModelConfig *mc);
int64_t dim_labels(const ModelConfig *mc);
int64_t dim_intermediate(const ModelConfig *mc);
int64_t dim_head(const ModelConfig *mc);
/* Common presence rules. */
int when_lm_head(const ModelConfig *mc, int layer); /* untied and not a classifier */
int when_classifier(const ModelConfig *mc, int layer);

/* Built-in shapes for training from scratch ("tiny", ...). DS_ERR_INPUT names the known ones. */
int model_preset(const char *name, ModelConfig *mc);
/* For an architecture's tp_check: DS_ERR_INPUT naming the first of the n sizes tp does not
 * divide ("parallel.tp: 3 does not divide the model's num_attention_heads 16 (where)"). */
typedef struct ArchSplit {
    const char *name; /* the config.json field */
    int value;
} ArchSplit;
int arch_tp_divides(const ArchSplit *split, int n, int tp, const char *where);

/* yarn rope (transformers' modeling_rope_utils): the mscale of a context stretched by scale,
 * and the factor cos and sin are multiplied by (1 for other rope types). */
double model_yarn_mscale(double scale, double mscale);
double model_rope_attention_factor(const ModelConfig *mc);

/* Whether name belongs to one of the model's multi-token-prediction layers
 * (model.layers.<l>.* with num_layers <= l < num_layers + num_nextn_predict_layers). */
int model_is_mtp_tensor(const ModelConfig *mc, const char *name);

/* Reject shapes the model code cannot run (heads not divisible, odd head_dim, ...). */
int model_config_check(const ModelConfig *mc, const char *where);

#define PARAM_NAME_MAX 96
#define PARAM_ALIGN_BYTES 256
#define PARAM_MAX_LAYERS 16384 /* num_hidden_layers beyond any model (DeepSeek-V3 has 61) */
#define PARAM_COUNT_MAX ((int64_t)1 << 24) /* tensors in a table (DeepSeek-V3: 91,000) */

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
    int tp_copy;               /* 1 when another tensor- or expert-parallel rank holds the same
                                * values and counts them in global sums instead (replicated
                                * tensors on tp_rank > 0, kv heads shared by several ranks, the
                                * tensors other than routed experts on ep_rank > 0) */
    TpSplit tp;                /* from the architecture's table */
    ParamInit init;
    int layer;                 /* -1 for the model's own tensors */
    int expert;                /* routed expert index, -1 for others */
    int bind;                  /* ArchTensor.bind */
    int index;                 /* its position in the whole model's table (param_table_build),
                                * the same on every rank however the table is split */
} ParamInfo;

typedef struct ParamTable {
    int count;
    ParamInfo *items;
    size_t total; /* elements in the flat buffer, including alignment padding */
    size_t experts_begin; /* the routed experts' tensors lie in [experts_begin, total), after
                           * every other tensor (total when there are none) */
} ParamTable;

/* The whole model's parameters, and those one token goes through (a routed expert's count
 * num_experts_per_tok / n_routed_experts of theirs). */
int model_param_counts(const ModelConfig *mc, double *total, double *active);
/* Training flops per token at sequence length T for MFU: 6 x the active parameters, plus the
 * attention's 6 L T H (q/k head size + v head size) (12 L d T for the dense models); 0 when the
 * table cannot be built. */
double model_flops_per_token(const ModelConfig *mc, int T);
/* The table of mc's architecture, unsplit. */
int param_table_build(const ModelConfig *mc, ParamTable *pt);
/* How many tensors param_table_build lists, in 64-bit arithmetic without building anything
 * (saturating at INT64_MAX): to check config.json against its weight files before any size
 * from it is trusted. */
int64_t param_table_count(const ModelConfig *mc);
/* The table of tensor-parallel rank tp_rank of tp_size, each tensor split as its architecture's
 * table says (TpSplit): kv heads are split when tp divides them, else each rank holds kv head
 * tp_rank / (tp / KVH). Call model_tp_check first. */
int param_table_build_tp(const ModelConfig *mc, int tp_rank, int tp_size, ParamTable *pt);
/* param_table_build_tp for expert-parallel rank ep_rank of ep_size as well: the routed experts
 * [ep_rank * E / ep_size, (ep_rank + 1) * E / ep_size) only, and the other tensors marked
 * tp_copy on ep_rank > 0 (rank 0 of the expert-parallel group counts them). Call
 * model_ep_check first. */
int param_table_build_parallel(const ModelConfig *mc, int tp_rank, int tp_size, int ep_rank,
                               int ep_size, ParamTable *pt);
/* Whether ep ranks can split this model's experts: DS_ERR_INPUT naming parallel.ep. */
int model_ep_check(const ModelConfig *mc, int ep, const char *where);
/* Whether tp ranks can split this model: DS_ERR_INPUT naming parallel.tp and the field. */
int model_tp_check(const ModelConfig *mc, int tp, const char *where);
void param_table_free(ParamTable *pt);
const ParamInfo *param_table_find(const ParamTable *pt, const char *name);

#endif
