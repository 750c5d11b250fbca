/* fuzz_hdf5_open.c: a token file's open path (dataset_open: the layout, dtypes, declared and
 * stored sizes, offsets and attributes of docs/data.md), from a file. HDF5 itself is not
 * instrumented; what is fuzzed is how dstrain treats what it returns. */
#include <hdf5.h>

#include "data/dataset.h"
#include "fuzz_util.h"

/* Every HDF5 identifier dataset_open made is closed again, whatever it returned (one left open
 * would keep the file open inside libhdf5 for the next input of the same path); then the
 * library is shut down, so that each input meets a fresh libhdf5 as a run's few opens do.
 * libhdf5 1.10.8 keeps state across files after some failed opens (a leak in H5G_mkroot, and
 * once a use-after-free inside H5Aexists thousands of inputs later that no single input
 * reproduces): that is libhdf5's, and the reset keeps it from being reported as dstrain's. */
static void end_input(void)
{
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) {
        fprintf(stderr, "fuzz_hdf5_open: %ld HDF5 identifiers left open\n",
                (long)H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL));
        abort();
    }
    H5close();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[600];
    fuzz_write("data.h5", data, size, path, sizeof(path));
    TokenDataset *ds = NULL;
    if (dataset_open(path, 0, &ds) != DS_OK) {
        end_input();
        return 0;
    }
    const DatasetInfo *info = dataset_info(ds);
    int32_t tokens[64];
    uint8_t mask[64];
    for (int64_t d = 0; d < info->n_docs && d < 4; d++) {
        int64_t len = dataset_doc_length(ds, d);
        dataset_read_doc(ds, d, 0, len < 64 ? len : 64, tokens, mask);
    }
    dataset_close(ds);
    end_input();
    return 0;
}
