/* reader.h: the training data reader: one or several HDF5 token files (a weighted mixture) read
 * as causal-LM windows, SFT rows or classification examples, in a deterministic global order
 * that every data-parallel rank shares, prefetched by a background thread into a small ring of
 * batches. Not here: the file layout and its checks (dataset.h), tokenization (tools/).
 * Invariant: only the reader's own thread calls HDF5 while the reader runs, and every HDF5 call
 * of the data module holds data_hdf5_lock, so an HDF5 built without thread safety works. */
#ifndef DSTRAIN_READER_H
#define DSTRAIN_READER_H

#include <stdint.h>

#define DATA_MAX_SOURCES 16
#define DATA_READER_STATE_VERSION 1

typedef enum DataMode {
    DATA_MODE_LM = 0,
    DATA_MODE_SFT = 1,
    DATA_MODE_CLASSIFICATION = 2
} DataMode;

/* "lm" | "sft" | "classification" -> mode; DS_ERR_INPUT for anything else. */
int data_mode_parse(const char *name, DataMode *mode);
const char *data_mode_name(DataMode mode);

typedef struct DataSource {
    const char *path;
    double weight; /* > 0; weights are normalized over the sources */
} DataSource;

typedef struct DataReaderOptions {
    DataMode mode;
    const DataSource *sources;
    int n_sources;   /* 1..DATA_MAX_SOURCES */
    int model_vocab; /* > 0: files with a larger vocabulary are refused */
    int num_labels;  /* classification: > 0 checks every label is in [0, num_labels) at open */
    int seq_len;
    int micro_batch; /* rows per micro-batch on this rank */
    int grad_accum;  /* micro-batches per optimizer step */
    int dp_rank, dp_size;
    uint64_t seed;
    int prefetch; /* micro-batches read ahead by the background thread; 0 = read in the caller */
    /* classification: short documents are padded with the file's pad_id; a file without one
     * uses this (the model's pad_token_id) when has_fallback_pad, and is refused only when it
     * holds a document shorter than seq_len otherwise */
    int has_fallback_pad, fallback_pad_id;
} DataReaderOptions;

/* The reader's position: a plain struct a checkpoint stores as bytes. global_sample counts the
 * samples of the global order consumed by all ranks together, always at a step boundary, so a
 * run resumed with another dp size continues exactly (see docs/data.md, "Order and sharding").
 * consumed[s] is how many of those came from source s; its epoch is
 * consumed[s] / samples_per_epoch[s]. */
typedef struct DataReaderState {
    uint32_t version; /* DATA_READER_STATE_VERSION */
    int32_t mode;
    int32_t seq_len;
    int32_t n_sources;
    uint64_t seed;
    int64_t global_sample;
    int64_t consumed[DATA_MAX_SOURCES];
    int64_t samples_per_epoch[DATA_MAX_SOURCES];
} DataReaderState;

typedef struct DataReader DataReader;

/* Open and validate every file (errors name the file, the dataset and the problem:
 * DS_ERR_INPUT) and start the prefetch thread. */
int data_reader_open(const DataReaderOptions *opt, DataReader **out);
void data_reader_close(DataReader *r);

/* The next micro-batch of this rank, copied into the caller's buffers (no allocation):
 * - lm, sft: inputs, targets, weights [micro_batch * seq_len]; weights 1 where the target token
 *   is trained on, 0 on padding and masked (prompt) tokens. labels may be NULL.
 * - classification: inputs [micro_batch * seq_len] (padded with pad_id); targets[b] = label of
 *   row b and weights[b] = 1 for b < micro_batch, the rest of targets and weights 0 (the layout
 *   model_forward takes for classification); labels [micro_batch] (int64) when not NULL.
 * A read error (corrupted chunk, bad token id) is returned here, never a crash, and repeats on
 * every later call. */
int data_reader_next(DataReader *r, int32_t *inputs, int32_t *targets, float *weights,
                     int64_t *labels);

/* Position after the last complete step consumed (DS_ERR_INTERNAL mid-step). */
int data_reader_get_state(const DataReader *r, DataReaderState *state);
/* Continue from a stored position; DS_ERR_INPUT when it was saved for other files, another mode
 * or seq_len. The seed stored in the state wins, so the resumed order is the original one. */
int data_reader_set_state(DataReader *r, const DataReaderState *state);
/* Back to the start of the order (eval sets are scored on the same batches every time). */
int data_reader_rewind(DataReader *r);

/* Samples (windows or documents) per epoch of source s; seconds data_reader_next waited for the
 * prefetch thread so far. */
int64_t data_reader_samples_per_epoch(const DataReader *r, int source);
double data_reader_wait_seconds(const DataReader *r);

/* The position as one number, the global sample index of the next step, and back: the per-file
 * counts are recomputed by walking the mixture from sample 0 (a hash per sample, about a second
 * per 10^8 samples). For stores that keep a single int64; prefer the whole state. */
int data_reader_global_sample(const DataReader *r, int64_t *global_sample);
int data_reader_seek_global(DataReader *r, int64_t global_sample);

/* For other code that calls HDF5 while readers run (replay buffers, checkpoints of HDF5). */
void data_hdf5_lock(void);
void data_hdf5_unlock(void);

#endif
