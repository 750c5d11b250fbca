/* arch_deepseek.c: the DeepSeek V2 and V3 architectures (DeepseekV2ForCausalLM,
 * DeepseekV3ForCausalLM): multi-head latent attention (MLA) and a mixture of experts (MoE) with
 * shared experts, as transformers computes them: their table of tensors, their config.json
 * fields and their decoder layer, forward and backward. Experts are stored as the published
 * checkpoints have them: one 2-D tensor per expert and projection. The layer runs on backends
 * with the latent-attention and expert ops (ops.h; the CPU backend today) and with tp = 1. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../checkpoint/hf_model.h"
#include "common.h"
#include "log.h"
#include "model_layers.h"

/* ---- the table -------------------------------------------------------------------------- */

static int64_t dim_q_heads(const ModelConfig *mc)
{
    return (int64_t)mc->num_heads * (mc->qk_nope_head_dim + mc->qk_rope_head_dim);
}
static int64_t dim_q_lora(const ModelConfig *mc)
{
    return mc->q_lora_rank;
}
static int64_t dim_kv_lora(const ModelConfig *mc)
{
    return mc->kv_lora_rank;
}
/* the kv latent and the rotary key all heads share */
static int64_t dim_kv_a(const ModelConfig *mc)
{
    return (int64_t)mc->kv_lora_rank + mc->qk_rope_head_dim;
}
/* per head: the key's non-rotary part and the value */
static int64_t dim_kv_b(const ModelConfig *mc)
{
    return (int64_t)mc->num_heads * (mc->qk_nope_head_dim + mc->v_head_dim);
}
static int64_t dim_o_in(const ModelConfig *mc)
{
    return (int64_t)mc->num_heads * mc->v_head_dim;
}
static int64_t dim_experts(const ModelConfig *mc)
{
    return mc->n_routed_experts;
}
static int64_t dim_moe_inter(const ModelConfig *mc)
{
    return mc->moe_intermediate_size;
}
static int64_t dim_shared_inter(const ModelConfig *mc)
{
    return (int64_t)mc->moe_intermediate_size * mc->n_shared_experts;
}
static int64_t dim_rope(const ModelConfig *mc)
{
    return mc->qk_rope_head_dim;
}

/* A layer is MoE from first_k_dense_replace on (transformers: moe_layer_freq is 1, checked). */
static int when_moe(const ModelConfig *mc, int l)
{
    return mc->n_routed_experts > 0 && l >= mc->first_k_dense_replace;
}
static int when_dense(const ModelConfig *mc, int l)
{
    return !when_moe(mc, l);
}
static int when_shared(const ModelConfig *mc, int l)
{
    return when_moe(mc, l) && mc->n_shared_experts > 0;
}
static int when_score_bias(const ModelConfig *mc, int l)
{
    return when_moe(mc, l) && mc->topk_method == MOE_NOAUX_TC;
}
static int when_q_lora(const ModelConfig *mc, int l)
{
    return mc->q_lora_rank > 0;
}
static int when_q_plain(const ModelConfig *mc, int l)
{
    return mc->q_lora_rank <= 0;
}

#define LW(field) offsetof(LayerWeights, field)
static const ArchTensor deepseek_tensors[] = {
    ARCH_TENSORS_EMBED,
    {"input_layernorm.weight", SCOPE_LAYER, dim_hidden, NULL, NULL, TP_REPLICATED, 0, INIT_ONES,
     LW(ln1)},
    /* MLA: q straight from the hidden state (q_lora_rank null), or through its latent */
    {"self_attn.q_proj.weight", SCOPE_LAYER, dim_q_heads, dim_hidden, when_q_plain, TP_COLUMN, 1,
     INIT_NORMAL, LW(wq)},
    {"self_attn.q_a_proj.weight", SCOPE_LAYER, dim_q_lora, dim_hidden, when_q_lora, TP_REPLICATED,
     1, INIT_NORMAL, LW(wq_a)},
    {"self_attn.q_a_layernorm.weight", SCOPE_LAYER, dim_q_lora, NULL, when_q_lora, TP_REPLICATED, 0,
     INIT_ONES, LW(q_a_norm)},
    {"self_attn.q_b_proj.weight", SCOPE_LAYER, dim_q_heads, dim_q_lora, when_q_lora, TP_COLUMN, 1,
     INIT_NORMAL, LW(wq_b)},
    /* the kv latent with the shared rotary key: every rank needs all of it */
    {"self_attn.kv_a_proj_with_mqa.weight", SCOPE_LAYER, dim_kv_a, dim_hidden, NULL, TP_REPLICATED,
     1, INIT_NORMAL, LW(wkv_a)},
    {"self_attn.kv_a_layernorm.weight", SCOPE_LAYER, dim_kv_lora, NULL, NULL, TP_REPLICATED, 0,
     INIT_ONES, LW(kv_a_norm)},
    {"self_attn.kv_b_proj.weight", SCOPE_LAYER, dim_kv_b, dim_kv_lora, NULL, TP_COLUMN, 1,
     INIT_NORMAL, LW(wkv_b)},
    {"self_attn.o_proj.weight", SCOPE_LAYER, dim_hidden, dim_o_in, NULL, TP_ROW, 1, INIT_NORMAL,
     LW(wo)},
    {"post_attention_layernorm.weight", SCOPE_LAYER, dim_hidden, NULL, NULL, TP_REPLICATED, 0,
     INIT_ONES, LW(ln2)},
    /* the first first_k_dense_replace layers: a dense MLP */
    {"mlp.gate_proj.weight", SCOPE_LAYER, dim_intermediate, dim_hidden, when_dense, TP_COLUMN, 1,
     INIT_NORMAL, LW(wgate)},
    {"mlp.up_proj.weight", SCOPE_LAYER, dim_intermediate, dim_hidden, when_dense, TP_COLUMN, 1,
     INIT_NORMAL, LW(wup)},
    {"mlp.down_proj.weight", SCOPE_LAYER, dim_hidden, dim_intermediate, when_dense, TP_ROW, 1,
     INIT_NORMAL, LW(wdown)},
    /* the others: routed experts (split over the expert-parallel ranks), the router and its
     * score correction (V3; a buffer, frozen: it has no gradient and does not decay), shared
     * experts (one MLP of n_shared_experts x moe_intermediate_size) */
    {"gate_proj.weight", SCOPE_EXPERT, dim_moe_inter, dim_hidden, when_moe, TP_COLUMN, 1,
     INIT_NORMAL, LW(expert_gate)},
    {"up_proj.weight", SCOPE_EXPERT, dim_moe_inter, dim_hidden, when_moe, TP_COLUMN, 1, INIT_NORMAL,
     LW(expert_up)},
    {"down_proj.weight", SCOPE_EXPERT, dim_hidden, dim_moe_inter, when_moe, TP_ROW, 1, INIT_NORMAL,
     LW(expert_down)},
    {"mlp.gate.weight", SCOPE_LAYER, dim_experts, dim_hidden, when_moe, TP_REPLICATED, 1,
     INIT_NORMAL, LW(router)},
    {"mlp.gate.e_score_correction_bias", SCOPE_LAYER, dim_experts, NULL, when_score_bias,
     TP_REPLICATED, 0, INIT_ZEROS, LW(router_bias)},
    {"mlp.shared_experts.gate_proj.weight", SCOPE_LAYER, dim_shared_inter, dim_hidden, when_shared,
     TP_COLUMN, 1, INIT_NORMAL, LW(wgate)},
    {"mlp.shared_experts.up_proj.weight", SCOPE_LAYER, dim_shared_inter, dim_hidden, when_shared,
     TP_COLUMN, 1, INIT_NORMAL, LW(wup)},
    {"mlp.shared_experts.down_proj.weight", SCOPE_LAYER, dim_hidden, dim_shared_inter, when_shared,
     TP_ROW, 1, INIT_NORMAL, LW(wdown)},
    ARCH_TENSORS_HEAD,
};
#undef LW

/* ---- config.json ------------------------------------------------------------------------ */

/* The fields V2 and V3 share. */
static int deepseek_parse_common(const HfJson *j, ModelConfig *mc)
{
    int bias = 0;
    DS_TRY(hf_json_bool(j, "attention_bias", 0, &bias));
    if (bias)
        return ds_error(DS_ERR_INPUT,
                        "%s: attention_bias: true is not supported for DeepSeek "
                        "models (the published ones have none)",
                        j->file);
    DS_TRY(hf_json_int(j, "q_lora_rank", 0, 0, &mc->q_lora_rank)); /* null: a plain q_proj */
    DS_TRY(hf_json_int(j, "kv_lora_rank", 1, 0, &mc->kv_lora_rank));
    DS_TRY(hf_json_int(j, "qk_nope_head_dim", 1, 0, &mc->qk_nope_head_dim));
    DS_TRY(hf_json_int(j, "qk_rope_head_dim", 1, 0, &mc->qk_rope_head_dim));
    DS_TRY(hf_json_int(j, "v_head_dim", 1, 0, &mc->v_head_dim));
    DS_TRY(hf_json_int(j, "n_routed_experts", 0, 0, &mc->n_routed_experts));
    DS_TRY(hf_json_int(j, "n_shared_experts", 0, 0, &mc->n_shared_experts));
    DS_TRY(hf_json_int(j, "num_experts_per_tok", 0, 0, &mc->num_experts_per_tok));
    DS_TRY(hf_json_int(j, "moe_intermediate_size", mc->n_routed_experts > 0, 0,
                       &mc->moe_intermediate_size));
    DS_TRY(hf_json_int(j, "first_k_dense_replace", 0, 0, &mc->first_k_dense_replace));
    DS_TRY(hf_json_int(j, "moe_layer_freq", 0, 1, &mc->moe_layer_freq));
    DS_TRY(hf_json_number(j, "routed_scaling_factor", 0, 1.0, &mc->routed_scaling_factor));
    DS_TRY(hf_json_bool(j, "norm_topk_prob", 0, &mc->norm_topk_prob));
    DS_TRY(hf_json_int(j, "n_group", 0, 1, &mc->n_group));
    DS_TRY(hf_json_int(j, "topk_group", 0, 1, &mc->topk_group));
    if (mc->moe_layer_freq != 1)
        return ds_error(DS_ERR_INPUT,
                        "%s: moe_layer_freq: %d is not supported (transformers makes every layer "
                        "from first_k_dense_replace on an MoE layer; only 1 means that)",
                        j->file, mc->moe_layer_freq);
    mc->head_dim = mc->qk_rope_head_dim; /* as transformers sets it: the rotary part */
    return DS_OK;
}

/* V2: softmax scores; greedy or group_limited_greedy (transformers applies neither
 * norm_topk_prob nor a score correction to V2). */
static int deepseek_v2_parse_config(const HfJson *j, ModelConfig *mc)
{
    DS_TRY(deepseek_parse_common(j, mc));
    const char *scoring = NULL, *method = NULL;
    DS_TRY(hf_json_string(j, "scoring_func", &scoring));
    DS_TRY(hf_json_string(j, "topk_method", &method));
    if (scoring && strcmp(scoring, "softmax") != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: scoring_func: DeepseekV2 scores by softmax, got \"%.40s\"", j->file,
                        scoring);
    mc->scoring = MOE_SOFTMAX;
    if (!method || strcmp(method, "greedy") == 0)
        mc->topk_method = MOE_GREEDY;
    else if (strcmp(method, "group_limited_greedy") == 0)
        mc->topk_method = MOE_GROUP_LIMITED_GREEDY;
    else
        return ds_error(DS_ERR_INPUT,
                        "%s: topk_method: \"%.40s\" is not supported for DeepseekV2 (supported: "
                        "greedy, group_limited_greedy)",
                        j->file, method);
    mc->norm_topk_prob = 0;
    mc->rope_interleave = 1; /* V2 rotates adjacent pairs (complex multiplication) */
    return DS_OK;
}

/* V3: sigmoid scores, groups ranked by their two best corrected scores (noaux_tc), the chosen
 * weights normalized when norm_topk_prob. */
static int deepseek_v3_parse_config(const HfJson *j, ModelConfig *mc)
{
    DS_TRY(deepseek_parse_common(j, mc));
    const char *scoring = NULL, *method = NULL;
    DS_TRY(hf_json_string(j, "scoring_func", &scoring));
    DS_TRY(hf_json_string(j, "topk_method", &method));
    if (scoring && strcmp(scoring, "sigmoid") != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: scoring_func: DeepseekV3 scores by sigmoid, got \"%.40s\"", j->file,
                        scoring);
    if (method && strcmp(method, "noaux_tc") != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: topk_method: DeepseekV3 routes by noaux_tc, got \"%.40s\"", j->file,
                        method);
    mc->scoring = MOE_SIGMOID;
    mc->topk_method = MOE_NOAUX_TC;
    DS_TRY(hf_json_int(j, "num_nextn_predict_layers", 0, 0, &mc->num_nextn_predict_layers));
    if (mc->num_nextn_predict_layers < 0 || mc->num_nextn_predict_layers > 64)
        return ds_error(DS_ERR_INPUT, "%s: num_nextn_predict_layers: expected 0..64, got %d",
                        j->file, mc->num_nextn_predict_layers);
    return hf_json_bool(j, "rope_interleave", 1, &mc->rope_interleave);
}

static void deepseek_write_config(cJSON *root, const ModelConfig *mc)
{
    if (mc->q_lora_rank > 0)
        cJSON_AddNumberToObject(root, "q_lora_rank", mc->q_lora_rank);
    else
        cJSON_AddNullToObject(root, "q_lora_rank");
    cJSON_AddNumberToObject(root, "kv_lora_rank", mc->kv_lora_rank);
    cJSON_AddNumberToObject(root, "qk_nope_head_dim", mc->qk_nope_head_dim);
    cJSON_AddNumberToObject(root, "qk_rope_head_dim", mc->qk_rope_head_dim);
    cJSON_AddNumberToObject(root, "v_head_dim", mc->v_head_dim);
    cJSON_AddNumberToObject(root, "n_routed_experts", mc->n_routed_experts);
    cJSON_AddNumberToObject(root, "n_shared_experts", mc->n_shared_experts);
    cJSON_AddNumberToObject(root, "num_experts_per_tok", mc->num_experts_per_tok);
    cJSON_AddNumberToObject(root, "moe_intermediate_size", mc->moe_intermediate_size);
    cJSON_AddNumberToObject(root, "first_k_dense_replace", mc->first_k_dense_replace);
    cJSON_AddNumberToObject(root, "moe_layer_freq", 1);
    cJSON_AddNumberToObject(root, "routed_scaling_factor", mc->routed_scaling_factor);
    cJSON_AddBoolToObject(root, "norm_topk_prob", mc->norm_topk_prob);
    cJSON_AddNumberToObject(root, "n_group", mc->n_group);
    cJSON_AddNumberToObject(root, "topk_group", mc->topk_group);
    cJSON_AddStringToObject(root, "scoring_func",
                            mc->scoring == MOE_SIGMOID ? "sigmoid" : "softmax");
    cJSON_AddStringToObject(root, "topk_method",
                            mc->topk_method == MOE_NOAUX_TC               ? "noaux_tc"
                            : mc->topk_method == MOE_GROUP_LIMITED_GREEDY ? "group_limited_greedy"
                                                                          : "greedy");
    cJSON_AddBoolToObject(root, "attention_bias", 0);
    if (mc->arch == ARCH_DEEPSEEK_V3) {
        cJSON_AddBoolToObject(root, "rope_interleave", mc->rope_interleave);
        cJSON_AddNumberToObject(root, "num_nextn_predict_layers", mc->num_nextn_predict_layers);
    }
}

static int deepseek_check(const ModelConfig *mc, const char *where)
{
    const struct {
        const char *name;
        int value;
    } positive[] = {
        {"kv_lora_rank", mc->kv_lora_rank},
        {"qk_nope_head_dim", mc->qk_nope_head_dim},
        {"qk_rope_head_dim", mc->qk_rope_head_dim},
        {"v_head_dim", mc->v_head_dim},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(positive); i++)
        if (positive[i].value <= 0)
            return ds_error(DS_ERR_INPUT, "%s: %s: must be a positive integer, got %d", where,
                            positive[i].name, positive[i].value);
    if (mc->q_lora_rank < 0)
        return ds_error(DS_ERR_INPUT, "%s: q_lora_rank: must be null or positive, got %d", where,
                        mc->q_lora_rank);
    if (mc->qk_rope_head_dim % 2 != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: qk_rope_head_dim: rotary embedding needs an even size, "
                        "got %d",
                        where, mc->qk_rope_head_dim);
    if (mc->n_routed_experts < 0 || mc->n_shared_experts < 0 || mc->first_k_dense_replace < 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: n_routed_experts, n_shared_experts and "
                        "first_k_dense_replace must not be negative",
                        where);
    if (!(mc->routed_scaling_factor > 0 && mc->routed_scaling_factor <= 1e6))
        return ds_error(DS_ERR_INPUT, "%s: routed_scaling_factor: expected a number in (0, 1e6], "
                        "got %g", where, mc->routed_scaling_factor);
    if (mc->n_routed_experts > MOE_MAX_EXPERTS)
        return ds_error(DS_ERR_INPUT, "%s: n_routed_experts: %d is more than the %d supported",
                        where, mc->n_routed_experts, MOE_MAX_EXPERTS);
    if (mc->n_routed_experts > 0) {
        if (mc->moe_intermediate_size <= 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: moe_intermediate_size: must be a positive integer, "
                            "got %d",
                            where, mc->moe_intermediate_size);
        if (mc->num_experts_per_tok <= 0 || mc->num_experts_per_tok > mc->n_routed_experts)
            return ds_error(DS_ERR_INPUT,
                            "%s: num_experts_per_tok: %d, expected 1..n_routed_experts (%d)", where,
                            mc->num_experts_per_tok, mc->n_routed_experts);
        if (mc->topk_method != MOE_GREEDY &&
            (mc->n_group <= 0 || mc->n_routed_experts % mc->n_group != 0 || mc->topk_group <= 0 ||
             mc->topk_group > mc->n_group))
            return ds_error(DS_ERR_INPUT,
                            "%s: n_group %d, topk_group %d: the groups must split the %d routed "
                            "experts evenly and 1 <= topk_group <= n_group",
                            where, mc->n_group, mc->topk_group, mc->n_routed_experts);
        if (mc->topk_method == MOE_NOAUX_TC && mc->n_routed_experts / mc->n_group < 2)
            return ds_error(DS_ERR_INPUT,
                            "%s: n_group: noaux_tc ranks a group by its two best "
                            "experts; %d experts in %d groups leave fewer",
                            where, mc->n_routed_experts, mc->n_group);
        if (mc->topk_method != MOE_GREEDY &&
            mc->num_experts_per_tok > mc->topk_group * (mc->n_routed_experts / mc->n_group))
            return ds_error(DS_ERR_INPUT,
                            "%s: num_experts_per_tok: %d is more than the %d experts of the "
                            "topk_group %d groups a token may use",
                            where, mc->num_experts_per_tok,
                            mc->topk_group * (mc->n_routed_experts / mc->n_group), mc->topk_group);
    }
    return DS_OK;
}

/* Tensor parallelism splits heads (q, kv_b, o) and every MLP's intermediate size (the dense
 * MLP, the shared experts, each routed expert); the latents, the router and the norms are
 * replicated. */
static int deepseek_tp_check(const ModelConfig *mc, int tp, const char *where)
{
    const ArchSplit split[] = {
        {"num_attention_heads", mc->num_heads},
        {"intermediate_size", mc->first_k_dense_replace > 0 ? mc->intermediate_size : tp},
        {"moe_intermediate_size", mc->n_routed_experts > 0 ? mc->moe_intermediate_size : tp},
        {"vocab_size", mc->vocab_size},
    };
    return arch_tp_divides(split, (int)DS_ARRAY_LEN(split), tp, where);
}

/* ---- activations ------------------------------------------------------------------------ */

/* The latent norms (q_a_layernorm, kv_a_layernorm) use transformers' DeepseekV2RMSNorm default
 * eps, not rms_norm_eps: the modules are built without it. */
#define LATENT_NORM_EPS 1e-6f

/* What one layer's forward saves for its backward. A layer is dense (gate, up, act of
 * intermediate_size) or MoE (the shared experts in gate, up, act, and the routed experts). */
typedef struct DeepseekLayerActs {
    Act *ln1;                        /* [N, C] */
    float *ln1_rstd;                 /* [N] */
    Act *qa, *qa_n;                  /* [N, Rq] q latent before and after its norm (q_lora) */
    float *qa_f32, *qa_rstd;         /* [N, Rq], [N] */
    Act *q;                          /* [N, H*Dq]: per head nope then rope (rotated) */
    Act *kva;                        /* [N, Rkv + dr]: the kv latent, the shared key (rotated) */
    float *lat, *lat_rstd;           /* [N, Rkv] the latent as fp32 (the norm's input), [N] */
    Act *lat_n;                      /* [N, Rkv] */
    Act *kv;                         /* [N, H*(dn+dv)]: per head k nope then v */
    Act *k, *v;                      /* [N, H*Dq], [N, H*dv] */
    Act *att;                        /* [N, H*dv] */
    float *lse;                      /* [B, H, T] */
    float *resid_mid;                /* [N, C] */
    Act *ln2;                        /* [N, C] */
    float *ln2_rstd;                 /* [N] */
    Act *gate, *up, *act;            /* [N, I] dense MLP or [N, Is] shared experts */
    /* routed experts (MoE layers): router logits and scores, the choice, the (token, choice)
     * pairs sorted by expert (counts in host memory), and the experts' rows in that order */
    Act *logits;                     /* [N, E] */
    float *scores;                   /* [N, E] */
    int32_t *index;                  /* [N, k] */
    float *weight;                   /* [N, k] */
    int32_t *rows, *slot;            /* [N*k] */
    float *row_weight;               /* [N*k] */
    int *counts;                     /* [E] */
    int *recv;                       /* [E] expert parallelism: rows from each rank of the group
                                      * for each of this rank's experts, rank-major (host) */
    Act *xs, *ey;                    /* [N*k, C] the experts' inputs and outputs */
    Act *eg, *eu, *ea;               /* [N*k, Im] */
} DeepseekLayerActs;

typedef struct DeepseekActs {
    /* backward scratch, shared by the layers */
    Act *dq, *dk;                    /* [N, H*Dq] */
    Act *dv, *datt;                  /* [N, H*dv] */
    Act *dkv;                        /* [N, H*(dn+dv)] */
    Act *dkva;                       /* [N, Rkv + dr] */
    Act *dlat_n, *dlat_act;          /* [N, Rkv] */
    float *dlat;                     /* [N, Rkv] */
    Act *dqa_n, *dqa;                /* [N, Rq] */
    float *dqa_f32;                  /* [N, Rq] */
    Act *dgate, *dup, *dact;         /* [N, max(I, Is)] */
    Act *dlogits;                    /* [N, E] */
    float *dweight;                  /* [N, k] */
    Act *dxs, *dey;                  /* [N*k, C] */
    Act *deg, *deu, *dea;            /* [N*k, Im] */
    Act *moe_out;                    /* [N, C] forward: the routed experts' weighted sum */
    DeepseekLayerActs layers[];      /* [num_layers], then the layers' counts (host memory) */
} DeepseekActs;

static int is_moe(const ModelConfig *mc, int l)
{
    return when_moe(mc, l);
}

static size_t deepseek_act_bytes(const ModelConfig *mc)
{
    const size_t experts = mc->n_routed_experts > 0 ? (size_t)mc->n_routed_experts : 0;
    return sizeof(DeepseekActs) + (size_t)mc->num_layers * sizeof(DeepseekLayerActs) +
           (size_t)mc->num_layers * experts * 2 * sizeof(int);
}

static void deepseek_arena_layout(Model *m, ArenaCursor *c)
{
    const ModelConfig *mc = &m->cfg;
    /* this rank's share under tensor parallelism: heads, and every MLP's intermediate size */
    const size_t N = (size_t)m->B * m->T, C = mc->hidden_size, H = m->tp_heads, tp = m->tp_size;
    const size_t Dq = (size_t)mc->qk_nope_head_dim + mc->qk_rope_head_dim;
    const size_t dn = mc->qk_nope_head_dim, dv = mc->v_head_dim, dr = mc->qk_rope_head_dim;
    const size_t Rq = mc->q_lora_rank > 0 ? (size_t)mc->q_lora_rank : 0, Rkv = mc->kv_lora_rank;
    const size_t E = mc->n_routed_experts > 0 ? (size_t)mc->n_routed_experts : 0;
    const size_t k = mc->num_experts_per_tok > 0 ? (size_t)mc->num_experts_per_tok : 0;
    const size_t I = m->tp_inter, Im = mc->moe_intermediate_size / tp;
    const size_t Is = Im * (mc->n_shared_experts > 0 ? (size_t)mc->n_shared_experts : 0);
    const size_t lse = (size_t)m->B * H * m->T;
    int any_moe = 0, any_dense = 0;
    for (int l = 0; l < mc->num_layers; l++)
        *(is_moe(mc, l) ? &any_moe : &any_dense) = 1;
    const size_t Nk = any_moe ? N * k : 0;
    DeepseekActs *a = m->act->layers;
    int *counts = (int *)&a->layers[mc->num_layers];
    /* selective checkpointing: the cheap activations (the norms' outputs, the MLPs' activations,
     * the experts' gathered inputs) are one set all layers share, sized for the widest layer
     * (deepseek_layer_recompute refills them) */
    const int selective = mc->activation_checkpointing == CKPT_SELECTIVE;
    DeepseekLayerActs shared = {0};
    if (selective) {
        size_t widest = any_dense ? I : 0;
        if (any_moe && Is > widest) widest = Is;
        shared.ln1 = arena_take_act(m, c, N * C);
        shared.qa_n = arena_take_act(m, c, N * Rq);
        shared.lat_n = arena_take_act(m, c, N * Rkv);
        shared.ln2 = arena_take_act(m, c, N * C);
        shared.act = arena_take_act(m, c, N * widest);
        shared.xs = arena_take_act(m, c, Nk * C);
        shared.ea = arena_take_act(m, c, (m->ep_size > 1 ? 0 : Nk) * Im);
    }
    for (int l = 0; l < mc->num_layers; l++) {
        DeepseekLayerActs *L = &a->layers[l];
        const int moe = is_moe(mc, l);
        if (mc->activation_checkpointing == CKPT_FULL && l > 0) {
            /* checkpointing: layer 0's working set is shared; it is sized for the widest
             * layer below */
            *L = a->layers[0];
            continue;
        }
        /* with checkpointing, the one working set serves dense and MoE layers alike */
        const int dense_here = mc->activation_checkpointing == CKPT_FULL ? any_dense : !moe;
        const int moe_here = mc->activation_checkpointing == CKPT_FULL ? any_moe : moe;
        size_t mlp = dense_here ? I : 0;
        if (moe_here && Is > mlp) mlp = Is;
        const size_t nk = moe_here ? N * k : 0;
        /* the experts' own rows: here, or with expert parallelism in EpState's buffers */
        const size_t ek = m->ep_size > 1 ? 0 : nk;
        if (selective) {
            L->ln1 = shared.ln1, L->qa_n = shared.qa_n, L->lat_n = shared.lat_n;
            L->ln2 = shared.ln2, L->act = shared.act, L->xs = shared.xs, L->ea = shared.ea;
        } else {
            L->ln1 = arena_take_act(m, c, N * C);
            L->qa_n = arena_take_act(m, c, N * Rq);
            L->lat_n = arena_take_act(m, c, N * Rkv);
            L->ln2 = arena_take_act(m, c, N * C);
            L->act = arena_take_act(m, c, N * mlp);
            L->xs = arena_take_act(m, c, nk * C);
            L->ea = arena_take_act(m, c, ek * Im);
        }
        /* forward's scratch, which backward does not read (the q latent before its norm, kv_a's
         * and kv_b's outputs): one set, layer 0's, whatever the mode */
        if (l > 0) {
            L->qa = a->layers[0].qa, L->kva = a->layers[0].kva, L->kv = a->layers[0].kv;
        } else {
            L->qa = arena_take_act(m, c, N * Rq);
            L->kva = arena_take_act(m, c, N * (Rkv + dr));
            L->kv = arena_take_act(m, c, N * H * (dn + dv));
        }
        L->ln1_rstd = arena_take_f32(c, N);
        L->qa_f32 = arena_take_f32(c, N * Rq);
        L->qa_rstd = arena_take_f32(c, Rq ? N : 0);
        L->q = arena_take_act(m, c, N * H * Dq);
        L->lat = arena_take_f32(c, N * Rkv);
        L->lat_rstd = arena_take_f32(c, N);
        L->k = arena_take_act(m, c, N * H * Dq);
        L->v = arena_take_act(m, c, N * H * dv);
        L->att = arena_take_act(m, c, N * H * dv);
        L->lse = arena_take_f32(c, lse);
        L->resid_mid = arena_take_f32(c, N * C);
        L->ln2_rstd = arena_take_f32(c, N);
        L->gate = arena_take_act(m, c, N * mlp);
        L->up = arena_take_act(m, c, N * mlp);
        L->logits = arena_take_act(m, c, moe_here ? N * E : 0);
        L->scores = arena_take_f32(c, moe_here ? N * E : 0);
        L->index = (int32_t *)arena_take_f32(c, nk);
        L->weight = arena_take_f32(c, nk);
        L->rows = (int32_t *)arena_take_f32(c, nk);
        L->slot = (int32_t *)arena_take_f32(c, nk);
        L->row_weight = arena_take_f32(c, nk);
        L->counts = counts + (size_t)l * 2 * E;
        L->recv = L->counts + E;
        L->ey = arena_take_act(m, c, nk * C);
        L->eg = arena_take_act(m, c, ek * Im);
        L->eu = arena_take_act(m, c, ek * Im);
    }
    const size_t mlp = I > Is ? I : Is;
    a->dq = arena_take_act(m, c, N * H * Dq);
    a->dk = arena_take_act(m, c, N * H * Dq);
    a->dv = arena_take_act(m, c, N * H * dv);
    a->datt = arena_take_act(m, c, N * H * dv);
    a->dkv = arena_take_act(m, c, N * H * (dn + dv));
    a->dkva = arena_take_act(m, c, N * (Rkv + dr));
    a->dlat_n = arena_take_act(m, c, N * Rkv);
    a->dlat_act = arena_take_act(m, c, N * Rkv);
    a->dlat = arena_take_f32(c, N * Rkv);
    a->dqa_n = arena_take_act(m, c, N * Rq);
    a->dqa = arena_take_act(m, c, N * Rq);
    a->dqa_f32 = arena_take_f32(c, N * Rq);
    a->dgate = arena_take_act(m, c, N * mlp);
    a->dup = arena_take_act(m, c, N * mlp);
    a->dact = arena_take_act(m, c, N * mlp);
    a->dlogits = arena_take_act(m, c, any_moe ? N * E : 0);
    a->dweight = arena_take_f32(c, Nk);
    a->dxs = arena_take_act(m, c, Nk * C);
    a->dey = arena_take_act(m, c, Nk * C);
    const size_t Nke = m->ep_size > 1 ? 0 : Nk;
    a->deg = arena_take_act(m, c, Nke * Im);
    a->deu = arena_take_act(m, c, Nke * Im);
    a->dea = arena_take_act(m, c, Nke * Im);
    a->moe_out = arena_take_act(m, c, any_moe ? N * C : 0);
}

/* ---- the layer -------------------------------------------------------------------------- */

/* The softmax scale of MLA: 1/sqrt(q/k head size), times mscale(factor, mscale_all_dim)^2 under
 * yarn (transformers' yarn_apply_mscale). */
static float mla_scale(const ModelConfig *mc)
{
    double scale = 1.0 / sqrt((double)(mc->qk_nope_head_dim + mc->qk_rope_head_dim));
    if (mc->rope_type != ROPE_DEFAULT && mc->rope_mscale_all_dim != 0) {
        const double ms = model_yarn_mscale(mc->rope_factor, mc->rope_mscale_all_dim);
        scale *= ms * ms;
    }
    return (float)scale;
}

static MoeRouting moe_routing(const ModelConfig *mc)
{
    MoeRouting r = {0};
    r.experts = mc->n_routed_experts;
    r.top_k = mc->num_experts_per_tok;
    r.sigmoid = mc->scoring == MOE_SIGMOID;
    r.groups = mc->topk_method == MOE_GREEDY ? 1 : mc->n_group;
    r.topk_groups = mc->topk_method == MOE_GREEDY ? 1 : mc->topk_group;
    r.group_by_top2 = mc->topk_method == MOE_NOAUX_TC;
    r.normalize = mc->norm_topk_prob;
    r.scaling = (float)mc->routed_scaling_factor;
    return r;
}

/* The shapes every function below reads. */
typedef struct MlaDims {
    int B, T, N, C, H, dn, dr, dv, Dq, Rq, Rkv, kva, kvb;
} MlaDims;

static MlaDims mla_dims(const Model *m)
{
    const ModelConfig *c = &m->cfg;
    MlaDims d;
    d.B = m->B;
    d.T = m->T;
    d.N = m->B * m->T;
    d.C = c->hidden_size;
    d.H = m->tp_heads; /* this rank's heads */
    d.dn = c->qk_nope_head_dim;
    d.dr = c->qk_rope_head_dim;
    d.dv = c->v_head_dim;
    d.Dq = d.dn + d.dr;
    d.Rq = c->q_lora_rank > 0 ? c->q_lora_rank : 0;
    d.Rkv = c->kv_lora_rank;
    d.kva = d.Rkv + d.dr;        /* kv_a_proj_with_mqa's outputs */
    d.kvb = d.H * (d.dn + d.dv); /* kv_b_proj's outputs */
    return d;
}

/* ---- expert parallelism ------------------------------------------------------------------
 * The routed experts of a layer are split over the ep ranks of the group (Model.ep): a rank
 * routes its own tokens, sends each (token, choice) row to the rank holding its expert and gets
 * the expert's output back (dispatch and combine, all-to-all), and its experts compute on the
 * rows every rank of the group sent them. Backward moves the gradients the same two ways. The
 * rows arrive rank-major (each rank's rows by expert) and the experts want them expert-major;
 * ep_reorder moves blocks between the two orders. How many rows arrive depends on the routing,
 * so their buffers live outside the arena and grow when a step brings more than they hold. */

typedef struct EpRows {
    size_t cap; /* rows */
    Act *x, *y; /* [cap, C]: the experts' inputs and outputs, expert-major */
    Act *g, *u, *a; /* [cap, Im]: gate, up and SwiGLU */
    Act *wire;  /* [cap, C] (the shared scratch only): rows in rank order, both directions */
} EpRows;

typedef struct EpState {
    int n_sets;
    EpRows *sets;   /* [num_layers]: a layer's rows, kept for its backward; one set under
                     * activation checkpointing (the layers share one working set) */
    EpRows scratch; /* backward: x, y, g, u, a hold dx, dy, dg, du, da; wire */
    size_t *offs;   /* [E] host: expert-major offsets of each (rank, expert) block */
    int *local;     /* [E / ep] host: rows of each of this rank's experts */
} EpState;

static size_t ep_even_rows(const Model *m)
{
    /* an even share: the rows this rank sends, times 1.25 */
    const size_t nk = (size_t)m->B * m->T * (size_t)m->cfg.num_experts_per_tok;
    return nk + nk / 4 + 1;
}

static size_t ep_rows_bytes(const Model *m, size_t rows, int scratch)
{
    const size_t C = m->cfg.hidden_size, Im = m->cfg.moe_intermediate_size / m->tp_size;
    const size_t a = m->act_size;
    return rows * ((2 + (size_t)scratch) * C + 3 * Im) * a + (6 + (size_t)scratch) * 256;
}

static void ep_rows_free(const Model *m, EpRows *r)
{
    m->be->mem_free(m->be, r->x);
    memset(r, 0, sizeof(*r));
}

/* One allocation cut into the buffers of rows rows. */
static int ep_rows_alloc(const Model *m, EpRows *r, size_t rows, int scratch)
{
    ep_rows_free(m, r);
    if (rows == 0) return DS_OK;
    unsigned char *p = m->be->mem_alloc(m->be, ep_rows_bytes(m, rows, scratch));
    if (!p) return DS_ERR_INTERNAL;
    const size_t C = m->cfg.hidden_size, Im = m->cfg.moe_intermediate_size / m->tp_size;
    const size_t rc = DS_ALIGN_UP(rows * C * m->act_size, 256);
    const size_t ri = DS_ALIGN_UP(rows * Im * m->act_size, 256);
    r->cap = rows;
    r->x = p, p += rc;
    r->y = p, p += rc;
    r->g = p, p += ri;
    r->u = p, p += ri;
    r->a = p, p += ri;
    r->wire = scratch ? p : NULL;
    return DS_OK;
}

static int ep_init(Model *m)
{
    EpState *st = ds_calloc(1, sizeof(*st));
    if (!st) return DS_ERR_INTERNAL;
    m->ep_state = st;
    const ModelConfig *mc = &m->cfg;
    st->n_sets = mc->activation_checkpointing == CKPT_FULL ? 1 : mc->num_layers;
    st->sets = ds_calloc((size_t)st->n_sets, sizeof(EpRows));
    st->offs = ds_calloc((size_t)mc->n_routed_experts, sizeof(size_t));
    st->local = ds_calloc((size_t)m->experts_local, sizeof(int));
    if (!st->sets || !st->offs || !st->local) return DS_ERR_INTERNAL;
    const size_t rows = ep_even_rows(m);
    for (int i = 0; i < st->n_sets; i++)
        if (mc->activation_checkpointing == CKPT_FULL || is_moe(mc, i))
            DS_TRY(ep_rows_alloc(m, &st->sets[i], rows, 0));
    return ep_rows_alloc(m, &st->scratch, rows, 1);
}

static void ep_free(Model *m)
{
    EpState *st = m->ep_state;
    for (int i = 0; st->sets && i < st->n_sets; i++)
        ep_rows_free(m, &st->sets[i]);
    ep_rows_free(m, &st->scratch);
    free(st->sets);
    free(st->offs);
    free(st->local);
    free(st);
    m->ep_state = NULL;
}

static size_t ep_bytes(const Model *m)
{
    const ModelConfig *mc = &m->cfg;
    int sets = 0;
    for (int l = 0; l < mc->num_layers; l++)
        sets += mc->activation_checkpointing == CKPT_FULL ? l == 0 : is_moe(mc, l);
    const size_t rows = ep_even_rows(m);
    return (size_t)sets * ep_rows_bytes(m, rows, 0) + ep_rows_bytes(m, rows, 1);
}

static void ep_check(int status)
{
    if (status != DS_OK) comm_fail(status);
}

/* Room for rows rows: grown (its contents dropped) when the step routes more here. */
static void ep_reserve(const Model *m, EpRows *r, size_t rows, int scratch, int l)
{
    if (rows <= r->cap) return;
    const size_t cap = rows + rows / 4;
    progress_note("dstrain: expert parallelism: layer %d routed %zu rows to rank %d's experts, "
                  "more than the %zu its buffers held; growing them to %zu",
                  l, rows, m->ep_rank, r->cap, cap);
    ep_check(ep_rows_alloc(m, r, cap, scratch));
}

/* Rows between rank-major order (each rank's block, its experts in order within it) and
 * expert-major order (each expert's block, the ranks in order within it); recv[r * El + e] rows
 * of rank r for expert e. */
static void ep_reorder(const Model *m, Act *dst, const Act *src, const int *recv, int to_experts)
{
    EpState *st = m->ep_state;
    const int El = m->experts_local, ep = m->ep_size, C = m->cfg.hidden_size;
    size_t at = 0;
    for (int e = 0; e < El; e++)
        for (int r = 0; r < ep; r++) {
            st->offs[(size_t)r * El + e] = at;
            at += (size_t)recv[(size_t)r * El + e];
        }
    size_t rank_at = 0;
    for (int r = 0; r < ep; r++)
        for (int e = 0; e < El; e++) {
            const int n = recv[(size_t)r * El + e];
            if (n == 0) continue;
            const size_t expert_at = st->offs[(size_t)r * El + e];
            if (to_experts)
                m->be->copy_block(m->be, model_act_at(m, dst, expert_at * C), C,
                                  model_act_at(m, src, rank_at * C), C, n, C, 0);
            else
                m->be->copy_block(m->be, model_act_at(m, dst, rank_at * C), C,
                                  model_act_at(m, src, expert_at * C), C, n, C, 0);
            rank_at += (size_t)n;
        }
}

/* Rows this rank sends each rank of the group (its pairs sorted by expert: rank r's experts
 * are one block) and receives from each, in elements of C. */
static void ep_row_counts(const Model *m, const DeepseekLayerActs *L, size_t *send, size_t *recv)
{
    const int El = m->experts_local, C = m->cfg.hidden_size;
    for (int r = 0; r < m->ep_size; r++) {
        size_t s = 0, g = 0;
        for (int e = 0; e < El; e++) {
            s += (size_t)L->counts[r * El + e];
            g += (size_t)L->recv[r * El + e];
        }
        send[r] = s * C;
        recv[r] = g * C;
    }
}

static CommType ep_act_type(const Model *m)
{
    return m->act_size == 2 ? COMM_BF16 : COMM_F32;
}

/* Forward of the routed experts under expert parallelism: L->xs (this rank's pairs sorted by
 * expert) in, L->ey (their experts' outputs, same order) out. */
static void ep_experts_forward(Model *m, int l, DeepseekLayerActs *L, const LayerWeights *w)
{
    EpState *st = m->ep_state;
    EpRows *set = &st->sets[st->n_sets == 1 ? 0 : l];
    const int El = m->experts_local, ep = m->ep_size;
    const int C = m->cfg.hidden_size, Im = m->cfg.moe_intermediate_size / m->tp_size;
    /* how many rows go where: El counts to each rank, El from each */
    size_t send[MOE_MAX_EXPERTS], recv[MOE_MAX_EXPERTS];
    for (int r = 0; r < ep; r++)
        send[r] = recv[r] = (size_t)El;
    ep_check(comm_all_to_allv(m->ep, L->counts, send, L->recv, recv, COMM_I32));
    size_t rows = 0;
    for (int e = 0; e < El; e++) {
        st->local[e] = 0;
        for (int r = 0; r < ep; r++)
            st->local[e] += L->recv[r * El + e];
        rows += (size_t)st->local[e];
    }
    ep_reserve(m, set, rows, 0, l);
    ep_reserve(m, &st->scratch, rows, 1, l);
    ep_row_counts(m, L, send, recv);
    ep_check(comm_all_to_allv(m->ep, L->xs, send, st->scratch.wire, recv, ep_act_type(m)));
    ep_reorder(m, set->x, st->scratch.wire, L->recv, 1);
    m->be->moe_experts_forward(m->be, set->y, set->g, set->u, set->a, set->x, w->expert_gate,
                               w->expert_up, w->expert_down, st->local, El, C, Im);
    ep_reorder(m, st->scratch.wire, set->y, L->recv, 0);
    ep_check(comm_all_to_allv(m->ep, st->scratch.wire, recv, L->ey, send, ep_act_type(m)));
}

/* Its backward: dey (the gradient of L->ey) in, dxs (of L->xs) out; the local experts' weight
 * gradients accumulated. */
static void ep_experts_backward(Model *m, int l, DeepseekLayerActs *L, const LayerWeights *w,
                                LayerWeights *g, Act *dxs, const Act *dey)
{
    EpState *st = m->ep_state;
    EpRows *set = &st->sets[st->n_sets == 1 ? 0 : l], *d = &st->scratch;
    const int El = m->experts_local, ep = m->ep_size;
    const int C = m->cfg.hidden_size, Im = m->cfg.moe_intermediate_size / m->tp_size;
    size_t send[MOE_MAX_EXPERTS], recv[MOE_MAX_EXPERTS];
    for (int e = 0; e < El; e++) {
        st->local[e] = 0;
        for (int r = 0; r < ep; r++)
            st->local[e] += L->recv[r * El + e];
    }
    ep_row_counts(m, L, send, recv);
    ep_check(comm_all_to_allv(m->ep, dey, send, d->wire, recv, ep_act_type(m)));
    ep_reorder(m, d->y, d->wire, L->recv, 1);
    m->be->moe_experts_backward(m->be, d->x, g->expert_gate, g->expert_up, g->expert_down, d->a,
                                d->g, d->u, d->y, set->x, set->g, set->u, set->a, w->expert_gate,
                                w->expert_up, w->expert_down, st->local, El, C, Im);
    ep_reorder(m, d->wire, d->x, L->recv, 0);
    ep_check(comm_all_to_allv(m->ep, d->wire, recv, dxs, send, ep_act_type(m)));
}

/* Decoder layer l (llama_layer_forward's contract): MLA, then a dense MLP or the experts. */
static void deepseek_layer_forward(Model *m, int l, float *resid_out)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    DeepseekActs *s = a->layers;
    DeepseekLayerActs *L = &s->layers[l];
    const LayerWeights *w = &m->w.layers[l];
    const MlaDims d = mla_dims(m);
    const int N = d.N, C = d.C, H = d.H;
    const size_t NC = (size_t)N * C;
    const float *resid_in = a->resid_in[l];
    /* attention: q, the kv latent with the shared rotary key, k and v per head */
    be->rmsnorm_forward(be, L->ln1, L->ln1_rstd, resid_in, w->ln1, N, C, c->rms_norm_eps);
    if (d.Rq > 0) {
        be->matmul_forward(be, L->qa, L->ln1, w->wq_a, NULL, N, C, d.Rq);
        be->act_to_f32(be, L->qa_f32, L->qa, d.Rq, N, d.Rq);
        be->rmsnorm_forward(be, L->qa_n, L->qa_rstd, L->qa_f32, w->q_a_norm, N, d.Rq,
                            LATENT_NORM_EPS);
        be->matmul_forward(be, L->q, L->qa_n, w->wq_b, NULL, N, d.Rq, H * d.Dq);
    } else {
        be->matmul_forward(be, L->q, L->ln1, w->wq, NULL, N, C, H * d.Dq);
    }
    be->matmul_forward(be, L->kva, L->ln1, w->wkv_a, NULL, N, C, d.kva);
    be->act_to_f32(be, L->lat, L->kva, d.kva, N, d.Rkv);
    be->rmsnorm_forward(be, L->lat_n, L->lat_rstd, L->lat, w->kv_a_norm, N, d.Rkv, LATENT_NORM_EPS);
    be->matmul_forward(be, L->kv, L->lat_n, w->wkv_b, NULL, N, d.Rkv, d.kvb);
    Act *q_rope = model_act_at(m, L->q, d.dn), *k_rope = model_act_at(m, L->kva, d.Rkv);
    be->rope_block_forward(be, q_rope, H * d.Dq, d.Dq, m->rope_cos, m->rope_sin, d.B, d.T, H, d.dr,
                           c->rope_interleave);
    be->rope_block_forward(be, k_rope, d.kva, 0, m->rope_cos, m->rope_sin, d.B, d.T, 1, d.dr,
                           c->rope_interleave);
    /* kv_b's outputs are N x H rows of (nope, v): every head's k nope part and v in one copy
     * each, rows of N * H; the shared rotary key into every head's k */
    be->copy_block(be, L->k, d.Dq, L->kv, d.dn + d.dv, N * H, d.dn, 0);
    be->copy_block(be, L->v, d.dv, model_act_at(m, L->kv, d.dn), d.dn + d.dv, N * H, d.dv, 0);
    for (int h = 0; h < H; h++)
        be->copy_block(be, model_act_at(m, L->k, (size_t)h * d.Dq + d.dn), H * d.Dq, k_rope, d.kva,
                       N, d.dr, 0);
    be->attention_forward_dv(be, L->att, L->lse, L->q, L->k, L->v, d.B, d.T, H, d.Dq, d.dv,
                             mla_scale(c));
    /* row parallel: partial sums over this rank's heads */
    be->matmul_forward(be, a->tmp, L->att, w->wo, NULL, N, H * d.dv, C);
    model_tp_reduce_act(m, a->tmp, NC);
    be->add_rmsnorm_forward(be, L->resid_mid, L->ln2, L->ln2_rstd, resid_in, a->tmp, w->ln2, N, C,
                            c->rms_norm_eps);
    if (!is_moe(c, l)) {
        const int I = m->tp_inter;
        be->matmul_forward(be, L->gate, L->ln2, w->wgate, NULL, N, C, I);
        be->matmul_forward(be, L->up, L->ln2, w->wup, NULL, N, C, I);
        be->swiglu_forward(be, L->act, L->gate, L->up, (size_t)N * I);
        if (!resid_out) return;
        be->matmul_forward(be, a->tmp, L->act, w->wdown, NULL, N, I, C);
        model_tp_reduce_act(m, a->tmp, NC);
        be->add(be, resid_out, L->resid_mid, a->tmp, NC);
        return;
    }
    /* MoE: the shared experts see every token; the router sends each token to k experts. Under
     * tensor parallelism every rank routes alike (the router is replicated) and holds a slice
     * of every expert's intermediate size: its outputs are partial sums */
    const int Im = c->moe_intermediate_size / m->tp_size, Is = Im * c->n_shared_experts;
    const int E = c->n_routed_experts, k = c->num_experts_per_tok, Nk = N * k;
    const MoeRouting route = moe_routing(c);
    if (Is > 0) {
        be->matmul_forward(be, L->gate, L->ln2, w->wgate, NULL, N, C, Is);
        be->matmul_forward(be, L->up, L->ln2, w->wup, NULL, N, C, Is);
        be->swiglu_forward(be, L->act, L->gate, L->up, (size_t)N * Is);
    }
    be->matmul_forward(be, L->logits, L->ln2, w->router, NULL, N, C, E);
    be->moe_route(be, L->index, L->weight, L->scores, L->logits,
                  c->topk_method == MOE_NOAUX_TC ? w->router_bias : NULL, N, &route);
    be->moe_permute(be, L->rows, L->row_weight, L->slot, L->counts, L->index, L->weight, N, E, k);
    be->gather_rows(be, L->xs, L->ln2, L->rows, NULL, Nk, C);
    if (m->ep)
        ep_experts_forward(m, l, L, w);
    else
        be->moe_experts_forward(be, L->ey, L->eg, L->eu, L->ea, L->xs, w->expert_gate, w->expert_up,
                                w->expert_down, L->counts, E, C, Im);
    if (!resid_out) return;
    for (int e = 0; e < E; e++)
        m->expert_tokens[(size_t)l * E + e] += L->counts[e];
    be->mem_zero(be, s->moe_out, NC * m->act_size);
    be->scatter_add_rows(be, s->moe_out, L->ey, L->rows, L->row_weight, Nk, C);
    model_tp_reduce_act(m, s->moe_out, NC);
    be->add(be, resid_out, L->resid_mid, s->moe_out, NC);
    if (Is > 0) {
        be->matmul_forward(be, a->tmp, L->act, w->wdown, NULL, N, Is, C);
        model_tp_reduce_act(m, a->tmp, NC);
        be->add(be, resid_out, resid_out, a->tmp, NC);
    }
}

/* The MLP block's backward: a->dresid_act holds the gradient of the layer's output; a->dln
 * receives the gradient of ln2's output. */
static void mlp_backward(Model *m, int l, DeepseekLayerActs *L, const LayerWeights *w,
                         LayerWeights *g)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    DeepseekActs *s = a->layers;
    const int N = m->B * m->T, C = c->hidden_size;
    /* the dense MLP, or the shared experts (the same fields) */
    const int I = is_moe(c, l) ? c->moe_intermediate_size / m->tp_size * c->n_shared_experts
                               : m->tp_inter;
    if (I > 0) {
        be->matmul_backward(be, s->dact, g->wdown, NULL, a->dresid_act, L->act, w->wdown, N, I, C,
                            0);
        be->swiglu_backward(be, s->dgate, s->dup, s->dact, L->gate, L->up, (size_t)N * I);
        be->matmul_backward(be, a->dln, g->wgate, NULL, s->dgate, L->ln2, w->wgate, N, C, I, 0);
        be->matmul_backward(be, a->dln, g->wup, NULL, s->dup, L->ln2, w->wup, N, C, I, 1);
    } else {
        be->mem_zero(be, a->dln, (size_t)N * C * m->act_size);
    }
    if (!is_moe(c, l)) {
        model_tp_reduce_act(m, a->dln, (size_t)N * C); /* column parallel: sum the slices */
        return;
    }
    /* routed experts: the gradient of each pair's weight (summed over the tensor-parallel
     * slices of the expert's output), then each expert's rows */
    const int Im = c->moe_intermediate_size / m->tp_size, E = c->n_routed_experts;
    const int Nk = N * c->num_experts_per_tok;
    const MoeRouting route = moe_routing(c);
    be->rows_dot(be, s->dweight, L->slot, a->dresid_act, L->rows, L->ey, Nk, C);
    model_tp_reduce(m, s->dweight, (size_t)Nk, COMM_SUM);
    be->gather_rows(be, s->dey, a->dresid_act, L->rows, L->row_weight, Nk, C);
    if (m->ep)
        ep_experts_backward(m, l, L, w, g, s->dxs, s->dey);
    else
        be->moe_experts_backward(be, s->dxs, g->expert_gate, g->expert_up, g->expert_down, s->dea,
                                 s->deg, s->deu, s->dey, L->xs, L->eg, L->eu, L->ea, w->expert_gate,
                                 w->expert_up, w->expert_down, L->counts, E, C, Im);
    be->scatter_add_rows(be, a->dln, s->dxs, L->rows, NULL, Nk, C);
    be->moe_route_backward(be, s->dlogits, s->dweight, L->index, L->scores, N, &route);
    if (c->moe_balance_alpha > 0)
        be->moe_balance(be, s->dlogits, &m->balance_loss, L->index, L->scores, a->dev_weights, m->B,
                        m->T, c->moe_balance_alpha, &route);
    /* the router is replicated: its input gradient is whole on every rank, so one rank adds
     * it to the slices' partial sums before they are summed */
    be->matmul_backward(be, m->tp_rank == 0 ? a->dln : NULL, g->router, NULL, s->dlogits, L->ln2,
                        w->router, N, C, E, 1);
    model_tp_reduce_act(m, a->dln, (size_t)N * C);
}

/* Selective checkpointing (llama_layer_recompute's contract): layer l's norm outputs, its MLP's
 * or shared experts' activation and, without expert parallelism, its routed experts' gathered
 * inputs and activations, from what the layer kept, by the ops its forward used. Under expert
 * parallelism the experts' rows a rank received are its own per layer (EpState) and xs is only
 * forward's staging: nothing of theirs is recomputed. */
static void deepseek_layer_recompute(Model *m, int l)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    DeepseekLayerActs *L = &((DeepseekActs *)m->act->layers)->layers[l];
    const LayerWeights *w = &m->w.layers[l];
    const MlaDims d = mla_dims(m);
    const int N = d.N, C = d.C;
    be->rmsnorm_forward(be, L->ln1, L->ln1_rstd, m->act->resid_in[l], w->ln1, N, C,
                        c->rms_norm_eps);
    if (d.Rq > 0)
        be->rmsnorm_forward(be, L->qa_n, L->qa_rstd, L->qa_f32, w->q_a_norm, N, d.Rq,
                            LATENT_NORM_EPS);
    be->rmsnorm_forward(be, L->lat_n, L->lat_rstd, L->lat, w->kv_a_norm, N, d.Rkv, LATENT_NORM_EPS);
    be->rmsnorm_forward(be, L->ln2, L->ln2_rstd, L->resid_mid, w->ln2, N, C, c->rms_norm_eps);
    const int Im = c->moe_intermediate_size / m->tp_size;
    const int I = is_moe(c, l) ? Im * c->n_shared_experts : m->tp_inter;
    if (I > 0) be->swiglu_forward(be, L->act, L->gate, L->up, (size_t)N * I);
    if (!is_moe(c, l) || m->ep) return;
    const int Nk = N * c->num_experts_per_tok;
    be->gather_rows(be, L->xs, L->ln2, L->rows, NULL, Nk, C);
    be->swiglu_forward(be, L->ea, L->eg, L->eu, (size_t)Nk * Im);
}

/* Backward of layer l (llama_layer_backward's contract). */
static void deepseek_layer_backward(Model *m, int l)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    DeepseekActs *s = a->layers;
    DeepseekLayerActs *L = &s->layers[l];
    const LayerWeights *w = &m->w.layers[l];
    LayerWeights *g = &m->g.layers[l];
    const MlaDims d = mla_dims(m);
    const int N = d.N, C = d.C, H = d.H;
    mlp_backward(m, l, L, w, g);
    be->rmsnorm_backward(be, a->dresid, a->dresid_act, g->ln2, a->dln, L->resid_mid, w->ln2,
                         L->ln2_rstd, N, C);
    /* attention: dresid is now the gradient of resid_mid */
    be->matmul_backward(be, s->datt, g->wo, NULL, a->dresid_act, L->att, w->wo, N, H * d.dv, C, 0);
    be->attention_backward_dv(be, s->dq, s->dk, s->dv, s->datt, L->att, L->lse, L->q, L->k, L->v,
                              d.B, d.T, H, d.Dq, d.dv, mla_scale(c));
    /* k and v back into kv_b's outputs; every head's rotary key into the one shared key */
    Act *dk_rope = model_act_at(m, s->dkva, d.Rkv);
    be->copy_block(be, s->dkv, d.dn + d.dv, s->dk, d.Dq, N * H, d.dn, 0);
    be->copy_block(be, model_act_at(m, s->dkv, d.dn), d.dn + d.dv, s->dv, d.dv, N * H, d.dv, 0);
    for (int h = 0; h < H; h++) /* the heads' rotary key gradients summed in head order */
        be->copy_block(be, dk_rope, d.kva, model_act_at(m, s->dk, (size_t)h * d.Dq + d.dn),
                       H * d.Dq, N, d.dr, h > 0);
    /* kv_b's input gradient (the latent's) beside the shared key's: both partial sums over this
     * rank's heads under tensor parallelism, summed in one all-reduce of the kv_a gradient */
    be->matmul_backward(be, s->dlat_n, g->wkv_b, NULL, s->dkv, L->lat_n, w->wkv_b, N, d.Rkv, d.kvb,
                        0);
    if (m->tp) {
        be->copy_block(be, s->dkva, d.kva, s->dlat_n, d.Rkv, N, d.Rkv, 0);
        model_tp_reduce_act(m, s->dkva, (size_t)N * d.kva);
        be->copy_block(be, s->dlat_n, d.Rkv, s->dkva, d.kva, N, d.Rkv, 0);
    }
    be->rope_block_backward(be, dk_rope, d.kva, 0, m->rope_cos, m->rope_sin, d.B, d.T, 1, d.dr,
                            c->rope_interleave);
    be->rope_block_backward(be, model_act_at(m, s->dq, d.dn), H * d.Dq, d.Dq, m->rope_cos,
                            m->rope_sin, d.B, d.T, H, d.dr, c->rope_interleave);
    /* the latent's norm (replicated: whole gradients from here on) */
    be->mem_zero(be, s->dlat, (size_t)N * d.Rkv * sizeof(float));
    be->rmsnorm_backward(be, s->dlat, s->dlat_act, g->kv_a_norm, s->dlat_n, L->lat, w->kv_a_norm,
                         L->lat_rstd, N, d.Rkv);
    be->copy_block(be, s->dkva, d.kva, s->dlat_act, d.Rkv, N, d.Rkv, 0);
    /* q, then kv_a: dln is their input gradients' sum */
    if (d.Rq > 0) {
        /* q_b is column parallel: its input gradient is summed before the latent's norm */
        be->matmul_backward(be, s->dqa_n, g->wq_b, NULL, s->dq, L->qa_n, w->wq_b, N, d.Rq, H * d.Dq,
                            0);
        model_tp_reduce_act(m, s->dqa_n, (size_t)N * d.Rq);
        be->mem_zero(be, s->dqa_f32, (size_t)N * d.Rq * sizeof(float));
        be->rmsnorm_backward(be, s->dqa_f32, s->dqa, g->q_a_norm, s->dqa_n, L->qa_f32, w->q_a_norm,
                             L->qa_rstd, N, d.Rq);
        be->matmul_backward(be, a->dln, g->wq_a, NULL, s->dqa, L->ln1, w->wq_a, N, C, d.Rq, 0);
    } else {
        /* q_proj is column parallel: its partial sums are summed before kv_a's whole part */
        be->matmul_backward(be, a->dln, g->wq, NULL, s->dq, L->ln1, w->wq, N, C, H * d.Dq, 0);
        model_tp_reduce_act(m, a->dln, (size_t)N * C);
    }
    be->matmul_backward(be, a->dln, g->wkv_a, NULL, s->dkva, L->ln1, w->wkv_a, N, C, d.kva, 1);
    be->rmsnorm_backward(be, a->dresid, l > 0 ? a->dresid_act : NULL, g->ln1, a->dln,
                         a->resid_in[l], w->ln1, L->ln1_rstd, N, C);
}

int model_moe_routing(const Model *m, int l, const int32_t **index, const float **weight,
                     const int **counts)
{
    if (m->arch != &arch_deepseek_v2 && m->arch != &arch_deepseek_v3) return 0;
    if (l < 0 || l >= m->cfg.num_layers || !is_moe(&m->cfg, l)) return 0;
    const DeepseekLayerActs *L = &((const DeepseekActs *)m->act->layers)->layers[l];
    *index = L->index;
    *weight = L->weight;
    *counts = L->counts;
    return 1;
}

const Architecture arch_deepseek_v2 = {
    .id = ARCH_DEEPSEEK_V2,
    .name = "DeepseekV2ForCausalLM",
    .classifier_name = NULL,
    .model_type = "deepseek_v2",
    .default_max_positions = 2048,
    .rope_yarn = 1,
    .tensors = deepseek_tensors,
    .n_tensors = (int)DS_ARRAY_LEN(deepseek_tensors),
    .rope_dim = dim_rope,
    .parse_config = deepseek_v2_parse_config,
    .write_config = deepseek_write_config,
    .check = deepseek_check,
    .tp_check = deepseek_tp_check,
    .act_bytes = deepseek_act_bytes,
    .arena_layout = deepseek_arena_layout,
    .needs_latent_ops = 1,
    .layer_forward = deepseek_layer_forward,
    .layer_backward = deepseek_layer_backward,
    .layer_recompute = deepseek_layer_recompute,
    .ep_init = ep_init,
    .ep_free = ep_free,
    .ep_bytes = ep_bytes,
};

const Architecture arch_deepseek_v3 = {
    .id = ARCH_DEEPSEEK_V3,
    .name = "DeepseekV3ForCausalLM",
    .classifier_name = NULL,
    .model_type = "deepseek_v3",
    .default_max_positions = 4096,
    .rope_yarn = 1,
    .tensors = deepseek_tensors,
    .n_tensors = (int)DS_ARRAY_LEN(deepseek_tensors),
    .rope_dim = dim_rope,
    .parse_config = deepseek_v3_parse_config,
    .write_config = deepseek_write_config,
    .check = deepseek_check,
    .tp_check = deepseek_tp_check,
    .act_bytes = deepseek_act_bytes,
    .arena_layout = deepseek_arena_layout,
    .needs_latent_ops = 1,
    .layer_forward = deepseek_layer_forward,
    .layer_backward = deepseek_layer_backward,
    .layer_recompute = deepseek_layer_recompute,
    .ep_init = ep_init,
    .ep_free = ep_free,
    .ep_bytes = ep_bytes,
};
