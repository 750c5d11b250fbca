/* arch_deepseek.c: the DeepSeek V2 and V3 architectures (DeepseekV2ForCausalLM,
 * DeepseekV3ForCausalLM): multi-head latent attention (MLA) and a mixture of experts (MoE) with
 * shared experts, as transformers computes them. This file holds their table of tensors and
 * their config.json fields; their layer forward and backward are not written yet, so the
 * architectures are described (param_table_build, the memory of a layout) but not loaded:
 * hf_config_load refuses them until Architecture.layer_forward is set. Experts are stored as
 * the published checkpoints have them: one 2-D tensor per expert and projection. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../checkpoint/hf_model.h"
#include "common.h"
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
    if (mc->arch == ARCH_DEEPSEEK_V3)
        cJSON_AddBoolToObject(root, "rope_interleave", mc->rope_interleave);
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
    }
    return DS_OK;
}

static int deepseek_tp_check(const ModelConfig *mc, int tp, const char *where)
{
    return ds_error(DS_ERR_INPUT,
                    "parallel.tp: %d: %s does not run tensor parallel yet (%s); use "
                    "parallel.tp: 1",
                    tp, model_arch_name(mc->arch), where);
}

static size_t deepseek_act_bytes(const ModelConfig *mc)
{
    return 1; /* no layer code yet: nothing to lay out */
}

static void deepseek_arena_layout(Model *m, ArenaCursor *c) {}

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
    .layer_forward = NULL, /* not written yet: hf_config_load refuses the architecture */
    .layer_backward = NULL,
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
    .layer_forward = NULL,
    .layer_backward = NULL,
};
