/* ckpt.h: training-state checkpoints. One directory per step, `<dir>/step-00000100/`, holding
 * each rank's safetensors shard of every flat buffer (parameters, Adam moments, EWC state: any
 * list of {prefix, base pointer} laid out by the ParamTable), small per-rank blobs (data reader
 * positions, RNG state), the resolved config, the model's config.json, and manifest.json, which
 * is written last and is the commit marker: a step directory without a manifest was never
 * complete. The manifest records every file's size and CRC-32C and, for every stored piece, the
 * tensor's full shape and the slice and flat range the piece holds, so that a checkpoint saved
 * under one tp x dp layout can be read back under any other.
 * Not here: when to save (the trainer) and what the buffers mean. */
#ifndef DSTRAIN_CKPT_H
#define DSTRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "../trainer/common.h"
#include "../trainer/param_table.h"

/* CRC-32C (Castagnoli) of data, continuing from crc (start with 0). */
uint32_t crc32c_update(uint32_t crc, const void *data, size_t n);

/* One flat buffer shaped by the ParamTable. This rank holds elements [flat_begin, flat_end) of
 * it (ZeRO shards over data-parallel ranks); flat_end == 0 means the whole buffer. */
typedef struct CkptBuffer {
    const char *prefix; /* "params", "optim.m", "optim.v", "ewc.fisher", ... no '/' */
    float *base;
    size_t flat_begin, flat_end;
    int replicated_over_dp; /* 1: every dp rank holds the same values (with expert parallelism,
                             * every dp rank holding the same experts); only dp rank 0 writes
                             * (the first ep dp ranks, each its own experts) */
    /* the backend whose device memory base is, copied into the host snapshot by its
     * mem_to_host; NULL: base is host memory */
    const struct Backend *device;
} CkptBuffer;

/* Small per-rank state stored as raw bytes (reader position, RNG state). */
typedef struct CkptBlob {
    const char *name; /* e.g. "reader.train"; letters, digits, '.', '_', '-' */
    const void *data;
    size_t size;
} CkptBlob;

typedef struct CkptLayout {
    int tp, dp, zero;
    int tp_rank, dp_rank;
    int ep; /* expert parallelism: the first ep dp ranks hold every expert between them, and
             * write the parameters that are replicated over dp (0 or 1: none) */
} CkptLayout;

/* All-reduce MIN of one int over every rank; the trainer passes its comm collective. NULL
 * means a single rank (the value is its own minimum). */
typedef int (*CkptAllMinFn)(void *ctx, int local, int *global);

/* Scalar training state recorded in the manifest (rank 0's values). */
typedef struct CkptMeta {
    int step;                   /* optimizer steps completed */
    int optim_t;                /* AdamW step count (bias correction) */
    double lr;                  /* learning rate of the last step */
    double tokens;              /* trained tokens so far */
    long long seed;             /* train.seed: the only RNG state a CPU run has */
    int train_steps;            /* train.steps of the run that saved it (LR schedule length) */
    const char *model_path;     /* base model directory or "" */
    const char *model_preset;   /* preset name when model_path is empty */
    const char *config_yaml;    /* resolved config, written as config.yaml */
    const char *hf_config_json; /* the model's config.json, written as config.json */
} CkptMeta;

typedef struct CkptWriterOptions {
    const char *dir; /* checkpoint.dir; created when missing */
    int keep;        /* newest complete checkpoints kept */
    int keep_every;  /* and every step that is a multiple of this; 0 = none */
    int async;       /* write on a background worker (libuv) while training goes on */
    CkptLayout layout;
    CkptAllMinFn all_min;
    void *comm_ctx;
    long tmp_tag; /* the same on every rank (rank 0's pid): names the temporary directory */
} CkptWriterOptions;

typedef struct CkptWriter CkptWriter;

/* The writer lays buffers out by table (which it copies). Removes stale temporary directories
 * left by killed runs (rank 0). */
int ckpt_writer_open(const CkptWriterOptions *opt, const ParamTable *table, CkptWriter **out);
/* Allocate (and touch) the host snapshot for saves of up to bytes now, so that the first save
 * does not stall training on page faults. Optional. */
int ckpt_writer_reserve(CkptWriter *w, size_t bytes);
/* Wait for the save in flight (if any), then snapshot buffers and blobs into host memory and
 * start writing them (in the background when async). Returns the previous save's error, if it
 * failed, before starting the new one; the new save's own errors come from a later call. The
 * time this call blocked is in *stall_seconds (may be NULL). */
int ckpt_writer_save(CkptWriter *w, const CkptMeta *meta, const CkptBuffer *bufs, int nbufs,
                     const CkptBlob *blobs, int nblobs, double *stall_seconds);
/* Non-blocking: report a finished save (message on stdout) and return its status. Every rank
 * calls it at the same points (it may run a collective when several ranks take part). */
int ckpt_writer_poll(CkptWriter *w);
/* Block until the save in flight is complete (committed or failed); returns its status. */
int ckpt_writer_wait(CkptWriter *w);
/* Step of the newest checkpoint this writer committed, or -1. */
int ckpt_writer_last_step(const CkptWriter *w);
/* Path of the newest checkpoint this writer committed ("" when none). */
const char *ckpt_writer_last_path(const CkptWriter *w);
/* Waits for the save in flight, stops the worker and frees everything. */
void ckpt_writer_close(CkptWriter *w);

/* ---- reading -------------------------------------------------------------------------------- */

typedef struct Ckpt Ckpt;

/* Parse and validate dir/manifest.json: fields, types, plain file names inside dir, every
 * piece's shape, slice and range consistent. Errors name the file and the field (DS_ERR_INPUT). */
int ckpt_open(const char *dir, Ckpt **out);
/* Sizes and CRC-32C of every file the manifest lists. */
int ckpt_verify(const Ckpt *c);
void ckpt_close(Ckpt *c);

const char *ckpt_path(const Ckpt *c);
int ckpt_step(const Ckpt *c);
/* An integer or number field of the manifest's "state" object ("optim_t", "train_steps", ...). */
int ckpt_state_int(const Ckpt *c, const char *key, long long *out);
int ckpt_state_number(const Ckpt *c, const char *key, double *out);
/* A string of the manifest's "model" object ("path", "preset"); "" when absent. */
const char *ckpt_model_string(const Ckpt *c, const char *key);
/* The saved world layout. */
CkptLayout ckpt_layout(const Ckpt *c);

/* Fill elements [flat_begin, flat_end) (flat_end 0: all) of a buffer laid out by table from the
 * pieces saved under prefix, whatever layout they were saved with: each tensor is reassembled
 * from its pieces by (full shape, slice, range) and re-split for table's slices. */
int ckpt_read_buffer(Ckpt *c, const char *prefix, const ParamTable *table, float *base,
                     size_t flat_begin, size_t flat_end);
/* 1 when the checkpoint holds pieces under prefix. */
int ckpt_has_buffer(const Ckpt *c, const char *prefix);
/* The size of a blob saved by rank (tp_rank, dp_rank); 0 when there is none. */
int ckpt_blob_size(const Ckpt *c, const char *name, int tp_rank, int dp_rank, size_t *size);
/* A blob saved by rank (tp_rank, dp_rank); its size must be size. */
int ckpt_read_blob(Ckpt *c, const char *name, int tp_rank, int dp_rank, void *out, size_t size);

/* The newest complete checkpoint under dir whose checksums verify: its path in out (empty
 * when there is none). A damaged one is reported on stderr and skipped for the previous one. */
int ckpt_find_latest(const char *dir, char *out, size_t cap);

/* 1 when name is a plain file name (no '/', not "." or "..", not empty, printable). */
int ckpt_plain_name(const char *name);

#endif
