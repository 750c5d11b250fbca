/* ops_cuda.cu: the CUDA backend: the Backend table of ops.h over device pointers, checked
 * against the CPU backend by tests/gpu/. In bf16 mode (mixed precision, what device=cuda runs by
 * default) the activations and their gradients (ops.h's Act tensors) are stored in bf16 and
 * matmuls go through cuBLASLt on the bf16 tensor cores from a bf16 working copy of the weights,
 * with fp32 accumulation, bf16 outputs and fp32 weight gradients; in fp32 mode (TF32 off, for the
 * agreement checks) everything is fp32. The other kernels are ours: templates over the Act
 * storage type that compute in fp32; attention is flash-style (online softmax, the log-sum-exp
 * saved, no T x T matrix): on the bf16 tensor cores for head_dim 64 and 128 (attention.cuh:
 * wgmma kernels on Hopper, mma.sync elsewhere) unless DSTRAIN_CUDA_ATTENTION=simple, else in fp32
 * below. Not here yet: fused epilogues.
 * Invariants: every op runs on the legacy default stream, so the synchronous copies order with
 * it; every CUDA and cuBLASLt call is checked with file:line; no float atomics, so a run repeats
 * bit for bit; scratch memory only grows, the first time a larger shape is seen. */
#include <cub/device/device_radix_sort.cuh>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"
#include "cuda_common.cuh"
#include "cuda_ops.h"

extern "C" {
#include "kernels/ops.h"
#include "trainer/common.h"
}

static inline void cublas_check_at(cublasStatus_t status, const char *file, int line)
{
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "dstrain: error: %s:%d: cuBLASLt: status %d\n", file, line, (int)status);
        exit(1);
    }
}
#define cublasCheck(call) cublas_check_at((call), __FILE__, __LINE__)
#define launchCheck() cudaCheck(cudaGetLastError())

static const cudaStream_t stream = 0;

/* 1 in bf16 mode (cuda_matmul_precision): bf16 matmul operands and bf16 Act storage. */
static int lt_bf16;

/* ---------------------------------------------------------------------------------------------
 * Act tensors (ops.h): float, or __nv_bfloat16 in bf16 mode. A kernel that touches them is a
 * template over the storage type ActT, takes them as void pointers and reads and writes elements
 * through act_ld / act_st, in fp32; LAUNCH_ACT launches the instance of the current mode. */

static size_t act_size(void)
{
    return lt_bf16 ? sizeof(__nv_bfloat16) : sizeof(float);
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
        if (lt_bf16)                                                                               \
            kernel<__nv_bfloat16><<<(grid), (block), (smem), stream>>>(__VA_ARGS__);               \
        else                                                                                       \
            kernel<float><<<(grid), (block), (smem), stream>>>(__VA_ARGS__);                       \
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

static void act_widen(float *dst, const void *src, size_t n)
{
    if (n) LAUNCH_ACT(act_widen_kernel, ceil_div((long long)n, 256), 256, 0, dst, src, n);
}

static void act_narrow(void *dst, const float *src, size_t n)
{
    if (n) LAUNCH_ACT(act_narrow_kernel, ceil_div((long long)n, 256), 256, 0, dst, src, n);
}

/* ---------------------------------------------------------------------------------------------
 * scratch: one device buffer shared by the ops that need temporary space (partial sums); ops run
 * one after another on one stream, so no two of them use it at once. */

static void *scratch_ptr;
static size_t scratch_size;

static void *scratch_get(size_t bytes)
{
    if (bytes > scratch_size) {
        cudaCheck(cudaFree(scratch_ptr)); /* synchronises: nothing still reads the old one */
        scratch_size = bytes < ((size_t)1 << 20) ? ((size_t)1 << 20) : bytes;
        cudaCheck(cudaMalloc(&scratch_ptr, scratch_size));
    }
    return scratch_ptr;
}

/* ---------------------------------------------------------------------------------------------
 * reductions inside a warp and a block */

__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
 * shared must hold 32 floats; the leading barrier lets a caller reuse it back to back. */
__device__ static float block_sum(float v, float *shared)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(total);
}

__device__ static float block_max(float v, float *shared)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(total);
}

/* ---------------------------------------------------------------------------------------------
 * column sums of an Act x, deterministic: rows are cut into fixed chunks, each chunk's column
 * sums are written to scratch, then a second kernel adds the chunks in chunk order into dst (+=).
 * With x2 and rowscale (fp32) it sums x[i,j] * (x2[i,j] * rowscale[i]) (the RMSNorm weight
 * gradient). */

#define COLSUM_CHUNK 256

template <typename ActT>
__global__ static void colsum_partial_kernel(float *partial, const void *x_, const float *x2,
                                             const float *rowscale, int M, int N)
{
    const ActT *x = (const ActT *)x_;
    __shared__ float part[8][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    int row0 = blockIdx.y * COLSUM_CHUNK, row1 = min(row0 + COLSUM_CHUNK, M);
    float s = 0.0f;
    if (j < N)
        for (int i = row0 + threadIdx.y; i < row1; i += 8) {
            size_t at = (size_t)i * N + j;
            s += x2 ? act_ld(x, at) * (x2[at] * rowscale[i]) : act_ld(x, at);
        }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < N) {
        float total = 0.0f;
        for (int r = 0; r < 8; r++)
            total += part[r][threadIdx.x];
        partial[(size_t)blockIdx.y * N + j] = total;
    }
}

__global__ static void colsum_finish_kernel(float *dst, const float *partial, int chunks, int N)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= N) return;
    double s = 0.0;
    for (int c = 0; c < chunks; c++)
        s += partial[(size_t)c * N + j];
    dst[j] += (float)s;
}

static void column_sums_add(float *dst, const void *x, const float *x2, const float *rowscale,
                            int M, int N)
{
    if (M <= 0 || N <= 0) return;
    int chunks = ceil_div(M, COLSUM_CHUNK);
    float *partial = (float *)scratch_get((size_t)chunks * N * sizeof(float));
    LAUNCH_ACT(colsum_partial_kernel, dim3(ceil_div(N, 32), chunks), dim3(32, 8), 0, partial, x, x2,
               rowscale, M, N);
    colsum_finish_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(dst, partial, chunks, N);
    launchCheck();
}

/* ---------------------------------------------------------------------------------------------
 * matmul through cuBLASLt. cuBLAS is column-major: a row-major [R, C] matrix is a column-major
 * C x R one, so the row-major products of ops.h become (shapes column-major):
 *   forward  out (N x M)  = W^T (W stored K x N) . inp (K x M)
 *   dinp     dinp (K x M) = W (K x N) . dout (N x M)
 *   dweight  dW (K x N)  += inp (K x M) . dout^T (dout stored N x M)
 * Modes (cuda_matmul_precision):
 *   fp32: fp32 operands, true fp32 products (TF32 off); tf32: fp32 operands on the TF32 cores.
 *   bf16 (mixed precision): bf16 operands (the weights from the attached working copy, the
 *     activations and gradients as they are stored), products on the bf16 tensor cores with fp32
 *     accumulation; out and dinp are written in bf16 (dinp += rounds once, after the fp32 sum),
 *     dW in fp32 (C and D fp32, so dW += accumulates in fp32). */

static cublasLtHandle_t lt_handle;
static void *lt_workspace;
static const size_t lt_workspace_size = (size_t)32 << 20;
static cublasComputeType_t lt_compute = CUBLAS_COMPUTE_32F;

extern "C" int cuda_matmul_is_bf16(void) { return lt_bf16; }

/* ---- bf16 operands ---- */

__global__ static void round_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i + 3 < n) {
        float4 x = *reinterpret_cast<const float4 *>(src + i);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + i);
        d2[0] = __floats2bfloat162_rn(x.x, x.y);
        d2[1] = __floats2bfloat162_rn(x.z, x.w);
    } else {
        for (; i < n; i++)
            dst[i] = __float2bfloat16_rn(src[i]);
    }
}

__global__ static void round_bf16_unaligned_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

static void round_bf16(__nv_bfloat16 *dst, const float *src, size_t n)
{
    if (n == 0) return;
    if ((uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0)
        round_bf16_kernel<<<ceil_div((long long)ceil_div((long long)n, 4), 256), 256, 0, stream>>>(
            dst, src, n);
    else
        round_bf16_unaligned_kernel<<<ceil_div((long long)n, 256), 256, 0, stream>>>(dst, src, n);
    launchCheck();
}

/* A device buffer of bf16 that only grows (the first step sees the largest shapes). */
typedef struct Bf16Buffer {
    __nv_bfloat16 *ptr;
    size_t cap; /* elements */
} Bf16Buffer;

static __nv_bfloat16 *bf16_buffer(Bf16Buffer *b, size_t n)
{
    if (n > b->cap) {
        cudaCheck(cudaFree(b->ptr)); /* synchronises: nothing still reads the old one */
        b->cap = n;
        cudaCheck(cudaMalloc(&b->ptr, n * sizeof(__nv_bfloat16)));
    }
    return b->ptr;
}

/* a weight and a bias outside every attached buffer, rounded */
static Bf16Buffer operand_weight, operand_bias;

/* The working copies of attached parameter buffers (Backend.weights_attach). */
#define WEIGHT_COPIES_MAX 16
typedef struct WeightCopy {
    const float *params;  /* NULL: free slot */
    size_t n;
    __nv_bfloat16 *copy;  /* NULL until the first bf16 refresh */
    int fresh;            /* copy holds the values of the last refresh in bf16 mode */
} WeightCopy;
static WeightCopy weight_copies[WEIGHT_COPIES_MAX];

static WeightCopy *weight_copy_of(const float *params)
{
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++)
        if (weight_copies[i].params == params) return &weight_copies[i];
    return NULL;
}

static int weight_copy_alloc(WeightCopy *w)
{
    if (w->copy) return DS_OK;
    cudaError_t err = cudaMalloc(&w->copy, w->n * sizeof(__nv_bfloat16));
    if (err == cudaSuccess) return DS_OK;
    cudaGetLastError();
    w->copy = NULL;
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return ds_error(DS_ERR_INTERNAL,
                    "CUDA: cannot allocate the bf16 working copy of the weights (%.1f MiB, "
                    "%.1f MiB free); precision: fp32 needs no copy",
                    w->n * 2 / 1048576.0, free_bytes / 1048576.0);
}

static int weights_attach(const float *params, size_t n)
{
    WeightCopy *w = weight_copy_of(params);
    if (!w) w = weight_copy_of(NULL);
    if (!w) return ds_error(DS_ERR_INTERNAL, "CUDA: more than %d parameter buffers attached",
                            WEIGHT_COPIES_MAX);
    w->params = params;
    w->n = n;
    w->fresh = 0;
    return lt_bf16 ? weight_copy_alloc(w) : DS_OK;
}

static void weights_refresh(const float *params)
{
    WeightCopy *w = weight_copy_of(params);
    if (!w) return;
    w->fresh = 0;
    if (!lt_bf16) return;
    if (weight_copy_alloc(w) != DS_OK) { /* matmuls round the weights on the fly instead */
        static int warned;
        if (!warned++) fprintf(stderr, "dstrain: warning: %s\n", ds_last_error());
        return;
    }
    round_bf16(w->copy, params, w->n);
    w->fresh = 1;
}

static void weights_detach(const float *params)
{
    WeightCopy *w = weight_copy_of(params);
    if (!w) return;
    cudaCheck(cudaFree(w->copy));
    memset(w, 0, sizeof(*w));
}

/* weight[n] in bf16: its place in an attached, fresh copy, else rounded into buffer. */
static const __nv_bfloat16 *weight_operand(const float *weight, size_t n, Bf16Buffer *buffer)
{
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++) {
        const WeightCopy *w = &weight_copies[i];
        if (w->params && w->fresh && weight >= w->params && weight + n <= w->params + w->n)
            return w->copy + (weight - w->params);
    }
    __nv_bfloat16 *x = bf16_buffer(buffer, n);
    round_bf16(x, weight, n);
    return x;
}

extern "C" int cuda_matmul_precision(const char *mode)
{
    if (strcmp(mode, "fp32") == 0)
        lt_compute = CUBLAS_COMPUTE_32F, lt_bf16 = 0;
    else if (strcmp(mode, "bf16") == 0)
        lt_compute = CUBLAS_COMPUTE_32F, lt_bf16 = 1;
    else if (strcmp(mode, "tf32") == 0)
        lt_compute = CUBLAS_COMPUTE_32F_FAST_TF32, lt_bf16 = 0;
    else
        return ds_error(DS_ERR_INPUT, "precision: \"%s\": expected fp32, bf16 or tf32", mode);
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++)
        weight_copies[i].fresh = 0;
    return DS_OK;
}

/* ---- cuBLASLt plans: descriptors and the heuristic's algorithm, made once per shape ---- */

typedef struct LtPlan {
    int m, n, k, transa, transb, bias, accumulate, bf16, d_bf16;
    cublasComputeType_t compute;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    int found; /* the heuristic returned an algorithm */
} LtPlan;

#define LT_PLANS_MAX 256
static LtPlan lt_plans[LT_PLANS_MAX];
static int lt_plan_count, lt_plan_next; /* when full, plans are replaced round robin */

static void lt_plan_destroy(LtPlan *p)
{
    cublasCheck(cublasLtMatrixLayoutDestroy(p->la));
    cublasCheck(cublasLtMatrixLayoutDestroy(p->lb));
    cublasCheck(cublasLtMatrixLayoutDestroy(p->ld));
    cublasCheck(cublasLtMatmulDescDestroy(p->desc));
}

static LtPlan *lt_plan_get(int m, int n, int k, int transa, int transb, const void *bias,
                           int accumulate, int d_bf16)
{
    const int has_bias = bias != NULL;
    for (int i = 0; i < lt_plan_count; i++) {
        LtPlan *p = &lt_plans[i];
        if (p->m == m && p->n == n && p->k == k && p->transa == transa && p->transb == transb &&
            p->bias == has_bias && p->accumulate == accumulate && p->bf16 == lt_bf16 &&
            p->d_bf16 == d_bf16 && p->compute == lt_compute)
            return p;
    }
    LtPlan *p;
    if (lt_plan_count < LT_PLANS_MAX) {
        p = &lt_plans[lt_plan_count++];
    } else {
        p = &lt_plans[lt_plan_next];
        lt_plan_next = (lt_plan_next + 1) % LT_PLANS_MAX;
        lt_plan_destroy(p);
    }
    memset(p, 0, sizeof(*p));
    p->m = m, p->n = n, p->k = k, p->transa = transa, p->transb = transb, p->bias = has_bias;
    p->accumulate = accumulate, p->bf16 = lt_bf16, p->d_bf16 = d_bf16, p->compute = lt_compute;
    const cudaDataType_t ab = lt_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, lt_compute, CUDA_R_32F));
    cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N,
                      tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = d_bf16 ? CUDA_R_16BF : CUDA_R_32F; /* the bias is D's type */
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                   sizeof(epi)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                   &bias_type, sizeof(bias_type)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof(bias)));
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&p->la, ab, transa ? k : m, transa ? m : k,
                                           transa ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->lb, ab, transb ? n : k, transb ? k : n,
                                           transb ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->ld, d_bf16 ? CUDA_R_16BF : CUDA_R_32F, m, n, m));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &lt_workspace_size, sizeof(size_t)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    /* a combination the library does not offer is NOT_SUPPORTED here: no algorithm (lt_matmul
     * then adds the bias itself) */
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(lt_handle, p->desc, p->la, p->lb, p->ld,
                                                           p->ld, pref, 1, &heur, &found);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED)
        found = 0;
    else
        cublasCheck(status);
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    p->found = found > 0;
    if (p->found) p->algo = heur.algo;
    return p;
}

template <typename ActT>
__global__ static void add_bias_kernel(void *out_, const void *bias, int M, int N)
{
    ActT *out = (ActT *)out_;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)M * N) act_st(out, i, act_ld(out, i) + act_ld((const ActT *)bias, i % N));
}

/* D[m, n] (column-major, ld m) = op(A) op(B) + beta * D, plus bias[m] on every column; A and B
 * fp32, or bf16 in bf16 mode; D and the bias fp32, or bf16 when d_bf16. */
static void lt_matmul(void *d, int d_bf16, const void *a, const void *b, const void *bias, int m,
                      int n, int k, int transa, int transb, float beta)
{
    LtPlan *p = lt_plan_get(m, n, k, transa, transb, bias, beta != 0.0f, d_bf16);
    if (!p->found && bias) { /* no fused bias for this shape: the product, then the bias */
        lt_matmul(d, d_bf16, a, b, NULL, m, n, k, transa, transb, beta);
        if (d_bf16)
            add_bias_kernel<__nv_bfloat16>
                <<<ceil_div((long long)m * n, 256), 256, 0, stream>>>(d, bias, n, m);
        else
            add_bias_kernel<float><<<ceil_div((long long)m * n, 256), 256, 0, stream>>>(d, bias, n, m);
        launchCheck();
        return;
    }
    if (!p->found) {
        fprintf(stderr, "dstrain: error: %s:%d: cuBLASLt: no algorithm for %d x %d x %d\n",
                __FILE__, __LINE__, m, n, k);
        exit(1);
    }
    if (bias)
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof(bias)));
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(lt_handle, p->desc, &alpha, a, p->la, b, p->lb, &beta, d, p->ld, d,
                               p->ld, &p->algo, lt_workspace, lt_workspace_size, stream));
}

template <typename ActT>
__global__ static void fill_rows_kernel(void *out, const float *bias, int M, int N)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * N) return;
    act_st((ActT *)out, i, bias ? bias[i % N] : 0.0f);
}

static void matmul_forward(Act *out, const Act *inp, const float *weight, const float *bias, int M,
                           int K, int N)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* empty contraction: the bias alone */
        LAUNCH_ACT(fill_rows_kernel, ceil_div((long long)M * N, 256), 256, 0, out, bias, M, N);
        return;
    }
    const void *w = weight, *b = bias;
    if (lt_bf16) { /* bf16 weight and bias (a bf16 output takes a bf16 bias), from the copy */
        w = weight_operand(weight, (size_t)N * K, &operand_weight);
        if (bias) b = weight_operand(bias, (size_t)N, &operand_bias);
    }
    lt_matmul(out, lt_bf16, w, inp, b, N, M, K, 1, 0, 0.0f);
}

static void matmul_backward(Act *dinp, float *dweight, float *dbias, const Act *dout,
                            const Act *inp, const float *weight, int M, int K, int N,
                            int accumulate)
{
    if (M <= 0 || N <= 0) {
        if (dinp && M > 0 && K > 0 && !accumulate)
            cudaCheck(cudaMemsetAsync(dinp, 0, (size_t)M * K * act_size(), stream));
        return;
    }
    if (K > 0) {
        if (dinp) {
            const void *w =
                lt_bf16 ? (const void *)weight_operand(weight, (size_t)N * K, &operand_weight)
                        : weight;
            lt_matmul(dinp, lt_bf16, w, dout, NULL, K, M, N, 0, 0, accumulate ? 1.0f : 0.0f);
        }
        lt_matmul(dweight, 0, inp, dout, NULL, K, N, M, 0, 1, 1.0f);
    }
    if (dbias) column_sums_add(dbias, dout, NULL, NULL, M, N);
}

/* ---------------------------------------------------------------------------------------------
 * rmsnorm: one block per row. */

template <typename ActT>
__global__ static void rmsnorm_forward_kernel(void *out, float *rstd, const float *inp,
                                              const float *weight, int C, float eps)
{
    __shared__ float shared[32];
    const float *x = inp + (size_t)blockIdx.x * C;
    ActT *y = (ActT *)out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        ss += x[j] * x[j];
    ss = block_sum(ss, shared);
    float variance = C > 0 ? ss / C : 0.0f;
    float r = 1.0f / sqrtf(variance + eps);
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        act_st(y, j, weight[j] * (x[j] * r));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

/* dinp += the row's gradient; dinp_act (may be NULL) gets the updated row as an Act. */
template <typename ActT>
__global__ static void rmsnorm_backward_kernel(float *dinp, void *dinp_act, const void *dout,
                                               const float *inp, const float *weight,
                                               const float *rstd, int C)
{
    __shared__ float shared[32];
    size_t row = (size_t)blockIdx.x * C;
    const float *x = inp + row;
    const ActT *dy = (const ActT *)dout + row;
    float *dx = dinp + row;
    ActT *dx_act = dinp_act ? (ActT *)dinp_act + row : NULL;
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        dot += weight[j] * act_ld(dy, j) * x[j];
    dot = block_sum(dot, shared);
    float coef = dot * r * r * r / C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float g = dx[j] + (r * weight[j] * act_ld(dy, j) - coef * x[j]);
        dx[j] = g;
        if (dx_act) act_st(dx_act, j, g);
    }
}

static void rmsnorm_forward(Act *out, float *rstd, const float *inp, const float *weight, int M,
                            int C, float eps)
{
    if (M <= 0) return;
    LAUNCH_ACT(rmsnorm_forward_kernel, M, 256, 0, out, rstd, inp, weight, C, eps);
}

static void rmsnorm_backward(float *dinp, Act *dinp_act, float *dweight, const Act *dout,
                             const float *inp, const float *weight, const float *rstd, int M,
                             int C)
{
    if (M <= 0) return;
    LAUNCH_ACT(rmsnorm_backward_kernel, M, 256, 0, dinp, dinp_act, dout, inp, weight, rstd, C);
    column_sums_add(dweight, dout, inp, rstd, M, C);
}

/* ---------------------------------------------------------------------------------------------
 * rope, rotate-half layout; sign -1 applies the inverse rotation (backward). */

/* One thread rotates W consecutive pairs (i, i + D/2) of one head: W = 8 moves them with act_ld8
 * when D/2 is a multiple of 8 and everything is aligned, else W = 1. */
template <typename ActT, int W>
__global__ static void rope_kernel(void *x_, const float *pos_cos, const float *pos_sin, int T,
                                   int H, int D, long long total, float sign)
{
    ActT *x = (ActT *)x_;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int half = D / 2, groups = half / W;
    const int i = (int)(idx % groups) * W;
    long long rh = idx / groups; /* row * H + h */
    int h = (int)(rh % H);
    long long row = rh / H;
    int t = (int)(row % T);
    ActT *head = x + (size_t)row * H * D + (size_t)h * D;
    const float *cs = pos_cos + (size_t)t * half + i, *sn = pos_sin + (size_t)t * half + i;
    if (W == 8) {
        float x1[8], x2[8], c[8], s[8], y1[8], y2[8];
        act_ld8(head, i, x1);
        act_ld8(head, i + half, x2);
        act_ld8(cs, 0, c);
        act_ld8(sn, 0, s);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float sk = sign * s[k];
            y1[k] = x1[k] * c[k] - x2[k] * sk;
            y2[k] = x2[k] * c[k] + x1[k] * sk;
        }
        act_st8(head, i, y1);
        act_st8(head, i + half, y2);
    } else {
        float c = cs[0], s = sign * sn[0];
        float x1 = act_ld(head, i), x2 = act_ld(head, i + half);
        act_st(head, i, x1 * c - x2 * s);
        act_st(head, i + half, x2 * c + x1 * s);
    }
}

static void rope_apply(Act *x, const float *pos_cos, const float *pos_sin, int B, int T, int H,
                       int D, float sign)
{
    const int half = D / 2, w = half % 8 == 0 && aligned8(x, pos_cos, pos_sin) ? 8 : 1;
    long long total = (long long)B * T * H * (half / w);
    if (total <= 0) return;
    const int blocks = ceil_div(total, 256);
    if (lt_bf16 && w == 8)
        rope_kernel<__nv_bfloat16, 8>
            <<<blocks, 256, 0, stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else if (lt_bf16)
        rope_kernel<__nv_bfloat16, 1>
            <<<blocks, 256, 0, stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else if (w == 8)
        rope_kernel<float, 8><<<blocks, 256, 0, stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else
        rope_kernel<float, 1><<<blocks, 256, 0, stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    launchCheck();
}

static void rope_forward(Act *x, const float *pos_cos, const float *pos_sin, int B, int T, int H,
                         int D)
{
    rope_apply(x, pos_cos, pos_sin, B, T, H, D, 1.0f);
}

static void rope_backward(Act *dx, const float *pos_cos, const float *pos_sin, int B, int T, int H,
                          int D)
{
    rope_apply(dx, pos_cos, pos_sin, B, T, H, D, -1.0f);
}

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

/* 0: flash (the tensor-core kernels where they suit: wgmma on Hopper for head_dim 128, else
 * mma.sync; else the fp32 kernels above), 1: simple (the fp32 kernels), 2: mma (the mma.sync
 * kernels even where the wgmma ones would run: the fallback, testable on Hopper) */
static int attention_kind;
static long long attention_mma_calls;

extern "C" int cuda_attention_kind(const char *mode)
{
    if (strcmp(mode, "flash") == 0)
        attention_kind = 0;
    else if (strcmp(mode, "simple") == 0)
        attention_kind = 1;
    else if (strcmp(mode, "mma") == 0)
        attention_kind = 2;
    else
        return ds_error(DS_ERR_INPUT,
                        "DSTRAIN_CUDA_ATTENTION: \"%s\": expected flash, mma or simple", mode);
    return DS_OK;
}

extern "C" long long cuda_attention_flash_calls(void)
{
    return attention_mma_calls;
}

static void attention_forward_f32(float *out, float *lse, const float *q, const float *k,
                                  const float *v, int B, int T, int H, int KVH, int D)
{
    size_t smem = (size_t)(ATT_TILE * (D + 1) + ATT_TILE * D + ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_forward_kernel, smem);
    attention_forward_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), ATT_WARPS * 32, smem, stream>>>(
        out, lse, q, k, v, T, H, KVH, D, 1.0f / sqrtf((float)D));
    launchCheck();
}

static void attention_backward_f32(float *dq, float *dk, float *dv, const float *dout,
                                   const float *delta, const float *lse, const float *q,
                                   const float *k, const float *v, int B, int T, int H, int KVH,
                                   int D)
{
    const float scale = 1.0f / sqrtf((float)D);
    size_t smem_dq = (size_t)(2 * ATT_TILE * (D + 1) + 2 * ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_dq_kernel, smem_dq);
    attention_dq_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * H), ATT_WARPS * 32, smem_dq, stream>>>(
        dq, dout, lse, delta, q, k, v, T, H, KVH, D, scale);
    launchCheck();
    size_t smem_kv =
        (size_t)(2 * ATT_TILE * (D + 1) + 2 * ATT_TILE + 2 * ATT_WARPS * D) * sizeof(float);
    allow_smem(attention_dkdv_kernel, smem_kv);
    attention_dkdv_kernel<<<dim3(ceil_div(T, ATT_WARPS), B * KVH), ATT_WARPS * 32, smem_kv,
                            stream>>>(dk, dv, dout, lse, delta, q, k, v, T, H, KVH, D, scale);
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

static void attention_forward(Act *out, float *lse, const Act *q, const Act *k, const Act *v,
                              int B, int T, int H, int KVH, int D)
{
    if (B <= 0 || T <= 0 || H <= 0) return;
    attention_check_shape(H, KVH, D);
    if (attention_kind != 1 && cuda_mma_attention_suits(B, T, H, KVH, D)) {
        const size_t workspace = cuda_mma_attention_workspace(B, T, H, KVH, D, 0, lt_bf16);
        if (cuda_mma_attention_forward(out, lse, q, k, v, lt_bf16, attention_kind == 0,
                                       workspace ? scratch_get(workspace) : NULL, B, T, H, KVH, D,
                                       stream)) {
            attention_mma_calls++;
            return;
        }
    }
    if (!lt_bf16) {
        attention_forward_f32((float *)out, lse, (const float *)q, (const float *)k,
                              (const float *)v, B, T, H, KVH, D);
        return;
    }
    /* bf16 activations into kernels that read fp32: widened copies in scratch */
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    ScratchCut cut = {(unsigned char *)scratch_get(scratch_round(qn * 4) * 2 +
                                                   scratch_round(kvn * 4) * 2)};
    float *q32 = (float *)scratch_cut(&cut, qn * 4), *out32 = (float *)scratch_cut(&cut, qn * 4);
    float *k32 = (float *)scratch_cut(&cut, kvn * 4), *v32 = (float *)scratch_cut(&cut, kvn * 4);
    act_widen(q32, q, qn);
    act_widen(k32, k, kvn);
    act_widen(v32, v, kvn);
    attention_forward_f32(out32, lse, q32, k32, v32, B, T, H, KVH, D);
    act_narrow(out, out32, qn);
}

static void attention_backward(Act *dq, Act *dk, Act *dv, const Act *dout, const Act *out,
                               const float *lse, const Act *q, const Act *k, const Act *v, int B,
                               int T, int H, int KVH, int D)
{
    if (B <= 0 || T <= 0 || H <= 0) return;
    attention_check_shape(H, KVH, D);
    const long long rows = (long long)B * H * T;
    const size_t qn = (size_t)B * T * H * D, kvn = (size_t)B * T * KVH * D;
    const int mma = attention_kind != 1 && cuda_mma_attention_suits(B, T, H, KVH, D);
    /* scratch: delta, then the mma kernels' workspace, or fp32 copies of the Act tensors for the
     * fp32 kernels in bf16 mode (dq, dk, dv, dout, q, k, v) */
    const size_t workspace = mma ? cuda_mma_attention_workspace(B, T, H, KVH, D, 1, lt_bf16) : 0;
    const size_t widened = lt_bf16 ? 3 * scratch_round(qn * 4) + 4 * scratch_round(kvn * 4) : 0;
    ScratchCut cut = {(unsigned char *)scratch_get(scratch_round((size_t)rows * 4) +
                                                   (workspace > widened ? workspace : widened))};
    float *delta = (float *)scratch_cut(&cut, (size_t)rows * 4);
    LAUNCH_ACT(attention_delta_kernel, ceil_div(rows * 32, 256), 256, 0, delta, dout, out, B, T, H,
               D);
    if (mma && cuda_mma_attention_backward(dq, dk, dv, dout, delta, lse, q, k, v, lt_bf16,
                                           attention_kind == 0, workspace ? cut.at : NULL, B, T, H,
                                           KVH, D, stream)) {
        attention_mma_calls++;
        return;
    }
    if (!lt_bf16) {
        attention_backward_f32((float *)dq, (float *)dk, (float *)dv, (const float *)dout, delta,
                               lse, (const float *)q, (const float *)k, (const float *)v, B, T, H,
                               KVH, D);
        return;
    }
    float *dq32 = (float *)scratch_cut(&cut, qn * 4), *dout32 = (float *)scratch_cut(&cut, qn * 4);
    float *q32 = (float *)scratch_cut(&cut, qn * 4);
    float *dk32 = (float *)scratch_cut(&cut, kvn * 4), *dv32 = (float *)scratch_cut(&cut, kvn * 4);
    float *k32 = (float *)scratch_cut(&cut, kvn * 4), *v32 = (float *)scratch_cut(&cut, kvn * 4);
    act_widen(dout32, dout, qn);
    act_widen(q32, q, qn);
    act_widen(k32, k, kvn);
    act_widen(v32, v, kvn);
    attention_backward_f32(dq32, dk32, dv32, dout32, delta, lse, q32, k32, v32, B, T, H, KVH, D);
    act_narrow(dq, dq32, qn);
    act_narrow(dk, dk32, kvn);
    act_narrow(dv, dv32, kvn);
}

/* ---------------------------------------------------------------------------------------------
 * elementwise ops */

/* Elementwise kernels: each thread takes elements i .. i+7, with act_ld8 / act_st8 when vec (all
 * pointers aligned) and the eight are in range, else one by one; the same arithmetic either way. */

__device__ static inline float silu_times(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

__device__ static inline void swiglu_grads(float g, float u, float dy, float *dg, float *du)
{
    const float s = 1.0f / (1.0f + expf(-g));
    *dg = dy * u * (s * (1.0f + g * (1.0f - s)));
    *du = dy * (g * s);
}

template <typename ActT>
__global__ static void swiglu_forward_kernel(void *out_, const void *gate_, const void *up_,
                                             size_t n, int vec)
{
    ActT *out = (ActT *)out_;
    const ActT *gate = (const ActT *)gate_, *up = (const ActT *)up_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float g[8], u[8], o[8];
        act_ld8(gate, i, g);
        act_ld8(up, i, u);
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = silu_times(g[k], u[k]);
        act_st8(out, i, o);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++)
        act_st(out, j, silu_times(act_ld(gate, j), act_ld(up, j)));
}

template <typename ActT>
__global__ static void swiglu_backward_kernel(void *dgate_, void *dup_, const void *dout_,
                                              const void *gate_, const void *up_, size_t n,
                                              int vec)
{
    ActT *dgate = (ActT *)dgate_, *dup = (ActT *)dup_;
    const ActT *dout = (const ActT *)dout_, *gate = (const ActT *)gate_, *up = (const ActT *)up_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float g[8], u[8], dy[8], dg[8], du[8];
        act_ld8(gate, i, g);
        act_ld8(up, i, u);
        act_ld8(dout, i, dy);
#pragma unroll
        for (int k = 0; k < 8; k++)
            swiglu_grads(g[k], u[k], dy[k], &dg[k], &du[k]);
        act_st8(dgate, i, dg);
        act_st8(dup, i, du);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++) {
        float dg, du;
        swiglu_grads(act_ld(gate, j), act_ld(up, j), act_ld(dout, j), &dg, &du);
        act_st(dgate, j, dg);
        act_st(dup, j, du);
    }
}

template <typename ActT>
__global__ static void add_kernel(float *out, const float *a, const void *b_, size_t n, int vec)
{
    const ActT *b = (const ActT *)b_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float x[8], y[8];
        act_ld8(a, i, x);
        act_ld8(b, i, y);
#pragma unroll
        for (int k = 0; k < 8; k++)
            x[k] += y[k];
        act_st8(out, i, x);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++)
        out[j] = a[j] + act_ld(b, j);
}

__global__ static void scale_kernel(float *x, float s, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

/* blocks of 256 threads for n elements, eight a thread */
static int blocks_of8(size_t n)
{
    return ceil_div(ceil_div((long long)n, 8), 256);
}

static void swiglu_forward(Act *out, const Act *gate, const Act *up, size_t n)
{
    if (n)
        LAUNCH_ACT(swiglu_forward_kernel, blocks_of8(n), 256, 0, out, gate, up, n,
                   aligned8(out, gate, up));
}

static void swiglu_backward(Act *dgate, Act *dup, const Act *dout, const Act *gate, const Act *up,
                            size_t n)
{
    if (n)
        LAUNCH_ACT(swiglu_backward_kernel, blocks_of8(n), 256, 0, dgate, dup, dout, gate, up, n,
                   aligned8(dgate, dup, dout, gate, up));
}

static void add(float *out, const float *a, const Act *b, size_t n)
{
    if (n) LAUNCH_ACT(add_kernel, blocks_of8(n), 256, 0, out, a, b, n, aligned8(out, a, b));
}

static void scale(float *x, float s, size_t n)
{
    if (!n) return;
    scale_kernel<<<ceil_div((long long)n, 256), 256, 0, stream>>>(x, s, n);
    launchCheck();
}

/* ---------------------------------------------------------------------------------------------
 * embedding. Backward adds each token's gradient rows into its table row in token order, as the
 * CPU does (the same bits), with no atomics: the positions are sorted by token with CUB's radix
 * sort, which is stable (so each token's positions stay ascending) and deterministic; then the
 * first slot of each token's run walks the run, one thread per column, so every row of the table
 * is read and written once. */

/* Rows [vocab_start, vocab_start + V) of the vocabulary are in table; other tokens give zero
 * rows (forward) and no gradient (backward). The unsharded ops are vocab_start 0, V unbounded. */
__global__ static void embedding_forward_kernel(float *out, const int32_t *tokens,
                                                const float *table, int N, int C, int vocab_start,
                                                int V)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    size_t row = i / C, col = i % C;
    long long t = (long long)tokens[row] - vocab_start;
    out[i] = t >= 0 && t < V ? table[(size_t)t * C + col] : 0.0f;
}

__global__ static void iota_kernel(int32_t *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}

/* sorted[s], position[s]: the tokens in ascending order and where each stood. */
__global__ static void embedding_backward_kernel(float *dtable, const float *dout,
                                                 const int32_t *sorted, const int32_t *position,
                                                 int N, int C, int vocab_start, int V)
{
    const int s = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    const int32_t token = sorted[s];
    if ((s > 0 && sorted[s - 1] == token) || col >= C) return; /* not the first of its run */
    const long long t = (long long)token - vocab_start;
    if (t < 0 || t >= V) return;
    float acc = dtable[(size_t)t * C + col];
    for (int j = s; j < N && sorted[j] == token; j++)
        acc += dout[(size_t)position[j] * C + col];
    dtable[(size_t)t * C + col] = acc;
}

static void embedding_forward_shard(float *out, const int32_t *tokens, const float *table, int N,
                                    int C, int vocab_start, int V)
{
    if (N <= 0 || C <= 0) return;
    embedding_forward_kernel<<<ceil_div((long long)N * C, 256), 256, 0, stream>>>(
        out, tokens, table, N, C, vocab_start, V);
    launchCheck();
}

static void embedding_backward_shard(float *dtable, const float *dout, const int32_t *tokens, int N,
                                     int C, int vocab_start, int V)
{
    if (N <= 0 || C <= 0) return;
    /* scratch: sorted tokens, positions in and out (each 256-byte aligned), CUB's temporary */
    size_t sort_bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, tokens, (int32_t *)NULL,
                                              (const int32_t *)NULL, (int32_t *)NULL, N, 0,
                                              32, stream));
    const size_t vec = ((size_t)N * sizeof(int32_t) + 255) / 256 * 256;
    unsigned char *scratch = (unsigned char *)scratch_get(3 * vec + sort_bytes);
    int32_t *sorted = (int32_t *)scratch, *order = (int32_t *)(scratch + vec);
    int32_t *position = (int32_t *)(scratch + 2 * vec);
    iota_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(order, N);
    launchCheck();
    cudaCheck(cub::DeviceRadixSort::SortPairs(scratch + 3 * vec, sort_bytes, tokens, sorted, order,
                                              position, N, 0, 32, stream));
    embedding_backward_kernel<<<dim3(N, ceil_div(C, 256)), 256, 0, stream>>>(
        dtable, dout, sorted, position, N, C, vocab_start, V);
    launchCheck();
}

static void embedding_forward(float *out, const int32_t *tokens, const float *table, int N, int C)
{
    embedding_forward_shard(out, tokens, table, N, C, 0, INT_MAX);
}

static void embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int N,
                               int C)
{
    embedding_backward_shard(dtable, dout, tokens, N, C, 0, INT_MAX);
}

/* ---------------------------------------------------------------------------------------------
 * cross-entropy, one block per row, semantics of the CPU backend (weight-0 rows: loss 0, zero
 * gradient; a weighted row with an out-of-range target: loss NaN, zero gradient). */

template <typename ActT>
__global__ static void cross_entropy_kernel(float *losses, void *logits, const int32_t *targets,
                                            const float *weights, int V, int write_grad)
{
    __shared__ float shared[32];
    const int i = blockIdx.x;
    ActT *row = (ActT *)logits + (size_t)i * V;
    const float w = weights[i];
    const int target = targets[i];
    if (w == 0.0f || target < 0 || target >= V || V <= 0) {
        if (threadIdx.x == 0) losses[i] = w == 0.0f ? 0.0f : NAN;
        if (write_grad)
            for (int j = threadIdx.x; j < V; j += blockDim.x)
                act_st(row, j, 0.0f);
        return;
    }
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        maxv = fmaxf(maxv, act_ld(row, j));
    maxv = block_max(maxv, shared);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        sum += expf(act_ld(row, j) - maxv);
    sum = block_sum(sum, shared);
    const float target_logit = act_ld(row, target);
    __syncthreads(); /* every thread has read row[target] before any gradient is written */
    if (threadIdx.x == 0) losses[i] = logf(sum) - (target_logit - maxv);
    if (write_grad) {
        float inv_sum = 1.0f / sum;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = w * (expf(act_ld(row, j) - maxv) * inv_sum);
            act_st(row, j, j == target ? g - w : g);
        }
    }
}

static void cross_entropy(float *losses, Act *logits, const int32_t *targets,
                          const float *weights, int N, int V, int write_grad)
{
    if (N <= 0) return;
    LAUNCH_ACT(cross_entropy_kernel, N, 512, 0, losses, logits, targets, weights, V, write_grad);
}

/* Vocab-parallel cross-entropy, the three parts of ops.h, one block per row each. */

template <typename ActT>
__global__ static void ce_shard_max_kernel(float *row_max, const void *logits, int V)
{
    __shared__ float shared[32];
    const ActT *row = (const ActT *)logits + (size_t)blockIdx.x * V;
    float maxv = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        maxv = fmaxf(maxv, act_ld(row, j));
    maxv = block_max(maxv, shared);
    if (threadIdx.x == 0) row_max[blockIdx.x] = maxv;
}

template <typename ActT>
__global__ static void ce_shard_stats_kernel(float *stats, const void *logits,
                                             const float *row_max, const int32_t *targets, int V,
                                             int vocab_start)
{
    __shared__ float shared[32];
    const int i = blockIdx.x;
    const ActT *row = (const ActT *)logits + (size_t)i * V;
    const float maxv = row_max[i];
    float sum = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x)
        sum += expf(act_ld(row, j) - maxv);
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
        long long t = (long long)targets[i] - vocab_start;
        int owned = t >= 0 && t < V;
        stats[3 * (size_t)i] = sum;
        stats[3 * (size_t)i + 1] = owned ? act_ld(row, t) : 0.0f;
        stats[3 * (size_t)i + 2] = owned ? 1.0f : 0.0f;
    }
}

template <typename ActT>
__global__ static void ce_shard_finish_kernel(float *losses, void *logits, const float *row_max,
                                              const float *stats, const int32_t *targets,
                                              const float *weights, int V, int vocab_start,
                                              int write_grad)
{
    const int i = blockIdx.x;
    ActT *row = (ActT *)logits + (size_t)i * V;
    const float w = weights[i], maxv = row_max[i], sum = stats[3 * (size_t)i];
    if (w == 0.0f || stats[3 * (size_t)i + 2] != 1.0f) {
        if (threadIdx.x == 0) losses[i] = w == 0.0f ? 0.0f : NAN;
        if (write_grad)
            for (int j = threadIdx.x; j < V; j += blockDim.x)
                act_st(row, j, 0.0f);
        return;
    }
    if (threadIdx.x == 0) losses[i] = logf(sum) - (stats[3 * (size_t)i + 1] - maxv);
    if (write_grad) {
        const float inv_sum = 1.0f / sum;
        const long long t = (long long)targets[i] - vocab_start;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float g = w * (expf(act_ld(row, j) - maxv) * inv_sum);
            act_st(row, j, j == t ? g - w : g);
        }
    }
}

static void cross_entropy_shard_max(float *row_max, const Act *logits, int N, int V)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_max_kernel, N, 512, 0, row_max, logits, V);
}

static void cross_entropy_shard_stats(float *stats, const Act *logits, const float *row_max,
                                      const int32_t *targets, int N, int V, int vocab_start)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_stats_kernel, N, 512, 0, stats, logits, row_max, targets, V, vocab_start);
}

static void cross_entropy_shard_finish(float *losses, Act *logits, const float *row_max,
                                       const float *stats, const int32_t *targets,
                                       const float *weights, int N, int V, int vocab_start,
                                       int write_grad)
{
    if (N <= 0) return;
    LAUNCH_ACT(ce_shard_finish_kernel, N, 512, 0, losses, logits, row_max, stats, targets, weights,
               V, vocab_start, write_grad);
}

/* ---------------------------------------------------------------------------------------------
 * sum of squares in double: a fixed grid (so a fixed order), block partials summed on the host. */

#define SUMSQ_BLOCKS 512

__global__ static void sum_squares_kernel(double *partial, const float *x, size_t n)
{
    __shared__ double shared[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = warp_sum_d(s);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) shared[warp] = s;
    __syncthreads();
    if (warp == 0) {
        double t = lane < (int)(blockDim.x / 32) ? shared[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) partial[blockIdx.x] = t;
    }
}

static void sum_squares_batch(double *sums, const float *const *xs, const size_t *ns, int count)
{
    if (count <= 0) return;
    double *partial = (double *)scratch_get((size_t)count * SUMSQ_BLOCKS * sizeof(double));
    for (int r = 0; r < count; r++) {
        if (!ns[r]) continue;
        sum_squares_kernel<<<SUMSQ_BLOCKS, 256, 0, stream>>>(partial + (size_t)r * SUMSQ_BLOCKS,
                                                             xs[r], ns[r]);
        launchCheck();
    }
    static double host[SUM_SQUARES_BATCH * SUMSQ_BLOCKS];
    cudaCheck(cudaMemcpy(host, partial, (size_t)count * SUMSQ_BLOCKS * sizeof(double),
                         cudaMemcpyDeviceToHost));
    for (int r = 0; r < count; r++) {
        double total = 0.0; /* the partials in block order */
        for (int i = 0; ns[r] && i < SUMSQ_BLOCKS; i++)
            total += host[(size_t)r * SUMSQ_BLOCKS + i];
        sums[r] = total;
    }
}

/* One range: the batch of one, so both give the same bits. */
static double sum_squares(const float *x, size_t n)
{
    double total;
    sum_squares_batch(&total, &x, &n, 1);
    return total;
}

/* ---------------------------------------------------------------------------------------------
 * AdamW: adamw.cu */

extern "C" void cuda_adamw_fp32(float *param, const float *grad, float *m, float *v, size_t n,
                                float lr, float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t, cudaStream_t stream);

static void adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                         int t)
{
    cuda_adamw_fp32(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t,
                    stream);
}

extern "C" void cuda_adamw_ewc(float *param, const float *grad, float *m, float *v, size_t n,
                               float lr, float beta1, float beta2, float eps, float weight_decay,
                               float grad_scale, int t, const float *const *fisher,
                               const float *const *anchor, int n_sets, float lambda,
                               int decay_to_anchor, double *penalty, cudaStream_t stream);

static void adamw_ewc_update(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             float grad_scale, int t, const float *const *fisher,
                             const float *const *anchor, int n_sets, float lambda,
                             int decay_to_anchor, double *penalty)
{
    cuda_adamw_ewc(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t, fisher,
                   anchor, n_sets, lambda, decay_to_anchor, penalty, stream);
}

/* ---------------------------------------------------------------------------------------------
 * memory */

static void *mem_alloc(size_t bytes)
{
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 256);
    if (err != cudaSuccess) {
        cudaGetLastError(); /* clear it: running out of memory leaves the device usable */
        size_t free_bytes = 0, total_bytes = 0;
        cudaMemGetInfo(&free_bytes, &total_bytes);
        ds_error(DS_ERR_INTERNAL,
                 "CUDA: cannot allocate %.1f MiB of device memory (%.1f MiB free): %s",
                 bytes / 1048576.0, free_bytes / 1048576.0, cudaGetErrorString(err));
        return NULL;
    }
    cudaCheck(cudaMemset(p, 0, bytes ? bytes : 256));
    return p;
}

static void mem_free(void *p)
{
    if (p) cudaCheck(cudaFree(p));
}

static void mem_to_device(void *dst, const void *host_src, size_t bytes)
{
    if (bytes) cudaCheck(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}

static void mem_to_host(void *host_dst, const void *src, size_t bytes)
{
    if (bytes) cudaCheck(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}

static void mem_zero(void *p, size_t bytes)
{
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, stream));
}

/* --------------------------------------------------------------------------------------------- */

static Backend cuda_backend;

/* The first call picks the device and creates the cuBLASLt handle; NULL (with the error set)
 * when there is no usable GPU. */
extern "C" const Backend *backend_cuda(void)
{
    if (cuda_backend.name) return &cuda_backend;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        ds_error(DS_ERR_INPUT, "device: cuda: no usable GPU (%s)",
                 err != cudaSuccess ? cudaGetErrorString(err) : "no device found");
        return NULL;
    }
    const char *mode = getenv("DSTRAIN_CUDA_MATMUL");
    if (mode && mode[0] && cuda_matmul_precision(mode) != DS_OK) return NULL;
    const char *attention = getenv("DSTRAIN_CUDA_ATTENTION");
    if (attention && attention[0] && cuda_attention_kind(attention) != DS_OK) return NULL;
    cublasCheck(cublasLtCreate(&lt_handle));
    cudaCheck(cudaMalloc(&lt_workspace, lt_workspace_size));
    Backend *b = &cuda_backend;
    b->act_size = act_size;
    b->matmul_forward = matmul_forward;
    b->matmul_backward = matmul_backward;
    b->rmsnorm_forward = rmsnorm_forward;
    b->rmsnorm_backward = rmsnorm_backward;
    b->rope_forward = rope_forward;
    b->rope_backward = rope_backward;
    b->attention_forward = attention_forward;
    b->attention_backward = attention_backward;
    b->swiglu_forward = swiglu_forward;
    b->swiglu_backward = swiglu_backward;
    b->embedding_forward = embedding_forward;
    b->embedding_backward = embedding_backward;
    b->cross_entropy = cross_entropy;
    b->add = add;
    b->sum_squares = sum_squares;
    b->sum_squares_batch = sum_squares_batch;
    b->scale = scale;
    b->adamw_update = adamw_update;
    b->adamw_ewc_update = adamw_ewc_update;
    b->mem_alloc = mem_alloc;
    b->mem_free = mem_free;
    b->mem_to_device = mem_to_device;
    b->mem_to_host = mem_to_host;
    b->mem_zero = mem_zero;
    b->host_memory = 0;
    b->embedding_forward_shard = embedding_forward_shard;
    b->embedding_backward_shard = embedding_backward_shard;
    b->cross_entropy_shard_max = cross_entropy_shard_max;
    b->cross_entropy_shard_stats = cross_entropy_shard_stats;
    b->cross_entropy_shard_finish = cross_entropy_shard_finish;
    b->weights_attach = weights_attach;
    b->weights_refresh = weights_refresh;
    b->weights_detach = weights_detach;
    b->name = "cuda"; /* last: marks the table complete */
    return b;
}
