/* bench_data_reader.c: tokens per second the training data reader (data/reader.h) delivers
 * from one HDF5 file, read the way the trainer reads it (prefetch thread, shuffled windows or
 * examples, copies into the caller's buffers). Not a test: bench/data/run.sh runs it beside
 * `cat FILE > /dev/null` and records both in bench/data/RESULTS.md.
 * usage: bench_data_reader FILE.h5 [seq_len 2048] [micro_batch 8] [mode lm] [prefetch 8]
 *        [max_tokens 0 = one epoch] */
#include "data/reader.h"
#include "trainer/common.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: %s FILE.h5 [seq_len] [micro_batch] [lm|sft|classification] "
                "[prefetch] [max_tokens]\n",
                argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int T = argc > 2 ? atoi(argv[2]) : 2048, B = argc > 3 ? atoi(argv[3]) : 8;
    DataMode mode = DATA_MODE_LM;
    if (argc > 4 && data_mode_parse(argv[4], &mode) != DS_OK) {
        fprintf(stderr, "bench_data_reader: %s\n", ds_last_error());
        return 2;
    }
    int prefetch = argc > 5 ? atoi(argv[5]) : 8;
    long long max_tokens = argc > 6 ? atoll(argv[6]) : 0;
    DataSource src = {path, 1.0};
    DataReaderOptions o = {.mode = mode,
                           .sources = &src,
                           .n_sources = 1,
                           .seq_len = T,
                           .micro_batch = B,
                           .grad_accum = 1,
                           .dp_size = 1,
                           .seed = 1,
                           .prefetch = prefetch};
    double t_open = ds_now();
    DataReader *r = NULL;
    if (data_reader_open(&o, &r) != DS_OK) {
        fprintf(stderr, "bench_data_reader: error: %s\n", ds_last_error());
        return 2;
    }
    t_open = ds_now() - t_open;
    const long long samples = data_reader_samples_per_epoch(r, 0);
    long long batches = (samples + B - 1) / B;
    if (max_tokens > 0 && max_tokens / ((long long)B * T) < batches)
        batches = max_tokens / ((long long)B * T) + 1;
    const size_t n = (size_t)B * T;
    int32_t *in = malloc(n * sizeof(int32_t)), *tg = malloc(n * sizeof(int32_t));
    float *wt = malloc(n * sizeof(float));
    if (!in || !tg || !wt) return 1;
    double t0 = ds_now(), checksum = 0;
    for (long long b = 0; b < batches; b++) {
        if (data_reader_next(r, in, tg, wt, NULL) != DS_OK) {
            fprintf(stderr, "bench_data_reader: error: %s\n", ds_last_error());
            return 1;
        }
        checksum += in[b % n];
    }
    double dt = ds_now() - t0;
    double tokens = (double)batches * B * T;
    printf("file=%s mode=%s seq_len=%d micro_batch=%d prefetch=%d open_s=%.3f batches=%lld "
           "tokens=%.0f seconds=%.3f tokens_per_s=%.0f consumer_wait_s=%.3f checksum=%.0f\n",
           path, data_mode_name(mode), T, B, prefetch, t_open, batches, tokens, dt, tokens / dt,
           data_reader_wait_seconds(r), checksum);
    data_reader_close(r);
    free(in);
    free(tg);
    free(wt);
    return 0;
}
