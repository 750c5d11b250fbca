/* adamw.cu: AdamW over flat fp32 weights and moments, operation for operation as the CPU
 * backend's adamw_update (torch.optim.AdamW's single-tensor path: scalars formed in double and
 * rounded once, torch's lerp for the first moment), optionally writing a bf16 working copy of
 * the parameters in the same pass (one read and one write of each buffer per step). */
#include <cuda_bf16.h>

#include "cuda_common.cuh"

__global__ static void adamw_kernel(float *master, __nv_bfloat16 *param_bf16, const float *grad,
                                    float *m, float *v, size_t n, float decay, float lerp_weight,
                                    float beta2, float one_minus_beta2, float eps, float grad_scale,
                                    float neg_step_size, float bias_correction2_sqrt)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i] * grad_scale;
    float p = master[i] * decay;
    float mi = m[i];
    mi = lerp_weight < 0.5f ? mi + lerp_weight * (g - mi) : g - (g - mi) * (1.0f - lerp_weight);
    float vi = v[i] * beta2 + (one_minus_beta2 * g) * g;
    float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
    p = p + (neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param_bf16) param_bf16[i] = __float2bfloat16(p);
}

static void adamw_launch(float *master, void *param_bf16, const float *grad, float *m, float *v,
                         size_t n, float lr, float beta1, float beta2, float eps,
                         float weight_decay, float grad_scale, int t, cudaStream_t stream)
{
    if (n == 0) return;
    double step = t >= 1 ? (double)t : 1.0; /* t = 0 would divide by a zero bias correction */
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float lerp_weight = (float)(1.0 - (double)beta1);
    float one_minus_beta2 = (float)(1.0 - (double)beta2);
    double bias_correction1 = 1.0 - pow((double)beta1, step);
    double bias_correction2 = 1.0 - pow((double)beta2, step);
    float neg_step_size = (float)(-((double)lr / bias_correction1));
    float bias_correction2_sqrt = (float)sqrt(bias_correction2);
    const int threads = 256;
    adamw_kernel<<<ceil_div((long long)n, threads), threads, 0, stream>>>(
        master, (__nv_bfloat16 *)param_bf16, grad, m, v, n, decay, lerp_weight, beta2,
        one_minus_beta2, eps, grad_scale, neg_step_size, bias_correction2_sqrt);
    cudaCheck(cudaGetLastError());
}

/* fp32 master weights plus a bf16 working copy (param_bf16 may be NULL). */
extern "C" void cuda_adamw_update(float *master, void *param_bf16, const float *grad, float *m,
                                  float *v, size_t n, float lr, float beta1, float beta2, float eps,
                                  float weight_decay, float grad_scale, int t, cudaStream_t stream)
{
    adamw_launch(master, param_bf16, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale,
                 t, stream);
}

/* fp32 parameters only (the fp32 mode of the backend). */
extern "C" void cuda_adamw_fp32(float *param, const float *grad, float *m, float *v, size_t n,
                                float lr, float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t, cudaStream_t stream)
{
    adamw_launch(param, NULL, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t,
                 stream);
}
