/* cuda_ops.h: what the CUDA backend offers beyond the Backend table of ops.h (C linkage).
 * Only for builds with DSTRAIN_HAVE_CUDA. */
#ifndef DSTRAIN_CUDA_OPS_H
#define DSTRAIN_CUDA_OPS_H

#ifdef __cplusplus
extern "C" {
#endif

/* How matmuls compute: "fp32" (default; TF32 off, agrees with the CPU to fp32 rounding),
 * "bf16" (fp32 storage, bf16 tensor-core products, fp32 accumulation) or "tf32". The
 * environment variable DSTRAIN_CUDA_MATMUL sets it when the backend starts. DS_ERR_INPUT for
 * anything else. */
int cuda_matmul_precision(const char *mode);

/* How attention computes: "flash" (default: the tensor-core kernels of attention.cu, bf16
 * products with fp32 accumulation and softmax, for head_dim 64 and 128; other head dims run the
 * fp32 kernels) or "simple" (the fp32 CUDA-core kernels of ops_cuda.cu for every head dim;
 * agrees with the CPU to fp32 rounding). The environment variable DSTRAIN_CUDA_ATTENTION sets it
 * when the backend starts. DS_ERR_INPUT for anything else. */
int cuda_attention_kind(const char *mode);

/* How many attention calls (forward or backward) ran on the tensor-core kernels so far: lets
 * tests see which implementation a call took. */
long long cuda_attention_flash_calls(void);

#ifdef __cplusplus
}
#endif

#endif
