/* attention_mma_fwd.cu: causal attention forward with grouped-query heads on the bf16 tensor
 * cores through mma.sync.m16n8k16 (FlashAttention-2 structure), for head_dim 64 and 128, and for
 * q/k heads of 192 with v heads of 128 (DeepSeek's latent attention: the kernel is templated on
 * the two head sizes, DQK and DV): the CUDA backend's forward wherever the wgmma kernels of
 * attention_wgmma.cu do not run (devices other than Hopper, head_dim 64,
 * cuda.attention: mma), to which it hands v heads of 128 on Hopper. Also here: the bf16
 * staging that the mma.sync and wgmma kernels read.
 *
 * In bf16 mode the backend's q, k, v are bf16 already and the output is written as bf16; fp32
 * q, k, v (fp32 activations) are rounded to bf16 once per call into a workspace (the same
 * rounding the kernels used to apply tile by tile, so the same bits, but each element is read
 * once instead of once per query tile) and the output is fp32. The kernel streams bf16 tiles with
 * cp.async into a double buffer, so the next K and V tiles arrive while this one is multiplied. The
 * scores, the online softmax, P and the output accumulators never leave the registers; fragments
 * come from shared memory by ldmatrix (V through .trans, so it is staged row-major as it lies in
 * memory). Statistics and sums are fp32; no atomics, so a run repeats bit for bit.
 *
 * Layout (kernels/ops.h): q [B*T, H*DQK], out [B*T, H*DV]; k [B*T, KVH*DQK], v [B*T, KVH*DV]
 * (KVH = H in the latent attention); head h reads kv head h/(H/KVH); the score scale given
 * (1/sqrt(D) for attention_forward);
 * lse [B, H, T] natural log of the row sums of exp(scaled scores). Grid (B*H, query tiles of 128,
 * the longest rows first), 8 warps; warp w owns query rows w*16 .. w*16+15 and walks the key
 * tiles of 64 up to the one holding its last row (the only one it masks), so each row sums the
 * same products in the same order whatever the tile height. Rows at or past T are zeros and
 * never written. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention.cuh"
#include "attention_tiles.cuh"
#include "cuda_common.cuh"

#define MF_ROWS 128 /* query rows of a block */
#define MF_KEYS 64  /* key rows of a tile */
#define MF_WARPS (MF_ROWS / 16)
#define MF_THREADS (MF_WARPS * 32)

/* Shared memory for q/k heads of DQK and v heads of DV: Q [128][DQK+8], K [2][64][DQK+8] and
 * V [2][64][DV+8] bf16 (Q once, K and V twice each). */
template <int DQK, int DV> struct MfSmem {
    static constexpr int LDQ = DQK + 8, LDV = DV + 8;
    static constexpr size_t Q = (size_t)MF_ROWS * LDQ * 2;
    static constexpr size_t K = (size_t)MF_KEYS * LDQ * 2; /* one K tile */
    static constexpr size_t V = (size_t)MF_KEYS * LDV * 2; /* one V tile */
    static constexpr size_t BYTES = Q + 2 * K + 2 * V;
    /* blocks a multiprocessor holds (228 KiB of shared memory, 1 KiB of it reserved a block):
     * what the registers are budgeted for */
    static constexpr int BLOCKS = 2 * (BYTES + 1024) <= 228 * 1024 ? 2 : 1;
    static_assert(Q % 16 == 0 && K % 16 == 0 && V % 16 == 0, "regions stay 16-byte aligned");
};

template <int DQK, int DV, typename O>
__global__ static void __launch_bounds__(MF_THREADS, (MfSmem<DQK, DV>::BLOCKS))
    mf_forward_kernel(O *out, float *lse, const at_bf16 *q, const at_bf16 *k, const at_bf16 *v,
                      int T, int H, int KVH, float scale_log2)
{
    typedef MfSmem<DQK, DV> S;
    constexpr int LDQ = S::LDQ, LDV = S::LDV, NT = MF_KEYS / 8, NO = DV / 8;
    extern __shared__ __align__(16) unsigned char mf_smem[];
    at_bf16 *Qs = reinterpret_cast<at_bf16 *>(mf_smem);
    at_bf16 *Ks = reinterpret_cast<at_bf16 *>(mf_smem + S::Q);            /* [2][64][LDQ] */
    at_bf16 *Vs = reinterpret_cast<at_bf16 *>(mf_smem + S::Q + 2 * S::K); /* [2][64][LDV] */

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int q0 = (gridDim.y - 1 - blockIdx.y) * MF_ROWS, r0 = warp * 16;
    const int t_lo = q0 + r0 + g, t_hi = t_lo + 8; /* this thread's two query rows */
    const size_t qstride = (size_t)H * DQK, kstride = (size_t)KVH * DQK;
    const size_t ostride = (size_t)H * DV, vstride = (size_t)KVH * DV;
    const at_bf16 *kbase = k + (size_t)b * T * kstride + (size_t)kvh * DQK;
    const at_bf16 *vbase = v + (size_t)b * T * vstride + (size_t)kvh * DV;
    /* key tiles of the block, and of this warp: up to the one holding its last live row */
    const int tiles = (min(q0 + MF_ROWS, T) + MF_KEYS - 1) / MF_KEYS;
    const int warp_tiles = q0 + r0 < T ? (min(q0 + r0 + 16, T) + MF_KEYS - 1) / MF_KEYS : 0;

    at_load_tile<DQK, MF_ROWS, MF_THREADS>(
        Qs, q + (size_t)b * T * qstride + (size_t)h * DQK + (size_t)q0 * qstride, qstride, T - q0);
    at_load_tile<DQK, MF_KEYS, MF_THREADS>(Ks, kbase, kstride, T);
    at_load_tile<DV, MF_KEYS, MF_THREADS>(Vs, vbase, vstride, T);
    at_cp_commit();

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY; /* running max, log2 units */
    float l_lo = 0.0f, l_hi = 0.0f;           /* this thread's part of the row sums */
    const int lane_b = at_lane_b(lane, LDQ), lane_v = at_lane_a(lane, LDV);
    const at_bf16 *qa_p = Qs + r0 * LDQ + at_lane_a(lane, LDQ);

    for (int kt = 0; kt < tiles; kt++) {
        if (kt + 1 < tiles) { /* the next tile into the other buffer, freed at the end of kt-1 */
            const int k1 = (kt + 1) * MF_KEYS, nb = (kt + 1) & 1;
            at_load_tile<DQK, MF_KEYS, MF_THREADS>(Ks + nb * MF_KEYS * LDQ,
                                                   kbase + (size_t)k1 * kstride, kstride, T - k1);
            at_load_tile<DV, MF_KEYS, MF_THREADS>(Vs + nb * MF_KEYS * LDV,
                                                  vbase + (size_t)k1 * vstride, vstride, T - k1);
        }
        at_cp_commit();
        at_cp_wait<1>(); /* tile kt (and Q) has landed for this thread ... */
        __syncthreads(); /* ... and for every thread */

        if (kt < warp_tiles) {
            const int k0 = kt * MF_KEYS;
            const at_bf16 *Kt = Ks + (kt & 1) * MF_KEYS * LDQ;
            const at_bf16 *Vt = Vs + (kt & 1) * MF_KEYS * LDV;
            float s[NT][4];
#pragma unroll
            for (int j = 0; j < NT; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++) {
                uint32_t a[4];
                at_ldsm4(a, qa_p + kk * 16);
#pragma unroll
                for (int j = 0; j < NT; j += 2) {
                    uint32_t bb[4];
                    at_ldsm4(bb, Kt + lane_b + j * 8 * LDQ + kk * 16);
                    at_mma(s[j], a, bb[0], bb[1]);
                    at_mma(s[j + 1], a, bb[2], bb[3]);
                }
            }
            float mx_lo = -INFINITY, mx_hi = -INFINITY;
            const bool diagonal = kt == warp_tiles - 1; /* the only tile with keys past a row */
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int key = k0 + j * 8 + 2 * c;
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    s[j][e] = diagonal && key + e > t_lo ? -INFINITY : s[j][e] * scale_log2;
                    s[j][2 + e] = diagonal && key + e > t_hi ? -INFINITY : s[j][2 + e] * scale_log2;
                    mx_lo = fmaxf(mx_lo, s[j][e]);
                    mx_hi = fmaxf(mx_hi, s[j][2 + e]);
                }
            }
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
            mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
            mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
            /* key 0 is in tile 0, so the max is finite from the first tile on, for every row
               below T; a row past T (zeros, never written) has no masked key either */
            const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
            const float corr_lo = exp2f(m_lo - mn_lo), corr_hi = exp2f(m_hi - mn_hi);
            m_lo = mn_lo, m_hi = mn_hi;
            float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                s[j][0] = exp2f(s[j][0] - mn_lo), s[j][1] = exp2f(s[j][1] - mn_lo);
                s[j][2] = exp2f(s[j][2] - mn_hi), s[j][3] = exp2f(s[j][3] - mn_hi);
                sum_lo += s[j][0] + s[j][1];
                sum_hi += s[j][2] + s[j][3];
            }
            l_lo = l_lo * corr_lo + sum_lo;
            l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
            for (int n = 0; n < NO; n++) {
                o[n][0] *= corr_lo, o[n][1] *= corr_lo;
                o[n][2] *= corr_hi, o[n][3] *= corr_hi;
            }
            at_mma_c_tile<DV, MF_KEYS>(o, s, Vt, lane_v, LDV); /* O += P V */
        }
        __syncthreads(); /* every warp is done with this buffer before it is refilled */
    }

    if (warp_tiles == 0) return;
    /* the row sums over the quad of threads that share a row */
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
    O *dst_lo = out + ((size_t)b * T + t_lo) * ostride + (size_t)h * DV + 2 * c;
    O *dst_hi = dst_lo + 8 * ostride;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        if (t_lo < T) at_store2(dst_lo + n * 8, o[n][0] * inv_lo, o[n][1] * inv_lo);
        if (t_hi < T) at_store2(dst_hi + n * 8, o[n][2] * inv_hi, o[n][3] * inv_hi);
    }
    if (c == 0) {
        float *l = lse + ((size_t)b * H + h) * T;
        if (t_lo < T) l[t_lo] = (m_lo + log2f(l_lo)) * AT_LN2;
        if (t_hi < T) l[t_hi] = (m_hi + log2f(l_hi)) * AT_LN2;
    }
}

/* ---------------------------------------------------------------------------------------------
 * bf16 staging, shared with attention_mma_bwd.cu */

__global__ static void mf_round_kernel(at_bf16 *dst, const float *src, size_t n4)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
         i += (size_t)gridDim.x * blockDim.x) {
        const float4 x = reinterpret_cast<const float4 *>(src)[i];
        __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(dst) + 2 * i;
        d[0] = __floats2bfloat162_rn(x.x, x.y);
        d[1] = __floats2bfloat162_rn(x.z, x.w);
    }
}

extern "C" void cuda_mma_attention_round(__nv_bfloat16 *dst, const float *src, size_t n,
                                         cudaStream_t stream)
{
    const size_t n4 = n / 4; /* n is a multiple of 64 (D is 64 or 128) */
    const int blocks = (int)(n4 < (size_t)132 * 32 * 256 ? ceil_div((long long)n4, 256) : 132 * 32);
    mf_round_kernel<<<blocks, 256, 0, stream>>>(dst, src, n4);
    cudaCheck(cudaGetLastError());
}

static int mf_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

static size_t mf_round_up(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

extern "C" int cuda_mma_attention_suits(int B, int T, int H, int KVH, int D)
{
    if (D != 64 && D != 128) return 0;
    if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || H % KVH != 0) return 0;
    return (long long)B * H <= INT32_MAX && (T + 63) / 64 <= 65535;
}

extern "C" size_t cuda_mma_attention_workspace(int B, int T, int H, int KVH, int D, int backward,
                                               int bf16)
{
    if (bf16 || !cuda_mma_attention_suits(B, T, H, KVH, D)) return 0;
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    return mf_round_up(qn * 2) * (backward ? 2 : 1) + 2 * mf_round_up(kvn * 2);
}

extern "C" void cuda_mma_attention_stage(__nv_bfloat16 **qb, __nv_bfloat16 **kb, __nv_bfloat16 **vb,
                                         void *workspace, const float *q, const float *k,
                                         const float *v, int B, int T, int H, int KVH, int D,
                                         cudaStream_t stream)
{
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    unsigned char *w = (unsigned char *)workspace;
    *qb = (__nv_bfloat16 *)w;
    *kb = (__nv_bfloat16 *)(w + mf_round_up(qn * 2));
    *vb = (__nv_bfloat16 *)(w + mf_round_up(qn * 2) + mf_round_up(kvn * 2));
    cuda_mma_attention_round(*qb, q, qn, stream);
    cuda_mma_attention_round(*kb, k, kvn, stream);
    cuda_mma_attention_round(*vb, v, kvn, stream);
}

/* 1 when this device holds the kernel's tiles for these head sizes (asked once per output type). */
template <int DQK, int DV, typename O> static int mf_ready(void)
{
    static int ready = -1; /* -1 unknown, 0 the device cannot hold the tiles, 1 ready */
    if (ready < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready = MfSmem<DQK, DV>::BYTES <= (size_t)optin;
        if (ready)
            cudaCheck(cudaFuncSetAttribute(mf_forward_kernel<DQK, DV, O>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)MfSmem<DQK, DV>::BYTES));
    }
    return ready;
}

template <int DQK, int DV, typename O>
static int mf_forward_launch(O *out, float *lse, const at_bf16 *q, const at_bf16 *k,
                             const at_bf16 *v, int B, int T, int H, int KVH, float scale_log2,
                             cudaStream_t stream)
{
    if (!mf_ready<DQK, DV, O>()) return 0;
    dim3 grid(B * H, ceil_div(T, MF_ROWS));
    mf_forward_kernel<DQK, DV, O><<<grid, MF_THREADS, MfSmem<DQK, DV>::BYTES, stream>>>(
        out, lse, q, k, v, T, H, KVH, scale_log2);
    cudaCheck(cudaGetLastError());
    return 1;
}

template <typename O>
static int mf_forward_as(O *out, float *lse, const at_bf16 *q, const at_bf16 *k, const at_bf16 *v,
                         int wgmma, int B, int T, int H, int KVH, int D, cudaStream_t stream)
{
    if (wgmma &&
        cuda_wgmma_attention_forward(out, sizeof(O) == 2, lse, q, k, v, B, T, H, KVH, D, stream))
        return 1;
    const float scale_log2 = AT_LOG2E / sqrtf((float)D);
    return D == 64
               ? mf_forward_launch<64, 64, O>(out, lse, q, k, v, B, T, H, KVH, scale_log2, stream)
               : mf_forward_launch<128, 128, O>(out, lse, q, k, v, B, T, H, KVH, scale_log2,
                                                stream);
}

extern "C" int cuda_mma_attention_forward(void *out, float *lse, const void *q, const void *k,
                                          const void *v, int bf16, int wgmma, void *workspace,
                                          int B, int T, int H, int KVH, int D, cudaStream_t stream)
{
    if (!cuda_mma_attention_suits(B, T, H, KVH, D) || (!bf16 && !workspace)) return 0;
    if (!mf_aligned16(out) || !mf_aligned16(q) || !mf_aligned16(k) || !mf_aligned16(v)) return 0;
    if (bf16)
        return mf_forward_as((at_bf16 *)out, lse, (const at_bf16 *)q, (const at_bf16 *)k,
                             (const at_bf16 *)v, wgmma, B, T, H, KVH, D, stream);
    if (!(D == 64 ? mf_ready<64, 64, float>() : mf_ready<128, 128, float>())) return 0;
    __nv_bfloat16 *qb, *kb, *vb;
    cuda_mma_attention_stage(&qb, &kb, &vb, workspace, (const float *)q, (const float *)k,
                             (const float *)v, B, T, H, KVH, D, stream);
    return mf_forward_as((float *)out, lse, qb, kb, vb, wgmma, B, T, H, KVH, D, stream);
}

/* ---------------------------------------------------------------------------------------------
 * q/k and v heads of their own sizes (DeepSeek's latent attention), bf16 only */

extern "C" int cuda_mma_attention_dv_suits(int B, int T, int H, int Dqk, int Dv)
{
    if (!((Dqk == 192 && Dv == 128) || (Dqk == Dv && (Dqk == 64 || Dqk == 128)))) return 0;
    if (B <= 0 || T <= 0 || H <= 0) return 0;
    return (long long)B * H <= INT32_MAX && (T + 63) / 64 <= 65535;
}

extern "C" int cuda_mma_attention_forward_dv(__nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q,
                                             const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                             int wgmma, int B, int T, int H, int Dqk, int Dv,
                                             float scale, cudaStream_t stream)
{
    if (!cuda_mma_attention_dv_suits(B, T, H, Dqk, Dv)) return 0;
    if (!mf_aligned16(out) || !mf_aligned16(q) || !mf_aligned16(k) || !mf_aligned16(v)) return 0;
    if (wgmma &&
        cuda_wgmma_attention_forward_dv(out, lse, q, k, v, B, T, H, Dqk, Dv, scale, stream))
        return 1;
    const float scale_log2 = scale * AT_LOG2E;
    if (Dqk == 192)
        return mf_forward_launch<192, 128, at_bf16>(out, lse, q, k, v, B, T, H, H, scale_log2,
                                                    stream);
    return Dqk == 64 ? mf_forward_launch<64, 64, at_bf16>(out, lse, q, k, v, B, T, H, H, scale_log2,
                                                          stream)
                     : mf_forward_launch<128, 128, at_bf16>(out, lse, q, k, v, B, T, H, H,
                                                            scale_log2, stream);
}
