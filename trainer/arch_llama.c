/* arch_llama.c: the Llama and Qwen2 architectures (LlamaForCausalLM, Qwen2ForCausalLM and their
 * sequence classifiers): their table of tensors, their config.json fields, and their decoder
 * layer (grouped-query attention with rotary embeddings, a SwiGLU MLP), forward and backward
 * side by side in the same order. The two differ only in which biases they carry and in their
 * config.json fields; their layer is the same code. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../checkpoint/hf_model.h"
#include "common.h"
#include "model_layers.h"

/* ---- the table -------------------------------------------------------------------------- */

static int64_t dim_q(const ModelConfig *mc)
{
    return (int64_t)mc->num_heads * mc->head_dim;
}
static int64_t dim_kv(const ModelConfig *mc)
{
    return (int64_t)mc->num_kv_heads * mc->head_dim;
}
static int when_qkv_bias(const ModelConfig *mc, int l)
{
    return mc->qkv_bias;
}
static int when_o_bias(const ModelConfig *mc, int l)
{
    return mc->o_bias;
}
static int when_mlp_bias(const ModelConfig *mc, int l)
{
    return mc->mlp_bias;
}

#define LW(field) offsetof(LayerWeights, field)
static const ArchTensor llama_tensors[] = {
    ARCH_TENSORS_EMBED,
    {"input_layernorm.weight", SCOPE_LAYER, dim_hidden, NULL, NULL, TP_REPLICATED, 0, INIT_ONES,
     LW(ln1)},
    {"self_attn.q_proj.weight", SCOPE_LAYER, dim_q, dim_hidden, NULL, TP_COLUMN, 1, INIT_NORMAL,
     LW(wq)},
    {"self_attn.q_proj.bias", SCOPE_LAYER, dim_q, NULL, when_qkv_bias, TP_COLUMN, 0, INIT_ZEROS,
     LW(bq)},
    {"self_attn.k_proj.weight", SCOPE_LAYER, dim_kv, dim_hidden, NULL, TP_KV_HEADS, 1, INIT_NORMAL,
     LW(wk)},
    {"self_attn.k_proj.bias", SCOPE_LAYER, dim_kv, NULL, when_qkv_bias, TP_KV_HEADS, 0, INIT_ZEROS,
     LW(bk)},
    {"self_attn.v_proj.weight", SCOPE_LAYER, dim_kv, dim_hidden, NULL, TP_KV_HEADS, 1, INIT_NORMAL,
     LW(wv)},
    {"self_attn.v_proj.bias", SCOPE_LAYER, dim_kv, NULL, when_qkv_bias, TP_KV_HEADS, 0, INIT_ZEROS,
     LW(bv)},
    {"self_attn.o_proj.weight", SCOPE_LAYER, dim_hidden, dim_q, NULL, TP_ROW, 1, INIT_NORMAL,
     LW(wo)},
    {"self_attn.o_proj.bias", SCOPE_LAYER, dim_hidden, NULL, when_o_bias, TP_REPLICATED, 0,
     INIT_ZEROS, LW(bo)},
    {"post_attention_layernorm.weight", SCOPE_LAYER, dim_hidden, NULL, NULL, TP_REPLICATED, 0,
     INIT_ONES, LW(ln2)},
    {"mlp.gate_proj.weight", SCOPE_LAYER, dim_intermediate, dim_hidden, NULL, TP_COLUMN, 1,
     INIT_NORMAL, LW(wgate)},
    {"mlp.gate_proj.bias", SCOPE_LAYER, dim_intermediate, NULL, when_mlp_bias, TP_COLUMN, 0,
     INIT_ZEROS, LW(bgate)},
    {"mlp.up_proj.weight", SCOPE_LAYER, dim_intermediate, dim_hidden, NULL, TP_COLUMN, 1,
     INIT_NORMAL, LW(wup)},
    {"mlp.up_proj.bias", SCOPE_LAYER, dim_intermediate, NULL, when_mlp_bias, TP_COLUMN, 0,
     INIT_ZEROS, LW(bup)},
    {"mlp.down_proj.weight", SCOPE_LAYER, dim_hidden, dim_intermediate, NULL, TP_ROW, 1,
     INIT_NORMAL, LW(wdown)},
    {"mlp.down_proj.bias", SCOPE_LAYER, dim_hidden, NULL, when_mlp_bias, TP_REPLICATED, 0,
     INIT_ZEROS, LW(bdown)},
    ARCH_TENSORS_HEAD,
};
#undef LW

/* ---- config.json ------------------------------------------------------------------------ */

static int llama_parse_config(const HfJson *j, ModelConfig *mc)
{
    int attention_bias = 0;
    DS_TRY(hf_json_bool(j, "attention_bias", 0, &attention_bias));
    mc->qkv_bias = mc->o_bias = attention_bias;
    return hf_json_bool(j, "mlp_bias", 0, &mc->mlp_bias);
}

static int qwen2_parse_config(const HfJson *j, ModelConfig *mc)
{
    int sliding = 0;
    DS_TRY(hf_json_bool(j, "use_sliding_window", 0, &sliding));
    if (sliding)
        return ds_error(DS_ERR_INPUT,
                        "%s: use_sliding_window: true is not supported (sliding-window "
                        "attention); set it to false",
                        j->file);
    mc->qkv_bias = 1; /* Qwen2's q, k, v always carry biases; o and the MLP never */
    mc->o_bias = 0;
    mc->mlp_bias = 0;
    return DS_OK;
}

static void llama_write_config(cJSON *root, const ModelConfig *mc)
{
    cJSON_AddBoolToObject(root, "attention_bias", mc->qkv_bias);
    cJSON_AddBoolToObject(root, "mlp_bias", mc->mlp_bias);
}

static void qwen2_write_config(cJSON *root, const ModelConfig *mc)
{
    cJSON_AddBoolToObject(root, "use_sliding_window", 0);
}

static int llama_tp_check(const ModelConfig *mc, int tp, const char *where)
{
    const ArchSplit split[] = {
        {"num_attention_heads", mc->num_heads},
        {"intermediate_size", mc->intermediate_size},
        {"vocab_size", mc->vocab_size}, /* not padded: exports keep the model's own shapes */
    };
    DS_TRY(arch_tp_divides(split, (int)DS_ARRAY_LEN(split), tp, where));
    if (mc->num_kv_heads % tp != 0 && tp % mc->num_kv_heads != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.tp: %d neither divides the model's num_key_value_heads %d nor "
                        "is a multiple of it (%s)",
                        tp, mc->num_kv_heads, where);
    return DS_OK;
}

/* ---- activations ------------------------------------------------------------------------ */

/* What one layer's forward saves for its backward. */
typedef struct LlamaLayerActs {
    Act *ln1;         /* [N, C] */
    float *ln1_rstd;  /* [N] */
    Act *q, *k, *v;   /* [N, H*D], [N, KVH*D] x2, after rotary */
    Act *att;         /* [N, H*D] attention output before o_proj */
    float *lse;       /* [B, H, T] */
    float *resid_mid; /* [N, C] after the attention residual add */
    Act *ln2;         /* [N, C] */
    float *ln2_rstd;  /* [N] */
    Act *gate, *up;   /* [N, I] */
    Act *act;         /* [N, I] silu(gate) * up */
} LlamaLayerActs;

typedef struct LlamaActs {
    Act *dq, *datt;          /* [N, H*D] backward scratch */
    Act *dk, *dv;            /* [N, KVH*D] */
    Act *dgate, *dup, *dact; /* [N, I] */
    LlamaLayerActs layers[]; /* [num_layers] */
} LlamaActs;

static size_t llama_act_bytes(const ModelConfig *mc)
{
    return sizeof(LlamaActs) + (size_t)mc->num_layers * sizeof(LlamaLayerActs);
}

static void llama_arena_layout(Model *m, ArenaCursor *c)
{
    /* this rank's share of heads and intermediate size (all of it when tp = 1) */
    const size_t N = (size_t)m->B * m->T, C = m->cfg.hidden_size, I = m->tp_inter;
    const size_t QD = (size_t)m->tp_heads * m->cfg.head_dim;
    const size_t KVD = (size_t)m->tp_kv_heads * m->cfg.head_dim;
    const size_t lse = (size_t)m->B * m->tp_heads * m->T;
    LlamaActs *a = m->act->layers;
    const int mode = m->cfg.activation_checkpointing;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        LlamaLayerActs *L = &a->layers[l];
        if (mode == CKPT_FULL && l > 0) {
            /* checkpointing: every layer keeps its own input (model.c); the rest is layer 0's
             * working set, shared by all layers (forward overwrites it, backward recomputes
             * into it) */
            *L = a->layers[0];
            continue;
        }
        if (mode == CKPT_SELECTIVE && l > 0) {
            /* selective: the norms' outputs and the MLP's activation are layer 0's, shared
             * (llama_layer_recompute refills them); the rest is the layer's own */
            L->ln1 = a->layers[0].ln1;
            L->ln2 = a->layers[0].ln2;
            L->act = a->layers[0].act;
        } else {
            L->ln1 = arena_take_act(m, c, N * C);
            L->ln2 = arena_take_act(m, c, N * C);
            L->act = arena_take_act(m, c, N * I);
        }
        L->ln1_rstd = arena_take_f32(c, N);
        L->q = arena_take_act(m, c, N * QD);
        L->k = arena_take_act(m, c, N * KVD);
        L->v = arena_take_act(m, c, N * KVD);
        L->att = arena_take_act(m, c, N * QD);
        L->lse = arena_take_f32(c, lse);
        L->resid_mid = arena_take_f32(c, N * C);
        L->ln2_rstd = arena_take_f32(c, N);
        L->gate = arena_take_act(m, c, N * I);
        L->up = arena_take_act(m, c, N * I);
    }
    a->dq = arena_take_act(m, c, N * QD);
    a->datt = arena_take_act(m, c, N * QD);
    a->dk = arena_take_act(m, c, N * KVD);
    a->dv = arena_take_act(m, c, N * KVD);
    a->dgate = arena_take_act(m, c, N * I);
    a->dup = arena_take_act(m, c, N * I);
    a->dact = arena_take_act(m, c, N * I);
}

/* ---- the layer -------------------------------------------------------------------------- */

/* Decoder layer l from its input m->act->resid_in[l] into resid_out. With resid_out NULL it
 * stops once everything backward reads is there (after the MLP's activation): that is the
 * recomputation of activation checkpointing, which so skips the down projection and its
 * all-reduce on every tensor-parallel rank alike, and otherwise issues the same ops and the same
 * collectives in the same order as the forward did (hence the same values, bit for bit). */
static void llama_layer_forward(Model *m, int l, float *resid_out)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    /* H, KVH, I: this rank's share under tensor parallelism (the full sizes when tp = 1) */
    const int B = m->B, T = m->T, N = B * T, C = c->hidden_size, I = m->tp_inter;
    const int H = m->tp_heads, KVH = m->tp_kv_heads, D = c->head_dim;
    const int QD = H * D, KVD = KVH * D;
    LlamaLayerActs *L = &((LlamaActs *)a->layers)->layers[l];
    const float *resid_in = a->resid_in[l];
    const LayerWeights *w = &m->w.layers[l];
    /* attention block */
    be->rmsnorm_forward(be, L->ln1, L->ln1_rstd, resid_in, w->ln1, N, C, c->rms_norm_eps);
    be->matmul_forward(be, L->q, L->ln1, w->wq, w->bq, N, C, QD);
    be->matmul_forward(be, L->k, L->ln1, w->wk, w->bk, N, C, KVD);
    be->matmul_forward(be, L->v, L->ln1, w->wv, w->bv, N, C, KVD);
    be->rope_forward(be, L->q, m->rope_cos, m->rope_sin, B, T, H, D);
    be->rope_forward(be, L->k, m->rope_cos, m->rope_sin, B, T, KVH, D);
    be->attention_forward(be, L->att, L->lse, L->q, L->k, L->v, B, T, H, KVH, D);
    /* row parallel: partial sums over this rank's heads; one rank adds the bias */
    be->matmul_forward(be, a->tmp, L->att, w->wo, m->tp_rank == 0 ? w->bo : NULL, N, QD, C);
    model_tp_reduce_act(m, a->tmp, (size_t)N * C);
    /* the residual add and the MLP block's norm */
    be->add_rmsnorm_forward(be, L->resid_mid, L->ln2, L->ln2_rstd, resid_in, a->tmp, w->ln2, N, C,
                            c->rms_norm_eps);
    /* MLP block */
    be->matmul_forward(be, L->gate, L->ln2, w->wgate, w->bgate, N, C, I);
    be->matmul_forward(be, L->up, L->ln2, w->wup, w->bup, N, C, I);
    be->swiglu_forward(be, L->act, L->gate, L->up, (size_t)N * I);
    if (!resid_out) return;
    be->matmul_forward(be, a->tmp, L->act, w->wdown, m->tp_rank == 0 ? w->bdown : NULL, N, I, C);
    model_tp_reduce_act(m, a->tmp, (size_t)N * C);
    be->add(be, resid_out, L->resid_mid, a->tmp, (size_t)N * C);
}

/* Selective checkpointing: layer l's norm outputs and MLP activation, which the layers share,
 * again from its input, its resid_mid and its gate and up, by the ops its forward used (the
 * fused add + norm gives rmsnorm_forward's bits for the sum it writes: ops.h). */
static void llama_layer_recompute(Model *m, int l)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    const int N = m->B * m->T, C = c->hidden_size, I = m->tp_inter;
    LlamaLayerActs *L = &((LlamaActs *)m->act->layers)->layers[l];
    const LayerWeights *w = &m->w.layers[l];
    be->rmsnorm_forward(be, L->ln1, L->ln1_rstd, m->act->resid_in[l], w->ln1, N, C,
                        c->rms_norm_eps);
    be->rmsnorm_forward(be, L->ln2, L->ln2_rstd, L->resid_mid, w->ln2, N, C, c->rms_norm_eps);
    be->swiglu_forward(be, L->act, L->gate, L->up, (size_t)N * I);
}

/* Backward of layer l: dresid (and its Act copy) holds the gradient of the layer's output on
 * entry and of its input on return; weight gradients accumulate into m->g. */
static void llama_layer_backward(Model *m, int l)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    LlamaActs *s = a->layers;
    const int B = m->B, T = m->T, N = B * T, C = c->hidden_size, I = m->tp_inter;
    const int H = m->tp_heads, KVH = m->tp_kv_heads, D = c->head_dim;
    const int QD = H * D, KVD = KVH * D;
    const size_t NC = (size_t)N * C;
    LlamaLayerActs *L = &s->layers[l];
    const LayerWeights *w = &m->w.layers[l];
    LayerWeights *g = &m->g.layers[l];
    /* MLP block */
    be->matmul_backward(be, s->dact, g->wdown, g->bdown, a->dresid_act, L->act, w->wdown, N, I, C,
                        0);
    be->swiglu_backward(be, s->dgate, s->dup, s->dact, L->gate, L->up, (size_t)N * I);
    be->matmul_backward(be, a->dln, g->wgate, g->bgate, s->dgate, L->ln2, w->wgate, N, C, I, 0);
    be->matmul_backward(be, a->dln, g->wup, g->bup, s->dup, L->ln2, w->wup, N, C, I, 1);
    model_tp_reduce_act(m, a->dln, NC); /* column parallel: sum over the ranks' slices */
    be->rmsnorm_backward(be, a->dresid, a->dresid_act, g->ln2, a->dln, L->resid_mid, w->ln2,
                         L->ln2_rstd, N, C);
    /* attention block: dresid is now the gradient of resid_mid */
    be->matmul_backward(be, s->datt, g->wo, g->bo, a->dresid_act, L->att, w->wo, N, QD, C, 0);
    be->attention_backward(be, s->dq, s->dk, s->dv, s->datt, L->att, L->lse, L->q, L->k, L->v, B, T,
                           H, KVH, D);
    be->rope_backward(be, s->dq, m->rope_cos, m->rope_sin, B, T, H, D);
    be->rope_backward(be, s->dk, m->rope_cos, m->rope_sin, B, T, KVH, D);
    be->matmul_backward(be, a->dln, g->wq, g->bq, s->dq, L->ln1, w->wq, N, C, QD, 0);
    be->matmul_backward(be, a->dln, g->wk, g->bk, s->dk, L->ln1, w->wk, N, C, KVD, 1);
    be->matmul_backward(be, a->dln, g->wv, g->bv, s->dv, L->ln1, w->wv, N, C, KVD, 1);
    model_tp_reduce_act(m, a->dln, NC);
    /* the embedding's backward reads dresid itself: layer 0 needs no Act copy */
    be->rmsnorm_backward(be, a->dresid, l > 0 ? a->dresid_act : NULL, g->ln1, a->dln,
                         a->resid_in[l], w->ln1, L->ln1_rstd, N, C);
}

/* ---- the architectures ------------------------------------------------------------------ */

const Architecture arch_llama = {
    .id = ARCH_LLAMA,
    .name = "LlamaForCausalLM",
    .classifier_name = "LlamaForSequenceClassification",
    .model_type = "llama",
    .default_max_positions = 2048,
    .tensors = llama_tensors,
    .n_tensors = (int)DS_ARRAY_LEN(llama_tensors),
    .rope_dim = dim_head,
    .parse_config = llama_parse_config,
    .write_config = llama_write_config,
    .check = NULL,
    .tp_check = llama_tp_check,
    .act_bytes = llama_act_bytes,
    .arena_layout = llama_arena_layout,
    .layer_forward = llama_layer_forward,
    .layer_backward = llama_layer_backward,
    .layer_recompute = llama_layer_recompute,
};

/* Qwen2: Llama's layer and table; q, k and v always carry biases (config.json says nothing of
 * them), sliding-window attention is refused. */
const Architecture arch_qwen2 = {
    .id = ARCH_QWEN2,
    .name = "Qwen2ForCausalLM",
    .classifier_name = "Qwen2ForSequenceClassification",
    .model_type = "qwen2",
    .default_max_positions = 32768,
    .tensors = llama_tensors,
    .n_tensors = (int)DS_ARRAY_LEN(llama_tensors),
    .rope_dim = dim_head,
    .parse_config = qwen2_parse_config,
    .write_config = qwen2_write_config,
    .check = NULL,
    .tp_check = llama_tp_check,
    .act_bytes = llama_act_bytes,
    .arena_layout = llama_arena_layout,
    .layer_forward = llama_layer_forward,
    .layer_backward = llama_layer_backward,
    .layer_recompute = llama_layer_recompute,
};
