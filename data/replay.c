/* replay.c: the replay buffer (see replay.h): Algorithm R or per-task reservoirs over fixed
 * slots, uniform seeded draws, and its HDF5 file per rank. All memory is allocated at init; adding
 * and drawing allocate nothing. Not here: batch composition (trainer/continual.c). */
#include "data/replay.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/common.h"

int replay_policy_parse(const char *text, ReplayPolicy *out)
{
    if (strcmp(text, "reservoir") == 0)
        *out = REPLAY_RESERVOIR;
    else if (strcmp(text, "task_balanced") == 0)
        *out = REPLAY_TASK_BALANCED;
    else
        return ds_error(DS_ERR_INPUT,
                        "continual.replay.policy: expected reservoir or task_balanced, got \"%s\"",
                        text);
    return DS_OK;
}

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias worth noticing (Lemire's multiply-shift). */
static int64_t rng_below(uint64_t *state, int64_t n)
{
    return (int64_t)(((unsigned __int128)rng_next(state) * (uint64_t)n) >> 64);
}

static int rank_capacity(int total, int rank, int size)
{
    return total / size + (rank < total % size ? 1 : 0);
}

int replay_init(ReplayBuffer *rb, ReplayPolicy policy, int capacity_total, int T, int dp_rank,
                int dp_size, uint64_t seed)
{
    memset(rb, 0, sizeof(*rb));
    if (capacity_total < 0 || T <= 0 || dp_size <= 0 || dp_rank < 0 || dp_rank >= dp_size)
        return ds_error(DS_ERR_INTERNAL, "replay_init: bad arguments");
    rb->policy = policy;
    rb->capacity_total = capacity_total;
    rb->capacity = rank_capacity(capacity_total, dp_rank, dp_size);
    rb->dp_rank = dp_rank;
    rb->dp_size = dp_size;
    rb->T = T;
    /* hash seed and rank into the start state: nearby seeds must not give shifted copies of
     * one splitmix stream */
    uint64_t h = seed ^ 0x5851f42d4c957f2dull;
    h = rng_next(&h) + (uint64_t)dp_rank;
    rb->rng = rng_next(&h);
    size_t slots = rb->capacity ? (size_t)rb->capacity : 1;
    rb->inputs = ds_calloc(slots * (size_t)T, sizeof(int32_t));
    rb->targets = ds_calloc(slots * (size_t)T, sizeof(int32_t));
    rb->mask = ds_calloc(slots * (size_t)T, 1);
    rb->labels = ds_calloc(slots, sizeof(int64_t));
    rb->task_ids = ds_calloc(slots, sizeof(int32_t));
    if (!rb->inputs || !rb->targets || !rb->mask || !rb->labels || !rb->task_ids) {
        replay_free(rb);
        return DS_ERR_INTERNAL;
    }
    return DS_OK;
}

int replay_init_sharded(ReplayBuffer *rb, ReplayPolicy policy, int capacity_total, int T,
                        int shard_rank, int shard_size, uint64_t seed)
{
    if (shard_size <= 0 || shard_rank < 0 || shard_rank >= shard_size)
        return ds_error(DS_ERR_INTERNAL, "replay_init_sharded: bad arguments");
    DS_TRY(replay_init(rb, policy, capacity_total, T, 0, 1, seed));
    if (shard_size == 1) return DS_OK;
    /* tokens of this rank's slots only; labels and task ids of all (every rank decides) */
    const size_t rows = (size_t)rank_capacity(capacity_total, shard_rank, shard_size);
    free(rb->inputs);
    free(rb->targets);
    free(rb->mask);
    rb->shard_rank = shard_rank;
    rb->shard_size = shard_size;
    rb->inputs = ds_calloc((rows ? rows : 1) * (size_t)T, sizeof(int32_t));
    rb->targets = ds_calloc((rows ? rows : 1) * (size_t)T, sizeof(int32_t));
    rb->mask = ds_calloc((rows ? rows : 1) * (size_t)T, 1);
    if (!rb->inputs || !rb->targets || !rb->mask) {
        replay_free(rb);
        return DS_ERR_INTERNAL;
    }
    return DS_OK;
}

int replay_holds(const ReplayBuffer *rb, int slot)
{
    return rb->shard_size <= 1 || slot % rb->shard_size == rb->shard_rank;
}

/* The row of slot's tokens in this rank's arrays (slot must be held here). */
static size_t slot_row(const ReplayBuffer *rb, int slot)
{
    return (size_t)(rb->shard_size > 1 ? slot / rb->shard_size : slot);
}

void replay_free(ReplayBuffer *rb)
{
    free(rb->inputs);
    free(rb->targets);
    free(rb->mask);
    free(rb->labels);
    free(rb->task_ids);
    memset(rb, 0, sizeof(*rb));
}

static void slot_store(ReplayBuffer *rb, int slot, const int32_t *inputs, const int32_t *targets,
                       const float *weights, int64_t label, int32_t task_id)
{
    rb->labels[slot] = label;
    rb->task_ids[slot] = task_id;
    if (!replay_holds(rb, slot)) return; /* another rank keeps the tokens */
    const size_t T = (size_t)rb->T, at = slot_row(rb, slot) * T;
    memcpy(rb->inputs + at, inputs, T * sizeof(int32_t));
    if (targets)
        memcpy(rb->targets + at, targets, T * sizeof(int32_t));
    else
        memset(rb->targets + at, 0, T * sizeof(int32_t));
    for (size_t t = 0; t < T; t++)
        rb->mask[at + t] = weights ? weights[t] > 0 : 1;
}

static int task_index(ReplayBuffer *rb, int32_t task_id, int create)
{
    for (int i = 0; i < rb->n_tasks; i++)
        if (rb->task_list[i] == task_id) return i;
    if (!create) return -1;
    if (rb->n_tasks >= REPLAY_MAX_TASKS)
        return -ds_error(DS_ERR_INPUT,
                         "continual.replay.policy: task_balanced keeps at most %d "
                         "tasks",
                         REPLAY_MAX_TASKS);
    rb->task_list[rb->n_tasks] = task_id;
    rb->task_seen[rb->n_tasks] = 0;
    rb->task_count[rb->n_tasks] = 0;
    return rb->n_tasks++;
}

/* The k-th filled slot (0-based, in slot order) that holds task_id. */
static int slot_of_task(const ReplayBuffer *rb, int32_t task_id, int k)
{
    for (int s = 0; s < rb->count; s++)
        if (rb->task_ids[s] == task_id && k-- == 0) return s;
    return -1;
}

int replay_add(ReplayBuffer *rb, const int32_t *inputs, const int32_t *targets,
               const float *weights, int64_t label, int32_t task_id)
{
    rb->seen++;
    if (rb->capacity == 0) return DS_OK;
    if (rb->policy == REPLAY_RESERVOIR) {
        /* Algorithm R: the n-th example replaces a random slot with probability capacity / n */
        if (rb->count < rb->capacity) {
            slot_store(rb, rb->count++, inputs, targets, weights, label, task_id);
            return DS_OK;
        }
        int64_t j = rng_below(&rb->rng, rb->seen);
        if (j < rb->capacity) slot_store(rb, (int)j, inputs, targets, weights, label, task_id);
        return DS_OK;
    }
    /* task_balanced: each of the n tasks seen so far gets capacity / n slots; within a task a
     * reservoir over that task's examples */
    int t = task_index(rb, task_id, 1);
    if (t < 0) return -t;
    rb->task_seen[t]++;
    if (rb->count < rb->capacity) {
        slot_store(rb, rb->count++, inputs, targets, weights, label, task_id);
        rb->task_count[t]++;
        return DS_OK;
    }
    int quota = rb->capacity / rb->n_tasks;
    if (quota < 1) quota = 1;
    if (rb->task_count[t] < quota) {
        /* take a random slot of the task holding the most */
        int big = 0;
        for (int i = 1; i < rb->n_tasks; i++)
            if (rb->task_count[i] > rb->task_count[big]) big = i;
        if (big == t || rb->task_count[big] == 0) return DS_OK;
        int slot =
            slot_of_task(rb, rb->task_list[big], (int)rng_below(&rb->rng, rb->task_count[big]));
        if (slot < 0) return ds_error(DS_ERR_INTERNAL, "replay: task counts out of step");
        slot_store(rb, slot, inputs, targets, weights, label, task_id);
        rb->task_count[big]--;
        rb->task_count[t]++;
        return DS_OK;
    }
    int64_t j = rng_below(&rb->rng, rb->task_seen[t]);
    if (j < rb->task_count[t]) {
        int slot = slot_of_task(rb, task_id, (int)j);
        if (slot < 0) return ds_error(DS_ERR_INTERNAL, "replay: task counts out of step");
        slot_store(rb, slot, inputs, targets, weights, label, task_id);
    }
    return DS_OK;
}

int replay_sample(ReplayBuffer *rb, int32_t *inputs, int32_t *targets, float *weights,
                  int64_t *label, int32_t *task_id)
{
    int s = 0;
    DS_TRY(replay_draw(rb, &s));
    return replay_read(rb, s, inputs, targets, weights, label, task_id);
}

int replay_draw(ReplayBuffer *rb, int *slot)
{
    if (rb->count == 0) return ds_error(DS_ERR_INTERNAL, "replay_sample: the buffer is empty");
    *slot = (int)rng_below(&rb->rng, rb->count);
    return DS_OK;
}

int replay_read(const ReplayBuffer *rb, int s, int32_t *inputs, int32_t *targets, float *weights,
                int64_t *label, int32_t *task_id)
{
    if (s < 0 || s >= rb->count || !replay_holds(rb, s))
        return ds_error(DS_ERR_INTERNAL, "replay_read: slot %d is not held here", s);
    const size_t T = (size_t)rb->T, at = slot_row(rb, s) * T;
    memcpy(inputs, rb->inputs + at, T * sizeof(int32_t));
    if (targets) memcpy(targets, rb->targets + at, T * sizeof(int32_t));
    if (weights)
        for (size_t t = 0; t < T; t++)
            weights[t] = rb->mask[at + t] ? 1.0f : 0.0f;
    if (label) *label = rb->labels[s];
    if (task_id) *task_id = rb->task_ids[s];
    return DS_OK;
}

void replay_shard_to_whole(const ReplayBuffer *rb, ReplayBuffer *whole)
{
    const size_t T = (size_t)rb->T;
    whole->count = rb->count;
    whole->seen = rb->seen;
    whole->rng = rb->rng;
    whole->n_tasks = rb->n_tasks;
    memcpy(whole->task_list, rb->task_list, sizeof(rb->task_list));
    memcpy(whole->task_seen, rb->task_seen, sizeof(rb->task_seen));
    memcpy(whole->task_count, rb->task_count, sizeof(rb->task_count));
    memset(whole->inputs, 0, (size_t)whole->capacity * T * sizeof(int32_t));
    memset(whole->targets, 0, (size_t)whole->capacity * T * sizeof(int32_t));
    memset(whole->mask, 0, (size_t)whole->capacity * T);
    for (int s = 0; s < rb->count && s < whole->capacity; s++) {
        whole->labels[s] = rb->labels[s];
        whole->task_ids[s] = rb->task_ids[s];
        if (!replay_holds(rb, s)) continue;
        const size_t from = slot_row(rb, s) * T, to = (size_t)s * T;
        memcpy(whole->inputs + to, rb->inputs + from, T * sizeof(int32_t));
        memcpy(whole->targets + to, rb->targets + from, T * sizeof(int32_t));
        memcpy(whole->mask + to, rb->mask + from, T);
    }
}

int replay_shard_from_whole(ReplayBuffer *rb, const ReplayBuffer *whole)
{
    if (whole->T != rb->T || whole->count > rb->capacity)
        return ds_error(DS_ERR_INTERNAL, "replay_shard_from_whole: buffers do not match");
    const size_t T = (size_t)rb->T;
    rb->count = whole->count;
    rb->seen = whole->seen;
    rb->rng = whole->rng;
    rb->n_tasks = whole->n_tasks;
    memcpy(rb->task_list, whole->task_list, sizeof(rb->task_list));
    memcpy(rb->task_seen, whole->task_seen, sizeof(rb->task_seen));
    memcpy(rb->task_count, whole->task_count, sizeof(rb->task_count));
    for (int s = 0; s < whole->count; s++) {
        rb->labels[s] = whole->labels[s];
        rb->task_ids[s] = whole->task_ids[s];
        if (!replay_holds(rb, s)) continue;
        const size_t to = slot_row(rb, s) * T, from = (size_t)s * T;
        memcpy(rb->inputs + to, whole->inputs + from, T * sizeof(int32_t));
        memcpy(rb->targets + to, whole->targets + from, T * sizeof(int32_t));
        memcpy(rb->mask + to, whole->mask + from, T);
    }
    return DS_OK;
}

/* ---- HDF5 files ------------------------------------------------------------------------------ */

/* Attributes: one int64 array "meta" = {format 1, policy, capacity_total, T, dp_rank, dp_size,
 * count, seen, rng, n_tasks}, then task_list / task_seen / task_count when n_tasks > 0. */
enum {
    META_FORMAT,
    META_POLICY,
    META_CAP,
    META_T,
    META_RANK,
    META_SIZE,
    META_COUNT,
    META_SEEN,
    META_RNG,
    META_NTASKS,
    META_LEN
};

static void rank_path(char *out, size_t cap, const char *dir, int rank)
{
    snprintf(out, cap, "%s/replay-rank-%05d.h5", dir, rank);
}

static herr_t write_attr(hid_t loc, const char *name, hid_t type, hsize_t n, const void *v)
{
    if (n == 0) return 0;
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, type, v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc;
}

static herr_t write_2d(hid_t file, const char *name, hid_t type, hsize_t rows, hsize_t cols,
                       const void *data)
{
    hsize_t dims[2] = {rows, cols};
    hid_t space = H5Screate_simple(cols ? 2 : 1, dims, NULL);
    hid_t d = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = d >= 0 ? (rows ? H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : 0) : -1;
    if (d >= 0) H5Dclose(d);
    H5Sclose(space);
    return rc;
}

int replay_save(const ReplayBuffer *rb, const char *dir)
{
    char path[4200], tmp[4300];
    if (rb->shard_size > 1)
        return ds_error(DS_ERR_INTERNAL, "replay_save: a sharded buffer saves as a whole one");
    rank_path(path, sizeof(path), dir, rb->dp_rank);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: cannot create", tmp);
    int64_t meta[META_LEN] = {
        1,         rb->policy, rb->capacity_total, rb->T,      rb->dp_rank, rb->dp_size,
        rb->count, rb->seen,   (int64_t)rb->rng,   rb->n_tasks};
    const hsize_t n = (hsize_t)rb->count, T = (hsize_t)rb->T;
    herr_t rc = write_attr(file, "meta", H5T_NATIVE_INT64, META_LEN, meta);
    if (rc >= 0)
        rc = write_attr(file, "task_list", H5T_NATIVE_INT32, (hsize_t)rb->n_tasks, rb->task_list);
    if (rc >= 0)
        rc = write_attr(file, "task_seen", H5T_NATIVE_INT64, (hsize_t)rb->n_tasks, rb->task_seen);
    if (rc >= 0)
        rc = write_attr(file, "task_count", H5T_NATIVE_INT, (hsize_t)rb->n_tasks, rb->task_count);
    if (rc >= 0) rc = write_2d(file, "inputs", H5T_NATIVE_INT32, n, T, rb->inputs);
    if (rc >= 0) rc = write_2d(file, "targets", H5T_NATIVE_INT32, n, T, rb->targets);
    if (rc >= 0) rc = write_2d(file, "loss_mask", H5T_NATIVE_UINT8, n, T, rb->mask);
    if (rc >= 0) rc = write_2d(file, "labels", H5T_NATIVE_INT64, n, 0, rb->labels);
    if (rc >= 0) rc = write_2d(file, "task_ids", H5T_NATIVE_INT32, n, 0, rb->task_ids);
    if (H5Fclose(file) < 0) rc = -1;
    if (rc < 0) {
        remove(tmp);
        return ds_error(DS_ERR_INTERNAL, "%s: writing the replay buffer failed", tmp);
    }
    if (rename(tmp, path) != 0)
        return ds_error(DS_ERR_INTERNAL, "%s: rename failed: %s", path, strerror(errno));
    return DS_OK;
}

typedef struct RankFile {
    hid_t file;
    int64_t meta[META_LEN];
} RankFile;

static int rank_open(RankFile *rf, const char *dir, int rank, char *path, size_t cap)
{
    rank_path(path, cap, dir, rank);
    H5E_BEGIN_TRY
    {
        rf->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (rf->file < 0) return ds_error(DS_ERR_INPUT, "%s: missing or not an HDF5 file", path);
    hid_t a = -1;
    H5E_BEGIN_TRY
    {
        a = H5Aopen(rf->file, "meta", H5P_DEFAULT);
    }
    H5E_END_TRY;
    hid_t space = a >= 0 ? H5Aget_space(a) : -1;
    int ok = a >= 0 && H5Sget_simple_extent_npoints(space) == META_LEN &&
             H5Aread(a, H5T_NATIVE_INT64, rf->meta) >= 0;
    if (space >= 0) H5Sclose(space);
    if (a >= 0) H5Aclose(a);
    const int64_t *m = rf->meta;
    if (!ok || m[META_FORMAT] != 1 || m[META_T] <= 0 || m[META_SIZE] <= 0 || m[META_RANK] != rank ||
        m[META_COUNT] < 0 || m[META_NTASKS] < 0 || m[META_NTASKS] > REPLAY_MAX_TASKS ||
        m[META_COUNT] > m[META_CAP]) {
        H5Fclose(rf->file);
        return ds_error(DS_ERR_INPUT, "%s: attribute meta: missing or inconsistent", path);
    }
    return DS_OK;
}

/* Read rows [first, first + rows) of a dataset of count rows (x T columns when T > 0). */
static int read_rows(hid_t file, const char *path, const char *name, hid_t type, int64_t count,
                     int T, int64_t first, int64_t rows, void *out)
{
    hid_t d = -1;
    H5E_BEGIN_TRY
    {
        d = H5Dopen2(file, name, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (d < 0) return ds_error(DS_ERR_INPUT, "%s: dataset %s: missing", path, name);
    hid_t fs = H5Dget_space(d);
    hsize_t dims[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, dims, NULL);
    int status = DS_OK;
    if (nd != (T ? 2 : 1) || dims[0] != (hsize_t)count || (T && dims[1] != (hsize_t)T)) {
        status = ds_error(DS_ERR_INPUT, "%s: dataset %s: expected %lld rows%s", path, name,
                          (long long)count, T ? " of seq_len tokens" : "");
    } else if (rows > 0) {
        hsize_t start[2] = {(hsize_t)first, 0}, cnt[2] = {(hsize_t)rows, (hsize_t)T};
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
        hid_t ms = H5Screate_simple(T ? 2 : 1, cnt, NULL);
        if (H5Dread(d, type, ms, fs, H5P_DEFAULT, out) < 0)
            status = ds_error(DS_ERR_INPUT, "%s: dataset %s: unreadable", path, name);
        H5Sclose(ms);
    }
    H5Sclose(fs);
    H5Dclose(d);
    return status;
}

static int read_item(ReplayBuffer *rb, RankFile *rf, const char *path, int64_t row, int slot)
{
    const int64_t n = rf->meta[META_COUNT];
    const int T = rb->T;
    DS_TRY(read_rows(rf->file, path, "inputs", H5T_NATIVE_INT32, n, T, row, 1,
                     rb->inputs + (size_t)slot * T));
    DS_TRY(read_rows(rf->file, path, "targets", H5T_NATIVE_INT32, n, T, row, 1,
                     rb->targets + (size_t)slot * T));
    DS_TRY(read_rows(rf->file, path, "loss_mask", H5T_NATIVE_UINT8, n, T, row, 1,
                     rb->mask + (size_t)slot * T));
    DS_TRY(read_rows(rf->file, path, "labels", H5T_NATIVE_INT64, n, 0, row, 1, rb->labels + slot));
    DS_TRY(
        read_rows(rf->file, path, "task_ids", H5T_NATIVE_INT32, n, 0, row, 1, rb->task_ids + slot));
    return DS_OK;
}

static int read_task_attrs(RankFile *rf, const char *path, int32_t *list, int64_t *seen, int *count)
{
    const int64_t nt = rf->meta[META_NTASKS];
    if (nt == 0) return DS_OK;
    const char *names[3] = {"task_list", "task_seen", "task_count"};
    hid_t types[3] = {H5T_NATIVE_INT32, H5T_NATIVE_INT64, H5T_NATIVE_INT};
    void *outs[3] = {list, seen, count};
    for (int i = 0; i < 3; i++) {
        hid_t a = -1;
        H5E_BEGIN_TRY
        {
            a = H5Aopen(rf->file, names[i], H5P_DEFAULT);
        }
        H5E_END_TRY;
        hid_t space = a >= 0 ? H5Aget_space(a) : -1;
        int ok = a >= 0 && H5Sget_simple_extent_npoints(space) == nt &&
                 H5Aread(a, types[i], outs[i]) >= 0;
        if (space >= 0) H5Sclose(space);
        if (a >= 0) H5Aclose(a);
        if (!ok)
            return ds_error(DS_ERR_INPUT, "%s: attribute %s: missing or wrong length", path,
                            names[i]);
    }
    return DS_OK;
}

int replay_load(ReplayBuffer *rb, const char *dir)
{
    char path[4200];
    RankFile rf;
    DS_TRY(rank_open(&rf, dir, 0, path, sizeof(path)));
    const int old_size = (int)rf.meta[META_SIZE];
    H5Fclose(rf.file);
    int status = DS_OK;
    rb->count = 0;
    rb->seen = 0;
    rb->n_tasks = 0;
    int64_t seen_total = 0, global = 0;
    for (int r = 0; r < old_size && status == DS_OK; r++) {
        if ((status = rank_open(&rf, dir, r, path, sizeof(path))) != DS_OK) break;
        if (rf.meta[META_T] != rb->T || rf.meta[META_SIZE] != old_size) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: examples of %lld tokens from %lld ranks; this run "
                              "has seq_len %d (and rank 0's file says %d ranks)",
                              path, (long long)rf.meta[META_T], (long long)rf.meta[META_SIZE],
                              rb->T, old_size);
            H5Fclose(rf.file);
            break;
        }
        seen_total += rf.meta[META_SEEN];
        int32_t list[REPLAY_MAX_TASKS];
        int64_t tseen[REPLAY_MAX_TASKS];
        int tcount[REPLAY_MAX_TASKS];
        status = read_task_attrs(&rf, path, list, tseen, tcount);
        const int same_layout = old_size == rb->dp_size;
        if (status == DS_OK && same_layout && r == rb->dp_rank) {
            /* our own file: everything back as it was, random state included */
            int64_t n = rf.meta[META_COUNT];
            for (int64_t i = 0; i < n && status == DS_OK && rb->count < rb->capacity; i++)
                status = read_item(rb, &rf, path, i, rb->count++);
            rb->seen = rf.meta[META_SEEN];
            rb->rng = (uint64_t)rf.meta[META_RNG];
            rb->n_tasks = (int)rf.meta[META_NTASKS];
            memcpy(rb->task_list, list, sizeof(int32_t) * rb->n_tasks);
            memcpy(rb->task_seen, tseen, sizeof(int64_t) * rb->n_tasks);
            memcpy(rb->task_count, tcount, sizeof(int) * rb->n_tasks);
        } else if (status == DS_OK && !same_layout) {
            int64_t n = rf.meta[META_COUNT];
            for (int64_t i = 0; i < n && status == DS_OK; i++, global++)
                if (global % rb->dp_size == rb->dp_rank && rb->count < rb->capacity)
                    status = read_item(rb, &rf, path, i, rb->count++);
            for (int i = 0; i < (int)rf.meta[META_NTASKS] && status == DS_OK; i++) {
                int t = task_index(rb, list[i], 1);
                if (t < 0)
                    status = -t;
                else
                    rb->task_seen[t] += tseen[i];
            }
        }
        H5Fclose(rf.file);
    }
    if (status != DS_OK) {
        rb->count = 0;
        return status;
    }
    if (old_size != rb->dp_size) {
        /* split the counts seen evenly, so that Algorithm R keeps its acceptance rate */
        rb->seen = seen_total / rb->dp_size + (rb->dp_rank < seen_total % rb->dp_size ? 1 : 0);
        if (rb->seen < rb->count) rb->seen = rb->count;
        for (int t = 0; t < rb->n_tasks; t++) {
            rb->task_seen[t] /= rb->dp_size;
            rb->task_count[t] = 0;
        }
        for (int s = 0; s < rb->count; s++) {
            int t = task_index(rb, rb->task_ids[s], 1);
            if (t < 0) return -t;
            rb->task_count[t]++;
            if (rb->task_seen[t] < rb->task_count[t]) rb->task_seen[t] = rb->task_count[t];
        }
    }
    return DS_OK;
}

/* ---- the whole buffer as bytes (a training checkpoint's blob) ------------------------------ */

/* Header, then labels and task ids of every slot, then the tokens and masks of the filled ones.
 * The header holds every field a later draw or add depends on (random state, counts, task
 * bookkeeping), so a buffer read back continues exactly. */
typedef struct ReplayBlobHeader {
    uint32_t magic, version;
    int32_t policy, capacity_total, T, count, n_tasks, pad;
    int64_t seen;
    uint64_t rng;
} ReplayBlobHeader;

#define REPLAY_BLOB_MAGIC 0x59504c52u /* "RLPY" */

size_t replay_serialized_size(const ReplayBuffer *whole)
{
    const size_t slots = (size_t)whole->capacity_total, filled = (size_t)whole->count;
    return sizeof(ReplayBlobHeader) + (size_t)whole->n_tasks * (4 + 8 + 4) +
           slots * (sizeof(int64_t) + sizeof(int32_t)) +
           filled * (size_t)whole->T * (2 * sizeof(int32_t) + 1);
}

#define BLOB_PUT(src, bytes)                                                                       \
    do {                                                                                           \
        memcpy(p, (src), (bytes));                                                                 \
        p += (bytes);                                                                              \
    } while (0)

int replay_serialize(const ReplayBuffer *whole, void *out, size_t cap)
{
    if (whole->shard_size > 1 || whole->dp_size != 1 || cap < replay_serialized_size(whole))
        return ds_error(DS_ERR_INTERNAL, "replay_serialize: an unsharded buffer and room needed");
    ReplayBlobHeader h = {REPLAY_BLOB_MAGIC, 1,        whole->policy, whole->capacity_total,
                          whole->T,          whole->count, whole->n_tasks, 0,
                          whole->seen,       whole->rng};
    unsigned char *p = out;
    const size_t nt = (size_t)whole->n_tasks, slots = (size_t)whole->capacity_total;
    const size_t tok = (size_t)whole->count * (size_t)whole->T;
    BLOB_PUT(&h, sizeof(h));
    BLOB_PUT(whole->task_list, nt * 4);
    BLOB_PUT(whole->task_seen, nt * 8);
    BLOB_PUT(whole->task_count, nt * 4);
    BLOB_PUT(whole->labels, slots * sizeof(int64_t));
    BLOB_PUT(whole->task_ids, slots * sizeof(int32_t));
    BLOB_PUT(whole->inputs, tok * sizeof(int32_t));
    BLOB_PUT(whole->targets, tok * sizeof(int32_t));
    BLOB_PUT(whole->mask, tok);
    return DS_OK;
}

#define BLOB_GET(dst, bytes)                                                                       \
    do {                                                                                           \
        memcpy((dst), p, (bytes));                                                                 \
        p += (bytes);                                                                              \
    } while (0)

int replay_deserialize(ReplayBuffer *whole, const void *in, size_t size)
{
    ReplayBlobHeader h;
    if (size < sizeof(h)) return ds_error(DS_ERR_INPUT, "replay blob: truncated");
    memcpy(&h, in, sizeof(h));
    if (h.magic != REPLAY_BLOB_MAGIC || h.version != 1)
        return ds_error(DS_ERR_INPUT, "replay blob: not a replay buffer of this version");
    if (h.capacity_total != whole->capacity_total || h.T != whole->T ||
        h.policy != (int32_t)whole->policy)
        return ds_error(DS_ERR_INPUT,
                        "replay blob: saved with capacity %d, seq_len %d, policy %d; this run has "
                        "%d, %d, %d (continual.replay.* or train.seq_len changed)",
                        h.capacity_total, h.T, h.policy, whole->capacity_total, whole->T,
                        (int)whole->policy);
    if (h.count < 0 || h.count > h.capacity_total || h.n_tasks < 0 ||
        h.n_tasks > REPLAY_MAX_TASKS || h.seen < h.count)
        return ds_error(DS_ERR_INPUT, "replay blob: counts out of range");
    whole->count = h.count;
    whole->n_tasks = h.n_tasks;
    whole->seen = h.seen;
    whole->rng = h.rng;
    if (size != replay_serialized_size(whole))
        return ds_error(DS_ERR_INPUT, "replay blob: %zu bytes, expected %zu", size,
                        replay_serialized_size(whole));
    const unsigned char *p = (const unsigned char *)in + sizeof(h);
    const size_t nt = (size_t)h.n_tasks, slots = (size_t)h.capacity_total;
    const size_t tok = (size_t)h.count * (size_t)h.T;
    BLOB_GET(whole->task_list, nt * 4);
    BLOB_GET(whole->task_seen, nt * 8);
    BLOB_GET(whole->task_count, nt * 4);
    BLOB_GET(whole->labels, slots * sizeof(int64_t));
    BLOB_GET(whole->task_ids, slots * sizeof(int32_t));
    BLOB_GET(whole->inputs, tok * sizeof(int32_t));
    BLOB_GET(whole->targets, tok * sizeof(int32_t));
    BLOB_GET(whole->mask, tok);
    return DS_OK;
}
