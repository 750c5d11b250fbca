/* test_ckpt.c: training-state checkpoints at the file level. CRC-32C against its check value;
 * a save committed by four ranks (tp=2 x dp=2, ZeRO ranges cutting through tensors) read back
 * at tp=1 and tp=4 and under other ZeRO ranges; async and sync saves; `latest` and retention
 * (keep + keep_every); refusal of hostile manifests (file names outside the directory, slices
 * and ranges that do not fit); a flipped byte caught by the checksum with fallback to the
 * previous checkpoint; export to a Hugging Face directory that loads back with identical
 * parameters and logits; extra buffers (EWC state) saved and loaded back on resume. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/export.h"
#include "checkpoint/hf_model.h"
#include "checkpoint/safetensors.h"
#include "data/dataset.h"
#include "trainer/train_ckpt.h"

static char tmpdir[512];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/checkpoint_ckpt_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

TestSuite(ckpt, .init = setup, .fini = teardown);

Test(ckpt, crc32c_matches_the_check_value)
{
    cr_assert_eq(crc32c_update(0, "123456789", 9), 0xE3069283u);
    /* incremental equals one pass, across the 8-byte blocks */
    uint32_t c = crc32c_update(0, "1234", 4);
    c = crc32c_update(c, "56789", 5);
    cr_assert_eq(c, 0xE3069283u);
    cr_assert_eq(crc32c_update(0, "", 0), 0u);
}

/* ---- a synthetic parameter table that any tp size can slice -------------------------------- */

static const struct {
    const char *name;
    int ndim;
    int64_t rows, cols;
    int split_dim;
} tensors[] = {
    {"a.weight", 2, 8, 5, 0}, /* column parallel: rows split */
    {"b.norm", 1, 7, 0, -1},  /* replicated */
    {"c.weight", 2, 3, 8, 1}, /* row parallel: columns split */
    {"d.bias", 1, 8, 0, 0},
};
#define NT ((int)(sizeof(tensors) / sizeof(tensors[0])))

static void make_table(int tp, int tp_rank, ParamTable *pt)
{
    memset(pt, 0, sizeof(*pt));
    pt->items = calloc(NT, sizeof(ParamInfo));
    pt->count = NT;
    for (int i = 0; i < NT; i++) {
        ParamInfo *p = &pt->items[i];
        snprintf(p->name, sizeof(p->name), "%s", tensors[i].name);
        p->ndim = tensors[i].ndim;
        p->shape[0] = tensors[i].rows;
        p->shape[1] = tensors[i].cols;
        p->split_dim = tensors[i].split_dim;
        int64_t cols = p->ndim == 2 ? p->shape[1] : 1;
        if (p->split_dim >= 0) {
            int64_t dim = p->shape[p->split_dim];
            p->slice_len = dim / tp;
            p->slice_start = p->slice_len * tp_rank;
            p->numel =
                (size_t)(p->split_dim == 0 ? p->slice_len * cols : p->shape[0] * p->slice_len);
        } else {
            p->slice_start = 0;
            p->slice_len = p->shape[0];
            p->numel = (size_t)(p->shape[0] * cols);
        }
        p->offset = pt->total;
        pt->total += DS_ALIGN_UP(p->numel, 64);
    }
}

/* The value of element (r, c) of tensor i in buffer k, exact in fp32. */
static float value_at(int k, int i, int64_t r, int64_t c)
{
    return (float)(k * 100000 + i * 1000 + r * 10 + c) + 0.5f;
}

/* Fill this rank's local layout of buffer k with the values of its slices. */
static void fill_local(const ParamTable *pt, int k, float *base)
{
    for (int i = 0; i < pt->count; i++) {
        const ParamInfo *p = &pt->items[i];
        int64_t rows = p->split_dim == 0 ? p->slice_len : p->shape[0];
        int64_t cols = p->ndim == 2 ? (p->split_dim == 1 ? p->slice_len : p->shape[1]) : 1;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                int64_t gr = p->split_dim == 0 ? p->slice_start + r : r;
                int64_t gc = p->split_dim == 1 ? p->slice_start + c : c;
                base[p->offset + r * cols + c] = value_at(k, i, gr, gc);
            }
    }
}

/* Compare elements [lo, hi) of a buffer read back with the expected local layout. */
static void expect_local(const ParamTable *pt, int k, const float *got, size_t lo, size_t hi,
                         const char *what)
{
    float *want = calloc(pt->total, sizeof(float));
    fill_local(pt, k, want);
    int bad = 0;
    for (int i = 0; i < pt->count; i++) {
        const ParamInfo *p = &pt->items[i];
        for (size_t e = p->offset; e < p->offset + p->numel; e++)
            if (e >= lo && e < hi && got[e] != want[e] && bad++ < 3)
                cr_expect_eq(got[e], want[e], "%s: %s element %zu: %g, expected %g", what, p->name,
                             e - p->offset, got[e], want[e]);
    }
    cr_assert_eq(bad, 0, "%s: %d wrong elements", what, bad);
    free(want);
}

static int fake_all_min(void *ctx, int local, int *global)
{
    (void)ctx;
    *global = local;
    return DS_OK;
}

static void meta_for(CkptMeta *m, int step)
{
    memset(m, 0, sizeof(*m));
    m->step = step;
    m->optim_t = step;
    m->lr = 1e-3;
    m->seed = 7;
    m->train_steps = 100;
    m->model_path = "";
    m->model_preset = "tiny";
    m->config_yaml = "train:\n  steps: 100\n";
    m->hf_config_json = "{}";
}

/* Save step 5 from four ranks (tp=2 x dp=2, ZeRO over dp for optim.m), committed by rank 0. */
static void save_tp2_dp2(const char *dir)
{
    CkptWriter *w[4];
    ParamTable pt[4];
    float *params[4], *moments[4];
    int64_t pos[4];
    for (int rank = 0; rank < 4; rank++) {
        const int tp_rank = rank % 2, dp_rank = rank / 2;
        make_table(2, tp_rank, &pt[rank]);
        params[rank] = calloc(pt[rank].total, sizeof(float));
        moments[rank] = calloc(pt[rank].total, sizeof(float));
        fill_local(&pt[rank], 0, params[rank]);
        fill_local(&pt[rank], 1, moments[rank]);
        CkptWriterOptions o = {
            .dir = dir,
            .keep = 5,
            .async = 0,
            .layout = {.tp = 2, .dp = 2, .zero = 1, .tp_rank = tp_rank, .dp_rank = dp_rank},
            .all_min = fake_all_min,
            .tmp_tag = 4242};
        cr_assert_eq(ckpt_writer_open(&o, &pt[rank], &w[rank]), DS_OK, "%s", ds_last_error());
    }
    /* ranks 1..3 write first; rank 0 writes last and commits */
    for (int rank = 3; rank >= 0; rank--) {
        const size_t half = pt[rank].total / 2 + 3; /* cuts through a tensor */
        const int dp_rank = rank / 2;
        CkptBuffer bufs[2] = {
            {.prefix = "params", .base = params[rank], .replicated_over_dp = 1},
            {.prefix = "optim.m",
             .base = moments[rank],
             .flat_begin = dp_rank ? half : 0,
             .flat_end = dp_rank ? pt[rank].total : half},
        };
        pos[rank] = 1000 + rank;
        CkptBlob blob = {"reader.train", &pos[rank], sizeof(int64_t)};
        CkptMeta m;
        meta_for(&m, 5);
        cr_assert_eq(ckpt_writer_save(w[rank], &m, bufs, 2, &blob, 1, NULL), DS_OK, "%s",
                     ds_last_error());
        cr_assert_eq(ckpt_writer_wait(w[rank]), DS_OK, "rank %d: %s", rank, ds_last_error());
    }
    for (int rank = 0; rank < 4; rank++) {
        ckpt_writer_close(w[rank]);
        free(params[rank]);
        free(moments[rank]);
        param_table_free(&pt[rank]);
    }
}

Test(ckpt, tp2_dp2_shards_reassemble_at_tp1_and_tp4)
{
    char dir[700], step[800];
    snprintf(dir, sizeof(dir), "%s/ck", tmpdir);
    save_tp2_dp2(dir);
    snprintf(step, sizeof(step), "%s/step-00000005", dir);
    Ckpt *c;
    cr_assert_eq(ckpt_open(step, &c), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ckpt_verify(c), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ckpt_step(c), 5);
    CkptLayout l = ckpt_layout(c);
    cr_assert(l.tp == 2 && l.dp == 2 && l.zero == 1);
    long long t;
    cr_assert_eq(ckpt_state_int(c, "optim_t", &t), DS_OK);
    cr_assert_eq(t, 5);
    cr_assert_str_eq(ckpt_model_string(c, "preset"), "tiny");
    cr_assert(ckpt_has_buffer(c, "optim.m") && !ckpt_has_buffer(c, "optim.v"));

    /* every layout: tp = 1, 2, 4; the whole buffer and a ZeRO third of it */
    const int tps[3] = {1, 2, 4};
    for (int ti = 0; ti < 3; ti++) {
        for (int r = 0; r < tps[ti]; r++) {
            ParamTable pt;
            make_table(tps[ti], r, &pt);
            float *buf = calloc(pt.total, sizeof(float));
            char what[64];
            snprintf(what, sizeof(what), "params tp=%d rank %d", tps[ti], r);
            cr_assert_eq(ckpt_read_buffer(c, "params", &pt, buf, 0, 0), DS_OK, "%s: %s", what,
                         ds_last_error());
            expect_local(&pt, 0, buf, 0, pt.total, what);
            const size_t lo = pt.total / 3 + 1, hi = 2 * pt.total / 3 + 5;
            memset(buf, 0, pt.total * sizeof(float));
            snprintf(what, sizeof(what), "optim.m tp=%d rank %d range", tps[ti], r);
            cr_assert_eq(ckpt_read_buffer(c, "optim.m", &pt, buf, lo, hi), DS_OK, "%s: %s", what,
                         ds_last_error());
            expect_local(&pt, 1, buf, lo, hi, what);
            for (size_t e = 0; e < lo; e++)
                cr_assert_eq(buf[e], 0.0f, "%s: wrote outside its range at %zu", what, e);
            free(buf);
            param_table_free(&pt);
        }
    }
    int64_t pos = 0;
    cr_assert_eq(ckpt_read_blob(c, "reader.train", 1, 1, &pos, sizeof(pos)), DS_OK);
    cr_assert_eq(pos, 1003);
    cr_assert_neq(ckpt_read_blob(c, "reader.train", 1, 1, &pos, 4), DS_OK);
    cr_assert(strstr(ds_last_error(), "expected 4"), "%s", ds_last_error());
    ckpt_close(c);

    /* a tensor of another shape is refused with both shapes */
    cr_assert_eq(ckpt_open(step, &c), DS_OK);
    ParamTable pt;
    make_table(1, 0, &pt);
    pt.items[0].shape[0] = 16;
    pt.items[0].slice_len = 16;
    pt.items[0].numel = 80;
    float *buf = calloc(pt.total + 80, sizeof(float));
    cr_assert_eq(ckpt_read_buffer(c, "params", &pt, buf, 0, 0), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "a.weight") && strstr(ds_last_error(), "[8, 5]"), "%s",
              ds_last_error());
    free(buf);
    param_table_free(&pt);
    ckpt_close(c);
}

/* One-rank saves of the table at tp=1 through the async writer. */
static void save_steps(const char *dir, int async, int keep, int keep_every, int first, int last)
{
    ParamTable pt;
    make_table(1, 0, &pt);
    float *params = calloc(pt.total, sizeof(float));
    CkptWriterOptions o = {.dir = dir,
                           .keep = keep,
                           .keep_every = keep_every,
                           .async = async,
                           .layout = {.tp = 1, .dp = 1, .zero = 1},
                           .tmp_tag = getpid()};
    CkptWriter *w;
    cr_assert_eq(ckpt_writer_open(&o, &pt, &w), DS_OK, "%s", ds_last_error());
    for (int s = first; s <= last; s++) {
        fill_local(&pt, s, params);
        CkptBuffer b = {.prefix = "params", .base = params};
        CkptMeta m;
        meta_for(&m, s);
        cr_assert_eq(ckpt_writer_save(w, &m, &b, 1, NULL, 0, NULL), DS_OK, "%s", ds_last_error());
        /* training goes on: the snapshot is the writer's own copy */
        memset(params, 0xff, pt.total * sizeof(float));
    }
    cr_assert_eq(ckpt_writer_wait(w), DS_OK, "%s", ds_last_error());
    cr_assert_eq(ckpt_writer_last_step(w), last);
    ckpt_writer_close(w);
    free(params);
    param_table_free(&pt);
}

static int exists(const char *dir, const char *name)
{
    char path[1200];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

Test(ckpt, async_saves_keep_newest_and_every_nth_and_point_latest)
{
    char dir[700];
    snprintf(dir, sizeof(dir), "%s/ret", tmpdir);
    save_steps(dir, 1, 2, 3, 1, 7);
    /* keep 2 newest (6, 7) and every 3rd (3, 6) */
    cr_assert(exists(dir, "step-00000003") && exists(dir, "step-00000006") &&
              exists(dir, "step-00000007"));
    cr_assert(!exists(dir, "step-00000001") && !exists(dir, "step-00000002") &&
              !exists(dir, "step-00000004") && !exists(dir, "step-00000005"));
    char target[64] = {0}, link[800];
    snprintf(link, sizeof(link), "%s/latest", dir);
    cr_assert_gt(readlink(link, target, sizeof(target) - 1), 0);
    cr_assert_str_eq(target, "step-00000007");
    /* each kept step holds its own snapshot, not what the buffer held later */
    for (int s = 3; s <= 7; s += s == 3 ? 3 : 1) {
        char path[800];
        snprintf(path, sizeof(path), "%s/step-%08d", dir, s);
        Ckpt *c;
        cr_assert_eq(ckpt_open(path, &c), DS_OK, "%s", ds_last_error());
        cr_assert_eq(ckpt_verify(c), DS_OK, "%s", ds_last_error());
        ParamTable pt;
        make_table(1, 0, &pt);
        float *buf = calloc(pt.total, sizeof(float));
        cr_assert_eq(ckpt_read_buffer(c, "params", &pt, buf, 0, 0), DS_OK, "%s", ds_last_error());
        expect_local(&pt, s, buf, 0, pt.total, path);
        free(buf);
        param_table_free(&pt);
        ckpt_close(c);
    }
    char found[800];
    cr_assert_eq(ckpt_find_latest(dir, found, sizeof(found)), DS_OK);
    cr_assert(strstr(found, "step-00000007"), "%s", found);
}

/* Retention deletes only what this run made: a step directory that is a symbolic link into
 * another run is left alone, and nothing is deleted through it. */
Test(ckpt, retention_never_deletes_through_a_symbolic_link)
{
    char other[700], dir[700], link[800], target[800], manifest[900];
    snprintf(other, sizeof(other), "%s/other-run", tmpdir);
    snprintf(dir, sizeof(dir), "%s/this-run", tmpdir);
    save_steps(other, 0, 5, 0, 1, 1);
    mkdir(dir, 0755);
    snprintf(target, sizeof(target), "%s/step-00000001", other);
    snprintf(link, sizeof(link), "%s/step-00000000", dir);
    cr_assert_eq(symlink(target, link), 0);
    save_steps(dir, 0, 1, 0, 1, 3);
    snprintf(manifest, sizeof(manifest), "%s/manifest.json", target);
    struct stat st;
    cr_assert_eq(stat(manifest, &st), 0, "the other run's manifest was deleted");
    cr_assert(exists(dir, "step-00000000"), "the link itself is not this run's to delete");
    cr_assert(!exists(dir, "step-00000001") && !exists(dir, "step-00000002"));
    cr_assert(exists(dir, "step-00000003"));
}

Test(ckpt, sync_save_and_leftovers_of_a_killed_save_are_ignored_then_removed)
{
    char dir[700], path[900];
    snprintf(dir, sizeof(dir), "%s/sync", tmpdir);
    save_steps(dir, 0, 3, 0, 1, 2);
    /* what a kill leaves: a temporary directory with files, and a step without a manifest */
    snprintf(path, sizeof(path),
             "mkdir -p %s/step-00000003.tmp-99 %s/step-00000004 && "
             "echo x > %s/step-00000003.tmp-99/rank-tp0-dp0.safetensors",
             dir, dir, dir);
    cr_assert_eq(system(path), 0);
    char found[800];
    cr_assert_eq(ckpt_find_latest(dir, found, sizeof(found)), DS_OK);
    cr_assert(strstr(found, "step-00000002"), "%s", found);
    Ckpt *c;
    snprintf(path, sizeof(path), "%s/step-00000004", dir);
    cr_assert_eq(ckpt_open(path, &c), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "not a complete checkpoint"), "%s", ds_last_error());
    /* the next writer removes the temporary leftovers */
    save_steps(dir, 0, 3, 0, 3, 3);
    cr_assert(!exists(dir, "step-00000003.tmp-99"));
    cr_assert(exists(dir, "step-00000003"));
}

static void flip_byte(const char *path, long at)
{
    FILE *f = fopen(path, "r+b");
    cr_assert(f, "%s", path);
    fseek(f, at, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(ch ^ 0x10, f);
    fclose(f);
}

Test(ckpt, flipped_byte_is_caught_and_auto_falls_back)
{
    char dir[700], path[900];
    snprintf(dir, sizeof(dir), "%s/flip", tmpdir);
    save_steps(dir, 1, 3, 0, 1, 2);
    snprintf(path, sizeof(path), "%s/step-00000002/rank-tp0-dp0.safetensors", dir);
    flip_byte(path, 300);
    snprintf(path, sizeof(path), "%s/step-00000002", dir);
    Ckpt *c;
    cr_assert_eq(ckpt_open(path, &c), DS_OK);
    cr_assert_eq(ckpt_verify(c), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "checksum mismatch") &&
                  strstr(ds_last_error(), "rank-tp0-dp0.safetensors"),
              "%s", ds_last_error());
    ckpt_close(c);
    char found[800];
    cr_assert_eq(ckpt_find_latest(dir, found, sizeof(found)), DS_OK);
    cr_assert(strstr(found, "step-00000001"), "%s", found);
    /* a truncated file: size mismatch */
    snprintf(path, sizeof(path), "%s/step-00000001/config.yaml", dir);
    cr_assert_eq(truncate(path, 3), 0);
    cr_assert_eq(ckpt_find_latest(dir, found, sizeof(found)), DS_OK);
    cr_assert_str_eq(found, "");
}

/* Rewrite the manifest of dir with one substitution (first occurrence). */
static void edit_manifest(const char *dir, const char *from, const char *to)
{
    char path[900];
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    FILE *f = fopen(path, "rb");
    cr_assert(f);
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = 0;
    char *at = strstr(text, from);
    cr_assert(at, "manifest lacks %s", from);
    f = fopen(path, "wb");
    fwrite(text, 1, (size_t)(at - text), f);
    fputs(to, f);
    fputs(at + strlen(from), f);
    fclose(f);
}

Test(ckpt, hostile_manifests_are_refused_with_clear_messages)
{
    char dir[700], step[800], cmd[2000];
    snprintf(dir, sizeof(dir), "%s/host", tmpdir);
    save_steps(dir, 0, 3, 0, 1, 1);
    snprintf(step, sizeof(step), "%s/step-00000001", dir);
    static const struct {
        const char *from, *to, *expect;
    } cases[] = {
        {"\"name\":\t\"config.yaml\"", "\"name\":\t\"../../etc/passwd\"", "not a plain file name"},
        {"\"name\":\t\"config.yaml\"", "\"name\":\t\"/etc/passwd\"", "not a plain file name"},
        {"\"name\":\t\"config.yaml\"", "\"name\":\t\"sub/config.yaml\"", "not a plain file name"},
        {"\"name\":\t\"config.yaml\"", "\"name\":\t\"..\"", "not a plain file name"},
        {"\"file\":\t\"rank-tp0-dp0.safetensors\"", "\"file\":\t\"../x.safetensors\"",
         "not a plain file name"},
        {"\"file\":\t\"rank-tp0-dp0.safetensors\"", "\"file\":\t\"other.safetensors\"",
         "not listed in \"files\""},
        {"\"range\":\t[0, 40]", "\"range\":\t[0, 41]", "range"},
        {"\"range\":\t[0, 40]", "\"range\":\t[5, 2]", "range"},
        {"\"split_dim\":\t0", "\"split_dim\":\t3", "split_dim"},
        {"\"shape\":\t[8, 5]", "\"shape\":\t[1e300, 5]", "shape[0]"},
        {"\"step\":\t1", "\"step\":\t-1", "step"},
        {"\"format\":\t\"dstrain-checkpoint\"", "\"format\":\t\"other\"", "format"},
        {"\"crc32c\":\t\"", "\"crc32c\":\t\"zz", "crc32c"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(cmd, sizeof(cmd), "rm -rf %s/h && cp -r %s %s/h", dir, step, dir);
        cr_assert_eq(system(cmd), 0);
        char h[800];
        snprintf(h, sizeof(h), "%s/h", dir);
        edit_manifest(h, cases[i].from, cases[i].to);
        Ckpt *c = NULL;
        ds_clear_error();
        int rc = ckpt_open(h, &c);
        cr_expect_eq(rc, DS_ERR_INPUT, "case %zu (%s): accepted", i, cases[i].to);
        cr_expect(strstr(ds_last_error(), cases[i].expect) &&
                      strstr(ds_last_error(), "manifest.json"),
                  "case %zu: message \"%s\" lacks \"%s\"", i, ds_last_error(), cases[i].expect);
        ckpt_close(c);
    }
    /* a manifest that is not JSON */
    snprintf(cmd, sizeof(cmd), "echo '{\"format\": ' > %s/h/manifest.json", dir);
    cr_assert_eq(system(cmd), 0);
    char h[800];
    snprintf(h, sizeof(h), "%s/h", dir);
    Ckpt *c = NULL;
    cr_assert_eq(ckpt_open(h, &c), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "not a valid JSON object"), "%s", ds_last_error());
}

Test(ckpt, plain_names)
{
    cr_assert(ckpt_plain_name("rank-tp0-dp0.safetensors"));
    cr_assert(!ckpt_plain_name(""));
    cr_assert(!ckpt_plain_name("."));
    cr_assert(!ckpt_plain_name(".."));
    cr_assert(!ckpt_plain_name("a/b"));
    cr_assert(!ckpt_plain_name("/etc/passwd"));
    cr_assert(!ckpt_plain_name("a\nb"));
}

Test(ckpt, save_to_a_missing_parent_that_cannot_be_made_fails_cleanly)
{
    ParamTable pt;
    make_table(1, 0, &pt);
    CkptWriterOptions o = {
        .dir = "/proc/no/such/dir", .keep = 1, .layout = {.tp = 1, .dp = 1}, .tmp_tag = 1};
    CkptWriter *w = NULL;
    cr_assert_eq(ckpt_writer_open(&o, &pt, &w), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "checkpoint.dir"), "%s", ds_last_error());
    param_table_free(&pt);
}

/* ---- export --------------------------------------------------------------------------------- */

/* Files ending in .safetensors; every one must be a model-XXXXX-of-YYYYY shard. */
static int count_shards(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert(d, "%s", dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 12 || strcmp(de->d_name + len - 12, ".safetensors") != 0) continue;
        cr_assert(strncmp(de->d_name, "model-", 6) == 0 && strstr(de->d_name, "-of-"), "%s",
                  de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

Test(ckpt, export_loads_back_with_identical_parameters_and_logits)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    Model m = {0};
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 2, 16), DS_OK);
    model_init_weights(&m, 3, 0.02f);
    char dir[700];
    snprintf(dir, sizeof(dir), "%s/exp", tmpdir);
    CkptWriterOptions o = {
        .dir = dir, .keep = 1, .layout = {.tp = 1, .dp = 1}, .tmp_tag = getpid()};
    CkptWriter *w;
    cr_assert_eq(ckpt_writer_open(&o, &m.table, &w), DS_OK);
    char *hf = NULL;
    cr_assert_eq(hf_config_json_text(&mc, "", &hf), DS_OK);
    CkptMeta meta;
    meta_for(&meta, 1);
    meta.hf_config_json = hf;
    CkptBuffer b = {.prefix = "params", .base = m.params};
    cr_assert_eq(ckpt_writer_save(w, &meta, &b, 1, NULL, 0, NULL), DS_OK);
    cr_assert_eq(ckpt_writer_wait(w), DS_OK, "%s", ds_last_error());
    ckpt_writer_close(w);
    free(hf);

    /* inputs and the reference logits */
    const int N = 2 * 16, V = mc.vocab_size;
    for (int i = 0; i < N; i++)
        m.inputs[i] = (i * 37) % 258;
    float *ref = malloc((size_t)N * V * sizeof(float)),
          *got = malloc((size_t)N * V * sizeof(float));
    model_forward(&m, m.inputs, NULL, NULL, ref);

    char step[800], out[800];
    snprintf(step, sizeof(step), "%s/step-00000001", dir);
    const DType dtypes[3] = {DT_F32, DT_BF16, DT_F16};
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof(out), "%s/hf-%d", tmpdir, k);
        /* a small shard limit: several shards and an index */
        cr_assert_eq(hf_export_checkpoint(step, out, dtypes[k], 400000, 0), DS_OK, "%s",
                     ds_last_error());
        int nshards = count_shards(out);
        cr_assert_geq(nshards, 2, "%s: %d shards", out, nshards);
        cr_assert(exists(out, "model.safetensors.index.json") && exists(out, "config.json") &&
                  exists(out, "generation_config.json") && exists(out, "tokenizer.json"));
        SafetensorsFile f;
        char shard[900];
        snprintf(shard, sizeof(shard), "%s/model-00001-of-%05d.safetensors", out, nshards);
        cr_assert_eq(safetensors_open(shard, &f), DS_OK);
        cr_assert_str_eq(f.metadata_json, "{\"format\":\"pt\"}");
        safetensors_close(&f);

        ModelConfig mc2;
        cr_assert_eq(hf_config_load(out, &mc2), DS_OK, "%s", ds_last_error());
        cr_assert(mc2.hidden_size == mc.hidden_size && mc2.num_kv_heads == mc.num_kv_heads &&
                  mc2.rms_norm_eps == mc.rms_norm_eps && mc2.rope_theta == mc.rope_theta &&
                  mc2.bos_token_id == 256 && mc2.eos_token_id == 257);
        Model m2 = {0};
        cr_assert_eq(model_init(&m2, &mc2, backend_cpu(), 2, 16), DS_OK);
        cr_assert_eq(hf_load_weights(out, &mc2, &m2.table, m2.params), DS_OK, "%s",
                     ds_last_error());
        /* the parameters are the checkpoint's, rounded to the export dtype */
        int bad = 0;
        for (int i = 0; i < m.table.count; i++) {
            const ParamInfo *p = &m.table.items[i];
            for (size_t e = p->offset; e < p->offset + p->numel; e++) {
                float x = m.params[e];
                float want = dtypes[k] == DT_F32    ? x
                             : dtypes[k] == DT_BF16 ? bf16_to_f32(f32_to_bf16(x))
                                                    : f16_to_f32(f32_to_f16(x));
                bad += memcmp(&want, &m2.params[e], sizeof(float)) != 0;
            }
        }
        cr_assert_eq(bad, 0, "dtype %d: %d parameters differ", k, bad);
        if (dtypes[k] == DT_F32) {
            for (int i = 0; i < N; i++)
                m2.inputs[i] = m.inputs[i];
            model_forward(&m2, m2.inputs, NULL, NULL, got);
            cr_assert_eq(memcmp(ref, got, (size_t)N * V * sizeof(float)), 0,
                         "fp32 export: logits differ");
        }
        model_free(&m2);
    }
    /* an existing output is refused */
    cr_assert_eq(hf_export_checkpoint(step, out, DT_F32, 400000, 0), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "already exists"), "%s", ds_last_error());
    free(ref);
    free(got);
    model_free(&m);
}

/* A checkpoint whose weights hold a NaN or an infinity is never exported: the export (the
 * command's and the end of a run's, which replaces) is refused with one line naming the
 * checkpoint, the first such tensor and element, and an export already there is left as it was. */
Test(ckpt, export_refuses_non_finite_weights_and_keeps_the_old_export)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    Model m = {0};
    cr_assert_eq(model_init(&m, &mc, backend_cpu(), 2, 16), DS_OK);
    model_init_weights(&m, 3, 0.02f);
    /* the third tensor's element 5 is NaN, a later tensor's element 0 is -Inf */
    cr_assert_geq(m.table.count, 4);
    const ParamInfo *bad = &m.table.items[2], *later = &m.table.items[3];
    m.params[bad->offset + 5] = NAN;
    m.params[later->offset] = -INFINITY;
    char dir[700];
    snprintf(dir, sizeof(dir), "%s/nan", tmpdir);
    CkptWriterOptions o = {
        .dir = dir, .keep = 1, .layout = {.tp = 1, .dp = 1}, .tmp_tag = getpid()};
    CkptWriter *w;
    cr_assert_eq(ckpt_writer_open(&o, &m.table, &w), DS_OK);
    char *hf = NULL;
    cr_assert_eq(hf_config_json_text(&mc, "", &hf), DS_OK);
    CkptMeta meta;
    meta_for(&meta, 1);
    meta.hf_config_json = hf;
    CkptBuffer b = {.prefix = "params", .base = m.params};
    cr_assert_eq(ckpt_writer_save(w, &meta, &b, 1, NULL, 0, NULL), DS_OK);
    cr_assert_eq(ckpt_writer_wait(w), DS_OK, "%s", ds_last_error());
    ckpt_writer_close(w);
    free(hf);

    char step[800], out[800], marker[900], expect[1200];
    snprintf(step, sizeof(step), "%s/step-00000001", dir);
    snprintf(out, sizeof(out), "%s/export", tmpdir);
    snprintf(marker, sizeof(marker), "%s/config.json", out);
    cr_assert_eq(mkdir(out, 0755), 0);
    FILE *f = fopen(marker, "w");
    cr_assert(f);
    fputs("{\"the\": \"previous export\"}\n", f);
    fclose(f);
    snprintf(expect, sizeof(expect),
             "export: %s: tensor %s: element 5 of %zu is NaN (2 non-finite values in 2 tensors); "
             "a model with non-finite weights is not exported",
             step, bad->name, bad->numel);
    /* replace = 1, as the end of a run exports */
    cr_assert_eq(hf_export_checkpoint(step, out, DT_BF16, 5000000000ull, 1), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), expect);
    /* the previous export is untouched, no temporary is left beside it */
    char text[64] = {0};
    f = fopen(marker, "r");
    cr_assert(f);
    cr_assert(fgets(text, sizeof(text), f));
    fclose(f);
    cr_assert_str_eq(text, "{\"the\": \"previous export\"}\n");
    DIR *d = opendir(tmpdir);
    struct dirent *de;
    while ((de = readdir(d)))
        cr_assert(!strstr(de->d_name, ".tmp-") && !strstr(de->d_name, ".old-"), "%s left",
                  de->d_name);
    closedir(d);
    cr_assert(!exists(out, "model.safetensors.index.json"));

    /* the command: exit 2, the same line, nothing written */
    char cmd[3000], err_path[800];
    snprintf(err_path, sizeof(err_path), "%s/export.err", tmpdir);
    snprintf(cmd, sizeof(cmd), "'%s' export --checkpoint '%s' --output '%s/cli' 2> '%s'",
             DSTRAIN_BINARY, step, tmpdir, err_path);
    int rc = system(cmd);
    cr_assert(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "exit %d", rc);
    char line[1600] = {0};
    f = fopen(err_path, "r");
    cr_assert(f);
    cr_assert(fgets(line, sizeof(line), f));
    fclose(f);
    char want_line[1300];
    snprintf(want_line, sizeof(want_line), "dstrain: error: %s\n", expect);
    cr_assert_str_eq(line, want_line);
    snprintf(cmd, sizeof(cmd), "%s/cli", tmpdir);
    struct stat st;
    cr_assert_neq(stat(cmd, &st), 0, "the refused export left %s", cmd);
    model_free(&m);
}

Test(ckpt, export_options_parse)
{
    uint64_t b;
    cr_assert_eq(export_parse_size("5GB", &b), DS_OK);
    cr_assert_eq(b, 5000000000ull);
    cr_assert_eq(export_parse_size("2GiB", &b), DS_OK);
    cr_assert_eq(b, 2147483648ull);
    cr_assert_eq(export_parse_size("500MB", &b), DS_OK);
    cr_assert_eq(b, 500000000ull);
    cr_assert_eq(export_parse_size("1000", &b), DS_OK);
    cr_assert_eq(b, 1000ull);
    cr_assert_eq(export_parse_size("5XB", &b), DS_ERR_INPUT);
    cr_assert_eq(export_parse_size("-1GB", &b), DS_ERR_INPUT);
    cr_assert_eq(export_parse_size("", &b), DS_ERR_INPUT);
    DType d;
    cr_assert_eq(export_parse_dtype("fp16", &d), DS_OK);
    cr_assert_eq(d, DT_F16);
    cr_assert_eq(export_parse_dtype("int8", &d), DS_ERR_INPUT);
}

/* ---- the trainer's side: extra buffers (EWC state) saved and resumed ------------------------- */

/* A trainer's state for train_ckpt_open: config with run.dir <tmpdir>/<run>, the tiny model on
 * the CPU with weights from seed, and its optimizer. */
static void trainer_state(Config *cfg, const char *run, int async, ModelConfig *mc, Model *m,
                          Optimizer *opt, uint64_t seed)
{
    config_set_defaults(cfg);
    snprintf(cfg->run_dir, sizeof(cfg->run_dir), "%s/%s", tmpdir, run);
    cfg->export_enabled = 0;
    cfg->checkpoint_async = async;
    cr_assert_eq(model_preset("tiny", mc), DS_OK);
    *m = (Model){0};
    *opt = (Optimizer){0};
    cr_assert_eq(model_init(m, mc, backend_cpu(), 1, 16), DS_OK);
    model_init_weights(m, seed, 0.02f);
    cr_assert_eq(optim_init(opt, &m->table), DS_OK);
}

Test(ckpt, extra_buffers_are_saved_and_loaded_on_resume)
{
    Config cfg;
    ModelConfig mc;
    Model m;
    Optimizer opt;
    trainer_state(&cfg, "trainrun", 1, &mc, &m, &opt, 5);
    opt.t = 9;
    LMReader *reader;
    char data[600];
    snprintf(data, sizeof(data), "%s/data/bundled/kjv-eval.h5", DSTRAIN_SOURCE_DIR);
    cr_assert_eq(lm_reader_open(data, mc.vocab_size, 16, 1, 0, 1, &reader), DS_OK, "%s",
                 ds_last_error());
    int32_t in[16], tg[16];
    float wt[16];
    cr_assert_eq(lm_reader_next(reader, 1, in, tg, wt), DS_OK);
    int64_t pos_saved;
    lm_reader_position(reader, &pos_saved);
    float *fisher = calloc(m.table.total, sizeof(float));
    for (size_t i = 0; i < m.table.total; i++)
        fisher[i] = (float)i * 0.5f;

    TrainCkpt *tc;
    int start = -1;
    cr_assert_eq(train_ckpt_open(&cfg, cfg.run_dir, &mc, &m, &opt, 100, NULL, &tc), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(train_ckpt_resume(tc, &start), DS_OK, "%s", ds_last_error());
    cr_assert_eq(start, 0);
    cr_assert_eq(train_ckpt_add_buffer(tc, "ewc.fisher", fisher, 0, 0, 1), DS_OK);
    CkptBlob blob = {"reader.position", &pos_saved, sizeof(pos_saved)};
    cr_assert_eq(train_ckpt_set_blobs(tc, &blob, 1), DS_OK);
    cr_assert_eq(train_ckpt_save_now(tc, 9, 1e-3f, 0), DS_OK, "%s", ds_last_error());
    train_ckpt_close(tc);

    /* resume into cleared state */
    float *params = malloc(m.table.total * sizeof(float));
    memcpy(params, m.params, m.table.total * sizeof(float));
    memset(m.params, 0, m.table.total * sizeof(float));
    memset(fisher, 0, m.table.total * sizeof(float));
    opt.t = 0;
    lm_reader_seek(reader, 0);
    snprintf(cfg.train_resume, sizeof(cfg.train_resume), "auto");
    cr_assert_eq(train_ckpt_open(&cfg, cfg.run_dir, &mc, &m, &opt, 100, NULL, &tc), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(train_ckpt_resume(tc, &start), DS_OK, "%s", ds_last_error());
    cr_assert_eq(start, 9);
    cr_assert_eq(opt.t, 9);
    size_t size = 0;
    cr_assert_eq(train_ckpt_blob_size(tc, "reader.position", &size), DS_OK);
    cr_assert_eq(size, sizeof(int64_t));
    int64_t saved = -1, pos;
    cr_assert_eq(train_ckpt_read_blob(tc, "reader.position", &saved, sizeof(saved)), DS_OK);
    cr_assert_eq(lm_reader_seek(reader, saved), DS_OK);
    lm_reader_position(reader, &pos);
    cr_assert_eq(pos, pos_saved);
    cr_assert_eq(memcmp(params, m.params, m.table.total * sizeof(float)), 0);
    cr_assert_eq(train_ckpt_add_buffer(tc, "ewc.fisher", fisher, 0, 0, 1), DS_OK, "%s",
                 ds_last_error());
    for (int i = 0; i < m.table.count; i++) {
        const ParamInfo *p = &m.table.items[i];
        cr_assert_eq(fisher[p->offset + p->numel - 1], (float)(p->offset + p->numel - 1) * 0.5f);
    }
    train_ckpt_close(tc);
    free(params);
    free(fisher);
    lm_reader_close(reader);
    optim_free(&opt);
    model_free(&m);
}

/* ---- resume into device memory: only this rank's ZeRO range is written ----------------------- */

/* The CPU backend with host_memory off, as a GPU backend looks to the checkpoint code: loads go
 * through mem_to_device, and while the allowed ranges are set every copy must fall inside one. */
static Backend staged;
static const float *allowed[3][2];
static int copies_outside;

static void staged_to_device(const Backend *be, void *dst, const void *src, size_t bytes)
{
    const float *d = dst, *e = (const float *)((const char *)dst + bytes);
    int inside = allowed[0][0] == NULL;
    for (int i = 0; i < 3 && !inside; i++)
        inside = allowed[i][0] && d >= allowed[i][0] && e <= allowed[i][1];
    copies_outside += !inside;
    if (inside) memcpy(dst, src, bytes);
}

Test(ckpt, resume_into_device_memory_writes_only_the_zero_shard)
{
    Config cfg;
    ModelConfig mc;
    Model m;
    Optimizer opt;
    trainer_state(&cfg, "shardrun", 0, &mc, &m, &opt, 7);
    const size_t total = m.table.total;
    for (size_t i = 0; i < total; i++)
        opt.m[i] = (float)i * 0.25f, opt.v[i] = (float)i * 0.125f;
    opt.t = 4;
    TrainCkpt *tc;
    int start = -1;
    cr_assert_eq(train_ckpt_open(&cfg, cfg.run_dir, &mc, &m, &opt, 100, NULL, &tc), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(train_ckpt_save_now(tc, 4, 1e-3f, 0), DS_OK, "%s", ds_last_error());
    train_ckpt_close(tc);

    /* dp rank 1 of 3 with ZeRO: its moments hold flat elements [lo, hi) only */
    staged = *backend_cpu();
    staged.host_memory = 0;
    staged.mem_to_device = staged_to_device;
    Model dev = {0};
    cr_assert_eq(model_init(&dev, &mc, &staged, 1, 16), DS_OK);
    const size_t lo = total / 3, hi = 2 * total / 3;
    float *m_shard = calloc(hi - lo, sizeof(float)), *v_shard = calloc(hi - lo, sizeof(float));
    Optimizer shard = {
        .m = m_shard - lo, .v = v_shard - lo, .n = hi - lo, .shard_begin = lo, .zero = 1};
    const TrainCkptWorld world = {.layout = {.tp = 1, .dp = 3, .zero = 1, .dp_rank = 1},
                                  .tmp_tag = (long)getpid(),
                                  .optim_begin = lo,
                                  .optim_end = hi};
    const float *ranges[3][2] = {{dev.params, dev.params + total},
                                 {m_shard, m_shard + (hi - lo)},
                                 {v_shard, v_shard + (hi - lo)}};
    memcpy(allowed, ranges, sizeof(allowed));
    copies_outside = 0;
    snprintf(cfg.train_resume, sizeof(cfg.train_resume), "auto");
    cr_assert_eq(train_ckpt_open(&cfg, cfg.run_dir, &mc, &dev, &shard, 100, &world, &tc), DS_OK,
                 "%s", ds_last_error());
    cr_assert_eq(train_ckpt_resume(tc, &start), DS_OK, "%s", ds_last_error());
    memset(allowed, 0, sizeof(allowed));
    cr_expect_eq(copies_outside, 0, "%d copies outside the parameters and this shard",
                 copies_outside);
    cr_expect_eq(start, 4);
    cr_expect_eq(shard.t, 4);
    cr_expect_eq(memcmp(dev.params, m.params, total * sizeof(float)), 0);
    for (size_t i = lo; i < hi; i++) {
        cr_expect_eq(m_shard[i - lo], (float)i * 0.25f, "m[%zu]", i);
        cr_expect_eq(v_shard[i - lo], (float)i * 0.125f, "v[%zu]", i);
        if (m_shard[i - lo] != (float)i * 0.25f) break;
    }
    train_ckpt_close(tc);
    free(m_shard);
    free(v_shard);
    model_free(&dev);
    optim_free(&opt);
    model_free(&m);
}
