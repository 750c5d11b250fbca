/* bench_ops.c: time of each CUDA backend op at the deepseek-coder-1.3b training shape
 * (B x T = 8 x 2048 by default), and the share of a training step each takes, counted from how
 * often model.c calls it. Tells where a step's time goes; not a correctness check (tests/gpu/).
 * Usage: see below (attention: the attention rows alone). Inputs are
 * random (never zeros); times are CUDA-event medians of 5 runs after a warm-up. Matmuls are
 * timed in both modes (fp32, bf16); the other ops in bf16 mode (bf16 activations, what
 * device=cuda trains with), attention in both tensor-core
 * implementations (flash: the default, on Hopper the wgmma kernels; mma: the mma.sync kernels,
 * the fallback and the previous default), at this shape, deepseek-llm-7b's (1 x 4096, 32 heads)
 * and a long sequence (1 x 16384, 16 heads), with its TFLOP/s counted as causal: forward
 * 2 * 2 * B*H*T*T*D / 2, backward 2.5 times that. Then DeepSeek V2/V3's latent attention
 * (attention_forward_dv / attention_backward_dv: q/k heads of 192, v heads of 128, 16 heads,
 * 1 x 4096) on the tensor cores (flash, mma) and on the fp32 kernels (simple), forward counted as
 * 2 * B*H*T*T*(192 + 128) / 2, backward 2.5 times that; informational, not in the sum.
 * Usage: gpu_bench_ops [B T [attention | mla]] (mla: the latent-attention rows alone). */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"
#include "trainer/common.h"

static const Backend *gpu;
static cudaEvent_t ev0, ev1;

#define CHUNK ((size_t)1 << 22)
static float *host_chunk;

/* A device buffer of n floats of random values in [-scale, scale] (one random chunk repeated). */
static float *dev_random(size_t n, float scale)
{
    float *d = gpu->mem_alloc(gpu, n * sizeof(float));
    if (!d) {
        fprintf(stderr, "gpu_bench_ops: %s\n", ds_last_error());
        exit(1);
    }
    for (size_t at = 0; at < n; at += CHUNK) {
        size_t len = n - at < CHUNK ? n - at : CHUNK;
        for (size_t i = 0; i < len; i++)
            host_chunk[i] = host_chunk[i] * 0.999f; /* vary a bit */
        gpu->mem_to_device(gpu, d + at, host_chunk, len * sizeof(float));
    }
    (void)scale;
    return d;
}

typedef struct Row {
    const char *op;
    char shape[64];
    double ms;
    int per_step;
    double flops; /* of one call, 0 when not counted */
} Row;
static Row rows[64];
static int nrows;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TIME(op_name, count, shape_fmt, ...)                                                       \
    for (int _once = 1; _once; _once = 0) {                                                        \
        double _t[5];                                                                              \
        for (int _r = -1; _r < 5; _r++) {                                                          \
            cudaEventRecord(ev0, 0);                                                               \
            BODY;                                                                                  \
            cudaEventRecord(ev1, 0);                                                               \
            cudaEventSynchronize(ev1);                                                             \
            float _ms = 0;                                                                         \
            cudaEventElapsedTime(&_ms, ev0, ev1);                                                  \
            if (_r >= 0) _t[_r] = _ms;                                                             \
        }                                                                                          \
        qsort(_t, 5, sizeof(double), cmp_double);                                                  \
        Row *_row = &rows[nrows++];                                                                \
        _row->op = op_name;                                                                        \
        snprintf(_row->shape, sizeof(_row->shape), shape_fmt, __VA_ARGS__);                        \
        _row->ms = _t[2];                                                                          \
        _row->per_step = count;                                                                    \
    }

/* The CUDA backend as a config makes it (backend_create): precision and cuda.attention. */
static void use(const char *precision, const char *attention)
{
    const BackendOptions o = {.device = "cuda", .precision = precision, .attention = attention};
    backend_free(gpu); /* the one before: its buffers are the device's and stay */
    gpu = NULL;
    if (backend_create(&o, &gpu) != DS_OK) {
        fprintf(stderr, "gpu_bench_ops: %s\n", ds_last_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    const int B = argc > 2 ? atoi(argv[1]) : 8, T = argc > 2 ? atoi(argv[2]) : 2048;
    const int C = 2048, H = 16, KVH = 16, D = 128, I = 5504, V = 32256, L = 24;
    const int N = B * T;
    /* "attention" as the third argument: the attention rows alone (bf16 mode) */
    const int mla_only = argc > 3 && strcmp(argv[3], "mla") == 0;
    const int attention_only = mla_only || (argc > 3 && strcmp(argv[3], "attention") == 0);
    const size_t NC = (size_t)N * C, NI = (size_t)N * I;
    use("fp32", "flash");
    host_chunk = malloc(CHUNK * sizeof(float));
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < CHUNK; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        host_chunk[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    cudaEventCreate(&ev0);
    cudaEventCreate(&ev1);

    float *x = dev_random(NC, 1), *y = dev_random(NC, 1), *z = dev_random(NC, 1);
    float *wcc = dev_random((size_t)C * C, 1), *dwcc = dev_random((size_t)C * C, 1);
    float *wci = dev_random((size_t)C * I, 1), *dwci = dev_random((size_t)C * I, 1);
    float *g = dev_random(NI, 1), *u = dev_random(NI, 1), *a = dev_random(NI, 1);
    float *dg = dev_random(NI, 1), *du = dev_random(NI, 1);
    float *normw = dev_random(C, 1), *dnormw = dev_random(C, 1), *rstd = dev_random(N, 1);
    float *lse = dev_random((size_t)B * H * T, 1);
    float *q = dev_random(NC, 1), *k = dev_random(NC, 1), *v = dev_random(NC, 1);
    float *att = dev_random(NC, 1), *dq = dev_random(NC, 1), *dk = dev_random(NC, 1),
          *dv = dev_random(NC, 1);
    float *cosb = dev_random((size_t)T * D / 2, 1), *sinb = dev_random((size_t)T * D / 2, 1);
    int32_t *tok_host = malloc((size_t)N * 4);
    float *w_host = malloc((size_t)N * 4);
    for (int i = 0; i < N; i++)
        tok_host[i] = (int32_t)((i * 2654435761u) % V), w_host[i] = 1.0f / N;
    int32_t *tok = gpu->mem_alloc(gpu, (size_t)N * 4);
    gpu->mem_to_device(gpu, tok, tok_host, (size_t)N * 4);
    float *lw = gpu->mem_alloc(gpu, (size_t)N * 4), *losses = gpu->mem_alloc(gpu, (size_t)N * 4);
    gpu->mem_to_device(gpu, lw, w_host, (size_t)N * 4);
    float *embed = dev_random((size_t)V * C, 1), *dembed = dev_random((size_t)V * C, 1);
    float *logits = dev_random((size_t)N * V, 1);
    float *mom1 = dev_random((size_t)V * C, 1), *mom2 = dev_random((size_t)V * C, 1);

    const char *modes[] = {"fp32", "bf16"};
    for (int mi = attention_only ? 1 : 0; mi < 2; mi++) {
        use(modes[mi], "flash");
        const int c4 = mi == 1 ? 1 : 0; /* per-step counts only for the default mode's rows */
        if (mi == 1) {                  /* as a model does: the weights' bf16 copies, made once */
            gpu->weights_attach(gpu, wcc, (size_t)C * C), gpu->weights_refresh(gpu, wcc);
            gpu->weights_attach(gpu, wci, (size_t)C * I), gpu->weights_refresh(gpu, wci);
            gpu->weights_attach(gpu, embed, (size_t)V * C), gpu->weights_refresh(gpu, embed);
        }
        if (attention_only) break;
#define BODY gpu->matmul_forward(gpu, y, x, wcc, NULL, N, C, C)
        TIME(mi ? "matmul_fwd [bf16]" : "matmul_fwd [fp32]", c4 * 4 * L, "%dx%dx%d (q,k,v,o)", N, C,
             C);
        rows[nrows - 1].flops = 2.0 * N * C * C;
#undef BODY
#define BODY gpu->matmul_backward(gpu, z, dwcc, NULL, y, x, wcc, N, C, C, 0)
        TIME(mi ? "matmul_bwd [bf16]" : "matmul_bwd [fp32]", c4 * 4 * L, "%dx%dx%d (q,k,v,o)", N, C,
             C);
        rows[nrows - 1].flops = 4.0 * N * C * C;
#undef BODY
#define BODY gpu->matmul_forward(gpu, g, x, wci, NULL, N, C, I)
        TIME(mi ? "matmul_fwd [bf16]" : "matmul_fwd [fp32]", c4 * 2 * L, "%dx%dx%d (gate,up)", N, C,
             I);
        rows[nrows - 1].flops = 2.0 * N * C * I;
#undef BODY
#define BODY gpu->matmul_backward(gpu, z, dwci, NULL, g, x, wci, N, C, I, 0)
        TIME(mi ? "matmul_bwd [bf16]" : "matmul_bwd [fp32]", c4 * 2 * L, "%dx%dx%d (gate,up)", N, C,
             I);
        rows[nrows - 1].flops = 4.0 * N * C * I;
#undef BODY
#define BODY gpu->matmul_forward(gpu, y, a, wci, NULL, N, I, C)
        TIME(mi ? "matmul_fwd [bf16]" : "matmul_fwd [fp32]", c4 * L, "%dx%dx%d (down)", N, I, C);
        rows[nrows - 1].flops = 2.0 * N * I * C;
#undef BODY
#define BODY gpu->matmul_backward(gpu, a, dwci, NULL, y, g, wci, N, I, C, 0)
        TIME(mi ? "matmul_bwd [bf16]" : "matmul_bwd [fp32]", c4 * L, "%dx%dx%d (down)", N, I, C);
        rows[nrows - 1].flops = 2.0 * 2.0 * N * I * C;
#undef BODY
#define BODY gpu->matmul_forward(gpu, logits, x, embed, NULL, N, C, V)
        TIME(mi ? "matmul_fwd [bf16]" : "matmul_fwd [fp32]", c4, "%dx%dx%d (lm_head)", N, C, V);
        rows[nrows - 1].flops = 2.0 * N * C * V;
#undef BODY
#define BODY gpu->matmul_backward(gpu, z, dembed, NULL, logits, x, embed, N, C, V, 0)
        TIME(mi ? "matmul_bwd [bf16]" : "matmul_bwd [fp32]", c4, "%dx%dx%d (lm_head)", N, C, V);
        rows[nrows - 1].flops = 2.0 * 2.0 * N * C * V;
#undef BODY
    }
    /* the other ops in bf16 mode, as device=cuda trains: bf16 activations (the buffers' random
     * bits read as bf16: the values do not change the time) */
    const double att_flops = 2.0 * 2.0 * B * H * (double)T * T * D / 2.0;
    const char *att_kinds[] = {"flash", "mma", "simple"};
    for (int ai = 0; ai < 2 && !mla_only; ai++) {
        use("bf16", att_kinds[ai]);
        const int ca = ai == 0 ? L : 0; /* per-step counts for the default (flash) rows */
#define BODY gpu->attention_forward(gpu, att, lse, q, k, v, B, T, H, KVH, D)
        TIME(ai ? "attention_fwd [mma]" : "attention_fwd [flash]", ca, "B%d T%d H%d D%d", B, T, H,
             D);
        rows[nrows - 1].flops = att_flops;
#undef BODY
#define BODY gpu->attention_backward(gpu, dq, dk, dv, y, att, lse, q, k, v, B, T, H, KVH, D)
        TIME(ai ? "attention_bwd [mma]" : "attention_bwd [flash]", ca, "B%d T%d H%d D%d", B, T, H,
             D);
        rows[nrows - 1].flops = 2.5 * att_flops;
#undef BODY
    }
    /* deepseek-llm-7b's attention shape (1 x 4096, 32 heads) and a long sequence (1 x 16384, 16
     * heads: as many elements as the buffers above), informational: not in the sum */
    const int extra_t[2] = {4096, 16384}, extra_h[2] = {32, 16};
    for (int xi = 0; xi < 2 && !mla_only; xi++)
        for (int ai = 0; ai < 2; ai++) {
            use("bf16", att_kinds[ai]);
            const int XT = extra_t[xi], XH = extra_h[xi];
            if ((size_t)XT * XH * D > NC) continue;
            const double fx = 2.0 * 2.0 * XH * (double)XT * XT * D / 2.0;
#define BODY gpu->attention_forward(gpu, att, lse, q, k, v, 1, XT, XH, XH, D)
            TIME(ai ? "attention_fwd [mma]" : "attention_fwd [flash]", 0, "B1 T%d H%d D%d", XT, XH,
                 D);
            rows[nrows - 1].flops = fx;
#undef BODY
#define BODY gpu->attention_backward(gpu, dq, dk, dv, y, att, lse, q, k, v, 1, XT, XH, XH, D)
            TIME(ai ? "attention_bwd [mma]" : "attention_bwd [flash]", 0, "B1 T%d H%d D%d", XT, XH,
                 D);
            rows[nrows - 1].flops = 2.5 * fx;
#undef BODY
        }
    /* DeepSeek V2/V3's latent attention: q/k heads of 192, v heads of 128 (the buffers hold
     * 1 x 4096 x 16 x 192 at the default shape; skipped where they do not) */
    const int MT = 4096, MH = 16, MDQK = 192, MDV = 128;
    const float mla_scale = 1.0f / sqrtf((float)MDQK);
    const double mla_flops = 2.0 * MH * (double)MT * MT * (MDQK + MDV) / 2.0;
    static const char *mla_fwd_names[] = {"mla_fwd [flash]", "mla_fwd [mma]", "mla_fwd [simple]"};
    static const char *mla_bwd_names[] = {"mla_bwd [flash]", "mla_bwd [mma]", "mla_bwd [simple]"};
    for (int ai = 0; ai < 3 && (size_t)MT * MH * MDQK <= NC && (size_t)MH * MT <= (size_t)B * H * T;
         ai++) {
        use("bf16", att_kinds[ai]);
#define BODY gpu->attention_forward_dv(gpu, att, lse, q, k, v, 1, MT, MH, MDQK, MDV, mla_scale)
        TIME(mla_fwd_names[ai], 0, "B1 T%d H%d Dqk%d Dv%d", MT, MH, MDQK, MDV);
        rows[nrows - 1].flops = mla_flops;
#undef BODY
#define BODY                                                                                       \
    gpu->attention_backward_dv(gpu, dq, dk, dv, y, att, lse, q, k, v, 1, MT, MH, MDQK, MDV,        \
                               mla_scale)
        TIME(mla_bwd_names[ai], 0, "B1 T%d H%d Dqk%d Dv%d", MT, MH, MDQK, MDV);
        rows[nrows - 1].flops = 2.5 * mla_flops;
#undef BODY
    }
    use("bf16", "flash");
    if (attention_only) goto table;
    /* as a model does (a new backend has no copies): AdamW below writes the copy as it updates */
    gpu->weights_attach(gpu, embed, (size_t)V * C), gpu->weights_refresh(gpu, embed);
    float *dx_act = dev_random(NC, 1);
#define BODY gpu->rmsnorm_forward(gpu, y, rstd, x, normw, N, C, 1e-6f)
    TIME("rmsnorm_fwd", 2 * L + 1, "%dx%d", N, C);
#undef BODY
#define BODY gpu->rmsnorm_backward(gpu, z, dx_act, dnormw, y, x, normw, rstd, N, C)
    TIME("rmsnorm_bwd", 2 * L + 1, "%dx%d", N, C);
#undef BODY
#define BODY gpu->rope_forward(gpu, q, cosb, sinb, B, T, H, D)
    TIME("rope (fwd or bwd)", 4 * L, "B%d T%d H%d D%d", B, T, H, D);
#undef BODY
#define BODY gpu->swiglu_forward(gpu, a, g, u, NI)
    TIME("swiglu_fwd", L, "%zu", NI);
#undef BODY
#define BODY gpu->swiglu_backward(gpu, dg, du, a, g, u, NI)
    TIME("swiglu_bwd", L, "%zu", NI);
#undef BODY
#define BODY gpu->add(gpu, z, x, y, NC)
    TIME("add", 5 * L, "%zu", NC);
#undef BODY
#define BODY gpu->embedding_forward(gpu, x, tok, embed, N, C)
    TIME("embedding_fwd", 1, "N%d C%d", N, C);
#undef BODY
#define BODY gpu->embedding_backward(gpu, dembed, x, tok, N, C)
    TIME("embedding_bwd", 1, "N%d C%d", N, C);
#undef BODY
#define BODY gpu->cross_entropy(gpu, losses, logits, tok, lw, N, V, 1)
    TIME("cross_entropy (+grad)", 1, "N%d V%d", N, V);
#undef BODY
#define BODY gpu->sum_squares(gpu, embed, (size_t)V *C)
    TIME("sum_squares (embed)", 1, "%zu", (size_t)V * C);
#undef BODY
    /* the gradient norm: 9 tensors a layer and 3 more, SUM_SQUARES_BATCH ranges a call (here
       all C x C: the layer's tensors are between C x C / 2 and 3 x C x C) */
    const float *ranges[SUM_SQUARES_BATCH];
    size_t range_n[SUM_SQUARES_BATCH];
    double range_sums[SUM_SQUARES_BATCH];
    for (int i = 0; i < SUM_SQUARES_BATCH; i++)
        ranges[i] = wcc, range_n[i] = (size_t)C * C;
#define BODY gpu->sum_squares_batch(gpu, range_sums, ranges, range_n, SUM_SQUARES_BATCH)
    TIME("sum_squares_batch (C x C)", (9 * L + 3 + SUM_SQUARES_BATCH - 1) / SUM_SQUARES_BATCH,
         "%d x %zu", SUM_SQUARES_BATCH, (size_t)C * C);
#undef BODY
#define BODY                                                                                       \
    gpu->adamw_update(gpu, embed, dembed, mom1, mom2, (size_t)V *C, 1e-4f, 0.9f, 0.95f, 1e-8f,     \
                      0.1f, 1.0f, 3)
    /* the optimizer walks all 1.35B parameters; timed on the 66M of the embedding and scaled */
    TIME("adamw (embed; x20.3 = all)", 20, "%zu", (size_t)V * C);
#undef BODY

table:
    printf("| %-26s | %-32s | %9s | %8s | %10s | %8s |\n", "op (coder-1.3b shape)", "shape",
           "ms/call", "per step", "ms/step", "TFLOP/s");
    printf(
        "|----------------------------|----------------------------------|-----------|----------|"
        "------------|----------|\n");
    double total = 0;
    for (int i = 0; i < nrows; i++) {
        double per = rows[i].ms * rows[i].per_step;
        total += per;
        char tflops[16] = "";
        if (rows[i].flops > 0 && rows[i].ms > 0)
            snprintf(tflops, sizeof(tflops), "%.1f", rows[i].flops / (rows[i].ms * 1e-3) / 1e12);
        printf("| %-26s | %-32s | %9.3f | %8d | %10.1f | %8s |\n", rows[i].op, rows[i].shape,
               rows[i].ms, rows[i].per_step, per, tflops);
    }
    printf("| %-26s | %-32s | %9s | %8s | %10.1f | %8s |\n", "sum (fp32 matmuls)", "", "", "",
           total, "");
    double bf16_gain = 0;
    for (int i = 0; i < nrows; i++)
        if (strstr(rows[i].op, "[fp32]"))
            for (int j = 0; j < nrows; j++)
                if (strstr(rows[j].op, "[bf16]") && strcmp(rows[i].shape, rows[j].shape) == 0 &&
                    strncmp(rows[i].op, rows[j].op, 10) == 0)
                    bf16_gain += (rows[i].ms - rows[j].ms) * rows[i].per_step;
    printf("| %-26s | %-32s | %9s | %8s | %10.1f | %8s |\n", "sum (bf16 matmuls)", "", "", "",
           total - bf16_gain, "");
    backend_free(gpu);
    return 0;
}
