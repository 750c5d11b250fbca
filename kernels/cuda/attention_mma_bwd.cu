/* attention_mma_bwd.cu: causal attention backward with grouped-query heads on the bf16 tensor
 * cores through mma.sync.m16n8k16 (FlashAttention-2 structure: a dq pass and a dk/dv pass, no
 * atomics), for head_dim 64 and 128; the register-resident counterpart of attention.cu's wmma
 * backward, with the same contract (attention.cuh). Because the mma.sync register layouts are
 * known, S, P, dP, dS and the dQ / dK / dV accumulators never leave the registers: shared memory
 * holds only row-major bf16 tiles of the inputs, read as fragments by ldmatrix (.trans where a
 * product's k runs along the tile's rows: k = key or k = query). Inputs and outputs are fp32 in
 * global memory, rounded to bf16 when staged; sums are fp32. Every output element is written once
 * by one thread after a fixed-order sum, so a run repeats bit for bit (and, summing in the same
 * order, matches the wmma backward bit for bit). Not here: cp.async pipelining, bf16 storage in
 * global memory.
 *
 * Layout (kernels/ops.h): q, dout, dq [B*T, H*D]; k, v, dk, dv [B*T, KVH*D]; head h reads kv head
 * h / (H/KVH); lse, delta [B, H, T] (lse: natural log-sum-exp of the scaled scores; delta =
 * rowsum(dout * out)). scale = 1/sqrt(D). As attention.cu: P = exp2(S * scale*log2e - lse*log2e),
 * dS = P (dP - delta) * scale (the scale folded into dS), dQ = dS K, dK = dS^T Q, dV = P^T dO.
 * mma.sync m16n8k16 fragments (g = lane / 4, c = lane % 4), each 32-bit register two bf16 of
 * consecutive k: A a0 = A[g][2c..], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..];
 * B b0 = B[2c..][g], b1 = B[2c+8..][g]; C c0, c1 = C[g][2c, 2c+1], c2, c3 = C[g+8][2c, 2c+1].
 * The C of two neighbouring n8 tiles, rounded to bf16 pairs, is the A fragment of the next
 * product over those 16 columns: that is how P and dS feed the dV, dK, dQ products.
 * - dq pass: block (b*H + h, query tile of 64, the longest rows first), 4 warps, warp w owns
 *   query rows w*16 .. w*16+15. Q, dO once (A of S = Q K^T, dP = dO V^T); per key tile
 *   0..diagonal: K (B of S; .trans: B of dQ += dS K) and V (B of dP).
 * - dk/dv pass: block (b*KVH + kvh, key tile of 64; tile 0, the longest, first), warp w owns key
 *   rows w*16 ..; the heads of the group one after another, query tiles from the diagonal to the
 *   end, each in two halves of 32 queries (S^T, dP^T in 16 registers each beside the 2 x D/2
 *   accumulator registers). K, V once (A of S^T = K Q^T and dP^T = V dO^T); per query tile Q
 *   and dO (B of those; .trans: B of dK += dS^T Q, dV += P^T dO).
 * - masks: p = 0 where key > query or query >= T (which also covers keys >= T); rows past T are
 *   zeros in shared memory and never written back.
 * Shared rows are padded by 8 bf16 (rows of 16-byte multiples) so that the 8 row addresses of
 * each ldmatrix phase fall in distinct 16-byte bank groups. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_common.cuh"

#define MB_TILE 64  /* query rows and key rows of a tile */
#define MB_QHALF 32 /* queries per inner step of the dk/dv pass */
#define MB_WARPS 4  /* warp w owns rows w*16 .. w*16+15 */
#define MB_THREADS (MB_WARPS * 32)
#define MB_LOG2E 1.4426950408889634f

static_assert(MB_TILE == MB_WARPS * 16, "each warp owns 16 rows of a tile");
static_assert(MB_TILE % MB_QHALF == 0 && MB_QHALF % 16 == 0, "query halves of whole k16 steps");

typedef __nv_bfloat16 mb_bf16;

/* Shared memory of the two kernels for head dim D, in bytes; every region a multiple of 16. */
template <int D> struct MbSmem {
    static constexpr int LDR = D + 8; /* bf16 row of a row-major tile [64][D+8] */
    static constexpr size_t ROWS = (size_t)MB_TILE * LDR * 2;
    static constexpr size_t VEC = (size_t)MB_TILE * 4;
    static constexpr size_t DQ = 4 * ROWS;             /* Q dO K V */
    static constexpr size_t DKDV = 4 * ROWS + 2 * VEC; /* K V Q dO, lse delta */
    static_assert(ROWS % 16 == 0 && VEC % 16 == 0, "regions 16-byte aligned");
    static_assert(LDR % 8 == 0, "ldmatrix rows stay 16-byte aligned");
};

__device__ static inline void mb_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                     uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ static inline uint32_t mb_pack(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* ldmatrix x4: lanes 8i .. 8i+7 give the row addresses (16 bytes each, 16-byte aligned) of 8x8
 * matrix i, and r[i] receives, without .trans, element [g][2c, 2c+1] of matrix i; with .trans,
 * elements [2c][g], [2c+1][g]. The lane offsets of the kernels (lane_a, lane_b) place the four
 * matrices so that r is an A fragment, or the (b0, b1) of two neighbouring n8 tiles. */
__device__ static inline void mb_ldsm4(uint32_t (&r)[4], const mb_bf16 *p)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ static inline void mb_ldsm4_trans(uint32_t (&r)[4], const mb_bf16 *p)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* The A fragment over 16 columns from the C of n8 tiles lo (columns 0..7) and hi (8..15). */
__device__ static inline void mb_c_to_a(uint32_t (&a)[4], const float (&lo)[4],
                                        const float (&hi)[4])
{
    a[0] = mb_pack(lo[0], lo[1]);
    a[1] = mb_pack(lo[2], lo[3]);
    a[2] = mb_pack(hi[0], hi[1]);
    a[3] = mb_pack(hi[2], hi[3]);
}

/* Rows 0..63 of an fp32 matrix (src at the tile's first row and the head's first column, row
 * stride `stride`) into a bf16 tile [64][D+8]; rows >= rows_valid become zeros. */
template <int D>
__device__ static void mb_load_rows(mb_bf16 *dst, const float *src, size_t stride, int rows_valid)
{
    constexpr int V4 = D / 4;
    for (int idx = threadIdx.x; idx < MB_TILE * V4; idx += MB_THREADS) {
        const int r = idx / V4, c = (idx % V4) * 4;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < rows_valid) x = *reinterpret_cast<const float4 *>(src + (size_t)r * stride + c);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + r * (D + 8) + c);
        d2[0] = __floats2bfloat162_rn(x.x, x.y);
        d2[1] = __floats2bfloat162_rn(x.z, x.w);
    }
}

/* ---------------------------------------------------------------------------------------------
 * dq: grid (B*H, query tiles), MB_THREADS threads, MbSmem<D>::DQ bytes. */

template <int D>
__global__ static void __launch_bounds__(MB_THREADS)
    mb_dq_kernel(float *dq, const float *dout, const float *lse, const float *delta, const float *q,
                 const float *k, const float *v, int T, int H, int KVH, float scale,
                 float scale_log2)
{
    typedef MbSmem<D> S;
    constexpr int LDR = S::LDR, NT = MB_TILE / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char mb_smem[];
    mb_bf16 *Qs = reinterpret_cast<mb_bf16 *>(mb_smem);
    mb_bf16 *dOs = reinterpret_cast<mb_bf16 *>(mb_smem + S::ROWS);
    mb_bf16 *Ks = reinterpret_cast<mb_bf16 *>(mb_smem + 2 * S::ROWS);
    mb_bf16 *Vs = reinterpret_cast<mb_bf16 *>(mb_smem + 3 * S::ROWS);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int qt = gridDim.y - 1 - blockIdx.y; /* the longest rows start first */
    const int q0 = qt * MB_TILE, r0 = warp * 16;
    const int t_lo = q0 + r0 + g, t_hi = t_lo + 8; /* this thread's two query rows */
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const size_t qoff = (size_t)b * T * qstride + (size_t)h * D;
    const float *kbase = k + (size_t)b * T * kvstride + (size_t)kvh * D;
    const float *vbase = v + (size_t)b * T * kvstride + (size_t)kvh * D;
    const size_t stats = ((size_t)b * H + h) * T;

    mb_load_rows<D>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
    mb_load_rows<D>(dOs, dout + qoff + (size_t)q0 * qstride, qstride, T - q0);
    const float lse_lo = t_lo < T ? lse[stats + t_lo] * MB_LOG2E : 0.0f;
    const float lse_hi = t_hi < T ? lse[stats + t_hi] * MB_LOG2E : 0.0f;
    const float delta_lo = t_lo < T ? delta[stats + t_lo] : 0.0f;
    const float delta_hi = t_hi < T ? delta[stats + t_hi] : 0.0f;

    float acc[ND][4]; /* dQ rows t_lo (0, 1), t_hi (2, 3), columns n*8 + 2c, +1 */
#pragma unroll
    for (int n = 0; n < ND; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    /* ldmatrix row offsets: lane_a for A fragments (matrices rows 0-7 / 8-15 x cols 0-7 / 8-15)
       and for .trans B of n8 tiles n, n+1 (k rows 0-7 / 8-15 x n cols +0 / +8); lane_b for B
       without .trans, n8 tiles j, j+1 (n rows +0 / +8 x k cols 0-7 / 8-15) */
    const int lane_a = ((lane & 7) + ((lane >> 3) & 1) * 8) * LDR + ((lane >> 4) & 1) * 8;
    const int lane_b = ((lane & 7) + ((lane >> 4) & 1) * 8) * LDR + ((lane >> 3) & 1) * 8;
    const mb_bf16 *qa_p = Qs + r0 * LDR + lane_a;
    const mb_bf16 *oa_p = dOs + r0 * LDR + lane_a;

    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * MB_TILE;
        __syncthreads(); /* every warp is done with the previous K and V (and Q, dO are visible,
                            the first time) */
        mb_load_rows<D>(Ks, kbase + (size_t)k0 * kvstride, kvstride, T - k0);
        mb_load_rows<D>(Vs, vbase + (size_t)k0 * kvstride, kvstride, T - k0);
        __syncthreads();

        float s[NT][4], dp[NT][4]; /* S and dP: rows t_lo, t_hi, keys k0 + j*8 + 2c, +1 */
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            uint32_t bb[4];
            mb_ldsm4(a, qa_p + kk * 16);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                mb_ldsm4(bb, Ks + lane_b + j * 8 * LDR + kk * 16);
                mb_mma(s[j], a, bb[0], bb[1]);
                mb_mma(s[j + 1], a, bb[2], bb[3]);
            }
            mb_ldsm4(a, oa_p + kk * 16);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                mb_ldsm4(bb, Vs + lane_b + j * 8 * LDR + kk * 16);
                mb_mma(dp[j], a, bb[0], bb[1]);
                mb_mma(dp[j + 1], a, bb[2], bb[3]);
            }
        }

        /* dS = P (dP - delta) * scale into s */
#pragma unroll
        for (int j = 0; j < NT; j++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = k0 + j * 8 + 2 * c + e;
                const bool live_lo = key <= t_lo && t_lo < T, live_hi = key <= t_hi && t_hi < T;
                const float p_lo = live_lo ? exp2f(s[j][e] * scale_log2 - lse_lo) : 0.0f;
                const float p_hi = live_hi ? exp2f(s[j][2 + e] * scale_log2 - lse_hi) : 0.0f;
                s[j][e] = p_lo * (dp[j][e] - delta_lo) * scale;
                s[j][2 + e] = p_hi * (dp[j][2 + e] - delta_hi) * scale;
            }
        }

        /* dQ += dS K over the tile's 64 keys, 16 at a time (B[key][d] = K[key][d], ldmatrix .trans)
         */
#pragma unroll
        for (int kk = 0; kk < MB_TILE / 16; kk++) {
            uint32_t a[4];
            mb_c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int n = 0; n < ND; n += 2) {
                uint32_t bb[4];
                mb_ldsm4_trans(bb, Ks + lane_a + kk * 16 * LDR + n * 8);
                mb_mma(acc[n], a, bb[0], bb[1]);
                mb_mma(acc[n + 1], a, bb[2], bb[3]);
            }
        }
    }

    float *dst_lo = dq + qoff + (size_t)t_lo * qstride + 2 * c;
    float *dst_hi = dst_lo + 8 * qstride;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (t_lo < T)
            *reinterpret_cast<float2 *>(dst_lo + n * 8) = make_float2(acc[n][0], acc[n][1]);
        if (t_hi < T)
            *reinterpret_cast<float2 *>(dst_hi + n * 8) = make_float2(acc[n][2], acc[n][3]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * dk and dv: grid (B*KVH, key tiles), MB_THREADS threads, MbSmem<D>::DKDV bytes. */

template <int D>
__global__ static void __launch_bounds__(MB_THREADS)
    mb_dkdv_kernel(float *dk, float *dv, const float *dout, const float *lse, const float *delta,
                   const float *q, const float *k, const float *v, int T, int H, int KVH,
                   float scale, float scale_log2)
{
    typedef MbSmem<D> S;
    constexpr int LDR = S::LDR, NJ = MB_QHALF / 8, ND = D / 8;
    extern __shared__ __align__(16) unsigned char mb_smem[];
    mb_bf16 *Ks = reinterpret_cast<mb_bf16 *>(mb_smem);
    mb_bf16 *Vs = reinterpret_cast<mb_bf16 *>(mb_smem + S::ROWS);
    mb_bf16 *Qs = reinterpret_cast<mb_bf16 *>(mb_smem + 2 * S::ROWS);
    mb_bf16 *dOs = reinterpret_cast<mb_bf16 *>(mb_smem + 3 * S::ROWS);
    float *lse_s = reinterpret_cast<float *>(mb_smem + 4 * S::ROWS);
    float *delta_s = lse_s + MB_TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / KVH, kvh = blockIdx.x % KVH, group = H / KVH;
    const int kt = blockIdx.y, tiles = gridDim.y; /* tile 0 has the most query tiles */
    const int k0 = kt * MB_TILE, r0 = warp * 16;
    const int key_lo = k0 + r0 + g, key_hi = key_lo + 8; /* this thread's two key rows */
    const size_t qstride = (size_t)H * D, kvstride = (size_t)KVH * D;
    const size_t kvoff = (size_t)b * T * kvstride + (size_t)kvh * D;

    mb_load_rows<D>(Ks, k + kvoff + (size_t)k0 * kvstride, kvstride, T - k0);
    mb_load_rows<D>(Vs, v + kvoff + (size_t)k0 * kvstride, kvstride, T - k0);

    float dk_acc[ND][4], dv_acc[ND][4]; /* rows key_lo (0, 1), key_hi (2, 3), columns n*8 + 2c */
#pragma unroll
    for (int n = 0; n < ND; n++) {
        dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = 0.0f;
        dv_acc[n][0] = dv_acc[n][1] = dv_acc[n][2] = dv_acc[n][3] = 0.0f;
    }
    /* ldmatrix row offsets: lane_a for A fragments (matrices rows 0-7 / 8-15 x cols 0-7 / 8-15)
       and for .trans B of n8 tiles n, n+1 (k rows 0-7 / 8-15 x n cols +0 / +8); lane_b for B
       without .trans, n8 tiles j, j+1 (n rows +0 / +8 x k cols 0-7 / 8-15) */
    const int lane_a = ((lane & 7) + ((lane >> 3) & 1) * 8) * LDR + ((lane >> 4) & 1) * 8;
    const int lane_b = ((lane & 7) + ((lane >> 4) & 1) * 8) * LDR + ((lane >> 3) & 1) * 8;
    const mb_bf16 *ka_p = Ks + r0 * LDR + lane_a;
    const mb_bf16 *va_p = Vs + r0 * LDR + lane_a;

    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const size_t qoff = (size_t)b * T * qstride + (size_t)h * D;
        const size_t stats = ((size_t)b * H + h) * T;
        for (int qt = kt; qt < tiles; qt++) {
            const int q0 = qt * MB_TILE;
            __syncthreads(); /* every warp is done with the previous Q, dO, row stats
                                (and K, V are visible, the first time) */
            mb_load_rows<D>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
            mb_load_rows<D>(dOs, dout + qoff + (size_t)q0 * qstride, qstride, T - q0);
            for (int i = threadIdx.x; i < MB_TILE; i += MB_THREADS) {
                const bool valid = q0 + i < T;
                lse_s[i] = valid ? lse[stats + q0 + i] * MB_LOG2E : 0.0f;
                delta_s[i] = valid ? delta[stats + q0 + i] : 0.0f;
            }
            __syncthreads();

#pragma unroll 1
            for (int qh = 0; qh < MB_TILE; qh += MB_QHALF) {
                /* on the diagonal, queries all before the warp's first key: nothing (uniform
                   over the warp; no block barrier below) */
                if (qt == kt && qh + MB_QHALF - 1 < r0) continue;

                /* S^T = K Q^T and dP^T = V dO^T: rows key_lo, key_hi, queries
                   q0 + qh + j*8 + 2c, +1 */
                float st[NJ][4], dpt[NJ][4];
#pragma unroll
                for (int j = 0; j < NJ; j++) {
                    st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.0f;
                    dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.0f;
                }
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    uint32_t a[4];
                    uint32_t bb[4];
                    mb_ldsm4(a, ka_p + kk * 16);
#pragma unroll
                    for (int j = 0; j < NJ; j += 2) {
                        mb_ldsm4(bb, Qs + lane_b + (qh + j * 8) * LDR + kk * 16);
                        mb_mma(st[j], a, bb[0], bb[1]);
                        mb_mma(st[j + 1], a, bb[2], bb[3]);
                    }
                    mb_ldsm4(a, va_p + kk * 16);
#pragma unroll
                    for (int j = 0; j < NJ; j += 2) {
                        mb_ldsm4(bb, dOs + lane_b + (qh + j * 8) * LDR + kk * 16);
                        mb_mma(dpt[j], a, bb[0], bb[1]);
                        mb_mma(dpt[j + 1], a, bb[2], bb[3]);
                    }
                }

                /* P^T into st, dS^T = P^T (dP^T - delta) * scale into dpt */
#pragma unroll
                for (int j = 0; j < NJ; j++) {
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int ql = qh + j * 8 + 2 * c + e, tq = q0 + ql;
                        const float row_lse = lse_s[ql], row_delta = delta_s[ql];
                        const bool live_lo = key_lo <= tq && tq < T;
                        const bool live_hi = key_hi <= tq && tq < T;
                        const float p_lo = live_lo ? exp2f(st[j][e] * scale_log2 - row_lse) : 0.0f;
                        const float p_hi =
                            live_hi ? exp2f(st[j][2 + e] * scale_log2 - row_lse) : 0.0f;
                        st[j][e] = p_lo;
                        st[j][2 + e] = p_hi;
                        dpt[j][e] = p_lo * (dpt[j][e] - row_delta) * scale;
                        dpt[j][2 + e] = p_hi * (dpt[j][2 + e] - row_delta) * scale;
                    }
                }

                /* dV += P^T dO, dK += dS^T Q over these queries, 16 at a time
                   (B[query][d] = dO[query][d], Q[query][d]: ldmatrix .trans) */
#pragma unroll
                for (int kk = 0; kk < MB_QHALF / 16; kk++) {
                    uint32_t pa[4], da[4];
                    mb_c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
                    mb_c_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                    for (int n = 0; n < ND; n += 2) {
                        const int off = lane_a + (qh + kk * 16) * LDR + n * 8;
                        uint32_t bb[4];
                        mb_ldsm4_trans(bb, dOs + off);
                        mb_mma(dv_acc[n], pa, bb[0], bb[1]);
                        mb_mma(dv_acc[n + 1], pa, bb[2], bb[3]);
                        mb_ldsm4_trans(bb, Qs + off);
                        mb_mma(dk_acc[n], da, bb[0], bb[1]);
                        mb_mma(dk_acc[n + 1], da, bb[2], bb[3]);
                    }
                }
            }
        }
    }

    float *dk_lo = dk + kvoff + (size_t)key_lo * kvstride + 2 * c, *dk_hi = dk_lo + 8 * kvstride;
    float *dv_lo = dv + kvoff + (size_t)key_lo * kvstride + 2 * c, *dv_hi = dv_lo + 8 * kvstride;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (key_lo < T) {
            *reinterpret_cast<float2 *>(dk_lo + n * 8) = make_float2(dk_acc[n][0], dk_acc[n][1]);
            *reinterpret_cast<float2 *>(dv_lo + n * 8) = make_float2(dv_acc[n][0], dv_acc[n][1]);
        }
        if (key_hi < T) {
            *reinterpret_cast<float2 *>(dk_hi + n * 8) = make_float2(dk_acc[n][2], dk_acc[n][3]);
            *reinterpret_cast<float2 *>(dv_hi + n * 8) = make_float2(dv_acc[n][2], dv_acc[n][3]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * launch */

static int mb_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

template <int D>
static int mb_backward_launch(float *dq, float *dk, float *dv, const float *dout,
                              const float *delta, const float *lse, const float *q, const float *k,
                              const float *v, int B, int T, int H, int KVH, cudaStream_t stream)
{
    typedef MbSmem<D> S;
    static int ready = -1; /* -1 unknown, 0 the device cannot hold the tiles, 1 ready */
    if (ready < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready = S::DQ <= (size_t)optin && S::DKDV <= (size_t)optin;
        if (ready) {
            cudaCheck(cudaFuncSetAttribute(
                mb_dq_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::DQ));
            cudaCheck(cudaFuncSetAttribute(
                mb_dkdv_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::DKDV));
        }
    }
    if (!ready) return 0;
    const float scale = 1.0f / sqrtf((float)D), scale_log2 = scale * MB_LOG2E;
    const int tiles = ceil_div(T, MB_TILE);
    mb_dq_kernel<D><<<dim3(B * H, tiles), MB_THREADS, S::DQ, stream>>>(
        dq, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
    mb_dkdv_kernel<D><<<dim3(B * KVH, tiles), MB_THREADS, S::DKDV, stream>>>(
        dk, dv, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
    return 1;
}

extern "C" int cuda_mma_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                           const float *delta, const float *lse, const float *q,
                                           const float *k, const float *v, int B, int T, int H,
                                           int KVH, int D, cudaStream_t stream)
{
    if (D != 64 && D != 128) return 0;
    if (B <= 0 || T <= 0 || H <= 0 || KVH <= 0 || H % KVH != 0) return 0;
    if ((long long)B * H > INT32_MAX || (T + MB_TILE - 1) / MB_TILE > 65535) return 0;
    if (!mb_aligned16(dq) || !mb_aligned16(dk) || !mb_aligned16(dv) || !mb_aligned16(dout) ||
        !mb_aligned16(q) || !mb_aligned16(k) || !mb_aligned16(v))
        return 0;
    return D == 64
               ? mb_backward_launch<64>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H, KVH, stream)
               : mb_backward_launch<128>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H, KVH,
                                         stream);
}
