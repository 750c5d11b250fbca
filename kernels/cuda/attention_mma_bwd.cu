/* attention_mma_bwd.cu: causal attention backward with grouped-query heads on the bf16 tensor
 * cores through mma.sync.m16n8k16 (FlashAttention-2 structure: a dq pass and a dk/dv pass, no
 * atomics), for head_dim 64 and 128, and for q/k heads of 192 with v heads of 128 (DeepSeek's
 * latent attention; the kernels are templated on the two head sizes, DQK >= DV, the dP and dV
 * products riding in the loops of the S and dK ones), with the contract of attention.cuh; on Hopper
 * it hands head_dim 128 to the wgmma kernels of attention_wgmma.cu (unless
 * cuda.attention: mma). Because the mma.sync register layouts are known, S, P, dP, dS and
 * the dQ / dK / dV accumulators never leave the registers: shared memory holds only row-major bf16
 * tiles of the inputs, read as fragments by ldmatrix (.trans where a product's k runs along the
 * tile's rows: k = key or k = query). Inputs and outputs are bf16 in global memory in bf16 mode;
 * fp32 ones are rounded to bf16 once per call into a workspace (attention_mma_fwd.cu) and the
 * outputs written as fp32. Tiles stream by cp.async into double buffers, so the next tile arrives
 * while this one is multiplied. Sums are fp32. Every output element is written once by one thread
 * after a fixed-order sum, so a run repeats bit for bit.
 *
 * Layout (kernels/ops.h): q, dq [B*T, H*DQK]; dout [B*T, H*DV]; k, dk [B*T, KVH*DQK]; v, dv
 * [B*T, KVH*DV]; head h reads kv head h / (H/KVH); lse, delta [B, H, T] (lse: natural
 * log-sum-exp of the scaled scores; delta = rowsum(dout * out)). scale = 1/sqrt(D) for
 * attention_backward, the given one for the latent attention.
 * P = exp2(S * scale*log2e - lse*log2e), dS = P (dP - delta) * scale (the scale folded into dS), dQ
 * = dS K, dK = dS^T Q, dV = P^T dO. Fragments and tiles as in attention_tiles.cuh.
 * - dq pass: block (b*H + h, query tile of 64, the longest rows first), 4 warps, warp w owns
 *   query rows w*16 .. w*16+15. Q, dO once (A of S = Q K^T, dP = dO V^T); per key tile
 *   0..diagonal: K (B of S; .trans: B of dQ += dS K) and V (B of dP).
 * - dk/dv pass: block (b*KVH + kvh, key tile of 64; tile 0, the longest, first), warp w owns key
 *   rows w*16 ..; the heads of the group one after another, query tiles from the diagonal to the
 *   end, each in two halves of 32 queries (S^T, dP^T in 16 registers each beside the DQK/2
 *   + DV/2 accumulator registers). K, V once (A of S^T = K Q^T and dP^T = V dO^T); per query tile Q
 *   and dO (B of those; .trans: B of dK += dS^T Q, dV += P^T dO).
 * - masks: p = 0 where key > query or query >= T (which also covers keys >= T); rows past T are
 *   zeros in shared memory and never written back. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention.cuh"
#include "attention_tiles.cuh"
#include "cuda_common.cuh"

#define MB_TILE 64  /* query rows and key rows of a tile */
#define MB_QHALF 32 /* queries per inner step of the dk/dv pass */
#define MB_WARPS 4  /* warp w owns rows w*16 .. w*16+15 */
#define MB_THREADS (MB_WARPS * 32)

static_assert(MB_TILE == MB_WARPS * 16, "each warp owns 16 rows of a tile");
static_assert(MB_TILE % MB_QHALF == 0 && MB_QHALF % 16 == 0, "query halves of whole k16 steps");

/* Shared memory of the two kernels for q/k heads of DQK and v heads of DV, in bytes; every region
 * a multiple of 16. Tiles of q, k (and dq, dk) rows are [64][DQK+8], of v and dout rows
 * [64][DV+8]. */
template <int DQK, int DV> struct MbSmem {
    static constexpr int LDQ = DQK + 8, LDV = DV + 8;       /* bf16 rows of the row-major tiles */
    static constexpr size_t RQ = (size_t)MB_TILE * LDQ * 2; /* a Q or K tile */
    static constexpr size_t RV = (size_t)MB_TILE * LDV * 2; /* a V or dO tile */
    static constexpr size_t VEC = (size_t)MB_TILE * 4;
    static constexpr size_t DQ = 3 * RQ + 3 * RV;             /* Q dO, K V twice */
    static constexpr size_t DKDV = 3 * RQ + 3 * RV + 4 * VEC; /* K V, Q dO lse delta twice */
    static_assert(RQ % 16 == 0 && RV % 16 == 0 && VEC % 16 == 0, "regions 16-byte aligned");
    static_assert(LDQ % 8 == 0 && LDV % 8 == 0, "ldmatrix rows stay 16-byte aligned");
};

/* ---------------------------------------------------------------------------------------------
 * dq: grid (B*H, query tiles), MB_THREADS threads, MbSmem<D>::DQ bytes. */

template <int DQK, int DV, typename O>
__global__ static void __launch_bounds__(MB_THREADS)
    mb_dq_kernel(O *dq, const at_bf16 *dout, const float *lse, const float *delta, const at_bf16 *q,
                 const at_bf16 *k, const at_bf16 *v, int T, int H, int KVH, float scale,
                 float scale_log2)
{
    typedef MbSmem<DQK, DV> S;
    static_assert(DQK >= DV, "the dP products ride in the S loop");
    constexpr int LDQ = S::LDQ, LDV = S::LDV, NT = MB_TILE / 8, ND = DQK / 8;
    constexpr int KTILE = MB_TILE * LDQ, VTILE = MB_TILE * LDV;
    extern __shared__ __align__(16) unsigned char mb_smem[];
    at_bf16 *Qs = reinterpret_cast<at_bf16 *>(mb_smem);
    at_bf16 *dOs = reinterpret_cast<at_bf16 *>(mb_smem + S::RQ);
    at_bf16 *Ks = reinterpret_cast<at_bf16 *>(mb_smem + S::RQ + S::RV);     /* [2][64][LDQ] */
    at_bf16 *Vs = reinterpret_cast<at_bf16 *>(mb_smem + 3 * S::RQ + S::RV); /* [2][64][LDV] */

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int qt = gridDim.y - 1 - blockIdx.y; /* the longest rows start first */
    const int q0 = qt * MB_TILE, r0 = warp * 16;
    const int t_lo = q0 + r0 + g, t_hi = t_lo + 8; /* this thread's two query rows */
    const size_t qstride = (size_t)H * DQK, kstride = (size_t)KVH * DQK;
    const size_t ostride = (size_t)H * DV, vstride = (size_t)KVH * DV;
    const size_t qoff = (size_t)b * T * qstride + (size_t)h * DQK;
    const size_t ooff = (size_t)b * T * ostride + (size_t)h * DV;
    const at_bf16 *kbase = k + (size_t)b * T * kstride + (size_t)kvh * DQK;
    const at_bf16 *vbase = v + (size_t)b * T * vstride + (size_t)kvh * DV;
    const size_t stats = ((size_t)b * H + h) * T;

    at_load_tile<DQK, MB_TILE, MB_THREADS>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
    at_load_tile<DV, MB_TILE, MB_THREADS>(dOs, dout + ooff + (size_t)q0 * ostride, ostride, T - q0);
    at_load_tile<DQK, MB_TILE, MB_THREADS>(Ks, kbase, kstride, T);
    at_load_tile<DV, MB_TILE, MB_THREADS>(Vs, vbase, vstride, T);
    at_cp_commit();
    const float lse_lo = t_lo < T ? lse[stats + t_lo] * AT_LOG2E : 0.0f;
    const float lse_hi = t_hi < T ? lse[stats + t_hi] * AT_LOG2E : 0.0f;
    const float delta_lo = t_lo < T ? delta[stats + t_lo] : 0.0f;
    const float delta_hi = t_hi < T ? delta[stats + t_hi] : 0.0f;

    float acc[ND][4]; /* dQ rows t_lo (0, 1), t_hi (2, 3), columns n*8 + 2c, +1 */
#pragma unroll
    for (int n = 0; n < ND; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int lane_aq = at_lane_a(lane, LDQ), lane_bq = at_lane_b(lane, LDQ);
    const int lane_bv = at_lane_b(lane, LDV);
    const at_bf16 *qa_p = Qs + r0 * LDQ + lane_aq;
    const at_bf16 *oa_p = dOs + r0 * LDV + at_lane_a(lane, LDV);

    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * MB_TILE;
        if (kt < qt) { /* the next K and V into the other buffers, freed at the end of kt-1 */
            const int k1 = k0 + MB_TILE, nb = (kt + 1) & 1;
            at_load_tile<DQK, MB_TILE, MB_THREADS>(Ks + nb * KTILE, kbase + (size_t)k1 * kstride,
                                                   kstride, T - k1);
            at_load_tile<DV, MB_TILE, MB_THREADS>(Vs + nb * VTILE, vbase + (size_t)k1 * vstride,
                                                  vstride, T - k1);
        }
        at_cp_commit();
        at_cp_wait<1>(); /* tile kt (and Q, dO) has landed for this thread ... */
        __syncthreads(); /* ... and for every thread */
        const at_bf16 *Kt = Ks + (kt & 1) * KTILE, *Vt = Vs + (kt & 1) * VTILE;

        float s[NT][4], dp[NT][4]; /* S and dP: rows t_lo, t_hi, keys k0 + j*8 + 2c, +1 */
#pragma unroll
        for (int j = 0; j < NT; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < DQK / 16; kk++) {
            uint32_t a[4];
            uint32_t bb[4];
            at_ldsm4(a, qa_p + kk * 16);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                at_ldsm4(bb, Kt + lane_bq + j * 8 * LDQ + kk * 16);
                at_mma(s[j], a, bb[0], bb[1]);
                at_mma(s[j + 1], a, bb[2], bb[3]);
            }
            if (kk >= DV / 16) continue;
            at_ldsm4(a, oa_p + kk * 16);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                at_ldsm4(bb, Vt + lane_bv + j * 8 * LDV + kk * 16);
                at_mma(dp[j], a, bb[0], bb[1]);
                at_mma(dp[j + 1], a, bb[2], bb[3]);
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

        at_mma_c_tile<DQK, MB_TILE>(acc, s, Kt, lane_aq, LDQ); /* dQ += dS K */
        __syncthreads(); /* every warp is done with these buffers before they are refilled */
    }

    O *dst_lo = dq + qoff + (size_t)t_lo * qstride + 2 * c;
    O *dst_hi = dst_lo + 8 * qstride;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (t_lo < T) at_store2(dst_lo + n * 8, acc[n][0], acc[n][1]);
        if (t_hi < T) at_store2(dst_hi + n * 8, acc[n][2], acc[n][3]);
    }
}

/* ---------------------------------------------------------------------------------------------
 * dk and dv: grid (B*KVH, key tiles), MB_THREADS threads, MbSmem<D>::DKDV bytes. */

/* Starts copying query tile q0 of head row offset qoff (Q, dO) and its row statistics into one
 * of the dk/dv pass's buffers; rows at or past T become zeros. */
template <int DQK, int DV>
__device__ static inline void
mb_load_query_tile(at_bf16 *Qs, at_bf16 *dOs, float *lse_s, float *delta_s, const at_bf16 *q,
                   const at_bf16 *dout, const float *lse, const float *delta, size_t qoff,
                   size_t ooff, size_t stats, size_t qstride, size_t ostride, int q0, int T)
{
    at_load_tile<DQK, MB_TILE, MB_THREADS>(Qs, q + qoff + (size_t)q0 * qstride, qstride, T - q0);
    at_load_tile<DV, MB_TILE, MB_THREADS>(dOs, dout + ooff + (size_t)q0 * ostride, ostride, T - q0);
    for (int i = threadIdx.x; i < 2 * MB_TILE; i += MB_THREADS) {
        const int row = i % MB_TILE;
        const bool valid = q0 + row < T;
        const float *src = (i < MB_TILE ? lse : delta) + stats + (valid ? q0 + row : 0);
        at_cp_async4((i < MB_TILE ? lse_s : delta_s) + row, src, valid ? 4 : 0);
    }
}

template <int DQK, int DV, typename O>
__global__ static void __launch_bounds__(MB_THREADS)
    mb_dkdv_kernel(O *dk, O *dv, const at_bf16 *dout, const float *lse, const float *delta,
                   const at_bf16 *q, const at_bf16 *k, const at_bf16 *v, int T, int H, int KVH,
                   float scale, float scale_log2)
{
    typedef MbSmem<DQK, DV> S;
    static_assert(DQK >= DV, "the dP^T and dV products ride in the S^T and dK loops");
    constexpr int LDQ = S::LDQ, LDV = S::LDV, NJ = MB_QHALF / 8, NK = DQK / 8, NV = DV / 8;
    constexpr int QTILE = MB_TILE * LDQ, OTILE = MB_TILE * LDV;
    extern __shared__ __align__(16) unsigned char mb_smem[];
    at_bf16 *Ks = reinterpret_cast<at_bf16 *>(mb_smem);
    at_bf16 *Vs = reinterpret_cast<at_bf16 *>(mb_smem + S::RQ);
    at_bf16 *Qs = reinterpret_cast<at_bf16 *>(mb_smem + S::RQ + S::RV);        /* [2][64][LDQ] */
    at_bf16 *dOs = reinterpret_cast<at_bf16 *>(mb_smem + 3 * S::RQ + S::RV);   /* [2][64][LDV] */
    float *lse_s = reinterpret_cast<float *>(mb_smem + 3 * S::RQ + 3 * S::RV); /* [2][64] */
    float *delta_s = lse_s + 2 * MB_TILE;                                      /* [2][64] */

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    const int b = blockIdx.x / KVH, kvh = blockIdx.x % KVH, group = H / KVH;
    const int kt = blockIdx.y, tiles = gridDim.y; /* tile 0 has the most query tiles */
    const int k0 = kt * MB_TILE, r0 = warp * 16;
    const int key_lo = k0 + r0 + g, key_hi = key_lo + 8; /* this thread's two key rows */
    const size_t qstride = (size_t)H * DQK, kstride = (size_t)KVH * DQK;
    const size_t ostride = (size_t)H * DV, vstride = (size_t)KVH * DV;
    const size_t koff = (size_t)b * T * kstride + (size_t)kvh * DQK;
    const size_t voff = (size_t)b * T * vstride + (size_t)kvh * DV;
    /* the steps of the block: every (head of the group, query tile from the diagonal on) */
    const int per_head = tiles - kt, steps = group * per_head;
    auto step_head = [&](int i) { return kvh * group + i / per_head; };
    auto step_q0 = [&](int i) { return (kt + i % per_head) * MB_TILE; };

    at_load_tile<DQK, MB_TILE, MB_THREADS>(Ks, k + koff + (size_t)k0 * kstride, kstride, T - k0);
    at_load_tile<DV, MB_TILE, MB_THREADS>(Vs, v + voff + (size_t)k0 * vstride, vstride, T - k0);
    {
        const int h = step_head(0);
        mb_load_query_tile<DQK, DV>(Qs, dOs, lse_s, delta_s, q, dout, lse, delta,
                                    (size_t)b * T * qstride + (size_t)h * DQK,
                                    (size_t)b * T * ostride + (size_t)h * DV,
                                    ((size_t)b * H + h) * T, qstride, ostride, step_q0(0), T);
    }
    at_cp_commit();

    /* rows key_lo (0, 1), key_hi (2, 3), columns n*8 + 2c */
    float dk_acc[NK][4], dv_acc[NV][4];
#pragma unroll
    for (int n = 0; n < NK; n++)
        dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < NV; n++)
        dv_acc[n][0] = dv_acc[n][1] = dv_acc[n][2] = dv_acc[n][3] = 0.0f;
    const int lane_aq = at_lane_a(lane, LDQ), lane_bq = at_lane_b(lane, LDQ);
    const int lane_av = at_lane_a(lane, LDV), lane_bv = at_lane_b(lane, LDV);
    const at_bf16 *ka_p = Ks + r0 * LDQ + lane_aq;
    const at_bf16 *va_p = Vs + r0 * LDV + lane_av;

    for (int step = 0; step < steps; step++) {
        if (step + 1 < steps) { /* the next query tile into the other buffers */
            const int h = step_head(step + 1), nb = (step + 1) & 1;
            mb_load_query_tile<DQK, DV>(
                Qs + nb * QTILE, dOs + nb * OTILE, lse_s + nb * MB_TILE, delta_s + nb * MB_TILE, q,
                dout, lse, delta, (size_t)b * T * qstride + (size_t)h * DQK,
                (size_t)b * T * ostride + (size_t)h * DV, ((size_t)b * H + h) * T, qstride, ostride,
                step_q0(step + 1), T);
        }
        at_cp_commit();
        at_cp_wait<1>(); /* this step's tiles (and K, V) have landed for this thread ... */
        __syncthreads(); /* ... and for every thread */
        const int q0 = step_q0(step), buf = step & 1;
        const at_bf16 *Qt = Qs + buf * QTILE, *dOt = dOs + buf * OTILE;
        const float *lse_t = lse_s + buf * MB_TILE, *delta_t = delta_s + buf * MB_TILE;

#pragma unroll 1
        for (int qh = 0; qh < MB_TILE; qh += MB_QHALF) {
            /* on the diagonal, queries all before the warp's first key: nothing (uniform
               over the warp; no block barrier below) */
            if (q0 == k0 && qh + MB_QHALF - 1 < r0) continue;

            /* S^T = K Q^T and dP^T = V dO^T: rows key_lo, key_hi, queries
               q0 + qh + j*8 + 2c, +1 */
            float st[NJ][4], dpt[NJ][4];
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.0f;
                dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++) {
                uint32_t a[4];
                uint32_t bb[4];
                at_ldsm4(a, ka_p + kk * 16);
#pragma unroll
                for (int j = 0; j < NJ; j += 2) {
                    at_ldsm4(bb, Qt + lane_bq + (qh + j * 8) * LDQ + kk * 16);
                    at_mma(st[j], a, bb[0], bb[1]);
                    at_mma(st[j + 1], a, bb[2], bb[3]);
                }
                if (kk >= DV / 16) continue;
                at_ldsm4(a, va_p + kk * 16);
#pragma unroll
                for (int j = 0; j < NJ; j += 2) {
                    at_ldsm4(bb, dOt + lane_bv + (qh + j * 8) * LDV + kk * 16);
                    at_mma(dpt[j], a, bb[0], bb[1]);
                    at_mma(dpt[j + 1], a, bb[2], bb[3]);
                }
            }

            /* P^T into st, dS^T = P^T (dP^T - delta) * scale into dpt */
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int ql = qh + j * 8 + 2 * c + e, tq = q0 + ql;
                    const float row_lse = lse_t[ql] * AT_LOG2E, row_delta = delta_t[ql];
                    const bool live_lo = key_lo <= tq && tq < T;
                    const bool live_hi = key_hi <= tq && tq < T;
                    const float p_lo = live_lo ? exp2f(st[j][e] * scale_log2 - row_lse) : 0.0f;
                    const float p_hi = live_hi ? exp2f(st[j][2 + e] * scale_log2 - row_lse) : 0.0f;
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
                at_c_to_a(pa, st[2 * kk], st[2 * kk + 1]);
                at_c_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
                for (int n = 0; n < NK; n += 2) {
                    uint32_t bb[4];
                    if (n < NV) {
                        at_ldsm4_trans(bb, dOt + lane_av + (qh + kk * 16) * LDV + n * 8);
                        at_mma(dv_acc[n], pa, bb[0], bb[1]);
                        at_mma(dv_acc[n + 1], pa, bb[2], bb[3]);
                    }
                    at_ldsm4_trans(bb, Qt + lane_aq + (qh + kk * 16) * LDQ + n * 8);
                    at_mma(dk_acc[n], da, bb[0], bb[1]);
                    at_mma(dk_acc[n + 1], da, bb[2], bb[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with these buffers before they are refilled */
    }
#undef MB_STEP_HEAD
#undef MB_STEP_Q0

    O *dk_lo = dk + koff + (size_t)key_lo * kstride + 2 * c, *dk_hi = dk_lo + 8 * kstride;
    O *dv_lo = dv + voff + (size_t)key_lo * vstride + 2 * c, *dv_hi = dv_lo + 8 * vstride;
#pragma unroll
    for (int n = 0; n < NK; n++) {
        if (key_lo < T) {
            at_store2(dk_lo + n * 8, dk_acc[n][0], dk_acc[n][1]);
            if (n < NV) at_store2(dv_lo + n * 8, dv_acc[n][0], dv_acc[n][1]);
        }
        if (key_hi < T) {
            at_store2(dk_hi + n * 8, dk_acc[n][2], dk_acc[n][3]);
            if (n < NV) at_store2(dv_hi + n * 8, dv_acc[n][2], dv_acc[n][3]);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * launch */

static int mb_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

template <int DQK, int DV, typename O> static int mb_ready(void);

template <int DQK, int DV, typename O>
static int mb_backward_launch(O *dq, O *dk, O *dv, const at_bf16 *dout, const float *delta,
                              const float *lse, const at_bf16 *q, const at_bf16 *k,
                              const at_bf16 *v, int B, int T, int H, int KVH, float scale,
                              cudaStream_t stream)
{
    typedef MbSmem<DQK, DV> S;
    if (!mb_ready<DQK, DV, O>()) return 0;
    const float scale_log2 = scale * AT_LOG2E;
    const int tiles = ceil_div(T, MB_TILE);
    mb_dq_kernel<DQK, DV, O><<<dim3(B * H, tiles), MB_THREADS, S::DQ, stream>>>(
        dq, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
    mb_dkdv_kernel<DQK, DV, O><<<dim3(B * KVH, tiles), MB_THREADS, S::DKDV, stream>>>(
        dk, dv, dout, lse, delta, q, k, v, T, H, KVH, scale, scale_log2);
    cudaCheck(cudaGetLastError());
    return 1;
}

/* 1 when this device holds the kernels' tiles for these head sizes (asked once per output
 * type). */
template <int DQK, int DV, typename O> static int mb_ready(void)
{
    typedef MbSmem<DQK, DV> S;
    static int ready = -1; /* -1 unknown, 0 the device cannot hold the tiles, 1 ready */
    if (ready < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready = S::DQ <= (size_t)optin && S::DKDV <= (size_t)optin;
        if (ready) {
            cudaCheck(cudaFuncSetAttribute(
                mb_dq_kernel<DQK, DV, O>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)S::DQ));
            cudaCheck(cudaFuncSetAttribute(mb_dkdv_kernel<DQK, DV, O>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)S::DKDV));
        }
    }
    return ready;
}

template <typename O>
static int mb_backward_as(O *dq, O *dk, O *dv, const at_bf16 *dout, const float *delta,
                          const float *lse, const at_bf16 *q, const at_bf16 *k, const at_bf16 *v,
                          int wgmma, int B, int T, int H, int KVH, int D, cudaStream_t stream)
{
    if (wgmma && cuda_wgmma_attention_backward(dq, dk, dv, sizeof(O) == 2, dout, delta, lse, q, k,
                                               v, B, T, H, KVH, D, stream))
        return 1;
    const float scale = 1.0f / sqrtf((float)D);
    return D == 64 ? mb_backward_launch<64, 64, O>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H,
                                                   KVH, scale, stream)
                   : mb_backward_launch<128, 128, O>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H,
                                                     KVH, scale, stream);
}

extern "C" int cuda_mma_attention_backward(void *dq, void *dk, void *dv, const void *dout,
                                           const float *delta, const float *lse, const void *q,
                                           const void *k, const void *v, int bf16, int wgmma,
                                           void *workspace, int B, int T, int H, int KVH, int D,
                                           cudaStream_t stream)
{
    if (!cuda_mma_attention_suits(B, T, H, KVH, D) || (!bf16 && !workspace)) return 0;
    if (!mb_aligned16(dq) || !mb_aligned16(dk) || !mb_aligned16(dv) || !mb_aligned16(dout) ||
        !mb_aligned16(q) || !mb_aligned16(k) || !mb_aligned16(v))
        return 0;
    if (bf16)
        return mb_backward_as((at_bf16 *)dq, (at_bf16 *)dk, (at_bf16 *)dv, (const at_bf16 *)dout,
                              delta, lse, (const at_bf16 *)q, (const at_bf16 *)k,
                              (const at_bf16 *)v, wgmma, B, T, H, KVH, D, stream);
    if (!(D == 64 ? mb_ready<64, 64, float>() : mb_ready<128, 128, float>())) return 0;
    at_bf16 *qb, *kb, *vb;
    cuda_mma_attention_stage(&qb, &kb, &vb, workspace, (const float *)q, (const float *)k,
                             (const float *)v, B, T, H, KVH, D, stream);
    /* dO after the three of the forward's staging */
    at_bf16 *dob = (at_bf16 *)((unsigned char *)workspace +
                               cuda_mma_attention_workspace(B, T, H, KVH, D, 0, 0));
    cuda_mma_attention_round(dob, (const float *)dout, (size_t)B * T * H * D, stream);
    return mb_backward_as((float *)dq, (float *)dk, (float *)dv, dob, delta, lse, qb, kb, vb, wgmma,
                          B, T, H, KVH, D, stream);
}

/* q/k and v heads of their own sizes (DeepSeek's latent attention), bf16 only */
extern "C" int cuda_mma_attention_backward_dv(__nv_bfloat16 *dq, __nv_bfloat16 *dk,
                                              __nv_bfloat16 *dv, const __nv_bfloat16 *dout,
                                              const float *delta, const float *lse,
                                              const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                              const __nv_bfloat16 *v, int wgmma, int B, int T,
                                              int H, int Dqk, int Dv, float scale,
                                              cudaStream_t stream)
{
    if (!cuda_mma_attention_dv_suits(B, T, H, Dqk, Dv)) return 0;
    if (!mb_aligned16(dq) || !mb_aligned16(dk) || !mb_aligned16(dv) || !mb_aligned16(dout) ||
        !mb_aligned16(q) || !mb_aligned16(k) || !mb_aligned16(v))
        return 0;
    if (wgmma && cuda_wgmma_attention_backward_dv(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H,
                                                  Dqk, Dv, scale, stream))
        return 1;
    if (Dqk == 192)
        return mb_backward_launch<192, 128, at_bf16>(dq, dk, dv, dout, delta, lse, q, k, v, B, T, H,
                                                     H, scale, stream);
    return Dqk == 64 ? mb_backward_launch<64, 64, at_bf16>(dq, dk, dv, dout, delta, lse, q, k, v, B,
                                                           T, H, H, scale, stream)
                     : mb_backward_launch<128, 128, at_bf16>(dq, dk, dv, dout, delta, lse, q, k, v,
                                                             B, T, H, H, scale, stream);
}
