/* comm.c: the process grid and the collectives over MPI (host buffers), handing device buffers
 * to NCCL (comm_nccl.cu) when the grid has NCCL communicators. Not here: when and what to reduce.
 * MPI is initialized only when a launcher started this process (comm_launched): a plain single
 * process runs as a world of one where every collective returns at once without calling MPI. */
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../trainer/common.h"

struct CommImpl {
    MPI_Comm comm;
    void *nccl; /* ncclComm_t, or NULL: host collectives only */
    int color, key;
};

size_t comm_type_size(CommType type)
{
    static const size_t sizes[] = {4, 8, 4, 8, 2, 1};
    return (unsigned)type < DS_ARRAY_LEN(sizes) ? sizes[type] : 0;
}

static int mpi_type(CommType type, MPI_Datatype *out)
{
    switch (type) {
    case COMM_F32:
        *out = MPI_FLOAT;
        return DS_OK;
    case COMM_F64:
        *out = MPI_DOUBLE;
        return DS_OK;
    case COMM_I32:
        *out = MPI_INT32_T;
        return DS_OK;
    case COMM_I64:
        *out = MPI_INT64_T;
        return DS_OK;
    case COMM_U8:
        *out = MPI_UINT8_T;
        return DS_OK;
    default:
        return ds_error(DS_ERR_INTERNAL, "comm: type %d has no MPI reduction on host buffers",
                        (int)type);
    }
}

static int mpi_check(int rc, const char *what)
{
    if (rc == MPI_SUCCESS) return DS_OK;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return ds_error(DS_ERR_INTERNAL, "comm: %s: %s", what, text);
}

static int env_int(const char *name, int fallback)
{
    const char *s = getenv(name);
    if (!s || !*s) return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    return *end == 0 && v >= 0 && v <= INT_MAX ? (int)v : fallback;
}

int comm_launched(void)
{
    /* mpirun (Open MPI), Hydra/PMI-1/2 launchers, PMIx (srun --mpi=pmix), and srun steps */
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"};
    for (size_t i = 0; i < DS_ARRAY_LEN(vars); i++)
        if (getenv(vars[i])) return 1;
    return env_int("SLURM_STEP_NUM_TASKS", 1) > 1;
}

/* A CommGroup over an MPI communicator; a communicator of one process is freed and leaves the
 * group without impl, so that its collectives are no-ops. */
static int group_from_mpi(MPI_Comm comm, int color, int key, CommGroup *out)
{
    memset(out, 0, sizeof(*out));
    DS_TRY(mpi_check(MPI_Comm_rank(comm, &out->rank), "MPI_Comm_rank"));
    DS_TRY(mpi_check(MPI_Comm_size(comm, &out->size), "MPI_Comm_size"));
    if (out->size == 1) {
        if (comm != MPI_COMM_WORLD) MPI_Comm_free(&comm);
        return DS_OK;
    }
    out->impl = ds_calloc(1, sizeof(struct CommImpl));
    if (!out->impl) return DS_ERR_INTERNAL;
    out->impl->comm = comm;
    out->impl->color = color;
    out->impl->key = key;
    return DS_OK;
}

int comm_grid_init(ProcessGrid *g, int tp, int dp)
{
    memset(g, 0, sizeof(*g));
    g->world_size = 1;
    if (comm_launched()) {
        int initialized = 0, provided = 0;
        MPI_Initialized(&initialized);
        if (!initialized) {
            /* OpenMP threads compute; only the main thread calls MPI */
            DS_TRY(mpi_check(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided),
                             "MPI_Init_thread"));
            g->mpi_initialized = 1;
        }
        MPI_Comm_rank(MPI_COMM_WORLD, &g->world_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &g->world_size);
    }
    g->local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", 0));
    if (tp < 0) return ds_error(DS_ERR_INPUT, "parallel.tp: must be at least 1, got %d", tp);
    if (tp == 0 && dp > 0) { /* auto: the ranks that dp leaves */
        if (g->world_size % dp != 0)
            return ds_error(DS_ERR_INPUT,
                            "parallel.dp: %d does not divide the world size %d (ranks started by "
                            "the launcher; parallel.tp: auto takes world / dp)",
                            dp, g->world_size);
        tp = g->world_size / dp;
    }
    if (tp == 0) tp = 1; /* both auto: data parallel over the world */
    if (g->world_size % tp != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.tp: %d does not divide the world size %d (ranks started by the "
                        "launcher)",
                        tp, g->world_size);
    if (dp == 0) dp = g->world_size / tp;
    if ((long long)tp * dp != g->world_size)
        return ds_error(DS_ERR_INPUT,
                        "parallel.tp x parallel.dp: %d x %d = %lld ranks, but the launcher "
                        "started %d (set parallel.dp: auto to use world / tp)",
                        tp, dp, (long long)tp * dp, g->world_size);
    g->tp_size = tp;
    g->dp_size = dp;
    g->tp_rank = g->world_rank % tp;
    g->dp_rank = g->world_rank / tp;
    g->world.rank = g->world_rank;
    g->world.size = g->world_size;
    g->tp.rank = g->tp_rank;
    g->tp.size = tp;
    g->dp.rank = g->dp_rank;
    g->dp.size = dp;
    g->ep_size = 1; /* comm_grid_split_experts changes it */
    g->ep.size = 1;
    g->edp_rank = g->dp_rank;
    g->edp_size = dp;
    g->edp = g->dp; /* rank and size only: edp has no communicator of its own when ep = 1 */
    if (g->world_size == 1) return DS_OK;

    DS_TRY(group_from_mpi(MPI_COMM_WORLD, 0, g->world_rank, &g->world));
    MPI_Comm tp_comm, dp_comm;
    /* tensor-parallel peers are consecutive ranks (one node, its NVLink) */
    DS_TRY(mpi_check(MPI_Comm_split(MPI_COMM_WORLD, g->dp_rank, g->tp_rank, &tp_comm),
                     "MPI_Comm_split (tp)"));
    DS_TRY(group_from_mpi(tp_comm, g->dp_rank, g->tp_rank, &g->tp));
    DS_TRY(mpi_check(MPI_Comm_split(MPI_COMM_WORLD, g->tp_rank, g->dp_rank, &dp_comm),
                     "MPI_Comm_split (dp)"));
    DS_TRY(group_from_mpi(dp_comm, g->tp_rank, g->dp_rank, &g->dp));
    return DS_OK;
}

int comm_grid_split_experts(ProcessGrid *g, int ep)
{
    if (ep < 1 || g->dp_size % ep != 0)
        return ds_error(DS_ERR_INPUT,
                        "parallel.ep: %d does not divide parallel.dp %d (the experts are split "
                        "over ep ranks of each data-parallel group)",
                        ep, g->dp_size);
    comm_group_free(&g->ep);
    comm_group_free(&g->edp);
    g->ep_size = ep;
    g->ep_rank = g->dp_rank % ep;
    g->edp_size = g->dp_size / ep;
    g->edp_rank = g->dp_rank / ep;
    g->ep = (CommGroup){.rank = g->ep_rank, .size = ep};
    g->edp = (CommGroup){.rank = g->edp_rank, .size = g->edp_size};
    if (ep == 1) return DS_OK;
    /* colors unique over the world: one group per (tp rank, dp block) and (tp rank, ep rank) */
    const int tp = g->tp_size;
    DS_TRY(comm_group_split(&g->world, g->tp_rank + tp * (g->dp_rank / ep), g->ep_rank, &g->ep));
    DS_TRY(comm_group_split(&g->world, g->tp_rank + tp * g->ep_rank, g->edp_rank, &g->edp));
    return DS_OK;
}

const CommGroup *comm_edp(const ProcessGrid *g)
{
    return g->ep_size > 1 ? &g->edp : &g->dp;
}

void comm_group_free(CommGroup *g)
{
    if (g->impl) {
#ifdef DSTRAIN_HAVE_NCCL
        if (g->impl->nccl) comm_nccl_free(g->impl->nccl);
#endif
        if (g->impl->comm != MPI_COMM_WORLD) MPI_Comm_free(&g->impl->comm);
        free(g->impl);
    }
    memset(g, 0, sizeof(*g));
}

void comm_grid_free(ProcessGrid *g)
{
    int finalized = 0;
    if (g->mpi_initialized) MPI_Finalized(&finalized);
    if (!finalized) {
        comm_group_free(&g->ep);
        comm_group_free(&g->edp);
        comm_group_free(&g->tp);
        comm_group_free(&g->dp);
        comm_group_free(&g->world);
    }
    if (g->mpi_initialized && !finalized) MPI_Finalize();
    memset(g, 0, sizeof(*g));
}

int comm_group_split(const CommGroup *parent, int color, int key, CommGroup *out)
{
    memset(out, 0, sizeof(*out));
    out->size = 1;
    if (!parent->impl) return DS_OK;
    MPI_Comm comm;
    DS_TRY(mpi_check(MPI_Comm_split(parent->impl->comm, color, key, &comm), "MPI_Comm_split"));
    DS_TRY(group_from_mpi(comm, color, key, out));
#ifdef DSTRAIN_HAVE_NCCL
    if (parent->impl->nccl) {
        void *nccl = NULL;
        DS_TRY(comm_nccl_split(parent->impl->nccl, color, key, &nccl));
        if (out->impl)
            out->impl->nccl = nccl;
        else
            comm_nccl_free(nccl);
    }
#endif
    return DS_OK;
}

int comm_grid_enable_nccl(ProcessGrid *g)
{
#ifdef DSTRAIN_HAVE_NCCL
    if (!g->world.impl) return DS_OK;
    char id[512];
    int bytes = comm_nccl_unique_id_bytes();
    if (bytes <= 0 || bytes > (int)sizeof(id))
        return ds_error(DS_ERR_INTERNAL, "comm: unexpected ncclUniqueId size %d", bytes);
    if (g->world_rank == 0) DS_TRY(comm_nccl_get_unique_id(id));
    DS_TRY(mpi_check(MPI_Bcast(id, bytes, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast (nccl id)"));
    DS_TRY(comm_nccl_init(&g->world.impl->nccl, id, g->world_size, g->world_rank, g->local_rank));
    CommGroup *subs[] = {&g->tp, &g->dp, &g->ep, &g->edp};
    for (size_t i = 0; i < DS_ARRAY_LEN(subs); i++) {
        if (!subs[i]->impl) continue; /* uniform: every rank's group has the same size */
        DS_TRY(comm_nccl_split(g->world.impl->nccl, subs[i]->impl->color, subs[i]->impl->key,
                               &subs[i]->impl->nccl));
    }
    return DS_OK;
#else
    (void)g;
    return ds_error(DS_ERR_INPUT, "device: cuda with several ranks needs NCCL, and this dstrain "
                                  "was built without it");
#endif
}

#ifdef DSTRAIN_HAVE_NCCL
/* NCCL when the group has a communicator and buf is device memory. */
static int use_nccl(const CommGroup *g, const void *buf)
{
    return g->impl->nccl && comm_nccl_is_device_ptr(buf);
}
#endif

/* MPI counts are int; large reductions go in chunks. */
#define MPI_CHUNK ((size_t)1 << 30)

int comm_all_reduce(const CommGroup *g, void *buf, size_t count, CommType type, CommOp op)
{
    if (!g->impl || count == 0) return DS_OK;
#ifdef DSTRAIN_HAVE_NCCL
    if (use_nccl(g, buf)) return comm_nccl_all_reduce(g->impl->nccl, buf, count, type, op);
#endif
    MPI_Datatype dt = MPI_DATATYPE_NULL;
    DS_TRY(mpi_type(type, &dt));
    const size_t esize = comm_type_size(type);
    for (size_t done = 0; done < count; done += MPI_CHUNK) {
        size_t n = count - done < MPI_CHUNK ? count - done : MPI_CHUNK;
        DS_TRY(mpi_check(MPI_Allreduce(MPI_IN_PLACE, (char *)buf + done * esize, (int)n, dt,
                                       op == COMM_MAX ? MPI_MAX : MPI_SUM, g->impl->comm),
                         "MPI_Allreduce"));
    }
    return DS_OK;
}

int comm_reduce_scatter(const CommGroup *g, void *buf, size_t count, CommType type)
{
    if (!g->impl || count == 0) return DS_OK;
#ifdef DSTRAIN_HAVE_NCCL
    if (use_nccl(g, buf)) return comm_nccl_reduce_scatter(g->impl->nccl, buf, count, type, g->rank);
#endif
    if (count > INT_MAX)
        return ds_error(DS_ERR_INTERNAL,
                        "comm: reduce-scatter of %zu elements per rank is more "
                        "than MPI's int count",
                        count);
    MPI_Datatype dt = MPI_DATATYPE_NULL;
    DS_TRY(mpi_type(type, &dt));
    /* MPI's in-place result lands in the first block; move it to this rank's block */
    DS_TRY(mpi_check(
        MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)count, dt, MPI_SUM, g->impl->comm),
        "MPI_Reduce_scatter_block"));
    const size_t esize = comm_type_size(type);
    if (g->rank != 0) memcpy((char *)buf + (size_t)g->rank * count * esize, buf, count * esize);
    return DS_OK;
}

int comm_all_gather(const CommGroup *g, void *buf, size_t count, CommType type)
{
    if (!g->impl || count == 0) return DS_OK;
#ifdef DSTRAIN_HAVE_NCCL
    if (use_nccl(g, buf)) return comm_nccl_all_gather(g->impl->nccl, buf, count, type, g->rank);
#endif
    if (count > INT_MAX)
        return ds_error(DS_ERR_INTERNAL,
                        "comm: all-gather of %zu elements per rank is more "
                        "than MPI's int count",
                        count);
    MPI_Datatype dt = MPI_DATATYPE_NULL;
    DS_TRY(mpi_type(type, &dt));
    return mpi_check(
        MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)count, dt, g->impl->comm),
        "MPI_Allgather");
}

int comm_broadcast(const CommGroup *g, void *buf, size_t count, CommType type, int root)
{
    if (!g->impl || count == 0) return DS_OK;
#ifdef DSTRAIN_HAVE_NCCL
    if (use_nccl(g, buf)) return comm_nccl_broadcast(g->impl->nccl, buf, count, type, root);
#endif
    MPI_Datatype dt = MPI_DATATYPE_NULL;
    DS_TRY(mpi_type(type, &dt));
    const size_t esize = comm_type_size(type);
    for (size_t done = 0; done < count; done += MPI_CHUNK) {
        size_t n = count - done < MPI_CHUNK ? count - done : MPI_CHUNK;
        DS_TRY(mpi_check(MPI_Bcast((char *)buf + done * esize, (int)n, dt, root, g->impl->comm),
                         "MPI_Bcast"));
    }
    return DS_OK;
}

int comm_all_to_allv(const CommGroup *g, const void *send, const size_t *send_counts, void *recv,
                     const size_t *recv_counts, CommType type)
{
    const size_t esize = comm_type_size(type);
    if (!g->impl) { /* one rank: its own block */
        if (send_counts[0] != recv_counts[0])
            return ds_error(DS_ERR_INTERNAL, "comm: all-to-all counts %zu and %zu disagree",
                            send_counts[0], recv_counts[0]);
        if (!send_counts[0]) return DS_OK;
#ifdef DSTRAIN_HAVE_NCCL
        if (comm_nccl_is_device_ptr(recv) || comm_nccl_is_device_ptr(send))
            return comm_nccl_copy(recv, send, send_counts[0] * esize);
#endif
        memmove(recv, send, send_counts[0] * esize);
        return DS_OK;
    }
#ifdef DSTRAIN_HAVE_NCCL
    if (use_nccl(g, recv))
        return comm_nccl_all_to_allv(g->impl->nccl, send, send_counts, recv, recv_counts, type,
                                     g->size);
#endif
    /* bytes, so that every type travels (nothing is reduced); MPI's counts are int */
    int *counts = ds_calloc((size_t)g->size * 4, sizeof(int));
    if (!counts) return DS_ERR_INTERNAL;
    int *sc = counts, *sd = counts + g->size, *rc = counts + 2 * g->size,
        *rd = counts + 3 * g->size;
    size_t so = 0, ro = 0;
    int status = DS_OK;
    for (int r = 0; r < g->size && status == DS_OK; r++) {
        const size_t sb = send_counts[r] * esize, rb = recv_counts[r] * esize;
        if (so + sb > INT_MAX || ro + rb > INT_MAX)
            status = ds_error(DS_ERR_INTERNAL,
                              "comm: all-to-all of more than %d bytes per rank is more than "
                              "MPI's int count",
                              INT_MAX);
        sc[r] = (int)sb, sd[r] = (int)so, rc[r] = (int)rb, rd[r] = (int)ro;
        so += sb, ro += rb;
    }
    if (status == DS_OK)
        status =
            mpi_check(MPI_Alltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, g->impl->comm),
                      "MPI_Alltoallv");
    free(counts);
    return status;
}

int comm_barrier(const CommGroup *g)
{
    if (!g->impl) return DS_OK;
    return mpi_check(MPI_Barrier(g->impl->comm), "MPI_Barrier");
}

void comm_abort(const ProcessGrid *g, int status)
{
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    if (initialized) MPI_Finalized(&finalized);
    if (!initialized || finalized || g->world_size <= 1) return;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
}

void comm_fail(int status)
{
    fflush(stdout);
    fprintf(stderr, "dstrain: error: %s\n", ds_last_error());
    fflush(stderr);
    int initialized = 0, finalized = 0, size = 1;
    MPI_Initialized(&initialized);
    if (initialized) MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
    exit(status ? status : 1);
}
