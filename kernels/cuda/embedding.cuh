/* embedding.cuh: embedding_forward / embedding_backward (whole and vocab-sharded tables;
 * deterministic backward through a stable radix sort).
 * Part of ops_cuda.cu's translation unit, included there once and in order (as llm.c's
 * llmc kernel files are in train_gpt2.cu): it uses what comes before it (context.cuh's
 * CudaContext, which its host functions take as cx), so it is not a header to include anywhere
 * else. */

/* ---------------------------------------------------------------------------------------------
 * embedding. Backward adds each token's gradient rows into its table row in token order, as the
 * CPU does (the same bits), with no atomics: the positions are sorted by token with CUB's radix
 * sort, which is stable (so each token's positions stay ascending) and deterministic; then the
 * first slot of each token's run walks the run, one thread per column, so every row of the table
 * is read and written once. */

/* Rows [vocab_start, vocab_start + V) of the vocabulary are in table; other tokens give zero
 * rows (forward) and no gradient (backward). The unsharded ops are vocab_start 0, V unbounded. */
__global__ static void embedding_forward_kernel(float *out, const int32_t *tokens,
                                                const float *table, int N, int C, int vocab_start,
                                                int V)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    size_t row = i / C, col = i % C;
    long long t = (long long)tokens[row] - vocab_start;
    out[i] = t >= 0 && t < V ? table[(size_t)t * C + col] : 0.0f;
}

__global__ static void iota_kernel(int32_t *x, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = i;
}

/* sorted[s], position[s]: the tokens in ascending order and where each stood. */
__global__ static void embedding_backward_kernel(float *dtable, const float *dout,
                                                 const int32_t *sorted, const int32_t *position,
                                                 int N, int C, int vocab_start, int V)
{
    const int s = blockIdx.x, col = blockIdx.y * blockDim.x + threadIdx.x;
    const int32_t token = sorted[s];
    if ((s > 0 && sorted[s - 1] == token) || col >= C) return; /* not the first of its run */
    const long long t = (long long)token - vocab_start;
    if (t < 0 || t >= V) return;
    float acc = dtable[(size_t)t * C + col];
    for (int j = s; j < N && sorted[j] == token; j++)
        acc += dout[(size_t)position[j] * C + col];
    dtable[(size_t)t * C + col] = acc;
}

static void embedding_forward_shard(const Backend *be, float *out, const int32_t *tokens,
                                    const float *table, int N, int C, int vocab_start, int V)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0 || C <= 0) return;
    embedding_forward_kernel<<<ceil_div((long long)N * C, 256), 256, 0, cx->stream>>>(
        out, tokens, table, N, C, vocab_start, V);
    launchCheck();
}

static void embedding_backward_shard(const Backend *be, float *dtable, const float *dout,
                                     const int32_t *tokens, int N, int C, int vocab_start, int V)
{
    CudaContext *cx = cuda_context(be);
    if (N <= 0 || C <= 0) return;
    /* scratch: sorted tokens, positions in and out (each 256-byte aligned), CUB's temporary */
    size_t sort_bytes = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, tokens, (int32_t *)NULL,
                                              (const int32_t *)NULL, (int32_t *)NULL, N, 0, 32,
                                              cx->stream));
    const size_t vec = ((size_t)N * sizeof(int32_t) + 255) / 256 * 256;
    unsigned char *scratch = (unsigned char *)scratch_get(cx, 3 * vec + sort_bytes);
    int32_t *sorted = (int32_t *)scratch, *order = (int32_t *)(scratch + vec);
    int32_t *position = (int32_t *)(scratch + 2 * vec);
    iota_kernel<<<ceil_div(N, 256), 256, 0, cx->stream>>>(order, N);
    launchCheck();
    cudaCheck(cub::DeviceRadixSort::SortPairs(scratch + 3 * vec, sort_bytes, tokens, sorted, order,
                                              position, N, 0, 32, cx->stream));
    embedding_backward_kernel<<<dim3(N, ceil_div(C, 256)), 256, 0, cx->stream>>>(
        dtable, dout, sorted, position, N, C, vocab_start, V);
    launchCheck();
}

static void embedding_forward(const Backend *be, float *out, const int32_t *tokens,
                              const float *table, int N, int C)
{
    embedding_forward_shard(be, out, tokens, table, N, C, 0, INT_MAX);
}

static void embedding_backward(const Backend *be, float *dtable, const float *dout,
                               const int32_t *tokens, int N, int C)
{
    embedding_backward_shard(be, dtable, dout, tokens, N, C, 0, INT_MAX);
}
