/* elementwise.cuh: swiglu_forward / swiglu_backward, add, scale (eight elements a thread).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * elementwise ops */

/* Elementwise kernels: each thread takes elements i .. i+7, with act_ld8 / act_st8 when vec (all
 * pointers aligned) and the eight are in range, else one by one; the same arithmetic either way. */

__device__ static inline float silu_times(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

__device__ static inline void swiglu_grads(float g, float u, float dy, float *dg, float *du)
{
    const float s = 1.0f / (1.0f + expf(-g));
    *dg = dy * u * (s * (1.0f + g * (1.0f - s)));
    *du = dy * (g * s);
}

template <typename ActT>
__global__ static void swiglu_forward_kernel(void *out_, const void *gate_, const void *up_,
                                             size_t n, int vec)
{
    ActT *out = (ActT *)out_;
    const ActT *gate = (const ActT *)gate_, *up = (const ActT *)up_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float g[8], u[8], o[8];
        act_ld8(gate, i, g);
        act_ld8(up, i, u);
#pragma unroll
        for (int k = 0; k < 8; k++)
            o[k] = silu_times(g[k], u[k]);
        act_st8(out, i, o);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++)
        act_st(out, j, silu_times(act_ld(gate, j), act_ld(up, j)));
}

template <typename ActT>
__global__ static void swiglu_backward_kernel(void *dgate_, void *dup_, const void *dout_,
                                              const void *gate_, const void *up_, size_t n,
                                              int vec)
{
    ActT *dgate = (ActT *)dgate_, *dup = (ActT *)dup_;
    const ActT *dout = (const ActT *)dout_, *gate = (const ActT *)gate_, *up = (const ActT *)up_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float g[8], u[8], dy[8], dg[8], du[8];
        act_ld8(gate, i, g);
        act_ld8(up, i, u);
        act_ld8(dout, i, dy);
#pragma unroll
        for (int k = 0; k < 8; k++)
            swiglu_grads(g[k], u[k], dy[k], &dg[k], &du[k]);
        act_st8(dgate, i, dg);
        act_st8(dup, i, du);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++) {
        float dg, du;
        swiglu_grads(act_ld(gate, j), act_ld(up, j), act_ld(dout, j), &dg, &du);
        act_st(dgate, j, dg);
        act_st(dup, j, du);
    }
}

template <typename ActT>
__global__ static void add_kernel(float *out, const float *a, const void *b_, size_t n, int vec)
{
    const ActT *b = (const ActT *)b_;
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    if (vec && i + 8 <= n) {
        float x[8], y[8];
        act_ld8(a, i, x);
        act_ld8(b, i, y);
#pragma unroll
        for (int k = 0; k < 8; k++)
            x[k] += y[k];
        act_st8(out, i, x);
        return;
    }
    for (size_t j = i; j < n && j < i + 8; j++)
        out[j] = a[j] + act_ld(b, j);
}

__global__ static void scale_kernel(float *x, float s, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

/* blocks of 256 threads for n elements, eight a thread */
static int blocks_of8(size_t n)
{
    return ceil_div(ceil_div((long long)n, 8), 256);
}

static void swiglu_forward(const Backend *be, Act *out, const Act *gate, const Act *up, size_t n)
{
    CudaContext *cx = cuda_context(be);
    if (n)
        LAUNCH_ACT(swiglu_forward_kernel, blocks_of8(n), 256, 0, out, gate, up, n,
                   aligned8(out, gate, up));
}

static void swiglu_backward(const Backend *be, Act *dgate, Act *dup, const Act *dout,
                            const Act *gate, const Act *up, size_t n)
{
    CudaContext *cx = cuda_context(be);
    if (n)
        LAUNCH_ACT(swiglu_backward_kernel, blocks_of8(n), 256, 0, dgate, dup, dout, gate, up, n,
                   aligned8(dgate, dup, dout, gate, up));
}

static void add(const Backend *be, float *out, const float *a, const Act *b, size_t n)
{
    CudaContext *cx = cuda_context(be);
    if (n) LAUNCH_ACT(add_kernel, blocks_of8(n), 256, 0, out, a, b, n, aligned8(out, a, b));
}

static void scale(const Backend *be, float *x, float s, size_t n)
{
    CudaContext *cx = cuda_context(be);
    if (!n) return;
    weight_copies_written(cx, x, n * sizeof(float)); /* in case x is an attached buffer */
    scale_kernel<<<ceil_div((long long)n, 256), 256, 0, cx->stream>>>(x, s, n);
    launchCheck();
}
