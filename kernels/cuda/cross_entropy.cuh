/* cross_entropy.cuh: cross_entropy (loss and gradient in place) and its vocab-sharded steps
 * (cross_entropy_shard_max / _stats / _finish).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses the statics before it (stream, lt_bf16,
 * ...), so it is not a header to include anywhere else. */

/* ---------------------------------------------------------------------------------------------
 * cross-entropy, one block per row, semantics of the CPU backend (weight-0 rows: loss 0, zero
 * gradient; a weighted row with an out-of-range target: loss NaN, zero gradient). */

template <typename ActT>
__global__ static void cross_entropy_kernel(float *losses, void *logits, const int32_t *targets,
                                            const float *weights, int V, int write_grad)
{
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
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        maxv = fmaxf(maxv, act_ld(row, j));
    maxv = block_max(maxv, shared);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        sum += expf(act_ld(row, j) - maxv);
    sum = block_sum(sum, shared);
    const float target_logit = act_ld(row, target);
    __syncthreads(); /* every thread has read row[target] before any gradient is written */
    if (threadIdx.x == 0) losses[i] = logf(sum) - (target_logit - maxv);
    if (write_grad) {
        float inv_sum = 1.0f / sum;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = w * (expf(act_ld(row, j) - maxv) * inv_sum);
            act_st(row, j, j == target ? g - w : g);
        }
    }
}

static void cross_entropy(float *losses, Act *logits, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad)
{
    if (N <= 0) return;
    LAUNCH_ACT(cross_entropy_kernel, N, 512, 0, losses, logits, targets, weights, V, write_grad);
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

static void cross_entropy_shard_max(float *row_max, const Act *logits, int N, int V)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_max_kernel, N, 512, 0, row_max, logits, V);
}

static void cross_entropy_shard_stats(float *stats, const Act *logits, const float *row_max,
                                      const int32_t *targets, int N, int V, int vocab_start)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_stats_kernel, N, 512, 0, stats, logits, row_max, targets, V, vocab_start);
}

static void cross_entropy_shard_finish(float *losses, Act *logits, const float *row_max,
                                       const float *stats, const int32_t *targets,
                                       const float *weights, int N, int V, int vocab_start,
                                       int write_grad)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_finish_kernel, N, 512, 0, losses, logits, row_max, stats, targets, weights,
               V, vocab_start, write_grad);
}
