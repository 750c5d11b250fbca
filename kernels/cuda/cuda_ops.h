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

#ifdef __cplusplus
}
#endif

#endif
