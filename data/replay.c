/* replay.c: the replay buffer (see replay.h): Algorithm R or per-task reservoirs over fixed
 * slots, uniform seeded draws, its HDF5 file per rank and its bytes for a checkpoint. A buffer
 * read back (either way) is first an image of its filled slots, checked against the run and then
 * taken in exactly or converted (replay_adopt): one place decides what a saved buffer may become.
 * All memory is allocated at init; adding and drawing allocate nothing. Not here: batch
 * composition (trainer/train.c). */
#include "data/replay.h"

#include "data/hdf5_check.h"

#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    rb->num_labels = -1; /* not told */
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

int replay_set_task(ReplayBuffer *rb, int vocab_size, int num_labels)
{
    if (vocab_size <= 0 || num_labels < 0)
        return ds_error(DS_ERR_INTERNAL, "replay_set_task: vocab_size %d, num_labels %d",
                        vocab_size, num_labels);
    rb->vocab_size = vocab_size;
    rb->num_labels = num_labels;
    return DS_OK;
}

int replay_init_whole(ReplayBuffer *whole, const ReplayBuffer *rb, uint64_t seed)
{
    DS_TRY(replay_init(whole, rb->policy, rb->capacity_total, rb->T, 0, 1, seed));
    whole->vocab_size = rb->vocab_size;
    whole->num_labels = rb->num_labels;
    return DS_OK;
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
    whole->vocab_size = rb->vocab_size;
    whole->num_labels = rb->num_labels;
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
    if (rb->num_labels < 0) { /* a buffer not told takes what the whole one was */
        rb->vocab_size = whole->vocab_size;
        rb->num_labels = whole->num_labels;
    }
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

/* ---- a saved buffer taken into the run's: checks, then exactly or converted ------------------ */

/* An image of a saved buffer: an unsharded buffer whose capacity is its filled slots (replay_init
 * with capacity_total = count), then capacity_total set to what was saved. */
static int image_init(ReplayBuffer *img, ReplayPolicy policy, int64_t count, int T)
{
    if (count < 0 || count > INT32_MAX)
        return ds_error(DS_ERR_INTERNAL, "replay image of %lld examples", (long long)count);
    return replay_init(img, policy, (int)count, T, 0, 1, 0);
}

static const char *type_name(int num_labels)
{
    return num_labels > 0 ? "classification" : "causal_lm";
}

/* What img holds against what rb trains: seq_len, task type, labels and vocabulary as saved,
 * then every label and token against the run's (or, where rb was not told, the buffer's own
 * word): a file that says nothing about itself is judged by what it holds, and one that says
 * something must hold that. */
static int check_task(const ReplayBuffer *rb, const ReplayBuffer *img, const char *from)
{
    if (img->T != rb->T)
        return ds_error(DS_ERR_INPUT,
                        "%s: seq_len: the buffer's examples have %d tokens; this run has "
                        "train.seq_len %d",
                        from, img->T, rb->T);
    if (rb->num_labels >= 0 && img->num_labels >= 0) {
        if ((rb->num_labels > 0) != (img->num_labels > 0))
            return ds_error(DS_ERR_INPUT, "%s: task.type: a %s buffer; this run trains %s", from,
                            type_name(img->num_labels), type_name(rb->num_labels));
        if (img->num_labels != rb->num_labels)
            return ds_error(DS_ERR_INPUT,
                            "%s: task.num_labels: the buffer's examples have %d labels; this run "
                            "has %d",
                            from, img->num_labels, rb->num_labels);
    }
    if (rb->vocab_size > 0 && img->vocab_size > 0 && img->vocab_size != rb->vocab_size)
        return ds_error(DS_ERR_INPUT,
                        "%s: vocab_size: the buffer's tokens are of a vocabulary of %d; this "
                        "model has %d",
                        from, img->vocab_size, rb->vocab_size);
    const int num_labels = rb->num_labels >= 0 ? rb->num_labels : img->num_labels;
    const int vocab_size = rb->vocab_size > 0 ? rb->vocab_size : img->vocab_size;
    const size_t T = (size_t)img->T;
    for (int s = 0; s < img->count; s++) {
        const int64_t label = img->labels[s];
        if (num_labels == 0 && label != -1)
            return ds_error(DS_ERR_INPUT,
                            "%s: labels: slot %d holds label %lld (a classification buffer); "
                            "this run trains causal_lm",
                            from, s, (long long)label);
        if (num_labels > 0 && (label < 0 || label >= num_labels))
            return ds_error(DS_ERR_INPUT,
                            "%s: labels: slot %d holds label %lld, outside [0, task.num_labels = "
                            "%d)%s",
                            from, s, (long long)label, num_labels,
                            label == -1 ? " (a causal-LM buffer)" : "");
        if (vocab_size <= 0) continue;
        const int32_t *in = img->inputs + s * T, *tg = img->targets + s * T;
        for (size_t t = 0; t < T; t++) {
            const int bad_in = in[t] < 0 || in[t] >= vocab_size;
            if (bad_in || tg[t] < 0 || tg[t] >= vocab_size)
                return ds_error(
                    DS_ERR_INPUT, "%s: %s: slot %d holds token %d, outside the vocabulary [0, %d)",
                    from, bad_in ? "inputs" : "targets", s, bad_in ? in[t] : tg[t], vocab_size);
        }
    }
    return DS_OK;
}

/* Keep k of the n candidates, a uniform random subset in their order (selection sampling, Knuth's
 * Algorithm S: the i-th is kept with probability (k - kept) / (n - i)). */
static void choose_uniform(uint64_t *state, const int *cand, int n, int k, uint8_t *keep)
{
    int kept = 0;
    for (int i = 0; i < n && kept < k; i++)
        if (rng_below(state, n - i) < k - kept) {
            keep[cand[i]] = 1;
            kept++;
        }
}

/* rb takes img's slots (img->count rows, all filled) and state. exact: img is rb's own saved
 * buffer and, when policy and capacity agree, comes back as it was, random state included.
 * Otherwise at most rb->capacity slots are kept (a uniform subset, per task under task_balanced,
 * drawn from choose_seed), the counts seen and img's random state are kept, and the per-task
 * bookkeeping is rebuilt from the slots. */
static int replay_adopt(ReplayBuffer *rb, const ReplayBuffer *img, int exact, uint64_t choose_seed,
                        const char *from)
{
    DS_TRY(check_task(rb, img, from));
    const int n = img->count;
    if (img->seen < n || img->n_tasks < 0 || img->n_tasks > REPLAY_MAX_TASKS)
        return ds_error(DS_ERR_INPUT, "%s: meta: %d examples kept of %lld seen, %d tasks", from, n,
                        (long long)img->seen, img->n_tasks);
    for (int i = 0; i < img->n_tasks; i++)
        if (img->task_seen[i] < 0) return ds_error(DS_ERR_INPUT, "%s: task_seen: negative", from);
    /* the distinct tasks: img's list first (its order breaks task_balanced's ties), then the
     * others in slot order; have[i] = slots of task order[i] */
    int32_t order[REPLAY_MAX_TASKS];
    int have[REPLAY_MAX_TASKS], n_order = 0;
    for (int i = 0; i < img->n_tasks; i++) {
        for (int j = 0; j < n_order; j++)
            if (order[j] == img->task_list[i])
                return ds_error(DS_ERR_INPUT, "%s: task_list: task %d twice", from,
                                img->task_list[i]);
        order[n_order] = img->task_list[i];
        have[n_order++] = 0;
    }
    int *task_of = ds_malloc((size_t)(n ? n : 1) * sizeof(int)); /* slot -> index in order */
    uint8_t *keep = ds_calloc((size_t)(n ? n : 1), 1);
    int *cand = ds_malloc((size_t)(n ? n : 1) * sizeof(int));
    int status = DS_OK;
    if (!task_of || !keep || !cand) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    for (int s = 0; s < n; s++) {
        int j = 0;
        while (j < n_order && order[j] != img->task_ids[s])
            j++;
        if (j == n_order) {
            if (n_order == REPLAY_MAX_TASKS) {
                status = ds_error(DS_ERR_INPUT, "%s: task_ids: more than %d tasks", from,
                                  REPLAY_MAX_TASKS);
                goto done;
            }
            if (exact && img->policy == REPLAY_TASK_BALANCED) {
                status = ds_error(DS_ERR_INPUT, "%s: task_list: slot %d's task %d is not in it",
                                  from, s, img->task_ids[s]);
                goto done;
            }
            order[n_order] = img->task_ids[s];
            have[n_order++] = 0;
        }
        task_of[s] = j;
        have[j]++;
    }
    const int as_saved = exact && img->policy == rb->policy &&
                         img->capacity_total == rb->capacity_total && n <= rb->capacity;
    int k = n;
    if (as_saved || n <= rb->capacity) {
        memset(keep, 1, (size_t)n);
    } else if (rb->policy == REPLAY_RESERVOIR) {
        k = rb->capacity;
        for (int s = 0; s < n; s++)
            cand[s] = s;
        choose_uniform(&choose_seed, cand, n, k, keep);
    } else {
        /* task_balanced: each task its share of the slots (water-filling: a task with fewer
         * examples than its share keeps them all and leaves the rest to the others, earlier tasks
         * first for what does not divide), a uniform subset within each task */
        int quota[REPLAY_MAX_TASKS] = {0}, left = rb->capacity;
        k = rb->capacity;
        while (left > 0) {
            int open = 0;
            for (int j = 0; j < n_order; j++)
                open += quota[j] < have[j];
            if (open == 0) break;
            const int share = left / open;
            for (int j = 0; j < n_order && left > 0; j++) {
                if (quota[j] >= have[j]) continue;
                int add = share > 0 ? share : 1;
                if (add > have[j] - quota[j]) add = have[j] - quota[j];
                if (add > left) add = left;
                quota[j] += add;
                left -= add;
            }
        }
        for (int j = 0; j < n_order; j++) {
            int m = 0;
            for (int s = 0; s < n; s++)
                if (task_of[s] == j) cand[m++] = s;
            choose_uniform(&choose_seed, cand, m, quota[j], keep);
        }
    }
    /* the kept slots, in their order */
    const size_t T = (size_t)rb->T;
    int c = 0;
    for (int s = 0; s < n; s++) {
        if (!keep[s]) continue;
        rb->labels[c] = img->labels[s];
        rb->task_ids[c] = img->task_ids[s];
        memcpy(rb->inputs + c * T, img->inputs + s * T, T * sizeof(int32_t));
        memcpy(rb->targets + c * T, img->targets + s * T, T * sizeof(int32_t));
        memcpy(rb->mask + c * T, img->mask + s * T, T);
        task_of[c++] = task_of[s];
    }
    if (c != k) {
        status = ds_error(DS_ERR_INTERNAL, "replay_adopt: kept %d of %d", c, k);
        goto done;
    }
    rb->count = k;
    rb->seen = img->seen;
    rb->rng = img->rng;
    if (rb->num_labels < 0) rb->num_labels = img->num_labels; /* not told: the buffer's word */
    if (rb->vocab_size <= 0) rb->vocab_size = img->vocab_size;
    /* bookkeeping from the slots: img's counts seen per task where it kept them, else the task's
     * share of everything seen (what a reservoir holds of a task estimates its share); as saved,
     * img's list as it was (a reservoir keeps none) */
    rb->n_tasks = as_saved ? img->n_tasks : n_order;
    for (int j = 0; j < rb->n_tasks; j++) {
        rb->task_list[j] = order[j];
        rb->task_count[j] = 0;
        rb->task_seen[j] =
            j < img->n_tasks ? img->task_seen[j] : (int64_t)((double)img->seen * have[j] / n + 0.5);
    }
    for (int s = 0; s < k; s++)
        if (task_of[s] < rb->n_tasks) rb->task_count[task_of[s]]++;
    for (int j = 0; j < rb->n_tasks; j++) {
        if (as_saved && img->policy == REPLAY_TASK_BALANCED && j < img->n_tasks &&
            img->task_count[j] != rb->task_count[j]) {
            status =
                ds_error(DS_ERR_INPUT, "%s: task_count: task %d has %d slots, the file says %d",
                         from, order[j], rb->task_count[j], img->task_count[j]);
            goto done;
        }
        if (rb->task_seen[j] < rb->task_count[j]) rb->task_seen[j] = rb->task_count[j];
    }
done:
    if (status != DS_OK) {
        rb->count = 0;
        rb->seen = 0;
        rb->n_tasks = 0;
    }
    free(task_of);
    free(keep);
    free(cand);
    return status;
}

/* ---- HDF5 files ------------------------------------------------------------------------------ */

/* Attributes: one int64 array "meta" = {format, policy, capacity_total, T, dp_rank, dp_size,
 * count, seen, rng, n_tasks, vocab_size, num_labels} (format 1 has the first 10: written before
 * the buffer said what it holds), then task_list / task_seen / task_count when n_tasks > 0.
 * Datasets of count rows: inputs, targets, loss_mask [count, T]; labels, task_ids [count]. */
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
    META_VOCAB,
    META_LABELS,
    META_LEN,
    META_LEN_1 = META_VOCAB /* format 1 */
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
        2,         rb->policy, rb->capacity_total, rb->T,       rb->dp_rank,    rb->dp_size,
        rb->count, rb->seen,   (int64_t)rb->rng,   rb->n_tasks, rb->vocab_size, rb->num_labels};
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

/* hdf5_check_number_type of a stored type (H5Aget_type's or H5Dget_type's), closed here. */
static int number_type_check(hid_t type, const char *path, const char *what, const char *name)
{
    if (type < 0) return ds_error(DS_ERR_INPUT, "%s: %s %s: unreadable type", path, what, name);
    const int status = hdf5_check_number_type(type, path, what, name);
    H5Tclose(type);
    return status;
}

/* Open dir's file of rank and read its meta (format 1: vocabulary and labels not told). */
static int rank_open(RankFile *rf, const char *dir, int rank, char *path, size_t cap)
{
    rank_path(path, cap, dir, rank);
    rf->file = -1;
    struct stat st;
    /* libhdf5 trusts sizes in the file that these check first (data/hdf5_check.h) */
    if (stat(path, &st) == 0) DS_TRY(hdf5_check_root_attributes(path));
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
    const hssize_t len = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    int ok = len == META_LEN || len == META_LEN_1;
    const int typed = ok ? number_type_check(H5Aget_type(a), path, "attribute", "meta") : DS_OK;
    ok = ok && typed == DS_OK && H5Aread(a, H5T_NATIVE_INT64, rf->meta) >= 0;
    if (space >= 0) H5Sclose(space);
    if (a >= 0) H5Aclose(a);
    if (typed != DS_OK) {
        H5Fclose(rf->file);
        return typed;
    }
    int64_t *m = rf->meta;
    if (ok && len == META_LEN_1) {
        m[META_VOCAB] = 0;
        m[META_LABELS] = -1;
    }
    if (!ok || m[META_FORMAT] != (len == META_LEN ? 2 : 1) || m[META_T] <= 0 ||
        m[META_T] > INT32_MAX || m[META_SIZE] <= 0 || m[META_RANK] != rank ||
        m[META_POLICY] < REPLAY_RESERVOIR || m[META_POLICY] > REPLAY_TASK_BALANCED ||
        m[META_CAP] < 0 || m[META_CAP] > INT32_MAX || m[META_COUNT] < 0 ||
        m[META_COUNT] > m[META_CAP] || m[META_SEEN] < m[META_COUNT] || m[META_NTASKS] < 0 ||
        m[META_NTASKS] > REPLAY_MAX_TASKS || m[META_VOCAB] < 0 || m[META_VOCAB] > INT32_MAX ||
        m[META_LABELS] < -1 || m[META_LABELS] > INT32_MAX) {
        H5Fclose(rf->file);
        return ds_error(DS_ERR_INPUT, "%s: attribute meta: missing or inconsistent", path);
    }
    return DS_OK;
}

/* Read rows [first, first + rows) of a dataset of count rows (x T columns when T > 0), after
 * checking its shape and that its storage holds them (a dataset may declare rows it never
 * stored: nothing is allocated from a declared size alone). */
static int read_rows(hid_t file, const char *path, const char *name, hid_t type, int64_t count,
                     int T, int64_t first, int64_t rows, void *out)
{
    DS_TRY(hdf5_check_dataset(path, file, name)); /* before libhdf5 decodes it */
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
    const size_t elem = H5Tget_size(type);
    if (nd != (T ? 2 : 1) || dims[0] != (hsize_t)count || (T && dims[1] != (hsize_t)T)) {
        status = ds_error(DS_ERR_INPUT, "%s: dataset %s: expected %lld rows%s", path, name,
                          (long long)count, T ? " of seq_len tokens" : "");
    } else if ((status = number_type_check(H5Dget_type(d), path, "dataset", name)) != DS_OK) {
        /* refused before libhdf5 converts it */
    } else if (count > 0 && H5Dget_storage_size(d) <
                                (hsize_t)count * (hsize_t)(T ? T : 1) * (hsize_t)elem / 64) {
        /* stored bytes far below the declared size (compression aside): never written */
        status = ds_error(DS_ERR_INPUT, "%s: dataset %s: declares %lld rows it does not store",
                          path, name, (long long)count);
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

/* Every dataset of an open rank file has the rows its meta says, and stores them: checked
 * before anything is allocated for them. */
static int check_datasets(RankFile *rf, const char *path)
{
    const int64_t n = rf->meta[META_COUNT];
    const int T = (int)rf->meta[META_T];
    DS_TRY(read_rows(rf->file, path, "inputs", H5T_NATIVE_INT32, n, T, 0, 0, NULL));
    DS_TRY(read_rows(rf->file, path, "targets", H5T_NATIVE_INT32, n, T, 0, 0, NULL));
    DS_TRY(read_rows(rf->file, path, "loss_mask", H5T_NATIVE_UINT8, n, T, 0, 0, NULL));
    DS_TRY(read_rows(rf->file, path, "labels", H5T_NATIVE_INT64, n, 0, 0, 0, NULL));
    DS_TRY(read_rows(rf->file, path, "task_ids", H5T_NATIVE_INT32, n, 0, 0, 0, NULL));
    return DS_OK;
}

/* The rows of an open rank file into img's slots [at, at + count). */
static int read_all_rows(RankFile *rf, const char *path, ReplayBuffer *img, int at)
{
    const int64_t n = rf->meta[META_COUNT];
    const int T = (int)rf->meta[META_T];
    const size_t o = (size_t)at * T;
    DS_TRY(read_rows(rf->file, path, "inputs", H5T_NATIVE_INT32, n, T, 0, n, img->inputs + o));
    DS_TRY(read_rows(rf->file, path, "targets", H5T_NATIVE_INT32, n, T, 0, n, img->targets + o));
    DS_TRY(read_rows(rf->file, path, "loss_mask", H5T_NATIVE_UINT8, n, T, 0, n, img->mask + o));
    DS_TRY(read_rows(rf->file, path, "labels", H5T_NATIVE_INT64, n, 0, 0, n, img->labels + at));
    DS_TRY(read_rows(rf->file, path, "task_ids", H5T_NATIVE_INT32, n, 0, 0, n, img->task_ids + at));
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
        int ok = a >= 0 && H5Sget_simple_extent_npoints(space) == nt;
        const int typed =
            ok ? number_type_check(H5Aget_type(a), path, "attribute", names[i]) : DS_OK;
        ok = ok && typed == DS_OK && H5Aread(a, types[i], outs[i]) >= 0;
        if (space >= 0) H5Sclose(space);
        if (a >= 0) H5Aclose(a);
        if (typed != DS_OK) return typed;
        if (!ok)
            return ds_error(DS_ERR_INPUT, "%s: attribute %s: missing or wrong length", path,
                            names[i]);
    }
    return DS_OK;
}

/* A hash of a file's random state and a rank: the conversion's own draws, so that what a
 * conversion keeps depends on the file alone, never on the run's seed. */
static uint64_t choose_seed_of(uint64_t file_rng, int rank)
{
    uint64_t h = file_rng ^ 0x2f8a7e3c5b9d1e47ull;
    h = rng_next(&h) + (uint64_t)rank;
    return rng_next(&h);
}

int replay_load(ReplayBuffer *rb, const char *dir)
{
    if (rb->shard_size > 1)
        return ds_error(DS_ERR_INTERNAL, "replay_load: load into a whole buffer, then shard it");
    char path[4200];
    RankFile rf;
    DS_TRY(rank_open(&rf, dir, 0, path, sizeof(path)));
    const int old_size = (int)rf.meta[META_SIZE];
    const uint64_t rng0 = (uint64_t)rf.meta[META_RNG];
    H5Fclose(rf.file);
    ReplayBuffer img;
    memset(&img, 0, sizeof(img));
    int status = DS_OK;
    if (old_size == rb->dp_size) {
        /* our own file: the buffer as it was, or converted to this run's policy and capacity */
        DS_TRY(rank_open(&rf, dir, rb->dp_rank, path, sizeof(path)));
        const int64_t *m = rf.meta;
        if ((status = check_datasets(&rf, path)) != DS_OK ||
            (status = image_init(&img, (ReplayPolicy)m[META_POLICY], m[META_COUNT],
                                 (int)m[META_T])) != DS_OK)
            goto close;
        img.capacity_total = (int)m[META_CAP];
        img.vocab_size = (int)m[META_VOCAB];
        img.num_labels = (int)m[META_LABELS];
        img.count = (int)m[META_COUNT];
        img.seen = m[META_SEEN];
        img.rng = (uint64_t)m[META_RNG];
        img.n_tasks = (int)m[META_NTASKS];
        if ((status = read_task_attrs(&rf, path, img.task_list, img.task_seen, img.task_count)) ==
                DS_OK &&
            (status = read_all_rows(&rf, path, &img, 0)) == DS_OK)
            status = replay_adopt(rb, &img, 1, choose_seed_of(img.rng, rb->dp_rank), path);
    close:
        H5Fclose(rf.file);
        replay_free(&img);
        return status;
    }
    /* another number of ranks: every old rank's examples, in rank order, dealt round-robin; this
     * rank's deal is converted (its own random state kept; the counts seen split evenly) */
    int64_t mine = 0, global = 0, seen_total = 0;
    int64_t meta0[META_LEN] = {0};
    for (int r = 0; r < old_size; r++) {
        DS_TRY(rank_open(&rf, dir, r, path, sizeof(path)));
        const int64_t *m = rf.meta;
        if (r == 0) memcpy(meta0, m, sizeof(meta0));
        if (m[META_SIZE] != old_size || m[META_T] != meta0[META_T] ||
            m[META_POLICY] != meta0[META_POLICY] || m[META_VOCAB] != meta0[META_VOCAB] ||
            m[META_LABELS] != meta0[META_LABELS]) {
            H5Fclose(rf.file);
            return ds_error(DS_ERR_INPUT,
                            "%s: meta: says %lld ranks, seq_len %lld, policy %lld, vocab_size "
                            "%lld, num_labels %lld; rank 0's file says %d, %lld, %lld, %lld, %lld",
                            path, (long long)m[META_SIZE], (long long)m[META_T],
                            (long long)m[META_POLICY], (long long)m[META_VOCAB],
                            (long long)m[META_LABELS], old_size, (long long)meta0[META_T],
                            (long long)meta0[META_POLICY], (long long)meta0[META_VOCAB],
                            (long long)meta0[META_LABELS]);
        }
        if ((status = check_datasets(&rf, path)) != DS_OK) {
            H5Fclose(rf.file);
            return status;
        }
        for (int64_t i = 0; i < m[META_COUNT]; i++, global++)
            mine += global % rb->dp_size == rb->dp_rank;
        H5Fclose(rf.file);
    }
    DS_TRY(image_init(&img, (ReplayPolicy)meta0[META_POLICY], mine, (int)meta0[META_T]));
    img.capacity_total = (int)meta0[META_CAP];
    img.vocab_size = (int)meta0[META_VOCAB];
    img.num_labels = (int)meta0[META_LABELS];
    ReplayBuffer one; /* one old rank's file at a time */
    memset(&one, 0, sizeof(one));
    global = 0;
    for (int r = 0; r < old_size && status == DS_OK; r++) {
        if ((status = rank_open(&rf, dir, r, path, sizeof(path))) != DS_OK) break;
        const int64_t *m = rf.meta;
        int32_t list[REPLAY_MAX_TASKS];
        int64_t tseen[REPLAY_MAX_TASKS];
        int tcount[REPLAY_MAX_TASKS];
        if ((status = read_task_attrs(&rf, path, list, tseen, tcount)) == DS_OK &&
            (status = image_init(&one, (ReplayPolicy)m[META_POLICY], m[META_COUNT],
                                 (int)m[META_T])) == DS_OK)
            status = read_all_rows(&rf, path, &one, 0);
        H5Fclose(rf.file);
        const size_t T = (size_t)img.T;
        for (int64_t i = 0; status == DS_OK && i < m[META_COUNT]; i++, global++) {
            if (global % rb->dp_size != rb->dp_rank) continue;
            const int s = img.count++;
            img.labels[s] = one.labels[i];
            img.task_ids[s] = one.task_ids[i];
            memcpy(img.inputs + s * T, one.inputs + i * T, T * sizeof(int32_t));
            memcpy(img.targets + s * T, one.targets + i * T, T * sizeof(int32_t));
            memcpy(img.mask + s * T, one.mask + i * T, T);
        }
        replay_free(&one);
        seen_total += m[META_SEEN];
        /* the counts seen per task, summed over the old ranks (split below) */
        for (int i = 0; i < (int)m[META_NTASKS] && status == DS_OK; i++) {
            int t = task_index(&img, list[i], 1);
            if (t < 0)
                status = -t;
            else
                img.task_seen[t] += tseen[i];
        }
    }
    if (status == DS_OK) {
        img.seen = seen_total / rb->dp_size + (rb->dp_rank < seen_total % rb->dp_size ? 1 : 0);
        if (img.seen < img.count) img.seen = img.count;
        for (int t = 0; t < img.n_tasks; t++)
            img.task_seen[t] /= rb->dp_size;
        img.rng = rb->rng; /* the run's own: no old rank's sequence continues here */
        rank_path(path, sizeof(path), dir, 0);
        status = replay_adopt(rb, &img, 0, choose_seed_of(rng0, rb->dp_rank), path);
    }
    replay_free(&img);
    return status;
}

/* ---- the whole buffer as bytes (a training checkpoint's blob) ------------------------------ */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the replay blob is written in host order, which must be little-endian"
#endif

/* Header, then task_list [n_tasks] (int32), task_seen [n_tasks] (int64), then for the count
 * filled slots labels (int64), task_ids (int32), inputs and targets [count, T] (int32) and
 * loss_mask [count, T] (uint8). The header holds every field a later draw or add depends on, and
 * what the buffer holds (seq_len, vocabulary, labels); task counts are rebuilt from the slots. */
typedef struct ReplayBlobHeader {
    uint32_t magic, version;
    int32_t policy, capacity_total, T, count, n_tasks, vocab_size, num_labels, pad;
    int64_t seen;
    uint64_t rng;
} ReplayBlobHeader;

#define REPLAY_BLOB_MAGIC 0x59504c52u /* "RLPY" */
#define REPLAY_BLOB_VERSION 2u

/* Bytes of a blob of count slots of T tokens and n_tasks tasks; 0 when that overflows. */
static size_t blob_size(int64_t count, int64_t T, int64_t n_tasks)
{
    const size_t per_slot = sizeof(int64_t) + sizeof(int32_t);
    const size_t per_token = 2 * sizeof(int32_t) + 1;
    if (count < 0 || T <= 0 || n_tasks < 0 || (uint64_t)count > SIZE_MAX / per_token / (size_t)T)
        return 0;
    return sizeof(ReplayBlobHeader) + (size_t)n_tasks * (sizeof(int32_t) + sizeof(int64_t)) +
           (size_t)count * per_slot + (size_t)count * (size_t)T * per_token;
}

size_t replay_serialized_size(const ReplayBuffer *whole)
{
    return blob_size(whole->count, whole->T, whole->n_tasks);
}

#define BLOB_PUT(src, bytes)                                                                       \
    do {                                                                                           \
        memcpy(p, (src), (bytes));                                                                 \
        p += (bytes);                                                                              \
    } while (0)

int replay_serialize(const ReplayBuffer *whole, void *out, size_t cap)
{
    const size_t need = replay_serialized_size(whole);
    if (whole->shard_size > 1 || whole->dp_size != 1 || need == 0 || cap < need)
        return ds_error(DS_ERR_INTERNAL,
                        "replay_serialize: an unsharded buffer and %zu bytes "
                        "needed",
                        need);
    ReplayBlobHeader h = {.magic = REPLAY_BLOB_MAGIC,
                          .version = REPLAY_BLOB_VERSION,
                          .policy = (int32_t)whole->policy,
                          .capacity_total = whole->capacity_total,
                          .T = whole->T,
                          .count = whole->count,
                          .n_tasks = whole->n_tasks,
                          .vocab_size = whole->vocab_size,
                          .num_labels = whole->num_labels,
                          .seen = whole->seen,
                          .rng = whole->rng};
    unsigned char *p = out;
    const size_t nt = (size_t)whole->n_tasks, n = (size_t)whole->count;
    const size_t tok = n * (size_t)whole->T;
    BLOB_PUT(&h, sizeof(h));
    BLOB_PUT(whole->task_list, nt * sizeof(int32_t));
    BLOB_PUT(whole->task_seen, nt * sizeof(int64_t));
    BLOB_PUT(whole->labels, n * sizeof(int64_t));
    BLOB_PUT(whole->task_ids, n * sizeof(int32_t));
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
    const char *from = "replay blob";
    if (whole->shard_size > 1 || whole->dp_size != 1)
        return ds_error(DS_ERR_INTERNAL, "replay_deserialize: into an unsharded buffer");
    ReplayBlobHeader h;
    if (size < sizeof(h))
        return ds_error(DS_ERR_INPUT, "%s: %zu bytes, shorter than its header", from, size);
    memcpy(&h, in, sizeof(h));
    if (h.magic != REPLAY_BLOB_MAGIC)
        return ds_error(DS_ERR_INPUT, "%s: magic: not a replay buffer", from);
    if (h.version != REPLAY_BLOB_VERSION)
        return ds_error(DS_ERR_INPUT, "%s: version: %u is not supported (%u is)", from, h.version,
                        REPLAY_BLOB_VERSION);
    if (h.policy < REPLAY_RESERVOIR || h.policy > REPLAY_TASK_BALANCED || h.capacity_total < 0 ||
        h.T <= 0 || h.count < 0 || h.count > h.capacity_total || h.n_tasks < 0 ||
        h.n_tasks > REPLAY_MAX_TASKS || h.seen < h.count || h.vocab_size < 0 || h.num_labels < -1)
        return ds_error(DS_ERR_INPUT,
                        "%s: header: policy %d, capacity %d, seq_len %d, %d kept of %lld seen, "
                        "%d tasks, vocab_size %d, num_labels %d: out of range",
                        from, h.policy, h.capacity_total, h.T, h.count, (long long)h.seen,
                        h.n_tasks, h.vocab_size, h.num_labels);
    const size_t want = blob_size(h.count, h.T, h.n_tasks);
    if (want == 0 || size != want)
        return ds_error(DS_ERR_INPUT, "%s: %zu bytes, its header describes %zu", from, size, want);
    ReplayBuffer img;
    DS_TRY(image_init(&img, (ReplayPolicy)h.policy, h.count, h.T));
    img.capacity_total = h.capacity_total;
    img.vocab_size = h.vocab_size;
    img.num_labels = h.num_labels;
    img.count = h.count;
    img.seen = h.seen;
    img.rng = h.rng;
    img.n_tasks = h.n_tasks;
    const unsigned char *p = (const unsigned char *)in + sizeof(h);
    const size_t nt = (size_t)h.n_tasks, n = (size_t)h.count, tok = n * (size_t)h.T;
    BLOB_GET(img.task_list, nt * sizeof(int32_t));
    BLOB_GET(img.task_seen, nt * sizeof(int64_t));
    BLOB_GET(img.labels, n * sizeof(int64_t));
    BLOB_GET(img.task_ids, n * sizeof(int32_t));
    BLOB_GET(img.inputs, tok * sizeof(int32_t));
    BLOB_GET(img.targets, tok * sizeof(int32_t));
    BLOB_GET(img.mask, tok);
    /* the saved task counts are those of the slots: recounted, they must agree (as_saved) */
    for (int s = 0; s < img.count; s++)
        for (int t = 0; t < img.n_tasks; t++)
            if (img.task_list[t] == img.task_ids[s]) img.task_count[t]++;
    const int status = replay_adopt(whole, &img, 1, choose_seed_of(img.rng, 0), from);
    replay_free(&img);
    return status;
}
