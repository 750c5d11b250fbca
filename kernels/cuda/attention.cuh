/* attention.cuh: the tensor-core (bf16 products, fp32 accumulation) causal attention of
 * attention.cu, called by the CUDA backend (ops_cuda.cu) in place of its fp32 kernels. Same
 * shapes and semantics as attention_forward / attention_backward of kernels/ops.h. Each function
 * returns 1 when it ran, or 0 without doing anything when the shape or the pointers do not suit
 * it (head_dim other than 64 or 128, a pointer not 16-byte aligned, H not a multiple of KVH, too
 * little shared memory on this device): the caller then runs its own kernels. */
#ifndef DSTRAIN_ATTENTION_CUH
#define DSTRAIN_ATTENTION_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out [B*T, H*D], lse [B, H, T] (natural log-sum-exp of the scaled scores of each row). */
int cuda_flash_attention_forward(float *out, float *lse, const float *q, const float *k,
                                 const float *v, int B, int T, int H, int KVH, int D,
                                 cudaStream_t stream);

/* dq, dk, dv overwritten; delta [B, H, T] = rowsum(dout * out), computed by the caller. */
int cuda_flash_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                  const float *delta, const float *lse, const float *q,
                                  const float *k, const float *v, int B, int T, int H, int KVH,
                                  int D, cudaStream_t stream);

/* Calls that ran on the wmma kernels above so far. */
long long cuda_attention_wmma_calls(void);

/* The mma.sync kernels (attention_mma_fwd.cu, attention_mma_bwd.cu): the same contracts as the
 * two functions above, with scores, softmax and accumulators in registers instead of
 * shared-memory staging (the same products and summation order as the backward above, so the
 * same bits); the default. With bf16 = 1, q, k, v, dout and the outputs (out; dq, dk, dv) are
 * bf16 tensors (the CUDA backend's activations in bf16 mode), read and written as they lie, and
 * no workspace is needed; with bf16 = 0 they are fp32 and the inputs are rounded to bf16 into
 * `workspace` (device memory of cuda_mma_attention_workspace bytes, 256-byte aligned, free for
 * the call). */

/* 1 when the shape suits the kernels: head_dim 64 or 128, H a multiple of KVH, a grid in range. */
int cuda_mma_attention_suits(int B, int T, int H, int KVH, int D);
/* Bytes of workspace the forward (backward = 0) or the backward (1) needs at this shape: 0 with
 * bf16 inputs or when the shape does not suit. */
size_t cuda_mma_attention_workspace(int B, int T, int H, int KVH, int D, int backward, int bf16);
int cuda_mma_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                               int bf16, void *workspace, int B, int T, int H, int KVH, int D,
                               cudaStream_t stream);
int cuda_mma_attention_backward(void *dq, void *dk, void *dv, const void *dout,
                                const float *delta, const float *lse, const void *q, const void *k,
                                const void *v, int bf16, void *workspace, int B, int T, int H,
                                int KVH, int D, cudaStream_t stream);

/* dst = src rounded to bf16 (n a multiple of 4, both 16-byte aligned), and the three bf16 copies
 * of q, k, v laid out at the start of a workspace: what the kernels above share. */
void cuda_mma_attention_round(__nv_bfloat16 *dst, const float *src, size_t n,
                              cudaStream_t stream);
void cuda_mma_attention_stage(__nv_bfloat16 **qb, __nv_bfloat16 **kb, __nv_bfloat16 **vb,
                              void *workspace, const float *q, const float *k, const float *v,
                              int B, int T, int H, int KVH, int D, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
