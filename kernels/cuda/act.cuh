/* act.cuh: Act storage (fp32 or bf16) for kernels: act_ld / act_st (x8), LAUNCH_ACT,
 * act_widen / act_narrow, aligned8; the shared scratch buffer (scratch_get).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * Act tensors (ops.h): float, or __nv_bfloat16 in bf16 mode. A kernel that touches them is a
 * template over the storage type ActT, takes them as void pointers and reads and writes elements
 * through act_ld / act_st, in fp32; LAUNCH_ACT launches the instance of the mode of the context cx
 * (context.cuh), which must be in scope, on its stream. */

static size_t act_bytes(const CudaContext *cx)
{
    return cx->bf16 ? sizeof(__nv_bfloat16) : sizeof(float);
}

static size_t act_size(const Backend *be)
{
    return act_bytes(cuda_context(be));
}

__device__ static inline float act_ld(const float *p, size_t i) { return p[i]; }
__device__ static inline float act_ld(const __nv_bfloat16 *p, size_t i)
{
    return __bfloat162float(p[i]);
}
__device__ static inline void act_st(float *p, size_t i, float v) { p[i] = v; }
__device__ static inline void act_st(__nv_bfloat16 *p, size_t i, float v)
{
    p[i] = __float2bfloat16_rn(v);
}

/* Eight consecutive elements i .. i+7 (i a multiple of 8, the tensor 32-byte aligned): one
 * 16-byte access of bf16, two of fp32. The memory-bound elementwise kernels move their data so. */
__device__ static inline void act_ld8(const float *p, size_t i, float (&v)[8])
{
    const float4 a = *reinterpret_cast<const float4 *>(p + i);
    const float4 b = *reinterpret_cast<const float4 *>(p + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ static inline void act_ld8(const __nv_bfloat16 *p, size_t i, float (&v)[8])
{
    const uint4 u = *reinterpret_cast<const uint4 *>(p + i);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x, v[2 * k + 1] = f.y;
    }
}
__device__ static inline void act_st8(float *p, size_t i, const float (&v)[8])
{
    *reinterpret_cast<float4 *>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4 *>(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ static inline void act_st8(__nv_bfloat16 *p, size_t i, const float (&v)[8])
{
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++)
        h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p + i) = u;
}

/* 1 when every pointer given (NULL ends the list) is 32-byte aligned: eight elements at a time. */
static int aligned8(const void *a, const void *b = NULL, const void *c = NULL,
                    const void *d = NULL, const void *e = NULL)
{
    const void *ps[] = {a, b, c, d, e};
    for (int i = 0; i < 5 && ps[i]; i++)
        if ((uintptr_t)ps[i] % 32) return 0;
    return 1;
}

#define LAUNCH_ACT(kernel, grid, block, smem, ...)                                                 \
    do {                                                                                           \
        if (cx->bf16)                                                                              \
            kernel<__nv_bfloat16><<<(grid), (block), (smem), cx->stream>>>(__VA_ARGS__);           \
        else                                                                                       \
            kernel<float><<<(grid), (block), (smem), cx->stream>>>(__VA_ARGS__);                   \
        launchCheck();                                                                             \
    } while (0)

/* LAUNCH_ACT for a kernel templated on a second, compile-time choice too (its vectorised path:
 * template <typename ActT, bool VEC>), given as true or false. */
#define LAUNCH_ACT_VEC(kernel, vec, grid, block, smem, ...)                                        \
    do {                                                                                           \
        if (cx->bf16)                                                                              \
            kernel<__nv_bfloat16, vec><<<(grid), (block), (smem), cx->stream>>>(__VA_ARGS__);      \
        else                                                                                       \
            kernel<float, vec><<<(grid), (block), (smem), cx->stream>>>(__VA_ARGS__);              \
        launchCheck();                                                                             \
    } while (0)

/* dst[n] (fp32) = src[n] (an Act) and back: for the kernels that work in fp32 only. */
template <typename ActT>
__global__ static void act_widen_kernel(float *dst, const void *src, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = act_ld((const ActT *)src, i);
}

template <typename ActT>
__global__ static void act_narrow_kernel(void *dst, const float *src, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) act_st((ActT *)dst, i, src[i]);
}

static void act_widen(CudaContext *cx, float *dst, const void *src, size_t n)
{
    if (n) LAUNCH_ACT(act_widen_kernel, ceil_div((long long)n, 256), 256, 0, dst, src, n);
}

static void act_narrow(CudaContext *cx, void *dst, const float *src, size_t n)
{
    if (n) LAUNCH_ACT(act_narrow_kernel, ceil_div((long long)n, 256), 256, 0, dst, src, n);
}

/* ---------------------------------------------------------------------------------------------
 * scratch: one device buffer shared by the ops that need temporary space (partial sums); ops run
 * one after another on one stream, so no two of them use it at once. */

static void *scratch_get(CudaContext *cx, size_t bytes)
{
    if (bytes > cx->scratch_size) {
        cudaCheck(cudaFree(cx->scratch)); /* synchronises: nothing still reads the old one */
        cx->scratch_size = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
        cudaCheck(cudaMalloc(&cx->scratch, cx->scratch_size));
    }
    return cx->scratch;
}
