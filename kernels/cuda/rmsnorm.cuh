/* rmsnorm.cuh: rmsnorm_forward, add_rmsnorm_forward (the residual add fused in front),
 * rmsnorm_backward (the weight gradient's row sums fused in, finished by reduce.cuh's
 * colsum_finish).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * rmsnorm. A row is one block's; with VEC (C a multiple of 8, every tensor 32-byte aligned) each
 * thread moves eight elements at a time (act_ld8), else one. Thread t always owns the same
 * columns (j = t, t + blockDim, ... or the groups of eight from 8t), so the order of every sum,
 * and with it the bits, depends on C, the block size and whether the tensors' places allow VEC
 * (the same tensors always give the same bits). */

#define RMSNORM_THREADS 256

/* The row x = a (or a + b, written to sum, when b is given): rstd = (mean(x^2) + eps)^-1/2,
 * out = weight * (x * rstd). VEC: each thread owns eight consecutive elements (the order of the
 * sum of squares follows from VEC alone); a and b are then read eight at a time when ab_vec, else
 * one by one (they may lie unaligned while sum, out and weight do not). */
template <typename ActT, bool VEC>
__global__ static void rmsnorm_forward_kernel(void *out, float *rstd, float *sum, const float *a,
                                              const void *b, const float *weight, int C, float eps,
                                              int ab_vec)
{
    __shared__ float shared[32];
    const size_t row = (size_t)blockIdx.x * C;
    const float *xa = a + row;
    const ActT *xb = b ? (const ActT *)b + row : NULL;
    float *xs = b ? sum + row : NULL;
    ActT *y = (ActT *)out + row;
    float ss = 0.0f;
    if (VEC) {
        for (int j = 8 * threadIdx.x; j < C; j += 8 * blockDim.x) {
            float v[8];
            if (ab_vec)
                act_ld8(xa, j, v);
            else
                for (int k = 0; k < 8; k++)
                    v[k] = xa[j + k];
            if (xb) {
                float u[8];
                if (ab_vec)
                    act_ld8(xb, j, u);
                else
                    for (int k = 0; k < 8; k++)
                        u[k] = act_ld(xb, j + k);
#pragma unroll
                for (int k = 0; k < 8; k++)
                    v[k] += u[k];
                act_st8(xs, j, v);
            }
#pragma unroll
            for (int k = 0; k < 8; k++)
                ss += v[k] * v[k];
        }
    } else {
        for (int j = threadIdx.x; j < C; j += blockDim.x) {
            float v = xa[j];
            if (xb) xs[j] = v = v + act_ld(xb, j);
            ss += v * v;
        }
    }
    ss = block_sum(ss, shared);
    const float variance = C > 0 ? ss / C : 0.0f;
    const float r = 1.0f / sqrtf(variance + eps);
    const float *x = xs ? xs : xa; /* a thread reads back only what it wrote */
    if (VEC) {
        for (int j = 8 * threadIdx.x; j < C; j += 8 * blockDim.x) {
            float v[8], w[8];
            act_ld8(x, j, v);
            act_ld8(weight, j, w);
#pragma unroll
            for (int k = 0; k < 8; k++)
                v[k] = w[k] * (v[k] * r);
            act_st8(y, j, v);
        }
    } else {
        for (int j = threadIdx.x; j < C; j += blockDim.x)
            act_st(y, j, weight[j] * (x[j] * r));
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

/* Rows [blockIdx.x * rows, + rows) one after another: dinp += the row's gradient; dinp_act (may
 * be NULL) gets the updated row as an Act. With partial, the block also sums dout * (inp * rstd)
 * over its rows, per column, into dynamic shared memory (C floats, each thread its own columns)
 * and writes them to partial[blockIdx.x][C]: the weight gradient without a second pass over
 * dout and inp. */
template <typename ActT, bool VEC>
__global__ static void rmsnorm_backward_kernel(float *dinp, void *dinp_act, float *partial,
                                               const void *dout, const float *inp,
                                               const float *weight, const float *rstd, int M, int C,
                                               int rows)
{
    extern __shared__ float dw[];
    __shared__ float shared[32];
    const int step = VEC ? 8 * blockDim.x : blockDim.x, first = VEC ? 8 * threadIdx.x : threadIdx.x;
    if (partial)
        for (int j = first; j < C; j += step)
            for (int k = 0; k < (VEC ? 8 : 1); k++)
                dw[j + k] = 0.0f;
    const int row0 = blockIdx.x * rows, row1 = min(row0 + rows, M);
    for (int i = row0; i < row1; i++) {
        const size_t row = (size_t)i * C;
        const float *x = inp + row;
        const ActT *dy = (const ActT *)dout + row;
        float *dx = dinp + row;
        ActT *dx_act = dinp_act ? (ActT *)dinp_act + row : NULL;
        const float r = rstd[i];
        float dot = 0.0f;
        if (VEC) {
            for (int j = first; j < C; j += step) {
                float xv[8], gv[8], wv[8];
                act_ld8(x, j, xv);
                act_ld8(dy, j, gv);
                act_ld8(weight, j, wv);
#pragma unroll
                for (int k = 0; k < 8; k++)
                    dot += wv[k] * gv[k] * xv[k];
            }
        } else {
            for (int j = first; j < C; j += step)
                dot += weight[j] * act_ld(dy, j) * x[j];
        }
        dot = block_sum(dot, shared);
        const float coef = dot * r * r * r / C;
        if (VEC) {
            for (int j = first; j < C; j += step) {
                float xv[8], gv[8], wv[8], d[8];
                act_ld8(x, j, xv);
                act_ld8(dy, j, gv);
                act_ld8(weight, j, wv);
                act_ld8(dx, j, d);
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    d[k] += r * wv[k] * gv[k] - coef * xv[k];
                    if (partial) dw[j + k] += gv[k] * (xv[k] * r);
                }
                act_st8(dx, j, d);
                if (dx_act) act_st8(dx_act, j, d);
            }
        } else {
            for (int j = first; j < C; j += step) {
                const float g = act_ld(dy, j);
                const float d = dx[j] + (r * weight[j] * g - coef * x[j]);
                dx[j] = d;
                if (dx_act) act_st(dx_act, j, d);
                if (partial) dw[j] += g * (x[j] * r);
            }
        }
    }
    if (partial)
        for (int j = first; j < C; j += step)
            for (int k = 0; k < (VEC ? 8 : 1); k++)
                partial[(size_t)blockIdx.x * C + j + k] = dw[j + k];
}

#define LAUNCH_RMSNORM(kernel, vec, grid, smem, ...)                                               \
    do {                                                                                           \
        if (vec)                                                                                   \
            LAUNCH_ACT_VEC(kernel, true, grid, RMSNORM_THREADS, smem, __VA_ARGS__);                \
        else                                                                                       \
            LAUNCH_ACT_VEC(kernel, false, grid, RMSNORM_THREADS, smem, __VA_ARGS__);               \
    } while (0)
static void rmsnorm_forward(const Backend *be, Act *out, float *rstd, const float *inp,
                            const float *weight, int M, int C, float eps)
{
    CudaContext *cx = cuda_context(be);
    if (M <= 0) return;
    const int vec = C % 8 == 0 && aligned8(out, inp, weight);
    LAUNCH_RMSNORM(rmsnorm_forward_kernel, vec, M, 0, out, rstd, (float *)NULL, inp,
                   (const void *)NULL, weight, C, eps, 1);
}

static void add_rmsnorm_forward(const Backend *be, float *sum, Act *out, float *rstd,
                                const float *a, const Act *b, const float *weight, int M, int C,
                                float eps)
{
    CudaContext *cx = cuda_context(be);
    if (M <= 0) return;
    /* the path from sum, out and weight alone, as rmsnorm_forward's from inp, out and weight: so
     * out and rstd are its bits for sum (ops.h) wherever a and b lie */
    const int vec = C % 8 == 0 && aligned8(sum, out, weight);
    LAUNCH_RMSNORM(rmsnorm_forward_kernel, vec, M, 0, out, rstd, sum, a, (const void *)b, weight, C,
                   eps, aligned8(a, b));
}

/* Blocks of rmsnorm_backward: at most this many, so that the weight gradient's partial sums stay
 * few enough for colsum_finish_kernel; rows a block follow from M alone (each block sums its
 * rows' share in fp32: 32 rows at 8 x 2048 tokens, 2048 at a million). */
#define RMSNORM_BACKWARD_BLOCKS 512
/* The block's row sums of the weight gradient in shared memory beside block_sum's 32 floats,
 * within the 48 KiB a block has without opting in: C up to 12256. */
#define RMSNORM_DW_SMEM_MAX (48 * 1024 - 32 * sizeof(float))

static void rmsnorm_backward(const Backend *be, float *dinp, Act *dinp_act, float *dweight,
                             const Act *dout, const float *inp, const float *weight,
                             const float *rstd, int M, int C)
{
    CudaContext *cx = cuda_context(be);
    if (M <= 0 || C <= 0) return;
    const int vec = C % 8 == 0 && aligned8(dinp, dout, inp, weight, dinp_act);
    const size_t smem = (size_t)C * sizeof(float);
    if (smem > RMSNORM_DW_SMEM_MAX) { /* the weight gradient's row sums do not fit: a 2nd pass */
        LAUNCH_RMSNORM(rmsnorm_backward_kernel, vec, M, 0, dinp, (void *)dinp_act, (float *)NULL,
                       (const void *)dout, inp, weight, rstd, M, C, 1);
        column_sums_add(cx, dweight, dout, inp, rstd, M, C);
        return;
    }
    const int rows = ceil_div(M, RMSNORM_BACKWARD_BLOCKS), blocks = ceil_div(M, rows);
    float *partial = (float *)scratch_get(cx, (size_t)blocks * C * sizeof(float));
    LAUNCH_RMSNORM(rmsnorm_backward_kernel, vec, blocks, smem, dinp, (void *)dinp_act, partial,
                   (const void *)dout, inp, weight, rstd, M, C, rows);
    colsum_finish(cx, dweight, partial, blocks, C);
}
