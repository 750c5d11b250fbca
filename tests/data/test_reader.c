/* test_reader.c: the training data reader (data/reader.h): sharding disjoint and complete for
 * 1-4 data-parallel ranks, the global order independent of the dp size, seeded order, resume
 * mid-epoch (also under another dp size and with a mixture), prefetch equal to synchronous
 * reads, SFT and classification rows, weighted mixtures, and read errors (a corrupted chunk
 * mid-run) returned as errors. */
#include "data/reader.h"
#include "data_test_util.h"

/* One document of tokens 0..n-1, no EOS, vocab n: LM window w starts with token w (T + 1), so
 * a row names its window. */
static void make_counting_file(const char *dir, const char *name, int n, char *out, size_t size)
{
    char script[1024];
    snprintf(script, sizeof(script),
             "import sys, h5py, numpy as np\n"
             "with h5py.File(sys.argv[1] + '/%s', 'w') as f:\n"
             "    f.create_dataset('tokens', data=np.arange(%d, dtype=np.int32))\n"
             "    f.create_dataset('doc_offsets', data=np.array([0, %d]))\n"
             "    f.attrs.update({'format': 'dstrain-tokens', 'format_version': 1,\n"
             "                    'vocab_size': %d})\n",
             name, n, n, n);
    cr_assert_eq(run_python(dir, "counting", script), 0);
    test_path(out, size, dir, name);
}

typedef struct Rows {
    int32_t in[64 * 64], tg[64 * 64];
    float wt[64 * 64];
    int64_t labels[64];
} Rows;

static DataReader *open_reader(const char *path, DataMode mode, int T, int B, int accum, int rank,
                               int dp, uint64_t seed, int prefetch)
{
    DataSource src = {path, 1.0};
    DataReaderOptions o = {.mode = mode,
                           .sources = &src,
                           .n_sources = 1,
                           .seq_len = T,
                           .micro_batch = B,
                           .grad_accum = accum,
                           .dp_rank = rank,
                           .dp_size = dp,
                           .seed = seed,
                           .prefetch = prefetch};
    DataReader *r = NULL;
    cr_assert_eq(data_reader_open(&o, &r), DS_OK, "%s", ds_last_error());
    return r;
}

/* 12 windows of T + 1 = 4 tokens: for dp 1, 2, 3, 4 (one row per rank per step), the rows of
 * one epoch's steps cover every window once, and the global order (step, rank) is the same for
 * every dp size. */
Test(reader, sharding_is_disjoint_complete_and_independent_of_dp_size)
{
    char dir[1024], path[1100];
    test_dir("rd-shard", dir, sizeof(dir));
    make_counting_file(dir, "count.h5", 48, path, sizeof(path));
    const int T = 3, n = 12;
    int64_t global[4][2 * 12];
    for (int dp = 1; dp <= 4; dp++) {
        DataReader *r[4];
        for (int k = 0; k < dp; k++)
            r[k] = open_reader(path, DATA_MODE_LM, T, 1, 1, k, dp, 99, 2);
        cr_assert_eq(data_reader_samples_per_epoch(r[0], 0), n);
        for (int step = 0; step < 2 * n / dp; step++) {
            for (int k = 0; k < dp; k++) {
                Rows x;
                cr_assert_eq(data_reader_next(r[k], x.in, x.tg, x.wt, NULL), DS_OK, "%s",
                             ds_last_error());
                cr_assert_eq(x.in[0] % (T + 1), 0);
                cr_assert_eq(x.tg[0], x.in[0] + 1);
                global[dp - 1][step * dp + k] = x.in[0] / (T + 1);
            }
        }
        for (int epoch = 0; epoch < 2; epoch++) {
            int seen[12] = {0};
            for (int i = 0; i < n; i++)
                seen[global[dp - 1][epoch * n + i]]++;
            for (int w = 0; w < n; w++)
                cr_assert_eq(seen[w], 1, "dp %d epoch %d: window %d seen %d times", dp, epoch, w,
                             seen[w]);
        }
        for (int k = 0; k < dp; k++)
            data_reader_close(r[k]);
    }
    for (int dp = 2; dp <= 4; dp++)
        cr_assert(memcmp(global[0], global[dp - 1], sizeof(global[0])) == 0,
                  "global order differs at dp %d", dp);
    /* The second epoch is another permutation. */
    cr_assert(memcmp(global[0], global[0] + n, n * sizeof(int64_t)) != 0);
}

static void read_steps(DataReader *r, int micro_batches, Rows *out)
{
    for (int i = 0; i < micro_batches; i++)
        cr_assert_eq(data_reader_next(r, out[i].in, out[i].tg, out[i].wt, out[i].labels), DS_OK,
                     "%s", ds_last_error());
}

static int rows_equal(const Rows *a, const Rows *b, int n_values)
{
    return memcmp(a->in, b->in, (size_t)n_values * 4) == 0 &&
           memcmp(a->tg, b->tg, (size_t)n_values * 4) == 0 &&
           memcmp(a->wt, b->wt, (size_t)n_values * 4) == 0;
}

Test(reader, same_seed_same_order_other_seed_other_order_prefetch_or_not)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/data/bundled/kjv-train.h5", DSTRAIN_SOURCE_DIR);
    const int T = 32, B = 4;
    DataReader *a = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 1, 5, 3);
    DataReader *b = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 1, 5, 0);
    DataReader *c = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 1, 6, 3);
    static Rows ra[6], rb[6], rc[6];
    read_steps(a, 6, ra);
    read_steps(b, 6, rb);
    read_steps(c, 6, rc);
    int differ = 0;
    for (int i = 0; i < 6; i++) {
        cr_assert(rows_equal(&ra[i], &rb[i], B * T), "batch %d: prefetch changed the data", i);
        differ += !rows_equal(&ra[i], &rc[i], B * T);
    }
    cr_assert_eq(differ, 6, "another seed gives other batches");
    cr_assert_geq(data_reader_wait_seconds(a), 0.0);
    data_reader_close(a);
    data_reader_close(b);
    data_reader_close(c);
}

/* Resume mid-epoch: the state after 5 steps, restored in a fresh reader, gives the batches the
 * uninterrupted reader reads next, also with 2 ranks instead of 1 (same global batch). */
Test(reader, resume_mid_epoch_gives_identical_batches_also_at_another_dp_size)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/data/bundled/kjv-train.h5", DSTRAIN_SOURCE_DIR);
    const int T = 16, B = 2;
    /* dp 1, micro-batch 2, accum 2: G = 4 */
    DataReader *a = open_reader(path, DATA_MODE_LM, T, B, 2, 0, 1, 42, 4);
    static Rows skip[10], cont[8];
    read_steps(a, 10, skip);
    DataReaderState st;
    cr_assert_eq(data_reader_get_state(a, &st), DS_OK, "%s", ds_last_error());
    cr_assert_eq(st.global_sample, 5 * 4);
    cr_assert_eq(st.consumed[0], 20);
    read_steps(a, 8, cont);
    Rows mid;
    read_steps(a, 1, &mid);
    cr_assert_eq(data_reader_get_state(a, &st), DS_ERR_INTERNAL, "mid-step position refused");
    cr_assert_eq(data_reader_get_state(a, &st), DS_ERR_INTERNAL);

    DataReaderState saved;
    DataReader *ref = open_reader(path, DATA_MODE_LM, T, B, 2, 0, 1, 42, 0);
    read_steps(ref, 10, skip);
    cr_assert_eq(data_reader_get_state(ref, &saved), DS_OK);
    data_reader_close(ref);

    /* same layout, fresh reader opened with another seed: the state's seed wins */
    DataReader *b = open_reader(path, DATA_MODE_LM, T, B, 2, 0, 1, 7, 4);
    cr_assert_eq(data_reader_set_state(b, &saved), DS_OK, "%s", ds_last_error());
    static Rows again[8];
    read_steps(b, 8, again);
    for (int i = 0; i < 8; i++)
        cr_assert(rows_equal(&cont[i], &again[i], B * T), "micro-batch %d differs after resume", i);
    data_reader_close(b);

    /* dp 2, micro-batch 2, accum 1: G = 4. Step s: rank 0 holds the first micro-batch of the
     * dp-1 step, rank 1 the second. */
    DataReader *r0 = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 2, 42, 2);
    DataReader *r1 = open_reader(path, DATA_MODE_LM, T, B, 1, 1, 2, 42, 2);
    cr_assert_eq(data_reader_set_state(r0, &saved), DS_OK, "%s", ds_last_error());
    cr_assert_eq(data_reader_set_state(r1, &saved), DS_OK, "%s", ds_last_error());
    for (int step = 0; step < 4; step++) {
        Rows x0, x1;
        read_steps(r0, 1, &x0);
        read_steps(r1, 1, &x1);
        cr_assert(rows_equal(&cont[2 * step], &x0, B * T), "step %d rank 0", step);
        cr_assert(rows_equal(&cont[2 * step + 1], &x1, B * T), "step %d rank 1", step);
    }
    DataReaderState s0, s1;
    cr_assert_eq(data_reader_get_state(r0, &s0), DS_OK);
    cr_assert_eq(data_reader_get_state(r1, &s1), DS_OK);
    cr_assert(memcmp(&s0, &s1, sizeof(s0)) == 0, "every rank holds the same global state");
    cr_assert_eq(s0.global_sample, 9 * 4);
    data_reader_close(r0);
    data_reader_close(r1);

    /* A state from another file shape is refused, naming what differs. */
    DataReader *other = open_reader(path, DATA_MODE_LM, T + 1, B, 2, 0, 1, 42, 0);
    cr_assert_eq(data_reader_set_state(other, &saved), DS_ERR_INPUT);
    assert_error_contains("seq_len 16");
    data_reader_close(other);
    data_reader_close(a);
}

/* SFT and classification rows from a packed file with loss masks, labels and pad_id. */
static const char *SFT_JSONL =
    "{\"input_ids\": [1, 2, 3, 4, 5], \"loss_mask\": [0, 0, 1, 1, 1], \"label\": 2}\n"
    "{\"input_ids\": [6, 7], \"loss_mask\": [0, 1], \"label\": 0}\n"
    "{\"input_ids\": [8, 9, 10, 11, 12, 13, 14, 15, 16], \"label\": 1}\n";

static void pack_sft(const char *dir, char *out, size_t size, const char *pad)
{
    char in[1100];
    test_path(in, sizeof(in), dir, "sft.jsonl");
    write_text(in, SFT_JSONL);
    test_path(out, size, dir, "sft.h5");
    if (pad)
        cr_assert_eq(
            run_pack("--input", in, "--output", out, "--vocab-size", "20", "--pad-id", pad, NULL),
            DS_OK, "%s", ds_last_error());
    else
        cr_assert_eq(run_pack("--input", in, "--output", out, "--vocab-size", "20", NULL), DS_OK,
                     "%s", ds_last_error());
}

Test(reader, sft_rows_are_truncated_or_padded_and_mask_prompts)
{
    char dir[1024], path[1100];
    test_dir("rd-sft", dir, sizeof(dir));
    pack_sft(dir, path, sizeof(path), "19");
    const int T = 6;
    DataReader *r = open_reader(path, DATA_MODE_SFT, T, 3, 1, 0, 1, 1, 2);
    cr_assert_eq(data_reader_samples_per_epoch(r, 0), 3);
    Rows x;
    cr_assert_eq(data_reader_next(r, x.in, x.tg, x.wt, NULL), DS_OK, "%s", ds_last_error());
    int seen[3] = {0};
    for (int b = 0; b < 3; b++) {
        const int32_t *in = x.in + b * T, *tg = x.tg + b * T;
        const float *w = x.wt + b * T;
        if (in[0] == 1) { /* 1 2 3 4 5 | pad: targets 2 3 4 5 pad pad, mask of targets 0 1 1 1 */
            const int32_t ein[6] = {1, 2, 3, 4, 5, 19}, etg[6] = {2, 3, 4, 5, 19, 19};
            const float ew[6] = {0, 1, 1, 1, 0, 0};
            for (int t = 0; t < T; t++)
                cr_assert(in[t] == ein[t] && tg[t] == etg[t] && w[t] == ew[t], "row 0 t %d", t);
            seen[0]++;
        } else if (in[0] == 6) {
            const int32_t ein[6] = {6, 7, 19, 19, 19, 19}, etg[6] = {7, 19, 19, 19, 19, 19};
            const float ew[6] = {1, 0, 0, 0, 0, 0};
            for (int t = 0; t < T; t++)
                cr_assert(in[t] == ein[t] && tg[t] == etg[t] && w[t] == ew[t], "row 1 t %d", t);
            seen[1]++;
        } else { /* 9 tokens truncated to T + 1 = 7 */
            for (int t = 0; t < T; t++)
                cr_assert(in[t] == 8 + t && tg[t] == 9 + t && w[t] == 1.0f, "row 2 t %d", t);
            seen[2]++;
        }
    }
    cr_assert(seen[0] == 1 && seen[1] == 1 && seen[2] == 1, "one epoch, each example once");
    data_reader_close(r);
}

Test(reader, classification_rows_carry_labels)
{
    char dir[1024], path[1100];
    test_dir("rd-cls", dir, sizeof(dir));
    pack_sft(dir, path, sizeof(path), "19");
    const int T = 4;
    DataReader *r = open_reader(path, DATA_MODE_CLASSIFICATION, T, 3, 1, 0, 1, 3, 2);
    Rows x;
    memset(&x, 0x7F, sizeof(x));
    cr_assert_eq(data_reader_next(r, x.in, x.tg, x.wt, x.labels), DS_OK, "%s", ds_last_error());
    for (int b = 0; b < 3; b++) {
        const int32_t *in = x.in + b * T;
        int64_t want = in[0] == 1 ? 2 : in[0] == 6 ? 0 : 1;
        cr_assert_eq(x.labels[b], want, "row %d", b);
        cr_assert_eq(x.tg[b], (int32_t)want);
        cr_assert_eq(x.wt[b], 1.0f);
        if (in[0] == 6) cr_assert(in[1] == 7 && in[2] == 19 && in[3] == 19, "padded");
        if (in[0] == 8) cr_assert(in[3] == 11, "truncated to T");
    }
    for (int i = 3; i < 3 * T; i++)
        cr_assert(x.tg[i] == 0 && x.wt[i] == 0.0f, "rest of targets and weights zero");
    data_reader_close(r);

    /* a label outside task.num_labels, and a file without pad_id, are refused at open */
    DataSource src = {path, 1.0};
    DataReaderOptions o = {.mode = DATA_MODE_CLASSIFICATION,
                           .sources = &src,
                           .n_sources = 1,
                           .num_labels = 2,
                           .seq_len = T,
                           .micro_batch = 1,
                           .grad_accum = 1,
                           .dp_size = 1,
                           .prefetch = 1};
    cr_assert_eq(data_reader_open(&o, &r), DS_ERR_INPUT);
    assert_error_contains("dataset \"labels\": label 2 of document 0 is outside [0, 2)");
    test_dir("rd-cls-nopad", dir, sizeof(dir));
    pack_sft(dir, path, sizeof(path), NULL);
    o.num_labels = 3;
    cr_assert_eq(data_reader_open(&o, &r), DS_ERR_INPUT);
    /* the file's attribute is what is missing, not the model's pad_token_id, and the message
     * says how to set it */
    assert_error_contains("the data file has no \"pad_id\" attribute");
    assert_error_contains("dstrain pack --pad-id");
    cr_assert_null(r);
    /* a file without labels */
    char plain[1100];
    make_counting_file(dir, "nolabels.h5", 48, plain, sizeof(plain));
    src.path = plain;
    cr_assert_eq(data_reader_open(&o, &r), DS_ERR_INPUT);
    assert_error_contains("nolabels.h5: dataset \"labels\" is missing");
}

/* Two files 0.7 / 0.3: the share of each is near its weight, the interleaving depends only on
 * the seed, and a resumed mixture continues identically. */
Test(reader, weighted_mixture_is_deterministic_and_resumable)
{
    char dir[1024], a[1100], b[1100];
    test_dir("rd-mix", dir, sizeof(dir));
    make_counting_file(dir, "a.h5", 4000, a, sizeof(a));
    char script[512];
    snprintf(script, sizeof(script),
             "import sys, h5py, numpy as np\n"
             "with h5py.File(sys.argv[1] + '/b.h5', 'w') as f:\n"
             "    f.create_dataset('tokens', data=np.arange(5000, 5400, dtype=np.int32))\n"
             "    f.create_dataset('doc_offsets', data=np.array([0, 400]))\n"
             "    f.attrs.update({'format': 'dstrain-tokens', 'format_version': 1,\n"
             "                    'vocab_size': 6000})\n");
    cr_assert_eq(run_python(dir, "b", script), 0);
    test_path(b, sizeof(b), dir, "b.h5");
    DataSource src[2] = {{a, 0.7}, {b, 0.3}};
    DataReaderOptions o = {.mode = DATA_MODE_LM,
                           .sources = src,
                           .n_sources = 2,
                           .model_vocab = 6000,
                           .seq_len = 3,
                           .micro_batch = 8,
                           .grad_accum = 1,
                           .dp_size = 1,
                           .seed = 11,
                           .prefetch = 4};
    DataReader *r = NULL, *twin = NULL;
    cr_assert_eq(data_reader_open(&o, &r), DS_OK, "%s", ds_last_error());
    cr_assert_eq(data_reader_samples_per_epoch(r, 1), 100);
    int from_b = 0, total = 0;
    static Rows first[250];
    for (int i = 0; i < 250; i++) {
        cr_assert_eq(data_reader_next(r, first[i].in, first[i].tg, first[i].wt, NULL), DS_OK);
        for (int k = 0; k < 8; k++, total++)
            from_b += first[i].in[k * 3] >= 5000;
    }
    double share = (double)from_b / total;
    cr_assert(share > 0.27 && share < 0.33, "share of b: %f", share);
    DataReaderState st;
    cr_assert_eq(data_reader_get_state(r, &st), DS_OK);
    cr_assert_eq(st.consumed[0] + st.consumed[1], 2000);
    cr_assert_eq(st.consumed[1], from_b);
    cr_assert_gt(st.consumed[1] / 100, 0, "b (100 windows) is past its first epoch");
    Rows next[3], again[3];
    read_steps(r, 3, next);
    o.prefetch = 0;
    o.seed = 12345; /* overridden by the state */
    cr_assert_eq(data_reader_open(&o, &twin), DS_OK, "%s", ds_last_error());
    cr_assert_eq(data_reader_set_state(twin, &st), DS_OK, "%s", ds_last_error());
    read_steps(twin, 3, again);
    for (int i = 0; i < 3; i++)
        cr_assert(rows_equal(&next[i], &again[i], 8 * 3), "batch %d after resume", i);
    /* rewind: the very first batch again */
    cr_assert_eq(data_reader_rewind(twin), DS_OK);
    read_steps(twin, 1, again);
    cr_assert(rows_equal(&first[0], &again[0], 8 * 3));
    data_reader_close(r);
    data_reader_close(twin);
    /* bad weight */
    src[1].weight = 0;
    cr_assert_eq(data_reader_open(&o, &r), DS_ERR_INPUT);
    assert_error_contains("b.h5: weight 0: expected a number > 0");
}

/* A file past the up-front scan whose one written chunk is corrupted on disk: the run gets an
 * error naming the file and the dataset from data_reader_next, not a crash, and the same error
 * on every later call. */
Test(reader, corrupted_chunk_mid_run_is_an_error_not_a_crash)
{
    char dir[1024], path[1100];
    test_dir("rd-corrupt", dir, sizeof(dir));
    const char *script =
        "import sys, h5py, numpy as np\n"
        "p = sys.argv[1] + '/corrupt.h5'\n"
        "n = 1 << 26\n"
        "with h5py.File(p, 'w') as f:\n"
        "    t = f.create_dataset('tokens', shape=(n,), dtype=np.int32, chunks=(1 << 20,),\n"
        "                         compression='gzip')\n"
        "    z = np.zeros(1 << 20, dtype=np.int32)\n"
        "    for i in range(0, n, 1 << 20): t[i:i + (1 << 20)] = z\n"
        "    t[40 << 20:41 << 20] = np.arange(1 << 20, dtype=np.int32) % 500\n"
        "    f.create_dataset('doc_offsets', data=np.array([0, n]))\n"
        "    f.attrs.update({'format': 'dstrain-tokens', 'format_version': 1, 'vocab_size': 512})\n"
        "with h5py.File(p, 'r') as f:\n"
        "    info = f['tokens'].id.get_chunk_info_by_coord((40 << 20,))\n"
        "with open(p, 'r+b') as fh:\n"
        "    fh.seek(info.byte_offset + info.size // 3)\n"
        "    fh.write(b'\\xde\\xad\\xbe\\xef' * 64)\n";
    cr_assert_eq(run_python(dir, "corrupt", script), 0);
    test_path(path, sizeof(path), dir, "corrupt.h5");
    const int T = (1 << 20) - 1;
    DataReader *r = open_reader(path, DATA_MODE_LM, T, 1, 1, 0, 1, 3, 2);
    int32_t *in = malloc((size_t)T * 4), *tg = malloc((size_t)T * 4);
    float *wt = malloc((size_t)T * 4);
    int rc = DS_OK, k = 0;
    for (; k < 64 && rc == DS_OK; k++)
        rc = data_reader_next(r, in, tg, wt, NULL);
    cr_assert_eq(rc, DS_ERR_INPUT, "the corrupted window fails");
    assert_error_contains(path);
    assert_error_contains("dataset \"tokens\"");
    assert_error_contains("corrupted");
    cr_assert_eq(data_reader_next(r, in, tg, wt, NULL), DS_ERR_INPUT, "and stays failed");
    free(in);
    free(tg);
    free(wt);
    data_reader_close(r);
}

/* A file of several full blocks (blocks of 2^18 / 4 windows here): windows served from the
 * block cache hold exactly the file's tokens, and one epoch visits every window once, also
 * across the block boundary and the tail. */
Test(reader, block_cache_serves_exact_windows_once_per_epoch)
{
    char dir[1024], path[1100];
    test_dir("rd-blocks", dir, sizeof(dir));
    const int n_tokens = 600003, T = 3, B = 50;
    make_counting_file(dir, "blocks.h5", n_tokens, path, sizeof(path));
    DataReader *r = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 1, 8, 4);
    const int64_t n = data_reader_samples_per_epoch(r, 0);
    cr_assert_eq(n, n_tokens / 4);
    unsigned char *seen = calloc((size_t)n, 1);
    Rows x;
    for (int64_t k = 0; k < n / B; k++) {
        cr_assert_eq(data_reader_next(r, x.in, x.tg, x.wt, NULL), DS_OK, "%s", ds_last_error());
        for (int b = 0; b < B; b++) {
            const int32_t *in = x.in + b * T, *tg = x.tg + b * T;
            cr_assert_eq(in[0] % 4, 0);
            for (int t = 0; t < T; t++)
                cr_assert(in[t] == in[0] + t && tg[t] == in[0] + t + 1 && x.wt[b * T + t] == 1.0f,
                          "window at %d", in[0]);
            seen[in[0] / 4]++;
        }
    }
    int64_t once = 0;
    for (int64_t w = 0; w < n; w++)
        once += seen[w] == 1;
    cr_assert_eq(once, n / B * B, "every window read at most once, %ld of %ld", (long)once,
                 (long)n);
    free(seen);
    data_reader_close(r);
}

/* A position is bounded by the data: counts that do not add up to it (a position edited with
 * its checksum recomputed) are refused, and a far seek costs no walk on one file. */
Test(reader, edited_or_far_positions_are_refused_or_reached_in_bounded_time, .timeout = 60)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/data/bundled/kjv-train.h5", DSTRAIN_SOURCE_DIR);
    const int T = 16, B = 2;
    DataReader *a = open_reader(path, DATA_MODE_LM, T, B, 1, 0, 1, 42, 2);
    static Rows rows[3];
    read_steps(a, 3, rows);
    DataReaderState st;
    cr_assert_eq(data_reader_get_state(a, &st), DS_OK, "%s", ds_last_error());
    cr_assert_eq(st.global_sample, 6);
    DataReaderState edited = st;
    edited.global_sample = (int64_t)1 << 62;
    cr_assert_eq(data_reader_set_state(a, &edited), DS_ERR_INPUT);
    assert_error_contains("global sample 4611686018427387904 is not the sum of the per-file "
                          "counts (6)");
    edited.consumed[0] = (int64_t)1 << 62;
    cr_assert_eq(data_reader_set_state(a, &edited), DS_ERR_INPUT);
    assert_error_contains("is beyond any run");
    /* one file: the seek sets the count, whatever the distance */
    double t0 = ds_now();
    cr_assert_eq(data_reader_seek_global(a, (int64_t)1 << 40), DS_OK, "%s", ds_last_error());
    cr_assert_lt(ds_now() - t0, 5.0);
    cr_assert_eq(data_reader_global_sample(a, &edited.global_sample), DS_OK);
    cr_assert_eq(edited.global_sample, (int64_t)1 << 40);
    cr_assert_eq(data_reader_seek_global(a, (int64_t)1 << 62), DS_ERR_INPUT);
    /* and a near seek lands where reading would */
    cr_assert_eq(data_reader_seek_global(a, 4), DS_OK, "%s", ds_last_error());
    Rows again;
    read_steps(a, 1, &again);
    cr_assert(rows_equal(&rows[2], &again, B * T), "seek to sample 4 reads step 2's rows");
    data_reader_close(a);
}
