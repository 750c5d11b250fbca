/* test_act_storage.c: the model on a backend whose activations (kernels/ops.h's Act tensors) are
 * bf16, as the CUDA backend's are in bf16 mode, here without a GPU: a test backend wraps the CPU
 * ops, widening each Act input from bf16 and rounding each Act output to bf16 (round to nearest
 * even), while the residual stream, statistics, parameters and gradients stay fp32. It checks
 * model.c's side of bf16 storage: the arena laid out by element size, row offsets into Act
 * tensors (LM-head chunks, classification rows), logits widened into the caller's fp32 buffer,
 * the three projections accumulating one input gradient, dresid's Act copy. Against the fp32 CPU
 * model: loss within 1e-2, logits within 2e-2, every gradient's cosine at least 0.999 (key
 * biases, a nearly cancelling sum over tokens, 0.99): the bars tests/gpu/ holds the GPU to.
 * Activation checkpointing stays bitwise identical with bf16 storage. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model_test_util.h"
#include "trainer/common.h"
#include "trainer/model.h"

/* ---- a CPU backend with bf16 Act storage --------------------------------------------------- */

static const Backend *cpu;
static Backend bf16_backend;

/* A fresh fp32 copy of n bf16 elements (NULL stays NULL). */
static float *widen(const Act *x, size_t n)
{
    if (!x) return NULL;
    float *f = malloc((n ? n : 1) * sizeof(float));
    cr_assert(f);
    for (size_t i = 0; i < n; i++)
        f[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return f;
}

/* x (bf16) = f rounded; f freed. */
static void narrow(Act *x, float *f, size_t n)
{
    if (x && f)
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)x)[i] = f32_to_bf16(f[i]);
    free(f);
}

static size_t act_size_bf16(const Backend *be)
{
    return sizeof(uint16_t);
}

static void matmul_forward(const Backend *be, Act *out, const Act *inp, const float *weight,
                           const float *bias, int M, int K, int N)
{
    float *o = widen(out, (size_t)M * N), *x = widen(inp, (size_t)M * K);
    cpu->matmul_forward(cpu, o, x, weight, bias, M, K, N);
    narrow(out, o, (size_t)M * N);
    free(x);
}

static void matmul_backward(const Backend *be, Act *dinp, float *dweight, float *dbias,
                            const Act *dout, const Act *inp, const float *weight, int M, int K,
                            int N, int accumulate)
{
    float *dx = widen(dinp, (size_t)M * K), *dy = widen(dout, (size_t)M * N);
    float *x = widen(inp, (size_t)M * K);
    cpu->matmul_backward(cpu, dx, dweight, dbias, dy, x, weight, M, K, N, accumulate);
    narrow(dinp, dx, (size_t)M * K);
    free(dy), free(x);
}

static void rmsnorm_forward(const Backend *be, Act *out, float *rstd, const float *inp,
                            const float *weight, int M, int C, float eps)
{
    float *o = widen(out, (size_t)M * C);
    cpu->rmsnorm_forward(cpu, o, rstd, inp, weight, M, C, eps);
    narrow(out, o, (size_t)M * C);
}

static void rmsnorm_backward(const Backend *be, float *dinp, Act *dinp_act, float *dweight,
                             const Act *dout, const float *inp, const float *weight,
                             const float *rstd, int M, int C)
{
    float *dy = widen(dout, (size_t)M * C);
    cpu->rmsnorm_backward(cpu, dinp, NULL, dweight, dy, inp, weight, rstd, M, C);
    if (dinp_act)
        for (size_t i = 0; i < (size_t)M * C; i++)
            ((uint16_t *)dinp_act)[i] = f32_to_bf16(dinp[i]);
    free(dy);
}

static void rope_forward(const Backend *be, Act *x, const float *c, const float *s, int Bn, int Tn,
                         int H, int D)
{
    const size_t n = (size_t)Bn * Tn * H * D;
    float *f = widen(x, n);
    cpu->rope_forward(cpu, f, c, s, Bn, Tn, H, D);
    narrow(x, f, n);
}

static void rope_backward(const Backend *be, Act *x, const float *c, const float *s, int Bn, int Tn,
                          int H, int D)
{
    const size_t n = (size_t)Bn * Tn * H * D;
    float *f = widen(x, n);
    cpu->rope_backward(cpu, f, c, s, Bn, Tn, H, D);
    narrow(x, f, n);
}

static void attention_forward(const Backend *be, Act *out, float *lse, const Act *q, const Act *k,
                              const Act *v, int Bn, int Tn, int H, int KVH, int D)
{
    const size_t nq = (size_t)Bn * Tn * H * D, nkv = (size_t)Bn * Tn * KVH * D;
    float *o = widen(out, nq), *fq = widen(q, nq), *fk = widen(k, nkv), *fv = widen(v, nkv);
    cpu->attention_forward(cpu, o, lse, fq, fk, fv, Bn, Tn, H, KVH, D);
    narrow(out, o, nq);
    free(fq), free(fk), free(fv);
}

static void attention_backward(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                               const Act *out, const float *lse, const Act *q, const Act *k,
                               const Act *v, int Bn, int Tn, int H, int KVH, int D)
{
    const size_t nq = (size_t)Bn * Tn * H * D, nkv = (size_t)Bn * Tn * KVH * D;
    float *fdq = widen(dq, nq), *fdk = widen(dk, nkv), *fdv = widen(dv, nkv);
    float *fdo = widen(dout, nq), *fo = widen(out, nq);
    float *fq = widen(q, nq), *fk = widen(k, nkv), *fv = widen(v, nkv);
    cpu->attention_backward(cpu, fdq, fdk, fdv, fdo, fo, lse, fq, fk, fv, Bn, Tn, H, KVH, D);
    narrow(dq, fdq, nq);
    narrow(dk, fdk, nkv);
    narrow(dv, fdv, nkv);
    free(fdo), free(fo), free(fq), free(fk), free(fv);
}

static void swiglu_forward(const Backend *be, Act *out, const Act *gate, const Act *up, size_t n)
{
    float *o = widen(out, n), *g = widen(gate, n), *u = widen(up, n);
    cpu->swiglu_forward(cpu, o, g, u, n);
    narrow(out, o, n);
    free(g), free(u);
}

static void swiglu_backward(const Backend *be, Act *dgate, Act *dup, const Act *dout,
                            const Act *gate, const Act *up, size_t n)
{
    float *dg = widen(dgate, n), *du = widen(dup, n), *dy = widen(dout, n);
    float *g = widen(gate, n), *u = widen(up, n);
    cpu->swiglu_backward(cpu, dg, du, dy, g, u, n);
    narrow(dgate, dg, n);
    narrow(dup, du, n);
    free(dy), free(g), free(u);
}

static void cross_entropy(const Backend *be, float *losses, Act *logits, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad)
{
    float *l = widen(logits, (size_t)N * V);
    cpu->cross_entropy(cpu, losses, l, targets, weights, N, V, write_grad);
    if (write_grad)
        narrow(logits, l, (size_t)N * V);
    else
        free(l);
}

static void add(const Backend *be, float *out, const float *a, const Act *b, size_t n)
{
    float *fb = widen(b, n);
    cpu->add(cpu, out, a, fb, n);
    free(fb);
}

static void add_rmsnorm_forward(const Backend *be, float *sum, Act *out, float *rstd,
                                const float *a, const Act *b, const float *weight, int M, int C,
                                float eps)
{
    add(be, sum, a, b, (size_t)M * C);
    rmsnorm_forward(be, out, rstd, sum, weight, M, C, eps);
}

static const Backend *backend_bf16(void)
{
    if (bf16_backend.name) return &bf16_backend;
    cpu = backend_cpu();
    bf16_backend = *cpu;
    bf16_backend.name = "cpu-bf16-storage";
    bf16_backend.act_size = act_size_bf16;
    bf16_backend.matmul_forward = matmul_forward;
    bf16_backend.matmul_backward = matmul_backward;
    bf16_backend.rmsnorm_forward = rmsnorm_forward;
    bf16_backend.rmsnorm_backward = rmsnorm_backward;
    bf16_backend.rope_forward = rope_forward;
    bf16_backend.rope_backward = rope_backward;
    bf16_backend.attention_forward = attention_forward;
    bf16_backend.attention_backward = attention_backward;
    bf16_backend.swiglu_forward = swiglu_forward;
    bf16_backend.swiglu_backward = swiglu_backward;
    bf16_backend.cross_entropy = cross_entropy;
    bf16_backend.add = add;
    bf16_backend.add_rmsnorm_forward = add_rmsnorm_forward;
    /* no vocab-parallel ops: they would read Act logits as fp32 (the model refuses tp > 1) */
    bf16_backend.embedding_forward_shard = NULL;
    bf16_backend.embedding_backward_shard = NULL;
    bf16_backend.cross_entropy_shard_max = NULL;
    bf16_backend.cross_entropy_shard_stats = NULL;
    bf16_backend.cross_entropy_shard_finish = NULL;
    return &bf16_backend;
}

/* ---- comparisons (models, weights and batches: model_test_util.h) ---------------------------- */

static double rel_l2(const float *x, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)x[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double cosine(const float *a, const float *b, size_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
}

typedef struct Run {
    Model m;
    double loss;
    float *logits;
} Run;

/* One forward (logits into run->logits) and backward of the batch on backend be. */
static void run_model(Run *r, const ModelConfig *mc, const Backend *be, int with_backward)
{
    cr_assert_eq(model_init(&r->m, mc, be, B, T), DS_OK, "%s", ds_last_error());
    model_fill(&r->m);
    int32_t inputs[B * T], targets[B * T];
    float weights[B * T];
    make_batch(mc, 0, inputs, targets, weights);
    const size_t nlogits =
        mc->num_labels > 0 ? (size_t)B * mc->num_labels : (size_t)B * T * mc->vocab_size;
    r->logits = malloc(nlogits * sizeof(float));
    cr_assert(r->logits);
    model_zero_grad(&r->m);
    r->loss = model_forward(&r->m, inputs, targets, weights, r->logits);
    if (with_backward) model_backward(&r->m);
}

static void run_free(Run *r)
{
    model_free(&r->m);
    free(r->logits);
}

/* The bf16-storage model against the fp32 one: loss, logits, every gradient. */
static void compare_with_fp32(const ModelConfig *mc, const char *label)
{
    Run ref = {0}, got = {0};
    run_model(&ref, mc, backend_cpu(), 1);
    run_model(&got, mc, backend_bf16(), 1);
    cr_expect_lt(got.m.arena_bytes, ref.m.arena_bytes, "%s: bf16 arena %zu not below fp32 %zu",
                 label, got.m.arena_bytes, ref.m.arena_bytes);
    cr_expect(fabs(got.loss - ref.loss) <= 1e-2 * fabs(ref.loss), "%s: loss %.6f vs fp32 %.6f",
              label, got.loss, ref.loss);
    const size_t nlogits =
        mc->num_labels > 0 ? (size_t)B * mc->num_labels : (size_t)B * T * mc->vocab_size;
    const double dl = rel_l2(got.logits, ref.logits, nlogits);
    cr_expect(dl <= 2e-2 && dl > 0,
              "%s: logits relative error %.3g (bar 2e-2; 0 means the "
              "storage was not bf16)",
              label, dl);
    for (int i = 0; i < ref.m.table.count; i++) {
        const ParamInfo *p = &ref.m.table.items[i];
        const double c = cosine(got.m.grads + p->offset, ref.m.grads + p->offset, p->numel);
        const double bar = strstr(p->name, "k_proj.bias") ? 0.99 : 0.999;
        cr_expect(c >= bar, "%s: %s gradient cosine %.5f below %.3f", label, p->name, c, bar);
    }
    run_free(&ref);
    run_free(&got);
}

Test(act_storage, bf16_llama_agrees_with_fp32)
{
    ModelConfig mc = config_llama();
    compare_with_fp32(&mc, "llama");
}

Test(act_storage, bf16_qwen2_biases_tied_agrees_with_fp32)
{
    ModelConfig mc = config_qwen2();
    compare_with_fp32(&mc, "qwen2");
}

Test(act_storage, bf16_classification_agrees_with_fp32)
{
    ModelConfig mc = config_classification();
    compare_with_fp32(&mc, "classification");
}

/* Logits only (no targets: what generation asks for), in chunks of 5 rows widened into the
 * caller's buffer: every row is the fp32 model's within bf16 rounding, chunk edges included. */
Test(act_storage, bf16_logits_without_targets_fill_every_row)
{
    ModelConfig mc = config_llama();
    Model ref, got;
    cr_assert_eq(model_init(&ref, &mc, backend_cpu(), B, T), DS_OK, "%s", ds_last_error());
    cr_assert_eq(model_init(&got, &mc, backend_bf16(), B, T), DS_OK, "%s", ds_last_error());
    model_fill(&ref);
    model_fill(&got);
    int32_t inputs[B * T], targets[B * T];
    float weights[B * T];
    make_batch(&mc, 0, inputs, targets, weights);
    const size_t V = (size_t)mc.vocab_size;
    float *lr = malloc(B * T * V * sizeof(float)), *lg = malloc(B * T * V * sizeof(float));
    for (size_t i = 0; i < B * T * V; i++)
        lg[i] = NAN;
    model_forward(&ref, inputs, NULL, NULL, lr);
    model_forward(&got, inputs, NULL, NULL, lg);
    for (int row = 0; row < B * T; row++) {
        const double e = rel_l2(lg + row * V, lr + row * V, V);
        cr_expect(e <= 3e-2, "row %d (chunk %d): logits relative error %.3g", row, row / 5, e);
    }
    free(lr), free(lg);
    model_free(&ref);
    model_free(&got);
}

/* Checkpointing recomputes into the shared working set: with bf16 storage too, the same bits. */
Test(act_storage, bf16_checkpointing_changes_nothing)
{
    ModelConfig off = config_qwen2(), on = config_qwen2();
    on.activation_checkpointing = 1;
    Run a = {0}, b = {0};
    run_model(&a, &off, backend_bf16(), 1);
    run_model(&b, &on, backend_bf16(), 1);
    cr_expect_lt(b.m.arena_bytes, a.m.arena_bytes);
    cr_expect(memcmp(&a.loss, &b.loss, sizeof(double)) == 0, "loss %.9g vs %.9g", a.loss, b.loss);
    cr_expect(memcmp(a.logits, b.logits, (size_t)B * T * off.vocab_size * sizeof(float)) == 0,
              "logits differ with checkpointing");
    cr_expect(memcmp(a.m.grads, b.m.grads, a.m.table.total * sizeof(float)) == 0,
              "gradients differ with checkpointing");
    run_free(&a);
    run_free(&b);
}
