/* fuzz_hf_index.c: model.safetensors.index.json of a model directory, read by the weight loader
 * for the tiny preset (shard names must stay inside the directory). */
#include "checkpoint/hf_model.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ModelConfig mc;
    static ParamTable pt;
    static float *params;
    if (!params) {
        if (model_preset("tiny", &mc) != DS_OK || param_table_build(&mc, &pt) != DS_OK) abort();
        params = calloc(pt.total, sizeof(float));
    }
    char path[600];
    fuzz_write("model.safetensors.index.json", data, size, path, sizeof(path));
    hf_load_weights(fuzz_dir(), &mc, &pt, params);
    return 0;
}
