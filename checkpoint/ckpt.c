/* ckpt.c: training-state checkpoints (layout and guarantees in ckpt.h).
 * Atomicity: every rank writes into `step-N.tmp-<tag>/` (each file itself written to a temporary
 * name, fsynced, renamed), rank 0 then writes manifest.json, fsyncs the directory and renames it
 * to `step-N`, fsyncs the parent and switches the `latest` symlink by renaming a fresh one over
 * it. A crash at any moment leaves either a complete step directory or a temporary one that
 * nothing reads. Older checkpoints are removed only after a newer one is complete.
 * Asynchrony: a save copies the buffers into one host snapshot (the only time training waits),
 * and a libuv worker, driven by a loop on a dedicated thread, writes the snapshot. */
#define _GNU_SOURCE /* nftw, posix_fadvise */
#include "ckpt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "../kernels/ops.h"
#include "safetensors.h"

#define CKPT_PATH_MAX 1400
#define CKPT_MANIFEST "manifest.json"
#define CKPT_FORMAT "dstrain-checkpoint"
#define CKPT_MAX_JSON_BYTES ((size_t)256 << 20)
#define CKPT_MAX_DIM ((int64_t)1 << 40)

/* ---- CRC-32C ----------------------------------------------------------------------------------
 */

static uint32_t crc32c_table[8][256];
static atomic_int crc32c_ready;

static void crc32c_init_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc32c_table[t][i] =
                (crc32c_table[t - 1][i] >> 8) ^ crc32c_table[0][crc32c_table[t - 1][i] & 0xff];
    atomic_store(&crc32c_ready, 1);
}

/* Slicing-by-8, for machines without the SSE4.2 instruction. */
static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t n)
{
    if (!atomic_load(&crc32c_ready)) crc32c_init_table();
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = crc32c_table[7][v & 0xff] ^ crc32c_table[6][(v >> 8) & 0xff] ^
              crc32c_table[5][(v >> 16) & 0xff] ^ crc32c_table[4][(v >> 24) & 0xff] ^
              crc32c_table[3][(v >> 32) & 0xff] ^ crc32c_table[2][(v >> 40) & 0xff] ^
              crc32c_table[1][(v >> 48) & 0xff] ^ crc32c_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ crc32c_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *data, size_t n)
{
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        crc = crc32c_hw(crc, data, n);
    else
#endif
        crc = crc32c_soft(crc, data, n);
    return ~crc;
}

/* ---- small file-system helpers ----------------------------------------------------------------
 */

int ckpt_plain_name(const char *name)
{
    if (!name || !name[0] || strlen(name) > 255 || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0)
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p == '/' || *p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

static int mkdir_p(const char *path)
{
    char tmp[CKPT_PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return ds_error(DS_ERR_INPUT, "%.200s...: path too long", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return ds_error(DS_ERR_INPUT, "%s: cannot create: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return ds_error(DS_ERR_INPUT, "%s: cannot create: %s", tmp, strerror(errno));
    return DS_OK;
}

static int fsync_path(const char *path, int directory)
{
    int fd = open(path, (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT ? -1 : 0;
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int write_all_fd(int fd, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n < ((size_t)1 << 30) ? n : ((size_t)1 << 30));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Write a small file durably: temporary name, fsync, rename. *crc gets its CRC-32C. */
static int write_file_atomic(const char *path, const char *text, size_t len, uint32_t *crc)
{
    char tmp[CKPT_PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ds_error(DS_ERR_INTERNAL, "%s: cannot create: %s", tmp, strerror(errno));
    const char *step = "write";
    int rc = write_all_fd(fd, text, len);
    if (rc == 0) step = "fsync", rc = fsync(fd);
    int err = errno;
    if (close(fd) != 0 && rc == 0) rc = -1, err = errno, step = "close";
    if (rc == 0 && rename(tmp, path) != 0) rc = -1, err = errno, step = "rename";
    if (rc != 0) {
        unlink(tmp);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot write (%s): %s", path, step, strerror(err));
    }
    if (crc) *crc = crc32c_update(0, text, len);
    return DS_OK;
}

/* Size and CRC-32C of a file, read in large blocks. */
static int file_checksum(const char *path, uint64_t *size, uint32_t *crc)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ds_error(DS_ERR_INPUT, "%s: not a regular file", path);
    }
    const size_t block = (size_t)8 << 20;
    unsigned char *buf = ds_malloc(block);
    if (!buf) {
        close(fd);
        return DS_ERR_INTERNAL;
    }
    uint32_t c = 0;
    uint64_t total = 0;
    int status = DS_OK;
    for (;;) {
        ssize_t r = read(fd, buf, block);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            status = ds_error(DS_ERR_INPUT, "%s: cannot read: %s", path, strerror(errno));
            break;
        }
        if (r == 0) break;
        c = crc32c_update(c, buf, (size_t)r);
        total += (uint64_t)r;
    }
    /* The pages were just read to be checked; keep them out of the way of training data. */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    free(buf);
    close(fd);
    *size = total;
    *crc = c;
    return status;
}

static int read_json_file(const char *path, cJSON **out)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) ||
        (size_t)st.st_size > CKPT_MAX_JSON_BYTES) {
        fclose(fp);
        return ds_error(DS_ERR_INPUT, "%s: not a regular file of a sensible size", path);
    }
    char *text = ds_malloc((size_t)st.st_size + 1);
    if (!text) {
        fclose(fp);
        return DS_ERR_INTERNAL;
    }
    size_t n = fread(text, 1, (size_t)st.st_size, fp);
    fclose(fp);
    text[n] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ds_error(DS_ERR_INPUT, "%s: not a valid JSON object", path);
    }
    *out = root;
    return DS_OK;
}

/* ---- pieces: what one rank stores of one tensor ---------------------------------------------- */

/* A tensor of full shape rows x cols (cols 1 for vectors); a piece holds the box
 * [r0, r1) x [c0, c1) (the tensor-parallel slice) and, of that box flattened row-major, the
 * elements [b, e) (a ZeRO range may cut a box anywhere). */
typedef struct Piece {
    int64_t rows, cols;
    int64_t r0, r1, c0, c1;
    int64_t b, e;
} Piece;

static int64_t piece_width(const Piece *p)
{
    return p->c1 - p->c0;
}

static Piece piece_of(const ParamInfo *pi, int64_t b, int64_t e)
{
    Piece p = {0};
    p.rows = pi->shape[0];
    p.cols = pi->ndim == 2 ? pi->shape[1] : 1;
    p.r0 = 0, p.r1 = p.rows, p.c0 = 0, p.c1 = p.cols;
    if (pi->split_dim == 0) p.r0 = pi->slice_start, p.r1 = pi->slice_start + pi->slice_len;
    if (pi->split_dim == 1) p.c0 = pi->slice_start, p.c1 = pi->slice_start + pi->slice_len;
    p.b = b, p.e = e;
    return p;
}

/* This rank's part of parameter pi within the flat range [lo, hi): local [*b, *e); 0 if none. */
static int param_range(const ParamInfo *pi, size_t lo, size_t hi, int64_t *b, int64_t *e)
{
    size_t s = pi->offset > lo ? pi->offset : lo;
    size_t t = pi->offset + pi->numel < hi ? pi->offset + pi->numel : hi;
    if (s >= t) return 0;
    *b = (int64_t)(s - pi->offset);
    *e = (int64_t)(t - pi->offset);
    return 1;
}

/* Copy the overlap of src (data holds src's elements [b, e)) into dst (data holds dst's [b, e)).
 * Returns the number of elements copied. */
static int64_t piece_copy(const Piece *src, const float *sdata, const Piece *dst, float *ddata)
{
    int64_t copied = 0;
    const int64_t r_lo = src->r0 > dst->r0 ? src->r0 : dst->r0;
    const int64_t r_hi = src->r1 < dst->r1 ? src->r1 : dst->r1;
    const int64_t c_lo = src->c0 > dst->c0 ? src->c0 : dst->c0;
    const int64_t c_hi = src->c1 < dst->c1 ? src->c1 : dst->c1;
    if (r_lo >= r_hi || c_lo >= c_hi) return 0;
    const int64_t sw = piece_width(src), dw = piece_width(dst);
    for (int64_t r = r_lo; r < r_hi; r++) {
        const int64_t sbase = (r - src->r0) * sw, dbase = (r - dst->r0) * dw;
        int64_t lo = c_lo, hi = c_hi;
        /* columns whose flat index falls inside each side's range */
        int64_t v = src->c0 + (src->b - sbase);
        if (v > lo) lo = v;
        v = src->c0 + (src->e - sbase);
        if (v < hi) hi = v;
        v = dst->c0 + (dst->b - dbase);
        if (v > lo) lo = v;
        v = dst->c0 + (dst->e - dbase);
        if (v < hi) hi = v;
        if (lo >= hi) continue;
        memcpy(ddata + (dbase + lo - dst->c0 - dst->b), sdata + (sbase + lo - src->c0 - src->b),
               (size_t)(hi - lo) * sizeof(float));
        copied += hi - lo;
    }
    return copied;
}

/* ---- the writer -------------------------------------------------------------------------------
 */

typedef struct JobPiece {
    char key[PARAM_NAME_MAX + 48];
    char buffer[40];
    int buf;            /* index into the caller's buffer list */
    int param;          /* index into the table */
    int64_t b, e;       /* local flat range */
    size_t snap_offset; /* bytes into the snapshot */
} JobPiece;

typedef struct JobBlob {
    char name[64];
    size_t snap_offset, size;
} JobBlob;

typedef struct CkptJob {
    int step;
    char *state_json; /* the manifest's "state" and "model" objects, prebuilt */
    char *config_yaml, *hf_config_json;
    JobPiece *pieces;
    int npieces, cap_pieces;
    JobBlob *blobs;
    int nblobs, cap_blobs;
    size_t bytes;
    double stall, t_start, t_snapshot, t_written; /* snapshot: the copy is done */
    int status;
    char error[2048];
} CkptJob;

struct CkptWriter {
    CkptWriterOptions opt;
    char dir[CKPT_PATH_MAX];
    ParamTable table;
    unsigned char *snap;
    size_t snap_cap;
    CkptJob job;
    int in_flight; /* a job was started and its result not yet reported */
    int done;      /* the job finished (worker side) */
    int last_step;
    char last_path[CKPT_PATH_MAX];
    /* libuv worker */
    int loop_started;
    uv_loop_t loop;
    uv_async_t wake;
    uv_work_t work;
    uv_thread_t thread;
    uv_mutex_t lock;
    uv_cond_t cond;
    int submit, stopping;
};

static void job_fail(CkptJob *job, int status)
{
    job->status = status;
    snprintf(job->error, sizeof(job->error), "%s", ds_last_error());
}

static void step_dir_name(char *out, size_t cap, int step)
{
    snprintf(out, cap, "step-%08d", step);
}

static void tmp_dir_path(const CkptWriter *w, int step, char *out, size_t cap)
{
    snprintf(out, cap, "%s/step-%08d.tmp-%ld", w->dir, step, w->opt.tmp_tag);
}

static void rank_base(const CkptLayout *l, int tp_rank, int dp_rank, char *out, size_t cap)
{
    (void)l;
    snprintf(out, cap, "rank-tp%d-dp%d", tp_rank, dp_rank);
}

static char *hex32(uint32_t v, char *buf)
{
    snprintf(buf, 9, "%08" PRIx32, v);
    return buf;
}

/* Size and CRC-32C of a shard just written from items: the header is read back from the file
 * and the data summed from memory (the writer lays the items out in order), so the bytes are
 * not read twice. The file's size must be exactly header plus data. */
static int shard_checksum(const char *path, const STWriteItem *items, int n, uint64_t *size,
                          uint32_t *crc)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds_error(DS_ERR_INTERNAL, "%s: cannot open: %s", path, strerror(errno));
    unsigned char len8[8];
    uint64_t hlen = 0, data = 0;
    struct stat st;
    int ok = read(fd, len8, 8) == 8 && fstat(fd, &st) == 0;
    for (int i = 7; ok && i >= 0; i--)
        hlen = (hlen << 8) | len8[i];
    char *header = ok && hlen <= ((uint64_t)100 << 20) ? ds_malloc((size_t)hlen) : NULL;
    ok = header && read(fd, header, (size_t)hlen) == (ssize_t)hlen;
    close(fd);
    uint32_t c = crc32c_update(0, len8, 8);
    if (ok) c = crc32c_update(c, header, (size_t)hlen);
    free(header);
    for (int i = 0; ok && i < n; i++) {
        size_t bytes = dtype_size(items[i].dtype);
        for (int d = 0; d < items[i].ndim; d++)
            bytes *= (size_t)items[i].shape[d];
        c = crc32c_update(c, items[i].data, bytes);
        data += bytes;
    }
    if (!ok || (uint64_t)st.st_size != 8 + hlen + data)
        return ds_error(DS_ERR_INTERNAL, "%s: the written file does not read back as written",
                        path);
    *size = (uint64_t)st.st_size;
    *crc = c;
    return DS_OK;
}

/* This rank's shard and its description (rank-tpX-dpY.safetensors and .json). */
static int job_write_rank_files(CkptWriter *w, CkptJob *job, const char *tmpdir)
{
    const CkptLayout *l = &w->opt.layout;
    char base[64], path[CKPT_PATH_MAX + 128];
    rank_base(l, l->tp_rank, l->dp_rank, base, sizeof(base));
    STWriteItem *items = ds_calloc((size_t)(job->npieces + job->nblobs + 1), sizeof(STWriteItem));
    if (!items) return DS_ERR_INTERNAL;
    int n = 0;
    for (int i = 0; i < job->npieces; i++) {
        const JobPiece *jp = &job->pieces[i];
        const ParamInfo *pi = &w->table.items[jp->param];
        STWriteItem *it = &items[n++];
        it->name = jp->key;
        it->dtype = DT_F32;
        it->data = w->snap + jp->snap_offset;
        if ((size_t)(jp->e - jp->b) == pi->numel) {
            /* a whole slice keeps its 2-D shape, for people who open the file */
            it->ndim = pi->ndim;
            it->shape[0] = pi->split_dim == 0 ? pi->slice_len : pi->shape[0];
            if (pi->ndim == 2) it->shape[1] = pi->split_dim == 1 ? pi->slice_len : pi->shape[1];
        } else {
            it->ndim = 1;
            it->shape[0] = jp->e - jp->b;
        }
    }
    char keys[64][80];
    for (int i = 0; i < job->nblobs && i < 64; i++) {
        snprintf(keys[i], sizeof(keys[i]), "blob/%s", job->blobs[i].name);
        STWriteItem *it = &items[n++];
        it->name = keys[i];
        it->dtype = DT_U8;
        it->ndim = 1;
        it->shape[0] = (int64_t)job->blobs[i].size;
        it->data = w->snap + job->blobs[i].snap_offset;
    }
    snprintf(path, sizeof(path), "%s/%s.safetensors", tmpdir, base);
    int status = safetensors_write(path, items, n, "{\"format\":\"" CKPT_FORMAT "\"}");
    uint64_t size = 0;
    uint32_t crc = 0;
    if (status == DS_OK) status = shard_checksum(path, items, n, &size, &crc);
    free(items);
    if (status != DS_OK) return status;

    cJSON *root = cJSON_CreateObject(), *tensors = cJSON_CreateArray(),
          *blobs = cJSON_CreateArray();
    char name[80], hex[16];
    snprintf(name, sizeof(name), "%s.safetensors", base);
    cJSON_AddStringToObject(root, "file", name);
    cJSON_AddNumberToObject(root, "size", (double)size);
    cJSON_AddStringToObject(root, "crc32c", hex32(crc, hex));
    cJSON_AddNumberToObject(root, "tp_rank", l->tp_rank);
    cJSON_AddNumberToObject(root, "dp_rank", l->dp_rank);
    for (int i = 0; i < job->npieces; i++) {
        const JobPiece *jp = &job->pieces[i];
        const ParamInfo *pi = &w->table.items[jp->param];
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "buffer", jp->buffer);
        cJSON_AddStringToObject(t, "name", pi->name);
        cJSON_AddStringToObject(t, "file", name);
        cJSON_AddStringToObject(t, "key", jp->key);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < pi->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)pi->shape[d]));
        cJSON_AddNumberToObject(t, "split_dim", pi->split_dim);
        cJSON *slice = cJSON_AddArrayToObject(t, "slice");
        cJSON_AddItemToArray(slice, cJSON_CreateNumber((double)pi->slice_start));
        cJSON_AddItemToArray(slice, cJSON_CreateNumber((double)pi->slice_len));
        cJSON *range = cJSON_AddArrayToObject(t, "range");
        cJSON_AddItemToArray(range, cJSON_CreateNumber((double)jp->b));
        cJSON_AddItemToArray(range, cJSON_CreateNumber((double)jp->e));
        cJSON_AddItemToArray(tensors, t);
    }
    for (int i = 0; i < job->nblobs; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "name", job->blobs[i].name);
        cJSON_AddStringToObject(b, "file", name);
        cJSON_AddStringToObject(b, "key", keys[i]);
        cJSON_AddNumberToObject(b, "size", (double)job->blobs[i].size);
        cJSON_AddNumberToObject(b, "tp_rank", l->tp_rank);
        cJSON_AddNumberToObject(b, "dp_rank", l->dp_rank);
        cJSON_AddItemToArray(blobs, b);
    }
    cJSON_AddItemToObject(root, "tensors", tensors);
    cJSON_AddItemToObject(root, "blobs", blobs);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!text) return ds_error(DS_ERR_INTERNAL, "out of memory");
    snprintf(path, sizeof(path), "%s/%s.json", tmpdir, base);
    status = write_file_atomic(path, text, strlen(text), NULL);
    cJSON_free(text);
    return status;
}

/* Add {name, size, crc32c} of tmpdir/name to files. */
static int add_file_entry(cJSON *files, const char *tmpdir, const char *name)
{
    char path[CKPT_PATH_MAX + 128], hex[16];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    uint64_t size;
    uint32_t crc;
    DS_TRY(file_checksum(path, &size, &crc));
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "name", name);
    cJSON_AddNumberToObject(f, "size", (double)size);
    cJSON_AddStringToObject(f, "crc32c", hex32(crc, hex));
    cJSON_AddItemToArray(files, f);
    return DS_OK;
}

static int cmp_int_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

/* Steps of the complete checkpoints (a directory step-N with a manifest), newest first. */
static int list_complete(const char *dir, int **steps, int *count)
{
    *steps = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT
                   ? DS_OK
                   : ds_error(DS_ERR_INPUT, "%s: cannot list: %s", dir, strerror(errno));
    int cap = 16, n = 0;
    int *s = ds_malloc((size_t)cap * sizeof(int));
    if (!s) {
        closedir(d);
        return DS_ERR_INTERNAL;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        int step, used = 0;
        if (sscanf(de->d_name, "step-%d%n", &step, &used) != 1 || de->d_name[used] != 0 ||
            step < 0 || strlen(de->d_name) != 13)
            continue;
        char path[CKPT_PATH_MAX + 300];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s/%s", dir, de->d_name, CKPT_MANIFEST);
        if (stat(path, &st) != 0) continue;
        if (n == cap) {
            int *t = realloc(s, (size_t)(cap *= 2) * sizeof(int));
            if (!t) break;
            s = t;
        }
        s[n++] = step;
    }
    closedir(d);
    qsort(s, (size_t)n, sizeof(int), cmp_int_desc);
    *steps = s;
    *count = n;
    return DS_OK;
}

/* Keep the newest `keep` and every multiple of keep_every; remove the rest. */
static void apply_retention(const CkptWriter *w)
{
    int *steps, n;
    if (list_complete(w->dir, &steps, &n) != DS_OK) return;
    for (int i = w->opt.keep; i < n; i++) {
        if (w->opt.keep_every > 0 && steps[i] % w->opt.keep_every == 0) continue;
        char path[CKPT_PATH_MAX + 32], name[32];
        step_dir_name(name, sizeof(name), steps[i]);
        snprintf(path, sizeof(path), "%s/%s", w->dir, name);
        /* Only a real directory is removed: a step-N that is a symbolic link (to another run's
         * checkpoint, say) was not made by this run, and nothing is deleted through it. The
         * directory is opened without following a link, and the manifest unlinked inside it,
         * so a link swapped in after a check cannot redirect the delete. */
        int dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd < 0) {
            if (errno != ENOENT)
                fprintf(stderr,
                        "dstrain: warning: old checkpoint %s is not a directory of this run (%s); "
                        "left in place\n",
                        path, errno == ELOOP || errno == ENOTDIR ? "a symbolic link" : strerror(errno));
            continue;
        }
        /* the manifest goes first, so a half-removed directory is never taken as complete */
        unlinkat(dfd, CKPT_MANIFEST, 0);
        close(dfd);
        if (rm_rf(path) != 0)
            fprintf(stderr, "dstrain: warning: cannot remove old checkpoint %s: %s\n", path,
                    strerror(errno));
    }
    free(steps);
}

/* Rank 0, after every rank wrote its files: manifest, rename into place, latest, retention. */
static int job_commit(CkptWriter *w, CkptJob *job)
{
    const CkptLayout *l = &w->opt.layout;
    char tmpdir[CKPT_PATH_MAX], final[CKPT_PATH_MAX + 32], name[32], path[CKPT_PATH_MAX + 128];
    tmp_dir_path(w, job->step, tmpdir, sizeof(tmpdir));
    step_dir_name(name, sizeof(name), job->step);
    snprintf(final, sizeof(final), "%s/%s", w->dir, name);

    cJSON *root = cJSON_Parse(job->state_json);
    if (!root) return ds_error(DS_ERR_INTERNAL, "checkpoint: cannot build the manifest");
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
    cJSON *blobs = cJSON_AddArrayToObject(root, "blobs");
    int status = add_file_entry(files, tmpdir, "config.yaml");
    if (status == DS_OK) status = add_file_entry(files, tmpdir, "config.json");
    for (int d = 0; d < l->dp && status == DS_OK; d++) {
        for (int t = 0; t < l->tp && status == DS_OK; t++) {
            char base[64], fname[96];
            rank_base(l, t, d, base, sizeof(base));
            snprintf(fname, sizeof(fname), "%s.json", base);
            snprintf(path, sizeof(path), "%s/%s", tmpdir, fname);
            cJSON *rank;
            if ((status = read_json_file(path, &rank)) != DS_OK) break;
            status = add_file_entry(files, tmpdir, fname);
            /* the shard: its size and checksum as the rank computed them */
            cJSON *f = cJSON_CreateObject();
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(rank, "file");
            const cJSON *sz = cJSON_GetObjectItemCaseSensitive(rank, "size");
            const cJSON *cr = cJSON_GetObjectItemCaseSensitive(rank, "crc32c");
            if (!cJSON_IsString(fn) || !cJSON_IsNumber(sz) || !cJSON_IsString(cr)) {
                cJSON_Delete(f);
                cJSON_Delete(rank);
                status = ds_error(DS_ERR_INTERNAL, "%s: incomplete rank description", path);
                break;
            }
            cJSON_AddStringToObject(f, "name", fn->valuestring);
            cJSON_AddNumberToObject(f, "size", sz->valuedouble);
            cJSON_AddStringToObject(f, "crc32c", cr->valuestring);
            cJSON_AddItemToArray(files, f);
            cJSON *arr = cJSON_DetachItemFromObjectCaseSensitive(rank, "tensors");
            for (cJSON *it = arr ? arr->child : NULL; it;) {
                cJSON *next = it->next;
                cJSON_AddItemToArray(tensors, cJSON_DetachItemViaPointer(arr, it));
                it = next;
            }
            cJSON_Delete(arr);
            arr = cJSON_DetachItemFromObjectCaseSensitive(rank, "blobs");
            for (cJSON *it = arr ? arr->child : NULL; it;) {
                cJSON *next = it->next;
                cJSON_AddItemToArray(blobs, cJSON_DetachItemViaPointer(arr, it));
                it = next;
            }
            cJSON_Delete(arr);
            cJSON_Delete(rank);
        }
    }
    char *text = status == DS_OK ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (status != DS_OK) return status;
    if (!text) return ds_error(DS_ERR_INTERNAL, "checkpoint: out of memory for the manifest");
    snprintf(path, sizeof(path), "%s/%s", tmpdir, CKPT_MANIFEST);
    status = write_file_atomic(path, text, strlen(text), NULL);
    cJSON_free(text);
    if (status != DS_OK) return status;
    if (fsync_path(tmpdir, 1) != 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot fsync: %s", tmpdir, strerror(errno));

    /* A step directory of the same name (a damaged checkpoint that was skipped on resume) is
     * moved aside first, then removed once the new one is in place. */
    char old[CKPT_PATH_MAX + 64];
    struct stat st;
    old[0] = 0;
    if (lstat(final, &st) == 0) {
        snprintf(old, sizeof(old), "%s/%s.old-%ld", w->dir, name, w->opt.tmp_tag);
        rm_rf(old);
        if (rename(final, old) != 0)
            return ds_error(DS_ERR_INTERNAL, "%s: cannot move the old one aside: %s", final,
                            strerror(errno));
    }
    if (rename(tmpdir, final) != 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot rename into place: %s", tmpdir,
                        strerror(errno));
    if (fsync_path(w->dir, 1) != 0)
        return ds_error(DS_ERR_INTERNAL, "%s: cannot fsync: %s", w->dir, strerror(errno));
    if (old[0]) rm_rf(old);

    /* latest -> step-N, switched by renaming a new link over the old one */
    char link_tmp[CKPT_PATH_MAX + 64], link_path[CKPT_PATH_MAX + 16];
    snprintf(link_tmp, sizeof(link_tmp), "%s/latest.tmp-%ld", w->dir, w->opt.tmp_tag);
    snprintf(link_path, sizeof(link_path), "%s/latest", w->dir);
    unlink(link_tmp);
    if (symlink(name, link_tmp) != 0 || rename(link_tmp, link_path) != 0) {
        int err = errno;
        unlink(link_tmp);
        return ds_error(DS_ERR_INTERNAL, "%s: cannot update: %s", link_path, strerror(err));
    }
    fsync_path(w->dir, 1);
    apply_retention(w);
    return DS_OK;
}

/* Everything this rank does for one save; rank 0 of a single-rank run also commits. */
static void job_run(CkptWriter *w)
{
    CkptJob *job = &w->job;
    const CkptLayout *l = &w->opt.layout;
    char tmpdir[CKPT_PATH_MAX], path[CKPT_PATH_MAX + 64];
    tmp_dir_path(w, job->step, tmpdir, sizeof(tmpdir));
    int status = mkdir_p(tmpdir);
    const int rank0 = l->tp_rank == 0 && l->dp_rank == 0;
    if (status == DS_OK && rank0) {
        snprintf(path, sizeof(path), "%s/config.yaml", tmpdir);
        status = write_file_atomic(path, job->config_yaml, strlen(job->config_yaml), NULL);
        if (status == DS_OK) {
            snprintf(path, sizeof(path), "%s/config.json", tmpdir);
            status =
                write_file_atomic(path, job->hf_config_json, strlen(job->hf_config_json), NULL);
        }
    }
    if (status == DS_OK) status = job_write_rank_files(w, job, tmpdir);
    if (status == DS_OK && !w->opt.all_min) status = job_commit(w, job);
    job->t_written = ds_now();
    if (status != DS_OK) {
        job_fail(job, ds_error_context(status, "checkpoint step %d", job->step));
        /* free the space a failed save took, so that training (and the next save) can go on */
        if (!w->opt.all_min) rm_rf(tmpdir);
    }
}

static void work_cb(uv_work_t *req)
{
    job_run(req->data);
}

static void after_work_cb(uv_work_t *req, int status)
{
    CkptWriter *w = req->data;
    (void)status;
    uv_mutex_lock(&w->lock);
    w->done = 1;
    uv_cond_broadcast(&w->cond);
    uv_mutex_unlock(&w->lock);
}

static void wake_cb(uv_async_t *handle)
{
    CkptWriter *w = handle->data;
    uv_mutex_lock(&w->lock);
    int submit = w->submit, stopping = w->stopping;
    w->submit = 0;
    uv_mutex_unlock(&w->lock);
    if (submit) {
        w->work.data = w;
        int rc = uv_queue_work(&w->loop, &w->work, work_cb, after_work_cb);
        if (rc != 0) {
            /* no worker: write on the loop thread instead */
            job_run(w);
            after_work_cb(&w->work, 0);
        }
    }
    if (stopping) uv_close((uv_handle_t *)&w->wake, NULL);
}

static void loop_main(void *arg)
{
    CkptWriter *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static void remove_stale(const CkptWriter *w)
{
    DIR *d = opendir(w->dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        char path[CKPT_PATH_MAX + 300], manifest[CKPT_PATH_MAX + 320];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", w->dir, de->d_name);
        snprintf(manifest, sizeof(manifest), "%s/%s", path, CKPT_MANIFEST);
        int step, used = 0;
        const int step_dir = sscanf(de->d_name, "step-%d%n", &step, &used) == 1 &&
                             de->d_name[used] == 0 && strlen(de->d_name) == 13;
        if ((strncmp(de->d_name, "step-", 5) == 0 &&
             (strstr(de->d_name, ".tmp-") || strstr(de->d_name, ".old-"))) ||
            strncmp(de->d_name, "latest.tmp-", 11) == 0 ||
            (step_dir && stat(manifest, &st) != 0)) /* a removal that was interrupted */
            rm_rf(path);
    }
    closedir(d);
}

int ckpt_writer_open(const CkptWriterOptions *opt, const ParamTable *table, CkptWriter **out)
{
    *out = NULL;
    if (!opt->dir || !opt->dir[0]) return ds_error(DS_ERR_INPUT, "checkpoint.dir: empty");
    if (opt->layout.tp < 1 || opt->layout.dp < 1 || opt->layout.tp_rank < 0 ||
        opt->layout.tp_rank >= opt->layout.tp || opt->layout.dp_rank < 0 ||
        opt->layout.dp_rank >= opt->layout.dp)
        return ds_error(DS_ERR_INTERNAL, "checkpoint: invalid layout");
    CkptWriter *w = ds_calloc(1, sizeof(*w));
    if (!w) return DS_ERR_INTERNAL;
    w->opt = *opt;
    w->last_step = -1;
    if (snprintf(w->dir, sizeof(w->dir), "%s", opt->dir) >= (int)sizeof(w->dir)) {
        free(w);
        return ds_error(DS_ERR_INPUT, "checkpoint.dir: path too long");
    }
    w->opt.dir = w->dir;
    w->table.count = table->count;
    w->table.total = table->total;
    w->table.items = ds_malloc((size_t)(table->count ? table->count : 1) * sizeof(ParamInfo));
    if (!w->table.items) {
        free(w);
        return DS_ERR_INTERNAL;
    }
    memcpy(w->table.items, table->items, (size_t)table->count * sizeof(ParamInfo));
    int status = mkdir_p(w->dir);
    if (status != DS_OK) {
        ckpt_writer_close(w);
        return ds_error_context(status, "checkpoint.dir");
    }
    if (opt->layout.tp_rank == 0 && opt->layout.dp_rank == 0) remove_stale(w);
    if (opt->async) {
        if (uv_loop_init(&w->loop) != 0 || uv_mutex_init(&w->lock) != 0 ||
            uv_cond_init(&w->cond) != 0 || uv_async_init(&w->loop, &w->wake, wake_cb) != 0) {
            free(w->table.items);
            free(w);
            return ds_error(DS_ERR_INTERNAL, "checkpoint: cannot start the writer loop");
        }
        w->wake.data = w;
        if (uv_thread_create(&w->thread, loop_main, w) != 0) {
            uv_close((uv_handle_t *)&w->wake, NULL);
            uv_run(&w->loop, UV_RUN_DEFAULT);
            uv_loop_close(&w->loop);
            free(w->table.items);
            free(w);
            return ds_error(DS_ERR_INTERNAL, "checkpoint: cannot start the writer thread");
        }
        w->loop_started = 1;
    }
    *out = w;
    return DS_OK;
}

static int job_add_piece(CkptJob *job, const char *prefix, int buf, int param, const char *name,
                         int64_t b, int64_t e, size_t snap_offset)
{
    if (job->npieces == job->cap_pieces) {
        int cap = job->cap_pieces ? job->cap_pieces * 2 : 64;
        JobPiece *p = realloc(job->pieces, (size_t)cap * sizeof(JobPiece));
        if (!p) return ds_error(DS_ERR_INTERNAL, "out of memory");
        job->pieces = p;
        job->cap_pieces = cap;
    }
    JobPiece *jp = &job->pieces[job->npieces++];
    snprintf(jp->key, sizeof(jp->key), "%s/%s", prefix, name);
    snprintf(jp->buffer, sizeof(jp->buffer), "%s", prefix);
    jp->buf = buf;
    jp->param = param;
    jp->b = b;
    jp->e = e;
    jp->snap_offset = snap_offset;
    return DS_OK;
}

static int valid_token(const char *s, size_t max)
{
    if (!s || !s[0] || strlen(s) >= max) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

/* Build the job's piece list and its snapshot size; then copy. */
static int job_prepare(CkptWriter *w, const CkptMeta *meta, const CkptBuffer *bufs, int nbufs,
                       const CkptBlob *blobs, int nblobs)
{
    CkptJob *job = &w->job;
    const CkptLayout *l = &w->opt.layout;
    free(job->state_json);
    free(job->config_yaml);
    free(job->hf_config_json);
    job->state_json = job->config_yaml = job->hf_config_json = NULL;
    job->npieces = 0;
    job->nblobs = 0;
    job->status = DS_OK;
    job->error[0] = 0;
    job->step = meta->step;
    size_t bytes = 0;
    for (int k = 0; k < nbufs; k++) {
        const CkptBuffer *cb = &bufs[k];
        if (!valid_token(cb->prefix, 40))
            return ds_error(DS_ERR_INTERNAL, "checkpoint: invalid buffer name");
        for (int j = 0; j < k; j++)
            if (strcmp(bufs[j].prefix, cb->prefix) == 0)
                return ds_error(DS_ERR_INTERNAL, "checkpoint: buffer %s given twice", cb->prefix);
        if (cb->replicated_over_dp && l->dp_rank >= (l->ep > 1 ? l->ep : 1)) continue;
        const size_t lo = cb->flat_begin, hi = cb->flat_end ? cb->flat_end : w->table.total;
        for (int i = 0; i < w->table.count; i++) {
            const ParamInfo *pi = &w->table.items[i];
            int64_t b, e;
            /* another tp rank saves the same values: replicated tensors and shared kv heads */
            if (pi->tp_copy || (pi->split_dim < 0 && l->tp_rank != 0)) continue;
            if (!param_range(pi, lo, hi, &b, &e)) continue;
            DS_TRY(job_add_piece(job, cb->prefix, k, i, pi->name, b, e, bytes));
            bytes += (size_t)(e - b) * sizeof(float);
        }
    }
    if (nblobs > 64) return ds_error(DS_ERR_INTERNAL, "checkpoint: too many blobs");
    job->blobs = realloc(job->blobs, (size_t)(nblobs ? nblobs : 1) * sizeof(JobBlob));
    if (!job->blobs) return ds_error(DS_ERR_INTERNAL, "out of memory");
    for (int i = 0; i < nblobs; i++) {
        if (!valid_token(blobs[i].name, 64))
            return ds_error(DS_ERR_INTERNAL, "checkpoint: invalid blob name");
        snprintf(job->blobs[i].name, sizeof(job->blobs[i].name), "%s", blobs[i].name);
        job->blobs[i].snap_offset = bytes;
        job->blobs[i].size = blobs[i].size;
        bytes += DS_ALIGN_UP(blobs[i].size, 8);
    }
    job->nblobs = nblobs;
    if (bytes > w->snap_cap) {
        free(w->snap);
        w->snap = ds_aligned_alloc(PARAM_ALIGN_BYTES, bytes);
        w->snap_cap = w->snap ? bytes : 0;
        if (!w->snap) return DS_ERR_INTERNAL;
    }
    job->bytes = bytes;

    /* the snapshot: the one copy training waits for */
    for (int i = 0; i < job->npieces; i++) {
        const JobPiece *jp = &job->pieces[i];
        const ParamInfo *pi = &w->table.items[jp->param];
        const float *src = bufs[jp->buf].base + pi->offset + jp->b;
        const size_t n = (size_t)(jp->e - jp->b) * sizeof(float);
        const Backend *device = bufs[jp->buf].device;
        if (device)
            device->mem_to_host(device, w->snap + jp->snap_offset, src, n);
        else
            memcpy(w->snap + jp->snap_offset, src, n);
    }
    for (int i = 0; i < nblobs; i++)
        if (blobs[i].size)
            memcpy(w->snap + job->blobs[i].snap_offset, blobs[i].data, blobs[i].size);

    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", CKPT_FORMAT);
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddNumberToObject(root, "step", meta->step);
    cJSON *state = cJSON_AddObjectToObject(root, "state");
    cJSON_AddNumberToObject(state, "optim_t", meta->optim_t);
    cJSON_AddNumberToObject(state, "lr", meta->lr);
    cJSON_AddNumberToObject(state, "tokens", meta->tokens);
    cJSON_AddNumberToObject(state, "seed", (double)meta->seed);
    cJSON_AddNumberToObject(state, "train_steps", meta->train_steps);
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "path", meta->model_path ? meta->model_path : "");
    cJSON_AddStringToObject(model, "preset", meta->model_preset ? meta->model_preset : "");
    cJSON_AddStringToObject(model, "config", "config.json");
    cJSON *world = cJSON_AddObjectToObject(root, "world");
    cJSON_AddNumberToObject(world, "tp", l->tp);
    cJSON_AddNumberToObject(world, "dp", l->dp);
    cJSON_AddNumberToObject(world, "zero", l->zero);
    if (l->ep > 1) cJSON_AddNumberToObject(world, "ep", l->ep);
    cJSON_AddStringToObject(root, "config", "config.yaml");
    job->state_json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    job->config_yaml = ds_strdup(meta->config_yaml ? meta->config_yaml : "");
    job->hf_config_json = ds_strdup(meta->hf_config_json ? meta->hf_config_json : "{}");
    if (!job->state_json || !job->config_yaml || !job->hf_config_json)
        return ds_error(DS_ERR_INTERNAL, "out of memory");
    return DS_OK;
}

/* The finished job's result, once: a message on success, the error otherwise. Multi-rank runs
 * agree on success and rank 0 commits here (every rank calls this at the same point). */
static int job_report(CkptWriter *w)
{
    CkptJob *job = &w->job;
    w->in_flight = 0;
    w->done = 0;
    int status = job->status;
    if (w->opt.all_min) {
        int ok_all = 0;
        int rc = w->opt.all_min(w->opt.comm_ctx, status == DS_OK, &ok_all);
        if (rc != DS_OK) return rc;
        const int rank0 = w->opt.layout.tp_rank == 0 && w->opt.layout.dp_rank == 0;
        if (ok_all && rank0 && (status = job_commit(w, job)) != DS_OK)
            job_fail(job, ds_error_context(status, "checkpoint step %d", job->step));
        if (!ok_all && status == DS_OK) {
            status = DS_ERR_INTERNAL;
            snprintf(job->error, sizeof(job->error),
                     "checkpoint step %d: another rank failed to write its shard", job->step);
        }
        int committed = 0;
        rc = w->opt.all_min(w->opt.comm_ctx, status == DS_OK, &committed);
        if (rc != DS_OK) return rc;
        if (!committed && status == DS_OK) {
            status = DS_ERR_INTERNAL;
            snprintf(job->error, sizeof(job->error),
                     "checkpoint step %d: rank 0 could not commit it", job->step);
        }
        if (!committed && rank0) {
            char tmpdir[CKPT_PATH_MAX];
            tmp_dir_path(w, job->step, tmpdir, sizeof(tmpdir));
            rm_rf(tmpdir);
        }
    }
    if (status != DS_OK) return ds_error(status, "%s", job->error);
    const double took = job->t_written - job->t_start;
    char name[32];
    step_dir_name(name, sizeof(name), job->step);
    snprintf(w->last_path, sizeof(w->last_path), "%s/%s", w->dir, name);
    w->last_step = job->step;
    if (w->opt.layout.tp_rank != 0 || w->opt.layout.dp_rank != 0) return DS_OK; /* rank 0 logs */
    const double wrote = job->t_written - job->t_snapshot;
    printf("dstrain: checkpoint %s saved: %.1f MB in %.3fs (written in %.3fs, %.0f MB/s), "
           "training stalled %.4fs (%.1f%% of the save)\n",
           w->last_path, job->bytes / 1e6, took, wrote, wrote > 0 ? job->bytes / 1e6 / wrote : 0.0,
           job->stall, took > 0 ? 100.0 * job->stall / took : 0.0);
    fflush(stdout);
    return DS_OK;
}

int ckpt_writer_wait(CkptWriter *w)
{
    if (!w || !w->in_flight) return DS_OK;
    if (w->loop_started) {
        uv_mutex_lock(&w->lock);
        while (!w->done)
            uv_cond_wait(&w->cond, &w->lock);
        uv_mutex_unlock(&w->lock);
    }
    return job_report(w);
}

int ckpt_writer_poll(CkptWriter *w)
{
    if (!w || !w->in_flight) return DS_OK;
    int done = 1;
    if (w->loop_started) {
        uv_mutex_lock(&w->lock);
        done = w->done;
        uv_mutex_unlock(&w->lock);
    }
    if (w->opt.all_min) {
        int all = 0;
        DS_TRY(w->opt.all_min(w->opt.comm_ctx, done, &all));
        done = all;
        if (done) return ckpt_writer_wait(w);
    }
    return done ? job_report(w) : DS_OK;
}

int ckpt_writer_save(CkptWriter *w, const CkptMeta *meta, const CkptBuffer *bufs, int nbufs,
                     const CkptBlob *blobs, int nblobs, double *stall_seconds)
{
    const double t0 = ds_now();
    int previous = ckpt_writer_wait(w);
    char previous_error[2048];
    if (previous != DS_OK) snprintf(previous_error, sizeof(previous_error), "%s", ds_last_error());
    int status = job_prepare(w, meta, bufs, nbufs, blobs, nblobs);
    const double t1 = ds_now();
    w->job.stall = t1 - t0;
    w->job.t_start = t0;
    w->job.t_snapshot = t1;
    if (stall_seconds) *stall_seconds = w->job.stall;
    if (status != DS_OK) return status;
    w->in_flight = 1;
    w->done = 0;
    if (w->loop_started) {
        uv_mutex_lock(&w->lock);
        w->submit = 1;
        uv_mutex_unlock(&w->lock);
        uv_async_send(&w->wake);
    } else {
        job_run(w);
        w->done = 1;
        /* a synchronous save blocks training for all of it */
        w->job.stall = ds_now() - t0;
        if (stall_seconds) *stall_seconds = w->job.stall;
    }
    if (previous != DS_OK) return ds_error(previous, "%s", previous_error);
    return DS_OK;
}

int ckpt_writer_reserve(CkptWriter *w, size_t bytes)
{
    DS_TRY(ckpt_writer_wait(w));
    if (bytes <= w->snap_cap) return DS_OK;
    free(w->snap);
    w->snap = ds_aligned_alloc(PARAM_ALIGN_BYTES, bytes); /* zeroed: the pages are touched */
    w->snap_cap = w->snap ? bytes : 0;
    return w->snap ? DS_OK : DS_ERR_INTERNAL;
}

int ckpt_writer_last_step(const CkptWriter *w)
{
    return w ? w->last_step : -1;
}

const char *ckpt_writer_last_path(const CkptWriter *w)
{
    return w ? w->last_path : "";
}

void ckpt_writer_close(CkptWriter *w)
{
    if (!w) return;
    if (w->loop_started) {
        uv_mutex_lock(&w->lock);
        while (w->in_flight && !w->done)
            uv_cond_wait(&w->cond, &w->lock);
        w->stopping = 1;
        uv_mutex_unlock(&w->lock);
        uv_async_send(&w->wake);
        uv_thread_join(&w->thread);
        uv_loop_close(&w->loop);
        uv_mutex_destroy(&w->lock);
        uv_cond_destroy(&w->cond);
    }
    free(w->job.pieces);
    free(w->job.blobs);
    free(w->job.state_json);
    free(w->job.config_yaml);
    free(w->job.hf_config_json);
    free(w->snap);
    free(w->table.items);
    free(w);
}

/* ---- reading ----------------------------------------------------------------------------------
 */

typedef struct CkFile {
    char name[256];
    uint64_t size;
    uint32_t crc;
    SafetensorsFile st; /* opened on first use */
    int opened;
} CkFile;

typedef struct CkTensor {
    char buffer[40];
    char name[PARAM_NAME_MAX];
    char key[PARAM_NAME_MAX + 48];
    int file;
    int ndim;
    int64_t shape[2];
    int split_dim;
    Piece piece;
} CkTensor;

typedef struct CkBlob {
    char name[64];
    char key[80];
    int file, tp_rank, dp_rank;
    size_t size;
} CkBlob;

struct Ckpt {
    char dir[CKPT_PATH_MAX];
    char manifest_path[CKPT_PATH_MAX + 32];
    cJSON *root;
    int step;
    CkptLayout layout;
    CkFile *files;
    int nfiles;
    CkTensor *tensors;
    int ntensors;
    CkBlob *blobs;
    int nblobs;
};

/* Errors in the manifest name the file and the field. */
#define MF_FAIL(c, ...) mf_fail((c)->manifest_path, __VA_ARGS__)
static int mf_fail(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int mf_fail(const char *path, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return ds_error(DS_ERR_INPUT, "%s: %s", path, what);
}

static int mf_int(const Ckpt *c, const cJSON *obj, const char *where, const char *key, int64_t lo,
                  int64_t hi, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    /* the range first: converting a double outside int64's range (1e300, inf) is undefined */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= (double)lo && v->valuedouble <= (double)hi) ||
        v->valuedouble >= 0x1p63 || v->valuedouble != (double)(int64_t)v->valuedouble)
        return MF_FAIL(c, "%s%s: expected an integer in [%lld, %lld]", where, key, (long long)lo,
                       (long long)hi);
    *out = (int64_t)v->valuedouble;
    return DS_OK;
}

static int mf_string(const Ckpt *c, const cJSON *obj, const char *where, const char *key, char *out,
                     size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= cap)
        return MF_FAIL(c, "%s%s: expected a string (shorter than %zu bytes)", where, key, cap);
    memcpy(out, v->valuestring, strlen(v->valuestring) + 1);
    return DS_OK;
}

static int mf_pair(const Ckpt *c, const cJSON *obj, const char *where, const char *key,
                   int64_t out[2])
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
        return MF_FAIL(c, "%s%s: expected [a, b]", where, key);
    int i = 0;
    for (const cJSON *x = v->child; x; x = x->next, i++) {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9007199254740992.0 ||
            x->valuedouble != (double)(int64_t)x->valuedouble)
            return MF_FAIL(c, "%s%s: expected non-negative integers", where, key);
        out[i] = (int64_t)x->valuedouble;
    }
    return DS_OK;
}

static int mf_file_index(const Ckpt *c, const char *where, const char *name)
{
    if (!ckpt_plain_name(name))
        return -MF_FAIL(c,
                        "%sfile: \"%.300s\" is not a plain file name inside the checkpoint "
                        "directory",
                        where, name);
    for (int i = 0; i < c->nfiles; i++)
        if (strcmp(c->files[i].name, name) == 0) return i;
    return -MF_FAIL(c, "%sfile: \"%.300s\" is not listed in \"files\"", where, name);
}

static int ckpt_parse(Ckpt *c)
{
    cJSON *root = c->root;
    char fmt[64];
    int64_t v;
    if (mf_string(c, root, "", "format", fmt, sizeof(fmt)) != DS_OK || strcmp(fmt, CKPT_FORMAT))
        return MF_FAIL(c, "format: expected \"%s\"", CKPT_FORMAT);
    DS_TRY(mf_int(c, root, "", "version", 1, 1, &v));
    DS_TRY(mf_int(c, root, "", "step", 0, INT32_MAX, &v));
    c->step = (int)v;
    const cJSON *world = cJSON_GetObjectItemCaseSensitive(root, "world");
    if (!cJSON_IsObject(world)) return MF_FAIL(c, "world: expected an object");
    DS_TRY(mf_int(c, world, "world.", "tp", 1, 1 << 20, &v));
    c->layout.tp = (int)v;
    DS_TRY(mf_int(c, world, "world.", "dp", 1, 1 << 20, &v));
    c->layout.dp = (int)v;
    DS_TRY(mf_int(c, world, "world.", "zero", 0, 1, &v));
    c->layout.zero = (int)v;
    c->layout.ep = 1; /* expert parallelism: written only when more than 1 */
    if (cJSON_GetObjectItemCaseSensitive(world, "ep")) {
        DS_TRY(mf_int(c, world, "world.", "ep", 1, 1 << 20, &v));
        c->layout.ep = (int)v;
    }
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "state")))
        return MF_FAIL(c, "state: expected an object");
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "model")))
        return MF_FAIL(c, "model: expected an object");

    const cJSON *files = cJSON_GetObjectItemCaseSensitive(root, "files");
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    const cJSON *blobs = cJSON_GetObjectItemCaseSensitive(root, "blobs");
    if (!cJSON_IsArray(files) || !cJSON_IsArray(tensors) || !cJSON_IsArray(blobs))
        return MF_FAIL(c, "files, tensors and blobs must be arrays");
    c->files = ds_calloc((size_t)cJSON_GetArraySize(files) + 1, sizeof(CkFile));
    c->tensors = ds_calloc((size_t)cJSON_GetArraySize(tensors) + 1, sizeof(CkTensor));
    c->blobs = ds_calloc((size_t)cJSON_GetArraySize(blobs) + 1, sizeof(CkBlob));
    if (!c->files || !c->tensors || !c->blobs) return DS_ERR_INTERNAL;
    int i = 0;
    for (const cJSON *f = files->child; f; f = f->next, i++) {
        char where[48], hex[16];
        snprintf(where, sizeof(where), "files[%d].", i);
        CkFile *cf = &c->files[c->nfiles];
        DS_TRY(mf_string(c, f, where, "name", cf->name, sizeof(cf->name)));
        if (!ckpt_plain_name(cf->name))
            return MF_FAIL(c,
                           "%sname: \"%.300s\" is not a plain file name inside the checkpoint "
                           "directory",
                           where, cf->name);
        for (int k = 0; k < c->nfiles; k++)
            if (strcmp(c->files[k].name, cf->name) == 0)
                return MF_FAIL(c, "%sname: \"%s\" listed twice", where, cf->name);
        DS_TRY(mf_int(c, f, where, "size", 0, INT64_MAX / 2, &v));
        cf->size = (uint64_t)v;
        DS_TRY(mf_string(c, f, where, "crc32c", hex, sizeof(hex)));
        char *end;
        unsigned long crc = strtoul(hex, &end, 16);
        if (strlen(hex) != 8 || *end) return MF_FAIL(c, "%scrc32c: expected 8 hex digits", where);
        cf->crc = (uint32_t)crc;
        c->nfiles++;
    }
    i = 0;
    for (const cJSON *t = tensors->child; t; t = t->next, i++) {
        char where[48], fname[256];
        snprintf(where, sizeof(where), "tensors[%d].", i);
        CkTensor *ct = &c->tensors[c->ntensors];
        DS_TRY(mf_string(c, t, where, "buffer", ct->buffer, sizeof(ct->buffer)));
        DS_TRY(mf_string(c, t, where, "name", ct->name, sizeof(ct->name)));
        DS_TRY(mf_string(c, t, where, "key", ct->key, sizeof(ct->key)));
        DS_TRY(mf_string(c, t, where, "file", fname, sizeof(fname)));
        int fi = mf_file_index(c, where, fname);
        if (fi < 0) return -fi;
        ct->file = fi;
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
        int nd = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : 0;
        if (nd < 1 || nd > 2) return MF_FAIL(c, "%sshape: expected 1 or 2 dimensions", where);
        ct->ndim = nd;
        int d = 0;
        for (const cJSON *x = shape->child; x; x = x->next, d++) {
            if (!cJSON_IsNumber(x) || x->valuedouble < 1 || x->valuedouble > (double)CKPT_MAX_DIM ||
                x->valuedouble != (double)(int64_t)x->valuedouble)
                return MF_FAIL(c, "%sshape[%d]: expected an integer in [1, 2^40]", where, d);
            ct->shape[d] = (int64_t)x->valuedouble;
        }
        if (nd == 2 && ct->shape[0] > INT64_MAX / 8 / ct->shape[1])
            return MF_FAIL(c, "%sshape: too large", where);
        DS_TRY(mf_int(c, t, where, "split_dim", -1, nd - 1, &v));
        ct->split_dim = (int)v;
        int64_t slice[2], range[2];
        DS_TRY(mf_pair(c, t, where, "slice", slice));
        DS_TRY(mf_pair(c, t, where, "range", range));
        ParamInfo pi = {0};
        pi.ndim = nd;
        pi.shape[0] = ct->shape[0];
        pi.shape[1] = nd == 2 ? ct->shape[1] : 0;
        pi.split_dim = ct->split_dim;
        pi.slice_start = slice[0];
        pi.slice_len = slice[1];
        if (ct->split_dim >= 0 && (slice[1] < 1 || slice[0] > ct->shape[ct->split_dim] - slice[1]))
            return MF_FAIL(c, "%sslice: [%lld, +%lld) does not fit dimension %d of size %lld",
                           where, (long long)slice[0], (long long)slice[1], ct->split_dim,
                           (long long)ct->shape[ct->split_dim]);
        ct->piece = piece_of(&pi, range[0], range[1]);
        const int64_t box = (ct->piece.r1 - ct->piece.r0) * piece_width(&ct->piece);
        if (range[0] >= range[1] || range[1] > box)
            return MF_FAIL(c, "%srange: [%lld, %lld) is not a part of the slice's %lld elements",
                           where, (long long)range[0], (long long)range[1], (long long)box);
        c->ntensors++;
    }
    i = 0;
    for (const cJSON *b = blobs->child; b; b = b->next, i++) {
        char where[48], fname[256];
        snprintf(where, sizeof(where), "blobs[%d].", i);
        CkBlob *cb = &c->blobs[c->nblobs];
        DS_TRY(mf_string(c, b, where, "name", cb->name, sizeof(cb->name)));
        DS_TRY(mf_string(c, b, where, "key", cb->key, sizeof(cb->key)));
        DS_TRY(mf_string(c, b, where, "file", fname, sizeof(fname)));
        int fi = mf_file_index(c, where, fname);
        if (fi < 0) return -fi;
        cb->file = fi;
        DS_TRY(mf_int(c, b, where, "size", 0, 1 << 30, &v));
        cb->size = (size_t)v;
        DS_TRY(mf_int(c, b, where, "tp_rank", 0, 1 << 20, &v));
        cb->tp_rank = (int)v;
        DS_TRY(mf_int(c, b, where, "dp_rank", 0, 1 << 20, &v));
        cb->dp_rank = (int)v;
        c->nblobs++;
    }
    return DS_OK;
}

int ckpt_open(const char *dir, Ckpt **out)
{
    *out = NULL;
    Ckpt *c = ds_calloc(1, sizeof(*c));
    if (!c) return DS_ERR_INTERNAL;
    snprintf(c->dir, sizeof(c->dir), "%s", dir);
    snprintf(c->manifest_path, sizeof(c->manifest_path), "%s/%s", dir, CKPT_MANIFEST);
    struct stat st;
    int status;
    if (stat(c->manifest_path, &st) != 0)
        status =
            ds_error(DS_ERR_INPUT, "%s: not a complete checkpoint (no %s: the save did not finish)",
                     dir, CKPT_MANIFEST);
    else if ((status = read_json_file(c->manifest_path, &c->root)) == DS_OK)
        status = ckpt_parse(c);
    if (status != DS_OK) {
        ckpt_close(c);
        return status;
    }
    *out = c;
    return DS_OK;
}

int ckpt_verify(const Ckpt *c)
{
    for (int i = 0; i < c->nfiles; i++) {
        char path[CKPT_PATH_MAX + 300];
        snprintf(path, sizeof(path), "%s/%s", c->dir, c->files[i].name);
        uint64_t size;
        uint32_t crc;
        DS_TRY(file_checksum(path, &size, &crc));
        if (size != c->files[i].size)
            return ds_error(DS_ERR_INPUT, "%s: %llu bytes, the manifest says %llu (truncated?)",
                            path, (unsigned long long)size, (unsigned long long)c->files[i].size);
        if (crc != c->files[i].crc)
            return ds_error(DS_ERR_INPUT,
                            "%s: checksum mismatch (crc32c %08" PRIx32 ", the manifest says "
                            "%08" PRIx32 "): the file is damaged",
                            path, crc, c->files[i].crc);
    }
    return DS_OK;
}

void ckpt_close(Ckpt *c)
{
    if (!c) return;
    for (int i = 0; i < c->nfiles; i++)
        if (c->files[i].opened) safetensors_close(&c->files[i].st);
    free(c->files);
    free(c->tensors);
    free(c->blobs);
    cJSON_Delete(c->root);
    free(c);
}

const char *ckpt_path(const Ckpt *c)
{
    return c->dir;
}

int ckpt_step(const Ckpt *c)
{
    return c->step;
}

CkptLayout ckpt_layout(const Ckpt *c)
{
    return c->layout;
}

int ckpt_state_number(const Ckpt *c, const char *key, double *out)
{
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c->root, "state"), key);
    if (!cJSON_IsNumber(v)) return MF_FAIL(c, "state.%s: expected a number", key);
    *out = v->valuedouble;
    return DS_OK;
}

int ckpt_state_int(const Ckpt *c, const char *key, long long *out)
{
    double d = 0;
    DS_TRY(ckpt_state_number(c, key, &d));
    if (d != (double)(long long)d || d < -9007199254740992.0 || d > 9007199254740992.0)
        return MF_FAIL(c, "state.%s: expected an integer", key);
    *out = (long long)d;
    return DS_OK;
}

const char *ckpt_model_string(const Ckpt *c, const char *key)
{
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(c->root, "model"), key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static int ckpt_file_open(Ckpt *c, int fi, SafetensorsFile **out)
{
    CkFile *f = &c->files[fi];
    if (!f->opened) {
        char path[CKPT_PATH_MAX + 300];
        snprintf(path, sizeof(path), "%s/%s", c->dir, f->name);
        DS_TRY(safetensors_open(path, &f->st));
        f->opened = 1;
    }
    *out = &f->st;
    return DS_OK;
}

int ckpt_has_buffer(const Ckpt *c, const char *prefix)
{
    for (int i = 0; i < c->ntensors; i++)
        if (strcmp(c->tensors[i].buffer, prefix) == 0) return 1;
    return 0;
}

int ckpt_read_buffer(Ckpt *c, const char *prefix, const ParamTable *table, float *base,
                     size_t flat_begin, size_t flat_end)
{
    const size_t hi = flat_end ? flat_end : table->total;
    for (int i = 0; i < table->count; i++) {
        const ParamInfo *pi = &table->items[i];
        int64_t b, e;
        if (!param_range(pi, flat_begin, hi, &b, &e)) continue;
        const Piece want = piece_of(pi, b, e);
        int64_t copied = 0, stored = 0;
        int found = 0;
        for (int k = 0; k < c->ntensors; k++) {
            const CkTensor *t = &c->tensors[k];
            if (strcmp(t->buffer, prefix) != 0 || strcmp(t->name, pi->name) != 0) continue;
            found = 1;
            if (t->ndim != pi->ndim || t->shape[0] != pi->shape[0] ||
                (pi->ndim == 2 && t->shape[1] != pi->shape[1]))
                return ds_error(DS_ERR_INPUT,
                                "%s: %s/%s: saved with shape [%lld, %lld], the model has "
                                "[%lld, %lld]",
                                c->dir, prefix, pi->name, (long long)t->shape[0],
                                (long long)(t->ndim == 2 ? t->shape[1] : 1),
                                (long long)pi->shape[0],
                                (long long)(pi->ndim == 2 ? pi->shape[1] : 1));
            stored += t->piece.e - t->piece.b;
            /* only open files whose piece overlaps what this rank needs */
            Piece probe = t->piece;
            if (probe.r1 <= want.r0 || want.r1 <= probe.r0 || probe.c1 <= want.c0 ||
                want.c1 <= probe.c0)
                continue;
            SafetensorsFile *sf;
            DS_TRY(ckpt_file_open(c, t->file, &sf));
            const STEntry *en = safetensors_find(sf, t->key);
            const int64_t count = t->piece.e - t->piece.b;
            if (!en || en->dtype != DT_F32 || en->end - en->begin != (size_t)count * sizeof(float))
                return ds_error(DS_ERR_INPUT,
                                "%s: tensor \"%s\" is missing or is not %lld F32 values as the "
                                "manifest says",
                                sf->path, t->key, (long long)count);
            const float *src = safetensors_data(sf, en);
            if (((uintptr_t)src % sizeof(float)) != 0) {
                /* a hand-made file may misalign the data: copy it aligned first */
                float *tmp = ds_malloc((size_t)count * sizeof(float));
                if (!tmp) return DS_ERR_INTERNAL;
                memcpy(tmp, src, (size_t)count * sizeof(float));
                copied += piece_copy(&t->piece, tmp, &want, base + pi->offset + b);
                free(tmp);
            } else {
                copied += piece_copy(&t->piece, src, &want, base + pi->offset + b);
            }
        }
        if (!found)
            return ds_error(DS_ERR_INPUT, "%s: %s/%s is not in the checkpoint", c->dir, prefix,
                            pi->name);
        const int64_t full = pi->shape[0] * (pi->ndim == 2 ? pi->shape[1] : 1);
        if (stored != full || copied != e - b)
            return ds_error(DS_ERR_INPUT,
                            "%s: %s/%s: the saved pieces hold %lld of %lld elements (overlaps or "
                            "gaps), %lld of the %lld this rank needs were found",
                            c->dir, prefix, pi->name, (long long)stored, (long long)full,
                            (long long)copied, (long long)(e - b));
    }
    return DS_OK;
}

int ckpt_blob_size(const Ckpt *c, const char *name, int tp_rank, int dp_rank, size_t *size)
{
    *size = 0;
    for (int i = 0; i < c->nblobs; i++) {
        const CkBlob *b = &c->blobs[i];
        if (strcmp(b->name, name) == 0 && b->tp_rank == tp_rank && b->dp_rank == dp_rank) {
            *size = b->size;
            return DS_OK;
        }
    }
    return DS_OK;
}

int ckpt_read_blob(Ckpt *c, const char *name, int tp_rank, int dp_rank, void *out, size_t size)
{
    for (int i = 0; i < c->nblobs; i++) {
        const CkBlob *b = &c->blobs[i];
        if (strcmp(b->name, name) != 0 || b->tp_rank != tp_rank || b->dp_rank != dp_rank) continue;
        if (b->size != size)
            return ds_error(DS_ERR_INPUT, "%s: %s of rank tp%d/dp%d: %zu bytes, expected %zu",
                            c->dir, name, tp_rank, dp_rank, b->size, size);
        SafetensorsFile *sf;
        DS_TRY(ckpt_file_open(c, b->file, &sf));
        const STEntry *en = safetensors_find(sf, b->key);
        if (!en || en->end - en->begin != size)
            return ds_error(DS_ERR_INPUT, "%s: %s is missing or has the wrong size", sf->path,
                            b->key);
        memcpy(out, safetensors_data(sf, en), size);
        return DS_OK;
    }
    return ds_error(DS_ERR_INPUT, "%s: no %s saved by rank tp%d/dp%d", c->dir, name, tp_rank,
                    dp_rank);
}

int ckpt_find_latest(const char *dir, char *out, size_t cap)
{
    out[0] = 0;
    int *steps, n;
    DS_TRY(list_complete(dir, &steps, &n));
    for (int i = 0; i < n; i++) {
        char path[CKPT_PATH_MAX + 32], name[32];
        step_dir_name(name, sizeof(name), steps[i]);
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        Ckpt *c = NULL;
        int status = ckpt_open(path, &c);
        if (status == DS_OK) status = ckpt_verify(c);
        ckpt_close(c);
        if (status == DS_OK) {
            snprintf(out, cap, "%s", path);
            break;
        }
        fprintf(stderr, "dstrain: warning: checkpoint %s is damaged and is skipped: %s\n", path,
                ds_last_error());
        if (i + 1 < n)
            fprintf(stderr, "dstrain: warning: falling back to the previous checkpoint\n");
    }
    free(steps);
    ds_clear_error();
    return DS_OK;
}
