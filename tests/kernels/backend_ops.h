/* backend_ops.h: one table of op cases (tests/kernels/backend_ops.c), run on a backend X and on
 * the CPU backend (the reference) from the same seeded inputs, as ggml's test-backend-ops. Two
 * programs use it: tests/kernels/backend_ops_cpu.c (ctest: the CPU backend seen as a device, and
 * broken variants that must fail) and tests/gpu/test_gpu_backend_ops.c (the CUDA backend, fp32
 * and bf16 modes, on a GPU node). Not a unit test framework: it prints table rows and counts. */
#ifndef DSTRAIN_TESTS_BACKEND_OPS_H
#define DSTRAIN_TESTS_BACKEND_OPS_H

#include "kernels/ops.h"

typedef struct OpsRunOptions {
    const char *mode;   /* shown in the table's heading: "fp32", "bf16", ... */
    int exact;          /* 1: every float output must be the reference's bits (a CPU backend seen
                         * as a device); 0: within each output's tolerance */
    const char *filter; /* NULL: every entry; else only entries whose ops name contains it (the
                         * coverage check is then skipped) */
    int quiet;          /* 1: print only the rows that fail */
} OpsRunOptions;

typedef struct OpsRunResult {
    int checks;            /* rows judged */
    int failures;          /* rows that failed, of all kinds below */
    int value_failures;    /* an output off the reference (or NaN where it has a number) */
    int repeat_failures;   /* a second run on X gave other bits */
    int coverage_failures; /* an op X has that no entry covers, or an entry naming no op */
    int skipped;           /* cases whose ops X lacks */
} OpsRunResult;

/* Every case of the table (or those of o->filter) on x and on the CPU backend: one row a
 * compared output, one "same bits twice" row a case, then the coverage rows and a summary line.
 * Returns r->failures. */
int backend_ops_run(const Backend *x, const OpsRunOptions *o, OpsRunResult *r);

#endif
