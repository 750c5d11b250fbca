/* memory.c: host and device memory limits (see memory.h). The cgroup files are read as text
 * and anything unexpected in them is ignored: a limit that cannot be read is no limit, never an
 * error, since the check exists to refuse runs that certainly cannot fit. */
#include "memory.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

/* A decimal byte count from an environment variable (tests); 0 when unset or not a number. */
static uint64_t env_bytes(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    return errno || *end || v == 0 ? 0 : (uint64_t)v;
}

/* The number in file (v1's memory.limit_in_bytes, v2's memory.max; "max" is none): 0 if none. */
static uint64_t read_limit(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char text[64] = {0};
    const int ok = fgets(text, sizeof(text), f) != NULL;
    fclose(f);
    if (!ok || text[0] < '0' || text[0] > '9') return 0;
    errno = 0;
    unsigned long long v = strtoull(text, NULL, 10);
    return errno ? 0 : (uint64_t)v;
}

/* The lowest limit from the cgroup directory mount + rel up to mount itself (0: none). A cgroup
 * namespace shows "/" for our own group; a path that does not exist under the mount (a group
 * outside the namespace) leaves the mount's own file. */
static uint64_t lowest_limit(const char *mount, const char *rel, const char *file)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s%s", mount, rel[0] == '/' ? rel : "/");
    uint64_t lowest = 0;
    for (;;) {
        size_t n = strlen(dir);
        while (n > strlen(mount) && dir[n - 1] == '/')
            dir[--n] = 0;
        char path[1200];
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        uint64_t v = read_limit(path);
        if (v > 0 && (lowest == 0 || v < lowest)) lowest = v;
        if (n <= strlen(mount)) break;
        char *slash = strrchr(dir + strlen(mount), '/');
        if (!slash) break;
        *slash = 0;
    }
    return lowest;
}

uint64_t memory_cgroup_limit(const char *self_cgroup, const char *root)
{
    FILE *f = fopen(self_cgroup, "r");
    if (!f) return 0;
    char v2[512], hybrid[512], v1[512];
    snprintf(v2, sizeof(v2), "%s", root);
    snprintf(hybrid, sizeof(hybrid), "%s/unified", root);
    snprintf(v1, sizeof(v1), "%s/memory", root);
    char line[1024];
    uint64_t lowest = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        /* "hierarchy-id:controllers:path": v2 is "0::path", v1 names "memory" among the
         * controllers */
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c2 = 0;
        const char *controllers = c1 + 1, *path = c2 + 1;
        uint64_t v = 0;
        if (controllers[0] == 0) {
            v = lowest_limit(v2, path, "memory.max");
            uint64_t h = lowest_limit(hybrid, path, "memory.max");
            if (h > 0 && (v == 0 || h < v)) v = h;
        } else {
            char list[256];
            snprintf(list, sizeof(list), ",%s,", controllers);
            if (strstr(list, ",memory,")) v = lowest_limit(v1, path, "memory.limit_in_bytes");
        }
        if (v > 0 && (lowest == 0 || v < lowest)) lowest = v;
    }
    fclose(f);
    return lowest;
}

int memory_host_limit(uint64_t *bytes, char *what, size_t cap)
{
    const uint64_t forced = env_bytes("DSTRAIN_HOST_MEMORY_BYTES");
    if (forced) {
        *bytes = forced;
        snprintf(what, cap, "DSTRAIN_HOST_MEMORY_BYTES");
        return DS_OK;
    }
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return ds_error(DS_ERR_INTERNAL, "memory: cannot read the size of physical memory");
    *bytes = (uint64_t)pages * (uint64_t)page;
    snprintf(what, cap, "physical memory");
    const uint64_t limit = memory_cgroup_limit("/proc/self/cgroup", "/sys/fs/cgroup");
    if (limit > 0 && limit < *bytes) {
        *bytes = limit;
        snprintf(what, cap, "the memory cgroup's limit");
    }
    return DS_OK;
}

int memory_device_free(const Backend *be, uint64_t *free_bytes, uint64_t *total_bytes)
{
    const uint64_t forced = env_bytes("DSTRAIN_DEVICE_MEMORY_BYTES");
    if (forced) {
        *free_bytes = *total_bytes = forced;
        return DS_OK;
    }
    *free_bytes = *total_bytes = 0;
    if (!be->mem_info)
        return ds_error(DS_ERR_INPUT, "memory: the %s backend has no device memory", be->name);
    size_t f = 0, t = 0;
    DS_TRY(be->mem_info(be, &f, &t));
    *free_bytes = f;
    *total_bytes = t;
    return DS_OK;
}

const char *memory_bytes_text(char *buf, double bytes)
{
    static const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (bytes >= 1024 && u < 5)
        bytes /= 1024, u++;
    snprintf(buf, 24, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
    return buf;
}

int memory_check_host(double need, const char *subject, const char *advice)
{
    uint64_t have = 0;
    char what[64], a[24], b[24];
    DS_TRY(memory_host_limit(&have, what, sizeof(what)));
    if (need <= (double)have) return DS_OK;
    return ds_error(
        DS_ERR_INPUT, "memory: %s needs %s of host memory, more than the %s this host has (%s); %s",
        subject, memory_bytes_text(a, need), memory_bytes_text(b, (double)have), what, advice);
}
