/* test_hf_model.c: config.json in both forms (old rope_theta/rope_scaling, transformers-5
 * rope_parameters/dtype) for Llama and Qwen2, with the errors users hit; weights loaded from a
 * single file and from shards with an index, in F32/BF16/F16, sliced for tensor parallelism, and
 * the refusals (missing tensor, wrong shape, dtype, hostile shard names, missing files). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/hf_model.h"
#include "checkpoint/safetensors.h"
#include "trainer/log.h"

static char tmpdir[512];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/checkpoint_hf_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

TestSuite(hf_model, .init = setup, .fini = teardown);

/* A fresh model directory under tmpdir. */
static const char *model_dir(const char *name)
{
    static char dir[4][700];
    static int which;
    which = (which + 1) % 4;
    snprintf(dir[which], sizeof(dir[which]), "%s/%s", tmpdir, name);
    mkdir(dir[which], 0755);
    return dir[which];
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[900];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    cr_assert(fp, "%s", path);
    fputs(text, fp);
    fclose(fp);
}

static int load_config_text(const char *text, ModelConfig *mc)
{
    const char *dir = model_dir("cfg");
    write_file(dir, "config.json", text);
    ds_clear_error();
    return hf_config_load(dir, mc);
}

static void assert_config_fails(const char *text, const char *expect)
{
    ModelConfig mc;
    int rc = load_config_text(text, &mc);
    cr_assert_eq(rc, DS_ERR_INPUT, "expected an error \"%s\", got %d: %s", expect, rc,
                 ds_last_error());
    cr_assert(strstr(ds_last_error(), expect), "message \"%s\" lacks \"%s\"", ds_last_error(),
              expect);
    cr_assert(strstr(ds_last_error(), "cfg/config.json"), "message \"%s\" does not name the file",
              ds_last_error());
}

/* deepseek-llm-7b-base's config.json, shrunk. */
static const char *llama_old = "{\n"
                               "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                               "  \"attention_bias\": false,\n"
                               "  \"bos_token_id\": 100000,\n"
                               "  \"eos_token_id\": 100001,\n"
                               "  \"hidden_act\": \"silu\",\n"
                               "  \"hidden_size\": 64,\n"
                               "  \"initializer_range\": 0.02,\n"
                               "  \"intermediate_size\": 172,\n"
                               "  \"max_position_embeddings\": 4096,\n"
                               "  \"model_type\": \"llama\",\n"
                               "  \"num_attention_heads\": 8,\n"
                               "  \"num_hidden_layers\": 3,\n"
                               "  \"num_key_value_heads\": 8,\n"
                               "  \"pretraining_tp\": 1,\n"
                               "  \"rms_norm_eps\": 1e-06,\n"
                               "  \"rope_scaling\": null,\n"
                               "  \"rope_theta\": 10000.0,\n"
                               "  \"tie_word_embeddings\": false,\n"
                               "  \"torch_dtype\": \"bfloat16\",\n"
                               "  \"transformers_version\": \"4.33.1\",\n"
                               "  \"use_cache\": true,\n"
                               "  \"vocab_size\": 102400\n"
                               "}\n";

Test(hf_model, test_llama_old_form_config_values)
{
    ModelConfig mc;
    cr_assert_eq(load_config_text(llama_old, &mc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.arch, ARCH_LLAMA);
    cr_assert_eq(mc.vocab_size, 102400);
    cr_assert_eq(mc.hidden_size, 64);
    cr_assert_eq(mc.intermediate_size, 172);
    cr_assert_eq(mc.num_layers, 3);
    cr_assert_eq(mc.num_heads, 8);
    cr_assert_eq(mc.num_kv_heads, 8);
    cr_assert_eq(mc.head_dim, 8);
    cr_assert_eq(mc.max_position_embeddings, 4096);
    cr_assert_float_eq(mc.rms_norm_eps, 1e-6f, 1e-12);
    cr_assert_eq(mc.rope_theta, 10000.0);
    cr_assert_eq(mc.rope_type, ROPE_DEFAULT);
    cr_assert_eq(mc.tie_word_embeddings, 0);
    cr_assert_eq(mc.qkv_bias, 0);
    cr_assert_eq(mc.o_bias, 0);
    cr_assert_eq(mc.mlp_bias, 0);
    cr_assert_eq(mc.bos_token_id, 100000);
    cr_assert_eq(mc.eos_token_id, 100001);
    cr_assert_eq(mc.pad_token_id, -1);
    cr_assert_eq(mc.new_form, 0);
    cr_assert_str_eq(mc.torch_dtype, "bfloat16");
}

Test(hf_model, test_llama_defaults_biases_and_head_dim)
{
    ModelConfig mc;
    const char *text = "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,"
                       "\"hidden_size\":48,\"intermediate_size\":64,\"num_hidden_layers\":1,"
                       "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
                       "\"attention_bias\":true,\"mlp_bias\":true,\"pad_token_id\":null,"
                       "\"bos_token_id\":null,\"eos_token_id\":[7,8]}";
    cr_assert_eq(load_config_text(text, &mc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.head_dim, 16);
    cr_assert_eq(mc.num_kv_heads, 2);
    cr_assert_eq(mc.max_position_embeddings, 2048);
    cr_assert_eq(mc.rope_theta, 10000.0);
    cr_assert_float_eq(mc.rms_norm_eps, 1e-6f, 1e-12);
    cr_assert_eq(mc.qkv_bias, 1);
    cr_assert_eq(mc.o_bias, 1);
    cr_assert_eq(mc.mlp_bias, 1);
    cr_assert_eq(mc.bos_token_id, -1);
    cr_assert_eq(mc.eos_token_id, 7);
    cr_assert_eq(mc.pad_token_id, -1);
    cr_assert_str_eq(mc.torch_dtype, "");
    cr_assert_eq(hf_dir_kind(model_dir("cfg")), 1);
    cr_assert_eq(hf_dir_kind(model_dir("empty")), 0);
}

/* DeepSeek-R1-Distill-Qwen's layout in the transformers-5 form. */
Test(hf_model, test_qwen2_new_form_config_values)
{
    ModelConfig mc;
    const char *text =
        "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\",\"vocab_size\":151936,"
        "\"hidden_size\":96,\"intermediate_size\":256,\"num_hidden_layers\":2,"
        "\"num_attention_heads\":12,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-05,"
        "\"hidden_act\":\"silu\",\"tie_word_embeddings\":true,\"use_sliding_window\":false,"
        "\"sliding_window\":4096,\"bos_token_id\":151643,\"eos_token_id\":151643,"
        "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1000000.0},"
        "\"dtype\":\"bfloat16\"}";
    cr_assert_eq(load_config_text(text, &mc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.arch, ARCH_QWEN2);
    cr_assert_eq(mc.head_dim, 8);
    cr_assert_eq(mc.max_position_embeddings, 32768);
    cr_assert_float_eq(mc.rms_norm_eps, 1e-5f, 1e-12);
    cr_assert_eq(mc.rope_theta, 1000000.0);
    cr_assert_eq(mc.rope_type, ROPE_DEFAULT);
    cr_assert_eq(mc.tie_word_embeddings, 1);
    cr_assert_eq(mc.qkv_bias, 1);
    cr_assert_eq(mc.o_bias, 0);
    cr_assert_eq(mc.mlp_bias, 0);
    cr_assert_eq(mc.bos_token_id, 151643);
    cr_assert_eq(mc.new_form, 1);
    cr_assert_str_eq(mc.torch_dtype, "bfloat16");
}

#define TINY_LLAMA                                                                                 \
    "\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":16,"               \
    "\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":2"

Test(hf_model, test_rope_scaling_linear_and_llama3_in_both_forms)
{
    ModelConfig mc;
    cr_assert_eq(load_config_text("{" TINY_LLAMA ",\"rope_theta\":500000,"
                                  "\"rope_scaling\":{\"type\":\"linear\",\"factor\":4.0}}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.rope_type, ROPE_LINEAR);
    cr_assert_eq(mc.rope_factor, 4.0);
    cr_assert_eq(mc.rope_theta, 500000.0);
    cr_assert_eq(mc.new_form, 0);

    cr_assert_eq(
        load_config_text("{" TINY_LLAMA ",\"rope_theta\":500000.0,\"rope_scaling\":"
                         "{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,"
                         "\"high_freq_factor\":4.0,"
                         "\"original_max_position_embeddings\":8192}}",
                         &mc),
        DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.rope_type, ROPE_LLAMA3);
    cr_assert_eq(mc.rope_factor, 8.0);
    cr_assert_eq(mc.rope_low_freq_factor, 1.0);
    cr_assert_eq(mc.rope_high_freq_factor, 4.0);
    cr_assert_eq(mc.rope_original_max_position, 8192);

    cr_assert_eq(load_config_text("{" TINY_LLAMA ",\"rope_parameters\":{\"rope_type\":\"linear\","
                                  "\"rope_theta\":20000.0,\"factor\":2.5}}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.rope_type, ROPE_LINEAR);
    cr_assert_eq(mc.rope_factor, 2.5);
    cr_assert_eq(mc.rope_theta, 20000.0);
    cr_assert_eq(mc.new_form, 1);

    cr_assert_eq(load_config_text("{" TINY_LLAMA ",\"rope_parameters\":{\"rope_type\":\"llama3\","
                                  "\"rope_theta\":500000.0,\"factor\":32.0,\"low_freq_factor\":1.0,"
                                  "\"high_freq_factor\":4.0,"
                                  "\"original_max_position_embeddings\":8192}}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.rope_type, ROPE_LLAMA3);
    cr_assert_eq(mc.rope_factor, 32.0);
    cr_assert_eq(mc.rope_theta, 500000.0);
}

typedef struct BadConfig {
    const char *text;
    const char *expect;
} BadConfig;

static const BadConfig bad_configs[] = {
    {"{\"architectures\":[\"MistralForCausalLM\"]," TINY_LLAMA "}",
     "config.json: architectures: \"MistralForCausalLM\" is not supported (supported: "
     "LlamaForCausalLM, LlamaForSequenceClassification, Qwen2ForCausalLM, "
     "Qwen2ForSequenceClassification, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM)"},
    {"{\"architectures\":[\"DeepseekV3ForCausalLM\"]," TINY_LLAMA ",\"kv_lora_rank\":8,"
     "\"qk_nope_head_dim\":4,\"qk_rope_head_dim\":4,\"v_head_dim\":4,\"scoring_func\":\"softmax\"}",
     "scoring_func: DeepseekV3 scores by sigmoid, got \"softmax\""},
    {"{\"architectures\":\"LlamaForCausalLM\"}", "architectures: expected a list"},
    {"{\"vocab_size\":3}", "architectures: missing"},
    {"{" TINY_LLAMA ",\"model_type\":\"qwen2\"}",
     "model_type: \"qwen2\" does not match architectures \"LlamaForCausalLM\" (expected "
     "\"llama\")"},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2.0}}",
     "rope_scaling: rope type \"dynamic\" is not supported (supported: default, linear, llama3)"},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}}",
     "rope_scaling: rope type \"yarn\" is not supported (supported: default, linear, llama3)"},
    {"{" TINY_LLAMA ",\"rope_parameters\":{\"rope_type\":\"longrope\",\"rope_theta\":1e4}}",
     "rope_parameters: rope type \"longrope\" is not supported (supported: default, linear, "
     "llama3)"},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"type\":\"linear\"}}", "rope_scaling.factor: missing"},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":\"2\"}}",
     "rope_scaling.factor: expected a number, got \"2\""},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"type\":\"linear\",\"factor\":-2}}",
     "rope_scaling.factor: must be positive"},
    {"{" TINY_LLAMA ",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}}",
     "rope_scaling.low_freq_factor: missing"},
    {"{" TINY_LLAMA ",\"rope_scaling\":\"linear\"}", "rope_scaling: expected an object or null"},
    {"{" TINY_LLAMA ",\"rope_theta\":\"big\"}", "rope_theta: expected a number, got \"big\""},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":\"abc\"}",
     "config.json: hidden_size: expected an integer, got \"abc\""},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32.5}",
     "vocab_size: expected an integer, got 32.5"},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":1e12}",
     "vocab_size: expected an integer, got 1000000000000"},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":16}", "vocab_size: missing"},
    {"{" TINY_LLAMA ",\"tie_word_embeddings\":\"yes\"}",
     "tie_word_embeddings: expected true or false, got \"yes\""},
    {"{" TINY_LLAMA ",\"hidden_act\":\"gelu\"}",
     "hidden_act: \"gelu\" is not supported (supported: silu)"},
    {"{" TINY_LLAMA ",\"eos_token_id\":\"</s>\"}", "eos_token_id: expected a token id"},
    {"{" TINY_LLAMA ",\"torch_dtype\":5}", "torch_dtype: expected a string, got 5"},
    {"{\"architectures\":[\"Qwen2ForCausalLM\"],\"vocab_size\":32,\"hidden_size\":16,"
     "\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
     "\"use_sliding_window\":true}",
     "use_sliding_window: true is not supported"},
    {"{" TINY_LLAMA ",\"num_key_value_heads\":3}", "num_key_value_heads"},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":18,"
     "\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":4}",
     "head_dim: not given, and hidden_size 18 is not divisible by num_attention_heads 4"},
    {"{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":16,"
     "\"intermediate_size\":24,\"num_hidden_layers\":1,\"num_attention_heads\":0}",
     "num_attention_heads: must be a positive integer, got 0"},
    {"{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"vocab_size\": 32,,\n}",
     "config.json:3: not valid JSON"},
    {"[1, 2]", "expected a JSON object at the top level"},
    {"{" TINY_LLAMA "}\n}\n", "config.json:2: not valid JSON"},
};

Test(hf_model, test_bad_configs_name_the_file_field_and_problem)
{
    for (size_t i = 0; i < sizeof(bad_configs) / sizeof(bad_configs[0]); i++)
        assert_config_fails(bad_configs[i].text, bad_configs[i].expect);
}

Test(hf_model, test_missing_config_file)
{
    ModelConfig mc;
    const char *dir = model_dir("noconfig");
    cr_assert_eq(hf_config_load(dir, &mc), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "noconfig/config.json: cannot open"), "%s", ds_last_error());
}

/* ---- weights ------------------------------------------------------------------------------ */

/* The value stored for element j of the table's i-th tensor (not exactly representable in the
 * 16-bit formats, so conversion rounding is exercised). */
static float weight_value(int i, size_t j)
{
    return sinf((float)j * 0.731f + (float)i * 1.37f) * (1.0f + (float)(i % 3));
}

static float rounded(float v, DType dt)
{
    if (dt == DT_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dt == DT_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}

typedef struct ModelFiles {
    int count;
    STWriteItem *items;
    void **bufs;
} ModelFiles;

/* One STWriteItem per table entry (full shapes), data in dt. Tests edit items before writing. */
static ModelFiles model_items(const ParamTable *pt, DType dt)
{
    ModelFiles m = {pt->count, calloc((size_t)pt->count + 1, sizeof(STWriteItem)),
                    calloc((size_t)pt->count + 1, sizeof(void *))};
    for (int i = 0; i < pt->count; i++) {
        const ParamInfo *p = &pt->items[i];
        size_t n = (size_t)p->shape[0] * (size_t)(p->ndim == 2 ? p->shape[1] : 1);
        m.bufs[i] = calloc(n ? n : 1, dtype_size(dt));
        for (size_t j = 0; j < n; j++) {
            float v = weight_value(i, j);
            if (dt == DT_F32) ((float *)m.bufs[i])[j] = v;
            if (dt == DT_BF16) ((uint16_t *)m.bufs[i])[j] = f32_to_bf16(v);
            if (dt == DT_F16) ((uint16_t *)m.bufs[i])[j] = f32_to_f16(v);
        }
        m.items[i] = (STWriteItem){p->name, dt, p->ndim, {p->shape[0], p->shape[1]}, m.bufs[i]};
    }
    return m;
}

static void model_files_free(ModelFiles *m)
{
    for (int i = 0; i <= m->count; i++)
        free(m->bufs[i]);
    free(m->bufs);
    free(m->items);
}

/* Write items into nshards files; with nshards > 1 also the index, whose file names may be
 * overridden through index_name (NULL: the real ones). */
static void write_model(const char *dir, const ModelFiles *m, int nshards, const char *index_name)
{
    char path[900];
    if (nshards == 1) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        cr_assert_eq(safetensors_write(path, m->items, m->count, "{\"format\":\"pt\"}"), DS_OK,
                     "%s", ds_last_error());
        return;
    }
    char index[1 << 16];
    size_t at =
        (size_t)snprintf(index, sizeof(index), "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    int per = (m->count + nshards - 1) / nshards;
    for (int s = 0; s < nshards; s++) {
        char name[128];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, nshards);
        int lo = s * per, hi = lo + per < m->count ? lo + per : m->count;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        cr_assert_eq(safetensors_write(path, m->items + lo, hi - lo, "{\"format\":\"pt\"}"), DS_OK,
                     "%s", ds_last_error());
        for (int i = lo; i < hi; i++)
            at += (size_t)snprintf(index + at, sizeof(index) - at, "%s\"%s\":\"%s\"", i ? "," : "",
                                   m->items[i].name, index_name && i == hi - 1 ? index_name : name);
    }
    snprintf(index + at, sizeof(index) - at, "}}");
    write_file(dir, "model.safetensors.index.json", index);
}

static ModelConfig tiny_config(ModelArch arch, int tied)
{
    ModelConfig mc = {0};
    mc.arch = arch;
    mc.vocab_size = 20;
    mc.hidden_size = 8;
    mc.intermediate_size = 12;
    mc.num_layers = 2;
    mc.num_heads = 2;
    mc.num_kv_heads = 1;
    mc.head_dim = 4;
    mc.max_position_embeddings = 64;
    mc.rms_norm_eps = 1e-6f;
    mc.rope_theta = 10000;
    mc.tie_word_embeddings = tied;
    mc.qkv_bias = arch == ARCH_QWEN2;
    return mc;
}

static void assert_loaded(const ParamTable *pt, const float *params, DType dt)
{
    for (int i = 0; i < pt->count; i++) {
        const ParamInfo *p = &pt->items[i];
        for (size_t j = 0; j < p->numel; j++) {
            float want = rounded(weight_value(i, j), dt);
            cr_assert_eq(params[p->offset + j], want, "%s[%zu]: %g != %g (%s)", p->name, j,
                         params[p->offset + j], want, dtype_name(dt));
        }
    }
}

static void check_roundtrip(ModelArch arch, int tied, DType dt, int nshards)
{
    ModelConfig mc = tiny_config(arch, tied);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK, "%s", ds_last_error());
    char name[64];
    snprintf(name, sizeof(name), "m_%d_%d_%s_%d", (int)arch, tied, dtype_name(dt), nshards);
    const char *dir = model_dir(name);
    ModelFiles m = model_items(&pt, dt);
    write_model(dir, &m, nshards, NULL);
    float *params = calloc(pt.total, sizeof(float));
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_OK, "%s", ds_last_error());
    assert_loaded(&pt, params, dt);
    free(params);
    model_files_free(&m);
    param_table_free(&pt);
}

Test(hf_model, test_load_single_file_f32_bf16_f16)
{
    check_roundtrip(ARCH_LLAMA, 0, DT_F32, 1);
    check_roundtrip(ARCH_LLAMA, 0, DT_BF16, 1);
    check_roundtrip(ARCH_LLAMA, 0, DT_F16, 1);
}

Test(hf_model, test_load_sharded_with_index)
{
    check_roundtrip(ARCH_LLAMA, 0, DT_BF16, 3);
    check_roundtrip(ARCH_QWEN2, 0, DT_F32, 2);
    check_roundtrip(ARCH_QWEN2, 1, DT_F16, 4);
}

Test(hf_model, test_tied_model_ignores_lm_head_in_file)
{
    ModelConfig mc = tiny_config(ARCH_QWEN2, 1);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    cr_assert_null(param_table_find(&pt, "lm_head.weight"));
    ModelFiles m = model_items(&pt, DT_BF16);
    /* Some exports carry a copy of the tied head anyway. */
    m.bufs[m.count] = calloc(20 * 8, 2);
    m.items[m.count] = (STWriteItem){"lm_head.weight", DT_BF16, 2, {20, 8}, m.bufs[m.count]};
    m.count++;
    const char *dir = model_dir("tied_extra");
    write_model(dir, &m, 1, NULL);
    float *params = calloc(pt.total, sizeof(float));
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_OK, "%s", ds_last_error());
    assert_loaded(&pt, params, DT_BF16);
    free(params);
    m.count--;
    free(m.bufs[m.count]);
    m.bufs[m.count] = NULL;
    model_files_free(&m);
    param_table_free(&pt);
}

/* A hand-made table with tensor-parallel slices: rows of one tensor, columns of another, a slice
 * of a bias, and a replicated one. */
Test(hf_model, test_rank_slices_rows_and_columns)
{
    ParamInfo items[4];
    items[0] = (ParamInfo){.ndim = 2,
                           .shape = {6, 4},
                           .split_dim = 0,
                           .slice_start = 2,
                           .slice_len = 3,
                           .numel = 12,
                           .offset = 0};
    snprintf(items[0].name, PARAM_NAME_MAX, "w_rows");
    items[1] = (ParamInfo){.ndim = 2,
                           .shape = {6, 4},
                           .split_dim = 1,
                           .slice_start = 1,
                           .slice_len = 2,
                           .numel = 12,
                           .offset = 64};
    snprintf(items[1].name, PARAM_NAME_MAX, "w_cols");
    items[2] = (ParamInfo){.ndim = 1,
                           .shape = {6},
                           .split_dim = 0,
                           .slice_start = 4,
                           .slice_len = 2,
                           .numel = 2,
                           .offset = 128};
    snprintf(items[2].name, PARAM_NAME_MAX, "bias");
    items[3] = (ParamInfo){.ndim = 2,
                           .shape = {2, 3},
                           .split_dim = -1,
                           .slice_start = 0,
                           .slice_len = 2,
                           .numel = 6,
                           .offset = 192};
    snprintf(items[3].name, PARAM_NAME_MAX, "full");
    ParamTable pt = {.count = 4, .items = items, .total = 256, .experts_begin = 256};
    float full[24];
    for (int j = 0; j < 24; j++)
        full[j] = (float)j;
    STWriteItem w[] = {{"w_rows", DT_F32, 2, {6, 4}, full},
                       {"w_cols", DT_F32, 2, {6, 4}, full},
                       {"bias", DT_F32, 1, {6}, full},
                       {"full", DT_F32, 2, {2, 3}, full}};
    const char *dir = model_dir("slices");
    char path[900];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    cr_assert_eq(safetensors_write(path, w, 4, NULL), DS_OK);
    float params[256];
    for (int i = 0; i < 256; i++)
        params[i] = -1;
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_OK, "%s", ds_last_error());
    for (int j = 0; j < 12; j++)
        cr_assert_eq(params[j], (float)(8 + j), "rows %d", j);
    for (int r = 0; r < 6; r++)
        for (int c = 0; c < 2; c++)
            cr_assert_eq(params[64 + r * 2 + c], (float)(r * 4 + 1 + c), "cols %d %d", r, c);
    cr_assert_eq(params[128], 4.0f);
    cr_assert_eq(params[129], 5.0f);
    for (int j = 0; j < 6; j++)
        cr_assert_eq(params[192 + j], (float)j);
    cr_assert_eq(params[12], -1.0f, "nothing written past a slice");
    cr_assert_eq(params[130], -1.0f);

    /* A table whose slice does not fit the shape is a program error, not a crash. */
    items[0].slice_start = 5;
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "w_rows"), "%s", ds_last_error());
}

/* Write the tiny Llama model with one edit applied, load it, expect the error. */
typedef void (*EditFn)(ModelFiles *m);

static void assert_load_fails(EditFn edit, int nshards, const char *index_name, int status,
                              const char *expect1, const char *expect2)
{
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    ModelFiles m = model_items(&pt, DT_BF16);
    if (edit) edit(&m);
    const char *dir = model_dir("broken");
    write_model(dir, &m, nshards, index_name);
    float *params = calloc(pt.total, sizeof(float));
    ds_clear_error();
    int rc = hf_load_weights(dir, &mc, &pt, params);
    cr_assert_eq(rc, status, "got %d: %s", rc, ds_last_error());
    cr_assert(strstr(ds_last_error(), expect1), "message \"%s\" lacks \"%s\"", ds_last_error(),
              expect1);
    if (expect2)
        cr_assert(strstr(ds_last_error(), expect2), "message \"%s\" lacks \"%s\"", ds_last_error(),
                  expect2);
    free(params);
    model_files_free(&m);
    param_table_free(&pt);
}

static int find_item(const ModelFiles *m, const char *name)
{
    for (int i = 0; i < m->count; i++)
        if (strcmp(m->items[i].name, name) == 0) return i;
    cr_assert_fail("no item %s", name);
    return -1;
}

static void drop_k_proj(ModelFiles *m)
{
    int i = find_item(m, "model.layers.1.self_attn.k_proj.weight");
    m->items[i] = m->items[m->count - 1];
    m->count--;
}

static void transpose_down(ModelFiles *m)
{
    int i = find_item(m, "model.layers.0.mlp.down_proj.weight");
    int64_t t = m->items[i].shape[0];
    m->items[i].shape[0] = m->items[i].shape[1];
    m->items[i].shape[1] = t;
}

static void norm_as_2d(ModelFiles *m)
{
    int i = find_item(m, "model.norm.weight");
    m->items[i].ndim = 2;
    m->items[i].shape[1] = 1;
}

static void embed_as_i32(ModelFiles *m)
{
    /* Same byte size as 2 x BF16 per element: reinterpret as I32 of half the rows. */
    int i = find_item(m, "model.embed_tokens.weight");
    m->items[i].dtype = DT_I32;
    m->items[i].shape[0] /= 2;
}

Test(hf_model, test_missing_tensor)
{
    assert_load_fails(drop_k_proj, 1, NULL, DS_ERR_INPUT,
                      "broken: tensor model.layers.1.self_attn.k_proj.weight is missing", NULL);
    assert_load_fails(drop_k_proj, 2, NULL, DS_ERR_INPUT,
                      "tensor model.layers.1.self_attn.k_proj.weight is missing",
                      "model.safetensors.index.json does not list it");
}

Test(hf_model, test_wrong_shape_names_both_shapes)
{
    assert_load_fails(transpose_down, 1, NULL, DS_ERR_INPUT,
                      "tensor model.layers.0.mlp.down_proj.weight: shape [12, 8] in "
                      "model.safetensors, expected [8, 12]",
                      NULL);
    assert_load_fails(norm_as_2d, 3, NULL, DS_ERR_INPUT,
                      "tensor model.norm.weight: shape [8, 1] in model-00003-of-00003.safetensors, "
                      "expected [8]",
                      NULL);
}

Test(hf_model, test_unsupported_dtype)
{
    assert_load_fails(
        embed_as_i32, 1, NULL, DS_ERR_INPUT,
        "tensor model.embed_tokens.weight: dtype I32 is not supported (F32, BF16, F16)",
        "model.safetensors");
}

Test(hf_model, test_index_with_paths_outside_the_directory_is_refused)
{
    assert_load_fails(NULL, 2, "../x.safetensors", DS_ERR_INPUT, "names file \"../x.safetensors\"",
                      "must be plain file names inside the model directory");
    assert_load_fails(NULL, 2, "/etc/passwd", DS_ERR_INPUT, "names file \"/etc/passwd\"",
                      "model.safetensors.index.json");
    assert_load_fails(NULL, 2, "..", DS_ERR_INPUT, "names file \"..\"", NULL);
    assert_load_fails(NULL, 2, "", DS_ERR_INPUT, "names file \"\"", NULL);
}

Test(hf_model, test_index_naming_a_missing_shard)
{
    assert_load_fails(NULL, 2, "model-00009-of-00009.safetensors", DS_ERR_INPUT,
                      "broken/model-00009-of-00009.safetensors: cannot open", NULL);
}

Test(hf_model, test_index_not_an_object_map)
{
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    const char *dir = model_dir("badindex");
    float *params = calloc(pt.total, sizeof(float));
    write_file(dir, "model.safetensors.index.json", "{\"weight_map\":[1]}");
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "weight_map: expected an object, got [1]"), "%s",
              ds_last_error());
    write_file(dir, "model.safetensors.index.json", "{\"weight_map\":{\"a\":3}}");
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "tensor \"a\": expected a file name, got 3"), "%s",
              ds_last_error());
    write_file(dir, "model.safetensors.index.json", "{\"metadata\":{}}");
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "weight_map: missing"), "%s", ds_last_error());
    free(params);
    param_table_free(&pt);
}

Test(hf_model, test_no_weight_files)
{
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    const char *dir = model_dir("noweights");
    float *params = calloc(pt.total, sizeof(float));
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "noweights: no model weights: neither model.safetensors nor "
                                      "model.safetensors.index.json"),
              "%s", ds_last_error());
    free(params);
    param_table_free(&pt);
}

Test(hf_model, test_corrupt_weight_file_is_an_input_error)
{
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    const char *dir = model_dir("corrupt");
    const char bytes[] = "\x10\0\0\0\0\0\0\0{\"a\":1}         ";
    char path[900];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    FILE *fp = fopen(path, "wb");
    cr_assert_eq(fwrite(bytes, 1, sizeof(bytes) - 1, fp), 24);
    fclose(fp);
    float *params = calloc(pt.total, sizeof(float));
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(
        strstr(ds_last_error(), "corrupt/model.safetensors: tensor \"a\": expected an object"),
        "%s", ds_last_error());
    free(params);
    param_table_free(&pt);
}

/* ---- config.json against the weight files ---------------------------------------------------- */

/* The tiny Llama's weights in one file, with config.json from fmt (one %s: num_hidden_layers and
 * what follows, so each case edits one size). */
static int load_tiny_with_config(const char *name, const char *sizes, ModelConfig *mc)
{
    ModelConfig tiny = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    cr_assert_eq(param_table_build(&tiny, &pt), DS_OK);
    ModelFiles m = model_items(&pt, DT_BF16);
    const char *dir = model_dir(name);
    write_model(dir, &m, 1, NULL);
    model_files_free(&m);
    param_table_free(&pt);
    char text[2048];
    snprintf(text, sizeof(text),
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
             "\"hidden_size\": 8, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, "
             "\"head_dim\": 4, \"tie_word_embeddings\": false, %s}",
             sizes);
    write_file(dir, "config.json", text);
    ds_clear_error();
    return hf_config_load(dir, mc);
}

static void assert_tiny_config_fails(const char *sizes, const char *expect)
{
    ModelConfig mc;
    cr_assert_eq(load_tiny_with_config("sizes", sizes, &mc), DS_ERR_INPUT, "%s: %s", sizes,
                 ds_last_error());
    cr_assert(strstr(ds_last_error(), expect), "message \"%s\" lacks \"%s\"", ds_last_error(),
              expect);
}

/* Sizes in config.json are checked against the weight files before anything is sized from
 * them; a tensor of a layer the config does not have is refused, not ignored. */
Test(hf_model, test_config_sizes_are_checked_against_the_weight_files)
{
    ModelConfig mc;
    const char *ok = "\"vocab_size\": 20, \"intermediate_size\": 12, \"num_hidden_layers\": 2";
    cr_assert_eq(load_tiny_with_config("sizes-ok", ok, &mc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.num_layers, 2);
    assert_tiny_config_fails("\"vocab_size\": 20, \"intermediate_size\": 12, \"num_hidden_layers\": 1",
                             "tensor model.layers.1.input_layernorm.weight in model.safetensors "
                             "is not part of the model config.json describes (1 layer); "
                             "model.allow_extra_tensors: true (--allow-extra-tensors) loads the "
                             "model without it");
    assert_tiny_config_fails(
        "\"vocab_size\": 20, \"intermediate_size\": 12, \"num_hidden_layers\": 100000",
        "config.json: num_hidden_layers 100000 means 900003 tensors, but the weight files hold 21");
    assert_tiny_config_fails(
        "\"vocab_size\": 20, \"intermediate_size\": 12, \"num_hidden_layers\": 2000000000",
        "num_hidden_layers 2000000000 means 18000000003 tensors, but the weight files hold 21");
    assert_tiny_config_fails(
        "\"vocab_size\": 2147483647, \"intermediate_size\": 12, \"num_hidden_layers\": 2",
        "tensor model.embed_tokens.weight: shape [20, 8] in model.safetensors, but config.json "
        "gives [2147483647, 8]");
    assert_tiny_config_fails(
        "\"vocab_size\": 20, \"intermediate_size\": 2000000000, \"num_hidden_layers\": 2",
        "tensor model.layers.0.mlp.gate_proj.weight: shape [12, 8] in model.safetensors, but "
        "config.json gives [2000000000, 8]");
}

/* model.allow_extra_tensors (HF_EXTRA_WARN): weight files holding a layer the config lacks load,
 * with one warning naming the tensors, and the loader leaves them out; the other checks hold */
Test(hf_model, test_extra_tensors_load_with_a_warning_when_allowed)
{
    ModelConfig mc;
    const char *one = "\"vocab_size\": 20, \"intermediate_size\": 12, \"num_hidden_layers\": 1";
    cr_assert_eq(load_tiny_with_config("extra", one, &mc), DS_ERR_INPUT, "refused by default");
    const char *dir = model_dir("extra");
    const int warnings = progress_warnings();
    cr_assert_eq(hf_config_load_with(dir, HF_EXTRA_WARN, &mc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.num_layers, 1);
    cr_assert_eq(progress_warnings(), warnings + 1, "one warning for the 9 tensors of layer 1");
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    float *params = calloc(pt.total, sizeof(float));
    cr_assert_eq(hf_load_weights(dir, &mc, &pt, params), DS_OK, "%s", ds_last_error());
    int nonzero = 0;
    for (size_t i = 0; i < pt.total; i++)
        nonzero += params[i] != 0.0f;
    cr_assert_gt(nonzero, 0, "layer 0 and the rest are loaded");
    free(params);
    param_table_free(&pt);
    /* the caller that judged the files already looks no more */
    cr_assert_eq(hf_config_load_with(dir, HF_EXTRA_QUIET, &mc), DS_OK);
    cr_assert_eq(progress_warnings(), warnings + 1);
    /* a wrong shape is refused whatever extra tensors are allowed */
    assert_tiny_config_fails("\"vocab_size\": 21, \"intermediate_size\": 12, \"num_hidden_layers\": 2",
                             "tensor model.embed_tokens.weight: shape [20, 8]");
    cr_assert_eq(hf_config_load_with(model_dir("sizes"), HF_EXTRA_WARN, &mc), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "shape [20, 8] in model.safetensors, but config.json gives "
                                      "[21, 8]"),
              "%s", ds_last_error());
}

/* the parameter table's sizes are checked 64-bit arithmetic, whatever the config says */
Test(hf_model, test_param_table_sizes_cannot_overflow)
{
    ModelConfig mc = tiny_config(ARCH_LLAMA, 0);
    ParamTable pt;
    mc.num_layers = 2000000000;
    cr_assert_eq(param_table_build(&mc, &pt), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "num_hidden_layers: 2000000000 is more than 16384"), "%s",
              ds_last_error());
    mc = tiny_config(ARCH_LLAMA, 0);
    mc.vocab_size = 2147483647;
    mc.hidden_size = 2147483647;
    cr_assert_eq(param_table_build(&mc, &pt), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "model.embed_tokens.weight: [2147483647, 2147483647] makes "
                                      "the model larger than 2^58 parameters"),
              "%s", ds_last_error());
}

Test(hf_model, test_names_from_the_file_are_escaped_in_messages)
{
    assert_config_fails("{\"architectures\": [\"Evil\\n\\u001b[2J\"], \"vocab_size\": 1}",
                        "architectures: \"Evil\\n\\x1B[2J\" is not supported");
}

Test(hf_model, test_fifo_config_is_refused_without_blocking, .timeout = 20)
{
    const char *dir = model_dir("fifo");
    char path[900];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    ModelConfig mc;
    cr_assert_eq(hf_config_load(dir, &mc), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "config.json: not a regular file (a FIFO)"), "%s",
              ds_last_error());
}
