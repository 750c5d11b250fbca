/* fuzz_hf_config.c: a Hugging Face config.json (hf_config_load: parsing, the model checks, and
 * the parameter table built from what it says). */
#include "checkpoint/hf_model.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("config.json", data, size, path, sizeof(path));
    ModelConfig mc;
    if (hf_config_load(fuzz_dir(), &mc) != DS_OK) return 0;
    ParamTable pt;
    if (param_table_build(&mc, &pt) == DS_OK) param_table_free(&pt);
    return 0;
}
