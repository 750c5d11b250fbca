/* test_pack.c: `dstrain pack` round trips (read back by our reader and by h5py) and its
 * errors on bad JSONL, each naming FILE:LINE and leaving no output file behind. */
#include "data_test_util.h"

#include <dirent.h>
#include <sys/resource.h>

static const char *ROUND_TRIP_JSONL =
    "{\"input_ids\": [5, 6, 7], \"loss_mask\": [0, 1, 1], \"label\": 3, \"task\": 1}\n"
    "\n"
    "{\"input_ids\": [9], \"loss_mask\": [1], \"label\": -2, \"task\": 0}\n"
    "   {\"input_ids\": [1, 2, 3, 4, 0], \"loss_mask\": [1, 0, 1, 0, 1], \"label\": 7, \"task\": "
    "4}\r\n";

Test(pack, round_trip_reads_back_through_dataset_read_doc)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-round-trip", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "docs.jsonl");
    test_path(out, sizeof(out), dir, "docs.h5");
    write_text(in, ROUND_TRIP_JSONL);
    int rc = run_pack("--input", in, "--output", out, "--vocab-size", "16", "--eos-id", "15",
                      "--bos-id=14", "--tokenizer", "test-tok", NULL);
    cr_assert_eq(rc, DS_OK, "pack failed: %s", ds_last_error());

    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(out, 16, &ds), DS_OK, "%s", ds_last_error());
    const DatasetInfo *info = dataset_info(ds);
    cr_assert_eq(info->n_docs, 3);
    cr_assert_eq(info->n_tokens, 9);
    cr_assert_eq(info->vocab_size, 16);
    cr_assert_eq(info->eos_id, 15);
    cr_assert_eq(info->bos_id, 14);
    cr_assert_eq(info->pad_id, -1);
    cr_assert_str_eq(info->tokenizer, "test-tok");
    cr_assert(info->has_loss_mask && info->has_labels && info->has_task_ids);

    const int32_t want_tokens[3][5] = {{5, 6, 7}, {9}, {1, 2, 3, 4, 0}};
    const uint8_t want_mask[3][5] = {{0, 1, 1}, {1}, {1, 0, 1, 0, 1}};
    const int64_t want_len[3] = {3, 1, 5};
    for (int d = 0; d < 3; d++) {
        int32_t tokens[5] = {0};
        uint8_t mask[5] = {0};
        cr_assert_eq(dataset_doc_length(ds, d), want_len[d]);
        cr_assert_eq(dataset_read_doc(ds, d, 0, want_len[d], tokens, mask), DS_OK, "%s",
                     ds_last_error());
        for (int i = 0; i < want_len[d]; i++) {
            cr_assert_eq(tokens[i], want_tokens[d][i], "doc %d token %d", d, i);
            cr_assert_eq(mask[i], want_mask[d][i], "doc %d mask %d", d, i);
        }
    }
    /* A read from the middle of a document. */
    int32_t part[2];
    cr_assert_eq(dataset_read_doc(ds, 2, 2, 2, part, NULL), DS_OK);
    cr_assert_eq(part[0], 3);
    cr_assert_eq(part[1], 4);
    /* Out of range reads fail, they do not read a neighbour. */
    cr_assert_neq(dataset_read_doc(ds, 1, 0, 2, part, NULL), DS_OK);
    cr_assert_neq(dataset_read_doc(ds, 3, 0, 1, part, NULL), DS_OK);

    int64_t labels[3];
    int32_t tasks[3];
    cr_assert_eq(dataset_read_labels(ds, 0, 3, labels), DS_OK);
    cr_assert_eq(dataset_read_task_ids(ds, 0, 3, tasks), DS_OK);
    cr_assert_eq(labels[0], 3);
    cr_assert_eq(labels[1], -2);
    cr_assert_eq(labels[2], 7);
    cr_assert_eq(tasks[0], 1);
    cr_assert_eq(tasks[1], 0);
    cr_assert_eq(tasks[2], 4);
    dataset_close(ds);

    /* No temporary file left next to the output. */
    DIR *dh = opendir(dir);
    struct dirent *e;
    while ((e = readdir(dh)))
        cr_assert(strstr(e->d_name, ".tmp") == NULL, "left behind: %s", e->d_name);
    closedir(dh);
}

Test(pack, round_trip_reads_back_with_h5py)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-h5py", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "docs.jsonl");
    test_path(out, sizeof(out), dir, "docs.h5");
    write_text(in, ROUND_TRIP_JSONL);
    cr_assert_eq(run_pack("--input", in, "--output", out, "--eos-id", "15", "--compress", NULL),
                 DS_OK, "%s", ds_last_error());
    const char *script =
        "import sys, h5py, numpy as np\n"
        "f = h5py.File(sys.argv[1] + '/docs.h5', 'r')\n"
        "assert f.attrs['format'] == 'dstrain-tokens', f.attrs['format']\n"
        "assert int(f.attrs['format_version']) == 1\n"
        "assert int(f.attrs['vocab_size']) == 16, f.attrs['vocab_size']  # eos 15 is the top id\n"
        "assert int(f.attrs['eos_id']) == 15 and int(f.attrs['bos_id']) == -1\n"
        "assert int(f.attrs['pad_id']) == -1 and f.attrs['tokenizer'] == ''\n"
        "t = f['tokens']\n"
        "assert t.dtype == np.int32 and t.ndim == 1 and t.chunks is not None\n"
        "assert t.compression == 'gzip' and t.shuffle\n"
        "assert list(t[:]) == [5, 6, 7, 9, 1, 2, 3, 4, 0], list(t[:])\n"
        "assert f['doc_offsets'].dtype == np.int64\n"
        "assert list(f['doc_offsets'][:]) == [0, 3, 4, 9]\n"
        "assert f['loss_mask'].dtype == np.uint8\n"
        "assert list(f['loss_mask'][:]) == [0, 1, 1, 1, 1, 0, 1, 0, 1]\n"
        "assert f['labels'].dtype == np.int64 and list(f['labels'][:]) == [3, -2, 7]\n"
        "assert f['task_ids'].dtype == np.int32 and list(f['task_ids'][:]) == [1, 0, 4]\n";
    cr_assert_eq(run_python(dir, "check", script), 0, "h5py check failed");
}

/* Big enough to cross the append batch (1M tokens), with the first loss mask appearing only in
 * the last document, after earlier tokens were already written: those must read back as 1. */
Test(pack, late_loss_mask_and_batches_larger_than_one_append)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-big", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "big.jsonl");
    test_path(out, sizeof(out), dir, "big.h5");
    const int64_t doc_len = 450000, n_docs = 3;
    FILE *f = fopen(in, "w");
    cr_assert_not_null(f);
    for (int64_t d = 0; d < n_docs; d++) {
        fputs("{\"input_ids\": [", f);
        for (int64_t i = 0; i < doc_len; i++)
            fprintf(f, "%s%d", i ? "," : "", (int)((d * 7 + i) % 1000));
        fputs("]", f);
        if (d == n_docs - 1) {
            fputs(", \"loss_mask\": [", f);
            for (int64_t i = 0; i < doc_len; i++)
                fprintf(f, "%s%d", i ? "," : "", (int)(i % 3 == 0));
            fputs("]", f);
        }
        fputs("}\n", f);
    }
    fclose(f);
    cr_assert_eq(run_pack("--input", in, "--output", out, NULL), DS_OK, "%s", ds_last_error());

    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(out, 0, &ds), DS_OK, "%s", ds_last_error());
    cr_assert_eq(dataset_info(ds)->n_tokens, doc_len * n_docs);
    cr_assert_eq(dataset_info(ds)->vocab_size, 1000, "vocab is max id + 1");
    cr_assert(dataset_info(ds)->has_loss_mask);
    int32_t *tokens = malloc((size_t)doc_len * sizeof(int32_t));
    uint8_t *mask = malloc((size_t)doc_len);
    for (int64_t d = 0; d < n_docs; d++) {
        cr_assert_eq(dataset_read_doc(ds, d, 0, doc_len, tokens, mask), DS_OK, "%s",
                     ds_last_error());
        for (int64_t i = 0; i < doc_len; i++) {
            cr_assert_eq(tokens[i], (int)((d * 7 + i) % 1000), "doc %ld token %ld", (long)d,
                         (long)i);
            int want = d == n_docs - 1 ? (i % 3 == 0) : 1;
            cr_assert_eq(mask[i], want, "doc %ld mask %ld", (long)d, (long)i);
        }
    }
    free(tokens);
    free(mask);
    dataset_close(ds);
}

Test(pack, several_inputs_are_concatenated_in_order)
{
    char dir[1024], a[1100], b[1100], out[1100];
    test_dir("pack-multi", dir, sizeof(dir));
    test_path(a, sizeof(a), dir, "a.jsonl");
    test_path(b, sizeof(b), dir, "b.jsonl");
    test_path(out, sizeof(out), dir, "ab.h5");
    write_text(a, "{\"input_ids\": [1, 2]}\n");
    write_text(b, "{\"input_ids\": [3]}\n{\"input_ids\": [4, 5, 6]}\n");
    cr_assert_eq(run_pack("--input", a, "--input", b, "--output", out, NULL), DS_OK, "%s",
                 ds_last_error());
    TokenDataset *ds = NULL;
    cr_assert_eq(dataset_open(out, 0, &ds), DS_OK, "%s", ds_last_error());
    cr_assert_eq(dataset_info(ds)->n_docs, 3);
    cr_assert_eq(dataset_info(ds)->vocab_size, 7);
    cr_assert_eq(dataset_info(ds)->has_loss_mask, 0);
    cr_assert_eq(dataset_info(ds)->has_labels, 0);
    int32_t t[3];
    uint8_t m[3];
    cr_assert_eq(dataset_read_doc(ds, 2, 0, 3, t, m), DS_OK);
    cr_assert(t[0] == 4 && t[1] == 5 && t[2] == 6);
    cr_assert(m[0] == 1 && m[1] == 1 && m[2] == 1, "no mask dataset reads as all 1");
    dataset_close(ds);
}

typedef struct PackErrorCase {
    const char *name;
    const char *jsonl;
    const char *extra_flag, *extra_value;
    const char *want; /* appended to "bad.jsonl" */
} PackErrorCase;

static const PackErrorCase PACK_ERRORS[] = {
    {"not a list", "{\"input_ids\": [1]}\n{\"input_ids\": [1]}\n{\"input_ids\": \"abc\"}\n", NULL,
     NULL, "bad.jsonl:3: input_ids: expected a list of integers"},
    {"float id", "{\"input_ids\": [1, 2.5]}\n", NULL, NULL,
     "bad.jsonl:1: input_ids: expected a list of integers"},
    {"string id", "{\"input_ids\": [1, \"2\"]}\n", NULL, NULL,
     "bad.jsonl:1: input_ids: expected a list of integers"},
    {"missing", "{\"input_ids\": [1]}\n{\"tokens\": [1]}\n", NULL, NULL,
     "bad.jsonl:2: input_ids: missing"},
    {"empty document", "{\"input_ids\": [1]}\n{\"input_ids\": []}\n", NULL, NULL,
     "bad.jsonl:2: input_ids: empty document"},
    {"id >= vocab", "{\"input_ids\": [1, 31, 32]}\n", "--vocab-size", "32",
     "bad.jsonl:1: input_ids[2]: token id 32 is >= --vocab-size 32"},
    {"negative id", "{\"input_ids\": [1, -1]}\n", NULL, NULL,
     "bad.jsonl:1: input_ids[1]: token id -1 is negative"},
    {"mask length", "{\"input_ids\": [1, 2], \"loss_mask\": [1]}\n", NULL, NULL,
     "bad.jsonl:1: loss_mask: expected a list of 0/1 of the same length"},
    {"mask value", "{\"input_ids\": [1, 2], \"loss_mask\": [1, 2]}\n", NULL, NULL,
     "bad.jsonl:1: loss_mask[1]: expected 0 or 1"},
    {"label missing later", "{\"input_ids\": [1], \"label\": 1}\n{\"input_ids\": [2]}\n", NULL,
     NULL, "bad.jsonl:2: label: missing here but present in"},
    {"label appears later", "{\"input_ids\": [1]}\n{\"input_ids\": [2], \"label\": 0}\n", NULL,
     NULL, "bad.jsonl:2: label: present here but absent in"},
    {"label not integer", "{\"input_ids\": [1], \"label\": \"x\"}\n", NULL, NULL,
     "bad.jsonl:1: label: expected an integer"},
    {"task missing later", "{\"input_ids\": [1], \"task\": 1}\n{\"input_ids\": [2]}\n", NULL, NULL,
     "bad.jsonl:2: task: missing here"},
    {"bad json", "{\"input_ids\": [1]}\n{\"input_ids\": [1,\n", NULL, NULL,
     "bad.jsonl:2: not valid JSON"},
    {"not an object", "[1, 2, 3]\n", NULL, NULL, "bad.jsonl:1: expected a JSON object"},
    {"only blank lines", "\n\n", NULL, NULL, "bad.jsonl: no documents"},
    /* what another JSON reader would take differently is refused, not guessed */
    {"two objects on one line", "{\"input_ids\": [1]}{\"input_ids\": [2]}\n", NULL, NULL,
     "bad.jsonl:1: unexpected text after the JSON object"},
    {"trailing garbage", "{\"input_ids\": [1]} x\n", NULL, NULL,
     "bad.jsonl:1: unexpected text after the JSON object"},
    {"duplicate input_ids", "{\"input_ids\": [1], \"input_ids\": [2, 3]}\n", NULL, NULL,
     "bad.jsonl:1: input_ids: given twice in one object"},
    {"duplicate label, escaped", "{\"input_ids\": [1], \"label\": 1, \"l\\u0061bel\": 2}\n", NULL,
     NULL, "bad.jsonl:1: label: given twice in one object"},
    {"NaN id", "{\"input_ids\": [1, NaN]}\n", NULL, NULL, "bad.jsonl:1: not valid JSON"},
    {"leading zero", "{\"input_ids\": [01]}\n", NULL, NULL, "bad.jsonl:1: not valid JSON"},
    {"deep nesting", "{\"input_ids\": [1], \"x\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
     "[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
     "]]]]]]]}\n", NULL, NULL, "bad.jsonl:1: not valid JSON: nesting deeper than 64 levels"},
};

Test(pack, bad_lines_fail_with_file_and_line_and_leave_no_file)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-errors", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "bad.jsonl");
    test_path(out, sizeof(out), dir, "bad.h5");
    for (size_t i = 0; i < DS_ARRAY_LEN(PACK_ERRORS); i++) {
        const PackErrorCase *c = &PACK_ERRORS[i];
        write_text(in, c->jsonl);
        int rc = c->extra_flag
                     ? run_pack("--input", in, "--output", out, c->extra_flag, c->extra_value, NULL)
                     : run_pack("--input", in, "--output", out, NULL);
        cr_assert_eq(rc, DS_ERR_INPUT, "%s: status %d (%s)", c->name, rc, ds_last_error());
        cr_assert(strstr(ds_last_error(), c->want) != NULL, "%s: error \"%s\" lacks \"%s\"",
                  c->name, ds_last_error(), c->want);
        cr_assert(strstr(ds_last_error(), dir) != NULL, "%s: error names the full path", c->name);
        cr_assert(!file_exists(out), "%s: a failed pack left %s", c->name, out);
        DIR *dh = opendir(dir);
        struct dirent *e;
        while ((e = readdir(dh)))
            cr_assert(strstr(e->d_name, ".tmp") == NULL, "%s: left behind %s", c->name, e->d_name);
        closedir(dh);
    }
}

Test(pack, bad_command_lines_are_input_errors)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-args", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "ok.jsonl");
    test_path(out, sizeof(out), dir, "ok.h5");
    write_text(in, "{\"input_ids\": [1]}\n");
    cr_assert_eq(run_pack("--output", out, NULL), DS_ERR_INPUT);
    assert_error_contains("--input");
    cr_assert_eq(run_pack("--input", in, NULL), DS_ERR_INPUT);
    assert_error_contains("--output");
    cr_assert_eq(run_pack("--input", in, "--output", out, "--vocab-size", "abc", NULL),
                 DS_ERR_INPUT);
    assert_error_contains("--vocab-size");
    cr_assert_eq(run_pack("--input", in, "--output", out, "--frobnicate", "1", NULL), DS_ERR_INPUT);
    assert_error_contains("--frobnicate");
    cr_assert_eq(
        run_pack("--input", in, "--output", out, "--vocab-size", "8", "--eos-id", "8", NULL),
        DS_ERR_INPUT);
    assert_error_contains("--eos-id 8");
    cr_assert_eq(run_pack("--input", "/nonexistent/x.jsonl", "--output", out, NULL), DS_ERR_INPUT);
    assert_error_contains("/nonexistent/x.jsonl: cannot open");
    cr_assert_eq(run_pack("--input", in, "--output", "/nonexistent/dir/x.h5", NULL), DS_ERR_INPUT);
    assert_error_contains("/nonexistent/dir/x.h5");
    cr_assert(!file_exists(out));
}

Test(pack, text_after_a_nul_byte_is_refused)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-nul", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "nul.jsonl");
    test_path(out, sizeof(out), dir, "nul.h5");
    static const char line[] = "{\"input_ids\": [1]}\0{\"input_ids\": [2]}\n";
    FILE *f = fopen(in, "wb");
    cr_assert_not_null(f);
    fwrite(line, 1, sizeof(line) - 1, f);
    fclose(f);
    cr_assert_eq(run_pack("--input", in, "--output", out, NULL), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "nul.jsonl:1: holds a NUL byte"), "%s", ds_last_error());
    cr_assert(!file_exists(out));
}

/* docs/data.md promises constant memory: a 3M-token line costs its own bytes (about 9 MB) and
 * the fixed buffers, not a parse tree (about 200 MB as cJSON nodes). Measured in a child. */
Test(pack, one_long_line_costs_about_its_own_size)
{
    char dir[1024], in[1100], out[1100];
    test_dir("pack-long-line", dir, sizeof(dir));
    test_path(in, sizeof(in), dir, "long.jsonl");
    test_path(out, sizeof(out), dir, "long.h5");
    const long n_tokens = 3000000;
    FILE *f = fopen(in, "wb");
    cr_assert_not_null(f);
    fputs("{\"input_ids\": [", f);
    for (long i = 0; i < n_tokens; i++)
        fprintf(f, i ? ",%ld" : "%ld", i % 10);
    fputs("]}\n", f);
    fclose(f);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) _exit(run_pack("--input", in, "--output", out, NULL) == DS_OK ? 0 : 3);
    int wstatus = 0;
    waitpid(pid, &wstatus, 0);
    cr_assert(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0, "pack failed in the child");
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    long max_rss_mb = ru.ru_maxrss / 1024;
    cr_assert_lt(max_rss_mb, 80, "pack of one 3M-token line peaked at %ld MB", max_rss_mb);
    TokenDataset *ds;
    cr_assert_eq(dataset_open(out, 0, &ds), DS_OK, "%s", ds_last_error());
    cr_assert_eq(dataset_info(ds)->n_tokens, n_tokens);
    int32_t tail[3];
    cr_assert_eq(dataset_read_doc(ds, 0, n_tokens - 3, 3, tail, NULL), DS_OK);
    cr_assert(tail[0] == (n_tokens - 3) % 10 && tail[2] == (n_tokens - 1) % 10);
    dataset_close(ds);
}
