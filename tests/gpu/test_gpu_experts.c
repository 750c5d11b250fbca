/* test_gpu_experts.c: the CUDA backend's routed experts (moe_experts_forward / backward of
 * kernels/cuda/experts.cuh) against the CPU backend, run on a GPU node by bench/moe/run.sh
 * (not by ctest: CI has no GPU). Shapes with experts of no rows, row counts off every tile size,
 * E 8 / 64 / 256, I 1408 and small; fp32 mode within 1e-4 and bf16 mode within 1e-2 (relative
 * norm error against the CPU's fp32 result on the unrounded inputs): the forward outputs, dxs,
 * and each weight gradient accumulated onto zeros and then once more onto itself; outputs
 * poisoned with NaN first; a second run gives the same bits. Each of the three ways the experts
 * run (the config key cuda.experts): streams (and its bits equal the loop's), grouped (that the
 * grouped GEMM really ran, none refused), loop; weights without a bf16 copy (the loop, same
 * results).
 * Last, V2-Lite's layer shape timed each way (info rows). Exit 1 if a check failed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/ops.h"
#include "trainer/common.h"

static const Backend *cpu, *gpu;
static int failures, checks;
static double tol = 1e-4;
static const char *mode = "fp32";
static const char *kind = "streams"; /* cuda.experts */

static void report(const char *name, const char *metric, double value, double limit, int lower_ok,
                   int nan_count)
{
    int pass = nan_count == 0 && isfinite(value) && (lower_ok ? value <= limit : value >= limit);
    checks++;
    if (!pass) failures++;
    char full[160];
    snprintf(full, sizeof(full), "[%s %s] %s", mode, kind, name);
    printf("| %-70s | %-10s | %10.3g | %s %-8.4g | %5d | %s |\n", full, metric, value,
           lower_ok ? "<=" : ">=", limit, nan_count, pass ? "PASS" : "FAIL");
    fflush(stdout);
}

static void note(const char *name, const char *metric, double value, const char *why)
{
    char full[160];
    snprintf(full, sizeof(full), "[%s %s] %s", mode, kind, name);
    printf("| %-70s | %-10s | %10.3g | %-11s | %5s | info |\n", full, metric, value, why, "");
    fflush(stdout);
}

static void must(int status)
{
    if (status != DS_OK) {
        fprintf(stderr, "test_gpu_experts: %s\n", ds_last_error());
        exit(1);
    }
}

/* The weights the test has attached (NULL: none), which use() attaches again in the backend it
 * makes. */
static float *attached_w;
static size_t attached_n;

/* A CUDA backend made as a config would make it (backend_create): precision and cuda.experts, in
 * place of the one before, which is freed; the device buffers stay, and the weights attached
 * there are attached and refreshed in the new one (so a change of cuda.experts keeps them). */
static void use(const char *precision, const char *experts)
{
    const BackendOptions o = {.device = "cuda", .precision = precision, .experts = experts};
    if (gpu && attached_w) gpu->weights_detach(gpu, attached_w);
    backend_free(gpu);
    gpu = NULL;
    must(backend_create(&o, &gpu));
    if (attached_w) {
        must(gpu->weights_attach(gpu, attached_w, attached_n));
        gpu->weights_refresh(gpu, attached_w);
    }
}

static void attach(float *w, size_t n)
{
    must(gpu->weights_attach(gpu, w, n));
    gpu->weights_refresh(gpu, w);
    attached_w = w, attached_n = n;
}

static void detach(float *w)
{
    gpu->weights_detach(gpu, w);
    attached_w = NULL, attached_n = 0;
}

/* ---- host and device buffers ---------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float *host_random(size_t n, float scale)
{
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((uniform() * 2.0 - 1.0) * scale);
    return x;
}

static void *dev_alloc(size_t bytes)
{
    void *d = gpu->mem_alloc(gpu, bytes);
    if (!d) {
        fprintf(stderr, "test_gpu_experts: %s\n", ds_last_error());
        exit(1);
    }
    return d;
}

/* n host floats as the GPU's Act elements (fp32 or bf16 by mode), into dev. */
static void act_upload(void *dev, const float *host, size_t n)
{
    if (gpu->act_size(gpu) == sizeof(float)) {
        gpu->mem_to_device(gpu, dev, host, n * sizeof(float));
        return;
    }
    uint16_t *h = malloc(n * sizeof(uint16_t) + 2);
    for (size_t i = 0; i < n; i++)
        h[i] = f32_to_bf16(host[i]);
    gpu->mem_to_device(gpu, dev, h, n * sizeof(uint16_t));
    free(h);
}

static void act_download(float *host, const void *dev, size_t n)
{
    if (gpu->act_size(gpu) == sizeof(float)) {
        gpu->mem_to_host(gpu, host, dev, n * sizeof(float));
        return;
    }
    uint16_t *h = malloc(n * sizeof(uint16_t) + 2);
    gpu->mem_to_host(gpu, h, dev, n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        host[i] = bf16_to_f32(h[i]);
    free(h);
}

static void *dev_act(size_t n)
{
    return dev_alloc((n ? n : 1) * gpu->act_size(gpu));
}

static void act_poison(void *dev, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    act_upload(dev, h, n);
    free(h);
}

static double rel_error(const float *x, const float *ref, size_t n, int *nan_count)
{
    double num = 0, den = 0;
    int nans = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            nans++;
            continue;
        }
        double d = (double)x[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    *nan_count = nans;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void compare_act(const char *name, const void *dev, const float *ref, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof(float));
    act_download(h, dev, n);
    int nans = 0;
    report(name, "rel err", rel_error(h, ref, n, &nans), tol, 1, nans);
    free(h);
}

/* dev (fp32) against factor * ref */
static void compare_f32(const char *name, const float *dev, const float *ref, float factor,
                        size_t n)
{
    float *h = malloc(n * sizeof(float)), *r = malloc(n * sizeof(float));
    gpu->mem_to_host(gpu, h, dev, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        r[i] = factor * ref[i];
    int nans = 0;
    report(name, "rel err", rel_error(h, r, n, &nans), tol, 1, nans);
    free(h), free(r);
}

static int same_bytes(const void *a, const void *b, size_t bytes)
{
    unsigned char *ha = malloc(bytes + 1), *hb = malloc(bytes + 1);
    gpu->mem_to_host(gpu, ha, a, bytes);
    gpu->mem_to_host(gpu, hb, b, bytes);
    int same = memcmp(ha, hb, bytes) == 0;
    free(ha), free(hb);
    return same;
}

/* ---- one layer's experts ----------------------------------------------------------------------
 */

/* Expert e's gate, up and down at e * 3 I C in one flat buffer, as the model lays them out. */
typedef struct Experts {
    int E, C, I, rows;
    int *counts;
    float *w;               /* host weights [E][gate, up, down] */
    float **hg, **hu, **hd; /* host pointers into w */
    float *ref_ey, *ref_eg, *ref_eu, *ref_ea, *ref_dxs, *ref_gw; /* CPU results; gw: dW of all */
    float *xs, *dey;                                             /* host inputs */
} Experts;

static void experts_make(Experts *x, int E, int C, int I, const int *counts)
{
    memset(x, 0, sizeof(*x));
    x->E = E, x->C = C, x->I = I;
    x->counts = malloc(E * sizeof(int));
    for (int e = 0; e < E; e++)
        x->rows += (x->counts[e] = counts[e]);
    const size_t per = 3 * (size_t)I * C, R = x->rows;
    x->w = host_random(E * per, 1.0f / sqrtf((float)C));
    x->hg = malloc(E * sizeof(float *)), x->hu = malloc(E * sizeof(float *));
    x->hd = malloc(E * sizeof(float *));
    for (int e = 0; e < E; e++) {
        x->hg[e] = x->w + e * per;
        x->hu[e] = x->hg[e] + (size_t)I * C;
        x->hd[e] = x->hu[e] + (size_t)I * C;
    }
    x->xs = host_random(R * C + 1, 1.0f);
    x->dey = host_random(R * C + 1, 1.0f);
    x->ref_ey = malloc((R * C + 1) * sizeof(float));
    x->ref_eg = malloc((R * I + 1) * sizeof(float));
    x->ref_eu = malloc((R * I + 1) * sizeof(float));
    x->ref_ea = malloc((R * I + 1) * sizeof(float));
    x->ref_dxs = malloc((R * C + 1) * sizeof(float));
    x->ref_gw = calloc(E * per, sizeof(float));
    float *dea = malloc((R * I + 1) * sizeof(float)), *deg = malloc((R * I + 1) * sizeof(float));
    float *deu = malloc((R * I + 1) * sizeof(float));
    float **gg = malloc(E * sizeof(float *)), **gu = malloc(E * sizeof(float *));
    float **gd = malloc(E * sizeof(float *));
    for (int e = 0; e < E; e++) {
        gg[e] = x->ref_gw + e * per;
        gu[e] = gg[e] + (size_t)I * C;
        gd[e] = gu[e] + (size_t)I * C;
    }
    cpu->moe_experts_forward(cpu, x->ref_ey, x->ref_eg, x->ref_eu, x->ref_ea, x->xs, x->hg, x->hu,
                             x->hd, x->counts, E, C, I);
    cpu->moe_experts_backward(cpu, x->ref_dxs, gg, gu, gd, dea, deg, deu, x->dey, x->xs, x->ref_eg,
                              x->ref_eu, x->ref_ea, x->hg, x->hu, x->hd, x->counts, E, C, I);
    free(dea), free(deg), free(deu), free(gg), free(gu), free(gd);
}

static void experts_free(Experts *x)
{
    free(x->counts), free(x->w), free(x->hg), free(x->hu), free(x->hd), free(x->xs);
    free(x->dey), free(x->ref_ey), free(x->ref_eg), free(x->ref_eu), free(x->ref_ea);
    free(x->ref_dxs), free(x->ref_gw);
}

/* The device side of one case in the current mode. */
typedef struct DevExperts {
    float *w, *gw;
    float **g, **u, **d, **gg, **gu, **gd; /* host arrays of device pointers */
    void *xs, *dey, *ey, *eg, *eu, *ea, *dxs, *dea, *deg, *deu;
} DevExperts;

static void dev_make(DevExperts *d, const Experts *x, int with_copy)
{
    const int E = x->E;
    const size_t per = 3 * (size_t)x->I * x->C, R = x->rows, RC = R * x->C, RI = R * x->I;
    d->w = dev_alloc(E * per * sizeof(float));
    gpu->mem_to_device(gpu, d->w, x->w, E * per * sizeof(float));
    d->gw = dev_alloc(E * per * sizeof(float)); /* zeroed */
    float ***arrays[] = {&d->g, &d->u, &d->d, &d->gg, &d->gu, &d->gd};
    for (int a = 0; a < 6; a++)
        *arrays[a] = malloc(E * sizeof(float *));
    for (int e = 0; e < E; e++) {
        for (int a = 0; a < 3; a++) {
            (*arrays[a])[e] = d->w + e * per + a * (size_t)x->I * x->C;
            (*arrays[a + 3])[e] = d->gw + e * per + a * (size_t)x->I * x->C;
        }
    }
    if (with_copy) attach(d->w, E * per);
    d->xs = dev_act(RC), d->dey = dev_act(RC);
    act_upload(d->xs, x->xs, RC);
    act_upload(d->dey, x->dey, RC);
    d->ey = dev_act(RC), d->dxs = dev_act(RC);
    d->eg = dev_act(RI), d->eu = dev_act(RI), d->ea = dev_act(RI);
    d->dea = dev_act(RI), d->deg = dev_act(RI), d->deu = dev_act(RI);
}

static void dev_free(DevExperts *d, int attached)
{
    if (attached) detach(d->w);
    void *bufs[] = {d->w,  d->gw, d->xs, d->dey, d->ey,  d->dxs,
                    d->eg, d->eu, d->ea, d->dea, d->deg, d->deu};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        gpu->mem_free(gpu, bufs[i]);
    free(d->g), free(d->u), free(d->d), free(d->gg), free(d->gu), free(d->gd);
}

static void dev_forward(DevExperts *d, const Experts *x)
{
    gpu->moe_experts_forward(gpu, d->ey, d->eg, d->eu, d->ea, d->xs, d->g, d->u, d->d, x->counts,
                             x->E, x->C, x->I);
}

static void dev_backward(DevExperts *d, const Experts *x)
{
    gpu->moe_experts_backward(gpu, d->dxs, d->gg, d->gu, d->gd, d->dea, d->deg, d->deu, d->dey,
                              d->xs, d->eg, d->eu, d->ea, d->g, d->u, d->d, x->counts, x->E, x->C,
                              x->I);
}

/* Every check of one case in the current mode. with_copy 0: the weights have no bf16 copy. */
static void check_case(const char *label, const Experts *x, int with_copy)
{
    char name[200];
    DevExperts d;
    dev_make(&d, x, with_copy);
    const size_t per = 3 * (size_t)x->I * x->C, R = x->rows, RC = R * x->C, RI = R * x->I;
    const size_t wbytes = x->E * per * sizeof(float);
    act_poison(d.ey, RC), act_poison(d.eg, RI), act_poison(d.eu, RI), act_poison(d.ea, RI);
    act_poison(d.dxs, RC);
    const long long calls0 = cuda_moe_grouped_calls(gpu),
                    fallbacks0 = cuda_moe_grouped_fallbacks(gpu);
    dev_forward(&d, x);
    dev_backward(&d, x);
    const long long calls = cuda_moe_grouped_calls(gpu) - calls0;
    const long long fallbacks = cuda_moe_grouped_fallbacks(gpu) - fallbacks0;
    snprintf(name, sizeof(name), "%s: forward ey", label);
    compare_act(name, d.ey, x->ref_ey, RC);
    snprintf(name, sizeof(name), "%s: forward eg, eu, ea", label);
    {
        float *h = malloc((3 * RI + 1) * sizeof(float)), *r = malloc((3 * RI + 1) * sizeof(float));
        act_download(h, d.eg, RI), act_download(h + RI, d.eu, RI),
            act_download(h + 2 * RI, d.ea, RI);
        memcpy(r, x->ref_eg, RI * sizeof(float));
        memcpy(r + RI, x->ref_eu, RI * sizeof(float));
        memcpy(r + 2 * RI, x->ref_ea, RI * sizeof(float));
        int nans = 0;
        report(name, "rel err", rel_error(h, r, 3 * RI, &nans), tol, 1, nans);
        free(h), free(r);
    }
    snprintf(name, sizeof(name), "%s: backward dxs", label);
    compare_act(name, d.dxs, x->ref_dxs, RC);
    snprintf(name, sizeof(name), "%s: dgate, dup, ddown onto zeros", label);
    compare_f32(name, d.gw, x->ref_gw, 1.0f, x->E * per);
    /* a second backward adds the same gradient once more */
    float *first = dev_alloc(wbytes);
    void *dxs1 = dev_act(RC), *ey1 = dev_act(RC);
    {
        float *h = malloc(wbytes);
        gpu->mem_to_host(gpu, h, d.gw, wbytes);
        gpu->mem_to_device(gpu, first, h, wbytes);
        free(h);
        unsigned char *b = malloc(RC * gpu->act_size(gpu) + 1);
        gpu->mem_to_host(gpu, b, d.dxs, RC * gpu->act_size(gpu));
        gpu->mem_to_device(gpu, dxs1, b, RC * gpu->act_size(gpu));
        gpu->mem_to_host(gpu, b, d.ey, RC * gpu->act_size(gpu));
        gpu->mem_to_device(gpu, ey1, b, RC * gpu->act_size(gpu));
        free(b);
    }
    dev_backward(&d, x);
    snprintf(name, sizeof(name), "%s: dW accumulates (twice = 2x)", label);
    compare_f32(name, d.gw, x->ref_gw, 2.0f, x->E * per);
    /* bit for bit: forward again, backward onto zeros again */
    float *zeros = calloc(x->E * per, sizeof(float));
    gpu->mem_to_device(gpu, d.gw, zeros, wbytes);
    free(zeros);
    act_poison(d.ey, RC), act_poison(d.dxs, RC);
    dev_forward(&d, x);
    dev_backward(&d, x);
    snprintf(name, sizeof(name), "%s: repeats bit for bit (ey, dxs, dW)", label);
    report(name, "same",
           same_bytes(ey1, d.ey, RC * gpu->act_size(gpu)) &&
               same_bytes(dxs1, d.dxs, RC * gpu->act_size(gpu)) && same_bytes(first, d.gw, wbytes),
           1, 0, 0);
    /* grouped where every weight has its operand (no rows: nothing to run) */
    const int grouped_expected =
        strcmp(kind, "grouped") == 0 && x->rows > 0 && (with_copy || gpu->act_size(gpu) != 2);
    snprintf(name, sizeof(name), "%s: %s", label,
             grouped_expected ? "ran grouped (none refused)" : "no grouped call");
    report(name, "as said", grouped_expected ? (calls > 0 && fallbacks == 0) : calls == 0, 1, 0, 0);
    if (strcmp(kind, "streams") == 0) { /* the same plans as the loop: the same bits */
        use(mode, "loop");
        dev_forward(&d, x);
        float *zero = calloc(x->E * per, sizeof(float));
        gpu->mem_to_device(gpu, d.gw, zero, wbytes);
        free(zero);
        dev_backward(&d, x);
        use(mode, kind);
        snprintf(name, sizeof(name), "%s: = loop bit for bit (ey, dxs, dW)", label);
        report(name, "same",
               same_bytes(ey1, d.ey, RC * gpu->act_size(gpu)) &&
                   same_bytes(dxs1, d.dxs, RC * gpu->act_size(gpu)) &&
                   same_bytes(first, d.gw, wbytes),
               1, 0, 0);
    }
    gpu->mem_free(gpu, first), gpu->mem_free(gpu, dxs1), gpu->mem_free(gpu, ey1);
    dev_free(&d, with_copy);
}

/* ---- timing: V2-Lite's layer -------------------------------------------------------------------
 */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Forward + backward of the experts of one layer at 4 x 2048 tokens, 6 of 64 experts each (the
 * counts drawn around the mean), grouped and expert by expert. No CPU reference. */
static void time_v2_lite(void)
{
    const int E = 64, C = 2048, I = 1408, tokens = 4 * 2048, k = 6;
    int counts[64], rows = 0;
    for (int e = 0; e < E; e++) {
        counts[e] = (int)(tokens * k / E * (0.5 + uniform()));
        rows += counts[e];
    }
    const size_t per = 3 * (size_t)I * C, RC = (size_t)rows * C, RI = (size_t)rows * I;
    DevExperts d;
    d.w = dev_alloc(E * per * sizeof(float));
    d.gw = dev_alloc(E * per * sizeof(float));
    float *hw = host_random(E * per, 0.02f);
    gpu->mem_to_device(gpu, d.w, hw, E * per * sizeof(float));
    free(hw);
    d.g = malloc(E * sizeof(float *)), d.u = malloc(E * sizeof(float *));
    d.d = malloc(E * sizeof(float *)), d.gg = malloc(E * sizeof(float *));
    d.gu = malloc(E * sizeof(float *)), d.gd = malloc(E * sizeof(float *));
    for (int e = 0; e < E; e++) {
        d.g[e] = d.w + e * per, d.u[e] = d.g[e] + (size_t)I * C, d.d[e] = d.u[e] + (size_t)I * C;
        d.gg[e] = d.gw + e * per, d.gu[e] = d.gg[e] + (size_t)I * C;
        d.gd[e] = d.gu[e] + (size_t)I * C;
    }
    attach(d.w, E * per);
    float *hx = host_random(RC, 1.0f);
    d.xs = dev_act(RC), d.dey = dev_act(RC);
    act_upload(d.xs, hx, RC);
    act_upload(d.dey, hx, RC);
    free(hx);
    d.ey = dev_act(RC), d.dxs = dev_act(RC);
    d.eg = dev_act(RI), d.eu = dev_act(RI), d.ea = dev_act(RI);
    d.dea = dev_act(RI), d.deg = dev_act(RI), d.deu = dev_act(RI);
    Experts x = {.E = E, .C = C, .I = I, .rows = rows, .counts = counts};
    const double flops_fwd = 2.0 * 3 * (double)rows * C * I;
    float sync;
    static const char *kinds[] = {"streams", "grouped", "loop"};
    for (int k = 0; k < 3; k++) {
        kind = kinds[k];
        use(mode, kind);
        double t_f = 1e30, t_b = 1e30;
        for (int rep = 0; rep < 6; rep++) {
            gpu->mem_to_host(gpu, &sync, d.gw, sizeof(float));
            double t0 = now_s();
            dev_forward(&d, &x);
            gpu->mem_to_host(gpu, &sync, d.gw, sizeof(float));
            double t1 = now_s();
            dev_backward(&d, &x);
            gpu->mem_to_host(gpu, &sync, d.gw, sizeof(float));
            double t2 = now_s();
            if (rep > 0) { /* the first sets up plans and buffers */
                t_f = fmin(t_f, t1 - t0);
                t_b = fmin(t_b, t2 - t1);
            }
        }
        char name[160];
        snprintf(name, sizeof(name), "V2-Lite layer's experts, %d rows: forward", rows);
        note(name, "ms", 1e3 * t_f, "");
        note(name, "TFLOP/s", flops_fwd / t_f / 1e12, "");
        snprintf(name, sizeof(name), "V2-Lite layer's experts, %d rows: backward", rows);
        note(name, "ms", 1e3 * t_b, "");
        note(name, "TFLOP/s", 2 * flops_fwd / t_b / 1e12, "");
    }
    kind = "streams";
    use(mode, kind);
    dev_free(&d, 1);
}

/* ---- cases ------------------------------------------------------------------------------------
 */

/* counts: per expert; a negative entry draws from [0, -entry]; every fifth drawn one is empty */
static void run_case(const char *label, int E, int C, int I, const int *pattern, int n_pattern)
{
    int *counts = malloc(E * sizeof(int));
    for (int e = 0; e < E; e++) {
        const int p = pattern[e % n_pattern];
        counts[e] = p >= 0 ? p : (e % 5 == 4 ? 0 : (int)(uniform() * (-p + 1)));
    }
    Experts x;
    experts_make(&x, E, C, I, counts);
    char full[160];
    snprintf(full, sizeof(full), "%s E%d C%d I%d rows %d", label, E, C, I, x.rows);
    static const char *kinds[] = {"streams", "grouped", "loop"};
    for (int m = 0; m < 2; m++) {
        mode = m ? "bf16" : "fp32";
        tol = m ? 1e-2 : 1e-4;
        for (int k = 0; k < 3; k++) {
            kind = kinds[k];
            use(mode, kind);
            check_case(full, &x, 1);
            if (m == 1 && k == 0 && E <= 8) {
                char loose[200];
                snprintf(loose, sizeof(loose), "%s, weights without a bf16 copy", full);
                check_case(loose, &x, 0);
            }
        }
    }
    kind = "streams";
    use(mode, kind);
    experts_free(&x);
    free(counts);
}

int main(void)
{
    cpu = backend_cpu();
    use("fp32", "streams");
    printf("| %-70s | %-10s | %10s | %-11s | %5s | %s |\n", "check (CUDA vs CPU)", "metric",
           "value", "limit", "NaN", "result");
    printf("|---|---|---|---|---|---|\n");
    /* row counts around every tile size: 1, 7, 8, 15, 16, 17, 63, 64, 65, 127, 129, 255, 257 */
    static const int off_tiles[] = {0, 1, 7, 17, 0, 63, 65, 127, 129, 255, 257, 8, 16, 15, 64, 0};
    static const int small[] = {0, 1, 17, 0, 64, 65, 129, 3};
    run_case("small, empty experts", 8, 72, 40, small, 8);
    run_case("off tile sizes", 16, 96, 48, off_tiles, 16);
    static const int drawn300[] = {-300};
    run_case("E64 I1408", 64, 256, 1408, drawn300, 1);
    static const int drawn24[] = {-24};
    run_case("E256 small I", 256, 128, 64, drawn24, 1);
    static const int none[] = {0};
    run_case("no rows at all", 4, 64, 32, none, 1);
    static const int v2[] = {-48};
    run_case("V2-Lite C and I", 64, 2048, 1408, v2, 1);
    mode = "bf16";
    use(mode, "streams");
    time_v2_lite();
    backend_free(gpu);
    printf("test_gpu_experts: %d of %d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
