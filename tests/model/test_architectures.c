/* test_architectures.c: the parameter table comes from the architecture's table alone: the
 * DeepSeek-V2-Lite shape gives its published 15,706,484,224 parameters in 5,291 tensors, in HF
 * order with per-expert names; V3 adds the frozen score correction; q_lora_rank switches q_proj
 * for its latent pair; splits, decay, initial values and bindings follow the table; the count
 * is arithmetic (a hostile layer or expert count costs nothing). */
#include <criterion/criterion.h>
#include <stddef.h>
#include <string.h>

#include "trainer/common.h"
#include "trainer/model.h"

static ModelConfig v2_lite(void)
{
    ModelConfig mc;
    memset(&mc, 0, sizeof(mc));
    mc.arch = ARCH_DEEPSEEK_V2;
    mc.vocab_size = 102400;
    mc.hidden_size = 2048;
    mc.intermediate_size = 10944;
    mc.moe_intermediate_size = 1408;
    mc.num_layers = 27;
    mc.num_heads = 16;
    mc.num_kv_heads = 16;
    mc.head_dim = 64;
    mc.q_lora_rank = 0; /* null in V2-Lite */
    mc.kv_lora_rank = 512;
    mc.qk_nope_head_dim = 128;
    mc.qk_rope_head_dim = 64;
    mc.v_head_dim = 128;
    mc.n_routed_experts = 64;
    mc.n_shared_experts = 2;
    mc.num_experts_per_tok = 6;
    mc.first_k_dense_replace = 1;
    mc.moe_layer_freq = 1;
    mc.n_group = 1;
    mc.topk_group = 1;
    mc.rms_norm_eps = 1e-6f;
    mc.rope_theta = 10000.0;
    mc.routed_scaling_factor = 1.0; /* as published */
    return mc;
}

static int64_t numel_of(const ParamInfo *p)
{
    return p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1);
}

Test(architectures, deepseek_v2_lite_has_its_published_parameter_count)
{
    ModelConfig mc = v2_lite();
    cr_assert_eq(model_config_check(&mc, "v2-lite"), DS_OK, "%s", ds_last_error());
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK, "%s", ds_last_error());
    /* 3 outside the layers, 10 in the dense layer 0, 7 + 64 x 3 + 1 + 3 in each MoE layer */
    cr_assert_eq(pt.count, 3 + 10 + 26 * 203);
    cr_assert_eq(param_table_count(&mc), pt.count);
    int64_t total = 0;
    for (int i = 0; i < pt.count; i++)
        total += numel_of(&pt.items[i]);
    cr_assert_eq(total, 15706484224LL);

    const ParamInfo *q = param_table_find(&pt, "model.layers.0.self_attn.q_proj.weight");
    cr_assert(q && q->shape[0] == 16 * 192 && q->shape[1] == 2048);
    cr_assert_null(param_table_find(&pt, "model.layers.0.self_attn.q_a_proj.weight"));
    cr_assert_not_null(param_table_find(&pt, "model.layers.0.mlp.gate_proj.weight"));
    cr_assert_null(param_table_find(&pt, "model.layers.1.mlp.gate_proj.weight"));
    cr_assert_null(param_table_find(&pt, "model.layers.1.mlp.gate.e_score_correction_bias"));
    const ParamInfo *kv_b = param_table_find(&pt, "model.layers.3.self_attn.kv_b_proj.weight");
    cr_assert(kv_b && kv_b->shape[0] == 16 * 256 && kv_b->shape[1] == 512);
    const ParamInfo *kv_a =
        param_table_find(&pt, "model.layers.3.self_attn.kv_a_proj_with_mqa.weight");
    cr_assert(kv_a && kv_a->shape[0] == 576 && kv_a->tp == TP_REPLICATED && kv_a->weight_decay);
    const ParamInfo *norm = param_table_find(&pt, "model.layers.3.self_attn.kv_a_layernorm.weight");
    cr_assert(norm && norm->shape[0] == 512 && norm->ndim == 1 && !norm->weight_decay &&
              norm->init == INIT_ONES);

    /* the experts of a layer, each expert's three projections together, in expert order */
    const ParamInfo *e0 = param_table_find(&pt, "model.layers.1.mlp.experts.0.gate_proj.weight");
    const ParamInfo *e63 = param_table_find(&pt, "model.layers.1.mlp.experts.63.down_proj.weight");
    cr_assert(e0 && e63);
    cr_assert_eq(e0->expert, 0);
    cr_assert_eq(e63->expert, 63);
    cr_assert_eq(e0->layer, 1);
    cr_assert_eq(e63 - e0, 64 * 3 - 1);
    cr_assert(e0->shape[0] == 1408 && e0->shape[1] == 2048 && e0->tp == TP_COLUMN);
    cr_assert(e63->shape[0] == 2048 && e63->shape[1] == 1408 && e63->tp == TP_ROW);
    cr_assert_eq(e0->bind, (int)offsetof(LayerWeights, expert_gate));
    const ParamInfo *shared =
        param_table_find(&pt, "model.layers.26.mlp.shared_experts.down_proj.weight");
    cr_assert(shared && shared->shape[1] == 2 * 1408 &&
              shared->bind == (int)offsetof(LayerWeights, wdown));
    const ParamInfo *router = param_table_find(&pt, "model.layers.26.mlp.gate.weight");
    cr_assert(router && router->shape[0] == 64 && router->shape[1] == 2048);

    /* HF order: the embedding first, the head last; in the flat buffer the routed experts after
     * every other tensor (expert parallelism splits them), each region in table order, every
     * tensor aligned and apart from the next */
    cr_assert_str_eq(pt.items[0].name, "model.embed_tokens.weight");
    cr_assert_str_eq(pt.items[pt.count - 2].name, "model.norm.weight");
    cr_assert_str_eq(pt.items[pt.count - 1].name, "lm_head.weight");
    size_t end[2] = {0, pt.experts_begin};
    for (int i = 0; i < pt.count; i++) {
        const ParamInfo *p = &pt.items[i];
        const int region = p->expert >= 0;
        cr_assert_geq(p->offset, end[region], "%s", p->name);
        cr_assert_eq(p->offset % 64, 0, "%s aligned", p->name);
        end[region] = p->offset + p->numel;
    }
    cr_assert_leq(end[0], pt.experts_begin);
    cr_assert_leq(end[1], pt.total);
    cr_assert_eq(pt.experts_begin, e0->offset, "the first expert opens the experts' region");
    param_table_free(&pt);
}

Test(architectures, deepseek_v3_routes_with_a_score_correction_and_a_q_latent)
{
    ModelConfig mc = v2_lite();
    mc.arch = ARCH_DEEPSEEK_V3;
    mc.q_lora_rank = 96;
    mc.topk_method = MOE_NOAUX_TC;
    mc.scoring = MOE_SIGMOID;
    mc.n_group = 8;
    mc.topk_group = 4;
    mc.num_layers = 3;
    cr_assert_eq(model_config_check(&mc, "v3"), DS_OK, "%s", ds_last_error());
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK, "%s", ds_last_error());
    cr_assert_null(param_table_find(&pt, "model.layers.0.self_attn.q_proj.weight"));
    const ParamInfo *qa = param_table_find(&pt, "model.layers.0.self_attn.q_a_proj.weight");
    const ParamInfo *qb = param_table_find(&pt, "model.layers.0.self_attn.q_b_proj.weight");
    cr_assert(qa && qa->shape[0] == 96 && qa->shape[1] == 2048 && qa->tp == TP_REPLICATED);
    cr_assert(qb && qb->shape[0] == 16 * 192 && qb->shape[1] == 96 && qb->tp == TP_COLUMN);
    cr_assert_null(param_table_find(&pt, "model.layers.0.mlp.gate.e_score_correction_bias"));
    const ParamInfo *bias =
        param_table_find(&pt, "model.layers.2.mlp.gate.e_score_correction_bias");
    cr_assert(bias && bias->ndim == 1 && bias->shape[0] == 64 && !bias->weight_decay &&
              bias->init == INIT_ZEROS && bias->bind == (int)offsetof(LayerWeights, router_bias));
    /* the latent q is three tensors for q_proj's one: 3 + 12 (dense) + 2 x (9 + 192 experts +
     * router + its bias + 3 shared) */
    cr_assert_eq(pt.count, 3 + 12 + 2 * (9 + 192 + 2 + 3));
    param_table_free(&pt);

    mc.n_group = 64; /* one expert a group: noaux_tc ranks groups by their best two */
    mc.topk_group = 4;
    cr_assert_eq(model_config_check(&mc, "v3"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "n_group"), "%s", ds_last_error());
}

Test(architectures, the_count_of_a_hostile_config_is_arithmetic)
{
    ModelConfig mc = v2_lite();
    mc.num_layers = 2000000000;
    mc.n_routed_experts = 2000000000;
    cr_assert_eq(param_table_count(&mc), INT64_MAX);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_ERR_INPUT);
    mc.num_layers = 100;
    cr_assert_eq(param_table_build(&mc, &pt), DS_ERR_INPUT); /* 6 x 10^11 tensors */
    cr_assert(strstr(ds_last_error(), "more than"), "%s", ds_last_error());
}

Test(architectures, llama_splits_come_from_its_table)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK); /* 4 heads, 2 kv heads, inter 384 */
    mc.qkv_bias = mc.o_bias = mc.mlp_bias = 1;
    ParamTable pt;
    cr_assert_eq(param_table_build_tp(&mc, 1, 4, &pt), DS_OK, "%s", ds_last_error());
    struct {
        const char *name;
        int split_dim, tp_copy;
        int64_t start, len;
    } want[] = {
        {"model.embed_tokens.weight", 0, 0, 80, 80},
        {"model.layers.0.self_attn.q_proj.weight", 0, 0, 32, 32},
        {"model.layers.0.self_attn.q_proj.bias", 0, 0, 32, 32},
        /* 2 kv heads over 4 ranks: ranks 0, 1 hold head 0; rank 1 is the copy */
        {"model.layers.0.self_attn.k_proj.weight", 0, 1, 0, 32},
        {"model.layers.0.self_attn.v_proj.bias", 0, 1, 0, 32},
        {"model.layers.0.self_attn.o_proj.weight", 1, 0, 32, 32},
        {"model.layers.0.self_attn.o_proj.bias", -1, 1, 0, 128},
        {"model.layers.0.mlp.up_proj.weight", 0, 0, 96, 96},
        {"model.layers.0.mlp.down_proj.weight", 1, 0, 96, 96},
        {"model.layers.0.mlp.down_proj.bias", -1, 1, 0, 128},
        {"model.layers.3.post_attention_layernorm.weight", -1, 1, 0, 128},
        {"lm_head.weight", 0, 0, 80, 80},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(want); i++) {
        const ParamInfo *p = param_table_find(&pt, want[i].name);
        cr_assert_not_null(p, "%s", want[i].name);
        cr_expect_eq(p->split_dim, want[i].split_dim, "%s", want[i].name);
        cr_expect_eq(p->tp_copy, want[i].tp_copy, "%s", want[i].name);
        cr_expect_eq(p->slice_start, want[i].start, "%s", want[i].name);
        cr_expect_eq(p->slice_len, want[i].len, "%s", want[i].name);
    }
    const ParamInfo *ln = param_table_find(&pt, "model.layers.2.input_layernorm.weight");
    cr_assert(ln->init == INIT_ONES && !ln->weight_decay && ln->layer == 2 &&
              ln->bind == (int)offsetof(LayerWeights, ln1));
    param_table_free(&pt);
}

/* Tensor parallelism splits the heads and every MLP's intermediate size: V2-Lite (16 heads,
 * intermediate 10944, experts 1408, vocab 102400) splits 2, 4 and 8 ways; 3 ways it refuses,
 * naming the heads; 32 ways (more than its heads) likewise. The split tensors come from the
 * table: q_proj and kv_b by heads, o_proj by its inputs, every expert by its intermediate
 * size; the latents and the router are whole on every rank. */
Test(architectures, deepseek_splits_heads_and_intermediate_sizes)
{
    ModelConfig mc = v2_lite();
    for (int tp = 1; tp <= 8; tp *= 2)
        cr_assert_eq(model_tp_check(&mc, tp, "model"), DS_OK, "tp %d: %s", tp, ds_last_error());
    cr_assert_eq(model_tp_check(&mc, 3, "model"), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "parallel.tp: 3 does not divide the model's "
                                      "num_attention_heads 16"),
              "%s", ds_last_error());
    cr_assert_eq(model_tp_check(&mc, 32, "model"), DS_ERR_INPUT);
    mc.num_layers = 2;
    ParamTable pt;
    cr_assert_eq(param_table_build_tp(&mc, 1, 4, &pt), DS_OK, "%s", ds_last_error());
    const struct {
        const char *name;
        int split_dim;
        int64_t start, len;
    } want[] = {
        {"model.layers.1.self_attn.q_proj.weight", 0, 4 * 192, 4 * 192},
        {"model.layers.1.self_attn.kv_b_proj.weight", 0, 4 * 256, 4 * 256},
        {"model.layers.1.self_attn.o_proj.weight", 1, 4 * 128, 4 * 128},
        {"model.layers.1.self_attn.kv_a_proj_with_mqa.weight", -1, 0, 576},
        {"model.layers.1.mlp.gate.weight", -1, 0, 64},
        {"model.layers.1.mlp.experts.63.up_proj.weight", 0, 352, 352},
        {"model.layers.1.mlp.experts.63.down_proj.weight", 1, 352, 352},
        {"model.layers.1.mlp.shared_experts.gate_proj.weight", 0, 704, 704},
        {"model.layers.0.mlp.down_proj.weight", 1, 2736, 2736},
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(want); i++) {
        const ParamInfo *p = param_table_find(&pt, want[i].name);
        cr_assert_not_null(p, "%s", want[i].name);
        cr_expect_eq(p->split_dim, want[i].split_dim, "%s: split dim %d", want[i].name,
                     p->split_dim);
        if (want[i].split_dim >= 0)
            cr_expect(p->slice_start == want[i].start && p->slice_len == want[i].len,
                      "%s: slice %lld + %lld", want[i].name, (long long)p->slice_start,
                      (long long)p->slice_len);
    }
    param_table_free(&pt);
}

/* What MFU counts: V2-Lite's 15.7B parameters of which a token goes through the shared part
 * and 6 of 64 routed experts (64 x 3 x 2048 x 1408 a layer, 26 MoE layers), plus the latent
 * attention's q/k heads of 192 and v heads of 128; a dense model's 6 N + 12 L d T. */
Test(architectures, flops_per_token_count_the_active_parameters)
{
    ModelConfig mc = v2_lite();
    double total = 0, active = 0;
    cr_assert_eq(model_param_counts(&mc, &total, &active), DS_OK);
    cr_assert_eq(total, 15706484224.0);
    const double experts = 26.0 * 64 * 3 * 2048 * 1408;
    cr_assert_float_eq(active, total - experts + experts * 6 / 64, 1.0);
    const int T = 4096;
    cr_assert_float_eq(model_flops_per_token(&mc, T),
                       6 * active + 6.0 * 27 * T * 16 * (192 + 128), 1e3);

    ModelConfig dense;
    cr_assert_eq(model_preset("tiny", &dense), DS_OK);
    ParamTable pt;
    cr_assert_eq(param_table_build(&dense, &pt), DS_OK);
    double n = 0;
    for (int i = 0; i < pt.count; i++)
        n += (double)numel_of(&pt.items[i]);
    param_table_free(&pt);
    cr_assert_eq(model_param_counts(&dense, &total, &active), DS_OK);
    cr_assert(total == n && active == n);
    cr_assert_float_eq(model_flops_per_token(&dense, 64),
                       6 * n + 12.0 * dense.num_layers * dense.hidden_size * 64, 1e-3);
}
