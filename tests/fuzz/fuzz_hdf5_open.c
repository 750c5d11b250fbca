/* fuzz_hdf5_open.c: a token file's open path (dataset_open: the layout, dtypes, declared and
 * stored sizes, offsets and attributes of docs/data.md), from a file. HDF5 itself is not
 * instrumented; what is fuzzed is how dstrain treats what it returns. */
#include "data/dataset.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("data.h5", data, size, path, sizeof(path));
    TokenDataset *ds = NULL;
    if (dataset_open(path, 0, &ds) != DS_OK) return 0;
    const DatasetInfo *info = dataset_info(ds);
    int32_t tokens[64];
    uint8_t mask[64];
    for (int64_t d = 0; d < info->n_docs && d < 4; d++) {
        int64_t len = dataset_doc_length(ds, d);
        dataset_read_doc(ds, d, 0, len < 64 ? len : 64, tokens, mask);
    }
    dataset_close(ds);
    return 0;
}
