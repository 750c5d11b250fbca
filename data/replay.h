/* replay.h: the replay buffer of continual learning: examples already trained on (token window
 * or padded example, its loss mask, label and task id), kept by reservoir sampling (Vitter's
 * Algorithm R) or balanced per task, sharded over data-parallel ranks, saved as one HDF5 file per
 * rank or as bytes (a checkpoint's blob). A saved buffer says what it holds (policy, capacity,
 * seq_len, vocabulary, task type); loading checks it against the run and converts what can be
 * converted soundly (capacity, policy, number of ranks) or refuses. Not here: how many replayed
 * examples a batch takes (trainer/train.c). */
#ifndef DSTRAIN_REPLAY_H
#define DSTRAIN_REPLAY_H

#include <stddef.h>
#include <stdint.h>

typedef enum ReplayPolicy { REPLAY_RESERVOIR = 0, REPLAY_TASK_BALANCED } ReplayPolicy;

#define REPLAY_MAX_TASKS 1024

typedef struct ReplayBuffer {
    ReplayPolicy policy;
    int capacity_total; /* over all data-parallel ranks */
    int capacity;       /* this rank's slots: capacity_total / dp_size, + 1 on the first ranks */
    int dp_rank, dp_size;
    int T;        /* tokens per example */
    /* what the run trains (replay_set_task): stored with the buffer, checked on load */
    int vocab_size; /* 0: not told (nothing checked) */
    int num_labels; /* classification: the number of labels; 0: causal LM; -1: not told */
    int count;    /* slots filled */
    int64_t seen; /* examples offered to this rank (Algorithm R's n) */
    uint64_t rng;
    int32_t *inputs, *targets; /* [capacity, T] */
    uint8_t *mask;             /* [capacity, T] 1 = trained on */
    int64_t *labels;           /* [capacity], -1 when none */
    int32_t *task_ids;         /* [capacity] */
    /* task_balanced bookkeeping: tasks in order of first appearance */
    int n_tasks;
    int32_t task_list[REPLAY_MAX_TASKS];
    int64_t task_seen[REPLAY_MAX_TASKS];
    int task_count[REPLAY_MAX_TASKS];
    /* replay_init_sharded: one global buffer whose decisions (Algorithm R's draws, counts,
     * labels and task ids) every data-parallel rank makes alike, while the tokens of global slot
     * s live only on rank s % shard_size (row s / shard_size). 0 for replay_init's buffers. */
    int shard_rank, shard_size;
} ReplayBuffer;

int replay_policy_parse(const char *text, ReplayPolicy *out);

/* This rank's share of capacity_total slots of T tokens; seed makes the choices reproducible. */
int replay_init(ReplayBuffer *rb, ReplayPolicy policy, int capacity_total, int T, int dp_rank,
                int dp_size, uint64_t seed);
void replay_free(ReplayBuffer *rb);
/* Tell the buffer what the run trains: the model's vocabulary and num_labels (0 for a causal
 * LM). Saved with it, and a buffer loaded into it (replay_load, replay_deserialize) must match:
 * a saved buffer of another task type, number of labels, vocabulary or seq_len, or holding a
 * token or label outside them, is refused with DS_ERR_INPUT naming the file and the field. Not
 * told, a buffer checks only seq_len. */
int replay_set_task(ReplayBuffer *rb, int vocab_size, int num_labels);
/* An unsharded buffer (rank 0 of 1) of rb's policy, capacity_total, T and task, for saving or
 * loading rb as a whole (replay_shard_to_whole / replay_shard_from_whole). */
int replay_init_whole(ReplayBuffer *whole, const ReplayBuffer *rb, uint64_t seed);

/* A global buffer of capacity_total slots whose tokens are split over shard_size ranks (see
 * shard_rank above). Every rank offers every example of the global batch in the same order
 * (replay_add) and draws the same slots (replay_draw); the holder of a slot reads it
 * (replay_read) and hands it to the rank that trains on it. With shard_size 1 this is
 * replay_init(..., 0, 1, seed): the same choices as a single process, whatever the layout. */
int replay_init_sharded(ReplayBuffer *rb, ReplayPolicy policy, int capacity_total, int T,
                        int shard_rank, int shard_size, uint64_t seed);
/* The slot replay_sample would take next (same random sequence), without reading it. */
int replay_draw(ReplayBuffer *rb, int *slot);
/* Whether this rank holds the tokens of filled slot `slot`. */
int replay_holds(const ReplayBuffer *rb, int slot);
/* Copy filled slot `slot` (held here) as replay_sample does; DS_ERR_INTERNAL otherwise. */
int replay_read(const ReplayBuffer *rb, int slot, int32_t *inputs, int32_t *targets,
                float *weights, int64_t *label, int32_t *task_id);
/* Between a sharded buffer and an unsharded one of the same capacity (replay_init_whole), for
 * saving and loading through one file whatever the number of ranks: to_whole copies the state
 * and the rows held here into whole (other rows zeroed; the caller sums whole's inputs, targets
 * and mask over the ranks), from_whole takes the state and this rank's rows. */
void replay_shard_to_whole(const ReplayBuffer *rb, ReplayBuffer *whole);
int replay_shard_from_whole(ReplayBuffer *rb, const ReplayBuffer *whole);

/* Offer one trained-on example (weights > 0 is the loss mask; targets may be NULL for
 * classification). It is kept or not per the policy; every example offered counts. */
int replay_add(ReplayBuffer *rb, const int32_t *inputs, const int32_t *targets,
               const float *weights, int64_t label, int32_t task_id);

/* Draw one example uniformly from the filled slots (seeded): inputs, targets (may be NULL),
 * weights (0/1 from the mask, may be NULL), label and task id (may be NULL). DS_ERR_INTERNAL
 * when empty. */
int replay_sample(ReplayBuffer *rb, int32_t *inputs, int32_t *targets, float *weights,
                  int64_t *label, int32_t *task_id);

/* The whole (unsharded: replay_init_whole, or replay_init with rank 0 of 1) buffer as bytes,
 * with its task, random state and bookkeeping, for a training checkpoint's blob (little-endian,
 * versioned, every count checked on the way back). Deserialized into a buffer of the same
 * policy and capacity it continues exactly (the same draws and adds); into another it is
 * converted as replay_load converts a file, and refused (DS_ERR_INPUT, "replay blob: field:
 * problem") when it cannot be. */
size_t replay_serialized_size(const ReplayBuffer *whole);
int replay_serialize(const ReplayBuffer *whole, void *out, size_t cap);
int replay_deserialize(ReplayBuffer *whole, const void *in, size_t size);

/* dir/replay-rank-<r>.h5, one per rank, written atomically (temporary name, then rename). */
int replay_save(const ReplayBuffer *rb, const char *dir);
/* Restore from dir. With the same number of ranks, policy and capacity each rank gets back
 * exactly its own buffer (and random state). Otherwise the buffer is converted:
 *  - another number of ranks: the old ranks' examples, in rank order, are dealt round-robin to
 *    the new ranks (example g to rank g % dp_size) and the counts seen are split evenly;
 *  - fewer slots than examples: a uniform random subset is kept (reservoir: a uniform sample of
 *    a uniform sample is one; task_balanced: each task's share, uniform within the task), drawn
 *    from the file's random state, so the choice does not depend on the run's seed;
 *  - more slots: the examples are kept and the next ones fill the free slots (the one change
 *    after which the buffer over-represents what comes next, until the stream is long);
 *  - another policy: the per-task bookkeeping is rebuilt from the slots (a reservoir file's
 *    counts seen per task estimated from its shares).
 * Refused (DS_ERR_INPUT naming the file and the field): another seq_len, and with
 * replay_set_task another task type, number of labels or vocabulary, or contents outside them. */
int replay_load(ReplayBuffer *rb, const char *dir);

#endif
