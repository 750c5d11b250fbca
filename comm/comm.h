/* comm.h: the process grid (world, tensor-parallel and data-parallel groups) and the collectives,
 * one API over MPI for host buffers and NCCL for device buffers (chosen per call from where the
 * buffer lives). Not here: what is reduced and when (model.c, optim.c, train.c decide that).
 * Invariants: rank r has tp_rank = r % tp and dp_rank = r / tp; a group of size 1 makes every
 * collective a no-op (no MPI call), so a single process without a launcher never touches MPI. */
#ifndef DSTRAIN_COMM_H
#define DSTRAIN_COMM_H

#include <stddef.h>

typedef enum CommType { COMM_F32 = 0, COMM_F64, COMM_I32, COMM_I64, COMM_BF16, COMM_U8 } CommType;
typedef enum CommOp { COMM_SUM = 0, COMM_MAX } CommOp;

/* One communicator. impl is NULL for a group of one process. */
typedef struct CommGroup {
    int rank, size;
    struct CommImpl *impl;
} CommGroup;

typedef struct ProcessGrid {
    int world_rank, world_size;
    int local_rank; /* rank on this node: OMPI_COMM_WORLD_LOCAL_RANK / SLURM_LOCALID, else 0 */
    int tp_rank, tp_size;
    int dp_rank, dp_size;
    /* expert parallelism (comm_grid_split_experts): the routed experts are split over the ep
     * consecutive data-parallel ranks of a group (ep_rank = dp_rank % ep); the ranks that hold
     * the same experts form the expert-data-parallel group (edp_rank = dp_rank / ep, size
     * dp / ep). ep = 1: no split, edp is the data-parallel group. */
    int ep_rank, ep_size;
    int edp_rank, edp_size;
    int mpi_initialized; /* this grid called MPI_Init (a launcher was detected) */
    CommGroup world, tp, dp;
    CommGroup ep, edp; /* edp has no communicator of its own when ep = 1: use comm_edp() */
} ProcessGrid;

/* Whether this process was started by a launcher (mpirun, srun with PMI/PMIx): only then does
 * comm_grid_init initialize MPI. */
int comm_launched(void);

/* Initialize MPI when launched, and split the world into tp x dp groups. dp = 0 means
 * world / tp; tp = 0 means world / dp, or 1 when dp is 0 too. Errors (world not divisible by
 * tp or dp, tp x dp != world) are DS_ERR_INPUT and name the parallel.* keys. */
int comm_grid_init(ProcessGrid *g, int tp, int dp);
/* Split each data-parallel group into dp / ep expert-parallel groups of ep consecutive ranks
 * (parallel.ep), and the ranks holding the same experts into expert-data-parallel groups.
 * DS_ERR_INPUT when ep does not divide dp. Collective over the world; call it after
 * comm_grid_enable_nccl when there is NCCL (the groups inherit it). */
int comm_grid_split_experts(ProcessGrid *g, int ep);
/* The group that reduces what the ranks holding the same experts share: edp, or dp when
 * ep = 1. */
const CommGroup *comm_edp(const ProcessGrid *g);
/* Free the groups and finalize MPI if this grid initialized it. */
void comm_grid_free(ProcessGrid *g);

/* A sub-group of parent: processes with the same color form one group, ordered by key. Every
 * process of parent must call it. A single-process result has no impl. */
int comm_group_split(const CommGroup *parent, int color, int key, CommGroup *out);
void comm_group_free(CommGroup *g);

/* Bind the grid's groups to NCCL communicators on this rank's GPU (local_rank), bootstrapped
 * over MPI. Afterwards collectives on device buffers go through NCCL. DS_ERR_INPUT when dstrain
 * was built without NCCL. */
int comm_grid_enable_nccl(ProcessGrid *g);

/* In-place all-reduce of buf[count]. */
int comm_all_reduce(const CommGroup *g, void *buf, size_t count, CommType type, CommOp op);
/* Sum of size blocks of count elements; the block of this rank lands at
 * buf + rank * count (in place, NCCL's convention). buf holds size * count elements. */
int comm_reduce_scatter(const CommGroup *g, void *buf, size_t count, CommType type);
/* In place: this rank's block at buf + rank * count is sent, every block is received. */
int comm_all_gather(const CommGroup *g, void *buf, size_t count, CommType type);
int comm_broadcast(const CommGroup *g, void *buf, size_t count, CommType type, int root);
/* All-to-all with counts: send_counts[r] elements of send (consecutive blocks, rank order) go
 * to rank r, and recv_counts[r] elements from rank r land in recv, consecutive in rank order.
 * The counts (host memory) must agree pairwise; send and recv do not overlap. */
int comm_all_to_allv(const CommGroup *g, const void *send, const size_t *send_counts, void *recv,
                     const size_t *recv_counts, CommType type);
int comm_barrier(const CommGroup *g);

/* Take the whole job down after a rank failed: MPI_Abort(world, status) when MPI runs with more
 * than one process; otherwise returns. The caller has printed the message already. */
void comm_abort(const ProcessGrid *g, int status);
/* For failures where no status can travel up (a collective inside the model's step): print
 * "dstrain: error: <message>" and end the job, all ranks of it (MPI_Abort), or this process. */
void comm_fail(int status) __attribute__((noreturn));

size_t comm_type_size(CommType type);

/* NCCL side (comm_nccl.cu), used by comm.c; declared here so the C and CUDA halves agree. */
#ifdef DSTRAIN_HAVE_NCCL
int comm_nccl_unique_id_bytes(void);
int comm_nccl_get_unique_id(void *id);
int comm_nccl_init(void **nccl_comm, const void *id, int size, int rank, int device);
int comm_nccl_split(void *parent, int color, int key, void **out);
void comm_nccl_free(void *nccl_comm);
int comm_nccl_is_device_ptr(const void *p);
/* bytes from src to dst, either of them in host or device memory */
int comm_nccl_copy(void *dst, const void *src, size_t bytes);
/* Each call enqueues on the communicator's stream and waits for it, polling
 * ncclCommGetAsyncError; an error or a wait beyond DSTRAIN_NCCL_TIMEOUT seconds (default 300)
 * aborts the communicator and returns DS_ERR_INTERNAL with the NCCL message. */
int comm_nccl_all_reduce(void *nccl_comm, void *buf, size_t count, CommType type, CommOp op);
int comm_nccl_reduce_scatter(void *nccl_comm, void *buf, size_t count, CommType type, int rank);
int comm_nccl_all_gather(void *nccl_comm, void *buf, size_t count, CommType type, int rank);
int comm_nccl_broadcast(void *nccl_comm, void *buf, size_t count, CommType type, int root);
int comm_nccl_all_to_allv(void *nccl_comm, const void *send, const size_t *send_counts,
                          void *recv, const size_t *recv_counts, CommType type, int size);
#endif

#endif
