/* cross_entropy.cuh: cross_entropy (loss and gradient in place) and its vocab-sharded steps
 * (cross_entropy_shard_max / _stats / _finish).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * cross-entropy, one block per row, semantics of the CPU backend (weight-0 rows: loss 0, zero
 * gradient; a weighted row with an out-of-range target: loss NaN, zero gradient). The row is
 * read three times (maximum, sum, gradient): its first `cached` logits are read from global
 * memory once, into shared memory (all of V2-Lite's 102400 in bf16; what does not fit is read
 * from global memory each time), the passes read them there. Each thread takes the same
 * elements in the same order whatever is cached, so the bits do not depend on it. */

template <typename ActT>
__device__ static inline float ce_logit(const ActT *cache, int cached, const ActT *row, int j)
{
    return j < cached ? act_ld(cache, j) : act_ld(row, j);
}

template <typename ActT>
__global__ static void cross_entropy_kernel(float *losses, void *logits, const int32_t *targets,
                                            const float *weights, int V, int cached, int write_grad)
{
    extern __shared__ uint4 ce_cache_raw[];
    ActT *cache = reinterpret_cast<ActT *>(ce_cache_raw);
    __shared__ float shared[32];
    const int i = blockIdx.x;
    ActT *row = (ActT *)logits + (size_t)i * V;
    const float w = weights[i];
    const int target = targets[i];
    if (w == 0.0f || target < 0 || target >= V || V <= 0) {
        if (threadIdx.x == 0) losses[i] = w == 0.0f ? 0.0f : NAN;
        if (write_grad)
            for (int j = threadIdx.x; j < V; j += blockDim.x)
                act_st(row, j, 0.0f);
        return;
    }
    const int per16 = (int)(16 / sizeof(ActT)), vecs = (uintptr_t)row % 16 ? 0 : cached / per16;
    const uint4 *row16 = reinterpret_cast<const uint4 *>(row);
#pragma unroll 4
    for (int j = threadIdx.x; j < vecs; j += blockDim.x)
        ce_cache_raw[j] = row16[j];
    for (int j = vecs * per16 + threadIdx.x; j < cached; j += blockDim.x)
        cache[j] = row[j];
    __syncthreads();
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        maxv = fmaxf(maxv, ce_logit(cache, cached, row, j));
    maxv = block_max(maxv, shared);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        sum += expf(ce_logit(cache, cached, row, j) - maxv);
    sum = block_sum(sum, shared);
    const float target_logit = ce_logit(cache, cached, row, target);
    __syncthreads(); /* every thread has read row[target] before any gradient is written */
    if (threadIdx.x == 0) losses[i] = logf(sum) - (target_logit - maxv);
    if (write_grad) {
        float inv_sum = 1.0f / sum;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = w * (expf(ce_logit(cache, cached, row, j) - maxv) * inv_sum);
            act_st(row, j, j == target ? g - w : g);
        }
    }
}

/* shared memory a block may take (the device's opt-in limit less the kernel's own and a margin) */
static size_t ce_cache_limit(const CudaContext *cx)
{
    return cx->smem_optin > 4096 ? cx->smem_optin - 2048 : 0;
}

static void cross_entropy(const Backend *be, float *losses, Act *logits, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    const size_t elem = act_bytes(cx);
    size_t cached = V > 0 ? (size_t)V : 0;
    if (cached * elem > ce_cache_limit(cx)) cached = ce_cache_limit(cx) / elem / 8 * 8;
    const size_t smem = cached * elem;
    if (cx->bf16)
        allow_smem(cross_entropy_kernel<__nv_bfloat16>, smem);
    else
        allow_smem(cross_entropy_kernel<float>, smem);
    LAUNCH_ACT(cross_entropy_kernel, N, 512, smem, losses, logits, targets, weights, V, (int)cached,
               write_grad);
}

/* Vocab-parallel cross-entropy, the three parts of ops.h, one block per row each. */

template <typename ActT>
__global__ static void ce_shard_max_kernel(float *row_max, const void *logits, int V)
{
    __shared__ float shared[32];
    const ActT *row = (const ActT *)logits + (size_t)blockIdx.x * V;
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        maxv = fmaxf(maxv, act_ld(row, j));
    maxv = block_max(maxv, shared);
    if (threadIdx.x == 0) row_max[blockIdx.x] = maxv;
}

template <typename ActT>
__global__ static void ce_shard_stats_kernel(float *stats, const void *logits,
                                             const float *row_max, const int32_t *targets, int V,
                                             int vocab_start)
{
    __shared__ float shared[32];
    const int i = blockIdx.x;
    const ActT *row = (const ActT *)logits + (size_t)i * V;
    const float maxv = row_max[i];
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        sum += expf(act_ld(row, j) - maxv);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        long long t = (long long)targets[i] - vocab_start;
        int owned = t >= 0 && t < V;
        stats[3 * (size_t)i] = sum;
        stats[3 * (size_t)i + 1] = owned ? act_ld(row, t) : 0.0f;
        stats[3 * (size_t)i + 2] = owned ? 1.0f : 0.0f;
    }
}

template <typename ActT>
__global__ static void ce_shard_finish_kernel(float *losses, void *logits, const float *row_max,
                                              const float *stats, const int32_t *targets,
                                              const float *weights, int V, int vocab_start,
                                              int write_grad)
{
    const int i = blockIdx.x;
    ActT *row = (ActT *)logits + (size_t)i * V;
    const float w = weights[i], maxv = row_max[i], sum = stats[3 * (size_t)i];
    if (w == 0.0f || stats[3 * (size_t)i + 2] != 1.0f) {
        if (threadIdx.x == 0) losses[i] = w == 0.0f ? 0.0f : NAN;
        if (write_grad)
            for (int j = threadIdx.x; j < V; j += blockDim.x)
                act_st(row, j, 0.0f);
        return;
    }
    if (threadIdx.x == 0) losses[i] = logf(sum) - (stats[3 * (size_t)i + 1] - maxv);
    if (write_grad) {
        const float inv_sum = 1.0f / sum;
        const long long t = (long long)targets[i] - vocab_start;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = w * (expf(act_ld(row, j) - maxv) * inv_sum);
            act_st(row, j, j == t ? g - w : g);
        }
    }
}

static void cross_entropy_shard_max(const Backend *be, float *row_max, const Act *logits, int N,
                                    int V)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_max_kernel, N, 512, 0, row_max, logits, V);
}

static void cross_entropy_shard_stats(const Backend *be, float *stats, const Act *logits,
                                      const float *row_max, const int32_t *targets, int N, int V,
                                      int vocab_start)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_stats_kernel, N, 512, 0, stats, logits, row_max, targets, V, vocab_start);
}

static void cross_entropy_shard_finish(const Backend *be, float *losses, Act *logits,
                                       const float *row_max, const float *stats,
                                       const int32_t *targets, const float *weights, int N, int V,
                                       int vocab_start, int write_grad)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_finish_kernel, N, 512, 0, losses, logits, row_max, stats, targets, weights,
               V, vocab_start, write_grad);
}
