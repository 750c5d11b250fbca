/* export.h: Hugging Face model directories out, for serving: config.json (the base model's own,
 * or one generated in the old rope_theta form for presets), generation_config.json, safetensors
 * shards of at most a given size with model.safetensors.index.json and __metadata__
 * {"format": "pt"}, and tokenizer files (copied from the base model, or a byte-level
 * tokenizer.json for byte-level presets). Nothing else in it ends in .safetensors.
 * Not here: reading HF directories (hf_model.h). */
#ifndef DSTRAIN_EXPORT_H
#define DSTRAIN_EXPORT_H

#include <stdint.h>

#include "../trainer/common.h"
#include "../trainer/param_table.h"

/* The model's config.json as text (caller frees): base_dir/config.json verbatim when base_dir
 * is not empty, else generated from mc. */
int hf_config_json_text(const ModelConfig *mc, const char *base_dir, char **out);

/* The config.json fields of a Hugging Face sequence-classification export of mc: architectures
 * (LlamaForSequenceClassification / Qwen2ForSequenceClassification), num_labels, id2label,
 * label2id, problem_type, pad_token_id. labels may be NULL (names LABEL_0, LABEL_1, ...). Sets or
 * replaces those keys of an existing config object. */
struct cJSON;
int hf_classification_fields(struct cJSON *config, const ModelConfig *mc,
                             const char *const *labels);
/* The config.json text of a sequence-classification model (mc->num_labels > 0), made from the
 * causal LM's (as hf_config_json_text gives it): architectures *ForSequenceClassification,
 * num_labels, id2label and label2id, problem_type, pad_token_id. Class names: label_names
 * (task.labels, comma-separated from label 0) when not empty, else the text's own id2label when
 * it names mc->num_labels classes, else LABEL_0, LABEL_1, ... Replaces *text (caller frees). */
int hf_config_json_classification(const ModelConfig *mc, const char *label_names, char **text);

/* "5GB", "500MB", "2GiB", "1000000": bytes (GB = 10^9, GiB = 2^30). */
int export_parse_size(const char *text, uint64_t *bytes);
/* "bf16" | "fp16" | "fp32" */
int export_parse_dtype(const char *text, DType *dtype);

/* Export the parameters of a checkpoint directory (verified first) to out_dir, written under a
 * temporary name and renamed into place. An existing out_dir is refused unless replace is set. */
int hf_export_checkpoint(const char *ckpt_dir, const char *out_dir, DType dtype,
                         uint64_t max_shard_bytes, int replace);

/* The same from a Hugging Face model directory (its config.json, weights and tokenizer files):
 * a copy in another dtype or shard size. allow_extra_tensors: tensors of its files that the
 * model lacks are left out with a warning (hf_config_load_with's HF_EXTRA_WARN), not refused. */
int hf_export_hf_dir(const char *hf_dir, const char *out_dir, DType dtype,
                     uint64_t max_shard_bytes, int replace, int allow_extra_tensors);

/* `dstrain export --checkpoint DIR --output HF_DIR [--dtype bf16|fp16|fp32]
 *  [--max-shard-size 5GB]`; DIR is resolved by model_path_resolve (a checkpoint, a checkpoint
 *  directory, a run directory or a Hugging Face model directory). */
int export_main(int argc, char **argv);

#endif
