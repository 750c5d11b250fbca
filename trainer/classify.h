/* classify.h: a sequence-classification model (a *ForSequenceClassification directory, such as
 * the export of a classification run) scored on a labelled HDF5 file: `dstrain eval` on a
 * classifier. Rows are made as training makes them (continual.c): a document's first seq_len
 * tokens, padded with pad_token_id. Not here: training (continual.c), the export (export.c). */
#ifndef DSTRAIN_CLASSIFY_H
#define DSTRAIN_CLASSIFY_H

#include "model.h"

/* Accuracy of the model in model_dir (a Hugging Face directory or a checkpoint, as
 * model_path_resolve gives it; mc: its config, num_labels > 0) over every document of
 * data_path, batch rows at a time; prints `eval_accuracy=A examples=N`. seq_len 0: the longest
 * document, at most max_position_embeddings; a seq_len beyond the longest document is that
 * length (the rows are the same); batch 0: about 4096 tokens a batch. logits_path
 * (may be NULL): a text file, one line per document: its label, then the num_labels logits. */
int classify_eval(const char *model_dir, const ModelConfig *mc, const Backend *be,
                  const char *data_path, int seq_len, int batch, const char *logits_path,
                  double *accuracy);

/* The memory `dstrain eval`'s model takes at batch x seq_len (parameters, gradients,
 * activations) on be, checked before it is made: host memory on the CPU; on a GPU its free
 * memory (activations at their stored size, the bf16 copy of the weights counted), and the host
 * copy the weights are read into. DS_ERR_INPUT with both figures when it does not fit (eval.c,
 * classify_eval). */
int eval_check_memory(const ModelConfig *mc, int batch, int seq_len, const Backend *be);
/* --device and --precision of eval and generate: eval_device_check refuses a value no backend
 * has (DS_ERR_INPUT naming the flag) without starting a device, so that the flags are judged
 * before the model is looked for; eval_backend checks the same and makes the backend they compute
 * on (backend_create), once the model is found; the caller frees it (backend_free). */
int eval_device_check(const char *device, const char *precision);
int eval_backend(const char *device, const char *precision, const Backend **be);

#endif
