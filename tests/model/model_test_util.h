/* model_test_util.h: the models, weights and batches the model tests share: a Llama-like, a
 * Qwen2-like (q/k/v biases, one kv head, tied embeddings) and a classification model (o/MLP
 * biases, padded rows) on the tiny preset, with the LM head in chunks of 5 rows; seeded weights
 * with non-zero biases; micro-batches of B x T tokens. Every value is a pure function of its
 * index, so tensor-parallel ranks agree. */
#ifndef DSTRAIN_MODEL_TEST_UTIL_H
#define DSTRAIN_MODEL_TEST_UTIL_H

#include <stdint.h>
#include <string.h>

#include "trainer/model.h"

enum { B = 2, T = 16 };

static inline ModelConfig config_llama(void)
{
    ModelConfig mc;
    model_preset("tiny", &mc); /* 4 layers, hidden 128, 4 heads, 2 kv heads, vocab 320 */
    mc.lm_head_chunk_rows = 5; /* B x T = 32 rows: 6 x 5 + 2 */
    return mc;
}

static inline ModelConfig config_qwen2(void)
{
    ModelConfig mc = config_llama();
    mc.arch = ARCH_QWEN2;
    mc.qkv_bias = 1;
    mc.num_kv_heads = 1; /* at tp = 2 both ranks share it (the tp_kv group) */
    mc.tie_word_embeddings = 1;
    return mc;
}

static inline ModelConfig config_classification(void)
{
    ModelConfig mc = config_llama();
    mc.num_labels = 3;
    mc.pad_token_id = 0;
    mc.o_bias = 1;
    mc.mlp_bias = 1;
    return mc;
}

static inline uint64_t hash64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* in [-1, 1), a pure function of (a, b) so that every tensor-parallel rank agrees */
static inline float hash_uniform(uint64_t a, uint64_t b)
{
    return (float)((hash64(a * 0x100000001b3ull ^ hash64(b)) >> 11) * (2.0 / 9007199254740992.0)) -
           1.0f;
}

/* Seeded weights, and biases that are not zero (model_init_weights zeroes them), each element a
 * function of its index in the full tensor so that tensor-parallel slices agree. */
static inline void model_fill(Model *m)
{
    model_init_weights(m, 7, 0.08f);
    for (int i = 0; i < m->table.count; i++) {
        const ParamInfo *p = &m->table.items[i];
        if (!strstr(p->name, ".bias")) continue;
        const size_t start = p->split_dim == 0 ? (size_t)p->slice_start : 0;
        for (size_t j = 0; j < p->numel; j++)
            m->params[p->offset + j] = 0.1f * hash_uniform((uint64_t)i, start + j);
    }
}

/* Micro-batch k: tokens, next-token targets and weights (some zero) for a causal LM; for a
 * classification model labels [B] with weights [B] and row 1 padded at the end. */
static inline void make_batch(const ModelConfig *mc, int k, int32_t *inputs, int32_t *targets,
                              float *weights)
{
    for (int i = 0; i < B * T; i++) {
        inputs[i] =
            1 + (int32_t)(hash64((uint64_t)(k * 1000 + i)) % (uint64_t)(mc->vocab_size - 1));
        targets[i] = (int32_t)(hash64((uint64_t)(k * 1000 + i + 500)) % (uint64_t)mc->vocab_size);
        weights[i] = i % 5 == 3 ? 0.0f : 1.0f / (B * T);
    }
    if (mc->num_labels > 0) {
        for (int t = T - 4; t < T; t++)
            inputs[T + t] = mc->pad_token_id;
        for (int b = 0; b < B; b++) {
            targets[b] = (b + k) % mc->num_labels;
            weights[b] = 0.5f;
        }
    }
}

#endif
