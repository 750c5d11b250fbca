/* reduce.cuh: reductions: warp and block sums and maxima, deterministic column sums
 * of an Act (column_sums_add), the sum of squares in double (sum_squares, sum_squares_batch:
 * one launch a batch of ranges).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * reductions inside a warp and a block */

__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
 * shared must hold 32 floats; the leading barrier lets a caller reuse it back to back. */
__device__ static float block_sum(float v, float *shared)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(total);
}

__device__ static float block_max(float v, float *shared)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(total);
}

/* ---------------------------------------------------------------------------------------------
 * column sums of an Act x, deterministic: rows are cut into fixed chunks, each chunk's column
 * sums are written to scratch, then a second kernel adds the chunks in chunk order into dst (+=).
 * With x2 and rowscale (fp32) it sums x[i,j] * (x2[i,j] * rowscale[i]) (the RMSNorm weight
 * gradient). */

#define COLSUM_CHUNK 256

template <typename ActT>
__global__ static void colsum_partial_kernel(float *partial, const void *x_, const float *x2,
                                             const float *rowscale, int M, int N)
{
    const ActT *x = (const ActT *)x_;
    __shared__ float part[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * COLSUM_CHUNK, row1 = min(row0 + COLSUM_CHUNK, M);
    float s = 0.0f;
    if (j < N)
        for (int i = row0 + threadIdx.y; i < row1; i += 8) {
            size_t at = (size_t)i * N + j;
            s += x2 ? act_ld(x, at) * (x2[at] * rowscale[i]) : act_ld(x, at);
        }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < N) {
        float total = 0.0f;
        for (int r = 0; r < 8; r++)
            total += part[r][threadIdx.x];
        partial[(size_t)blockIdx.y * N + j] = total;
    }
}

/* dst[j] += the sum over c < chunks of partial[c][j], in double and in a fixed order: eight
 * threads a column (blockDim 32 x 8) take every eighth chunk, then the eight sums are added in
 * order. The finish of column_sums_add and of rmsnorm_backward's row sums. */
__global__ static void colsum_finish_kernel(float *dst, const float *partial, int chunks, int N)
{
    __shared__ double part[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    double s = 0.0;
    if (j < N)
        for (int c = threadIdx.y; c < chunks; c += 8)
            s += partial[(size_t)c * N + j];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < N) {
        double total = 0.0;
        for (int k = 0; k < 8; k++)
            total += part[k][threadIdx.x];
        dst[j] += (float)total;
    }
}

static void colsum_finish(CudaContext *cx, float *dst, const float *partial, int chunks, int N)
{
    colsum_finish_kernel<<<ceil_div(N, 32), dim3(32, 8), 0, cx->stream>>>(dst, partial, chunks, N);
    launchCheck();
}

static void column_sums_add(CudaContext *cx, float *dst, const void *x, const float *x2,
                            const float *rowscale, int M, int N)
{
    if (M <= 0 || N <= 0) return;
    int chunks = ceil_div(M, COLSUM_CHUNK);
    float *partial = (float *)scratch_get(cx, (size_t)chunks * N * sizeof(float));
    LAUNCH_ACT(colsum_partial_kernel, dim3(ceil_div(N, 32), chunks), dim3(32, 8), 0, partial, x, x2,
               rowscale, M, N);
    colsum_finish(cx, dst, partial, chunks, N);
}

/* ---------------------------------------------------------------------------------------------
 * sum of squares in double: a fixed grid of SUMSQ_BLOCKS blocks a range (so a fixed order; four
 * elements a load where the range is 16-byte aligned, which only its address decides), the
 * block partials of every range of a batch from one launch (blockIdx.y the range), then summed in
 * block order by one thread a range on the device: the host receives count doubles, one wait a
 * batch, and each range's bits do not depend on the batch it is in. */

#define SUMSQ_BLOCKS 512

typedef struct SumSquaresRanges {
    const float *x[SUM_SQUARES_BATCH];
    size_t n[SUM_SQUARES_BATCH];
} SumSquaresRanges;

__global__ static void sum_squares_kernel(double *partial, const SumSquaresRanges ranges)
{
    __shared__ double shared[32];
    const float *x = ranges.x[blockIdx.y];
    const size_t n = ranges.n[blockIdx.y];
    const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    double s = 0.0;
    size_t tail = 0;              /* where the one-by-one loop starts */
    if ((uintptr_t)x % 16 == 0) { /* four elements a load, in element order within the four */
        const float4 *x4 = reinterpret_cast<const float4 *>(x);
        const size_t n4 = n / 4;
        for (size_t i = first; i < n4; i += stride) {
            const float4 v = x4[i];
            s += (double)v.x * v.x;
            s += (double)v.y * v.y;
            s += (double)v.z * v.z;
            s += (double)v.w * v.w;
        }
        tail = n4 * 4;
    }
    for (size_t i = tail + first; i < n; i += stride)
        s += (double)x[i] * x[i];
    s = warp_sum_d(s);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) shared[warp] = s;
    __syncthreads();
    if (warp == 0) {
        double t = lane < (int)(blockDim.x / 32) ? shared[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) partial[(size_t)blockIdx.y * gridDim.x + blockIdx.x] = t;
    }
}

/* sums[r] = the partials of range r in block order (0 for an empty range) */
__global__ static void sum_squares_finish_kernel(double *sums, const double *partial,
                                                 const SumSquaresRanges ranges, int count)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= count) return;
    double total = 0.0;
    for (int i = 0; ranges.n[r] && i < SUMSQ_BLOCKS; i++)
        total += partial[(size_t)r * SUMSQ_BLOCKS + i];
    sums[r] = total;
}

static void sum_squares_batch(const Backend *be, double *sums, const float *const *xs,
                              const size_t *ns, int count)
{
    CudaContext *cx = cuda_context(be);
    /* ops.h allows SUM_SQUARES_BATCH ranges a call; more are taken that many at a time */
    for (int first = 0; first < count; first += SUM_SQUARES_BATCH) {
        const int c = count - first < SUM_SQUARES_BATCH ? count - first : SUM_SQUARES_BATCH;
        SumSquaresRanges ranges;
        memset(&ranges, 0, sizeof(ranges));
        for (int r = 0; r < c; r++)
            ranges.x[r] = xs[first + r], ranges.n[r] = ns[first + r];
        const size_t partial_bytes = ((size_t)c * SUMSQ_BLOCKS * sizeof(double) + 255) / 256 * 256;
        double *partial =
            (double *)scratch_get(cx, partial_bytes + SUM_SQUARES_BATCH * sizeof(double));
        double *dev_sums = (double *)((unsigned char *)partial + partial_bytes);
        sum_squares_kernel<<<dim3(SUMSQ_BLOCKS, c), 256, 0, cx->stream>>>(partial, ranges);
        launchCheck();
        sum_squares_finish_kernel<<<1, SUM_SQUARES_BATCH, 0, cx->stream>>>(dev_sums, partial,
                                                                           ranges, c);
        launchCheck();
        cudaCheck(
            cudaMemcpy(sums + first, dev_sums, (size_t)c * sizeof(double), cudaMemcpyDeviceToHost));
    }
}

/* One range: the batch of one, so both give the same bits. */
static double sum_squares(const Backend *be, const float *x, size_t n)
{
    double total;
    sum_squares_batch(be, &total, &x, &n, 1);
    return total;
}
