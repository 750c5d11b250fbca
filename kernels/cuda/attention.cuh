/* attention.cuh: the tensor-core (bf16 products, fp32 accumulation) causal attention, called by
 * the CUDA backend (ops_cuda.cu) in place of its fp32 kernels: wgmma kernels for head_dim 128 on
 * Hopper (attention_wgmma.cu), mma.sync kernels elsewhere and for head_dim 64
 * (attention_mma_fwd.cu, attention_mma_bwd.cu). Same shapes and semantics as attention_forward /
 * attention_backward of kernels/ops.h. Each function returns 1 when it ran, or 0 without doing
 * anything when the shape or the pointers do not suit it (head_dim other than 64 or 128, a
 * pointer not 16-byte aligned, H not a multiple of KVH, too little shared memory on this device):
 * the caller then runs its own kernels. */
#ifndef DSTRAIN_ATTENTION_CUH
#define DSTRAIN_ATTENTION_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The wgmma kernels (attention_wgmma.cu): head_dim 128 on sm_90 devices, when the build holds
 * that file's sm_90a code (CMakeLists.txt adds it wherever it builds for 90) and the driver
 * gives the tensor-map encoder; asked once, by a probe kernel, not assumed from the device. */
int cuda_wgmma_attention_ready(int D);
/* The contract of cuda_mma_attention_forward / _backward below, bf16 inputs only (as they lie, or
 * the staged copies of the fp32 ones); outputs bf16 when out_bf16, else fp32. 0 without doing
 * anything when not ready or the shape does not suit. */
int cuda_wgmma_attention_forward(void *out, int out_bf16, float *lse, const __nv_bfloat16 *q,
                                 const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B, int T,
                                 int H, int KVH, int D, cudaStream_t stream);
int cuda_wgmma_attention_backward(void *dq, void *dk, void *dv, int out_bf16,
                                  const __nv_bfloat16 *dout, const float *delta, const float *lse,
                                  const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                  const __nv_bfloat16 *v, int B, int T, int H, int KVH, int D,
                                  cudaStream_t stream);
/* Calls (forward or backward) that ran on the wgmma kernels so far. */
long long cuda_attention_wgmma_calls(void);

/* The mma.sync kernels (attention_mma_fwd.cu, attention_mma_bwd.cu), scores, softmax and
 * accumulators in registers, for head_dim 64 and 128; with wgmma = 1 they hand head_dim 128 to
 * the wgmma kernels above where those are ready (the default), with 0 they run themselves. With
 * bf16 = 1, q, k, v, dout and the outputs (out; dq, dk, dv) are bf16 tensors (the CUDA backend's
 * activations in bf16 mode), read and written as they lie, and no workspace is needed; with bf16 =
 * 0 they are fp32 and the inputs are rounded to bf16 into `workspace` (device memory of
 * cuda_mma_attention_workspace bytes, 256-byte aligned, free for the call). */

/* 1 when the shape suits the kernels: head_dim 64 or 128, H a multiple of KVH, a grid in range. */
int cuda_mma_attention_suits(int B, int T, int H, int KVH, int D);
/* Bytes of workspace the forward (backward = 0) or the backward (1) needs at this shape: 0 with
 * bf16 inputs or when the shape does not suit. */
size_t cuda_mma_attention_workspace(int B, int T, int H, int KVH, int D, int backward, int bf16);
int cuda_mma_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                               int bf16, int wgmma, void *workspace, int B, int T, int H, int KVH,
                               int D, cudaStream_t stream);
int cuda_mma_attention_backward(void *dq, void *dk, void *dv, const void *dout, const float *delta,
                                const float *lse, const void *q, const void *k, const void *v,
                                int bf16, int wgmma, void *workspace, int B, int T, int H, int KVH,
                                int D, cudaStream_t stream);

/* Attention with q/k heads of Dqk and v heads of Dv (kernels/ops.h's attention_forward_dv /
 * attention_backward_dv: one kv head per query head, the score scale given), bf16 tensors as they
 * lie, bf16 outputs: the same kernels templated on the two head sizes, for (Dqk, Dv) = (192, 128)
 * (DeepSeek V2/V3) and Dqk = Dv = 64 or 128. Both hand themselves to the wgmma kernels where
 * those are ready for the shape (Dv 128 on Hopper) and wgmma = 1. delta as for
 * cuda_mma_attention_backward, over the v head. Each returns 0 without doing anything when the
 * shape or the pointers do not suit (16-byte aligned tensors, a grid in range). */
int cuda_mma_attention_dv_suits(int B, int T, int H, int Dqk, int Dv);
int cuda_mma_attention_forward_dv(__nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q,
                                  const __nv_bfloat16 *k, const __nv_bfloat16 *v, int wgmma, int B,
                                  int T, int H, int Dqk, int Dv, float scale, cudaStream_t stream);
int cuda_mma_attention_backward_dv(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                                   const __nv_bfloat16 *dout, const float *delta, const float *lse,
                                   const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                   const __nv_bfloat16 *v, int wgmma, int B, int T, int H, int Dqk,
                                   int Dv, float scale, cudaStream_t stream);
/* The wgmma kernels at those sizes: 0 without doing anything where they are not ready (not
 * sm_90a, (Dqk, Dv) other than (192, 128) or (128, 128)). */
int cuda_wgmma_attention_forward_dv(__nv_bfloat16 *out, float *lse, const __nv_bfloat16 *q,
                                    const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B, int T,
                                    int H, int Dqk, int Dv, float scale, cudaStream_t stream);
int cuda_wgmma_attention_backward_dv(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                                     const __nv_bfloat16 *dout, const float *delta,
                                     const float *lse, const __nv_bfloat16 *q,
                                     const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B, int T,
                                     int H, int Dqk, int Dv, float scale, cudaStream_t stream);

/* dst = src rounded to bf16 (n a multiple of 4, both 16-byte aligned), and the three bf16 copies
 * of q, k, v laid out at the start of a workspace: what the kernels above share. */
void cuda_mma_attention_round(__nv_bfloat16 *dst, const float *src, size_t n, cudaStream_t stream);
void cuda_mma_attention_stage(__nv_bfloat16 **qb, __nv_bfloat16 **kb, __nv_bfloat16 **vb,
                              void *workspace, const float *q, const float *k, const float *v,
                              int B, int T, int H, int KVH, int D, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
