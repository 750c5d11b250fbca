/* test_replay.c: the replay buffer: Algorithm R keeps every example with probability
 * capacity / N (a statistical test with fixed seeds), task_balanced shares, seeded draws, and the
 * HDF5 files across save, restore and a change in the number of data-parallel ranks; a global
 * buffer sharded over ranks decides as one buffer does. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/replay.h"
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
             "m[6] = 5; m[3] = %d; f.attrs['meta'] = m\" 2>/dev/null",
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
