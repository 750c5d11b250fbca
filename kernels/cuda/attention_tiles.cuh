/* attention_tiles.cuh: the pieces the mma.sync attention kernels (attention_mma_fwd.cu,
 * attention_mma_bwd.cu) share: the bf16 tensor-core product, fragment loads by ldmatrix, and
 * asynchronous (cp.async) staging of bf16 row tiles into shared memory. Device code only.
 *
 * mma.sync m16n8k16 fragments (g = lane / 4, c = lane % 4), each 32-bit register two bf16 of
 * consecutive k: A a0 = A[g][2c..], a1 = A[g+8][2c..], a2 = A[g][2c+8..], a3 = A[g+8][2c+8..];
 * B b0 = B[2c..][g], b1 = B[2c+8..][g]; C c0, c1 = C[g][2c, 2c+1], c2, c3 = C[g+8][2c, 2c+1].
 * The C of two neighbouring n8 tiles, rounded to bf16 pairs, is the A fragment of the next
 * product over those 16 columns (at_c_to_a): that is how P and dS feed the products after them.
 * Shared tiles are row-major [rows][D + 8] bf16: rows of 16-byte multiples, padded so that the 8
 * row addresses of each ldmatrix phase fall in distinct 16-byte bank groups. */
#ifndef DSTRAIN_ATTENTION_TILES_CUH
#define DSTRAIN_ATTENTION_TILES_CUH

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 at_bf16;

#define AT_LOG2E 1.4426950408889634f
#define AT_LN2 0.6931471805599453f

__device__ static inline void at_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                     uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ static inline uint32_t at_pack(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* Two neighbouring output elements of a C fragment (c0, c1 or c2, c3) stored as the output's type:
 * fp32, or bf16 (the CUDA backend's activations in bf16 mode). */
__device__ static inline void at_store2(float *p, float a, float b)
{
    *reinterpret_cast<float2 *>(p) = make_float2(a, b);
}
__device__ static inline void at_store2(at_bf16 *p, float a, float b)
{
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

/* The A fragment over 16 columns from the C of n8 tiles lo (columns 0..7) and hi (8..15). */
__device__ static inline void at_c_to_a(uint32_t (&a)[4], const float (&lo)[4],
                                        const float (&hi)[4])
{
    a[0] = at_pack(lo[0], lo[1]);
    a[1] = at_pack(lo[2], lo[3]);
    a[2] = at_pack(hi[0], hi[1]);
    a[3] = at_pack(hi[2], hi[3]);
}

/* ldmatrix x4: lanes 8i .. 8i+7 give the row addresses (16 bytes each, 16-byte aligned) of 8x8
 * matrix i, and r[i] receives, without .trans, element [g][2c, 2c+1] of matrix i; with .trans,
 * elements [2c][g], [2c+1][g]. The lane offsets below place the four matrices so that r is an A
 * fragment, or the (b0, b1) of two neighbouring n8 tiles. */
__device__ static inline void at_ldsm4(uint32_t (&r)[4], const at_bf16 *p)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ static inline void at_ldsm4_trans(uint32_t (&r)[4], const at_bf16 *p)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* Row offset of this lane in a tile of row length ld, for at_ldsm4 of an A fragment (matrices
 * rows 0-7 / 8-15 x columns 0-7 / 8-15), which is also at_ldsm4_trans of the B of n8 tiles n,
 * n+1 (k rows 0-7 / 8-15 x n columns +0 / +8). */
__device__ static inline int at_lane_a(int lane, int ld)
{
    return ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + ((lane >> 4) & 1) * 8;
}

/* ... and for at_ldsm4 of the B of n8 tiles j, j+1 stored as rows n (n rows +0 / +8 x k columns
 * 0-7 / 8-15). */
__device__ static inline int at_lane_b(int lane, int ld)
{
    return ((lane & 7) + ((lane >> 4) & 1) * 8) * ld + ((lane >> 3) & 1) * 8;
}

/* acc[16 x D] += C[16 x KEYS] . tile[KEYS][D]: C is this warp's product of 16 rows by KEYS
 * columns in the C fragments of KEYS/8 n8 tiles (scores, probabilities or their gradients),
 * rounded to bf16 as the A operand, and tile a row-major shared tile of row length ld whose rows
 * are the k of the product (B[key][d] = tile[key][d], read by ldmatrix .trans). P V in the
 * forward, dS K in the dq pass. */
template <int D, int KEYS>
__device__ static inline void at_mma_c_tile(float (&acc)[D / 8][4], const float (&c)[KEYS / 8][4],
                                            const at_bf16 *tile, int lane_a, int ld)
{
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; kk++) {
        uint32_t a[4];
        at_c_to_a(a, c[2 * kk], c[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
            uint32_t bb[4];
            at_ldsm4_trans(bb, tile + lane_a + kk * 16 * ld + n * 8);
            at_mma(acc[n], a, bb[0], bb[1]);
            at_mma(acc[n + 1], a, bb[2], bb[3]);
        }
    }
}

/* cp.async of 16 (or 4) bytes global -> shared; src_bytes 0 fills the destination with zeros
 * and reads nothing. */
__device__ static inline void at_cp_async16(void *smem, const void *gmem, int src_bytes)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem),
                 "r"(src_bytes));
}

__device__ static inline void at_cp_async4(void *smem, const void *gmem, int src_bytes)
{
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(gmem),
                 "r"(src_bytes));
}

__device__ static inline void at_cp_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::);
}

/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ static inline void at_cp_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Starts copying rows 0..ROWS-1 of a bf16 matrix (src at the tile's first row and the head's
 * first column, row stride `stride` elements) into the shared tile dst [ROWS][D+8]; rows at or
 * past rows_valid (at least 1) become zeros. Every thread of the block takes part. */
template <int D, int ROWS, int THREADS>
__device__ static inline void at_load_tile(at_bf16 *dst, const at_bf16 *src, size_t stride,
                                           int rows_valid)
{
    constexpr int CHUNKS = D / 8; /* 16-byte pieces of a row */
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += THREADS) {
        const int r = idx / CHUNKS, ch = idx % CHUNKS;
        const bool valid = r < rows_valid;
        at_cp_async16(dst + r * (D + 8) + ch * 8, src + (valid ? (size_t)r * stride : 0) + ch * 8,
                      valid ? 16 : 0);
    }
}

#endif
