/* rmsnorm.cuh: rmsnorm_forward / rmsnorm_backward (one block per row).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses the statics before it (stream, lt_bf16,
 * ...), so it is not a header to include anywhere else. */

/* ---------------------------------------------------------------------------------------------
 * rmsnorm: one block per row. */

template <typename ActT>
__global__ static void rmsnorm_forward_kernel(void *out, float *rstd, const float *inp,
                                              const float *weight, int C, float eps)
{
    __shared__ float shared[32];
    const float *x = inp + (size_t)blockIdx.x * C;
    ActT *y = (ActT *)out + (size_t)blockIdx.x * C;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        ss += x[j] * x[j];
    ss = block_sum(ss, shared);
    float variance = C > 0 ? ss / C : 0.0f;
    float r = 1.0f / sqrtf(variance + eps);
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        act_st(y, j, weight[j] * (x[j] * r));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

/* dinp += the row's gradient; dinp_act (may be NULL) gets the updated row as an Act. */
template <typename ActT>
__global__ static void rmsnorm_backward_kernel(float *dinp, void *dinp_act, const void *dout,
                                               const float *inp, const float *weight,
                                               const float *rstd, int C)
{
    __shared__ float shared[32];
    size_t row = (size_t)blockIdx.x * C;
    const float *x = inp + row;
    const ActT *dy = (const ActT *)dout + row;
    float *dx = dinp + row;
    ActT *dx_act = dinp_act ? (ActT *)dinp_act + row : NULL;
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        dot += weight[j] * act_ld(dy, j) * x[j];
    dot = block_sum(dot, shared);
    float coef = dot * r * r * r / C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        const float g = dx[j] + (r * weight[j] * act_ld(dy, j) - coef * x[j]);
        dx[j] = g;
        if (dx_act) act_st(dx_act, j, g);
    }
}

static void rmsnorm_forward(Act *out, float *rstd, const float *inp, const float *weight, int M,
                            int C, float eps)
{
    if (M <= 0) return;
    LAUNCH_ACT(rmsnorm_forward_kernel, M, 256, 0, out, rstd, inp, weight, C, eps);
}

static void rmsnorm_backward(float *dinp, Act *dinp_act, float *dweight, const Act *dout,
                             const float *inp, const float *weight, const float *rstd, int M,
                             int C)
{
    if (M <= 0) return;
    LAUNCH_ACT(rmsnorm_backward_kernel, M, 256, 0, dinp, dinp_act, dout, inp, weight, rstd, C);
    column_sums_add(dweight, dout, inp, rstd, M, C);
}
