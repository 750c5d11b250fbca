/* attention_wgmma.cu: causal attention with grouped-query heads for head_dim 128 on Hopper's
 * warpgroup tensor-core instructions (wgmma, sm_90a), forward and backward, and the forward of
 * DeepSeek's latent attention (q/k heads of 192, v heads of 128, the scale given), with tiles
 * brought in by the bulk tensor copy engine (TMA) and warp-specialised pipelines: in each block one
 * producer warp only issues TMA copies into a ring of shared-memory stages (mbarriers: "full" when
 * a stage has landed, "empty" when every consumer warp is done with it) and two consumer warpgroups
 * of 64 rows each only multiply. The forward is persistent (one block a multiprocessor taking
 * tiles, the longest first, the next tile's Q loaded under the current one) and its two consumer
 * warpgroups take turns on the tensor cores (ping-pong), so one's softmax runs under the other's
 * products; the backward is one grid per pass. The CUDA backend's default attention on sm_90
 * devices when this file was built for sm_90a (kernels/cuda/attention.cuh says how the build and
 * the device are checked); otherwise the mma.sync kernels of attention_mma_fwd.cu /
 * attention_mma_bwd.cu run, with the same contract and the same FlashAttention-2 structure.
 *
 * Numerics as the mma.sync kernels: bf16 products, fp32 accumulation, softmax and statistics;
 * P = exp2(S * scale*log2e - lse*log2e), dS = P (dP - delta) * scale, dQ = dS K, dK = dS^T Q,
 * dV = P^T dO. No atomics: the backward is a dq pass (block = 128 query rows, key tiles of 64)
 * and a dk/dv pass (block = 128 key rows of one kv head, query tiles of 64 of every head of the
 * group), and every output element is summed by one thread in a fixed order, so a run repeats bit
 * for bit (the sums are not the mma.sync kernels' order, so the bits differ from theirs).
 *
 * Shared tiles are [rows][128] bf16 stored as two column blocks of 64 (128-byte rows) in the
 * 128-byte swizzle of TMA and wgmma (16-byte chunk i of row r at chunk i ^ (r % 8)), each block
 * 1024-byte aligned. One layout serves both operand forms: "K-major" (the tile's rows are the M
 * or N of the product and its columns the k: Q K^T, dO V^T, K Q^T, V dO^T) and "MN-major" (its
 * rows are the k: P V, dS K, P^T dO, dS^T Q, through wgmma's transpose of B). The accumulator and
 * register-A layouts of wgmma are those of mma.sync m16n8k16 per warp (attention_tiles.cuh), so
 * scores become the A operand of the next product in registers, as in the mma.sync kernels.
 * Rows past T in a tile are whatever TMA reads there (the next sequence's rows, or zeros past the
 * tensor): finite, masked (key > query, or query >= T), and never written back. */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "attention.cuh"
#include "attention_tiles.cuh"
#include "cuda_common.cuh"

/* The sm_90a pass of this file (wgmma, setmaxnreg); every other pass compiles empty kernels,
 * never launched (cuda_wgmma_attention_ready asks the device which pass it loaded). */
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AW_DEVICE 1
#else
#define AW_DEVICE 0
#endif

#define AW_D 128                      /* head dim */
#define AW_CONSUMERS 2                /* consumer warpgroups, 64 rows each */
#define AW_ROWS (64 * AW_CONSUMERS)   /* rows a block owns: queries (forward, dq), keys (dk/dv) */
#define AW_CONSUMER_WARPS (4 * AW_CONSUMERS) /* the producer warp is the next one */
#define AW_THREADS (128 * (AW_CONSUMERS + 1)) /* + the producer warpgroup (one warp of it works) */
#define AW_STAGES 2                   /* depth of the streamed tiles' ring */
#define AW_FWD_KEYS 128               /* key rows of a forward stage */
#define AW_BWD_STEP 64                /* key rows (dq pass) or query rows (dk/dv) of a stage */

/* bytes of a [rows][128] bf16 tile: two column blocks of rows x 128 bytes */
#define AW_TILE(rows) ((rows) * AW_D * 2)

#if AW_DEVICE
/* ---------------------------------------------------------------------------------------------
 * device helpers: shared addresses, mbarriers, TMA, wgmma */

__device__ static inline uint32_t aw_smem(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ static inline void aw_bar_init(uint64_t *bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(aw_smem(bar)), "r"(count));
}

__device__ static inline void aw_bar_expect(uint64_t *bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(aw_smem(bar)),
                 "r"(bytes)
                 : "memory");
}

__device__ static inline void aw_bar_arrive(uint64_t *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(aw_smem(bar)) : "memory");
}

/* Waits until the barrier's phase of this parity has completed. */
__device__ static inline void aw_bar_wait(uint64_t *bar, int parity)
{
    uint32_t done = 0;
    do {
        asm volatile("{\n.reg .pred p;\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(aw_smem(bar)), "r"(parity)
                     : "memory");
    } while (!done);
}

/* TMA: the box at column x, row y of a 2-D tensor map into shared memory, completing on bar. */
__device__ static inline void aw_tma_load(void *dst, const CUtensorMap *map, uint64_t *bar, int x,
                                          int y)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
                 "[%0], [%1, {%3, %4}], [%2];\n" ::"r"(aw_smem(dst)),
                 "l"((uint64_t)map), "r"(aw_smem(bar)), "r"(x), "r"(y)
                 : "memory");
}

/* A [rows][128] tile at row y of a tensor whose head starts at column x: two boxes of 64 columns. */
__device__ static inline void aw_tma_tile(unsigned char *dst, const CUtensorMap *map, uint64_t *bar,
                                          int x, int y, int rows)
{
    aw_tma_load(dst, map, bar, x, y);
    aw_tma_load(dst + rows * 128, map, bar, x + 64, y);
}

/* A [rows][64 * BLOCKS] tile: BLOCKS boxes of 64 columns (the forward's q and k rows of DeepSeek's
 * latent attention: 192 columns, three blocks). */
template <int BLOCKS>
__device__ static inline void aw_tma_tile_n(unsigned char *dst, const CUtensorMap *map,
                                            uint64_t *bar, int x, int y, int rows)
{
#pragma unroll
    for (int i = 0; i < BLOCKS; i++)
        aw_tma_load(dst + i * rows * 128, map, bar, x + 64 * i, y);
}

/* wgmma shared-memory descriptor, 128-byte swizzle: start address, leading and stride byte
 * offsets (each >> 4). */
__device__ static inline uint64_t aw_desc(uint32_t addr, uint32_t lead, uint32_t stride)
{
    return (uint64_t)((addr & 0x3ffff) >> 4) | (uint64_t)((lead >> 4) & 0x3fff) << 16 |
           (uint64_t)((stride >> 4) & 0x3fff) << 32 | (uint64_t)1 << 62;
}

/* Operand descriptor of k16 step kk of a tile of `rows` rows, K-major: the product's M or N rows
 * from row0 on, k = the tile's columns 16 kk .. 16 kk + 15 (8-row groups 1024 bytes apart). */
__device__ static inline uint64_t aw_desc_k(const unsigned char *tile, int rows, int row0, int kk)
{
    return aw_desc(aw_smem(tile + (kk >> 2) * rows * 128 + row0 * 128 + (kk & 3) * 32), 16, 1024);
}

/* ... MN-major: k = the tile's rows 16 kk .. 16 kk + 15, N = its 128 columns (the second column
 * block `rows` x 128 bytes on). */
__device__ static inline uint64_t aw_desc_mn(const unsigned char *tile, int rows, int kk)
{
    return aw_desc(aw_smem(tile + kk * 16 * 128), rows * 128, 1024);
}

__device__ static inline void aw_fence(void)
{
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ static inline void aw_commit(void)
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

template <int N> __device__ static inline void aw_wait(void)
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Registers per thread after the roles split (setmaxnreg: whole warpgroups, multiples of 8): the
 * producer gives back what the consumers take, 128 x 40 + 256 x 232 <= 65536. */
__device__ static inline void aw_producer_regs(void)
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
}

__device__ static inline void aw_consumer_regs(void)
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
}

/* Keeps the compiler from touching accumulators across an asynchronous wgmma. */
template <int K> __device__ static inline void aw_hold(float (&d)[K])
{
#pragma unroll
    for (int i = 0; i < K; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

// clang-format off
/* d[32] (+)= A B over one k16 step, m64n64k16: A and B from shared memory (descriptors), both
 * K-major; accumulate is 0 for d = A B. */
__device__ static inline void aw_mma_ss_n64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                          int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* d[64] (+)= A B over one k16 step, m64n128k16: A and B from shared memory (descriptors), both
 * K-major; accumulate is 0 for d = A B. */
__device__ static inline void aw_mma_ss_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                          int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

/* d[64] += A B over one k16 step, m64n128k16: A from registers (the mma.sync A fragment layout,
 * per warp 16 rows), B from shared memory, MN-major (its rows are the k of the product). */
__device__ static inline void aw_mma_rs_n128(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

/* d[96] += A B over one k16 step, m64n192k16, as aw_mma_rs_n128 (dQ += dS K and dK += dS^T Q for
 * q/k heads of 192). */
__device__ static inline void aw_mma_rs_n192(float (&d)[96], const uint32_t (&a)[4], uint64_t desc_b)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95}, {%96, %97, %98, %99}, %100, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
// clang-format on

/* d += A B over one k16 step with N = the accumulator's columns (128 or 192), A from registers,
 * B from shared memory MN-major. */
__device__ static inline void aw_mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b)
{
    aw_mma_rs_n128(d, a, desc_b);
}

__device__ static inline void aw_mma_rs(float (&d)[96], const uint32_t (&a)[4], uint64_t desc_b)
{
    aw_mma_rs_n192(d, a, desc_b);
}

/* The A fragment of k16 step kk from 16 columns of an accumulator (two n8 tiles, 8 floats). */
__device__ static inline void aw_to_a(uint32_t (&a)[4], const float *c)
{
    a[0] = at_pack(c[0], c[1]);
    a[1] = at_pack(c[2], c[3]);
    a[2] = at_pack(c[4], c[5]);
    a[3] = at_pack(c[6], c[7]);
}

__device__ static inline unsigned char *aw_align1024(unsigned char *p)
{
    return (unsigned char *)(((uintptr_t)p + 1023) & ~(uintptr_t)1023);
}

/* Keeps a register A operand alive (and unchanged) until the wgmma reading it has completed. */
template <int K> __device__ static inline void aw_hold_a(uint32_t (&a)[K][4])
{
#pragma unroll
    for (int i = 0; i < K; i++)
        asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3])::"memory");
}

/* Ping-pong of the two consumer warpgroups on the tensor cores (forward): warpgroup w issues its
 * products only between aw_turn_wait(w) and aw_turn_pass(w), which hands the turn to the other,
 * so one warpgroup's softmax runs under the other's products. Named barriers 1 and 2 (0 is
 * __syncthreads), 256 threads each: the waiting warpgroup's 128 and the passing one's 128. */
__device__ static inline void aw_turn_wait(int wg)
{
    asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory");
}

__device__ static inline void aw_turn_pass(int wg)
{
    asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wg) : "memory");
}

/* The persistent forward's schedule: block i takes tile i first, then the next unclaimed tile in
 * the order of the tile numbers (the longest first) from a counter zeroed before the launch.
 * One warp's lane 0 claims; every lane gets the number. */
__device__ static inline int aw_claim(int *next_tile, int lane)
{
    int t = 0;
    if (lane == 0) t = (int)gridDim.x + atomicAdd(next_tile, 1);
    return __shfl_sync(0xffffffffu, t, 0);
}
#endif /* AW_DEVICE */

/* ---------------------------------------------------------------------------------------------
 * forward: a persistent grid of as many blocks as the device has multiprocessors (or tiles, if
 * fewer), AW_THREADS threads, each block taking tiles until none is left (aw_claim), the longest
 * first, so the short causal tiles fill in at the end instead of each paying a block's start
 * (barriers, the first TMA round trip) and end with the tensor cores idle. A tile is AW_ROWS
 * query rows of one (sequence, head) (aw_row_tile). The producer warp loads the next tile's Q
 * into the second of two buffers while the consumers finish the current tile, and streams K and
 * V in separate rings of key tiles of AW_FWD_KEYS (a K stage is free once S is done, a V stage
 * once P V is) across tiles without draining them. tile_of[buffer] tells the consumers which
 * tile a Q buffer holds, -1 for "none left": written before the buffer's "full" barrier is
 * arrived on, read after it is waited on.
 * Consumer warpgroup w owns query rows w*64 .. w*64+63 of the tile and walks the key tiles up to
 * the diagonal one (the only one it masks). The two warpgroups take turns on the tensor cores
 * (ping-pong, aw_turn_wait): in its turn a warpgroup issues S(kt) and P(kt-1) V(kt-1) together,
 * then computes the softmax of S(kt) under its own P V and the other warpgroup's products. */

#if AW_DEVICE
/* One forward tile: AW_ROWS query rows of one (sequence, head). Tile numbers run over
 * the query blocks from the last (the most key tiles) to the first, the B*H heads inside. */
struct AwRowTile {
    int b, h, q0;
};

__device__ static inline AwRowTile aw_row_tile(int t, int B, int T, int H)
{
    const int blocks = (T + AW_ROWS - 1) / AW_ROWS, bh = t % (B * H);
    AwRowTile x;
    x.b = bh / H, x.h = bh % H;
    x.q0 = (blocks - 1 - t / (B * H)) * AW_ROWS;
    return x;
}

/* One step of the online softmax over a key tile of the forward: S scaled to log2 units, keys
 * past a row masked on the diagonal tile, the running max and sums updated, S replaced by
 * P = exp2(S - max); corr is what the old O and sums are multiplied by. */
__device__ static inline void aw_softmax(float (&sc)[AW_FWD_KEYS / 2], float &m_lo, float &m_hi,
                                         float &l_lo, float &l_hi, float &corr_lo, float &corr_hi,
                                         bool diagonal, int k0, int t_lo, int c, float scale_log2)
{
    const int t_hi = t_lo + 8;
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < AW_FWD_KEYS / 8; j++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int key = k0 + j * 8 + 2 * c + e;
            float *lo = &sc[4 * j + e], *hi = &sc[4 * j + 2 + e];
            *lo = diagonal && key > t_lo ? -INFINITY : *lo * scale_log2;
            *hi = diagonal && key > t_hi ? -INFINITY : *hi * scale_log2;
            mx_lo = fmaxf(mx_lo, *lo);
            mx_hi = fmaxf(mx_hi, *hi);
        }
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    /* key 0 is in tile 0, so the max is finite from the first tile on */
    const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
    corr_lo = exp2f(m_lo - mn_lo), corr_hi = exp2f(m_hi - mn_hi);
    m_lo = mn_lo, m_hi = mn_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int j = 0; j < AW_FWD_KEYS / 8; j++) {
        sc[4 * j] = exp2f(sc[4 * j] - mn_lo), sc[4 * j + 1] = exp2f(sc[4 * j + 1] - mn_lo);
        sc[4 * j + 2] = exp2f(sc[4 * j + 2] - mn_hi);
        sc[4 * j + 3] = exp2f(sc[4 * j + 3] - mn_hi);
        sum_lo += sc[4 * j] + sc[4 * j + 1];
        sum_hi += sc[4 * j + 2] + sc[4 * j + 3];
    }
    l_lo = l_lo * corr_lo + sum_lo;
    l_hi = l_hi * corr_hi + sum_hi;
}

__device__ static inline void aw_rescale(float (&o)[AW_D / 2], float corr_lo, float corr_hi)
{
#pragma unroll
    for (int j = 0; j < AW_D / 8; j++) {
        o[4 * j] *= corr_lo, o[4 * j + 1] *= corr_lo;
        o[4 * j + 2] *= corr_hi, o[4 * j + 3] *= corr_hi;
    }
}
#endif

/* The forward for q/k heads of DQK (128, or 192 for DeepSeek's latent attention) and v heads of
 * 128: Q and K tiles of DQK / 64 column blocks, the S products over DQK / 16 steps. Two Q buffers
 * where they fit (DQK 128), else one: the next tile's Q then waits for this tile's last product. */
template <int DQK> struct AwFwdShape {
    static constexpr int QBUF = DQK > 128 ? 1 : 2;  /* Q buffers */
    static constexpr int Q = AW_ROWS * DQK * 2;     /* bytes of a Q tile */
    static constexpr int K = AW_FWD_KEYS * DQK * 2; /* ... of a K stage */
    static constexpr int SMEM = 1024 + QBUF * Q + AW_STAGES * (K + AW_TILE(AW_FWD_KEYS)) + 128;
    static_assert(DQK % 64 == 0, "whole 64-column blocks");
};
#define AW_FWD_SMEM (AwFwdShape<AW_D>::SMEM)

template <int DQK, typename O>
__global__ static void __launch_bounds__(AW_THREADS, 1)
    aw_forward_kernel(const __grid_constant__ CUtensorMap map_q,
                      const __grid_constant__ CUtensorMap map_k,
                      const __grid_constant__ CUtensorMap map_v, O *out, float *lse, int *next_tile,
                      int B, int T, int H, int KVH, float scale_log2)
{
#if AW_DEVICE
    typedef AwFwdShape<DQK> F;
    constexpr int QBUF = F::QBUF;
    extern __shared__ unsigned char aw_raw[];
    unsigned char *Qs = aw_align1024(aw_raw);  /* [QBUF][rows][DQK] */
    unsigned char *Ks = Qs + QBUF * F::Q;      /* [STAGES][keys][DQK] */
    unsigned char *Vs = Ks + AW_STAGES * F::K; /* [STAGES][keys][128] */
    uint64_t *kfull = (uint64_t *)(Vs + AW_STAGES * AW_TILE(AW_FWD_KEYS));
    uint64_t *kempty = kfull + AW_STAGES, *vfull = kempty + AW_STAGES;
    uint64_t *vempty = vfull + AW_STAGES, *qfull = vempty + AW_STAGES, *qempty = qfull + 2;
    volatile int *tile_of = (volatile int *)(qempty + 2);

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int total = B * H * ((T + AW_ROWS - 1) / AW_ROWS);
    if (threadIdx.x == 0) {
        for (int s = 0; s < AW_STAGES; s++) {
            aw_bar_init(&kfull[s], 1);
            aw_bar_init(&kempty[s], AW_CONSUMER_WARPS);
            aw_bar_init(&vfull[s], 1);
            aw_bar_init(&vempty[s], AW_CONSUMER_WARPS);
        }
        for (int i = 0; i < 2; i++) {
            aw_bar_init(&qfull[i], 1);
            aw_bar_init(&qempty[i], AW_CONSUMER_WARPS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= AW_CONSUMER_WARPS) { /* the producer warpgroup: its first warp works */
        aw_producer_regs();
        if (warp > AW_CONSUMER_WARPS) return;
        int kv = 0; /* key tiles loaded so far, over every tile of this block */
        for (int j = 0, t = blockIdx.x;; j++, t = aw_claim(next_tile, lane)) {
            const int qb = j % QBUF;
            if (j >= QBUF) aw_bar_wait(&qempty[qb], (j / QBUF - 1) & 1);
            if (t >= total) {
                if (lane == 0) {
                    tile_of[qb] = -1;
                    aw_bar_arrive(&qfull[qb]);
                }
                return;
            }
            const AwRowTile x = aw_row_tile(t, B, T, H);
            const int kvh = x.h / (H / KVH);
            const int tiles = (min(x.q0 + AW_ROWS, T) + AW_FWD_KEYS - 1) / AW_FWD_KEYS;
            if (lane == 0) {
                tile_of[qb] = t;
                aw_bar_expect(&qfull[qb], F::Q);
                aw_tma_tile_n<DQK / 64>(Qs + qb * F::Q, &map_q, &qfull[qb], x.h * DQK,
                                        x.b * T + x.q0, AW_ROWS);
            }
            for (int kt = 0; kt < tiles; kt++, kv++) {
                const int s = kv % AW_STAGES, y = x.b * T + kt * AW_FWD_KEYS;
                if (kv >= AW_STAGES) aw_bar_wait(&kempty[s], (kv / AW_STAGES - 1) & 1);
                if (lane == 0) {
                    aw_bar_expect(&kfull[s], F::K);
                    aw_tma_tile_n<DQK / 64>(Ks + s * F::K, &map_k, &kfull[s], kvh * DQK, y,
                                            AW_FWD_KEYS);
                }
                if (kv >= AW_STAGES) aw_bar_wait(&vempty[s], (kv / AW_STAGES - 1) & 1);
                if (lane == 0) {
                    aw_bar_expect(&vfull[s], AW_TILE(AW_FWD_KEYS));
                    aw_tma_tile(Vs + s * AW_TILE(AW_FWD_KEYS), &map_v, &vfull[s], kvh * AW_D, y,
                                AW_FWD_KEYS);
                }
            }
        }
    }
    aw_consumer_regs();

    const int wg = warp / 4, g = lane / 4, c = lane % 4;
    const int row = wg * 64 + (warp % 4) * 16 + g; /* this thread's rows of a tile: row, row + 8 */
    if (wg == 1) aw_turn_pass(1); /* warpgroup 0 takes the first turn */
    int kv = 0;                   /* key tiles consumed, as the producer counts */
    for (int j = 0;; j++) {
        const int qb = j % QBUF;
        aw_bar_wait(&qfull[qb], (j / QBUF) & 1);
        const int t = tile_of[qb];
        if (t < 0) break;
        const AwRowTile x = aw_row_tile(t, B, T, H);
        const int tiles = (min(x.q0 + AW_ROWS, T) + AW_FWD_KEYS - 1) / AW_FWD_KEYS;
        const unsigned char *Qt = Qs + qb * F::Q;
        const int t_lo = x.q0 + row, t_hi = t_lo + 8;
        float o[AW_D / 2]; /* O rows t_lo (4j, 4j+1), t_hi (4j+2, 4j+3), columns 8j + 2c, +1 */
#pragma unroll
        for (int i = 0; i < AW_D / 2; i++)
            o[i] = 0.0f;
        float m_lo = -INFINITY, m_hi = -INFINITY; /* running max, log2 units */
        float l_lo = 0.0f, l_hi = 0.0f;           /* this thread's part of the row sums */
        uint32_t pa[AW_FWD_KEYS / 16][4];         /* P as the A operand, 16 keys a step */

        /* key tile 0: S alone */
        int s_prev = kv % AW_STAGES, phase_prev = (kv / AW_STAGES) & 1;
        {
            float sc[AW_FWD_KEYS / 2]; /* S: rows t_lo, t_hi, keys 8j + 2c, +1 of the tile */
            aw_bar_wait(&kfull[s_prev], phase_prev);
            aw_turn_wait(wg);
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++)
                aw_mma_ss_n128(sc, aw_desc_k(Qt, AW_ROWS, wg * 64, kk),
                               aw_desc_k(Ks + s_prev * F::K, AW_FWD_KEYS, 0, kk), kk > 0);
            aw_commit();
            aw_turn_pass(wg);
            aw_wait<0>();
            aw_hold(sc);
            __syncwarp();
            if (lane == 0) aw_bar_arrive(&kempty[s_prev]);
            float corr_lo, corr_hi;
            aw_softmax(sc, m_lo, m_hi, l_lo, l_hi, corr_lo, corr_hi, tiles == 1, 0, t_lo, c,
                       scale_log2);
#pragma unroll
            for (int kk = 0; kk < AW_FWD_KEYS / 16; kk++)
                aw_to_a(pa[kk], &sc[8 * kk]);
            kv++;
        }
        /* key tile kt: S(kt) and P(kt-1) V(kt-1) in one turn, the softmax of S(kt) under
         * the second */
        for (int kt = 1; kt < tiles; kt++, kv++) {
            const int s = kv % AW_STAGES, phase = (kv / AW_STAGES) & 1;
            const unsigned char *Kt = Ks + s * F::K;
            const unsigned char *Vt = Vs + s_prev * AW_TILE(AW_FWD_KEYS);
            float sc[AW_FWD_KEYS / 2];
            aw_bar_wait(&kfull[s], phase);
            aw_bar_wait(&vfull[s_prev], phase_prev);
            aw_turn_wait(wg);
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++)
                aw_mma_ss_n128(sc, aw_desc_k(Qt, AW_ROWS, wg * 64, kk),
                               aw_desc_k(Kt, AW_FWD_KEYS, 0, kk), kk > 0);
            aw_commit();
#pragma unroll
            for (int kk = 0; kk < AW_FWD_KEYS / 16; kk++)
                aw_mma_rs_n128(o, pa[kk], aw_desc_mn(Vt, AW_FWD_KEYS, kk));
            aw_commit();
            aw_turn_pass(wg);
            aw_wait<1>();
            aw_hold(sc);
            __syncwarp();
            if (lane == 0) aw_bar_arrive(&kempty[s]);
            float corr_lo, corr_hi;
            aw_softmax(sc, m_lo, m_hi, l_lo, l_hi, corr_lo, corr_hi, kt == tiles - 1,
                       kt * AW_FWD_KEYS, t_lo, c, scale_log2);
            aw_wait<0>();
            aw_hold(o);
            aw_hold_a(pa);
            __syncwarp();
            if (lane == 0) aw_bar_arrive(&vempty[s_prev]);
            aw_rescale(o, corr_lo, corr_hi);
#pragma unroll
            for (int kk = 0; kk < AW_FWD_KEYS / 16; kk++)
                aw_to_a(pa[kk], &sc[8 * kk]);
            s_prev = s, phase_prev = phase;
        }
        /* the last key tile's P V */
        aw_bar_wait(&vfull[s_prev], phase_prev);
        aw_turn_wait(wg);
        aw_fence();
        const unsigned char *Vt = Vs + s_prev * AW_TILE(AW_FWD_KEYS);
#pragma unroll
        for (int kk = 0; kk < AW_FWD_KEYS / 16; kk++)
            aw_mma_rs_n128(o, pa[kk], aw_desc_mn(Vt, AW_FWD_KEYS, kk));
        aw_commit();
        aw_turn_pass(wg);
        aw_wait<0>();
        aw_hold(o);
        aw_hold_a(pa);
        __syncwarp();
        if (lane == 0) aw_bar_arrive(&vempty[s_prev]);
        __syncwarp();
        if (lane == 0) aw_bar_arrive(&qempty[qb]); /* Q's buffer may take a later tile */

        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
        l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
        const float inv_lo = 1.0f / l_lo, inv_hi = 1.0f / l_hi;
        const size_t ostride = (size_t)H * AW_D; /* v heads and out heads of 128 */
        O *dst_lo = out + ((size_t)x.b * T + t_lo) * ostride + (size_t)x.h * AW_D + 2 * c;
        O *dst_hi = dst_lo + 8 * ostride;
#pragma unroll
        for (int jj = 0; jj < AW_D / 8; jj++) {
            if (t_lo < T) at_store2(dst_lo + jj * 8, o[4 * jj] * inv_lo, o[4 * jj + 1] * inv_lo);
            if (t_hi < T)
                at_store2(dst_hi + jj * 8, o[4 * jj + 2] * inv_hi, o[4 * jj + 3] * inv_hi);
        }
        if (c == 0) {
            float *l = lse + ((size_t)x.b * H + x.h) * T;
            if (t_lo < T) l[t_lo] = (m_lo + log2f(l_lo)) * AT_LN2;
            if (t_hi < T) l[t_hi] = (m_hi + log2f(l_hi)) * AT_LN2;
        }
    }
#endif
}

/* ---------------------------------------------------------------------------------------------
 * backward, dq: grid (B*H, query blocks of AW_ROWS, the longest rows first). Q and dO once; the
 * producer streams K and V tiles of AW_BWD_STEP keys up to the block's last row. Warpgroup w
 * (query rows w*64 ..) skips the tiles wholly past its rows. */

/* The backward's tiles for q/k heads of DQK (128, or 192 for DeepSeek's latent attention) and v
 * heads of 128: Q and K tiles of DQK / 64 column blocks, dQ and dK accumulators of DQK / 2
 * registers a thread. */
template <int DQK> struct AwBwdShape {
    static constexpr int ROWS_QK = AW_ROWS * DQK * 2;     /* bytes of a Q (dq) or K (dk/dv) tile */
    static constexpr int STEP_QK = AW_BWD_STEP * DQK * 2; /* ... of a K (dq) or Q (dk/dv) stage */
    static constexpr int DQ_SMEM = 1024 + ROWS_QK + AW_TILE(AW_ROWS) +
                                   AW_STAGES * (STEP_QK + AW_TILE(AW_BWD_STEP)) + 128;
    static_assert(DQK % 64 == 0, "whole 64-column blocks");
};
#define AW_DQ_SMEM (AwBwdShape<AW_D>::DQ_SMEM)

template <int DQK, typename O>
__global__ static void __launch_bounds__(AW_THREADS, 1)
    aw_dq_kernel(const __grid_constant__ CUtensorMap map_q,
                 const __grid_constant__ CUtensorMap map_do,
                 const __grid_constant__ CUtensorMap map_k,
                 const __grid_constant__ CUtensorMap map_v, O *dq, const float *lse,
                 const float *delta, int T, int H, int KVH, float scale, float scale_log2)
{
#if AW_DEVICE
    typedef AwBwdShape<DQK> F;
    extern __shared__ unsigned char aw_raw[];
    unsigned char *Qs = aw_align1024(aw_raw);       /* [rows][DQK] */
    unsigned char *dOs = Qs + F::ROWS_QK;           /* [rows][128] */
    unsigned char *Ks = dOs + AW_TILE(AW_ROWS);     /* [STAGES][64][DQK] */
    unsigned char *Vs = Ks + AW_STAGES * F::STEP_QK; /* [STAGES][64][128] */
    uint64_t *full = (uint64_t *)(Vs + AW_STAGES * AW_TILE(AW_BWD_STEP));
    uint64_t *empty = full + AW_STAGES, *qbar = empty + AW_STAGES;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / H, h = blockIdx.x % H, kvh = h / (H / KVH);
    const int q0 = (gridDim.y - 1 - blockIdx.y) * AW_ROWS;
    const int tiles = (min(q0 + AW_ROWS, T) + AW_BWD_STEP - 1) / AW_BWD_STEP;
    if (threadIdx.x == 0) {
        for (int s = 0; s < AW_STAGES; s++) {
            aw_bar_init(&full[s], 1);
            aw_bar_init(&empty[s], AW_CONSUMER_WARPS);
        }
        aw_bar_init(qbar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= AW_CONSUMER_WARPS) { /* the producer warpgroup: its first warp works */
        aw_producer_regs();
        if (warp == AW_CONSUMER_WARPS && lane == 0) {
            aw_bar_expect(qbar, F::ROWS_QK + AW_TILE(AW_ROWS));
            aw_tma_tile_n<DQK / 64>(Qs, &map_q, qbar, h * DQK, b * T + q0, AW_ROWS);
            aw_tma_tile(dOs, &map_do, qbar, h * AW_D, b * T + q0, AW_ROWS);
            for (int kt = 0; kt < tiles; kt++) {
                const int s = kt % AW_STAGES;
                if (kt >= AW_STAGES) aw_bar_wait(&empty[s], (kt / AW_STAGES - 1) & 1);
                aw_bar_expect(&full[s], F::STEP_QK + AW_TILE(AW_BWD_STEP));
                const int y = b * T + kt * AW_BWD_STEP;
                aw_tma_tile_n<DQK / 64>(Ks + s * F::STEP_QK, &map_k, &full[s], kvh * DQK, y,
                                        AW_BWD_STEP);
                aw_tma_tile(Vs + s * AW_TILE(AW_BWD_STEP), &map_v, &full[s], kvh * AW_D, y,
                            AW_BWD_STEP);
            }
        }
        return;
    }
    aw_consumer_regs();

    const int wg = warp / 4, g = lane / 4, c = lane % 4;
    const int t_lo = q0 + wg * 64 + (warp % 4) * 16 + g, t_hi = t_lo + 8;
    const int wg_last = q0 + wg * 64 + 63; /* the warpgroup's last query row */
    const size_t stats = ((size_t)b * H + h) * T;
    const float lse_lo = t_lo < T ? lse[stats + t_lo] * AT_LOG2E : 0.0f;
    const float lse_hi = t_hi < T ? lse[stats + t_hi] * AT_LOG2E : 0.0f;
    const float delta_lo = t_lo < T ? delta[stats + t_lo] : 0.0f;
    const float delta_hi = t_hi < T ? delta[stats + t_hi] : 0.0f;
    float acc[DQK / 2]; /* dQ rows t_lo, t_hi, columns 8j + 2c, +1 */
#pragma unroll
    for (int i = 0; i < DQK / 2; i++)
        acc[i] = 0.0f;
    aw_bar_wait(qbar, 0);

    for (int kt = 0; kt < tiles; kt++) {
        const int s = kt % AW_STAGES, k0 = kt * AW_BWD_STEP;
        const unsigned char *Kt = Ks + s * F::STEP_QK;
        const unsigned char *Vt = Vs + s * AW_TILE(AW_BWD_STEP);
        aw_bar_wait(&full[s], (kt / AW_STAGES) & 1);
        if (k0 <= wg_last) { /* uniform over the warpgroup */
            float sc[AW_BWD_STEP / 2], dp[AW_BWD_STEP / 2]; /* S, dP: keys k0 + 8j + 2c, +1 */
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++)
                aw_mma_ss_n64(sc, aw_desc_k(Qs, AW_ROWS, wg * 64, kk),
                              aw_desc_k(Kt, AW_BWD_STEP, 0, kk), kk > 0);
#pragma unroll
            for (int kk = 0; kk < AW_D / 16; kk++)
                aw_mma_ss_n64(dp, aw_desc_k(dOs, AW_ROWS, wg * 64, kk),
                              aw_desc_k(Vt, AW_BWD_STEP, 0, kk), kk > 0);
            aw_commit();
            aw_wait<0>();
            aw_hold(sc);
            aw_hold(dp);
            /* dS = P (dP - delta) * scale into sc */
#pragma unroll
            for (int j = 0; j < AW_BWD_STEP / 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int key = k0 + j * 8 + 2 * c + e;
                    const bool live_lo = key <= t_lo && t_lo < T, live_hi = key <= t_hi && t_hi < T;
                    const float p_lo = live_lo ? exp2f(sc[4 * j + e] * scale_log2 - lse_lo) : 0.0f;
                    const float p_hi =
                        live_hi ? exp2f(sc[4 * j + 2 + e] * scale_log2 - lse_hi) : 0.0f;
                    sc[4 * j + e] = p_lo * (dp[4 * j + e] - delta_lo) * scale;
                    sc[4 * j + 2 + e] = p_hi * (dp[4 * j + 2 + e] - delta_hi) * scale;
                }
            }
            uint32_t da[AW_BWD_STEP / 16][4];
#pragma unroll
            for (int kk = 0; kk < AW_BWD_STEP / 16; kk++)
                aw_to_a(da[kk], &sc[8 * kk]);
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < AW_BWD_STEP / 16; kk++) /* dQ += dS K */
                aw_mma_rs(acc, da[kk], aw_desc_mn(Kt, AW_BWD_STEP, kk));
            aw_commit();
            aw_wait<0>();
            aw_hold(acc);
        }
        __syncwarp();
        if (lane == 0) aw_bar_arrive(&empty[s]);
    }

    const size_t qstride = (size_t)H * DQK;
    O *dst_lo = dq + ((size_t)b * T + t_lo) * qstride + (size_t)h * DQK + 2 * c;
    O *dst_hi = dst_lo + 8 * qstride;
#pragma unroll
    for (int j = 0; j < DQK / 8; j++) {
        if (t_lo < T) at_store2(dst_lo + j * 8, acc[4 * j], acc[4 * j + 1]);
        if (t_hi < T) at_store2(dst_hi + j * 8, acc[4 * j + 2], acc[4 * j + 3]);
    }
#endif
}

/* ---------------------------------------------------------------------------------------------
 * backward, dk and dv: grid (B*KVH, key blocks of AW_ROWS; block 0, the longest, first). K and V
 * once; the producer streams, for every head of the group in turn, the query tiles of
 * AW_BWD_STEP rows from the one holding the block's first key to the end, with their lse (times
 * log2 e) and delta rows, which its 32 lanes copy. Warpgroup w (key rows w*64 ..) skips the
 * tiles whose queries all come before its keys. */

#define AW_STATS (2 * AW_BWD_STEP * 4) /* bytes of a stage's lse and delta rows */
#define AW_DKDV_SMEM_OF(DQK)                                                                       \
    (1024 + AwBwdShape<DQK>::ROWS_QK + AW_TILE(AW_ROWS) +                                          \
     AW_STAGES * (AwBwdShape<DQK>::STEP_QK + AW_TILE(AW_BWD_STEP) + AW_STATS) + 128)
#define AW_DKDV_SMEM AW_DKDV_SMEM_OF(AW_D)

template <int DQK, typename O>
__global__ static void __launch_bounds__(AW_THREADS, 1)
    aw_dkdv_kernel(const __grid_constant__ CUtensorMap map_q,
                   const __grid_constant__ CUtensorMap map_do,
                   const __grid_constant__ CUtensorMap map_k,
                   const __grid_constant__ CUtensorMap map_v, O *dk, O *dv, const float *lse,
                   const float *delta, int T, int H, int KVH, float scale, float scale_log2)
{
#if AW_DEVICE
    typedef AwBwdShape<DQK> F;
    extern __shared__ unsigned char aw_raw[];
    unsigned char *Ks = aw_align1024(aw_raw);         /* [rows][DQK] */
    unsigned char *Vs = Ks + F::ROWS_QK;              /* [rows][128] */
    unsigned char *Qs = Vs + AW_TILE(AW_ROWS);        /* [STAGES][64][DQK] */
    unsigned char *dOs = Qs + AW_STAGES * F::STEP_QK; /* [STAGES][64][128] */
    float *stat_s = (float *)(dOs + AW_STAGES * AW_TILE(AW_BWD_STEP)); /* [STAGES][2][64] */
    uint64_t *full = (uint64_t *)(stat_s + AW_STAGES * 2 * AW_BWD_STEP);
    uint64_t *empty = full + AW_STAGES, *kvbar = empty + AW_STAGES;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int b = blockIdx.x / KVH, kvh = blockIdx.x % KVH, group = H / KVH;
    const int k0 = blockIdx.y * AW_ROWS;
    const int first = k0 / AW_BWD_STEP, per_head = (T + AW_BWD_STEP - 1) / AW_BWD_STEP - first;
    const int steps = group * per_head;
    if (threadIdx.x == 0) {
        for (int s = 0; s < AW_STAGES; s++) {
            aw_bar_init(&full[s], 1 + 32); /* the expected bytes, and each producer lane */
            aw_bar_init(&empty[s], AW_CONSUMER_WARPS);
        }
        aw_bar_init(kvbar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp >= AW_CONSUMER_WARPS) { /* the producer warpgroup: its first warp works */
        aw_producer_regs();
        if (warp > AW_CONSUMER_WARPS) return;
        if (lane == 0) {
            aw_bar_expect(kvbar, F::ROWS_QK + AW_TILE(AW_ROWS));
            aw_tma_tile_n<DQK / 64>(Ks, &map_k, kvbar, kvh * DQK, b * T + k0, AW_ROWS);
            aw_tma_tile(Vs, &map_v, kvbar, kvh * AW_D, b * T + k0, AW_ROWS);
        }
        for (int i = 0; i < steps; i++) {
            const int s = i % AW_STAGES;
            const int h = kvh * group + i / per_head, q0 = (first + i % per_head) * AW_BWD_STEP;
            if (i >= AW_STAGES) aw_bar_wait(&empty[s], (i / AW_STAGES - 1) & 1);
            if (lane == 0) {
                aw_bar_expect(&full[s], F::STEP_QK + AW_TILE(AW_BWD_STEP));
                aw_tma_tile_n<DQK / 64>(Qs + s * F::STEP_QK, &map_q, &full[s], h * DQK,
                                        b * T + q0, AW_BWD_STEP);
                aw_tma_tile(dOs + s * AW_TILE(AW_BWD_STEP), &map_do, &full[s], h * AW_D,
                            b * T + q0, AW_BWD_STEP);
            }
            const size_t stats = ((size_t)b * H + h) * T;
            float *st = stat_s + s * 2 * AW_BWD_STEP;
            for (int r = lane; r < AW_BWD_STEP; r += 32) {
                const bool valid = q0 + r < T;
                st[r] = valid ? lse[stats + q0 + r] * AT_LOG2E : 0.0f;
                st[AW_BWD_STEP + r] = valid ? delta[stats + q0 + r] : 0.0f;
            }
            aw_bar_arrive(&full[s]);
        }
        return;
    }
    aw_consumer_regs();

    const int wg = warp / 4, g = lane / 4, c = lane % 4;
    const int key_lo = k0 + wg * 64 + (warp % 4) * 16 + g, key_hi = key_lo + 8;
    const int wg_first = k0 + wg * 64; /* the warpgroup's first key */
    float dka[DQK / 2], dva[AW_D / 2]; /* rows key_lo, key_hi, columns 8j + 2c, +1 */
#pragma unroll
    for (int i = 0; i < DQK / 2; i++)
        dka[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < AW_D / 2; i++)
        dva[i] = 0.0f;
    aw_bar_wait(kvbar, 0);

    for (int i = 0; i < steps; i++) {
        const int s = i % AW_STAGES, q0 = (first + i % per_head) * AW_BWD_STEP;
        const unsigned char *Qt = Qs + s * F::STEP_QK;
        const unsigned char *dOt = dOs + s * AW_TILE(AW_BWD_STEP);
        const float *st = stat_s + s * 2 * AW_BWD_STEP;
        aw_bar_wait(&full[s], (i / AW_STAGES) & 1);
        if (q0 + AW_BWD_STEP - 1 >= wg_first) { /* uniform over the warpgroup */
            /* S^T = K Q^T, dP^T = V dO^T: rows key_lo, key_hi, queries q0 + 8j + 2c, +1 */
            float st_[AW_BWD_STEP / 2], dpt[AW_BWD_STEP / 2];
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < DQK / 16; kk++)
                aw_mma_ss_n64(st_, aw_desc_k(Ks, AW_ROWS, wg * 64, kk),
                              aw_desc_k(Qt, AW_BWD_STEP, 0, kk), kk > 0);
#pragma unroll
            for (int kk = 0; kk < AW_D / 16; kk++)
                aw_mma_ss_n64(dpt, aw_desc_k(Vs, AW_ROWS, wg * 64, kk),
                              aw_desc_k(dOt, AW_BWD_STEP, 0, kk), kk > 0);
            aw_commit();
            aw_wait<0>();
            aw_hold(st_);
            aw_hold(dpt);
            /* P^T into st_, dS^T = P^T (dP^T - delta) * scale into dpt */
#pragma unroll
            for (int j = 0; j < AW_BWD_STEP / 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int ql = j * 8 + 2 * c + e, tq = q0 + ql;
                    const float row_lse = st[ql], row_delta = st[AW_BWD_STEP + ql];
                    const bool live_lo = key_lo <= tq && tq < T, live_hi = key_hi <= tq && tq < T;
                    const float p_lo =
                        live_lo ? exp2f(st_[4 * j + e] * scale_log2 - row_lse) : 0.0f;
                    const float p_hi =
                        live_hi ? exp2f(st_[4 * j + 2 + e] * scale_log2 - row_lse) : 0.0f;
                    st_[4 * j + e] = p_lo;
                    st_[4 * j + 2 + e] = p_hi;
                    dpt[4 * j + e] = p_lo * (dpt[4 * j + e] - row_delta) * scale;
                    dpt[4 * j + 2 + e] = p_hi * (dpt[4 * j + 2 + e] - row_delta) * scale;
                }
            }
            uint32_t pa[AW_BWD_STEP / 16][4], da[AW_BWD_STEP / 16][4];
#pragma unroll
            for (int kk = 0; kk < AW_BWD_STEP / 16; kk++) {
                aw_to_a(pa[kk], &st_[8 * kk]);
                aw_to_a(da[kk], &dpt[8 * kk]);
            }
            aw_fence();
#pragma unroll
            for (int kk = 0; kk < AW_BWD_STEP / 16; kk++) /* dV += P^T dO */
                aw_mma_rs_n128(dva, pa[kk], aw_desc_mn(dOt, AW_BWD_STEP, kk));
#pragma unroll
            for (int kk = 0; kk < AW_BWD_STEP / 16; kk++) /* dK += dS^T Q */
                aw_mma_rs(dka, da[kk], aw_desc_mn(Qt, AW_BWD_STEP, kk));
            aw_commit();
            aw_wait<0>();
            aw_hold(dva);
            aw_hold(dka);
        }
        __syncwarp();
        if (lane == 0) aw_bar_arrive(&empty[s]);
    }

    const size_t kstride = (size_t)KVH * DQK, vstride = (size_t)KVH * AW_D;
    const size_t k_lo = ((size_t)b * T + key_lo) * kstride + (size_t)kvh * DQK + 2 * c;
    const size_t v_lo = ((size_t)b * T + key_lo) * vstride + (size_t)kvh * AW_D + 2 * c;
#pragma unroll
    for (int j = 0; j < DQK / 8; j++) {
        if (key_lo < T) at_store2(dk + k_lo + j * 8, dka[4 * j], dka[4 * j + 1]);
        if (key_hi < T) at_store2(dk + k_lo + 8 * kstride + j * 8, dka[4 * j + 2], dka[4 * j + 3]);
    }
#pragma unroll
    for (int j = 0; j < AW_D / 8; j++) {
        if (key_lo < T) at_store2(dv + v_lo + j * 8, dva[4 * j], dva[4 * j + 1]);
        if (key_hi < T) at_store2(dv + v_lo + 8 * vstride + j * 8, dva[4 * j + 2], dva[4 * j + 3]);
    }
#endif
}


/* ---------------------------------------------------------------------------------------------
 * host: readiness, tensor maps, launches */

__global__ static void aw_probe_kernel(int *flag)
{
    *flag = AW_DEVICE; /* 1 only in the sm_90a pass: which code the device loaded for this file */
}

static PFN_cuTensorMapEncodeTiled_v12000 aw_encode;
static long long aw_calls;
static int aw_sms;   /* multiprocessors: the persistent forward's grid */
static int *aw_next; /* device: the forward's tile counter, zeroed before each launch */

/* The bf16 matrix [rows][cols] (row stride cols) as a 2-D tensor map of boxes of 64 columns by
 * box_rows rows, 128-byte swizzle: what aw_tma_tile loads. 0 when the driver refuses it. */
static int aw_map(CUtensorMap *map, const void *base, int rows, int cols, int box_rows)
{
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)cols * 2};
    const cuuint32_t box[2] = {64, (cuuint32_t)box_rows};
    const cuuint32_t elem[2] = {1, 1};
    return aw_encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dims, strides, box,
                     elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename Kernel> static void aw_allow_smem(Kernel kernel, int bytes)
{
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

extern "C" int cuda_wgmma_attention_ready(int D)
{
    static int ready = -1; /* -1 unknown, 0 no, 1 yes */
    if (ready < 0) {
        ready = 0;
        int dev = 0, major = 0, minor = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
        cudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        cudaCheck(cudaDeviceGetAttribute(&aw_sms, cudaDevAttrMultiProcessorCount, dev));
        const int need = AW_FWD_SMEM > AW_DQ_SMEM
                             ? (AW_FWD_SMEM > AW_DKDV_SMEM ? AW_FWD_SMEM : AW_DKDV_SMEM)
                             : (AW_DQ_SMEM > AW_DKDV_SMEM ? AW_DQ_SMEM : AW_DKDV_SMEM);
        void *fn = NULL;
        cudaDriverEntryPointQueryResult found;
        if (major == 9 && minor == 0 && need <= optin &&
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                             cudaEnableDefault, &found) == cudaSuccess &&
            found == cudaDriverEntryPointSuccess && fn) {
            aw_encode = (PFN_cuTensorMapEncodeTiled_v12000)fn;
            int *flag, host = 0;
            cudaCheck(cudaMalloc(&flag, sizeof(int)));
            aw_probe_kernel<<<1, 1>>>(flag);
            cudaCheck(cudaGetLastError());
            cudaCheck(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
            cudaCheck(cudaFree(flag));
            ready = host == 1;
        }
        cudaGetLastError(); /* a refused entry-point query leaves no error behind */
        if (ready) {
            cudaCheck(cudaMalloc(&aw_next, sizeof(int)));
            aw_allow_smem(aw_forward_kernel<AW_D, float>, AW_FWD_SMEM);
            aw_allow_smem(aw_forward_kernel<AW_D, at_bf16>, AW_FWD_SMEM);
            aw_allow_smem(aw_dq_kernel<AW_D, float>, AW_DQ_SMEM);
            aw_allow_smem(aw_dq_kernel<AW_D, at_bf16>, AW_DQ_SMEM);
            aw_allow_smem(aw_dkdv_kernel<AW_D, float>, AW_DKDV_SMEM);
            aw_allow_smem(aw_dkdv_kernel<AW_D, at_bf16>, AW_DKDV_SMEM);
        }
    }
    return ready && D == AW_D;
}

extern "C" long long cuda_attention_wgmma_calls(void)
{
    return aw_calls;
}

static int aw_suits(int B, int T, int H, int KVH, int D)
{
    /* the forward's tile numbers (and its counter, up to one claim past them a block) stay below
     * 2^30; the backward's grid (B*H, blocks) in range */
    return cuda_wgmma_attention_ready(D) && B > 0 && T > 0 && KVH > 0 && H % KVH == 0 &&
           (long long)B * T < INT32_MAX && (long long)B * H <= INT32_MAX &&
           (T + AW_ROWS - 1) / AW_ROWS <= 65535 &&
           (long long)B * H * ((T + AW_ROWS - 1) / AW_ROWS) < (1 << 30);
}

extern "C" int cuda_wgmma_attention_forward(void *out, int out_bf16, float *lse, const at_bf16 *q,
                                            const at_bf16 *k, const at_bf16 *v, int B, int T,
                                            int H, int KVH, int D, cudaStream_t stream)
{
    if (!aw_suits(B, T, H, KVH, D)) return 0;
    CUtensorMap mq, mk, mv;
    if (!aw_map(&mq, q, B * T, H * AW_D, AW_ROWS) || !aw_map(&mk, k, B * T, KVH * AW_D, AW_FWD_KEYS) ||
        !aw_map(&mv, v, B * T, KVH * AW_D, AW_FWD_KEYS))
        return 0;
    const float scale_log2 = AT_LOG2E / sqrtf((float)AW_D);
    const int tiles = B * H * ((T + AW_ROWS - 1) / AW_ROWS);
    const int grid = tiles < aw_sms ? tiles : aw_sms;
    cudaCheck(cudaMemsetAsync(aw_next, 0, sizeof(int), stream));
    if (out_bf16)
        aw_forward_kernel<AW_D, at_bf16><<<grid, AW_THREADS, AW_FWD_SMEM, stream>>>(
            mq, mk, mv, (at_bf16 *)out, lse, aw_next, B, T, H, KVH, scale_log2);
    else
        aw_forward_kernel<AW_D, float><<<grid, AW_THREADS, AW_FWD_SMEM, stream>>>(
            mq, mk, mv, (float *)out, lse, aw_next, B, T, H, KVH, scale_log2);
    cudaCheck(cudaGetLastError());
    aw_calls++;
    return 1;
}

extern "C" int cuda_wgmma_attention_backward(void *dq, void *dk, void *dv, int out_bf16,
                                             const at_bf16 *dout, const float *delta,
                                             const float *lse, const at_bf16 *q, const at_bf16 *k,
                                             const at_bf16 *v, int B, int T, int H, int KVH, int D,
                                             cudaStream_t stream)
{
    if (!aw_suits(B, T, H, KVH, D)) return 0;
    /* dq pass: Q, dO in blocks of AW_ROWS rows, K, V in steps; dk/dv pass: the other way round */
    CUtensorMap q_rows, do_rows, k_step, v_step, q_step, do_step, k_rows, v_rows;
    const int QC = H * AW_D, KC = KVH * AW_D, N = B * T;
    if (!aw_map(&q_rows, q, N, QC, AW_ROWS) || !aw_map(&do_rows, dout, N, QC, AW_ROWS) ||
        !aw_map(&k_step, k, N, KC, AW_BWD_STEP) || !aw_map(&v_step, v, N, KC, AW_BWD_STEP) ||
        !aw_map(&q_step, q, N, QC, AW_BWD_STEP) || !aw_map(&do_step, dout, N, QC, AW_BWD_STEP) ||
        !aw_map(&k_rows, k, N, KC, AW_ROWS) || !aw_map(&v_rows, v, N, KC, AW_ROWS))
        return 0;
    const float scale = 1.0f / sqrtf((float)AW_D), scale_log2 = scale * AT_LOG2E;
    const int blocks = (T + AW_ROWS - 1) / AW_ROWS;
    if (out_bf16) {
        aw_dq_kernel<AW_D, at_bf16><<<dim3(B * H, blocks), AW_THREADS, AW_DQ_SMEM, stream>>>(
            q_rows, do_rows, k_step, v_step, (at_bf16 *)dq, lse, delta, T, H, KVH, scale,
            scale_log2);
        cudaCheck(cudaGetLastError());
        aw_dkdv_kernel<AW_D, at_bf16><<<dim3(B * KVH, blocks), AW_THREADS, AW_DKDV_SMEM, stream>>>(
            q_step, do_step, k_rows, v_rows, (at_bf16 *)dk, (at_bf16 *)dv, lse, delta, T, H, KVH,
            scale, scale_log2);
    } else {
        aw_dq_kernel<AW_D, float><<<dim3(B * H, blocks), AW_THREADS, AW_DQ_SMEM, stream>>>(
            q_rows, do_rows, k_step, v_step, (float *)dq, lse, delta, T, H, KVH, scale,
            scale_log2);
        cudaCheck(cudaGetLastError());
        aw_dkdv_kernel<AW_D, float><<<dim3(B * KVH, blocks), AW_THREADS, AW_DKDV_SMEM, stream>>>(
            q_step, do_step, k_rows, v_rows, (float *)dk, (float *)dv, lse, delta, T, H, KVH,
            scale, scale_log2);
    }
    cudaCheck(cudaGetLastError());
    aw_calls++;
    return 1;
}

extern "C" int cuda_wgmma_attention_forward_dv(at_bf16 *out, float *lse, const at_bf16 *q,
                                               const at_bf16 *k, const at_bf16 *v, int B, int T,
                                               int H, int Dqk, int Dv, float scale,
                                               cudaStream_t stream)
{
    typedef AwFwdShape<192> F192;
    static int ready192 = -1; /* the 192 kernel's shared memory granted: -1 not asked yet */
    if (Dv != AW_D || (Dqk != AW_D && Dqk != 192) || !aw_suits(B, T, H, H, AW_D)) return 0;
    if (Dqk == 192 && ready192 < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready192 = F192::SMEM <= optin;
        if (ready192) aw_allow_smem(aw_forward_kernel<192, at_bf16>, F192::SMEM);
    }
    if (Dqk == 192 && !ready192) return 0;
    CUtensorMap mq, mk, mv;
    const int N = B * T;
    if (!aw_map(&mq, q, N, H * Dqk, AW_ROWS) || !aw_map(&mk, k, N, H * Dqk, AW_FWD_KEYS) ||
        !aw_map(&mv, v, N, H * AW_D, AW_FWD_KEYS))
        return 0;
    const float scale_log2 = scale * AT_LOG2E;
    const int tiles = B * H * ((T + AW_ROWS - 1) / AW_ROWS);
    const int grid = tiles < aw_sms ? tiles : aw_sms;
    cudaCheck(cudaMemsetAsync(aw_next, 0, sizeof(int), stream));
    if (Dqk == 192)
        aw_forward_kernel<192, at_bf16><<<grid, AW_THREADS, F192::SMEM, stream>>>(
            mq, mk, mv, out, lse, aw_next, B, T, H, H, scale_log2);
    else
        aw_forward_kernel<AW_D, at_bf16><<<grid, AW_THREADS, AW_FWD_SMEM, stream>>>(
            mq, mk, mv, out, lse, aw_next, B, T, H, H, scale_log2);
    cudaCheck(cudaGetLastError());
    aw_calls++;
    return 1;
}

extern "C" int cuda_wgmma_attention_backward_dv(at_bf16 *dq, at_bf16 *dk, at_bf16 *dv,
                                                const at_bf16 *dout, const float *delta,
                                                const float *lse, const at_bf16 *q,
                                                const at_bf16 *k, const at_bf16 *v, int B, int T,
                                                int H, int Dqk, int Dv, float scale,
                                                cudaStream_t stream)
{
    static int ready192 = -1; /* the 192 kernels' shared memory granted: -1 not asked yet */
    const int dq192 = AwBwdShape<192>::DQ_SMEM, dkdv192 = AW_DKDV_SMEM_OF(192);
    if (Dv != AW_D || (Dqk != AW_D && Dqk != 192) || !aw_suits(B, T, H, H, AW_D)) return 0;
    if (Dqk == 192 && ready192 < 0) {
        int dev = 0, optin = 0;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
        ready192 = dq192 <= optin && dkdv192 <= optin;
        if (ready192) {
            aw_allow_smem(aw_dq_kernel<192, at_bf16>, dq192);
            aw_allow_smem(aw_dkdv_kernel<192, at_bf16>, dkdv192);
        }
    }
    if (Dqk == 192 && !ready192) return 0;
    /* dq pass: Q, dO in blocks of AW_ROWS rows, K, V in steps; dk/dv pass: the other way round */
    CUtensorMap q_rows, do_rows, k_step, v_step, q_step, do_step, k_rows, v_rows;
    const int QC = H * Dqk, VC = H * AW_D, N = B * T;
    if (!aw_map(&q_rows, q, N, QC, AW_ROWS) || !aw_map(&do_rows, dout, N, VC, AW_ROWS) ||
        !aw_map(&k_step, k, N, QC, AW_BWD_STEP) || !aw_map(&v_step, v, N, VC, AW_BWD_STEP) ||
        !aw_map(&q_step, q, N, QC, AW_BWD_STEP) || !aw_map(&do_step, dout, N, VC, AW_BWD_STEP) ||
        !aw_map(&k_rows, k, N, QC, AW_ROWS) || !aw_map(&v_rows, v, N, VC, AW_ROWS))
        return 0;
    const float scale_log2 = scale * AT_LOG2E;
    const dim3 grid(B * H, (T + AW_ROWS - 1) / AW_ROWS);
    if (Dqk == 192) {
        aw_dq_kernel<192, at_bf16><<<grid, AW_THREADS, dq192, stream>>>(
            q_rows, do_rows, k_step, v_step, dq, lse, delta, T, H, H, scale, scale_log2);
        cudaCheck(cudaGetLastError());
        aw_dkdv_kernel<192, at_bf16><<<grid, AW_THREADS, dkdv192, stream>>>(
            q_step, do_step, k_rows, v_rows, dk, dv, lse, delta, T, H, H, scale, scale_log2);
    } else {
        aw_dq_kernel<AW_D, at_bf16><<<grid, AW_THREADS, AW_DQ_SMEM, stream>>>(
            q_rows, do_rows, k_step, v_step, dq, lse, delta, T, H, H, scale, scale_log2);
        cudaCheck(cudaGetLastError());
        aw_dkdv_kernel<AW_D, at_bf16><<<grid, AW_THREADS, AW_DKDV_SMEM, stream>>>(
            q_step, do_step, k_rows, v_rows, dk, dv, lse, delta, T, H, H, scale, scale_log2);
    }
    cudaCheck(cudaGetLastError());
    aw_calls++;
    return 1;
}
