/* test_ewc_update.c: the fused AdamW + EWC backend op (Backend.adamw_ewc_update) of the CPU
 * backend against a direct double-precision computation (one and two sets, the penalty), equal to
 * adamw_update bit for bit without sets, and independent of the thread count; then the EWC state
 * kept in a backend's own memory: a copy of the CPU table that says its memory is not the host's
 * (host_memory 0) takes every staged path of ewc.c (chunks of EWC_STAGE_FLOATS, crossed here) and
 * must give the bits of the host path, for consolidation, penalty, both state files and the
 * Fisher pass. The weight decay toward the anchor, through optim_step, over nights of online
 * EWC. The CUDA op is checked against this one by the op table (tests/kernels/backend_ops.c, on
 * a GPU node tests/gpu/test_gpu_backend_ops.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/config.h"
#include "trainer/ewc.h"
#include "trainer/model.h"
#include "trainer/optim.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float uniform(float lo, float hi)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((double)(rng >> 11) * (1.0 / 9007199254740992.0));
}

static float *random_floats(size_t n, float lo, float hi)
{
    float *x = malloc(n * sizeof(float));
    cr_assert_not_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = uniform(lo, hi);
    return x;
}

static float *copy_of(const float *x, size_t n)
{
    float *c = malloc(n * sizeof(float));
    cr_assert_not_null(c);
    memcpy(c, x, n * sizeof(float));
    return c;
}

/* ---- the op against double precision ----------------------------------------------------------
 */

/* One step of AdamW (torch semantics) + EWC in double from the float state the op started from,
 * the decay toward 0 or toward the last anchor; returns the penalty (lambda / 2) sum_k F_k
 * (theta - theta*_k)^2 of those parameters. */
static double reference_step(const float *p0, const float *g, const float *m0, const float *v0,
                             size_t n, double lr, double b1, double b2, double eps, double wd,
                             double scale, int t, float *const *fisher, float *const *anchor,
                             int sets, double lambda, int decay_to_anchor, double *p, double *m,
                             double *v)
{
    const double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
    double penalty = 0.0;
    for (size_t i = 0; i < n; i++) {
        double grad = (double)g[i] * scale;
        for (int k = 0; k < sets; k++) {
            double d = (double)p0[i] - anchor[k][i];
            grad += lambda * fisher[k][i] * d;
            penalty += 0.5 * lambda * fisher[k][i] * d * d;
        }
        m[i] = b1 * m0[i] + (1.0 - b1) * grad;
        v[i] = b2 * v0[i] + (1.0 - b2) * grad * grad;
        const double toward = decay_to_anchor ? anchor[sets - 1][i] : 0.0;
        p[i] =
            p0[i] - lr * wd * (p0[i] - toward) - lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps);
    }
    return penalty;
}

static void check_close(const char *what, int sets, int t, const float *got, const double *want,
                        size_t n, double rel, double abs)
{
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs(got[i] - want[i]) <= rel * fabs(want[i]) + abs,
                  "%d set(s), step %d, %s[%zu]: %.9g, double precision %.9g", sets, t, what, i,
                  (double)got[i], want[i]);
}

Test(ewc_update, cpu_op_matches_double_precision_for_one_and_two_sets_and_both_decays)
{
    const Backend *be = backend_cpu();
    const size_t n = 1001; /* not a multiple of the op's 64 parts */
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, scale = 0.7f;
    const float lambda = 2.5f;
    /* a large decay (lr * wd = 0.02) so that where it pulls shows beyond the tolerance */
    const float wd = 2.0f;
    for (int run = 0; run < 4; run++) {
        const int sets = 1 + run % 2, decay_to_anchor = run / 2;
        float *p = random_floats(n, -1.0f, 1.0f), *m = calloc(n, sizeof(float));
        float *v = calloc(n, sizeof(float));
        float *fisher[2], *anchor[2];
        for (int k = 0; k < sets; k++) {
            fisher[k] = random_floats(n, 0.0f, 2.0f);
            anchor[k] = random_floats(n, -1.0f, 1.0f);
        }
        double *rp = malloc(n * sizeof(double)), *rm = malloc(n * sizeof(double));
        double *rv = malloc(n * sizeof(double));
        for (int t = 1; t <= 3; t++) {
            float *g = random_floats(n, -0.1f, 0.1f);
            float *p0 = copy_of(p, n), *m0 = copy_of(m, n), *v0 = copy_of(v, n);
            const double want =
                reference_step(p0, g, m0, v0, n, lr, b1, b2, eps, wd, scale, t, fisher, anchor,
                               sets, lambda, decay_to_anchor, rp, rm, rv);
            double penalty = 1.0; /* the op adds to it */
            be->adamw_ewc_update(be, p, g, m, v, n, lr, b1, b2, eps, wd, scale, t,
                                 (const float *const *)fisher, (const float *const *)anchor, sets,
                                 lambda, decay_to_anchor, &penalty);
            cr_assert(want > 0);
            cr_assert(fabs((penalty - 1.0) - want) <= 1e-6 * want,
                      "%d set(s), step %d: %.12g vs %.12g", sets, t, penalty - 1.0, want);
            /* the gradient sums terms up to lambda F d ~ 10 in fp32: where they cancel, its
             * error is absolute (~1e-6 of them), so the moments get an absolute allowance too */
            check_close(decay_to_anchor ? "param (decay toward the anchor)" : "param", sets, t, p,
                        rp, n, 2e-6, 1e-7);
            check_close("m", sets, t, m, rm, n, 1e-5, 1e-6);
            check_close("v", sets, t, v, rv, n, 1e-5, 1e-6);
            free(g), free(p0), free(m0), free(v0);
        }
        for (int k = 0; k < sets; k++)
            free(fisher[k]), free(anchor[k]);
        free(p), free(m), free(v), free(rp), free(rm), free(rv);
    }
}

/* The penalty gradient is lambda F (theta - theta*): with a zero data gradient, one set and
 * theta at the anchor nothing moves but the decay; away from it the step pulls toward it. */
Test(ewc_update, penalty_gradient_pulls_toward_the_anchor)
{
    const size_t n = 64;
    float p[64], g[64], m[64] = {0}, v[64] = {0}, f[64], a[64];
    for (size_t i = 0; i < n; i++)
        p[i] = 1.0f, g[i] = 0.0f, f[i] = 1.0f, a[i] = i % 2 ? 1.0f : 0.0f;
    const float *fs[1] = {f}, *as[1] = {a};
    double penalty = 0.0;
    backend_cpu()->adamw_ewc_update(backend_cpu(), p, g, m, v, n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.0f,
                                    1.0f, 1, fs, as, 1, 4.0f, 0, &penalty);
    cr_assert(fabs(penalty - 0.5 * 4.0 * 32) < 1e-12, "%g", penalty);
    for (size_t i = 0; i < n; i++) {
        if (i % 2)
            cr_assert_eq(p[i], 1.0f, "[%zu] at the anchor: %.9g", i, (double)p[i]);
        else
            cr_assert(p[i] < 1.0f && p[i] > 0.98f, "[%zu]: %.9g", i, (double)p[i]);
    }
}

Test(ewc_update, no_sets_is_adamw_update_bit_for_bit)
{
    const Backend *be = backend_cpu();
    const size_t n = 777;
    float *p1 = random_floats(n, -1.0f, 1.0f), *p2 = copy_of(p1, n);
    float *m1 = random_floats(n, -0.1f, 0.1f), *m2 = copy_of(m1, n);
    float *v1 = random_floats(n, 0.0f, 0.01f), *v2 = copy_of(v1, n);
    for (int t = 1; t <= 3; t++) {
        float *g = random_floats(n, -0.1f, 0.1f);
        double penalty = 0.25;
        be->adamw_ewc_update(be, p1, g, m1, v1, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t, NULL,
                             NULL, 0, 7.0f, t == 3, t == 2 ? NULL : &penalty);
        be->adamw_update(be, p2, g, m2, v2, n, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);
        cr_assert_eq(penalty, 0.25, "no sets: no penalty added");
        free(g);
    }
    cr_assert_eq(memcmp(p1, p2, n * sizeof(float)), 0);
    cr_assert_eq(memcmp(m1, m2, n * sizeof(float)), 0);
    cr_assert_eq(memcmp(v1, v2, n * sizeof(float)), 0);
    free(p1), free(p2), free(m1), free(m2), free(v1), free(v2);
}

Test(ewc_update, results_do_not_depend_on_the_thread_count)
{
    const size_t n = 100003;
    float *p = random_floats(n, -1.0f, 1.0f), *g = random_floats(n, -0.1f, 0.1f);
    float *f[2] = {random_floats(n, 0.0f, 1.0f), random_floats(n, 0.0f, 1.0f)};
    float *a[2] = {random_floats(n, -1.0f, 1.0f), random_floats(n, -1.0f, 1.0f)};
    float *out[2], *mo[2], *vo[2];
    double pen[2] = {0.0, 0.0};
    const int threads[2] = {1, 2};
    const int keep = omp_get_max_threads();
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(threads[r]);
        out[r] = copy_of(p, n), mo[r] = calloc(n, sizeof(float)), vo[r] = calloc(n, sizeof(float));
        backend_cpu()->adamw_ewc_update(backend_cpu(), out[r], g, mo[r], vo[r], n, 1e-2f, 0.9f,
                                        0.95f, 1e-8f, 0.1f, 1.0f, 1, (const float *const *)f,
                                        (const float *const *)a, 2, 3.0f, 0, &pen[r]);
    }
    omp_set_num_threads(keep);
    cr_assert_eq(memcmp(&pen[0], &pen[1], sizeof(double)), 0, "%.17g vs %.17g", pen[0], pen[1]);
    cr_assert_eq(memcmp(out[0], out[1], n * sizeof(float)), 0);
    cr_assert_eq(memcmp(vo[0], vo[1], n * sizeof(float)), 0);
    for (int r = 0; r < 2; r++)
        free(out[r]), free(mo[r]), free(vo[r]), free(f[r]), free(a[r]);
    free(p), free(g);
}

/* ---- the state in a backend's own memory -------------------------------------------------------
 */

/* The CPU backend claiming device memory: every EWC path that would stage through the host on a
 * GPU does so here (through memcpy), so the staged code runs on this machine. */
static Backend staged_backend(void)
{
    Backend b = *backend_cpu();
    b.host_memory = 0;
    return b;
}

static void assert_same_state(const EwcState *x, const EwcState *y)
{
    cr_assert_eq(x->n_sets, y->n_sets);
    cr_assert_eq(x->tasks_seen, y->tasks_seen);
    const size_t n = x->hi - x->lo;
    for (int k = 0; k < x->n_sets; k++) {
        cr_assert_eq(x->task_id[k], y->task_id[k]);
        cr_assert_eq(memcmp(x->fisher[k], y->fisher[k], n * sizeof(float)), 0, "fisher %d", k);
        cr_assert_eq(memcmp(x->anchor[k], y->anchor[k], n * sizeof(float)), 0, "anchor %d", k);
    }
}

Test(ewc_update, staged_state_gives_the_bits_of_the_host_path)
{
    char path[512];
    mkdir(DSTRAIN_TEST_TMP, 0755);
    snprintf(path, sizeof(path), "%s/ewc-staged-%ld.h5", DSTRAIN_TEST_TMP, (long)getpid());
    const Backend staged = staged_backend();
    /* a shard that crosses a staging chunk's end, starting off a chunk boundary */
    const size_t total = EWC_STAGE_FLOATS + 4321, lo = 777, hi = total;
    float *params = random_floats(total, -1.0f, 1.0f);
    float *f1 = random_floats(total, 0.0f, 1.0f), *f2 = random_floats(total, 0.0f, 1.0f);
    for (int mode = EWC_ONLINE; mode <= EWC_SEPARATE; mode++) {
        EwcState host, dev;
        cr_assert_eq(ewc_init(&host, mode, 1.5f, 0.8f, lo, hi), DS_OK);
        cr_assert_eq(ewc_init_on(&dev, mode, 1.5f, 0.8f, lo, hi, &staged), DS_OK);
        cr_assert_null(host.staging);
        cr_assert_not_null(dev.staging);
        for (int task = 0; task < 2; task++) {
            const float *fn = task ? f2 : f1;
            cr_assert_eq(ewc_consolidate(&host, fn, params, task), DS_OK);
            cr_assert_eq(ewc_consolidate(&dev, fn, params, task), DS_OK);
            params[lo + 5] += 0.25f; /* the second anchor differs */
            params[total - 3] -= 0.5f;
        }
        assert_same_state(&host, &dev);
        cr_assert_eq(dev.n_sets, mode == EWC_ONLINE ? 1 : 2);
        double a = ewc_penalty(&host, params), b = ewc_penalty(&dev, params);
        cr_assert(a > 0);
        cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0, "%.17g vs %.17g", a, b);
        double pa = 0.5, pb = 0.5; /* a part, continuing a sum */
        ewc_penalty_accumulate(&host, params, lo + 100, hi - 7, &pa);
        ewc_penalty_accumulate(&dev, params, lo + 100, hi - 7, &pb);
        cr_assert_eq(memcmp(&pa, &pb, sizeof(pa)), 0);
        /* the fused update reads the pairs where ewc_sets_at says */
        const float *fs[EWC_MAX_SETS], *as[EWC_MAX_SETS];
        cr_assert_eq(ewc_sets_at(&dev, lo + 9, fs, as), dev.n_sets);
        cr_assert_eq(fs[0], dev.fisher[0] + 9);
        cr_assert_eq(as[dev.n_sets - 1], dev.anchor[dev.n_sets - 1] + 9);

        /* the flat file both ways: staged writes, host reads, and back */
        cr_assert_eq(ewc_save(&dev, path, total, 1), DS_OK, "%s", ds_last_error());
        EwcState back;
        cr_assert_eq(ewc_init(&back, mode, 1.5f, 0.8f, lo, hi), DS_OK);
        cr_assert_eq(ewc_load(&back, path, total), DS_OK, "%s", ds_last_error());
        assert_same_state(&host, &back);
        ewc_free(&back);
        cr_assert_eq(ewc_save(&host, path, total, 1), DS_OK);
        cr_assert_eq(ewc_init_on(&back, mode, 1.5f, 0.8f, lo, hi, &staged), DS_OK);
        cr_assert_eq(ewc_load(&back, path, total), DS_OK, "%s", ds_last_error());
        assert_same_state(&host, &back);
        ewc_free(&back);
        ewc_free(&host);
        ewc_free(&dev);
    }
    remove(path);
    free(params), free(f1), free(f2);
}

static void tiny_config(ModelConfig *mc)
{
    memset(mc, 0, sizeof(*mc));
    mc->arch = ARCH_LLAMA;
    mc->vocab_size = 11;
    mc->hidden_size = 8;
    mc->intermediate_size = 12;
    mc->num_layers = 1;
    mc->num_heads = 2;
    mc->num_kv_heads = 2;
    mc->head_dim = 4;
    mc->max_position_embeddings = 16;
    mc->rms_norm_eps = 1e-5f;
    mc->rope_theta = 10000.0;
    mc->rope_factor = 1.0;
    mc->bos_token_id = mc->eos_token_id = mc->pad_token_id = -1;
}

Test(ewc_update, staged_tensor_file_loads_the_bits_of_the_host_path)
{
    char path[512];
    mkdir(DSTRAIN_TEST_TMP, 0755);
    snprintf(path, sizeof(path), "%s/ewc-staged-tensors-%ld.h5", DSTRAIN_TEST_TMP, (long)getpid());
    const Backend staged = staged_backend();
    ModelConfig mc;
    tiny_config(&mc);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    float *f = random_floats(pt.total, 0.0f, 1.0f), *a = random_floats(pt.total, -1.0f, 1.0f);
    EwcState e;
    cr_assert_eq(ewc_init(&e, EWC_SEPARATE, 2.0f, 1.0f, 0, pt.total), DS_OK);
    cr_assert_eq(ewc_consolidate(&e, f, a, 3), DS_OK);
    cr_assert_eq(ewc_consolidate(&e, a, f, 4), DS_OK);
    cr_assert_eq(ewc_save_begin(&e, path), DS_OK, "%s", ds_last_error());
    /* each half in its own call (one scratch buffer serves both) */
    cr_assert_eq(ewc_save_set(path, &pt, 0, f, NULL), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ewc_save_set(path, &pt, 0, NULL, a), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ewc_save_set(path, &pt, 1, a, f), DS_OK, "%s", ds_last_error());
    const size_t lo = pt.total / 3, hi = pt.total; /* a shard, as ZeRO would cut it */
    EwcState host, dev;
    cr_assert_eq(ewc_init(&host, EWC_SEPARATE, 2.0f, 1.0f, lo, hi), DS_OK);
    cr_assert_eq(ewc_init_on(&dev, EWC_SEPARATE, 2.0f, 1.0f, lo, hi, &staged), DS_OK);
    cr_assert_eq(ewc_load_tensors(&host, path, &pt), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ewc_load_tensors(&dev, path, &pt), DS_OK, "%s", ds_last_error());
    assert_same_state(&host, &dev);
    cr_assert_eq(dev.n_sets, 2);
    cr_assert_eq(dev.task_id[1], 4);
    for (int i = 0; i < pt.count; i++) { /* tensors' values where they belong; padding 0 */
        const ParamInfo *p = &pt.items[i];
        for (size_t el = 0; el < p->numel; el++) {
            const size_t flat = p->offset + el;
            if (flat < lo || flat >= hi) continue;
            cr_assert_eq(dev.fisher[0][flat - lo], f[flat]);
            cr_assert_eq(dev.anchor[0][flat - lo], a[flat]);
            cr_assert_eq(dev.fisher[1][flat - lo], a[flat]);
        }
    }
    ewc_free(&host);
    ewc_free(&dev);
    ewc_free(&e);
    param_table_free(&pt);
    free(f), free(a);
    remove(path);
}

#define T_TINY 4
static int example_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    int *next = ctx;
    for (int t = 0; t < T_TINY; t++) {
        inputs[t] = (*next * 3 + t * 5) % 11;
        targets[t] = (*next * 7 + t + 1) % 11;
        weights[t] = t == 0 ? 0.0f : 1.0f;
    }
    ++*next;
    return DS_OK;
}

/* The Fisher pass on a model in a backend's own memory squares its gradients on the host,
 * staged: the same estimate, bit for bit. */
Test(ewc_update, staged_fisher_pass_gives_the_bits_of_the_host_path)
{
    const Backend staged = staged_backend();
    ModelConfig mc;
    tiny_config(&mc);
    Model host, dev;
    cr_assert_eq(model_init(&host, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    cr_assert_eq(model_init(&dev, &mc, &staged, 1, T_TINY), DS_OK);
    model_init_weights(&host, 5, 0.5f);
    memcpy(dev.params, host.params, host.table.total * sizeof(float));
    float *fh = malloc(host.table.total * sizeof(float)),
          *fd = malloc(host.table.total * sizeof(float));
    FisherOptions opt = {.type = FISHER_EMPIRICAL, .samples = 3, .seed = 1};
    int ch = 0, cd = 0;
    cr_assert_eq(ewc_estimate_fisher(&host, &opt, example_next, &ch, fh), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(ewc_estimate_fisher(&dev, &opt, example_next, &cd, fd), DS_OK, "%s",
                 ds_last_error());
    double mass = 0.0;
    for (size_t i = 0; i < host.table.total; i++)
        mass += fh[i];
    cr_assert(mass > 0);
    cr_assert_eq(memcmp(fh, fd, host.table.total * sizeof(float)), 0);
    free(fh), free(fd);
    model_free(&host);
    model_free(&dev);
}

/* Nightly online EWC, re-anchored after every night, with weight decay on and no data gradient:
 * weights the Fisher does not protect (F = 0) keep only the decay. Toward 0 they lose lr * wd of
 * themselves a step, night after night (each re-anchoring forgives the night's shrinkage): after
 * 10 nights of 100 steps (1 - 1e-3)^1000 = 0.368 of themselves. Toward the anchor, the default,
 * they stay where the last night left them, bit for bit; and a weight moved off the anchor
 * goes back toward it, not toward 0. Tensors without decay (norms) stay put either way. */
Test(ewc_update, decay_toward_the_anchor_keeps_unprotected_weights_across_nights)
{
    ModelConfig mc;
    tiny_config(&mc);
    Config cfg;
    config_set_defaults(&cfg);
    cfg.optim_weight_decay = 0.1f;
    const float lr = 1e-2f;
    for (int decay = EWC_DECAY_ANCHOR; decay <= EWC_DECAY_ZERO; decay++) {
        Model m;
        cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
        model_init_weights(&m, 8, 0.5f);
        const size_t n = m.table.total;
        float *start = copy_of(m.params, n), *zero = calloc(n, sizeof(float));
        Optimizer opt;
        cr_assert_eq(optim_init(&opt, &m.table), DS_OK);
        EwcState e;
        cr_assert_eq(ewc_init(&e, EWC_ONLINE, 5.0f, 1.0f, 0, n), DS_OK);
        cr_assert_eq(e.decay, EWC_DECAY_ANCHOR, "the default");
        e.decay = decay;
        opt.ewc = &e;
        for (int night = 0; night < 10; night++) {
            cr_assert_eq(ewc_consolidate(&e, zero, m.params, night), DS_OK);
            memset(opt.m, 0, n * sizeof(float)), memset(opt.v, 0, n * sizeof(float));
            opt.t = 0;
            for (int step = 0; step < 100; step++) {
                model_zero_grad(&m);
                optim_step(&opt, &m, &cfg, lr, 1.0f);
            }
        }
        const ParamInfo *w = param_table_find(&m.table, "model.layers.0.mlp.up_proj.weight");
        const ParamInfo *norm = param_table_find(&m.table, "model.norm.weight");
        cr_assert(w && w->weight_decay && norm && !norm->weight_decay);
        cr_assert_eq(
            memcmp(m.params + norm->offset, start + norm->offset, norm->numel * sizeof(float)), 0);
        if (decay == EWC_DECAY_ANCHOR) {
            cr_assert_eq(memcmp(m.params, start, n * sizeof(float)), 0, "nothing moved");
            /* 1 off the anchor: 100 steps of decay leave (1 - lr wd)^100 = 0.905 of that */
            m.params[w->offset] += 1.0f;
            opt.t = 0;
            for (int step = 0; step < 100; step++) {
                model_zero_grad(&m);
                optim_step(&opt, &m, &cfg, lr, 1.0f);
            }
            const double off = (double)m.params[w->offset] - start[w->offset];
            cr_assert(fabs(off - pow(1.0 - 1e-3, 100)) < 1e-4, "%.6g from the anchor", off);
        } else {
            const double want = pow(1.0 - (double)lr * cfg.optim_weight_decay, 1000);
            for (size_t i = 0; i < w->numel; i++) {
                const double got = m.params[w->offset + i], was = start[w->offset + i];
                /* 1000 roundings of a multiplication: a few 1e-5 relative at most */
                cr_assert(fabs(got - want * was) <= 1e-4 * fabs(was), "[%zu] %.7g, %.7g of %.7g", i,
                          got, want, was);
            }
        }
        ewc_free(&e);
        optim_free(&opt);
        free(start), free(zero);
        model_free(&m);
    }
    EwcDecay d;
    cr_assert_eq(ewc_decay_parse("zero", &d), DS_OK);
    cr_assert_eq(d, EWC_DECAY_ZERO);
    cr_assert_eq(ewc_decay_parse("anchor", &d), DS_OK);
    cr_assert_eq(d, EWC_DECAY_ANCHOR);
    cr_assert_eq(ewc_decay_parse("none", &d), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "continual.ewc.decay") != NULL);
}
