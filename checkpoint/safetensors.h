/* safetensors.h: read (through mmap, validated like the reference implementation) and write
 * safetensors files. A reader never trusts the file: every header field, range and size is
 * checked with overflow-safe arithmetic before any tensor byte is touched. */
#ifndef DSTRAIN_SAFETENSORS_H
#define DSTRAIN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../trainer/common.h"

#define ST_MAX_DIMS 8
#define ST_NAME_MAX 512

typedef struct STEntry {
    char name[ST_NAME_MAX];
    char dtype_name[12];  /* as in the file: "BF16", "F32", "I64", ... */
    int dtype;            /* a DType when dstrain can compute with it, else -1 */
    size_t elem_size;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t begin, end;    /* byte range relative to the data section */
} STEntry;

typedef struct SafetensorsFile {
    char path[1024];
    int fd;
    unsigned char *map;
    size_t size;
    size_t data_start; /* 8 + header length */
    int count;
    STEntry *entries;
    char *metadata_json; /* the "__metadata__" object as JSON text, or NULL */
} SafetensorsFile;

/* Map and validate; errors name the file and the problem (DS_ERR_INPUT). */
int safetensors_open(const char *path, SafetensorsFile *f);
void safetensors_close(SafetensorsFile *f);
const STEntry *safetensors_find(const SafetensorsFile *f, const char *name);
const void *safetensors_data(const SafetensorsFile *f, const STEntry *e);

typedef struct STWriteItem {
    const char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* already in dtype */
} STWriteItem;

/* Write items (in the order given, sorted by name in the header as the reference does) with
 * metadata_json (e.g. "{\"format\":\"pt\"}", may be NULL). Writes to path atomically
 * (temporary file, fsync, rename). */
int safetensors_write(const char *path, const STWriteItem *items, int count,
                      const char *metadata_json);

#endif
