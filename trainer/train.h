/* train.h: the `train` and `eval` commands. */
#ifndef DSTRAIN_TRAIN_H
#define DSTRAIN_TRAIN_H

#include "config.h"
#include "model.h"

/* Resolve the model's shape from model.path (an HF directory) or model.preset. */
int train_model_config(const Config *cfg, ModelConfig *mc);
/* Path of the dataset file: cfg value, or the bundled dataset when empty. */
const char *train_data_path(const char *configured, const char *bundled_name, char *buf,
                            size_t size);

/* run.save_final: the full fp32 parameters in <run_dir>/final.safetensors, put together on
 * world rank 0 from the tensor-parallel slices. Collective over the grid. */
int train_save_final(const Model *m, const ProcessGrid *g, const char *run_dir);
/* The backend of config key device (cpu, cuda), made with the keys precision, cuda.attention,
 * cuda.experts and cuda.weight_copy; DS_ERR_INPUT with the message when unusable. The caller
 * frees it with backend_free after what lives in its memory. */
int train_backend(const Config *cfg, const Backend **be);
/* The weights of dir, a directory model_path_resolve returned (a checkpoint in any layout, or a
 * Hugging Face directory), into m's parameters in its backend's memory (through one host staging
 * buffer of the table's size on a device). */
int model_load_path(Model *m, const char *dir, const ModelConfig *mc);

/* Run a whole training job from a resolved config. */
int train_run(const Config *cfg);

int train_main(int argc, char **argv);
int eval_main(int argc, char **argv);

#endif
