/* moe.cuh: the mixture of experts' ops (DeepSeek): moe_route / moe_route_backward (one block a
 * token), moe_balance (the sequence-wise balance loss), moe_permute (the pairs sorted by expert
 * with CUB's stable radix sort; the counts copied to the host, one wait), gather_rows,
 * scatter_add_rows (deterministic: each destination row's sources added in order, as the CPU
 * adds them; both one warp a row and 16-byte accesses where the rows allow) and rows_dot (one
 * warp a row, in double).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's CudaContext,
 * reduce.cuh's warp sums, embedding.cuh's iota_kernel, attention_fp32.cuh's scratch cuts and
 * allow_smem), so it is not a header to include anywhere else. No float atomics: every op gives
 * the same bits run to run. */

#define MOE_THREADS 128

/* ---------------------------------------------------------------------------------------------
 * routing: the CPU's moe_route step by step. The block's threads share the scores, the top-k
 * picks are block-wide arg-maxes (the larger value, on a tie the lower index: the CPU's order),
 * and thread 0 does what is a few values long (the groups' ranking, sorting the k picks, the
 * weights), in the CPU's order and precision. */

/* The better of two (value, index) candidates; index -1 is none. */
__device__ static inline void moe_better(float *v, int *i, float v2, int i2)
{
    if (i2 < 0) return;
    if (*i < 0 || v2 > *v || (v2 == *v && i2 < *i)) *v = v2, *i = i2;
}

/* The best (value, index) over the block, returned to every thread; shared_v and shared_i hold
 * 32 each; the leading barrier lets a caller reuse them back to back. */
__device__ static void moe_block_argmax(float *v, int *i, float *shared_v, int *shared_i)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1)
        moe_better(v, i, __shfl_xor_sync(0xffffffffu, *v, o), __shfl_xor_sync(0xffffffffu, *i, o));
    __syncthreads();
    if (lane == 0) shared_v[warp] = *v, shared_i[warp] = *i;
    __syncthreads();
    *v = lane < warps ? shared_v[lane] : 0.0f;
    *i = lane < warps ? shared_i[lane] : -1;
    for (int o = 16; o > 0; o >>= 1)
        moe_better(v, i, __shfl_xor_sync(0xffffffffu, *v, o), __shfl_xor_sync(0xffffffffu, *i, o));
}

__device__ static double moe_block_sum_d(double v, double *shared)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return warp_sum_d(lane < warps ? shared[lane] : 0.0);
}

/* The best k of x[0..n) (ties to the lower index) into out, best first: one thread, as the CPU's
 * top_k_indices. */
__device__ static void moe_top_k_serial(const float *x, int n, int k, int *out)
{
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int p = 0; p < j && !taken; p++)
                taken = out[p] == i;
            if (!taken && (best < 0 || x[i] > x[best])) best = i;
        }
        out[j] = best;
    }
}

/* One block a token. Shared: scores[E], choice[E], group scores[G], picks[k], best groups[G],
 * eligible[E] (bytes). */
template <typename ActT>
__global__ static void moe_route_kernel(int32_t *index, float *weight, float *scores,
                                        const void *logits_, const float *bias, MoeRouting r)
{
    extern __shared__ float moe_smem[];
    __shared__ float red_v[32];
    __shared__ int red_i[32];
    __shared__ double red_d[32];
    const int E = r.experts, k = r.top_k, G = r.groups > 0 ? r.groups : 1, per_group = E / G;
    float *sc = moe_smem, *choice = sc + E, *group_score = choice + E;
    int *picks = (int *)(group_score + G), *best_groups = picks + k;
    unsigned char *eligible = (unsigned char *)(best_groups + G);
    const size_t tok = blockIdx.x;
    const ActT *lg = (const ActT *)logits_ + tok * E;
    if (r.sigmoid) {
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            sc[e] = 1.0f / (1.0f + expf(-act_ld(lg, e)));
    } else {
        float mx = -INFINITY;
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            mx = fmaxf(mx, act_ld(lg, e));
        mx = block_max(mx, red_v);
        double sum = 0.0;
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            sum += (sc[e] = expf(act_ld(lg, e) - mx));
        sum = moe_block_sum_d(sum, red_d);
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            sc[e] = (float)(sc[e] / sum);
    }
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        choice[e] = bias ? sc[e] + bias[e] : sc[e];
        eligible[e] = 1;
    }
    __syncthreads();
    if (G > 1) { /* only the experts of the best topk_groups groups stay eligible */
        for (int g = threadIdx.x; g < G; g += blockDim.x) {
            const float *cg = choice + (size_t)g * per_group;
            int top2[2];
            moe_top_k_serial(cg, per_group, r.group_by_top2 ? 2 : 1, top2);
            group_score[g] = cg[top2[0]] + (r.group_by_top2 && top2[1] >= 0 ? cg[top2[1]] : 0.0f);
        }
        __syncthreads();
        if (threadIdx.x == 0) moe_top_k_serial(group_score, G, r.topk_groups, best_groups);
        __syncthreads();
        for (int e = threadIdx.x; e < E; e += blockDim.x) {
            const int g = e / per_group;
            int in = 0;
            for (int j = 0; j < r.topk_groups && g < G; j++)
                in |= best_groups[j] == g;
            eligible[e] = (unsigned char)in;
        }
        __syncthreads();
    }
    for (int j = 0; j < k; j++) {
        float v = 0.0f;
        int at = -1;
        for (int e = threadIdx.x; e < E; e += blockDim.x)
            if (eligible[e]) moe_better(&v, &at, choice[e], e);
        moe_block_argmax(&v, &at, red_v, red_i);
        if (threadIdx.x == 0) {
            picks[j] = at;
            if (at >= 0) eligible[at] = 0;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        for (int j = 1; j < k; j++) /* ascending, as the CPU's qsort */
            for (int p = j; p > 0 && picks[p - 1] > picks[p]; p--) {
                const int x = picks[p];
                picks[p] = picks[p - 1], picks[p - 1] = x;
            }
        int32_t *idx = index + tok * k;
        float *w = weight + tok * k;
        double sum = 0.0;
        for (int j = 0; j < k; j++) {
            idx[j] = picks[j];
            sum += (w[j] = picks[j] >= 0 ? sc[picks[j]] : 0.0f);
        }
        const float norm = r.normalize ? (float)(sum + 1e-20) : 1.0f;
        for (int j = 0; j < k; j++)
            w[j] = w[j] / norm * r.scaling;
    }
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        scores[tok * E + e] = sc[e];
}

/* One block a token: thread 0 the gradients of the k chosen scores (in double where the CPU's
 * are), then every thread its logits. Shared: ds[k]. */
template <typename ActT>
__global__ static void moe_route_backward_kernel(void *dlogits_, const float *dweight,
                                                 const int32_t *index, const float *scores,
                                                 MoeRouting r)
{
    extern __shared__ float moe_smem[];
    __shared__ double dot_shared;
    const int E = r.experts, k = r.top_k;
    const size_t tok = blockIdx.x;
    const float *sc = scores + tok * E;
    const int32_t *idx = index + tok * k;
    const float *dw = dweight + tok * k;
    ActT *dl = (ActT *)dlogits_ + tok * E;
    float *ds = moe_smem;
    if (threadIdx.x == 0) {
        if (r.normalize) {
            double S = 1e-20, dot = 0.0;
            for (int j = 0; j < k; j++) {
                S += sc[idx[j]];
                dot += (double)dw[j] * sc[idx[j]];
            }
            for (int j = 0; j < k; j++)
                ds[j] = (float)(r.scaling * (dw[j] - dot / S) / S);
        } else {
            for (int j = 0; j < k; j++)
                ds[j] = r.scaling * dw[j];
        }
        double dot = 0.0;
        if (!r.sigmoid)
            for (int j = 0; j < k; j++)
                dot += (double)ds[j] * sc[idx[j]];
        dot_shared = dot;
    }
    __syncthreads();
    const double dot = dot_shared;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        const float s = sc[e];
        float g = r.sigmoid ? 0.0f : (float)(-s * dot);
        for (int j = 0; j < k; j++)
            if (idx[j] == e) {
                if (r.sigmoid)
                    g = ds[j] * s * (1.0f - s);
                else
                    g += s * ds[j];
            }
        act_st(dl, e, g);
    }
}

static size_t moe_route_smem(const MoeRouting *r)
{
    const int E = r->experts, G = r->groups > 0 ? r->groups : 1;
    return (size_t)(2 * E + G) * sizeof(float) + (size_t)(r->top_k + G) * sizeof(int) + (size_t)E;
}

static void moe_route(const Backend *be, int32_t *index, float *weight, float *scores,
                      const Act *logits, const float *bias, int N, const MoeRouting *r)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    const size_t smem = moe_route_smem(r);
    if (cx->bf16) {
        allow_smem(moe_route_kernel<__nv_bfloat16>, smem);
        moe_route_kernel<__nv_bfloat16>
            <<<N, MOE_THREADS, smem, cx->stream>>>(index, weight, scores, logits, bias, *r);
    } else {
        allow_smem(moe_route_kernel<float>, smem);
        moe_route_kernel<float>
            <<<N, MOE_THREADS, smem, cx->stream>>>(index, weight, scores, logits, bias, *r);
    }
    launchCheck();
}

static void moe_route_backward(const Backend *be, Act *dlogits, const float *dweight,
                               const int32_t *index, const float *scores, int N,
                               const MoeRouting *r)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0) return;
    LAUNCH_ACT(moe_route_backward_kernel, N, MOE_THREADS, (size_t)r->top_k * sizeof(float), dlogits,
               dweight, index, scores, *r);
}

/* ---------------------------------------------------------------------------------------------
 * the sequence-wise balance loss (ops.h's moe_balance): the CPU's sums in the CPU's order, each
 * serial where the CPU's is (a token's score sum, a sequence's counts and weights, the loss's
 * terms), parallel only across what the CPU computes independently (experts, tokens). Three
 * kernels: each token's score sum; per sequence its fractions f and mean scores P and its loss
 * term; per token the gradient into the router logits. */

/* S[t] = the sum of token t's scores, in expert order, in double. */
__global__ static void moe_balance_sums_kernel(double *S, const float *scores, int N, int E)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= N) return;
    const float *s = scores + (size_t)t * E;
    double sum = 0.0;
    for (int e = 0; e < E; e++)
        sum += s[e];
    S[t] = sum;
}

/* One block a sequence b: f[b, e] (the share of its picks that went to e, E / (k T) a pick),
 * w[b] (its tokens' weights), term[b] = alpha w sum_e f_e P_e. Shared: P[E] in double. */
__global__ static void moe_balance_seq_kernel(double *f_out, double *w_out, double *term,
                                              const double *S, const int32_t *index,
                                              const float *scores, const float *token_weights,
                                              int T, float alpha, MoeRouting r)
{
    extern __shared__ double moe_smem_d[];
    const int E = r.experts, k = r.top_k, b = blockIdx.x;
    const size_t t0 = (size_t)b * T;
    double *P = moe_smem_d, *f = f_out + (size_t)b * E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double p = 0.0;
        for (int t = 0; t < T; t++)
            p += scores[(t0 + t) * E + e] / S[t0 + t] / T;
        P[e] = p;
        f[e] = 0.0;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    const double pick = (double)E / ((double)k * T);
    double w = 0.0;
    for (int t = 0; t < T; t++) {
        w += token_weights[t0 + t];
        for (int j = 0; j < k; j++)
            f[index[(t0 + t) * k + j]] += pick;
    }
    double seq = 0.0;
    for (int e = 0; e < E; e++)
        seq += f[e] * P[e];
    w_out[b] = w;
    term[b] = alpha * w * seq;
}

/* One block a token: dlogits += the loss's gradient through s' = s / S and the scores (thread 0
 * the two sums over experts, in order, as the CPU). Shared: ds[E] in double. */
template <typename ActT>
__global__ static void moe_balance_grad_kernel(void *dlogits_, const double *f_all,
                                               const double *w_all, const double *S_all,
                                               const float *scores, int T, float alpha,
                                               MoeRouting r)
{
    extern __shared__ double moe_smem_d[];
    __shared__ double dot_shared;
    const int E = r.experts;
    const size_t t = blockIdx.x;
    const int b = (int)(t / T);
    const float *s = scores + t * E;
    const double *f = f_all + (size_t)b * E, w = w_all[b], S = S_all[t];
    ActT *dl = (ActT *)dlogits_ + t * E;
    double *ds = moe_smem_d;
    if (threadIdx.x == 0) {
        double gs = 0.0;
        for (int e = 0; e < E; e++)
            gs += alpha * w * f[e] / T * (s[e] / S);
        double dot = 0.0;
        for (int e = 0; e < E; e++) {
            ds[e] = (alpha * w * f[e] / T - gs) / S;
            if (!r.sigmoid) dot += ds[e] * s[e];
        }
        dot_shared = dot;
    }
    __syncthreads();
    const double dot = dot_shared;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        const float g = r.sigmoid ? (float)(ds[e] * s[e] * (1.0f - s[e]))
                                  : (float)(s[e] * (ds[e] - dot));
        act_st(dl, e, act_ld(dl, e) + g);
    }
}

static void moe_balance(const Backend *be, Act *dlogits, double *loss, const int32_t *index,
                        const float *scores, const float *token_weights, int B, int T, float alpha,
                        const MoeRouting *r)
{
    CudaContext *cx = cuda_context(be);
    const int E = r->experts, N = B * T;
    if (N <= 0) return;
    const size_t sums = scratch_round((size_t)N * sizeof(double));
    const size_t fs = scratch_round((size_t)B * E * sizeof(double));
    const size_t per_seq = scratch_round((size_t)B * sizeof(double));
    ScratchCut cut = {(unsigned char *)scratch_get(cx, sums + fs + 2 * per_seq)};
    double *S = (double *)scratch_cut(&cut, sums), *f = (double *)scratch_cut(&cut, fs);
    double *w = (double *)scratch_cut(&cut, per_seq), *term = (double *)scratch_cut(&cut, per_seq);
    moe_balance_sums_kernel<<<ceil_div(N, 256), 256, 0, cx->stream>>>(S, scores, N, E);
    launchCheck();
    const size_t smem = (size_t)E * sizeof(double);
    allow_smem(moe_balance_seq_kernel, smem);
    moe_balance_seq_kernel<<<B, MOE_THREADS, smem, cx->stream>>>(f, w, term, S, index, scores,
                                                                 token_weights, T, alpha, *r);
    launchCheck();
    if (cx->bf16) {
        allow_smem(moe_balance_grad_kernel<__nv_bfloat16>, smem);
        moe_balance_grad_kernel<__nv_bfloat16>
            <<<N, MOE_THREADS, smem, cx->stream>>>(dlogits, f, w, S, scores, T, alpha, *r);
    } else {
        allow_smem(moe_balance_grad_kernel<float>, smem);
        moe_balance_grad_kernel<float>
            <<<N, MOE_THREADS, smem, cx->stream>>>(dlogits, f, w, S, scores, T, alpha, *r);
    }
    launchCheck();
    /* the loss: the sequences' terms summed on the host in order (a wait, once a MoE layer) */
    double host[64], total = 0.0;
    for (int b0 = 0; b0 < B; b0 += 64) {
        const int n = B - b0 < 64 ? B - b0 : 64;
        cudaCheck(cudaMemcpy(host, term + b0, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost));
        for (int i = 0; i < n; i++)
            total += host[i];
    }
    *loss += total;
}

/* ---------------------------------------------------------------------------------------------
 * the pairs sorted by expert: CUB's radix sort is stable, so within an expert the pairs keep
 * their order, tokens ascending (a counting sort's result, as the CPU's). */

/* position[i]: the pair (slot) that lands at i */
__global__ static void moe_permute_kernel(int32_t *rows, float *row_weight, int32_t *slot,
                                          const int32_t *position, const float *weight, int n,
                                          int k)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int32_t s = position[i];
    rows[i] = s / k;
    row_weight[i] = weight[s];
    slot[i] = s;
}

/* The first index of sorted[0..n) not below key. */
__device__ static int lower_bound_int32(const int32_t *sorted, int n, int key)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (sorted[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

__global__ static void moe_counts_kernel(int *counts, const int32_t *sorted, int n, int E)
{
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e < E) counts[e] = lower_bound_int32(sorted, n, e + 1) - lower_bound_int32(sorted, n, e);
}

static void moe_permute(const Backend *be, int32_t *rows, float *row_weight, int32_t *slot,
                        int *counts, const int32_t *index, const float *weight, int N, int E, int k)
{
    CudaContext *cx = cuda_context(be);
    const int n = N * k;
    if (n <= 0 || E <= 0) {
        for (int e = 0; e < E; e++)
            counts[e] = 0;
        return;
    }
    int bits = 1; /* the keys are experts, 0 .. E - 1 */
    while (bits < 31 && (1 << bits) < E)
        bits++;
    size_t sort_bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, index, (int32_t *)NULL,
                                              (const int32_t *)NULL, (int32_t *)NULL, n, 0, bits,
                                              cx->stream));
    /* scratch: sorted experts, pairs in and out, the counts (each 256-byte aligned), CUB's */
    const size_t vec = scratch_round((size_t)n * sizeof(int32_t));
    const size_t cnt = scratch_round((size_t)E * sizeof(int));
    ScratchCut cut = {(unsigned char *)scratch_get(cx, 3 * vec + cnt + sort_bytes)};
    int32_t *sorted = (int32_t *)scratch_cut(&cut, vec), *order = (int32_t *)scratch_cut(&cut, vec);
    int32_t *position = (int32_t *)scratch_cut(&cut, vec);
    int *d_counts = (int *)scratch_cut(&cut, cnt);
    iota_kernel<<<ceil_div(n, 256), 256, 0, cx->stream>>>(order, n);
    launchCheck();
    cudaCheck(cub::DeviceRadixSort::SortPairs(cut.at, sort_bytes, index, sorted, order, position, n,
                                              0, bits, cx->stream));
    moe_permute_kernel<<<ceil_div(n, 256), 256, 0, cx->stream>>>(rows, row_weight, slot, position,
                                                                 weight, n, k);
    launchCheck();
    moe_counts_kernel<<<ceil_div(E, 256), 256, 0, cx->stream>>>(d_counts, sorted, n, E);
    launchCheck();
    /* the model sizes the experts' matmuls from the counts on the host: one wait here */
    cudaCheck(cudaMemcpy(counts, d_counts, (size_t)E * sizeof(int), cudaMemcpyDeviceToHost));
}

/* ---------------------------------------------------------------------------------------------
 * rows in and out of the experts' order */

template <typename ActT>
__global__ static void gather_rows_kernel(void *dst_, const void *src_, const int32_t *rows,
                                          const float *scale, int n, int C)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * C) return;
    const size_t i = idx / C, j = idx % C;
    const float f = scale ? scale[i] : 1.0f;
    act_st(dst, idx, f * act_ld(src, (size_t)rows[i] * C + j));
}

/* The same, eight columns a lane and one warp a row (C a multiple of 8, both tensors 16-byte
 * aligned): 16-byte accesses, the same products, so the same bits. */
template <typename ActT>
__global__ static void gather_rows8_kernel(void *dst_, const void *src_, const int32_t *rows,
                                           const float *scale, int n, int C)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const int i = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32),
              lane = threadIdx.x % 32;
    if (i >= n) return;
    const float f = scale ? scale[i] : 1.0f;
    const size_t from = (size_t)rows[i] * C, to = (size_t)i * C;
    for (int j = lane * 8; j < C; j += 32 * 8) {
        float v[8];
        act_ld8(src, from + j, v);
#pragma unroll
        for (int e = 0; e < 8; e++)
            v[e] = f * v[e];
        act_st8(dst, to + j, v);
    }
}

/* sorted[p], position[p]: the destination rows ascending and the source row of each, ascending
 * within a destination (the stable sort). The first slot of each destination's run walks the run,
 * one thread a column, so the row is read once, its sources added in the CPU's order in fp32, and
 * written once. */
template <typename ActT>
__global__ static void scatter_add_rows_kernel(void *dst_, const void *src_, const int32_t *sorted,
                                               const int32_t *position, const float *scale, int n,
                                               int C)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const int p = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    const int32_t row = sorted[p];
    if ((p > 0 && sorted[p - 1] == row) || col >= C) return; /* not the first of its run */
    const size_t at = (size_t)row * C + col;
    float acc = act_ld(dst, at);
    for (int j = p; j < n && sorted[j] == row; j++) {
        const int32_t i = position[j];
        const float f = scale ? scale[i] : 1.0f;
        acc += f * act_ld(src, (size_t)i * C + col);
    }
    act_st(dst, at, acc);
}

/* The same walk, one warp a slot and eight columns a lane (C a multiple of 8, both tensors
 * 16-byte aligned): the warps of slots that do not start a run leave at once, the others move
 * 16 bytes an access; each element's sum is the same sequence of operations, so the same bits. */
template <typename ActT>
__global__ static void scatter_add_rows8_kernel(void *dst_, const void *src_, const int32_t *sorted,
                                                const int32_t *position, const float *scale, int n,
                                                int C)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const int p = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32),
              lane = threadIdx.x % 32;
    if (p >= n) return;
    const int32_t row = sorted[p];
    if (p > 0 && sorted[p - 1] == row) return; /* not the first of its run */
    const size_t at = (size_t)row * C;
    for (int col = lane * 8; col < C; col += 32 * 8) {
        float acc[8];
        act_ld8(dst, at + col, acc);
        for (int j = p; j < n && sorted[j] == row; j++) {
            const int32_t i = position[j];
            const float f = scale ? scale[i] : 1.0f;
            float x[8];
            act_ld8(src, (size_t)i * C + col, x);
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[e] += f * x[e];
        }
        act_st8(dst, at + col, acc);
    }
}

/* 1 when rows of C elements can move eight elements an access: C a multiple of 8 and both
 * tensors 16-byte aligned (then every row start is). */
static int rows_by_eight(const void *a, const void *b, int C)
{
    return C % 8 == 0 && (uintptr_t)a % 16 == 0 && (uintptr_t)b % 16 == 0;
}

/* One warp a row, summed in double as the CPU does. */
template <typename ActT>
__global__ static void rows_dot_kernel(float *out, const int32_t *out_index, const void *a_,
                                       const int32_t *rows, const void *b_, int n, int C)
{
    const ActT *a = (const ActT *)a_, *b = (const ActT *)b_;
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (i >= n) return;
    const size_t ra = (size_t)rows[i] * C, rb = (size_t)i * C;
    double sum = 0.0;
    for (int j = lane; j < C; j += 32)
        sum += (double)act_ld(a, ra + j) * act_ld(b, rb + j);
    sum = warp_sum_d(sum);
    if (lane == 0) out[out_index[i]] = (float)sum;
}

static void gather_rows(const Backend *be, Act *dst, const Act *src, const int32_t *rows,
                        const float *scale, int n, int C)
{
    CudaContext *cx = cuda_context(be);
    const long long total = (long long)n * C;
    if (total <= 0) return;
    if (rows_by_eight(dst, src, C))
        LAUNCH_ACT(gather_rows8_kernel, ceil_div((long long)n * 32, 256), 256, 0, dst, src, rows,
                   scale, n, C);
    else
        LAUNCH_ACT(gather_rows_kernel, ceil_div(total, 256), 256, 0, dst, src, rows, scale, n, C);
}

static void scatter_add_rows(const Backend *be, Act *dst, const Act *src, const int32_t *rows,
                             const float *scale, int n, int C)
{
    CudaContext *cx = cuda_context(be);
    if (n <= 0 || C <= 0) return;
    size_t sort_bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, rows, (int32_t *)NULL,
                                              (const int32_t *)NULL, (int32_t *)NULL, n, 0, 32,
                                              cx->stream));
    /* scratch: sorted rows, positions in and out (each 256-byte aligned), CUB's temporary */
    const size_t vec = scratch_round((size_t)n * sizeof(int32_t));
    ScratchCut cut = {(unsigned char *)scratch_get(cx, 3 * vec + sort_bytes)};
    int32_t *sorted = (int32_t *)scratch_cut(&cut, vec), *order = (int32_t *)scratch_cut(&cut, vec);
    int32_t *position = (int32_t *)scratch_cut(&cut, vec);
    iota_kernel<<<ceil_div(n, 256), 256, 0, cx->stream>>>(order, n);
    launchCheck();
    cudaCheck(cub::DeviceRadixSort::SortPairs(cut.at, sort_bytes, rows, sorted, order, position, n,
                                              0, 32, cx->stream));
    if (rows_by_eight(dst, src, C))
        LAUNCH_ACT(scatter_add_rows8_kernel, ceil_div((long long)n * 32, 256), 256, 0, dst, src,
                   sorted, position, scale, n, C);
    else
        LAUNCH_ACT(scatter_add_rows_kernel, dim3(n, ceil_div(C, 256)), 256, 0, dst, src, sorted,
                   position, scale, n, C);
}

static void rows_dot(const Backend *be, float *out, const int32_t *out_index, const Act *a,
                     const int32_t *rows, const Act *b, int n, int C)
{
    CudaContext *cx = cuda_context(be);
    if (n <= 0) return;
    LAUNCH_ACT(rows_dot_kernel, ceil_div((long long)n * 32, 256), 256, 0, out, out_index, a, rows,
               b, n, C);
}
