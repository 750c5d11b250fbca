/* test_comm.c: the process grid and every collective, in a plain process (world of one, no MPI)
 * and under mpirun at np = 1, 2 and 4. Under mpirun this same executable runs as a worker (a
 * constructor takes over before Criterion's main when DSTRAIN_COMM_WORKER is set), checks
 * values against closed forms on every rank and exits non-zero on the first mismatch. With
 * DSTRAIN_COMM_DEVICE=cuda (a GPU node, one rank per GPU, see tests/parallel/gpu_nccl.sh) the
 * same checks run on device buffers, that is over NCCL. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm/comm.h"
#include "kernels/ops.h"
#include "mpi_test_util.h"
#include "trainer/common.h"

/* ---- the worker, run by mpirun ----------------------------------------------------------- */

static int failures, checks;

#define WCHECK(cond, ...)                                                                          \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "rank %d: check failed: %s: ", rank, #cond);                           \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* Device buffers when the worker runs over NCCL: each collective's buffer is copied to the GPU,
 * reduced there and copied back. */
static const Backend *device;

static void *dev_in(void *host, size_t bytes)
{
    if (!device) return host;
    void *d = device->mem_alloc(device, bytes);
    if (d) device->mem_to_device(device, d, host, bytes);
    return d;
}

static void dev_out(void *host, void *d, size_t bytes)
{
    if (!device || !d) return;
    device->mem_to_host(device, host, d, bytes);
    device->mem_free(device, d);
}

/* c(buf) through a device copy of buf when there is a device */
#define ON_DEVICE(buf, bytes, call)                                                                \
    do {                                                                                           \
        void *dev_buf_ = dev_in((buf), (bytes));                                                   \
        int dev_status_ = call;                                                                    \
        dev_out((buf), dev_buf_, (bytes));                                                         \
        WCHECK(dev_status_ == DS_OK, "%s", ds_last_error());                                       \
    } while (0)

/* All-to-all with uneven counts, some of them 0, a member's block to itself among them: member
 * r sends (r + s + 1) % 3 elements to member s, element e being r * 100 + s * 10 + e (as the
 * type's bits: nothing is reduced, so bf16 travels as 16-bit words). */
static void check_all_to_allv(const CommGroup *g, int rank, const char *name, CommType type)
{
    const int n = g->size, me = g->rank;
    const size_t esize = type == COMM_BF16 ? 2 : 4;
    size_t sc[64], rc[64], sn = 0, rn = 0;
    for (int r = 0; r < n; r++) {
        sc[r] = (size_t)(me + r + 1) % 3;
        rc[r] = (size_t)(r + me + 1) % 3;
        sn += sc[r];
        rn += rc[r];
    }
    unsigned char *send = calloc(sn + 1, esize), *recv = calloc(rn + 1, esize);
    size_t at = 0;
    for (int r = 0; r < n; r++)
        for (size_t e = 0; e < sc[r]; e++, at++) {
            const unsigned v = (unsigned)(me * 100 + r * 10 + (int)e);
            if (esize == 2)
                ((uint16_t *)send)[at] = (uint16_t)v;
            else
                ((float *)send)[at] = (float)v;
        }
    void *dsend = dev_in(send, (sn + 1) * esize), *drecv = dev_in(recv, (rn + 1) * esize);
    const int status = comm_all_to_allv(g, dsend, sc, drecv, rc, type);
    dev_out(recv, drecv, (rn + 1) * esize);
    dev_out(send, dsend, (sn + 1) * esize);
    WCHECK(status == DS_OK, "%s all-to-all: %s", name, ds_last_error());
    at = 0;
    for (int r = 0; r < n; r++)
        for (size_t e = 0; e < rc[r]; e++, at++) {
            const unsigned want = (unsigned)(r * 100 + me * 10 + (int)e);
            const unsigned got =
                esize == 2 ? ((uint16_t *)recv)[at] : (unsigned)((float *)recv)[at];
            WCHECK(got == want, "%s all-to-all (%s) from member %d [%zu] = %u, expected %u", name,
                   esize == 2 ? "bf16" : "f32", r, e, got, want);
        }
    free(send);
    free(recv);
}

/* Collectives on one group: values depend on the member rank so that misplaced blocks show. */
static void check_group(const CommGroup *g, int rank, const char *name)
{
    const int n = g->size;
    /* all-reduce sum and max, float and double and int64 */
    float f[5];
    double d[3];
    int64_t i64[2];
    for (int j = 0; j < 5; j++)
        f[j] = (float)(g->rank + 1) * (float)(j + 1);
    for (int j = 0; j < 3; j++)
        d[j] = 0.5 * (g->rank + 1) + j;
    i64[0] = (int64_t)g->rank + ((int64_t)1 << 40);
    i64[1] = -g->rank;
    ON_DEVICE(f, sizeof(f), comm_all_reduce(g, dev_buf_, 5, COMM_F32, COMM_SUM));
    ON_DEVICE(d, sizeof(d), comm_all_reduce(g, dev_buf_, 3, COMM_F64, COMM_MAX));
    ON_DEVICE(i64, sizeof(i64), comm_all_reduce(g, dev_buf_, 2, COMM_I64, COMM_SUM));
    const float tri = (float)n * (n + 1) / 2;
    for (int j = 0; j < 5; j++)
        WCHECK(f[j] == tri * (j + 1), "%s all-reduce sum [%d] = %g, expected %g", name, j, f[j],
               tri * (j + 1));
    for (int j = 0; j < 3; j++)
        WCHECK(d[j] == 0.5 * n + j, "%s all-reduce max [%d] = %g", name, j, d[j]);
    WCHECK(i64[0] == (int64_t)n * (n - 1) / 2 + n * ((int64_t)1 << 40), "%s i64 sum %lld", name,
           (long long)i64[0]);
    WCHECK(i64[1] == -(int64_t)n * (n - 1) / 2, "%s i64 sum %lld", name, (long long)i64[1]);

    /* reduce-scatter: block b of member r holds r*100 + b*10 + e; the sum of block b lands at
     * this member's block */
    const size_t count = 7;
    float *buf = calloc((size_t)n * count, sizeof(float));
    for (int b = 0; b < n; b++)
        for (size_t e = 0; e < count; e++)
            buf[b * count + e] = g->rank * 100.0f + b * 10.0f + e;
    ON_DEVICE(buf, n * count * sizeof(float), comm_reduce_scatter(g, dev_buf_, count, COMM_F32));
    for (size_t e = 0; e < count; e++) {
        float want = 100.0f * n * (n - 1) / 2 + n * (g->rank * 10.0f + e);
        WCHECK(buf[g->rank * count + e] == want, "%s reduce-scatter [%zu] = %g, expected %g", name,
               e, buf[g->rank * count + e], want);
    }
    /* all-gather: each member contributes its block */
    for (size_t e = 0; e < count; e++)
        buf[g->rank * count + e] = g->rank * 1000.0f + e;
    ON_DEVICE(buf, n * count * sizeof(float), comm_all_gather(g, dev_buf_, count, COMM_F32));
    for (int b = 0; b < n; b++)
        for (size_t e = 0; e < count; e++)
            WCHECK(buf[b * count + e] == b * 1000.0f + e, "%s all-gather block %d [%zu] = %g", name,
                   b, e, buf[b * count + e]);
    free(buf);
    /* broadcast from the last member, bytes */
    char text[32];
    snprintf(text, sizeof(text), "from member %d", g->rank);
    ON_DEVICE(text, sizeof(text), comm_broadcast(g, dev_buf_, sizeof(text), COMM_U8, n - 1));
    char want[32];
    snprintf(want, sizeof(want), "from member %d", n - 1);
    WCHECK(strcmp(text, want) == 0, "%s broadcast got \"%s\"", name, text);
    check_all_to_allv(g, rank, name, COMM_F32);
    check_all_to_allv(g, rank, name, COMM_BF16);
    WCHECK(comm_barrier(g) == DS_OK, "%s", ds_last_error());
}

static int worker_main(void)
{
    const int tp = atoi(getenv("DSTRAIN_COMM_WORKER"));
    ProcessGrid g;
    int status = comm_grid_init(&g, tp, 0);
    int rank = g.world_rank;
    if (status != DS_OK) {
        /* the validation path: every rank reports and the job exits 2 */
        fprintf(stderr, "dstrain: error: %s\n", ds_last_error());
        comm_grid_free(&g);
        return 2;
    }
    const char *on = getenv("DSTRAIN_COMM_DEVICE");
    if (on && strcmp(on, "cuda") == 0) {
#ifdef DSTRAIN_HAVE_CUDA
        if (comm_grid_enable_nccl(&g) != DS_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, ds_last_error());
            return 1;
        }
        if (backend_create(&(BackendOptions){.device = "cuda", .precision = "fp32"}, &device) !=
            DS_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, ds_last_error());
            return 1;
        }
#else
        fprintf(stderr, "DSTRAIN_COMM_DEVICE=cuda: built without CUDA\n");
        return 1;
#endif
    }
    WCHECK(g.tp_rank == rank % tp && g.dp_rank == rank / tp, "tp_rank %d dp_rank %d", g.tp_rank,
           g.dp_rank);
    WCHECK(g.tp.size == tp && g.dp.size == g.world_size / tp, "tp size %d dp size %d", g.tp.size,
           g.dp.size);
    WCHECK(g.tp.rank == g.tp_rank && g.dp.rank == g.dp_rank, "group ranks %d %d", g.tp.rank,
           g.dp.rank);
    WCHECK((g.world_size == 1) == (g.world.impl == NULL), "world impl");
    check_group(&g.world, rank, "world");
    check_group(&g.tp, rank, "tp");
    check_group(&g.dp, rank, "dp");
    /* a split of tp into pairs of consecutive members, as the model does for shared kv heads */
    CommGroup pairs;
    WCHECK(comm_group_split(&g.tp, g.tp_rank / 2, g.tp_rank, &pairs) == DS_OK, "%s",
           ds_last_error());
    WCHECK(pairs.size == (tp >= 2 ? 2 : 1) && pairs.rank == g.tp_rank % 2, "pairs %d/%d",
           pairs.rank, pairs.size);
    check_group(&pairs, rank, "pairs");
    /* which members share a pair: the sum of world ranks tells */
    int64_t who = rank;
    comm_all_reduce(&pairs, &who, 1, COMM_I64, COMM_SUM);
    int64_t want = tp >= 2 ? 2 * (rank - rank % 2) + 1 : rank;
    WCHECK(who == want, "pair sum %lld, expected %lld", (long long)who, (long long)want);
    comm_group_free(&pairs);
    /* expert parallelism: dp split into groups of 2 consecutive ranks (ep) and the ranks that
     * hold the same experts (edp), as parallel.ep = 2 makes them */
    if (g.dp_size % 2 == 0) {
        WCHECK(comm_grid_split_experts(&g, 2) == DS_OK, "%s", ds_last_error());
        WCHECK(g.ep_size == 2 && g.ep_rank == g.dp_rank % 2 && g.edp_size == g.dp_size / 2 &&
                   g.edp_rank == g.dp_rank / 2,
               "ep %d/%d edp %d/%d", g.ep_rank, g.ep_size, g.edp_rank, g.edp_size);
        check_group(&g.ep, rank, "ep");
        check_group(comm_edp(&g), rank, "edp");
        /* the ep partner: the other dp rank of the pair, the same tp rank */
        int64_t who = rank;
        comm_all_reduce(&g.ep, &who, 1, COMM_I64, COMM_SUM);
        const int64_t partner = rank + (g.ep_rank == 0 ? tp : -tp);
        WCHECK(who == rank + partner, "ep pair sum %lld, expected %lld", (long long)who,
               (long long)(rank + partner));
    }
    printf("rank %d of %d (tp %d/%d, dp %d/%d, local %d): %d checks%s, %d failed\n", rank,
           g.world_size, g.tp_rank, g.tp_size, g.dp_rank, g.dp_size, g.local_rank, checks,
           device ? " on device buffers" : "", failures);
    fflush(stdout);
    backend_free(device);
    comm_grid_free(&g);
    return failures ? 1 : 0;
}

__attribute__((constructor)) static void maybe_worker(void)
{
    if (getenv("DSTRAIN_COMM_WORKER")) exit(worker_main());
}

/* ---- the tests ---------------------------------------------------------------------------- */

static void run_workers(int np, int tp, int expect_rc, char **out)
{
    char cmd[1024], log[512];
    snprintf(log, sizeof(log), DSTRAIN_TEST_TMP "/comm-np%d-tp%d.log", np, tp);
    if (system("mkdir -p " DSTRAIN_TEST_TMP) != 0) cr_assert_fail("mkdir");
    char exe[512];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    cr_assert(len > 0);
    exe[len] = 0;
    snprintf(cmd, sizeof(cmd), "-x DSTRAIN_COMM_WORKER=%d %s", tp, exe);
    int rc = mpi_test_run(np, cmd, log);
    *out = mpi_test_slurp(log);
    cr_assert_eq(rc, expect_rc, "mpirun -np %d (tp %d) exited %d, expected %d:\n%s", np, tp, rc,
                 expect_rc, *out ? *out : "");
}

Test(comm, single_process_without_launcher_needs_no_mpi)
{
    /* ctest starts this without a launcher: a world of one whose collectives do nothing */
    cr_assert_not(comm_launched());
    ProcessGrid g;
    cr_assert_eq(comm_grid_init(&g, 1, 0), DS_OK);
    cr_assert_eq(g.world_size, 1);
    cr_assert_eq(g.mpi_initialized, 0);
    cr_assert_eq(g.dp_size, 1);
    float x[3] = {1, 2, 3};
    cr_assert_eq(comm_all_reduce(&g.world, x, 3, COMM_F32, COMM_SUM), DS_OK);
    cr_assert_eq(comm_reduce_scatter(&g.dp, x, 3, COMM_F32), DS_OK);
    cr_assert_eq(comm_all_gather(&g.tp, x, 3, COMM_F32), DS_OK);
    cr_assert(x[0] == 1 && x[1] == 2 && x[2] == 3);
    comm_abort(&g, 2); /* returns: nothing to abort */
    comm_grid_free(&g);
}

Test(comm, single_process_rejects_a_layout_it_cannot_have)
{
    ProcessGrid g;
    cr_assert_eq(comm_grid_init(&g, 2, 0), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "parallel.tp: 2 does not divide the world size 1"), "%s",
              ds_last_error());
    comm_grid_free(&g);
    cr_assert_eq(comm_grid_init(&g, 1, 2), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "parallel.tp x parallel.dp: 1 x 2 = 2 ranks"), "%s",
              ds_last_error());
    comm_grid_free(&g);
}

Test(comm, launcher_is_detected_from_the_environment)
{
    cr_assert_not(comm_launched());
    setenv("SLURM_STEP_NUM_TASKS", "1", 1);
    cr_assert_not(comm_launched(), "one srun task is a plain process");
    setenv("SLURM_STEP_NUM_TASKS", "4", 1);
    cr_assert(comm_launched());
    unsetenv("SLURM_STEP_NUM_TASKS");
    setenv("PMIX_RANK", "0", 1);
    cr_assert(comm_launched());
    unsetenv("PMIX_RANK");
}

Test(comm, collectives_at_np1_under_mpirun)
{
    char *out;
    run_workers(1, 1, 0, &out);
    cr_assert(strstr(out, "rank 0 of 1 (tp 0/1, dp 0/1, local 0):"), "%s", out);
    cr_assert(strstr(out, "0 failed"), "%s", out);
    free(out);
}

Test(comm, collectives_at_np2_tp1_and_tp2)
{
    char *out;
    run_workers(2, 1, 0, &out);
    cr_assert(strstr(out, "rank 1 of 2 (tp 0/1, dp 1/2, local 1):"), "%s", out);
    free(out);
    run_workers(2, 2, 0, &out);
    cr_assert(strstr(out, "rank 1 of 2 (tp 1/2, dp 0/1, local 1):"), "%s", out);
    free(out);
}

Test(comm, collectives_at_np4_every_layout)
{
    char *out;
    const int tps[] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        run_workers(4, tps[i], 0, &out);
        char want[128];
        snprintf(want, sizeof(want), "rank 3 of 4 (tp %d/%d, dp %d/%d, local 3):", 3 % tps[i],
                 tps[i], 3 / tps[i], 4 / tps[i]);
        cr_assert(strstr(out, want), "want \"%s\" in:\n%s", want, out);
        free(out);
    }
}

Test(comm, np4_with_tp3_is_a_clear_error_not_a_hang)
{
    char *out;
    run_workers(4, 3, 2, &out);
    cr_assert(strstr(out, "dstrain: error: parallel.tp: 3 does not divide the world size 4"), "%s",
              out);
    free(out);
}
