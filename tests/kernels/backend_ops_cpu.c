/* backend_ops_cpu.c: the op table of backend_ops.c in CI, where there is no GPU. X is the CPU
 * backend seen as a device (host_memory 0, every copy between host and "device" counted): every
 * case must give the reference's bits, through the same upload and download a device backend
 * takes. Then two broken variants the harness must fail, so that it is known to be able to: an op
 * whose output is off by 1e-3 relative (its value rows fail, its repeat rows pass), and an op
 * whose output moves by a few 1e-7 on each call (within tolerance, but never the same bits twice).
 * Not Criterion: a plain program, exit 1 when any of that does not hold. */
#include <stdio.h>
#include <string.h>

#include "kernels/ops.h"
#include "tests/kernels/backend_ops.h"
#include "tests/kernels/staged_backend.h"

/* rmsnorm_forward with its output off by 1e-3 relative (rstd right). */
static void rmsnorm_forward_off(const Backend *be, Act *out, float *rstd, const float *inp,
                                const float *weight, int M, int C, float eps)
{
    backend_cpu()->rmsnorm_forward(backend_cpu(), out, rstd, inp, weight, M, C, eps);
    float *o = out;
    for (size_t i = 0; i < (size_t)M * C; i++)
        o[i] *= 1.0f + 1e-3f;
}

/* swiglu_forward whose output grows by 2^-22 relative more on each call. */
static void swiglu_forward_drifting(const Backend *be, Act *out, const Act *gate, const Act *up,
                                    size_t n)
{
    static int calls;
    backend_cpu()->swiglu_forward(backend_cpu(), out, gate, up, n);
    const float f = 1.0f + (float)++calls * 0x1p-22f;
    float *o = out;
    for (size_t i = 0; i < n; i++)
        o[i] *= f;
}

static int failed;

static void expect(int ok, const char *what)
{
    printf("backend_ops_cpu: %s: %s\n", what, ok ? "PASS" : "FAIL");
    failed |= !ok;
}

int main(void)
{
    OpsRunResult r;
    StagedCounts counts;
    Backend staged = staged_backend("cpu-staged", &counts);
    backend_ops_run(&staged, &(OpsRunOptions){.mode = "fp32, same bits", .exact = 1}, &r);
    expect(r.failures == 0 && r.checks > 0, "the CPU seen as a device gives the reference's bits");
    expect(counts.to_device > 0 && counts.to_host > 0, "every case went through the copies");
    expect(r.skipped > 0, "cases of ops it lacks (mixed precision) are skipped, not failed");

    Backend off = staged_backend("cpu-rmsnorm-off-1e-3", &counts);
    off.rmsnorm_forward = rmsnorm_forward_off;
    backend_ops_run(&off,
                    &(OpsRunOptions){.mode = "broken: must fail", .filter = "rmsnorm_forward"}, &r);
    expect(r.value_failures > 0 && r.repeat_failures == 0,
           "an output off by 1e-3 fails its value rows");

    Backend drifting = staged_backend("cpu-swiglu-drifting", &counts);
    drifting.swiglu_forward = swiglu_forward_drifting;
    backend_ops_run(&drifting,
                    &(OpsRunOptions){.mode = "broken: must fail", .filter = "swiglu_forward"}, &r);
    expect(r.value_failures == 0 && r.repeat_failures > 0,
           "an output within tolerance but other bits each call fails same bits twice");
    return failed ? 1 : 0;
}
