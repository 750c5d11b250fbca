/* test_memory.c: per-rank memory and the tensor-parallel parameter table. Parameter (and
 * gradient) memory falls as 1/tp, ZeRO-1 optimizer state as 1/(tp x dp), at several layouts of
 * the presets; each rank's slices tile every tensor exactly once (shared kv heads aside); the
 * LM head's logits take one chunk of rows, not the micro-batch; and shapes tensor parallelism
 * cannot split are refused with the field named. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/common.h"
#include "trainer/model.h"

static double ratio(size_t a, size_t b)
{
    return (double)a / (double)b;
}

/* "small": 8 heads, 4 kv heads, so every tp up to 4 splits every tensor */
Test(memory, parameters_fall_as_one_over_tp_and_zero_state_as_one_over_tp_dp)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("small", &mc), DS_OK);
    ModelMemory base;
    cr_assert_eq(model_memory_estimate(&mc, 4, 64, 1, 1, 1, &base), DS_OK);
    cr_assert_eq(base.optimizer, 2 * base.params, "AdamW keeps two moments per parameter");
    const int tps[] = {1, 2, 4}, dps[] = {1, 2, 4, 8};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 4; j++) {
            const int tp = tps[i], dp = dps[j];
            ModelMemory z1, z0;
            cr_assert_eq(model_memory_estimate(&mc, 4, 64, tp, dp, 1, &z1), DS_OK);
            cr_assert_eq(model_memory_estimate(&mc, 4, 64, tp, dp, 0, &z0), DS_OK);
            /* within 2%: norms are replicated and each tensor is padded to 256 bytes */
            double p = ratio(z1.params, base.params) * tp;
            cr_assert(p >= 1.0 && p < 1.02, "tp %d dp %d: parameters x%.4f of 1/tp", tp, dp, p);
            cr_assert_eq(z1.grads, z1.params);
            double o = ratio(z1.optimizer, base.optimizer) * tp * dp;
            cr_assert(o >= 1.0 && o < 1.02, "tp %d dp %d: ZeRO-1 optimizer x%.4f of 1/(tp dp)", tp,
                      dp, o);
            cr_assert_eq(z0.optimizer, 2 * z0.params, "without ZeRO every dp rank keeps it all");
            cr_assert_eq(z1.optimizer * dp, z0.optimizer, "shards are equal");
            cr_assert_eq(z0.params % (64 * sizeof(float) * dp), 0, "padded for equal shards");
            /* activations: attention and MLP widths split, the residual stream does not */
            if (tp > 1) cr_assert_lt(z1.activations, base.activations);
        }
    }
}

/* "tiny": 4 heads and 2 kv heads: at tp 4 two ranks share each kv head, so k and v do not
 * shrink past 1/2 while everything else does */
Test(memory, shared_kv_heads_at_tp4)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    ParamTable t1, t4[4];
    cr_assert_eq(param_table_build_tp(&mc, 0, 1, &t1), DS_OK);
    for (int r = 0; r < 4; r++)
        cr_assert_eq(param_table_build_tp(&mc, r, 4, &t4[r]), DS_OK);
    const char *k = "model.layers.1.self_attn.k_proj.weight";
    const char *q = "model.layers.1.self_attn.q_proj.weight";
    for (int r = 0; r < 4; r++) {
        const ParamInfo *pk = param_table_find(&t4[r], k), *pq = param_table_find(&t4[r], q);
        cr_assert_eq(pk->split_dim, 0);
        cr_assert_eq(pk->slice_len, mc.head_dim, "one kv head per rank");
        cr_assert_eq(pk->slice_start, (r / 2) * mc.head_dim, "ranks 0,1 head 0; ranks 2,3 head 1");
        cr_assert_eq(pk->tp_copy, r % 2, "one of the two holders counts it");
        cr_assert_eq(pq->slice_len, mc.num_heads * mc.head_dim / 4);
        cr_assert_eq(pq->tp_copy, 0);
        const ParamInfo *norm = param_table_find(&t4[r], "model.norm.weight");
        cr_assert_eq(norm->split_dim, -1);
        cr_assert_eq(norm->tp_copy, r != 0);
    }
    for (int r = 0; r < 4; r++)
        param_table_free(&t4[r]);
    param_table_free(&t1);
}

/* Every element of every tensor is held by exactly one rank (or, for shared kv heads and
 * replicated tensors, by ranks that agree on it and only one of which counts it). */
Test(memory, slices_tile_every_tensor)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    mc.qkv_bias = 1;
    mc.mlp_bias = 1;
    mc.o_bias = 1;
    for (int tp = 1; tp <= 4; tp *= 2) {
        ParamTable full, t[4];
        cr_assert_eq(param_table_build(&mc, &full), DS_OK);
        for (int r = 0; r < tp; r++)
            cr_assert_eq(param_table_build_tp(&mc, r, tp, &t[r]), DS_OK);
        for (int i = 0; i < full.count; i++) {
            const ParamInfo *f = &full.items[i];
            size_t counted = 0;
            for (int r = 0; r < tp; r++) {
                const ParamInfo *p = &t[r].items[i];
                cr_assert_str_eq(p->name, f->name);
                cr_assert_eq(p->shape[0], f->shape[0]);
                cr_assert_eq(p->offset % 64, 0, "aligned");
                if (!p->tp_copy) counted += p->numel;
                if (strstr(p->name, "o_proj.weight") || strstr(p->name, "down_proj.weight"))
                    cr_assert_eq(p->split_dim, tp > 1 ? 1 : -1, "%s row parallel", p->name);
                if (strstr(p->name, "o_proj.bias") || strstr(p->name, "down_proj.bias"))
                    cr_assert_eq(p->split_dim, -1, "%s added once, after the all-reduce", p->name);
                if (strstr(p->name, "q_proj.bias") || strstr(p->name, "up_proj.bias"))
                    cr_assert_eq(p->split_dim, tp > 1 ? 0 : -1, "%s split with its weight",
                                 p->name);
            }
            cr_assert_eq(counted, f->numel, "tp %d: %s counted %zu of %zu", tp, f->name, counted,
                         f->numel);
        }
        for (int r = 0; r < tp; r++)
            param_table_free(&t[r]);
        param_table_free(&full);
    }
}

Test(memory, shapes_tensor_parallelism_cannot_split_are_refused)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    cr_assert_eq(model_tp_check(&mc, 4, "model.preset tiny"), DS_OK);
    cr_assert_eq(model_tp_check(&mc, 3, "model.preset tiny"), DS_ERR_INPUT);
    cr_assert(
        strstr(ds_last_error(), "parallel.tp: 3 does not divide the model's num_attention_heads 4"),
        "%s", ds_last_error());
    cr_assert_eq(model_tp_check(&mc, 8, "model.preset tiny"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "num_attention_heads 4"), "%s", ds_last_error());
    mc.intermediate_size = 386;
    cr_assert_eq(model_tp_check(&mc, 4, "x"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "intermediate_size 386"), "%s", ds_last_error());
    mc.intermediate_size = 384;
    mc.vocab_size = 322;
    cr_assert_eq(model_tp_check(&mc, 4, "x"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "vocab_size 322"), "%s", ds_last_error());
    mc.vocab_size = 320;
    mc.num_heads = 12;
    mc.num_kv_heads = 3;
    cr_assert_eq(model_tp_check(&mc, 4, "x"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "neither divides the model's num_key_value_heads 3"), "%s",
              ds_last_error());
    ModelMemory mem;
    cr_assert_eq(model_memory_estimate(&mc, 1, 8, 4, 1, 1, &mem), DS_ERR_INPUT);
}

/* The LM head and its cross-entropy run over R rows at a time (trainer/model.c): the arena holds
 * logits [R, V/tp] (and, at tp > 1, the vocab-parallel loss's [R] maxima and [R, 3] sums), R
 * the multiple of 64 that keeps them near 256 MiB. Against a chunk of the whole micro-batch the
 * estimate falls by exactly the N - R rows of those. */
Test(memory, lm_head_logits_take_one_chunk_of_rows)
{
    const struct {
        const char *preset;
        int b, t, tp, rows;
    } cases[] = {
        {"deepseek-coder-1.3b", 8, 2048, 1, 2048}, /* 2048 x 32256 floats: 252 MiB */
        {"deepseek-coder-1.3b", 8, 2048, 2, 4160},
        {"deepseek-llm-7b", 1, 4096, 1, 640}, /* 640 x 102400 floats: 250 MiB */
        {"deepseek-llm-7b", 1, 4096, 8, 4096}, /* 5184 rows fit: all N of them */
        {"tiny", 2, 16, 1, 32}, /* fewer rows than a chunk: one chunk of all of them */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ModelConfig mc;
        cr_assert_eq(model_preset(cases[i].preset, &mc), DS_OK);
        const size_t n = (size_t)cases[i].b * cases[i].t, v = (size_t)mc.vocab_size / cases[i].tp;
        const size_t r = (size_t)cases[i].rows;
        ModelMemory chunked, whole;
        cr_assert_eq(
            model_memory_estimate(&mc, cases[i].b, cases[i].t, cases[i].tp, 1, 1, &chunked), DS_OK);
        mc.lm_head_chunk_rows = (int)n;
        cr_assert_eq(model_memory_estimate(&mc, cases[i].b, cases[i].t, cases[i].tp, 1, 1, &whole),
                     DS_OK);
        const size_t per_row = v + (cases[i].tp > 1 ? 4 : 0);
        cr_expect_eq(whole.activations - chunked.activations, (n - r) * per_row * sizeof(float),
                     "%s at tp %d: activations %zu bytes chunked, %zu whole; expected %zu rows",
                     cases[i].preset, cases[i].tp, chunked.activations, whole.activations, r);
        cr_expect_leq(r * v * sizeof(float), (size_t)256 << 20, "%s: a chunk within 256 MiB",
                      cases[i].preset);
        cr_expect_eq(chunked.params, whole.params);
    }
}

/* Expert parallelism on tiny-moe (16 experts): each rank's table holds its 16 / ep experts and
 * every other tensor, the experts after the rest (ParamTable.experts_begin); the ranks' experts
 * tile the model's exactly once; the other tensors are counted by ep rank 0 only (tp_copy); the
 * estimate's parameters are that table, and ZeRO-1 shards over the dp / ep ranks. */
Test(memory, expert_parallel_tables_and_estimate)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny-moe", &mc), DS_OK);
    ParamTable whole;
    cr_assert_eq(param_table_build(&mc, &whole), DS_OK);
    size_t expert_elems = 0, other_elems = 0;
    for (int i = 0; i < whole.count; i++)
        *(whole.items[i].expert >= 0 ? &expert_elems : &other_elems) += whole.items[i].numel;
    cr_assert_gt(expert_elems, other_elems, "tiny-moe's experts are most of it");
    const int eps[] = {2, 4};
    for (int k = 0; k < 2; k++) {
        const int ep = eps[k];
        int *seen = calloc((size_t)whole.count, sizeof(int));
        for (int r = 0; r < ep; r++) {
            ParamTable t;
            cr_assert_eq(param_table_build_parallel(&mc, 0, 1, r, ep, &t), DS_OK);
            size_t experts = 0, others = 0;
            for (int i = 0; i < t.count; i++) {
                const ParamInfo *p = &t.items[i];
                cr_assert_str_eq(p->name, whole.items[p->index].name, "index is the whole table's");
                if (p->expert >= 0) {
                    cr_assert(p->expert >= r * 16 / ep && p->expert < (r + 1) * 16 / ep, "%s on %d",
                              p->name, r);
                    cr_assert_geq(p->offset, t.experts_begin, "%s after the rest", p->name);
                    cr_assert_leq(p->offset + p->numel, t.total);
                    experts += p->numel;
                    seen[p->index]++;
                } else {
                    cr_assert_lt(p->offset + p->numel, t.experts_begin + 1, "%s", p->name);
                    cr_assert_eq(p->tp_copy, r != 0, "%s counted by ep rank 0", p->name);
                    others += p->numel;
                    seen[p->index] += r == 0;
                }
            }
            cr_assert_eq(experts * ep, expert_elems, "ep %d rank %d: an ep-th of the experts", ep,
                         r);
            cr_assert_eq(others, other_elems);
            param_table_free(&t);
        }
        for (int i = 0; i < whole.count; i++)
            cr_assert_eq(seen[i], 1, "ep %d: %s held once", ep, whole.items[i].name);
        free(seen);

        ParamTable t;
        cr_assert_eq(param_table_build_parallel(&mc, 0, 1, 0, ep, &t), DS_OK);
        ModelMemory z1, z0;
        cr_assert_eq(model_memory_estimate_ep(&mc, 2, 16, 1, 8, ep, 1, &z1), DS_OK);
        cr_assert_eq(model_memory_estimate_ep(&mc, 2, 16, 1, 8, ep, 0, &z0), DS_OK);
        const size_t total = (t.total + 64 * 8 - 1) / (64 * 8) * (64 * 8);
        cr_assert_eq(z1.params, total * sizeof(float), "ep %d: the rank's table, padded", ep);
        cr_assert_eq(z0.optimizer, 2 * z0.params);
        cr_assert_eq(z1.optimizer * (8 / ep), z0.optimizer, "ep %d: shards over dp / ep", ep);
        param_table_free(&t);
    }
    param_table_free(&whole);
    ModelMemory m;
    cr_assert_eq(model_memory_estimate_ep(&mc, 2, 16, 1, 6, 3, 1, &m), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "parallel.ep: 3 does not divide the model's "
                                      "n_routed_experts 16"),
              "%s", ds_last_error());
    cr_assert_eq(model_memory_estimate_ep(&mc, 2, 16, 1, 2, 4, 1, &m), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "parallel.ep: 4 does not divide parallel.dp 2"), "%s",
              ds_last_error());
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    cr_assert_eq(model_memory_estimate_ep(&mc, 2, 16, 1, 2, 2, 1, &m), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "needs a mixture-of-experts model"), "%s", ds_last_error());
}
