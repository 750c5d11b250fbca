/* fuzz_config_yaml.c: the YAML config loader (config_load_yaml, then config_validate) and the
 * depth check every YAML file gets before a loader builds it (config_yaml_check_depth). */
#include "fuzz_util.h"
#include "trainer/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("config.yaml", data, size, path, sizeof(path));
    config_yaml_check_depth(path, CONFIG_YAML_MAX_DEPTH);
    static Config c;
    config_set_defaults(&c);
    if (config_load_yaml(&c, path) == DS_OK) {
        config_validate(&c);
        FILE *out = fopen("/dev/null", "w");
        if (out) {
            config_write_yaml(&c, out, 0);
            fclose(out);
        }
    }
    return 0;
}
