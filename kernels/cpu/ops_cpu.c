/* ops_cpu.c: the CPU backend, fp32, the reference semantics every other backend is checked against.
 * Matmuls go through OpenBLAS; everything else is plain loops parallelised with OpenMP. It is not
 * tuned for speed beyond the obvious. Invariant: results are bitwise identical run to run, and
 * (except the BLAS calls) for any thread count: no atomics, and every floating sum runs in a
 * fixed order that does not depend on how iterations are spread over threads. No op allocates. */
#include "kernels/ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/common.h"

/* Number of contiguous parts a long reduction is cut into. Fixed (not the thread count) so that
 * the order of the final combination, and therefore the result, is the same on any machine. */
#define REDUCE_PARTS 64
/* Columns handled together when a per-column sum runs over many rows (bias and norm-weight
 * gradients): each block is owned by one thread and summed over rows in row order. */
#define COLUMN_BLOCK 64

/* Activations are fp32 here: every Act is a float array (act_size 4). */
static size_t act_size(const Backend *be)
{
    return sizeof(float);
}

/* ---------------------------------------------------------------------------------------------
 * matmul: out[M,N] = inp[M,K] @ weight[N,K]^T + bias, as torch.nn.Linear. */

static void matmul_forward(const Backend *be, Act *out_act, const Act *inp_act, const float *weight,
                           const float *bias, int M, int K, int N)
{
    float *out = out_act;
    const float *inp = inp_act;
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* empty contraction: BLAS would reject lda = 0 */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                out[(size_t)i * N + j] = bias ? bias[j] : 0.0f;
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, inp, K, weight, K, 0.0f,
                out, N);
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < M; i++) {
            float *row = out + (size_t)i * N;
            for (int j = 0; j < N; j++)
                row[j] += bias[j];
        }
    }
}

static void matmul_backward(const Backend *be, Act *dinp_act, float *dweight, float *dbias,
                            const Act *dout_act, const Act *inp_act, const float *weight, int M,
                            int K, int N, int accumulate)
{
    float *dinp = dinp_act;
    const float *dout = dout_act, *inp = inp_act;
    if (M <= 0 || N <= 0) {
        if (dinp && M > 0 && K > 0 && !accumulate) memset(dinp, 0, (size_t)M * K * sizeof(float));
        return;
    }
    if (K > 0) {
        /* dinp[M,K] = dout[M,N] @ weight[N,K] (overwrite, or += when accumulate) */
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, N, 1.0f, dout, N, weight,
                        K, accumulate ? 1.0f : 0.0f, dinp, K);
        /* dweight[N,K] += dout^T[N,M] @ inp[M,K] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, M, 1.0f, dout, N, inp, K, 1.0f,
                    dweight, K);
    }
    if (dbias) {
        int blocks = (N + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < blocks; blk++) {
            int j0 = blk * COLUMN_BLOCK;
            int j1 = j0 + COLUMN_BLOCK < N ? j0 + COLUMN_BLOCK : N;
            double sum[COLUMN_BLOCK] = {0};
            for (int i = 0; i < M; i++) {
                const float *row = dout + (size_t)i * N;
                for (int j = j0; j < j1; j++)
                    sum[j - j0] += row[j];
            }
            for (int j = j0; j < j1; j++)
                dbias[j] += (float)sum[j - j0];
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * rmsnorm, as HF LlamaRMSNorm: y = w * (x * rsqrt(mean(x^2) + eps)), everything in fp32 except
 * the sum of squares, which runs in double so that it does not depend on the row length. */

static void rmsnorm_forward(const Backend *be, Act *out_act, float *rstd, const float *inp,
                            const float *weight, int M, int C, float eps)
{
    float *out = out_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        const float *x = inp + (size_t)i * C;
        float *y = out + (size_t)i * C;
        double ss = 0.0;
        for (int j = 0; j < C; j++)
            ss += (double)x[j] * x[j];
        float variance = C > 0 ? (float)(ss / C) : 0.0f;
        float r = 1.0f / sqrtf(variance + eps);
        for (int j = 0; j < C; j++)
            y[j] = weight[j] * (x[j] * r);
        rstd[i] = r;
    }
}

/* With xhat = x * r and r = (mean(x^2) + eps)^-1/2:
 *   dx_j = r * (w_j dy_j) - r^3 / C * x_j * sum_k (w_k dy_k x_k)
 *   dw_j = sum over rows of dy_j * xhat_j */
static void rmsnorm_backward(const Backend *be, float *dinp, Act *dinp_act, float *dweight,
                             const Act *dout_act, const float *inp, const float *weight,
                             const float *rstd, int M, int C)
{
    const float *dout = dout_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        const float *x = inp + (size_t)i * C;
        const float *dy = dout + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        float r = rstd[i];
        double dot = 0.0;
        for (int j = 0; j < C; j++)
            dot += (double)weight[j] * dy[j] * x[j];
        float coef = (float)(dot * r * r * r / C);
        for (int j = 0; j < C; j++)
            dx[j] += r * weight[j] * dy[j] - coef * x[j];
    }
    if (dinp_act) memcpy(dinp_act, dinp, (size_t)M * C * sizeof(float));
    /* The weight gradient sums over rows: one thread per column block, rows in order. */
    int blocks = (C + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int j0 = blk * COLUMN_BLOCK;
        int j1 = j0 + COLUMN_BLOCK < C ? j0 + COLUMN_BLOCK : C;
        double sum[COLUMN_BLOCK] = {0};
        for (int i = 0; i < M; i++) {
            const float *x = inp + (size_t)i * C;
            const float *dy = dout + (size_t)i * C;
            float r = rstd[i];
            for (int j = j0; j < j1; j++)
                sum[j - j0] += (double)dy[j] * (x[j] * r);
        }
        for (int j = j0; j < j1; j++)
            dweight[j] += (float)sum[j - j0];
    }
}

/* ---------------------------------------------------------------------------------------------
 * rope, HF rotate-half layout: within each head, element i pairs with i + D/2.
 *   forward:  (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
 *   backward: the transpose, (d1, d2) -> (d1 cos + d2 sin, d2 cos - d1 sin) */

static void rope_block_apply(float *x, int ld_row, int ld_head, const float *pos_cos,
                             const float *pos_sin, int B, int T, int H, int D, int interleave,
                             float sign);

static void rope_forward(const Backend *be, Act *x, const float *pos_cos, const float *pos_sin,
                         int B, int T, int H, int D)
{
    rope_block_apply(x, H * D, D, pos_cos, pos_sin, B, T, H, D, 0, 1.0f);
}

static void rope_backward(const Backend *be, Act *dx, const float *pos_cos, const float *pos_sin,
                          int B, int T, int H, int D)
{
    rope_block_apply(dx, H * D, D, pos_cos, pos_sin, B, T, H, D, 0, -1.0f);
}

/* ---------------------------------------------------------------------------------------------
 * attention: causal, grouped-query, scale 1/sqrt(D), never materialising the T x T matrix.
 * Forward runs an online softmax over s <= t with the output row itself as the accumulator, so
 * it needs no scratch memory at all. Backward recomputes P[t,s] = exp(score - lse[t]) and runs
 * in two passes, each with disjoint outputs per iteration (so any schedule is deterministic):
 * dq by query row, then dk/dv by key row, each key row summing its query heads and rows in a
 * fixed order. That recomputes the scores twice but keeps every core busy even when B*KVH is
 * small, which a single pass over (b, kv head) would not. */

/* Eight running sums in a fixed pattern: the compiler can keep them in one vector register
 * (a single running sum would serialise on the add latency), and the order stays fixed. */
static float dot_f32(const float *a, const float *b, int n)
{
    float lane[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            lane[j] += a[i + j] * b[i + j];
    float s =
        ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* The shape of one attention call: H query heads over KVH kv heads, q/k heads of Dk, v and
 * output heads of Dv, scores scaled by scale. */
typedef struct AttnShape {
    int B, T, H, KVH, Dk, Dv;
    float scale;
} AttnShape;

static void attention_forward_impl(float *out, float *lse, const float *q, const float *k,
                                   const float *v, AttnShape a)
{
    const int T = a.T, H = a.H, Dk = a.Dk, Dv = a.Dv, group = a.H / a.KVH;
    const size_t qstride = (size_t)H * Dk, kstride = (size_t)a.KVH * Dk;
    const size_t ostride = (size_t)H * Dv, vstride = (size_t)a.KVH * Dv;
    long work = (long)a.B * H * T;
    /* iterations are causal rows of different lengths: round-robin balances them */
#pragma omp parallel for schedule(static, 1)
    for (long idx = 0; idx < work; idx++) {
        int t = (int)(idx % T);
        int h = (int)((idx / T) % H);
        int b = (int)(idx / ((long)T * H));
        int kvh = h / group;
        const float *qt = q + (size_t)(b * T + t) * qstride + (size_t)h * Dk;
        float *acc = out + (size_t)(b * T + t) * ostride + (size_t)h * Dv;
        float running_max = -INFINITY, denom = 0.0f;
        for (int i = 0; i < Dv; i++)
            acc[i] = 0.0f;
        for (int s = 0; s <= t; s++) {
            const float *ks = k + (size_t)(b * T + s) * kstride + (size_t)kvh * Dk;
            const float *vs = v + (size_t)(b * T + s) * vstride + (size_t)kvh * Dv;
            float score = dot_f32(qt, ks, Dk) * a.scale;
            if (score > running_max) { /* rescale what was summed under the old maximum */
                float correction = expf(running_max - score);
                denom *= correction;
                for (int i = 0; i < Dv; i++)
                    acc[i] *= correction;
                running_max = score;
            }
            float p = expf(score - running_max);
            denom += p;
            for (int i = 0; i < Dv; i++)
                acc[i] += p * vs[i];
        }
        float inv = 1.0f / denom;
        for (int i = 0; i < Dv; i++)
            acc[i] *= inv;
        lse[((size_t)b * H + h) * T + t] = running_max + logf(denom);
    }
}

/* dS[t,s] = P[t,s] * (dP[t,s] - rowsum(dO[t] * O[t])), dP[t,s] = dO[t] . V[s];
 * dQ[t] = scale * sum_s dS[t,s] K[s]; dK[s] = scale * sum_t dS[t,s] Q[t];
 * dV[s] = sum_t P[t,s] dO[t]. */
static void attention_backward_impl(float *dq, float *dk, float *dv, const float *dout,
                                    const float *out, const float *lse, const float *q,
                                    const float *k, const float *v, AttnShape a)
{
    const int T = a.T, H = a.H, KVH = a.KVH, Dk = a.Dk, Dv = a.Dv, group = a.H / a.KVH;
    const float scale = a.scale;
    const size_t qstride = (size_t)H * Dk, kstride = (size_t)KVH * Dk;
    const size_t ostride = (size_t)H * Dv, vstride = (size_t)KVH * Dv;

    long qwork = (long)a.B * H * T;
#pragma omp parallel for schedule(static, 1)
    for (long idx = 0; idx < qwork; idx++) {
        int t = (int)(idx % T);
        int h = (int)((idx / T) % H);
        int b = (int)(idx / ((long)T * H));
        int kvh = h / group;
        size_t qoff = (size_t)(b * T + t) * qstride + (size_t)h * Dk;
        size_t ooff = (size_t)(b * T + t) * ostride + (size_t)h * Dv;
        const float *qt = q + qoff, *dout_t = dout + ooff;
        float *dqt = dq + qoff;
        float row_lse = lse[((size_t)b * H + h) * T + t];
        float delta = dot_f32(dout_t, out + ooff, Dv);
        for (int i = 0; i < Dk; i++)
            dqt[i] = 0.0f;
        for (int s = 0; s <= t; s++) {
            const float *ks = k + (size_t)(b * T + s) * kstride + (size_t)kvh * Dk;
            const float *vs = v + (size_t)(b * T + s) * vstride + (size_t)kvh * Dv;
            float p = expf(dot_f32(qt, ks, Dk) * scale - row_lse);
            float ds = p * (dot_f32(dout_t, vs, Dv) - delta) * scale;
            for (int i = 0; i < Dk; i++)
                dqt[i] += ds * ks[i];
        }
    }

    long kvwork = (long)a.B * KVH * T;
#pragma omp parallel for schedule(static, 1)
    for (long idx = 0; idx < kvwork; idx++) {
        /* key rows late in the sequence see few queries: walk s from the end for balance */
        int s = T - 1 - (int)(idx % T);
        int kvh = (int)((idx / T) % KVH);
        int b = (int)(idx / ((long)T * KVH));
        size_t koff = (size_t)(b * T + s) * kstride + (size_t)kvh * Dk;
        size_t voff = (size_t)(b * T + s) * vstride + (size_t)kvh * Dv;
        const float *ks = k + koff, *vs = v + voff;
        float *dks = dk + koff, *dvs = dv + voff;
        for (int i = 0; i < Dk; i++)
            dks[i] = 0.0f;
        for (int i = 0; i < Dv; i++)
            dvs[i] = 0.0f;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            for (int t = s; t < T; t++) {
                size_t qoff = (size_t)(b * T + t) * qstride + (size_t)h * Dk;
                size_t ooff = (size_t)(b * T + t) * ostride + (size_t)h * Dv;
                const float *qt = q + qoff, *dout_t = dout + ooff;
                float row_lse = lse[((size_t)b * H + h) * T + t];
                float delta = dot_f32(dout_t, out + ooff, Dv);
                float p = expf(dot_f32(qt, ks, Dk) * scale - row_lse);
                float ds = p * (dot_f32(dout_t, vs, Dv) - delta) * scale;
                for (int i = 0; i < Dk; i++)
                    dks[i] += ds * qt[i];
                for (int i = 0; i < Dv; i++)
                    dvs[i] += p * dout_t[i];
            }
        }
    }
}

static void attention_forward(const Backend *be, Act *out, float *lse, const Act *q, const Act *k,
                              const Act *v, int B, int T, int H, int KVH, int D)
{
    AttnShape a = {B, T, H, KVH, D, D, 1.0f / sqrtf((float)D)};
    attention_forward_impl(out, lse, q, k, v, a);
}

static void attention_backward(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                               const Act *out, const float *lse, const Act *q, const Act *k,
                               const Act *v, int B, int T, int H, int KVH, int D)
{
    AttnShape a = {B, T, H, KVH, D, D, 1.0f / sqrtf((float)D)};
    attention_backward_impl(dq, dk, dv, dout, out, lse, q, k, v, a);
}

static void attention_forward_dv(const Backend *be, Act *out, float *lse, const Act *q,
                                 const Act *k, const Act *v, int B, int T, int H, int Dqk, int Dv,
                                 float scale)
{
    AttnShape a = {B, T, H, H, Dqk, Dv, scale};
    attention_forward_impl(out, lse, q, k, v, a);
}

static void attention_backward_dv(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                                  const Act *out, const float *lse, const Act *q, const Act *k,
                                  const Act *v, int B, int T, int H, int Dqk, int Dv, float scale)
{
    AttnShape a = {B, T, H, H, Dqk, Dv, scale};
    attention_backward_impl(dq, dk, dv, dout, out, lse, q, k, v, a);
}

/* ---------------------------------------------------------------------------------------------
 * swiglu: out = silu(g) * u with silu(g) = g * sigmoid(g); silu'(g) = s * (1 + g * (1 - s)). */

static void swiglu_forward(const Backend *be, Act *out_act, const Act *gate_act, const Act *up_act,
                           size_t n)
{
    float *out = out_act;
    const float *gate = gate_act, *up = up_act;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

static void swiglu_backward(const Backend *be, Act *dgate_act, Act *dup_act, const Act *dout_act,
                            const Act *gate_act, const Act *up_act, size_t n)
{
    float *dgate = dgate_act, *dup = dup_act;
    const float *dout = dout_act, *gate = gate_act, *up = up_act;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float s = 1.0f / (1.0f + expf(-g));
        float dy = dout[i];
        dgate[i] = dy * up[i] * (s * (1.0f + g * (1.0f - s)));
        dup[i] = dy * (g * s);
    }
}

/* ---------------------------------------------------------------------------------------------
 * embedding: a row gather; backward scatters rows back. Tokens are trusted to index the table
 * (the data reader checks them against the vocabulary). Backward splits the columns, not the
 * tokens, across threads, so repeated tokens add up in token order whatever the thread count. */

static void embedding_forward(const Backend *be, float *out, const int32_t *tokens,
                              const float *table, int N, int C)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        memcpy(out + (size_t)i * C, table + (size_t)tokens[i] * C, (size_t)C * sizeof(float));
}

static void embedding_backward(const Backend *be, float *dtable, const float *dout,
                               const int32_t *tokens, int N, int C)
{
    int blocks = (C + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int j0 = blk * COLUMN_BLOCK;
        int j1 = j0 + COLUMN_BLOCK < C ? j0 + COLUMN_BLOCK : C;
        for (int i = 0; i < N; i++) {
            float *dst = dtable + (size_t)tokens[i] * C;
            const float *src = dout + (size_t)i * C;
            for (int j = j0; j < j1; j++)
                dst[j] += src[j];
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * cross-entropy with the softmax fused in. Rows with weight 0 are never read beyond the weight,
 * so their targets may be anything (padding, -100, out of range). A weighted row whose target
 * is out of range cannot be scored: its loss is NaN (so the loss check upstream trips) and its
 * gradient zero (so one bad token does not poison the weights before that check runs). */

static void cross_entropy(const Backend *be, float *losses, Act *logits_act, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad)
{
    float *logits = logits_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *row = logits + (size_t)i * V;
        float w = weights[i];
        int target = targets[i];
        if (w == 0.0f || target < 0 || target >= V || V <= 0) {
            losses[i] = w == 0.0f ? 0.0f : NAN;
            if (write_grad)
                for (int j = 0; j < V; j++)
                    row[j] = 0.0f;
            continue;
        }
        float maxv = -INFINITY;
        for (int j = 0; j < V; j++)
            maxv = row[j] > maxv ? row[j] : maxv;
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += expf(row[j] - maxv);
        /* sum >= 1 (the maximum's own term is exp(0)); the two large terms are subtracted
         * first, which is exact when the target logit is near the maximum */
        // cppcheck-suppress invalidFunctionArg
        losses[i] = (float)log(sum) - (row[target] - maxv);
        if (write_grad) {
            float inv_sum = (float)(1.0 / sum);
            for (int j = 0; j < V; j++)
                row[j] = w * (expf(row[j] - maxv) * inv_sum);
            row[target] -= w;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * vocab-parallel embedding and cross-entropy (see ops.h): the same arithmetic as above on this
 * rank's slice of the vocabulary; the all-reduces between the parts are the caller's. */

static void embedding_forward_shard(const Backend *be, float *out, const int32_t *tokens,
                                    const float *table, int N, int C, int vocab_start, int V)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        int64_t row = (int64_t)tokens[i] - vocab_start;
        if (row >= 0 && row < V)
            memcpy(out + (size_t)i * C, table + (size_t)row * C, (size_t)C * sizeof(float));
        else
            memset(out + (size_t)i * C, 0, (size_t)C * sizeof(float));
    }
}

static void embedding_backward_shard(const Backend *be, float *dtable, const float *dout,
                                     const int32_t *tokens, int N, int C, int vocab_start, int V)
{
    int blocks = (C + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int j0 = blk * COLUMN_BLOCK;
        int j1 = j0 + COLUMN_BLOCK < C ? j0 + COLUMN_BLOCK : C;
        for (int i = 0; i < N; i++) {
            int64_t row = (int64_t)tokens[i] - vocab_start;
            if (row < 0 || row >= V) continue;
            float *dst = dtable + (size_t)row * C;
            const float *src = dout + (size_t)i * C;
            for (int j = j0; j < j1; j++)
                dst[j] += src[j];
        }
    }
}

static void cross_entropy_shard_max(const Backend *be, float *row_max, const Act *logits_act, int N,
                                    int V)
{
    const float *logits = logits_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *row = logits + (size_t)i * V;
        float maxv = -INFINITY;
        for (int j = 0; j < V; j++)
            maxv = row[j] > maxv ? row[j] : maxv;
        row_max[i] = maxv;
    }
}

static void cross_entropy_shard_stats(const Backend *be, float *stats, const Act *logits_act,
                                      const float *row_max, const int32_t *targets, int N, int V,
                                      int vocab_start)
{
    const float *logits = logits_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *row = logits + (size_t)i * V;
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += expf(row[j] - row_max[i]);
        int64_t t = (int64_t)targets[i] - vocab_start;
        int owned = t >= 0 && t < V;
        stats[3 * (size_t)i] = (float)sum;
        stats[3 * (size_t)i + 1] = owned ? row[t] : 0.0f;
        stats[3 * (size_t)i + 2] = owned ? 1.0f : 0.0f;
    }
}

static void cross_entropy_shard_finish(const Backend *be, float *losses, Act *logits_act,
                                       const float *row_max, const float *stats,
                                       const int32_t *targets, const float *weights, int N, int V,
                                       int vocab_start, int write_grad)
{
    float *logits = logits_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *row = logits + (size_t)i * V;
        const float w = weights[i], maxv = row_max[i], sum = stats[3 * (size_t)i];
        if (w == 0.0f || stats[3 * (size_t)i + 2] != 1.0f) {
            losses[i] = w == 0.0f ? 0.0f : NAN;
            if (write_grad)
                for (int j = 0; j < V; j++)
                    row[j] = 0.0f;
            continue;
        }
        // cppcheck-suppress invalidFunctionArg
        losses[i] = (float)log((double)sum) - (stats[3 * (size_t)i + 1] - maxv);
        if (write_grad) {
            float inv_sum = (float)(1.0 / sum);
            for (int j = 0; j < V; j++)
                row[j] = w * (expf(row[j] - maxv) * inv_sum);
            int64_t t = (int64_t)targets[i] - vocab_start;
            if (t >= 0 && t < V) row[t] -= w;
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * elementwise helpers and the global-norm reduction */

static void add(const Backend *be, float *out, const float *a, const Act *b_act, size_t n)
{
    const float *b = b_act;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

static void add_rmsnorm_forward(const Backend *be, float *sum, Act *out, float *rstd,
                                const float *a, const Act *b, const float *weight, int M, int C,
                                float eps)
{
    add(be, sum, a, b, (size_t)M * C);
    rmsnorm_forward(be, out, rstd, sum, weight, M, C, eps);
}

static void scale(const Backend *be, float *x, float s, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        x[i] *= s;
}

/* Cut into REDUCE_PARTS fixed parts, each summed in double, combined in part order. */
static double sum_squares(const Backend *be, const float *x, size_t n)
{
    double partial[REDUCE_PARTS];
    size_t part_len = (n + REDUCE_PARTS - 1) / REDUCE_PARTS;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < REDUCE_PARTS; p++) {
        size_t lo = (size_t)p * part_len, hi = lo + part_len;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++)
            s += (double)x[i] * x[i];
        partial[p] = s;
    }
    double total = 0.0;
    for (int p = 0; p < REDUCE_PARTS; p++)
        total += partial[p];
    return total;
}

static void sum_squares_batch(const Backend *be, double *sums, const float *const *xs,
                              const size_t *ns, int count)
{
    for (int i = 0; i < count; i++)
        sums[i] = sum_squares(be, xs[i], ns[i]);
}

/* ---------------------------------------------------------------------------------------------
 * AdamW, operation for operation as torch.optim.AdamW's default (single-tensor) path, so the
 * CPU run tracks PyTorch to the last bit where the inputs agree: scalars are formed in double
 * (as Python does) and rounded to fp32 once; the first moment uses torch's lerp formula;
 * addcmul/addcdiv multiply the scalar into the first operand before the second. */

/* The step's scalars, formed once per call in double and rounded to fp32 as torch does. */
typedef struct AdamwScalars {
    float decay, lerp_weight, one_minus_beta2, neg_step_size, bias_correction2_sqrt;
    float beta2, eps;
    float lr_decay; /* lr * weight_decay: the pull toward an anchor (adamw_ewc_update) */
} AdamwScalars;

static AdamwScalars adamw_scalars(float lr, float beta1, float beta2, float eps, float weight_decay,
                                  int t)
{
    double step = t >= 1 ? (double)t : 1.0; /* t = 0 would divide by a zero bias correction */
    double bias_correction1 = 1.0 - pow((double)beta1, step);
    double bias_correction2 = 1.0 - pow((double)beta2, step);
    return (AdamwScalars){.decay = (float)(1.0 - (double)lr * weight_decay),
                          .lerp_weight = (float)(1.0 - (double)beta1),
                          .one_minus_beta2 = (float)(1.0 - (double)beta2),
                          .neg_step_size = (float)(-((double)lr / bias_correction1)),
                          .bias_correction2_sqrt = (float)sqrt(bias_correction2),
                          .beta2 = beta2,
                          .eps = eps,
                          .lr_decay = (float)((double)lr * weight_decay)};
}

/* One element from its decayed value p: g is the gradient as the update sees it (scaled, EWC
 * term added). */
static inline void adamw_element_decayed(const AdamwScalars *s, float p, float *param, float *m,
                                         float *v, float g)
{
    float mi = *m;
    /* torch lerp: picks the form that is exact at the nearer end point */
    mi = s->lerp_weight < 0.5f ? mi + s->lerp_weight * (g - mi)
                               : g - (g - mi) * (1.0f - s->lerp_weight);
    float vi = *v * s->beta2 + (s->one_minus_beta2 * g) * g;
    float denom = sqrtf(vi) / s->bias_correction2_sqrt + s->eps;
    *param = p + (s->neg_step_size * mi) / denom;
    *m = mi;
    *v = vi;
}

/* One element, decayed toward 0 as torch does. */
static inline void adamw_element(const AdamwScalars *s, float *param, float *m, float *v, float g)
{
    adamw_element_decayed(s, *param * s->decay, param, m, v, g);
}

static void adamw_update(const Backend *be, float *param, const float *grad, float *m, float *v,
                         size_t n, float lr, float beta1, float beta2, float eps,
                         float weight_decay, float grad_scale, int t)
{
    const AdamwScalars sc = adamw_scalars(lr, beta1, beta2, eps, weight_decay, t);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        adamw_element(&sc, &param[i], &m[i], &v[i], grad[i] * grad_scale);
}

/* adamw_update with the EWC gradient added to the scaled gradient in the same pass (one read of
 * each buffer), then the arithmetic of adamw_update in the same order (the decay toward the
 * latest anchor instead of 0 when decay_to_anchor). The penalty of the parameters the step
 * starts from is summed on the way, over REDUCE_PARTS fixed parts as sum_squares does, so that
 * it too does not depend on the thread count. */
static void adamw_ewc_update(const Backend *be, float *param, const float *grad, float *m, float *v,
                             size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float grad_scale, int t,
                             const float *const *fisher, const float *const *anchor, int n_sets,
                             float lambda, int decay_to_anchor, double *penalty)
{
    if (n_sets <= 0) {
        adamw_update(be, param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t);
        return;
    }
    const AdamwScalars sc = adamw_scalars(lr, beta1, beta2, eps, weight_decay, t);
    const float *toward = decay_to_anchor ? anchor[n_sets - 1] : NULL;
    double partial[REDUCE_PARTS];
    const size_t part_len = (n + REDUCE_PARTS - 1) / REDUCE_PARTS;
#pragma omp parallel for schedule(static)
    for (int part = 0; part < REDUCE_PARTS; part++) {
        size_t lo = (size_t)part * part_len, hi = lo + part_len;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        double pen = 0.0;
        for (size_t i = lo; i < hi; i++) {
            float g = grad[i] * grad_scale;
            for (int k = 0; k < n_sets; k++) {
                float d = param[i] - anchor[k][i];
                float fd = fisher[k][i] * d;
                g += lambda * fd;
                pen += (double)fd * d;
            }
            /* p - k (p - a): exactly p at the anchor, and when k = lr * weight_decay is 0 */
            const float p =
                toward ? param[i] - sc.lr_decay * (param[i] - toward[i]) : param[i] * sc.decay;
            adamw_element_decayed(&sc, p, &param[i], &m[i], &v[i], g);
        }
        partial[part] = pen;
    }
    double pen = 0.0;
    for (int part = 0; part < REDUCE_PARTS; part++)
        pen += partial[part];
    if (penalty) *penalty += 0.5 * lambda * pen;
}

/* ---------------------------------------------------------------------------------------------
 * memory: plain host memory, 256-byte aligned (parameter tensors sit at 256-byte offsets). */

static void *mem_alloc(const Backend *be, size_t bytes)
{
    return ds_aligned_alloc(256, bytes); /* zeroed; sets the error message on failure */
}

static void mem_free(const Backend *be, void *p)
{
    free(p);
}

static void mem_copy(const Backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

static void mem_zero(const Backend *be, void *p, size_t bytes)
{
    if (bytes) memset(p, 0, bytes);
}

/* ---------------------------------------------------------------------------------------------
 * multi-head latent attention's data movement: blocks of row-strided matrices, and rotary
 * embedding of heads that lie inside wider rows. */

static void copy_block(const Backend *be, Act *dst_act, int ld_dst, const Act *src_act, int ld_src,
                       int M, int W, int accumulate)
{
    float *dst = dst_act;
    const float *src = src_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++) {
        float *d = dst + (size_t)i * ld_dst;
        const float *x = src + (size_t)i * ld_src;
        if (accumulate)
            for (int j = 0; j < W; j++)
                d[j] += x[j];
        else
            memcpy(d, x, (size_t)W * sizeof(float));
    }
}

static void act_to_f32(const Backend *be, float *dst, const Act *src, int ld_src, int M, int W)
{
    copy_block(be, dst, W, src, ld_src, M, W, 0);
}

/* sign 1: forward rotation; -1: its inverse (the transpose), for the gradient */
static void rope_block_apply(float *x, int ld_row, int ld_head, const float *pos_cos,
                             const float *pos_sin, int B, int T, int H, int D, int interleave,
                             float sign)
{
    const int half = D / 2;
    /* element pair i: (i, i + half) rotate-half, (2i, 2i + 1) interleaved */
    const int first = interleave ? 2 : 1, second = interleave ? 1 : half;
    long rows = (long)B * T;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < rows; row++) {
        int t = (int)(row % T);
        const float *c = pos_cos + (size_t)t * half;
        const float *s = pos_sin + (size_t)t * half;
        for (int h = 0; h < H; h++) {
            float *head = x + (size_t)row * ld_row + (size_t)h * ld_head;
            for (int i = 0; i < half; i++) {
                float *a = head + (size_t)i * first, *b = a + second;
                float x1 = *a, x2 = *b, sn = sign * s[i];
                *a = x1 * c[i] - x2 * sn;
                *b = x2 * c[i] + x1 * sn;
            }
        }
    }
}

static void rope_block_forward(const Backend *be, Act *x, int ld_row, int ld_head,
                               const float *pos_cos, const float *pos_sin, int B, int T, int H,
                               int D, int interleave)
{
    rope_block_apply(x, ld_row, ld_head, pos_cos, pos_sin, B, T, H, D, interleave, 1.0f);
}

static void rope_block_backward(const Backend *be, Act *dx, int ld_row, int ld_head,
                                const float *pos_cos, const float *pos_sin, int B, int T, int H,
                                int D, int interleave)
{
    rope_block_apply(dx, ld_row, ld_head, pos_cos, pos_sin, B, T, H, D, interleave, -1.0f);
}

/* ---------------------------------------------------------------------------------------------
 * mixture of experts: routing as transformers' DeepseekV2TopkRouter / DeepseekV3TopkRouter, the
 * tokens sorted by expert, and the row gathers and scatters around the experts' matmuls. */

/* The best k of n values among those with eligible[i] (NULL: all), as indices, best first;
 * ties go to the lower index. */
static void top_k_indices(const float *x, const unsigned char *eligible, int n, int k, int *out)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (eligible && !eligible[i]) continue;
            int taken = 0;
            for (int p = 0; p < j && !taken; p++)
                taken = out[p] == i;
            if (!taken && (best < 0 || x[i] > x[best])) best = i;
        }
        out[j] = best;
    }
}

static int compare_int32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void moe_route(const Backend *be, int32_t *index, float *weight, float *scores,
                      const Act *logits_act, const float *bias, int N, const MoeRouting *r)
{
    const float *logits = logits_act;
    const int E = r->experts, k = r->top_k, G = r->groups > 0 ? r->groups : 1;
    const int per_group = E / G;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N; t++) {
        const float *lg = logits + (size_t)t * E;
        float *sc = scores + (size_t)t * E;
        if (r->sigmoid) {
            for (int e = 0; e < E; e++)
                sc[e] = 1.0f / (1.0f + expf(-lg[e]));
        } else {
            float mx = -INFINITY;
            for (int e = 0; e < E; e++)
                mx = lg[e] > mx ? lg[e] : mx;
            double sum = 0.0;
            for (int e = 0; e < E; e++)
                sum += (sc[e] = expf(lg[e] - mx));
            for (int e = 0; e < E; e++)
                sc[e] = (float)(sc[e] / sum);
        }
        /* the scores the choice ranks: with the correction bias, inside the best groups */
        float choice[E];
        unsigned char eligible[E];
        for (int e = 0; e < E; e++) {
            choice[e] = bias ? sc[e] + bias[e] : sc[e];
            eligible[e] = 1;
        }
        if (G > 1) {
            float group_score[G];
            int best_groups[G], top2[2];
            for (int g = 0; g < G; g++) {
                const float *cg = choice + (size_t)g * per_group;
                if (r->group_by_top2) {
                    top_k_indices(cg, NULL, per_group, 2, top2);
                    group_score[g] = cg[top2[0]] + cg[top2[1]];
                } else {
                    top_k_indices(cg, NULL, per_group, 1, top2);
                    group_score[g] = cg[top2[0]];
                }
            }
            top_k_indices(group_score, NULL, G, r->topk_groups, best_groups);
            for (int e = 0; e < E; e++)
                eligible[e] = 0;
            for (int j = 0; j < r->topk_groups; j++)
                for (int e = 0; e < per_group; e++)
                    eligible[best_groups[j] * per_group + e] = 1;
        }
        int chosen[k];
        top_k_indices(choice, eligible, E, k, chosen);
        int32_t *idx = index + (size_t)t * k;
        for (int j = 0; j < k; j++)
            idx[j] = chosen[j];
        qsort(idx, (size_t)k, sizeof(int32_t), compare_int32);
        float *w = weight + (size_t)t * k;
        double sum = 0.0;
        for (int j = 0; j < k; j++)
            sum += (w[j] = sc[idx[j]]);
        float norm = r->normalize ? (float)(sum + 1e-20) : 1.0f;
        for (int j = 0; j < k; j++)
            w[j] = w[j] / norm * r->scaling;
    }
}

/* With s the scores, w_j = f * s_j (/ S, S = sum of the chosen s, when normalize):
 *   ds_j = f * dw_j, or f * (dw_j - sum_i dw_i s_i / S) / S when normalized;
 *   softmax: dlogit_e = s_e (ds_e - sum_c ds_c s_c); sigmoid: dlogit_e = ds_e s_e (1 - s_e),
 * with ds_e = 0 for the experts not chosen. */
static void moe_route_backward(const Backend *be, Act *dlogits_act, const float *dweight,
                               const int32_t *index, const float *scores, int N,
                               const MoeRouting *r)
{
    float *dlogits = dlogits_act;
    const int E = r->experts, k = r->top_k;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N; t++) {
        const float *sc = scores + (size_t)t * E;
        const int32_t *idx = index + (size_t)t * k;
        const float *dw = dweight + (size_t)t * k;
        float *dl = dlogits + (size_t)t * E;
        float ds[k];
        if (r->normalize) {
            double S = 1e-20, dot = 0.0;
            for (int j = 0; j < k; j++) {
                S += sc[idx[j]];
                dot += (double)dw[j] * sc[idx[j]];
            }
            for (int j = 0; j < k; j++)
                ds[j] = (float)(r->scaling * (dw[j] - dot / S) / S);
        } else {
            for (int j = 0; j < k; j++)
                ds[j] = r->scaling * dw[j];
        }
        if (r->sigmoid) {
            for (int e = 0; e < E; e++)
                dl[e] = 0.0f;
            for (int j = 0; j < k; j++) {
                float s = sc[idx[j]];
                dl[idx[j]] = ds[j] * s * (1.0f - s);
            }
        } else {
            double dot = 0.0;
            for (int j = 0; j < k; j++)
                dot += (double)ds[j] * sc[idx[j]];
            for (int e = 0; e < E; e++)
                dl[e] = (float)(-sc[e] * dot);
            for (int j = 0; j < k; j++)
                dl[idx[j]] += sc[idx[j]] * ds[j];
        }
    }
}

static void moe_balance(const Backend *be, Act *dlogits_act, double *loss, const int32_t *index,
                        const float *scores, const float *token_weights, int B, int T, float alpha,
                        const MoeRouting *r)
{
    float *dlogits = dlogits_act;
    const int E = r->experts, k = r->top_k;
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        double f[E], P[E], w = 0.0;
        for (int e = 0; e < E; e++)
            f[e] = P[e] = 0.0;
        for (int t = b * T; t < (b + 1) * T; t++) {
            w += token_weights[t];
            const float *s = scores + (size_t)t * E;
            double S = 0.0;
            for (int e = 0; e < E; e++)
                S += s[e];
            for (int e = 0; e < E; e++)
                P[e] += s[e] / S / T;
            for (int j = 0; j < k; j++)
                f[index[(size_t)t * k + j]] += (double)E / ((double)k * T);
        }
        double seq = 0.0;
        for (int e = 0; e < E; e++)
            seq += f[e] * P[e];
        total += alpha * w * seq;
        /* d loss / d s'_e = alpha w f_e / T for each token; through s' = s / S and the scores */
        for (int t = b * T; t < (b + 1) * T; t++) {
            const float *s = scores + (size_t)t * E;
            float *dl = dlogits + (size_t)t * E;
            double S = 0.0, gs = 0.0, ds[E];
            for (int e = 0; e < E; e++)
                S += s[e];
            for (int e = 0; e < E; e++)
                gs += alpha * w * f[e] / T * (s[e] / S);
            for (int e = 0; e < E; e++)
                ds[e] = (alpha * w * f[e] / T - gs) / S;
            if (r->sigmoid) {
                for (int e = 0; e < E; e++)
                    dl[e] += (float)(ds[e] * s[e] * (1.0f - s[e]));
            } else {
                double dot = 0.0;
                for (int e = 0; e < E; e++)
                    dot += ds[e] * s[e];
                for (int e = 0; e < E; e++)
                    dl[e] += (float)(s[e] * (ds[e] - dot));
            }
        }
    }
    *loss += total;
}

static void moe_permute(const Backend *be, int32_t *rows, float *row_weight, int32_t *slot,
                        int *counts, const int32_t *index, const float *weight, int N, int E, int k)
{
    for (int e = 0; e < E; e++)
        counts[e] = 0;
    for (size_t i = 0; i < (size_t)N * k; i++)
        counts[index[i]]++;
    /* a counting sort: each expert's pairs start at the sum of the counts before it */
    size_t start[E + 1]; /* E is at most MOE_MAX_EXPERTS */
    start[0] = 0;
    for (int e = 0; e < E; e++)
        start[e + 1] = start[e] + (size_t)counts[e];
    for (int t = 0; t < N; t++)
        for (int j = 0; j < k; j++) {
            size_t s = (size_t)t * k + j, at = start[index[s]]++;
            rows[at] = t;
            row_weight[at] = weight[s];
            slot[at] = (int32_t)s;
        }
}

static void gather_rows(const Backend *be, Act *dst_act, const Act *src_act, const int32_t *rows,
                        const float *scale, int n, int C)
{
    float *dst = dst_act;
    const float *src = src_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *x = src + (size_t)rows[i] * C;
        float *y = dst + (size_t)i * C, f = scale ? scale[i] : 1.0f;
        for (int j = 0; j < C; j++)
            y[j] = f * x[j];
    }
}

/* Rows may repeat: each thread owns a block of columns and walks the rows in order. */
static void scatter_add_rows(const Backend *be, Act *dst_act, const Act *src_act,
                             const int32_t *rows, const float *scale, int n, int C)
{
    float *dst = dst_act;
    const float *src = src_act;
    int blocks = (C + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        int j0 = blk * COLUMN_BLOCK, j1 = j0 + COLUMN_BLOCK < C ? j0 + COLUMN_BLOCK : C;
        for (int i = 0; i < n; i++) {
            const float *x = src + (size_t)i * C;
            float *y = dst + (size_t)rows[i] * C, f = scale ? scale[i] : 1.0f;
            for (int j = j0; j < j1; j++)
                y[j] += f * x[j];
        }
    }
}

static void rows_dot(const Backend *be, float *out, const int32_t *out_index, const Act *a_act,
                     const int32_t *rows, const Act *b_act, int n, int C)
{
    const float *a = a_act, *b = b_act;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double sum = 0.0;
        const float *x = a + (size_t)rows[i] * C, *y = b + (size_t)i * C;
        for (int j = 0; j < C; j++)
            sum += (double)x[j] * y[j];
        out[out_index[i]] = (float)sum;
    }
}

/* Act of the CPU backend is fp32: x + elems. */
#define CPU_AT(x, elems) ((float *)(x) + (elems))

/* The experts one after another, each on its block of rows (MoE layers). */
static void moe_experts_forward(const Backend *be, Act *ey, Act *eg, Act *eu, Act *ea,
                                const Act *xs, float *const *gate, float *const *up,
                                float *const *down, const int *counts, int E, int C, int Im)
{
    size_t off = 0;
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const size_t oc = off * C, oi = off * Im;
        matmul_forward(be, CPU_AT(eg, oi), CPU_AT(xs, oc), gate[e], NULL, n, C, Im);
        matmul_forward(be, CPU_AT(eu, oi), CPU_AT(xs, oc), up[e], NULL, n, C, Im);
        swiglu_forward(be, CPU_AT(ea, oi), CPU_AT(eg, oi), CPU_AT(eu, oi), (size_t)n * Im);
        matmul_forward(be, CPU_AT(ey, oc), CPU_AT(ea, oi), down[e], NULL, n, Im, C);
        off += (size_t)n;
    }
}

static void moe_experts_backward(const Backend *be, Act *dxs, float *const *dgate,
                                 float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                 Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                 const Act *eu, const Act *ea, float *const *gate, float *const *up,
                                 float *const *down, const int *counts, int E, int C, int Im)
{
    size_t off = 0;
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const size_t oc = off * C, oi = off * Im;
        matmul_backward(be, CPU_AT(dea, oi), ddown[e], NULL, CPU_AT(dey, oc), CPU_AT(ea, oi),
                        down[e], n, Im, C, 0);
        swiglu_backward(be, CPU_AT(deg, oi), CPU_AT(deu, oi), CPU_AT(dea, oi), CPU_AT(eg, oi),
                        CPU_AT(eu, oi), (size_t)n * Im);
        matmul_backward(be, CPU_AT(dxs, oc), dgate[e], NULL, CPU_AT(deg, oi), CPU_AT(xs, oc),
                        gate[e], n, C, Im, 0);
        matmul_backward(be, CPU_AT(dxs, oc), dup[e], NULL, CPU_AT(deu, oi), CPU_AT(xs, oc), up[e],
                        n, C, Im, 1);
        off += (size_t)n;
    }
}

/* --------------------------------------------------------------------------------------------- */

static const Backend cpu_backend = {
    .name = "cpu",
    .act_size = act_size,
    .matmul_forward = matmul_forward,
    .matmul_backward = matmul_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .rope_forward = rope_forward,
    .rope_backward = rope_backward,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .embedding_forward = embedding_forward,
    .embedding_backward = embedding_backward,
    .cross_entropy = cross_entropy,
    .add = add,
    .add_rmsnorm_forward = add_rmsnorm_forward,
    .sum_squares = sum_squares,
    .sum_squares_batch = sum_squares_batch,
    .scale = scale,
    .adamw_update = adamw_update,
    .mem_alloc = mem_alloc,
    .mem_free = mem_free,
    .mem_to_device = mem_copy,
    .mem_to_host = mem_copy,
    .mem_zero = mem_zero,
    .mem_copy = mem_copy,
    .host_memory = 1,
    .embedding_forward_shard = embedding_forward_shard,
    .embedding_backward_shard = embedding_backward_shard,
    .cross_entropy_shard_max = cross_entropy_shard_max,
    .cross_entropy_shard_stats = cross_entropy_shard_stats,
    .cross_entropy_shard_finish = cross_entropy_shard_finish,
    .adamw_ewc_update = adamw_ewc_update,
    .copy_block = copy_block,
    .act_to_f32 = act_to_f32,
    .rope_block_forward = rope_block_forward,
    .rope_block_backward = rope_block_backward,
    .attention_forward_dv = attention_forward_dv,
    .attention_backward_dv = attention_backward_dv,
    .moe_route = moe_route,
    .moe_route_backward = moe_route_backward,
    .moe_balance = moe_balance,
    .moe_permute = moe_permute,
    .gather_rows = gather_rows,
    .scatter_add_rows = scatter_add_rows,
    .rows_dot = rows_dot,
    .moe_experts_forward = moe_experts_forward,
    .moe_experts_backward = moe_experts_backward,
};

const Backend *backend_cpu(void)
{
    return &cpu_backend;
}
