/* comm_nccl.cu: the NCCL half of comm (collectives on device buffers), called by comm.c when a
 * group has an NCCL communicator and the buffer is device memory. Not here: the grid, MPI, or
 * what is reduced. Every collective is enqueued on the legacy default stream, which the CUDA
 * backend's ops also use, and then waited for with a watchdog: ncclCommGetAsyncError is polled
 * while the stream runs, and an error or a wait longer than DSTRAIN_NCCL_TIMEOUT seconds
 * (default 300) aborts the communicator and returns an error, which ends the job (comm_fail):
 * a dead or stuck peer never hangs the other ranks. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "comm/comm.h"
#include "trainer/common.h"
}

static const cudaStream_t stream = 0;

static int nccl_status(ncclResult_t r, const char *what)
{
    if (r == ncclSuccess) return DS_OK;
    return ds_error(DS_ERR_INTERNAL, "nccl: %s: %s (%s)", what, ncclGetErrorString(r),
                    ncclGetLastError(NULL));
}

static int cuda_status(cudaError_t e, const char *what)
{
    if (e == cudaSuccess) return DS_OK;
    return ds_error(DS_ERR_INTERNAL, "cuda: %s: %s", what, cudaGetErrorString(e));
}

static double watchdog_seconds(void)
{
    const char *s = getenv("DSTRAIN_NCCL_TIMEOUT");
    double v = s ? atof(s) : 0.0;
    return v > 0 ? v : 300.0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wait for the work enqueued on the stream, checking the communicator for asynchronous errors;
 * abort it on an error or when the watchdog runs out. */
static int nccl_wait(ncclComm_t comm, const char *what)
{
    const double deadline = now_seconds() + watchdog_seconds();
    for (long polls = 0;; polls++) {
        cudaError_t e = cudaStreamQuery(stream);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) return cuda_status(e, what);
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &async);
        if (r != ncclSuccess || async != ncclSuccess) {
            ncclCommAbort(comm);
            return nccl_status(r != ncclSuccess ? r : async, what);
        }
        if (now_seconds() > deadline) {
            ncclCommAbort(comm);
            return ds_error(DS_ERR_INTERNAL,
                            "nccl: %s: no progress for %.0f s (a peer failed or hangs; "
                            "DSTRAIN_NCCL_TIMEOUT sets the limit)",
                            what, watchdog_seconds());
        }
        if (polls > 1000) {
            struct timespec pause = {0, 100000}; /* 0.1 ms: long collectives need not spin */
            nanosleep(&pause, NULL);
        }
    }
    return DS_OK;
}

static int nccl_type(CommType type, ncclDataType_t *out)
{
    switch (type) {
    case COMM_F32: *out = ncclFloat32; return DS_OK;
    case COMM_F64: *out = ncclFloat64; return DS_OK;
    case COMM_I32: *out = ncclInt32; return DS_OK;
    case COMM_I64: *out = ncclInt64; return DS_OK;
    case COMM_BF16: *out = ncclBfloat16; return DS_OK;
    case COMM_U8: *out = ncclUint8; return DS_OK;
    }
    return ds_error(DS_ERR_INTERNAL, "nccl: unknown comm type %d", (int)type);
}

extern "C" int comm_nccl_unique_id_bytes(void)
{
    return (int)sizeof(ncclUniqueId);
}

extern "C" int comm_nccl_get_unique_id(void *id)
{
    return nccl_status(ncclGetUniqueId((ncclUniqueId *)id), "ncclGetUniqueId");
}

extern "C" int comm_nccl_init(void **nccl_comm, const void *id, int size, int rank, int device)
{
    int devices = 0;
    DS_TRY(cuda_status(cudaGetDeviceCount(&devices), "cudaGetDeviceCount"));
    if (devices <= 0) return ds_error(DS_ERR_INPUT, "device: cuda: no GPU visible to rank %d", rank);
    /* ranks map to GPUs by their rank on the node */
    DS_TRY(cuda_status(cudaSetDevice(device % devices), "cudaSetDevice"));
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof(uid));
    ncclComm_t comm = NULL;
    DS_TRY(nccl_status(ncclCommInitRank(&comm, size, uid, rank), "ncclCommInitRank"));
    *nccl_comm = comm;
    return DS_OK;
}

extern "C" int comm_nccl_split(void *parent, int color, int key, void **out)
{
    ncclComm_t comm = NULL;
    DS_TRY(nccl_status(ncclCommSplit((ncclComm_t)parent, color, key, &comm, NULL),
                       "ncclCommSplit"));
    *out = comm;
    return DS_OK;
}

extern "C" void comm_nccl_free(void *nccl_comm)
{
    if (nccl_comm) ncclCommDestroy((ncclComm_t)nccl_comm);
}

extern "C" int comm_nccl_copy(void *dst, const void *src, size_t bytes)
{
    return cuda_status(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "all-to-all of one rank");
}

extern "C" int comm_nccl_is_device_ptr(const void *p)
{
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        cudaGetLastError(); /* a plain host pointer on old drivers: clear the error */
        return 0;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

extern "C" int comm_nccl_all_reduce(void *nccl_comm, void *buf, size_t count, CommType type,
                                    CommOp op)
{
    ncclDataType_t dt;
    DS_TRY(nccl_type(type, &dt));
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    DS_TRY(nccl_status(ncclAllReduce(buf, buf, count, dt, op == COMM_MAX ? ncclMax : ncclSum, comm,
                                     stream),
                       "ncclAllReduce"));
    return nccl_wait(comm, "all-reduce");
}

extern "C" int comm_nccl_reduce_scatter(void *nccl_comm, void *buf, size_t count, CommType type,
                                        int rank)
{
    ncclDataType_t dt;
    DS_TRY(nccl_type(type, &dt));
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    char *recv = (char *)buf + (size_t)rank * count * comm_type_size(type); /* in place */
    DS_TRY(nccl_status(ncclReduceScatter(buf, recv, count, dt, ncclSum, comm, stream),
                       "ncclReduceScatter"));
    return nccl_wait(comm, "reduce-scatter");
}

extern "C" int comm_nccl_all_gather(void *nccl_comm, void *buf, size_t count, CommType type,
                                    int rank)
{
    ncclDataType_t dt;
    DS_TRY(nccl_type(type, &dt));
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    const char *send = (const char *)buf + (size_t)rank * count * comm_type_size(type);
    DS_TRY(nccl_status(ncclAllGather(send, buf, count, dt, comm, stream), "ncclAllGather"));
    return nccl_wait(comm, "all-gather");
}

extern "C" int comm_nccl_broadcast(void *nccl_comm, void *buf, size_t count, CommType type,
                                   int root)
{
    ncclDataType_t dt;
    DS_TRY(nccl_type(type, &dt));
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    DS_TRY(nccl_status(ncclBroadcast(buf, buf, count, dt, root, comm, stream), "ncclBroadcast"));
    return nccl_wait(comm, "broadcast");
}

extern "C" int comm_nccl_all_to_allv(void *nccl_comm, const void *send, const size_t *send_counts,
                                     void *recv, const size_t *recv_counts, CommType type,
                                     int size)
{
    ncclDataType_t dt;
    DS_TRY(nccl_type(type, &dt));
    ncclComm_t comm = (ncclComm_t)nccl_comm;
    const size_t esize = comm_type_size(type);
    size_t so = 0, ro = 0;
    /* one group of point-to-point calls: NCCL pairs each send with its peer's receive */
    DS_TRY(nccl_status(ncclGroupStart(), "ncclGroupStart"));
    int status = DS_OK;
    for (int r = 0; r < size && status == DS_OK; r++) {
        if (send_counts[r])
            status = nccl_status(ncclSend((const char *)send + so * esize, send_counts[r], dt, r,
                                          comm, stream),
                                 "ncclSend");
        if (status == DS_OK && recv_counts[r])
            status = nccl_status(
                ncclRecv((char *)recv + ro * esize, recv_counts[r], dt, r, comm, stream),
                "ncclRecv");
        so += send_counts[r];
        ro += recv_counts[r];
    }
    const int end = nccl_status(ncclGroupEnd(), "ncclGroupEnd");
    DS_TRY(status);
    DS_TRY(end);
    return nccl_wait(comm, "all-to-all");
}
