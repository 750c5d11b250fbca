/* adamw.cu: AdamW over flat fp32 master weights and moments, writing the bf16 working copy of
 * the parameters in the same pass (one read and one write of each buffer per step).
 * Semantics are torch.optim.AdamW's, as in the CPU backend's adamw_update. */
#include <cuda_bf16.h>

#include "cuda_common.cuh"

__global__ static void adamw_kernel(float *master, __nv_bfloat16 *param_bf16, const float *grad,
                                    float *m, float *v, size_t n, float lr, float beta1,
                                    float beta2, float eps, float weight_decay, float grad_scale,
                                    float step_size, float inv_sqrt_bc2)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * grad_scale;
    float p = master[i] * (1.0f - lr * weight_decay);
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    p -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param_bf16) param_bf16[i] = __float2bfloat16(p);
}

extern "C" void cuda_adamw_update(float *master, void *param_bf16, const float *grad, float *m,
                                  float *v, size_t n, float lr, float beta1, float beta2,
                                  float eps, float weight_decay, float grad_scale, int t,
                                  cudaStream_t stream)
{
    if (n == 0) return;
    double bc1 = 1.0 - pow((double)beta1, t), bc2 = 1.0 - pow((double)beta2, t);
    const int threads = 256;
    adamw_kernel<<<ceil_div((long long)n, threads), threads, 0, stream>>>(
        master, (__nv_bfloat16 *)param_bf16, grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
        grad_scale, (float)(lr / bc1), (float)(1.0 / sqrt(bc2)));
    cudaCheck(cudaGetLastError());
}
