/* fuzz_util.h: what the libFuzzer harnesses share: the input written to a file of this process
 * (most parsers read files, as they do in a run), in a scratch directory made once. */
#ifndef DSTRAIN_FUZZ_UTIL_H
#define DSTRAIN_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"

/* A directory of this process under TMPDIR (or /tmp). */
static inline const char *fuzz_dir(void)
{
    static char dir[512];
    if (!dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/dstrain-fuzz-%ld", tmp && *tmp ? tmp : "/tmp", (long)getpid());
        mkdir(dir, 0700);
    }
    return dir;
}

/* Write data to fuzz_dir()/name and return the path (a static buffer per call site). */
static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t size, char *path,
                                     size_t cap)
{
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* The input as a NUL-terminated string (the bytes after a NUL are cut, as argv would). */
static inline char *fuzz_string(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = 0;
    return s;
}

#endif
