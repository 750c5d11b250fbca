/* attention_fp32.cuh: attention_forward / attention_backward of the backend: the fp32 flash-style
 * kernels (kind "simple"), the cuda.attention option, and the hand-over to the tensor-core
 * kernels of attention.cuh (wgmma on Hopper, mma.sync elsewhere).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * attention, flash-style in fp32. A block of ATT_WARPS warps owns ATT_WARPS consecutive rows
 * (query rows forward and for dq, key rows for dk/dv) of one (batch, head); tiles of ATT_TILE
 * rows of the other side are staged in shared memory, one lane per tile row computes a score,
 * and each lane accumulates the output elements d = lane + 32 i of its warp's row in registers.
 * Shared rows read by lane are padded to D + 1 floats so the 32 lanes hit 32 banks. Head dims
 * up to ATT_MAX_D. Backward runs in two passes with disjoint outputs (dq by query row, then
 * dk and dv by key row over the query heads of the group in order), so no atomics. */

#define ATT_WARPS 8
#define ATT_TILE 32
#define ATT_MAX_D 256
#define ATT_SLOTS (ATT_MAX_D / 32)

__global__ static void attention_forward_kernel(float *out, float *lse, const float *q,
                                                const float *k, const float *v, int T, int H,
                                                int KVH, int D, float scale)
{
    extern __shared__ float smem[];
    float *Ks = smem;                    /* [TILE][D+1] */
    float *Vs = Ks + ATT_TILE * (D + 1); /* [TILE][D] */
    float *Qs = Vs + ATT_TILE * D;       /* [WARPS][D] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / H, h = blockIdx.y % H, kvh = h / (H / KVH);
    const int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    const int t_last = min(t0 + ATT_WARPS, T) - 1;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const bool active = t < T;
    float *qrow = Qs + warp * D;
    if (active)
        for (int d = lane; d < D; d += 32)
            qrow[d] = q[(size_t)(b * T + t) * qstride + h * D + d];
    float acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        acc[i] = 0.0f;
    float running_max = -INFINITY, denom = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * D; idx += blockDim.x) {
            int j = idx / D, d = idx % D, s = s0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t at = (size_t)(b * T + s) * kvstride + kvh * D + d;
                kv = k[at];
                vv = v[at];
            }
            Ks[j * (D + 1) + d] = kv;
            Vs[j * D + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        const int s = s0 + lane;
        float score = -INFINITY;
        if (s <= t) {
            float dot = 0.0f;
            for (int d = 0; d < D; d++)
                dot += qrow[d] * Ks[lane * (D + 1) + d];
            score = dot * scale;
        }
        float new_max = fmaxf(running_max, warp_max(score)); /* finite: key s0 <= t is valid */
        float correction = expf(running_max - new_max);
        float p = s <= t ? expf(score - new_max) : 0.0f;
        denom = denom * correction + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATT_SLOTS; i++)
            acc[i] *= correction;
        const int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < ATT_SLOTS; i++) {
                int d = lane + 32 * i;
                if (d < D) acc[i] += pj * Vs[j * D + d];
            }
        }
        running_max = new_max;
    }
    if (!active) return;
    float inv = 1.0f / denom;
    float *orow = out + (size_t)(b * T + t) * qstride + h * D;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        int d = lane + 32 * i;
        if (d < D) orow[d] = acc[i] * inv;
    }
    if (lane == 0) lse[((size_t)b * H + h) * T + t] = running_max + logf(denom);
}

/* delta[b, h, t] = dout[t] . out[t] (one warp per row), from Act dout and out */
template <typename ActT>
__global__ static void attention_delta_kernel(float *delta, const void *dout_, const void *out_,
                                              int B, int T, int H, int D)
{
    const ActT *dout = (const ActT *)dout_, *out = (const ActT *)out_;
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= (long long)B * H * T) return;
    int t = (int)(row % T), h = (int)((row / T) % H), b = (int)(row / ((long long)T * H));
    size_t at = (size_t)(b * T + t) * H * D + (size_t)h * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
        s += act_ld(dout, at + d) * act_ld(out, at + d);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

__global__ static void attention_dq_kernel(float *dq, const float *dout, const float *lse,
                                           const float *delta, const float *q, const float *k,
                                           const float *v, int T, int H, int KVH, int D,
                                           float scale)
{
    extern __shared__ float smem[];
    float *Ks = smem;                    /* [TILE][D+1] */
    float *Vs = Ks + ATT_TILE * (D + 1); /* [TILE][D+1] */
    float *Qs = Vs + ATT_TILE * (D + 1); /* [WARPS][D] */
    float *dOs = Qs + ATT_WARPS * D;     /* [WARPS][D] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / H, h = blockIdx.y % H, kvh = h / (H / KVH);
    const int t0 = blockIdx.x * ATT_WARPS, t = t0 + warp;
    const int t_last = min(t0 + ATT_WARPS, T) - 1;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const bool active = t < T;
    float *qrow = Qs + warp * D, *dorow = dOs + warp * D;
    float row_lse = 0.0f, row_delta = 0.0f;
    if (active) {
        size_t at = (size_t)(b * T + t) * qstride + h * D;
        for (int d = lane; d < D; d += 32) {
            qrow[d] = q[at + d];
            dorow[d] = dout[at + d];
        }
        row_lse = lse[((size_t)b * H + h) * T + t];
        row_delta = delta[((size_t)b * H + h) * T + t];
    }
    float acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        acc[i] = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += ATT_TILE) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < ATT_TILE * D; idx += blockDim.x) {
            int j = idx / D, d = idx % D, s = s0 + j;
            float kv = 0.0f, vv = 0.0f;
            if (s < T) {
                size_t at = (size_t)(b * T + s) * kvstride + kvh * D + d;
                kv = k[at];
                vv = v[at];
            }
            Ks[j * (D + 1) + d] = kv;
            Vs[j * (D + 1) + d] = vv;
        }
        __syncthreads();
        if (!active || s0 > t) continue;
        const int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            float qk = 0.0f, dp = 0.0f;
            for (int d = 0; d < D; d++) {
                qk += qrow[d] * Ks[lane * (D + 1) + d];
                dp += dorow[d] * Vs[lane * (D + 1) + d];
            }
            float p = expf(qk * scale - row_lse);
            ds = p * (dp - row_delta) * scale;
        }
        const int jn = min(ATT_TILE, t - s0 + 1);
        for (int j = 0; j < jn; j++) {
            float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
            for (int i = 0; i < ATT_SLOTS; i++) {
                int d = lane + 32 * i;
                if (d < D) acc[i] += dsj * Ks[j * (D + 1) + d];
            }
        }
    }
    if (!active) return;
    float *dqrow = dq + (size_t)(b * T + t) * qstride + h * D;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        int d = lane + 32 * i;
        if (d < D) dqrow[d] = acc[i];
    }
}

/* One warp per key row s of kv head kvh; query rows t >= s of every head in the group. */
__global__ static void attention_dkdv_kernel(float *dk, float *dv, const float *dout,
                                             const float *lse, const float *delta, const float *q,
                                             const float *k, const float *v, int T, int H, int KVH,
                                             int D, float scale)
{
    extern __shared__ float smem[];
    float *Qs = smem;                     /* [TILE][D+1] */
    float *dOs = Qs + ATT_TILE * (D + 1); /* [TILE][D+1] */
    float *Ls = dOs + ATT_TILE * (D + 1); /* [TILE] lse */
    float *Ds = Ls + ATT_TILE;            /* [TILE] delta */
    float *Kw = Ds + ATT_TILE;            /* [WARPS][D] */
    float *Vw = Kw + ATT_WARPS * D;       /* [WARPS][D] */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.y / KVH, kvh = blockIdx.y % KVH, group = H / KVH;
    const int s_first = blockIdx.x * ATT_WARPS, s = s_first + warp;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const bool active = s < T;
    float *krow = Kw + warp * D, *vrow = Vw + warp * D;
    if (active) {
        size_t at = (size_t)(b * T + s) * kvstride + kvh * D;
        for (int d = lane; d < D; d += 32) {
            krow[d] = k[at + d];
            vrow[d] = v[at + d];
        }
    }
    float dk_acc[ATT_SLOTS], dv_acc[ATT_SLOTS];
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++)
        dk_acc[i] = dv_acc[i] = 0.0f;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int t0 = s_first; t0 < T; t0 += ATT_TILE) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < ATT_TILE * D; idx += blockDim.x) {
                int j = idx / D, d = idx % D, t = t0 + j;
                float qv = 0.0f, dov = 0.0f;
                if (t < T) {
                    size_t at = (size_t)(b * T + t) * qstride + (size_t)h * D + d;
                    qv = q[at];
                    dov = dout[at];
                }
                Qs[j * (D + 1) + d] = qv;
                dOs[j * (D + 1) + d] = dov;
            }
            if (threadIdx.x < ATT_TILE) {
                int t = t0 + threadIdx.x;
                size_t at = ((size_t)b * H + h) * T + t;
                Ls[threadIdx.x] = t < T ? lse[at] : 0.0f;
                Ds[threadIdx.x] = t < T ? delta[at] : 0.0f;
            }
            __syncthreads();
            if (!active || t0 + ATT_TILE - 1 < s) continue;
            const int t = t0 + lane;
            float p = 0.0f, ds = 0.0f;
            if (t >= s && t < T) {
                float qk = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    qk += Qs[lane * (D + 1) + d] * krow[d];
                    dp += dOs[lane * (D + 1) + d] * vrow[d];
                }
                p = expf(qk * scale - Ls[lane]);
                ds = p * (dp - Ds[lane]) * scale;
            }
            for (int j = 0; j < ATT_TILE; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                float dsj = __shfl_sync(0xffffffffu, ds, j);
                if (pj == 0.0f && dsj == 0.0f) continue; /* masked or past the end (warp-uniform) */
#pragma unroll
                for (int i = 0; i < ATT_SLOTS; i++) {
                    int d = lane + 32 * i;
                    if (d < D) {
                        dk_acc[i] += dsj * Qs[j * (D + 1) + d];
                        dv_acc[i] += pj * dOs[j * (D + 1) + d];
                    }
                }
            }
        }
    }
    if (!active) return;
    size_t at = (size_t)(b * T + s) * kvstride + kvh * D;
#pragma unroll
    for (int i = 0; i < ATT_SLOTS; i++) {
        int d = lane + 32 * i;
        if (d < D) {
            dk[at + d] = dk_acc[i];
            dv[at + d] = dv_acc[i];
        }
    }
}

static void attention_check_shape(int H, int KVH, int D)
{
    if (D > ATT_MAX_D || D <= 0 || KVH <= 0 || H % KVH != 0) {
        fprintf(stderr,
                "dstrain: error: %s:%d: CUDA attention: head_dim %d (at most %d), heads %d, "
                "kv heads %d not supported\n",
                __FILE__, __LINE__, D, ATT_MAX_D, H, KVH);
        exit(1);
    }
}

/* Kernels asking for more than the default 48 KiB of shared memory must say so once. */
template <typename Kernel> static void allow_smem(Kernel kernel, size_t bytes)
{
    if (bytes > 48 * 1024)
        cudaCheck(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* The cuda.attention option (cuda_backend_create). */
static int attention_kind_parse(const char *mode, int *kind)
{
    static const char *const names[] = {"flash", "simple", "mma"}; /* attention_kind's values */
    for (int i = 0; i < 3; i++)
        if (strcmp(mode, names[i]) == 0) return *kind = i, DS_OK;
    return ds_error(DS_ERR_INPUT, "cuda.attention: \"%s\": expected flash, mma or simple", mode);
}

extern "C" long long cuda_attention_flash_calls(const Backend *be)
{
    return cuda_context(be)->attention_flash_calls;
}

static void attention_forward_f32(CudaContext *cx, float *out, float *lse, const float *q,
                                  const float *k, const float *v, int B, int T, int H, int KVH,
                                  int D)
{
    size_t smem = (size_t)(ATT_TILE * (D + 1) + ATT_TILE * D + ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_forward_kernel, smem);
    attention_forward_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), ATT_WARPS * 32, smem,
                               cx->stream>>>(out, lse, q, k, v, T, H, KVH, D,
                                             1.0f / sqrtf((float)D));
    launchCheck();
}

static void attention_backward_f32(CudaContext *cx, float *dq, float *dk, float *dv,
                                   const float *dout, const float *delta, const float *lse,
                                   const float *q, const float *k, const float *v, int B, int T,
                                   int H, int KVH, int D)
{
    const float scale = 1.0f / sqrtf((float)D);
    size_t smem_dq = (size_t)(2 * ATT_TILE * (D + 1) + 2 * ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_dq_kernel, smem_dq);
    attention_dq_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), ATT_WARPS * 32, smem_dq,
                          cx->stream>>>(dq, dout, lse, delta, q, k, v, T, H, KVH, D, scale);
    launchCheck();
    size_t smem_kv =
        (size_t)(2 * ATT_TILE * (D + 1) + 2 * ATT_TILE + 2 * ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_dkdv_kernel, smem_kv);
    attention_dkdv_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * KVH), ATT_WARPS * 32, smem_kv,
                            cx->stream>>>(dk, dv, dout, lse, delta, q, k, v, T, H, KVH, D, scale);
    launchCheck();
}

/* Carves consecutive 256-byte aligned pieces out of one scratch allocation. */
typedef struct ScratchCut {
    unsigned char *at;
} ScratchCut;

static size_t scratch_round(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

static void *scratch_cut(ScratchCut *c, size_t bytes)
{
    void *p = c->at;
    c->at += scratch_round(bytes);
    return p;
}

static void attention_forward(const Backend *be, Act *out, float *lse, const Act *q, const Act *k,
                              const Act *v, int B, int T, int H, int KVH, int D)
{
    CudaContext *cx = cuda_context(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    attention_check_shape(H, KVH, D);
    if (cx->attention_kind != ATTENTION_SIMPLE && cuda_mma_attention_suits(B, T, H, KVH, D)) {
        const size_t workspace = cuda_mma_attention_workspace(B, T, H, KVH, D, 0, cx->bf16);
        if (cuda_mma_attention_forward(
                out, lse, q, k, v, cx->bf16, cx->attention_kind == ATTENTION_FLASH,
                workspace ? scratch_get(cx, workspace) : NULL, B, T, H, KVH, D, cx->stream)) {
            cx->attention_flash_calls++;
            return;
        }
    }
    if (!cx->bf16) {
        attention_forward_f32(cx, (float *)out, lse, (const float *)q, (const float *)k,
                              (const float *)v, B, T, H, KVH, D);
        return;
    }
    /* bf16 activations into kernels that read fp32: widened copies in scratch */
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    ScratchCut cut = {
        (unsigned char *)scratch_get(cx, scratch_round(qn * 4) * 2 + scratch_round(kvn * 4) * 2)};
    float *q32 = (float *)scratch_cut(&cut, qn * 4), *out32 = (float *)scratch_cut(&cut, qn * 4);
    float *k32 = (float *)scratch_cut(&cut, kvn * 4), *v32 = (float *)scratch_cut(&cut, kvn * 4);
    act_widen(cx, q32, q, qn);
    act_widen(cx, k32, k, kvn);
    act_widen(cx, v32, v, kvn);
    attention_forward_f32(cx, out32, lse, q32, k32, v32, B, T, H, KVH, D);
    act_narrow(cx, out, out32, qn);
}

static void attention_backward(const Backend *be, Act *dq, Act *dk, Act *dv, const Act *dout,
                               const Act *out, const float *lse, const Act *q, const Act *k,
                               const Act *v, int B, int T, int H, int KVH, int D)
{
    CudaContext *cx = cuda_context(be);
    if (B <= 0 || T <= 0 || H <= 0) return;
    attention_check_shape(H, KVH, D);
    const long long rows = (long long)B * H * T;
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    const int mma =
        cx->attention_kind != ATTENTION_SIMPLE && cuda_mma_attention_suits(B, T, H, KVH, D);
    /* scratch: delta, then the mma kernels' workspace, or fp32 copies of the Act tensors for the
     * fp32 kernels in bf16 mode (dq, dk, dv, dout, q, k, v) */
    const size_t workspace = mma ? cuda_mma_attention_workspace(B, T, H, KVH, D, 1, cx->bf16) : 0;
    const size_t widened = cx->bf16 ? 3 * scratch_round(qn * 4) + 4 * scratch_round(kvn * 4) : 0;
    ScratchCut cut = {(unsigned char *)scratch_get(
        cx, scratch_round((size_t)rows * 4) + (workspace > widened ? workspace : widened))};
    float *delta = (float *)scratch_cut(&cut, (size_t)rows * 4);
    LAUNCH_ACT(attention_delta_kernel, ceil_div(rows * 32, 256), 256, 0, delta, dout, out, B, T, H,
               D);
    if (mma &&
        cuda_mma_attention_backward(dq, dk, dv, dout, delta, lse, q, k, v, cx->bf16,
                                    cx->attention_kind == ATTENTION_FLASH,
                                    workspace ? cut.at : NULL, B, T, H, KVH, D, cx->stream)) {
        cx->attention_flash_calls++;
        return;
    }
    if (!cx->bf16) {
        attention_backward_f32(cx, (float *)dq, (float *)dk, (float *)dv, (const float *)dout,
                               delta, lse, (const float *)q, (const float *)k, (const float *)v, B,
                               T, H, KVH, D);
        return;
    }
    float *dq32 = (float *)scratch_cut(&cut, qn * 4), *dout32 = (float *)scratch_cut(&cut, qn * 4);
    float *q32 = (float *)scratch_cut(&cut, qn * 4);
    float *dk32 = (float *)scratch_cut(&cut, kvn * 4), *dv32 = (float *)scratch_cut(&cut, kvn * 4);
    float *k32 = (float *)scratch_cut(&cut, kvn * 4), *v32 = (float *)scratch_cut(&cut, kvn * 4);
    act_widen(cx, dout32, dout, qn);
    act_widen(cx, q32, q, qn);
    act_widen(cx, k32, k, kvn);
    act_widen(cx, v32, v, kvn);
    attention_backward_f32(cx, dq32, dk32, dv32, dout32, delta, lse, q32, k32, v32, B, T, H, KVH,
                           D);
    act_narrow(cx, dq, dq32, qn);
    act_narrow(cx, dk, dk32, kvn);
    act_narrow(cx, dv, dv32, kvn);
}
