/* attention_mma_fwd.cu: causal attention forward with grouped-query heads on the bf16 tensor
 * cores through mma.sync.m16n8k16 (FlashAttention-2 structure), for head_dim 64 and 128: the
 * CUDA backend's default forward (ops_cuda.cu; attention.cu's wmma kernels remain behind
 * DSTRAIN_CUDA_ATTENTION=wmma). Because the register layouts of mma.sync are known, the scores,
 * the online softmax, P and the output accumulators never leave the registers: shared memory
 * holds only the bf16 tiles of Q (once), K and V (transposed). Inputs and outputs are fp32 in
 * global memory, rounded to bf16 when staged; statistics and sums are fp32; no atomics, so a run
 * repeats bit for bit.
 *
 * Layout (kernels/ops.h): q, out [B*T, H*D]; k, v [B*T, KVH*D]; head h reads kv head h/(H/KVH);
 * lse [B, H, T] natural log of the row sums of exp(scaled scores). Grid (B*H, query tiles of 64,
 * the longest rows first), 4 warps; warp w owns query rows w*16 .. w*16+15.
 * mma.sync m16n8k16 fragments (g = lane / 4, c = lane % 4), each 32-bit register two bf16 of
 * consecutive k: A a0 = A[g][2c..], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..];
 * B b0 = B[2c..][g], b1 = B[2c+8..][g]; C c0, c1 = C[g][2c, 2c+1], c2, c3 = C[g+8][2c, 2c+1].
 * The C of two neighbouring n8 tiles, rounded to bf16 pairs, is the A fragment of the next
 * product over those 16 columns: that is how P feeds P V. K is staged row-major (B of Q K^T is
 * K[key][d], k = d contiguous) and V transposed (B of P V is V[key][d] with k = key: Vt[d][key]).
 * Masks: only the diagonal tile has keys past a query; its first key tile always holds key 0, so
 * the running max is finite after the first tile. Rows at or past T are zeros and never written. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

#define MF_TILE 64 /* query rows and key rows of a tile */
#define MF_WARPS 4
#define MF_THREADS (MF_WARPS * 32)
#define MF_LOG2E 1.4426950408889634f
#define MF_LN2 0.6931471805599453f

template <int D> struct MfSmem {
    static constexpr int LDQ = D + 8;       /* bf16 row of the Q and K tiles */
    static constexpr int LDV = MF_TILE + 8; /* bf16 row of the transposed V tile */
    static constexpr size_t Q = (size_t)MF_TILE * LDQ * 2;
    static constexpr size_t K = (size_t)MF_TILE * LDQ * 2;
    static constexpr size_t V = (size_t)D * LDV * 2;
    static constexpr size_t BYTES = Q + K + V;
    static_assert(Q % 16 == 0 && K % 16 == 0, "regions stay 16-byte aligned");
};

__device__ static inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ static inline uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ static inline uint32_t lds32(const __nv_bfloat16 *p)
{
    return *reinterpret_cast<const uint32_t *>(p);
}

/* Rows 0..63 of an fp32 matrix (src at the tile's first row and the head's first column, row
 * stride `stride`) into a bf16 tile [64][D+8]; rows >= rows_valid become zeros. */
template <int D>
__device__ static void mf_load_rows(__nv_bfloat16 *dst, const float *src, size_t stride,
                                    int rows_valid)
{
    constexpr int V4 = D / 4;
    for (int idx = threadIdx.x; idx < MF_TILE * V4; idx += MF_THREADS) {
        const int r = idx / V4, c = (idx % V4) * 4;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows_valid) x = *reinterpret_cast<const float4 *>(src + (size_t)r * stride + c);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + r * (D + 8) + c);
        d2[0] = __floats2bfloat162_rn(x.x, x.y);
        d2[1] = __floats2bfloat162_rn(x.z, x.w);
    }
}

/* The same rows transposed: dst[d][r] (row stride 64+8). */
template <int D>
__device__ static void mf_load_rows_transposed(__nv_bfloat16 *dst, const float *src,
                                               size_t stride, int rows_valid)
{
    constexpr int V4 = D / 4, LDV = MF_TILE + 8;
    for (int idx = threadIdx.x; idx < MF_TILE * V4; idx += MF_THREADS) {
        const int r = idx % MF_TILE, c = (idx / MF_TILE) * 4; /* neighbouring threads: rows */
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows_valid) x = *reinterpret_cast<const float4 *>(src + (size_t)r * stride + c);
        dst[(c + 0) * LDV + r] = __float2bfloat16_rn(x.x);
        dst[(c + 1) * LDV + r] = __float2bfloat16_rn(x.y);
        dst[(c + 2) * LDV + r] = __float2bfloat16_rn(x.z);
        dst[(c + 3) * LDV + r] = __float2bfloat16_rn(x.w);
    }
}

template <int D>
__global__ static void __launch_bounds__(MF_THREADS)
    mf_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v, int T,
                      int H, int KVH, float scale_log2)
{
    typedef MfSmem<D> S;
    constexpr int LDQ = S::LDQ, LDV = S::LDV, NT = MF_TILE / 8, NO = D / 8;
    extern __shared__ __align__(16) unsigned char mf_smem[];
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(mf_smem);
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(mf_smem + S::Q);
    __nv_bfloat16 *Vt = reinterpret_cast<__nv_bfloat16 *>(mf_smem + S::Q + S::K);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int qt = gridDim.y - 1 - blockIdx.y;
    const int q0 = qt * MF_TILE, r0 = warp * 16;
    const int t_lo = q0 + r0 + g, t_hi = t_lo + 8; /* this thread's two query rows */
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const float *qbase = q + (size_t)b * T * qstride + (size_t)h * D;
    const float *kbase = k + (size_t)b * T * kvstride + (size_t)kvh * D;
    const float *vbase = v + (size_t)b * T * kvstride + (size_t)kvh * D;

    mf_load_rows<D>(Qs, qbase + (size_t)q0 * qstride, qstride, T - q0);
    __syncthreads();
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        const __nv_bfloat16 *p = Qs + (r0 + g) * LDQ + kk * 16 + 2 * c;
        qa[kk][0] = lds32(p);
        qa[kk][1] = lds32(p + 8 * LDQ);
        qa[kk][2] = lds32(p + 8);
        qa[kk][3] = lds32(p + 8 * LDQ + 8);
    }

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m_lo = -INFINITY, m_hi = -INFINITY; /* running max, log2 units */
    float l_lo = 0.0f, l_hi = 0.0f;           /* this thread's part of the row sums */

    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * MF_TILE;
        __syncthreads(); /* every warp is done with the previous K and V */
        mf_load_rows<D>(Ks, kbase + (size_t)k0 * kvstride, kvstride, T - k0);
        mf_load_rows_transposed<D>(Vt, vbase + (size_t)k0 * kvstride, kvstride, T - k0);
        __syncthreads();

        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const __nv_bfloat16 *kp = Ks + (j * 8 + g) * LDQ + 2 * c;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++)
                mma_bf16(s[j], qa[kk], lds32(kp + kk * 16), lds32(kp + kk * 16 + 8));
        }
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
        const bool diagonal = kt == qt;
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
        const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        const float corr_lo = exp2f(m_lo - mn_lo), corr_hi = exp2f(m_hi - mn_hi); /* 0 at first */
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
        /* O += P V over the tile's 64 keys, 16 at a time */
#pragma unroll
        for (int kk = 0; kk < MF_TILE / 16; kk++) {
            const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                                    pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < NO; n++) {
                const __nv_bfloat16 *vp = Vt + (n * 8 + g) * LDV + kk * 16 + 2 * c;
                mma_bf16(o[n], pa, lds32(vp), lds32(vp + 8));
            }
        }
    }

    /* the row sums over the quad of threads that share a row */
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
    float *dst_lo = out + ((size_t)b * T + t_lo) * qstride + (size_t)h * D + 2 * c;
    float *dst_hi = dst_lo + 8 * qstride;
#pragma unroll
    for (int n = 0; n < NO; n++) {
        if (t_lo < T)
            *reinterpret_cast<float2 *>(dst_lo + n * 8) =
                make_float2(o[n][0] * inv_lo, o[n][1] * inv_lo);
        if (t_hi < T)
            *reinterpret_cast<float2 *>(dst_hi + n * 8) =
                make_float2(o[n][2] * inv_hi, o[n][3] * inv_hi);
    }
    if (c == 0) {
        float *l = lse + ((size_t)b * H + h) * T;
        if (t_lo < T) l[t_lo] = (m_lo + log2f(l_lo)) * MF_LN2;
        if (t_hi < T) l[t_hi] = (m_hi + log2f(l_hi)) * MF_LN2;
    }
}

static int mf_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

template <int D>
static int mf_forward_launch(float *out, float *lse, const float *q, const float *k,
                             const float *v, int B, int T, int H, int KVH, cudaStream_t stream)
{
    static int ready = -1; /* -1 unknown, 0 the device cannot hold the tiles, 1 ready */
    if (ready < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready = MfSmem<D>::BYTES <= (size_t)optin;
        if (ready)
            cudaCheck(cudaFuncSetAttribute(mf_forward_kernel<D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)MfSmem<D>::BYTES));
    }
    if (!ready) return 0;
    const float scale_log2 = MF_LOG2E / sqrtf((float)D);
    dim3 grid(B * H, ceil_div(T, MF_TILE));
    mf_forward_kernel<D><<<grid, MF_THREADS, MfSmem<D>::BYTES, stream>>>(out, lse, q, k, v, T, H,
                                                                         KVH, scale_log2);
    cudaCheck(cudaGetLastError());
    return 1;
}

extern "C" int cuda_mma_attention_forward(float *out, float *lse, const float *q, const float *k,
                                          const float *v, int B, int T, int H, int KVH, int D,
                                          cudaStream_t stream)
{
    if (D != 64 && D != 128) return 0;
    if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || H % KVH != 0) return 0;
    if ((long long)B * H > INT32_MAX || (T + MF_TILE - 1) / MF_TILE > 65535) return 0;
    if (!mf_aligned16(out) || !mf_aligned16(q) || !mf_aligned16(k) || !mf_aligned16(v)) return 0;
    if (((size_t)H * D) % 4 || ((size_t)KVH * D) % 4) return 0;
    return D == 64 ? mf_forward_launch<64>(out, lse, q, k, v, B, T, H, KVH, stream)
                   : mf_forward_launch<128>(out, lse, q, k, v, B, T, H, KVH, stream);
}
