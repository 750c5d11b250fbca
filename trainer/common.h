/* common.h: the types every module shares (status codes, tensors, dtypes) and the error channel.
 * Errors never abort: a function that fails sets one message with ds_error() and returns a
 * status; main() prints "dstrain: error: <message>" and exits with the status as the code. */
#ifndef DSTRAIN_COMMON_H
#define DSTRAIN_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes, documented in README.md. */
enum {
    DS_OK = 0,
    DS_ERR_INTERNAL = 1, /* a bug, out of memory, I/O failure outside the user's control */
    DS_ERR_INPUT = 2,    /* bad input: config, model files, data files, command line */
    DS_EXIT_REQUEUE = 75 /* checkpoint written, please requeue (EX_TEMPFAIL) */
};

/* Set the current error message (printf style) and return status, so callers can write
 * `return ds_error(DS_ERR_INPUT, "%s: %s: expected ...", file, key);`. */
int ds_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with more context: "where: <old message>". Returns status. */
int ds_error_context(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ds_last_error(void);
void ds_clear_error(void);

/* Allocation that reports failure through ds_error instead of crashing. */
void *ds_malloc(size_t bytes);
void *ds_calloc(size_t count, size_t size);
void *ds_aligned_alloc(size_t alignment, size_t bytes); /* zeroed; free with free() */
char *ds_strdup(const char *s);

typedef enum DType { DT_F32 = 0, DT_BF16, DT_F16, DT_I32, DT_I64, DT_U8, DT_COUNT } DType;
const char *dtype_name(DType t);   /* safetensors spelling: "F32", "BF16", ... */
size_t dtype_size(DType t);

/* A view on memory; never owns it. */
typedef struct Tensor {
    DType dtype;
    int ndim;
    int64_t shape[4];
    void *data;
} Tensor;

int64_t tensor_numel(const Tensor *t);

/* fp16/bf16 <-> fp32, round to nearest even. */
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/* Files from the user. ds_open_regular opens path read-only without blocking and refuses
 * anything but a regular file (a FIFO would block open() and read() forever, a device or a
 * directory is never data); the fd is blocking again on return. Errors (DS_ERR_INPUT):
 * "<path>: cannot open: <why>" or "<path>: not a regular file (a FIFO)". */
int ds_open_regular(const char *path, int *fd_out);
/* The same as a stdio stream (mode "r" or "rb"); NULL with the message set. */
FILE *ds_fopen_regular(const char *path, const char *mode);
/* Before handing path to a library that opens it itself (HDF5): DS_OK when it is a regular
 * file, else the message above. */
int ds_check_regular(const char *path);

/* Create (or truncate, or with append=1 append to) path for writing without following a
 * symbolic link at its last component, so a link planted in a run directory never redirects a
 * write elsewhere (O_NOFOLLOW | O_CREAT, mode 0644). NULL with the message set
 * ("<path>: cannot write: <why>"); a link there gives "<path>: is a symbolic link". */
FILE *ds_fopen_nofollow(const char *path, int append);

/* s made fit for a one-line message: control characters, DEL and bytes that are not UTF-8
 * become \n, \t, \xNN; a backslash becomes \\; cut with "..." after max_bytes of input.
 * Writes into buf and returns it. Use it for every string that comes from a file. */
const char *ds_printable(char *buf, size_t cap, const char *s, size_t max_bytes);
/* ds_printable between double quotes, with a quote inside escaped (\"): for names a message
 * quotes (tensor names, attribute values), so that a quote in the name cannot end it early. */
const char *ds_quoted(char *buf, size_t cap, const char *s, size_t max_bytes);
/* 1 when s holds a control character (0x01..0x1f or 0x7f): paths and names with one are refused
 * where they are pasted into a script, a plot or a message. */
int ds_has_control_chars(const char *s);

/* Monotonic seconds. */
double ds_now(void);

#define DS_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DS_ALIGN_UP(x, a) (((x) + ((a)-1)) / (a) * (a))

/* Propagate a non-zero status. */
#define DS_TRY(expr)                                                                               \
    do {                                                                                           \
        int ds_try_status_ = (expr);                                                               \
        if (ds_try_status_ != DS_OK) return ds_try_status_;                                        \
    } while (0)

#endif
