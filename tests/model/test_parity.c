/* test_parity.c: the CPU model against PyTorch/transformers on the fixtures that
 * tools/make_parity_fixtures.py made (tiny Llama and Qwen2 models covering GQA, biases, tied
 * embeddings, rope scaling, both config.json forms, BF16 and F32 files, sharded weights; tiny
 * DeepSeek V2 and V3 models covering both q forms, yarn, softmax and sigmoid routing, the three
 * top-k methods, the score correction and shared experts, with their routing decisions).
 * fp32 agreement required: loss 2e-5 absolute, logits 1e-4 relative, gradients 1e-3 relative
 * per tensor, parameters after 5 AdamW steps 1e-4 relative per tensor (the key biases: every
 * element within 1% of the distance 5 AdamW steps can move it, see below), eval loss 2e-5. The LM
 * head runs as one chunk of rows and as chunks of 7 (32 rows: 4 x 7 + 4), through plain
 * model_forward + model_backward and through model_forward_train + model_backward. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint/hf_model.h"
#include "checkpoint/safetensors.h"
#include "trainer/common.h"
#include "trainer/config.h"
#include "trainer/model.h"
#include "trainer/optim.h"

#define FIXTURES DSTRAIN_SOURCE_DIR "/tests/fixtures/parity"

static const char *cases[] = {
    "llama_gqa_f32_oldform",
    "llama_tied_linear_bf16_newform_sharded",
    "llama_llama3rope_bias_f32_newform",
    "qwen2_gqa_bias_f32_newform",
    "qwen2_tied_bf16_oldform",
    /* DeepSeek V2 and V3 (made by transformers 5.17): multi-head latent attention with a plain
     * q or a q latent, v heads of their own size, yarn; experts chosen by softmax (greedy,
     * group-limited) or by sigmoid with the score correction over groups, shared experts, a
     * dense first layer */
    "deepseek_v2_lite_f32",
    "deepseek_v2_grouped_yarn_f32",
    "deepseek_v3_f32",
    "deepseek_v3_bf16_newform_sharded",
};

/* A reference tensor that may be absent (NULL). */
static const float *ref_tensor_opt(const SafetensorsFile *f, const char *name)
{
    const STEntry *e = safetensors_find(f, name);
    return e ? safetensors_data(f, e) : NULL;
}

static const float *ref_tensor(const SafetensorsFile *f, const char *name, size_t expect_numel)
{
    const STEntry *e = safetensors_find(f, name);
    cr_assert_not_null(e, "reference tensor %s missing", name);
    size_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= (size_t)e->shape[i];
    if (expect_numel) cr_assert_eq(n, expect_numel, "%s: %zu elements, expected %zu", name, n,
                                   expect_numel);
    return safetensors_data(f, e);
}

static double rel_diff(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num) / (sqrt(den) + 1e-30);
}

/* Load a fixture model with B=2, T=16 and its reference; fill inputs/targets/weights as HF's
 * causal-LM loss sees them (predictions at t < T-1). chunk_rows: cfg.lm_head_chunk_rows. */
static void setup_case(const char *name, Model *m, SafetensorsFile *ref, int chunk_rows)
{
    char dir[1024], path[1100];
    snprintf(dir, sizeof(dir), "%s/%s", FIXTURES, name);
    snprintf(path, sizeof(path), "%s/%s.reference.safetensors", FIXTURES, name);
    ModelConfig mc;
    cr_assert_eq(hf_config_load(dir, &mc), DS_OK, "%s", ds_last_error());
    mc.lm_head_chunk_rows = chunk_rows;
    cr_assert_eq(safetensors_open(path, ref), DS_OK, "%s", ds_last_error());
    const STEntry *ids = safetensors_find(ref, "input_ids");
    cr_assert_not_null(ids);
    int B = (int)ids->shape[0], T = (int)ids->shape[1];
    cr_assert_eq(model_init(m, &mc, backend_cpu(), B, T), DS_OK, "%s", ds_last_error());
    cr_assert_eq(hf_load_weights(dir, &mc, &m->table, m->params), DS_OK, "%s", ds_last_error());
    const int32_t *tok = safetensors_data(ref, ids);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            m->inputs[i] = tok[i];
            m->targets[i] = t + 1 < T ? tok[i + 1] : 0;
            m->loss_weights[i] = t + 1 < T ? 1.0f / (float)(B * (T - 1)) : 0.0f;
        }
}

Test(parity, forward_backward_match_transformers)
{
    /* {chunk rows (0: the default, one chunk here), the training forward or the plain one} */
    const int runs[][2] = {{0, 0}, {0, 1}, {7, 0}, {7, 1}};
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        for (size_t r = 0; r < DS_ARRAY_LEN(runs); r++) {
            const int chunk = runs[r][0], train = runs[r][1];
            Model m;
            SafetensorsFile ref;
            setup_case(cases[c], &m, &ref, chunk);
            const size_t NV = (size_t)m.B * m.T * m.cfg.vocab_size;
            float *logits = malloc(NV * sizeof(float));
            model_zero_grad(&m);
            double loss = train
                              ? model_forward_train(&m, m.inputs, m.targets, m.loss_weights, logits)
                              : model_forward(&m, m.inputs, m.targets, m.loss_weights, logits);
            model_backward(&m);

            double ref_loss = ref_tensor(&ref, "loss", 1)[0];
            cr_expect_leq(fabs(loss - ref_loss), 2e-5,
                          "%s (chunk %d, train %d): loss %.8f vs transformers %.8f", cases[c],
                          chunk, train, loss, ref_loss);
            double dl = rel_diff(logits, ref_tensor(&ref, "logits", NV), NV);
            cr_expect_leq(dl, 1e-4, "%s (chunk %d, train %d): logits relative difference %.3g",
                          cases[c], chunk, train, dl);
            for (int i = 0; i < m.table.count; i++) {
                const ParamInfo *p = &m.table.items[i];
                char name[160];
                snprintf(name, sizeof(name), "grad.%s", p->name);
                if (!ref_tensor_opt(&ref, name)) {
                    /* a buffer, not a parameter (V3's e_score_correction_bias): no gradient */
                    cr_assert(strstr(p->name, "e_score_correction_bias"), "%s missing", name);
                    for (size_t k = 0; k < p->numel; k++)
                        cr_expect_eq(m.grads[p->offset + k], 0.0f, "%s: %s[%zu] = %g", cases[c],
                                     name, k, m.grads[p->offset + k]);
                    continue;
                }
                double dg =
                    rel_diff(m.grads + p->offset, ref_tensor(&ref, name, p->numel), p->numel);
                cr_expect_leq(dg, 1e-3, "%s (chunk %d, train %d): %s relative difference %.3g",
                              cases[c], chunk, train, name, dg);
            }
            free(logits);
            safetensors_close(&ref);
            model_free(&m);
        }
    }
}

Test(parity, five_adamw_steps_match_torch)
{
    Config cfg;
    config_set_defaults(&cfg);
    cfg.optim_lr = 1e-2f;
    cfg.optim_beta1 = 0.9f;
    cfg.optim_beta2 = 0.95f;
    cfg.optim_eps = 1e-6f; /* as tools/make_parity_fixtures.py */
    cfg.optim_weight_decay = 0.1f;
    cfg.optim_clip_grad_norm = 1.0f;
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        Model m;
        SafetensorsFile ref;
        Optimizer opt;
        setup_case(cases[c], &m, &ref, 0);
        cr_assert_eq(optim_init(&opt, &m.table), DS_OK);
        const float *ref_losses = ref_tensor(&ref, "adamw_losses", 5);
        const int steps = 5;
        for (int step = 0; step < steps; step++) {
            model_zero_grad(&m);
            double loss = model_forward_train(&m, m.inputs, m.targets, m.loss_weights, NULL);
            model_backward(&m);
            cr_expect_leq(fabs(loss - ref_losses[step]), 1e-4, "%s: step %d loss %.7f vs %.7f",
                          cases[c], step, loss, ref_losses[step]);
            float scale = optim_clip_scale(optim_grad_norm(&m), cfg.optim_clip_grad_norm);
            optim_step(&opt, &m, &cfg, cfg.optim_lr, scale);
        }
        for (int i = 0; i < m.table.count; i++) {
            const ParamInfo *p = &m.table.items[i];
            char name[160];
            snprintf(name, sizeof(name), "adamw.%s", p->name);
            const float *want = ref_tensor(&ref, name, p->numel);
            if (strstr(p->name, ".self_attn.k_proj.bias")) {
                /* The key bias's gradient is a nearly cancelling sum. A bias component that
                 * RoPE barely rotates over the sequence (the low-frequency pairs) shifts every
                 * key's score by nearly the same amount, which softmax ignores: its gradient is
                 * a sum of terms near 1e-2 that cancels to 1e-6..1e-8, and what is left is
                 * the summation order's rounding (torch and we differ by about 1e-8 per
                 * element; another BLAS, another order). AdamW turns a gradient g into a step
                 * of lr * g / (sqrt(v) + eps), most sensitive where |g| is near eps, so those
                 * elements' steps carry that noise divided by eps, and the tensor's relative
                 * difference (1.4e-4 against torch on some machines) measures the rounding,
                 * not the optimizer. What means something here is each element's distance to
                 * torch's in units of what AdamW moves it: at most lr per step (|m| <=
                 * sqrt(v) up to the bias corrections), and noise of 1e-8 through 1 / eps
                 * moves it by at most lr * 1e-8 / eps per step. So: every element within
                 * steps * lr * 1e-8 / eps of torch's (1% of the largest possible update with
                 * eps 1e-6), which a wrong gradient, clip, bias correction or learning rate
                 * misses by far (the update itself is 1e-2..4e-2 per element). */
                const double noise = 1e-8;
                const double tol = steps * cfg.optim_lr * noise / cfg.optim_eps;
                double worst = 0;
                size_t at = 0;
                for (size_t k = 0; k < p->numel; k++) {
                    double d = fabs((double)m.params[p->offset + k] - want[k]);
                    if (d > worst) worst = d, at = k;
                }
                cr_expect_leq(worst, tol, "%s: %s[%zu] differs by %.3g (tolerance %.3g)",
                              cases[c], name, at, worst, tol);
                continue;
            }
            /* A routed expert that no token reached in the first step (its reference gradient
             * is all zero) starts its moments at zero when its first tokens arrive: an element
             * whose gradient is then below eps moves by lr * g / (|g| + eps)-like steps, so the
             * gradient's rounding (1e-5 of the tensor's scale after a few steps, a few 1e-7
             * absolute against eps 1e-6) moves it by up to a fifth of lr. Such a tensor is held
             * to 2e-3 (one of them measures 7e-4); every other tensor to 1e-4. */
            snprintf(name, sizeof(name), "grad.%s", p->name);
            const float *g0 = p->expert >= 0 ? ref_tensor_opt(&ref, name) : NULL;
            int idle = g0 != NULL;
            for (size_t k = 0; idle && k < p->numel; k++)
                idle = g0[k] == 0.0f;
            snprintf(name, sizeof(name), "adamw.%s", p->name);
            double d = rel_diff(m.params + p->offset, want, p->numel);
            cr_expect_leq(d, idle ? 2e-3 : 1e-4, "%s: %s relative difference %.3g", cases[c],
                          name, d);
        }
        optim_free(&opt);
        safetensors_close(&ref);
        model_free(&m);
    }
}

/* The routing itself: every MoE layer of every DeepSeek fixture sends each token to the experts
 * transformers chose (exactly: the fixtures keep the k-th and (k+1)-th choices apart by more
 * than 1e-4), with the same weights (1e-5 relative), and the counts per expert add up. */
Test(parity, moe_routing_matches_transformers)
{
    int checked = 0;
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        if (strncmp(cases[c], "deepseek", 8) != 0) continue;
        Model m;
        SafetensorsFile ref;
        setup_case(cases[c], &m, &ref, 0);
        model_forward(&m, m.inputs, m.targets, m.loss_weights, NULL);
        const int N = m.B * m.T, k = m.cfg.num_experts_per_tok, E = m.cfg.n_routed_experts;
        for (int l = 0; l < m.cfg.num_layers; l++) {
            const int32_t *index;
            const float *weight;
            const int *counts;
            char name[64];
            snprintf(name, sizeof(name), "route.%d.indices", l);
            const int moe = model_moe_routing(&m, l, &index, &weight, &counts);
            cr_assert_eq(moe, ref_tensor_opt(&ref, name) != NULL, "%s: layer %d MoE %d", cases[c],
                         l, moe);
            if (!moe) continue;
            const int32_t *want = (const int32_t *)ref_tensor(&ref, name, (size_t)N * k);
            snprintf(name, sizeof(name), "route.%d.weights", l);
            const float *want_w = ref_tensor(&ref, name, (size_t)N * k);
            int differ = 0;
            for (int i = 0; i < N * k; i++)
                differ += index[i] != want[i];
            cr_expect_eq(differ, 0, "%s: layer %d: %d of %d choices differ from transformers'",
                         cases[c], l, differ, N * k);
            double dw = rel_diff(weight, want_w, (size_t)N * k);
            cr_expect_leq(dw, 1e-5, "%s: layer %d: routing weights relative difference %.3g",
                          cases[c], l, dw);
            long total = 0;
            for (int e = 0; e < E; e++)
                total += counts[e];
            cr_expect_eq(total, (long)N * k, "%s: layer %d: counts add to %ld", cases[c], l,
                         total);
            checked++;
        }
        safetensors_close(&ref);
        model_free(&m);
    }
    cr_expect_geq(checked, 8, "only %d MoE layers checked", checked);
}

/* `dstrain pack` then `dstrain eval` on each fixture's documents reproduces transformers. */
Test(parity, eval_command_matches_transformers)
{
    mkdir(DSTRAIN_TEST_TMP, 0755);
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        char cmd[4096], h5[1024], out[1024], path[1024];
        SafetensorsFile ref;
        snprintf(path, sizeof(path), "%s/%s.reference.safetensors", FIXTURES, cases[c]);
        cr_assert_eq(safetensors_open(path, &ref), DS_OK, "%s", ds_last_error());
        const float ref_loss = ref_tensor(&ref, "eval_loss", 1)[0];
        const int32_t ref_tokens = ((const int32_t *)ref_tensor(&ref, "eval_tokens", 1))[0];
        const int32_t seq_len = ((const int32_t *)ref_tensor(&ref, "eval_seq_len", 1))[0];
        snprintf(h5, sizeof(h5), "%s/parity_%s.h5", DSTRAIN_TEST_TMP, cases[c]);
        snprintf(out, sizeof(out), "%s/parity_%s.out", DSTRAIN_TEST_TMP, cases[c]);
        snprintf(cmd, sizeof(cmd),
                 "%s pack --input %s/%s.eval.jsonl --output %s > /dev/null && "
                 "%s eval --model %s/%s --data %s --seq-len %d > %s",
                 DSTRAIN_BINARY, FIXTURES, cases[c], h5, DSTRAIN_BINARY, FIXTURES, cases[c], h5,
                 seq_len, out);
        cr_assert_eq(system(cmd), 0, "%s failed", cmd);
        FILE *f = fopen(out, "r");
        cr_assert_not_null(f);
        char line[512], last[512] = "";
        while (fgets(line, sizeof(line), f)) snprintf(last, sizeof(last), "%s", line);
        fclose(f);
        double loss = NAN, tokens = -1;
        cr_assert_eq(sscanf(last, "eval_loss=%lf tokens=%lf", &loss, &tokens), 2,
                     "last line: %s", last);
        cr_expect_eq((int)tokens, ref_tokens, "%s: %d tokens vs %d", cases[c], (int)tokens,
                     ref_tokens);
        cr_expect_leq(fabs(loss - ref_loss), 2e-5, "%s: eval_loss %.7f vs transformers %.7f",
                      cases[c], loss, ref_loss);
        safetensors_close(&ref);
    }
}

