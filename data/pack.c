/* pack.c: `dstrain pack`: JSONL files of token ids ({"input_ids": [...], "loss_mask": [...],
 * "label": n, "task": n} per line) to one HDF5 file in the layout of docs/data.md.
 * Not a tokenizer: the ids are already made. Input is streamed line by line (each line checked
 * as strict JSON by a scanner that allocates nothing) and appended to
 * chunked, extendible datasets in batches, so memory stays constant for any input size. The file
 * is written under a temporary name and renamed at the end: a failed pack leaves no file. */
#include "data/pack.h"

#include "trainer/common.h"
#include "trainer/log.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PACK_MAX_INPUTS 256
#define PACK_TOKEN_BATCH (1 << 20) /* tokens buffered before an append */
#define PACK_DOC_BATCH (1 << 16)   /* documents buffered before an append */
#define PACK_TOKEN_CHUNK (1 << 18) /* HDF5 chunk of tokens and loss_mask (1 MiB of int32) */
#define PACK_DOC_CHUNK (1 << 14)   /* HDF5 chunk of the per-document datasets */

typedef struct PackOptions {
    const char *inputs[PACK_MAX_INPUTS];
    int n_inputs;
    const char *output;
    int64_t vocab_size; /* 0: max id + 1 */
    int64_t bos_id, eos_id, pad_id;
    const char *tokenizer;
    int compress;
} PackOptions;

/* One extendible 1-D dataset and how much of it is written. */
typedef struct PackColumn {
    const char *name;
    hid_t dset;
    hid_t mem_type;
    int64_t length;
} PackColumn;

typedef struct PackWriter {
    const PackOptions *opt;
    char tmp_path[4096];
    hid_t file;
    PackColumn tokens, loss_mask, doc_offsets, labels, task_ids;
    /* Buffered, not yet appended. The mask buffer is kept even before any line has a mask, so
     * a file whose first mask appears late can still be filled in (earlier tokens get 1). */
    int32_t *token_buf;
    uint8_t *mask_buf;
    int64_t token_fill;
    int64_t *offset_buf, *label_buf;
    int32_t *task_buf;
    int64_t offset_fill, meta_fill; /* doc_offsets has one entry more (the leading 0) */
    /* Running totals. */
    int64_t n_docs, n_tokens, max_id, min_len, max_len;
    /* Whether documents carry labels / tasks: decided by the first document. */
    int labels_known, has_labels, has_tasks;
    char first_file[1024];
    int64_t first_line;
    /* what --tokenizer supplied (for the report) */
    int64_t vocab_from_tokenizer;
    char eos_from[160];
} PackWriter;

static void pack_usage(FILE *f)
{
    fprintf(f,
            "usage: dstrain pack --input FILE.jsonl [--input MORE.jsonl ...] --output FILE.h5\n"
            "                    [--vocab-size N] [--eos-id N] [--bos-id N] [--pad-id N]\n"
            "                    [--tokenizer PATH|NAME] [--compress]\n"
            "Each input line is a JSON object: {\"input_ids\": [ints], \"loss_mask\": [0/1 ...],\n"
            "\"label\": int, \"task\": int} (all but input_ids optional; label and task on all\n"
            "lines or none). --tokenizer: the tokenizer.json the ids were made with (or the model\n"
            "directory holding it): --vocab-size defaults to its vocabulary and --eos-id to its\n"
            "EOS token (tokenizer_config.json's eos_token, else config.json's eos_token_id), the\n"
            "separator between documents; any other value is only recorded. Without either,\n"
            "the vocabulary is max id + 1. Layout: docs/data.md.\n");
}

static int parse_int64(const char *flag, const char *text, int64_t min, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end != 0 || v < min)
        return ds_error(DS_ERR_INPUT, "pack: %s: expected an integer >= %" PRId64 ", got \"%s\"",
                        flag, min, text);
    *out = v;
    return DS_OK;
}

static int pack_parse_args(int argc, char **argv, PackOptions *opt, int *help)
{
    memset(opt, 0, sizeof(*opt));
    opt->bos_id = opt->eos_id = opt->pad_id = -1;
    opt->tokenizer = "";
    *help = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            *help = 1;
            return DS_OK;
        }
        if (!strcmp(arg, "--compress")) {
            opt->compress = 1;
            continue;
        }
        /* Every other option takes a value: "--flag value" or "--flag=value". */
        char flag[64];
        const char *value = NULL;
        const char *eq = strchr(arg, '=');
        if (strncmp(arg, "--", 2) != 0)
            return ds_error(DS_ERR_INPUT,
                            "pack: unexpected argument \"%s\" (see dstrain pack --help)", arg);
        if (eq) {
            snprintf(flag, sizeof(flag), "%.*s", (int)(eq - arg), arg);
            value = eq + 1;
        } else {
            snprintf(flag, sizeof(flag), "%s", arg);
            if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "pack: %s needs a value", flag);
            value = argv[++i];
        }
        if (!strcmp(flag, "--input")) {
            if (opt->n_inputs == PACK_MAX_INPUTS)
                return ds_error(DS_ERR_INPUT, "pack: more than %d --input files", PACK_MAX_INPUTS);
            opt->inputs[opt->n_inputs++] = value;
        } else if (!strcmp(flag, "--output")) {
            opt->output = value;
        } else if (!strcmp(flag, "--vocab-size")) {
            DS_TRY(parse_int64(flag, value, 1, &opt->vocab_size));
            if (opt->vocab_size > INT32_MAX)
                return ds_error(DS_ERR_INPUT, "pack: --vocab-size: %" PRId64 " is too large",
                                opt->vocab_size);
        } else if (!strcmp(flag, "--eos-id")) {
            DS_TRY(parse_int64(flag, value, -1, &opt->eos_id));
        } else if (!strcmp(flag, "--bos-id")) {
            DS_TRY(parse_int64(flag, value, -1, &opt->bos_id));
        } else if (!strcmp(flag, "--pad-id")) {
            DS_TRY(parse_int64(flag, value, -1, &opt->pad_id));
        } else if (!strcmp(flag, "--tokenizer")) {
            opt->tokenizer = value;
        } else {
            return ds_error(DS_ERR_INPUT, "pack: unknown option \"%s\" (see dstrain pack --help)",
                            flag);
        }
    }
    if (opt->n_inputs == 0) return ds_error(DS_ERR_INPUT, "pack: --input FILE.jsonl is required");
    if (!opt->output) return ds_error(DS_ERR_INPUT, "pack: --output FILE.h5 is required");
    const char *special[3] = {"--bos-id", "--eos-id", "--pad-id"};
    int64_t ids[3] = {opt->bos_id, opt->eos_id, opt->pad_id};
    for (int i = 0; i < 3; i++)
        if (opt->vocab_size > 0 && ids[i] >= opt->vocab_size)
            return ds_error(DS_ERR_INPUT, "pack: %s %" PRId64 " is >= --vocab-size %" PRId64,
                            special[i], ids[i], opt->vocab_size);
    return DS_OK;
}

/* ---- HDF5 writing ------------------------------------------------------------------------- */

static int column_create(PackWriter *w, PackColumn *c, const char *name, hid_t file_type,
                         hid_t mem_type, hsize_t chunk)
{
    hsize_t dims = 0, maxdims = H5S_UNLIMITED;
    hid_t space = H5Screate_simple(1, &dims, &maxdims);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, &chunk);
    H5Pset_obj_track_times(dcpl, 0); /* no timestamps: the same input gives the same bytes */
    if (w->opt->compress) {
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 4);
    }
    c->name = name;
    c->mem_type = mem_type;
    c->length = 0;
    c->dset = H5Dcreate2(w->file, name, file_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (c->dset < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot create dataset \"%s\"", w->opt->output, name);
    return DS_OK;
}

static int column_append(PackWriter *w, PackColumn *c, const void *data, int64_t count)
{
    if (count == 0) return DS_OK;
    hsize_t start = (hsize_t)c->length, n = (hsize_t)count, total = start + n;
    if (H5Dset_extent(c->dset, &total) < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot extend dataset \"%s\"", w->opt->output,
                        c->name);
    hid_t file_space = H5Dget_space(c->dset);
    hid_t mem_space = H5Screate_simple(1, &n, NULL);
    herr_t rc = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, NULL, &n, NULL);
    if (rc >= 0) rc = H5Dwrite(c->dset, c->mem_type, mem_space, file_space, H5P_DEFAULT, data);
    H5Sclose(mem_space);
    H5Sclose(file_space);
    if (rc < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot write dataset \"%s\" (disk full?)",
                        w->opt->output, c->name);
    c->length += count;
    return DS_OK;
}

static int pack_flush_tokens(PackWriter *w)
{
    DS_TRY(column_append(w, &w->tokens, w->token_buf, w->token_fill));
    if (w->loss_mask.dset >= 0) DS_TRY(column_append(w, &w->loss_mask, w->mask_buf, w->token_fill));
    w->token_fill = 0;
    return DS_OK;
}

static int pack_flush_docs(PackWriter *w)
{
    DS_TRY(column_append(w, &w->doc_offsets, w->offset_buf, w->offset_fill));
    if (w->has_labels) DS_TRY(column_append(w, &w->labels, w->label_buf, w->meta_fill));
    if (w->has_tasks) DS_TRY(column_append(w, &w->task_ids, w->task_buf, w->meta_fill));
    w->offset_fill = w->meta_fill = 0;
    return DS_OK;
}

/* The first document with a loss mask: create the dataset and give every token already
 * appended a mask of 1 (buffered tokens already have theirs in mask_buf). */
static int pack_start_loss_mask(PackWriter *w)
{
    DS_TRY(column_create(w, &w->loss_mask, "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8,
                         PACK_TOKEN_CHUNK));
    int64_t done = w->tokens.length;
    uint8_t ones[4096];
    memset(ones, 1, sizeof(ones));
    while (w->loss_mask.length < done) {
        int64_t n = done - w->loss_mask.length;
        if (n > (int64_t)sizeof(ones)) n = (int64_t)sizeof(ones);
        DS_TRY(column_append(w, &w->loss_mask, ones, n));
    }
    return DS_OK;
}

static int attr_write_int(PackWriter *w, const char *name, int64_t value)
{
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(w->file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr >= 0 ? H5Awrite(attr, H5T_NATIVE_INT64, &value) : -1;
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    if (rc < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot write attribute \"%s\"", w->opt->output, name);
    return DS_OK;
}

/* Variable-length UTF-8, which h5py reads back as str. */
static int attr_write_string(PackWriter *w, const char *name, const char *value)
{
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(w->file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr >= 0 ? H5Awrite(attr, type, &value) : -1;
    if (attr >= 0) H5Aclose(attr);
    H5Sclose(space);
    H5Tclose(type);
    if (rc < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot write attribute \"%s\"", w->opt->output, name);
    return DS_OK;
}

/* ---- one JSONL line ------------------------------------------------------------------------ */

/* A line is checked as strict JSON (RFC 8259) by a scanner that builds nothing: a document of a
 * million tokens costs no memory beyond the line itself, where a tree would cost a node per
 * token. The known keys' values are kept as positions in the line and walked again when the
 * document is checked and buffered. Anything a JSON reader could take another way is refused:
 * a second value after the object, a NUL byte, a known key given twice (Python keeps the last,
 * a tree lookup the first). Unknown keys are allowed and skipped. */

#define PACK_JSON_MAX_DEPTH 64

typedef struct JsonScan {
    const char *start, *p, *end;
    char *problem;
    size_t cap;
} JsonScan;

static int scan_fail(JsonScan *j, const char *what)
{
    snprintf(j->problem, j->cap, "not valid JSON: %s at byte %ld", what, (long)(j->p - j->start) + 1);
    return 0;
}

static void scan_ws(JsonScan *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A string at j->p (the opening quote). With key != NULL, its decoded text goes there when it
 * is short and ASCII (the known keys are), else key[0] = 1 (matches no known key). */
static int scan_string(JsonScan *j, char *key, size_t key_cap)
{
    size_t k = 0;
    int keep = key != NULL;
    j->p++;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') {
            j->p++;
            if (key) {
                if (keep && k < key_cap) key[k] = 0;
                else key[0] = 1, key[1] = 0;
            }
            return 1;
        }
        if (c < 0x20) return scan_fail(j, "a control character inside a string");
        char decoded = (char)c;
        if (c == '\\') {
            if (j->p + 1 >= j->end) break;
            char e = j->p[1];
            j->p += 2;
            switch (e) {
            case '"': decoded = '"'; break;
            case '\\': decoded = '\\'; break;
            case '/': decoded = '/'; break;
            case 'b': decoded = '\b'; break;
            case 'f': decoded = '\f'; break;
            case 'n': decoded = '\n'; break;
            case 'r': decoded = '\r'; break;
            case 't': decoded = '\t'; break;
            case 'u': {
                if (j->end - j->p < 4) return scan_fail(j, "a short \\u escape");
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hex_value(j->p[i]);
                    if (h < 0) return scan_fail(j, "a bad \\u escape");
                    v = v * 16 + h;
                }
                j->p += 4;
                if (v == 0 || v >= 0x80) keep = 0; /* no known key holds it */
                decoded = (char)v;
                break;
            }
            default:
                j->p -= 2;
                return scan_fail(j, "a bad escape");
            }
        } else {
            j->p++;
        }
        if (keep) {
            if (k + 1 < key_cap) key[k++] = decoded;
            else keep = 0;
        }
    }
    return scan_fail(j, "an unterminated string");
}

/* A number in JSON's grammar; the text is [start, j->p). */
static int scan_number(JsonScan *j)
{
    const char *p = j->p, *e = j->end;
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') {
        p++;
    } else if (p < e && *p >= '1' && *p <= '9') {
        while (p < e && *p >= '0' && *p <= '9') p++;
    } else {
        return scan_fail(j, "a bad number");
    }
    if (p < e && *p == '.') {
        p++;
        if (!(p < e && *p >= '0' && *p <= '9')) return scan_fail(j, "a bad number");
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (!(p < e && *p >= '0' && *p <= '9')) return scan_fail(j, "a bad number");
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 1;
}

static int scan_value(JsonScan *j, int depth);

static int scan_container(JsonScan *j, int depth, char close)
{
    if (depth >= PACK_JSON_MAX_DEPTH) return scan_fail(j, "nesting deeper than 64 levels");
    j->p++;
    scan_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    for (;;) {
        if (close == '}') {
            scan_ws(j);
            if (j->p >= j->end || *j->p != '"') return scan_fail(j, "expected a key");
            if (!scan_string(j, NULL, 0)) return 0;
            scan_ws(j);
            if (j->p >= j->end || *j->p != ':') return scan_fail(j, "expected ':'");
            j->p++;
        }
        if (!scan_value(j, depth + 1)) return 0;
        scan_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            scan_ws(j);
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 1;
        }
        return scan_fail(j, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int scan_value(JsonScan *j, int depth)
{
    scan_ws(j);
    if (j->p >= j->end) return scan_fail(j, "a missing value");
    switch (*j->p) {
    case '{': return scan_container(j, depth, '}');
    case '[': return scan_container(j, depth, ']');
    case '"': return scan_string(j, NULL, 0);
    case 't':
    case 'f':
    case 'n': {
        static const char *const words[] = {"true", "false", "null"};
        for (int i = 0; i < 3; i++) {
            size_t n = strlen(words[i]);
            if ((size_t)(j->end - j->p) >= n && memcmp(j->p, words[i], n) == 0) {
                j->p += n;
                return 1;
            }
        }
        return scan_fail(j, "an unknown word");
    }
    default: return scan_number(j);
    }
}

int pack_line_parse(const char *line, size_t len, PackLine *out, char *problem, size_t cap)
{
    memset(out, 0, sizeof(*out));
    JsonScan j = {line, line, line + len, problem, cap};
    if (memchr(line, 0, len)) {
        snprintf(problem, cap, "holds a NUL byte");
        return 0;
    }
    scan_ws(&j);
    if (j.p >= j.end || *j.p != '{') {
        /* still JSON? then the message says what the line is instead */
        JsonScan v = {line, j.p, j.end, problem, cap};
        if (j.p < j.end && scan_value(&v, 0)) snprintf(problem, cap, "expected a JSON object per line");
        else if (j.p >= j.end) snprintf(problem, cap, "not valid JSON: empty");
        return 0;
    }
    static const char *const known[] = {"input_ids", "loss_mask", "label", "task"};
    const char **slot[] = {&out->ids, &out->mask, &out->label, &out->task};
    j.p++;
    scan_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            char key[16];
            scan_ws(&j);
            if (j.p >= j.end || *j.p != '"') return scan_fail(&j, "expected a key");
            if (!scan_string(&j, key, sizeof(key))) return 0;
            scan_ws(&j);
            if (j.p >= j.end || *j.p != ':') return scan_fail(&j, "expected ':'");
            j.p++;
            scan_ws(&j);
            for (size_t i = 0; i < DS_ARRAY_LEN(known); i++) {
                if (strcmp(key, known[i]) != 0) continue;
                if (*slot[i]) {
                    snprintf(problem, cap, "%s: given twice in one object", known[i]);
                    return 0;
                }
                *slot[i] = j.p;
            }
            if (!scan_value(&j, 1)) return 0;
            scan_ws(&j);
            if (j.p < j.end && *j.p == ',') {
                j.p++;
                continue;
            }
            if (j.p < j.end && *j.p == '}') {
                j.p++;
                break;
            }
            return scan_fail(&j, "expected ',' or '}'");
        }
    }
    scan_ws(&j);
    if (j.p < j.end) {
        snprintf(problem, cap, "unexpected text after the JSON object (one object per line)");
        return 0;
    }
    out->end = line + len;
    return 1;
}

/* Elements of an array that pack_line_parse has checked, one at a time: *elem is the start of
 * the next one; 0 at the end. */
typedef struct ArrayWalk {
    JsonScan scan;
    int started;
} ArrayWalk;

static void array_walk_begin(ArrayWalk *w, const char *array, const char *end)
{
    static char unused[8];
    w->scan = (JsonScan){array, array + 1, end, unused, sizeof(unused)};
    w->started = 0;
}

static int array_walk_next(ArrayWalk *w, const char **elem)
{
    JsonScan *j = &w->scan;
    scan_ws(j);
    if (w->started) {
        if (j->p >= j->end || *j->p != ',') return 0; /* ']' */
        j->p++;
        scan_ws(j);
    } else if (j->p >= j->end || *j->p == ']') {
        return 0;
    }
    w->started = 1;
    *elem = j->p;
    scan_value(j, 1); /* checked already */
    return 1;
}

/* An integer-valued JSON number in [lo, hi] at s ("3", "-2", also "3.0" and "3e2"). */
static int json_integer(const char *s, const char *end, double lo, double hi, int64_t *out)
{
    if (s >= end || !(*s == '-' || (*s >= '0' && *s <= '9'))) return 0;
    char unused[8];
    JsonScan j = {s, s, end, unused, sizeof(unused)};
    if (!scan_number(&j)) return 0;
    size_t n = (size_t)(j.p - s);
    char buf[400];
    if (n >= sizeof(buf)) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    double v = strtod(buf, NULL);
    if (!isfinite(v) || v != floor(v) || v < lo || v > hi) return 0;
    *out = (int64_t)v;
    return 1;
}

static int64_t array_length(const char *array, const char *end)
{
    ArrayWalk w;
    const char *elem;
    int64_t n = 0;
    array_walk_begin(&w, array, end);
    while (array_walk_next(&w, &elem))
        n++;
    return n;
}

static int pack_document(PackWriter *w, const char *file, int64_t line, const PackLine *doc)
{
    const PackOptions *opt = w->opt;
    const char *end = doc->end;
    if (!doc->ids) return ds_error(DS_ERR_INPUT, "%s:%" PRId64 ": input_ids: missing", file, line);
    if (*doc->ids != '[')
        return ds_error(DS_ERR_INPUT, "%s:%" PRId64 ": input_ids: expected a list of integers",
                        file, line);
    int64_t len = array_length(doc->ids, end);
    if (len == 0)
        return ds_error(DS_ERR_INPUT,
                        "%s:%" PRId64
                        ": input_ids: empty document (documents need at least one token)",
                        file, line);
    int mask_is_list = doc->mask && *doc->mask == '[';
    int64_t mask_len = mask_is_list ? array_length(doc->mask, end) : 0;
    if (doc->mask && (!mask_is_list || mask_len != len))
        return ds_error(DS_ERR_INPUT,
                        "%s:%" PRId64 ": loss_mask: expected a list of 0/1 of the same length as "
                        "input_ids (%" PRId64 " tokens, got %s%" PRId64 ")",
                        file, line, len, mask_is_list ? "" : "a non-list, ", mask_len);

    /* Per-document metadata: all lines or none, decided by the first document. */
    int64_t label_value = 0, task_value = 0;
    if (doc->label &&
        !json_integer(doc->label, end, -9007199254740992.0, 9007199254740992.0, &label_value))
        return ds_error(DS_ERR_INPUT, "%s:%" PRId64 ": label: expected an integer", file, line);
    if (doc->task && !json_integer(doc->task, end, INT32_MIN, INT32_MAX, &task_value))
        return ds_error(DS_ERR_INPUT, "%s:%" PRId64 ": task: expected a 32-bit integer", file,
                        line);
    if (!w->labels_known) {
        w->labels_known = 1;
        w->has_labels = doc->label != NULL;
        w->has_tasks = doc->task != NULL;
        snprintf(w->first_file, sizeof(w->first_file), "%s", file);
        w->first_line = line;
        if (w->has_labels)
            DS_TRY(column_create(w, &w->labels, "labels", H5T_STD_I64LE, H5T_NATIVE_INT64,
                                 PACK_DOC_CHUNK));
        if (w->has_tasks)
            DS_TRY(column_create(w, &w->task_ids, "task_ids", H5T_STD_I32LE, H5T_NATIVE_INT32,
                                 PACK_DOC_CHUNK));
    }
    const char *keys[2] = {"label", "task"};
    int present[2] = {doc->label != NULL, doc->task != NULL};
    int expected[2] = {w->has_labels, w->has_tasks};
    for (int k = 0; k < 2; k++) {
        if (present[k] != expected[k])
            return ds_error(DS_ERR_INPUT,
                            "%s:%" PRId64 ": %s: %s here but %s in %s:%" PRId64
                            " (\"%s\" must be on every line or on none)",
                            file, line, keys[k], present[k] ? "present" : "missing",
                            present[k] ? "absent" : "present", w->first_file, w->first_line,
                            keys[k]);
    }

    /* Check the whole line before buffering any of it, so a bad line adds nothing. */
    ArrayWalk walk;
    const char *item;
    int64_t index = 0;
    array_walk_begin(&walk, doc->ids, end);
    while (array_walk_next(&walk, &item)) {
        int64_t id = 0;
        if (!json_integer(item, end, -9007199254740992.0, 9007199254740992.0, &id))
            return ds_error(DS_ERR_INPUT,
                            "%s:%" PRId64
                            ": input_ids: expected a list of integers (element %" PRId64
                            " is not an integer)",
                            file, line, index);
        if (id < 0)
            return ds_error(DS_ERR_INPUT,
                            "%s:%" PRId64 ": input_ids[%" PRId64 "]: token id %" PRId64
                            " is negative",
                            file, line, index, id);
        if (opt->vocab_size > 0 && id >= opt->vocab_size)
            return ds_error(DS_ERR_INPUT,
                            "%s:%" PRId64 ": input_ids[%" PRId64 "]: token id %" PRId64
                            " is >= %s %" PRId64,
                            file, line, index, id,
                            w->vocab_from_tokenizer ? "the tokenizer's vocabulary size"
                                                    : "--vocab-size",
                            opt->vocab_size);
        if (id > INT32_MAX)
            return ds_error(DS_ERR_INPUT,
                            "%s:%" PRId64 ": input_ids[%" PRId64 "]: token id %" PRId64
                            " does not fit in int32",
                            file, line, index, id);
        index++;
    }
    if (doc->mask) {
        index = 0;
        array_walk_begin(&walk, doc->mask, end);
        while (array_walk_next(&walk, &item)) {
            int64_t m = 0;
            if (!json_integer(item, end, 0, 1, &m))
                return ds_error(DS_ERR_INPUT,
                                "%s:%" PRId64 ": loss_mask[%" PRId64 "]: expected 0 or 1", file,
                                line, index);
            index++;
        }
        if (w->loss_mask.dset < 0) DS_TRY(pack_start_loss_mask(w));
    }

    /* Buffer the document. */
    ArrayWalk mask_walk;
    const char *mask_item = NULL;
    if (doc->mask) array_walk_begin(&mask_walk, doc->mask, end);
    array_walk_begin(&walk, doc->ids, end);
    while (array_walk_next(&walk, &item)) {
        if (w->token_fill == PACK_TOKEN_BATCH) DS_TRY(pack_flush_tokens(w));
        int64_t id = 0, m = 1;
        json_integer(item, end, 0, INT32_MAX, &id);
        if (doc->mask && array_walk_next(&mask_walk, &mask_item)) json_integer(mask_item, end, 0, 1, &m);
        w->token_buf[w->token_fill] = (int32_t)id;
        w->mask_buf[w->token_fill] = (uint8_t)m;
        w->token_fill++;
        if (id > w->max_id) w->max_id = id;
    }
    w->n_tokens += len;
    w->n_docs++;
    if (w->offset_fill == PACK_DOC_BATCH) DS_TRY(pack_flush_docs(w));
    w->offset_buf[w->offset_fill++] = w->n_tokens;
    w->label_buf[w->meta_fill] = label_value;
    w->task_buf[w->meta_fill++] = (int32_t)task_value;
    if (len < w->min_len || w->n_docs == 1) w->min_len = len;
    if (len > w->max_len) w->max_len = len;
    return DS_OK;
}

static int pack_file(PackWriter *w, const char *path)
{
    FILE *f = ds_fopen_regular(path, "rb");
    if (!f) return ds_error_context(DS_ERR_INPUT, "pack");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int64_t line_no = 0;
    int status = DS_OK;
    /* a progress line by bytes read: packing a large corpus takes minutes */
    ProgressTask task;
    char what[96];
    double read_bytes = 0;
    snprintf(what, sizeof(what), "packing %s", path);
    fseek(f, 0, SEEK_END);
    progress_task_begin(&task, what, (double)ftell(f) / 1e3, "kB");
    fseek(f, 0, SEEK_SET);
    while (status == DS_OK && (n = getline(&line, &cap, f)) >= 0) {
        line_no++;
        read_bytes += (double)n;
        if ((line_no & 1023) == 0) progress_task_update(&task, read_bytes / 1e3);
        size_t len = (size_t)n, skip = 0;
        while (skip < len && (line[skip] == ' ' || line[skip] == '\t' || line[skip] == '\r' ||
                              line[skip] == '\n'))
            skip++;
        if (skip == len) continue; /* blank line */
        PackLine doc;
        char problem[200];
        if (!pack_line_parse(line, len, &doc, problem, sizeof(problem))) {
            status = ds_error(DS_ERR_INPUT, "%s:%" PRId64 ": %s", path, line_no, problem);
            break;
        }
        status = pack_document(w, path, line_no, &doc);
    }
    if (status == DS_OK && ferror(f))
        status = ds_error(DS_ERR_INPUT, "%s: read error: %s", path, strerror(errno));
    if (status == DS_OK) progress_task_end(&task);
    free(line);
    fclose(f);
    return status;
}

/* ---- --tokenizer: the vocabulary size and EOS id of a tokenizer.json ------------------------ */

#define PACK_TOKENIZER_MAX_BYTES ((size_t)512 << 20)

static int read_json_file(const char *path, cJSON **out)
{
    *out = NULL;
    FILE *f = ds_fopen_regular(path, "rb");
    if (!f) return DS_ERR_INPUT;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (size_t)st.st_size > PACK_TOKENIZER_MAX_BYTES) {
        fclose(f);
        return ds_error(DS_ERR_INPUT, "%s: too large for a tokenizer file", path);
    }
    char *text = ds_malloc((size_t)st.st_size + 1);
    if (!text) {
        fclose(f);
        return DS_ERR_INTERNAL;
    }
    size_t n = fread(text, 1, (size_t)st.st_size, f);
    fclose(f);
    text[n] = 0;
    *out = cJSON_ParseWithLength(text, n);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return ds_error(DS_ERR_INPUT, "%s: not a JSON object", path);
    }
    return DS_OK;
}

/* A token id of a tokenizer.json: a whole number in [0, INT32_MAX], else -1 (never a conversion
 * of a double outside int64's range, which is undefined). */
static int64_t json_token_id(const cJSON *x)
{
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= 0 && x->valuedouble <= (double)INT32_MAX) ||
        x->valuedouble != (double)(int64_t)x->valuedouble)
        return -1;
    return (int64_t)x->valuedouble;
}

/* The id of token text in a tokenizer.json (added tokens first, then the model's vocabulary:
 * an object token -> id, or Unigram's list of [piece, score]); -1 when it has none. */
static int64_t tokenizer_token_id(const cJSON *tok, const char *text)
{
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tok, "added_tokens");
    const cJSON *t;
    cJSON_ArrayForEach(t, added)
    {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(t, "content");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
        if (cJSON_IsString(c) && cJSON_IsNumber(id) && strcmp(c->valuestring, text) == 0)
            return json_token_id(id);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tok, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (cJSON_IsObject(vocab)) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(vocab, text);
        return json_token_id(id);
    }
    int64_t index = 0;
    cJSON_ArrayForEach(t, vocab)
    {
        if (cJSON_IsArray(t) && cJSON_IsString(t->child) &&
            strcmp(t->child->valuestring, text) == 0)
            return index;
        index++;
    }
    return -1;
}

/* The largest id of a tokenizer.json + 1: its vocabulary size. */
static int64_t tokenizer_vocab_size(const cJSON *tok)
{
    int64_t top = -1;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(tok, "added_tokens"))
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
        if (json_token_id(id) > top) top = json_token_id(id);
    }
    const cJSON *vocab =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tok, "model"), "vocab");
    if (cJSON_IsObject(vocab)) {
        cJSON_ArrayForEach(t, vocab)
        {
            if (json_token_id(t) > top) top = json_token_id(t);
        }
    } else if (cJSON_IsArray(vocab)) {
        const int64_t n = cJSON_GetArraySize(vocab);
        if (n - 1 > top) top = n - 1;
    }
    return top + 1;
}

/* The EOS token of the tokenizer in dir: tokenizer_config.json's eos_token (a string or
 * {"content": ...}) looked up in tok, else config.json's eos_token_id (an integer or a list,
 * first entry). -1 when neither says; what was used goes into from. */
static int64_t tokenizer_eos_id(const char *dir, const cJSON *tok, char *from, size_t cap)
{
    char path[4200];
    cJSON *cfg = NULL;
    int64_t eos = -1;
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    if (access(path, F_OK) == 0 && read_json_file(path, &cfg) == DS_OK) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, "eos_token");
        if (cJSON_IsObject(e)) e = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (cJSON_IsString(e)) {
            eos = tokenizer_token_id(tok, e->valuestring);
            char shown[96];
            if (eos >= 0)
                snprintf(from, cap, "tokenizer_config.json's eos_token %s",
                         ds_printable(shown, sizeof(shown), e->valuestring, 40));
        }
    }
    cJSON_Delete(cfg);
    cfg = NULL;
    ds_clear_error();
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (eos < 0 && access(path, F_OK) == 0 && read_json_file(path, &cfg) == DS_OK) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(cfg, "eos_token_id");
        if (cJSON_IsArray(e)) e = e->child;
        if (cJSON_IsNumber(e) && e->valuedouble >= 0 && e->valuedouble < INT32_MAX) {
            eos = (int64_t)e->valuedouble;
            snprintf(from, cap, "config.json's eos_token_id");
        }
    }
    cJSON_Delete(cfg);
    ds_clear_error();
    return eos;
}

/* --tokenizer PATH: when it is a tokenizer.json or a directory holding one, fill the vocabulary
 * size and the EOS id the command line left out, and say where they came from. */
static int pack_apply_tokenizer(PackOptions *opt, int64_t *vocab_from_tokenizer, char *eos_from,
                                size_t cap)
{
    *vocab_from_tokenizer = 0;
    eos_from[0] = 0;
    struct stat st;
    if (!opt->tokenizer[0] || stat(opt->tokenizer, &st) != 0) return DS_OK; /* a name */
    char dir[4096], file[4200];
    if (S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof(dir), "%s", opt->tokenizer);
        snprintf(file, sizeof(file), "%s/tokenizer.json", opt->tokenizer);
        if (access(file, F_OK) != 0)
            return ds_error(DS_ERR_INPUT, "pack: --tokenizer %s: no tokenizer.json in it",
                            opt->tokenizer);
    } else {
        snprintf(file, sizeof(file), "%s", opt->tokenizer);
        snprintf(dir, sizeof(dir), "%s", opt->tokenizer);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof(dir), ".");
    }
    cJSON *tok;
    int status = read_json_file(file, &tok);
    if (status != DS_OK) return ds_error_context(status, "pack: --tokenizer");
    const int64_t vocab = tokenizer_vocab_size(tok);
    if (vocab <= 0 || vocab > INT32_MAX) {
        cJSON_Delete(tok);
        return ds_error(DS_ERR_INPUT,
                        "pack: --tokenizer %s: no vocabulary found (model.vocab, added_tokens)",
                        file);
    }
    if (opt->vocab_size == 0) {
        opt->vocab_size = vocab;
        *vocab_from_tokenizer = vocab;
    }
    if (opt->eos_id < 0) {
        const int64_t eos = tokenizer_eos_id(dir, tok, eos_from, cap);
        if (eos >= 0) opt->eos_id = eos;
    }
    cJSON_Delete(tok);
    const char *special[3] = {"--bos-id", "--eos-id", "--pad-id"};
    const int64_t ids[3] = {opt->bos_id, opt->eos_id, opt->pad_id};
    for (int i = 0; i < 3; i++)
        if (ids[i] >= opt->vocab_size)
            return ds_error(DS_ERR_INPUT, "pack: %s %" PRId64 " is >= the vocabulary size %" PRId64,
                            special[i], ids[i], opt->vocab_size);
    return DS_OK;
}

static int pack_write_attributes(PackWriter *w, int64_t vocab_size)
{
    const PackOptions *opt = w->opt;
    DS_TRY(attr_write_string(w, "format", "dstrain-tokens"));
    DS_TRY(attr_write_int(w, "format_version", 1));
    DS_TRY(attr_write_int(w, "vocab_size", vocab_size));
    DS_TRY(attr_write_int(w, "bos_id", opt->bos_id));
    DS_TRY(attr_write_int(w, "eos_id", opt->eos_id));
    DS_TRY(attr_write_int(w, "pad_id", opt->pad_id));
    DS_TRY(attr_write_string(w, "tokenizer", opt->tokenizer));
    return DS_OK;
}

static int pack_run(PackWriter *w)
{
    const PackOptions *opt = w->opt;
    w->token_buf = ds_malloc(PACK_TOKEN_BATCH * sizeof(int32_t));
    w->mask_buf = ds_malloc(PACK_TOKEN_BATCH);
    w->offset_buf = ds_malloc(PACK_DOC_BATCH * sizeof(int64_t));
    w->label_buf = ds_malloc(PACK_DOC_BATCH * sizeof(int64_t));
    w->task_buf = ds_malloc(PACK_DOC_BATCH * sizeof(int32_t));
    if (!w->token_buf || !w->mask_buf || !w->offset_buf || !w->label_buf || !w->task_buf)
        return DS_ERR_INTERNAL;
    if (opt->compress && H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0)
        return ds_error(DS_ERR_INPUT, "pack: --compress: this HDF5 library has no gzip filter");

    w->file = H5Fcreate(w->tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0)
        return ds_error(DS_ERR_INPUT,
                        "%s: cannot create (does the directory exist and is it writable?)",
                        opt->output);
    DS_TRY(
        column_create(w, &w->tokens, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, PACK_TOKEN_CHUNK));
    DS_TRY(column_create(w, &w->doc_offsets, "doc_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64,
                         PACK_DOC_CHUNK));
    w->offset_buf[w->offset_fill++] = 0;

    for (int i = 0; i < opt->n_inputs; i++)
        DS_TRY(pack_file(w, opt->inputs[i]));
    if (w->n_docs == 0)
        return ds_error(DS_ERR_INPUT, "%s: no documents in the input (every line was blank)",
                        opt->inputs[opt->n_inputs - 1]);
    DS_TRY(pack_flush_tokens(w));
    DS_TRY(pack_flush_docs(w));

    int64_t vocab_size = opt->vocab_size;
    if (vocab_size == 0) {
        int64_t top = w->max_id;
        if (opt->bos_id > top) top = opt->bos_id;
        if (opt->eos_id > top) top = opt->eos_id;
        if (opt->pad_id > top) top = opt->pad_id;
        vocab_size = top + 1;
    }
    DS_TRY(pack_write_attributes(w, vocab_size));

    hid_t handles[5] = {w->tokens.dset, w->loss_mask.dset, w->doc_offsets.dset, w->labels.dset,
                        w->task_ids.dset};
    for (int i = 0; i < 5; i++) {
        if (handles[i] >= 0) H5Dclose(handles[i]);
    }
    w->tokens.dset = w->loss_mask.dset = w->doc_offsets.dset = w->labels.dset = w->task_ids.dset =
        -1;
    herr_t rc = H5Fclose(w->file);
    w->file = -1;
    if (rc < 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot finish writing (disk full?)", opt->output);
    if (rename(w->tmp_path, opt->output) != 0)
        return ds_error(DS_ERR_INPUT, "%s: cannot rename %s to it: %s", opt->output, w->tmp_path,
                        strerror(errno));

    printf("dstrain pack: wrote %s\n", opt->output);
    printf("  documents:  %" PRId64 "\n", w->n_docs);
    printf("  tokens:     %" PRId64 "\n", w->n_tokens);
    printf("  doc length: min %" PRId64 ", mean %.1f, max %" PRId64 "\n", w->min_len,
           (double)w->n_tokens / (double)w->n_docs, w->max_len);
    printf("  vocab_size %" PRId64 ", bos_id %" PRId64 ", eos_id %" PRId64 ", pad_id %" PRId64
           ", tokenizer \"%s\"\n",
           vocab_size, opt->bos_id, opt->eos_id, opt->pad_id, opt->tokenizer);
    if (w->vocab_from_tokenizer) printf("  vocab_size from the tokenizer (its largest id + 1)\n");
    if (w->eos_from[0])
        printf("  eos_id from %s: inserted after every document in lm mode\n", w->eos_from);
    else if (opt->eos_id < 0)
        printf("  no eos_id: in lm mode documents are joined without a separator (--eos-id, or "
               "--tokenizer with an EOS token)\n");
    printf("  loss_mask %s, labels %s, task_ids %s%s\n", w->loss_mask.length ? "yes" : "no",
           w->has_labels ? "yes" : "no", w->has_tasks ? "yes" : "no",
           opt->compress ? ", gzip compressed" : "");
    return DS_OK;
}

int pack_main(int argc, char **argv)
{
    PackOptions opt;
    int help = 0;
    DS_TRY(pack_parse_args(argc, argv, &opt, &help));
    if (help) {
        pack_usage(stdout);
        return DS_OK;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

    PackWriter w;
    memset(&w, 0, sizeof(w));
    DS_TRY(pack_apply_tokenizer(&opt, &w.vocab_from_tokenizer, w.eos_from, sizeof(w.eos_from)));
    w.opt = &opt;
    w.file = -1;
    w.tokens.dset = w.loss_mask.dset = w.doc_offsets.dset = w.labels.dset = w.task_ids.dset = -1;
    snprintf(w.tmp_path, sizeof(w.tmp_path), "%s.tmp-%ld", opt.output, (long)getpid());

    int status = pack_run(&w);
    if (status != DS_OK) {
        hid_t handles[5] = {w.tokens.dset, w.loss_mask.dset, w.doc_offsets.dset, w.labels.dset,
                            w.task_ids.dset};
        for (int i = 0; i < 5; i++)
            if (handles[i] >= 0) H5Dclose(handles[i]);
        if (w.file >= 0) H5Fclose(w.file);
        unlink(w.tmp_path);
    }
    free(w.token_buf);
    free(w.mask_buf);
    free(w.offset_buf);
    free(w.label_buf);
    free(w.task_buf);
    return status;
}
