/* mla.cuh: multi-head latent attention's ops (DeepSeek): copy_block, act_to_f32,
 * rope_block_forward / rope_block_backward (heads inside wider rows, rotate-half or interleaved
 * pairs) and attention_forward_dv / attention_backward_dv (q, k heads of Dqk, v heads of Dv, one kv
 * head per query head, an explicit score scale).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's CudaContext,
 * attention_fp32.cuh's tile sizes, delta kernel and allow_smem), so it is not a header to include
 * anywhere else. */

/* ---------------------------------------------------------------------------------------------
 * blocks of row-strided Act matrices: one thread an element, or eight where the shapes allow */

template <typename ActT>
__global__ static void copy_block_kernel(void *dst_, int ld_dst, const void *src_, int ld_src,
                                         int M, int W, int accumulate)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * W) return;
    const size_t i = idx / W, j = idx % W;
    const size_t d = i * ld_dst + j;
    const float x = act_ld(src, i * ld_src + j);
    act_st(dst, d, accumulate ? act_ld(dst, d) + x : x);
}

/* The same, eight elements a thread (W and both leading dimensions multiples of 8, both tensors
 * 16-byte aligned): 16-byte accesses, each element's arithmetic as above. */
template <typename ActT>
__global__ static void copy_block8_kernel(void *dst_, int ld_dst, const void *src_, int ld_src,
                                          int M, int W, int accumulate)
{
    ActT *dst = (ActT *)dst_;
    const ActT *src = (const ActT *)src_;
    const int W8 = W / 8;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * W8) return;
    const size_t i = idx / W8, j = (idx % W8) * 8;
    const size_t d = i * ld_dst + j;
    float x[8];
    act_ld8(src, i * ld_src + j, x);
    if (accumulate) {
        float y[8];
        act_ld8(dst, d, y);
#pragma unroll
        for (int e = 0; e < 8; e++)
            x[e] = y[e] + x[e];
    }
    act_st8(dst, d, x);
}

template <typename ActT>
__global__ static void act_to_f32_kernel(float *dst, const void *src_, int ld_src, int M, int W)
{
    const ActT *src = (const ActT *)src_;
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * W) return;
    const size_t i = idx / W, j = idx % W;
    dst[idx] = act_ld(src, i * ld_src + j);
}

static void copy_block(const Backend *be, Act *dst, int ld_dst, const Act *src, int ld_src, int M,
                       int W, int accumulate)
{
    CudaContext *cx = cuda_context(be);
    const long long n = (long long)M * W;
    if (n <= 0) return;
    if (W % 8 == 0 && ld_dst % 8 == 0 && ld_src % 8 == 0 && (uintptr_t)dst % 16 == 0 &&
        (uintptr_t)src % 16 == 0)
        LAUNCH_ACT(copy_block8_kernel, ceil_div(n / 8, 256), 256, 0, dst, ld_dst, src, ld_src, M, W,
                   accumulate);
    else
        LAUNCH_ACT(copy_block_kernel, ceil_div(n, 256), 256, 0, dst, ld_dst, src, ld_src, M, W,
                   accumulate);
}

static void act_to_f32(const Backend *be, float *dst, const Act *src, int ld_src, int M, int W)
{
    CudaContext *cx = cuda_context(be);
    const long long n = (long long)M * W;
    if (n > 0) LAUNCH_ACT(act_to_f32_kernel, ceil_div(n, 256), 256, 0, dst, src, ld_src, M, W);
}

/* ---------------------------------------------------------------------------------------------
 * rope of H heads of D dimensions inside rows: head h of token row r starts at r * ld_row +
 * h * ld_head; pair i is (i, i + D/2) (rotate-half) or (2i, 2i + 1) (interleaved). One thread a
 * pair; sign -1 applies the inverse rotation (backward). */

template <typename ActT>
__global__ static void rope_block_kernel(void *x_, int ld_row, int ld_head, const float *pos_cos,
                                         const float *pos_sin, int T, int H, int D, int interleave,
                                         long long total, float sign)
{
    ActT *x = (ActT *)x_;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int half = D / 2, i = (int)(idx % half);
    const long long rh = idx / half; /* row * H + h */
    const int h = (int)(rh % H);
    const long long row = rh / H;
    const int t = (int)(row % T);
    ActT *head = x + (size_t)row * ld_row + (size_t)h * ld_head;
    const size_t a = interleave ? 2 * (size_t)i : (size_t)i, b = a + (interleave ? 1 : half);
    const float c = pos_cos[(size_t)t * half + i], s = sign * pos_sin[(size_t)t * half + i];
    const float x1 = act_ld(head, a), x2 = act_ld(head, b);
    act_st(head, a, x1 * c - x2 * s);
    act_st(head, b, x2 * c + x1 * s);
}

static void rope_block_apply(CudaContext *cx, Act *x, int ld_row, int ld_head, const float *pos_cos,
                             const float *pos_sin, int B, int T, int H, int D, int interleave,
                             float sign)
{
    const long long total = (long long)B * T * H * (D / 2);
    if (total <= 0) return;
    LAUNCH_ACT(rope_block_kernel, ceil_div(total, 256), 256, 0, x, ld_row, ld_head, pos_cos,
               pos_sin, T, H, D, interleave, total, sign);
}

static void rope_block_forward(const Backend *be, Act *x, int ld_row, int ld_head,
                               const float *pos_cos, const float *pos_sin, int B, int T, int H,
                               int D, int interleave)
{
    CudaContext *cx = cuda_context(be);
    rope_block_apply(cx, x, ld_row, ld_head, pos_cos, pos_sin, B, T, H, D, interleave, 1.0f);
}

static void rope_block_backward(const Backend *be, Act *dx, int ld_row, int ld_head,
                                const float *pos_cos, const float *pos_sin, int B, int T, int H,
                                int D, int interleave)
{
    CudaContext *cx = cuda_context(be);
    rope_block_apply(cx, dx, ld_row, ld_head, pos_cos, pos_sin, B, T, H, D, interleave, -1.0f);
}

/* ---------------------------------------------------------------------------------------------
 * attention with q/k heads of Dk and v heads of Dv. In bf16 mode, unless the attention kind is
 * "simple", the tensor-core kernels of attention.cuh take (Dk, Dv) = (192, 128) (DeepSeek V2/V3)
 * and Dk = Dv = 64 or 128 (counted in attention_mma_calls). Otherwise attention_fp32.cuh's
 * flash-style fp32
 * kernels (one warp a row, tiles of ATT_TILE rows of the other side in shared memory, outputs in
 * registers, element d = lane + 32 i), with the two head sizes apart, H kv heads, the scale given,
 * and the Act tensors read and written as they lie (fp32 or bf16) with fp32 arithmetic. Head
 * sizes up to ATT_MAX_D each. Backward: dq by query row, then dk and dv by key row (disjoint
 * outputs, no atomics, the same bits every run). */

template <typename ActT>
__global__ static void attention_dv_forward_kernel(void *out_, float *lse, const void *q_,
                                                   const void *k_, const void *v_, int T, int H,
                                                   int Dk, int Dv, float scale)
{
    ActT *out = (ActT *)out_;
    const ActT *q = (const ActT *)q_, *k = (const ActT *)k_, *v = (const ActT *)v_;
    extern __shared__ float smem[];
    float *Ks = smem;                     /* [TILE][Dk+1] */
    float *Vs = Ks + ATT_TILE * (Dk + 1); /* [TILE][Dv] */
    float *Qs = Vs + ATT_TILE * Dv;       /* [WARPS][Dk] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    const int t_last = min(t0 + ATT_WARPS, T) - 1;
    const size_t kstride = (size_t)H * Dk, vstride = (size_t)H * Dv;
    const bool active = t < T;
    float *qrow = Qs + warp * Dk;
    if (active)
        for (int d = lane; d < Dk; d += 32)
            qrow[d] = act_ld(q, (size_t)(b * T + t) * kstride + (size_t)h * Dk + d);
    float acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        acc[i] = 0.0f;
    float running_max = -INFINITY, denom = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * Dk; idx += blockDim.x) {
            const int j = idx / Dk, d = idx % Dk, s = s0 + j;
            Ks[j * (Dk + 1) + d] =
                s < T ? act_ld(k, (size_t)(b * T + s) * kstride + (size_t)h * Dk + d) : 0.0f;
        }
        for (int idx = threadIdx.x; idx < ATT_TILE * Dv; idx += blockDim.x) {
            const int j = idx / Dv, d = idx % Dv, s = s0 + j;
            Vs[j * Dv + d] =
                s < T ? act_ld(v, (size_t)(b * T + s) * vstride + (size_t)h * Dv + d) : 0.0f;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        const int s = s0 + lane;
        float score = -INFINITY;
        if (s <= t) {
            float dot = 0.0f;
            for (int d = 0; d < Dk; d++)
                dot += qrow[d] * Ks[lane * (Dk + 1) + d];
            score = dot * scale;
        }
        const float new_max = fmaxf(running_max, warp_max(score)); /* key s0 <= t is valid */
        const float correction = expf(running_max - new_max);
        const float p = s <= t ? expf(score - new_max) : 0.0f;
        denom = denom * correction + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_SLOTS; i++)
            acc[i] *= correction;
        const int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < ATT_SLOTS; i++) {
                const int d = lane + 32 * i;
                if (d < Dv) acc[i] += pj * Vs[j * Dv + d];
            }
        }
        running_max = new_max;
    }
    if (!active) return;
    const float inv = 1.0f / denom;
    const size_t at = (size_t)(b * T + t) * vstride + (size_t)h * Dv;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        const int d = lane + 32 * i;
        if (d < Dv) act_st(out, at + d, acc[i] * inv);
    }
    if (lane == 0) lse[((size_t)b * H + h) * T + t] = running_max + logf(denom);
}

template <typename ActT>
__global__ static void attention_dv_dq_kernel(void *dq_, const void *dout_, const float *lse,
                                              const float *delta, const void *q_, const void *k_,
                                              const void *v_, int T, int H, int Dk, int Dv,
                                              float scale)
{
    ActT *dq = (ActT *)dq_;
    const ActT *dout = (const ActT *)dout_, *q = (const ActT *)q_, *k = (const ActT *)k_,
               *v = (const ActT *)v_;
    extern __shared__ float smem[];
    float *Ks = smem;                     /* [TILE][Dk+1] */
    float *Vs = Ks + ATT_TILE * (Dk + 1); /* [TILE][Dv+1] */
    float *Qs = Vs + ATT_TILE * (Dv + 1); /* [WARPS][Dk] */
    float *dOs = Qs + ATT_WARPS * Dk;     /* [WARPS][Dv] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    const int t_last = min(t0 + ATT_WARPS, T) - 1;
    const size_t kstride = (size_t)H * Dk, vstride = (size_t)H * Dv;
    const bool active = t < T;
    float *qrow = Qs + warp * Dk, *dorow = dOs + warp * Dv;
    float row_lse = 0.0f, row_delta = 0.0f;
    if (active) {
        for (int d = lane; d < Dk; d += 32)
            qrow[d] = act_ld(q, (size_t)(b * T + t) * kstride + (size_t)h * Dk + d);
        for (int d = lane; d < Dv; d += 32)
            dorow[d] = act_ld(dout, (size_t)(b * T + t) * vstride + (size_t)h * Dv + d);
        row_lse = lse[((size_t)b * H + h) * T + t];
        row_delta = delta[((size_t)b * H + h) * T + t];
    }
    float acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        acc[i] = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * Dk; idx += blockDim.x) {
            const int j = idx / Dk, d = idx % Dk, s = s0 + j;
            Ks[j * (Dk + 1) + d] =
                s < T ? act_ld(k, (size_t)(b * T + s) * kstride + (size_t)h * Dk + d) : 0.0f;
        }
        for (int idx = threadIdx.x; idx < ATT_TILE * Dv; idx += blockDim.x) {
            const int j = idx / Dv, d = idx % Dv, s = s0 + j;
            Vs[j * (Dv + 1) + d] =
                s < T ? act_ld(v, (size_t)(b * T + s) * vstride + (size_t)h * Dv + d) : 0.0f;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        const int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            float qk = 0.0f, dp = 0.0f;
            for (int d = 0; d < Dk; d++)
                qk += qrow[d] * Ks[lane * (Dk + 1) + d];
            for (int d = 0; d < Dv; d++)
                dp += dorow[d] * Vs[lane * (Dv + 1) + d];
            const float p = expf(qk * scale - row_lse);
            ds = p * (dp - row_delta) * scale;
        }
        const int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
            for (int i = 0; i < ATT_SLOTS; i++) {
                const int d = lane + 32 * i;
                if (d < Dk) acc[i] += dsj * Ks[j * (Dk + 1) + d];
            }
        }
    }
    if (!active) return;
    const size_t at = (size_t)(b * T + t) * kstride + (size_t)h * Dk;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        const int d = lane + 32 * i;
        if (d < Dk) act_st(dq, at + d, acc[i]);
    }
}

/* One warp per key row s of head h; the query rows t >= s of that head. */
template <typename ActT>
__global__ static void attention_dv_dkdv_kernel(void *dk_, void *dv_, const void *dout_,
                                                const float *lse, const float *delta,
                                                const void *q_, const void *k_, const void *v_,
                                                int T, int H, int Dk, int Dv, float scale)
{
    ActT *dk = (ActT *)dk_, *dv = (ActT *)dv_;
    const ActT *dout = (const ActT *)dout_, *q = (const ActT *)q_, *k = (const ActT *)k_,
               *v = (const ActT *)v_;
    extern __shared__ float smem[];
    float *Qs = smem;                      /* [TILE][Dk+1] */
    float *dOs = Qs + ATT_TILE * (Dk + 1); /* [TILE][Dv+1] */
    float *Ls = dOs + ATT_TILE * (Dv + 1); /* [TILE] lse */
    float *Ds = Ls + ATT_TILE;             /* [TILE] delta */
    float *Kw = Ds + ATT_TILE;             /* [WARPS][Dk] */
    float *Vw = Kw + ATT_WARPS * Dk;       /* [WARPS][Dv] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / H, h = blockIdx.y % H;
    const int s_first = blockIdx.x * ATT_WARPS, s = s_first + warp;
    const size_t kstride = (size_t)H * Dk, vstride = (size_t)H * Dv;
    const bool active = s < T;
    float *krow = Kw + warp * Dk, *vrow = Vw + warp * Dv;
    if (active) {
        for (int d = lane; d < Dk; d += 32)
            krow[d] = act_ld(k, (size_t)(b * T + s) * kstride + (size_t)h * Dk + d);
        for (int d = lane; d < Dv; d += 32)
            vrow[d] = act_ld(v, (size_t)(b * T + s) * vstride + (size_t)h * Dv + d);
    }
    float dk_acc[ATT_SLOTS], dv_acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        dk_acc[i] = dv_acc[i] = 0.0f;
    for (int t0 = s_first; t0 < T; t0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * Dk; idx += blockDim.x) {
            const int j = idx / Dk, d = idx % Dk, t = t0 + j;
            Qs[j * (Dk + 1) + d] =
                t < T ? act_ld(q, (size_t)(b * T + t) * kstride + (size_t)h * Dk + d) : 0.0f;
        }
        for (int idx = threadIdx.x; idx < ATT_TILE * Dv; idx += blockDim.x) {
            const int j = idx / Dv, d = idx % Dv, t = t0 + j;
            dOs[j * (Dv + 1) + d] =
                t < T ? act_ld(dout, (size_t)(b * T + t) * vstride + (size_t)h * Dv + d) : 0.0f;
        }
        if (threadIdx.x < ATT_TILE) {
            const int t = t0 + threadIdx.x;
            const size_t at = ((size_t)b * H + h) * T + t;
            Ls[threadIdx.x] = t < T ? lse[at] : 0.0f;
            Ds[threadIdx.x] = t < T ? delta[at] : 0.0f;
        }
        __syncthreads();
        if (!active || t0 + ATT_TILE - 1 < s) continue;
        const int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t >= s && t < T) {
            float qk = 0.0f, dp = 0.0f;
            for (int d = 0; d < Dk; d++)
                qk += Qs[lane * (Dk + 1) + d] * krow[d];
            for (int d = 0; d < Dv; d++)
                dp += dOs[lane * (Dv + 1) + d] * vrow[d];
            p = expf(qk * scale - Ls[lane]);
            ds = p * (dp - Ds[lane]) * scale;
        }
        for (int j = 0; j < ATT_TILE; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
            const float dsj = __shfl_sync(0xffffffffu, ds, j);
            if (pj == 0.0f && dsj == 0.0f) continue; /* masked or past the end (warp-uniform) */
#pragma unroll
            for (int i = 0; i < ATT_SLOTS; i++) {
                const int d = lane + 32 * i;
                if (d < Dk) dk_acc[i] += dsj * Qs[j * (Dk + 1) + d];
                if (d < Dv) dv_acc[i] += pj * dOs[j * (Dv + 1) + d];
            }
        }
    }
    if (!active) return;
    const size_t kat = (size_t)(b * T + s) * kstride + (size_t)h * Dk;
    const size_t vat = (size_t)(b * T + s) * vstride + (size_t)h * Dv;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        const int d = lane + 32 * i;
        if (d < Dk) act_st(dk, kat + d, dk_acc[i]);
        if (d < Dv) act_st(dv, vat + d, dv_acc[i]);
    }
}

static void attention_dv_check_shape(int Dk, int Dv)
{
    if (Dk <= 0 || Dv <= 0 || Dk > ATT_MAX_D || Dv > ATT_MAX_D) {
        fprintf(stderr,
                "dstrain: error: %s:%d: CUDA attention: q/k head size %d and v head size %d "
                "(each 1 to %d) not supported\n",
                __FILE__, __LINE__, Dk, Dv, ATT_MAX_D);
        exit(1);
    }
}

template <typename ActT>
static void attention_dv_forward_as(CudaContext *cx, Act *out, float *lse, const Act *q,
                                    const Act *k, const Act *v, int B, int T, int H, int Dk, int Dv,
                                    float scale)
{
    const size_t smem =
        (size_t)(ATT_TILE * (Dk + 1) + ATT_TILE * Dv + ATT_WARPS * Dk) * sizeof(float);
    allow_smem(attention_dv_forward_kernel<ActT>, smem);
    attention_dv_forward_kernel<ActT>
        <<<dim3(ceil_div(T, ATT_WARPS), B * H), ATT_WARPS * 32, smem, cx->stream>>>(
            out, lse, q, k, v, T, H, Dk, Dv, scale);
    launchCheck();
}

template <typename ActT>
static void attention_dv_backward_as(CudaContext *cx, Act *dq, Act *dk, Act *dv, const Act *dout,
                                     const float *delta, const float *lse, const Act *q,
                                     const Act *k, const Act *v, int B, int T, int H, int Dk,
                                     int Dv, float scale)
{
    const dim3 grid(ceil_div(T, ATT_WARPS), B * H);
    const size_t smem_dq =
        (size_t)(ATT_TILE * (Dk + 1) + ATT_TILE * (Dv + 1) + ATT_WARPS * (Dk + Dv)) * sizeof(float);
    allow_smem(attention_dv_dq_kernel<ActT>, smem_dq);
    attention_dv_dq_kernel<ActT><<<grid, ATT_WARPS * 32, smem_dq, cx->stream>>>(
        dq, dout, lse, delta, q, k, v, T, H, Dk, Dv, scale);
    launchCheck();
    const size_t smem_kv =
        (size_t)(ATT_TILE * (Dk + 1) + ATT_TILE * (Dv + 1) + 2 * ATT_TILE + ATT_WARPS * (Dk + Dv)) *
        sizeof(float);
    allow_smem(attention_dv_dkdv_kernel<ActT>, smem_kv);
    attention_dv_dkdv_kernel<ActT><<<grid, ATT_WARPS * 32, smem_kv, cx->stream>>>(
        dk, dv, dout, lse, delta, q, k, v, T, H, Dk, Dv, scale);
    launchCheck();
}

static void attention_forward_dv(const Backend *be, Act *out, float *lse, const Act *q,
                                 const Act *k, const Act *v, int B, int T, int H, int Dqk, int Dv,
                                 float scale)
{
    CudaContext *cx = cuda_context(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    if (cx->bf16 && cx->attention_kind != ATTENTION_SIMPLE &&
        cuda_mma_attention_forward_dv((__nv_bfloat16 *)out, lse, (const __nv_bfloat16 *)q,
                                      (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v,
                                      cx->attention_kind == ATTENTION_FLASH, B, T, H, Dqk, Dv,
                                      scale, cx->stream)) {
        cx->attention_flash_calls++;
        return;
    }
    attention_dv_check_shape(Dqk, Dv);
    if (cx->bf16)
        attention_dv_forward_as<__nv_bfloat16>(cx, out, lse, q, k, v, B, T, H, Dqk, Dv, scale);
    else
        attention_dv_forward_as<float>(cx, out, lse, q, k, v, B, T, H, Dqk, Dv, scale);
}

static void attention_backward_dv(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                                  const Act *out, const float *lse, const Act *q, const Act *k,
                                  const Act *v, int B, int T, int H, int Dqk, int Dv, float scale)
{
    CudaContext *cx = cuda_context(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    attention_dv_check_shape(Dqk, Dv);
    const long long rows = (long long)B * H * T;
    float *delta = (float *)scratch_get(cx, (size_t)rows * sizeof(float));
    /* delta[b, h, t] = dout[t] . out[t] over the v head: attention_fp32.cuh's kernel at D = Dv */
    LAUNCH_ACT(attention_delta_kernel, ceil_div(rows * 32, 256), 256, 0, delta, dout, out, B, T, H,
               Dv);
    if (cx->bf16 && cx->attention_kind != ATTENTION_SIMPLE &&
        cuda_mma_attention_backward_dv(
            (__nv_bfloat16 *)dq, (__nv_bfloat16 *)dk, (__nv_bfloat16 *)dv,
            (const __nv_bfloat16 *)dout, delta, lse, (const __nv_bfloat16 *)q,
            (const __nv_bfloat16 *)k, (const __nv_bfloat16 *)v,
            cx->attention_kind == ATTENTION_FLASH, B, T, H, Dqk, Dv, scale, cx->stream)) {
        cx->attention_flash_calls++;
        return;
    }
    if (cx->bf16)
        attention_dv_backward_as<__nv_bfloat16>(cx, dq, dk, dv, dout, delta, lse, q, k, v, B, T, H,
                                                Dqk, Dv, scale);
    else
        attention_dv_backward_as<float>(cx, dq, dk, dv, dout, delta, lse, q, k, v, B, T, H, Dqk, Dv,
                                        scale);
}
