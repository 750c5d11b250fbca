/* context.cuh: everything one CUDA backend holds, in one place: its device and stream, the
 * options it was made with, its cuBLASLt handle, workspace and plans, the bf16 working copies of
 * attached weights, the scratch buffers that only grow, the experts' streams and grouped-GEMM
 * ring, and the counters tests read. backend_create makes one (cuda_backend_create, ops_cuda.cu)
 * with its own Backend table whose ctx points here; every op finds it by cuda_context(be), and
 * every host function of the kernel families takes it as its first parameter, cx. Two backends
 * made in one process (say fp32 and bf16, as the agreement tests do) share nothing but the
 * device. Part of ops_cuda.cu's translation unit, included there first; not a header to include
 * anywhere else. */

/* A device buffer of bf16 that only grows (the first step sees the largest shapes). As a
 * matmul's rounded operand it remembers which weight it holds (matmul.cuh's weight_operand). */
typedef struct Bf16Buffer {
    __nv_bfloat16 *ptr;
    size_t cap;       /* elements */
    const float *src; /* its first n elements are src rounded, and nothing wrote src since (only
                       * a weight inside an attached buffer, whose writers the backend sees);
                       * NULL: nothing reusable */
    size_t n;
} Bf16Buffer;

/* The working copies of attached parameter buffers (Backend.weights_attach).
 * The optimizer's AdamW ops write the copy beside the fp32 values they update (adamw.cu), so
 * after a step the copy already holds what weights_refresh would round: the refresh rounds only
 * what something else wrote since the last one (the memory ops and scale mark the ranges they
 * write here, kernels/dirty_ranges.h keeping them few; writers outside the backend, a
 * collective, call weights_touched: the whole buffer). Elements no AdamW call reached (padding,
 * frozen tensors) were not written at all. */
#define WEIGHT_COPIES_MAX 16
typedef struct WeightCopy {
    const float *params; /* NULL: free slot */
    size_t n;
    __nv_bfloat16 *copy; /* NULL until the first bf16 refresh */
    int fresh;           /* copy holds the values of the last refresh in bf16 mode */
    int stale;           /* the whole copy is behind the buffer: rounded whole at the refresh */
    DirtyRanges dirty;   /* else: the elements behind */
} WeightCopy;

/* A cuBLASLt matmul made once per shape and mode: descriptors and the heuristic's algorithm. */
typedef struct LtPlan {
    int m, n, k, transa, transb, bias, accumulate, bf16, d_bf16;
    cublasComputeType_t compute;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    int found; /* the heuristic returned an algorithm */
} LtPlan;

#define LT_PLANS_MAX 256

/* One problem as lt_matmul takes it: D[m, n] (ld m) = op(A) op(B) + beta D, A's and B's leading
 * dimensions those of dense matrices (transa ? k : m, transb ? n : k). */
typedef struct GroupedGemm {
    int count, cap;
    cublasOperation_t *ta, *tb;
    int *m, *n, *k, *lda, *ldb, *ldc, *size;
    float *alpha, *beta;
    const void **a, **b;
    void **d;
} GroupedGemm;

#define GROUPED_SLOTS 64

/* How a MoE layer's routed experts run: the cuda.experts option (experts.cuh). */
enum { EXPERTS_STREAMS, EXPERTS_GROUPED, EXPERTS_LOOP };
/* The streams the experts' matmuls are spread over (experts.cuh). */
#define EXPERT_STREAMS 4

/* cuda.attention (attention_fp32.cuh): */
enum {
    ATTENTION_FLASH,  /* the tensor-core kernels where they suit (wgmma on Hopper for head_dim
                       * 128, else mma.sync), else the fp32 kernels */
    ATTENTION_SIMPLE, /* the fp32 kernels everywhere */
    ATTENTION_MMA     /* the mma.sync kernels even where the wgmma ones would run: the fallback,
                       * kept testable on Hopper */
};

typedef struct CudaContext {
    const Backend *be;   /* the table this context belongs to (ops called from helpers) */
    int device;          /* the GPU current when the context was made (the caller keeps it so) */
    cudaStream_t stream; /* every op's stream: the legacy default stream, so the synchronous
                          * copies of the mem_* ops order with the kernels; it must stay one
                          * stream for all backends while the persistent attention forward's
                          * tile counter is process-wide (attention_wgmma.cu, docs/gpu.md) */
    size_t smem_optin;   /* shared memory a block may ask for on this device, bytes */

    /* the options (cuda_context_options) */
    int bf16;                    /* precision bf16: bf16 matmul operands and Act storage */
    cublasComputeType_t compute; /* fp32 or TF32 products (fp32 modes) */
    int attention_kind;          /* ATTENTION_* */
    int experts_kind;            /* EXPERTS_* */
    int copies_kept;             /* cuda.weight_copy: 1 full, 0 none */

    /* scratch (act.cuh): partial sums and staging, one op at a time */
    void *scratch;
    size_t scratch_size;

    /* matmuls (matmul.cuh) */
    cublasLtHandle_t lt;
    void *lt_workspace; /* lt_workspace_size bytes */
    LtPlan plans[LT_PLANS_MAX];
    int plan_count, plan_next;               /* when full, plans are replaced round robin */
    Bf16Buffer operand_weight, operand_bias; /* a weight and bias outside every copy, rounded */
    WeightCopy copies[WEIGHT_COPIES_MAX];
    long long refresh_rounded; /* elements the refreshes rounded, all buffers */
    long long operand_rounded; /* elements matmuls rounded into their operands */

    /* AdamW with EWC (adamw.cu): its pointer tables and partial sums */
    EwcScratch ewc;

    /* attention (attention_fp32.cuh) */
    long long attention_flash_calls; /* calls that ran on the tensor-core kernels */

    /* routed experts (experts.cuh) */
    cublasHandle_t grouped_handle;
    GroupedGemm grouped;
    const void **grouped_host_ptrs; /* pinned: GROUPED_SLOTS slots of 3 * cap pointers */
    const void **grouped_dev_ptrs;  /* the same on the device */
    cudaEvent_t grouped_done[GROUPED_SLOTS];
    int grouped_slot_used[GROUPED_SLOTS], grouped_next_slot;
    long long grouped_calls, grouped_fallbacks;
    const void **expert_ptrs; /* operand pointers of one call's experts (3 E) */
    int expert_ptrs_cap;
    cudaStream_t expert_stream[EXPERT_STREAMS];
    void *expert_workspace[EXPERT_STREAMS];
    cudaEvent_t expert_forked, expert_joined[EXPERT_STREAMS];
} CudaContext;

static inline CudaContext *cuda_context(const Backend *be)
{
    return (CudaContext *)be->ctx;
}
