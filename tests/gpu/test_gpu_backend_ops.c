/* test_gpu_backend_ops.c: the op table of tests/kernels/backend_ops.c on the CUDA backend against
 * the CPU backend, run on a GPU node by tests/gpu/run.sh (not by ctest: CI has no GPU). Twice:
 * fp32 mode (fp32 matmuls, TF32 off, and the fp32 attention kernels: agreement to fp32 rounding,
 * each output within its fp32 bar) and bf16 mode with the tensor-core attention (what device=cuda
 * runs by default: Act tensors in bf16, each output within its bf16 bar). Every case also runs
 * twice on the GPU for the same bits. Prints one table row per check; exit 1 if any failed.
 * usage: gpu_test_backend_ops [op] (only the entries whose ops name contains op) */
#include <stdio.h>

#include "kernels/ops.h"
#include "tests/kernels/backend_ops.h"
#include "trainer/common.h"

int main(int argc, char **argv)
{
    static const struct {
        const char *precision, *attention;
    } modes[] = {{"fp32", "simple"}, {"bf16", "flash"}};
    int failures = 0, checks = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(modes); i++) {
        const BackendOptions opt = {
            .device = "cuda", .precision = modes[i].precision, .attention = modes[i].attention};
        const Backend *gpu;
        if (backend_create(&opt, &gpu) != DS_OK) {
            fprintf(stderr, "gpu_test_backend_ops: %s\n", ds_last_error());
            return 1;
        }
        char mode[64];
        snprintf(mode, sizeof(mode), "%s, attention %s", modes[i].precision, modes[i].attention);
        OpsRunResult r;
        backend_ops_run(gpu, &(OpsRunOptions){.mode = mode, .filter = argc > 1 ? argv[1] : NULL},
                        &r);
        failures += r.failures;
        checks += r.checks;
        backend_free(gpu);
        printf("\n");
    }
    printf("gpu_test_backend_ops: %d of %d checks passed\n", checks - failures, checks);
    return failures ? 1 : 0;
}
