/* safetensors.c: the safetensors format, read through a read-only mmap and written atomically.
 * The reader validates like the reference implementation (header size limits, JSON shape, known
 * dtypes, overflow-checked sizes, tensors covering the data section exactly, no trailing bytes)
 * so that no later code ever indexes outside the mapping. It does not copy tensor data: callers
 * read it through safetensors_data(). The writer lays tensors out contiguously in the order given
 * and publishes the file with temp file + fsync + rename + directory fsync. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation's limit: larger headers are refused before parsing. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1000 * 1000)
/* Tensors in one file: DeepSeek-V3 has about 180k over all its shards. A parsed entry costs about
 * 1.3 KB (the JSON tree and the STEntry), so a 100 MB header of a million zero-size entries
 * would cost gigabytes; the keys are counted before anything is parsed. */
#define ST_MAX_TENSORS (1 << 18)
/* Numbers in the header are parsed as doubles; above 2^53 they are no longer exact. */
#define ST_MAX_EXACT_INT 9007199254740992.0

/* Every dtype the format knows, with its size in bits (F4 and F6 are packed below a byte). */
static const struct {
    const char *name;
    unsigned bits;
    int dtype; /* DType, or -1 when dstrain cannot compute with it */
} st_dtypes[] = {
    {"BOOL", 8, -1},    {"U8", 8, DT_U8},    {"I8", 8, -1},         {"I16", 16, -1},
    {"U16", 16, -1},    {"F16", 16, DT_F16}, {"BF16", 16, DT_BF16}, {"I32", 32, DT_I32},
    {"U32", 32, -1},    {"F32", 32, DT_F32}, {"F64", 64, -1},       {"I64", 64, DT_I64},
    {"U64", 64, -1},    {"C64", 64, -1},     {"F8_E4M3", 8, -1},    {"F8_E5M2", 8, -1},
    {"F8_E8M0", 8, -1}, {"F6_E2M3", 6, -1},  {"F6_E3M2", 6, -1},    {"F4", 4, -1},
};

/* ---- reading ------------------------------------------------------------------------------- */

/* The one place reader errors are formatted: "<file>: <problem>". */
#define ST_FAIL(f, ...) st_fail((f)->path, __VA_ARGS__)
static int st_fail(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int st_fail(const char *path, const char *fmt, ...)
{
    char what[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    char shown[1100];
    return ds_error(DS_ERR_INPUT, "%s: %s", ds_printable(shown, sizeof(shown), path, 1000), what);
}

/* Short, printable rendering of a JSON value for error messages. */
static void json_brief(const cJSON *v, char *out, size_t cap)
{
    char *s = v ? cJSON_PrintUnformatted(v) : NULL;
    if (!s) {
        snprintf(out, cap, "%s", v ? "(unprintable)" : "nothing");
        return;
    }
    /* cJSON escapes control characters in strings; a long value is cut on a character
     * boundary (never inside a UTF-8 sequence), DEL shown as \x7F */
    size_t n = strlen(s), keep = n > 40 ? 37 : n, o = 0;
    while (keep > 0 && keep < n && ((unsigned char)s[keep] & 0xC0) == 0x80)
        keep--;
    for (size_t i = 0; i < keep && o + 8 < cap; i++) {
        if (s[i] == 0x7F)
            o += (size_t)snprintf(out + o, cap - o, "\\x7F");
        else
            out[o++] = s[i];
    }
    snprintf(out + o, cap - o, "%s", keep < n ? "..." : "");
    cJSON_free(s);
}

/* RFC 3629 UTF-8, as the reference requires of the header (no overlongs, no surrogates). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* JSON forbids raw control characters inside strings and allows only space, tab, CR and LF
 * between tokens; cJSON is laxer on both, so check before parsing. Returns the offending offset
 * or -1. */
static long json_control_char_at(const char *s, size_t n)
{
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (in_string) {
            if (c < 0x20) return (long)i;
            if (c == '\\')
                i++; /* the escaped character cannot end the string */
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c < 0x20 && c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            return (long)i;
        }
    }
    return -1;
}

/* A JSON number that is a non-negative integer exactly representable (header sizes, shapes). */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d > ST_MAX_EXACT_INT || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int st_parse_metadata(SafetensorsFile *f, const cJSON *meta, int *seen)
{
    if ((*seen)++) return ST_FAIL(f, "header: \"__metadata__\" appears twice");
    if (cJSON_IsNull(meta)) return DS_OK;
    char got[64];
    if (!cJSON_IsObject(meta)) {
        json_brief(meta, got, sizeof(got));
        return ST_FAIL(f, "header: \"__metadata__\" must be an object of strings, got %s", got);
    }
    size_t n = 0;
    for (const cJSON *kv = meta->child; kv; kv = kv->next, n++) {
        if (!cJSON_IsString(kv)) {
            json_brief(kv, got, sizeof(got));
            char key[300];
            return ST_FAIL(f, "header: \"__metadata__\": value of %s must be a string, got %s",
                           ds_quoted(key, sizeof(key), kv->string, 200), got);
        }
    }
    /* Duplicate keys: sort the key pointers (a header may hold very many keys). */
    const char **keys = ds_malloc((n ? n : 1) * sizeof(*keys));
    if (!keys) return DS_ERR_INTERNAL;
    n = 0;
    for (const cJSON *kv = meta->child; kv; kv = kv->next)
        keys[n++] = kv->string;
    qsort(keys, n, sizeof(*keys), cmp_str_ptr);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            char key[300];
            int status = ST_FAIL(f, "header: \"__metadata__\": key %s appears twice",
                                 ds_quoted(key, sizeof(key), keys[i], 200));
            free(keys);
            return status;
        }
    }
    free(keys);
    f->metadata_json = cJSON_PrintUnformatted(meta);
    if (!f->metadata_json) return ds_error(DS_ERR_INTERNAL, "%s: out of memory", f->path);
    return DS_OK;
}

/* Validate one tensor entry and fill e. Bounds against the data section are checked here, the
 * layout (contiguity) afterwards over all entries. */
static int st_parse_entry(const SafetensorsFile *f, const cJSON *item, size_t data_size, STEntry *e)
{
    char got[64], name[300]; /* the tensor's name as messages show it */
    ds_quoted(name, sizeof(name), item->string, 200);
    memset(e, 0, sizeof(*e));
    if (strlen(item->string) >= ST_NAME_MAX) {
        ds_quoted(name, sizeof(name), item->string, 60);
        return ST_FAIL(f, "tensor %s: name longer than %d bytes", name, ST_NAME_MAX - 1);
    }
    snprintf(e->name, sizeof(e->name), "%s", item->string);
    if (!cJSON_IsObject(item)) {
        json_brief(item, got, sizeof(got));
        return ST_FAIL(f, "tensor %s: expected an object, got %s", name, got);
    }
    /* A field given twice would be silently shadowed by cJSON's lookup; refuse it. */
    static const char *const fields[] = {"dtype", "shape", "data_offsets"};
    for (size_t k = 0; k < DS_ARRAY_LEN(fields); k++) {
        int seen = 0;
        for (const cJSON *c = item->child; c; c = c->next)
            seen += strcmp(c->string, fields[k]) == 0;
        if (seen == 0) return ST_FAIL(f, "tensor %s: \"%s\" is missing", name, fields[k]);
        if (seen > 1) return ST_FAIL(f, "tensor %s: \"%s\" appears twice", name, fields[k]);
    }

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dt)) {
        json_brief(dt, got, sizeof(got));
        return ST_FAIL(f, "tensor %s: dtype: expected a string, got %s", name, got);
    }
    int known = -1;
    for (size_t k = 0; k < DS_ARRAY_LEN(st_dtypes); k++)
        if (strcmp(dt->valuestring, st_dtypes[k].name) == 0) known = (int)k;
    if (known < 0)
        return ST_FAIL(f, "tensor %s: unknown dtype %s", name,
                       ds_quoted(got, sizeof(got), dt->valuestring, 32));
    snprintf(e->dtype_name, sizeof(e->dtype_name), "%s", st_dtypes[known].name);
    e->dtype = st_dtypes[known].dtype;
    e->elem_size = st_dtypes[known].bits / 8; /* 0 for the packed sub-byte types */

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape)) {
        json_brief(shape, got, sizeof(got));
        return ST_FAIL(f, "tensor %s: shape: expected an array, got %s", name, got);
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return ST_FAIL(f, "tensor %s: shape has %d dimensions, at most %d are supported", name,
                       ndim, ST_MAX_DIMS);
    e->ndim = ndim;
    uint64_t numel = 1;
    int overflow = 0, d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t dim;
        if (!json_uint(v, &dim)) {
            json_brief(v, got, sizeof(got));
            return ST_FAIL(f, "tensor %s: shape[%d]: expected an integer in [0, 2^53], got %s",
                           name, d, got);
        }
        e->shape[d] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t bits = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)st_dtypes[known].bits, &bits);
    if (overflow)
        return ST_FAIL(f, "tensor %s: shape overflows: its size does not fit in 64 bits", name);
    if (bits % 8 != 0)
        return ST_FAIL(f, "tensor %s: %llu elements of %s do not fill whole bytes", name,
                       (unsigned long long)numel, e->dtype_name);

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(offs->child, &begin) ||
        !json_uint(offs->child->next, &end)) {
        json_brief(offs, got, sizeof(got));
        return ST_FAIL(f,
                       "tensor %s: data_offsets: expected [begin, end] non-negative integers, "
                       "got %s",
                       name, got);
    }
    if (end < begin)
        return ST_FAIL(f, "tensor %s: data_offsets [%llu, %llu]: end is before begin", name,
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return ST_FAIL(f,
                       "tensor %s: data_offsets [%llu, %llu] go beyond the data section "
                       "(%zu bytes)",
                       name, (unsigned long long)begin, (unsigned long long)end, data_size);
    if (end - begin != bits / 8)
        return ST_FAIL(f,
                       "tensor %s: %llu elements of %s need %llu bytes, but data_offsets "
                       "[%llu, %llu] span %llu",
                       name, (unsigned long long)numel, e->dtype_name,
                       (unsigned long long)(bits / 8), (unsigned long long)begin,
                       (unsigned long long)end, (unsigned long long)(end - begin));
    e->begin = (size_t)begin;
    e->end = (size_t)end;
    return DS_OK;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const STEntry *)a)->name, ((const STEntry *)b)->name);
}

static int cmp_entry_offsets(const void *a, const void *b)
{
    const STEntry *x = *(const STEntry *const *)a, *y = *(const STEntry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Tensors sorted by offset must tile [0, data_size) exactly: no gap, no overlap, no tail. */
static int st_check_layout(const SafetensorsFile *f, size_t data_size)
{
    if (f->count == 0) {
        if (data_size != 0)
            return ST_FAIL(f, "%zu bytes after the header belong to no tensor", data_size);
        return DS_OK;
    }
    const STEntry **order = ds_malloc((size_t)f->count * sizeof(*order));
    if (!order) return DS_ERR_INTERNAL;
    for (int i = 0; i < f->count; i++)
        order[i] = &f->entries[i];
    qsort(order, (size_t)f->count, sizeof(*order), cmp_entry_offsets);
    size_t at = 0;
    int status = DS_OK;
    for (int i = 0; i < f->count && status == DS_OK; i++) {
        const STEntry *e = order[i];
        char a[300], b[300];
        if (e->begin > at)
            status = ST_FAIL(f,
                             "bytes [%zu, %zu) of the data section belong to no tensor (a gap "
                             "before tensor %s)",
                             at, e->begin, ds_quoted(a, sizeof(a), e->name, 200));
        else if (e->begin < at)
            status = ST_FAIL(f, "tensor %s: data_offsets [%zu, %zu] overlap tensor %s",
                             ds_quoted(a, sizeof(a), e->name, 200), e->begin, e->end,
                             ds_quoted(b, sizeof(b), order[i - 1]->name, 200));
        at = e->end;
    }
    if (status == DS_OK && at != data_size)
        status = ST_FAIL(f,
                         "%zu trailing bytes after the last tensor (the tensors end at byte %zu "
                         "of the data section, the file has %zu)",
                         data_size - at, at, data_size);
    free(order);
    return status;
}

/* Keys of the top-level object, counted without building anything (strings and nesting are
 * followed; the real parse checks the syntax afterwards). */
static size_t st_count_top_level_keys(const char *h, size_t n)
{
    size_t keys = 0;
    int depth = 0, in_string = 0;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (in_string) {
            if (c == '\\') i++;
            else if (c == '"') in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ':' && depth == 1) {
            keys++;
        }
    }
    return keys;
}

static int st_parse_header(SafetensorsFile *f)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->map[i];
    if (n > ST_MAX_HEADER_BYTES)
        return ST_FAIL(f, "header length %llu exceeds the limit of %llu bytes",
                       (unsigned long long)n, (unsigned long long)ST_MAX_HEADER_BYTES);
    if (n > f->size - 8)
        return ST_FAIL(f, "header length %llu goes beyond the end of the file (%zu bytes)",
                       (unsigned long long)n, f->size);
    const char *header = (const char *)f->map + 8;
    if (n == 0 || header[0] != '{')
        return ST_FAIL(f, "header does not start with '{' (not a safetensors file?)");
    if (!utf8_valid((const unsigned char *)header, (size_t)n))
        return ST_FAIL(f, "header is not valid UTF-8");
    long bad = json_control_char_at(header, (size_t)n);
    if (bad >= 0)
        return ST_FAIL(f, "header is not valid JSON (control character 0x%02x at byte %ld)",
                       (unsigned char)header[bad], bad);
    f->data_start = 8 + (size_t)n;
    const size_t data_size = f->size - f->data_start;
    size_t keys = st_count_top_level_keys(header, (size_t)n);
    if (keys > ST_MAX_TENSORS + 1) /* + __metadata__ */
        return ST_FAIL(f, "header lists %zu tensors, more than the %d one file may hold", keys,
                       ST_MAX_TENSORS);

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)n, &end, 0);
    if (!root) {
        size_t at = end && end >= header && end <= header + n ? (size_t)(end - header) : 0;
        return ST_FAIL(f, "header is not valid JSON (near byte %zu of the header)", at);
    }
    /* The reference pads headers with spaces; anything else after the object is an error. */
    for (const char *p = end; p < header + n; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return ST_FAIL(f, "header has bytes after its JSON object (at byte %zu)",
                           (size_t)(p - header));
        }
    }
    int status = DS_OK, seen_meta = 0;
    int capacity = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        capacity++;
    f->entries = ds_calloc((size_t)(capacity ? capacity : 1), sizeof(STEntry));
    if (!f->entries) status = DS_ERR_INTERNAL;
    for (const cJSON *c = root->child; c && status == DS_OK; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0)
            status = st_parse_metadata(f, c, &seen_meta);
        else if ((status = st_parse_entry(f, c, data_size, &f->entries[f->count])) == DS_OK)
            f->count++;
    }
    cJSON_Delete(root);
    if (status != DS_OK) return status;

    qsort(f->entries, (size_t)f->count, sizeof(STEntry), cmp_entry_name);
    for (int i = 1; i < f->count; i++)
        if (strcmp(f->entries[i - 1].name, f->entries[i].name) == 0) {
            char shown[300];
            return ST_FAIL(f, "tensor %s appears twice in the header",
                           ds_quoted(shown, sizeof(shown), f->entries[i].name, 200));
        }
    return st_check_layout(f, data_size);
}

int safetensors_open(const char *path, SafetensorsFile *f)
{
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    if (strlen(path) >= sizeof(f->path))
        return ds_error(DS_ERR_INPUT, "%.200s...: path longer than %zu bytes", path,
                        sizeof(f->path) - 1);
    memcpy(f->path, path, strlen(path) + 1);
    /* O_NONBLOCK: a FIFO would block open() until a writer came; fstat below refuses it */
    f->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (f->fd < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0) {
        int err = errno;
        safetensors_close(f);
        return ds_error(DS_ERR_INPUT, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        safetensors_close(f);
        return ds_error(DS_ERR_INPUT, "%s: not a regular file", path);
    }
    fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK);
    if (st.st_size < 8) {
        safetensors_close(f);
        return ds_error(DS_ERR_INPUT,
                        "%s: file is %lld bytes, too short for a safetensors header (at least 8)",
                        path, (long long)st.st_size);
    }
    f->size = (size_t)st.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (map == MAP_FAILED) {
        int err = errno;
        safetensors_close(f);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot map %zu bytes: %s", path, (size_t)st.st_size,
                        strerror(err));
    }
    f->map = map;
    int status = st_parse_header(f);
    if (status != DS_OK) safetensors_close(f);
    return status;
}

void safetensors_close(SafetensorsFile *f)
{
    if (f->map) munmap(f->map, f->size);
    if (f->fd >= 0) close(f->fd);
    free(f->entries);
    if (f->metadata_json) cJSON_free(f->metadata_json);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

/* bsearch comparator: the key is the name itself. */
static int cmp_name_to_entry(const void *key, const void *entry)
{
    return strcmp((const char *)key, ((const STEntry *)entry)->name);
}

const STEntry *safetensors_find(const SafetensorsFile *f, const char *name)
{
    if (!f->entries) return NULL;
    return bsearch(name, f->entries, (size_t)f->count, sizeof(STEntry), cmp_name_to_entry);
}

const void *safetensors_data(const SafetensorsFile *f, const STEntry *e)
{
    return f->map + f->data_start + e->begin;
}

/* ---- writing ------------------------------------------------------------------------------- */

typedef struct StrBuf {
    char *data;
    size_t len, cap;
    int oom;
} StrBuf;

static void sb_put(StrBuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void sb_puts(StrBuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_put_json_string(StrBuf *b, const char *s)
{
    sb_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p, esc[2] = 0;
            sb_puts(b, esc);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            sb_puts(b, esc);
        } else {
            sb_put(b, (const char *)p, 1);
        }
    }
    sb_puts(b, "\"");
}

static int write_all(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int cmp_item_by_name(const void *a, const void *b)
{
    return strcmp((*(const STWriteItem *const *)a)->name, (*(const STWriteItem *const *)b)->name);
}

/* Header JSON: "__metadata__" first, then tensors sorted by name, padded with spaces so the data
 * section starts 8-byte aligned. Offsets follow the order the items were given in. */
static int st_build_header(const char *path, const STWriteItem *items, int count,
                           const char *metadata_json, const uint64_t *begin, StrBuf *b)
{
    sb_puts(b, "{");
    int first = 1;
    if (metadata_json) {
        cJSON *meta = cJSON_Parse(metadata_json);
        int ok = cJSON_IsObject(meta);
        for (const cJSON *kv = ok ? meta->child : NULL; kv; kv = kv->next)
            ok &= cJSON_IsString(kv);
        if (!ok) {
            cJSON_Delete(meta);
            return ds_error(DS_ERR_INTERNAL,
                            "%s: metadata must be a JSON object of strings: %.200s", path,
                            metadata_json);
        }
        sb_puts(b, "\"__metadata__\":{");
        for (const cJSON *kv = meta->child; kv; kv = kv->next) {
            if (kv != meta->child) sb_puts(b, ",");
            sb_put_json_string(b, kv->string);
            sb_puts(b, ":");
            sb_put_json_string(b, kv->valuestring);
        }
        sb_puts(b, "}");
        cJSON_Delete(meta);
        first = 0;
    }
    const STWriteItem **order = ds_malloc((size_t)(count ? count : 1) * sizeof(*order));
    if (!order) return DS_ERR_INTERNAL;
    for (int i = 0; i < count; i++)
        order[i] = &items[i];
    qsort(order, (size_t)count, sizeof(*order), cmp_item_by_name);
    int status = DS_OK;
    for (int k = 0; k < count; k++) {
        const STWriteItem *it = order[k];
        const size_t at = (size_t)(it - items);
        if (k > 0 && strcmp(order[k - 1]->name, it->name) == 0) {
            status = ds_error(DS_ERR_INTERNAL, "%s: tensor \"%s\" given twice", path, it->name);
            break;
        }
        char num[64];
        if (!first) sb_puts(b, ",");
        first = 0;
        sb_put_json_string(b, it->name);
        sb_puts(b, ":{\"dtype\":\"");
        sb_puts(b, dtype_name(it->dtype));
        sb_puts(b, "\",\"shape\":[");
        for (int d = 0; d < it->ndim; d++) {
            snprintf(num, sizeof(num), "%s%lld", d ? "," : "", (long long)it->shape[d]);
            sb_puts(b, num);
        }
        snprintf(num, sizeof(num), "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)begin[at],
                 (unsigned long long)begin[at + 1]);
        sb_puts(b, num);
    }
    free(order);
    sb_puts(b, "}");
    while (!b->oom && b->len % 8 != 0)
        sb_puts(b, " ");
    if (status == DS_OK && b->oom)
        status = ds_error(DS_ERR_INTERNAL, "%s: out of memory building the header", path);
    return status;
}

/* fsync the directory holding path so the rename itself is durable. */
static int fsync_parent_dir(const char *path)
{
    char dir[1100];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

int safetensors_write(const char *path, const STWriteItem *items, int count,
                      const char *metadata_json)
{
    if (count < 0 || (count > 0 && !items))
        return ds_error(DS_ERR_INTERNAL, "%s: invalid tensor list", path);
    if (strlen(path) > 1000) return ds_error(DS_ERR_INTERNAL, "%.200s...: path too long", path);
    /* Validate every item and lay out the data section before touching the disk. */
    uint64_t *begin = ds_malloc((size_t)(count + 1) * sizeof(uint64_t));
    if (!begin) return DS_ERR_INTERNAL;
    begin[0] = 0;
    for (int i = 0; i < count; i++) {
        const STWriteItem *it = &items[i];
        const char *why = NULL;
        uint64_t bytes = dtype_size(it->dtype);
        if (!it->name || !it->name[0] || strlen(it->name) >= ST_NAME_MAX ||
            strcmp(it->name, "__metadata__") == 0)
            why = "invalid name";
        else if ((unsigned)it->dtype >= DT_COUNT)
            why = "invalid dtype";
        else if (it->ndim < 0 || it->ndim > ST_MAX_DIMS)
            why = "invalid number of dimensions";
        for (int d = 0; !why && d < it->ndim; d++) {
            if (it->shape[d] < 0)
                why = "negative dimension";
            else if (__builtin_mul_overflow(bytes, (uint64_t)it->shape[d], &bytes))
                why = "size overflows";
        }
        if (!why && bytes > 0 && !it->data) why = "no data";
        if (!why && __builtin_add_overflow(begin[i], bytes, &begin[i + 1])) why = "size overflows";
        if (why) {
            free(begin);
            return ds_error(DS_ERR_INTERNAL, "%s: tensor %d (\"%s\"): %s", path, i,
                            it->name ? it->name : "(null)", why);
        }
    }
    StrBuf header = {0};
    int status = st_build_header(path, items, count, metadata_json, begin, &header);
    if (status != DS_OK) {
        free(header.data);
        free(begin);
        return status;
    }

    char tmp[1100];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = errno;
        free(header.data);
        free(begin);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot create %s: %s", path, tmp, strerror(err));
    }
    const char *step = "write";
    unsigned char len_le[8];
    uint64_t n = header.len;
    for (int i = 0; i < 8; i++)
        len_le[i] = (unsigned char)(n >> (8 * i));
    int rc = write_all(fd, len_le, 8);
    if (rc == 0) rc = write_all(fd, header.data, header.len);
    for (int i = 0; rc == 0 && i < count; i++)
        if (begin[i + 1] > begin[i]) rc = write_all(fd, items[i].data, begin[i + 1] - begin[i]);
    if (rc == 0) {
        step = "fsync";
        rc = fsync(fd);
    }
    int err = errno;
    if (close(fd) != 0 && rc == 0) {
        rc = -1;
        err = errno;
        step = "close";
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -1;
        err = errno;
        step = "rename";
    }
    free(header.data);
    free(begin);
    if (rc != 0) {
        unlink(tmp);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot write (%s): %s", path, step, strerror(err));
    }
    if (fsync_parent_dir(path) != 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot fsync its directory: %s", path,
                        strerror(errno));
    return DS_OK;
}
