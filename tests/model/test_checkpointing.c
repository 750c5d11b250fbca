/* test_checkpointing.c: activation checkpointing (train.activation_checkpointing, full or
 * selective) changes memory, never results. A Llama-like, a Qwen2-like (q/k/v biases, one kv
 * head, tied embeddings) and a classification model (o/MLP biases, padded rows) run two
 * accumulated micro-batches with and without it: losses, logits and every gradient must be
 * bitwise identical on the CPU backend, at tp = 1 here and at tp = 2 under mpirun (this
 * executable runs as the worker when DSTRAIN_CKPT_WORKER is set). The LM head runs in chunks of
 * 5 rows, the first micro-batch through model_forward_train, the second through model_forward.
 * The activation estimate must fall by exactly L - 1 layers' working sets (full) or L - 1 layers'
 * norm outputs and MLP activations (selective), and model_init must allocate what the estimate
 * says. DeepSeek's MoE models (V3 and V2 forms) too: their selective mode also recomputes the
 * experts' gathered inputs and activations. */
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
#include "model_test_util.h"
#include "trainer/common.h"
#include "trainer/model.h"

/* ---- one comparison ---------------------------------------------------------------------- */

typedef struct PairResult {
    int mismatches;
    char first[512]; /* what differed first */
    size_t arena_off, arena_on;
} PairResult;

static void note(PairResult *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(PairResult *r, const char *fmt, ...)
{
    if (r->mismatches++ > 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->first, sizeof(r->first), fmt, ap);
    va_end(ap);
}

static void compare_floats(PairResult *r, const char *what, const float *off, const float *on,
                           size_t n)
{
    if (memcmp(off, on, n * sizeof(float)) == 0) return;
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)off[i] - on[i]);
        if (d > worst || (isnan(on[i]) != isnan(off[i]))) worst = d, at = i;
    }
    note(r, "%s: differs, largest difference %.3g at element %zu (%.9g vs %.9g)", what, worst, at,
         off[at], on[at]);
}

/* The same model without checkpointing and in mode `mode` (grid NULL: one process): two
 * micro-batches, forward and backward, compared after each. */
static PairResult run_pair(const ModelConfig *base, const ProcessGrid *grid, int mode)
{
    PairResult r = {0};
    ModelConfig mc_off = *base, mc_on = *base;
    mc_off.activation_checkpointing = CKPT_NONE;
    mc_on.activation_checkpointing = mode;
    Model off, on;
    if (model_init_parallel(&off, &mc_off, backend_cpu(), B, T, grid) != DS_OK ||
        model_init_parallel(&on, &mc_on, backend_cpu(), B, T, grid) != DS_OK) {
        note(&r, "model_init: %s", ds_last_error());
        return r;
    }
    r.arena_off = off.arena_bytes;
    r.arena_on = on.arena_bytes;
    model_fill(&off);
    model_fill(&on);
    compare_floats(&r, "parameters", off.params, on.params, off.table.total);
    model_zero_grad(&off);
    model_zero_grad(&on);
    const int cls = base->num_labels > 0;
    const size_t n_logits = cls ? (size_t)B * base->num_labels : (size_t)B * T * off.tp_vocab;
    float *logits_off = calloc(n_logits, sizeof(float)),
          *logits_on = calloc(n_logits, sizeof(float));
    int32_t inputs[B * T], targets[B * T];
    float weights[B * T];
    for (int k = 0; k < 2; k++) {
        char what[64];
        make_batch(base, k, inputs, targets, weights);
        /* the training forward (head backward inside), then the plain one (head in backward) */
        double (*forward)(Model *, const int32_t *, const int32_t *, const float *, float *) =
            k == 0 ? model_forward_train : model_forward;
        double loss_off = forward(&off, inputs, targets, weights, logits_off);
        double loss_on = forward(&on, inputs, targets, weights, logits_on);
        if (!(loss_off == loss_on && isfinite(loss_off)))
            note(&r, "micro-batch %d: loss %.17g without, %.17g with checkpointing %d", k, loss_off,
                 loss_on, mode);
        snprintf(what, sizeof(what), "micro-batch %d: logits", k);
        compare_floats(&r, what, logits_off, logits_on, n_logits);
        model_backward(&off);
        model_backward(&on);
        for (int i = 0; i < off.table.count; i++) {
            const ParamInfo *p = &off.table.items[i];
            snprintf(what, sizeof(what), "micro-batch %d: grad %.40s", k, p->name);
            compare_floats(&r, what, off.grads + p->offset, on.grads + p->offset, p->numel);
        }
    }
    /* the gradients are real: not all zero, not NaN */
    if (!(off.be->sum_squares(off.be, off.grads, off.table.total) > 0))
        note(&r, "gradients are all zero or NaN");
    if (model_reduce_shared_grads(&off) != DS_OK || model_reduce_shared_grads(&on) != DS_OK)
        note(&r, "model_reduce_shared_grads: %s", ds_last_error());
    compare_floats(&r, "gradients after the shared kv reduction", off.grads, on.grads,
                   off.table.total);
    free(logits_off);
    free(logits_on);
    model_free(&off);
    model_free(&on);
    return r;
}

/* DeepSeek: tiny-moe (V3: a q latent, sigmoid routing over groups, a shared expert, the first
 * layer dense) and a V2 form of it (a plain q, softmax routing, every layer MoE). */
static ModelConfig config_moe_v3(void)
{
    ModelConfig mc;
    model_preset("tiny-moe", &mc);
    mc.lm_head_chunk_rows = 5;
    return mc;
}

static ModelConfig config_moe_v2(void)
{
    ModelConfig mc = config_moe_v3();
    mc.arch = ARCH_DEEPSEEK_V2;
    mc.q_lora_rank = 0;
    mc.scoring = MOE_SOFTMAX;
    mc.topk_method = MOE_GREEDY;
    mc.n_group = mc.topk_group = 1;
    mc.first_k_dense_replace = 0;
    mc.n_shared_experts = 2;
    return mc;
}

static const struct {
    const char *name;
    ModelConfig (*config)(void);
} cases[] = {
    {"llama", config_llama},
    {"qwen2", config_qwen2},
    {"classification", config_classification},
    {"deepseek-v3 moe", config_moe_v3},
    {"deepseek-v2 moe", config_moe_v2},
};

/* ---- the worker, run by mpirun ----------------------------------------------------------- */

static int worker_main(void)
{
    ProcessGrid g;
    if (comm_grid_init(&g, atoi(getenv("DSTRAIN_CKPT_WORKER")), 0) != DS_OK) {
        fprintf(stderr, "dstrain: error: %s\n", ds_last_error());
        return 2;
    }
    int failures = 0;
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++)
        for (int mode = CKPT_FULL; mode <= CKPT_SELECTIVE; mode++) {
            ModelConfig mc = cases[c].config();
            PairResult r = run_pair(&mc, &g, mode);
            int smaller = r.arena_on < r.arena_off;
            printf("rank %d (tp %d/%d): %s, %s: %s%s, activations %zu -> %zu floats\n",
                   g.world_rank, g.tp_rank, g.tp_size, cases[c].name,
                   mode == CKPT_FULL ? "full" : "selective",
                   r.mismatches ? "MISMATCH: " : "identical", r.first, r.arena_off, r.arena_on);
            failures += r.mismatches > 0 || !smaller;
        }
    fflush(stdout);
    comm_grid_free(&g);
    return failures ? 1 : 0;
}

__attribute__((constructor)) static void maybe_worker(void)
{
    if (getenv("DSTRAIN_CKPT_WORKER")) exit(worker_main());
}

/* ---- the tests ---------------------------------------------------------------------------- */

static void expect_identical(int c, int mode)
{
    ModelConfig mc = cases[c].config();
    PairResult r = run_pair(&mc, NULL, mode);
    cr_expect_eq(r.mismatches, 0, "%s, mode %d: %d mismatches; first: %s", cases[c].name, mode,
                 r.mismatches, r.first);
    cr_expect_lt(r.arena_on, r.arena_off,
                 "%s: activations %zu floats with checkpointing %d, %zu "
                 "without",
                 cases[c].name, r.arena_on, mode, r.arena_off);
}

Test(checkpointing, llama_loss_logits_and_gradients_are_bitwise_identical)
{
    expect_identical(0, CKPT_FULL);
}
Test(checkpointing, qwen2_with_biases_is_bitwise_identical)
{
    expect_identical(1, CKPT_FULL);
}
Test(checkpointing, classification_model_is_bitwise_identical)
{
    expect_identical(2, CKPT_FULL);
}
Test(checkpointing, selective_llama_is_bitwise_identical)
{
    expect_identical(0, CKPT_SELECTIVE);
}
Test(checkpointing, selective_qwen2_with_biases_is_bitwise_identical)
{
    expect_identical(1, CKPT_SELECTIVE);
}
Test(checkpointing, selective_classification_model_is_bitwise_identical)
{
    expect_identical(2, CKPT_SELECTIVE);
}
Test(checkpointing, deepseek_moe_is_bitwise_identical_full_and_selective)
{
    for (int c = 3; c <= 4; c++) {
        expect_identical(c, CKPT_FULL);
        expect_identical(c, CKPT_SELECTIVE);
    }
}

Test(checkpointing, tp2_under_mpirun_is_bitwise_identical_on_every_rank)
{
    char exe[512], cmd[1024];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    cr_assert(len > 0);
    exe[len] = 0;
    if (system("mkdir -p " DSTRAIN_TEST_TMP) != 0) cr_assert_fail("mkdir");
    const char *log = DSTRAIN_TEST_TMP "/checkpointing-tp2.log";
    snprintf(cmd, sizeof(cmd), "-x DSTRAIN_CKPT_WORKER=2 %s", exe);
    int rc = mpi_test_run(2, cmd, log);
    char *out = mpi_test_slurp(log);
    cr_assert_eq(rc, 0, "mpirun -np 2 exited %d:\n%s", rc, out ? out : "");
    /* every case reported identical on both ranks */
    int lines = 0;
    for (const char *s = out; s && (s = strstr(s, ": identical, activations")); s++)
        lines++;
    cr_expect_eq(lines, 4 * (int)DS_ARRAY_LEN(cases), "expected %zu identical reports:\n%s",
                 4 * DS_ARRAY_LEN(cases), out ? out : "");
    free(out);
}

/* One layer's working set in floats, from the shapes alone: every buffer forward writes besides
 * the layer's input (all of these sizes are multiples of the arena's 16-float alignment). */
static size_t working_set_floats(const ModelConfig *mc, int b, int t, int tp)
{
    const size_t N = (size_t)b * t, C = mc->hidden_size, I = mc->intermediate_size / tp;
    const size_t QD = (size_t)mc->num_heads / tp * mc->head_dim;
    const size_t KVD =
        (size_t)(mc->num_kv_heads % tp == 0 ? mc->num_kv_heads / tp : 1) * mc->head_dim;
    const size_t lse = (size_t)b * (mc->num_heads / tp) * t;
    return N * C /* ln1 */ + N /* its rstd */ + N * QD + 2 * N * KVD /* q, k, v */ +
           N * QD /* att */ + lse + N * C /* resid_mid */ + N * C /* ln2 */ + N /* its rstd */ +
           3 * N * I /* gate, up, act */;
}

Test(checkpointing, estimate_for_24_layers_falls_by_23_working_sets)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("deepseek-coder-1.3b", &mc), DS_OK);
    cr_assert_eq(mc.num_layers, 24);
    const int b = 2, t = 256;
    for (int tp = 1; tp <= 2; tp++) {
        ModelMemory off, on;
        mc.activation_checkpointing = 0;
        cr_assert_eq(model_memory_estimate(&mc, b, t, tp, 1, 1, &off), DS_OK, "%s",
                     ds_last_error());
        mc.activation_checkpointing = 1;
        cr_assert_eq(model_memory_estimate(&mc, b, t, tp, 1, 1, &on), DS_OK, "%s", ds_last_error());
        const size_t saved = 23 * working_set_floats(&mc, b, t, tp) * sizeof(float);
        cr_expect_eq(off.activations - on.activations, saved,
                     "tp %d: activations %zu -> %zu bytes, expected a saving of %zu", tp,
                     off.activations, on.activations, saved);
        /* what is kept: 24 layer inputs [N, C] and one working set, plus the same head */
        cr_expect_gt(on.activations, 24 * (size_t)b * t * mc.hidden_size * sizeof(float));
        cr_expect_eq(on.params, off.params);
        cr_expect_eq(on.grads, off.grads);
        cr_expect_eq(on.optimizer, off.optimizer);
    }
}

Test(checkpointing, selective_estimate_for_24_layers_falls_by_23_norms_and_activations)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("deepseek-coder-1.3b", &mc), DS_OK);
    const int b = 2, t = 256;
    for (int tp = 1; tp <= 2; tp++) {
        ModelMemory off, sel, full;
        mc.activation_checkpointing = CKPT_NONE;
        cr_assert_eq(model_memory_estimate(&mc, b, t, tp, 1, 1, &off), DS_OK, "%s",
                     ds_last_error());
        mc.activation_checkpointing = CKPT_SELECTIVE;
        cr_assert_eq(model_memory_estimate(&mc, b, t, tp, 1, 1, &sel), DS_OK, "%s",
                     ds_last_error());
        mc.activation_checkpointing = CKPT_FULL;
        cr_assert_eq(model_memory_estimate(&mc, b, t, tp, 1, 1, &full), DS_OK, "%s",
                     ds_last_error());
        /* per layer but the first: ln1 and ln2 [N, C] and the MLP's activation [N, I / tp] */
        const size_t N = (size_t)b * t, I = (size_t)mc.intermediate_size / tp;
        const size_t saved = 23 * (2 * N * mc.hidden_size + N * I) * sizeof(float);
        cr_expect_eq(off.activations - sel.activations, saved,
                     "tp %d: activations %zu -> %zu bytes, expected a saving of %zu", tp,
                     off.activations, sel.activations, saved);
        cr_expect_gt(sel.activations, full.activations, "tp %d: selective keeps more than full",
                     tp);
        cr_expect_eq(sel.params, off.params);
    }
}

Test(checkpointing, an_unknown_mode_is_refused)
{
    ModelConfig mc = config_moe_v3();
    mc.activation_checkpointing = 3;
    ModelMemory est;
    cr_assert_eq(model_memory_estimate(&mc, 1, 16, 1, 1, 1, &est), DS_ERR_INPUT);
    cr_expect(strstr(ds_last_error(), "train.activation_checkpointing: unknown mode 3"), "%s",
              ds_last_error());
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, 16), DS_ERR_INPUT);
}

Test(checkpointing, model_init_allocates_what_the_estimate_says)
{
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        for (int ckpt = CKPT_NONE; ckpt <= CKPT_SELECTIVE; ckpt++) {
            ModelConfig mc = cases[c].config();
            mc.activation_checkpointing = ckpt;
            ModelMemory est;
            cr_assert_eq(model_memory_estimate(&mc, B, T, 1, 1, 1, &est), DS_OK);
            Model m;
            cr_assert_eq(model_init(&m, &mc, backend_cpu(), B, T), DS_OK, "%s", ds_last_error());
            cr_expect_eq(m.arena_bytes, est.activations,
                         "%s, checkpointing %d: arena %zu bytes, estimate %zu bytes", cases[c].name,
                         ckpt, m.arena_bytes, est.activations);
            model_free(&m);
        }
    }
}

/* Forward without backward, then a second forward and backward: the working set holds the last
 * forward's layers, and backward must not take a stale one for its own. */
static void extra_forward_case(int c, int mode)
{
    ModelConfig mc = cases[c].config(), mc_on = cases[c].config();
    mc_on.activation_checkpointing = mode;
    Model off, on;
    cr_assert_eq(model_init(&off, &mc, backend_cpu(), B, T), DS_OK);
    cr_assert_eq(model_init(&on, &mc_on, backend_cpu(), B, T), DS_OK);
    model_fill(&off);
    model_fill(&on);
    model_zero_grad(&off);
    model_zero_grad(&on);
    int32_t inputs[B * T], targets[B * T];
    float weights[B * T];
    make_batch(&mc, 5, inputs, targets, weights);
    model_forward(&on, inputs, NULL, NULL, NULL); /* an evaluation-style forward, no targets */
    make_batch(&mc, 6, inputs, targets, weights);
    double l_off = model_forward(&off, inputs, targets, weights, NULL);
    double l_on = model_forward(&on, inputs, targets, weights, NULL);
    model_backward(&off);
    model_backward(&on);
    model_backward(&off); /* twice: gradients accumulate, the working set must be refilled */
    model_backward(&on);
    cr_expect_eq(l_off, l_on, "loss %.17g vs %.17g", l_off, l_on);
    cr_expect_eq(memcmp(off.grads, on.grads, off.table.total * sizeof(float)), 0,
                 "gradients differ");
    model_free(&off);
    model_free(&on);
}

Test(checkpointing, backward_after_an_extra_forward_uses_the_latest_batch)
{
    extra_forward_case(0, CKPT_FULL);
    extra_forward_case(3, CKPT_FULL); /* DeepSeek MoE */
}

Test(checkpointing, selective_backward_after_an_extra_forward_uses_the_latest_batch)
{
    extra_forward_case(0, CKPT_SELECTIVE);
    extra_forward_case(3, CKPT_SELECTIVE);
    extra_forward_case(4, CKPT_SELECTIVE);
}
