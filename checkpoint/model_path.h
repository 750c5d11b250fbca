/* model_path.h: what a command that reads a model (export, info, generate, eval) was given, made
 * into one directory to read, the same way for all of them: a Hugging Face model directory, a
 * checkpoint (step-N), a checkpoint directory (its newest complete checkpoint) or a run directory
 * (its checkpoints/, else its export/). Not here: reading the files (hf_model.h, ckpt.h). */
#ifndef DSTRAIN_MODEL_PATH_H
#define DSTRAIN_MODEL_PATH_H

#include <stddef.h>

#include "../trainer/param_table.h"

#define MODEL_PATH_MAX 4096

typedef enum ModelPathKind {
    MODEL_PATH_HF = 1,     /* a Hugging Face model directory (config.json and weights) */
    MODEL_PATH_CHECKPOINT, /* one checkpoint: a step directory with manifest.json */
} ModelPathKind;

/* Resolve path, in this order:
 *   1. a directory with manifest.json: that checkpoint (step directory);
 *   2. a directory with config.json: a Hugging Face model directory;
 *   3. a directory holding step-* checkpoints (a checkpoint.dir): the newest complete one whose
 *      checksums verify (a damaged one is reported on stderr and the previous one used);
 *   4. a run directory (run.dir): the newest complete checkpoint of RUN/checkpoints, else
 *      RUN/export.
 * out (cap bytes) gets the directory to read, kind its kind. When the answer is not path itself,
 * one line on stderr says which directory is read. cmd ("export", "eval", ...) starts error
 * messages, which are DS_ERR_INPUT and say what was found and what is accepted. */
int model_path_resolve(const char *cmd, const char *path, char *out, size_t cap,
                       ModelPathKind *kind);

/* The kind of a directory model_path_resolve returned (manifest.json: a checkpoint). */
ModelPathKind model_path_kind(const char *dir);

/* Fill this rank's slices of table (fp32) from a resolved directory: a checkpoint's saved
 * parameters (any layout they were saved in) or a Hugging Face directory's weights
 * (hf_load_weights). mc is the directory's config (hf_config_load reads either kind). */
int model_path_load_weights(const char *dir, const ModelConfig *mc, const ParamTable *table,
                            float *params);

#endif
