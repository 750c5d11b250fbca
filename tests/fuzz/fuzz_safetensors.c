/* fuzz_safetensors.c: a safetensors file (safetensors_open validates the header and the layout;
 * then every tensor's bytes are touched, as a loader would). */
#include "checkpoint/safetensors.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("t.safetensors", data, size, path, sizeof(path));
    SafetensorsFile f;
    if (safetensors_open(path, &f) != DS_OK) return 0;
    unsigned sum = 0;
    for (int i = 0; i < f.count; i++) {
        const STEntry *e = &f.entries[i];
        const unsigned char *p = safetensors_data(&f, e);
        for (size_t b = 0; b < e->end - e->begin; b++)
            sum += p[b];
        if (safetensors_find(&f, e->name) != e) abort();
    }
    (void)sum;
    safetensors_close(&f);
    return 0;
}
