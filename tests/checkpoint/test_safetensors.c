/* test_safetensors.c: the safetensors writer round-trips every dtype dstrain maps, and the reader
 * refuses each kind of malformed file with its own message (never a crash), including randomly
 * mutated headers. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/safetensors.h"

static char tmpdir[512];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/checkpoint_st_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

TestSuite(safetensors, .init = setup, .fini = teardown);

static const char *tmp_path(const char *name)
{
    static char path[4][700];
    static int which;
    which = (which + 1) % 4;
    snprintf(path[which], sizeof(path[which]), "%s/%s", tmpdir, name);
    return path[which];
}

/* A file with an explicit header length field, header text and data bytes. */
static void write_raw_len(const char *path, uint64_t declared, const char *header, size_t hlen,
                          const void *data, size_t dlen)
{
    FILE *fp = fopen(path, "wb");
    cr_assert(fp);
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(declared >> (8 * i));
    cr_assert_eq(fwrite(le, 1, 8, fp), 8);
    if (hlen) cr_assert_eq(fwrite(header, 1, hlen, fp), hlen);
    if (dlen) cr_assert_eq(fwrite(data, 1, dlen, fp), dlen);
    fclose(fp);
}

static void write_raw(const char *path, const char *header, size_t dlen)
{
    unsigned char *zeros = calloc(dlen ? dlen : 1, 1);
    write_raw_len(path, strlen(header), header, strlen(header), zeros, dlen);
    free(zeros);
}

static void assert_open_fails(const char *path, const char *expect)
{
    SafetensorsFile f;
    ds_clear_error();
    int rc = safetensors_open(path, &f);
    cr_assert_eq(rc, DS_ERR_INPUT, "expected DS_ERR_INPUT for \"%s\", got %d (%s)", expect, rc,
                 ds_last_error());
    cr_assert(strstr(ds_last_error(), expect), "message \"%s\" lacks \"%s\"", ds_last_error(),
              expect);
    cr_assert(strstr(ds_last_error(), path), "message \"%s\" does not name the file",
              ds_last_error());
    cr_assert_null(f.map);
    cr_assert_eq(f.fd, -1);
}

Test(safetensors, test_roundtrip_all_mapped_dtypes_and_shapes)
{
    float f32[2 * 3 * 4];
    uint16_t bf16[5 * 2], f16[3];
    int32_t i32[4] = {-7, 0, 123456789, -2147483647 - 1};
    int64_t i64[2] = {-1, 9007199254740993LL};
    uint8_t u8[7] = {0, 1, 2, 3, 250, 254, 255};
    for (int i = 0; i < 24; i++)
        f32[i] = (float)i * 0.25f - 3.0f;
    for (int i = 0; i < 10; i++)
        bf16[i] = f32_to_bf16((float)i - 4.5f);
    for (int i = 0; i < 3; i++)
        f16[i] = f32_to_f16((float)i * 1.5f);
    float scalar = 42.5f;
    STWriteItem items[] = {
        {"z.weight", DT_F32, 3, {2, 3, 4}, f32}, {"a.bias", DT_BF16, 2, {5, 2}, bf16},
        {"m.half", DT_F16, 1, {3}, f16},         {"ints", DT_I32, 2, {2, 2}, i32},
        {"longs", DT_I64, 1, {2}, i64},          {"bytes", DT_U8, 1, {7}, u8},
        {"scalar", DT_F32, 0, {0}, &scalar},     {"empty", DT_F32, 2, {0, 5}, NULL},
    };
    const char *path = tmp_path("all.safetensors");
    cr_assert_eq(safetensors_write(path, items, 8, "{\"format\":\"pt\",\"note\":\"a \\\"q\\\"\"}"),
                 DS_OK, "%s", ds_last_error());
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_eq(f.count, 8);
    cr_assert_eq(f.data_start % 8, 0, "header padded to 8 bytes");
    cr_assert_str_eq(f.metadata_json, "{\"format\":\"pt\",\"note\":\"a \\\"q\\\"\"}");
    for (int i = 0; i < 8; i++) {
        const STEntry *e = safetensors_find(&f, items[i].name);
        cr_assert_not_null(e, "%s", items[i].name);
        cr_assert_eq(e->dtype, (int)items[i].dtype);
        cr_assert_str_eq(e->dtype_name, dtype_name(items[i].dtype));
        cr_assert_eq(e->elem_size, dtype_size(items[i].dtype));
        cr_assert_eq(e->ndim, items[i].ndim);
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            cr_assert_eq(e->shape[d], items[i].shape[d]);
            numel *= (size_t)e->shape[d];
        }
        cr_assert_eq(e->end - e->begin, numel * e->elem_size);
        if (numel)
            cr_assert_eq(memcmp(safetensors_data(&f, e), items[i].data, e->end - e->begin), 0);
    }
    /* Data is laid out in the order given: z.weight first. */
    cr_assert_eq(safetensors_find(&f, "z.weight")->begin, 0);
    cr_assert_eq(safetensors_find(&f, "a.bias")->begin, sizeof(f32));
    cr_assert_null(safetensors_find(&f, "missing"));
    safetensors_close(&f);
    cr_assert_null(f.map);
}

Test(safetensors, test_header_is_sorted_with_metadata_first_and_space_padded)
{
    float v[2] = {1, 2};
    STWriteItem items[] = {{"b", DT_F32, 1, {1}, v}, {"a", DT_F32, 1, {1}, v + 1}};
    const char *path = tmp_path("order.safetensors");
    cr_assert_eq(safetensors_write(path, items, 2, "{\"format\":\"pt\"}"), DS_OK);
    FILE *fp = fopen(path, "rb");
    unsigned char buf[256];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    cr_assert_eq(hlen % 8, 0);
    cr_assert_eq(n, 8 + hlen + 8);
    const char *expect = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    cr_assert_eq(memcmp(buf + 8, expect, strlen(expect)), 0, "%.*s", (int)hlen, buf + 8);
    for (size_t i = 8 + strlen(expect); i < 8 + hlen; i++)
        cr_assert_eq(buf[i], ' ');
    float back[2];
    memcpy(back, buf + 8 + hlen, 8);
    cr_assert_eq(back[0], 1.0f);
    cr_assert_eq(back[1], 2.0f);
}

Test(safetensors, test_empty_file_with_no_tensors_roundtrips)
{
    const char *path = tmp_path("none.safetensors");
    cr_assert_eq(safetensors_write(path, NULL, 0, NULL), DS_OK, "%s", ds_last_error());
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_eq(f.count, 0);
    cr_assert_null(f.metadata_json);
    safetensors_close(&f);
}

Test(safetensors, test_writer_replaces_existing_file_atomically_and_leaves_no_temp)
{
    const char *path = tmp_path("replace.safetensors");
    float a = 1, b = 2;
    STWriteItem one = {"x", DT_F32, 1, {1}, &a};
    cr_assert_eq(safetensors_write(path, &one, 1, NULL), DS_OK);
    one.data = &b;
    cr_assert_eq(safetensors_write(path, &one, 1, NULL), DS_OK);
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK);
    float got;
    memcpy(&got, safetensors_data(&f, safetensors_find(&f, "x")), 4);
    cr_assert_eq(got, 2.0f);
    safetensors_close(&f);
    char tmp[800];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    cr_assert_neq(access(tmp, F_OK), 0);
}

Test(safetensors, test_writer_error_names_path_and_reason)
{
    float a = 1;
    STWriteItem one = {"x", DT_F32, 1, {1}, &a};
    const char *path = tmp_path("no/such/dir/x.safetensors");
    cr_assert_eq(safetensors_write(path, &one, 1, NULL), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), path), "%s", ds_last_error());
    cr_assert(strstr(ds_last_error(), strerror(ENOENT)), "%s", ds_last_error());
}

Test(safetensors, test_writer_failing_midway_reports_and_removes_temp_file)
{
    /* A file size limit makes write() fail with EFBIG halfway, like a full disk would. */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {.rlim_cur = 4096, .rlim_max = RLIM_INFINITY};
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = 4096;
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    size_t n = 1 << 16;
    float *big = calloc(n, sizeof(float));
    STWriteItem one = {"big", DT_F32, 1, {(int64_t)n}, big};
    const char *path = tmp_path("big.safetensors");
    cr_assert_eq(safetensors_write(path, &one, 1, NULL), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), path), "%s", ds_last_error());
    cr_assert(strstr(ds_last_error(), strerror(EFBIG)), "%s", ds_last_error());
    cr_assert_neq(access(path, F_OK), 0, "no partial file at the final path");
    char tmp[800];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    cr_assert_neq(access(tmp, F_OK), 0, "temp file removed");
    free(big);
}

Test(safetensors, test_writer_refuses_duplicate_names_and_bad_metadata)
{
    float a[2] = {1, 2};
    STWriteItem two[] = {{"x", DT_F32, 1, {1}, a}, {"x", DT_F32, 1, {1}, a + 1}};
    const char *path = tmp_path("dup.safetensors");
    cr_assert_eq(safetensors_write(path, two, 2, NULL), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "\"x\" given twice"), "%s", ds_last_error());
    cr_assert_eq(safetensors_write(path, two, 1, "{\"a\":1}"), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "metadata"), "%s", ds_last_error());
    STWriteItem neg = {"n", DT_F32, 1, {-3}, a};
    cr_assert_eq(safetensors_write(path, &neg, 1, NULL), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "negative"), "%s", ds_last_error());
    cr_assert_neq(access(path, F_OK), 0);
}

Test(safetensors, test_names_with_quotes_and_unicode_are_escaped)
{
    float a[2] = {1, 2};
    STWriteItem items[] = {{"we\"ird\\name\n", DT_F32, 1, {1}, a}, {"ünï", DT_F32, 1, {1}, a + 1}};
    const char *path = tmp_path("esc.safetensors");
    cr_assert_eq(safetensors_write(path, items, 2, NULL), DS_OK, "%s", ds_last_error());
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_not_null(safetensors_find(&f, "we\"ird\\name\n"));
    const STEntry *e = safetensors_find(&f, "ünï");
    cr_assert_not_null(e);
    float got;
    memcpy(&got, safetensors_data(&f, e), 4);
    cr_assert_eq(got, 2.0f);
    safetensors_close(&f);
}

Test(safetensors, test_unmapped_dtypes_are_read_with_dtype_minus_one)
{
    const char *h = "{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[16,19]},"
                    "\"c\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[19,20]},"
                    "\"d\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[20,22]},"
                    "\"e\":{\"dtype\":\"I16\",\"shape\":[1,1],\"data_offsets\":[22,24]}}   ";
    const char *path = tmp_path("other.safetensors");
    write_raw(path, h, 24);
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_eq(f.count, 5);
    const STEntry *a = safetensors_find(&f, "a");
    cr_assert_eq(a->dtype, -1);
    cr_assert_str_eq(a->dtype_name, "F64");
    cr_assert_eq(a->elem_size, 8);
    cr_assert_eq(safetensors_find(&f, "b")->dtype, -1);
    cr_assert_eq(safetensors_find(&f, "d")->end, 22);
    cr_assert_null(f.metadata_json);
    safetensors_close(&f);
}

/* ---- hostile files ------------------------------------------------------------------------ */

Test(safetensors, test_missing_file)
{
    assert_open_fails(tmp_path("nope.safetensors"), "cannot open");
}

Test(safetensors, test_file_shorter_than_8_bytes)
{
    const char *path = tmp_path("short.safetensors");
    FILE *fp = fopen(path, "wb");
    fwrite("abc", 1, 3, fp);
    fclose(fp);
    assert_open_fails(path, "too short");
    fp = fopen(path, "wb");
    fclose(fp);
    assert_open_fails(path, "file is 0 bytes");
}

Test(safetensors, test_header_length_over_limit)
{
    const char *path = tmp_path("huge.safetensors");
    write_raw_len(path, 100000001ULL, "{}", 2, NULL, 0);
    assert_open_fails(path, "exceeds the limit of 100000000 bytes");
    write_raw_len(path, UINT64_MAX, "{}", 2, NULL, 0);
    assert_open_fails(path, "exceeds the limit");
}

Test(safetensors, test_header_length_beyond_file)
{
    const char *path = tmp_path("beyond.safetensors");
    write_raw_len(path, 3, "{}", 2, NULL, 0);
    assert_open_fails(path, "goes beyond the end of the file (10 bytes)");
}

Test(safetensors, test_directory_is_not_a_file)
{
    assert_open_fails(tmpdir, "not a regular file");
}

typedef struct Hostile {
    const char *header;
    size_t data_len;
    const char *expect;
} Hostile;

static const Hostile hostile[] = {
    {"", 0, "does not start with '{'"},
    {"  {}", 0, "does not start with '{'"},
    {"[1,2]", 0, "does not start with '{'"},
    {"{\"a\":", 0, "not valid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",}}", 0, "not valid JSON"},
    {"{\"a\":\"\xff\"}", 0, "not valid UTF-8"},
    {"{} x", 0, "bytes after its JSON object"},
    {"{\"a\x01\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "control character 0x01 at byte 3"},
    {"{\x0b}", 0, "control character 0x0b at byte 1"},
    {"{\"a\":[1]}", 0, "tensor \"a\": expected an object, got [1]"},
    {"{\"a\":{\"dtype\":\"Q8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": unknown dtype \"Q8\""},
    {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": dtype: expected a string, got 7"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor \"a\": \"dtype\" is missing"},
    {"{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "\"shape\" is missing"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "\"data_offsets\" is missing"},
    {"{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "\"dtype\" appears twice"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": shape[0]: expected an integer in [0, 2^53], got -1"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,2.5],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": shape[1]: expected an integer in [0, 2^53], got 2.5"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[\"1\"],\"data_offsets\":[0,1]}}", 1,
     "shape[0]: expected an integer in [0, 2^53], got \"1\""},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":1,\"data_offsets\":[0,1]}}", 1,
     "shape: expected an array, got 1"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     "shape has 9 dimensions, at most 8"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
     "tensor \"a\": 4 elements of F32 need 16 bytes, but data_offsets [0, 12] span 12"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
     "tensor \"a\": data_offsets [0, 16] go beyond the data section (8 bytes)"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}",
     3, "bytes [1, 2) of the data section belong to no tensor (a gap before tensor \"b\")"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
     "bytes [0, 1) of the data section belong to no tensor"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}",
     3, "tensor \"b\": data_offsets [1, 3] overlap tensor \"a\""},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
     "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
     2, "overlap tensor"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 5,
     "3 trailing bytes after the last tensor"},
    {"{}", 4, "4 bytes after the header belong to no tensor"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,0]}}", 2,
     "tensor \"a\": data_offsets [2, 0]: end is before begin"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", 1,
     "data_offsets: expected [begin, end] non-negative integers, got [0]"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,-1]}}", 1,
     "data_offsets: expected [begin, end]"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 1,
     "data_offsets: expected [begin, end]"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, "tensor \"a\" appears twice in the header"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": shape overflows"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": shape[0]: expected an integer in [0, 2^53]"},
    {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483648,1073741824],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": shape overflows"},
    {"{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1,
     "3 elements of F4 do not fill whole bytes"},
    {"{\"__metadata__\":{\"format\":1}}", 0,
     "\"__metadata__\": value of \"format\" must be a string, got 1"},
    {"{\"__metadata__\":[\"pt\"]}", 0, "\"__metadata__\" must be an object of strings"},
    {"{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "key \"k\" appears twice"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\" appears twice"},
    /* names from the file reach the message escaped: a quote cannot end the name early, a
     * newline or a terminal escape cannot add a line or clear the screen */
    {"{\"a\\\"b\\n\\u001b[2J\\u0007\":{\"dtype\":\"Q8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\\\"b\\n\\x1B[2J\\x07\": unknown dtype \"Q8\""},
    {"{\"a\":{\"dtype\":\"Q8\\n\\u001b]0;x\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "tensor \"a\": unknown dtype \"Q8\\n\\x1B]0;x\""},
    {"{\"x\\r\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"x\\r\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
     2, "tensor \"x\\x0D\" appears twice in the header"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
     "\"\\u001b[31m\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]}}",
     3, "tensor \"\\x1B[31m\": data_offsets [1, 3] overlap tensor \"a\""},
    {"{\"__metadata__\":{\"k\\\"\\n\":1}}", 0,
     "\"__metadata__\": value of \"k\\\"\\n\" must be a string, got 1"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[\"\\u001b[2J\"],\"data_offsets\":[0,1]}}", 1,
     "shape[0]: expected an integer in [0, 2^53], got \"\\u001b[2J\""},
};

Test(safetensors, test_hostile_headers_each_get_their_own_message)
{
    const char *path = tmp_path("hostile.safetensors");
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        write_raw(path, hostile[i].header, hostile[i].data_len);
        assert_open_fails(path, hostile[i].expect);
    }
}

Test(safetensors, test_metadata_null_is_accepted_and_trailing_whitespace_allowed)
{
    const char *path = tmp_path("meta_null.safetensors");
    write_raw(
        path,
        "{\"__metadata__\":null,\"a\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}\n\t ",
        1);
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_null(f.metadata_json);
    cr_assert_eq(safetensors_find(&f, "a")->ndim, 0);
    safetensors_close(&f);
}

Test(safetensors, test_zero_sized_tensors_may_share_an_offset)
{
    const char *path = tmp_path("zeros.safetensors");
    write_raw(path,
              "{\"z1\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
              "\"z2\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[0,0]},"
              "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
              "\"z3\":{\"dtype\":\"I64\",\"shape\":[5,0],\"data_offsets\":[2,2]}}",
              2);
    SafetensorsFile f;
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_eq(f.count, 4);
    safetensors_close(&f);
}

/* Random byte flips in a valid file never crash the reader: it either accepts the file (and
 * every entry then lies inside the mapping) or returns an input error. */
Test(safetensors, test_random_header_mutations_never_crash)
{
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[4] = {1, 2, 3, 4};
    int64_t l[1] = {7};
    STWriteItem items[] = {{"model.w", DT_F32, 2, {2, 3}, w},
                           {"model.h", DT_BF16, 1, {4}, h},
                           {"model.l", DT_I64, 0, {0}, l}};
    const char *good = tmp_path("good.safetensors");
    cr_assert_eq(safetensors_write(good, items, 3, "{\"format\":\"pt\"}"), DS_OK);
    FILE *fp = fopen(good, "rb");
    unsigned char orig[4096];
    size_t n = fread(orig, 1, sizeof(orig), fp);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | orig[i];
    const char *path = tmp_path("mutant.safetensors");
    unsigned seed = 12345;
    int accepted = 0, refused = 0;
    static const char interesting[] = "{}[]\",:0123456789-.eE \\u";
    for (int iter = 0; iter < 200; iter++) {
        unsigned char buf[4096];
        memcpy(buf, orig, n);
        int flips = 1 + (int)(rand_r(&seed) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = (size_t)(rand_r(&seed) % (unsigned)(8 + hlen));
            if (rand_r(&seed) % 2)
                buf[at] = (unsigned char)rand_r(&seed);
            else
                buf[at] = (unsigned char)interesting[rand_r(&seed) % (sizeof(interesting) - 1)];
        }
        fp = fopen(path, "wb");
        fwrite(buf, 1, n, fp);
        fclose(fp);
        SafetensorsFile f;
        int rc = safetensors_open(path, &f);
        if (rc == DS_OK) {
            accepted++;
            for (int i = 0; i < f.count; i++) {
                cr_assert_leq(f.entries[i].begin, f.entries[i].end);
                cr_assert_leq(f.data_start + f.entries[i].end, f.size);
                volatile unsigned char sink = 0;
                const unsigned char *p = safetensors_data(&f, &f.entries[i]);
                for (size_t b = 0; b < f.entries[i].end - f.entries[i].begin; b++)
                    sink ^= p[b];
                (void)sink;
            }
            safetensors_close(&f);
        } else {
            refused++;
            cr_assert_eq(rc, DS_ERR_INPUT, "iteration %d: %s", iter, ds_last_error());
            cr_assert(strstr(ds_last_error(), path), "%s", ds_last_error());
        }
    }
    cr_assert_gt(refused, 100, "most mutations must be refused (%d refused)", refused);
}

/* A file written by the reference implementation (tests/checkpoint/fixtures/make_reference.py):
 * its header is in data order, not name order, and padded with spaces. */
Test(safetensors, test_reads_file_written_by_reference_implementation)
{
    SafetensorsFile f;
    const char *path = DSTRAIN_SOURCE_DIR "/tests/checkpoint/fixtures/reference.safetensors";
    cr_assert_eq(safetensors_open(path, &f), DS_OK, "%s", ds_last_error());
    cr_assert_eq(f.count, 5);
    cr_assert_str_eq(f.metadata_json, "{\"format\":\"pt\",\"writer\":\"safetensors 0.8.0\"}");
    const STEntry *w = safetensors_find(&f, "model.layers.0.mlp.up_proj.weight");
    cr_assert_not_null(w);
    cr_assert_eq(w->dtype, DT_F32);
    cr_assert_eq(w->ndim, 2);
    cr_assert_eq(w->shape[0], 2);
    cr_assert_eq(w->shape[1], 3);
    float wv[6];
    memcpy(wv, safetensors_data(&f, w), sizeof(wv));
    for (int i = 0; i < 6; i++)
        cr_assert_eq(wv[i], 0.5f * (float)i - 1.0f);
    const STEntry *n = safetensors_find(&f, "model.norm.weight");
    cr_assert_eq(n->dtype, DT_BF16);
    uint16_t nv[3];
    memcpy(nv, safetensors_data(&f, n), sizeof(nv));
    cr_assert_eq(bf16_to_f32(nv[0]), 1.0f);
    cr_assert_eq(bf16_to_f32(nv[1]), -2.0f);
    cr_assert_eq(bf16_to_f32(nv[2]), 3.140625f);
    const STEntry *s = safetensors_find(&f, "step");
    cr_assert_eq(s->dtype, DT_I64);
    cr_assert_eq(s->ndim, 0);
    int64_t step;
    memcpy(&step, safetensors_data(&f, s), 8);
    cr_assert_eq(step, -1234567890123LL);
    const STEntry *e = safetensors_find(&f, "empty");
    cr_assert_eq(e->dtype, DT_F16);
    cr_assert_eq(e->begin, e->end);
    const STEntry *b = safetensors_find(&f, "bytes");
    cr_assert_eq(b->dtype, DT_U8);
    cr_assert_eq(memcmp(safetensors_data(&f, b), "\x07\x00\xff", 3), 0);
    safetensors_close(&f);
}

/* A header inside the 100 MB limit can still list a million zero-size tensors (1.7 GB once
 * parsed): the tensors are counted before the header is parsed. */
Test(safetensors, test_header_of_very_many_tensors_is_refused_before_parsing)
{
    const char *path = tmp_path("many.safetensors");
    const size_t n = 300000;
    char *h = malloc(n * 64 + 16);
    size_t o = 0;
    h[o++] = '{';
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(h + o, "%s\"t%zu\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                             i ? "," : "", i);
    h[o++] = '}';
    write_raw_len(path, o, h, o, NULL, 0);
    free(h);
    assert_open_fails(path, "header lists 300000 tensors, more than the 262144 one file may hold");
}

/* a FIFO would block open() until a writer came */
Test(safetensors, test_fifo_is_refused_without_blocking, .timeout = 20)
{
    const char *path = tmp_path("fifo.safetensors");
    cr_assert_eq(mkfifo(path, 0600), 0);
    assert_open_fails(path, "not a regular file");
}
