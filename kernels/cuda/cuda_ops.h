/* cuda_ops.h: what the CUDA backend offers beyond the Backend table of ops.h (C linkage).
 * Only for builds with DSTRAIN_HAVE_CUDA. */
#ifndef DSTRAIN_CUDA_OPS_H
#define DSTRAIN_CUDA_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

/* How matmuls compute: "fp32" (the backend's default; TF32 off, agrees with the CPU to fp32
 * rounding), "bf16" (mixed precision: fp32 storage and master weights, the weights read from the
 * bf16 working copy of Backend.weights_attach, activations and gradients rounded to bf16 as
 * operands, bf16 tensor-core products with fp32 accumulation and fp32 results) or "tf32". The
 * environment variable DSTRAIN_CUDA_MATMUL sets it when the backend starts; the config key
 * precision (train_backend) after that. DS_ERR_INPUT for anything else. */
int cuda_matmul_precision(const char *mode);
/* 1 when matmuls run in bf16 mode. */
int cuda_matmul_is_bf16(void);

/* How attention computes: "flash" (default: the mma.sync tensor-core kernels of
 * attention_mma_fwd.cu and attention_mma_bwd.cu, bf16 products with fp32 accumulation and
 * softmax, for head_dim 64 and 128; other head dims run the fp32 kernels), "wmma" (the earlier
 * kernels of attention.cu, same numerics, slower) or "simple" (the fp32 CUDA-core
 * kernels of ops_cuda.cu for every head dim; agrees with the CPU to fp32 rounding). The environment variable DSTRAIN_CUDA_ATTENTION sets it
 * when the backend starts. DS_ERR_INPUT for anything else. */
int cuda_attention_kind(const char *mode);

/* How many attention calls (forward or backward) ran on the tensor-core kernels so far: lets
 * tests see which implementation a call took. */
long long cuda_attention_flash_calls(void);

#ifdef __cplusplus
}
#endif

#endif
