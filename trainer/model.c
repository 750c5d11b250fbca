/* model.c: the decoder around its layers, for every architecture: embedding, the layers (each
 * architecture's own forward and backward, trainer/arch_*.c), final norm, the LM head or a
 * classification head, forward and backward side by side in the same order. Every buffer shaped
 * like the parameters (gradients, master weights, moments, Fisher) follows the parameter table
 * (param_table.c), and the weights are bound to the structs from it, never by name.
 * All activations live in one arena sized at model_init: a step allocates nothing. With
 * activation checkpointing the arena holds every layer's input but only one layer's working set,
 * which backward refills by running each layer's forward again. The LM head and the loss run over
 * the rows in chunks (lm_head_chunks): the logits of the whole micro-batch never exist. */
#include "model_layers.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* This rank's share of each split dimension. */
static void model_set_tp_dims(Model *m, int tp_rank, int tp_size)
{
    const ModelConfig *c = &m->cfg;
    m->tp_rank = tp_rank;
    m->tp_size = tp_size;
    m->tp_heads = c->num_heads / tp_size;
    /* kv heads fewer than tp: each rank holds one, shared by tp / KVH consecutive ranks */
    m->tp_kv_heads = c->num_kv_heads % tp_size == 0 ? c->num_kv_heads / tp_size : 1;
    m->tp_inter = c->intermediate_size / tp_size;
    m->tp_vocab = c->vocab_size / tp_size;
    m->tp_vocab_start = tp_rank * m->tp_vocab;
}

static void model_set_ep_dims(Model *m, int ep_rank, int ep_size)
{
    m->ep_rank = ep_rank;
    m->ep_size = ep_size;
    m->experts_local = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts / ep_size : 0;
    m->expert_first = ep_rank * m->experts_local;
}

/* The per-expert pointer arrays of MoE layers (LayerWeights.experts_*), one block a struct. */
static int layer_weights_alloc(const Model *m, ModelWeights *w)
{
    const int E = m->experts_local;
    if (E <= 0) return DS_OK;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        LayerWeights *L = &w->layers[l];
        float **block = ds_calloc((size_t)E * 3, sizeof(float *));
        if (!block) return DS_ERR_INTERNAL;
        L->expert_gate = block;
        L->expert_up = block + E;
        L->expert_down = block + 2 * E;
    }
    return DS_OK;
}

static void layer_weights_free(const Model *m, ModelWeights *w)
{
    for (int l = 0; w->layers && l < m->cfg.num_layers; l++)
        free(w->layers[l].expert_gate);
    free(w->layers);
    w->layers = NULL;
}

/* Point w's fields into base where the table binds each tensor. */
static void weights_bind(const Model *m, float *base, ModelWeights *w)
{
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        if (p->bind < 0) continue;
        char *holder = p->layer < 0 ? (char *)w : (char *)&w->layers[p->layer];
        if (p->expert < 0)
            *(float **)(holder + p->bind) = base + p->offset;
        else
            (*(float ***)(holder + p->bind))[p->expert - m->expert_first] = base + p->offset;
    }
    if (m->cfg.tie_word_embeddings && !w->lm_head) w->lm_head = w->embed;
}

/* ---- activations -------------------------------------------------------------------------- */

float *arena_take_f32(ArenaCursor *c, size_t count)
{
    float *p = c->base ? (float *)(c->base + c->used) : NULL;
    c->used += DS_ALIGN_UP(count * sizeof(float), 64);
    return p;
}

Act *arena_take_act(const Model *m, ArenaCursor *c, size_t count)
{
    Act *p = c->base ? (Act *)(c->base + c->used) : NULL;
    c->used += DS_ALIGN_UP(count * m->act_size, 64);
    return p;
}

/* Rows of the LM head computed at once. The head's logits and dlogits are the largest
 * activation (N x V: 2.1 GB for deepseek-coder-1.3b at 8 x 2048 in fp32), so they exist for R
 * rows at a time: R x V near LM_HEAD_CHUNK_FLOATS (256 MiB of fp32), R a multiple of 64 (whole
 * matmul tiles) and at least 64, at most N; 2048 rows for deepseek-coder-1.3b, 640 for
 * deepseek-llm-7b (V is this rank's slice: tensor parallelism takes more rows). The result
 * depends on the shapes only, so every run of a layout chunks alike (bitwise reproducible);
 * cfg.lm_head_chunk_rows overrides it. */
#define LM_HEAD_CHUNK_FLOATS ((size_t)64 << 20)
static int lm_head_rows(const Model *m)
{
    const size_t N = (size_t)m->B * m->T;
    if (m->cfg.num_labels > 0) return 0; /* a classification head: no LM logits */
    size_t rows = m->cfg.lm_head_chunk_rows > 0 ? (size_t)m->cfg.lm_head_chunk_rows : 0;
    if (rows == 0) {
        rows = LM_HEAD_CHUNK_FLOATS / (size_t)m->tp_vocab / 64 * 64;
        if (rows < 64) rows = 64;
    }
    return (int)(rows < N ? rows : N);
}

/* Lays the activations out from base (NULL: only counts); returns the bytes used. Every layer's
 * input, then the architecture's own activations (with activation checkpointing it keeps one
 * working set that all layers share), then the head's and backward's. */
static size_t arena_layout(Model *m, ModelActivations *a, unsigned char *base)
{
    /* this rank's share of the vocabulary (all of it when tp = 1) */
    const size_t N = (size_t)m->B * m->T, C = m->cfg.hidden_size;
    const size_t V = m->cfg.num_labels > 0 ? 0 : (size_t)m->tp_vocab; /* no LM logits */
    const size_t R = (size_t)lm_head_rows(m);
    const size_t L = m->cfg.num_labels > 0 ? (size_t)m->cfg.num_labels : 0;
    ArenaCursor c = {base, 0};
    for (int l = 0; l < m->cfg.num_layers; l++)
        a->resid_in[l] = arena_take_f32(&c, N * C);
    m->arch->arena_layout(m, &c);
    a->resid_out = arena_take_f32(&c, N * C);
    a->final_norm = arena_take_act(m, &c, N * C);
    a->final_rstd = arena_take_f32(&c, N);
    a->logits = arena_take_act(m, &c, R * V);
    a->tmp = arena_take_act(m, &c, N * C);
    a->dresid = arena_take_f32(&c, N * C);
    a->dresid_act = arena_take_act(m, &c, N * C);
    a->dln = arena_take_act(m, &c, N * C);
    a->cls_hidden = arena_take_act(m, &c, L ? (size_t)m->B * C : 0);
    a->cls_dhidden = arena_take_act(m, &c, L ? (size_t)m->B * C : 0);
    a->cls_logits = arena_take_act(m, &c, (size_t)m->B * L);
    a->ce_max = arena_take_f32(&c, m->tp_size > 1 ? R : 0);
    a->ce_stats = arena_take_f32(&c, m->tp_size > 1 ? 3 * R : 0);
    a->head_rows = (int)R;
    return c.used;
}

/* The activations' pointer structs (not the arena): the common ones, every layer's input, and
 * the architecture's own. */
static ModelActivations *activations_alloc(const Model *m)
{
    ModelActivations *a = ds_calloc(1, sizeof(ModelActivations));
    if (!a) return NULL;
    a->resid_in = ds_calloc((size_t)m->cfg.num_layers + 1, sizeof(float *));
    a->layers = ds_calloc(1, m->arch->act_bytes(&m->cfg));
    if (!a->resid_in || !a->layers) {
        free(a->resid_in);
        free(a->layers);
        free(a);
        return NULL;
    }
    return a;
}

static void activations_free(ModelActivations *a)
{
    if (!a) return;
    free(a->resid_in);
    free(a->layers);
    free(a);
}

/* Rotary tables as HF computes them: inverse frequencies in fp32, scaled per rope_type, angle
 * t * inv_freq in fp32. */
static void rope_tables(const ModelConfig *mc, int T, float *cos_out, float *sin_out)
{
    const int D = (int)model_architecture(mc->arch)->rope_dim(mc), half = D / 2;
    /* yarn: frequencies between the correction range's ends blend interpolation (divided by
     * factor) into extrapolation (unchanged); cos and sin are scaled by the attention factor */
    double yarn_low = 0.0, yarn_high = 1.0, scale = 1.0;
    if (mc->rope_type == ROPE_YARN) {
        const double base = mc->rope_theta, orig = mc->rope_original_max_position;
#define CORRECTION_DIM(rot) (D * log(orig / ((rot) * 2.0 * M_PI)) / (2.0 * log(base)))
        yarn_low = CORRECTION_DIM(mc->rope_beta_fast);
        yarn_high = CORRECTION_DIM(mc->rope_beta_slow);
#undef CORRECTION_DIM
        if (mc->rope_truncate) {
            yarn_low = floor(yarn_low);
            yarn_high = ceil(yarn_high);
        }
        yarn_low = yarn_low > 0.0 ? yarn_low : 0.0;
        yarn_high = yarn_high < D - 1 ? yarn_high : D - 1;
        if (yarn_low == yarn_high) yarn_high += 0.001;
        scale = model_rope_attention_factor(mc);
    }
    for (int i = 0; i < half; i++) {
        float inv_freq = (float)(1.0 / pow(mc->rope_theta, (double)(2 * i) / (double)D));
        if (mc->rope_type == ROPE_YARN) {
            float ramp = (float)(((double)i - yarn_low) / (yarn_high - yarn_low));
            ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
            const float extrapolation = 1.0f - ramp;
            inv_freq = (inv_freq / (float)mc->rope_factor) * (1.0f - extrapolation) +
                       inv_freq * extrapolation;
        } else if (mc->rope_type == ROPE_LINEAR) {
            inv_freq = (float)(inv_freq / mc->rope_factor);
        } else if (mc->rope_type == ROPE_LLAMA3) {
            double old_ctx = mc->rope_original_max_position;
            double low_wavelen = old_ctx / mc->rope_low_freq_factor;
            double high_wavelen = old_ctx / mc->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / inv_freq;
            if (wavelen > low_wavelen) {
                inv_freq = (float)(inv_freq / mc->rope_factor);
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_ctx / wavelen - mc->rope_low_freq_factor) /
                                (mc->rope_high_freq_factor - mc->rope_low_freq_factor);
                inv_freq = (float)((1.0 - smooth) * inv_freq / mc->rope_factor + smooth * inv_freq);
            }
        }
        for (int t = 0; t < T; t++) {
            float angle = (float)t * inv_freq;
            cos_out[(size_t)t * half + i] = (float)cos((double)angle) * (float)scale;
            sin_out[(size_t)t * half + i] = (float)sin((double)angle) * (float)scale;
        }
    }
}

int model_init(Model *m, const ModelConfig *mc, const Backend *be, int B, int T)
{
    return model_init_parallel(m, mc, be, B, T, NULL);
}

int model_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero,
                          ModelMemory *out)
{
    return model_memory_estimate_ep(mc, B, T, tp, dp, 1, zero, out);
}

/* train.activation_checkpointing: a mode the architecture has. */
static int checkpointing_check(const ModelConfig *mc, const Architecture *arch)
{
    if (mc->activation_checkpointing < CKPT_NONE || mc->activation_checkpointing > CKPT_SELECTIVE)
        return ds_error(DS_ERR_INPUT, "train.activation_checkpointing: unknown mode %d",
                        mc->activation_checkpointing);
    if (mc->activation_checkpointing == CKPT_SELECTIVE && !arch->layer_recompute)
        return ds_error(DS_ERR_INPUT,
                        "train.activation_checkpointing: selective is not offered for %s models "
                        "yet; use true (recompute each layer) or false",
                        arch->name);
    return DS_OK;
}

int model_memory_estimate_ep(const ModelConfig *mc, int B, int T, int tp, int dp, int ep,
                             int zero, ModelMemory *out)
{
    memset(out, 0, sizeof(*out));
    DS_TRY(model_tp_check(mc, tp, "model"));
    DS_TRY(model_ep_check(mc, ep, "model"));
    if (ep < 1 || dp % ep != 0)
        return ds_error(DS_ERR_INPUT, "parallel.ep: %d does not divide parallel.dp %d", ep, dp);
    Model m = {0};
    m.cfg = *mc;
    m.arch = model_architecture(mc->arch);
    if (!m.arch) return ds_error(DS_ERR_INPUT, "model: architecture %d is not known", (int)mc->arch);
    DS_TRY(checkpointing_check(mc, m.arch));
    m.B = B;
    m.T = T;
    m.act_size = sizeof(float); /* the CPU's activations */
    model_set_tp_dims(&m, 0, tp);
    model_set_ep_dims(&m, 0, ep);
    ModelActivations *a = activations_alloc(&m);
    if (!a) return DS_ERR_INTERNAL;
    m.act = a;
    int status = param_table_build_parallel(mc, 0, tp, 0, ep, &m.table);
    if (status == DS_OK) {
        /* the same sizes model_init_parallel and optim_init_sharded allocate: ZeRO shards over
         * the dp / ep ranks that hold the same experts */
        const size_t total = DS_ALIGN_UP(m.table.total, (size_t)64 * dp);
        out->params = total * sizeof(float);
        out->grads = total * sizeof(float);
        out->optimizer = 2 * (zero ? total / (dp / ep) : total) * sizeof(float);
        out->activations = arena_layout(&m, a, NULL);
        if (ep > 1 && m.arch->ep_bytes) out->activations += m.arch->ep_bytes(&m);
    }
    activations_free(a);
    param_table_free(&m.table);
    return status;
}

int model_init_parallel(Model *m, const ModelConfig *mc, const Backend *be, int B, int T,
                        const ProcessGrid *grid)
{
    memset(m, 0, sizeof(*m));
    m->cfg = *mc;
    m->be = be;
    m->B = B;
    m->T = T;
    m->act_size = be->act_size(be);
    m->arch = model_architecture(mc->arch);
    if (!m->arch) return ds_error(DS_ERR_INPUT, "model: architecture %d is not known", (int)mc->arch);
    DS_TRY(backend_check(be));
    DS_TRY(checkpointing_check(mc, m->arch));
    const int tp = grid ? grid->tp_size : 1, dp = grid ? grid->dp_size : 1;
    if (mc->moe_balance_alpha > 0 && !be->moe_balance)
        return ds_error(DS_ERR_INPUT,
                        "moe.balance_loss: the %s backend has no balance loss yet; set it to 0",
                        be->name);
    if (m->arch->needs_latent_ops && (!be->attention_forward_dv || !be->moe_route))
        return ds_error(DS_ERR_INPUT,
                        "model: %s needs multi-head latent attention and expert routing, which "
                        "the %s backend does not have yet; use device: cpu",
                        m->arch->name, be->name);
    DS_TRY(model_tp_check(mc, tp, mc->num_labels > 0 ? "classification model" : "model"));
    const int ep = grid ? grid->ep_size : 1;
    DS_TRY(model_ep_check(mc, ep, "model"));
    model_set_tp_dims(m, grid ? grid->tp_rank : 0, tp);
    model_set_ep_dims(m, grid ? grid->ep_rank : 0, ep);
    if (ep > 1) m->ep = &grid->ep;
    DS_TRY(param_table_build_parallel(mc, m->tp_rank, tp, m->ep_rank, ep, &m->table));
    /* equal, aligned ZeRO shards: the padding is zero and never trained */
    m->table.total = DS_ALIGN_UP(m->table.total, (size_t)64 * dp);
    if (tp > 1) {
        if (!be->embedding_forward_shard || !be->cross_entropy_shard_max)
            return ds_error(DS_ERR_INPUT, "parallel.tp: the %s backend has no vocab-parallel ops "
                                          "yet; use parallel.tp: 1 on it",
                            be->name);
        m->tp = &grid->tp;
        if (mc->num_kv_heads % tp != 0) {
            m->tp_kv = ds_calloc(1, sizeof(CommGroup));
            if (!m->tp_kv) return DS_ERR_INTERNAL;
            DS_TRY(comm_group_split(&grid->tp, m->tp_rank / (tp / mc->num_kv_heads), m->tp_rank,
                                    m->tp_kv));
        }
    }
    size_t N = (size_t)B * T;
    /* everything the ops touch comes from the backend's allocator (device memory on a GPU) */
    m->params = be->mem_alloc(be, m->table.total * sizeof(float));
    m->grads = be->mem_alloc(be, m->table.total * sizeof(float));
    m->w.layers = ds_calloc((size_t)mc->num_layers, sizeof(LayerWeights));
    m->g.layers = ds_calloc((size_t)mc->num_layers, sizeof(LayerWeights));
    m->act = activations_alloc(m);
    if (!m->params || !m->grads || !m->w.layers || !m->g.layers || !m->act) return DS_ERR_INTERNAL;
    /* mixed precision: the backend's bf16 working copy of the weights, refreshed by forward */
    if (be->weights_attach) DS_TRY(be->weights_attach(be, m->params, m->table.total));
    DS_TRY(layer_weights_alloc(m, &m->w));
    DS_TRY(layer_weights_alloc(m, &m->g));
    weights_bind(m, m->params, &m->w);
    weights_bind(m, m->grads, &m->g);

    m->arena_bytes = arena_layout(m, m->act, NULL);
    m->arena = be->mem_alloc(be, m->arena_bytes);
    const size_t rope_bytes = (size_t)T * (size_t)(m->arch->rope_dim(mc) / 2) * sizeof(float);
    m->rope_cos = be->mem_alloc(be, rope_bytes);
    m->rope_sin = be->mem_alloc(be, rope_bytes);
    m->act->dev_inputs = be->mem_alloc(be, N * sizeof(int32_t));
    m->act->dev_targets = be->mem_alloc(be, N * sizeof(int32_t));
    m->act->dev_weights = be->mem_alloc(be, N * sizeof(float));
    m->act->dev_losses = be->mem_alloc(be, N * sizeof(float));
    if (!m->act->dev_inputs || !m->act->dev_targets || !m->act->dev_weights ||
        !m->act->dev_losses)
        return DS_ERR_INTERNAL;
    m->inputs = ds_calloc(N, sizeof(int32_t));
    m->targets = ds_calloc(N, sizeof(int32_t));
    m->loss_weights = ds_calloc(N, sizeof(float));
    m->losses = ds_calloc(N, sizeof(float));
    m->cls_last = ds_calloc((size_t)B, sizeof(int32_t));
    m->cls_row = ds_calloc((size_t)mc->hidden_size, sizeof(float));
    if (!m->cls_last || !m->cls_row) return DS_ERR_INTERNAL;
    if (mc->n_routed_experts > 0 &&
        !(m->expert_tokens = ds_calloc((size_t)mc->num_layers * mc->n_routed_experts,
                                       sizeof(double))))
        return DS_ERR_INTERNAL;
    if (!m->arena || !m->rope_cos || !m->rope_sin || !m->inputs || !m->targets ||
        !m->loss_weights || !m->losses)
        return DS_ERR_INTERNAL;
    arena_layout(m, m->act, m->arena);
    if (m->ep && m->arch->ep_init) DS_TRY(m->arch->ep_init(m));
    float *host_cos = ds_malloc(rope_bytes), *host_sin = ds_malloc(rope_bytes);
    if (!host_cos || !host_sin) {
        free(host_cos);
        free(host_sin);
        return DS_ERR_INTERNAL;
    }
    rope_tables(mc, T, host_cos, host_sin);
    be->mem_to_device(be, m->rope_cos, host_cos, rope_bytes);
    be->mem_to_device(be, m->rope_sin, host_sin, rope_bytes);
    free(host_cos);
    free(host_sin);
    return DS_OK;
}

void model_free(Model *m)
{
    const Backend *be = m->be;
    if (be) {
        if (m->act) {
            be->mem_free(be, m->act->dev_inputs);
            be->mem_free(be, m->act->dev_targets);
            be->mem_free(be, m->act->dev_weights);
            be->mem_free(be, m->act->dev_losses);
        }
        if (be->weights_detach && m->params) be->weights_detach(be, m->params);
        be->mem_free(be, m->params);
        be->mem_free(be, m->grads);
        be->mem_free(be, m->arena);
        be->mem_free(be, m->rope_cos);
        be->mem_free(be, m->rope_sin);
    }
    if (m->ep_state && m->arch->ep_free) m->arch->ep_free(m);
    activations_free(m->act);
    layer_weights_free(m, &m->w);
    layer_weights_free(m, &m->g);
    free(m->inputs);
    free(m->targets);
    free(m->loss_weights);
    free(m->losses);
    free(m->cls_last);
    free(m->cls_row);
    free(m->expert_tokens);
    if (m->tp_kv) comm_group_free(m->tp_kv);
    free(m->tp_kv);
    param_table_free(&m->table);
    memset(m, 0, sizeof(*m));
}

/* splitmix64 + Box-Muller: a seeded normal stream, identical on every machine. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *state)
{
    return ((double)(splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Store element k of the full tensor into x (this rank's slice) when the slice holds it. */
static void slice_put(const ParamInfo *p, size_t cols, float *x, size_t k, float v)
{
    if (p->split_dim < 0) {
        x[k] = v;
        return;
    }
    const size_t r = k / cols, c = k % cols, s = (size_t)p->slice_start, n = (size_t)p->slice_len;
    if (p->split_dim == 0 && r >= s && r < s + n) x[(r - s) * cols + c] = v;
    if (p->split_dim == 1 && c >= s && c < s + n) x[r * n + (c - s)] = v;
}

void model_init_weights(Model *m, uint64_t seed, float std)
{
    /* values are drawn on the host, one tensor at a time, and copied to the backend's memory */
    size_t largest = 0;
    for (int i = 0; i < m->table.count; i++)
        if (m->table.items[i].numel > largest) largest = m->table.items[i].numel;
    float *x = ds_malloc(largest * sizeof(float));
    if (!x) return;
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        /* one stream per tensor, from the seed and the tensor's index in the whole model, so
         * that a tensor's values do not depend on how the table is split */
        const uint64_t state0 =
            seed * 0x100000001b3ull + (uint64_t)p->index * 0x9e3779b97f4a7c15ull;
        const int is_norm = p->init == INIT_ONES, is_bias = p->init == INIT_ZEROS;
        /* the whole tensor's stream is drawn; this rank keeps its tensor-parallel slice */
        const size_t cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
        const size_t full = (size_t)p->shape[0] * cols;
        /* splitmix64 advances its state by a constant, so pair j's state is known without
         * drawing the ones before it: the pairs are drawn in parallel, with the same values */
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < full; j += 2) {
            uint64_t state = state0 + (uint64_t)j * 0x9e3779b97f4a7c15ull;
            double u1 = uniform01(&state), u2 = uniform01(&state);
            double r = sqrt(-2.0 * log(u1));
            float z0 = (float)(r * cos(2.0 * M_PI * u2)), z1 = (float)(r * sin(2.0 * M_PI * u2));
            float v0 = is_norm ? 1.0f : is_bias ? 0.0f : std * z0;
            float v1 = is_norm ? 1.0f : is_bias ? 0.0f : std * z1;
            slice_put(p, cols, x, j, v0);
            if (j + 1 < full) slice_put(p, cols, x, j + 1, v1);
        }
        m->be->mem_to_device(m->be, m->params + p->offset, x, p->numel * sizeof(float));
    }
    free(x);
}

void model_zero_grad(Model *m)
{
    m->be->mem_zero(m->be, m->grads, m->table.total * sizeof(float));
}

/* ---- forward and backward ----------------------------------------------------------------- */

Act *model_act_at(const Model *m, const Act *x, size_t elems)
{
    return (Act *)((const unsigned char *)x + elems * m->act_size);
}

/* host[n] (fp32) = the Act tensor x[n] of backend memory. bf16 (act_size 2) is copied into the
 * front of host and widened in place from the end: element i's four bytes only cover bf16
 * elements i and up, already read. */
static void act_to_host(const Model *m, float *host, const Act *x, size_t n)
{
    m->be->mem_to_host(m->be, host, x, n * m->act_size);
    if (m->act_size == sizeof(float)) return;
    for (size_t i = n; i-- > 0;) {
        uint16_t h;
        memcpy(&h, (const unsigned char *)host + 2 * i, sizeof(h));
        host[i] = bf16_to_f32(h);
    }
}

/* Classification head on a->final_norm: gather each row's last non-padding position, logits
 * [B, L] = hidden @ score^T, cross-entropy against labels [B]. Rows move through the host
 * scratch row so that the same code runs on device memory. */
static double classify_forward(Model *m, const int32_t *labels, const float *weights,
                               float *logits_out)
{
    const Backend *be = m->be;
    ModelActivations *a = m->act;
    const int B = m->B, T = m->T, C = m->cfg.hidden_size, L = m->cfg.num_labels;
    const int pad = m->cfg.pad_token_id;
    for (int b = 0; b < B; b++) {
        int last = T - 1;
        if (pad >= 0) {
            last = 0;
            for (int t = 0; t < T; t++)
                if (m->inputs[(size_t)b * T + t] != pad) last = t;
        }
        m->cls_last[b] = last;
        be->mem_to_host(be, m->cls_row, model_act_at(m, a->final_norm, ((size_t)b * T + last) * C),
                        C * m->act_size);
        be->mem_to_device(be, model_act_at(m, a->cls_hidden, (size_t)b * C), m->cls_row,
                          C * m->act_size);
    }
    be->matmul_forward(be, a->cls_logits, a->cls_hidden, m->w.score, NULL, B, C, L);
    if (logits_out) act_to_host(m, logits_out, a->cls_logits, (size_t)B * L);
    if (!labels) return 0.0;
    if (labels != m->targets) memcpy(m->targets, labels, (size_t)B * sizeof(int32_t));
    if (weights != m->loss_weights) memcpy(m->loss_weights, weights, (size_t)B * sizeof(float));
    be->mem_to_device(be, a->dev_targets, m->targets, (size_t)B * sizeof(int32_t));
    be->mem_to_device(be, a->dev_weights, m->loss_weights, (size_t)B * sizeof(float));
    be->cross_entropy(be, a->dev_losses, a->cls_logits, a->dev_targets, a->dev_weights, B, L, 1);
    be->mem_to_host(be, m->losses, a->dev_losses, (size_t)B * sizeof(float));
    double loss = 0.0;
    for (int b = 0; b < B; b++) loss += (double)m->loss_weights[b] * m->losses[b];
    return loss;
}

/* Backward of the head: dscore += dlogits^T hidden; the gradient of the final norm's output is
 * zero except at each row's last position (written into a->dln). */
static void classify_backward(Model *m)
{
    const Backend *be = m->be;
    ModelActivations *a = m->act;
    const int B = m->B, T = m->T, C = m->cfg.hidden_size, L = m->cfg.num_labels;
    be->matmul_backward(be, a->cls_dhidden, m->g.score, NULL, a->cls_logits, a->cls_hidden,
                        m->w.score, B, C, L, 0);
    be->mem_zero(be, a->dln, (size_t)B * T * C * m->act_size);
    for (int b = 0; b < B; b++) {
        be->mem_to_host(be, m->cls_row, model_act_at(m, a->cls_dhidden, (size_t)b * C),
                        C * m->act_size);
        be->mem_to_device(be, model_act_at(m, a->dln, ((size_t)b * T + m->cls_last[b]) * C),
                          m->cls_row, C * m->act_size);
    }
}

/* ---- tensor-parallel reductions (nothing when tp = 1) ------------------------------------- */

/* A collective that fails inside a step leaves nothing to continue with: comm_fail prints the
 * message and takes the whole job down. */
void model_tp_reduce(const Model *m, float *x, size_t n, CommOp op)
{
    if (!m->tp) return;
    int status = comm_all_reduce(m->tp, x, n, COMM_F32, op);
    if (status != DS_OK) comm_fail(status);
}

void model_tp_reduce_act(const Model *m, Act *x, size_t n)
{
    if (!m->tp) return;
    const CommType type = m->act_size == sizeof(float) ? COMM_F32 : COMM_BF16;
    int status = comm_all_reduce(m->tp, x, n, type, COMM_SUM);
    if (status != DS_OK) comm_fail(status);
}

/* Softmax cross-entropy over logits split by vocabulary, for the chunk of rows [r0, r0 + rows)
 * that a->logits holds: global row maxima, then the sums of exponentials and the target's logit
 * from the rank that holds it; no rank sees full logits. */
static void vocab_parallel_cross_entropy(Model *m, int r0, int rows, int write_grad)
{
    const Backend *be = m->be;
    ModelActivations *a = m->act;
    const int V = m->tp_vocab;
    be->cross_entropy_shard_max(be, a->ce_max, a->logits, rows, V);
    model_tp_reduce(m, a->ce_max, (size_t)rows, COMM_MAX);
    be->cross_entropy_shard_stats(be, a->ce_stats, a->logits, a->ce_max, a->dev_targets + r0, rows,
                                  V, m->tp_vocab_start);
    model_tp_reduce(m, a->ce_stats, (size_t)rows * 3, COMM_SUM);
    be->cross_entropy_shard_finish(be, a->dev_losses + r0, a->logits, a->ce_max, a->ce_stats,
                                   a->dev_targets + r0, a->dev_weights + r0, rows, V,
                                   m->tp_vocab_start, write_grad);
}

/* The LM head over a->final_norm, R = a->head_rows rows at a time: the chunk's logits (copied
 * to logits_out, host [N, V], when wanted), with_loss its cross-entropy into a->dev_losses
 * (dev_targets and dev_weights hold the batch's), and with_grads, while the chunk's dlogits are
 * there, the head's backward: dln rows = dlogits @ W (overwritten) and g.lm_head += dlogits^T x
 * rows (g.embed when tied). Every tensor-parallel rank runs the same chunks, so the
 * cross-entropy's two all-reduces per chunk pair up. */
static void lm_head_chunks(Model *m, int with_loss, int with_grads, float *logits_out)
{
    const Backend *be = m->be;
    ModelActivations *a = m->act;
    const int N = m->B * m->T, C = m->cfg.hidden_size, V = m->tp_vocab, R = a->head_rows;
    for (int r0 = 0; r0 < N; r0 += R) {
        const int rows = N - r0 < R ? N - r0 : R;
        const Act *hidden = model_act_at(m, a->final_norm, (size_t)r0 * C);
        be->matmul_forward(be, a->logits, hidden, m->w.lm_head, NULL, rows, C, V);
        if (logits_out) act_to_host(m, logits_out + (size_t)r0 * V, a->logits, (size_t)rows * V);
        if (!with_loss) continue;
        if (m->tp)
            vocab_parallel_cross_entropy(m, r0, rows, with_grads);
        else
            be->cross_entropy(be, a->dev_losses + r0, a->logits, a->dev_targets + r0,
                              a->dev_weights + r0, rows, V, with_grads);
        if (with_grads)
            be->matmul_backward(be, model_act_at(m, a->dln, (size_t)r0 * C), m->g.lm_head, NULL,
                                a->logits, hidden, m->w.lm_head, rows, C, V, 0);
    }
}

int model_reduce_shared_grads(Model *m)
{
    if (!m->tp_kv) return DS_OK;
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        if (p->tp == TP_KV_HEADS)
            DS_TRY(comm_all_reduce(m->tp_kv, m->grads + p->offset, p->numel, COMM_F32, COMM_SUM));
    }
    return DS_OK;
}

double model_forward(Model *m, const int32_t *inputs, const int32_t *targets,
                     const float *loss_weights, float *logits_out)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    /* V: this rank's share of the vocabulary under tensor parallelism (all of it when tp = 1) */
    const int N = m->B * m->T, C = c->hidden_size, V = m->tp_vocab;

    /* the optimizer or a load may have changed the fp32 weights since the last forward */
    if (be->weights_refresh) be->weights_refresh(be, m->params);
    if (inputs != m->inputs) memcpy(m->inputs, inputs, (size_t)N * sizeof(int32_t));
    be->mem_to_device(be, a->dev_inputs, m->inputs, (size_t)N * sizeof(int32_t));
    if (m->tp) {
        /* vocab parallel: each rank fills the rows of the tokens it holds, the sum the rest */
        be->embedding_forward_shard(be, a->resid_in[0], a->dev_inputs, m->w.embed, N, C,
                                    m->tp_vocab_start, V);
        model_tp_reduce(m, a->resid_in[0], (size_t)N * C, COMM_SUM);
    } else {
        be->embedding_forward(be, a->resid_in[0], a->dev_inputs, m->w.embed, N, C);
    }
    for (int l = 0; l < c->num_layers; l++)
        m->arch->layer_forward(m, l, l + 1 < c->num_layers ? a->resid_in[l + 1] : a->resid_out);
    a->work_layer = c->num_layers - 1; /* what a checkpointed backward finds in the working set */
    be->rmsnorm_forward(be, a->final_norm, a->final_rstd, a->resid_out, m->w.norm, N, C,
                        c->rms_norm_eps);
    const int head_grads = a->head_grads_next; /* model_forward_train's forward */
    a->head_grads_next = 0;
    a->head = HEAD_NONE;
    if (c->num_labels > 0) return classify_forward(m, targets, loss_weights, logits_out);
    if (!targets) {
        if (logits_out) lm_head_chunks(m, 0, 0, logits_out); /* else nothing reads the head */
        return 0.0;
    }

    if (targets != m->targets) memcpy(m->targets, targets, (size_t)N * sizeof(int32_t));
    if (loss_weights != m->loss_weights)
        memcpy(m->loss_weights, loss_weights, (size_t)N * sizeof(float));
    be->mem_to_device(be, a->dev_targets, m->targets, (size_t)N * sizeof(int32_t));
    be->mem_to_device(be, a->dev_weights, m->loss_weights, (size_t)N * sizeof(float));
    lm_head_chunks(m, 1, head_grads, logits_out);
    a->head = head_grads ? HEAD_BACKWARD_DONE : HEAD_LOSS;
    be->mem_to_host(be, m->losses, a->dev_losses, (size_t)N * sizeof(float));
    double loss = 0.0;
    for (int i = 0; i < N; i++) loss += (double)m->loss_weights[i] * m->losses[i];
    return loss;
}

double model_forward_train(Model *m, const int32_t *inputs, const int32_t *targets,
                           const float *loss_weights, float *logits_out)
{
    m->act->head_grads_next = 1; /* read (and cleared) by the forward below */
    return model_forward(m, inputs, targets, loss_weights, logits_out);
}

void model_backward(Model *m)
{
    const Backend *be = m->be;
    const ModelConfig *c = &m->cfg;
    ModelActivations *a = m->act;
    const int N = m->B * m->T, C = c->hidden_size;
    const size_t NC = (size_t)N * C;

    /* the head's cls_logits hold dlogits, written by the forward's cross-entropy */
    if (c->num_labels > 0)
        classify_backward(m);
    else {
        /* model_forward_train did the LM head's backward chunk by chunk and left dln; after a
         * plain model_forward (or for a second backward of one forward: the layers below reuse
         * dln) the same chunks run again, the same ops in the same order */
        if (a->head != HEAD_BACKWARD_DONE) lm_head_chunks(m, 1, 1, NULL);
        a->head = HEAD_LOSS;
        model_tp_reduce_act(m, a->dln, NC); /* vocab parallel: each rank's part of dln */
    }
    be->mem_zero(be, a->dresid, NC * sizeof(float));
    be->rmsnorm_backward(be, a->dresid, a->dresid_act, m->g.norm, a->dln, a->resid_out, m->w.norm,
                         a->final_rstd, N, C);
    for (int l = c->num_layers - 1; l >= 0; l--) {
        if (c->activation_checkpointing != CKPT_NONE && a->work_layer != l) {
            if (c->activation_checkpointing == CKPT_FULL)
                m->arch->layer_forward(m, l, NULL); /* the shared working set from the input */
            else
                m->arch->layer_recompute(m, l); /* the shared cheap activations */
            a->work_layer = l;
        }
        m->arch->layer_backward(m, l);
    }
    if (m->tp)
        be->embedding_backward_shard(be, m->g.embed, a->dresid, a->dev_inputs, N, C,
                                     m->tp_vocab_start, m->tp_vocab);
    else
        be->embedding_backward(be, m->g.embed, a->dresid, a->dev_inputs, N, C);
}

void model_expert_load_reset(Model *m)
{
    m->balance_loss = 0.0;
    if (m->expert_tokens)
        memset(m->expert_tokens, 0,
               (size_t)m->cfg.num_layers * m->cfg.n_routed_experts * sizeof(double));
}

int model_expert_load(const Model *m, double *ratio)
{
    if (!m->expert_tokens) return 0;
    const int E = m->cfg.n_routed_experts;
    int moe = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        const double *t = m->expert_tokens + (size_t)l * E;
        double sum = 0.0, max = 0.0;
        for (int e = 0; e < E; e++) {
            sum += t[e];
            max = t[e] > max ? t[e] : max;
        }
        const int is_moe = l >= m->cfg.first_k_dense_replace;
        moe += is_moe;
        ratio[l] = is_moe && sum > 0 ? max / (sum / E) : NAN;
    }
    return moe;
}

void model_update_router_bias(Model *m, float rate)
{
    if (!m->expert_tokens || rate <= 0) return;
    const int E = m->cfg.n_routed_experts;
    float *bias = ds_calloc((size_t)E, sizeof(float));
    if (!bias) return;
    for (int l = 0; l < m->cfg.num_layers; l++) {
        float *b = m->w.layers[l].router_bias;
        if (!b) continue;
        const double *t = m->expert_tokens + (size_t)l * E;
        double mean = 0.0;
        for (int e = 0; e < E; e++)
            mean += t[e] / E;
        m->be->mem_to_host(m->be, bias, b, (size_t)E * sizeof(float));
        for (int e = 0; e < E; e++)
            bias[e] += t[e] < mean ? rate : t[e] > mean ? -rate : 0.0f;
        m->be->mem_to_device(m->be, b, bias, (size_t)E * sizeof(float));
    }
    free(bias);
}
