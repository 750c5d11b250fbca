/* data_test_util.h: helpers shared by the data tests: a scratch directory per test, writing
 * text files, running `dstrain pack` in process, and running python3 + h5py snippets (to write
 * files the way other tools do and to read ours back independently of our reader). */
#ifndef DSTRAIN_DATA_TEST_UTIL_H
#define DSTRAIN_DATA_TEST_UTIL_H

#include "data/dataset.h"
#include "data/pack.h"
#include "trainer/common.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A fresh directory DSTRAIN_TEST_TMP/data-<name>-<pid> (static buffer, one per call site). */
static inline const char *test_dir(const char *name, char *buf, size_t size)
{
    char cmd[1400];
    snprintf(buf, size, "%s/data-%s-%ld", DSTRAIN_TEST_TMP, name, (long)getpid());
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    cr_assert_eq(system(cmd), 0, "cannot make %s", buf);
    return buf;
}

static inline void test_path(char *out, size_t size, const char *dir, const char *file)
{
    snprintf(out, size, "%s/%s", dir, file);
}

static inline void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static inline int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The python3 that has h5py: the one on PATH, else Debian's (python3-h5py). */
static inline const char *python_with_h5py(void)
{
    static char found[64];
    if (found[0]) return found;
    const char *candidates[] = {"python3", "/usr/bin/python3"};
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "%s -c 'import h5py, numpy' >/dev/null 2>&1", candidates[i]);
        if (system(cmd) == 0) {
            snprintf(found, sizeof(found), "%s", candidates[i]);
            return found;
        }
    }
    cr_assert_fail("no python3 with h5py and numpy (apt-get install python3-h5py)");
    return NULL;
}

/* Run a python script (written to dir/name.py); returns its exit status. The script gets the
 * directory as sys.argv[1]. */
static inline int run_python(const char *dir, const char *name, const char *script)
{
    char path[1100], cmd[2600];
    snprintf(path, sizeof(path), "%s/%s.py", dir, name);
    write_text(path, script);
    snprintf(cmd, sizeof(cmd), "%s '%s' '%s'", python_with_h5py(), path, dir);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* pack_main with a NULL-terminated list of arguments after "pack". */
static inline int run_pack(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"pack";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    ds_clear_error();
    fflush(stdout);
    return pack_main(argc, argv);
}

#define assert_error_contains(needle)                                                              \
    cr_assert(strstr(ds_last_error(), (needle)) != NULL, "error \"%s\" lacks \"%s\"",              \
              ds_last_error(), (needle))

#endif
