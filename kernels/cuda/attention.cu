/* attention.cu: causal attention with grouped-query heads on the bf16 tensor cores, forward and
 * backward, FlashAttention-2 structure, for head_dim 64 and 128 (the CUDA backend's default;
 * ops_cuda.cu keeps its fp32 CUDA-core kernels for other head dims and for
 * DSTRAIN_CUDA_ATTENTION=simple). Not here: bf16 storage in global memory, cp.async pipelining.
 * Inputs and outputs stay fp32 in global memory; tiles are rounded to bf16 when staged in shared
 * memory, products run as nvcuda::wmma 16x16x16 bf16 fragments with fp32 accumulators, softmax
 * statistics and sums are fp32, and the T x T matrix is never stored. No atomics: every output
 * element is written by one block, in a fixed order, so a run repeats bit for bit.
 *
 * Layout (kernels/ops.h): q, out, dout, dq [B*T, H*D]; k, v, dk, dv [B*T, KVH*D]; token (b, t) is
 * row b*T + t, head h its columns h*D .. h*D+D-1; head h reads kv head h / (H/KVH); lse and
 * delta [B, H, T], element (b*H + h)*T + t. scale = 1/sqrt(D).
 * Tiles: FA_TILE = 64 query rows and 64 key rows; a block is 4 warps, and warp w owns rows
 * w*16 .. w*16+15 of the block's tile in every product it computes, so the fp32 staging rows of
 * S, dP and O are read and written by one warp only (__syncwarp); the bf16 tiles of Q, K, V, dO
 * (and P, dS in the dk/dv pass) are shared by the block (__syncthreads around them).
 * - forward: block (b*H + h, query tile; the longest rows first). Q stays in registers as
 *   fragments; for each key tile 0..diagonal: S = Q K^T -> Ss, online softmax by two lanes per
 *   row (interleaved columns), P -> Ps (bf16), the O rows in Os (fp32, shared) rescaled, then
 *   O += P V through accumulators loaded from and stored back to Os. out = O / l, lse = m + log l.
 * - backward (delta = rowsum(dout * out) from the caller): the dq pass, block (b*H + h, query
 *   tile), keys 0..diagonal, dQ in register fragments; the dk/dv pass, block (b*KVH + kvh, key
 *   tile), the heads of the group one after another and query tiles from the diagonal to the end,
 *   dK and dV in register fragments. Both recompute P = exp(S*scale - lse) (fp32, in the lane's
 *   registers) and dS = P (dP - delta) * scale (scale folded into dS, so dQ = dS K and
 *   dK = dS^T Q); dP is staged in S's rows once every lane has read its S (keeps the dk/dv pass
 *   at 2 blocks per SM on sm_90).
 * - masks: p = 0 where key s > query t (only the diagonal tile has such pairs) and, backward, where
 *   t >= T; rows past T are zeros in shared memory and never written back. Forward, every row's
 *   first key tile holds key 0 <= t, so its running max is finite after the first tile.
 * Shared rows are padded (bf16 rows D+8, fp32 rows +4 elements) so that fragment loads and the
 * row passes spread over the banks; every fragment pointer is 32-byte aligned (static_asserts). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "attention.cuh"
#include "cuda_common.cuh"
#include "cuda_ops.h"

using namespace nvcuda;

#define FA_TILE 64 /* query rows and key rows of a tile */
#define FA_WARPS 4 /* warp w owns rows w*16 .. w*16+15 */
#define FA_THREADS (FA_WARPS * 32)
#define FA_LDS (FA_TILE + 4) /* fp32 row of the S / dP staging, floats */
#define FA_LDP (FA_TILE + 8) /* bf16 row of P / dS, elements */
#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

static_assert(FA_TILE == FA_WARPS * 16, "each warp owns 16 rows of a tile");
static_assert(FA_LDS % 4 == 0 && (16 * FA_LDS * 4) % 32 == 0, "fp32 fragment rows: ldm, alignment");
static_assert(FA_LDP % 8 == 0 && (16 * FA_LDP * 2) % 32 == 0, "bf16 fragment rows: ldm, alignment");

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragAT;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> FragBT;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

/* Shared memory of the three kernels for head dim D, in bytes; every region a multiple of 128. */
template <int D> struct FaSmem {
    static constexpr int LDK = D + 8; /* bf16 row of a Q / K / V / dO tile */
    static constexpr int LDO = D + 4; /* fp32 row of the forward's O */
    static constexpr size_t TILE = (size_t)FA_TILE * LDK * 2;
    static constexpr size_t STAGE = (size_t)FA_TILE * FA_LDS * 4;
    static constexpr size_t PTILE = (size_t)FA_TILE * FA_LDP * 2;
    static constexpr size_t OTILE = (size_t)FA_TILE * LDO * 4;
    static constexpr size_t VEC = (size_t)FA_TILE * 4;
    static constexpr size_t FORWARD = 3 * TILE + STAGE + PTILE + OTILE; /* Q K V, S, P, O */
    static constexpr size_t DQ = 4 * TILE + STAGE + PTILE + 2 * VEC; /* Q dO K V, S then dP, dS */
    static constexpr size_t DKDV = 4 * TILE + STAGE + 2 * PTILE + 2 * VEC; /* + P */
    static_assert(D % 64 == 0, "the store and load loops take 64 columns at a time");
    static_assert(LDK % 8 == 0 && (16 * LDK * 2) % 32 == 0, "bf16 tile rows: ldm, alignment");
    static_assert(LDO % 4 == 0 && (16 * LDO * 4) % 32 == 0, "fp32 O rows: ldm, alignment");
    static_assert(TILE % 128 == 0 && STAGE % 128 == 0 && PTILE % 128 == 0 && OTILE % 128 == 0 &&
                      VEC % 128 == 0,
                  "region offsets stay 128-byte aligned");
};

/* Rows row0 .. row0+63 of an fp32 matrix (src points at row row0, the head's first column; row
 * stride `stride` floats) into a bf16 tile of row stride D+8; rows >= rows_valid become zeros. */
template <int D>
__device__ static void fa_load_tile(__nv_bfloat16 *dst, const float *src, size_t stride,
                                    int rows_valid)
{
    constexpr int V4 = D / 4;
    for (int idx = threadIdx.x; idx < FA_TILE * V4; idx += FA_THREADS) {
        const int r = idx / V4, c = (idx % V4) * 4;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows_valid) x = *reinterpret_cast<const float4 *>(src + (size_t)r * stride + c);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + r * (D + 8) + c);
        d2[0] = __floats2bfloat162_rn(x.x, x.y);
        d2[1] = __floats2bfloat162_rn(x.z, x.w);
    }
}

/* lse (times log2 e, for exp2) and delta of query rows q0 .. q0+63 of one (b, h) row of
 * [B, H, T] (src at element (b*H + h)*T); rows past T get 0 (they are masked anyway). */
__device__ static void fa_load_row_stats(float *lse_s, float *delta_s, const float *lse,
                                         const float *delta, int q0, int T)
{
    for (int i = threadIdx.x; i < FA_TILE; i += FA_THREADS) {
        const bool valid = q0 + i < T;
        lse_s[i] = valid ? lse[q0 + i] * FA_LOG2E : 0.0f;
        delta_s[i] = valid ? delta[q0 + i] : 0.0f;
    }
}

/* A warp's 16 x D accumulator rows to global rows dst[r * stride + d] for r < rows_valid (may be
 * <= 0: nothing), 64 columns at a time through the warp's own 16 staging rows (stride FA_LDS). */
template <int D>
__device__ static void fa_store_rows(FragC (&acc)[D / 16], float *stage, float *dst, size_t stride,
                                     int rows_valid)
{
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int c0 = 0; c0 < D; c0 += 64) {
#pragma unroll
        for (int n = 0; n < 4; n++)
            wmma::store_matrix_sync(stage + n * 16, acc[c0 / 16 + n], FA_LDS, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 16 * 16; i += 32) { /* 16 rows x 16 float4 */
            const int r = i / 16, c = (i % 16) * 4;
            if (r < rows_valid)
                *reinterpret_cast<float4 *>(dst + (size_t)r * stride + c0 + c) =
                    *reinterpret_cast<const float4 *>(stage + r * FA_LDS + c);
        }
        __syncwarp();
    }
}

/* C = A B^T for the warp's 16 rows of A against the 64 rows of B (bf16 tiles [64][D+8]), into
 * the warp's fp32 staging rows c_rows (stride FA_LDS). */
template <int D>
__device__ static void fa_product_abt(float *c_rows, const __nv_bfloat16 *a_rows,
                                      const __nv_bfloat16 *b_tile)
{
    constexpr int LDK = D + 8;
#pragma unroll 1 /* rolled: the dk/dv pass holds 2 x D/16 accumulators beside this */
    for (int n = 0; n < FA_TILE / 16; n++) {
        FragC c;
        wmma::fill_fragment(c, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            FragA a;
            FragBT bt;
            wmma::load_matrix_sync(a, a_rows + kk * 16, LDK);
            wmma::load_matrix_sync(bt, b_tile + n * 16 * LDK + kk * 16, LDK);
            wmma::mma_sync(c, a, bt, c);
        }
        wmma::store_matrix_sync(c_rows + n * 16, c, FA_LDS, wmma::mem_row_major);
    }
}

/* ---------------------------------------------------------------------------------------------
 * forward: grid (B*H, query tiles), FA_THREADS threads, FaSmem<D>::FORWARD bytes. */

template <int D>
__global__ static void __launch_bounds__(FA_THREADS)
    fa_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v, int T,
                      int H, int KVH, float scale_log2)
{
    typedef FaSmem<D> S;
    constexpr int LDK = S::LDK, LDO = S::LDO;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(fa_smem);
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(fa_smem + S::TILE);
    __nv_bfloat16 *Vs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 2 * S::TILE);
    float *Ss = reinterpret_cast<float *>(fa_smem + 3 * S::TILE);
    __nv_bfloat16 *Ps = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 3 * S::TILE + S::STAGE);
    float *Os = reinterpret_cast<float *>(fa_smem + 3 * S::TILE + S::STAGE + S::PTILE);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int qt = gridDim.y - 1 - blockIdx.y; /* the longest rows start first */
    const int q0 = qt * FA_TILE, r0 = warp * 16;
    const int row = lane / 2, half = lane % 2; /* this lane's row of the warp's 16; its columns
                                                  are half, half + 2, ... */
    const int t = q0 + r0 + row;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const float *qbase = q + (size_t)b * T * qstride + (size_t)h * D;
    const float *kbase = k + (size_t)b * T * kvstride + (size_t)kvh * D;
    const float *vbase = v + (size_t)b * T * kvstride + (size_t)kvh * D;

    fa_load_tile<D>(Qs, qbase + (size_t)q0 * qstride, qstride, T - q0);
    for (int i = lane; i < 16 * LDO; i += 32)
        Os[r0 * LDO + i] = 0.0f;
    __syncthreads();
    FragA qa[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wmma::load_matrix_sync(qa[kk], Qs + r0 * LDK + kk * 16, LDK);

    float m_run = -INFINITY, l_run = 0.0f; /* in log2 units: scores times scale * log2 e */
    float *srow = Ss + (r0 + row) * FA_LDS;
    __nv_bfloat16 *prow = Ps + (r0 + row) * FA_LDP;
    float *orow = Os + (r0 + row) * LDO;
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * FA_TILE;
        __syncthreads(); /* every warp is done with the previous K and V */
        fa_load_tile<D>(Ks, kbase + (size_t)k0 * kvstride, kvstride, T - k0);
        fa_load_tile<D>(Vs, vbase + (size_t)k0 * kvstride, kvstride, T - k0);
        __syncthreads();

#pragma unroll
        for (int n = 0; n < FA_TILE / 16; n++) {
            FragC s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                FragBT kb;
                wmma::load_matrix_sync(kb, Ks + n * 16 * LDK + kk * 16, LDK);
                wmma::mma_sync(s, qa[kk], kb, s);
            }
            wmma::store_matrix_sync(Ss + r0 * FA_LDS + n * 16, s, FA_LDS, wmma::mem_row_major);
        }
        __syncwarp();

        float sv[FA_TILE / 2];
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < FA_TILE / 2; j++) {
            const int c = 2 * j + half;
            sv[j] = k0 + c <= t ? srow[c] * scale_log2 : -INFINITY;
            mx = fmaxf(mx, sv[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m_run, mx);    /* finite: key k0 <= t in every tile */
        const float corr = exp2f(m_run - m_new); /* 0 on the first tile */
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < FA_TILE / 2; j++) {
            const float p = exp2f(sv[j] - m_new);
            sum += p;
            prow[2 * j + half] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l_run = l_run * corr + sum;
        m_run = m_new;
        for (int d = half; d < D; d += 2)
            orow[d] *= corr;
        __syncwarp();

        FragA pa[FA_TILE / 16];
#pragma unroll
        for (int kk = 0; kk < FA_TILE / 16; kk++)
            wmma::load_matrix_sync(pa[kk], Ps + r0 * FA_LDP + kk * 16, FA_LDP);
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            FragC o;
            wmma::load_matrix_sync(o, Os + r0 * LDO + n * 16, LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < FA_TILE / 16; kk++) {
                FragB vb;
                wmma::load_matrix_sync(vb, Vs + kk * 16 * LDK + n * 16, LDK);
                wmma::mma_sync(o, pa[kk], vb, o);
            }
            wmma::store_matrix_sync(Os + r0 * LDO + n * 16, o, LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }

    if (t < T) {
        const float inv = 1.0f / l_run;
        float *dst = out + ((size_t)b * T + t) * qstride + (size_t)h * D;
        for (int d = half * 4; d < D; d += 8) {
            float4 x = *reinterpret_cast<const float4 *>(orow + d);
            x.x *= inv, x.y *= inv, x.z *= inv, x.w *= inv;
            *reinterpret_cast<float4 *>(dst + d) = x;
        }
        if (half == 0) lse[((size_t)b * H + h) * T + t] = (m_run + log2f(l_run)) * FA_LN2;
    }
}

/* ---------------------------------------------------------------------------------------------
 * backward, dq: grid (B*H, query tiles), FaSmem<D>::DQ bytes. */

template <int D>
__global__ static void __launch_bounds__(FA_THREADS)
    fa_backward_dq_kernel(float *dq, const float *dout, const float *lse, const float *delta,
                          const float *q, const float *k, const float *v, int T, int H, int KVH,
                          float scale, float scale_log2)
{
    typedef FaSmem<D> S;
    constexpr int LDK = S::LDK;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(fa_smem);
    __nv_bfloat16 *dOs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + S::TILE);
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 2 * S::TILE);
    __nv_bfloat16 *Vs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 3 * S::TILE);
    float *Ss = reinterpret_cast<float *>(fa_smem + 4 * S::TILE); /* S, then dP */
    __nv_bfloat16 *dSs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 4 * S::TILE + S::STAGE);
    float *lse_s = reinterpret_cast<float *>(fa_smem + 4 * S::TILE + S::STAGE + S::PTILE);
    float *delta_s = lse_s + FA_TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int qt = gridDim.y - 1 - blockIdx.y;
    const int q0 = qt * FA_TILE, r0 = warp * 16;
    const int row = lane / 2, half = lane % 2;
    const int t = q0 + r0 + row;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const size_t qoff = (size_t)b * T * qstride + (size_t)h * D;
    const float *kbase = k + (size_t)b * T * kvstride + (size_t)kvh * D;
    const float *vbase = v + (size_t)b * T * kvstride + (size_t)kvh * D;
    const size_t stats = ((size_t)b * H + h) * T;

    fa_load_tile<D>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
    fa_load_tile<D>(dOs, dout + qoff + (size_t)q0 * qstride, qstride, T - q0);
    fa_load_row_stats(lse_s, delta_s, lse + stats, delta + stats, q0, T);

    FragC acc[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::fill_fragment(acc[n], 0.0f);
    const float *srow = Ss + (r0 + row) * FA_LDS;
    __nv_bfloat16 *dsrow = dSs + (r0 + row) * FA_LDP;
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * FA_TILE;
        __syncthreads(); /* every warp is done with the previous K and V (and the row stats
                            are visible, the first time) */
        fa_load_tile<D>(Ks, kbase + (size_t)k0 * kvstride, kvstride, T - k0);
        fa_load_tile<D>(Vs, vbase + (size_t)k0 * kvstride, kvstride, T - k0);
        __syncthreads();

        /* P (bf16, in the dS rows), then dS = P (dP - delta) * scale in place: each lane reads
         * and writes only its own elements */
        fa_product_abt<D>(Ss + r0 * FA_LDS, Qs + r0 * LDK, Ks); /* S */
        __syncwarp();
        const float row_lse = lse_s[r0 + row], row_delta = delta_s[r0 + row];
        float pv[FA_TILE / 2]; /* this lane's P, fp32 */
#pragma unroll
        for (int j = 0; j < FA_TILE / 2; j++) {
            const int c = 2 * j + half;
            const bool live = k0 + c <= t && t < T;
            pv[j] = live ? exp2f(srow[c] * scale_log2 - row_lse) : 0.0f;
        }
        __syncwarp(); /* every lane has read its S before dP overwrites it */
        fa_product_abt<D>(Ss + r0 * FA_LDS, dOs + r0 * LDK, Vs); /* dP */
        __syncwarp();
#pragma unroll
        for (int j = 0; j < FA_TILE / 2; j++) {
            const int c = 2 * j + half;
            dsrow[c] = __float2bfloat16(pv[j] * (srow[c] - row_delta) * scale);
        }
        __syncwarp();

        FragA dsa[FA_TILE / 16];
#pragma unroll
        for (int kk = 0; kk < FA_TILE / 16; kk++)
            wmma::load_matrix_sync(dsa[kk], dSs + r0 * FA_LDP + kk * 16, FA_LDP);
#pragma unroll
        for (int n = 0; n < D / 16; n++)
#pragma unroll
            for (int kk = 0; kk < FA_TILE / 16; kk++) {
                FragB kb;
                wmma::load_matrix_sync(kb, Ks + kk * 16 * LDK + n * 16, LDK);
                wmma::mma_sync(acc[n], dsa[kk], kb, acc[n]);
            }
    }
    fa_store_rows<D>(acc, Ss + r0 * FA_LDS, dq + qoff + (size_t)(q0 + r0) * qstride, qstride,
                     T - (q0 + r0));
}

/* ---------------------------------------------------------------------------------------------
 * backward, dk and dv: grid (B*KVH, key tiles), FaSmem<D>::DKDV bytes. */

template <int D>
__global__ static void __launch_bounds__(FA_THREADS)
    fa_backward_dkdv_kernel(float *dk, float *dv, const float *dout, const float *lse,
                            const float *delta, const float *q, const float *k, const float *v,
                            int T, int H, int KVH, float scale, float scale_log2)
{
    typedef FaSmem<D> S;
    constexpr int LDK = S::LDK;
    extern __shared__ __align__(128) unsigned char fa_smem[];
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(fa_smem);
    __nv_bfloat16 *Vs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + S::TILE);
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 2 * S::TILE);
    __nv_bfloat16 *dOs = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 3 * S::TILE);
    float *Ss = reinterpret_cast<float *>(fa_smem + 4 * S::TILE); /* S, then dP */
    __nv_bfloat16 *Ps = reinterpret_cast<__nv_bfloat16 *>(fa_smem + 4 * S::TILE + S::STAGE);
    __nv_bfloat16 *dSs =
        reinterpret_cast<__nv_bfloat16 *>(fa_smem + 4 * S::TILE + S::STAGE + S::PTILE);
    float *lse_s = reinterpret_cast<float *>(fa_smem + 4 * S::TILE + S::STAGE + 2 * S::PTILE);
    float *delta_s = lse_s + FA_TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / KVH, kvh = blockIdx.x % KVH, group = H / KVH;
    const int kt = blockIdx.y, tiles = gridDim.y;
    const int k0 = kt * FA_TILE, r0 = warp * 16;
    const int row = lane / 2, half = lane % 2;
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const size_t kvoff = (size_t)b * T * kvstride + (size_t)kvh * D;

    fa_load_tile<D>(Ks, k + kvoff + (size_t)k0 * kvstride, kvstride, T - k0);
    fa_load_tile<D>(Vs, v + kvoff + (size_t)k0 * kvstride, kvstride, T - k0);

    FragC dk_acc[D / 16], dv_acc[D / 16]; /* key rows k0 + r0 .. k0 + r0 + 15 */
#pragma unroll
    for (int n = 0; n < D / 16; n++) {
        wmma::fill_fragment(dk_acc[n], 0.0f);
        wmma::fill_fragment(dv_acc[n], 0.0f);
    }
    const float *srow = Ss + (r0 + row) * FA_LDS;
    __nv_bfloat16 *prow = Ps + (r0 + row) * FA_LDP, *dsrow = dSs + (r0 + row) * FA_LDP;
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const size_t qoff = (size_t)b * T * qstride + (size_t)h * D;
        const size_t stats = ((size_t)b * H + h) * T;
        for (int qt = kt; qt < tiles; qt++) {
            const int q0 = qt * FA_TILE;
            const int t = q0 + r0 + row; /* this lane's query row */
            __syncthreads(); /* every warp is done with the previous Q, dO, P, dS (and K, V are
                                visible, the first time) */
            fa_load_tile<D>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
            fa_load_tile<D>(dOs, dout + qoff + (size_t)q0 * qstride, qstride, T - q0);
            fa_load_row_stats(lse_s, delta_s, lse + stats, delta + stats, q0, T);
            __syncthreads();

            /* S, then P, then dP in S's place, then dS, for the warp's 16 query rows against
             * the 64 keys; each lane reads and writes only its own elements */
            fa_product_abt<D>(Ss + r0 * FA_LDS, Qs + r0 * LDK, Ks); /* S */
            __syncwarp();
            const float row_lse = lse_s[r0 + row], row_delta = delta_s[r0 + row];
            float pv[FA_TILE / 2]; /* this lane's P, fp32 */
#pragma unroll
            for (int j = 0; j < FA_TILE / 2; j++) {
                const int c = 2 * j + half;
                const bool live = k0 + c <= t && t < T;
                pv[j] = live ? exp2f(srow[c] * scale_log2 - row_lse) : 0.0f;
                prow[c] = __float2bfloat16(pv[j]);
            }
            __syncwarp(); /* every lane has read its S before dP overwrites it */
            fa_product_abt<D>(Ss + r0 * FA_LDS, dOs + r0 * LDK, Vs); /* dP */
            __syncwarp();
#pragma unroll
            for (int j = 0; j < FA_TILE / 2; j++) {
                const int c = 2 * j + half;
                dsrow[c] = __float2bfloat16(pv[j] * (srow[c] - row_delta) * scale);
            }
            __syncthreads(); /* P and dS of every query row, for the transposed products */

            /* dV += P^T dO and dK += dS^T Q for the warp's 16 key rows, 16 query rows (kk) at
             * a time (few fragments live beside the accumulators) */
#pragma unroll
            for (int kk = 0; kk < FA_TILE / 16; kk++) {
                FragAT pa, dsa; /* P^T, dS^T: keys r0.. x queries kk*16.. */
                wmma::load_matrix_sync(pa, Ps + kk * 16 * FA_LDP + r0, FA_LDP);
                wmma::load_matrix_sync(dsa, dSs + kk * 16 * FA_LDP + r0, FA_LDP);
#pragma unroll
                for (int n = 0; n < D / 16; n++) {
                    FragB ob, qb;
                    wmma::load_matrix_sync(ob, dOs + kk * 16 * LDK + n * 16, LDK);
                    wmma::mma_sync(dv_acc[n], pa, ob, dv_acc[n]);
                    wmma::load_matrix_sync(qb, Qs + kk * 16 * LDK + n * 16, LDK);
                    wmma::mma_sync(dk_acc[n], dsa, qb, dk_acc[n]);
                }
            }
        }
    }
    /* the warp's staging rows of Ss are its own: no other warp touches them from here on */
    float *dst_k = dk + kvoff + (size_t)(k0 + r0) * kvstride;
    float *dst_v = dv + kvoff + (size_t)(k0 + r0) * kvstride;
    fa_store_rows<D>(dk_acc, Ss + r0 * FA_LDS, dst_k, kvstride, T - (k0 + r0));
    fa_store_rows<D>(dv_acc, Ss + r0 * FA_LDS, dst_v, kvstride, T - (k0 + r0));
}

/* ---------------------------------------------------------------------------------------------
 * launches */

static long long flash_calls;

extern "C" long long cuda_attention_wmma_calls(void)
{
    return flash_calls;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* The largest opt-in shared memory of a block on this device (queried once). */
static int smem_optin(void)
{
    static int bytes = -1;
    if (bytes < 0) {
        int dev = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    }
    return bytes;
}

static int flash_shape_ok(int B, int T, int H, int KVH, int D)
{
    if (D != 64 && D != 128) return 0;
    if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || H % KVH != 0) return 0;
    if ((long long)B * H > INT32_MAX || (T + FA_TILE - 1) / FA_TILE > 65535) return 0;
    size_t need = D == 64 ? FaSmem<64>::DKDV : FaSmem<128>::DKDV;
    need = need > (D == 64 ? FaSmem<64>::FORWARD : FaSmem<128>::FORWARD)
               ? need
               : (D == 64 ? FaSmem<64>::FORWARD : FaSmem<128>::FORWARD);
    need = need > (D == 64 ? FaSmem<64>::DQ : FaSmem<128>::DQ)
               ? need
               : (D == 64 ? FaSmem<64>::DQ : FaSmem<128>::DQ);
    return need <= (size_t)smem_optin();
}

/* Raises a kernel's dynamic shared memory limit the first time it is launched. */
template <typename Kernel> static void fa_allow_smem(Kernel kernel, size_t bytes, int *done)
{
    if (!*done) {
        cudaCheck(
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        *done = 1;
    }
}

template <int D>
static void fa_forward_launch(float *out, float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int H, int KVH, cudaStream_t stream)
{
    static int ready;
    fa_allow_smem(fa_forward_kernel<D>, FaSmem<D>::FORWARD, &ready);
    const float scale_log2 = FA_LOG2E / sqrtf((float)D);
    dim3 grid(B * H, ceil_div(T, FA_TILE));
    fa_forward_kernel<D><<<grid, FA_THREADS, FaSmem<D>::FORWARD, stream>>>(out, lse, q, k, v, T, H,
                                                                           KVH, scale_log2);
    cudaCheck(cudaGetLastError());
}

template <int D>
static void fa_backward_launch(float *dq, float *dk, float *dv, const float *dout,
                               const float *delta, const float *lse, const float *q, const float *k,
                               const float *v, int B, int T, int H, int KVH, cudaStream_t stream)
{
    static int ready_dq, ready_dkdv;
    fa_allow_smem(fa_backward_dq_kernel<D>, FaSmem<D>::DQ, &ready_dq);
    fa_allow_smem(fa_backward_dkdv_kernel<D>, FaSmem<D>::DKDV, &ready_dkdv);
    const float scale = 1.0f / sqrtf((float)D), scale_log2 = scale * FA_LOG2E;
    const int tiles = ceil_div(T, FA_TILE);
    fa_backward_dq_kernel<D><<<dim3(B * H, tiles), FA_THREADS, FaSmem<D>::DQ, stream>>>(
        dq, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
    fa_backward_dkdv_kernel<D><<<dim3(B * KVH, tiles), FA_THREADS, FaSmem<D>::DKDV, stream>>>(
        dk, dv, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
}

extern "C" int cuda_flash_attention_forward(float *out, float *lse, const float *q, const float *k,
                                            const float *v, int B, int T, int H, int KVH, int D,
                                            cudaStream_t stream)
{
    if (!flash_shape_ok(B, T, H, KVH, D)) return 0;
    if (!aligned16(out) || !aligned16(q) || !aligned16(k) || !aligned16(v)) return 0;
    if (D == 64)
        fa_forward_launch<64>(out, lse, q, k, v, B, T, H, KVH, stream);
    else
        fa_forward_launch<128>(out, lse, q, k, v, B, T, H, KVH, stream);
    flash_calls++;
    return 1;
}

extern "C" int cuda_flash_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                             const float *delta, const float *lse, const float *q,
                                             const float *k, const float *v, int B, int T, int H,
                                             int KVH, int D, cudaStream_t stream)
{
    if (!flash_shape_ok(B, T, H, KVH, D)) return 0;
    if (!aligned16(dq) || !aligned16(dk) || !aligned16(dv) || !aligned16(dout) || !aligned16(q) ||
        !aligned16(k) || !aligned16(v))
        return 0;
    if (D == 64)
        fa_backward_launch<64>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H, KVH, stream);
    else
        fa_backward_launch<128>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H, KVH, stream);
    flash_calls++;
    return 1;
}
