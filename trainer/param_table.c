/* param_table.c: the model's shape (presets, checks), the registry of architectures, and the
 * parameter table built from an architecture's table: every tensor once, with its Hugging Face
 * name, full shape, tensor-parallel slice and flat offset. Nothing here knows a tensor by its
 * name: names, shapes, splits and bindings all come from the architecture's table. Part of the
 * base layer (param_table.h): checkpoint/ and data/ may use it; it includes nothing else of
 * trainer/ (the architectures' files are linked in, not included). */
#include "param_table.h"

#include <stdint.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- architectures ------------------------------------------------------------------------ */

static const Architecture *const architectures[] = {&arch_llama, &arch_qwen2, &arch_deepseek_v2,
                                                   &arch_deepseek_v3};

const Architecture *model_architecture(ModelArch id)
{
    for (size_t i = 0; i < DS_ARRAY_LEN(architectures); i++)
        if (architectures[i]->id == id) return architectures[i];
    return NULL;
}

const Architecture *model_architecture_at(int i)
{
    return i >= 0 && (size_t)i < DS_ARRAY_LEN(architectures) ? architectures[i] : NULL;
}

const char *model_arch_name(ModelArch arch)
{
    const Architecture *a = model_architecture(arch);
    return a ? a->name : "unknown";
}

int64_t dim_hidden(const ModelConfig *mc) { return mc->hidden_size; }
int64_t dim_vocab(const ModelConfig *mc) { return mc->vocab_size; }
int64_t dim_labels(const ModelConfig *mc) { return mc->num_labels; }
int64_t dim_intermediate(const ModelConfig *mc) { return mc->intermediate_size; }
int64_t dim_head(const ModelConfig *mc) { return mc->head_dim; }
int when_lm_head(const ModelConfig *mc, int layer) { return mc->num_labels <= 0 && !mc->tie_word_embeddings; }
int when_classifier(const ModelConfig *mc, int layer) { return mc->num_labels > 0; }

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

/* DeepSeek shapes: "tiny-moe", a byte-level DeepSeek-V3-shaped model (a q latent, sigmoid
 * routing over groups with the score correction, a shared expert, the first layer dense) for
 * tests and small from-scratch runs; "deepseek-v2-lite", the published DeepSeek-V2-Lite. */
static int preset_deepseek(const char *name, ModelConfig *mc)
{
    preset_base(mc);
    if (strcmp(name, "tiny-moe") == 0) {
        mc->arch = ARCH_DEEPSEEK_V3;
        mc->vocab_size = 320;
        mc->hidden_size = 128;
        mc->intermediate_size = 384;
        mc->num_layers = 4;
        mc->num_heads = mc->num_kv_heads = 4;
        mc->max_position_embeddings = 2048;
        mc->bos_token_id = 256;
        mc->eos_token_id = 257;
        mc->rms_norm_eps = 1e-6f;
        mc->q_lora_rank = 64;
        mc->kv_lora_rank = 64;
        mc->qk_nope_head_dim = 32;
        mc->qk_rope_head_dim = 16;
        mc->v_head_dim = 32;
        mc->n_routed_experts = 16;
        mc->n_shared_experts = 1;
        mc->num_experts_per_tok = 4;
        mc->moe_intermediate_size = 64;
        mc->first_k_dense_replace = 1;
        mc->n_group = 4;
        mc->topk_group = 2;
        mc->norm_topk_prob = 1;
        mc->routed_scaling_factor = 2.5;
        mc->scoring = MOE_SIGMOID;
        mc->topk_method = MOE_NOAUX_TC;
    } else if (strcmp(name, "deepseek-v2-lite") == 0) {
        mc->arch = ARCH_DEEPSEEK_V2;
        mc->vocab_size = 102400;
        mc->hidden_size = 2048;
        mc->intermediate_size = 10944;
        mc->num_layers = 27;
        mc->num_heads = mc->num_kv_heads = 16;
        mc->max_position_embeddings = 163840;
        mc->bos_token_id = 100000;
        mc->eos_token_id = 100001;
        mc->kv_lora_rank = 512;
        mc->qk_nope_head_dim = 128;
        mc->qk_rope_head_dim = 64;
        mc->v_head_dim = 128;
        mc->n_routed_experts = 64;
        mc->n_shared_experts = 2;
        mc->num_experts_per_tok = 6;
        mc->moe_intermediate_size = 1408;
        mc->first_k_dense_replace = 1;
        mc->routed_scaling_factor = 1.0;
        mc->scoring = MOE_SOFTMAX;
        mc->topk_method = MOE_GREEDY;
        mc->n_group = mc->topk_group = 1;
        mc->rope_type = ROPE_YARN;
        mc->rope_factor = 40;
        mc->rope_original_max_position = 4096;
        mc->rope_beta_fast = 32;
        mc->rope_beta_slow = 1;
        mc->rope_mscale = mc->rope_mscale_all_dim = 0.707;
        mc->rope_truncate = 1;
    } else {
        return 0;
    }
    mc->moe_layer_freq = 1;
    mc->rope_interleave = 1;
    mc->head_dim = mc->qk_rope_head_dim;
    return 1;
}

int model_preset(const char *name, ModelConfig *mc)
{
    if (preset_deepseek(name, mc)) return DS_OK;
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
    strncat(known, ", tiny-moe, deepseek-v2-lite", sizeof(known) - strlen(known) - 1);
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
    const Architecture *arch = model_architecture(mc->arch);
    if (!arch) return ds_error(DS_ERR_INPUT, "%s: architecture %d is not known", where, (int)mc->arch);
    return arch->check ? arch->check(mc, where) : DS_OK;
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

/* The table's entries in flat-buffer order (Architecture): emit(e, layer, expert) for each
 * tensor that exists; stops at the first error. */
typedef int (*TableVisit)(void *ctx, const ArchTensor *t, int layer, int expert);

static int table_walk(const ModelConfig *mc, const Architecture *arch, TableVisit visit, void *ctx)
{
    const ArchTensor *t = arch->tensors;
    const int n = arch->n_tensors;
    int first_layer = 0, after_layers = n;
    while (first_layer < n && t[first_layer].scope == SCOPE_MODEL)
        first_layer++;
    after_layers = first_layer;
    while (after_layers < n && t[after_layers].scope != SCOPE_MODEL)
        after_layers++;
    for (int i = 0; i < first_layer; i++)
        if (!t[i].when || t[i].when(mc, -1)) DS_TRY(visit(ctx, &t[i], -1, -1));
    for (int l = 0; l < mc->num_layers; l++) {
        for (int i = first_layer; i < after_layers;) {
            if (t[i].scope == SCOPE_LAYER) {
                if (!t[i].when || t[i].when(mc, l)) DS_TRY(visit(ctx, &t[i], l, -1));
                i++;
                continue;
            }
            int j = i; /* a run of expert tensors, repeated for each expert */
            while (j < after_layers && t[j].scope == SCOPE_EXPERT)
                j++;
            const int experts = (t[i].when && !t[i].when(mc, l)) ? 0 : mc->n_routed_experts;
            for (int e = 0; e < experts; e++)
                for (int k = i; k < j; k++)
                    DS_TRY(visit(ctx, &t[k], l, e));
            i = j;
        }
    }
    for (int i = after_layers; i < n; i++) {
        if (t[i].scope != SCOPE_MODEL)
            return ds_error(DS_ERR_INTERNAL, "%s: table: %s: layer entries must be contiguous",
                            arch->name, t[i].name);
        if (!t[i].when || t[i].when(mc, -1)) DS_TRY(visit(ctx, &t[i], -1, -1));
    }
    return DS_OK;
}

/* Tensors layer l holds, from the table alone (an expert run counts once per expert). */
static int64_t layer_count(const ModelConfig *mc, const Architecture *arch, int l)
{
    int64_t n = 0, experts = mc->n_routed_experts > 0 ? mc->n_routed_experts : 0;
    for (int i = 0; i < arch->n_tensors; i++) {
        const ArchTensor *t = &arch->tensors[i];
        if (t->scope == SCOPE_LAYER && (!t->when || t->when(mc, l))) n++;
        if (t->scope == SCOPE_EXPERT && (!t->when || t->when(mc, l))) n += experts;
    }
    return n;
}

static int64_t add_saturated(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

int64_t param_table_count(const ModelConfig *mc)
{
    const Architecture *arch = model_architecture(mc->arch);
    if (!arch || mc->num_layers < 0) return 0;
    int64_t count = 0;
    for (int i = 0; i < arch->n_tensors; i++) {
        const ArchTensor *t = &arch->tensors[i];
        if (t->scope == SCOPE_MODEL && (!t->when || t->when(mc, -1))) count++;
    }
    /* layers past PARAM_MAX_LAYERS (only a hostile config.json has them) count as the last one
     * walked, so a huge layer count costs nothing */
    const int walked = mc->num_layers < PARAM_MAX_LAYERS ? mc->num_layers : PARAM_MAX_LAYERS;
    int64_t last = 0;
    for (int l = 0; l < walked; l++)
        count = add_saturated(count, last = layer_count(mc, arch, l));
    int64_t rest;
    if (__builtin_mul_overflow(last, (int64_t)(mc->num_layers - walked), &rest)) return INT64_MAX;
    return add_saturated(count, rest);
}

typedef struct TableBuild {
    ParamTable *pt;
    int capacity;
    const ModelConfig *mc;
} TableBuild;

static int visit_add(void *ctx, const ArchTensor *t, int layer, int expert)
{
    TableBuild *b = ctx;
    char name[PARAM_NAME_MAX];
    if (t->scope == SCOPE_MODEL)
        snprintf(name, sizeof(name), "%s", t->name);
    else if (t->scope == SCOPE_LAYER)
        snprintf(name, sizeof(name), "model.layers.%d.%s", layer, t->name);
    else
        snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.%d.%s", layer, expert, t->name);
    DS_TRY(table_add(b->pt, b->capacity, name, t->rows(b->mc), t->cols ? t->cols(b->mc) : 0,
                     t->decay));
    ParamInfo *p = &b->pt->items[b->pt->count - 1];
    p->tp = t->tp;
    p->init = t->init;
    p->layer = layer;
    p->expert = expert;
    p->bind = t->bind;
    p->index = b->pt->count - 1;
    return DS_OK;
}

/* Flat offsets in table order, the routed experts' tensors after all the others: the ranks of
 * an expert-parallel group hold different experts but the same other tensors, and each of the
 * two regions is reduced over its own group (optim.c). */
static void table_place(ParamTable *pt)
{
    const size_t align = PARAM_ALIGN_BYTES / sizeof(float);
    pt->total = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) pt->experts_begin = pt->total;
        for (int i = 0; i < pt->count; i++) {
            ParamInfo *p = &pt->items[i];
            if ((p->expert >= 0) != pass) continue;
            p->offset = pt->total;
            pt->total += DS_ALIGN_UP(p->numel, align);
        }
    }
}

int model_param_counts(const ModelConfig *mc, double *total, double *active)
{
    ParamTable pt;
    DS_TRY(param_table_build(mc, &pt));
    const double share = mc->n_routed_experts > 0
                             ? (double)mc->num_experts_per_tok / mc->n_routed_experts
                             : 1.0;
    *total = *active = 0;
    for (int i = 0; i < pt.count; i++) {
        const ParamInfo *p = &pt.items[i];
        *total += (double)p->numel;
        *active += (double)p->numel * (p->expert >= 0 ? share : 1.0);
    }
    param_table_free(&pt);
    return DS_OK;
}

double model_flops_per_token(const ModelConfig *mc, int T)
{
    double total = 0, active = 0;
    if (model_param_counts(mc, &total, &active) != DS_OK) return 0;
    /* attention: scores and the weighted sum, forward and backward, over every position (the
     * dense models' 12 L d T: H heads of q/k and v head sizes) */
    const int mla = mc->kv_lora_rank > 0;
    const double dqk = mla ? mc->qk_nope_head_dim + mc->qk_rope_head_dim : mc->head_dim;
    const double dv = mla ? mc->v_head_dim : mc->head_dim;
    return 6.0 * active + 6.0 * mc->num_layers * (double)T * mc->num_heads * (dqk + dv);
}

int param_table_build(const ModelConfig *mc, ParamTable *pt)
{
    memset(pt, 0, sizeof(*pt));
    const Architecture *arch = model_architecture(mc->arch);
    if (!arch) return ds_error(DS_ERR_INPUT, "architecture %d is not known", (int)mc->arch);
    /* the count is checked before it sizes an allocation */
    if (mc->num_layers < 0 || mc->num_layers > PARAM_MAX_LAYERS)
        return ds_error(DS_ERR_INPUT, "num_hidden_layers: %d is more than %d", mc->num_layers,
                        PARAM_MAX_LAYERS);
    const int64_t count = param_table_count(mc);
    if (count >= PARAM_COUNT_MAX)
        return ds_error(DS_ERR_INPUT, "the model has more than %lld tensors",
                        (long long)PARAM_COUNT_MAX);
    pt->items = ds_calloc((size_t)(count ? count : 1), sizeof(ParamInfo));
    if (!pt->items) return DS_ERR_INTERNAL;
    TableBuild b = {pt, (int)count, mc};
    const int status = table_walk(mc, arch, visit_add, &b);
    if (status != DS_OK) {
        param_table_free(pt); /* a refused shape leaves nothing allocated */
        return status;
    }
    table_place(pt);
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
    const Architecture *arch = model_architecture(mc->arch);
    if (!arch) return ds_error(DS_ERR_INPUT, "%s: architecture %d is not known", where, (int)mc->arch);
    return arch->tp_check(mc, tp, where);
}

int param_table_build_tp(const ModelConfig *mc, int tp_rank, int tp_size, ParamTable *pt)
{
    return param_table_build_parallel(mc, tp_rank, tp_size, 0, 1, pt);
}

int model_ep_check(const ModelConfig *mc, int ep, const char *where)
{
    if (ep <= 1) return DS_OK;
    if (mc->n_routed_experts <= 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.ep: %d needs a mixture-of-experts model; %s has no routed "
                        "experts (set parallel.ep: 1)",
                        ep, where);
    if (mc->n_routed_experts % ep != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.ep: %d does not divide the model's n_routed_experts %d (%s); "
                        "choose an ep that divides it",
                        ep, mc->n_routed_experts, where);
    return DS_OK;
}

int param_table_build_parallel(const ModelConfig *mc, int tp_rank, int tp_size, int ep_rank,
                               int ep_size, ParamTable *pt)
{
    DS_TRY(param_table_build(mc, pt));
    if (ep_size > 1) {
        /* this rank's experts only; the other tensors, which every rank of the expert-parallel
         * group holds alike, are counted in global sums by its rank 0 */
        const int local = mc->n_routed_experts / ep_size, first = ep_rank * local;
        int kept = 0;
        for (int i = 0; i < pt->count; i++) {
            ParamInfo *p = &pt->items[i];
            if (p->expert >= 0 && (p->expert < first || p->expert >= first + local)) continue;
            if (p->expert < 0) p->tp_copy = ep_rank != 0;
            pt->items[kept++] = *p;
        }
        pt->count = kept;
    }
    if (tp_size <= 1) {
        table_place(pt);
        return DS_OK;
    }
    const int kv_share = mc->num_kv_heads % tp_size == 0 ? 1 : tp_size / mc->num_kv_heads;
    for (int i = 0; i < pt->count; i++) {
        ParamInfo *p = &pt->items[i];
        int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
        switch (p->tp) {
        case TP_KV_HEADS: {
            p->split_dim = 0;
            const int64_t kv_per_rank = kv_share > 1 ? 1 : mc->num_kv_heads / tp_size;
            p->slice_len = rows / mc->num_kv_heads * kv_per_rank;
            p->slice_start = (int64_t)(tp_rank / kv_share) * p->slice_len;
            p->tp_copy = p->tp_copy || tp_rank % kv_share != 0;
            break;
        }
        case TP_COLUMN:
        case TP_VOCAB:
            p->split_dim = 0;
            p->slice_len = rows / tp_size;
            p->slice_start = tp_rank * p->slice_len;
            break;
        case TP_ROW:
            if (p->ndim != 2)
                return ds_error(DS_ERR_INTERNAL, "%s: a row-parallel split needs a matrix",
                                p->name);
            p->split_dim = 1;
            p->slice_len = cols / tp_size;
            p->slice_start = tp_rank * p->slice_len;
            break;
        case TP_REPLICATED:
            p->tp_copy = p->tp_copy || tp_rank != 0;
            break;
        }
        p->numel = p->split_dim == 0   ? (size_t)(p->slice_len * cols)
                   : p->split_dim == 1 ? (size_t)(rows * p->slice_len)
                                       : (size_t)(rows * cols);
    }
    table_place(pt);
    return DS_OK;
}

/* transformers' yarn_get_mscale: 0.1 mscale ln(scale) + 1 for scale > 1, else 1. */
double model_yarn_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

double model_rope_attention_factor(const ModelConfig *mc)
{
    if (mc->rope_type != ROPE_YARN) return 1.0;
    if (mc->rope_attention_factor > 0) return mc->rope_attention_factor;
    if (mc->rope_mscale != 0 && mc->rope_mscale_all_dim != 0)
        return model_yarn_mscale(mc->rope_factor, mc->rope_mscale) /
               model_yarn_mscale(mc->rope_factor, mc->rope_mscale_all_dim);
    return model_yarn_mscale(mc->rope_factor, 1.0);
}

int model_is_mtp_tensor(const ModelConfig *mc, const char *name)
{
    static const char prefix[] = "model.layers.";
    if (mc->num_nextn_predict_layers <= 0 || strncmp(name, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *p = name + sizeof(prefix) - 1;
    long l = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 9; p++, digits++)
        l = l * 10 + (*p - '0');
    return digits > 0 && *p == '.' && l >= mc->num_layers &&
           l < (long)mc->num_layers + mc->num_nextn_predict_layers;
}

int arch_tp_divides(const ArchSplit *split, int n, int tp, const char *where)
{
    for (int i = 0; i < n; i++)
        if (split[i].value % tp != 0)
            return ds_error(DS_ERR_INPUT,
                            "parallel.tp: %d does not divide the model's %s %d (%s); choose a "
                            "tp that divides it",
                            tp, split[i].name, split[i].value, where);
    return DS_OK;
}
