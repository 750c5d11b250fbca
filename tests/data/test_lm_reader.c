/* test_lm_reader.c: the causal-LM window reader: EOS joining and windows exact against a
 * hand-computed stream, loss weights from masks, disjoint and complete coverage across
 * data-parallel ranks, seeded order, epochs, and position/seek. */
#include "data_test_util.h"

/* Docs [1 2 3] [4 5] [6 7 8 9] [10], eos 11: stream 1 2 3 E 4 5 E 6 7 8 9 E 10 E (14 positions).
 * Doc 2's loss mask is 0 1 0 1. */
static const char *SMALL_JSONL = "{\"input_ids\": [1, 2, 3]}\n"
                                 "{\"input_ids\": [4, 5]}\n"
                                 "{\"input_ids\": [6, 7, 8, 9], \"loss_mask\": [0, 1, 0, 1]}\n"
                                 "{\"input_ids\": [10]}\n";

static void pack_small(const char *dir, const char *name, const char *eos, char *out, size_t size)
{
    char in[1100];
    test_path(in, sizeof(in), dir, "small.jsonl");
    test_path(out, size, dir, name);
    write_text(in, SMALL_JSONL);
    cr_assert_eq(
        run_pack("--input", in, "--output", out, "--vocab-size", "12", "--eos-id", eos, NULL),
        DS_OK, "%s", ds_last_error());
}

/* Read every window of one epoch (dp_size 1) and check each against the expected table, found
 * by its position in the permuted order (lm_reader_next_window_index on a twin reader). */
static void check_windows(const char *path, int T, int n_expected, const int32_t *expect,
                          const float *expect_w)
{
    LMReader *r = NULL, *twin = NULL;
    cr_assert_eq(lm_reader_open(path, 0, T, 1234, 0, 1, &r), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_open(path, 0, T, 1234, 0, 1, &twin), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_windows_per_epoch(r), n_expected);
    int seen[16] = {0};
    for (int k = 0; k < n_expected; k++) {
        int32_t in[16], tg[16];
        float wt[16];
        int64_t w = -1;
        cr_assert_eq(lm_reader_next_window_index(twin, &w), DS_OK);
        cr_assert_eq(lm_reader_next(r, 1, in, tg, wt), DS_OK, "%s", ds_last_error());
        cr_assert(w >= 0 && w < n_expected);
        seen[w]++;
        const int32_t *win = expect + w * (T + 1);
        for (int t = 0; t < T; t++) {
            cr_assert_eq(in[t], win[t], "window %ld input %d", (long)w, t);
            cr_assert_eq(tg[t], win[t + 1], "window %ld target %d", (long)w, t);
            cr_assert_float_eq(wt[t], expect_w[w * T + t], 0, "window %ld weight %d", (long)w, t);
        }
    }
    for (int w = 0; w < n_expected; w++)
        cr_assert_eq(seen[w], 1, "window %d seen %d times", w, seen[w]);
    lm_reader_close(r);
    lm_reader_close(twin);
}

Test(lm_reader, windows_join_documents_with_eos_exactly)
{
    char dir[1024], path[1100];
    test_dir("lm-eos", dir, sizeof(dir));
    pack_small(dir, "small.h5", "11", path, sizeof(path));
    /* T = 3: windows of 4 over 14 positions -> 3 windows, the last 2 positions dropped. */
    const int32_t w4[] = {1, 2, 3, 11, /**/ 4, 5, 11, 6, /**/ 7, 8, 9, 11};
    /* weights are the targets' masks: 6 and 8 are masked, EOS is trained. */
    const float wt4[] = {1, 1, 1, /**/ 1, 1, 0, /**/ 0, 1, 1};
    check_windows(path, 3, 3, w4, wt4);
    /* T = 2: windows of 3 -> 4 windows; windows 1 and 2 start on an EOS separator. */
    const int32_t w3[] = {1, 2, 3, /**/ 11, 4, 5, /**/ 11, 6, 7, /**/ 8, 9, 11};
    const float wt3[] = {1, 1, /**/ 1, 1, /**/ 0, 1, /**/ 1, 1};
    check_windows(path, 2, 4, w3, wt3);
    /* T = 13: the whole stream but its last EOS is one window. */
    const int32_t w14[] = {1, 2, 3, 11, 4, 5, 11, 6, 7, 8, 9, 11, 10, 11};
    const float wt14[] = {1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1};
    check_windows(path, 13, 1, w14, wt14);
}

Test(lm_reader, without_eos_documents_are_joined_directly)
{
    char dir[1024], path[1100];
    test_dir("lm-noeos", dir, sizeof(dir));
    pack_small(dir, "noeos.h5", "-1", path, sizeof(path));
    const int32_t w3[] = {1, 2, 3, /**/ 4, 5, 6, /**/ 7, 8, 9};
    const float wt3[] = {1, 1, /**/ 1, 0, /**/ 0, 1};
    check_windows(path, 2, 3, w3, wt3);
}

Test(lm_reader, file_too_small_for_seq_len_is_an_input_error)
{
    char dir[1024], path[1100];
    test_dir("lm-small", dir, sizeof(dir));
    pack_small(dir, "small.h5", "11", path, sizeof(path));
    LMReader *r = NULL;
    cr_assert_eq(lm_reader_open(path, 0, 14, 1, 0, 1, &r), DS_ERR_INPUT);
    assert_error_contains(path);
    assert_error_contains("too small for seq_len 14");
    cr_assert_null(r);
    /* 3 windows cannot feed 4 ranks. */
    cr_assert_eq(lm_reader_open(path, 0, 3, 1, 3, 4, &r), DS_ERR_INPUT);
    assert_error_contains("data-parallel");
    cr_assert_eq(lm_reader_open(path, 0, 3, 1, 2, 2, &r), DS_ERR_INPUT, "rank outside dp_size");
}

/* A file of 300 documents of 1..60 tokens; returns its path. The stream is kept for checks. */
#define MANY_DOCS 300
static int64_t many_stream_len;
static int32_t many_stream[MANY_DOCS * 61];

static void pack_many(const char *dir, char *out, size_t size)
{
    char in[1100];
    test_path(in, sizeof(in), dir, "many.jsonl");
    test_path(out, size, dir, "many.h5");
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    uint64_t x = 88172645463325252ULL;
    many_stream_len = 0;
    for (int d = 0; d < MANY_DOCS; d++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int len = 1 + (int)(x % 60);
        fputs("{\"input_ids\": [", f);
        for (int i = 0; i < len; i++) {
            int id = (d * 31 + i * 7) % 500;
            fprintf(f, "%s%d", i ? ", " : "", id);
            many_stream[many_stream_len++] = id;
        }
        fputs("]}\n", f);
        many_stream[many_stream_len++] = 511; /* eos */
    }
    fclose(f);
    cr_assert_eq(
        run_pack("--input", in, "--output", out, "--vocab-size", "512", "--eos-id", "511", NULL),
        DS_OK, "%s", ds_last_error());
}

Test(lm_reader, every_window_matches_the_stream)
{
    char dir[1024], path[1100];
    test_dir("lm-stream", dir, sizeof(dir));
    pack_many(dir, path, sizeof(path));
    const int T = 37;
    LMReader *r = NULL, *twin = NULL;
    cr_assert_eq(lm_reader_open(path, 512, T, 7, 0, 1, &r), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_open(path, 512, T, 7, 0, 1, &twin), DS_OK);
    int64_t n = lm_reader_windows_per_epoch(r);
    cr_assert_eq(n, many_stream_len / (T + 1));
    int32_t in[2 * 37], tg[2 * 37];
    float wt[2 * 37];
    for (int64_t k = 0; k < n; k += 2) {
        int64_t w[2];
        cr_assert_eq(lm_reader_next_window_index(twin, &w[0]), DS_OK);
        cr_assert_eq(lm_reader_next_window_index(twin, &w[1]), DS_OK);
        cr_assert_eq(lm_reader_next(r, 2, in, tg, wt), DS_OK, "%s", ds_last_error());
        for (int b = 0; b < 2; b++) {
            const int32_t *s = many_stream + w[b] * (T + 1);
            for (int t = 0; t < T; t++) {
                cr_assert_eq(in[b * T + t], s[t]);
                cr_assert_eq(tg[b * T + t], s[t + 1]);
                cr_assert_float_eq(wt[b * T + t], 1.0f, 0);
            }
        }
    }
    lm_reader_close(r);
    lm_reader_close(twin);
}

/* Collect the first epoch of window indices for every rank of dp_size ranks. */
static void collect_epoch(const char *path, int T, uint64_t seed, int dp_size, int64_t n,
                          int64_t *order /* n: by global position */)
{
    for (int rank = 0; rank < dp_size; rank++) {
        LMReader *r = NULL;
        cr_assert_eq(lm_reader_open(path, 0, T, seed, rank, dp_size, &r), DS_OK, "%s",
                     ds_last_error());
        cr_assert_eq(lm_reader_windows_per_epoch(r), n);
        for (int64_t p = rank; p < n; p += dp_size) {
            int64_t pos = -1;
            cr_assert_eq(lm_reader_position(r, &pos), DS_OK);
            cr_assert_eq(pos, p, "rank %d position", rank);
            cr_assert_eq(lm_reader_next_window_index(r, &order[p]), DS_OK);
        }
        /* The next window is the first of epoch 1 at this rank's place. */
        int64_t pos = -1;
        lm_reader_position(r, &pos);
        cr_assert_eq(pos, n + rank);
        lm_reader_close(r);
    }
}

Test(lm_reader, ranks_cover_an_epoch_disjointly_and_completely)
{
    char dir[1024], path[1100];
    test_dir("lm-cover", dir, sizeof(dir));
    pack_many(dir, path, sizeof(path));
    const int T = 5;
    const int64_t n = many_stream_len / (T + 1);
    cr_assert_gt(n, 1000);
    int64_t *reference = malloc((size_t)n * sizeof(int64_t));
    int64_t *order = malloc((size_t)n * sizeof(int64_t));
    int *count = malloc((size_t)n * sizeof(int));
    collect_epoch(path, T, 42, 1, n, reference);
    int64_t fixed_points = 0;
    for (int64_t p = 0; p < n; p++)
        fixed_points += reference[p] == p;
    cr_assert_lt(fixed_points, 20, "order looks unshuffled (%ld fixed points)", (long)fixed_points);
    for (int dp = 1; dp <= 4; dp++) {
        for (int64_t p = 0; p < n; p++)
            order[p] = -1, count[p] = 0;
        collect_epoch(path, T, 42, dp, n, order);
        for (int64_t p = 0; p < n; p++) {
            cr_assert(order[p] >= 0 && order[p] < n, "dp %d: position %ld has window %ld", dp,
                      (long)p, (long)order[p]);
            count[order[p]]++;
            /* Ranks share one permutation: their union is the single-rank order. */
            cr_assert_eq(order[p], reference[p], "dp %d position %ld", dp, (long)p);
        }
        for (int64_t w = 0; w < n; w++)
            cr_assert_eq(count[w], 1, "dp %d: window %ld read %d times", dp, (long)w, count[w]);
    }
    free(reference);
    free(order);
    free(count);
}

Test(lm_reader, order_depends_on_seed_and_epoch_only)
{
    char dir[1024], path[1100];
    test_dir("lm-seed", dir, sizeof(dir));
    pack_many(dir, path, sizeof(path));
    const int T = 9;
    LMReader *a = NULL, *b = NULL, *c = NULL;
    cr_assert_eq(lm_reader_open(path, 0, T, 1, 0, 1, &a), DS_OK);
    cr_assert_eq(lm_reader_open(path, 0, T, 1, 0, 1, &b), DS_OK);
    cr_assert_eq(lm_reader_open(path, 0, T, 2, 0, 1, &c), DS_OK);
    int64_t n = lm_reader_windows_per_epoch(a);
    int64_t same_as_other_seed = 0, same_as_previous_epoch = 0;
    int64_t *epoch0 = malloc((size_t)n * sizeof(int64_t));
    int *seen = calloc((size_t)n, sizeof(int));
    for (int64_t k = 0; k < 2 * n; k++) {
        int64_t wa, wb, wc;
        lm_reader_next_window_index(a, &wa);
        lm_reader_next_window_index(b, &wb);
        lm_reader_next_window_index(c, &wc);
        cr_assert_eq(wa, wb, "same seed, same order (k = %ld)", (long)k);
        same_as_other_seed += wa == wc;
        if (k < n) {
            epoch0[k] = wa;
        } else {
            same_as_previous_epoch += wa == epoch0[k - n];
            seen[wa]++;
        }
    }
    cr_assert_lt(same_as_other_seed, 2 * n / 10, "another seed gives another order");
    cr_assert_lt(same_as_previous_epoch, n / 10, "epoch 1 is reshuffled");
    for (int64_t w = 0; w < n; w++)
        cr_assert_eq(seen[w], 1, "epoch 1 is complete too");
    free(epoch0);
    free(seen);
    lm_reader_close(a);
    lm_reader_close(b);
    lm_reader_close(c);
}

Test(lm_reader, seek_returns_to_a_position)
{
    char dir[1024], path[1100];
    test_dir("lm-seek", dir, sizeof(dir));
    pack_many(dir, path, sizeof(path));
    const int T = 11;
    LMReader *r = NULL, *other = NULL;
    cr_assert_eq(lm_reader_open(path, 0, T, 5, 1, 3, &r), DS_OK);
    cr_assert_eq(lm_reader_open(path, 0, T, 5, 1, 3, &other), DS_OK);
    int64_t n = lm_reader_windows_per_epoch(r);
    int64_t skip = n / 3 + 4; /* into epoch 1 */
    for (int64_t k = 0; k < skip; k++) {
        int64_t w;
        lm_reader_next_window_index(r, &w);
    }
    int64_t pos = -1;
    cr_assert_eq(lm_reader_position(r, &pos), DS_OK);
    cr_assert_geq(pos, n, "in the second epoch");
    int32_t in1[3 * 11], tg1[3 * 11], in2[3 * 11], tg2[3 * 11];
    float w1[3 * 11], w2[3 * 11];
    cr_assert_eq(lm_reader_next(r, 3, in1, tg1, w1), DS_OK);
    cr_assert_eq(lm_reader_seek(other, pos), DS_OK, "%s", ds_last_error());
    cr_assert_eq(lm_reader_next(other, 3, in2, tg2, w2), DS_OK);
    cr_assert_eq(memcmp(in1, in2, sizeof(in1)), 0);
    cr_assert_eq(memcmp(tg1, tg2, sizeof(tg1)), 0);
    /* A position of another rank is refused. */
    cr_assert_eq(lm_reader_seek(other, pos + 1), DS_ERR_INPUT);
    assert_error_contains("rank 1 of 3");
    lm_reader_close(r);
    lm_reader_close(other);
}
