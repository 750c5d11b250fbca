/* cuda_ops.h: what the CUDA backend offers beyond the Backend table of ops.h (C linkage).
 * Only for builds with DSTRAIN_HAVE_CUDA. */
#ifndef DSTRAIN_CUDA_OPS_H
#define DSTRAIN_CUDA_OPS_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CUDA backend on the current device (*out, freed by cuda_backend_free): its own table and
 * context (kernels/cuda/context.cuh), made with the options it keeps for its life (backend_create
 * passes BackendOptions, the config's keys); each is checked first, DS_ERR_INPUT naming the key,
 * and DS_ERR_INPUT when there is no usable GPU. Backends made in one process share nothing but
 * the device: a model lives on the backend it was laid out for.
 * precision, how the backend computes and stores: "fp32" (TF32 off, agrees with the CPU to fp32
 * rounding), "bf16" (mixed precision: activations and their gradients stored in bf16 (ops.h's
 * Act), matmuls on the bf16 tensor cores from the bf16 working copy of Backend.weights_attach
 * with fp32 accumulation, fp32 master weights and weight gradients) or "tf32" (fp32 storage,
 * TF32 products); backend_create's auto is bf16. The Act storage follows the mode (act_size).
 * attention: "flash" (the bf16 tensor-core kernels for head_dim 64 and 128, bf16 products with
 * fp32 accumulation and softmax: on Hopper the wgmma kernels of attention_wgmma.cu for head_dim
 * 128, else the mma.sync kernels of attention_mma_fwd.cu and attention_mma_bwd.cu; other head
 * dims run the fp32 kernels; the same for DeepSeek's latent attention, attention_forward_dv /
 * _backward_dv, in bf16 mode at q/k heads of 192 with v heads of 128 and at equal head sizes of
 * 64 or 128, other sizes and fp32 activations on the fp32 kernels of mla.cuh), "mma" (the
 * mma.sync kernels wherever they suit, also on Hopper: the fallback, kept testable there) or
 * "simple" (the fp32 CUDA-core kernels for every head dim; agrees with the CPU to fp32 rounding).
 * experts, how the routed experts of a MoE layer run (experts.cuh): "streams" (each expert's
 * matmuls on one of a few streams, so several experts share the GPU; the same bits as "loop"),
 * "grouped" (one cuBLAS grouped GEMM a projection) or "loop" (one matmul after another).
 * weight_copy, in bf16: "full" (attached weights keep a bf16 working copy, 2 bytes a parameter,
 * refreshed by weights_refresh and written by AdamW) or "none" (no copy: each matmul rounds its
 * weight into a scratch buffer as it reads it, unless the buffer holds that attached weight
 * already and nothing wrote it since). */
int cuda_backend_create(const char *precision, const char *attention, const char *experts,
                        const char *weight_copy, const Backend **out);
/* Frees what cuda_backend_create made (its working copies, plans, workspaces and streams), after
 * the device is idle; NULL does nothing. The memory its mem_alloc gave (plain device memory)
 * stays valid for any backend on the device. A backend works on the device that was current
 * when it was made: the caller keeps that device current. */
void cuda_backend_free(const Backend *be);

/* How many attention calls (forward or backward) of be ran on the tensor-core kernels so far, and
 * how many calls of the process ran on the wgmma ones: lets tests see which implementation a call
 * took. */
long long cuda_attention_flash_calls(const Backend *be);
long long cuda_attention_wgmma_calls(void);
/* 1 when "flash" runs head dim D on the wgmma kernels on this device and build. */
int cuda_wgmma_attention_ready(int D);

/* How many elements Backend.weights_refresh rounded into bf16 working copies so far: the whole
 * buffer where it was stale, else only the ranges written by something other than the AdamW ops
 * (which write the copy themselves); lets tests see which elements a refresh took. */
long long cuda_weights_refresh_rounded(const Backend *be);
/* How many elements matmuls rounded into their operand buffers (weights without a bf16 copy): a
 * weight read again before anything wrote it is not rounded again; lets tests see which reads
 * rounded. */
long long cuda_operand_rounded(const Backend *be);

/* How many grouped matmuls ran so far, and how many of those the library refused and the
 * experts ran one by one instead: lets tests see which path a call took. */
long long cuda_moe_grouped_calls(const Backend *be);
long long cuda_moe_grouped_fallbacks(const Backend *be);

#ifdef __cplusplus
}
#endif

#endif
