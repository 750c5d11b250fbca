/* test_replay.c: the replay buffer: Algorithm R keeps every example with probability
 * capacity / N (a statistical test with fixed seeds), task_balanced shares, seeded draws, and the
 * HDF5 files across save, restore and a change in the number of data-parallel ranks; a global
 * buffer sharded over ranks decides as one buffer does. A saved buffer loaded into a run of
 * another policy or capacity is converted (bookkeeping rebuilt, a uniform sample kept), one of
 * another task type, vocabulary or seq_len refused; the whole buffer as bytes round-trips and
 * continues exactly, and hostile bytes are refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/replay.h"
#include "h5_narrow.h"
#include "trainer/common.h"

#define T_EX 4

/* Example number i: its tokens encode i, so a stored example names itself. */
static void example(int64_t i, int32_t *inputs, int32_t *targets, float *weights)
{
    for (int t = 0; t < T_EX; t++) {
        inputs[t] = (int32_t)(i * T_EX + t);
        targets[t] = (int32_t)(i * T_EX + t + 1);
        weights[t] = t == 0 ? 0.0f : 1.0f;
    }
}

static void add_range(ReplayBuffer *rb, int64_t first, int64_t count, int32_t task)
{
    int32_t in[T_EX], tg[T_EX];
    float w[T_EX];
    for (int64_t i = first; i < first + count; i++) {
        example(i, in, tg, w);
        cr_assert_eq(replay_add(rb, in, tg, w, i % 10, task), DS_OK);
    }
}

static int64_t slot_example(const ReplayBuffer *rb, int s)
{
    return rb->inputs[(size_t)s * T_EX] / T_EX;
}

Test(replay, reservoir_keeps_each_example_with_probability_capacity_over_n)
{
    enum { N = 200, CAP = 20, TRIALS = 3000 };
    static int kept[N];
    memset(kept, 0, sizeof(kept));
    for (int trial = 0; trial < TRIALS; trial++) {
        ReplayBuffer rb;
        cr_assert_eq(replay_init(&rb, REPLAY_RESERVOIR, CAP, T_EX, 0, 1, 1000 + trial), DS_OK);
        add_range(&rb, 0, N, 0);
        cr_assert_eq(rb.count, CAP);
        cr_assert_eq(rb.seen, N);
        for (int s = 0; s < rb.count; s++)
            kept[slot_example(&rb, s)]++;
        replay_free(&rb);
    }
    /* each count is Binomial(TRIALS, CAP/N): mean 300, sd 16.4; every one within 5 sd, and the
     * chi-square over the 200 examples near its 199 degrees of freedom */
    const double p = (double)CAP / N, mean = TRIALS * p, sd = sqrt(TRIALS * p * (1 - p));
    double chi2 = 0.0;
    for (int i = 0; i < N; i++) {
        cr_assert(fabs(kept[i] - mean) < 5 * sd, "example %d kept %d times (expected %.0f)", i,
                  kept[i], mean);
        chi2 += (kept[i] - mean) * (kept[i] - mean) / (mean * (1 - p));
    }
    cr_assert(chi2 > 140 && chi2 < 270, "chi-square %.1f for 199 degrees of freedom", chi2);
    /* early and late examples alike: no drift in the mean over the stream */
    double first = 0, last = 0;
    for (int i = 0; i < N / 4; i++)
        first += kept[i], last += kept[N - 1 - i];
    cr_assert(fabs(first - last) < 6 * sqrt(N / 4.0) * sd, "first quarter %g, last %g", first,
              last);
}

Test(replay, task_balanced_shares_the_buffer_between_tasks)
{
    ReplayBuffer rb;
    cr_assert_eq(replay_init(&rb, REPLAY_TASK_BALANCED, 30, T_EX, 0, 1, 3), DS_OK);
    add_range(&rb, 0, 500, 0);
    cr_assert_eq(rb.count, 30);
    add_range(&rb, 500, 100, 1);
    add_range(&rb, 600, 50, 2);
    int per[3] = {0, 0, 0};
    for (int s = 0; s < rb.count; s++) {
        int32_t task = rb.task_ids[s];
        cr_assert(task >= 0 && task < 3);
        per[task]++;
        /* the slot holds an example of that task */
        int64_t e = slot_example(&rb, s);
        cr_assert(task == 0 ? e < 500 : task == 1 ? e >= 500 && e < 600 : e >= 600);
    }
    cr_assert_eq(per[0], 10);
    cr_assert_eq(per[1], 10);
    cr_assert_eq(per[2], 10);
    /* reservoir: plain Algorithm R would hold about 30 * 500 / 650 of task 0 */
    ReplayBuffer r2;
    cr_assert_eq(replay_init(&r2, REPLAY_RESERVOIR, 30, T_EX, 0, 1, 3), DS_OK);
    add_range(&r2, 0, 500, 0);
    add_range(&r2, 500, 100, 1);
    add_range(&r2, 600, 50, 2);
    int zero = 0;
    for (int s = 0; s < r2.count; s++)
        zero += r2.task_ids[s] == 0;
    cr_assert_gt(zero, 15);
    replay_free(&rb);
    replay_free(&r2);
}

Test(replay, draws_are_seeded_and_return_what_was_stored)
{
    ReplayBuffer a, b;
    cr_assert_eq(replay_init(&a, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 42), DS_OK);
    cr_assert_eq(replay_init(&b, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 42), DS_OK);
    int32_t in[T_EX], tg[T_EX], in2[T_EX], tg2[T_EX];
    float w[T_EX], w2[T_EX];
    int64_t label;
    int32_t task;
    cr_assert_eq(replay_sample(&a, in, tg, w, &label, &task), DS_ERR_INTERNAL); /* empty */
    add_range(&a, 0, 50, 4);
    add_range(&b, 0, 50, 4);
    for (int k = 0; k < 20; k++) {
        cr_assert_eq(replay_sample(&a, in, tg, w, &label, &task), DS_OK);
        cr_assert_eq(replay_sample(&b, in2, tg2, w2, NULL, NULL), DS_OK);
        cr_assert_eq(memcmp(in, in2, sizeof(in)), 0);
        int64_t e = in[0] / T_EX;
        int32_t want_in[T_EX], want_tg[T_EX];
        float want_w[T_EX];
        example(e, want_in, want_tg, want_w);
        cr_assert_eq(memcmp(in, want_in, sizeof(in)), 0);
        cr_assert_eq(memcmp(tg, want_tg, sizeof(tg)), 0);
        cr_assert_eq(memcmp(w, want_w, sizeof(w)), 0);
        cr_assert_eq(label, e % 10);
        cr_assert_eq(task, 4);
    }
    replay_free(&a);
    replay_free(&b);
}

static void scratch_dir(char *buf, size_t size, const char *name)
{
    char cmd[1200];
    snprintf(buf, size, "%s/continual-%s-%ld", DSTRAIN_TEST_TMP, name, (long)getpid());
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", buf, buf);
    cr_assert_eq(system(cmd), 0);
}

Test(replay, survives_save_and_restore_bitwise)
{
    char dir[1024];
    scratch_dir(dir, sizeof(dir), "same");
    for (int policy = REPLAY_RESERVOIR; policy <= REPLAY_TASK_BALANCED; policy++) {
        ReplayBuffer a, b;
        cr_assert_eq(replay_init(&a, policy, 16, T_EX, 0, 1, 9), DS_OK);
        add_range(&a, 0, 40, 0);
        add_range(&a, 40, 40, 1);
        cr_assert_eq(replay_save(&a, dir), DS_OK, "%s", ds_last_error());
        cr_assert_eq(replay_init(&b, policy, 16, T_EX, 0, 1, 12345), DS_OK);
        cr_assert_eq(replay_load(&b, dir), DS_OK, "%s", ds_last_error());
        cr_assert_eq(b.count, a.count);
        cr_assert_eq(b.seen, a.seen);
        cr_assert_eq(b.rng, a.rng);
        cr_assert_eq(memcmp(a.inputs, b.inputs, (size_t)a.count * T_EX * 4), 0);
        cr_assert_eq(memcmp(a.targets, b.targets, (size_t)a.count * T_EX * 4), 0);
        cr_assert_eq(memcmp(a.mask, b.mask, (size_t)a.count * T_EX), 0);
        cr_assert_eq(memcmp(a.labels, b.labels, (size_t)a.count * 8), 0);
        cr_assert_eq(memcmp(a.task_ids, b.task_ids, (size_t)a.count * 4), 0);
        /* and it continues identically */
        add_range(&a, 80, 30, 2);
        add_range(&b, 80, 30, 2);
        cr_assert_eq(memcmp(a.inputs, b.inputs, (size_t)a.count * T_EX * 4), 0);
        replay_free(&a);
        replay_free(&b);
    }
}

Test(replay, a_change_of_world_size_redistributes_every_example_once)
{
    char dir[1024];
    scratch_dir(dir, sizeof(dir), "resize");
    /* two ranks of a 20-example buffer, each fed its own half of the stream */
    ReplayBuffer r[2];
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(replay_init(&r[k], REPLAY_RESERVOIR, 20, T_EX, k, 2, 5), DS_OK);
        cr_assert_eq(r[k].capacity, 10);
        add_range(&r[k], k * 1000, 100, 0);
        cr_assert_eq(replay_save(&r[k], dir), DS_OK);
    }
    int stored[2000] = {0};
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < r[k].count; s++)
            stored[slot_example(&r[k], s)]++;
    for (int new_size = 1; new_size <= 4; new_size++) {
        int got[2000] = {0}, total = 0;
        int64_t seen = 0;
        for (int k = 0; k < new_size; k++) {
            ReplayBuffer b;
            cr_assert_eq(replay_init(&b, REPLAY_RESERVOIR, 20, T_EX, k, new_size, 77), DS_OK);
            cr_assert_eq(replay_load(&b, dir), DS_OK, "%s", ds_last_error());
            cr_assert_leq(b.count, b.capacity);
            for (int s = 0; s < b.count; s++) {
                got[slot_example(&b, s)]++;
                int32_t in[T_EX], tg[T_EX];
                float w[T_EX];
                example(slot_example(&b, s), in, tg, w);
                cr_assert_eq(memcmp(b.targets + (size_t)s * T_EX, tg, sizeof(tg)), 0);
            }
            total += b.count;
            seen += b.seen;
            replay_free(&b);
        }
        cr_assert_eq(total, 20, "world %d", new_size);
        cr_assert_eq(seen, 200, "world %d", new_size);
        cr_assert_eq(memcmp(got, stored, sizeof(got)), 0, "world %d", new_size);
    }
    /* a smaller buffer after the change keeps what fits, deterministically */
    ReplayBuffer small, again;
    cr_assert_eq(replay_init(&small, REPLAY_RESERVOIR, 6, T_EX, 1, 3, 1), DS_OK);
    cr_assert_eq(replay_init(&again, REPLAY_RESERVOIR, 6, T_EX, 1, 3, 2), DS_OK);
    cr_assert_eq(replay_load(&small, dir), DS_OK);
    cr_assert_eq(replay_load(&again, dir), DS_OK);
    cr_assert_eq(small.count, 2);
    cr_assert_eq(memcmp(small.inputs, again.inputs, 2 * T_EX * 4), 0);
    replay_free(&small);
    replay_free(&again);
    replay_free(&r[0]);
    replay_free(&r[1]);
}

Test(replay, hostile_files_are_input_errors_that_name_the_file)
{
    char dir[1024], path[1200], cmd[2600];
    scratch_dir(dir, sizeof(dir), "hostile");
    ReplayBuffer b;
    cr_assert_eq(replay_init(&b, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 1), DS_OK);
    cr_assert_eq(replay_load(&b, dir), DS_ERR_INPUT); /* nothing there */
    cr_assert(strstr(ds_last_error(), "replay-rank-00000.h5") != NULL, "%s", ds_last_error());
    snprintf(path, sizeof(path), "%s/replay-rank-00000.h5", dir);
    FILE *f = fopen(path, "w");
    fputs("garbage", f);
    fclose(f);
    cr_assert_eq(replay_load(&b, dir), DS_ERR_INPUT);
    /* a file written for another sequence length */
    ReplayBuffer other;
    cr_assert_eq(replay_init(&other, REPLAY_RESERVOIR, 8, T_EX + 1, 0, 1, 1), DS_OK);
    int32_t in[T_EX + 1] = {0}, tg[T_EX + 1] = {0};
    cr_assert_eq(replay_add(&other, in, tg, NULL, 0, 0), DS_OK);
    cr_assert_eq(replay_save(&other, dir), DS_OK);
    cr_assert_eq(replay_load(&b, dir), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "seq_len") != NULL, "%s", ds_last_error());
    /* counts that do not match the datasets (edited by another tool) */
    snprintf(cmd, sizeof(cmd),
             "python3 -c \"import h5py; f = h5py.File('%s', 'r+'); m = f.attrs['meta']; "
             "m[6] = 5; m[7] = 5; m[3] = %d; f.attrs['meta'] = m\" 2>/dev/null",
             path, T_EX + 1);
    if (system(cmd) == 0) {
        replay_free(&other);
        cr_assert_eq(replay_init(&other, REPLAY_RESERVOIR, 8, T_EX + 1, 0, 1, 1), DS_OK);
        cr_assert_eq(replay_load(&other, dir), DS_ERR_INPUT);
        cr_assert(strstr(ds_last_error(), "inputs") != NULL, "%s", ds_last_error());
    }
    replay_free(&other);
    replay_free(&b);
}

/* An attribute or dataset stored as an integer type that uses 32 of its 64 bits (legal HDF5;
 * libhdf5 1.10 converts such types by what they state, past its buffers when damaged) is
 * refused by name before it is read. */
Test(replay, numbers_of_unusual_integer_types_are_refused_by_name)
{
    char dir[1024], path[1200];
    scratch_dir(dir, sizeof(dir), "narrow");
    snprintf(path, sizeof(path), "%s/replay-rank-00000.h5", dir);
    const struct {
        const char *name;
        int dataset;
        const char *want;
    } cases[] = {
        {"meta", 0, "attribute \"meta\": not a standard integer type (32 bits at bit offset 0"},
        {"labels", 1, "dataset \"labels\": not a standard integer type (32 bits"},
        {"task_list", 0, "attribute \"task_list\": not a standard integer type"},
    };
    for (size_t c = 0; c < DS_ARRAY_LEN(cases); c++) {
        ReplayBuffer b;
        cr_assert_eq(replay_init(&b, REPLAY_TASK_BALANCED, 8, T_EX, 0, 1, 1), DS_OK);
        add_range(&b, 0, 6, 1);
        cr_assert_eq(replay_save(&b, dir), DS_OK, "%s", ds_last_error());
        cr_assert_eq(replay_load(&b, dir), DS_OK, "%s", ds_last_error());
        cr_assert_eq(h5_narrow(path, cases[c].name, cases[c].dataset), 0, "%s", cases[c].name);
        cr_assert_eq(replay_load(&b, dir), DS_ERR_INPUT, "%s", cases[c].name);
        cr_assert(strstr(ds_last_error(), path) && strstr(ds_last_error(), cases[c].want), "%s: %s",
                  cases[c].name, ds_last_error());
        replay_free(&b);
    }
}

/* A global buffer sharded over 3 ranks decides as one unsharded buffer does (both policies):
 * the same slots filled, each slot's tokens on exactly one rank, the same draws, and the whole
 * buffer put together from the shards (and dealt back) is the unsharded one. */
Test(replay, sharded_buffer_decides_as_one_buffer)
{
    for (int policy = REPLAY_RESERVOIR; policy <= REPLAY_TASK_BALANCED; policy++) {
        ReplayBuffer one, shard[3], whole, back;
        cr_assert_eq(replay_init_sharded(&one, policy, 20, T_EX, 0, 1, 99), DS_OK);
        for (int r = 0; r < 3; r++)
            cr_assert_eq(replay_init_sharded(&shard[r], policy, 20, T_EX, r, 3, 99), DS_OK);
        for (int task = 0; task < 3; task++) {
            add_range(&one, task * 70, 70, task);
            for (int r = 0; r < 3; r++)
                add_range(&shard[r], task * 70, 70, task);
        }
        cr_assert_eq(one.count, 20);
        cr_assert_eq(replay_init(&whole, policy, 20, T_EX, 0, 1, 99), DS_OK);
        int32_t in[T_EX], tg[T_EX];
        float w[T_EX];
        for (int r = 0; r < 3; r++) {
            cr_assert_eq(shard[r].count, one.count);
            cr_assert_eq(shard[r].seen, one.seen);
            int held = 0;
            for (int s = 0; s < one.count; s++) {
                cr_assert_eq(shard[r].labels[s], one.labels[s]);
                cr_assert_eq(shard[r].task_ids[s], one.task_ids[s]);
                if (!replay_holds(&shard[r], s)) {
                    cr_assert_eq(replay_read(&shard[r], s, in, tg, w, NULL, NULL),
                                 DS_ERR_INTERNAL);
                    continue;
                }
                held++;
                cr_assert_eq(replay_read(&shard[r], s, in, tg, w, NULL, NULL), DS_OK);
                cr_assert_eq(in[0] / T_EX, slot_example(&one, s), "slot %d", s);
                cr_assert_eq(tg[1], one.targets[(size_t)s * T_EX + 1]);
                cr_assert_eq(w[0], 0.0f);
                cr_assert_eq(w[1], 1.0f);
            }
            cr_assert_eq(held, 20 / 3 + (r < 20 % 3), "rank %d holds %d", r, held);
            /* the sum over ranks of what each puts into the whole buffer */
            ReplayBuffer part;
            cr_assert_eq(replay_init(&part, policy, 20, T_EX, 0, 1, 99), DS_OK);
            replay_shard_to_whole(&shard[r], &part);
            for (size_t i = 0; i < 20 * T_EX; i++) {
                whole.inputs[i] += part.inputs[i];
                whole.targets[i] += part.targets[i];
                whole.mask[i] += part.mask[i];
            }
            if (r == 0) {
                whole.count = part.count, whole.seen = part.seen, whole.rng = part.rng;
                whole.n_tasks = part.n_tasks;
                memcpy(whole.labels, part.labels, 20 * sizeof(int64_t));
                memcpy(whole.task_ids, part.task_ids, 20 * sizeof(int32_t));
                memcpy(whole.task_count, part.task_count, sizeof(part.task_count));
            }
            replay_free(&part);
        }
        cr_assert_eq(memcmp(whole.inputs, one.inputs, 20 * T_EX * sizeof(int32_t)), 0);
        cr_assert_eq(memcmp(whole.mask, one.mask, 20 * T_EX), 0);
        cr_assert_eq(memcmp(whole.task_count, one.task_count, sizeof(one.task_count)), 0);
        /* dealt back to 2 ranks: each holds its slots, with the same state */
        cr_assert_eq(replay_init_sharded(&back, policy, 20, T_EX, 1, 2, 5), DS_OK);
        cr_assert_eq(replay_shard_from_whole(&back, &whole), DS_OK);
        cr_assert_eq(back.rng, one.rng);
        for (int s = 1; s < 20; s += 2) {
            cr_assert_eq(replay_read(&back, s, in, tg, w, NULL, NULL), DS_OK);
            cr_assert_eq(in[0] / T_EX, slot_example(&one, s));
        }
        /* the same draws everywhere */
        for (int i = 0; i < 50; i++) {
            int a, b, c;
            cr_assert_eq(replay_draw(&one, &a), DS_OK);
            cr_assert_eq(replay_draw(&shard[2], &b), DS_OK);
            cr_assert_eq(replay_draw(&back, &c), DS_OK);
            cr_assert(a == b && b == c, "draw %d: %d %d %d", i, a, b, c);
        }
        /* a sharded buffer saves only as a whole one */
        cr_assert_eq(replay_save(&shard[0], DSTRAIN_TEST_TMP), DS_ERR_INTERNAL);
        replay_free(&one);
        replay_free(&whole);
        replay_free(&back);
        for (int r = 0; r < 3; r++)
            replay_free(&shard[r]);
    }
}

/* ---- a saved buffer against the run that loads it ----------------------------------------------
 */

#define BIG_VOCAB (1 << 20) /* example() writes tokens up to i * T_EX + T_EX */

static int slots_of_task(const ReplayBuffer *rb, int32_t task)
{
    int n = 0;
    for (int s = 0; s < rb->count; s++)
        n += rb->task_ids[s] == task;
    return n;
}

/* The per-task counts agree with the slots (what task_balanced's adds rely on). */
static void assert_bookkeeping(const ReplayBuffer *rb)
{
    int sum = 0;
    for (int t = 0; t < rb->n_tasks; t++) {
        cr_assert_eq(rb->task_count[t], slots_of_task(rb, rb->task_list[t]), "task %d",
                     rb->task_list[t]);
        cr_assert_geq(rb->task_seen[t], rb->task_count[t]);
        sum += rb->task_count[t];
    }
    cr_assert_eq(sum, rb->count);
}

/* A reservoir buffer loaded by a task_balanced run: the per-task bookkeeping is rebuilt from the
 * slots, so a new task gets its share. (Loaded as it was, the buffer froze: no task in its list,
 * so the new task found no larger task to take a slot from, and kept 0 of 64 slots.) And back:
 * a task_balanced buffer loaded by a reservoir run continues Algorithm R. */
Test(replay, a_policy_change_rebuilds_the_bookkeeping)
{
    char dir[1024];
    scratch_dir(dir, sizeof(dir), "policy");
    ReplayBuffer a, b;
    cr_assert_eq(replay_init(&a, REPLAY_RESERVOIR, 64, T_EX, 0, 1, 4), DS_OK);
    add_range(&a, 0, 5000, 0);
    cr_assert_eq(replay_save(&a, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(replay_init(&b, REPLAY_TASK_BALANCED, 64, T_EX, 0, 1, 5), DS_OK);
    cr_assert_eq(replay_load(&b, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(b.count, 64);
    cr_assert_eq(b.seen, 5000);
    cr_assert_eq(b.n_tasks, 1);
    cr_assert_eq(b.task_seen[0], 5000, "a reservoir of one task: all it saw");
    assert_bookkeeping(&b);
    add_range(&b, 5000, 5000, 1);
    cr_assert_eq(slots_of_task(&b, 1), 32, "task 1 holds %d of 64 slots", slots_of_task(&b, 1));
    cr_assert_eq(slots_of_task(&b, 0), 32);
    assert_bookkeeping(&b);
    /* task_balanced -> reservoir: Algorithm R over everything seen, slots keep changing */
    cr_assert_eq(replay_save(&b, dir), DS_OK);
    ReplayBuffer c;
    cr_assert_eq(replay_init(&c, REPLAY_RESERVOIR, 64, T_EX, 0, 1, 6), DS_OK);
    cr_assert_eq(replay_load(&c, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(c.seen, 10000);
    add_range(&c, 10000, 10000, 2);
    cr_assert_eq(c.seen, 20000);
    /* each slot was replaced with probability 1 - prod (1 - 1/n) = 1/2: about 32 of 64 */
    const int two = slots_of_task(&c, 2);
    cr_assert(two > 16 && two < 48, "task 2 holds %d of 64", two);
    replay_free(&a), replay_free(&b), replay_free(&c);
}

/* Shrinking the capacity keeps a uniform sample: a buffer of 40 of 400 examples, loaded into 10
 * slots, holds each example with probability 10 / 400, over many buffers (through the bytes
 * and the file alike: one conversion). And the choice is the file's, not the run's seed. */
Test(replay, a_smaller_capacity_keeps_a_uniform_sample)
{
    enum { N = 400, CAP = 40, SMALL = 10, TRIALS = 4000 };
    static int kept[N];
    memset(kept, 0, sizeof(kept));
    for (int trial = 0; trial < TRIALS; trial++) {
        ReplayBuffer big, small;
        cr_assert_eq(replay_init(&big, REPLAY_RESERVOIR, CAP, T_EX, 0, 1, 7000 + trial), DS_OK);
        add_range(&big, 0, N, 0);
        const size_t size = replay_serialized_size(&big);
        void *bytes = malloc(size);
        cr_assert_eq(replay_serialize(&big, bytes, size), DS_OK);
        cr_assert_eq(replay_init(&small, REPLAY_RESERVOIR, SMALL, T_EX, 0, 1, 1), DS_OK);
        cr_assert_eq(replay_deserialize(&small, bytes, size), DS_OK, "%s", ds_last_error());
        cr_assert_eq(small.count, SMALL);
        cr_assert_eq(small.seen, N);
        for (int s = 0; s < small.count; s++)
            kept[slot_example(&small, s)]++;
        free(bytes);
        replay_free(&big), replay_free(&small);
    }
    /* Binomial(TRIALS, 1/40) each: mean 100, sd 9.9; every one within 5 sd, the chi-square near
     * its 399 degrees of freedom (sd 28) */
    const double p = (double)SMALL / N, mean = TRIALS * p, sd = sqrt(TRIALS * p * (1 - p));
    double chi2 = 0.0;
    for (int i = 0; i < N; i++) {
        cr_assert(fabs(kept[i] - mean) < 5 * sd, "example %d kept %d times (expected %.0f)", i,
                  kept[i], mean);
        chi2 += (kept[i] - mean) * (kept[i] - mean) / (mean * (1 - p));
    }
    cr_assert(chi2 > 290 && chi2 < 520, "chi-square %.1f for 399 degrees of freedom", chi2);
    /* the file's choice: two runs of other seeds keep the same slots */
    char dir[1024];
    scratch_dir(dir, sizeof(dir), "shrink");
    ReplayBuffer a, x, y;
    cr_assert_eq(replay_init(&a, REPLAY_RESERVOIR, CAP, T_EX, 0, 1, 3), DS_OK);
    add_range(&a, 0, N, 0);
    cr_assert_eq(replay_save(&a, dir), DS_OK);
    cr_assert_eq(replay_init(&x, REPLAY_RESERVOIR, SMALL, T_EX, 0, 1, 1), DS_OK);
    cr_assert_eq(replay_init(&y, REPLAY_RESERVOIR, SMALL, T_EX, 0, 1, 2), DS_OK);
    cr_assert_eq(replay_load(&x, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(replay_load(&y, dir), DS_OK);
    cr_assert_eq(memcmp(x.inputs, y.inputs, SMALL * T_EX * sizeof(int32_t)), 0);
    /* a larger buffer keeps every example and fills its free slots with the next ones */
    ReplayBuffer g;
    cr_assert_eq(replay_init(&g, REPLAY_RESERVOIR, 2 * CAP, T_EX, 0, 1, 1), DS_OK);
    cr_assert_eq(replay_load(&g, dir), DS_OK);
    cr_assert_eq(g.count, CAP);
    cr_assert_eq(memcmp(g.inputs, a.inputs, CAP * T_EX * sizeof(int32_t)), 0);
    add_range(&g, N, CAP, 0);
    cr_assert_eq(g.count, 2 * CAP);
    replay_free(&a), replay_free(&x), replay_free(&y), replay_free(&g);
}

/* Shrinking a task_balanced buffer: each task keeps its share, uniform within the task, and the
 * counts agree with the slots, so adding goes on. (Loaded as it was, the buffer kept its first
 * 12 slots with the file's counts of 10 a task, and the third add failed with "task counts out
 * of step".) */
Test(replay, a_smaller_task_balanced_buffer_keeps_each_task_share_and_goes_on)
{
    char dir[1024];
    scratch_dir(dir, sizeof(dir), "balanced");
    ReplayBuffer a, b;
    cr_assert_eq(replay_init(&a, REPLAY_TASK_BALANCED, 30, T_EX, 0, 1, 8), DS_OK);
    add_range(&a, 0, 300, 0);
    add_range(&a, 300, 100, 1);
    add_range(&a, 400, 60, 2);
    cr_assert_eq(replay_save(&a, dir), DS_OK);
    cr_assert_eq(replay_init(&b, REPLAY_TASK_BALANCED, 12, T_EX, 0, 1, 9), DS_OK);
    cr_assert_eq(replay_load(&b, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(b.count, 12);
    for (int task = 0; task < 3; task++)
        cr_assert_eq(slots_of_task(&b, task), 4, "task %d", task);
    cr_assert_eq(b.task_seen[0], 300);
    cr_assert_eq(b.task_seen[2], 60);
    assert_bookkeeping(&b);
    for (int s = 0; s < b.count; s++) { /* each slot one of the file's, with its task */
        int found = 0;
        for (int t = 0; t < a.count; t++)
            found += slot_example(&a, t) == slot_example(&b, s) && a.task_ids[t] == b.task_ids[s];
        cr_assert_eq(found, 1, "slot %d", s);
    }
    int32_t in[T_EX], tg[T_EX];
    float w[T_EX];
    for (int64_t i = 500; i < 600; i++) {
        example(i, in, tg, w);
        cr_assert_eq(replay_add(&b, in, tg, w, 0, 3), DS_OK, "add %lld: %s", (long long)i,
                     ds_last_error());
    }
    for (int task = 0; task < 4; task++)
        cr_assert_eq(slots_of_task(&b, task), 3, "task %d", task);
    assert_bookkeeping(&b);
    replay_free(&a), replay_free(&b);
}

/* A buffer says what it holds; a run of another kind refuses it, naming the file and the field:
 * task type, number of labels, vocabulary, seq_len; and a file that says nothing (format 1) is
 * judged by its contents. */
Test(replay, a_buffer_of_another_task_is_refused_naming_the_field)
{
    char dir[1024], path[1200];
    scratch_dir(dir, sizeof(dir), "task");
    snprintf(path, sizeof(path), "%s/replay-rank-00000.h5", dir);
    /* a classification buffer: labels 0..9, 18 tokens */
    ReplayBuffer cls;
    cr_assert_eq(replay_init(&cls, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 1), DS_OK);
    cr_assert_eq(replay_set_task(&cls, 18, 10), DS_OK);
    int32_t in[T_EX] = {1, 2, 3, 17};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(replay_add(&cls, in, NULL, NULL, i, 0), DS_OK);
    cr_assert_eq(replay_save(&cls, dir), DS_OK);
    const size_t size = replay_serialized_size(&cls);
    void *bytes = malloc(size);
    cr_assert_eq(replay_serialize(&cls, bytes, size), DS_OK);
    struct {
        int vocab, labels, T;
        const char *field;
    } runs[] = {{18, 0, T_EX, "task.type"},
                {18, 5, T_EX, "task.num_labels"},
                {32, 10, T_EX, "vocab_size"},
                {18, 10, T_EX + 1, "seq_len"}};
    for (size_t r = 0; r < DS_ARRAY_LEN(runs); r++) {
        for (int way = 0; way < 2; way++) { /* the file, then the bytes */
            ReplayBuffer b;
            cr_assert_eq(replay_init(&b, REPLAY_RESERVOIR, 8, runs[r].T, 0, 1, 2), DS_OK);
            cr_assert_eq(replay_set_task(&b, runs[r].vocab, runs[r].labels), DS_OK);
            const int got = way ? replay_deserialize(&b, bytes, size) : replay_load(&b, dir);
            cr_assert_eq(got, DS_ERR_INPUT, "%s", runs[r].field);
            cr_assert(strstr(ds_last_error(), runs[r].field) != NULL, "%s", ds_last_error());
            cr_assert(strstr(ds_last_error(), way ? "replay blob" : path) != NULL, "%s",
                      ds_last_error());
            cr_assert_eq(b.count, 0);
            replay_free(&b);
        }
    }
    /* the same kind loads; a run not told what it trains checks seq_len only */
    ReplayBuffer ok;
    cr_assert_eq(replay_init(&ok, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 2), DS_OK);
    cr_assert_eq(replay_set_task(&ok, 18, 10), DS_OK);
    cr_assert_eq(replay_load(&ok, dir), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ok.count, 5);
    cr_assert_eq(ok.labels[4], 4);
    replay_free(&ok);
    /* contents outside the run's vocabulary or labels, whatever the header says */
    ReplayBuffer liar;
    cr_assert_eq(replay_init(&liar, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 1), DS_OK);
    cr_assert_eq(replay_set_task(&liar, 18, 10), DS_OK);
    int32_t far[T_EX] = {1, 2, 18, 3};
    cr_assert_eq(replay_add(&liar, far, NULL, NULL, 3, 0), DS_OK);
    cr_assert_eq(replay_save(&liar, dir), DS_OK);
    cr_assert_eq(replay_init(&ok, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 2), DS_OK);
    cr_assert_eq(replay_set_task(&ok, 18, 10), DS_OK);
    cr_assert_eq(replay_load(&ok, dir), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "inputs: slot 0 holds token 18") != NULL, "%s",
              ds_last_error());
    replay_free(&ok);
    /* format 1 (written before buffers said what they hold): a classification buffer is known
     * by its labels */
    char cmd[1600];
    cr_assert_eq(replay_save(&cls, dir), DS_OK);
    snprintf(cmd, sizeof(cmd),
             "python3 -c \"import h5py; f = h5py.File('%s', 'r+'); m = f.attrs['meta'][:10]; "
             "m[0] = 1; f.attrs['meta'] = m\" 2>/dev/null",
             path);
    if (system(cmd) == 0) {
        ReplayBuffer lm;
        cr_assert_eq(replay_init(&lm, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 2), DS_OK);
        cr_assert_eq(replay_set_task(&lm, 18, 0), DS_OK);
        cr_assert_eq(replay_load(&lm, dir), DS_ERR_INPUT);
        cr_assert(strstr(ds_last_error(), "a classification buffer") != NULL, "%s",
                  ds_last_error());
        replay_free(&lm);
        cr_assert_eq(replay_init(&lm, REPLAY_RESERVOIR, 8, T_EX, 0, 1, 2), DS_OK);
        cr_assert_eq(replay_set_task(&lm, 18, 10), DS_OK);
        cr_assert_eq(replay_load(&lm, dir), DS_OK, "%s", ds_last_error());
        cr_assert_eq(lm.count, 5);
        replay_free(&lm);
    }
    free(bytes);
    replay_free(&cls), replay_free(&liar);
}

/* The whole buffer as bytes (a checkpoint's blob): back into a buffer of another seed it is the
 * same buffer (slots, counts, random state, bookkeeping, task) and continues identically (draws
 * and adds); under either policy. */
Test(replay, the_whole_buffer_round_trips_through_bytes)
{
    for (int policy = REPLAY_RESERVOIR; policy <= REPLAY_TASK_BALANCED; policy++) {
        ReplayBuffer a, b;
        cr_assert_eq(replay_init(&a, policy, 24, T_EX, 0, 1, 11), DS_OK);
        cr_assert_eq(replay_set_task(&a, BIG_VOCAB, 10), DS_OK); /* add_range: labels i % 10 */
        add_range(&a, 0, 70, 0);
        add_range(&a, 70, 50, 1);
        const size_t size = replay_serialized_size(&a);
        unsigned char *bytes = malloc(size + 1);
        cr_assert_eq(replay_serialize(&a, bytes, size - 1), DS_ERR_INTERNAL, "too small");
        cr_assert_eq(replay_serialize(&a, bytes, size), DS_OK);
        cr_assert_eq(replay_init(&b, policy, 24, T_EX, 0, 1, 99), DS_OK);
        cr_assert_eq(replay_deserialize(&b, bytes, size), DS_OK, "%s", ds_last_error());
        cr_assert_eq(b.count, a.count);
        cr_assert_eq(b.seen, a.seen);
        cr_assert_eq(b.rng, a.rng);
        cr_assert_eq(b.vocab_size, BIG_VOCAB, "told by the bytes");
        cr_assert_eq(b.num_labels, 10);
        cr_assert_eq(b.n_tasks, a.n_tasks);
        cr_assert_eq(memcmp(a.task_list, b.task_list, sizeof(a.task_list)), 0);
        cr_assert_eq(memcmp(a.task_seen, b.task_seen, sizeof(a.task_seen)), 0);
        cr_assert_eq(memcmp(a.task_count, b.task_count, sizeof(a.task_count)), 0);
        const size_t n = (size_t)a.count;
        cr_assert_eq(memcmp(a.inputs, b.inputs, n * T_EX * sizeof(int32_t)), 0);
        cr_assert_eq(memcmp(a.targets, b.targets, n * T_EX * sizeof(int32_t)), 0);
        cr_assert_eq(memcmp(a.mask, b.mask, n * T_EX), 0);
        cr_assert_eq(memcmp(a.labels, b.labels, n * sizeof(int64_t)), 0);
        cr_assert_eq(memcmp(a.task_ids, b.task_ids, n * sizeof(int32_t)), 0);
        for (int i = 0; i < 40; i++) { /* the same draws, then the same adds */
            int sa, sb;
            cr_assert_eq(replay_draw(&a, &sa), DS_OK);
            cr_assert_eq(replay_draw(&b, &sb), DS_OK);
            cr_assert_eq(sa, sb, "draw %d", i);
        }
        add_range(&a, 120, 60, 2);
        add_range(&b, 120, 60, 2);
        cr_assert_eq(memcmp(a.inputs, b.inputs, 24 * T_EX * sizeof(int32_t)), 0);
        cr_assert_eq(memcmp(a.task_ids, b.task_ids, 24 * sizeof(int32_t)), 0);
        cr_assert_eq(a.rng, b.rng);
        /* hostile bytes: every truncation, a wrong magic or version, counts out of range, a
         * length that disagrees with the header: refused, the buffer left empty */
        ReplayBuffer c;
        cr_assert_eq(replay_init(&c, policy, 24, T_EX, 0, 1, 1), DS_OK);
        for (size_t cut = 0; cut < size; cut += cut < 64 ? 1 : 97)
            cr_assert_eq(replay_deserialize(&c, bytes, cut), DS_ERR_INPUT, "%zu bytes", cut);
        bytes[size] = 0;
        cr_assert_eq(replay_deserialize(&c, bytes, size + 1), DS_ERR_INPUT);
        const size_t fields[] = {0, 4, 8, 16, 20, 24};             /* magic ... n_tasks */
        const int32_t bad[] = {0x12345678, 7, 5, -1, 1 << 30, -3}; /* one bad value each */
        for (size_t f = 0; f < DS_ARRAY_LEN(fields); f++) {
            unsigned char *copy = malloc(size);
            memcpy(copy, bytes, size);
            memcpy(copy + fields[f], &bad[f], 4);
            cr_assert_eq(replay_deserialize(&c, copy, size), DS_ERR_INPUT, "field at %zu",
                         fields[f]);
            cr_assert_eq(c.count, 0);
            free(copy);
        }
        int64_t few = 1; /* seen below the count kept */
        memcpy(bytes + 40, &few, 8);
        cr_assert_eq(replay_deserialize(&c, bytes, size), DS_ERR_INPUT);
        cr_assert(strstr(ds_last_error(), "replay blob") != NULL, "%s", ds_last_error());
        free(bytes);
        replay_free(&a), replay_free(&b), replay_free(&c);
    }
}
