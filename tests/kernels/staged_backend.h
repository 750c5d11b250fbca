/* staged_backend.h: the CPU backend seen as a device, for the tests of code that must reach a
 * backend's memory only through its copies (backend_stage and backend_view, the op table): the
 * CPU table with host_memory 0 and its copies between host and "device" counted. Static, for one
 * test program each (tests/kernels/test_backend_check.c, tests/kernels/backend_ops_cpu.c). */
#ifndef DSTRAIN_TESTS_STAGED_BACKEND_H
#define DSTRAIN_TESTS_STAGED_BACKEND_H

#include <string.h>

#include "kernels/ops.h"

/* bytes copied to the host and to the "device" since the last staged_backend() */
static size_t to_host_bytes, to_device_bytes;

static void counted_to_host(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    to_host_bytes += bytes;
}

static void counted_to_device(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    to_device_bytes += bytes;
}

/* The table, named name; the counts start again from 0. */
static Backend staged_backend(const char *name)
{
    Backend b = *backend_cpu();
    b.name = name;
    b.host_memory = 0;
    b.mem_to_host = counted_to_host;
    b.mem_to_device = counted_to_device;
    to_host_bytes = to_device_bytes = 0;
    return b;
}

#endif
