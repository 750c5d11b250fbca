/* common.c: the error channel, checked allocation, dtype helpers, float conversions, and the
 * guarded ways to open files from the user and to show their text in messages. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char error_message[2048];

int ds_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof(error_message), fmt, ap);
    va_end(ap);
    return status;
}

int ds_error_context(int status, const char *fmt, ...)
{
    char prefix[1024], old[sizeof(error_message)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof(old));
    snprintf(error_message, sizeof(error_message), "%s: %s", prefix, old);
    return status;
}

const char *ds_last_error(void) { return error_message[0] ? error_message : "unknown error"; }
void ds_clear_error(void) { error_message[0] = 0; }

void *ds_malloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) ds_error(DS_ERR_INTERNAL, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *ds_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) ds_error(DS_ERR_INTERNAL, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *ds_aligned_alloc(size_t alignment, size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, alignment, bytes ? bytes : alignment) != 0) {
        ds_error(DS_ERR_INTERNAL, "out of memory allocating %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

char *ds_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ds_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static const struct {
    const char *name;
    size_t size;
} dtype_table[DT_COUNT] = {
    [DT_F32] = {"F32", 4}, [DT_BF16] = {"BF16", 2}, [DT_F16] = {"F16", 2},
    [DT_I32] = {"I32", 4}, [DT_I64] = {"I64", 8},   [DT_U8] = {"U8", 1},
};

const char *dtype_name(DType t) { return (unsigned)t < DT_COUNT ? dtype_table[t].name : "?"; }
size_t dtype_size(DType t) { return (unsigned)t < DT_COUNT ? dtype_table[t].size : 0; }

int64_t tensor_numel(const Tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: value = mant * 2^-24 */
            float f = ldexpf((float)mant, -24);
            return sign ? -f : f;
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return sign | 0x7e00u;              /* NaN */
    if (absu >= 0x477ff000u) return sign | 0x7c00u;             /* overflow to inf */
    if (absu < 0x38800000u) {                                   /* subnormal or zero */
        float a;
        memcpy(&a, &absu, 4);
        return sign | (uint16_t)lrintf(a * 16777216.0f);        /* round to nearest even */
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

double ds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- files from the user ------------------------------------------------------------------- */

static const char *file_kind(mode_t m)
{
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

int ds_open_regular(const char *path, int *fd_out)
{
    char shown[512];
    *fd_out = -1;
    /* O_NONBLOCK: opening a FIFO for reading blocks until a writer comes; with it, open returns
     * at once and fstat tells what the file is */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ds_error(DS_ERR_INPUT, "%s: cannot open: %s",
                        ds_printable(shown, sizeof(shown), path, 400), strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return ds_error(DS_ERR_INPUT, "%s: cannot open: %s",
                        ds_printable(shown, sizeof(shown), path, 400), strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        if (S_ISDIR(st.st_mode))
            return ds_error(DS_ERR_INPUT, "%s: cannot open: %s",
                            ds_printable(shown, sizeof(shown), path, 400), strerror(EISDIR));
        return ds_error(DS_ERR_INPUT, "%s: not a regular file (%s)",
                        ds_printable(shown, sizeof(shown), path, 400), file_kind(st.st_mode));
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    *fd_out = fd;
    return DS_OK;
}

FILE *ds_fopen_regular(const char *path, const char *mode)
{
    int fd;
    if (ds_open_regular(path, &fd) != DS_OK) return NULL;
    FILE *f = fdopen(fd, mode);
    if (!f) {
        char shown[512];
        ds_error(DS_ERR_INTERNAL, "%s: cannot open: %s",
                 ds_printable(shown, sizeof(shown), path, 400), strerror(errno));
        close(fd);
    }
    return f;
}

int ds_check_regular(const char *path)
{
    int fd;
    DS_TRY(ds_open_regular(path, &fd));
    close(fd);
    return DS_OK;
}

FILE *ds_fopen_nofollow(const char *path, int append)
{
    char shown[512];
    int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (append ? O_APPEND : O_TRUNC),
                  0644);
    if (fd < 0) {
        int e = errno;
        struct stat st;
        if (e == ELOOP && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
            ds_error(DS_ERR_INPUT, "%s: is a symbolic link; refusing to write through it",
                     ds_printable(shown, sizeof(shown), path, 400));
        else
            ds_error(DS_ERR_INPUT, "%s: cannot write: %s",
                     ds_printable(shown, sizeof(shown), path, 400), strerror(e));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        ds_error(DS_ERR_INPUT, "%s: cannot write: not a regular file",
                 ds_printable(shown, sizeof(shown), path, 400));
        return NULL;
    }
    FILE *f = fdopen(fd, append ? "a" : "w");
    if (!f) {
        ds_error(DS_ERR_INTERNAL, "%s: cannot write: %s",
                 ds_printable(shown, sizeof(shown), path, 400), strerror(errno));
        close(fd);
    }
    return f;
}

/* ---- text from input in messages ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (2..4), or 0. */
static int utf8_sequence_length(const unsigned char *s)
{
    int n = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (n == 0 || s[0] >= 0xF5) return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    unsigned cp = s[0] & (0x7F >> n);
    for (int i = 1; i < n; i++)
        cp = (cp << 6) | (s[i] & 0x3F);
    static const unsigned min_for_length[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    /* C1 controls (U+0080..U+009F) and the line/paragraph separators act on terminals too */
    if ((cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) return 0;
    return n;
}

static const char *printable_into(char *buf, size_t cap, const char *s, size_t max_bytes,
                                  int quotes)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)(s ? s : "(null)");
    size_t used = 0;
    if (cap == 0) return buf;
    while (*p && o + 8 < cap) {
        if (used >= max_bytes) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        int n = *p < 0x80 ? 1 : utf8_sequence_length(p);
        if (*p == '\\' || (quotes && *p == '"')) {
            buf[o++] = '\\';
            buf[o++] = (char)*p;
        } else if (*p == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (*p == '\t') {
            buf[o++] = '\\';
            buf[o++] = 't';
        } else if (*p < 0x20 || *p == 0x7F || n == 0) {
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02X", *p);
            n = 1;
        } else {
            memcpy(buf + o, p, (size_t)n);
            o += (size_t)n;
        }
        p += n;
        used += (size_t)n;
    }
    buf[o] = 0;
    return buf;
}

const char *ds_printable(char *buf, size_t cap, const char *s, size_t max_bytes)
{
    return printable_into(buf, cap, s, max_bytes, 0);
}

const char *ds_quoted(char *buf, size_t cap, const char *s, size_t max_bytes)
{
    if (cap < 3) {
        if (cap) buf[0] = 0;
        return buf;
    }
    buf[0] = '"';
    printable_into(buf + 1, cap - 2, s, max_bytes, 1);
    strcat(buf, "\"");
    return buf;
}

int ds_has_control_chars(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7F) return 1;
    return 0;
}
