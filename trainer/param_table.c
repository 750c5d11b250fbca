/* param_table.c: the model's shape (presets, checks) and its parameter table: every tensor once,
 * with its Hugging Face name, full shape, tensor-parallel slice and flat offset. Part of the base
 * layer (param_table.h): checkpoint/ and data/ may use it; it uses nothing else of trainer/. */
#include "param_table.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

const char *model_arch_name(ModelArch arch)
{
    return arch == ARCH_QWEN2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
}

/* ---- presets ---------------------------------------------------------------------------- */

static void preset_base(ModelConfig *mc)
{
    memset(mc, 0, sizeof(*mc));
    mc->arch = ARCH_LLAMA;
    mc->rms_norm_eps = 1e-6f;
    mc->rope_theta = 10000.0;
    mc->rope_type = ROPE_DEFAULT;
    mc->rope_factor = 1.0;
    mc->bos_token_id = -1;
    mc->eos_token_id = -1;
    mc->pad_token_id = -1;
    snprintf(mc->torch_dtype, sizeof(mc->torch_dtype), "bfloat16");
}

/* Byte-level presets: ids 0..255 are bytes, 256 BOS, 257 EOS; vocab padded to 320 so that it
 * divides by tensor-parallel sizes up to 64. Real shapes copy the published config.json values. */
static const struct {
    const char *name;
    int vocab, hidden, inter, layers, heads, kv_heads, max_pos, bos, eos;
    double theta, linear_factor;
    float eps;
} presets[] = {
    {"tiny", 320, 128, 384, 4, 4, 2, 2048, 256, 257, 10000.0, 0, 1e-5f},
    {"small", 320, 256, 768, 6, 8, 4, 2048, 256, 257, 10000.0, 0, 1e-5f},
    {"deepseek-coder-1.3b", 32256, 2048, 5504, 24, 16, 16, 16384, 32013, 32014, 100000.0, 4.0,
     1e-6f},
    {"deepseek-llm-7b", 102400, 4096, 11008, 30, 32, 32, 4096, 100000, 100001, 10000.0, 0, 1e-6f},
};

int model_preset(const char *name, ModelConfig *mc)
{
    for (size_t i = 0; i < DS_ARRAY_LEN(presets); i++) {
        if (strcmp(presets[i].name, name) != 0) continue;
        preset_base(mc);
        mc->vocab_size = presets[i].vocab;
        mc->hidden_size = presets[i].hidden;
        mc->intermediate_size = presets[i].inter;
        mc->num_layers = presets[i].layers;
        mc->num_heads = presets[i].heads;
        mc->num_kv_heads = presets[i].kv_heads;
        mc->head_dim = presets[i].hidden / presets[i].heads;
        mc->max_position_embeddings = presets[i].max_pos;
        mc->bos_token_id = presets[i].bos;
        mc->eos_token_id = presets[i].eos;
        mc->rope_theta = presets[i].theta;
        mc->rms_norm_eps = presets[i].eps;
        if (presets[i].linear_factor > 0) {
            mc->rope_type = ROPE_LINEAR;
            mc->rope_factor = presets[i].linear_factor;
        }
        return DS_OK;
    }
    char known[256] = "";
    for (size_t i = 0; i < DS_ARRAY_LEN(presets); i++) {
        strncat(known, i ? ", " : "", sizeof(known) - strlen(known) - 1);
        strncat(known, presets[i].name, sizeof(known) - strlen(known) - 1);
    }
    return ds_error(DS_ERR_INPUT, "model.preset: unknown preset \"%s\" (known: %s)", name, known);
}

int model_config_check(const ModelConfig *mc, const char *where)
{
    struct {
        const char *name;
        int value;
    } positive[] = {
        {"vocab_size", mc->vocab_size},
        {"hidden_size", mc->hidden_size},
        {"intermediate_size", mc->intermediate_size},
        {"num_hidden_layers", mc->num_layers},
        {"num_attention_heads", mc->num_heads},
        {"num_key_value_heads", mc->num_kv_heads},
        {"head_dim", mc->head_dim},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(positive); i++)
        if (positive[i].value <= 0)
            return ds_error(DS_ERR_INPUT, "%s: %s: must be a positive integer, got %d", where,
                            positive[i].name, positive[i].value);
    if (mc->num_heads % mc->num_kv_heads != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: num_key_value_heads: %d does not divide num_attention_heads %d",
                        where, mc->num_kv_heads, mc->num_heads);
    if (mc->head_dim % 2 != 0)
        return ds_error(DS_ERR_INPUT, "%s: head_dim: rotary embedding needs an even head_dim, got %d",
                        where, mc->head_dim);
    if (!(mc->rms_norm_eps > 0))
        return ds_error(DS_ERR_INPUT, "%s: rms_norm_eps: must be positive", where);
    if (!(mc->rope_theta > 0))
        return ds_error(DS_ERR_INPUT, "%s: rope_theta: must be positive", where);
    if (mc->rope_type != ROPE_DEFAULT && !(mc->rope_factor > 0))
        return ds_error(DS_ERR_INPUT, "%s: rope_scaling.factor: must be positive", where);
    return DS_OK;
}

/* ---- parameter table -------------------------------------------------------------------- */

static int table_add(ParamTable *pt, int capacity, const char *name, int64_t rows, int64_t cols,
                     int decay)
{
    if (pt->count >= capacity) return ds_error(DS_ERR_INTERNAL, "parameter table overflow");
    ParamInfo *p = &pt->items[pt->count++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->ndim = cols > 0 ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols > 0 ? cols : 0;
    p->split_dim = -1;
    p->slice_start = 0;
    p->slice_len = rows;
    /* sizes come from config.json: every product and sum is checked, so a file cannot wrap
     * them into a small buffer (the flat buffer is at most 2^60 bytes) */
    uint64_t numel = 0, padded = 0, total = 0;
    if (rows < 0 || cols < 0 ||
        __builtin_mul_overflow((uint64_t)rows, (uint64_t)(cols > 0 ? cols : 1), &numel) ||
        numel > (UINT64_C(1) << 58) ||
        __builtin_add_overflow(numel, (uint64_t)(PARAM_ALIGN_BYTES / sizeof(float) - 1), &padded) ||
        __builtin_add_overflow((uint64_t)pt->total, padded, &total) || total > (UINT64_C(1) << 58))
        return ds_error(DS_ERR_INPUT,
                        "%s: [%lld, %lld] makes the model larger than 2^58 parameters", name,
                        (long long)rows, (long long)cols);
    p->numel = (size_t)numel;
    p->weight_decay = decay;
    p->offset = pt->total;
    pt->total += DS_ALIGN_UP(p->numel, PARAM_ALIGN_BYTES / sizeof(float));
    return DS_OK;
}

/* The order here is the order of the flat buffer and of exports: HF's own module order. */
int param_table_build(const ModelConfig *mc, ParamTable *pt)
{
    const int64_t C = mc->hidden_size, I = mc->intermediate_size, V = mc->vocab_size;
    const int64_t QD = (int64_t)mc->num_heads * mc->head_dim;
    const int64_t KVD = (int64_t)mc->num_kv_heads * mc->head_dim;
    memset(pt, 0, sizeof(*pt));
    /* 16 entries a layer at most; the count is checked before it sizes an allocation */
    if (mc->num_layers < 0 || mc->num_layers > PARAM_MAX_LAYERS)
        return ds_error(DS_ERR_INPUT, "num_hidden_layers: %d is more than %d", mc->num_layers,
                        PARAM_MAX_LAYERS);
    int capacity = 4 + mc->num_layers * 16;
    pt->items = ds_calloc((size_t)capacity, sizeof(ParamInfo));
    if (!pt->items) return DS_ERR_INTERNAL;
    char name[PARAM_NAME_MAX];
#define ADD(rows, cols, decay, ...)                                                                \
    do {                                                                                           \
        snprintf(name, sizeof(name), __VA_ARGS__);                                                 \
        DS_TRY(table_add(pt, capacity, name, rows, cols, decay));                                 \
    } while (0)
    ADD(V, C, 1, "model.embed_tokens.weight");
    for (int l = 0; l < mc->num_layers; l++) {
        const char *p = "model.layers";
        ADD(C, 0, 0, "%s.%d.input_layernorm.weight", p, l);
        ADD(QD, C, 1, "%s.%d.self_attn.q_proj.weight", p, l);
        if (mc->qkv_bias) ADD(QD, 0, 0, "%s.%d.self_attn.q_proj.bias", p, l);
        ADD(KVD, C, 1, "%s.%d.self_attn.k_proj.weight", p, l);
        if (mc->qkv_bias) ADD(KVD, 0, 0, "%s.%d.self_attn.k_proj.bias", p, l);
        ADD(KVD, C, 1, "%s.%d.self_attn.v_proj.weight", p, l);
        if (mc->qkv_bias) ADD(KVD, 0, 0, "%s.%d.self_attn.v_proj.bias", p, l);
        ADD(C, QD, 1, "%s.%d.self_attn.o_proj.weight", p, l);
        if (mc->o_bias) ADD(C, 0, 0, "%s.%d.self_attn.o_proj.bias", p, l);
        ADD(C, 0, 0, "%s.%d.post_attention_layernorm.weight", p, l);
        ADD(I, C, 1, "%s.%d.mlp.gate_proj.weight", p, l);
        if (mc->mlp_bias) ADD(I, 0, 0, "%s.%d.mlp.gate_proj.bias", p, l);
        ADD(I, C, 1, "%s.%d.mlp.up_proj.weight", p, l);
        if (mc->mlp_bias) ADD(I, 0, 0, "%s.%d.mlp.up_proj.bias", p, l);
        ADD(C, I, 1, "%s.%d.mlp.down_proj.weight", p, l);
        if (mc->mlp_bias) ADD(C, 0, 0, "%s.%d.mlp.down_proj.bias", p, l);
    }
    ADD(C, 0, 0, "model.norm.weight");
    if (mc->num_labels > 0)
        ADD(mc->num_labels, C, 1, "score.weight"); /* sequence classification: no LM head */
    else if (!mc->tie_word_embeddings)
        ADD(V, C, 1, "lm_head.weight");
#undef ADD
    return DS_OK;
}

void param_table_free(ParamTable *pt)
{
    free(pt->items);
    memset(pt, 0, sizeof(*pt));
}

const ParamInfo *param_table_find(const ParamTable *pt, const char *name)
{
    for (int i = 0; i < pt->count; i++)
        if (strcmp(pt->items[i].name, name) == 0) return &pt->items[i];
    return NULL;
}

/* ---- tensor-parallel layout ------------------------------------------------------------- */

int model_tp_check(const ModelConfig *mc, int tp, const char *where)
{
    if (tp <= 1) return DS_OK;
    const struct {
        const char *name;
        int value;
    } split[] = {
        {"num_attention_heads", mc->num_heads},
        {"intermediate_size", mc->intermediate_size},
        {"vocab_size", mc->vocab_size}, /* not padded: exports keep the model's own shapes */
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(split); i++)
        if (split[i].value % tp != 0)
            return ds_error(DS_ERR_INPUT,
                            "parallel.tp: %d does not divide the model's %s %d (%s); choose a "
                            "tp that divides it",
                            tp, split[i].name, split[i].value, where);
    if (mc->num_kv_heads % tp != 0 && tp % mc->num_kv_heads != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.tp: %d neither divides the model's num_key_value_heads %d nor "
                        "is a multiple of it (%s)",
                        tp, mc->num_kv_heads, where);
    return DS_OK;
}

int param_table_build_tp(const ModelConfig *mc, int tp_rank, int tp_size, ParamTable *pt)
{
    DS_TRY(param_table_build(mc, pt));
    if (tp_size <= 1) return DS_OK;
    const int kv_share = mc->num_kv_heads % tp_size == 0 ? 1 : tp_size / mc->num_kv_heads;
    pt->total = 0;
    for (int i = 0; i < pt->count; i++) {
        ParamInfo *p = &pt->items[i];
        const char *n = p->name;
        int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
        if (strstr(n, ".k_proj.") || strstr(n, ".v_proj.")) {
            p->split_dim = 0;
            const int64_t kv_per_rank = kv_share > 1 ? 1 : mc->num_kv_heads / tp_size;
            p->slice_len = rows / mc->num_kv_heads * kv_per_rank;
            p->slice_start = (int64_t)(tp_rank / kv_share) * p->slice_len;
            p->tp_copy = tp_rank % kv_share != 0;
        } else if (strstr(n, ".q_proj.") || strstr(n, ".gate_proj.") || strstr(n, ".up_proj.") ||
                   strcmp(n, "model.embed_tokens.weight") == 0 ||
                   strcmp(n, "lm_head.weight") == 0) {
            p->split_dim = 0; /* column parallel, or vocab parallel */
            p->slice_len = rows / tp_size;
            p->slice_start = tp_rank * p->slice_len;
        } else if (p->ndim == 2 && (strstr(n, ".o_proj.") || strstr(n, ".down_proj."))) {
            p->split_dim = 1; /* row parallel */
            p->slice_len = cols / tp_size;
            p->slice_start = tp_rank * p->slice_len;
        } else {
            p->tp_copy = tp_rank != 0; /* norms, o/down biases, a classification head */
        }
        p->numel = p->split_dim == 0   ? (size_t)(p->slice_len * cols)
                   : p->split_dim == 1 ? (size_t)(rows * p->slice_len)
                                       : (size_t)(rows * cols);
        p->offset = pt->total;
        pt->total += DS_ALIGN_UP(p->numel, PARAM_ALIGN_BYTES / sizeof(float));
    }
    return DS_OK;
}

