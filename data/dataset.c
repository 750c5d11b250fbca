/* dataset.c: the HDF5 token dataset (docs/data.md) and the causal-LM window reader.
 * Not a tokenizer and not a loader of whole files: tokens are read by hyperslab on demand; only
 * doc_offsets (n_docs + 1 int64) is held in memory. Invariant after dataset_open: the layout,
 * dtypes, offsets and attributes are valid, so later reads can only fail on I/O or on a token id
 * outside the vocabulary in a file too large to scan up front. */
#include "data/dataset.h"

#include "data/hdf5_check.h"
#include "data/order.h"
#include "data/reader.h"
#include "trainer/common.h"

#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Files with fewer tokens than this are scanned whole at open, so a bad token id stops the run
 * before the first step instead of hours into it. */
#define DATASET_FULL_SCAN_TOKENS (64LL << 20)
/* Elements per read while scanning (4 MiB of int32). */
#define DATASET_SCAN_CHUNK (1LL << 20)

struct TokenDataset {
    char *path;
    hid_t file, tokens, loss_mask, labels, task_ids;
    int64_t *offsets; /* n_docs + 1, offsets[0] == 0, strictly increasing, last == n_tokens */
    DatasetInfo info;
};

/* ---- attributes -------------------------------------------------------------------------- */

/* Read an integer attribute of the root group. Returns DS_OK and sets *found = 0 when absent. */
static int attr_read_int(const TokenDataset *ds, const char *name, int64_t *out, int *found)
{
    *found = 0;
    htri_t exists = H5Aexists(ds->file, name);
    if (exists < 0)
        return ds_error(DS_ERR_INPUT, "%s: cannot read attribute \"%s\"", ds->path, name);
    if (!exists) return DS_OK;
    hid_t attr = H5Aopen(ds->file, name, H5P_DEFAULT);
    if (attr < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open attribute \"%s\"", ds->path, name);
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    int status = DS_OK;
    hssize_t npoints = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (type < 0 || H5Tget_class(type) != H5T_INTEGER) {
        status =
            ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": expected an integer", ds->path, name);
    } else if (npoints != 1) {
        status = ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": expected one value, got %lld",
                          ds->path, name, (long long)npoints);
    } else if ((status = hdf5_check_number_type(type, ds->path, "attribute", name)) != DS_OK) {
        /* refused before libhdf5 converts it */
    } else if (H5Aread(attr, H5T_NATIVE_INT64, out) < 0) {
        status = ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": cannot read", ds->path, name);
    } else {
        *found = 1;
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Aclose(attr);
    return status;
}

/* Read a string attribute (variable- or fixed-length, as h5py writes either) into out. */
static int attr_read_string(const TokenDataset *ds, const char *name, char *out, size_t out_size,
                            int *found)
{
    *found = 0;
    out[0] = 0;
    htri_t exists = H5Aexists(ds->file, name);
    if (exists < 0)
        return ds_error(DS_ERR_INPUT, "%s: cannot read attribute \"%s\"", ds->path, name);
    if (!exists) return DS_OK;
    hid_t attr = H5Aopen(ds->file, name, H5P_DEFAULT);
    if (attr < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open attribute \"%s\"", ds->path, name);
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    int status = DS_OK;
    hssize_t npoints = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (type < 0 || H5Tget_class(type) != H5T_STRING) {
        status = ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": expected a string", ds->path, name);
    } else if (npoints != 1) {
        status = ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": expected one string, got %lld",
                          ds->path, name, (long long)npoints);
    } else if (H5Tis_variable_str(type) > 0 &&
               (status = hdf5_check_vlen_string_attribute(ds->path, name)) != DS_OK) {
        /* refused before libhdf5 reads the value (hdf5_check.h) */
    } else if (H5Tis_variable_str(type) > 0) {
        hid_t mem = H5Tcopy(H5T_C_S1);
        H5Tset_size(mem, H5T_VARIABLE);
        H5Tset_cset(mem, H5Tget_cset(type));
        char *value = NULL;
        if (H5Aread(attr, mem, &value) < 0) {
            status = ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": cannot read", ds->path, name);
        } else {
            snprintf(out, out_size, "%s", value ? value : "");
            *found = 1;
            H5free_memory(value);
        }
        H5Tclose(mem);
    } else {
        size_t size = H5Tget_size(type);
        char *buf = ds_calloc(size + 1, 1);
        if (!buf) {
            status = DS_ERR_INTERNAL;
        } else {
            hid_t mem = H5Tcopy(H5T_C_S1);
            H5Tset_size(mem, size);
            H5Tset_strpad(mem, H5T_STR_NULLPAD);
            if (H5Aread(attr, mem, buf) < 0) {
                status =
                    ds_error(DS_ERR_INPUT, "%s: attribute \"%s\": cannot read", ds->path, name);
            } else {
                buf[size] = 0;
                snprintf(out, out_size, "%s", buf);
                *found = 1;
            }
            H5Tclose(mem);
            free(buf);
        }
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Aclose(attr);
    return status;
}

/* ---- datasets ---------------------------------------------------------------------------- */

/* Deflate's best ratio is 1032:1; a compressed dataset declaring more than this many times its
 * stored bytes holds something other than data. */
#define DATASET_MAX_COMPRESSION 1100.0

/* Sizes in the header cost nothing to forge: a 6 KB file can declare 2^40 tokens that HDF5 then
 * reads as fill values. Before anything is allocated or trained on from a length, the dataset
 * must store it: every element written, the bytes inside this file (no external or virtual
 * storage, which would read other files), and no more than deflate's ratio beyond them. */
static int dataset_check_stored(const TokenDataset *ds, hid_t dset, const char *name, hsize_t n,
                                size_t element_size)
{
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0) return ds_error(DS_ERR_INPUT, "%s: dataset \"%s\": cannot read its layout", ds->path, name);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    int external = H5Pget_external_count(dcpl);
    int filters = H5Pget_nfilters(dcpl);
    H5Pclose(dcpl);
    if (layout == H5D_VIRTUAL || external != 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"%s\": stored in other files (%s); only data inside the "
                        "file is read",
                        ds->path, name, layout == H5D_VIRTUAL ? "a virtual dataset" : "external storage");
    if (n == 0) return DS_OK;
    /* every element written: a contiguous dataset has its storage, a chunked one every chunk
     * (HDF5 1.10's space status calls an extendible dataset's storage partial) */
    H5D_space_status_t status;
    if (H5Dget_space_status(dset, &status) < 0)
        return ds_error(DS_ERR_INPUT, "%s: dataset \"%s\": cannot read its storage", ds->path, name);
    int written = status != H5D_SPACE_STATUS_NOT_ALLOCATED;
    const char *how_much = "none";
    if (written && layout == H5D_CHUNKED) {
        hsize_t chunk = 0, chunks = 0;
        hid_t plist = H5Dget_create_plist(dset), space = H5Dget_space(dset);
        int ok = plist >= 0 && space >= 0 && H5Pget_chunk(plist, 1, &chunk) == 1 && chunk > 0 &&
                 H5Dget_num_chunks(dset, space, &chunks) >= 0;
        if (plist >= 0) H5Pclose(plist);
        if (space >= 0) H5Sclose(space);
        written = ok && chunks >= (n + chunk - 1) / chunk;
        how_much = ok && chunks == 0 ? "none" : "only some";
    }
    if (!written)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"%s\": declares %llu elements but stores %s of them "
                        "(unwritten elements would read as the fill value)",
                        ds->path, name, (unsigned long long)n, how_much);
    hsize_t stored = H5Dget_storage_size(dset), file_size = 0;
    if (H5Fget_filesize(ds->file, &file_size) < 0) file_size = 0;
    double declared = (double)n * (double)element_size;
    double limit = filters > 0 ? (double)stored * DATASET_MAX_COMPRESSION : (double)stored;
    if (stored > file_size || declared > limit)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"%s\": declares %llu elements (%.0f bytes) but stores %llu "
                        "bytes%s in a file of %llu bytes (truncated or corrupted?)",
                        ds->path, name, (unsigned long long)n, declared,
                        (unsigned long long)stored, filters > 0 ? " compressed" : "",
                        (unsigned long long)file_size);
    return DS_OK;
}

/* Open a 1-D integer dataset; *length gets its extent. Absent and optional: *out = -1. */
static int dataset_open_1d(TokenDataset *ds, const char *name, int required, hid_t *out,
                           int64_t *length)
{
    *out = -1;
    *length = 0;
    htri_t exists = H5Lexists(ds->file, name, H5P_DEFAULT);
    if (exists <= 0) {
        if (!required) return DS_OK;
        return ds_error(DS_ERR_INPUT, "%s: dataset \"%s\" is missing (see docs/data.md)", ds->path,
                        name);
    }
    DS_TRY(hdf5_check_dataset(ds->path, ds->file, name)); /* before libhdf5 decodes it */
    /* Compressed chunks get a cache that holds the chunks one group of the blocked order
     * (reader.c) touches: re-inflating a chunk for every window would dominate the read time.
     * Uncompressed chunks get none: HDF5 then reads a selection straight into our buffer,
     * instead of into a freshly allocated chunk buffer and copying from there. */
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    H5Pset_chunk_cache(dapl, 1031, 32u << 20, 1.0);
    hid_t dset = H5Dopen2(ds->file, name, dapl);
    if (dset >= 0) {
        hid_t dcpl = H5Dget_create_plist(dset);
        if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_nfilters(dcpl) == 0) {
            H5Dclose(dset);
            H5Pset_chunk_cache(dapl, 0, 0, 1.0);
            dset = H5Dopen2(ds->file, name, dapl);
        }
        if (dcpl >= 0) H5Pclose(dcpl);
    }
    H5Pclose(dapl);
    if (dset < 0)
        return ds_error(DS_ERR_INPUT, "%s: \"%s\" is not a dataset or cannot be opened", ds->path,
                        name);
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    int status = DS_OK;
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (cls != H5T_INTEGER) {
        const char *got = cls == H5T_FLOAT    ? "floating point"
                          : cls == H5T_ENUM   ? "enum (numpy bool?)"
                          : cls == H5T_STRING ? "string"
                                              : "a non-integer type";
        status =
            ds_error(DS_ERR_INPUT, "%s: dataset \"%s\": wrong dtype: expected integers, got %s",
                     ds->path, name, got);
    } else if (rank != 1) {
        status = ds_error(DS_ERR_INPUT, "%s: dataset \"%s\": expected 1 dimension, got %d",
                          ds->path, name, rank);
    } else if ((status = hdf5_check_number_type(type, ds->path, "dataset", name)) != DS_OK) {
        /* refused before libhdf5 converts it */
    } else {
        hsize_t dim = 0;
        H5Sget_simple_extent_dims(space, &dim, NULL);
        if (dim > (hsize_t)INT64_MAX / 16)
            status = ds_error(DS_ERR_INPUT, "%s: dataset \"%s\": %llu elements is too many",
                              ds->path, name, (unsigned long long)dim);
        else
            status = dataset_check_stored(ds, dset, name, dim, H5Tget_size(type));
        *length = (int64_t)dim;
    }
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (status != DS_OK) {
        H5Dclose(dset);
        return status;
    }
    *out = dset;
    return DS_OK;
}

/* Read elements [start, start + count) of a 1-D dataset, converted to mem_type. */
static int dataset_read_range(const TokenDataset *ds, hid_t dset, const char *name, hid_t mem_type,
                              int64_t start, int64_t count, void *out)
{
    if (count == 0) return DS_OK;
    hsize_t off = (hsize_t)start, cnt = (hsize_t)count;
    hid_t file_space = H5Dget_space(dset);
    hid_t mem_space = H5Screate_simple(1, &cnt, NULL);
    herr_t rc = -1;
    if (file_space >= 0 && mem_space >= 0 &&
        H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &off, NULL, &cnt, NULL) >= 0)
        rc = H5Dread(dset, mem_type, mem_space, file_space, H5P_DEFAULT, out);
    if (file_space >= 0) H5Sclose(file_space);
    if (mem_space >= 0) H5Sclose(mem_space);
    if (rc < 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"%s\": cannot read elements [%" PRId64 ", %" PRId64
                        ") (file truncated or corrupted?)",
                        ds->path, name, start, start + count);
    return DS_OK;
}

/* Read tokens [start, start + count) of the flat array and check every id is in the vocabulary. */
static int tokens_read(TokenDataset *ds, int64_t start, int64_t count, int32_t *tokens,
                       uint8_t *loss_mask)
{
    DS_TRY(dataset_read_range(ds, ds->tokens, "tokens", H5T_NATIVE_INT32, start, count, tokens));
    int32_t vocab = ds->info.vocab_size;
    /* One branch-free pass (it vectorizes) over the common all-valid case; the search for the
     * offending index only runs when there is one. Unsigned compare: negatives are huge. */
    uint32_t bad = 0;
    for (int64_t i = 0; i < count; i++)
        bad |= (uint32_t)tokens[i] >= (uint32_t)vocab;
    for (int64_t i = 0; bad && i < count; i++) {
        if (tokens[i] < 0 || tokens[i] >= vocab) {
            /* HDF5 clips wider integers to the int32 range on conversion. */
            int clipped = tokens[i] == INT32_MAX || tokens[i] == INT32_MIN;
            return ds_error(DS_ERR_INPUT,
                            "%s: dataset \"tokens\": token id %s%d at index %" PRId64
                            " is outside the vocabulary [0, %d)",
                            ds->path, clipped ? "beyond " : "", tokens[i], start + i, vocab);
        }
    }
    if (loss_mask) {
        if (ds->loss_mask >= 0) {
            DS_TRY(dataset_read_range(ds, ds->loss_mask, "loss_mask", H5T_NATIVE_UINT8, start,
                                      count, loss_mask));
            for (int64_t i = 0; i < count; i++)
                loss_mask[i] = loss_mask[i] != 0;
        } else {
            memset(loss_mask, 1, (size_t)count);
        }
    }
    return DS_OK;
}

static int dataset_validate_attributes(TokenDataset *ds, int model_vocab)
{
    DatasetInfo *info = &ds->info;
    char format[64];
    int found = 0;
    DS_TRY(attr_read_string(ds, "format", format, sizeof(format), &found));
    if (!found)
        return ds_error(DS_ERR_INPUT,
                        "%s: attribute \"format\" is missing (expected \"dstrain-tokens\", see "
                        "docs/data.md)",
                        ds->path);
    if (strcmp(format, "dstrain-tokens") != 0) {
        char shown[200];
        return ds_error(DS_ERR_INPUT,
                        "%s: attribute \"format\": expected \"dstrain-tokens\", got \"%s\"",
                        ds->path, ds_printable(shown, sizeof(shown), format, 60));
    }
    int64_t version = 0;
    DS_TRY(attr_read_int(ds, "format_version", &version, &found));
    if (!found)
        return ds_error(DS_ERR_INPUT, "%s: attribute \"format_version\" is missing", ds->path);
    if (version != 1)
        return ds_error(DS_ERR_INPUT,
                        "%s: attribute \"format_version\": version %" PRId64
                        " is not supported (this dstrain reads version 1)",
                        ds->path, version);
    int64_t vocab = 0;
    DS_TRY(attr_read_int(ds, "vocab_size", &vocab, &found));
    if (!found) return ds_error(DS_ERR_INPUT, "%s: attribute \"vocab_size\" is missing", ds->path);
    if (vocab <= 0 || vocab > INT32_MAX)
        return ds_error(DS_ERR_INPUT, "%s: attribute \"vocab_size\": %" PRId64 " is out of range",
                        ds->path, vocab);
    if (model_vocab > 0 && vocab > model_vocab)
        return ds_error(DS_ERR_INPUT, "%s: vocab_size %" PRId64 " is larger than the model's %d",
                        ds->path, vocab, model_vocab);
    info->vocab_size = (int)vocab;
    const char *special[3] = {"bos_id", "eos_id", "pad_id"};
    int *dest[3] = {&info->bos_id, &info->eos_id, &info->pad_id};
    for (int i = 0; i < 3; i++) {
        int64_t id = -1;
        DS_TRY(attr_read_int(ds, special[i], &id, &found));
        if (!found) id = -1;
        if (id < -1 || id >= vocab)
            return ds_error(DS_ERR_INPUT,
                            "%s: attribute \"%s\": %" PRId64
                            " is outside the vocabulary [0, %" PRId64 ") (use -1 for none)",
                            ds->path, special[i], id, vocab);
        *dest[i] = (int)id;
    }
    DS_TRY(attr_read_string(ds, "tokenizer", info->tokenizer, sizeof(info->tokenizer), &found));
    return DS_OK;
}

/* Read doc_offsets whole (n_docs + 1 int64: small next to the tokens) and check it, a bounded
 * chunk at a time, so a bad offset stops the read where it is. */
static int dataset_validate_offsets(TokenDataset *ds, hid_t offsets, int64_t n_offsets)
{
    const char *p = ds->path;
    if (n_offsets < 2)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"doc_offsets\": the file holds no documents (%" PRId64
                        " offsets; need n_docs + 1 >= 2)",
                        p, n_offsets);
    /* documents are non-empty: more of them than tokens is wrong before anything is read */
    if (n_offsets - 1 > ds->info.n_tokens)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"doc_offsets\": %" PRId64 " documents in %" PRId64
                        " tokens (documents must be non-empty)",
                        p, n_offsets - 1, ds->info.n_tokens);
    ds->offsets = ds_malloc((size_t)n_offsets * sizeof(int64_t));
    if (!ds->offsets) return DS_ERR_INTERNAL;
    for (int64_t start = 0; start < n_offsets; start += DATASET_SCAN_CHUNK) {
        int64_t count = n_offsets - start < DATASET_SCAN_CHUNK ? n_offsets - start : DATASET_SCAN_CHUNK;
        DS_TRY(dataset_read_range(ds, offsets, "doc_offsets", H5T_NATIVE_INT64, start, count,
                                  ds->offsets + start));
        if (start == 0 && ds->offsets[0] != 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: dataset \"doc_offsets\": must start at 0, got %" PRId64, p,
                            ds->offsets[0]);
        for (int64_t i = start > 0 ? start : 1; i < start + count; i++) {
            if (ds->offsets[i] <= ds->offsets[i - 1])
                return ds_error(DS_ERR_INPUT,
                                "%s: dataset \"doc_offsets\": not increasing at index %" PRId64
                                " (%" PRId64 " then %" PRId64 "); documents must be non-empty",
                                p, i, ds->offsets[i - 1], ds->offsets[i]);
        }
    }
    int64_t last = ds->offsets[n_offsets - 1];
    if (last != ds->info.n_tokens)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"doc_offsets\": last offset %" PRId64
                        " is not the length of \"tokens\" (%" PRId64 ")",
                        p, last, ds->info.n_tokens);
    return DS_OK;
}

/* Read every token once so that a bad id fails at open rather than mid-run. */
static int dataset_scan_tokens(TokenDataset *ds)
{
    int64_t n = ds->info.n_tokens;
    int64_t chunk = n < DATASET_SCAN_CHUNK ? n : DATASET_SCAN_CHUNK;
    int32_t *buf = ds_malloc((size_t)chunk * sizeof(int32_t));
    if (!buf) return DS_ERR_INTERNAL;
    int status = DS_OK;
    for (int64_t start = 0; start < n && status == DS_OK; start += chunk) {
        int64_t count = n - start < chunk ? n - start : chunk;
        status = tokens_read(ds, start, count, buf, NULL);
    }
    free(buf);
    return status;
}

static int dataset_validate(TokenDataset *ds, int model_vocab)
{
    const char *p = ds->path;
    DatasetInfo *info = &ds->info;
    DS_TRY(dataset_validate_attributes(ds, model_vocab));

    int64_t n_tokens = 0, n_offsets = 0, n_mask = 0, n_labels = 0, n_tasks = 0;
    DS_TRY(dataset_open_1d(ds, "tokens", 1, &ds->tokens, &n_tokens));
    if (n_tokens == 0) return ds_error(DS_ERR_INPUT, "%s: dataset \"tokens\" is empty", p);
    info->n_tokens = n_tokens;

    hid_t offsets = -1;
    DS_TRY(dataset_open_1d(ds, "doc_offsets", 1, &offsets, &n_offsets));
    int status = dataset_validate_offsets(ds, offsets, n_offsets);
    H5Dclose(offsets);
    if (status != DS_OK) return status;
    info->n_docs = n_offsets - 1;

    DS_TRY(dataset_open_1d(ds, "loss_mask", 0, &ds->loss_mask, &n_mask));
    if (ds->loss_mask >= 0 && n_mask != n_tokens)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"loss_mask\": length %" PRId64
                        " does not match \"tokens\" (%" PRId64 ")",
                        p, n_mask, n_tokens);
    DS_TRY(dataset_open_1d(ds, "labels", 0, &ds->labels, &n_labels));
    if (ds->labels >= 0 && n_labels != info->n_docs)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"labels\": length %" PRId64
                        " does not match the number of documents (%" PRId64 ")",
                        p, n_labels, info->n_docs);
    DS_TRY(dataset_open_1d(ds, "task_ids", 0, &ds->task_ids, &n_tasks));
    if (ds->task_ids >= 0 && n_tasks != info->n_docs)
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"task_ids\": length %" PRId64
                        " does not match the number of documents (%" PRId64 ")",
                        p, n_tasks, info->n_docs);
    info->has_loss_mask = ds->loss_mask >= 0;
    info->has_labels = ds->labels >= 0;
    info->has_task_ids = ds->task_ids >= 0;

    if (n_tokens < DATASET_FULL_SCAN_TOKENS) DS_TRY(dataset_scan_tokens(ds));
    return DS_OK;
}

void dataset_quiet_hdf5_errors(void)
{
    /* HDF5 prints its own error stack to stderr by default; our messages say it in one line. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

int dataset_open(const char *path, int model_vocab, TokenDataset **out)
{
    *out = NULL;
    dataset_quiet_hdf5_errors();
    /* a FIFO would block H5Fopen's open() forever */
    DS_TRY(ds_check_regular(path));

    TokenDataset *ds = ds_calloc(1, sizeof(TokenDataset));
    if (!ds) return DS_ERR_INTERNAL;
    ds->file = ds->tokens = ds->loss_mask = ds->labels = ds->task_ids = -1;
    ds->info.bos_id = ds->info.eos_id = ds->info.pad_id = -1;
    ds->path = ds_strdup(path);
    if (!ds->path) {
        free(ds);
        return DS_ERR_INTERNAL;
    }
    /* libhdf5 trusts sizes in the file that these check first (hdf5_check.h) */
    int status = hdf5_check_root_attributes(path);
    if (status != DS_OK) {
        dataset_close(ds);
        return status;
    }
    ds->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (ds->file < 0) {
        dataset_close(ds);
        return ds_error(DS_ERR_INPUT,
                        "%s: not an HDF5 file, or truncated or corrupted (expected the layout in "
                        "docs/data.md)",
                        path);
    }
    status = dataset_validate(ds, model_vocab);
    if (status != DS_OK) {
        dataset_close(ds);
        return status;
    }
    *out = ds;
    return DS_OK;
}

void dataset_close(TokenDataset *ds)
{
    if (!ds) return;
    hid_t handles[4] = {ds->tokens, ds->loss_mask, ds->labels, ds->task_ids};
    for (int i = 0; i < 4; i++)
        if (handles[i] >= 0) H5Dclose(handles[i]);
    if (ds->file >= 0) H5Fclose(ds->file);
    free(ds->offsets);
    free(ds->path);
    free(ds);
}

const DatasetInfo *dataset_info(const TokenDataset *ds)
{
    return &ds->info;
}

const char *dataset_path(const TokenDataset *ds)
{
    return ds->path;
}

int64_t dataset_doc_length(const TokenDataset *ds, int64_t doc)
{
    if (doc < 0 || doc >= ds->info.n_docs) return -1;
    return ds->offsets[doc + 1] - ds->offsets[doc];
}

int64_t dataset_doc_offset(const TokenDataset *ds, int64_t doc)
{
    if (doc < 0 || doc > ds->info.n_docs) return -1;
    return ds->offsets[doc];
}

int dataset_read_doc(TokenDataset *ds, int64_t doc, int64_t start, int64_t count, int32_t *tokens,
                     uint8_t *loss_mask)
{
    int64_t len = dataset_doc_length(ds, doc);
    if (len < 0 || start < 0 || count < 0 || start > len || count > len - start)
        return ds_error(DS_ERR_INTERNAL,
                        "%s: read of document %" PRId64 " tokens [%" PRId64 ", %" PRId64
                        ") is outside the file (%" PRId64 " documents, this one %" PRId64
                        " tokens)",
                        ds->path, doc, start, start + count, ds->info.n_docs, len);
    return tokens_read(ds, ds->offsets[doc] + start, count, tokens, loss_mask);
}

static int dataset_read_per_doc(TokenDataset *ds, hid_t dset, const char *name, hid_t mem_type,
                                int64_t first_doc, int64_t count, void *out)
{
    if (dset < 0) return ds_error(DS_ERR_INPUT, "%s: dataset \"%s\" is missing", ds->path, name);
    if (first_doc < 0 || count < 0 || first_doc > ds->info.n_docs ||
        count > ds->info.n_docs - first_doc)
        return ds_error(DS_ERR_INTERNAL,
                        "%s: dataset \"%s\": read of [%" PRId64 ", %" PRId64 ") is outside %" PRId64
                        " documents",
                        ds->path, name, first_doc, first_doc + count, ds->info.n_docs);
    return dataset_read_range(ds, dset, name, mem_type, first_doc, count, out);
}

int dataset_read_labels(TokenDataset *ds, int64_t first_doc, int64_t count, int64_t *labels)
{
    return dataset_read_per_doc(ds, ds->labels, "labels", H5T_NATIVE_INT64, first_doc, count,
                                labels);
}

int dataset_read_task_ids(TokenDataset *ds, int64_t first_doc, int64_t count, int32_t *task_ids)
{
    return dataset_read_per_doc(ds, ds->task_ids, "task_ids", H5T_NATIVE_INT32, first_doc, count,
                                task_ids);
}

/* ---- LMReader ----------------------------------------------------------------------------- */

struct LMReader {
    DataReader *view; /* lm_reader_view: position, seek and next go to this reader */
    TokenDataset *ds;
    int seq_len;
    uint64_t seed;
    int dp_rank, dp_size;
    int64_t stream_len;     /* n_tokens + one EOS per document when eos_id >= 0 */
    int64_t n_windows;      /* per epoch */
    int64_t epoch;          /* epoch of the next window */
    int64_t next_position;  /* index into the permuted order of the next window of this rank */
    Permutation perm;       /* of the current epoch */
    int32_t *window_tokens; /* seq_len + 1 */
    uint8_t *window_mask;   /* seq_len + 1 */
    int32_t *raw_tokens;    /* seq_len + 1: the document tokens of a window, before EOS */
    uint8_t *raw_mask;
};

static int64_t lm_doc_stream_start(const TokenDataset *ds, int64_t doc)
{
    return ds->offsets[doc] + (ds->info.eos_id >= 0 ? doc : 0);
}

/* The document holding stream position s: the last doc whose stream start is <= s. */
static int64_t lm_find_doc(const TokenDataset *ds, int64_t s)
{
    int64_t lo = 0, hi = ds->info.n_docs - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (lm_doc_stream_start(ds, mid) <= s)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int64_t dataset_lm_windows(const TokenDataset *ds, int seq_len)
{
    const DatasetInfo *info = &ds->info;
    int64_t stream = info->n_tokens + (info->eos_id >= 0 ? info->n_docs : 0);
    return seq_len < 1 ? 0 : stream / ((int64_t)seq_len + 1);
}

int dataset_read_tokens(TokenDataset *ds, int64_t start, int64_t count, int32_t *tokens,
                        uint8_t *loss_mask)
{
    if (start < 0 || count < 0 || start > ds->info.n_tokens || count > ds->info.n_tokens - start)
        return ds_error(DS_ERR_INTERNAL,
                        "%s: read of tokens [%" PRId64 ", %" PRId64 ") is outside the file",
                        ds->path, start, start + count);
    return tokens_read(ds, start, count, tokens, loss_mask);
}

/* Window w covers stream positions [w(T+1), (w+1)(T+1)). The document tokens it covers are
 * contiguous in the flat array, so one hyperslab read serves the whole window; EOS separators
 * are inserted afterwards while walking the document boundaries. */
int dataset_read_lm_window(TokenDataset *ds, int64_t w, int seq_len, int32_t *window_tokens,
                           uint8_t *window_mask, int32_t *raw_tokens, uint8_t *raw_mask)
{
    return dataset_read_lm_windows(ds, w, 1, seq_len, window_tokens, window_mask, raw_tokens,
                                   raw_mask);
}

int dataset_read_lm_windows(TokenDataset *ds, int64_t w, int64_t count, int seq_len,
                            int32_t *window_tokens, uint8_t *window_mask, int32_t *raw_tokens,
                            uint8_t *raw_mask)
{
    const int64_t need = ((int64_t)seq_len + 1) * count;
    const int64_t *off = ds->offsets;
    const int64_t n_docs = ds->info.n_docs;
    const int has_eos = ds->info.eos_id >= 0;
    if (w < 0 || count < 1 || w > dataset_lm_windows(ds, seq_len) - count)
        return ds_error(DS_ERR_INTERNAL,
                        "%s: windows [%" PRId64 ", %" PRId64 ") are outside the stream", ds->path,
                        w, w + count);
    int64_t s0 = w * ((int64_t)seq_len + 1);
    int64_t doc0 = lm_find_doc(ds, s0);
    int64_t in_doc0 = s0 - lm_doc_stream_start(ds, doc0);
    int64_t first_token = off[doc0] + in_doc0; /* == off[doc0 + 1] when s0 is doc0's EOS */

    /* Pass 1: how many document tokens the window covers. */
    int64_t pos = 0, n_real = 0, doc = doc0, in_doc = in_doc0;
    while (pos < need && doc < n_docs) {
        int64_t len = off[doc + 1] - off[doc];
        if (in_doc < len) {
            int64_t take = len - in_doc < need - pos ? len - in_doc : need - pos;
            n_real += take;
            pos += take;
            in_doc += take;
        } else {
            if (has_eos) pos++;
            doc++;
            in_doc = 0;
        }
    }
    if (pos < need)
        return ds_error(DS_ERR_INTERNAL, "%s: window %" PRId64 " runs past the end of the stream",
                        ds->path, w);
    DS_TRY(tokens_read(ds, first_token, n_real, raw_tokens, raw_mask));

    /* Pass 2: the same walk, copying tokens and inserting EOS (always trained on). */
    int64_t raw = 0;
    pos = 0, doc = doc0, in_doc = in_doc0;
    while (pos < need) {
        int64_t len = off[doc + 1] - off[doc];
        if (in_doc < len) {
            int64_t take = len - in_doc < need - pos ? len - in_doc : need - pos;
            memcpy(window_tokens + pos, raw_tokens + raw, (size_t)take * sizeof(int32_t));
            memcpy(window_mask + pos, raw_mask + raw, (size_t)take);
            raw += take;
            pos += take;
            in_doc += take;
        } else {
            if (has_eos) {
                window_tokens[pos] = ds->info.eos_id;
                window_mask[pos] = 1;
                pos++;
            }
            doc++;
            in_doc = 0;
        }
    }
    return DS_OK;
}

static int lm_fill_window(LMReader *r, int64_t w)
{
    return dataset_read_lm_window(r->ds, w, r->seq_len, r->window_tokens, r->window_mask,
                                  r->raw_tokens, r->raw_mask);
}

int lm_reader_open(const char *path, int model_vocab, int seq_len, uint64_t seed, int dp_rank,
                   int dp_size, LMReader **out)
{
    *out = NULL;
    if (seq_len < 1)
        return ds_error(DS_ERR_INPUT, "%s: seq_len must be >= 1, got %d", path, seq_len);
    if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
        return ds_error(DS_ERR_INPUT, "%s: data-parallel rank %d of %d is out of range", path,
                        dp_rank, dp_size);
    LMReader *r = ds_calloc(1, sizeof(LMReader));
    if (!r) return DS_ERR_INTERNAL;
    int status = dataset_open(path, model_vocab, &r->ds);
    if (status != DS_OK) {
        free(r);
        return status;
    }
    const DatasetInfo *info = &r->ds->info;
    r->seq_len = seq_len;
    r->seed = seed;
    r->dp_rank = dp_rank;
    r->dp_size = dp_size;
    r->stream_len = info->n_tokens + (info->eos_id >= 0 ? info->n_docs : 0);
    r->n_windows = dataset_lm_windows(r->ds, seq_len);
    if (r->n_windows == 0) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: file too small for seq_len %d: %" PRId64
                          " tokens (with separators) do not fill one window of %d",
                          path, seq_len, r->stream_len, seq_len + 1);
    } else if (r->n_windows < dp_size) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: only %" PRId64 " windows of seq_len + 1 = %d tokens for %d "
                          "data-parallel ranks; use a larger file or a shorter seq_len",
                          path, r->n_windows, seq_len + 1, dp_size);
    }
    size_t n = (size_t)seq_len + 1;
    if (status == DS_OK) {
        r->window_tokens = ds_malloc(n * sizeof(int32_t));
        r->raw_tokens = ds_malloc(n * sizeof(int32_t));
        r->window_mask = ds_malloc(n);
        r->raw_mask = ds_malloc(n);
        if (!r->window_tokens || !r->raw_tokens || !r->window_mask || !r->raw_mask)
            status = DS_ERR_INTERNAL;
    }
    if (status != DS_OK) {
        lm_reader_close(r);
        return status;
    }
    r->epoch = 0;
    r->next_position = dp_rank;
    permutation_init(&r->perm, r->n_windows, seed, 0);
    *out = r;
    return DS_OK;
}

/* Window index (in file order) of the next window this rank reads; advances the cursor. */
static int64_t lm_next_window_index(LMReader *r)
{
    if (r->next_position >= r->n_windows) {
        r->epoch++;
        r->next_position = r->dp_rank;
        permutation_init(&r->perm, r->n_windows, r->seed, r->epoch);
    }
    int64_t w = permutation_apply(&r->perm, r->next_position);
    r->next_position += r->dp_size;
    return w;
}

int lm_reader_view(DataReader *data, LMReader **out)
{
    *out = ds_calloc(1, sizeof(LMReader));
    if (!*out) return DS_ERR_INTERNAL;
    (*out)->view = data;
    return DS_OK;
}

int lm_reader_next(LMReader *r, int batch, int32_t *inputs, int32_t *targets, float *weights)
{
    if (r->view) return data_reader_next(r->view, inputs, targets, weights, NULL);
    const int T = r->seq_len;
    for (int b = 0; b < batch; b++) {
        int64_t w = lm_next_window_index(r);
        DS_TRY(lm_fill_window(r, w));
        int32_t *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        memcpy(in, r->window_tokens, (size_t)T * sizeof(int32_t));
        memcpy(tg, r->window_tokens + 1, (size_t)T * sizeof(int32_t));
        if (weights) {
            float *wt = weights + (size_t)b * T;
            for (int t = 0; t < T; t++)
                wt[t] = r->window_mask[t + 1] ? 1.0f : 0.0f;
        }
    }
    return DS_OK;
}

int64_t lm_reader_windows_per_epoch(const LMReader *r)
{
    if (r->view) return data_reader_samples_per_epoch(r->view, 0);
    return r->n_windows;
}

int lm_reader_next_window_index(LMReader *r, int64_t *window)
{
    if (r->view) return ds_error(DS_ERR_INTERNAL, "lm_reader_next_window_index: not on a view");
    *window = lm_next_window_index(r);
    return DS_OK;
}

int lm_reader_position(const LMReader *r, int64_t *global_window_index)
{
    if (r->view) return data_reader_global_sample(r->view, global_window_index);
    /* Normalised so that a reader at the end of an epoch reports the start of the next one. */
    int64_t epoch = r->epoch, position = r->next_position;
    if (position >= r->n_windows) {
        epoch++;
        position = r->dp_rank;
    }
    *global_window_index = epoch * r->n_windows + position;
    return DS_OK;
}

int lm_reader_seek(LMReader *r, int64_t global_window_index)
{
    if (r->view) return data_reader_seek_global(r->view, global_window_index);
    int64_t epoch = global_window_index / r->n_windows;
    int64_t position = global_window_index % r->n_windows;
    if (global_window_index < 0 || position < r->dp_rank || (position - r->dp_rank) % r->dp_size)
        return ds_error(DS_ERR_INPUT,
                        "%s: data position %" PRId64 " does not belong to data-parallel rank %d "
                        "of %d (%" PRId64 " windows per epoch)",
                        r->ds->path, global_window_index, r->dp_rank, r->dp_size, r->n_windows);
    if (epoch != r->epoch) permutation_init(&r->perm, r->n_windows, r->seed, epoch);
    r->epoch = epoch;
    r->next_position = position;
    return DS_OK;
}

const TokenDataset *lm_reader_dataset(const LMReader *r)
{
    return r->ds;
}

void lm_reader_close(LMReader *r)
{
    if (!r) return;
    if (r->view) {
        free(r); /* the DataReader belongs to whoever opened it */
        return;
    }
    dataset_close(r->ds);
    free(r->window_tokens);
    free(r->raw_tokens);
    free(r->window_mask);
    free(r->raw_mask);
    free(r);
}
