/* hf_model.h: Hugging Face model directories in: config.json (old and transformers-5 forms)
 * and weights from model.safetensors or the shards listed in model.safetensors.index.json. */
#ifndef DSTRAIN_HF_MODEL_H
#define DSTRAIN_HF_MODEL_H

#include "../trainer/model.h"

/* Parse DIR/config.json. Unsupported architecture or field values name what is supported. */
int hf_config_load(const char *dir, ModelConfig *mc);

/* Fill this rank's slice of every parameter in table (fp32, at each item's offset in params)
 * from the directory's safetensors files, converting BF16/F16/F32. A missing tensor, a wrong
 * shape or an unknown dtype is DS_ERR_INPUT naming the tensor (and both shapes). Shard file
 * names from the index must be plain names inside dir. */
int hf_load_weights(const char *dir, const ModelConfig *mc, const ParamTable *table,
                    float *params);

/* 1 when dir looks like a Hugging Face model directory (it has a config.json), else 0. */
int hf_dir_kind(const char *dir);

#endif
