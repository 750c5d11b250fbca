/* test_config.c: the config schema end to end: defaults, YAML (nested and dotted), key=value
 * overrides, every error message exactly as a user sees it, the YAML round trip, and that the
 * committed docs/config.md and configs/defaults.yaml match what the schema generates.
 * DSTRAIN_UPDATE_DOCS=1 rewrites those two files instead of comparing them. */
#include <criterion/criterion.h>
#include <float.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trainer/common.h"
#include "trainer/config.h"
#include "trainer/model.h"

static char tmp_path[1024];

/* Write text to a fresh file under DSTRAIN_TEST_TMP/config and return its path. */
static const char *write_file(const char *name, const char *text)
{
    mkdir(DSTRAIN_TEST_TMP, 0755);
    mkdir(DSTRAIN_TEST_TMP "/config", 0755);
    snprintf(tmp_path, sizeof(tmp_path), "%s/config/%s", DSTRAIN_TEST_TMP, name);
    FILE *f = fopen(tmp_path, "wb");
    cr_assert(f, "cannot create %s: %s", tmp_path, strerror(errno));
    fwrite(text, 1, strlen(text), f);
    fclose(f);
    return tmp_path;
}

/* Load text as name.yaml into defaults; return the status, message in ds_last_error(). */
static int load_text(Config *c, const char *name, const char *text)
{
    config_set_defaults(c);
    ds_clear_error();
    return config_load_yaml(c, write_file(name, text));
}

/* Assert that loading text fails with DS_ERR_INPUT and exactly "<path>:<rest>". */
static void expect_load_error(const char *text, const char *rest)
{
    Config c, before;
    int status = load_text(&c, "bad.yaml", text);
    config_set_defaults(&before);
    char expected[2048];
    snprintf(expected, sizeof(expected), "%s%s", tmp_path, rest);
    cr_assert_eq(status, DS_ERR_INPUT, "status %d for:\n%s", status, text);
    cr_assert_str_eq(ds_last_error(), expected);
    cr_assert(memcmp(&c, &before, sizeof(c)) == 0, "a failed load changed the config");
}

static void expect_override_error(const char *assignment, const char *message)
{
    Config c, before;
    config_set_defaults(&c);
    config_set_defaults(&before);
    ds_clear_error();
    cr_assert_eq(config_apply_override(&c, assignment, "command line"), DS_ERR_INPUT, "%s",
                 assignment);
    cr_assert_str_eq(ds_last_error(), message);
    cr_assert(memcmp(&c, &before, sizeof(c)) == 0, "a failed override changed the config");
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    *len = got;
    return buf;
}

static char *yaml_of(const Config *c, int with_docs, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    config_write_yaml(c, f, with_docs);
    fclose(f);
    return buf;
}

/* ---- defaults --------------------------------------------------------------------------- */

Test(config, defaults_match_the_documented_values)
{
    Config c;
    memset(&c, 0x5A, sizeof(c));
    config_set_defaults(&c);
    cr_assert_str_eq(c.model_path, "");
    cr_assert_str_eq(c.model_preset, "tiny");
    cr_assert_float_eq(c.model_init_std, 0.02f, 0);
    cr_assert_str_eq(c.data_train, "");
    cr_assert_str_eq(c.data_eval, "");
    cr_assert_eq(c.train_steps, 300);
    cr_assert_eq(c.train_seq_len, 64);
    cr_assert_eq(c.train_micro_batch_size, 8);
    cr_assert_eq(c.train_grad_accum, 1);
    cr_assert_eq(c.train_seed, 1234);
    cr_assert_str_eq(c.train_resume, "none");
    cr_assert_eq(c.train_activation_checkpointing, 0);
    cr_assert_float_eq(c.optim_lr, 3e-3f, 0);
    cr_assert_float_eq(c.optim_min_lr_ratio, 0.1f, 0);
    cr_assert_float_eq(c.optim_weight_decay, 0.1f, 0);
    cr_assert_float_eq(c.optim_beta1, 0.9f, 0);
    cr_assert_float_eq(c.optim_beta2, 0.95f, 0);
    cr_assert_float_eq(c.optim_eps, 1e-8f, 0);
    cr_assert_eq(c.optim_warmup_steps, 20);
    cr_assert_str_eq(c.optim_schedule, "cosine");
    cr_assert_float_eq(c.optim_clip_grad_norm, 1.0f, 0);
    cr_assert_eq(c.parallel_tp, 0);
    cr_assert_eq(c.parallel_dp, 0);
    cr_assert_eq(c.parallel_zero, 1);
    cr_assert_str_eq(c.checkpoint_dir, "");
    cr_assert_eq(c.checkpoint_every, 0);
    cr_assert_eq(c.checkpoint_keep, 3);
    cr_assert_eq(c.eval_every, 0);
    cr_assert_eq(c.eval_batches, 8);
    cr_assert_str_eq(c.run_dir, "");
    cr_assert_eq(c.log_every, 10);
    cr_assert_str_eq(c.device, "cpu");
    cr_assert_eq(config_validate(&c), DS_OK, "%s", ds_last_error());
}

Test(config, every_preset_choice_is_a_model_preset)
{
    /* The schema's enum lists the presets; model.c owns them. Each listed one must exist. */
    const char *presets[] = {"tiny", "small", "deepseek-coder-1.3b", "deepseek-llm-7b"};
    for (size_t i = 0; i < DS_ARRAY_LEN(presets); i++) {
        Config c;
        config_set_defaults(&c);
        char assignment[128];
        snprintf(assignment, sizeof(assignment), "model.preset=%s", presets[i]);
        cr_assert_eq(config_apply_override(&c, assignment, "test"), DS_OK, "%s", ds_last_error());
        ModelConfig mc;
        cr_assert_eq(model_preset(c.model_preset, &mc), DS_OK, "%s: %s", presets[i],
                     ds_last_error());
    }
    expect_override_error(
        "model.preset=huge",
        "command line: model.preset: expected one of tiny, small, deepseek-coder-1.3b, "
        "deepseek-llm-7b, tiny-moe, deepseek-v2-lite, got \"huge\"");
}

/* ---- loading YAML ------------------------------------------------------------------------- */

Test(config, nested_yaml_sets_every_type)
{
    Config c;
    int status = load_text(&c, "nested.yaml",
                           "# a comment\n"
                           "model:\n"
                           "  path: /models/deepseek-coder-1.3b\n"
                           "  init_std: 0.01\n"
                           "train:\n"
                           "  steps: 1000\n"
                           "  seed: 9223372036854775807\n"
                           "  activation_checkpointing: yes\n"
                           "  resume: auto\n"
                           "optim:\n"
                           "  lr: 1e-4\n"
                           "  schedule: linear\n"
                           "  beta2: 0.999\n"
                           "parallel:\n"
                           "  tp: 2\n"
                           "  dp: 4\n"
                           "run:\n"
                           "  dir: 'runs/my run'\n"
                           "device: cuda\n");
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(c.model_path, "/models/deepseek-coder-1.3b");
    cr_assert_float_eq(c.model_init_std, 0.01f, 0);
    cr_assert_eq(c.train_steps, 1000);
    cr_assert_eq(c.train_seed, 9223372036854775807LL);
    cr_assert_eq(c.train_activation_checkpointing, 1);
    cr_assert_str_eq(c.train_resume, "auto");
    cr_assert_float_eq(c.optim_lr, 1e-4f, 0);
    cr_assert_str_eq(c.optim_schedule, "linear");
    cr_assert_float_eq(c.optim_beta2, 0.999f, 0);
    cr_assert_eq(c.parallel_tp, 2);
    cr_assert_eq(c.parallel_dp, 4);
    cr_assert_str_eq(c.run_dir, "runs/my run");
    cr_assert_str_eq(c.device, "cuda");
    /* untouched keys keep their defaults */
    cr_assert_eq(c.train_seq_len, 64);
    cr_assert_float_eq(c.optim_beta1, 0.9f, 0);
}

Test(config, dotted_keys_and_flow_mappings_mix_with_nested_ones)
{
    Config c;
    int status = load_text(&c, "dotted.yaml",
                           "optim.lr: 0.0005\n"
                           "train.micro_batch_size: 4\n"
                           "parallel: {tp: 4, dp: auto}\n"
                           "eval:\n"
                           "  every: 50\n"
                           "log.every: 1\n"
                           "checkpoint.dir: \"ckpt dir/#1\"\n");
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_float_eq(c.optim_lr, 5e-4f, 0);
    cr_assert_eq(c.train_micro_batch_size, 4);
    cr_assert_eq(c.parallel_tp, 4);
    cr_assert_eq(c.parallel_dp, 0);
    cr_assert_eq(c.eval_every, 50);
    cr_assert_eq(c.log_every, 1);
    cr_assert_str_eq(c.checkpoint_dir, "ckpt dir/#1");
}

Test(config, empty_and_comment_only_files_set_nothing)
{
    const char *texts[] = {"", "# nothing here\n", "---\n", "\n\n   \n", "---\n...\n"};
    for (size_t i = 0; i < DS_ARRAY_LEN(texts); i++) {
        Config c, d;
        config_set_defaults(&d);
        cr_assert_eq(load_text(&c, "empty.yaml", texts[i]), DS_OK, "%zu: %s", i, ds_last_error());
        cr_assert(memcmp(&c, &d, sizeof(c)) == 0);
    }
}

Test(config, null_values_clear_strings)
{
    Config c;
    config_set_defaults(&c);
    strcpy(c.data_eval, "old.h5");
    strcpy(c.model_path, "old");
    strcpy(c.run_dir, "old");
    ds_clear_error();
    cr_assert_eq(config_load_yaml(&c, write_file("null.yaml", "data.eval:\nmodel.path: ~\n"
                                                              "run.dir: null\n")),
                 DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(c.data_eval, "");
    cr_assert_str_eq(c.model_path, "");
    cr_assert_str_eq(c.run_dir, "");
    /* a quoted "null" is the string itself */
    cr_assert_eq(load_text(&c, "null2.yaml", "run.dir: \"null\"\n"), DS_OK);
    cr_assert_str_eq(c.run_dir, "null");
}

Test(config, numbers_bools_and_auto_accept_their_spellings)
{
    Config c;
    cr_assert_eq(load_text(&c, "n.yaml",
                           "train.steps: 1e6\ntrain.seq_len: 2048.0\n"
                           "train.seed: +0\noptim.lr: .5\noptim.eps: 1E-10\n"
                           "optim.clip_grad_norm: 0\n"),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(c.train_steps, 1000000);
    cr_assert_eq(c.train_seq_len, 2048);
    cr_assert_eq(c.train_seed, 0);
    cr_assert_float_eq(c.optim_lr, 0.5f, 0);
    cr_assert_float_eq(c.optim_eps, 1e-10f, 0);
    cr_assert_float_eq(c.optim_clip_grad_norm, 0.0f, 0);
    const char *yes[] = {"true", "True", "yes", "on", "ON", "1"};
    const char *no[] = {"false", "FALSE", "no", "off", "Off", "0"};
    for (size_t i = 0; i < DS_ARRAY_LEN(yes); i++) {
        char a[64];
        snprintf(a, sizeof(a), "train.activation_checkpointing=%s", yes[i]);
        config_set_defaults(&c);
        cr_assert_eq(config_apply_override(&c, a, "t"), DS_OK);
        cr_assert_eq(c.train_activation_checkpointing, 1, "%s", yes[i]);
        snprintf(a, sizeof(a), "train.activation_checkpointing=%s", no[i]);
        cr_assert_eq(config_apply_override(&c, a, "t"), DS_OK);
        cr_assert_eq(c.train_activation_checkpointing, 0, "%s", no[i]);
    }
    /* the word train.activation_checkpointing takes besides a bool, and how it is written back */
    config_set_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "train.activation_checkpointing=selective", "t"), DS_OK);
    cr_assert_eq(c.train_activation_checkpointing, 2);
    char *yaml = NULL;
    size_t yaml_len = 0;
    FILE *f = open_memstream(&yaml, &yaml_len);
    cr_assert_not_null(f);
    config_write_yaml(&c, f, 0);
    fclose(f);
    cr_assert(strstr(yaml, "activation_checkpointing: selective\n"), "%s", yaml);
    free(yaml);
    cr_assert_eq(config_apply_override(&c, "train.activation_checkpointing=Selective", "t"),
                 DS_ERR_INPUT);
    config_set_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "parallel.dp=3", "t"), DS_OK);
    cr_assert_eq(c.parallel_dp, 3);
    cr_assert_eq(config_apply_override(&c, "parallel.dp=auto", "t"), DS_OK);
    cr_assert_eq(c.parallel_dp, 0);
}

Test(config, range_bounds_are_inclusive_except_where_documented)
{
    Config c;
    config_set_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "train.steps=1", "t"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "train.steps=1000000000", "t"), DS_OK);
    cr_assert_eq(c.train_steps, 1000000000);
    cr_assert_eq(config_apply_override(&c, "optim.lr=10", "t"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "optim.beta1=0", "t"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "optim.beta1=0.9999", "t"), DS_OK);
    expect_override_error("optim.beta1=1",
                          "command line: optim.beta1: 1 is out of range (0..1, 1 excluded)");
    /* rounds to 1.0f when stored, which the optimizer cannot take */
    expect_override_error(
        "optim.beta2=0.99999999999",
        "command line: optim.beta2: 0.99999999999 is out of range (0..1, 1 excluded)");
    expect_override_error("optim.lr=10.001",
                          "command line: optim.lr: 10.001 is out of range (0..10)");
    expect_override_error("optim.lr=-1e-3",
                          "command line: optim.lr: -1e-3 is out of range (0..10)");
    expect_override_error("optim.lr=1e39", "command line: optim.lr: 1e39 is out of range (0..10)");
    expect_override_error("train.seq_len=1",
                          "command line: train.seq_len: 1 is out of range (2..1048576)");
    expect_override_error("parallel.dp=0",
                          "command line: parallel.dp: 0 is out of range (1..1048576)");
    expect_override_error("parallel.zero=2",
                          "command line: parallel.zero: 2 is out of range (0..1)");
    expect_override_error("checkpoint.keep=0",
                          "command line: checkpoint.keep: 0 is out of range (1..1000000)");
    expect_override_error("train.seed=-1",
                          "command line: train.seed: -1 is out of range (0..9223372036854775807)");
    expect_override_error(
        "train.seed=9223372036854775808",
        "command line: train.seed: 9223372036854775808 is out of range (0..9223372036854775807)");
    expect_override_error("train.steps=99999999999999999999999",
                          "command line: train.steps: 99999999999999999999999 is out of range "
                          "(1..1000000000)");
    expect_override_error("train.steps=4294967297",
                          "command line: train.steps: 4294967297 is out of range (1..1000000000)");
    expect_override_error("train.steps=1e30",
                          "command line: train.steps: 1e30 is out of range (1..1000000000)");
}

/* ---- errors from files, with their line numbers ------------------------------------------ */

Test(config, bad_number_names_file_line_and_value)
{
    expect_load_error("model:\n  preset: tiny\noptim:\n  lr: 1e-5x\n",
                      ":4: optim.lr: expected a number, got \"1e-5x\"");
    expect_load_error("optim.lr: 1e-5x\n", ":1: optim.lr: expected a number, got \"1e-5x\"");
    const char *not_numbers[] = {"inf", "nan", ".inf", "0x10", "1,5",
                                 "",    "1e",  "e5",   "- 1",  "1.2.3"};
    for (size_t i = 0; i < DS_ARRAY_LEN(not_numbers); i++) {
        char text[64], rest[128];
        snprintf(text, sizeof(text), "\n\noptim.eps: \"%s\"\n", not_numbers[i]);
        snprintf(rest, sizeof(rest), ":3: optim.eps: expected a number, got \"%s\"",
                 not_numbers[i]);
        expect_load_error(text, rest);
    }
}

Test(config, integers_reject_fractions_and_words)
{
    expect_load_error("train:\n  steps: 1.5\n",
                      ":2: train.steps: expected an integer, got \"1.5\"");
    expect_load_error("train.steps: ten\n", ":1: train.steps: expected an integer, got \"ten\"");
    expect_load_error("train.steps: 12abc\n",
                      ":1: train.steps: expected an integer, got \"12abc\"");
    expect_load_error("parallel.dp: many\n",
                      ":1: parallel.dp: expected an integer or auto, got \"many\"");
    expect_load_error("parallel.zero: auto\n",
                      ":1: parallel.zero: expected an integer, got \"auto\"");
}

Test(config, out_of_range_names_the_range)
{
    expect_load_error("\n\n\n\ntrain.steps: 0\n",
                      ":5: train.steps: 0 is out of range (1..1000000000)");
    expect_load_error("optim:\n  beta1: 1.0\n",
                      ":2: optim.beta1: 1.0 is out of range (0..1, 1 excluded)");
    expect_load_error("optim:\n  clip_grad_norm: 2e6\n",
                      ":2: optim.clip_grad_norm: 2e6 is out of range (0..1000000)");
}

Test(config, enum_and_bool_list_what_is_allowed)
{
    expect_load_error(
        "optim:\n  schedule: cosin\n",
        ":2: optim.schedule: expected one of cosine, linear, constant, got \"cosin\"");
    expect_load_error("device: gpu\n", ":1: device: expected one of cpu, cuda, got \"gpu\"");
    expect_load_error("train:\n  check_memory: maybe\n",
                      ":2: train.check_memory: expected true or false, got \"maybe\"");
    /* a bool that takes a word too lists it */
    expect_load_error("train:\n  activation_checkpointing: maybe\n",
                      ":2: train.activation_checkpointing: expected true, false or selective, got "
                      "\"maybe\"");
}

Test(config, unknown_keys_suggest_the_closest)
{
    expect_load_error("model:\n  preset: tiny\noptim.lrr: 1\n",
                      ":3: optim.lrr: unknown key (did you mean optim.lr?)");
    expect_load_error("optim:\n  lr: 1e-3\n  wamrup_steps: 5\n",
                      ":3: optim.wamrup_steps: unknown key (did you mean optim.warmup_steps?)");
    /* wrong section, right name */
    expect_load_error("train:\n  lr: 1e-3\n", ":2: train.lr: unknown key (did you mean optim.lr?)");
    expect_load_error("seed: 7\n", ":1: seed: unknown key (did you mean train.seed?)");
    expect_load_error("train:\n  micro_bach_sz: 4\n",
                      ":2: train.micro_bach_sz: unknown key (did you mean "
                      "train.micro_batch_size?)");
    /* a misspelled section is reported at its first key */
    expect_load_error("optm:\n\n  lr: 1\n", ":3: optm.lr: unknown key (did you mean optim.lr?)");
    expect_load_error("every: 5\n",
                      ":1: every: unknown key (did you mean checkpoint.every, eval.every or "
                      "log.every?)");
    expect_load_error("devise: cuda\n", ":1: devise: unknown key (did you mean device?)");
    /* nothing close: no guess, but the keys of a known section are listed */
    expect_load_error("zzz: 1\n", ":1: zzz: unknown key");
    expect_load_error("eval:\n  learning_rate_of_eval: 1\n",
                      ":2: eval.learning_rate_of_eval: unknown key (keys under eval: every, "
                      "batches)");
    expect_load_error("optim:\n  lr:\n    x: 1\n",
                      ":2: optim.lr: expected a number, got a mapping");
    expect_load_error("wandb: {}\n", ":1: wandb: unknown key");
}

Test(config, yaml_syntax_errors_carry_the_line)
{
    expect_load_error("optim:\n  lr: 1\n lr2: 3\n",
                      ":3: invalid YAML: did not find expected key (while parsing a block mapping "
                      "at line 1)");
    expect_load_error("optim: {lr: 1, eps: 0.5\n",
                      ":2: invalid YAML: did not find expected ',' or '}' (while parsing a flow "
                      "mapping at line 1)");
    expect_load_error("optim.lr: 0.1: 2\n",
                      ":1: invalid YAML: mapping values are not allowed in this context");
    expect_load_error("optim:\n  lr: \"unterminated\n",
                      ":3: invalid YAML: found unexpected end of stream (while scanning a quoted "
                      "scalar at line 2)");
    expect_load_error("model:\n\tpath: x\n",
                      ":2: invalid YAML: found character that cannot start any token (while "
                      "scanning for the next token at line 2)");
    /* invalid UTF-8 is a reader error: the line is computed from the byte offset */
    expect_load_error("train.steps: 3\nrun.dir: \"\xff\xfe\"\n",
                      ":2: invalid YAML: invalid leading UTF-8 octet (byte 25)");
}

Test(config, structure_errors_say_what_was_found)
{
    expect_load_error("data:\n  train: {path: a.h5}\n",
                      ":2: data.train: expected a path or a list of {path, weight}, got a "
                      "mapping");
    expect_load_error("run.dir: [a.h5, b.h5]\n", ":1: run.dir: expected a string, got a sequence");
    expect_load_error("optim: 3\n",
                      ":1: optim: is a section, expected its keys (such as optim.lr) under it, got "
                      "\"3\"");
    expect_load_error("optim:\n  - lr\n",
                      ":1: optim: is a section, expected its keys (such as optim.lr) under it, got "
                      "a sequence");
    expect_load_error("- optim.lr: 1\n",
                      ":1: expected a mapping of keys (key: value), got a sequence");
    expect_load_error("just a string\n",
                      ":1: expected a mapping of keys (key: value), got a scalar");
    expect_load_error("? [a, b]\n: 1\n", ":1: a key must be a name, got a sequence");
    expect_load_error("optim.lr: &x 1\noptim.eps: *x\n",
                      ":2: optim.eps: YAML aliases (*name) are not supported");
    expect_load_error("optim.lr: 1\n---\noptim.lr: 2\n",
                      ":2: a second YAML document; put all keys in one document");
    expect_load_error("optim.lr: 1e-3\noptim:\n  lr: 2e-3\n",
                      ":3: optim.lr: set twice in this file (first on line 1)");
    expect_load_error("run.dir: \"a\\0b\"\n", ":1: run.dir: contains a NUL character");
}

Test(config, missing_file_and_directory_are_errors)
{
    Config c;
    config_set_defaults(&c);
    const char *missing = DSTRAIN_TEST_TMP "/config/does-not-exist.yaml";
    cr_assert_eq(config_load_yaml(&c, missing), DS_ERR_INPUT);
    char expected[1024];
    snprintf(expected, sizeof(expected), "%s: cannot open: No such file or directory", missing);
    cr_assert_str_eq(ds_last_error(), expected);
    write_file("x", "");
    cr_assert_eq(config_load_yaml(&c, DSTRAIN_TEST_TMP "/config"), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), DSTRAIN_TEST_TMP "/config: cannot open: Is a directory");
}

Test(config, long_and_binary_values_are_refused_cleanly)
{
    /* a string one byte over the field */
    size_t n = CONFIG_STR_MAX;
    char *text = malloc(n + 64);
    strcpy(text, "run.dir: ");
    memset(text + 9, 'a', n);
    strcpy(text + 9 + n, "\n");
    expect_load_error(text, ":1: run.dir: is 1024 bytes long, the limit is 1023");
    memset(text + 9, 'a', n - 1);
    strcpy(text + 9 + n - 1, "\n");
    Config c;
    cr_assert_eq(load_text(&c, "long.yaml", text), DS_OK, "%s", ds_last_error());
    cr_assert_eq(strlen(c.run_dir), n - 1);
    free(text);
    /* a long bad number is cut in the message */
    char big[300] = "optim.lr: ";
    memset(big + 10, '9', 200);
    strcpy(big + 210, "x\n");
    Config d;
    cr_assert_eq(load_text(&d, "big.yaml", big), DS_ERR_INPUT);
    cr_assert(strlen(ds_last_error()) < 300, "%s", ds_last_error());
    cr_assert(strstr(ds_last_error(), "...\"") != NULL, "%s", ds_last_error());
    /* a huge unknown key does not blow up the message */
    char *key = malloc(5000);
    strcpy(key, "? ");
    memset(key + 2, 'k', 4980);
    strcpy(key + 4982, "\n: 1\n");
    cr_assert_eq(load_text(&d, "key.yaml", key), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "unknown key") != NULL, "%s", ds_last_error());
    free(key);
    /* escaped control characters in a quoted key are shown escaped */
    expect_load_error("\"zz.\\e[31mlr\": 1\n", ":1: \"zz.\\x1B[31mlr\": unknown key");
}

Test(config, deep_nesting_stops_at_the_first_unknown_level)
{
    char text[20000] = "";
    for (int i = 0; i < 2000; i++)
        strcat(text, "[");
    Config c;
    cr_assert_eq(load_text(&c, "deep.yaml", text), DS_ERR_INPUT);
    char deep[20000] = "";
    for (int i = 0; i < 1000; i++)
        strcat(deep, "a: {");
    cr_assert_eq(load_text(&c, "deep2.yaml", deep), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "a.a: unknown key") != NULL, "%s", ds_last_error());
}

/* ---- overrides ---------------------------------------------------------------------------- */

Test(config, overrides_apply_after_the_file)
{
    Config c;
    cr_assert_eq(load_text(&c, "o.yaml", "optim:\n  lr: 1e-3\ntrain.steps: 10\n"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "optim.lr=2e-4", "command line"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "model.path=/m/with=sign", "command line"), DS_OK);
    cr_assert_eq(config_apply_override(&c, "run.dir=", "command line"), DS_OK);
    cr_assert_eq(config_apply_override(&c, " optim.schedule =constant", "command line"), DS_OK);
    cr_assert_float_eq(c.optim_lr, 2e-4f, 0);
    cr_assert_eq(c.train_steps, 10);
    cr_assert_str_eq(c.model_path, "/m/with=sign");
    cr_assert_str_eq(c.run_dir, "");
    cr_assert_str_eq(c.optim_schedule, "constant");
}

Test(config, override_errors_name_the_source)
{
    expect_override_error("optim.lr=1e-5x",
                          "command line: optim.lr: expected a number, got \"1e-5x\"");
    expect_override_error("optim.lr",
                          "command line: optim.lr: expected key=value, e.g. optim.lr=3e-4");
    expect_override_error("=3", "command line: \"=3\": missing key before '='");
    expect_override_error("optim.lrr=1",
                          "command line: optim.lrr: unknown key (did you mean optim.lr?)");
    expect_override_error("optim=1",
                          "command line: optim: is a section, expected its keys (such as optim.lr) "
                          "under it, got \"1\"");
    expect_override_error("train.resume=", "command line: train.resume: must not be empty");
    expect_override_error("run.dir=\xc3\x28",
                          "command line: run.dir: is not valid UTF-8: \"\\xC3(\"");
    expect_override_error("train.steps=",
                          "command line: train.steps: expected an integer, got \"\"");
}

/* ---- validation --------------------------------------------------------------------------- */

Test(config, validate_catches_values_set_by_code_and_cross_field_limits)
{
    Config c;
    config_set_defaults(&c);
    c.train_steps = 0;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: train.steps: 0 is out of range (1..1000000000)");
    config_set_defaults(&c);
    strcpy(c.optim_schedule, "step");
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(
        ds_last_error(),
        "config: optim.schedule: expected one of cosine, linear, constant, got \"step\"");
    config_set_defaults(&c);
    c.optim_lr = NAN;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: optim.lr: expected a number, got \"nan\"");
    config_set_defaults(&c);
    c.parallel_dp = -2;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: parallel.dp: -2 is out of range (1..1048576)");
    /* a bool, or one that takes a word too, set by code past what it takes */
    config_set_defaults(&c);
    c.train_activation_checkpointing = 7;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: train.activation_checkpointing: expected true, "
                                      "false or selective, got \"7\"");
    c.train_activation_checkpointing = 2;
    cr_assert_eq(config_validate(&c), DS_OK, "%s", ds_last_error());
    config_set_defaults(&c);
    c.train_check_memory = 2;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: train.check_memory: expected true or false, got "
                                      "\"2\"");
    config_set_defaults(&c);
    memset(c.run_dir, 'x', sizeof(c.run_dir));
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: run.dir: value is not terminated");
    config_set_defaults(&c);
    c.train_seq_len = 1048576;
    c.train_micro_batch_size = 4096;
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), "config: train.seq_len x train.micro_batch_size: 1048576 x "
                                      "4096 = 4294967296 tokens per micro-batch, the limit is "
                                      "2147483647");
    /* warmup longer than the run is allowed */
    config_set_defaults(&c);
    c.optim_warmup_steps = 5000;
    cr_assert_eq(config_validate(&c), DS_OK, "%s", ds_last_error());
}

/* ---- writing ------------------------------------------------------------------------------ */

static void assert_round_trip(const Config *c, int with_docs)
{
    size_t len;
    char *yaml = yaml_of(c, with_docs, &len);
    Config back;
    memset(&back, 0, sizeof(back));
    config_set_defaults(&back);
    /* start far from c so that every key must be read back */
    back.train_steps = 77;
    strcpy(back.run_dir, "elsewhere");
    int status = config_load_yaml(&back, write_file("round.yaml", yaml));
    cr_assert_eq(status, DS_OK, "%s\n%s", ds_last_error(), yaml);
    char *again = yaml_of(&back, with_docs, &len);
    cr_assert_str_eq(again, yaml);
    cr_assert(memcmp(c->model_path, back.model_path, sizeof(c->model_path)) == 0);
    cr_assert_str_eq(back.run_dir, c->run_dir);
    cr_assert_str_eq(back.checkpoint_dir, c->checkpoint_dir);
    cr_assert_str_eq(back.data_train, c->data_train);
    cr_assert_str_eq(back.data_eval, c->data_eval);
    cr_assert_str_eq(back.train_resume, c->train_resume);
    cr_assert_eq(back.train_steps, c->train_steps);
    cr_assert_eq(back.train_seed, c->train_seed);
    cr_assert_eq(back.parallel_dp, c->parallel_dp);
    cr_assert(back.optim_lr == c->optim_lr);
    cr_assert(back.optim_eps == c->optim_eps);
    cr_assert(back.optim_beta2 == c->optim_beta2);
    cr_assert(back.model_init_std == c->model_init_std);
    free(yaml);
    free(again);
}

Test(config, yaml_round_trip_is_exact)
{
    Config c;
    config_set_defaults(&c);
    assert_round_trip(&c, 0);
    assert_round_trip(&c, 1);
    const char *overrides[] = {
        "optim.lr=0.00031415926",
        "optim.eps=1.17549435e-38",
        "optim.beta2=0.99999994",
        "model.init_std=0.1",
        "train.seed=9223372036854775807",
        "parallel.dp=16",
        "train.activation_checkpointing=on",
        "model.path=true",
        "data.train=123",
        "data.eval=- dash: colon # hash",
        "run.dir= lead and trail ",
        "task.labels=quote\" back\\slash\ttab\nnewline\r\x01\x7f",
        "train.resume=caf\xc3\xa9/\xe2\x80\xa8/\xc2\x85/\xef\xbb\xbf/\xf0\x9f\x98\x80",
    };
    for (size_t i = 0; i < DS_ARRAY_LEN(overrides); i++)
        cr_assert_eq(config_apply_override(&c, overrides[i], "t"), DS_OK, "%s: %s", overrides[i],
                     ds_last_error());
    assert_round_trip(&c, 0);
    assert_round_trip(&c, 1);
}

Test(config, written_yaml_is_nested_and_plain)
{
    Config c;
    config_set_defaults(&c);
    size_t len;
    char *yaml = yaml_of(&c, 0, &len);
    cr_assert(strncmp(yaml, "model:\n  path: \"\"\n  preset: tiny\n  init_std: 0.02\n", 49) == 0,
              "%s", yaml);
    cr_assert(strstr(yaml, "\noptim:\n  lr: 0.003\n") != NULL, "%s", yaml);
    cr_assert(strstr(yaml, "  eps: 1.0e-08\n") != NULL, "%s", yaml);
    cr_assert(strstr(yaml, "  dp: auto\n") != NULL, "%s", yaml);
    cr_assert(strstr(yaml, "\nlog:\n  every: 10\n  print_config: false\ndevice: cpu\n") != NULL,
              "%s", yaml);
    cr_assert(strchr(yaml, '#') == NULL, "no comments without docs");
    free(yaml);
}

/* The committed file must equal what the schema generates (or is rewritten on request). */
static void assert_in_sync(const char *relative, const char *generated, size_t len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", DSTRAIN_SOURCE_DIR, relative);
    const char *update = getenv("DSTRAIN_UPDATE_DOCS");
    if (update && strcmp(update, "1") == 0) {
        FILE *f = fopen(path, "wb");
        cr_assert(f, "cannot write %s", path);
        fwrite(generated, 1, len, f);
        fclose(f);
    }
    size_t committed_len;
    char *committed = read_whole(path, &committed_len);
    cr_assert(committed, "%s is missing; run this test with DSTRAIN_UPDATE_DOCS=1", path);
    cr_assert(committed_len == len && memcmp(committed, generated, len) == 0,
              "%s is out of date with the schema in trainer/config.c; run this test with "
              "DSTRAIN_UPDATE_DOCS=1 to regenerate it",
              path);
    free(committed);
}

Test(config, docs_config_md_matches_the_schema)
{
    char *md = NULL;
    size_t len;
    FILE *f = open_memstream(&md, &len);
    config_write_markdown(f);
    fclose(f);
    /* a row per key, with type, default and range */
    cr_assert(strstr(md, "| `optim.lr` | float | `0.003` | 0..10 | peak learning rate (AdamW) |\n"),
              "%s", md);
    cr_assert(strstr(md, "| `optim.schedule` | enum | `cosine` | cosine, linear, constant |"), "%s",
              md);
    cr_assert(strstr(md, "| `parallel.dp` | int or auto | `auto` | 1..1048576 |"), "%s", md);
    cr_assert(strstr(md, "| `model.path` | string | `\"\"` |"), "%s", md);
    assert_in_sync("docs/config.md", md, len);
    free(md);
}

Test(config, defaults_yaml_matches_the_schema_and_loads)
{
    Config c;
    config_set_defaults(&c);
    size_t len;
    char *yaml = yaml_of(&c, 1, &len);
    cr_assert(strstr(yaml, "optim:\n  # peak learning rate (AdamW) (float: 0..10)\n  lr: 0.003\n"),
              "%s", yaml);
    assert_in_sync("configs/defaults.yaml", yaml, len);
    Config loaded, defaults;
    config_set_defaults(&defaults);
    memset(&loaded, 0, sizeof(loaded));
    config_set_defaults(&loaded);
    loaded.train_steps = 5;
    cr_assert_eq(config_load_yaml(&loaded, DSTRAIN_SOURCE_DIR "/configs/defaults.yaml"), DS_OK,
                 "%s", ds_last_error());
    cr_assert(memcmp(&loaded, &defaults, sizeof(Config)) == 0);
    free(yaml);
}

Test(config, help_lists_every_key)
{
    char *text = NULL;
    size_t len;
    FILE *f = open_memstream(&text, &len);
    config_write_help(f);
    fclose(f);
    int lines = 0;
    for (char *p = text; *p; p++)
        lines += *p == '\n';
    /* one line per key: as many as the reference table has rows */
    char *table = NULL;
    size_t table_len;
    FILE *m = open_memstream(&table, &table_len);
    config_write_markdown(m);
    fclose(m);
    int keys = 0;
    for (char *p = strstr(table, "\n| `"); p; p = strstr(p + 1, "\n| `"))
        keys++;
    free(table);
    cr_assert_gt(keys, 60);
    cr_assert_eq(lines, keys, "%d lines for %d keys", lines, keys);
    cr_assert(strstr(text, "  train.steps ") != NULL, "%s", text);
    cr_assert(strstr(text, "(int, default 300; 1..1000000000)") != NULL, "%s", text);
    free(text);
}

Test(config, mutated_files_fail_cleanly_and_name_the_file)
{
    /* Deterministic byte mutations of the default config: every result is either a clean
     * load or DS_ERR_INPUT naming the file, and a failed load leaves the config unchanged. */
    Config c;
    config_set_defaults(&c);
    size_t len;
    char *base = yaml_of(&c, 1, &len);
    char *text = malloc(len + 1);
    unsigned long long state = 88172645463325252ULL;
    static const char alphabet[] = ":-[]{}#&*!|>'\"%@ \t\n\\,.?0e\xff\x01";
    int failures = 0;
    for (int round = 0; round < 400; round++) {
        memcpy(text, base, len + 1);
        for (int edit = 0; edit < 1 + round % 4; edit++) {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            size_t at = (size_t)(state % len);
            text[at] = alphabet[(state >> 32) % (sizeof(alphabet) - 1)];
        }
        Config d, before;
        config_set_defaults(&d);
        d.train_steps = 42;
        before = d;
        ds_clear_error();
        const char *path = write_file("mutated.yaml", text);
        int status = config_load_yaml(&d, path);
        cr_assert(status == DS_OK || status == DS_ERR_INPUT, "status %d", status);
        if (status != DS_OK) {
            failures++;
            cr_assert(strncmp(ds_last_error(), path, strlen(path)) == 0, "%s", ds_last_error());
            cr_assert(memcmp(&d, &before, sizeof(d)) == 0);
        }
    }
    cr_assert(failures > 50, "only %d of 400 mutations were rejected", failures);
    free(text);
    free(base);
}

/* data.train (and data.eval): a plain path is one file of weight 1; a list of {path, weight}
 * (or plain paths) is a mixture. Errors name the entry: data.train[1].weight. */
Test(config, data_train_takes_a_path_or_a_weighted_list)
{
    Config c;
    cr_assert_eq(load_text(&c, "mix.yaml",
                           "data:\n  train:\n    - {path: a.h5, weight: 0.7}\n"
                           "    - path: b.h5\n      weight: 0.3\n    - c.h5\n"),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(c.data_train_files.count, 3);
    cr_assert_str_eq(c.data_train_files.items[1].path, "b.h5");
    cr_assert_float_eq(c.data_train_files.items[0].weight, 0.7f, 0);
    cr_assert_float_eq(c.data_train_files.items[2].weight, 1.0f, 0);
    cr_assert_str_eq(c.data_train, "a.h5", "the plain mirror holds the first path");
    cr_assert_eq(config_validate(&c), DS_OK, "%s", ds_last_error());
    assert_round_trip(&c, 0);
    assert_round_trip(&c, 1);
    /* an override replaces the list with one path, or with a flow list */
    cr_assert_eq(config_apply_override(&c, "data.train=d.h5", "t"), DS_OK);
    cr_assert_eq(c.data_train_files.count, 1);
    cr_assert_str_eq(c.data_train, "d.h5");
    cr_assert_eq(config_apply_override(&c, "data.eval=[e.h5, {path: f.h5}]", "t"), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(c.data_eval_files.count, 2);
    cr_assert_str_eq(c.data_eval_files.items[1].path, "f.h5");
    cr_assert_eq(config_apply_override(&c, "data.mode=sft", "t"), DS_OK);
    cr_assert_str_eq(c.data_mode, "sft");

    expect_load_error("data:\n  train:\n    - path: a.h5\n    - path: b.h5\n      weight: x\n",
                      ":5: data.train[1].weight: expected a number in (0, 1e6], got \"x\"");
    expect_load_error("data.train:\n  - {path: a.h5, weight: 0}\n",
                      ":2: data.train[0].weight: expected a number in (0, 1e6], got \"0\"");
    expect_load_error("data.train:\n  - {weight: 2}\n",
                      ":2: data.train[0].path: missing (each entry is {path: FILE.h5, weight: W})");
    expect_load_error("data.train:\n  - {path: a.h5, wieght: 2}\n",
                      ":2: data.train[0].wieght: unknown key (expected path and weight)");
    expect_load_error("data.train: []\n",
                      ":1: data.train: expected at least one file, got an empty list");
    expect_load_error("data.train:\n  - [a.h5]\n",
                      ":2: data.train[0]: expected a path or {path, weight}, got a sequence");
    expect_load_error("data.mode: packed\n",
                      ":1: data.mode: expected one of lm, sft, classification, got \"packed\"");
    expect_override_error("data.train=[a.h5, {path: b.h5, weight: -1}]",
                          "command line: data.train[1].weight: expected a number in (0, 1e6], "
                          "got \"-1\"");
}

/* ---- hostile files and values --------------------------------------------------------------- */

Test(config, values_are_checked_as_the_float_they_become)
{
    /* 1e-50 is 0.0f: an epsilon of zero divides by zero in AdamW, and was never asked for */
    expect_override_error("optim.eps=1e-50",
                          "command line: optim.eps: 1e-50 is too small for a 32-bit float (it "
                          "would be 0)");
    expect_override_error("optim.eps=1e-45",
                          "command line: optim.eps: 1e-45 is too small for a 32-bit float (it "
                          "would be a denormal)");
    expect_load_error("optim:\n  lr: 1e-300\n",
                      ":2: optim.lr: 1e-300 is too small for a 32-bit float (it would be 0)");
    Config c;
    config_set_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "optim.eps=1e-30", "t"), DS_OK);
    cr_assert_float_eq(c.optim_eps, 1e-30f, 1e-37f);
    cr_assert_eq(config_apply_override(&c, "optim.lr=0", "t"), DS_OK, "an exact 0 is a value");
    cr_assert_eq(c.optim_lr, 0.0f);
}

/* optim.eps = 0 is refused, not accepted: AdamW's update m / (sqrt(v) + eps) is 0/0 = NaN for
 * every weight whose gradients have all been 0 so far (an embedding row of a token not yet seen),
 * as in torch; the smallest normal float is the smallest epsilon */
Test(config, an_epsilon_of_exactly_zero_is_refused)
{
    expect_override_error("optim.eps=0",
                          "command line: optim.eps: 0 is out of range (0..1, 0 excluded)");
    expect_override_error("optim.eps=-0.0",
                          "command line: optim.eps: -0.0 is out of range (0..1, 0 excluded)");
    expect_load_error("optim:\n  eps: 0e5\n",
                      ":2: optim.eps: 0e5 is out of range (0..1, 0 excluded)");
    Config c;
    config_set_defaults(&c);
    c.optim_eps = 0.0f; /* filled in by code */
    cr_assert_eq(config_validate(&c), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "optim.eps: 0.0 is out of range (0..1, 0 excluded)"), "%s",
              ds_last_error());
    cr_assert_eq(config_apply_override(&c, "optim.eps=1.17549435e-38", "t"), DS_OK, "%s",
                 ds_last_error());
    cr_assert_eq(c.optim_eps, FLT_MIN);
    cr_assert_eq(config_validate(&c), DS_OK, "%s", ds_last_error());
}

Test(config, paths_with_control_characters_are_refused)
{
    expect_override_error("run.dir=r\ntouch x",
                          "command line: run.dir: a path with a control character: \"r\\ntouch x\"");
    expect_load_error("run:\n  dir: \"a\\x01b\"\n",
                      ":2: run.dir: a path with a control character: \"a\\x01b\"");
    expect_override_error("data.train=a\tb.h5",
                          "command line: data.train: holds a control character: \"a\\tb.h5\"");
    expect_override_error("checkpoint.dir=\x1b[31m",
                          "command line: checkpoint.dir: a path with a control character: "
                          "\"\\x1B[31m\"");
    Config c;
    config_set_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "run.dir=r $(x) 'q'", "t"), DS_OK,
                 "shell syntax is only text: the places that paste paths quote them");
}

/* a FIFO blocks open() and read() until a writer comes: refused at once instead */
Test(config, a_fifo_is_refused_without_blocking, .timeout = 20)
{
    char fifo[1024];
    mkdir(DSTRAIN_TEST_TMP, 0755);
    mkdir(DSTRAIN_TEST_TMP "/config", 0755);
    snprintf(fifo, sizeof(fifo), "%s/config/fifo-%ld.yaml", DSTRAIN_TEST_TMP, (long)getpid());
    unlink(fifo);
    cr_assert_eq(mkfifo(fifo, 0600), 0, "%s", strerror(errno));
    Config c;
    config_set_defaults(&c);
    cr_assert_eq(config_load_yaml(&c, fifo), DS_ERR_INPUT);
    char expected[1200];
    snprintf(expected, sizeof(expected), "%s: not a regular file (a FIFO)", fifo);
    cr_assert_str_eq(ds_last_error(), expected);
    cr_assert_eq(config_yaml_check_depth(fifo, 32), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), expected);
    unlink(fifo);
}

/* libyaml's scanner is quadratic in depth: 100k levels take about 30 s to load. The check reads
 * events only up to the limit. */
Test(config, yaml_depth_is_checked_in_bounded_time, .timeout = 20)
{
    const int levels = 100000;
    char *text = malloc(2 * (size_t)levels + 64);
    strcpy(text, "tasks: ");
    size_t o = strlen(text);
    memset(text + o, '[', (size_t)levels);
    memset(text + o + levels, ']', (size_t)levels);
    strcpy(text + o + 2 * (size_t)levels, "\n");
    const char *path = write_file("deep-tasks.yaml", text);
    char expected[1200];
    snprintf(expected, sizeof(expected), "%s:1: YAML nested deeper than 32 levels", path);
    double t0 = ds_now();
    cr_assert_eq(config_yaml_check_depth(path, 32), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), expected);
    /* block sequences nested on one line */
    o = strlen("tasks:\n");
    memcpy(text, "tasks:\n", o);
    for (int i = 0; i < levels; i++)
        memcpy(text + o + 2 * (size_t)i, "- ", 2);
    strcpy(text + o + 2 * (size_t)levels, "x\n");
    path = write_file("deep-block.yaml", text);
    snprintf(expected, sizeof(expected), "%s:2: YAML nested deeper than 32 levels", path);
    cr_assert_eq(config_yaml_check_depth(path, 32), DS_ERR_INPUT);
    cr_assert_str_eq(ds_last_error(), expected);
    /* the config loader stops at its first unknown level */
    Config c;
    cr_assert_eq(load_text(&c, "deep-config.yaml", text), DS_ERR_INPUT);
    cr_assert_lt(ds_now() - t0, 2.0, "took %.1f s", ds_now() - t0);
    free(text);
    /* an ordinary tasks file passes */
    path = write_file("tasks.yaml", "tasks:\n  - id: a\n    train: {path: a.h5, steps: 3}\n"
                                    "    eval: [x.h5, {path: y.h5}]\n");
    cr_assert_eq(config_yaml_check_depth(path, 32), DS_OK, "%s", ds_last_error());
    cr_assert_eq(config_yaml_check_depth(path, 3), DS_ERR_INPUT, "depth 4 > 3");
}
