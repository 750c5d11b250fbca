/* backend_ops.c: every op of the Backend table (kernels/ops.h) as one table of cases, run on a
 * backend X and on the CPU backend (the reference), as ggml's test-backend-ops. An entry names the
 * ops it calls, its shapes (odd sizes, off every tile), how its inputs are made (seeded random
 * fp32 on the host, or what the CPU computes from them where an op needs a forward's results)
 * and how the ops are called on a backend; each output it compares carries a tolerance for fp32
 * and for bf16 storage, reasoned per family below. Both backends get the same inputs through
 * their own plumbing (mem_alloc, mem_to_device, Act storage of act_size(be) bytes); outputs are
 * poisoned with NaN first, so an element left unwritten shows. Every case also runs a second
 * time on X, which must give the same bits (the CUDA backend has no float atomics and promises
 * that for every op: kernels/cuda/ops_cuda.cu). Last, every op X has must be named by an entry.
 * Invariant: a case's inputs depend only on its place in the table, not on what ran before. */
#include "tests/kernels/backend_ops.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/common.h"

enum { MAX_TENSORS = 16, MAX_DIMS = 8, MAX_SHAPES = 12, MAX_EXPERTS = 64 };

/* F32 and I32 live in the backend's memory as fp32 and int32; ACT in its Act storage; HOST_F64
 * and HOST_I32 in host memory whatever the backend (sums returned as double, expert counts). */
typedef enum { F32, ACT, I32, HOST_F64, HOST_I32 } TensorType;
/* IN: made here, read by the op; OUT: poisoned before the call, compared after; INOUT: made
 * here and compared after (accumulators, in-place ops); SCRATCH: poisoned, not compared; CHECK:
 * a count the call makes on the backend itself (outputs that must agree bit for bit between two
 * ways of calling it), which must be 0 on each backend. */
typedef enum { IN, OUT, INOUT, SCRATCH, CHECK } Role;

/* The largest relative error ||x - ref|| / ||ref|| an output may have, when X stores Act
 * tensors in fp32 and when it stores them in bf16. */
typedef struct Tolerance {
    double fp32, bf16;
} Tolerance;

typedef struct CaseTensor {
    const char *name;
    TensorType type;
    Role role;
    size_t n;   /* elements; 0: the op gets NULL */
    void *host; /* its values: float (F32, ACT), int32_t (I32, HOST_I32) or double (HOST_F64) */
    Tolerance tol;
} CaseTensor;

/* One case: an entry at one shape, its tensors made. */
typedef struct Case {
    CaseTensor t[MAX_TENSORS];
    int count;
    int same_inputs; /* the ops choose (routing): the reference reads X's rounding of the Act
                      * inputs too, so that both choose from the same values */
    uint64_t rng;
} Case;

typedef struct OpCase {
    const char *ops;                  /* the Backend ops it calls and covers, space-separated */
    const char *dims;                 /* the names of the shape's numbers, space-separated */
    int shapes[MAX_SHAPES][MAX_DIMS]; /* the list ends at a shape whose first number is 0 */
    void (*make)(Case *c, const int *s);
    /* t[i]: tensor i (in make's order) in be's memory, host memory for HOST_* */
    void (*call)(const Backend *be, void *const *t, const int *s);
} OpCase;

/* ---- making inputs -------------------------------------------------------------------------- */

static double uniform(Case *c)
{
    c->rng = c->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(c->rng >> 11) * (1.0 / 9007199254740992.0);
}

static size_t host_bytes(TensorType type)
{
    return type == HOST_F64 ? sizeof(double) : 4;
}

static void *declare(Case *c, const char *name, TensorType type, Role role, size_t n, Tolerance tol)
{
    if (c->count == MAX_TENSORS) {
        fprintf(stderr, "backend_ops: more than %d tensors in a case\n", MAX_TENSORS);
        exit(1);
    }
    CaseTensor *t = &c->t[c->count++];
    *t = (CaseTensor){name, type, role, n, calloc(n ? n : 1, host_bytes(type)), tol};
    return t->host;
}

/* n values uniform in [-scale, scale) (0: zeros). */
static void fill(Case *c, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale ? (float)((uniform(c) * 2.0 - 1.0) * scale) : 0.0f;
}

static float *input(Case *c, const char *name, TensorType type, size_t n, float scale)
{
    float *x = declare(c, name, type, IN, n, (Tolerance){0, 0});
    fill(c, x, n, scale);
    return x;
}

static int32_t *input_i32(Case *c, const char *name, TensorType type, size_t n)
{
    return declare(c, name, type, IN, n, (Tolerance){0, 0});
}

static void *output(Case *c, const char *name, TensorType type, size_t n, Tolerance tol)
{
    return declare(c, name, type, OUT, n, tol);
}

/* Made here (random, or zeros for HOST_F64), compared after. */
static void *inout(Case *c, const char *name, TensorType type, size_t n, float scale, Tolerance tol)
{
    void *x = declare(c, name, type, INOUT, n, tol);
    if (type != HOST_F64) fill(c, x, n, scale);
    return x;
}

static void scratch(Case *c, const char *name, TensorType type, size_t n)
{
    declare(c, name, type, SCRATCH, n, (Tolerance){0, 0});
}

static void check(Case *c, const char *name)
{
    declare(c, name, HOST_F64, CHECK, 1, (Tolerance){0, 0});
}

/* An Act pointer off elements into p, in be's storage. */
static void *act_at(const Backend *be, void *p, size_t off)
{
    return (char *)p + off * be->act_size(be);
}

/* 1 when bytes of be's memory at a and b hold the same bits. */
static int same_device_bits(const Backend *be, const void *a, const void *b, size_t bytes)
{
    unsigned char *ha = malloc(bytes), *hb = malloc(bytes);
    be->mem_to_host(be, ha, a, bytes);
    be->mem_to_host(be, hb, b, bytes);
    int same = memcmp(ha, hb, bytes) == 0;
    free(ha), free(hb);
    return same;
}

/* rope tables cos/sin [T, D/2] of position t and frequency i, base 10000. */
static void rope_tables(float *c, float *s, int T, int D)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < D / 2; i++) {
            double angle = t * pow(10000.0, -2.0 * i / D);
            c[(size_t)t * (D / 2) + i] = (float)cos(angle);
            s[(size_t)t * (D / 2) + i] = (float)sin(angle);
        }
}

/* ---- tolerances ------------------------------------------------------------------------------
 * bf16 keeps 8 bits of mantissa: a stored element is off by up to 2^-9 = 2e-3 relative, and an
 * op that reads rounded inputs (the reference reads the unrounded ones) and rounds its output
 * stays within a few of those in norm: 1e-2 for every output an Act input or output touches.
 * fp32 tensors that no Act reaches keep their fp32 bar in bf16 mode. */

/* A copy, or one correctly rounded operation an element (x * s, a + b): the same bits. */
static const Tolerance COPY = {0, 1e-2};
/* fp32 data only (no Act anywhere): the same in both modes. */
static const Tolerance COPY_F32 = {0, 0};
/* A sum of K products or terms in another order (cuBLAS's blocking against OpenBLAS's, a tree
 * against a loop, FMA contraction on the device): about 2^-24 sqrt(K) relative, 3e-6 at K 2048,
 * and a few ulps through exp, rsqrt or a division: 1e-5. */
static const Tolerance SUMS = {1e-5, 1e-2};
/* The same on fp32 data only: the optimizer's elementwise update (powf, sqrt and a division in
 * two compilers' math libraries), the softmax of routing over logits both sides read alike. */
static const Tolerance SUMS_F32 = {1e-5, 1e-5};
/* Attention's backward: the softmax gradient P (dP - D) subtracts nearly equal numbers (D is
 * P's mean of dP), which magnifies the reordering error of the sums by |dP| / |dP - D|: 1e-4. */
static const Tolerance SOFTMAX_GRAD = {1e-4, 1e-2};
/* A sum in double of exact fp32 products (a square of an fp32 fits in a double), in another
 * order: about 1e-16 sqrt(n) relative: 1e-12 in both modes (fp32 inputs). */
static const Tolerance DOUBLE_SUM = {1e-12, 1e-12};
/* A sum in double rounded to fp32: at most an ulp apart. */
static const Tolerance DOUBLE_TO_F32 = {1e-6, 1e-2};

/* ---- matmul -----------------------------------------------------------------------------------
 */

static void matmul_forward_make(Case *c, const int *s)
{
    const int M = s[0], K = s[1], N = s[2], bias = s[3];
    input(c, "inp", ACT, (size_t)M * K, 1.0f);
    input(c, "weight", F32, (size_t)N * K, 0.5f);
    input(c, "bias", F32, bias ? N : 0, 1.0f);
    output(c, "out", ACT, (size_t)M * N, SUMS);
}

static void matmul_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->matmul_forward(be, t[3], t[0], t[1], t[2], s[0], s[1], s[2]);
}

/* dinp: 0 NULL, 1 overwritten, 2 accumulated onto random values */
static void matmul_backward_make(Case *c, const int *s)
{
    const int M = s[0], K = s[1], N = s[2], bias = s[3], dinp = s[4];
    input(c, "dout", ACT, (size_t)M * N, 1.0f);
    input(c, "inp", ACT, (size_t)M * K, 1.0f);
    input(c, "weight", F32, (size_t)N * K, 0.5f);
    if (dinp == 2)
        inout(c, "dinp", ACT, (size_t)M * K, 1.0f, SUMS);
    else
        output(c, "dinp", ACT, dinp ? (size_t)M * K : 0, SUMS);
    inout(c, "dweight", F32, (size_t)N * K, 1.0f, SUMS);
    inout(c, "dbias", F32, bias ? N : 0, 1.0f, SUMS);
}

static void matmul_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->matmul_backward(be, t[3], t[4], t[5], t[0], t[1], t[2], s[0], s[1], s[2], s[4] == 2);
}

/* The bf16 working copy of mixed precision: two weights inside one attached buffer, read by
 * matmuls; the fp32 values negated and refreshed (the copy must follow), then weights_touched and
 * refreshed again (the same product; how many elements a refresh rounded is gpu_test_ops'
 * check); detached (rounded on the fly again). A backend without the group (the reference) runs
 * the same matmuls on fp32. */
static void weights_make(Case *c, const int *s)
{
    const int M = s[0], K = s[1], N = s[2];
    input(c, "params", F32, 2 * (size_t)N * K + 64, 0.5f);
    input(c, "inp", ACT, (size_t)M * K, 1.0f);
    output(c, "out first weight", ACT, (size_t)M * N, SUMS);
    output(c, "out second weight", ACT, (size_t)M * N, SUMS);
    output(c, "out after refresh", ACT, (size_t)M * N, SUMS);
    output(c, "out after detach", ACT, (size_t)M * N, SUMS);
    output(c, "out after touched", ACT, (size_t)M * N, SUMS);
}

static void weights_call(const Backend *be, void *const *t, const int *s)
{
    const int M = s[0], K = s[1], N = s[2];
    const size_t wn = (size_t)N * K, total = 2 * wn + 64;
    float *params = t[0], *wa = params + 64, *wb = params + 64 + wn;
    if (be->weights_attach && be->weights_attach(be, params, total) != DS_OK) return;
    if (be->weights_refresh) be->weights_refresh(be, params);
    be->matmul_forward(be, t[2], t[1], wa, NULL, M, K, N);
    be->matmul_forward(be, t[3], t[1], wb, NULL, M, K, N);
    be->scale(be, params, -1.0f, total);
    if (be->weights_refresh) be->weights_refresh(be, params);
    be->matmul_forward(be, t[4], t[1], wa, NULL, M, K, N);
    if (be->weights_touched) be->weights_touched(be, params); /* the copy is rounded again */
    if (be->weights_refresh) be->weights_refresh(be, params);
    be->matmul_forward(be, t[6], t[1], wa, NULL, M, K, N);
    if (be->weights_detach) be->weights_detach(be, params);
    be->matmul_forward(be, t[5], t[1], wa, NULL, M, K, N);
}

/* ---- rmsnorm ----------------------------------------------------------------------------------
 */

static void rmsnorm_forward_make(Case *c, const int *s)
{
    const int M = s[0], C = s[1];
    input(c, "inp", F32, (size_t)M * C, 2.0f);
    input(c, "weight", F32, C, 1.0f);
    output(c, "out", ACT, (size_t)M * C, SUMS);
    output(c, "rstd", F32, M, SUMS_F32);
}

static void rmsnorm_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->rmsnorm_forward(be, t[2], t[3], t[0], t[1], s[0], s[1], 1e-5f);
}

/* the sum in fp32 is exact given b's storage; the norm of a sum whose b went through bf16 moves
 * by bf16's rounding, as the norms of an Act input do */
static void add_rmsnorm_forward_make(Case *c, const int *s)
{
    const int M = s[0], C = s[1];
    input(c, "a", F32, (size_t)M * C, 2.0f);
    input(c, "b", ACT, (size_t)M * C, 2.0f);
    input(c, "weight", F32, C, 1.0f);
    output(c, "sum", F32, (size_t)M * C, COPY);
    output(c, "out", ACT, (size_t)M * C, SUMS);
    output(c, "rstd", F32, M, SUMS);
}

static void add_rmsnorm_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->add_rmsnorm_forward(be, t[3], t[4], t[5], t[0], t[1], t[2], s[0], s[1], 1e-5f);
}

/* act: 1 the updated dinp also as an Act */
static void rmsnorm_backward_make(Case *c, const int *s)
{
    const int M = s[0], C = s[1], act = s[2];
    input(c, "dout", ACT, (size_t)M * C, 1.0f);
    float *inp = input(c, "inp", F32, (size_t)M * C, 2.0f);
    float *weight = input(c, "weight", F32, C, 1.0f);
    float *rstd = input(c, "rstd", F32, M, 0.0f);
    float *out = malloc((size_t)M * C * sizeof(float));
    backend_cpu()->rmsnorm_forward(backend_cpu(), out, rstd, inp, weight, M, C, 1e-5f);
    free(out);
    inout(c, "dinp", F32, (size_t)M * C, 1.0f, SUMS);
    output(c, "dinp as Act", ACT, act ? (size_t)M * C : 0, SUMS);
    inout(c, "dweight", F32, C, 1.0f, SUMS);
}

static void rmsnorm_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->rmsnorm_backward(be, t[4], t[5], t[6], t[0], t[1], t[2], t[3], s[0], s[1]);
}

/* ---- rotary embeddings: two products and a sum an element, from the same tables ---------------
 */

static void rope_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], H = s[2], D = s[3];
    inout(c, "x", ACT, (size_t)B * T * H * D, 1.0f, SUMS);
    float *cos_t = input(c, "cos", F32, (size_t)T * (D / 2), 0.0f);
    float *sin_t = input(c, "sin", F32, (size_t)T * (D / 2), 0.0f);
    rope_tables(cos_t, sin_t, T, D);
}

static void rope_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->rope_forward(be, t[0], t[1], t[2], s[0], s[1], s[2], s[3]);
}

static void rope_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->rope_backward(be, t[0], t[1], t[2], s[0], s[1], s[2], s[3]);
}

/* rope in rows: H heads of D, ld_head apart, from element `first` of rows of ld_row */
static void rope_block_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], D = s[3], ld_row = s[4];
    inout(c, "x", ACT, (size_t)B * T * ld_row, 1.0f, SUMS);
    float *cos_t = input(c, "cos", F32, (size_t)T * (D / 2), 0.0f);
    float *sin_t = input(c, "sin", F32, (size_t)T * (D / 2), 0.0f);
    rope_tables(cos_t, sin_t, T, D);
}

static void rope_block_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->rope_block_forward(be, act_at(be, t[0], s[6]), s[4], s[5], t[1], t[2], s[0], s[1], s[2],
                           s[3], s[7]);
}

static void rope_block_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->rope_block_backward(be, act_at(be, t[0], s[6]), s[4], s[5], t[1], t[2], s[0], s[1], s[2],
                            s[3], s[7]);
}

/* ---- attention: forward sums T exps and products (SUMS); backward SOFTMAX_GRAD ----------------
 */

static void attention_forward_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], H = s[2], KVH = s[3], D = s[4];
    const size_t nq = (size_t)B * T * H * D, nkv = (size_t)B * T * KVH * D;
    input(c, "q", ACT, nq, 1.5f);
    input(c, "k", ACT, nkv, 1.5f);
    input(c, "v", ACT, nkv, 1.0f);
    output(c, "out", ACT, nq, SUMS);
    output(c, "lse", F32, (size_t)B * H * T, SUMS);
}

static void attention_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->attention_forward(be, t[3], t[4], t[0], t[1], t[2], s[0], s[1], s[2], s[3], s[4]);
}

/* backward from the CPU's forward outputs, so that only backward is measured */
static void attention_backward_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], H = s[2], KVH = s[3], D = s[4];
    const size_t nq = (size_t)B * T * H * D, nkv = (size_t)B * T * KVH * D;
    float *q = input(c, "q", ACT, nq, 1.5f), *k = input(c, "k", ACT, nkv, 1.5f);
    float *v = input(c, "v", ACT, nkv, 1.0f);
    float *out = input(c, "out", ACT, nq, 0.0f), *lse = input(c, "lse", F32, (size_t)B * H * T, 0);
    backend_cpu()->attention_forward(backend_cpu(), out, lse, q, k, v, B, T, H, KVH, D);
    input(c, "dout", ACT, nq, 1.0f);
    output(c, "dq", ACT, nq, SOFTMAX_GRAD);
    output(c, "dk", ACT, nkv, SOFTMAX_GRAD);
    output(c, "dv", ACT, nkv, SOFTMAX_GRAD);
}

static void attention_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->attention_backward(be, t[6], t[7], t[8], t[5], t[3], t[4], t[0], t[1], t[2], s[0], s[1],
                           s[2], s[3], s[4]);
}

/* Latent attention's: q/k heads of Dqk, v heads of Dv; scale s[5] / 1000, 0: 1 / sqrt(Dqk). */
static float dv_scale(const int *s)
{
    return s[5] ? (float)s[5] / 1000.0f : 1.0f / sqrtf((float)s[3]);
}

static void attention_forward_dv_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], H = s[2], Dqk = s[3], Dv = s[4];
    const size_t nq = (size_t)B * T * H * Dqk, nv = (size_t)B * T * H * Dv;
    input(c, "q", ACT, nq, 1.5f);
    input(c, "k", ACT, nq, 1.5f);
    input(c, "v", ACT, nv, 1.0f);
    output(c, "out", ACT, nv, SUMS);
    output(c, "lse", F32, (size_t)B * H * T, SUMS);
}

static void attention_forward_dv_call(const Backend *be, void *const *t, const int *s)
{
    be->attention_forward_dv(be, t[3], t[4], t[0], t[1], t[2], s[0], s[1], s[2], s[3], s[4],
                             dv_scale(s));
}

static void attention_backward_dv_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], H = s[2], Dqk = s[3], Dv = s[4];
    const size_t nq = (size_t)B * T * H * Dqk, nv = (size_t)B * T * H * Dv;
    float *q = input(c, "q", ACT, nq, 1.5f), *k = input(c, "k", ACT, nq, 1.5f);
    float *v = input(c, "v", ACT, nv, 1.0f);
    float *out = input(c, "out", ACT, nv, 0.0f), *lse = input(c, "lse", F32, (size_t)B * H * T, 0);
    backend_cpu()->attention_forward_dv(backend_cpu(), out, lse, q, k, v, B, T, H, Dqk, Dv,
                                        dv_scale(s));
    input(c, "dout", ACT, nv, 1.0f);
    output(c, "dq", ACT, nq, SOFTMAX_GRAD);
    output(c, "dk", ACT, nq, SOFTMAX_GRAD);
    output(c, "dv", ACT, nv, SOFTMAX_GRAD);
}

static void attention_backward_dv_call(const Backend *be, void *const *t, const int *s)
{
    be->attention_backward_dv(be, t[6], t[7], t[8], t[5], t[3], t[4], t[0], t[1], t[2], s[0], s[1],
                              s[2], s[3], s[4], dv_scale(s));
}

/* ---- elementwise ---------------------------------------------------------------------------- */

static void swiglu_forward_make(Case *c, const int *s)
{
    input(c, "gate", ACT, s[0], 6.0f);
    input(c, "up", ACT, s[0], 2.0f);
    output(c, "out", ACT, s[0], SUMS);
}

static void swiglu_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->swiglu_forward(be, t[2], t[0], t[1], s[0]);
}

static void swiglu_backward_make(Case *c, const int *s)
{
    input(c, "gate", ACT, s[0], 6.0f);
    input(c, "up", ACT, s[0], 2.0f);
    input(c, "dout", ACT, s[0], 1.0f);
    output(c, "dgate", ACT, s[0], SUMS);
    output(c, "dup", ACT, s[0], SUMS);
}

static void swiglu_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->swiglu_backward(be, t[3], t[4], t[2], t[0], t[1], s[0]);
}

static void add_make(Case *c, const int *s)
{
    input(c, "a", F32, s[0], 2.0f);
    input(c, "b", ACT, s[0], 2.0f);
    output(c, "out", F32, s[0], COPY);
}

static void add_call(const Backend *be, void *const *t, const int *s)
{
    be->add(be, t[2], t[0], t[1], s[0]);
}

static void scale_make(Case *c, const int *s)
{
    inout(c, "x", F32, s[0], 2.0f, COPY_F32);
}

static void scale_call(const Backend *be, void *const *t, const int *s)
{
    be->scale(be, t[0], 0.37f, s[0]);
}

static void sum_squares_make(Case *c, const int *s)
{
    input(c, "x", F32, s[0], 3.0f);
    output(c, "sum", HOST_F64, 1, DOUBLE_SUM);
}

static void sum_squares_call(const Backend *be, void *const *t, const int *s)
{
    *(double *)t[1] = be->sum_squares(be, t[0], s[0]);
}

/* count ranges of x, range i of i * step elements from i * step (the first empty); also how many
 * ranges' batched sums are not the bits of sum_squares of the range alone (0 on any backend). */
static void sum_squares_batch_make(Case *c, const int *s)
{
    input(c, "x", F32, s[0], 3.0f);
    output(c, "sums", HOST_F64, s[1], DOUBLE_SUM);
    check(c, "batch unlike sum_squares");
}

static void sum_squares_batch_call(const Backend *be, void *const *t, const int *s)
{
    const int count = s[1];
    const size_t step = (size_t)s[0] / count / 2;
    const float *xs[SUM_SQUARES_BATCH] = {0};
    size_t ns[SUM_SQUARES_BATCH] = {0};
    for (int i = 0; i < count; i++)
        xs[i] = (const float *)t[0] + i * step, ns[i] = i * step;
    double *sums = t[1], *differ = t[2];
    be->sum_squares_batch(be, sums, xs, ns, count);
    for (int i = 0; i < count; i++) {
        double one = be->sum_squares(be, xs[i], ns[i]);
        *differ += memcmp(&one, &sums[i], sizeof(double)) != 0;
    }
}

/* ---- embedding: copies, and each row's gradients added in token order (the same bits) ------- */

static void tokens(Case *c, int32_t *tok, int N, int V)
{
    for (int i = 0; i < N; i++)
        tok[i] = (int32_t)(uniform(c) * V);
}

static void embedding_forward_make(Case *c, const int *s)
{
    const int N = s[0], V = s[1], C = s[2];
    tokens(c, input_i32(c, "tokens", I32, N), N, V);
    input(c, "table", F32, (size_t)V * C, 1.0f);
    output(c, "out", F32, (size_t)N * C, COPY_F32);
}

static void embedding_forward_call(const Backend *be, void *const *t, const int *s)
{
    be->embedding_forward(be, t[2], t[0], t[1], s[0], s[2]);
}

static void embedding_backward_make(Case *c, const int *s)
{
    const int N = s[0], V = s[1], C = s[2];
    tokens(c, input_i32(c, "tokens", I32, N), N, V); /* N > V: tokens repeat */
    input(c, "dout", F32, (size_t)N * C, 1.0f);
    inout(c, "dtable", F32, (size_t)V * C, 1.0f, COPY_F32);
}

static void embedding_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->embedding_backward(be, t[2], t[1], t[0], s[0], s[2]);
}

/* this shard holds rows [start, start + V) of a vocabulary of `full`; other tokens: zero rows */
static void embedding_forward_shard_make(Case *c, const int *s)
{
    const int N = s[0], C = s[1], V = s[2], full = s[4];
    tokens(c, input_i32(c, "tokens", I32, N), N, full);
    input(c, "table", F32, (size_t)V * C, 1.0f);
    output(c, "out", F32, (size_t)N * C, COPY_F32);
}

static void embedding_forward_shard_call(const Backend *be, void *const *t, const int *s)
{
    be->embedding_forward_shard(be, t[2], t[0], t[1], s[0], s[1], s[3], s[2]);
}

static void embedding_backward_shard_make(Case *c, const int *s)
{
    const int N = s[0], C = s[1], V = s[2], full = s[4];
    tokens(c, input_i32(c, "tokens", I32, N), N, full);
    input(c, "dout", F32, (size_t)N * C, 1.0f);
    inout(c, "dtable", F32, (size_t)V * C, 1.0f, COPY_F32);
}

static void embedding_backward_shard_call(const Backend *be, void *const *t, const int *s)
{
    be->embedding_backward_shard(be, t[2], t[1], t[0], s[0], s[1], s[3], s[2]);
}

/* ---- cross-entropy: sums of V exps (SUMS) ------------------------------------------------------
 */

/* Weights: every 7th row 0 (half of those with target -100), else in [0.5, 1.5); bad: row 0
 * weighted with a target past V (loss NaN, gradient zero on both). */
static void cross_entropy_make(Case *c, const int *s)
{
    const int N = s[0], V = s[1], bad = s[3];
    inout(c, "logits", ACT, (size_t)N * V, 4.0f, SUMS);
    int32_t *tg = input_i32(c, "targets", I32, N);
    float *w = input(c, "weights", F32, N, 0.0f);
    for (int i = 0; i < N; i++) {
        w[i] = i % 7 == 3 ? 0.0f : (float)(0.5 + uniform(c));
        tg[i] = w[i] == 0.0f && i % 2 ? -100 : (int32_t)(uniform(c) * V);
    }
    if (bad) w[0] = 1.0f, tg[0] = V + 5;
    output(c, "losses", F32, N, SUMS);
}

static void cross_entropy_call(const Backend *be, void *const *t, const int *s)
{
    be->cross_entropy(be, t[3], t[0], t[1], t[2], s[0], s[1], s[2]);
}

static void cross_entropy_shard_max_make(Case *c, const int *s)
{
    input(c, "logits", ACT, (size_t)s[0] * s[1], 4.0f);
    output(c, "row_max", F32, s[0], COPY);
}

static void cross_entropy_shard_max_call(const Backend *be, void *const *t, const int *s)
{
    be->cross_entropy_shard_max(be, t[1], t[0], s[0], s[1]);
}

/* the shard's logits and targets of the whole vocabulary; row_max from the CPU (the all-reduce's
 * stand-in) */
static void shard_inputs(Case *c, const int *s, float **logits, float **row_max)
{
    const int N = s[0], V = s[1], full = s[3];
    *logits = input(c, "logits", ACT, (size_t)N * V, 4.0f);
    *row_max = input(c, "row_max", F32, N, 0.0f);
    backend_cpu()->cross_entropy_shard_max(backend_cpu(), *row_max, *logits, N, V);
    tokens(c, input_i32(c, "targets", I32, N), N, full);
}

static void cross_entropy_shard_stats_make(Case *c, const int *s)
{
    float *logits, *row_max;
    shard_inputs(c, s, &logits, &row_max);
    output(c, "stats", F32, (size_t)s[0] * 3, SUMS);
}

static void cross_entropy_shard_stats_call(const Backend *be, void *const *t, const int *s)
{
    be->cross_entropy_shard_stats(be, t[3], t[0], t[1], t[2], s[0], s[1], s[2]);
}

/* stats from the CPU, with every row's target held by some rank */
static void cross_entropy_shard_finish_make(Case *c, const int *s)
{
    const int N = s[0], V = s[1], start = s[2];
    float *logits, *row_max;
    shard_inputs(c, s, &logits, &row_max);
    const int32_t *tg = c->t[2].host;
    float *stats = input(c, "stats", F32, (size_t)N * 3, 0.0f);
    backend_cpu()->cross_entropy_shard_stats(backend_cpu(), stats, logits, row_max, tg, N, V,
                                             start);
    for (int i = 0; i < N; i++)
        stats[3 * i + 2] = 1.0f;
    float *w = input(c, "weights", F32, N, 0.0f);
    for (int i = 0; i < N; i++)
        w[i] = i % 5 == 2 ? 0.0f : (float)(0.5 + uniform(c));
    output(c, "losses", F32, N, SUMS);
    c->t[0].role = INOUT; /* the logits become their gradient */
    c->t[0].tol = SUMS;
}

static void cross_entropy_shard_finish_call(const Backend *be, void *const *t, const int *s)
{
    be->cross_entropy_shard_finish(be, t[5], t[0], t[1], t[3], t[2], t[4], s[0], s[1], s[2], s[4]);
}

/* ---- AdamW (fp32 only: SUMS_F32) ---------------------------------------------------------------
 */

enum { ADAMW_STEPS = 3 };

/* Three steps from zero moments; the same three steps on copies one element further on (not
 * 16-byte aligned: the one-by-one path) must give the same bits ("differing" counts those not). */
static void adamw_make(Case *c, const int *s)
{
    const size_t n = s[0];
    inout(c, "param", F32, n, 1.0f, SUMS_F32);
    input(c, "grad", F32, ADAMW_STEPS * n, 0.1f);
    inout(c, "m", F32, n, 0.0f, SUMS_F32);
    inout(c, "v", F32, n, 0.0f, SUMS_F32);
    scratch(c, "copies", F32, 4 * (n + 1));
    check(c, "unaligned unlike aligned");
}

static void adamw_call(const Backend *be, void *const *t, const int *s)
{
    const size_t n = s[0];
    float *param = t[0], *grad = t[1], *m = t[2], *v = t[3], *copies = t[4];
    float *cp = copies + 1, *cm = cp + n + 1, *cv = cm + n + 1, *cg = cv + n + 1;
    be->mem_copy(be, cp, param, n * 4), be->mem_copy(be, cm, m, n * 4),
        be->mem_copy(be, cv, v, n * 4);
    for (int step = 1; step <= ADAMW_STEPS; step++) {
        const float *g = grad + (size_t)(step - 1) * n;
        be->mem_copy(be, cg, g, n * 4);
        be->adamw_update(be, param, g, m, v, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, step);
        be->adamw_update(be, cp, cg, cm, cv, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, step);
    }
    const float *a[3] = {param, m, v}, *b[3] = {cp, cm, cv};
    double *differ = t[5];
    for (int k = 0; k < 3; k++)
        *differ += !same_device_bits(be, a[k], b[k], n * 4);
}

/* EWC fused in: `sets` (Fisher, anchor) pairs, three steps decaying toward the anchor, toward 0,
 * toward the anchor; the penalty of each step (in double: DOUBLE_SUM's reasoning, but its terms
 * are fp32 products rounded in each backend's order: 1e-6). With no sets also whether it gives
 * adamw_update's bits and adds nothing to the penalty. */
static void adamw_ewc_make(Case *c, const int *s)
{
    const size_t n = s[0], sets = s[1];
    inout(c, "param", F32, n, 1.0f, SUMS_F32);
    input(c, "grad", F32, ADAMW_STEPS * n, 0.1f);
    inout(c, "m", F32, n, 0.0f, SUMS_F32);
    inout(c, "v", F32, n, 0.0f, SUMS_F32);
    float *fisher = input(c, "fisher", F32, sets * n, 1.0f);
    for (size_t i = 0; i < sets * n; i++)
        fisher[i] = fabsf(fisher[i]); /* a Fisher is a mean of squares */
    input(c, "anchor", F32, sets * n, 1.0f);
    double *penalty = inout(c, "penalty", HOST_F64, ADAMW_STEPS, 0.0f, (Tolerance){1e-6, 1e-6});
    for (int i = 0; i < ADAMW_STEPS; i++)
        penalty[i] = 0.25;
    scratch(c, "copies", F32, sets ? 0 : 3 * n);
    check(c, "no sets unlike adamw_update");
}

static void adamw_ewc_call(const Backend *be, void *const *t, const int *s)
{
    enum { MAX_SETS = 4 };
    const size_t n = s[0];
    const int sets = s[1];
    float *param = t[0], *grad = t[1], *m = t[2], *v = t[3];
    const float *fisher[MAX_SETS], *anchor[MAX_SETS];
    for (int k = 0; k < sets; k++)
        fisher[k] = (const float *)t[4] + k * n, anchor[k] = (const float *)t[5] + k * n;
    double *penalty = t[6], *differ = t[8];
    float *copy[3] = {t[7], NULL, NULL}, *const state[3] = {param, m, v};
    if (!sets) /* plain AdamW on copies of param, m, v alongside */
        for (int k = 0; k < 3; k++) {
            copy[k] = (float *)t[7] + k * n;
            be->mem_copy(be, copy[k], state[k], n * 4);
        }
    for (int step = 1; step <= ADAMW_STEPS; step++) {
        const float *g = grad + (size_t)(step - 1) * n;
        be->adamw_ewc_update(be, param, g, m, v, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.7f, step,
                             fisher, anchor, sets, 3.0f, step != 2, &penalty[step - 1]);
        if (!sets)
            be->adamw_update(be, copy[0], g, copy[1], copy[2], n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                             0.7f, step);
    }
    if (!sets)
        for (int k = 0; k < 3; k++)
            *differ += !same_device_bits(be, state[k], copy[k], n * 4);
}

/* ---- latent attention's blocks: copies and single additions (COPY) ----------------------------
 */

/* [M, W] blocks inside rows of ld_dst and ld_src; the whole destination is compared, so nothing
 * outside the block may change */
static void copy_block_make(Case *c, const int *s)
{
    const int M = s[0], ld_dst = s[2], ld_src = s[3];
    inout(c, "dst", ACT, (size_t)M * ld_dst, 1.0f, COPY);
    input(c, "src", ACT, (size_t)M * ld_src, 1.0f);
}

static void copy_block_call(const Backend *be, void *const *t, const int *s)
{
    const int M = s[0], W = s[1], ld_dst = s[2], ld_src = s[3];
    const size_t off_dst = ld_dst - W, off_src = ld_src > W ? 1 : 0;
    be->copy_block(be, act_at(be, t[0], off_dst), ld_dst, act_at(be, t[1], off_src), ld_src, M, W,
                   s[4]);
}

static void act_to_f32_make(Case *c, const int *s)
{
    const int M = s[0], W = s[1], ld_src = s[2];
    input(c, "src", ACT, (size_t)M * ld_src, 1.0f);
    output(c, "dst", F32, (size_t)M * W, COPY);
}

static void act_to_f32_call(const Backend *be, void *const *t, const int *s)
{
    be->act_to_f32(be, t[1], act_at(be, t[0], s[2] > s[1] ? 1 : 0), s[2], s[0], s[1]);
}

/* ---- mixture of experts ---------------------------------------------------------------------- */

/* The routings both checks use: V2 (softmax; greedy or group-limited, normalized or not, scaled)
 * and V3 (sigmoid, noaux_tc, normalized, scaled; with the score correction where the shape
 * says). */
static const MoeRouting routings[] = {
    {16, 4, 0, 1, 1, 0, 0, 1.0f},  /* 0: softmax greedy */
    {64, 6, 0, 8, 3, 0, 0, 16.0f}, /* 1: softmax group-limited, scaled */
    {64, 6, 0, 8, 3, 0, 1, 1.0f},  /* 2: softmax group-limited normalized */
    {16, 4, 1, 4, 2, 1, 1, 2.5f},  /* 3: sigmoid noaux_tc normalized */
    {256, 8, 1, 8, 4, 1, 1, 2.5f}, /* 4: DeepSeek-V3's */
    {20, 3, 1, 1, 1, 0, 0, 1.0f},  /* 5: sigmoid greedy */
};

/* moe_route on logits both sides read alike (same_inputs): the choices exactly; the weights
 * and scores are fp32 functions of the same values (SUMS_F32) */
static void moe_route_make(Case *c, const int *s)
{
    const int N = s[0];
    const MoeRouting *r = &routings[s[1]];
    c->same_inputs = 1;
    input(c, "logits", ACT, (size_t)N * r->experts, 3.0f);
    input(c, "bias", F32, s[2] ? r->experts : 0, 0.3f);
    output(c, "index", I32, (size_t)N * r->top_k, COPY_F32);
    output(c, "weight", F32, (size_t)N * r->top_k, SUMS_F32);
    output(c, "scores", F32, (size_t)N * r->experts, SUMS_F32);
}

static void moe_route_call(const Backend *be, void *const *t, const int *s)
{
    be->moe_route(be, t[2], t[3], t[4], t[0], t[1], s[0], &routings[s[1]]);
}

/* index [N, k] and scores [N, E] of the CPU's routing of random logits (the inputs of the
 * backward and the balance loss) */
static void routed(Case *c, int N, const MoeRouting *r, int32_t **index, float **scores)
{
    float *logits = malloc((size_t)N * r->experts * sizeof(float)), *w;
    fill(c, logits, (size_t)N * r->experts, 3.0f);
    *index = input_i32(c, "index", I32, (size_t)N * r->top_k);
    *scores = input(c, "scores", F32, (size_t)N * r->experts, 0.0f);
    w = malloc((size_t)N * r->top_k * sizeof(float));
    backend_cpu()->moe_route(backend_cpu(), *index, w, *scores, logits, NULL, N, r);
    free(logits), free(w);
}

static void moe_route_backward_make(Case *c, const int *s)
{
    const int N = s[0];
    const MoeRouting *r = &routings[s[1]];
    int32_t *index;
    float *scores;
    routed(c, N, r, &index, &scores);
    input(c, "dweight", F32, (size_t)N * r->top_k, 1.0f);
    output(c, "dlogits", ACT, (size_t)N * r->experts, SUMS);
}

static void moe_route_backward_call(const Backend *be, void *const *t, const int *s)
{
    be->moe_route_backward(be, t[3], t[2], t[0], t[1], s[0], &routings[s[1]]);
}

/* B sequences of T; about a quarter of the tokens weigh 0; dlogits from zeros (what the op adds
 * is all there is); the loss is summed in double in the CPU's order: 1e-9 */
static void moe_balance_make(Case *c, const int *s)
{
    const int B = s[0], T = s[1], N = B * T;
    const MoeRouting *r = &routings[s[2]];
    int32_t *index;
    float *scores;
    routed(c, N, r, &index, &scores);
    float *tw = input(c, "token_weights", F32, N, 1.0f);
    for (int i = 0; i < N; i++)
        tw[i] = tw[i] > -0.5f ? 1.0f : 0.0f;
    inout(c, "dlogits", ACT, (size_t)N * r->experts, 0.0f, SUMS);
    inout(c, "loss", HOST_F64, 1, 0.0f, (Tolerance){1e-9, 1e-9});
}

static void moe_balance_call(const Backend *be, void *const *t, const int *s)
{
    be->moe_balance(be, t[3], t[4], t[0], t[1], t[2], s[0], s[1], 0.01f, &routings[s[2]]);
}

/* k distinct experts a token, ascending, from the experts e with e % 3 != 1 (a third of the
 * experts get no rows; E >= 3k/2 + 2) */
static void random_choices(Case *c, int32_t *index, int N, int E, int k)
{
    for (int t = 0; t < N; t++) {
        int32_t *row = index + (size_t)t * k;
        int n = 0;
        while (n < k) {
            int e = (int)(uniform(c) * E), seen = e % 3 == 1;
            for (int j = 0; j < n && !seen; j++)
                seen = row[j] == e;
            if (!seen) row[n++] = e;
        }
        for (int i = 1; i < k; i++)
            for (int j = i; j > 0 && row[j - 1] > row[j]; j--) {
                int32_t x = row[j];
                row[j] = row[j - 1], row[j - 1] = x;
            }
    }
}

/* moe_permute: rows, weights (copied), slots and counts exactly as the CPU's */
static void moe_permute_make(Case *c, const int *s)
{
    const int N = s[0], E = s[1], k = s[2];
    random_choices(c, input_i32(c, "index", I32, (size_t)N * k), N, E, k);
    input(c, "weight", F32, (size_t)N * k, 1.0f);
    output(c, "rows", I32, (size_t)N * k, COPY_F32);
    output(c, "row_weight", F32, (size_t)N * k, COPY_F32);
    output(c, "slot", I32, (size_t)N * k, COPY_F32);
    output(c, "counts", HOST_I32, E, COPY_F32);
}

static void moe_permute_call(const Backend *be, void *const *t, const int *s)
{
    be->moe_permute(be, t[2], t[3], t[4], t[5], t[0], t[1], s[0], s[1], s[2]);
}

/* The CPU's permutation of N tokens' random choices: rows, row weights and slots of n = N k
 * pairs (the inputs of the row ops), declared in that order. */
static void permuted(Case *c, int N, int E, int k)
{
    const size_t n = (size_t)N * k;
    int32_t *index = malloc(n * 4), *rows = input_i32(c, "rows", I32, n);
    float *weight = malloc(n * 4), *row_weight = input(c, "row_weight", F32, n, 0.0f);
    int32_t *slot = input_i32(c, "slot", I32, n);
    int *counts = malloc((size_t)E * sizeof(int));
    random_choices(c, index, N, E, k);
    fill(c, weight, n, 1.0f);
    backend_cpu()->moe_permute(backend_cpu(), rows, row_weight, slot, counts, index, weight, N, E,
                               k);
    free(index), free(weight), free(counts);
}

/* gather_rows: a copy (or one product) a row: COPY */
static void gather_rows_make(Case *c, const int *s)
{
    const int N = s[0], E = s[1], k = s[2], C = s[3];
    permuted(c, N, E, k);
    input(c, "src", ACT, (size_t)N * C, 1.0f);
    output(c, "dst", ACT, (size_t)N * k * C, COPY);
}

static void gather_rows_call(const Backend *be, void *const *t, const int *s)
{
    be->gather_rows(be, t[4], t[3], t[0], s[4] ? t[1] : NULL, s[0] * s[2], s[3]);
}

/* scatter_add_rows onto random values, each row's sources in order (the products may be fused
 * into the additions on the device: SUMS); sorted 0: rows in any order, repeating */
static void scatter_add_rows_make(Case *c, const int *s)
{
    const int N = s[0], E = s[1], k = s[2], C = s[3], sorted = s[5];
    permuted(c, N, E, k);
    if (!sorted) {
        int32_t *rows = c->t[0].host;
        for (int i = 0; i < N * k; i++)
            rows[i] = (int32_t)(uniform(c) * (N / 3 + 1));
    }
    input(c, "src", ACT, (size_t)N * k * C, 1.0f);
    inout(c, "dst", ACT, (size_t)N * C, 1.0f, SUMS);
}

static void scatter_add_rows_call(const Backend *be, void *const *t, const int *s)
{
    be->scatter_add_rows(be, t[4], t[3], t[0], s[4] ? t[1] : NULL, s[0] * s[2], s[3]);
}

/* rows_dot: a dot product in double, rounded to fp32 */
static void rows_dot_make(Case *c, const int *s)
{
    const int N = s[0], E = s[1], k = s[2], C = s[3];
    permuted(c, N, E, k);
    input(c, "a", ACT, (size_t)N * C, 1.0f);
    input(c, "b", ACT, (size_t)N * k * C, 1.0f);
    output(c, "out", F32, (size_t)N * k, DOUBLE_TO_F32);
}

static void rows_dot_call(const Backend *be, void *const *t, const int *s)
{
    be->rows_dot(be, t[5], t[2], t[3], t[0], t[4], s[0] * s[2], s[3]);
}

/* The routed experts: E experts of [Im, C] gate and up and [C, Im] down over `rows` rows split
 * at random among the experts e with e % 3 != 1 (the others get none); matmuls: SUMS. */
static void experts_inputs(Case *c, const int *s)
{
    const int E = s[0], C = s[1], Im = s[2], rows = s[3];
    int32_t *counts = input_i32(c, "counts", HOST_I32, E);
    for (int i = 0; i < rows; i++) {
        int e;
        do
            e = (int)(uniform(c) * E);
        while (e % 3 == 1);
        counts[e]++;
    }
    input(c, "xs", ACT, (size_t)rows * C, 1.0f);
    input(c, "gate", F32, (size_t)E * Im * C, 0.2f);
    input(c, "up", F32, (size_t)E * Im * C, 0.2f);
    input(c, "down", F32, (size_t)E * C * Im, 0.2f);
}

/* pointers to each expert's weights inside one buffer of E of them */
static void expert_weights(float **w, void *buffer, int E, size_t each)
{
    for (int e = 0; e < E; e++)
        w[e] = (float *)buffer + e * each;
}

static void moe_experts_forward_make(Case *c, const int *s)
{
    const int C = s[1], Im = s[2], rows = s[3];
    experts_inputs(c, s);
    output(c, "ey", ACT, (size_t)rows * C, SUMS);
    output(c, "eg", ACT, (size_t)rows * Im, SUMS);
    output(c, "eu", ACT, (size_t)rows * Im, SUMS);
    output(c, "ea", ACT, (size_t)rows * Im, SUMS);
}

static void moe_experts_forward_call(const Backend *be, void *const *t, const int *s)
{
    const int E = s[0], C = s[1], Im = s[2];
    float *gate[MAX_EXPERTS], *up[MAX_EXPERTS], *down[MAX_EXPERTS];
    expert_weights(gate, t[2], E, (size_t)Im * C);
    expert_weights(up, t[3], E, (size_t)Im * C);
    expert_weights(down, t[4], E, (size_t)C * Im);
    be->moe_experts_forward(be, t[5], t[6], t[7], t[8], t[1], gate, up, down, t[0], E, C, Im);
}

/* backward from the CPU's forward (eg, eu, ea), weight gradients accumulated onto random values */
static void moe_experts_backward_make(Case *c, const int *s)
{
    const int E = s[0], C = s[1], Im = s[2], rows = s[3];
    const size_t each = (size_t)Im * C;
    experts_inputs(c, s);
    float *eg = input(c, "eg", ACT, (size_t)rows * Im, 0.0f);
    float *eu = input(c, "eu", ACT, (size_t)rows * Im, 0.0f);
    float *ea = input(c, "ea", ACT, (size_t)rows * Im, 0.0f);
    float *ey = malloc((size_t)rows * C * sizeof(float));
    float *gate[MAX_EXPERTS], *up[MAX_EXPERTS], *down[MAX_EXPERTS];
    expert_weights(gate, c->t[2].host, E, each);
    expert_weights(up, c->t[3].host, E, each);
    expert_weights(down, c->t[4].host, E, each);
    backend_cpu()->moe_experts_forward(backend_cpu(), ey, eg, eu, ea, c->t[1].host, gate, up, down,
                                       c->t[0].host, E, C, Im);
    free(ey);
    input(c, "dey", ACT, (size_t)rows * C, 1.0f);
    output(c, "dxs", ACT, (size_t)rows * C, SUMS);
    inout(c, "dgate", F32, E * each, 1.0f, SUMS);
    inout(c, "dup", F32, E * each, 1.0f, SUMS);
    inout(c, "ddown", F32, E * each, 1.0f, SUMS);
    scratch(c, "dea", ACT, (size_t)rows * Im);
    scratch(c, "deg", ACT, (size_t)rows * Im);
    scratch(c, "deu", ACT, (size_t)rows * Im);
}

static void moe_experts_backward_call(const Backend *be, void *const *t, const int *s)
{
    const int E = s[0], C = s[1], Im = s[2];
    const size_t each = (size_t)Im * C;
    float *gate[MAX_EXPERTS], *up[MAX_EXPERTS], *down[MAX_EXPERTS];
    float *dgate[MAX_EXPERTS], *dup[MAX_EXPERTS], *ddown[MAX_EXPERTS];
    expert_weights(gate, t[2], E, each), expert_weights(up, t[3], E, each);
    expert_weights(down, t[4], E, each), expert_weights(dgate, t[10], E, each);
    expert_weights(dup, t[11], E, each), expert_weights(ddown, t[12], E, each);
    be->moe_experts_backward(be, t[9], dgate, dup, ddown, t[13], t[14], t[15], t[8], t[1], t[5],
                             t[6], t[7], gate, up, down, t[0], E, C, Im);
}

/* ---- the table -------------------------------------------------------------------------------
 * Shapes: row counts and widths off every block size (133, 67, 100003), the sizes the CUDA
 * kernels switch paths at (head dims 64 / 128 / 192+128 for the tensor-core attention, one key
 * tile and a row past it, V that fits shared memory in bf16 and V that does not, 16-byte row
 * moves), and tiny ones (a few tokens, one row). Large enough to cross the device's blocks, small
 * enough that the CPU runs the table in seconds. */
static const OpCase table[] = {
    {"matmul_forward",
     "M K N bias",
     {{133, 96, 80, 1}, {133, 96, 80, 0}, {37, 70, 45, 1}, {1, 64, 3, 1}, {1024, 2048, 768, 1}},
     matmul_forward_make,
     matmul_forward_call},
    {"matmul_backward",
     "M K N bias dinp",
     {{133, 96, 80, 1, 1},
      {133, 96, 80, 0, 2},
      {37, 70, 45, 1, 0},
      {1024, 2048, 768, 1, 1},
      {133, 96, 80, 0, 1},
      {1024, 2048, 768, 0, 2}},
     matmul_backward_make,
     matmul_backward_call},
    {"weights_attach weights_refresh weights_detach weights_touched matmul_forward",
     "M K N",
     {{37, 70, 45}, {133, 96, 80}},
     weights_make,
     weights_call},
    {"rmsnorm_forward",
     "M C",
     {{133, 200}, {600, 2048}, {3, 7}, {1, 4097}, {40, 4096}},
     rmsnorm_forward_make,
     rmsnorm_forward_call},
    {"add_rmsnorm_forward",
     "M C",
     {{133, 200}, {600, 2048}, {3, 7}, {1, 4097}, {40, 4096}},
     add_rmsnorm_forward_make,
     add_rmsnorm_forward_call},
    {"rmsnorm_backward",
     "M C act",
     {{133, 200, 1}, {600, 2048, 1}, {3, 7, 0}, {1, 4097, 1}, {3001, 512, 0}, {20, 16384, 1},
      {513, 4096, 1}, {2, 12256, 1}, {3, 12288, 1}},
     rmsnorm_backward_make,
     rmsnorm_backward_call},
    {"rope_forward",
     "B T H D",
     {{2, 67, 4, 64}, {1, 33, 3, 128}, {1, 20, 2, 36}, {1, 5, 1, 2}},
     rope_make,
     rope_forward_call},
    {"rope_backward",
     "B T H D",
     {{2, 67, 4, 64}, {1, 33, 3, 128}, {1, 20, 2, 36}, {1, 5, 1, 2}},
     rope_make,
     rope_backward_call},
    {"attention_forward",
     "B T H KVH D",
     {{2, 67, 4, 2, 64},
      {2, 45, 6, 3, 80},
      {1, 130, 4, 1, 128},
      {1, 300, 2, 2, 16},
      {2, 100, 4, 2, 128},
      {2, 129, 4, 2, 128},
      {2, 200, 6, 3, 64},
      {1, 3, 2, 1, 128},
      {1, 320, 8, 1, 128},
      {2, 67, 8, 2, 64},
      {2, 200, 4, 2, 128}},
     attention_forward_make,
     attention_forward_call},
    {"attention_backward",
     "B T H KVH D",
     {{2, 67, 4, 2, 64},
      {2, 45, 6, 3, 80},
      {1, 130, 4, 1, 128},
      {1, 300, 2, 2, 16},
      {2, 100, 4, 2, 128},
      {2, 129, 4, 2, 128},
      {2, 200, 6, 3, 64},
      {1, 3, 2, 1, 128},
      {1, 320, 8, 1, 128},
      {2, 67, 8, 2, 64},
      {2, 200, 4, 2, 128}},
     attention_backward_make,
     attention_backward_call},
    {"swiglu_forward", "n", {{100003}, {1 << 17}, {7}}, swiglu_forward_make, swiglu_forward_call},
    {"swiglu_backward",
     "n",
     {{100003}, {1 << 17}, {7}},
     swiglu_backward_make,
     swiglu_backward_call},
    {"embedding_forward",
     "N V C",
     {{300, 50, 96}, {4096, 320, 128}, {5, 3, 7}},
     embedding_forward_make,
     embedding_forward_call},
    {"embedding_backward",
     "N V C",
     {{300, 50, 96}, {4096, 320, 128}, {5, 3, 7}},
     embedding_backward_make,
     embedding_backward_call},
    {"cross_entropy",
     "N V grad bad_target",
     {{133, 1000, 1, 0},
      {133, 1000, 0, 0},
      {16, 32256, 1, 1},
      {9, 102400, 1, 0},
      {5, 150001, 1, 0},
      {3, 7, 1, 1},
      {16, 32256, 0, 0},
      {9, 102400, 0, 0},
      {5, 150001, 0, 0},
      {133, 1000, 1, 1},
      {9, 102400, 1, 1},
      {5, 150001, 1, 1}},
     cross_entropy_make,
     cross_entropy_call},
    {"add", "n", {{100003}, {1 << 17}, {7}}, add_make, add_call},
    {"sum_squares", "n", {{100003}, {1000003}, {7}, {1 << 17}}, sum_squares_make, sum_squares_call},
    {"sum_squares_batch sum_squares",
     "n ranges",
     {{1000003, SUM_SQUARES_BATCH}, {1001, 5}, {1000003, 3}, {1001, 7}}, /* last two: ranges
                                                                         * off 16-byte edges */
     sum_squares_batch_make,
     sum_squares_batch_call},
    {"scale", "n", {{100003}, {7}, {1 << 17}}, scale_make, scale_call},
    {"adamw_update", "n", {{100003}, {4096}, {5}}, adamw_make, adamw_call},
    {"adamw_ewc_update adamw_update",
     "n sets",
     {{100003, 2}, {3000017, 1}, {100003, 0}, {7, 2}, {3000017, 2}},
     adamw_ewc_make,
     adamw_ewc_call},
    {"embedding_forward_shard",
     "N C V start full",
     {{300, 96, 40, 20, 100}, {7, 5, 3, 2, 9}},
     embedding_forward_shard_make,
     embedding_forward_shard_call},
    {"embedding_backward_shard",
     "N C V start full",
     {{300, 96, 40, 20, 100}, {7, 5, 3, 2, 9}},
     embedding_backward_shard_make,
     embedding_backward_shard_call},
    {"cross_entropy_shard_max",
     "N V",
     {{300, 40}, {133, 1000}, {1, 3}},
     cross_entropy_shard_max_make,
     cross_entropy_shard_max_call},
    {"cross_entropy_shard_stats",
     "N V start full",
     {{300, 40, 20, 100}, {133, 1000, 1000, 3000}},
     cross_entropy_shard_stats_make,
     cross_entropy_shard_stats_call},
    {"cross_entropy_shard_finish",
     "N V start full grad",
     {{300, 40, 20, 100, 1}, {133, 1000, 1000, 3000, 1}, {133, 1000, 0, 3000, 0}},
     cross_entropy_shard_finish_make,
     cross_entropy_shard_finish_call},
    {"copy_block",
     "M W ld_dst ld_src +=",
     {{133, 12, 24, 40, 0},
      {133, 12, 24, 40, 1},
      {67, 6, 6, 18, 0},
      {67, 6, 6, 18, 1},
      {67, 16, 24, 16, 0},
      {67, 16, 24, 16, 1},
      {300, 128, 192, 128, 0},
      {300, 128, 192, 128, 1}},
     copy_block_make,
     copy_block_call},
    {"act_to_f32",
     "M W ld_src",
     {{133, 12, 40}, {67, 6, 18}, {67, 16, 16}, {300, 128, 128}, {1, 3, 5}},
     act_to_f32_make,
     act_to_f32_call},
    {"rope_block_forward",
     "B T H D ld_row ld_head first interleave",
     {{2, 67, 4, 8, 48, 12, 4, 0},
      {2, 67, 4, 8, 48, 12, 4, 1},
      {2, 45, 1, 16, 80, 0, 64, 1},
      {1, 33, 1, 6, 11, 0, 5, 0}},
     rope_block_make,
     rope_block_forward_call},
    {"rope_block_backward",
     "B T H D ld_row ld_head first interleave",
     {{2, 67, 4, 8, 48, 12, 4, 0},
      {2, 67, 4, 8, 48, 12, 4, 1},
      {2, 45, 1, 16, 80, 0, 64, 1},
      {1, 33, 1, 6, 11, 0, 5, 0}},
     rope_block_make,
     rope_block_backward_call},
    {"attention_forward_dv",
     "B T H Dqk Dv scale/1000",
     {{2, 67, 4, 12, 6, 0},
      {1, 45, 4, 12, 6, 370},
      {2, 40, 4, 48, 32, 0},
      {1, 130, 2, 192, 128, 100},
      {2, 257, 4, 192, 128, 94},
      {1, 3, 2, 192, 128, 94},
      {2, 200, 4, 128, 128, 200},
      {2, 67, 4, 64, 64, 200}},
     attention_forward_dv_make,
     attention_forward_dv_call},
    {"attention_backward_dv",
     "B T H Dqk Dv scale/1000",
     {{2, 67, 4, 12, 6, 0},
      {1, 45, 4, 12, 6, 370},
      {2, 40, 4, 48, 32, 0},
      {1, 130, 2, 192, 128, 100},
      {2, 257, 4, 192, 128, 94},
      {1, 3, 2, 192, 128, 94},
      {2, 200, 4, 128, 128, 200},
      {2, 67, 4, 64, 64, 200}},
     attention_backward_dv_make,
     attention_backward_dv_call},
    {"moe_route",
     "N routing bias",
     {{133, 0, 0}, {133, 1, 0}, {70, 2, 0}, {133, 3, 1}, {77, 4, 1}, {45, 5, 0}},
     moe_route_make,
     moe_route_call},
    {"moe_route_backward",
     "N routing",
     {{133, 0}, {133, 1}, {70, 2}, {133, 3}, {77, 4}, {45, 5}},
     moe_route_backward_make,
     moe_route_backward_call},
    {"moe_balance",
     "B T routing",
     {{7, 19, 0}, {7, 19, 1}, {7, 10, 2}, {7, 19, 3}, {7, 11, 4}, {5, 9, 5}, {1, 133, 3}},
     moe_balance_make,
     moe_balance_call},
    {"moe_permute",
     "N E k",
     {{133, 16, 4}, {1001, 64, 6}, {1, 12, 2}},
     moe_permute_make,
     moe_permute_call},
    {"gather_rows",
     "N E k C scaled",
     {{133, 16, 4, 96, 0},
      {133, 16, 4, 96, 1},
      {251, 64, 6, 300, 0},
      {251, 64, 6, 300, 1},
      {97, 64, 6, 256, 0},
      {97, 64, 6, 256, 1},
      {61, 64, 6, 2048, 0},
      {61, 64, 6, 2048, 1}},
     gather_rows_make,
     gather_rows_call},
    {"scatter_add_rows",
     "N E k C scaled sorted",
     {{133, 16, 4, 96, 0, 1},
      {133, 16, 4, 96, 1, 1},
      {251, 64, 6, 300, 0, 1},
      {251, 64, 6, 300, 1, 1},
      {97, 64, 6, 256, 0, 1},
      {97, 64, 6, 256, 1, 1},
      {61, 64, 6, 2048, 0, 1},
      {61, 64, 6, 2048, 1, 1},
      {133, 16, 4, 96, 1, 0},
      {251, 64, 6, 300, 1, 0},
      {97, 64, 6, 256, 1, 0},
      {61, 64, 6, 2048, 1, 0}},
     scatter_add_rows_make,
     scatter_add_rows_call},
    {"rows_dot",
     "N E k C",
     {{133, 16, 4, 96}, {251, 64, 6, 300}, {97, 64, 6, 256}, {61, 64, 6, 2048}, {1, 12, 2, 3}},
     rows_dot_make,
     rows_dot_call},
    {"moe_experts_forward",
     "E C Im rows",
     {{8, 64, 48, 133}, {16, 96, 40, 300}, {4, 16, 8, 3}},
     moe_experts_forward_make,
     moe_experts_forward_call},
    {"moe_experts_backward",
     "E C Im rows",
     {{8, 64, 48, 133}, {16, 96, 40, 300}, {4, 16, 8, 3}},
     moe_experts_backward_make,
     moe_experts_backward_call},
};

/* The table's plumbing, which every case exercises without an entry of its own. */
static const char *const exempt[] = {"act_size",    "mem_alloc", "mem_free", "mem_to_device",
                                     "mem_to_host", "mem_zero",  "mem_copy", "mem_info"};

/* ---- running a case on one backend ------------------------------------------------------------
 */

/* What a run left in a case's compared tensors: their bytes as stored, and their values. */
typedef struct Outputs {
    unsigned char *raw[MAX_TENSORS];
    size_t bytes[MAX_TENSORS];
    double *value[MAX_TENSORS];
} Outputs;

static size_t elem_bytes(const Backend *be, TensorType type)
{
    return type == ACT ? be->act_size(be) : host_bytes(type);
}

static int on_host(TensorType type)
{
    return type == HOST_F64 || type == HOST_I32;
}

/* The tensor's values (or, poison: NaN, -1 for integers) as be stores them, into buf. */
static void store(const Backend *be, const CaseTensor *t, int poison, void *buf)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->type == I32 || t->type == HOST_I32) {
            ((int32_t *)buf)[i] = poison ? -1 : ((const int32_t *)t->host)[i];
            continue;
        }
        if (t->type == HOST_F64) {
            ((double *)buf)[i] = poison ? NAN : ((const double *)t->host)[i];
            continue;
        }
        const float v = poison ? NAN : ((const float *)t->host)[i];
        if (elem_bytes(be, t->type) == 2)
            ((uint16_t *)buf)[i] = f32_to_bf16(v);
        else
            ((float *)buf)[i] = v;
    }
}

static double load(const Backend *be, TensorType type, const void *buf, size_t i)
{
    switch (type) {
    case I32:
    case HOST_I32:
        return ((const int32_t *)buf)[i];
    case HOST_F64:
        return ((const double *)buf)[i];
    default:
        if (elem_bytes(be, type) == 2) return bf16_to_f32(((const uint16_t *)buf)[i]);
        return ((const float *)buf)[i];
    }
}

static int compared(const CaseTensor *t)
{
    return (t->role == OUT || t->role == INOUT || t->role == CHECK) && t->n > 0;
}

/* One run: every tensor made in be's memory, the op called, the compared tensors read back. */
static void run_on(const Backend *be, const OpCase *e, const Case *c, const int *s, Outputs *out)
{
    void *ptr[MAX_TENSORS] = {0};
    for (int i = 0; i < c->count; i++) {
        const CaseTensor *t = &c->t[i];
        const size_t bytes = t->n * elem_bytes(be, t->type);
        if (t->n == 0) continue;
        void *image = malloc(bytes);
        store(be, t, t->role == OUT || t->role == SCRATCH, image);
        if (on_host(t->type)) {
            ptr[i] = image;
            continue;
        }
        ptr[i] = be->mem_alloc(be, bytes);
        if (!ptr[i]) {
            fprintf(stderr, "backend_ops: %s: %s\n", e->ops, ds_last_error());
            exit(1);
        }
        be->mem_to_device(be, ptr[i], image, bytes);
        free(image);
    }
    e->call(be, ptr, s);
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < c->count; i++) {
        const CaseTensor *t = &c->t[i];
        if (compared(t)) {
            out->bytes[i] = t->n * elem_bytes(be, t->type);
            out->raw[i] = malloc(out->bytes[i]);
            if (on_host(t->type))
                memcpy(out->raw[i], ptr[i], out->bytes[i]);
            else
                be->mem_to_host(be, out->raw[i], ptr[i], out->bytes[i]);
            out->value[i] = malloc(t->n * sizeof(double));
            for (size_t j = 0; j < t->n; j++)
                out->value[i][j] = load(be, t->type, out->raw[i], j);
        }
        if (on_host(t->type))
            free(ptr[i]);
        else
            be->mem_free(be, ptr[i]);
    }
}

static void outputs_free(Outputs *o)
{
    for (int i = 0; i < MAX_TENSORS; i++)
        free(o->raw[i]), free(o->value[i]);
}

/* ---- judging ----------------------------------------------------------------------------------
 */

static void row(const OpsRunOptions *o, const char *op, const char *shape, const char *metric,
                int pass)
{
    if (o->quiet && pass) return;
    printf("| %-34s | %-44s | %-52s | %s |\n", op, shape, metric, pass ? "PASS" : "FAIL");
    fflush(stdout);
}

static void count(OpsRunResult *r, int pass, int *kind)
{
    r->checks++;
    if (!pass) r->failures++, (*kind)++;
}

/* ||x - ref|| / ||ref|| over the elements where both are numbers; *mismatched counts those where
 * one is NaN or infinite and the other is not the same. */
static double rel_error(const double *x, const double *ref, size_t n, size_t *mismatched)
{
    double num = 0, den = 0;
    *mismatched = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(ref[i])) {
            int same = (isnan(x[i]) && isnan(ref[i])) || x[i] == ref[i];
            *mismatched += !same;
            continue;
        }
        num += (x[i] - ref[i]) * (x[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void judge(const Backend *x, const OpsRunOptions *o, OpsRunResult *r, const char *op,
                  const char *shape, const CaseTensor *t, const Outputs *got, const Outputs *ref,
                  int i)
{
    char metric[160];
    int pass;
    if (t->role == CHECK) {
        snprintf(metric, sizeof(metric), "%s: %g, must be 0 (cpu %g)", t->name, got->value[i][0],
                 ref->value[i][0]);
        pass = got->value[i][0] == 0 && ref->value[i][0] == 0;
    } else if (t->type == I32 || t->type == HOST_I32) {
        size_t wrong = 0;
        for (size_t j = 0; j < t->n; j++)
            wrong += got->value[i][j] != ref->value[i][j];
        snprintf(metric, sizeof(metric), "%s: %zu of %zu differ", t->name, wrong, t->n);
        pass = wrong == 0;
    } else if (o->exact) {
        const size_t size = got->bytes[i] / t->n;
        size_t wrong = 0;
        for (size_t j = 0; j < t->n; j++)
            wrong += memcmp(got->raw[i] + j * size, ref->raw[i] + j * size, size) != 0;
        if (got->bytes[i] != ref->bytes[i]) wrong = t->n;
        snprintf(metric, sizeof(metric), "%s: %zu of %zu not the same bits", t->name, wrong, t->n);
        pass = wrong == 0;
    } else {
        const double tol = x->act_size(x) == 2 ? t->tol.bf16 : t->tol.fp32;
        size_t bad;
        const double err = rel_error(got->value[i], ref->value[i], t->n, &bad);
        snprintf(metric, sizeof(metric), "%s: rel err %.2g <= %.0g%s", t->name, err, tol,
                 bad ? " (NaN/inf off)" : "");
        pass = bad == 0 && err <= tol;
    }
    row(o, op, shape, metric, pass);
    count(r, pass, &r->value_failures);
}

/* "M133 K96 N80" from the entry's dims and a shape */
static void describe(char *buf, size_t size, const OpCase *e, const int *s)
{
    char names[128];
    snprintf(names, sizeof(names), "%s", e->dims);
    size_t used = 0;
    buf[0] = 0;
    int d = 0;
    for (char *name = strtok(names, " "); name && d < MAX_DIMS; name = strtok(NULL, " "), d++)
        used += snprintf(buf + used, used < size ? size - used : 0, "%s%s=%d", d ? " " : "", name,
                         s[d]);
}

/* 1 when the space-separated list has the word */
static int names(const char *list, const char *word)
{
    const size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == 0)) return 1;
    return 0;
}

/* index of op in backend.c's list, or -1 */
static long op_index(const char *op)
{
    for (size_t i = 0; i < backend_op_count(); i++)
        if (strcmp(backend_op_name(i), op) == 0) return (long)i;
    return -1;
}

/* The first op of the entry's list x lacks, or NULL. */
static const char *lacking(const Backend *x, const OpCase *e, char *word, size_t size)
{
    const char *p = e->ops;
    while (*p) {
        size_t n = strcspn(p, " ");
        snprintf(word, size, "%.*s", (int)n, p);
        long i = op_index(word);
        if (i >= 0 && !backend_op_present(x, (size_t)i)) return word;
        p += n + (p[n] == ' ');
    }
    return NULL;
}

static void run_case(const Backend *x, const OpsRunOptions *o, OpsRunResult *r, size_t entry,
                     int shape)
{
    const OpCase *e = &table[entry];
    const int *s = e->shapes[shape];
    char op[64], desc[160], word[64], metric[160];
    snprintf(op, sizeof(op), "%.*s", (int)strcspn(e->ops, " "), e->ops);
    describe(desc, sizeof(desc), e, s);
    if (lacking(x, e, word, sizeof(word))) {
        snprintf(metric, sizeof(metric), "%s has no %s", x->name, word);
        if (!o->quiet) printf("| %-34s | %-44s | %-52s | SKIP |\n", op, desc, metric);
        r->skipped++;
        return;
    }
    Case c = {.rng = 0x853c49e6748fea9bull ^ (entry * 1000003u + (uint64_t)shape * 7919u)};
    e->make(&c, s);
    if (c.same_inputs && x->act_size(x) == 2)
        for (int i = 0; i < c.count; i++) {
            float *v = c.t[i].host;
            if (c.t[i].type == ACT)
                for (size_t j = 0; j < c.t[i].n; j++)
                    v[j] = bf16_to_f32(f32_to_bf16(v[j]));
        }
    Outputs ref, got, again;
    run_on(backend_cpu(), e, &c, s, &ref);
    run_on(x, e, &c, s, &got);
    run_on(x, e, &c, s, &again);
    int differing = 0, outputs = 0;
    for (int i = 0; i < c.count; i++) {
        if (!compared(&c.t[i])) continue;
        judge(x, o, r, op, desc, &c.t[i], &got, &ref, i);
        outputs++;
        differing += memcmp(got.raw[i], again.raw[i], got.bytes[i]) != 0;
    }
    snprintf(metric, sizeof(metric), "same bits twice: %d of %d outputs differ", differing,
             outputs);
    row(o, op, desc, metric, differing == 0);
    count(r, differing == 0, &r->repeat_failures);
    outputs_free(&ref), outputs_free(&got), outputs_free(&again);
    for (int i = 0; i < c.count; i++)
        free(c.t[i].host);
}

/* Every op x has is named by an entry (or exempt), and every name in the table is an op. */
static void check_coverage(const Backend *x, const OpsRunOptions *o, OpsRunResult *r)
{
    int covered = 0, held = 0;
    for (size_t i = 0; i < backend_op_count(); i++) {
        const char *op = backend_op_name(i);
        int plumbing = 0, entries = 0;
        for (size_t k = 0; k < DS_ARRAY_LEN(exempt); k++)
            plumbing |= strcmp(exempt[k], op) == 0;
        if (plumbing || !backend_op_present(x, i)) continue;
        for (size_t k = 0; k < DS_ARRAY_LEN(table); k++)
            entries += names(table[k].ops, op);
        held++;
        covered += entries > 0;
        if (!entries) {
            row(o, op, "-", "no entry of the table covers it", 0);
            count(r, 0, &r->coverage_failures);
        }
    }
    for (size_t k = 0; k < DS_ARRAY_LEN(table); k++) {
        char list[128];
        snprintf(list, sizeof(list), "%s", table[k].ops);
        for (char *op = strtok(list, " "); op; op = strtok(NULL, " "))
            if (op_index(op) < 0) {
                row(o, op, "-", "named by an entry, but no op of the Backend table", 0);
                count(r, 0, &r->coverage_failures);
            }
    }
    char metric[96], which[64];
    snprintf(which, sizeof(which), "%d ops of %s (plumbing exempt)", held, x->name);
    snprintf(metric, sizeof(metric), "%d of %d covered by an entry", covered, held);
    row(o, "coverage", which, metric, covered == held);
    count(r, covered == held, &r->coverage_failures);
}

int backend_ops_run(const Backend *x, const OpsRunOptions *o, OpsRunResult *r)
{
    memset(r, 0, sizeof(*r));
    printf("backend_ops: %s (%s) against cpu\n", x->name, o->mode);
    printf("| %-34s | %-44s | %-52s | %s |\n", "op", "shape", "metric", "result");
    printf("|%.36s|%.46s|%.54s|------|\n", "------------------------------------------------------",
           "------------------------------------------------------",
           "------------------------------------------------------");
    for (size_t k = 0; k < DS_ARRAY_LEN(table); k++) {
        if (o->filter && !strstr(table[k].ops, o->filter)) continue;
        for (int s = 0; s < MAX_SHAPES && table[k].shapes[s][0]; s++)
            run_case(x, o, r, k, s);
    }
    if (!o->filter) check_coverage(x, o, r);
    printf("backend_ops: %s (%s): %d of %d checks passed (%d values, %d repeats, %d coverage "
           "failed), %d cases skipped\n",
           x->name, o->mode, r->checks - r->failures, r->checks, r->value_failures,
           r->repeat_failures, r->coverage_failures, r->skipped);
    fflush(stdout);
    return r->failures;
}
