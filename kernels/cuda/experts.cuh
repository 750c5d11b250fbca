/* experts.cuh: the routed experts of one MoE layer (moe_experts_forward / moe_experts_backward),
 * every expert a few matmuls on its block of rows. An expert holds a few hundred rows, so one of
 * its matmuls fills only part of the GPU; three ways to run them (the option cuda.experts):
 *   streams (default): the experts' matmuls spread over EXPERT_STREAMS streams forked from and
 *     joined back to the backend's stream, each with its own cuBLASLt workspace, so several
 *     experts' tiles share the GPU; the same cuBLASLt plans as one by one, so the same bits;
 *   grouped: one cuBLAS grouped GEMM (cublasGemmGroupedBatchedEx) a projection for all experts
 *     (the weight gradients, bf16 into fp32, which the library refuses, expert by expert);
 *   loop: one matmul after another on the backend's stream (matmul_forward / matmul_backward).
 * All three: bf16 activations and the bf16 working copy of the weights in bf16 mode, fp32
 * accumulation, dW accumulated in fp32 into the fp32 gradients; no atomics and no split
 * reductions across launches, so a call repeats bit for bit. Weights without a fresh bf16 copy,
 * or whose place in it is not 16-byte aligned (weight_copy_at), take the loop. The per-expert row counts are the host counts of moe_permute.
 * Part of ops_cuda.cu's translation unit, included there after moe.cuh and matmul.cuh: not a
 * header to include anywhere else. */

/* An Act pointer elems elements on (act_bytes(cx) each, cx in scope). */
#define CUDA_ACT_AT(x, elems) ((Act *)((const unsigned char *)(x) + (size_t)(elems)*act_bytes(cx)))

/* ---- the experts one after another (loop, and weights without a bf16 copy) ---------------- */

static void moe_experts_forward_each(CudaContext *cx, Act *ey, Act *eg, Act *eu, Act *ea,
                                     const Act *xs, float *const *gate, float *const *up,
                                     float *const *down, const int *counts, int E, int C, int I)
{
    size_t off = 0;
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const size_t oc = off * C, oi = off * I;
        matmul_forward(cx->be, CUDA_ACT_AT(eg, oi), CUDA_ACT_AT(xs, oc), gate[e], NULL, n, C, I);
        matmul_forward(cx->be, CUDA_ACT_AT(eu, oi), CUDA_ACT_AT(xs, oc), up[e], NULL, n, C, I);
        swiglu_forward(cx->be, CUDA_ACT_AT(ea, oi), CUDA_ACT_AT(eg, oi), CUDA_ACT_AT(eu, oi),
                       (size_t)n * I);
        matmul_forward(cx->be, CUDA_ACT_AT(ey, oc), CUDA_ACT_AT(ea, oi), down[e], NULL, n, I, C);
        off += (size_t)n;
    }
}

static void moe_experts_backward_each(CudaContext *cx, Act *dxs, float *const *dgate,
                                      float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                      Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                      const Act *eu, const Act *ea, float *const *gate,
                                      float *const *up, float *const *down, const int *counts,
                                      int E, int C, int I)
{
    size_t off = 0;
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const size_t oc = off * C, oi = off * I;
        matmul_backward(cx->be, CUDA_ACT_AT(dea, oi), ddown[e], NULL, CUDA_ACT_AT(dey, oc),
                        CUDA_ACT_AT(ea, oi), down[e], n, I, C, 0);
        swiglu_backward(cx->be, CUDA_ACT_AT(deg, oi), CUDA_ACT_AT(deu, oi), CUDA_ACT_AT(dea, oi),
                        CUDA_ACT_AT(eg, oi), CUDA_ACT_AT(eu, oi), (size_t)n * I);
        matmul_backward(cx->be, CUDA_ACT_AT(dxs, oc), dgate[e], NULL, CUDA_ACT_AT(deg, oi),
                        CUDA_ACT_AT(xs, oc), gate[e], n, C, I, 0);
        matmul_backward(cx->be, CUDA_ACT_AT(dxs, oc), dup[e], NULL, CUDA_ACT_AT(deu, oi),
                        CUDA_ACT_AT(xs, oc), up[e], n, C, I, 1);
        off += (size_t)n;
    }
}

/* ---- grouped GEMM: a list of column-major problems, run in one call -------------------------- */

extern "C" long long cuda_moe_grouped_calls(const Backend *be)
{
    return cuda_context(be)->grouped_calls;
}
extern "C" long long cuda_moe_grouped_fallbacks(const Backend *be)
{
    return cuda_context(be)->grouped_fallbacks;
}

/* The cuda.experts option (cuda_backend_create). */
static int experts_kind_parse(const char *kind, int *out)
{
    static const char *const names[] = {"streams", "grouped", "loop"}; /* EXPERTS_* */
    for (int i = 0; i < 3; i++)
        if (strcmp(kind, names[i]) == 0) return *out = i, DS_OK;
    return ds_error(DS_ERR_INPUT, "cuda.experts: \"%s\": expected streams, grouped or loop",
                    kind);
}

/* The host arrays of g's problems (the ring and the handle are the context's). */
static void grouped_arrays_free(GroupedGemm *g)
{
    free(g->ta), free(g->tb), free(g->m), free(g->n), free(g->k), free(g->lda), free(g->ldb);
    free(g->ldc), free(g->size), free(g->alpha), free(g->beta), free(g->a), free(g->b), free(g->d);
}

/* Room for cap problems a call (grows only: the first layer sees the largest E). */
static void grouped_reserve(CudaContext *cx, int cap)
{
    if (!cx->grouped_handle) {
        cublasCheck(cublasCreate(&cx->grouped_handle));
        cublasCheck(cublasSetStream(cx->grouped_handle, cx->stream));
        cublasCheck(cublasSetWorkspace(cx->grouped_handle, cx->lt_workspace, lt_workspace_size));
        for (int i = 0; i < GROUPED_SLOTS; i++)
            cudaCheck(cudaEventCreateWithFlags(&cx->grouped_done[i], cudaEventDisableTiming));
    }
    if (cap <= cx->grouped.cap) return;
    cudaCheck(cudaDeviceSynchronize()); /* nothing still reads the old ring */
    GroupedGemm *g = &cx->grouped;
    grouped_arrays_free(g);
    g->ta = (cublasOperation_t *)malloc(cap * sizeof(cublasOperation_t));
    g->tb = (cublasOperation_t *)malloc(cap * sizeof(cublasOperation_t));
    int **ints[] = {&g->m, &g->n, &g->k, &g->lda, &g->ldb, &g->ldc, &g->size};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        *ints[i] = (int *)malloc(cap * sizeof(int));
    g->alpha = (float *)malloc(cap * sizeof(float));
    g->beta = (float *)malloc(cap * sizeof(float));
    g->a = (const void **)malloc(cap * sizeof(void *));
    g->b = (const void **)malloc(cap * sizeof(void *));
    g->d = (void **)malloc(cap * sizeof(void *));
    if (!g->ta || !g->tb || !g->m || !g->n || !g->k || !g->lda || !g->ldb || !g->ldc || !g->size ||
        !g->alpha || !g->beta || !g->a || !g->b || !g->d) {
        fprintf(stderr, "dstrain: error: %s:%d: out of host memory\n", __FILE__, __LINE__);
        exit(1);
    }
    if (cx->grouped_host_ptrs) cudaCheck(cudaFreeHost(cx->grouped_host_ptrs));
    if (cx->grouped_dev_ptrs) cudaCheck(cudaFree(cx->grouped_dev_ptrs));
    const size_t bytes = (size_t)GROUPED_SLOTS * 3 * cap * sizeof(void *);
    cudaCheck(cudaMallocHost((void **)&cx->grouped_host_ptrs, bytes));
    cudaCheck(cudaMalloc((void **)&cx->grouped_dev_ptrs, bytes));
    memset(cx->grouped_slot_used, 0, sizeof(cx->grouped_slot_used));
    g->cap = cap;
}

static void grouped_begin(CudaContext *cx)
{
    cx->grouped.count = 0;
}

static void grouped_add(CudaContext *cx, const void *a, const void *b, void *d, int m, int n, int k,
                        int transa, int transb, float beta)
{
    GroupedGemm *g = &cx->grouped;
    const int i = g->count++;
    g->ta[i] = transa ? CUBLAS_OP_T : CUBLAS_OP_N;
    g->tb[i] = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    g->m[i] = m, g->n[i] = n, g->k[i] = k;
    g->lda[i] = transa ? k : m, g->ldb[i] = transb ? n : k, g->ldc[i] = m;
    g->size[i] = 1, g->alpha[i] = 1.0f, g->beta[i] = beta;
    g->a[i] = a, g->b[i] = b, g->d[i] = d;
}

/* The problems added since grouped_begin in one grouped GEMM: A and B bf16 in bf16 mode, else
 * fp32; D bf16 when d_bf16. Where the library refuses the combination, one lt_matmul each. */
static void grouped_run(CudaContext *cx, int d_bf16)
{
    GroupedGemm *g = &cx->grouped;
    if (g->count == 0) return;
    if (cx->bf16 && !d_bf16) { /* bf16 into fp32: not a grouped combination of the library */
        for (int i = 0; i < g->count; i++)
            lt_matmul(cx, g->d[i], d_bf16, g->a[i], g->b[i], NULL, g->m[i], g->n[i], g->k[i],
                      g->ta[i] == CUBLAS_OP_T, g->tb[i] == CUBLAS_OP_T, g->beta[i]);
        return;
    }
    const int slot = cx->grouped_next_slot;
    cx->grouped_next_slot = (cx->grouped_next_slot + 1) % GROUPED_SLOTS;
    if (cx->grouped_slot_used[slot]) cudaCheck(cudaEventSynchronize(cx->grouped_done[slot]));
    const void **host = cx->grouped_host_ptrs + (size_t)slot * 3 * g->cap;
    const void **dev = cx->grouped_dev_ptrs + (size_t)slot * 3 * g->cap;
    memcpy(host, g->a, g->count * sizeof(void *));
    memcpy(host + g->count, g->b, g->count * sizeof(void *));
    memcpy(host + 2 * g->count, g->d, g->count * sizeof(void *));
    cudaCheck(cudaMemcpyAsync(dev, host, 3 * g->count * sizeof(void *), cudaMemcpyHostToDevice,
                              cx->stream));
    const cudaDataType_t ab = cx->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cudaDataType_t dt = d_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasStatus_t status = cublasGemmGroupedBatchedEx(
        cx->grouped_handle, g->ta, g->tb, g->m, g->n, g->k, g->alpha, dev, ab, g->lda,
        dev + g->count, ab, g->ldb, g->beta, (void *const *)(dev + 2 * g->count), dt, g->ldc,
        g->count, g->size, cx->compute);
    cudaCheck(cudaEventRecord(cx->grouped_done[slot], cx->stream));
    cx->grouped_slot_used[slot] = 1;
    if (status == CUBLAS_STATUS_SUCCESS) {
        cx->grouped_calls++;
        return;
    }
    if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE)
        cublasCheck(status);
    cx->grouped_fallbacks++;
    for (int i = 0; i < g->count; i++)
        lt_matmul(cx, g->d[i], d_bf16, g->a[i], g->b[i], NULL, g->m[i], g->n[i], g->k[i],
                  g->ta[i] == CUBLAS_OP_T, g->tb[i] == CUBLAS_OP_T, g->beta[i]);
}

/* The bf16 working copy of weight[n] (fp32 weights in fp32 mode); NULL when it has none fresh. */
static const void *expert_weight_operand(CudaContext *cx, const float *weight, size_t n)
{
    if (!cx->bf16) return weight;
    return weight_copy_at(cx, weight, n);
}

/* The operands of every expert with rows: gate, up, down (NULL where an expert has no rows);
 * 0 when one of them has no fresh bf16 copy. */
static int expert_operands(CudaContext *cx, const void **og, const void **ou, const void **od,
                           float *const *gate, float *const *up, float *const *down,
                           const int *counts, int E, int C, int I)
{
    const size_t wn = (size_t)I * C;
    for (int e = 0; e < E; e++) {
        og[e] = ou[e] = od[e] = NULL;
        if (counts[e] == 0) continue;
        og[e] = expert_weight_operand(cx, gate[e], wn);
        ou[e] = expert_weight_operand(cx, up[e], wn);
        od[e] = expert_weight_operand(cx, down[e], wn);
        if (!og[e] || !ou[e] || !od[e]) return 0;
    }
    return 1;
}

static const void **expert_ptrs_get(CudaContext *cx, int E)
{
    if (E > cx->expert_ptrs_cap) {
        free(cx->expert_ptrs);
        cx->expert_ptrs = (const void **)malloc(3 * (size_t)E * sizeof(void *));
        if (!cx->expert_ptrs) {
            fprintf(stderr, "dstrain: error: %s:%d: out of host memory\n", __FILE__, __LINE__);
            exit(1);
        }
        cx->expert_ptrs_cap = E;
    }
    return cx->expert_ptrs;
}

/* ---- the experts as grouped GEMMs ------------------------------------------------------------
 * In cuBLAS's column-major terms (matmul.cuh; the streams compute the same products), expert e's
 * rows n_e at row offset o:
 *   eg^T (I x n_e) = gate^T . xs^T        ey^T (C x n_e) = down^T . ea^T
 *   dea^T (I x n_e) = down . dey^T         dxs^T (C x n_e) = gate . deg^T (+ up . deu^T)
 *   dgate^T (C x I) += xs^T . deg          ddown^T (I x C) += ea^T . dey */

static void moe_experts_forward_grouped(CudaContext *cx, Act *ey, Act *eg, Act *eu, Act *ea,
                                        const Act *xs, const void *const *og, const void *const *ou,
                                        const void *const *od, const int *counts, int E, int C,
                                        int I)
{
    size_t rows = 0;
    grouped_begin(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const void *x = CUDA_ACT_AT(xs, rows * C);
        grouped_add(cx, og[e], x, CUDA_ACT_AT(eg, rows * I), I, n, C, 1, 0, 0.0f);
        grouped_add(cx, ou[e], x, CUDA_ACT_AT(eu, rows * I), I, n, C, 1, 0, 0.0f);
        rows += (size_t)n;
    }
    grouped_run(cx, cx->bf16);
    swiglu_forward(cx->be, ea, eg, eu, rows * I);
    rows = 0;
    grouped_begin(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        grouped_add(cx, od[e], CUDA_ACT_AT(ea, rows * I), CUDA_ACT_AT(ey, rows * C), C, n, I, 1, 0,
                    0.0f);
        rows += (size_t)n;
    }
    grouped_run(cx, cx->bf16);
}

static void moe_experts_backward_grouped(CudaContext *cx, Act *dxs, float *const *dgate,
                                         float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                         Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                         const Act *eu, const Act *ea, const void *const *og,
                                         const void *const *ou, const void *const *od,
                                         const int *counts, int E, int C, int I)
{
    size_t rows = 0;
    /* dea = dey . down */
    grouped_begin(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        grouped_add(cx, od[e], CUDA_ACT_AT(dey, rows * C), CUDA_ACT_AT(dea, rows * I), I, n, C, 0,
                    0, 0.0f);
        rows += (size_t)n;
    }
    grouped_run(cx, cx->bf16);
    swiglu_backward(cx->be, deg, deu, dea, eg, eu, rows * I);
    /* dxs = deg . gate, then += deu . up (in this order, as the CPU adds them) */
    for (int half = 0; half < 2; half++) {
        const void *const *ow = half ? ou : og;
        const Act *dh = half ? deu : deg;
        rows = 0;
        grouped_begin(cx);
        for (int e = 0; e < E; e++) {
            const int n = counts[e];
            if (n == 0) continue;
            grouped_add(cx, ow[e], CUDA_ACT_AT(dh, rows * I), CUDA_ACT_AT(dxs, rows * C), C, n, I,
                        0, 0, half ? 1.0f : 0.0f);
            rows += (size_t)n;
        }
        grouped_run(cx, cx->bf16);
    }
    /* dgate += xs^T deg, dup += xs^T deu (fp32) */
    rows = 0;
    grouped_begin(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const void *x = CUDA_ACT_AT(xs, rows * C);
        grouped_add(cx, x, CUDA_ACT_AT(deg, rows * I), dgate[e], C, I, n, 0, 1, 1.0f);
        grouped_add(cx, x, CUDA_ACT_AT(deu, rows * I), dup[e], C, I, n, 0, 1, 1.0f);
        rows += (size_t)n;
    }
    grouped_run(cx, 0);
    /* ddown += ea^T dey (fp32) */
    rows = 0;
    grouped_begin(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        grouped_add(cx, CUDA_ACT_AT(ea, rows * I), CUDA_ACT_AT(dey, rows * C), ddown[e], I, C, n, 0,
                    1, 1.0f);
        rows += (size_t)n;
    }
    grouped_run(cx, 0);
}

/* ---- the experts over several streams ----------------------------------------------------------
 * Expert e's matmuls go to stream e % EXPERT_STREAMS (so an expert's dxs halves stay in order);
 * the element-wise SwiGLU runs once over all rows on the backend's stream between two forks. */

static void expert_fork(CudaContext *cx)
{
    if (!cx->expert_stream[0]) {
        cudaCheck(cudaEventCreateWithFlags(&cx->expert_forked, cudaEventDisableTiming));
        for (int i = 0; i < EXPERT_STREAMS; i++) {
            cudaCheck(cudaStreamCreateWithFlags(&cx->expert_stream[i], cudaStreamNonBlocking));
            cudaCheck(cudaEventCreateWithFlags(&cx->expert_joined[i], cudaEventDisableTiming));
            cudaCheck(cudaMalloc(&cx->expert_workspace[i], lt_workspace_size));
        }
    }
    cudaCheck(cudaEventRecord(cx->expert_forked, cx->stream));
    for (int i = 0; i < EXPERT_STREAMS; i++)
        cudaCheck(cudaStreamWaitEvent(cx->expert_stream[i], cx->expert_forked, 0));
}

static void expert_join(CudaContext *cx)
{
    for (int i = 0; i < EXPERT_STREAMS; i++) {
        cudaCheck(cudaEventRecord(cx->expert_joined[i], cx->expert_stream[i]));
        cudaCheck(cudaStreamWaitEvent(cx->stream, cx->expert_joined[i], 0));
    }
}

/* expert e's matmul (lt_matmul's arguments) on its stream */
static void expert_matmul(CudaContext *cx, int e, void *d, int d_bf16, const void *a, const void *b,
                          int m, int n, int k, int transa, int transb, float beta)
{
    const int s = e % EXPERT_STREAMS;
    lt_matmul_on(cx, cx->expert_stream[s], cx->expert_workspace[s], d, d_bf16, a, b, m, n, k,
                 transa, transb, beta);
}

static void moe_experts_forward_streams(CudaContext *cx, Act *ey, Act *eg, Act *eu, Act *ea,
                                        const Act *xs, const void *const *og, const void *const *ou,
                                        const void *const *od, const int *counts, int E, int C,
                                        int I)
{
    size_t rows = 0;
    expert_fork(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const void *x = CUDA_ACT_AT(xs, rows * C);
        expert_matmul(cx, e, CUDA_ACT_AT(eg, rows * I), cx->bf16, og[e], x, I, n, C, 1, 0, 0.0f);
        expert_matmul(cx, e, CUDA_ACT_AT(eu, rows * I), cx->bf16, ou[e], x, I, n, C, 1, 0, 0.0f);
        rows += (size_t)n;
    }
    expert_join(cx);
    swiglu_forward(cx->be, ea, eg, eu, rows * I);
    rows = 0;
    expert_fork(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        expert_matmul(cx, e, CUDA_ACT_AT(ey, rows * C), cx->bf16, od[e], CUDA_ACT_AT(ea, rows * I),
                      C, n, I, 1, 0, 0.0f);
        rows += (size_t)n;
    }
    expert_join(cx);
}

static void moe_experts_backward_streams(CudaContext *cx, Act *dxs, float *const *dgate,
                                         float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                         Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                         const Act *eu, const Act *ea, const void *const *og,
                                         const void *const *ou, const void *const *od,
                                         const int *counts, int E, int C, int I)
{
    size_t rows = 0;
    /* dea = dey . down and ddown += ea^T dey */
    expert_fork(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const void *dy = CUDA_ACT_AT(dey, rows * C), *a = CUDA_ACT_AT(ea, rows * I);
        expert_matmul(cx, e, CUDA_ACT_AT(dea, rows * I), cx->bf16, od[e], dy, I, n, C, 0, 0, 0.0f);
        expert_matmul(cx, e, ddown[e], 0, a, dy, I, C, n, 0, 1, 1.0f);
        rows += (size_t)n;
    }
    expert_join(cx);
    swiglu_backward(cx->be, deg, deu, dea, eg, eu, rows * I);
    /* dxs = deg . gate + deu . up (in this order), dgate += xs^T deg, dup += xs^T deu */
    rows = 0;
    expert_fork(cx);
    for (int e = 0; e < E; e++) {
        const int n = counts[e];
        if (n == 0) continue;
        const void *x = CUDA_ACT_AT(xs, rows * C);
        const void *dg = CUDA_ACT_AT(deg, rows * I), *du = CUDA_ACT_AT(deu, rows * I);
        void *dx = CUDA_ACT_AT(dxs, rows * C);
        expert_matmul(cx, e, dx, cx->bf16, og[e], dg, C, n, I, 0, 0, 0.0f);
        expert_matmul(cx, e, dx, cx->bf16, ou[e], du, C, n, I, 0, 0, 1.0f);
        expert_matmul(cx, e, dgate[e], 0, x, dg, C, I, n, 0, 1, 1.0f);
        expert_matmul(cx, e, dup[e], 0, x, du, C, I, n, 0, 1, 1.0f);
        rows += (size_t)n;
    }
    expert_join(cx);
}

/* ---- the ops ------------------------------------------------------------------------------------
 */

static void moe_experts_forward(const Backend *be, Act *ey, Act *eg, Act *eu, Act *ea,
                                const Act *xs, float *const *gate, float *const *up,
                                float *const *down, const int *counts, int E, int C, int I)
{
    CudaContext *cx = cuda_context(be);
    if (E <= 0 || C <= 0 || I <= 0) return;
    const void **ptrs = expert_ptrs_get(cx, E);
    const void **og = ptrs, **ou = ptrs + E, **od = ptrs + 2 * E;
    if (cx->experts_kind == EXPERTS_LOOP ||
        !expert_operands(cx, og, ou, od, gate, up, down, counts, E, C, I)) {
        moe_experts_forward_each(cx, ey, eg, eu, ea, xs, gate, up, down, counts, E, C, I);
    } else if (cx->experts_kind == EXPERTS_GROUPED) {
        grouped_reserve(cx, 2 * E);
        moe_experts_forward_grouped(cx, ey, eg, eu, ea, xs, og, ou, od, counts, E, C, I);
    } else {
        moe_experts_forward_streams(cx, ey, eg, eu, ea, xs, og, ou, od, counts, E, C, I);
    }
}

static void moe_experts_backward(const Backend *be, Act *dxs, float *const *dgate,
                                 float *const *dup, float *const *ddown, Act *dea, Act *deg,
                                 Act *deu, const Act *dey, const Act *xs, const Act *eg,
                                 const Act *eu, const Act *ea, float *const *gate, float *const *up,
                                 float *const *down, const int *counts, int E, int C, int I)
{
    CudaContext *cx = cuda_context(be);
    if (E <= 0 || C <= 0 || I <= 0) return;
    const void **ptrs = expert_ptrs_get(cx, E);
    const void **og = ptrs, **ou = ptrs + E, **od = ptrs + 2 * E;
    if (cx->experts_kind == EXPERTS_LOOP ||
        !expert_operands(cx, og, ou, od, gate, up, down, counts, E, C, I)) {
        moe_experts_backward_each(cx, dxs, dgate, dup, ddown, dea, deg, deu, dey, xs, eg, eu, ea,
                                  gate, up, down, counts, E, C, I);
    } else if (cx->experts_kind == EXPERTS_GROUPED) {
        grouped_reserve(cx, 2 * E);
        moe_experts_backward_grouped(cx, dxs, dgate, dup, ddown, dea, deg, deu, dey, xs, eg, eu, ea,
                                     og, ou, od, counts, E, C, I);
    } else {
        moe_experts_backward_streams(cx, dxs, dgate, dup, ddown, dea, deg, deu, dey, xs, eg, eu, ea,
                                     og, ou, od, counts, E, C, I);
    }
}

/* What the experts' paths made for cx, freed with it (cuda_backend_free; the device is idle). */
static void experts_free(CudaContext *cx)
{
    GroupedGemm *g = &cx->grouped;
    grouped_arrays_free(g);
    if (cx->grouped_host_ptrs) cudaCheck(cudaFreeHost(cx->grouped_host_ptrs));
    cudaCheck(cudaFree(cx->grouped_dev_ptrs));
    if (cx->grouped_handle) {
        cublasCheck(cublasDestroy(cx->grouped_handle));
        for (int i = 0; i < GROUPED_SLOTS; i++)
            cudaCheck(cudaEventDestroy(cx->grouped_done[i]));
    }
    free(cx->expert_ptrs);
    if (cx->expert_stream[0]) {
        cudaCheck(cudaEventDestroy(cx->expert_forked));
        for (int i = 0; i < EXPERT_STREAMS; i++) {
            cudaCheck(cudaStreamDestroy(cx->expert_stream[i]));
            cudaCheck(cudaEventDestroy(cx->expert_joined[i]));
            cudaCheck(cudaFree(cx->expert_workspace[i]));
        }
    }
}
