/* test_ops.c: the CPU backend op by op. Forward outputs are compared with plain double-precision
 * references written here; backward outputs with central finite differences taken through those
 * double references (loss = sum(out * R) for a random R, so dout = R). Sizes are small and odd
 * on purpose. Outputs are pre-filled with sentinels to pin down which ones overwrite and which
 * accumulate, and repeated runs (at several thread counts) must agree bit for bit. */
#include <criterion/criterion.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

/* ---- allocation that the suite frees after each test (keeps the sanitizer build leak-free) -- */

#define MAX_ALLOCS 512
static void *allocs[MAX_ALLOCS];
static int n_allocs;

static void *talloc(size_t bytes)
{
    cr_assert(n_allocs < MAX_ALLOCS, "test allocation table full");
    void *p = calloc(bytes ? bytes : 1, 1);
    cr_assert(p != NULL);
    allocs[n_allocs++] = p;
    return p;
}

static void free_all(void)
{
    for (int i = 0; i < n_allocs; i++)
        free(allocs[i]);
    n_allocs = 0;
}

TestSuite(ops, .fini = free_all);

/* ---- random numbers (fixed seeds: every run sees the same inputs) -------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static void rng_seed(uint64_t seed)
{
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
}

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

static float *rand_floats(size_t n, float lo, float hi)
{
    float *x = talloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = rng_uniform(lo, hi);
    return x;
}

static float *fill_floats(size_t n, float value)
{
    float *x = talloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = value;
    return x;
}

static float *copy_floats(const float *src, size_t n)
{
    float *x = talloc(n * sizeof(float));
    memcpy(x, src, n * sizeof(float));
    return x;
}

static double *to_double(const float *x, size_t n)
{
    double *d = talloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* ---- comparisons --------------------------------------------------------------------------- */

/* norm(got - base - ref) / norm(ref): the relative error of a whole output. base (may be NULL)
 * is what an accumulating output held before the call. */
static double rel_err(const float *got, const float *base, const double *ref, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        double g = (double)got[i] - (base ? (double)base[i] : 0.0);
        diff += (g - ref[i]) * (g - ref[i]);
        norm += ref[i] * ref[i];
    }
    if (isnan(diff)) return INFINITY;
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

#define FWD_TOL 1e-5
#define BWD_TOL 1e-4

static void expect_close(const char *what, const float *got, const float *base, const double *ref,
                         size_t n, double tol)
{
    double err = rel_err(got, base, ref, n);
    cr_expect(err < tol, "%s: relative error %.3g exceeds %.1g", what, err, tol);
}

/* Central finite differences of loss(ctx) with respect to x[0..n), in double. */
typedef double (*LossFn)(void *ctx);

static double *fd_gradient(double *x, size_t n, LossFn loss, void *ctx)
{
    const double h = 1e-6;
    double *grad = talloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + h;
        double up = loss(ctx);
        x[i] = saved - h;
        double down = loss(ctx);
        x[i] = saved;
        grad[i] = (up - down) / (2.0 * h);
    }
    return grad;
}

static double dot_double(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#define BE (backend_cpu())

/* =============================================================================================
 * matmul */

static void matmul_ref(double *out, const double *inp, const double *w, const double *bias, int M,
                       int K, int N)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = bias ? bias[j] : 0.0;
            for (int k = 0; k < K; k++)
                s += inp[i * K + k] * w[j * K + k];
            out[i * N + j] = s;
        }
}

typedef struct {
    int M, K, N;
    double *inp, *w, *bias, *R, *out;
} MatmulCtx;

static double matmul_loss(void *p)
{
    MatmulCtx *c = p;
    matmul_ref(c->out, c->inp, c->w, c->bias, c->M, c->K, c->N);
    return dot_double(c->out, c->R, (size_t)c->M * c->N);
}

Test(ops, matmul_forward_matches_double_reference)
{
    rng_seed(1);
    int M = 7, K = 13, N = 5;
    float *inp = rand_floats((size_t)M * K, -1, 1), *w = rand_floats((size_t)N * K, -1, 1);
    float *bias = rand_floats(N, -1, 1), *out = fill_floats((size_t)M * N, NAN);
    double *ref = talloc((size_t)M * N * sizeof(double));

    BE->matmul_forward(BE, out, inp, w, bias, M, K, N);
    matmul_ref(ref, to_double(inp, (size_t)M * K), to_double(w, (size_t)N * K), to_double(bias, N),
               M, K, N);
    expect_close("matmul out (bias)", out, NULL, ref, (size_t)M * N, FWD_TOL);

    BE->matmul_forward(BE, out, inp, w, NULL, M, K, N);
    matmul_ref(ref, to_double(inp, (size_t)M * K), to_double(w, (size_t)N * K), NULL, M, K, N);
    expect_close("matmul out (no bias)", out, NULL, ref, (size_t)M * N, FWD_TOL);
}

Test(ops, matmul_backward_overwrites_dinp_and_accumulates_dweight_dbias)
{
    rng_seed(2);
    int M = 7, K = 13, N = 5;
    float *inp = rand_floats((size_t)M * K, -1, 1), *w = rand_floats((size_t)N * K, -1, 1);
    float *bias = rand_floats(N, -1, 1), *dout = rand_floats((size_t)M * N, -1, 1);
    float *dinp = fill_floats((size_t)M * K, NAN);
    float *dw0 = rand_floats((size_t)N * K, -1, 1), *db0 = rand_floats(N, -1, 1);
    float *dw = copy_floats(dw0, (size_t)N * K), *db = copy_floats(db0, N);

    BE->matmul_backward(BE, dinp, dw, db, dout, inp, w, M, K, N, 0);

    MatmulCtx c = {M,
                   K,
                   N,
                   to_double(inp, (size_t)M * K),
                   to_double(w, (size_t)N * K),
                   to_double(bias, N),
                   to_double(dout, (size_t)M * N),
                   talloc((size_t)M * N * sizeof(double))};
    expect_close("matmul dinp", dinp, NULL, fd_gradient(c.inp, (size_t)M * K, matmul_loss, &c),
                 (size_t)M * K, BWD_TOL);
    expect_close("matmul dweight (+=)", dw, dw0, fd_gradient(c.w, (size_t)N * K, matmul_loss, &c),
                 (size_t)N * K, BWD_TOL);
    expect_close("matmul dbias (+=)", db, db0, fd_gradient(c.bias, N, matmul_loss, &c), N, BWD_TOL);

    /* dinp == NULL and dbias == NULL skip those outputs; dweight accumulates again */
    float *dw_twice = copy_floats(dw, (size_t)N * K);
    BE->matmul_backward(BE, NULL, dw_twice, NULL, dout, inp, w, M, K, N, 0);
    double *twice = talloc((size_t)N * K * sizeof(double));
    for (size_t i = 0; i < (size_t)N * K; i++)
        twice[i] = 2.0 * ((double)dw[i] - dw0[i]);
    expect_close("matmul dweight accumulated twice", dw_twice, dw0, twice, (size_t)N * K, 1e-6);

    /* accumulate: dinp += dout @ weight over what it held */
    float *dinp0 = rand_floats((size_t)M * K, -1, 1);
    float *dinp_acc = copy_floats(dinp0, (size_t)M * K);
    BE->matmul_backward(BE, dinp_acc, dw, NULL, dout, inp, w, M, K, N, 1);
    double *sum = talloc((size_t)M * K * sizeof(double));
    for (size_t i = 0; i < (size_t)M * K; i++)
        sum[i] = (double)dinp[i];
    expect_close("matmul dinp (+= when accumulating)", dinp_acc, dinp0, sum, (size_t)M * K, 1e-6);
}

Test(ops, matmul_handles_empty_dimensions)
{
    rng_seed(3);
    float bias[3] = {1.5f, -2.0f, 0.25f}, out[6], dw[1] = {7.0f}, db[3] = {1, 2, 3};
    float inp[1] = {0}, w[1] = {0}, dout[6] = {1, 1, 1, 1, 1, 1};
    /* K = 0: the product is empty, the output is the bias */
    BE->matmul_forward(BE, out, inp, w, bias, 2, 0, 3);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(out[i], bias[i % 3]);
    BE->matmul_forward(BE, out, inp, w, NULL, 2, 0, 3);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(out[i], 0.0f);
    BE->matmul_backward(BE, NULL, dw, db, dout, inp, w, 2, 0, 3, 0);
    cr_expect_eq(db[0], 3.0f);
    cr_expect_eq(db[2], 5.0f);
    cr_expect_eq(dw[0], 7.0f, "nothing to write into a zero-size dweight");
    /* M = 0 or N = 0: nothing happens */
    BE->matmul_forward(BE, out, inp, w, bias, 0, 4, 3);
    BE->matmul_backward(BE, NULL, dw, db, dout, inp, w, 0, 4, 3, 0);
    cr_expect_eq(db[0], 3.0f);
}

/* =============================================================================================
 * rmsnorm */

static void rmsnorm_ref(double *out, double *rstd, const double *x, const double *w, int M, int C,
                        double eps)
{
    for (int i = 0; i < M; i++) {
        double ss = 0.0;
        for (int j = 0; j < C; j++)
            ss += x[i * C + j] * x[i * C + j];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int j = 0; j < C; j++)
            out[i * C + j] = w[j] * x[i * C + j] * r;
        if (rstd) rstd[i] = r;
    }
}

typedef struct {
    int M, C;
    double eps;
    double *x, *w, *R, *out;
} RmsnormCtx;

static double rmsnorm_loss(void *p)
{
    RmsnormCtx *c = p;
    rmsnorm_ref(c->out, NULL, c->x, c->w, c->M, c->C, c->eps);
    return dot_double(c->out, c->R, (size_t)c->M * c->C);
}

Test(ops, rmsnorm_forward_matches_double_reference)
{
    rng_seed(4);
    int M = 7, C = 13;
    float eps = 1e-5f;
    float *x = rand_floats((size_t)M * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    float *out = fill_floats((size_t)M * C, NAN), *rstd = fill_floats(M, NAN);
    /* one all-zero row: rstd = 1/sqrt(eps), output exactly zero */
    for (int j = 0; j < C; j++)
        x[3 * C + j] = 0.0f;
    double *ref = talloc((size_t)M * C * sizeof(double)), *ref_rstd = talloc(M * sizeof(double));

    BE->rmsnorm_forward(BE, out, rstd, x, w, M, C, eps);
    rmsnorm_ref(ref, ref_rstd, to_double(x, (size_t)M * C), to_double(w, C), M, C, eps);
    expect_close("rmsnorm out", out, NULL, ref, (size_t)M * C, FWD_TOL);
    expect_close("rmsnorm rstd", rstd, NULL, ref_rstd, M, FWD_TOL);
    for (int j = 0; j < C; j++)
        cr_expect_eq(out[3 * C + j], 0.0f);
}

Test(ops, rmsnorm_backward_accumulates_dinp_and_dweight)
{
    rng_seed(5);
    int M = 7, C = 13;
    float eps = 1e-5f;
    float *x = rand_floats((size_t)M * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    float *out = talloc((size_t)M * C * sizeof(float)), *rstd = talloc(M * sizeof(float));
    float *dout = rand_floats((size_t)M * C, -1, 1);
    float *dx0 = rand_floats((size_t)M * C, -1, 1), *dw0 = rand_floats(C, -1, 1);
    float *dx = copy_floats(dx0, (size_t)M * C), *dw = copy_floats(dw0, C);

    float *dx_act = fill_floats((size_t)M * C, NAN);
    BE->rmsnorm_forward(BE, out, rstd, x, w, M, C, eps);
    BE->rmsnorm_backward(BE, dx, dx_act, dw, dout, x, w, rstd, M, C);

    RmsnormCtx c = {M,
                    C,
                    eps,
                    to_double(x, (size_t)M * C),
                    to_double(w, C),
                    to_double(dout, (size_t)M * C),
                    talloc((size_t)M * C * sizeof(double))};
    expect_close("rmsnorm dinp (+=)", dx, dx0, fd_gradient(c.x, (size_t)M * C, rmsnorm_loss, &c),
                 (size_t)M * C, BWD_TOL);
    expect_close("rmsnorm dweight (+=)", dw, dw0, fd_gradient(c.w, C, rmsnorm_loss, &c), C,
                 BWD_TOL);
    /* the Act copy holds the updated dinp (fp32 on the CPU: the same bits) */
    cr_expect(memcmp(dx_act, dx, (size_t)M * C * sizeof(float)) == 0,
              "rmsnorm_backward's dinp_act differs from dinp");
}

Test(ops, rmsnorm_weight_gradient_spans_column_blocks)
{
    /* C larger than one column block, so several blocks (threads) share the row loop */
    rng_seed(6);
    int M = 5, C = 150;
    float *x = rand_floats((size_t)M * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    float *out = talloc((size_t)M * C * sizeof(float)), *rstd = talloc(M * sizeof(float));
    float *dout = rand_floats((size_t)M * C, -1, 1);
    float *dx = fill_floats((size_t)M * C, 0.0f), *dw = fill_floats(C, 0.0f);
    BE->rmsnorm_forward(BE, out, rstd, x, w, M, C, 1e-6f);
    BE->rmsnorm_backward(BE, dx, NULL, dw, dout, x, w, rstd, M, C);
    double *ref = talloc(C * sizeof(double));
    for (int j = 0; j < C; j++)
        for (int i = 0; i < M; i++)
            ref[j] += (double)dout[i * C + j] * x[i * C + j] * rstd[i];
    expect_close("rmsnorm dweight, 150 columns", dw, NULL, ref, C, FWD_TOL);
}

/* =============================================================================================
 * rope */

static void rope_tables(float *cos_t, float *sin_t, int T, int D, double theta)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D / 2; i++) {
            double angle = t * pow(theta, -2.0 * i / D);
            cos_t[t * (D / 2) + i] = (float)cos(angle);
            sin_t[t * (D / 2) + i] = (float)sin(angle);
        }
}

static void rope_ref(double *out, const double *x, const float *cos_t, const float *sin_t, int B,
                     int T, int H, int D)
{
    int half = D / 2;
    for (int row = 0; row < B * T; row++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < half; i++) {
                int t = row % T;
                size_t o = (size_t)row * H * D + (size_t)h * D;
                double c = cos_t[t * half + i], s = sin_t[t * half + i];
                out[o + i] = x[o + i] * c - x[o + i + half] * s;
                out[o + i + half] = x[o + i + half] * c + x[o + i] * s;
            }
}

typedef struct {
    int B, T, H, D;
    const float *cos_t, *sin_t;
    double *x, *R, *out;
} RopeCtx;

static double rope_loss(void *p)
{
    RopeCtx *c = p;
    rope_ref(c->out, c->x, c->cos_t, c->sin_t, c->B, c->T, c->H, c->D);
    return dot_double(c->out, c->R, (size_t)c->B * c->T * c->H * c->D);
}

Test(ops, rope_forward_and_backward)
{
    rng_seed(7);
    int B = 2, T = 5, H = 3, D = 8;
    size_t n = (size_t)B * T * H * D;
    float *cos_t = talloc((size_t)T * D / 2 * sizeof(float));
    float *sin_t = talloc((size_t)T * D / 2 * sizeof(float));
    rope_tables(cos_t, sin_t, T, D, 10000.0);
    float *x = rand_floats(n, -1, 1), *y = copy_floats(x, n);
    double *ref = talloc(n * sizeof(double));

    BE->rope_forward(BE, y, cos_t, sin_t, B, T, H, D);
    rope_ref(ref, to_double(x, n), cos_t, sin_t, B, T, H, D);
    expect_close("rope forward", y, NULL, ref, n, FWD_TOL);
    /* position 0 is the identity: rows t = 0 untouched */
    cr_expect(memcmp(y, x, (size_t)H * D * sizeof(float)) == 0);

    /* backward of a rotation is its transpose: it undoes the forward */
    float *back = copy_floats(y, n);
    BE->rope_backward(BE, back, cos_t, sin_t, B, T, H, D);
    expect_close("rope backward(forward(x)) == x", back, NULL, to_double(x, n), n, FWD_TOL);

    float *dout = rand_floats(n, -1, 1), *dx = copy_floats(dout, n);
    BE->rope_backward(BE, dx, cos_t, sin_t, B, T, H, D);
    RopeCtx c = {
        B, T, H, D, cos_t, sin_t, to_double(x, n), to_double(dout, n), talloc(n * sizeof(double))};
    expect_close("rope backward", dx, NULL, fd_gradient(c.x, n, rope_loss, &c), n, BWD_TOL);
}

/* =============================================================================================
 * attention */

static void attention_ref(double *out, double *lse, const double *q, const double *k,
                          const double *v, int B, int T, int H, int KVH, int D)
{
    double scale = 1.0 / sqrt((double)D);
    double *p = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / KVH);
            for (int t = 0; t < T; t++) {
                const double *qt = q + ((size_t)(b * T + t) * H + h) * D;
                double mx = -INFINITY;
                for (int s = 0; s <= t; s++) {
                    const double *ks = k + ((size_t)(b * T + s) * KVH + kvh) * D;
                    p[s] = dot_double(qt, ks, D) * scale;
                    mx = fmax(mx, p[s]);
                }
                double sum = 0.0;
                for (int s = 0; s <= t; s++)
                    sum += (p[s] = exp(p[s] - mx));
                double *o = out + ((size_t)(b * T + t) * H + h) * D;
                for (int i = 0; i < D; i++) {
                    double acc = 0.0;
                    for (int s = 0; s <= t; s++)
                        acc += p[s] / sum * v[((size_t)(b * T + s) * KVH + kvh) * D + i];
                    o[i] = acc;
                }
                if (lse) lse[((size_t)b * H + h) * T + t] = mx + log(sum);
            }
        }
    free(p);
}

typedef struct {
    int B, T, H, KVH, D;
    double *q, *k, *v, *R, *out;
} AttnCtx;

static double attention_loss(void *p)
{
    AttnCtx *c = p;
    attention_ref(c->out, NULL, c->q, c->k, c->v, c->B, c->T, c->H, c->KVH, c->D);
    return dot_double(c->out, c->R, (size_t)c->B * c->T * c->H * c->D);
}

static void check_attention(int B, int T, int H, int KVH, int D, float qk_range)
{
    size_t nq = (size_t)B * T * H * D, nkv = (size_t)B * T * KVH * D, nlse = (size_t)B * H * T;
    float *q = rand_floats(nq, -qk_range, qk_range), *k = rand_floats(nkv, -qk_range, qk_range);
    float *v = rand_floats(nkv, -1, 1);
    float *out = fill_floats(nq, NAN), *lse = fill_floats(nlse, NAN);
    double *ref = talloc(nq * sizeof(double)), *ref_lse = talloc(nlse * sizeof(double));

    BE->attention_forward(BE, out, lse, q, k, v, B, T, H, KVH, D);
    attention_ref(ref, ref_lse, to_double(q, nq), to_double(k, nkv), to_double(v, nkv), B, T, H,
                  KVH, D);
    char what[128];
    snprintf(what, sizeof(what), "attention out B=%d T=%d H=%d KVH=%d D=%d", B, T, H, KVH, D);
    expect_close(what, out, NULL, ref, nq, FWD_TOL);
    snprintf(what, sizeof(what), "attention lse B=%d T=%d H=%d KVH=%d D=%d", B, T, H, KVH, D);
    expect_close(what, lse, NULL, ref_lse, nlse, FWD_TOL);

    float *dout = rand_floats(nq, -1, 1);
    float *dq = fill_floats(nq, NAN), *dk = fill_floats(nkv, NAN), *dv = fill_floats(nkv, NAN);
    BE->attention_backward(BE, dq, dk, dv, dout, out, lse, q, k, v, B, T, H, KVH, D);
    AttnCtx c = {B,
                 T,
                 H,
                 KVH,
                 D,
                 to_double(q, nq),
                 to_double(k, nkv),
                 to_double(v, nkv),
                 to_double(dout, nq),
                 talloc(nq * sizeof(double))};
    snprintf(what, sizeof(what), "attention dq H=%d KVH=%d", H, KVH);
    expect_close(what, dq, NULL, fd_gradient(c.q, nq, attention_loss, &c), nq, BWD_TOL);
    snprintf(what, sizeof(what), "attention dk H=%d KVH=%d", H, KVH);
    expect_close(what, dk, NULL, fd_gradient(c.k, nkv, attention_loss, &c), nkv, BWD_TOL);
    snprintf(what, sizeof(what), "attention dv H=%d KVH=%d", H, KVH);
    expect_close(what, dv, NULL, fd_gradient(c.v, nkv, attention_loss, &c), nkv, BWD_TOL);
}

Test(ops, attention_grouped_query_heads)
{
    rng_seed(8);
    check_attention(2, 5, 4, 2, 8, 1.0f);
}

Test(ops, attention_one_kv_head_per_query_head)
{
    rng_seed(9);
    check_attention(2, 5, 3, 3, 8, 1.0f);
}

Test(ops, attention_single_kv_head_odd_dim)
{
    rng_seed(10);
    check_attention(1, 7, 4, 1, 6, 1.0f);
}

Test(ops, attention_peaked_scores_longer_sequence)
{
    /* large scores: the running maximum changes often and the softmax is nearly one-hot */
    rng_seed(11);
    check_attention(1, 24, 2, 1, 4, 4.0f);
}

Test(ops, attention_first_row_copies_first_value)
{
    /* t = 0 attends only to s = 0: out = v[0], lse = score */
    rng_seed(12);
    int T = 3, H = 2, D = 4;
    float *q = rand_floats((size_t)T * H * D, -1, 1), *k = rand_floats((size_t)T * D, -1, 1);
    float *v = rand_floats((size_t)T * D, -1, 1);
    float *out = fill_floats((size_t)T * H * D, NAN), *lse = fill_floats((size_t)H * T, NAN);
    BE->attention_forward(BE, out, lse, q, k, v, 1, T, H, 1, D);
    for (int h = 0; h < H; h++) {
        for (int i = 0; i < D; i++)
            cr_expect_float_eq(out[h * D + i], v[i], 1e-6);
        double score = 0;
        for (int i = 0; i < D; i++)
            score += (double)q[h * D + i] * k[i];
        cr_expect_float_eq(lse[h * T], score / 2.0, 1e-6);
    }
}

/* =============================================================================================
 * swiglu */

static void swiglu_ref(double *out, const double *g, const double *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
}

typedef struct {
    size_t n;
    double *g, *u, *R, *out;
} SwigluCtx;

static double swiglu_loss(void *p)
{
    SwigluCtx *c = p;
    swiglu_ref(c->out, c->g, c->u, c->n);
    return dot_double(c->out, c->R, c->n);
}

Test(ops, swiglu_forward_and_backward)
{
    rng_seed(13);
    size_t n = 37;
    float *g = rand_floats(n, -6, 6), *u = rand_floats(n, -2, 2);
    float *out = fill_floats(n, NAN);
    double *ref = talloc(n * sizeof(double));
    BE->swiglu_forward(BE, out, g, u, n);
    swiglu_ref(ref, to_double(g, n), to_double(u, n), n);
    expect_close("swiglu out", out, NULL, ref, n, FWD_TOL);

    float *dout = rand_floats(n, -1, 1), *dg = fill_floats(n, NAN), *du = fill_floats(n, NAN);
    BE->swiglu_backward(BE, dg, du, dout, g, u, n);
    SwigluCtx c = {n, to_double(g, n), to_double(u, n), to_double(dout, n),
                   talloc(n * sizeof(double))};
    expect_close("swiglu dgate", dg, NULL, fd_gradient(c.g, n, swiglu_loss, &c), n, BWD_TOL);
    expect_close("swiglu dup", du, NULL, fd_gradient(c.u, n, swiglu_loss, &c), n, BWD_TOL);
}

Test(ops, swiglu_saturates_without_nan)
{
    float g[4] = {-200.0f, 200.0f, -1e30f, 1e30f}, u[4] = {1, 1, 1, 1}, out[4], dg[4], du[4];
    float dout[4] = {1, 1, 1, 1};
    BE->swiglu_forward(BE, out, g, u, 4);
    BE->swiglu_backward(BE, dg, du, dout, g, u, 4);
    cr_expect_float_eq(out[0], 0.0f, 1e-30);
    cr_expect_float_eq(out[1], 200.0f, 1e-3);
    for (int i = 0; i < 2; i++)
        cr_expect(isfinite(dg[i]) && isfinite(du[i]));
    cr_expect_float_eq(dg[1], 1.0f, 1e-6);
}

/* =============================================================================================
 * embedding */

Test(ops, embedding_gathers_rows_and_accumulates_repeats)
{
    rng_seed(14);
    int V = 11, N = 9;
    int32_t tokens[9] = {3, 0, 10, 3, 7, 3, 0, 5, 10};
    for (int C = 7; C <= 150; C += 143) { /* 150 > one column block */
        float *table = rand_floats((size_t)V * C, -1, 1), *out = fill_floats((size_t)N * C, NAN);
        BE->embedding_forward(BE, out, tokens, table, N, C);
        for (int i = 0; i < N; i++)
            cr_expect(memcmp(out + (size_t)i * C, table + (size_t)tokens[i] * C,
                             (size_t)C * sizeof(float)) == 0,
                      "embedding row %d", i);

        float *dout = rand_floats((size_t)N * C, -1, 1);
        float *dt0 = rand_floats((size_t)V * C, -1, 1), *dt = copy_floats(dt0, (size_t)V * C);
        BE->embedding_backward(BE, dt, dout, tokens, N, C);
        double *ref = talloc((size_t)V * C * sizeof(double));
        for (int i = 0; i < N; i++)
            for (int j = 0; j < C; j++)
                ref[(size_t)tokens[i] * C + j] += dout[(size_t)i * C + j];
        expect_close("embedding dtable (+=)", dt, dt0, ref, (size_t)V * C, 1e-6);
        /* rows no token used are untouched */
        cr_expect(memcmp(dt + 1 * C, dt0 + 1 * C, (size_t)C * sizeof(float)) == 0);
    }
}

/* =============================================================================================
 * cross-entropy */

static void cross_entropy_ref(double *losses, const double *logits, const int32_t *targets,
                              const float *weights, int N, int V)
{
    for (int i = 0; i < N; i++) {
        if (weights[i] == 0.0f) {
            losses[i] = 0.0;
            continue;
        }
        const double *row = logits + (size_t)i * V;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < V; j++)
            mx = fmax(mx, row[j]);
        for (int j = 0; j < V; j++)
            sum += exp(row[j] - mx);
        losses[i] = mx + log(sum) - row[targets[i]];
    }
}

typedef struct {
    int N, V;
    const int32_t *targets;
    const float *weights;
    double *logits, *losses;
} CeCtx;

static double cross_entropy_loss(void *p)
{
    CeCtx *c = p;
    cross_entropy_ref(c->losses, c->logits, c->targets, c->weights, c->N, c->V);
    double total = 0.0;
    for (int i = 0; i < c->N; i++)
        total += c->weights[i] * c->losses[i];
    return total;
}

Test(ops, cross_entropy_losses_and_gradient_ignore_weight_zero_rows)
{
    rng_seed(15);
    enum { N = 7, V = 13 };
    /* rows 1, 4, 6 carry weight 0 with targets no vocabulary holds, row 3 weight 0 and a
     * valid target */
    int32_t targets[N] = {4, -100, 12, 0, V, 7, INT32_MAX};
    float weights[N] = {0.25f, 0.0f, 1.0f, 0.0f, 0.0f, 2.0f, 0.0f};
    float *logits = rand_floats((size_t)N * V, -4, 4);
    float *losses = fill_floats(N, NAN), *grad = copy_floats(logits, (size_t)N * V);
    double *ref = talloc(N * sizeof(double));

    /* loss only: logits untouched */
    BE->cross_entropy(BE, losses, grad, targets, weights, N, V, 0);
    cr_expect(memcmp(grad, logits, (size_t)N * V * sizeof(float)) == 0);
    cross_entropy_ref(ref, to_double(logits, (size_t)N * V), targets, weights, N, V);
    expect_close("cross_entropy losses", losses, NULL, ref, N, FWD_TOL);

    float *losses2 = fill_floats(N, NAN);
    BE->cross_entropy(BE, losses2, grad, targets, weights, N, V, 1);
    cr_expect(memcmp(losses, losses2, N * sizeof(float)) == 0,
              "losses do not depend on write_grad");
    for (int i = 0; i < N; i++)
        if (weights[i] == 0.0f) {
            cr_expect_eq(losses2[i], 0.0f, "row %d: weight 0 gives loss 0", i);
            for (int j = 0; j < V; j++)
                cr_expect_eq(grad[(size_t)i * V + j], 0.0f, "row %d: weight 0 gives grad 0", i);
        }
    CeCtx c = {N, V, targets, weights, to_double(logits, (size_t)N * V), ref};
    expect_close("cross_entropy grad", grad, NULL,
                 fd_gradient(c.logits, (size_t)N * V, cross_entropy_loss, &c), (size_t)N * V,
                 BWD_TOL);
}

Test(ops, cross_entropy_is_stable_for_extreme_logits)
{
    enum { V = 5 };
    /* exp() of these overflows in fp32 without the max subtraction */
    float logits[2 * V] = {1e4f, 1e4f - 1, 1e4f - 2, -1e4f, 0, -3e4f, -3e4f, -3e4f, -3e4f, -3e4f};
    int32_t targets[2] = {1, 2};
    float weights[2] = {1, 1}, losses[2];
    BE->cross_entropy(BE, losses, logits, targets, weights, 2, V, 1);
    double lse = log(1.0 + exp(-1.0) + exp(-2.0)); /* relative to the max */
    cr_expect_float_eq(losses[0], lse + 1.0, 1e-6);
    cr_expect_float_eq(losses[1], log(5.0), 1e-5);
    for (int j = 0; j < 2 * V; j++)
        cr_expect(isfinite(logits[j]), "grad %d finite", j);
    cr_expect_float_eq(logits[1], exp(-1.0) / exp(lse) - 1.0, 1e-6);
    cr_expect_float_eq(logits[5 + 2], 0.2 - 1.0, 1e-6);
}

Test(ops, cross_entropy_flags_weighted_out_of_range_target)
{
    /* a weighted row whose target is outside the vocabulary: NaN loss, zero gradient */
    enum { V = 4 };
    float logits[2 * V] = {1, 2, 3, 4, 1, 2, 3, 4};
    int32_t targets[2] = {V, 2};
    float weights[2] = {1, 1}, losses[2];
    BE->cross_entropy(BE, losses, logits, targets, weights, 2, V, 1);
    cr_expect(isnan(losses[0]));
    for (int j = 0; j < V; j++)
        cr_expect_eq(logits[j], 0.0f);
    cr_expect(isfinite(losses[1]));
    BE->cross_entropy(BE, losses, logits, targets, weights, 0, V, 1); /* N = 0: nothing */
}

/* =============================================================================================
 * add, scale, sum_squares */

Test(ops, add_scale_and_sum_squares)
{
    rng_seed(16);
    size_t n = 1001;
    float *a = rand_floats(n, -1, 1), *b = rand_floats(n, -1, 1), *out = fill_floats(n, NAN);
    BE->add(BE, out, a, b, n);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(out[i], a[i] + b[i]);
    BE->add(BE, a, a, b, n); /* in place, as the residual stream uses it */
    cr_expect(memcmp(a, out, n * sizeof(float)) == 0);

    BE->scale(BE, out, -0.5f, n);
    for (size_t i = 0; i < n; i++)
        cr_expect_eq(out[i], a[i] * -0.5f);

    double ref = 0.0;
    for (size_t i = 0; i < n; i++)
        ref += (double)out[i] * out[i];
    cr_expect(fabs(BE->sum_squares(BE, out, n) - ref) <= 1e-12 * ref);
    cr_expect_eq(BE->sum_squares(BE, out, 0), 0.0);
    float three[3] = {1, 2, -3};
    cr_expect_eq(BE->sum_squares(BE, three, 3), 14.0); /* fewer elements than parts */
}

Test(ops, sum_squares_is_accurate_over_many_elements)
{
    /* fp32 accumulation would lose ~1e-4 here; the double sum keeps ~1e-15 */
    size_t n = 3000017;
    float *x = fill_floats(n, 0.1f);
    double expect = (double)n * (double)0.1f * (double)0.1f;
    double got = backend_cpu()->sum_squares(backend_cpu(), x, n);
    cr_expect(fabs(got - expect) <= 1e-12 * expect, "sum_squares %.17g vs %.17g", got, expect);
}

Test(ops, sum_squares_batch_gives_each_range_the_same_bits)
{
    rng_seed(17);
    size_t n = SUM_SQUARES_BATCH * (13 + 71); /* range i: [13 i, 13 i + 71 i) */
    float *x = rand_floats(n, -2, 2);
    const float *xs[SUM_SQUARES_BATCH];
    size_t ns[SUM_SQUARES_BATCH];
    double sums[SUM_SQUARES_BATCH];
    for (int i = 0; i < SUM_SQUARES_BATCH; i++) /* ranges of every length, an empty one first */
        xs[i] = x + i * 13, ns[i] = (size_t)i * 71;
    BE->sum_squares_batch(BE, sums, xs, ns, SUM_SQUARES_BATCH);
    cr_expect_eq(sums[0], 0.0);
    for (int i = 0; i < SUM_SQUARES_BATCH; i++) {
        double one = BE->sum_squares(BE, xs[i], ns[i]);
        cr_expect(memcmp(&sums[i], &one, sizeof(double)) == 0, "range %d: %.17g vs %.17g", i,
                  sums[i], one);
    }
    sums[0] = -1.0;
    BE->sum_squares_batch(BE, sums, xs, ns, 0); /* nothing: sums untouched */
    cr_expect_eq(sums[0], -1.0);
}

/* =============================================================================================
 * AdamW */

Test(ops, adamw_matches_double_reference_over_steps)
{
    rng_seed(17);
    size_t n = 23;
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    float *p = rand_floats(n, -1, 1), *m = fill_floats(n, 0), *v = fill_floats(n, 0);
    double *rp = to_double(p, n), *rm = talloc(n * sizeof(double)),
           *rv = talloc(n * sizeof(double));
    for (int t = 1; t <= 5; t++) {
        float *g = rand_floats(n, -3, 3);
        if (t == 3) g[0] = 0.0f; /* a zero gradient still decays and moves by momentum */
        BE->adamw_update(BE, p, g, m, v, n, lr, b1, b2, eps, wd, gs, t);
        double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        for (size_t i = 0; i < n; i++) {
            double gi = (double)g[i] * gs;
            rp[i] *= 1.0 - (double)lr * wd;
            rm[i] = (double)b1 * rm[i] + (1.0 - b1) * gi;
            rv[i] = (double)b2 * rv[i] + (1.0 - b2) * gi * gi;
            rp[i] -= (double)lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + eps);
        }
        char what[64];
        snprintf(what, sizeof(what), "adamw param, step %d", t);
        expect_close(what, p, NULL, rp, n, 1e-6);
        snprintf(what, sizeof(what), "adamw m, step %d", t);
        expect_close(what, m, NULL, rm, n, 1e-6);
        snprintf(what, sizeof(what), "adamw v, step %d", t);
        expect_close(what, v, NULL, rv, n, 1e-6);
    }
}

Test(ops, adamw_first_step_moves_by_lr_times_sign)
{
    /* at t = 1 with no decay the bias-corrected update is lr * g / (|g| + eps') */
    float p[3] = {1, 1, 1}, g[3] = {4, -0.25f, 1e-3f}, m[3] = {0}, v[3] = {0};
    BE->adamw_update(BE, p, g, m, v, 3, 0.01f, 0.9f, 0.95f, 1e-12f, 0.0f, 1.0f, 1);
    cr_expect_float_eq(p[0], 0.99f, 1e-6);
    cr_expect_float_eq(p[1], 1.01f, 1e-6);
    cr_expect_float_eq(p[2], 0.99f, 1e-6);
}

/* =============================================================================================
 * determinism: repeated calls, and calls at different thread counts, agree bit for bit */

typedef struct {
    float *att_out, *att_lse, *dq, *dk, *dv, *dx, *dw, *dtable, *grad, *losses, *param;
    double ssq;
} Outputs;

static void run_all(Outputs *o, int threads)
{
    enum { B = 2, T = 33, H = 4, KVH = 2, D = 16, M = 37, C = 130, V = 29, N = 200 };
    omp_set_num_threads(threads);
    rng_seed(99);
    size_t nq = (size_t)B * T * H * D, nkv = (size_t)B * T * KVH * D;
    float *q = rand_floats(nq, -2, 2), *k = rand_floats(nkv, -2, 2), *v = rand_floats(nkv, -1, 1);
    float *dout = rand_floats(nq, -1, 1);
    o->att_out = talloc(nq * sizeof(float));
    o->att_lse = talloc((size_t)B * H * T * sizeof(float));
    o->dq = talloc(nq * sizeof(float));
    o->dk = talloc(nkv * sizeof(float));
    o->dv = talloc(nkv * sizeof(float));
    BE->attention_forward(BE, o->att_out, o->att_lse, q, k, v, B, T, H, KVH, D);
    BE->attention_backward(BE, o->dq, o->dk, o->dv, dout, o->att_out, o->att_lse, q, k, v, B, T, H,
                           KVH, D);

    float *x = rand_floats((size_t)M * C, -2, 2), *w = rand_floats(C, 0.5f, 1.5f);
    float *y = talloc((size_t)M * C * sizeof(float)), *rstd = talloc(M * sizeof(float));
    float *dy = rand_floats((size_t)M * C, -1, 1);
    o->dx = fill_floats((size_t)M * C, 0), o->dw = fill_floats(C, 0);
    BE->rmsnorm_forward(BE, y, rstd, x, w, M, C, 1e-5f);
    BE->rmsnorm_backward(BE, o->dx, NULL, o->dw, dy, x, w, rstd, M, C);

    int32_t *tokens = talloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        tokens[i] = (int32_t)(rng_next() % V);
    float *demb = rand_floats((size_t)N * C, -1, 1);
    o->dtable = fill_floats((size_t)V * C, 0);
    BE->embedding_backward(BE, o->dtable, demb, tokens, N, C);

    float *logits = rand_floats((size_t)N * V, -5, 5), *weights = rand_floats(N, 0, 1);
    o->losses = talloc(N * sizeof(float));
    BE->cross_entropy(BE, o->losses, logits, tokens, weights, N, V, 1);
    o->grad = logits;

    size_t np = 100003;
    float *big = rand_floats(np, -1, 1);
    o->ssq = BE->sum_squares(BE, big, np);
    float *g = rand_floats(np, -1, 1), *mm = fill_floats(np, 0), *vv = fill_floats(np, 0);
    BE->adamw_update(BE, big, g, mm, vv, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, 1);
    o->param = big;
}

static void expect_same(const Outputs *a, const Outputs *b, const char *label)
{
    enum { B = 2, T = 33, H = 4, KVH = 2, D = 16, M = 37, C = 130, V = 29, N = 200 };
    size_t nq = (size_t)B * T * H * D, nkv = (size_t)B * T * KVH * D;
#define SAME(field, count)                                                                         \
    cr_expect(memcmp(a->field, b->field, (count) * sizeof(float)) == 0, "%s: %s differs", label,   \
              #field)
    SAME(att_out, nq);
    SAME(att_lse, (size_t)B * H * T);
    SAME(dq, nq);
    SAME(dk, nkv);
    SAME(dv, nkv);
    SAME(dx, (size_t)M * C);
    SAME(dw, (size_t)C);
    SAME(dtable, (size_t)V * C);
    SAME(losses, (size_t)N);
    SAME(grad, (size_t)N * V);
    SAME(param, (size_t)100003);
#undef SAME
    cr_expect(memcmp(&a->ssq, &b->ssq, sizeof(double)) == 0, "%s: sum_squares differs", label);
}

Test(ops, results_are_bitwise_identical_across_runs_and_thread_counts)
{
    Outputs first, again, one, three;
    run_all(&first, 2);
    run_all(&again, 2);
    run_all(&one, 1);
    run_all(&three, 3);
    expect_same(&first, &again, "same thread count");
    expect_same(&first, &one, "1 thread vs 2");
    expect_same(&first, &three, "3 threads vs 2");
}

Test(ops, matmul_is_bitwise_repeatable)
{
    rng_seed(18);
    int M = 65, K = 97, N = 33;
    float *inp = rand_floats((size_t)M * K, -1, 1), *w = rand_floats((size_t)N * K, -1, 1);
    float *bias = rand_floats(N, -1, 1), *dout = rand_floats((size_t)M * N, -1, 1);
    float *out[2], *dinp[2], *dw[2], *db[2];
    for (int r = 0; r < 2; r++) {
        out[r] = talloc((size_t)M * N * sizeof(float));
        dinp[r] = talloc((size_t)M * K * sizeof(float));
        dw[r] = fill_floats((size_t)N * K, 0);
        db[r] = fill_floats(N, 0);
        BE->matmul_forward(BE, out[r], inp, w, bias, M, K, N);
        BE->matmul_backward(BE, dinp[r], dw[r], db[r], dout, inp, w, M, K, N, 0);
    }
    cr_expect(memcmp(out[0], out[1], (size_t)M * N * sizeof(float)) == 0);
    cr_expect(memcmp(dinp[0], dinp[1], (size_t)M * K * sizeof(float)) == 0);
    cr_expect(memcmp(dw[0], dw[1], (size_t)N * K * sizeof(float)) == 0);
    cr_expect(memcmp(db[0], db[1], (size_t)N * sizeof(float)) == 0);
}
