/* dataset.h: the HDF5 token dataset (layout in docs/data.md) and the readers the trainer and
 * `dstrain eval` use. Files are never loaded whole: documents and windows are read by hyperslab. */
#ifndef DSTRAIN_DATASET_H
#define DSTRAIN_DATASET_H

#include <stdint.h>

typedef struct DatasetInfo {
    int64_t n_docs;
    int64_t n_tokens;
    int vocab_size;
    int bos_id, eos_id, pad_id; /* -1 when absent */
    int has_loss_mask, has_labels, has_task_ids;
    char tokenizer[256];
} DatasetInfo;

typedef struct TokenDataset TokenDataset;

/* Open and validate the layout (datasets, dtypes, offsets, attributes). model_vocab > 0 also
 * checks that the file's vocabulary fits the model's. Errors name the file, the dataset and
 * the problem (DS_ERR_INPUT). */
int dataset_open(const char *path, int model_vocab, TokenDataset **out);
void dataset_close(TokenDataset *ds);
const DatasetInfo *dataset_info(const TokenDataset *ds);
int64_t dataset_doc_length(const TokenDataset *ds, int64_t doc);
/* Read document doc's tokens [start, start+count) into tokens (and its loss mask, 1 where absent,
 * when loss_mask != NULL). */
int dataset_read_doc(TokenDataset *ds, int64_t doc, int64_t start, int64_t count, int32_t *tokens,
                     uint8_t *loss_mask);

/* Causal-LM training reader: documents joined with EOS into windows of seq_len + 1 tokens,
 * window order a deterministic permutation from (seed, epoch); this data-parallel rank reads
 * windows dp_rank, dp_rank + dp_size, ... of the permuted order. */
typedef struct LMReader LMReader;
int lm_reader_open(const char *path, int model_vocab, int seq_len, uint64_t seed, int dp_rank,
                   int dp_size, LMReader **out);
/* Fill batch rows: inputs[b*T+t], targets[b*T+t], and weights (1 where the target token is
 * trained on, 0 where the loss mask excludes it). */
int lm_reader_next(LMReader *r, int batch, int32_t *inputs, int32_t *targets, float *weights);
int64_t lm_reader_windows_per_epoch(const LMReader *r);
void lm_reader_close(LMReader *r);

/* ---- additions beyond the first API ---------------------------------------------------------- */

/* The path the dataset was opened with (for messages). */
const char *dataset_path(const TokenDataset *ds);
/* Token index where document doc starts in the flat array (doc == n_docs gives n_tokens). */
int64_t dataset_doc_offset(const TokenDataset *ds, int64_t doc);
/* Per-document metadata for documents [first_doc, first_doc + count); DS_ERR_INPUT when the
 * file has no such dataset. */
int dataset_read_labels(TokenDataset *ds, int64_t first_doc, int64_t count, int64_t *labels);
int dataset_read_task_ids(TokenDataset *ds, int64_t first_doc, int64_t count, int32_t *task_ids);

/* The reader's position as one number: epoch * windows_per_epoch + index into that epoch's
 * permuted order of this rank's next window. lm_reader_seek returns to such a position (it must
 * belong to this dp_rank of this dp_size). */
int lm_reader_position(const LMReader *r, int64_t *global_window_index);
int lm_reader_seek(LMReader *r, int64_t global_window_index);
/* Advance by one window without reading it; *window gets its index in file order (window w
 * covers stream positions [w (seq_len+1), (w+1) (seq_len+1))). */
int lm_reader_next_window_index(LMReader *r, int64_t *window);
const TokenDataset *lm_reader_dataset(const LMReader *r);
/* An LMReader that forwards next, position (the global sample index of the next step), seek and
 * windows_per_epoch to a DataReader (reader.h), for code written against this API; closing it
 * leaves the DataReader open. */
struct DataReader;
int lm_reader_view(struct DataReader *data, LMReader **out);

/* Tokens [start, start + count) of the flat array (ids checked against the vocabulary); the loss
 * mask too when loss_mask != NULL (1 where the file has none). */
int dataset_read_tokens(TokenDataset *ds, int64_t start, int64_t count, int32_t *tokens,
                        uint8_t *loss_mask);
/* Silence HDF5's own error printing in the calling thread (a thread-safe HDF5 keeps the
 * setting per thread); dataset_open does it for the thread that opens. */
void dataset_quiet_hdf5_errors(void);
/* Causal-LM windows of seq_len + 1 tokens over the EOS-joined stream (docs/data.md). */
int64_t dataset_lm_windows(const TokenDataset *ds, int seq_len);
/* Window w into window_tokens/window_mask (seq_len + 1 each); raw_tokens/raw_mask are scratch
 * of the same size. */
int dataset_read_lm_window(TokenDataset *ds, int64_t w, int seq_len, int32_t *window_tokens,
                           uint8_t *window_mask, int32_t *raw_tokens, uint8_t *raw_mask);
/* Windows [w, w + count) back to back (one read of the flat array); every buffer holds
 * count (seq_len + 1). */
int dataset_read_lm_windows(TokenDataset *ds, int64_t w, int64_t count, int seq_len,
                            int32_t *window_tokens, uint8_t *window_mask, int32_t *raw_tokens,
                            uint8_t *raw_mask);

#endif
