/* ops_cuda.cu: the CUDA backend: the Backend table of ops.h over device pointers, checked
 * against the CPU backend by tests/gpu/. In bf16 mode (mixed precision, what device=cuda runs by
 * default) the activations and their gradients (ops.h's Act tensors) are stored in bf16 and
 * matmuls go through cuBLASLt on the bf16 tensor cores from a bf16 working copy of the weights,
 * with fp32 accumulation, bf16 outputs and fp32 weight gradients; in fp32 mode (TF32 off, for the
 * agreement checks) everything is fp32. The other kernels are ours: templates over the Act
 * storage type that compute in fp32; attention is flash-style (online softmax, the log-sum-exp
 * saved, no T x T matrix): on the bf16 tensor cores for head_dim 64 and 128 (attention.cuh:
 * wgmma kernels on Hopper, mma.sync elsewhere) unless cuda.attention is simple, else in fp32
 * (attention_fp32.cuh); DeepSeek's latent attention runs on the same tensor-core kernels at its
 * head sizes (q/k 192, v 128; mla.cuh dispatches, other shapes take fp32 kernels), its routing,
 * permutation and row moves are simple fp32-arithmetic kernels (moe.cuh), and the routed experts'
 * matmuls go through cuBLASLt (experts.cuh). Each kernel
 * family is a file of its own, included below (the list says which); this file holds what they
 * share, AdamW's entries, memory, the Backend table and the making and freeing of a backend.
 * Everything a backend holds is in its context (context.cuh: device, stream, options, cuBLASLt
 * handle and plans, working copies, scratch, the experts' streams), made by cuda_backend_create
 * and reached by every op through cuda_context(be); the kernel families' host functions take it
 * as their first parameter, cx. No state lives at file scope here (but matmul.cuh's one
 * warning a process): backends made in one process share only the device. Not here yet: fused
 * epilogues. Invariants: every op runs on the legacy default stream, so the synchronous copies
 * order with it (experts.cuh forks streams from it inside an op and joins them back before
 * returning); every CUDA and cuBLASLt call is checked with file:line; no float atomics, so a run
 * repeats bit for bit; scratch memory only grows, the first time a larger shape is seen. */
#include <cub/device/device_radix_sort.cuh>
#include <cublasLt.h>
#include <cublas_v2.h>
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
#include "kernels/dirty_ranges.h"
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

#include "context.cuh"

/* ---------------------------------------------------------------------------------------------
 * the kernel families, one file each, in dependency order, which the formatter must leave as
 * it is (each file is part of this translation unit: see its first lines) */

/* clang-format off */
#include "act.cuh"            /* Act storage access for kernels, LAUNCH_ACT, scratch */
#include "reduce.cuh"         /* warp and block sums, column sums, sum of squares */
#include "matmul.cuh"         /* cuBLASLt matmuls, bf16 weight copies, plans */
#include "rmsnorm.cuh"        /* rmsnorm forward and backward */
#include "rope.cuh"           /* rope forward and backward */
#include "attention_fp32.cuh" /* attention: fp32 kernels, dispatch to the tensor-core ones */
#include "elementwise.cuh"    /* swiglu, add, scale */
#include "embedding.cuh"      /* embedding, whole and sharded */
#include "cross_entropy.cuh"  /* cross-entropy, whole and sharded */
#include "mla.cuh"            /* latent attention: blocks, rope in rows, attention with Dv */
#include "moe.cuh"            /* experts: routing, permutation, row gathers and scatters */
#include "experts.cuh"        /* experts: their matmuls over streams, grouped or one by one */
/* clang-format on */

/* ---------------------------------------------------------------------------------------------
 * AdamW: adamw.cu */

extern "C" void cuda_adamw_fp32(float *param, const float *grad, float *m, float *v, size_t n,
                                float lr, float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t, __nv_bfloat16 *copy,
                                cudaStream_t stream);

/* Both AdamW ops write the bf16 working copy of what they update in the same pass (matmul.cuh's
 * weight_copy_for_update). */
static void adamw_update(const Backend *be, float *param, const float *grad, float *m, float *v,
                         size_t n, float lr, float beta1, float beta2, float eps,
                         float weight_decay, float grad_scale, int t)
{
    CudaContext *cx = cuda_context(be);
    cuda_adamw_fp32(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t,
                    weight_copy_for_update(cx, param, n), cx->stream);
}

extern "C" void cuda_adamw_ewc(float *param, const float *grad, float *m, float *v, size_t n,
                               float lr, float beta1, float beta2, float eps, float weight_decay,
                               float grad_scale, int t, const float *const *fisher,
                               const float *const *anchor, int n_sets, float lambda,
                               int decay_to_anchor, double *penalty, __nv_bfloat16 *copy,
                               EwcScratch *scratch, cudaStream_t stream);

static void adamw_ewc_update(const Backend *be, float *param, const float *grad, float *m, float *v,
                             size_t n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, float grad_scale, int t,
                             const float *const *fisher, const float *const *anchor, int n_sets,
                             float lambda, int decay_to_anchor, double *penalty)
{
    CudaContext *cx = cuda_context(be);
    cuda_adamw_ewc(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t, fisher,
                   anchor, n_sets, lambda, decay_to_anchor, penalty,
                   weight_copy_for_update(cx, param, n), &cx->ewc, cx->stream);
}

/* ---------------------------------------------------------------------------------------------
 * memory */

static void *mem_alloc(const Backend *be, size_t bytes)
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

static void mem_free(const Backend *be, void *p)
{
    if (p) cudaCheck(cudaFree(p));
}

static void mem_to_device(const Backend *be, void *dst, const void *host_src, size_t bytes)
{
    CudaContext *cx = cuda_context(be);
    weight_copies_written(cx, dst, bytes);
    if (bytes) cudaCheck(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice));
}

static void mem_to_host(const Backend *be, void *host_dst, const void *src, size_t bytes)
{
    if (bytes) cudaCheck(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost));
}

static void mem_zero(const Backend *be, void *p, size_t bytes)
{
    CudaContext *cx = cuda_context(be);
    weight_copies_written(cx, p, bytes);
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, cx->stream));
}

static void mem_copy(const Backend *be, void *dst, const void *src, size_t bytes)
{
    CudaContext *cx = cuda_context(be);
    weight_copies_written(cx, dst, bytes);
    if (bytes && dst != src)
        cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cx->stream));
}

/* --------------------------------------------------------------------------------------------- */

static int mem_info(const Backend *be, size_t *free_bytes, size_t *total_bytes)
{
    cudaError_t err = cudaMemGetInfo(free_bytes, total_bytes);
    if (err == cudaSuccess) return DS_OK;
    cudaGetLastError();
    return ds_error(DS_ERR_INTERNAL, "memory: cannot read the GPU's free memory: %s",
                    cudaGetErrorString(err));
}

/* The table of ops, every entry this backend has. */
static void cuda_table(Backend *b)
{
    b->act_size = act_size;
    b->matmul_forward = matmul_forward;
    b->matmul_backward = matmul_backward;
    b->rmsnorm_forward = rmsnorm_forward;
    b->rmsnorm_backward = rmsnorm_backward;
    b->add_rmsnorm_forward = add_rmsnorm_forward;
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
    b->mem_copy = mem_copy;
    b->host_memory = 0;
    b->mem_info = mem_info;
    b->embedding_forward_shard = embedding_forward_shard;
    b->embedding_backward_shard = embedding_backward_shard;
    b->cross_entropy_shard_max = cross_entropy_shard_max;
    b->cross_entropy_shard_stats = cross_entropy_shard_stats;
    b->cross_entropy_shard_finish = cross_entropy_shard_finish;
    b->weights_attach = weights_attach;
    b->weights_refresh = weights_refresh;
    b->weights_detach = weights_detach;
    b->weights_touched = weights_touched;
    b->copy_block = copy_block;
    b->act_to_f32 = act_to_f32;
    b->rope_block_forward = rope_block_forward;
    b->rope_block_backward = rope_block_backward;
    b->attention_forward_dv = attention_forward_dv;
    b->attention_backward_dv = attention_backward_dv;
    b->moe_route = moe_route;
    b->moe_route_backward = moe_route_backward;
    b->moe_balance = moe_balance;
    b->moe_permute = moe_permute;
    b->gather_rows = gather_rows;
    b->scatter_add_rows = scatter_add_rows;
    b->rows_dot = rows_dot;
    b->moe_experts_forward = moe_experts_forward;
    b->moe_experts_backward = moe_experts_backward;
    b->name = "cuda";
}

/* The options (cuda_ops.h), all four checked before any is applied. */
static int cuda_context_options(CudaContext *cx, const char *precision, const char *attention,
                                const char *experts, const char *weight_copy)
{
    int bf16, attention_choice, experts_choice, copies;
    cublasComputeType_t compute;
    DS_TRY(precision_parse(precision, &bf16, &compute));
    DS_TRY(attention_kind_parse(attention, &attention_choice));
    DS_TRY(experts_kind_parse(experts, &experts_choice));
    DS_TRY(weight_copy_parse(weight_copy, &copies));
    cx->bf16 = bf16;
    cx->compute = compute;
    cx->copies_kept = copies;
    cx->attention_kind = attention_choice;
    cx->experts_kind = experts_choice;
    return DS_OK;
}

extern "C" int cuda_backend_create(const char *precision, const char *attention,
                                   const char *experts, const char *weight_copy,
                                   const Backend **out)
{
    *out = NULL;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        return ds_error(DS_ERR_INPUT, "device: cuda: no usable GPU (%s)",
                        err != cudaSuccess ? cudaGetErrorString(err) : "no device found");
    }
    Backend *b = (Backend *)calloc(1, sizeof(*b));
    CudaContext *cx = (CudaContext *)calloc(1, sizeof(*cx));
    if (!b || !cx) {
        free(b), free(cx);
        return ds_error(DS_ERR_INTERNAL, "out of memory");
    }
    const int rc = cuda_context_options(cx, precision, attention, experts, weight_copy);
    if (rc != DS_OK) {
        free(b), free(cx);
        return rc;
    }
    cuda_table(b);
    b->ctx = cx;
    cx->be = b;
    cx->stream = 0;
    int optin = 0;
    cudaCheck(cudaGetDevice(&cx->device));
    cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cx->device));
    cx->smem_optin = (size_t)optin;
    cublasCheck(cublasLtCreate(&cx->lt));
    cudaCheck(cudaMalloc(&cx->lt_workspace, lt_workspace_size));
    *out = b;
    return DS_OK;
}

extern "C" void cuda_backend_free(const Backend *be)
{
    if (!be) return;
    CudaContext *cx = cuda_context(be);
    cudaCheck(cudaDeviceSynchronize()); /* nothing still uses what is freed below */
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++)
        cudaCheck(cudaFree(cx->copies[i].copy));
    for (int i = 0; i < cx->plan_count; i++)
        lt_plan_destroy(&cx->plans[i]);
    experts_free(cx);
    cublasCheck(cublasLtDestroy(cx->lt));
    cudaCheck(cudaFree(cx->lt_workspace));
    cudaCheck(cudaFree(cx->scratch));
    cudaCheck(cudaFree(cx->operand_weight.ptr));
    cudaCheck(cudaFree(cx->operand_bias.ptr));
    cudaCheck(cudaFree((void *)cx->ewc.tables));
    cudaCheck(cudaFree(cx->ewc.partial));
    free(cx);
    free((Backend *)be);
}
