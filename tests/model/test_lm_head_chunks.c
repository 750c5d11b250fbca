/* test_lm_head_chunks.c: the LM head and its cross-entropy run over the rows in chunks
 * (cfg.lm_head_chunk_rows), so that the logits of the whole micro-batch never exist. The
 * training forward (model_forward_train: each chunk's head backward right after its loss) and
 * plain model_forward + model_backward (the chunks again in backward) give bitwise identical
 * losses, logits and gradients; every chunk size gives the same results up to fp32 rounding of
 * the head gradient's summation order; an evaluation forward with targets writes no gradient;
 * and under mpirun at tp = 2 (this executable runs as the worker when DSTRAIN_HEAD_WORKER is
 * set) chunks of the vocab-parallel head agree with tp = 1. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../comm/mpi_test_util.h"
#include "comm/comm.h"
#include "trainer/common.h"
#include "trainer/model.h"

enum { B = 2, T = 16, N = B * T };

static ModelConfig config_llama(int chunk_rows)
{
    ModelConfig mc;
    model_preset("tiny", &mc); /* 4 layers, hidden 128, 4 heads, 2 kv heads, vocab 320 */
    mc.lm_head_chunk_rows = chunk_rows;
    return mc;
}

/* tied embeddings: the head's gradient and the embedding's go into one tensor */
static ModelConfig config_qwen2_tied(int chunk_rows)
{
    ModelConfig mc = config_llama(chunk_rows);
    mc.arch = ARCH_QWEN2;
    mc.qkv_bias = 1;
    mc.num_kv_heads = 1; /* at tp = 2 both ranks share it */
    mc.tie_word_embeddings = 1;
    return mc;
}

static uint64_t hash64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Micro-batch k: tokens, next-token targets, weights with some zero (a mean over the rest). */
static void make_batch(const ModelConfig *mc, int k, int32_t *inputs, int32_t *targets,
                       float *weights)
{
    for (int i = 0; i < N; i++) {
        inputs[i] = (int32_t)(hash64((uint64_t)(k * 1000 + i)) % (uint64_t)mc->vocab_size);
        targets[i] = (int32_t)(hash64((uint64_t)(k * 1000 + i + 500)) % (uint64_t)mc->vocab_size);
        weights[i] = i % 7 == 2 ? 0.0f : 1.0f / N;
    }
}

static void init_model(Model *m, const ModelConfig *mc, const ProcessGrid *grid)
{
    cr_assert_eq(model_init_parallel(m, mc, backend_cpu(), B, T, grid), DS_OK, "%s",
                 ds_last_error());
    model_init_weights(m, 11, 0.1f); /* the same values whatever the layout */
    model_zero_grad(m);
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

/* One micro-step of model: forward (the training one or the plain one) and backward. */
static double step(Model *m, int train, int k, float *logits)
{
    int32_t inputs[N], targets[N];
    float weights[N];
    make_batch(&m->cfg, k, inputs, targets, weights);
    double loss = train ? model_forward_train(m, inputs, targets, weights, logits)
                        : model_forward(m, inputs, targets, weights, logits);
    model_backward(m);
    return loss;
}

static void expect_training_forward_is_bitwise_identical(ModelConfig (*config)(int), int chunk)
{
    ModelConfig mc = config(chunk);
    Model fused, plain;
    init_model(&fused, &mc, NULL);
    init_model(&plain, &mc, NULL);
    const size_t NV = (size_t)N * mc.vocab_size;
    float *lf = malloc(NV * sizeof(float)), *lp = malloc(NV * sizeof(float));
    for (int k = 0; k < 2; k++) { /* two accumulated micro-batches */
        double a = step(&fused, 1, k, lf), b = step(&plain, 0, k, lp);
        cr_expect(a == b && isfinite(a), "chunk %d, micro-batch %d: loss %.17g vs %.17g", chunk, k,
                  a, b);
        cr_expect_eq(memcmp(fused.losses, plain.losses, N * sizeof(float)), 0,
                     "chunk %d: per-row losses differ", chunk);
        cr_expect_eq(memcmp(lf, lp, NV * sizeof(float)), 0, "chunk %d: logits differ", chunk);
        cr_expect_eq(memcmp(fused.grads, plain.grads, fused.table.total * sizeof(float)), 0,
                     "chunk %d, micro-batch %d: gradients differ", chunk, k);
    }
    /* a second backward of the last forward adds the same gradient again: the head's chunks
     * run again, since the layers' backward reused dln */
    model_backward(&fused);
    model_backward(&plain);
    cr_expect_eq(memcmp(fused.grads, plain.grads, fused.table.total * sizeof(float)), 0,
                 "chunk %d: gradients differ after a second backward", chunk);
    cr_expect(fused.be->sum_squares(fused.be, fused.grads, fused.table.total) > 0,
              "gradients are zero");
    free(lf);
    free(lp);
    model_free(&fused);
    model_free(&plain);
}

Test(lm_head_chunks, training_forward_equals_forward_then_backward_bitwise)
{
    const int chunks[] = {5, 0 /* the default: one chunk of 32 rows */, 1};
    for (size_t i = 0; i < DS_ARRAY_LEN(chunks); i++) {
        expect_training_forward_is_bitwise_identical(config_llama, chunks[i]);
        expect_training_forward_is_bitwise_identical(config_qwen2_tied, chunks[i]);
    }
}

/* Chunks of 1, 5, 7, 31 and 64 rows (more than N: one chunk) against one chunk of all 32 rows:
 * the logits and per-row losses are each row's own, the head's weight gradient sums the rows
 * chunk by chunk, a different order of the same fp32 sums. */
Test(lm_head_chunks, every_chunk_size_gives_the_same_results)
{
    ModelConfig (*configs[])(int) = {config_llama, config_qwen2_tied};
    for (size_t c = 0; c < DS_ARRAY_LEN(configs); c++) {
        ModelConfig mc = configs[c](N);
        Model ref;
        init_model(&ref, &mc, NULL);
        const size_t NV = (size_t)N * mc.vocab_size;
        float *lr = malloc(NV * sizeof(float)), *lc = malloc(NV * sizeof(float));
        double loss_ref = step(&ref, 1, 0, lr);
        const int chunks[] = {1, 5, 7, 31, 64};
        for (size_t i = 0; i < DS_ARRAY_LEN(chunks); i++) {
            ModelConfig mci = configs[c](chunks[i]);
            Model m;
            init_model(&m, &mci, NULL);
            double loss = step(&m, 1, 0, lc);
            cr_expect_leq(fabs(loss - loss_ref), 1e-6 * fabs(loss_ref),
                          "config %zu, chunk %d: loss %.9g vs %.9g", c, chunks[i], loss, loss_ref);
            cr_expect_leq(rel_diff(m.losses, ref.losses, N), 1e-6, "chunk %d: per-row losses",
                          chunks[i]);
            cr_expect_leq(rel_diff(lc, lr, NV), 1e-6, "chunk %d: logits", chunks[i]);
            for (int t = 0; t < m.table.count; t++) {
                const ParamInfo *p = &m.table.items[t];
                double d = rel_diff(m.grads + p->offset, ref.grads + p->offset, p->numel);
                cr_expect_leq(d, 1e-5, "config %zu, chunk %d: %s relative difference %.3g", c,
                              chunks[i], p->name, d);
            }
            model_free(&m);
        }
        free(lr);
        free(lc);
        model_free(&ref);
    }
}

/* An evaluation forward (targets, no backward): the same loss as the training forward, and not
 * one gradient written, whatever the chunking. */
Test(lm_head_chunks, evaluation_forward_writes_no_gradient)
{
    ModelConfig mc = config_llama(5);
    Model eval, train;
    init_model(&eval, &mc, NULL);
    init_model(&train, &mc, NULL);
    int32_t inputs[N], targets[N];
    float weights[N];
    make_batch(&mc, 3, inputs, targets, weights);
    double le = model_forward(&eval, inputs, targets, weights, NULL);
    double lt = model_forward_train(&train, inputs, targets, weights, NULL);
    cr_expect(le == lt && isfinite(le), "loss %.17g (evaluation) vs %.17g (training)", le, lt);
    cr_expect_eq(memcmp(eval.losses, train.losses, N * sizeof(float)), 0);
    float *zero = calloc(eval.table.total, sizeof(float));
    cr_expect_eq(memcmp(eval.grads, zero, eval.table.total * sizeof(float)), 0,
                 "an evaluation forward wrote gradients");
    const ParamInfo *head = param_table_find(&train.table, "lm_head.weight");
    cr_assert_not_null(head);
    cr_expect_neq(memcmp(train.grads + head->offset, zero, head->numel * sizeof(float)), 0,
                  "the training forward accumulated the head's gradient");
    free(zero);
    model_free(&eval);
    model_free(&train);
}

/* Logits for callers that want them (eval --logits, generate, EWC's sampled Fisher) come whole,
 * chunk by chunk, also from a forward without targets; they equal the training forward's. */
Test(lm_head_chunks, logits_without_targets_are_whole)
{
    ModelConfig mc = config_llama(7);
    Model m;
    init_model(&m, &mc, NULL);
    const size_t NV = (size_t)N * mc.vocab_size;
    float *a = malloc(NV * sizeof(float)), *b = malloc(NV * sizeof(float));
    for (size_t i = 0; i < NV; i++)
        a[i] = NAN;
    int32_t inputs[N], targets[N];
    float weights[N];
    make_batch(&mc, 4, inputs, targets, weights);
    model_forward(&m, inputs, NULL, NULL, a);
    model_forward_train(&m, inputs, targets, weights, b);
    cr_expect_eq(memcmp(a, b, NV * sizeof(float)), 0, "logits without targets differ");
    free(a);
    free(b);
    model_free(&m);
}

/* ---- tensor parallelism, run by mpirun ------------------------------------------------------ */

/* At tp = 2 on this rank, chunks of 5 against one chunk and against tp = 1 (the full model in
 * this process): loss and this rank's slice of every gradient. Returns the mismatches. */
static int worker_case(const char *name, ModelConfig (*config)(int), const ProcessGrid *g)
{
    int bad = 0;
    ModelConfig chunked = config(5), whole = config(N);
    Model tp2, tp2_plain, tp2_whole, tp1;
    if (model_init_parallel(&tp2, &chunked, backend_cpu(), B, T, g) != DS_OK ||
        model_init_parallel(&tp2_plain, &chunked, backend_cpu(), B, T, g) != DS_OK ||
        model_init_parallel(&tp2_whole, &whole, backend_cpu(), B, T, g) != DS_OK ||
        model_init_parallel(&tp1, &whole, backend_cpu(), B, T, NULL) != DS_OK) {
        printf("rank %d: %s: model_init: %s\n", g->world_rank, name, ds_last_error());
        return 1;
    }
    Model *all[] = {&tp2, &tp2_plain, &tp2_whole, &tp1};
    double loss[4] = {0};
    for (int j = 0; j < 4; j++) {
        model_init_weights(all[j], 11, 0.1f);
        model_zero_grad(all[j]);
        for (int k = 0; k < 2; k++)
            loss[j] += step(all[j], j != 1, k, NULL);
        if (model_reduce_shared_grads(all[j]) != DS_OK) bad++;
    }
    if (loss[0] != loss[1] ||
        memcmp(tp2.grads, tp2_plain.grads, tp2.table.total * sizeof(float)) != 0) {
        printf("rank %d: %s: training and plain forward differ at tp 2\n", g->world_rank, name);
        bad++;
    }
    if (!(fabs(loss[0] - loss[2]) <= 1e-6 * fabs(loss[2])) ||
        !(fabs(loss[0] - loss[3]) <= 1e-5 * fabs(loss[3]))) {
        printf("rank %d: %s: loss %.9g (tp 2, chunks of 5), %.9g (tp 2, one chunk), %.9g (tp 1)\n",
               g->world_rank, name, loss[0], loss[2], loss[3]);
        bad++;
    }
    float *slice = malloc(tp2.table.total * sizeof(float));
    for (int i = 0; i < tp2.table.count; i++) {
        const ParamInfo *p = &tp2.table.items[i], *q = param_table_find(&tp1.table, p->name);
        const size_t cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
        const float *full = tp1.grads + q->offset;
        for (size_t e = 0; e < p->numel; e++) { /* this rank's slice of the full gradient */
            size_t r = e / cols, col = e % cols;
            if (p->split_dim == 0) r += (size_t)p->slice_start;
            if (p->split_dim == 1) {
                r = e / (size_t)p->slice_len;
                col = (size_t)p->slice_start + e % (size_t)p->slice_len;
            }
            slice[e] = full[r * cols + col];
        }
        const double d_whole =
            rel_diff(tp2.grads + p->offset, tp2_whole.grads + p->offset, p->numel);
        const double d_tp1 = rel_diff(tp2.grads + p->offset, slice, p->numel);
        if (!(d_whole <= 1e-5) || !(d_tp1 <= 1e-4)) {
            printf("rank %d: %s: %s: relative difference %.3g to one chunk, %.3g to tp 1\n",
                   g->world_rank, name, p->name, d_whole, d_tp1);
            bad++;
        }
    }
    free(slice);
    for (int j = 0; j < 4; j++)
        model_free(all[j]);
    return bad;
}

static int worker_main(void)
{
    ProcessGrid g;
    if (comm_grid_init(&g, atoi(getenv("DSTRAIN_HEAD_WORKER")), 0) != DS_OK) {
        fprintf(stderr, "dstrain: error: %s\n", ds_last_error());
        return 2;
    }
    int failures = 0;
    const struct {
        const char *name;
        ModelConfig (*config)(int);
    } cases[] = {{"llama", config_llama}, {"qwen2_tied", config_qwen2_tied}};
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        int bad = worker_case(cases[c].name, cases[c].config, &g);
        printf("rank %d (tp %d/%d): %s: %s\n", g.world_rank, g.tp_rank, g.tp_size, cases[c].name,
               bad ? "MISMATCH" : "agrees");
        failures += bad;
    }
    fflush(stdout);
    comm_grid_free(&g);
    return failures ? 1 : 0;
}

__attribute__((constructor)) static void maybe_worker(void)
{
    if (getenv("DSTRAIN_HEAD_WORKER")) exit(worker_main());
}

Test(lm_head_chunks, tp2_chunks_agree_with_one_chunk_and_with_tp1)
{
    char exe[512], cmd[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    cr_assert(len > 0);
    exe[len] = 0;
    if (system("mkdir -p " DSTRAIN_TEST_TMP) != 0) cr_assert_fail("mkdir");
    const char *log = DSTRAIN_TEST_TMP "/lm-head-chunks-tp2.log";
    snprintf(cmd, sizeof(cmd), "-x DSTRAIN_HEAD_WORKER=2 %s", exe);
    int rc = mpi_test_run(2, cmd, log);
    char *out = mpi_test_slurp(log);
    cr_assert_eq(rc, 0, "mpirun -np 2 exited %d:\n%s", rc, out ? out : "");
    int lines = 0;
    for (const char *s = out; s && (s = strstr(s, ": agrees")); s++)
        lines++;
    cr_expect_eq(lines, 4, "expected 4 reports of agreement:\n%s", out ? out : "");
    free(out);
}
