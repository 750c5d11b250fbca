/* matmul.cuh: matmul_forward / matmul_backward through cuBLASLt: the bf16 working copies of
 * the weights (weights_attach / refresh / detach), the precision option, the plan cache.
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * matmul through cuBLASLt. cuBLAS is column-major: a row-major [R, C] matrix is a column-major
 * C x R one, so the row-major products of ops.h become (shapes column-major):
 *   forward  out (N x M)  = W^T (W stored K x N) . inp (K x M)
 *   dinp     dinp (K x M) = W (K x N) . dout (N x M)
 *   dweight  dW (K x N)  += inp (K x M) . dout^T (dout stored N x M)
 * Modes (the precision option, cuda_backend_create):
 *   fp32: fp32 operands, true fp32 products (TF32 off); tf32: fp32 operands on the TF32 cores.
 *   bf16 (mixed precision): bf16 operands (the weights from the attached working copy, the
 *     activations and gradients as they are stored), products on the bf16 tensor cores with fp32
 *     accumulation; out and dinp are written in bf16 (dinp += rounds once, after the fp32 sum),
 *     dW in fp32 (C and D fp32, so dW += accumulates in fp32). */

static const size_t lt_workspace_size = (size_t)32 << 20;

/* ---- bf16 operands ---- */

__global__ static void round_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i + 3 < n) {
        float4 x = *reinterpret_cast<const float4 *>(src + i);
        __nv_bfloat162 *d2 = reinterpret_cast<__nv_bfloat162 *>(dst + i);
        d2[0] = __floats2bfloat162_rn(x.x, x.y);
        d2[1] = __floats2bfloat162_rn(x.z, x.w);
    } else {
        for (; i < n; i++)
            dst[i] = __float2bfloat16_rn(src[i]);
    }
}

__global__ static void round_bf16_unaligned_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

static void round_bf16(CudaContext *cx, __nv_bfloat16 *dst, const float *src, size_t n)
{
    if (n == 0) return;
    if ((uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0)
        round_bf16_kernel<<<ceil_div((long long)ceil_div((long long)n, 4), 256), 256, 0,
                            cx->stream>>>(dst, src, n);
    else
        round_bf16_unaligned_kernel<<<ceil_div((long long)n, 256), 256, 0, cx->stream>>>(dst, src,
                                                                                         n);
    launchCheck();
}

static __nv_bfloat16 *bf16_buffer(Bf16Buffer *b, size_t n)
{
    if (n > b->cap) {
        cudaCheck(cudaFree(b->ptr)); /* synchronises: nothing still reads the old one */
        b->cap = n;
        cudaCheck(cudaMalloc(&b->ptr, n * sizeof(__nv_bfloat16)));
    }
    return b->ptr;
}

extern "C" long long cuda_weights_refresh_rounded(const Backend *be)
{
    return cuda_context(be)->refresh_rounded;
}

extern "C" long long cuda_operand_rounded(const Backend *be)
{
    return cuda_context(be)->operand_rounded;
}

/* Memory [p, p + bytes) was written: a rounded operand of a weight it overlaps is stale. */
static void operands_written(CudaContext *cx, const void *p, size_t bytes)
{
    Bf16Buffer *buffers[] = {&cx->operand_weight, &cx->operand_bias};
    const char *b = (const char *)p, *e = b + bytes;
    for (int i = 0; i < 2; i++) {
        Bf16Buffer *o = buffers[i];
        if (o->src && b < (const char *)(o->src + o->n) && e > (const char *)o->src) o->src = NULL;
    }
}

/* Memory [p, p + bytes) was written by something other than AdamW: the elements of the copies
 * it overlaps must be rounded again at their next refresh (and an operand of it, at its next
 * use). */
static void weight_copies_written(CudaContext *cx, const void *p, size_t bytes)
{
    operands_written(cx, p, bytes);
    const char *b = (const char *)p, *e = b + bytes;
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++) {
        WeightCopy *w = &cx->copies[i];
        const char *first = (const char *)w->params, *end = (const char *)(w->params + w->n);
        if (!w->params || b >= end || e <= first) continue;
        const size_t lo = b > first ? (size_t)(b - first) / sizeof(float) : 0;
        const size_t hi =
            e < end ? ((size_t)(e - first) + sizeof(float) - 1) / sizeof(float) : w->n;
        if (!w->stale) dirty_ranges_add(&w->dirty, lo, hi);
    }
}

/* The attached buffer that holds p[0..n) whole, or NULL (attached buffers do not overlap: at
 * most one does). */
static WeightCopy *weight_copy_holding(CudaContext *cx, const float *p, size_t n)
{
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++) {
        WeightCopy *w = &cx->copies[i];
        if (w->params && p >= w->params && p + n <= w->params + w->n) return w;
    }
    return NULL;
}

/* The place in a working copy where AdamW writes the bf16 values of params[0..n) as it updates
 * them, or NULL (fp32 modes, or no copy holds them: then the copy is stale). */
static __nv_bfloat16 *weight_copy_for_update(CudaContext *cx, const float *param, size_t n)
{
    operands_written(cx, param, n * sizeof(float));
    WeightCopy *w = weight_copy_holding(cx, param, n);
    if (!w) {
        weight_copies_written(cx, param, n * sizeof(float)); /* straddles a buffer's edge */
        return NULL;
    }
    if (cx->bf16 && w->copy) return w->copy + (param - w->params);
    w->stale = 1;
    return NULL;
}

static WeightCopy *weight_copy_of(CudaContext *cx, const float *params)
{
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++)
        if (cx->copies[i].params == params) return &cx->copies[i];
    return NULL;
}

static void weights_touched(const Backend *be, const float *params)
{
    CudaContext *cx = cuda_context(be);
    WeightCopy *w = weight_copy_of(cx, params);
    if (!w) return;
    w->stale = 1;
    operands_written(cx, w->params, w->n * sizeof(float));
}

static int weight_copy_alloc(WeightCopy *w)
{
    if (w->copy) return DS_OK;
    cudaError_t err = cudaMalloc(&w->copy, w->n * sizeof(__nv_bfloat16));
    if (err == cudaSuccess) return DS_OK;
    cudaGetLastError();
    w->copy = NULL;
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    return ds_error(DS_ERR_INTERNAL,
                    "CUDA: cannot allocate the bf16 working copy of the weights (%.1f MiB, "
                    "%.1f MiB free)",
                    w->n * 2 / 1048576.0, free_bytes / 1048576.0);
}

static int weights_attach(const Backend *be, const float *params, size_t n)
{
    CudaContext *cx = cuda_context(be);
    for (int i = 0; i < WEIGHT_COPIES_MAX; i++) { /* a weight must have one place in one copy */
        const WeightCopy *o = &cx->copies[i];
        if (o->params && o->params != params && params < o->params + o->n && o->params < params + n)
            return ds_error(DS_ERR_INTERNAL,
                            "CUDA: weights_attach: a buffer of %zu floats overlaps one attached "
                            "already (%zu floats)",
                            n, o->n);
    }
    WeightCopy *w = weight_copy_of(cx, params);
    if (!w) w = weight_copy_of(cx, NULL);
    if (!w) return ds_error(DS_ERR_INTERNAL, "CUDA: more than %d parameter buffers attached",
                            WEIGHT_COPIES_MAX);
    if (w->copy && w->n != n) { /* attached again at another length: the copy is made anew */
        cudaFree(w->copy);
        w->copy = NULL;
    }
    operands_written(cx, params, n * sizeof(float));
    w->params = params;
    w->n = n;
    w->fresh = 0;
    w->stale = 1;
    return DS_OK; /* the copy is made by the first refresh, after the model's other buffers */
}

static void weights_refresh(const Backend *be, const float *params)
{
    CudaContext *cx = cuda_context(be);
    WeightCopy *w = weight_copy_of(cx, params);
    if (!w) return;
    const int whole = w->stale || !w->copy;
    w->fresh = 0;
    w->stale = 1;
    /* a refresh says the weights were written: no operand rounded from them is reused, whatever
     * wrote them (the ops that write attached buffers already say so themselves) */
    operands_written(cx, w->params, w->n * sizeof(float));
    if (!cx->bf16 || !cx->copies_kept) return;
    if (weight_copy_alloc(w) != DS_OK) { /* matmuls round the weights on the fly instead */
        static int warned;
        if (!warned++)
            fprintf(stderr,
                    "dstrain: warning: %s; each matmul rounds its weight as it reads it instead "
                    "(as with cuda.weight_copy: none)\n",
                    ds_last_error());
        return;
    }
    if (whole) {
        round_bf16(cx, w->copy, params, w->n);
        cx->refresh_rounded += (long long)w->n;
    } else {
        const DirtyRanges *d = &w->dirty;
        for (int i = 0; i < d->count; i++)
            round_bf16(cx, w->copy + d->lo[i], params + d->lo[i], d->hi[i] - d->lo[i]);
        cx->refresh_rounded += (long long)dirty_ranges_elements(d);
    }
    dirty_ranges_clear(&w->dirty);
    w->fresh = 1;
    w->stale = 0;
}

static void weights_detach(const Backend *be, const float *params)
{
    CudaContext *cx = cuda_context(be);
    WeightCopy *w = weight_copy_of(cx, params);
    if (!w) return;
    operands_written(cx, w->params, w->n * sizeof(float)); /* its writers are no longer seen */
    cudaCheck(cudaFree(w->copy));
    memset(w, 0, sizeof(*w));
}

/* weight[n]'s place in an attached, fresh copy, or NULL: also where that place is not 16-byte
 * aligned (a weight at an offset not a multiple of 8 in its buffer), which the matmul plans do
 * not take (the parameter table aligns every tensor to 256 bytes). */
static const __nv_bfloat16 *weight_copy_at(CudaContext *cx, const float *weight, size_t n)
{
    const WeightCopy *w = weight_copy_holding(cx, weight, n);
    if (!w || !w->fresh) return NULL;
    const __nv_bfloat16 *at = w->copy + (weight - w->params);
    return (uintptr_t)at % 16 == 0 ? at : NULL;
}

/* weight[n] in bf16: its place in an attached, fresh copy, else rounded into buffer, unless
 * buffer holds it already (a weight without a copy read by several matmuls in a row: the LM
 * head's chunks under cuda.weight_copy none). The buffer's reuse is kept only for attached
 * weights, every write to which the backend sees (memory ops, scale, AdamW, weights_touched). */
static const __nv_bfloat16 *weight_operand(CudaContext *cx, const float *weight, size_t n,
                                           Bf16Buffer *buffer)
{
    const __nv_bfloat16 *at = weight_copy_at(cx, weight, n);
    if (at) return at;
    if (buffer->src == weight && buffer->n == n) return buffer->ptr;
    __nv_bfloat16 *x = bf16_buffer(buffer, n);
    round_bf16(cx, x, weight, n);
    cx->operand_rounded += (long long)n;
    buffer->src = weight_copy_holding(cx, weight, n) ? weight : NULL;
    buffer->n = n;
    return x;
}

/* The precision option (cuda_backend_create): fp32, bf16 or tf32. */
static int precision_parse(const char *mode, int *bf16, cublasComputeType_t *compute)
{
    *compute = strcmp(mode, "tf32") == 0 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    *bf16 = strcmp(mode, "bf16") == 0;
    if (*bf16 || strcmp(mode, "fp32") == 0 || strcmp(mode, "tf32") == 0) return DS_OK;
    return ds_error(DS_ERR_INPUT, "precision: \"%s\": expected fp32, bf16 or tf32", mode);
}

/* The weight_copy option (cuda_backend_create): full or none (auto, which the trainer resolves
 * against the GPU's memory, is full here). */
static int weight_copy_parse(const char *mode, int *keep)
{
    *keep = strcmp(mode, "none") != 0;
    if (!*keep || strcmp(mode, "full") == 0 || strcmp(mode, "auto") == 0) return DS_OK;
    return ds_error(DS_ERR_INPUT, "cuda.weight_copy: \"%s\": expected auto, full or none", mode);
}

/* ---- cuBLASLt plans: descriptors and the heuristic's algorithm, made once per shape ---- */

static void lt_plan_destroy(LtPlan *p)
{
    cublasCheck(cublasLtMatrixLayoutDestroy(p->la));
    cublasCheck(cublasLtMatrixLayoutDestroy(p->lb));
    cublasCheck(cublasLtMatrixLayoutDestroy(p->ld));
    cublasCheck(cublasLtMatmulDescDestroy(p->desc));
}

static LtPlan *lt_plan_get(CudaContext *cx, int m, int n, int k, int transa, int transb,
                           const void *bias, int accumulate, int d_bf16)
{
    const int has_bias = bias != NULL;
    for (int i = 0; i < cx->plan_count; i++) {
        LtPlan *p = &cx->plans[i];
        if (p->m == m && p->n == n && p->k == k && p->transa == transa && p->transb == transb &&
            p->bias == has_bias && p->accumulate == accumulate && p->bf16 == cx->bf16 &&
            p->d_bf16 == d_bf16 && p->compute == cx->compute)
            return p;
    }
    LtPlan *p;
    if (cx->plan_count < LT_PLANS_MAX) {
        p = &cx->plans[cx->plan_count++];
    } else {
        p = &cx->plans[cx->plan_next];
        cx->plan_next = (cx->plan_next + 1) % LT_PLANS_MAX;
        lt_plan_destroy(p);
    }
    memset(p, 0, sizeof(*p));
    p->m = m, p->n = n, p->k = k, p->transa = transa, p->transb = transb, p->bias = has_bias;
    p->accumulate = accumulate, p->bf16 = cx->bf16, p->d_bf16 = d_bf16, p->compute = cx->compute;
    const cudaDataType_t ab = cx->bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, cx->compute, CUDA_R_32F));
    cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N,
                      tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    if (has_bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bias_type = d_bf16 ? CUDA_R_16BF : CUDA_R_32F; /* the bias is D's type */
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                   sizeof(epi)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                   &bias_type, sizeof(bias_type)));
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof(bias)));
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&p->la, ab, transa ? k : m, transa ? m : k,
                                           transa ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->lb, ab, transb ? n : k, transb ? k : n,
                                           transb ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->ld, d_bf16 ? CUDA_R_16BF : CUDA_R_32F, m, n, m));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                     &lt_workspace_size, sizeof(size_t)));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    /* a combination the library does not offer is NOT_SUPPORTED here: no algorithm (lt_matmul
     * then adds the bias itself) */
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(cx->lt, p->desc, p->la, p->lb, p->ld,
                                                           p->ld, pref, 1, &heur, &found);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED)
        found = 0;
    else
        cublasCheck(status);
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    p->found = found > 0;
    if (p->found) p->algo = heur.algo;
    return p;
}

template <typename ActT>
__global__ static void add_bias_kernel(void *out_, const void *bias, int M, int N)
{
    ActT *out = (ActT *)out_;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)M * N) act_st(out, i, act_ld(out, i) + act_ld((const ActT *)bias, i % N));
}

/* D[m, n] (column-major, ld m) = op(A) op(B) + beta * D, plus bias[m] on every column; A and B
 * fp32, or bf16 in bf16 mode; D and the bias fp32, or bf16 when d_bf16. On stream s with a
 * workspace of lt_workspace_size bytes that no other stream uses at the same time (no bias
 * there: lt_matmul, on the backend's stream, for that). */
static void lt_matmul_on(CudaContext *cx, cudaStream_t s, void *workspace, void *d, int d_bf16,
                         const void *a, const void *b, int m, int n, int k, int transa, int transb,
                         float beta)
{
    LtPlan *p = lt_plan_get(cx, m, n, k, transa, transb, NULL, beta != 0.0f, d_bf16);
    if (!p->found) {
        fprintf(stderr, "dstrain: error: %s:%d: cuBLASLt: no algorithm for %d x %d x %d\n",
                __FILE__, __LINE__, m, n, k);
        exit(1);
    }
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(cx->lt, p->desc, &alpha, a, p->la, b, p->lb, &beta, d, p->ld, d,
                               p->ld, &p->algo, workspace, lt_workspace_size, s));
}

static void lt_matmul(CudaContext *cx, void *d, int d_bf16, const void *a, const void *b,
                      const void *bias, int m, int n, int k, int transa, int transb, float beta)
{
    LtPlan *p = lt_plan_get(cx, m, n, k, transa, transb, bias, beta != 0.0f, d_bf16);
    if (!p->found && bias) { /* no fused bias for this shape: the product, then the bias */
        lt_matmul(cx, d, d_bf16, a, b, NULL, m, n, k, transa, transb, beta);
        if (d_bf16)
            add_bias_kernel<__nv_bfloat16>
                <<<ceil_div((long long)m * n, 256), 256, 0, cx->stream>>>(d, bias, n, m);
        else
            add_bias_kernel<float>
                <<<ceil_div((long long)m * n, 256), 256, 0, cx->stream>>>(d, bias, n, m);
        launchCheck();
        return;
    }
    if (!p->found) {
        fprintf(stderr, "dstrain: error: %s:%d: cuBLASLt: no algorithm for %d x %d x %d\n",
                __FILE__, __LINE__, m, n, k);
        exit(1);
    }
    if (bias)
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                   &bias, sizeof(bias)));
    const float alpha = 1.0f;
    cublasCheck(cublasLtMatmul(cx->lt, p->desc, &alpha, a, p->la, b, p->lb, &beta, d, p->ld, d,
                               p->ld, &p->algo, cx->lt_workspace, lt_workspace_size, cx->stream));
}

template <typename ActT>
__global__ static void fill_rows_kernel(void *out, const float *bias, int M, int N)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)M * N) return;
    act_st((ActT *)out, i, bias ? bias[i % N] : 0.0f);
}

static void matmul_forward(const Backend *be, Act *out, const Act *inp, const float *weight,
                           const float *bias, int M, int K, int N)
{
    CudaContext *cx = cuda_context(be);
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* empty contraction: the bias alone */
        LAUNCH_ACT(fill_rows_kernel, ceil_div((long long)M * N, 256), 256, 0, out, bias, M, N);
        return;
    }
    const void *w = weight, *b = bias;
    if (cx->bf16) { /* bf16 weight and bias (a bf16 output takes a bf16 bias), from the copy */
        w = weight_operand(cx, weight, (size_t)N * K, &cx->operand_weight);
        if (bias) b = weight_operand(cx, bias, (size_t)N, &cx->operand_bias);
    }
    lt_matmul(cx, out, cx->bf16, w, inp, b, N, M, K, 1, 0, 0.0f);
}

static void matmul_backward(const Backend *be, Act *dinp, float *dweight, float *dbias,
                            const Act *dout, const Act *inp, const float *weight, int M, int K,
                            int N, int accumulate)
{
    CudaContext *cx = cuda_context(be);
    if (M <= 0 || N <= 0) {
        if (dinp && M > 0 && K > 0 && !accumulate)
            cudaCheck(cudaMemsetAsync(dinp, 0, (size_t)M * K * act_bytes(cx), cx->stream));
        return;
    }
    if (K > 0) {
        if (dinp) {
            const void *w = cx->bf16 ? (const void *)weight_operand(cx, weight, (size_t)N * K,
                                                                    &cx->operand_weight)
                                     : weight;
            lt_matmul(cx, dinp, cx->bf16, w, dout, NULL, K, M, N, 0, 0, accumulate ? 1.0f : 0.0f);
        }
        lt_matmul(cx, dweight, 0, inp, dout, NULL, K, N, M, 0, 1, 1.0f);
    }
    if (dbias) column_sums_add(cx, dbias, dout, NULL, NULL, M, N);
}
