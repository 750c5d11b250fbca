/* common.c: the error channel, checked allocation, dtype helpers and float conversions. */
#include "common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
