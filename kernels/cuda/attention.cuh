/* attention.cuh: the tensor-core (bf16 products, fp32 accumulation) causal attention of
 * attention.cu, called by the CUDA backend (ops_cuda.cu) in place of its fp32 kernels. Same
 * shapes and semantics as attention_forward / attention_backward of kernels/ops.h. Each function
 * returns 1 when it ran, or 0 without doing anything when the shape or the pointers do not suit
 * it (head_dim other than 64 or 128, a pointer not 16-byte aligned, H not a multiple of KVH, too
 * little shared memory on this device): the caller then runs its own kernels. */
#ifndef DSTRAIN_ATTENTION_CUH
#define DSTRAIN_ATTENTION_CUH

#include <cuda_runtime.h>

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
 * same bits); the default. */
int cuda_mma_attention_forward(float *out, float *lse, const float *q, const float *k,
                               const float *v, int B, int T, int H, int KVH, int D,
                               cudaStream_t stream);
int cuda_mma_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                const float *delta, const float *lse, const float *q,
                                const float *k, const float *v, int B, int T, int H, int KVH,
                                int D, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
