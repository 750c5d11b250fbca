/* test_stale_cleanup.c: opening the trainer's checkpoint writer removes the temporary
 * directories of crashed runs, and never the shard another rank of this run has just written.
 * Under mpirun -np 2 this same executable runs as a worker (a constructor takes over before
 * Criterion's main when DSTRAIN_STALE_WORKER names the run directory): rank 1 opens its writer
 * and saves at once, rank 0 holds back until rank 1's shard is on disk (or 2 s, when a correct
 * train_ckpt_open keeps rank 1 from writing that early), then opens. The checkpoint must be
 * complete, verify, read back the exact values, and the stale directory must be gone. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "trainer/train_ckpt.h"
#include "comm/comm.h"
#include "tests/comm/mpi_test_util.h"

#define STALE_DIR "step-00000001.tmp-99999999" /* a crashed run's, at the step saved here */

/* The state both sides compute: tiny preset, seeded weights, moments by formula. */
static int state_init(ModelConfig *mc, Model *m, Optimizer *opt)
{
    DS_TRY(model_preset("tiny", mc));
    DS_TRY(model_init(m, mc, backend_cpu(), 1, 16));
    model_init_weights(m, 5, 0.02f);
    DS_TRY(optim_init(opt, &m->table));
    for (size_t i = 0; i < m->table.total; i++) {
        opt->m[i] = (float)(i % 1000) * 1e-3f;
        opt->v[i] = (float)(i % 777) * 1e-4f;
    }
    opt->t = 1;
    return DS_OK;
}

static void config_for(Config *cfg, const char *run_dir)
{
    config_set_defaults(cfg);
    snprintf(cfg->run_dir, sizeof(cfg->run_dir), "%s", run_dir);
    cfg->export_enabled = 0;
    cfg->train_steps = 1;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Wait until path exists or seconds have passed; 1 when it exists. */
static int wait_for_file(const char *path, double seconds)
{
    const double deadline = ds_now() + seconds;
    while (!file_exists(path)) {
        if (ds_now() > deadline) return 0;
        usleep(10000);
    }
    return 1;
}

/* ---- the worker, run by mpirun ----------------------------------------------------------- */

/* CkptAllMinFn over the world, as the drivers pass it. */
static int worker_all_min(void *group, int local, int *global)
{
    int64_t v = -(int64_t)local;
    DS_TRY(comm_all_reduce((const CommGroup *)group, &v, 1, COMM_I64, COMM_MAX));
    *global = (int)-v;
    return DS_OK;
}

static int worker_main(const char *run_dir)
{
    ProcessGrid g;
    if (comm_grid_init(&g, 1, 0) != DS_OK || g.world_size != 2) {
        fprintf(stderr, "worker: %s (world %d)\n", ds_last_error(), g.world_size);
        return 2;
    }
    const int rank = g.world_rank;
    Config cfg;
    config_for(&cfg, run_dir);
    ModelConfig mc;
    Model m = {0};
    Optimizer opt = {0};
    int status = state_init(&mc, &m, &opt);
    int64_t tag = (int64_t)getpid();
    if (status == DS_OK) status = comm_broadcast(&g.world, &tag, 1, COMM_I64, 0);
    const size_t half = m.table.total / 2;
    TrainCkptWorld world = {
        .layout = {.tp = 1, .dp = 2, .zero = 1, .tp_rank = 0, .dp_rank = g.dp_rank},
        .all_min = worker_all_min,
        .comm_ctx = &g.world,
        .tmp_tag = (long)tag,
        /* ZeRO ranges, so that rank 1's shard holds half of each moment */
        .optim_begin = rank ? half : 0,
        .optim_end = rank ? m.table.total : half,
    };
    char marker[CONFIG_STR_MAX + 32], shard[CONFIG_STR_MAX + 96];
    snprintf(marker, sizeof(marker), "%s/rank1-opens", run_dir);
    snprintf(shard, sizeof(shard), "%s/checkpoints/step-00000001.tmp-%ld/rank-tp0-dp1.json",
             run_dir, (long)tag);
    if (status == DS_OK && rank == 1) {
        FILE *f = fopen(marker, "w");
        if (f) fclose(f);
    }
    if (status == DS_OK && rank == 0 && wait_for_file(marker, 60))
        printf("rank 0: rank 1's shard %s after waiting\n",
               wait_for_file(shard, 2) ? "was written" : "was not written");
    TrainCkpt *tc = NULL;
    int start = -1;
    if (status == DS_OK)
        status = train_ckpt_open(&cfg, run_dir, &mc, &m, &opt, 1, &world, &tc);
    if (status == DS_OK) status = train_ckpt_resume(tc, &start);
    if (status == DS_OK) status = train_ckpt_finish(tc, 1, 1e-3f);
    if (status != DS_OK)
        fprintf(stderr, "rank %d: %s\n", rank, ds_last_error());
    else
        printf("rank %d: saved step 1\n", rank);
    fflush(stdout);
    train_ckpt_close(tc);
    optim_free(&opt);
    model_free(&m);
    comm_grid_free(&g);
    return status == DS_OK ? 0 : 1;
}

__attribute__((constructor)) static void maybe_worker(void)
{
    const char *run_dir = getenv("DSTRAIN_STALE_WORKER");
    if (run_dir) exit(worker_main(run_dir));
}

/* ---- the tests ---------------------------------------------------------------------------- */

static char run_dir[512];

static void setup(void)
{
    snprintf(run_dir, sizeof(run_dir), "%s/checkpoint_stale_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[1400];
    snprintf(cmd, sizeof(cmd),
             "rm -rf '%s' && mkdir -p '%s/checkpoints/" STALE_DIR "' && "
             "echo half-written > '%s/checkpoints/" STALE_DIR "/rank-tp0-dp1.json'",
             run_dir, run_dir, run_dir);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", run_dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", run_dir);
}

TestSuite(stale_cleanup, .init = setup, .fini = teardown);

/* The stale directory is gone, nothing temporary is left, and step 1 verifies and holds the
 * state (parameters and both moments, every element) under the expected layout. */
static void assert_clean_and_complete(int dp)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/checkpoints/" STALE_DIR, run_dir);
    cr_assert_not(file_exists(path), "the stale directory %s is still there", path);
    snprintf(path, sizeof(path), "%s/checkpoints", run_dir);
    DIR *d = opendir(path);
    cr_assert(d);
    for (struct dirent *de; (de = readdir(d));)
        cr_assert_null(strstr(de->d_name, ".tmp"), "left behind: %s", de->d_name);
    closedir(d);

    snprintf(path, sizeof(path), "%s/checkpoints/step-00000001", run_dir);
    Ckpt *c;
    cr_assert_eq(ckpt_open(path, &c), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ckpt_verify(c), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ckpt_step(c), 1);
    cr_assert_eq(ckpt_layout(c).dp, dp);
    ModelConfig mc;
    Model want = {0};
    Optimizer want_opt = {0};
    cr_assert_eq(state_init(&mc, &want, &want_opt), DS_OK);
    const size_t n = want.table.total;
    float *got = calloc(n, sizeof(float));
    cr_assert_eq(ckpt_read_buffer(c, "params", &want.table, got, 0, 0), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(memcmp(got, want.params, n * sizeof(float)), 0, "params differ");
    cr_assert_eq(ckpt_read_buffer(c, "optim.m", &want.table, got, 0, 0), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(memcmp(got, want_opt.m, n * sizeof(float)), 0, "optim.m differs");
    cr_assert_eq(ckpt_read_buffer(c, "optim.v", &want.table, got, 0, 0), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(memcmp(got, want_opt.v, n * sizeof(float)), 0, "optim.v differs");
    free(got);
    ckpt_close(c);
    optim_free(&want_opt);
    model_free(&want);
}

Test(stale_cleanup, one_process_removes_stale_directories_and_saves_without_mpi)
{
    Config cfg;
    config_for(&cfg, run_dir);
    ModelConfig mc;
    Model m = {0};
    Optimizer opt = {0};
    cr_assert_eq(state_init(&mc, &m, &opt), DS_OK);
    TrainCkpt *tc;
    int start = -1;
    cr_assert_eq(train_ckpt_open(&cfg, run_dir, &mc, &m, &opt, 1, NULL, &tc), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(train_ckpt_resume(tc, &start),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(start, 0);
    cr_assert_eq(train_ckpt_finish(tc, 1, 1e-3f), DS_OK, "%s", ds_last_error());
    train_ckpt_close(tc);
    optim_free(&opt);
    model_free(&m);
    assert_clean_and_complete(1);
}

Test(stale_cleanup, a_rank_that_saves_right_after_opening_keeps_its_shard)
{
    char exe[512], cmd[1400], log[700];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    cr_assert(len > 0);
    exe[len] = 0;
    snprintf(cmd, sizeof(cmd), "-x DSTRAIN_STALE_WORKER='%s' %s", run_dir, exe);
    snprintf(log, sizeof(log), "%s.log", run_dir);
    int rc = mpi_test_run(2, cmd, log);
    char *out = mpi_test_slurp(log);
    cr_assert_eq(rc, 0, "mpirun -np 2 exited %d:\n%s", rc, out ? out : "");
    cr_assert(out && strstr(out, "rank 0: saved step 1") && strstr(out, "rank 1: saved step 1"),
              "%s", out ? out : "");
    free(out);
    remove(log);
    assert_clean_and_complete(2);
}
