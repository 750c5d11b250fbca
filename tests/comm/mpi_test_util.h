/* mpi_test_util.h: run a program under mpirun from a Criterion test. Sets the environment Open
 * MPI needs in a container (root, more ranks than cores) and the LSan suppressions for MPI's
 * own allocations, so the sanitizer build reports only dstrain's leaks. */
#ifndef DSTRAIN_MPI_TEST_UTIL_H
#define DSTRAIN_MPI_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static inline void mpi_test_env(void)
{
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 1);
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", 1);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("LSAN_OPTIONS", "suppressions=" DSTRAIN_SOURCE_DIR "/tests/comm/lsan-mpi.supp", 1);
    /* Open MPI's plugins have no frame pointers: the slow unwinder reaches libmpi's frames, so
     * that the suppressions match (no effect outside the sanitizer build) */
    const char *asan = getenv("ASAN_OPTIONS");
    if (!asan || !strstr(asan, "fast_unwind_on_malloc")) {
        char opts[1024];
        snprintf(opts, sizeof(opts), "%s%sfast_unwind_on_malloc=0", asan ? asan : "",
                 asan && *asan ? ":" : "");
        setenv("ASAN_OPTIONS", opts, 1);
    }
}

/* Run "timeout 120 mpirun -np np <command>" with output to log; returns the exit code
 * (-1 when it did not exit normally). */
static inline int mpi_test_run(int np, const char *command, const char *log)
{
    mpi_test_env();
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "timeout 120 mpirun -np %d %s >%s 2>&1", np, command, log);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* The whole file as a string (caller frees), or NULL. */
static inline char *mpi_test_slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

#endif
