/* fuzz_config_override.c: key=value overrides (config_apply_override), one per input line, and
 * the metrics.listen address parser that reads one of their values. */
#include "fuzz_util.h"
#include "trainer/config.h"
#include "trainer/metrics_server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_string(data, size);
    static Config c;
    config_set_defaults(&c);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        config_apply_override(&c, line, "fuzz");
    config_validate(&c);
    char host[256];
    int port = 0;
    metrics_parse_listen(text, 0, host, sizeof(host), &port);
    free(text);
    return 0;
}
