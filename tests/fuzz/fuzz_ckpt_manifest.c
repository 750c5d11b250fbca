/* fuzz_ckpt_manifest.c: a checkpoint's manifest.json (ckpt_open parses and checks it: file
 * names inside the directory, slices, sizes; ckpt_verify then checks the files it names). */
#include "checkpoint/ckpt.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("manifest.json", data, size, path, sizeof(path));
    Ckpt *c = NULL;
    if (ckpt_open(fuzz_dir(), &c) != DS_OK) return 0;
    ckpt_verify(c);
    ckpt_close(c);
    return 0;
}
