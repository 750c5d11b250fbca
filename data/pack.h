/* pack.h: `dstrain pack`, JSONL of token ids to the HDF5 layout of docs/data.md. */
#ifndef DSTRAIN_PACK_H
#define DSTRAIN_PACK_H

/* argv[0] is "pack". Returns DS_OK, or a status with the message set through ds_error (bad
 * input: DS_ERR_INPUT, naming FILE:LINE and the field). Prints a summary to stdout on success. */
int pack_main(int argc, char **argv);

#include <stddef.h>

/* One JSONL line checked as strict JSON: one object, nothing after it, no NUL byte, no known key
 * twice. The values of the known keys are positions in the line (NULL = absent), read later
 * without building a tree. Returns 1, or 0 with the problem ("not valid JSON: ...") in problem. */
typedef struct PackLine {
    const char *ids, *mask, *label, *task;
    const char *end; /* the end of the line */
} PackLine;
int pack_line_parse(const char *line, size_t len, PackLine *out, char *problem, size_t cap);

#endif
