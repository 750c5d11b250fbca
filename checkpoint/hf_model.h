/* hf_model.h: Hugging Face model directories in: config.json (old and transformers-5 forms)
 * and weights from model.safetensors or the shards listed in model.safetensors.index.json. */
#ifndef DSTRAIN_HF_MODEL_H
#define DSTRAIN_HF_MODEL_H

#include <stdint.h>

#include "../trainer/param_table.h"

/* A config.json being read. Each architecture reads its own fields through these (its
 * Architecture.parse_config); errors name the file and the key. Absent and null both mean "not
 * given": the default, or an error when required. */
typedef struct HfJson {
    const char *file;
    const struct cJSON *root;
} HfJson;
int hf_json_int(const HfJson *j, const char *key, int required, int dflt, int *out);
int hf_json_number(const HfJson *j, const char *key, int required, double dflt, double *out);
int hf_json_bool(const HfJson *j, const char *key, int dflt, int *out);
int hf_json_string(const HfJson *j, const char *key, const char **out); /* NULL when absent */
int hf_json_has(const HfJson *j, const char *key);

/* Parse DIR/config.json. Unsupported architecture or field values name what is supported. The
 * config is checked against the weight files' headers before anything is sized from it: as many
 * tensors as it implies, each with the shape it gives, and no tensor the model lacks (a layer
 * beyond num_hidden_layers, a head it does not use; a tied lm_head.weight and rotary inv_freq
 * buffers aside): DS_ERR_INPUT naming the first. */
int hf_config_load(const char *dir, ModelConfig *mc);

/* What to do with tensors of the weight files that the model lacks. */
typedef enum HfExtraTensors {
    HF_EXTRA_REFUSE = 0, /* DS_ERR_INPUT naming the first (hf_config_load) */
    HF_EXTRA_WARN,       /* one warning naming them and their count; the loader leaves them out
                          * (model.allow_extra_tensors, --allow-extra-tensors) */
    HF_EXTRA_QUIET       /* not looked for (files a caller has judged already) */
} HfExtraTensors;
int hf_config_load_with(const char *dir, HfExtraTensors extra, ModelConfig *mc);

/* Fill this rank's slice of every parameter in table (fp32, at each item's offset in params)
 * from the directory's safetensors files, converting BF16/F16/F32. A missing tensor, a wrong
 * shape or an unknown dtype is DS_ERR_INPUT naming the tensor (and both shapes). Shard file
 * names from the index must be plain names inside dir. */
int hf_load_weights(const char *dir, const ModelConfig *mc, const ParamTable *table,
                    float *params);

/* The standard deviation of a new classification head when config.json has no
 * initializer_range (transformers' default). */
#define HF_HEAD_INIT_STD_DEFAULT 0.02

/* hf_load_weights for a model that may get a new classification head: when mc->num_labels > 0
 * (the run's task.num_labels) and dir is a causal LM (its config.json names *ForCausalLM and its
 * files hold no score.weight), the body is loaded from dir, the LM's lm_head.weight is not used,
 * and score.weight [num_labels, hidden] is drawn from normal(0, initializer_range of dir's
 * config.json, 0.02 when absent), the same values for a given seed on every machine and
 * tensor-parallel layout (each rank keeps its slice); one line on stdout says so. A causal LM
 * whose files carry a score.weight of the right shape loads it. Otherwise exactly
 * hf_load_weights: a *ForSequenceClassification directory must hold its head, and a causal LM
 * loaded as a causal LM (num_labels 0) ignores seed. */
int hf_load_weights_seeded(const char *dir, const ModelConfig *mc, const ParamTable *table,
                           float *params, uint64_t seed);

/* 1 when dir looks like a Hugging Face model directory (it has a config.json), else 0. */
int hf_dir_kind(const char *dir);

#endif
