/* test_ewc.c: EWC against direct computations: the Fisher of a tiny classification model
 * against finite-difference gradients, the fused AdamW+EWC update against AdamW on the
 * analytic penalty gradient, online / separate consolidation, the state file across a change of
 * shard layout (flat, and whole tensors across tensor-parallel layouts), the Fisher split over
 * data-parallel ranks, the memory estimate, and the classification head's gradient; the
 * causal-LM Fisher as a per-token quantity (the same scale at any seq_len, loss mask or batch)
 * and the identity type. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5_narrow.h"
#include "trainer/common.h"
#include "trainer/config.h"
#include "trainer/ewc.h"
#include "trainer/model.h"
#include "trainer/optim.h"

static void tiny_config(ModelConfig *mc, int num_labels)
{
    memset(mc, 0, sizeof(*mc));
    mc->arch = ARCH_LLAMA;
    mc->vocab_size = 11;
    mc->hidden_size = 8;
    mc->intermediate_size = 12;
    mc->num_layers = 1;
    mc->num_heads = 2;
    mc->num_kv_heads = 1;
    mc->head_dim = 4;
    mc->max_position_embeddings = 16;
    mc->rms_norm_eps = 1e-5f;
    mc->rope_theta = 10000.0;
    mc->rope_factor = 1.0;
    mc->bos_token_id = mc->eos_token_id = -1;
    mc->pad_token_id = 0;
    mc->num_labels = num_labels;
}

#define T_TINY 5
#define N_EXAMPLES 4
/* rows end in padding (token 0) of different lengths: the head must read the last real token */
static const int32_t example_tokens[N_EXAMPLES][T_TINY] = {
    {3, 5, 7, 0, 0}, {1, 2, 3, 4, 5}, {9, 9, 0, 0, 0}, {4, 10, 6, 8, 0}};
static const int32_t example_labels[N_EXAMPLES] = {2, 0, 1, 2};

typedef struct ExampleCursor {
    int next;
} ExampleCursor;

static int example_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    ExampleCursor *c = ctx;
    int i = c->next++ % N_EXAMPLES;
    memcpy(inputs, example_tokens[i], sizeof(example_tokens[i]));
    targets[0] = example_labels[i];
    for (int t = 0; t < T_TINY; t++)
        weights[t] = 1.0f;
    return DS_OK;
}

/* One causal-LM example, the same at every call: inputs, targets and a loss mask of T. */
typedef struct FixedExample {
    int T;
    const int32_t *inputs, *targets;
    const float *mask;
} FixedExample;

static int fixed_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    const FixedExample *e = ctx;
    memcpy(inputs, e->inputs, (size_t)e->T * sizeof(int32_t));
    memcpy(targets, e->targets, (size_t)e->T * sizeof(int32_t));
    memcpy(weights, e->mask, (size_t)e->T * sizeof(float));
    return DS_OK;
}

/* Loss of one example with one label, through the forward only. */
static double loss_of(Model *m, int example, int label)
{
    const float one = 1.0f;
    int32_t y = label;
    return model_forward(m, example_tokens[example], &y, &one, NULL);
}

/* Central finite difference of loss_of with respect to params[index]. */
static double fd_grad(Model *m, size_t index, int example, int label)
{
    const float h = 1e-2f;
    float keep = m->params[index];
    m->params[index] = keep + h;
    double up = loss_of(m, example, label);
    m->params[index] = keep - h;
    double down = loss_of(m, example, label);
    m->params[index] = keep;
    return (up - down) / (2.0 * (double)h);
}

static void class_probs(Model *m, int example, double *p, int L)
{
    float logits[8];
    model_forward(m, example_tokens[example], NULL, NULL, logits);
    double mx = logits[0], sum = 0.0;
    for (int c = 1; c < L; c++)
        mx = logits[c] > mx ? logits[c] : mx;
    for (int c = 0; c < L; c++)
        sum += p[c] = exp(logits[c] - mx);
    for (int c = 0; c < L; c++)
        p[c] /= sum;
}

/* A few entries of several tensors: the head, the final norm, an MLP matrix, the embedding row of
 * a token used by the examples. */
static size_t probe_index(const Model *m, int which)
{
    const char *names[] = {"score.weight", "model.norm.weight",
                           "model.layers.0.mlp.down_proj.weight", "model.embed_tokens.weight",
                           "model.layers.0.self_attn.q_proj.weight"};
    const size_t within[] = {5, 3, 17, 3 * 8 + 2, 9};
    const ParamInfo *p = param_table_find(&m->table, names[which % 5]);
    cr_assert_not_null(p);
    return p->offset + (within[which % 5] + (size_t)(which / 5)) % p->numel;
}

Test(ewc, fisher_of_tiny_model_matches_finite_differences)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    model_init_weights(&m, 7, 0.5f);
    float *fisher = malloc(m.table.total * sizeof(float));
    cr_assert_not_null(fisher);

    for (int type = FISHER_EMPIRICAL; type <= FISHER_EXACT; type += 2) {
        FisherOptions opt = {.type = type, .samples = N_EXAMPLES, .batched = 0, .seed = 1};
        ExampleCursor cur = {0};
        cr_assert_eq(ewc_estimate_fisher(&m, &opt, example_next, &cur, fisher), DS_OK, "%s",
                     ds_last_error());
        for (int probe = 0; probe < 10; probe++) {
            size_t i = probe_index(&m, probe);
            double direct = 0.0;
            for (int e = 0; e < N_EXAMPLES; e++) {
                if (type == FISHER_EMPIRICAL) {
                    double g = fd_grad(&m, i, e, example_labels[e]);
                    direct += g * g;
                } else {
                    double p[3];
                    class_probs(&m, e, p, 3);
                    for (int c = 0; c < 3; c++) {
                        double g = fd_grad(&m, i, e, c);
                        direct += p[c] * g * g;
                    }
                }
            }
            direct /= N_EXAMPLES;
            cr_assert(fabs(fisher[i] - direct) <= 2e-3 * fabs(direct) + 1e-6,
                      "type %d, %s: Fisher %.8g, direct %.8g", type, m.table.items[0].name,
                      (double)fisher[i], direct);
        }
    }
    free(fisher);
    model_free(&m);
}

Test(ewc, batched_fisher_is_batch_size_times_squared_mean_gradient)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model one, batch;
    cr_assert_eq(model_init(&one, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    cr_assert_eq(model_init(&batch, &mc, backend_cpu(), N_EXAMPLES, T_TINY), DS_OK);
    model_init_weights(&one, 3, 0.5f);
    memcpy(batch.params, one.params, one.table.total * sizeof(float));
    const size_t n = one.table.total;
    float *fb = malloc(n * sizeof(float)), *fe = malloc(n * sizeof(float));
    double *mean = calloc(n, sizeof(double));
    FisherOptions opt = {.type = FISHER_EMPIRICAL, .samples = N_EXAMPLES, .batched = 1};
    ExampleCursor cur = {0};
    cr_assert_eq(ewc_estimate_fisher(&batch, &opt, example_next, &cur, fb), DS_OK, "%s",
                 ds_last_error());
    /* direct: per-example gradients from the batch-1 model, averaged, squared, times B */
    for (int e = 0; e < N_EXAMPLES; e++) {
        model_zero_grad(&one);
        loss_of(&one, e, example_labels[e]);
        model_backward(&one);
        for (size_t i = 0; i < n; i++)
            mean[i] += one.grads[i] / (double)N_EXAMPLES;
    }
    /* and the per-example estimate differs from it (a different estimator) */
    opt.batched = 0;
    cur.next = 0;
    cr_assert_eq(ewc_estimate_fisher(&one, &opt, example_next, &cur, fe), DS_OK);
    double diff = 0.0;
    for (size_t i = 0; i < n; i++) {
        double want = N_EXAMPLES * mean[i] * mean[i];
        cr_assert(fabs(fb[i] - want) <= 1e-4 * fabs(want) + 1e-7, "%zu: %g vs %g", i, (double)fb[i],
                  want);
        diff += fabs(fb[i] - fe[i]);
    }
    cr_assert_gt(diff, 1e-3);
    free(fb);
    free(fe);
    free(mean);
    model_free(&one);
    model_free(&batch);
}

Test(ewc, sampled_fisher_is_seeded_and_averages_to_the_exact_one)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    model_init_weights(&m, 11, 0.5f);
    const size_t n = m.table.total;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)),
          *x = malloc(n * sizeof(float));
    FisherOptions opt = {.type = FISHER_SAMPLED, .samples = 400, .seed = 5};
    ExampleCursor cur = {0};
    cr_assert_eq(ewc_estimate_fisher(&m, &opt, example_next, &cur, a), DS_OK);
    cur.next = 0;
    cr_assert_eq(ewc_estimate_fisher(&m, &opt, example_next, &cur, b), DS_OK);
    cr_assert_eq(memcmp(a, b, n * sizeof(float)), 0, "same seed, same estimate");
    FisherOptions ex = {.type = FISHER_EXACT, .samples = N_EXAMPLES};
    cur.next = 0;
    cr_assert_eq(ewc_estimate_fisher(&m, &ex, example_next, &cur, x), DS_OK);
    /* 100 draws per example: the total Fisher mass agrees within a few percent */
    double sa = 0.0, sx = 0.0;
    for (size_t i = 0; i < n; i++)
        sa += a[i], sx += x[i];
    cr_assert(fabs(sa - sx) < 0.1 * sx, "sampled %g, exact %g", sa, sx);
    free(a);
    free(b);
    free(x);
    model_free(&m);
}

Test(ewc, classification_head_gradient_matches_finite_differences)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    model_init_weights(&m, 21, 0.5f);
    cr_assert_null(param_table_find(&m.table, "lm_head.weight"));
    const ParamInfo *score = param_table_find(&m.table, "score.weight");
    cr_assert_not_null(score);
    cr_assert_eq(score->shape[0], 3);
    cr_assert_eq(score->shape[1], 8);
    for (int e = 0; e < N_EXAMPLES; e++) {
        model_zero_grad(&m);
        loss_of(&m, e, example_labels[e]);
        model_backward(&m);
        for (int probe = 0; probe < 10; probe++) {
            size_t i = probe_index(&m, probe);
            double fd = fd_grad(&m, i, e, example_labels[e]);
            cr_assert(fabs(m.grads[i] - fd) <= 1e-2 * fabs(fd) + 5e-5,
                      "example %d probe %d: %g vs %g", e, probe, (double)m.grads[i], fd);
        }
    }
    /* padding after the last real token changes nothing */
    int32_t padded[T_TINY] = {3, 5, 7, 0, 0}, other[T_TINY] = {3, 5, 7, 0, 0};
    float la[3], lb[3];
    model_forward(&m, padded, NULL, NULL, la);
    model_forward(&m, other, NULL, NULL, lb);
    cr_assert_eq(memcmp(la, lb, sizeof(la)), 0);
    cr_assert_eq(m.cls_last[0], 2);
    model_free(&m);
}

Test(ewc, fused_update_equals_adamw_on_the_analytic_penalty_gradient)
{
    const size_t total = 300;
    float *params = malloc(total * sizeof(float)), *grad = malloc(total * sizeof(float));
    float *fisher = malloc(total * sizeof(float)), *anchor = malloc(total * sizeof(float));
    for (size_t i = 0; i < total; i++) {
        params[i] = sinf((float)i * 0.37f);
        anchor[i] = cosf((float)i * 0.11f) * 0.5f;
        fisher[i] = (float)((i * 7) % 13) / 13.0f;
    }
    /* shard [100, 250) of the layout, as one data-parallel rank would hold it */
    EwcState e;
    cr_assert_eq(ewc_init(&e, EWC_ONLINE, 3.5f, 0.9f, 100, 250), DS_OK);
    cr_assert_eq(ewc_consolidate(&e, fisher, anchor, 0), DS_OK);
    const float lambda = 3.5f;
    double analytic_penalty = 0.0;
    for (size_t i = 100; i < 250; i++)
        analytic_penalty += 0.5 * lambda * fisher[i] * ((double)params[i] - anchor[i]) *
                            ((double)params[i] - anchor[i]);
    cr_assert(fabs(ewc_penalty(&e, params) - analytic_penalty) < 1e-9 * analytic_penalty + 1e-12);

    /* the penalty gradient is the derivative of the penalty (central differences) */
    for (size_t i = 100; i < 250; i += 37) {
        float keep = params[i];
        params[i] = keep + 1e-3f;
        double up = ewc_penalty(&e, params);
        params[i] = keep - 1e-3f;
        double down = ewc_penalty(&e, params);
        params[i] = keep;
        double fd = (up - down) / 2e-3;
        double analytic = lambda * fisher[i] * ((double)keep - anchor[i]);
        cr_assert(fabs(fd - analytic) < 1e-3 * fabs(analytic) + 1e-4, "%zu: %g vs %g", i, fd,
                  analytic);
    }

    /* fused update on [120, 220) vs the backend's AdamW given grad_scale*grad + lambda F d */
    const size_t lo = 120, n = 100;
    float *p1 = malloc(n * sizeof(float)), *p2 = malloc(n * sizeof(float));
    float *m1 = calloc(n, sizeof(float)), *v1 = calloc(n, sizeof(float));
    float *m2 = calloc(n, sizeof(float)), *v2 = calloc(n, sizeof(float));
    float *g2 = malloc(n * sizeof(float));
    memcpy(p1, params + lo, n * sizeof(float));
    memcpy(p2, params + lo, n * sizeof(float));
    for (size_t i = 0; i < total; i++)
        grad[i] = 0.01f * (float)((int)(i % 5) - 2);
    const float scale = 0.5f;
    for (int t = 1; t <= 3; t++) {
        double pen = 0.0, want_pen = 0.0;
        for (size_t i = 0; i < n; i++) {
            float d = p2[i] - anchor[lo + i];
            float fd = fisher[lo + i] * d;
            g2[i] = (grad[lo + i] * scale + lambda * fd) / scale;
            want_pen += 0.5 * lambda * (double)fd * d;
        }
        const float *fs[EWC_MAX_SETS], *as[EWC_MAX_SETS];
        const int sets = ewc_sets_at(&e, lo, fs, as);
        backend_cpu()->adamw_ewc_update(backend_cpu(), p1, grad + lo, m1, v1, n, 1e-2f, 0.9f, 0.95f,
                                        1e-8f, 0.1f, scale, t, fs, as, sets, e.lambda, 0, &pen);
        backend_cpu()->adamw_update(backend_cpu(), p2, g2, m2, v2, n, 1e-2f, 0.9f, 0.95f, 1e-8f,
                                    0.1f, scale, t);
        cr_assert(fabs(pen - want_pen) < 1e-6 * want_pen + 1e-12, "step %d: %g vs %g", t, pen,
                  want_pen);
        for (size_t i = 0; i < n; i++)
            cr_assert(fabsf(p1[i] - p2[i]) <= 2e-6f * fabsf(p2[i]) + 1e-7f,
                      "step %d [%zu]: %.9g vs %.9g", t, i, (double)p1[i], (double)p2[i]);
    }
    /* without a Fisher the fused update is plain AdamW, bit for bit */
    EwcState empty;
    cr_assert_eq(ewc_init(&empty, EWC_ONLINE, 3.5f, 1.0f, 0, total), DS_OK);
    memcpy(p1, params, n * sizeof(float));
    memcpy(p2, params, n * sizeof(float));
    memset(m1, 0, n * sizeof(float)), memset(v1, 0, n * sizeof(float));
    memset(m2, 0, n * sizeof(float)), memset(v2, 0, n * sizeof(float));
    const float *none[EWC_MAX_SETS];
    cr_assert_eq(ewc_sets_at(&empty, 0, none, none), 0);
    backend_cpu()->adamw_ewc_update(backend_cpu(), p1, grad, m1, v1, n, 1e-2f, 0.9f, 0.95f, 1e-8f,
                                    0.1f, 1.0f, 1, none, none, 0, empty.lambda, 0, NULL);
    backend_cpu()->adamw_update(backend_cpu(), p2, grad, m2, v2, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                                1.0f, 1);
    cr_assert_eq(memcmp(p1, p2, n * sizeof(float)), 0);
    ewc_free(&e);
    free(params), free(grad), free(fisher), free(anchor), free(p1), free(p2);
    free(m1), free(v1), free(m2), free(v2), free(g2);
}

Test(ewc, optim_step_with_ewc_attached_pulls_toward_the_anchor)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    model_init_weights(&m, 2, 0.5f);
    const size_t n = m.table.total;
    Config cfg;
    config_set_defaults(&cfg);
    Optimizer opt;
    cr_assert_eq(optim_init(&opt, &m.table), DS_OK);
    EwcState e;
    cr_assert_eq(ewc_init(&e, EWC_ONLINE, 10.0f, 1.0f, 0, n), DS_OK);
    float *fisher = malloc(n * sizeof(float)), *anchor = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        fisher[i] = 1.0f, anchor[i] = 0.0f;
    cr_assert_eq(ewc_consolidate(&e, fisher, anchor, 0), DS_OK);
    opt.ewc = &e;
    model_zero_grad(&m); /* no data gradient: only the penalty moves the weights */
    double before = ewc_penalty(&e, m.params);
    optim_step(&opt, &m, &cfg, 1e-2f, 1.0f);
    cr_assert(fabs(opt.ewc_penalty - before) < 1e-9 * before);
    cr_assert_lt(ewc_penalty(&e, m.params), before);
    ewc_free(&e);
    optim_free(&opt);
    free(fisher);
    free(anchor);
    model_free(&m);
}

Test(ewc, online_and_separate_consolidation)
{
    const size_t n = 16;
    float f1[16], f2[16], t1[16], t2[16], p[16];
    for (size_t i = 0; i < n; i++)
        f1[i] = (float)i, f2[i] = 1.0f, t1[i] = 0.5f, t2[i] = -1.0f, p[i] = 2.0f;
    EwcState on, sep;
    cr_assert_eq(ewc_init(&on, EWC_ONLINE, 2.0f, 0.5f, 0, n), DS_OK);
    cr_assert_eq(ewc_init(&sep, EWC_SEPARATE, 2.0f, 0.5f, 0, n), DS_OK);
    cr_assert_eq(ewc_consolidate(&on, f1, t1, 0), DS_OK);
    cr_assert_eq(ewc_consolidate(&on, f2, t2, 1), DS_OK);
    cr_assert_eq(ewc_consolidate(&sep, f1, t1, 0), DS_OK);
    cr_assert_eq(ewc_consolidate(&sep, f2, t2, 1), DS_OK);
    cr_assert_eq(on.n_sets, 1);
    cr_assert_eq(sep.n_sets, 2);
    double want_on = 0.0, want_sep = 0.0;
    for (size_t i = 0; i < n; i++) {
        cr_assert_float_eq(on.fisher[0][i], 0.5f * f1[i] + f2[i], 1e-6);
        cr_assert_float_eq(on.anchor[0][i], t2[i], 0);
        want_on += (0.5 * f1[i] + f2[i]) * 9.0;
        want_sep += f1[i] * 2.25 + f2[i] * 9.0;
    }
    cr_assert(fabs(ewc_penalty(&on, p) - want_on) < 1e-6 * want_on);
    cr_assert(fabs(ewc_penalty(&sep, p) - want_sep) < 1e-6 * want_sep);
    ewc_free(&on);
    ewc_free(&sep);
}

Test(ewc, state_survives_save_restore_and_a_change_of_shards)
{
    char path[512];
    mkdir(DSTRAIN_TEST_TMP, 0755); /* the build creates no scratch directory */
    snprintf(path, sizeof(path), "%s/ewc-state-%ld.h5", DSTRAIN_TEST_TMP, (long)getpid());
    const size_t total = 1000;
    float *f = malloc(total * sizeof(float)), *a = malloc(total * sizeof(float));
    for (int mode = EWC_ONLINE; mode <= EWC_SEPARATE; mode++) {
        /* two ranks hold [0, 400) and [400, 1000); each consolidates two tasks */
        EwcState r[2];
        size_t cut[3] = {0, 400, total};
        for (int k = 0; k < 2; k++) {
            cr_assert_eq(ewc_init(&r[k], mode, 5.0f, 0.7f, cut[k], cut[k + 1]), DS_OK);
            for (int task = 0; task < 2; task++) {
                for (size_t i = 0; i < total; i++)
                    f[i] = (float)(i % 17) + task, a[i] = (float)i * 0.001f - task;
                cr_assert_eq(ewc_consolidate(&r[k], f, a, task), DS_OK);
            }
        }
        cr_assert_eq(ewc_save(&r[0], path, total, 1), DS_OK, "%s", ds_last_error());
        cr_assert_eq(ewc_save(&r[1], path, total, 0), DS_OK, "%s", ds_last_error());
        /* three ranks now, and one */
        size_t cut3[4] = {0, 333, 666, total};
        for (int k = 0; k < 3; k++) {
            EwcState s;
            cr_assert_eq(ewc_init(&s, mode, 5.0f, 0.7f, cut3[k], cut3[k + 1]), DS_OK);
            cr_assert_eq(ewc_load(&s, path, total), DS_OK, "%s", ds_last_error());
            cr_assert_eq(s.n_sets, r[0].n_sets);
            cr_assert_eq(s.tasks_seen, 2);
            for (int set = 0; set < s.n_sets; set++)
                for (size_t i = s.lo; i < s.hi; i++) {
                    const EwcState *owner = i < 400 ? &r[0] : &r[1];
                    cr_assert_eq(s.fisher[set][i - s.lo], owner->fisher[set][i - owner->lo]);
                    cr_assert_eq(s.anchor[set][i - s.lo], owner->anchor[set][i - owner->lo]);
                }
            ewc_free(&s);
        }
        EwcState whole;
        cr_assert_eq(ewc_init(&whole, mode, 5.0f, 0.7f, 0, total), DS_OK);
        cr_assert_eq(ewc_load(&whole, path, total), DS_OK);
        float *params = malloc(total * sizeof(float));
        for (size_t i = 0; i < total; i++)
            params[i] = 0.3f;
        double split = ewc_penalty(&r[0], params) + ewc_penalty(&r[1], params);
        cr_assert(fabs(ewc_penalty(&whole, params) - split) < 1e-9 * split);
        free(params);
        /* hostile: another model's layout, another mode */
        EwcState bad;
        cr_assert_eq(ewc_init(&bad, mode, 5.0f, 0.7f, 0, 10), DS_OK);
        cr_assert_eq(ewc_load(&bad, path, 10), DS_ERR_INPUT);
        cr_assert(strstr(ds_last_error(), "parameter slots") != NULL, "%s", ds_last_error());
        cr_assert_eq(
            ewc_init(&bad, mode == EWC_ONLINE ? EWC_SEPARATE : EWC_ONLINE, 5.0f, 0.7f, 0, total),
            DS_OK);
        cr_assert_eq(ewc_load(&bad, path, total), DS_ERR_INPUT);
        cr_assert(strstr(ds_last_error(), "continual.ewc.mode") != NULL, "%s", ds_last_error());
        ewc_free(&whole);
        ewc_free(&r[0]);
        ewc_free(&r[1]);
    }
    /* numbers stored as integers using 32 of their 64 bits (legal HDF5 that libhdf5 1.10
     * converts by what the type states): refused by name before they are read */
    const char *narrowed[2] = {"fisher_0", "format"};
    for (int k = 0; k < 2; k++) {
        EwcState one;
        cr_assert_eq(ewc_init(&one, EWC_ONLINE, 5.0f, 0.7f, 0, total), DS_OK);
        for (size_t i = 0; i < total; i++)
            f[i] = (float)(i % 5), a[i] = 0.5f;
        cr_assert_eq(ewc_consolidate(&one, f, a, 0), DS_OK);
        cr_assert_eq(ewc_save(&one, path, total, 1), DS_OK, "%s", ds_last_error());
        cr_assert_eq(h5_narrow(path, narrowed[k], k == 0), 0);
        cr_assert_eq(ewc_load(&one, path, total), DS_ERR_INPUT, "%s", narrowed[k]);
        char want[128];
        snprintf(want, sizeof(want), "%s \"%s\": not a standard integer type (32 bits",
                 k == 0 ? "dataset" : "attribute", narrowed[k]);
        cr_assert(strstr(ds_last_error(), path) && strstr(ds_last_error(), want), "%s",
                  ds_last_error());
        ewc_free(&one);
    }
    /* not an HDF5 file */
    FILE *junk = fopen(path, "w");
    fputs("not hdf5", junk);
    fclose(junk);
    EwcState s;
    cr_assert_eq(ewc_init(&s, EWC_ONLINE, 1.0f, 1.0f, 0, total), DS_OK);
    cr_assert_eq(ewc_load(&s, path, total), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), path) != NULL);
    free(f);
    free(a);
}

/* The Fisher split over data-parallel ranks (each its share of the examples) sums to the
 * Fisher of one process. */
Test(ewc, fisher_shards_sum_to_the_whole)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    model_init_weights(&m, 3, 0.3f);
    const size_t total = m.table.total;
    float *whole = malloc(total * sizeof(float)), *part = malloc(total * sizeof(float));
    float *sum = calloc(total, sizeof(float));
    for (int type = FISHER_EMPIRICAL; type <= FISHER_EXACT; type += 2) {
        FisherOptions opt = {.type = type, .samples = 7, .seed = 1};
        ExampleCursor c = {0};
        cr_assert_eq(ewc_estimate_fisher(&m, &opt, example_next, &c, whole), DS_OK);
        memset(sum, 0, total * sizeof(float));
        for (int r = 0; r < 3; r++) {
            FisherOptions o = opt;
            o.shard_rank = r;
            o.shard_size = 3;
            ExampleCursor cr = {0};
            cr_assert_eq(ewc_estimate_fisher(&m, &o, example_next, &cr, part), DS_OK);
            cr_assert_eq(cr.next, 7, "every rank reads every example");
            for (size_t i = 0; i < total; i++)
                sum[i] += part[i];
        }
        double peak = 0.0;
        for (size_t i = 0; i < total; i++)
            peak = fmax(peak, whole[i]);
        cr_assert(peak > 0);
        for (size_t i = 0; i < total; i++)
            cr_assert(fabs(sum[i] - whole[i]) <= 1e-6 * peak, "%zu: %g vs %g", i, sum[i],
                      whole[i]);
    }
    free(whole);
    free(part);
    free(sum);
    model_free(&m);
}

/* The layout-free state file: written from one layout (tp = 1), read at tp = 2 (each rank
 * its slices, in a shard of its own layout) and back at tp = 1, values where they belong. */
Test(ewc, tensor_file_loads_at_another_tensor_parallel_layout)
{
    char path[512];
    mkdir(DSTRAIN_TEST_TMP, 0755);
    snprintf(path, sizeof(path), "%s/ewc-tensors-%ld.h5", DSTRAIN_TEST_TMP, (long)getpid());
    ModelConfig mc;
    tiny_config(&mc, 0);
    mc.num_kv_heads = 2;
    ParamTable one, tp[2];
    cr_assert_eq(param_table_build(&mc, &one), DS_OK);
    for (int r = 0; r < 2; r++)
        cr_assert_eq(param_table_build_tp(&mc, r, 2, &tp[r]), DS_OK);
    /* element (row, col) of tensor i holds 1000 i + 10 row + col (+ 0.5 in the anchor) */
    float *f = calloc(one.total, sizeof(float)), *a = calloc(one.total, sizeof(float));
    for (int i = 0; i < one.count; i++) {
        const ParamInfo *p = &one.items[i];
        for (size_t e = 0; e < p->numel; e++) {
            size_t cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
            f[p->offset + e] = 1000.0f * i + 10.0f * (float)(e / cols) + (float)(e % cols);
            a[p->offset + e] = f[p->offset + e] + 0.5f;
        }
    }
    EwcState e;
    cr_assert_eq(ewc_init(&e, EWC_ONLINE, 2.0f, 0.9f, 0, one.total), DS_OK);
    cr_assert_eq(ewc_consolidate(&e, f, a, 4), DS_OK);
    cr_assert_eq(ewc_save_begin(&e, path), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ewc_save_set(path, &one, 0, f, a), DS_OK, "%s", ds_last_error());
    for (int r = 0; r < 2; r++) {
        /* the second half of rank r's layout, as a ZeRO shard over dp = 2 would be */
        const size_t lo = tp[r].total / 2, hi = tp[r].total;
        EwcState s;
        cr_assert_eq(ewc_init(&s, EWC_ONLINE, 2.0f, 0.9f, lo, hi), DS_OK);
        cr_assert_eq(ewc_load_tensors(&s, path, &tp[r]), DS_OK, "%s", ds_last_error());
        cr_assert_eq(s.n_sets, 1);
        cr_assert_eq(s.tasks_seen, 1);
        cr_assert_eq(s.task_id[0], 4);
        int checked = 0;
        for (int i = 0; i < tp[r].count; i++) {
            const ParamInfo *p = &tp[r].items[i];
            size_t cols = p->ndim == 2 ? (size_t)p->slice_len : 1;
            if (p->split_dim != 1) cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
            for (size_t el = 0; el < p->numel; el++) {
                size_t flat = p->offset + el;
                if (flat < lo || flat >= hi) continue;
                size_t row = el / cols, col = el % cols;
                if (p->split_dim == 0) row += (size_t)p->slice_start;
                if (p->split_dim == 1) col += (size_t)p->slice_start;
                float want = 1000.0f * i + 10.0f * (float)row + (float)col;
                cr_assert_eq(s.fisher[0][flat - lo], want, "rank %d %s[%zu]", r, p->name, el);
                cr_assert_eq(s.anchor[0][flat - lo], want + 0.5f);
                checked++;
            }
        }
        cr_assert(checked > 0);
        ewc_free(&s);
    }
    /* hostile: another model's file misses tensors; another mode */
    ModelConfig other = mc;
    other.num_layers = 2;
    ParamTable big;
    cr_assert_eq(param_table_build(&other, &big), DS_OK);
    EwcState s;
    cr_assert_eq(ewc_init(&s, EWC_ONLINE, 2.0f, 0.9f, 0, big.total), DS_OK);
    cr_assert_eq(ewc_load_tensors(&s, path, &big), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "layers.1") != NULL, "%s", ds_last_error());
    ewc_free(&s);
    cr_assert_eq(ewc_init(&s, EWC_SEPARATE, 2.0f, 0.9f, 0, one.total), DS_OK);
    cr_assert_eq(ewc_load_tensors(&s, path, &one), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "continual.ewc.mode") != NULL, "%s", ds_last_error());
    ewc_free(&s);
    ewc_free(&e);
    param_table_free(&big);
    param_table_free(&one);
    for (int r = 0; r < 2; r++)
        param_table_free(&tp[r]);
    free(f);
    free(a);
    remove(path);
}

/* EWC state per rank: a Fisher and an anchor per element of the optimizer's shard. */
Test(ewc, memory_estimate_is_the_optimizer_shard)
{
    ModelConfig mc;
    tiny_config(&mc, 0);
    mc.num_kv_heads = 2;
    mc.hidden_size = 64;
    mc.intermediate_size = 128;
    mc.head_dim = 32;
    mc.vocab_size = 256;
    size_t one, sharded, unsharded, separate;
    ModelMemory mm;
    cr_assert_eq(ewc_memory_estimate(&mc, 2, 8, 1, 1, 1, 1, &one), DS_OK);
    cr_assert_eq(model_memory_estimate(&mc, 2, 8, 1, 1, 1, &mm), DS_OK);
    cr_assert_eq(one, mm.optimizer);
    cr_assert(one >= 8 * mm.params / 4 * 0.99 && one <= 2 * mm.params, "%zu", one);
    cr_assert_eq(ewc_memory_estimate(&mc, 2, 8, 2, 2, 1, 1, &sharded), DS_OK);
    cr_assert(fabs((double)sharded * 4 / (double)one - 1) < 0.05, "%zu vs %zu", sharded, one);
    cr_assert_eq(ewc_memory_estimate(&mc, 2, 8, 2, 2, 0, 1, &unsharded), DS_OK);
    cr_assert(fabs((double)unsharded * 2 / (double)one - 1) < 0.05);
    cr_assert_eq(ewc_memory_estimate(&mc, 2, 8, 1, 1, 1, 3, &separate), DS_OK);
    cr_assert_eq(separate, 3 * one);
    cr_assert_eq(ewc_memory_estimate(&mc, 2, 8, 3, 1, 1, 1, &one), DS_ERR_INPUT);
}

/* ---- the causal-LM Fisher: a per-token quantity ------------------------------------------- */

#define LM_DOCS 1600
#define LM_LONG 64 /* tokens of a document's window at 2T; T = 32 */

/* Documents of 2T + 1 tokens, the same in every test: each a walk through the vocabulary whose
 * steps repeat, so the model's next-token gradients are not noise alone. */
static int32_t lm_doc_token(int doc, int t)
{
    uint64_t z = (uint64_t)doc * 0x9e3779b97f4a7c15ull + 0x1234567ull;
    z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
    const int step = 1 + (int)(z % 4), start = (int)((z >> 8) % 11);
    const int noise = (int)(((uint64_t)(t + 1) * (z | 1) >> 17) % 3 == 0);
    return (int32_t)((start + step * t + noise) % 11);
}

/* Windows of T tokens: the document's [0, 2T) split in 2T / T windows, in order; the loss mask
 * keeps every token, or (half) only even positions of the document. */
typedef struct LmCursor {
    int T, half, next;
} LmCursor;

static int lm_next(void *ctx, int32_t *inputs, int32_t *targets, float *weights)
{
    LmCursor *c = ctx;
    const int per_doc = LM_LONG / c->T, doc = c->next / per_doc;
    const int first = (c->next % per_doc) * c->T;
    c->next++;
    for (int t = 0; t < c->T; t++) {
        inputs[t] = lm_doc_token(doc, first + t);
        targets[t] = lm_doc_token(doc, first + t + 1);
        weights[t] = c->half && (first + t) % 2 ? 0.0f : 1.0f;
    }
    return DS_OK;
}

/* The mean of the Fisher diagonal over the model's tensors. */
static double lm_fisher_mean(const ModelConfig *mc, int T, int half, FisherType type, int batched,
                             uint64_t seed)
{
    Model m;
    const int B = batched ? 4 : 1;
    ModelConfig c = *mc;
    c.max_position_embeddings = LM_LONG;
    cr_assert_eq(model_init(&m, &c, backend_cpu(), B, T), DS_OK);
    model_init_weights(&m, 13, 0.5f); /* the same weights at every T (seeded by the table) */
    float *fisher = malloc(m.table.total * sizeof(float));
    FisherOptions opt = {
        .type = type, .samples = LM_DOCS * (LM_LONG / T), .batched = batched, .seed = seed};
    LmCursor cur = {.T = T, .half = half};
    cr_assert_eq(ewc_estimate_fisher(&m, &opt, lm_next, &cur, fisher), DS_OK, "%s",
                 ds_last_error());
    double sum = 0.0;
    size_t n = 0;
    for (int i = 0; i < m.table.count; i++) {
        const ParamInfo *p = &m.table.items[i];
        for (size_t e = 0; e < p->numel; e++)
            sum += fisher[p->offset + e];
        n += p->numel;
    }
    free(fisher);
    model_free(&m);
    return sum / (double)n;
}

/* The same documents as windows of T and of 2T tokens: a lambda tuned at one seq_len means the
 * same at another. (The old estimate, the square of the gradient of the mean token loss,
 * halves from T to 2T.) 5%: over 1600 documents the mean's own noise (the random signs' cross
 * terms) is about 1.2% (measured over seeds), and at 2T the second half's tokens see a longer
 * context, a real change of up to 3% in this tiny model. */
Test(ewc, causal_lm_fisher_does_not_depend_on_the_sequence_length)
{
    ModelConfig mc;
    tiny_config(&mc, 0);
    for (int type = FISHER_EMPIRICAL; type <= FISHER_SAMPLED; type++) {
        const double shortw = lm_fisher_mean(&mc, LM_LONG / 2, 0, type, 0, 3);
        const double longw = lm_fisher_mean(&mc, LM_LONG, 0, type, 0, 3);
        cr_assert(shortw > 0 && longw > 0);
        cr_assert(fabs(longw / shortw - 1.0) < 0.05,
                  "type %d: mean Fisher %.6g at seq_len %d, %.6g at %d", type, shortw, LM_LONG / 2,
                  longw, LM_LONG);
    }
}

/* A loss mask that keeps half of the tokens gives the same scale (the mean over the tokens
 * trained; 5% as above), and a batched pass estimates the same quantity as the per-example one:
 * its signs also cancel the cross terms between the examples of a batch, which makes it
 * noisier (2.5% sd over seeds here, so 10%); the old batched estimate, B (mean gradient)^2, was
 * smaller by about the number of tokens of an example. */
Test(ewc, causal_lm_fisher_does_not_depend_on_the_loss_mask_or_the_batch)
{
    ModelConfig mc;
    tiny_config(&mc, 0);
    const double all = lm_fisher_mean(&mc, LM_LONG, 0, FISHER_EMPIRICAL, 0, 3);
    const double half = lm_fisher_mean(&mc, LM_LONG, 1, FISHER_EMPIRICAL, 0, 3);
    const double batched = lm_fisher_mean(&mc, LM_LONG, 0, FISHER_EMPIRICAL, 1, 3);
    cr_assert(fabs(half / all - 1.0) < 0.05, "all tokens %.6g, half masked %.6g", all, half);
    cr_assert(fabs(batched / all - 1.0) < 0.10, "per example %.6g, batches of 4 %.6g", all,
              batched);
}

/* The definition itself: sum_t w_t^2 g_t^2 / sum_t w_t^2 with g_t the gradient of token t's
 * loss, computed here one token at a time. With one trained token per example the signs do
 * nothing and the estimate is exact; with several, its mean over many seeds converges to it. */
Test(ewc, causal_lm_fisher_is_the_mean_squared_gradient_of_a_token)
{
    ModelConfig mc;
    tiny_config(&mc, 0);
    enum { T = 6, SEEDS = 400 };
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T), DS_OK);
    model_init_weights(&m, 17, 0.5f);
    const size_t n = m.table.total;
    int32_t in[T], tg[T];
    for (int t = 0; t < T; t++)
        in[t] = lm_doc_token(5, t), tg[t] = lm_doc_token(5, t + 1);
    /* direct: the per-token gradients, mask weights 1, 0.5, 1, 0, 1, 1 */
    const float mask[T] = {1.0f, 0.5f, 1.0f, 0.0f, 1.0f, 1.0f};
    double *direct = calloc(n, sizeof(double)), mass = 0.0;
    float w[T];
    for (int t = 0; t < T; t++) {
        if (mask[t] == 0.0f) continue;
        memset(w, 0, sizeof(w));
        w[t] = 1.0f;
        model_zero_grad(&m);
        model_forward_train(&m, in, tg, w, NULL);
        model_backward(&m);
        for (size_t i = 0; i < n; i++)
            direct[i] += (double)mask[t] * mask[t] * m.grads[i] * m.grads[i];
        mass += (double)mask[t] * mask[t];
    }
    for (size_t i = 0; i < n; i++)
        direct[i] /= mass;
    float *f = malloc(n * sizeof(float));
    double *mean = calloc(n, sizeof(double));
    for (int seed = 0; seed < SEEDS; seed++) {
        FisherOptions opt = {.type = FISHER_EMPIRICAL, .samples = 1, .seed = (uint64_t)seed};
        FixedExample ex = {.T = T, .inputs = in, .targets = tg, .mask = mask};
        cr_assert_eq(ewc_estimate_fisher(&m, &opt, fixed_next, &ex, f), DS_OK, "%s",
                     ds_last_error());
        for (size_t i = 0; i < n; i++)
            mean[i] += f[i] / (double)SEEDS;
    }
    /* the total mass: the cross terms average out as 1/sqrt(SEEDS) (5% allows 3 to 4 sd) */
    double got = 0.0, want = 0.0;
    for (size_t i = 0; i < n; i++)
        got += mean[i], want += direct[i];
    cr_assert(want > 0 && fabs(got / want - 1.0) < 0.05, "mean over seeds %.6g, direct %.6g", got,
              want);
    /* one trained token: exact, element by element */
    const float one_mask[T] = {0, 0, 0, 1.0f, 0, 0};
    memset(w, 0, sizeof(w));
    w[3] = 1.0f;
    model_zero_grad(&m);
    model_forward_train(&m, in, tg, w, NULL);
    model_backward(&m);
    for (size_t i = 0; i < n; i++)
        direct[i] = (double)m.grads[i] * m.grads[i];
    FisherOptions opt = {.type = FISHER_EMPIRICAL, .samples = 1, .seed = 9};
    FixedExample ex = {.T = T, .inputs = in, .targets = tg, .mask = one_mask};
    cr_assert_eq(ewc_estimate_fisher(&m, &opt, fixed_next, &ex, f), DS_OK);
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs(f[i] - direct[i]) <= 1e-6 * direct[i] + 1e-12, "%zu: %g vs %g", i,
                  (double)f[i], direct[i]);
    free(f), free(mean), free(direct);
    model_free(&m);
}

/* identity: F = 1 on every tensor element, 0 in the padding, no example read; over
 * data-parallel shards the 1s sit on shard 0 (the shards sum to 1). */
Test(ewc, identity_fisher_is_one_on_every_parameter_without_a_pass)
{
    ModelConfig mc;
    tiny_config(&mc, 3);
    Model m;
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 1, T_TINY), DS_OK);
    const size_t n = m.table.total;
    float *f = malloc(n * sizeof(float)), *sum = calloc(n, sizeof(float));
    for (int r = 0; r < 3; r++) {
        FisherOptions opt = {
            .type = FISHER_IDENTITY, .samples = 5, .shard_rank = r, .shard_size = 3};
        ExampleCursor cur = {0};
        for (size_t i = 0; i < n; i++)
            f[i] = NAN; /* overwritten everywhere */
        cr_assert_eq(ewc_estimate_fisher(&m, &opt, example_next, &cur, f), DS_OK);
        cr_assert_eq(cur.next, 0, "no example read");
        for (size_t i = 0; i < n; i++)
            sum[i] += f[i];
    }
    size_t ones = 0;
    for (int i = 0; i < m.table.count; i++)
        ones += m.table.items[i].numel;
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(sum[i] == 0.0f || sum[i] == 1.0f, "%zu: %g", i, (double)sum[i]);
        got += sum[i] == 1.0f;
    }
    cr_assert_eq(got, ones);
    FisherType type;
    cr_assert_eq(fisher_type_parse("identity", &type), DS_OK);
    cr_assert_eq(type, FISHER_IDENTITY);
    cr_assert_eq(fisher_type_parse("ones", &type), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "identity") != NULL);
    free(f), free(sum);
    model_free(&m);
}
