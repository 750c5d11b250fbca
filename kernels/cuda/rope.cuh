/* rope.cuh: rope_forward / rope_backward (rotate-half layout).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * rope, rotate-half layout; sign -1 applies the inverse rotation (backward). */

/* One thread rotates W consecutive pairs (i, i + D/2) of one head: W = 8 moves them with act_ld8
 * when D/2 is a multiple of 8 and everything is aligned, else W = 1. */
template <typename ActT, int W>
__global__ static void rope_kernel(void *x_, const float *pos_cos, const float *pos_sin, int T,
                                   int H, int D, long long total, float sign)
{
    ActT *x = (ActT *)x_;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int half = D / 2, groups = half / W;
    const int i = (int)(idx % groups) * W;
    long long rh = idx / groups; /* row * H + h */
    int h = (int)(rh % H);
    long long row = rh / H;
    int t = (int)(row % T);
    ActT *head = x + (size_t)row * H * D + (size_t)h * D;
    const float *cs = pos_cos + (size_t)t * half + i, *sn = pos_sin + (size_t)t * half + i;
    if (W == 8) {
        float x1[8], x2[8], c[8], s[8], y1[8], y2[8];
        act_ld8(head, i, x1);
        act_ld8(head, i + half, x2);
        act_ld8(cs, 0, c);
        act_ld8(sn, 0, s);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float sk = sign * s[k];
            y1[k] = x1[k] * c[k] - x2[k] * sk;
            y2[k] = x2[k] * c[k] + x1[k] * sk;
        }
        act_st8(head, i, y1);
        act_st8(head, i + half, y2);
    } else {
        float c = cs[0], s = sign * sn[0];
        float x1 = act_ld(head, i), x2 = act_ld(head, i + half);
        act_st(head, i, x1 * c - x2 * s);
        act_st(head, i + half, x2 * c + x1 * s);
    }
}

static void rope_apply(CudaContext *cx, Act *x, const float *pos_cos, const float *pos_sin, int B,
                       int T, int H, int D, float sign)
{
    const int half = D / 2, w = half % 8 == 0 && aligned8(x, pos_cos, pos_sin) ? 8 : 1;
    long long total = (long long)B * T * H * (half / w);
    if (total <= 0) return;
    const int blocks = ceil_div(total, 256);
    if (cx->bf16 && w == 8)
        rope_kernel<__nv_bfloat16, 8>
            <<<blocks, 256, 0, cx->stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else if (cx->bf16)
        rope_kernel<__nv_bfloat16, 1>
            <<<blocks, 256, 0, cx->stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else if (w == 8)
        rope_kernel<float, 8>
            <<<blocks, 256, 0, cx->stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    else
        rope_kernel<float, 1>
            <<<blocks, 256, 0, cx->stream>>>(x, pos_cos, pos_sin, T, H, D, total, sign);
    launchCheck();
}

static void rope_forward(const Backend *be, Act *x, const float *pos_cos, const float *pos_sin,
                         int B, int T, int H, int D)
{
    CudaContext *cx = cuda_context(be);
    rope_apply(cx, x, pos_cos, pos_sin, B, T, H, D, 1.0f);
}

static void rope_backward(const Backend *be, Act *dx, const float *pos_cos, const float *pos_sin,
                          int B, int T, int H, int D)
{
    CudaContext *cx = cuda_context(be);
    rope_apply(cx, dx, pos_cos, pos_sin, B, T, H, D, -1.0f);
}
