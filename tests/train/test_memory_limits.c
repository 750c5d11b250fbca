/* test_memory_limits.c: the host's memory as memory_host_limit reads it: physical memory, or the
 * lowest memory cgroup limit on the way from this process's group to the root (v1 and v2, a
 * group outside the cgroup namespace, "max" and junk ignored); DSTRAIN_HOST_MEMORY_BYTES for
 * tests; no GPU query in a build without CUDA. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/memory.h"

static char root[512];

static void put(const char *rel, const char *text)
{
    char path[1024], cmd[1200];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
    cr_assert_eq(system(cmd), 0);
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

static void setup(void)
{
    snprintf(root, sizeof(root), "%s/train_memory_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", root, root);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", root);
}

TestSuite(memory, .init = setup, .fini = teardown);

static uint64_t limit_for(const char *self)
{
    put("self", self);
    char self_path[1024];
    snprintf(self_path, sizeof(self_path), "%s/self", root);
    return memory_cgroup_limit(self_path, root);
}

Test(memory, cgroup_v2_takes_the_lowest_limit_up_to_the_root)
{
    /* Slurm: the job's group holds --mem, the step's and the task's say max */
    put("system.slice/job_7/memory.max", "8589934592\n");
    put("system.slice/job_7/step_0/memory.max", "max\n");
    put("system.slice/job_7/step_0/task_0/memory.max", "max\n");
    cr_assert_eq(limit_for("0::/system.slice/job_7/step_0/task_0\n"), 8589934592ull);
    /* a lower one further down wins */
    put("system.slice/job_7/step_0/memory.max", "1073741824\n");
    cr_assert_eq(limit_for("0::/system.slice/job_7/step_0/task_0\n"), 1073741824ull);
    /* no limit anywhere */
    cr_assert_eq(limit_for("0::/elsewhere\n"), 0);
}

Test(memory, cgroup_v1_memory_controller_and_namespaces)
{
    put("memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("memory/batch/memory.limit_in_bytes", "4294967296\n");
    cr_assert_eq(limit_for("4:cpu,cpuacct:/batch\n3:memory:/batch\n0::/\n"), 4294967296ull);
    /* a group outside the namespace (the path is not under the mount): the mount's own file */
    cr_assert_eq(limit_for("4:memory:/process_api/fad6c87a\n"), 9223372036854771712ull);
    /* junk is no limit, never an error */
    put("memory/junk/memory.limit_in_bytes", "lots\n");
    cr_assert_eq(limit_for("4:memory:/junk\n"), 9223372036854771712ull);
    cr_assert_eq(limit_for("not a cgroup line\n::\n"), 0);
}

Test(memory, host_limit_is_physical_memory_or_less)
{
    unsetenv("DSTRAIN_HOST_MEMORY_BYTES");
    uint64_t bytes = 0;
    char what[64];
    cr_assert_eq(memory_host_limit(&bytes, what, sizeof(what)), DS_OK);
    const uint64_t physical = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    cr_assert(bytes > 0 && bytes <= physical, "%llu of %llu", (unsigned long long)bytes,
              (unsigned long long)physical);
    cr_assert(strcmp(what, "physical memory") == 0 ? bytes == physical
                                                   : strcmp(what, "the memory cgroup's limit") == 0,
              "%s", what);
    setenv("DSTRAIN_HOST_MEMORY_BYTES", "12345", 1);
    cr_assert_eq(memory_host_limit(&bytes, what, sizeof(what)), DS_OK);
    cr_assert_eq(bytes, 12345);
    cr_assert_str_eq(what, "DSTRAIN_HOST_MEMORY_BYTES");
    unsetenv("DSTRAIN_HOST_MEMORY_BYTES");
}

/* the device's memory comes from the backend's table: a backend of host memory has none */
Test(memory, no_device_query_on_the_cpu_backend)
{
    uint64_t f = 1, t = 1;
    cr_assert_eq(memory_device_free(backend_cpu(), &f, &t), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "the cpu backend has no device memory"), "%s",
              ds_last_error());
    cr_assert(f == 0 && t == 0);
    setenv("DSTRAIN_DEVICE_MEMORY_BYTES", "4096", 1);
    cr_assert_eq(memory_device_free(backend_cpu(), &f, &t), DS_OK);
    cr_assert(f == 4096 && t == 4096);
    unsetenv("DSTRAIN_DEVICE_MEMORY_BYTES");
}
