/* cuda_common.cuh: error checks for CUDA calls (file:line in every message) and small helpers
 * shared by the CUDA kernels. A failed check prints and exits 1: a CUDA error leaves the device
 * in an unknown state, so the job stops and the launcher takes the other ranks down. */
#ifndef DSTRAIN_CUDA_COMMON_CUH
#define DSTRAIN_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

static inline void cuda_check_at(cudaError_t err, const char *file, int line)
{
    if (err != cudaSuccess) {
        fprintf(stderr, "dstrain: error: %s:%d: CUDA: %s\n", file, line, cudaGetErrorString(err));
        exit(1);
    }
}
#define cudaCheck(call) cuda_check_at((call), __FILE__, __LINE__)

static inline int ceil_div(long long a, long long b) { return (int)((a + b - 1) / b); }

/* AdamW with EWC's device buffers (adamw.cu), held by a CUDA backend's context: the per-set
 * pointer tables and the per-block partial sums of the penalty; they only grow. */
typedef struct EwcScratch {
    const float **tables;
    int tables_cap;
    double *partial;
} EwcScratch;

#endif
