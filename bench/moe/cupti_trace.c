/* cupti_trace.c: a kernel timeline of any CUDA program, for machines without Nsight Systems.
 * Built as a shared library and loaded by the CUDA driver through CUDA_INJECTION64_PATH (the
 * way profilers attach), it records through CUPTI's activity API every kernel (start, end,
 * stream, grid), memcpy, memset, runtime API call and synchronization, and appends them as
 * tab-separated lines to $CUPTI_TRACE_OUT (default cupti_trace.tsv); a thread flushes CUPTI's
 * buffers every 200 ms, so a program killed after its work keeps all but its last moments.
 * Not part of dstrain: bench/moe/profile_step.py reads the file.
 *   gcc -O2 -shared -fPIC -o cupti_trace.so cupti_trace.c -I$CUDA/include -L$CUDA/lib -lcupti
 * Lines: N id name (a kernel's mangled name, once), K start end stream name_id gridX gridY
 * gridZ blockX, C start end kind bytes stream (memcpy), S start end bytes stream (memset),
 * A cbid name (a runtime API call's name, once), R start end cbid thread (runtime API),
 * Y start end type stream (synchronization); times in ns of CUPTI's clock. */
#include <cupti.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRACE_BUFFER_BYTES (8u << 20)
#define TRACE_NAMES 8192

static FILE *trace_file;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *trace_names[TRACE_NAMES]; /* CUPTI's name pointers are stable */
static int trace_name_count;
static unsigned char trace_api_named[4096]; /* runtime API ids whose name was written */

static void trace_check(CUptiResult r, const char *what)
{
    if (r == CUPTI_SUCCESS) return;
    const char *s = "?";
    cuptiGetResultString(r, &s);
    fprintf(stderr, "cupti_trace: %s: %s\n", what, s);
}

/* the id of a kernel name, written out the first time (caller holds trace_lock) */
static int trace_name_id(const char *name)
{
    if (!name) return -1;
    for (int i = trace_name_count - 1; i >= 0; i--)
        if (trace_names[i] == name || strcmp(trace_names[i], name) == 0) return i;
    if (trace_name_count == TRACE_NAMES) return -1;
    trace_names[trace_name_count] = name;
    fprintf(trace_file, "N\t%d\t%s\n", trace_name_count, name);
    return trace_name_count++;
}

static void CUPTIAPI trace_buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *buffer = (uint8_t *)aligned_alloc(8, TRACE_BUFFER_BYTES);
    *size = *buffer ? TRACE_BUFFER_BYTES : 0;
    *max_records = 0;
}

static void CUPTIAPI trace_buffer_completed(CUcontext ctx, uint32_t stream_id, uint8_t *buffer,
                                            size_t size, size_t valid)
{
    (void)ctx, (void)stream_id, (void)size;
    CUpti_Activity *rec = NULL;
    pthread_mutex_lock(&trace_lock);
    while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        switch (rec->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            const int id = trace_name_id(k->name);
            fprintf(trace_file, "K\t%llu\t%llu\t%u\t%d\t%d\t%d\t%d\t%d\n",
                    (unsigned long long)k->start, (unsigned long long)k->end, k->streamId, id,
                    k->gridX, k->gridY, k->gridZ, k->blockX);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            const CUpti_ActivityMemcpy6 *m = (const CUpti_ActivityMemcpy6 *)rec;
            fprintf(trace_file, "C\t%llu\t%llu\t%u\t%llu\t%u\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, (unsigned)m->copyKind, (unsigned long long)m->bytes,
                    m->streamId);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)rec;
            fprintf(trace_file, "S\t%llu\t%llu\t%llu\t%u\n", (unsigned long long)m->start,
                    (unsigned long long)m->end, (unsigned long long)m->bytes, m->streamId);
            break;
        }
        case CUPTI_ACTIVITY_KIND_RUNTIME: {
            const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)rec;
            const char *api = NULL;
            if (a->cbid < sizeof(trace_api_named) && !trace_api_named[a->cbid] &&
                cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &api) == CUPTI_SUCCESS) {
                trace_api_named[a->cbid] = 1;
                fprintf(trace_file, "A\t%u\t%s\n", (unsigned)a->cbid, api);
            }
            fprintf(trace_file, "R\t%llu\t%llu\t%u\t%u\n", (unsigned long long)a->start,
                    (unsigned long long)a->end, (unsigned)a->cbid, a->threadId);
            break;
        }
        case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION: {
            const CUpti_ActivitySynchronization2 *y = (const CUpti_ActivitySynchronization2 *)rec;
            fprintf(trace_file, "Y\t%llu\t%llu\t%u\t%u\n", (unsigned long long)y->start,
                    (unsigned long long)y->end, (unsigned)y->type, y->streamId);
            break;
        }
        default:
            break;
        }
    }
    fflush(trace_file);
    pthread_mutex_unlock(&trace_lock);
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(ctx, stream_id, &dropped);
    if (dropped) fprintf(stderr, "cupti_trace: %zu records dropped\n", dropped);
    free(buffer);
}

static void *trace_flusher(void *arg)
{
    (void)arg;
    for (;;) {
        usleep(200000);
        cuptiActivityFlushAll(0);
    }
    return NULL;
}

static void trace_at_exit(void)
{
    cuptiActivityFlushAll(1);
    if (trace_file) fflush(trace_file);
}

/* called by the CUDA driver when CUDA_INJECTION64_PATH names this library */
int InitializeInjection(void)
{
    const char *path = getenv("CUPTI_TRACE_OUT");
    trace_file = fopen(path && *path ? path : "cupti_trace.tsv", "w");
    if (!trace_file) {
        perror("cupti_trace: output");
        return 0;
    }
    trace_check(cuptiActivityRegisterCallbacks(trace_buffer_requested, trace_buffer_completed),
                "register");
    trace_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "kernels");
    trace_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "memcpy");
    trace_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "memset");
    trace_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "runtime");
    trace_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_SYNCHRONIZATION), "synchronization");
    pthread_t t;
    pthread_create(&t, NULL, trace_flusher, NULL);
    pthread_detach(t);
    atexit(trace_at_exit);
    fprintf(stderr, "cupti_trace: recording to %s\n", path && *path ? path : "cupti_trace.tsv");
    return 1;
}
