/* test_moe_ops.c: the CPU backend's mixture-of-experts ops against their definitions. The
 * routing gradient (moe_route_backward) and the sequence-wise balance loss (moe_balance) are
 * checked against central differences of the quantity they differentiate, computed here in
 * double from the logits with the choice held fixed (the choice is piecewise constant: neither
 * transformers nor dstrain differentiates it). Differences use h = 1e-3 on logits of order 1:
 * the truncation error is O(h^2) = 1e-6 of the second derivative, the rounding of fp32 scores
 * about 1e-7 / h = 1e-4 of a gradient of order 1e-2 .. 1, so the tolerance is 2e-3 relative to
 * the largest gradient element (a wrong term is off by its own size, tens of percent). The loss
 * value itself is checked against the formula in double to 1e-6 relative. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

#define E 8
#define K 3
#define B 2
#define T 5
#define N (B * T)

static double uniform(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0;
}

/* scores of one row in double, as the op computes them */
static void row_scores(const double *logit, int sigmoid, double *s)
{
    if (sigmoid) {
        for (int e = 0; e < E; e++)
            s[e] = 1.0 / (1.0 + exp(-logit[e]));
        return;
    }
    double mx = -INFINITY, sum = 0.0;
    for (int e = 0; e < E; e++)
        mx = logit[e] > mx ? logit[e] : mx;
    for (int e = 0; e < E; e++)
        sum += (s[e] = exp(logit[e] - mx));
    for (int e = 0; e < E; e++)
        s[e] /= sum;
}

/* sum over rows and choices of c[t][j] * weight[t][j], the weights as moe_route gives them for
 * the fixed choice idx */
static double weighted_weights(const double *logits, const int32_t *idx, const double *c,
                               const MoeRouting *r)
{
    double total = 0.0;
    for (int t = 0; t < N; t++) {
        double s[E], sum = 1e-20;
        row_scores(logits + t * E, r->sigmoid, s);
        for (int j = 0; j < K; j++)
            sum += s[idx[t * K + j]];
        for (int j = 0; j < K; j++) {
            double w = s[idx[t * K + j]] * r->scaling;
            if (r->normalize) w /= sum;
            total += c[t * K + j] * w;
        }
    }
    return total;
}

/* alpha * sum_b w_b sum_e f_e P_e for the fixed choice idx */
static double balance(const double *logits, const int32_t *idx, const float *tw, double alpha,
                      int sigmoid)
{
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        double f[E] = {0}, P[E] = {0}, w = 0.0;
        for (int t = b * T; t < (b + 1) * T; t++) {
            double s[E], S = 0.0;
            row_scores(logits + t * E, sigmoid, s);
            for (int e = 0; e < E; e++)
                S += s[e];
            for (int e = 0; e < E; e++)
                P[e] += s[e] / S / T;
            for (int j = 0; j < K; j++)
                f[idx[t * K + j]] += (double)E / (K * T);
            w += tw[t];
        }
        for (int e = 0; e < E; e++)
            total += alpha * w * f[e] * P[e];
    }
    return total;
}

static void setup(uint64_t seed, double *logits, float *logits_f, const MoeRouting *r,
                  int32_t *idx, float *weight, float *scores)
{
    uint64_t s = seed;
    for (int i = 0; i < N * E; i++) {
        logits[i] = (float)(4.0 * uniform(&s) - 2.0); /* exactly representable in fp32 */
        logits_f[i] = (float)logits[i];
    }
    backend_cpu()->moe_route(backend_cpu(), idx, weight, scores, logits_f, NULL, N, r);
}

static void check_gradient(const char *what, const float *grad, const double *fd, int n)
{
    double scale = 0.0, worst = 0.0;
    int at = 0;
    for (int i = 0; i < n; i++)
        scale = fmax(scale, fabs(fd[i]));
    cr_assert_gt(scale, 1e-6, "%s: the gradient is all zero", what);
    for (int i = 0; i < n; i++) {
        double d = fabs(grad[i] - fd[i]);
        if (d > worst) worst = d, at = i;
    }
    cr_expect_leq(worst, 2e-3 * scale, "%s: element %d: %g against differences %g (scale %g)",
                  what, at, grad[at], fd[at], scale);
}

Test(moe_ops, route_backward_is_the_derivative_of_the_weights)
{
    const MoeRouting variants[] = {
        {E, K, 0, 1, 1, 0, 0, 16.0f},  /* V2: softmax, greedy, scaled */
        {E, K, 0, 4, 2, 0, 0, 1.0f},   /* V2: group-limited */
        {E, K, 1, 4, 2, 1, 1, 2.5f},   /* V3: sigmoid, normalised, noaux_tc */
        {E, K, 1, 1, 1, 0, 0, 1.0f},   /* sigmoid, not normalised */
    };
    for (size_t v = 0; v < sizeof(variants) / sizeof(variants[0]); v++) {
        const MoeRouting *r = &variants[v];
        double logits[N * E], c[N * K], fd[N * E];
        float logits_f[N * E], scores[N * E], weight[N * K], dweight[N * K], dlogits[N * E];
        int32_t idx[N * K];
        setup(11 + v, logits, logits_f, r, idx, weight, scores);
        uint64_t s = 99 + v;
        for (int i = 0; i < N * K; i++)
            dweight[i] = (float)(c[i] = 2.0 * uniform(&s) - 1.0);
        backend_cpu()->moe_route_backward(backend_cpu(), dlogits, dweight, idx, scores, N, r);
        const double h = 1e-3;
        for (int i = 0; i < N * E; i++) {
            const double keep = logits[i];
            logits[i] = keep + h;
            const double up = weighted_weights(logits, idx, c, r);
            logits[i] = keep - h;
            const double down = weighted_weights(logits, idx, c, r);
            logits[i] = keep;
            fd[i] = (up - down) / (2 * h);
        }
        char what[64];
        snprintf(what, sizeof(what), "moe_route_backward variant %zu", v);
        check_gradient(what, dlogits, fd, N * E);
    }
}

Test(moe_ops, balance_loss_value_and_gradient)
{
    for (int sigmoid = 0; sigmoid <= 1; sigmoid++) {
        const MoeRouting r = {E, K, sigmoid, 1, 1, 0, sigmoid, 1.0f};
        double logits[N * E], fd[N * E];
        float logits_f[N * E], scores[N * E], weight[N * K], dlogits[N * E], tw[N];
        int32_t idx[N * K];
        setup(7 + sigmoid, logits, logits_f, &r, idx, weight, scores);
        for (int t = 0; t < N; t++) /* a padded last token in each sequence */
            tw[t] = (t % T == T - 1) ? 0.0f : 1.0f / (B * (T - 1));
        memset(dlogits, 0, sizeof(dlogits));
        const double alpha = 0.5;
        double loss = 0.25; /* the op adds to what is there */
        backend_cpu()->moe_balance(backend_cpu(), dlogits, &loss, idx, scores, tw, B, T,
                                   (float)alpha, &r);
        const double want = balance(logits, idx, tw, alpha, sigmoid);
        cr_expect_leq(fabs((loss - 0.25) - want), 1e-6 * want, "%s: balance loss %.9g, want %.9g",
                      sigmoid ? "sigmoid" : "softmax", loss - 0.25, want);
        /* perfectly balanced choices give alpha * w * sum_e P_e = alpha per unit weight when
         * f_e = 1 for every e; here the value is near that order */
        cr_expect(want > 0.1 * alpha && want < 10 * alpha, "balance loss %g out of range", want);
        const double h = 1e-3;
        for (int i = 0; i < N * E; i++) {
            const double keep = logits[i];
            logits[i] = keep + h;
            const double up = balance(logits, idx, tw, alpha, sigmoid);
            logits[i] = keep - h;
            const double down = balance(logits, idx, tw, alpha, sigmoid);
            logits[i] = keep;
            fd[i] = (up - down) / (2 * h);
        }
        check_gradient(sigmoid ? "moe_balance sigmoid" : "moe_balance softmax", dlogits, fd,
                       N * E);
    }
}

/* The choice: ascending indices of the k best eligible scores (plus bias), the groups ranked
 * by their best (V2) or two best (V3) scores. */
Test(moe_ops, route_chooses_within_the_best_groups)
{
    /* one token, 8 experts in 4 groups of 2 */
    const float logit[E] = {3.0f, -3.0f, 0.0f, 0.0f, 1.5f, 1.4f, -2.0f, 2.5f};
    int32_t idx[K];
    float w[K], scores[E];
    /* softmax, groups ranked by their best: {0,1} 3.0, {2,3} 0.0, {4,5} 1.5, {6,7} 2.5; the
     * best two {0,1} and {6,7}: experts 0, 7, then 6 (-2.0 beats 1's -3.0), not 4 (its group
     * lost) */
    MoeRouting v2 = {E, K, 0, 4, 2, 0, 0, 1.0f};
    backend_cpu()->moe_route(backend_cpu(), idx, w, scores, logit, NULL, 1, &v2);
    cr_expect(idx[0] == 0 && idx[1] == 6 && idx[2] == 7, "V2 chose %d %d %d", idx[0], idx[1],
              idx[2]);
    /* sigmoid, groups ranked by their two best: {4,5} 1.62, {6,7} 1.04, {0,1} and {2,3} 1.0:
     * experts 7, 4, 5 */
    MoeRouting v3 = {E, K, 1, 4, 2, 1, 1, 1.0f};
    backend_cpu()->moe_route(backend_cpu(), idx, w, scores, logit, NULL, 1, &v3);
    cr_expect(idx[0] == 4 && idx[1] == 5 && idx[2] == 7, "V3 chose %d %d %d", idx[0], idx[1],
              idx[2]);
    double sum = 0;
    for (int j = 0; j < K; j++)
        sum += w[j];
    cr_expect_float_eq(sum, 1.0, 1e-6, "normalised weights sum to %g", sum);
    /* a bias changes the choice, not the weights: +1 on expert 2 lifts its group {2,3} to 2.0,
     * first, and expert 2 past 7: experts 2, 4, 5, weighted by their own sigmoid scores */
    float bias[E] = {0};
    bias[2] = 1.0f;
    backend_cpu()->moe_route(backend_cpu(), idx, w, scores, logit, bias, 1, &v3);
    cr_expect(idx[0] == 2 && idx[1] == 4 && idx[2] == 5, "V3 with bias chose %d %d %d", idx[0],
              idx[1], idx[2]);
    const double s2 = 0.5, s4 = 1 / (1 + exp(-1.5)), s5 = 1 / (1 + exp(-1.4));
    cr_expect_float_eq(w[0], s2 / (s2 + s4 + s5), 1e-6, "weight of expert 2: %g", w[0]);
}
