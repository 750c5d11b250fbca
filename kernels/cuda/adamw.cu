/* adamw.cu: AdamW over flat fp32 weights and moments, operation for operation as the CPU
 * backend's adamw_update (torch.optim.AdamW's single-tensor path: scalars formed in double and
 * rounded once, torch's lerp for the first moment); and the same update with the EWC gradient
 * fused in (adamw_ewc_update, optionally decaying toward the latest anchor instead of 0), whose
 * penalty is reduced without atomics: per-block partial sums in double, added on the host in
 * block order, so a run repeats bit for bit. Both kernels share the step's scalars
 * (adamw_scalars) and the element update (adamw_element_decayed): the same bits; plain AdamW
 * moves four elements a thread where its pointers are 16-byte aligned (adamw_kernel4).
 * Each may also write the updated parameter rounded to bf16 into copy (NULL: not), in the same
 * pass: the mixed-precision working copy (matmul.cuh's WeightCopy), the bits round_bf16 would
 * write from the fp32 values afterwards, without reading them again. */
#include <cuda_bf16.h>
#include <stdint.h>

#include "cuda_common.cuh"

/* The step's scalars, formed on the host in double and rounded once. */
typedef struct AdamwScalars {
    float decay, lerp_weight, beta2, one_minus_beta2, eps, grad_scale, neg_step_size,
        bias_correction2_sqrt;
    float lr_decay; /* lr * weight_decay: the pull toward an anchor */
} AdamwScalars;

static AdamwScalars adamw_scalars(float lr, float beta1, float beta2, float eps, float weight_decay,
                                  float grad_scale, int t)
{
    double step = t >= 1 ? (double)t : 1.0; /* t = 0 would divide by a zero bias correction */
    double bias_correction1 = 1.0 - pow((double)beta1, step);
    double bias_correction2 = 1.0 - pow((double)beta2, step);
    AdamwScalars s;
    s.decay = (float)(1.0 - (double)lr * weight_decay);
    s.lerp_weight = (float)(1.0 - (double)beta1);
    s.beta2 = beta2;
    s.one_minus_beta2 = (float)(1.0 - (double)beta2);
    s.eps = eps;
    s.grad_scale = grad_scale;
    s.neg_step_size = (float)(-((double)lr / bias_correction1));
    s.bias_correction2_sqrt = (float)sqrt(bias_correction2);
    s.lr_decay = (float)((double)lr * weight_decay);
    return s;
}

/* One element: p the parameter after the decay, g its (scaled, penalised) gradient; m, v updated
 * in place; returns the new parameter. */
__device__ static inline float adamw_element_decayed(float p, float g, float &m, float &v,
                                                     const AdamwScalars &s)
{
    float mi = m;
    mi = s.lerp_weight < 0.5f ? mi + s.lerp_weight * (g - mi)
                              : g - (g - mi) * (1.0f - s.lerp_weight);
    float vi = v * s.beta2 + (s.one_minus_beta2 * g) * g;
    float denom = sqrtf(vi) / s.bias_correction2_sqrt + s.eps;
    m = mi;
    v = vi;
    return p + (s.neg_step_size * mi) / denom;
}

__global__ static void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                                    AdamwScalars s, __nv_bfloat16 *copy)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float mi = m[i], vi = v[i];
    const float p = adamw_element_decayed(param[i] * s.decay, grad[i] * s.grad_scale, mi, vi, s);
    param[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (copy) copy[i] = __float2bfloat16(p);
}

/* The same update four elements a thread through 16-byte accesses (every pointer 16-byte
 * aligned): the element's arithmetic is adamw_kernel's, so the same bits; the last n % 4 one
 * by one. AdamW is a pure stream of 28 bytes an element, so the wider accesses are its speed. */
__global__ static void adamw_kernel4(float *param, const float *grad, float *m, float *v, size_t n,
                                     AdamwScalars s, __nv_bfloat16 *copy)
{
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i + 4 <= n) {
        float4 p = *reinterpret_cast<const float4 *>(param + i);
        const float4 g = *reinterpret_cast<const float4 *>(grad + i);
        float4 mm = *reinterpret_cast<const float4 *>(m + i);
        float4 vv = *reinterpret_cast<const float4 *>(v + i);
        p.x = adamw_element_decayed(p.x * s.decay, g.x * s.grad_scale, mm.x, vv.x, s);
        p.y = adamw_element_decayed(p.y * s.decay, g.y * s.grad_scale, mm.y, vv.y, s);
        p.z = adamw_element_decayed(p.z * s.decay, g.z * s.grad_scale, mm.z, vv.z, s);
        p.w = adamw_element_decayed(p.w * s.decay, g.w * s.grad_scale, mm.w, vv.w, s);
        *reinterpret_cast<float4 *>(param + i) = p;
        *reinterpret_cast<float4 *>(m + i) = mm;
        *reinterpret_cast<float4 *>(v + i) = vv;
        if (copy) { /* 8-byte aligned when copy and param lie at the same offset of a buffer */
            const __nv_bfloat162 lo = __floats2bfloat162_rn(p.x, p.y);
            const __nv_bfloat162 hi = __floats2bfloat162_rn(p.z, p.w);
            if ((uintptr_t)(copy + i) % 8 == 0) {
                uint2 packed;
                packed.x = *reinterpret_cast<const uint32_t *>(&lo);
                packed.y = *reinterpret_cast<const uint32_t *>(&hi);
                *reinterpret_cast<uint2 *>(copy + i) = packed;
            } else {
                copy[i] = lo.x, copy[i + 1] = lo.y, copy[i + 2] = hi.x, copy[i + 3] = hi.y;
            }
        }
        return;
    }
    for (size_t j = i; j < n; j++) {
        float mi = m[j], vi = v[j];
        const float p =
            adamw_element_decayed(param[j] * s.decay, grad[j] * s.grad_scale, mi, vi, s);
        param[j] = p;
        m[j] = mi;
        v[j] = vi;
        if (copy) copy[j] = __float2bfloat16(p);
    }
}

extern "C" void cuda_adamw_fp32(float *param, const float *grad, float *m, float *v, size_t n,
                                float lr, float beta1, float beta2, float eps, float weight_decay,
                                float grad_scale, int t, __nv_bfloat16 *copy, cudaStream_t stream)
{
    if (n == 0) return;
    const AdamwScalars s = adamw_scalars(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
    const int threads = 256;
    if (((uintptr_t)param | (uintptr_t)grad | (uintptr_t)m | (uintptr_t)v) % 16 == 0)
        adamw_kernel4<<<ceil_div(ceil_div((long long)n, 4), threads), threads, 0, stream>>>(
            param, grad, m, v, n, s, copy);
    else
        adamw_kernel<<<ceil_div((long long)n, threads), threads, 0, stream>>>(param, grad, m, v, n,
                                                                              s, copy);
    cudaCheck(cudaGetLastError());
}

/* ---- AdamW + EWC ----------------------------------------------------------------------------- */

/* Blocks of the fused kernel: a fixed grid (grid-stride loop) keeps the partial sums few, and
 * their number depends on n only, so the penalty's order of summation does too. */
#define EWC_THREADS 256
#define EWC_BLOCKS 1024

__global__ static void adamw_ewc_kernel(float *param, const float *grad, float *m, float *v,
                                        size_t n, AdamwScalars s, const float *const *fisher,
                                        const float *const *anchor, int n_sets, float lambda,
                                        int decay_to_anchor, double *partial,
                                        __nv_bfloat16 *copy)
{
    __shared__ double warp_sums[EWC_THREADS / 32];
    double pen = 0.0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float theta = param[i];
        float g = grad[i] * s.grad_scale;
        for (int k = 0; k < n_sets; k++) { /* as the CPU backend: penalty before the update */
            float d = theta - anchor[k][i];
            float fd = fisher[k][i] * d;
            g += lambda * fd;
            pen += (double)fd * d;
        }
        /* theta - k (theta - a): exactly theta at the anchor, and when k = lr * wd is 0 */
        const float p = decay_to_anchor ? theta - s.lr_decay * (theta - anchor[n_sets - 1][i])
                                        : theta * s.decay;
        float mi = m[i], vi = v[i];
        const float updated = adamw_element_decayed(p, g, mi, vi, s);
        param[i] = updated;
        m[i] = mi;
        v[i] = vi;
        if (copy) copy[i] = __float2bfloat16(updated);
    }
    /* the block's sum in a fixed tree order: warps by shuffles, then the first warp */
    for (int o = 16; o > 0; o >>= 1)
        pen += __shfl_xor_sync(0xffffffffu, pen, o);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = pen;
    __syncthreads();
    if (warp == 0) {
        double s = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) partial[blockIdx.x] = s;
    }
}

extern "C" void cuda_adamw_ewc(float *param, const float *grad, float *m, float *v, size_t n,
                               float lr, float beta1, float beta2, float eps, float weight_decay,
                               float grad_scale, int t, const float *const *fisher,
                               const float *const *anchor, int n_sets, float lambda,
                               int decay_to_anchor, double *penalty, __nv_bfloat16 *copy,
                               EwcScratch *scratch, cudaStream_t stream)
{
    if (n_sets <= 0) { /* plain AdamW, the same kernel as adamw_update: the same bits */
        cuda_adamw_fp32(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, grad_scale, t,
                        copy, stream);
        return;
    }
    if (n == 0) return;
    const AdamwScalars s = adamw_scalars(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
    if (n_sets > scratch->tables_cap) {
        cudaCheck(cudaFree(scratch->tables)); /* synchronises: no kernel still reads the old one */
        cudaCheck(cudaMalloc(&scratch->tables, 2 * (size_t)n_sets * sizeof(float *)));
        scratch->tables_cap = n_sets;
    }
    if (!scratch->partial) cudaCheck(cudaMalloc(&scratch->partial, EWC_BLOCKS * sizeof(double)));
    /* the tables travel by copy on the stream (pageable source: staged before the call
     * returns, so the caller's arrays may go away) */
    cudaCheck(cudaMemcpyAsync(scratch->tables, fisher, (size_t)n_sets * sizeof(float *),
                              cudaMemcpyHostToDevice, stream));
    cudaCheck(cudaMemcpyAsync(scratch->tables + n_sets, anchor, (size_t)n_sets * sizeof(float *),
                              cudaMemcpyHostToDevice, stream));
    const size_t wanted = (n + EWC_THREADS - 1) / EWC_THREADS;
    const int blocks = wanted < EWC_BLOCKS ? (int)wanted : EWC_BLOCKS;
    adamw_ewc_kernel<<<blocks, EWC_THREADS, 0, stream>>>(param, grad, m, v, n, s, scratch->tables,
                                                         scratch->tables + n_sets, n_sets, lambda,
                                                         decay_to_anchor, scratch->partial, copy);
    cudaCheck(cudaGetLastError());
    if (!penalty) return;
    double host[EWC_BLOCKS];
    cudaCheck(cudaMemcpyAsync(host, scratch->partial, (size_t)blocks * sizeof(double),
                              cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
    double pen = 0.0;
    for (int b = 0; b < blocks; b++)
        pen += host[b];
    *penalty += 0.5 * lambda * pen;
}
