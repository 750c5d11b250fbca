/* staged_backend.h: the CPU backend seen as a device, for the tests of code that must reach a
 * backend's memory only through its copies (backend_stage and backend_view, the op table): the
 * CPU table with host_memory 0 and its copies between host and "device" counted in its context
 * (Backend.ctx), as a device backend keeps its state. Static, for one test program each
 * (tests/kernels/test_backend_check.c, tests/kernels/backend_ops_cpu.c). */
#ifndef DSTRAIN_TESTS_STAGED_BACKEND_H
#define DSTRAIN_TESTS_STAGED_BACKEND_H

#include <string.h>

#include "kernels/ops.h"

/* A staged backend's context: bytes copied to the host and to the "device" through its table. */
typedef struct StagedCounts {
    size_t to_host, to_device;
} StagedCounts;

static void counted_to_host(const Backend *be, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    ((StagedCounts *)be->ctx)->to_host += bytes;
}

static void counted_to_device(const Backend *be, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    ((StagedCounts *)be->ctx)->to_device += bytes;
}

/* The table, named name, counting into *counts (set to 0 here). */
static Backend staged_backend(const char *name, StagedCounts *counts)
{
    Backend b = *backend_cpu();
    b.name = name;
    b.ctx = counts;
    b.host_memory = 0;
    b.mem_to_host = counted_to_host;
    b.mem_to_device = counted_to_device;
    *counts = (StagedCounts){0};
    return b;
}

#endif
