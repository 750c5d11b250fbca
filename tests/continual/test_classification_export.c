/* test_classification_export.c: the Hugging Face sequence-classification export at the library
 * level. config.json of a classifier (architectures, num_labels, id2label and label2id from
 * task.labels, the base config's names or LABEL_i; hostile name lists refused); hf_config_load
 * reading *ForSequenceClassification configs (num_labels from the key or from id2label, and
 * hostile values refused); a checkpoint of a Llama and a Qwen2 classifier exported in fp32 and
 * bf16, with model.* and score.weight and no lm_head, loaded back with the same parameters and,
 * in fp32, bitwise the same logits. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/model.h"
#include "checkpoint/ckpt.h"
#include "checkpoint/export.h"
#include "checkpoint/hf_model.h"
#include "checkpoint/safetensors.h"

static char tmpdir[512];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/continual_cls_export_%ld", DSTRAIN_TEST_TMP,
             (long)getpid());
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

TestSuite(cls_export, .init = setup, .fini = teardown);

static ModelConfig tiny_classifier(ModelArch arch, int num_labels)
{
    ModelConfig mc;
    cr_assert_eq(model_preset("tiny", &mc), DS_OK);
    mc.arch = arch;
    mc.qkv_bias = arch == ARCH_QWEN2;
    mc.num_labels = num_labels;
    mc.pad_token_id = 1;
    return mc;
}

/* hf_config_json_classification on the generated config of mc; the parsed result (caller
 * deletes) or NULL with the status in *status. */
static cJSON *classified(const ModelConfig *mc, const char *base_text, const char *names,
                         int *status)
{
    char *text = NULL;
    if (base_text) {
        text = strdup(base_text);
    } else {
        cr_assert_eq(hf_config_json_text(mc, "", &text), DS_OK);
    }
    *status = hf_config_json_classification(mc, names, &text);
    cJSON *root = *status == DS_OK ? cJSON_Parse(text) : NULL;
    free(text);
    return root;
}

static const char *label_of(const cJSON *root, const char *id)
{
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "id2label"), id);
    return cJSON_IsString(v) ? v->valuestring : "(none)";
}

static int id_of(const cJSON *root, const char *name)
{
    const cJSON *v =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "label2id"), name);
    return cJSON_IsNumber(v) ? v->valueint : -1;
}

Test(cls_export, config_fields_and_class_names)
{
    int status;
    ModelConfig mc = tiny_classifier(ARCH_LLAMA, 3);
    cJSON *root = classified(&mc, NULL, " ok,bearing_fault ,\toverheat ", &status);
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    cr_assert_str_eq(cJSON_GetArrayItem(arch, 0)->valuestring, "LlamaForSequenceClassification");
    cr_assert_eq(cJSON_GetArraySize(arch), 1);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "num_labels")->valueint, 3);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "pad_token_id")->valueint, 1);
    cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(root, "problem_type")->valuestring,
                     "single_label_classification");
    cr_assert_str_eq(label_of(root, "0"), "ok");
    cr_assert_str_eq(label_of(root, "1"), "bearing_fault");
    cr_assert_str_eq(label_of(root, "2"), "overheat");
    cr_assert_eq(id_of(root, "overheat"), 2);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "id2label")), 3);
    /* the rest of the causal LM's config is kept */
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "hidden_size")->valueint, mc.hidden_size);

    /* no names: LABEL_i; the Qwen2 architecture */
    mc = tiny_classifier(ARCH_QWEN2, 4);
    cJSON_Delete(root);
    root = classified(&mc, NULL, "", &status);
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "architectures"), 0)->valuestring,
        "Qwen2ForSequenceClassification");
    cr_assert_str_eq(label_of(root, "3"), "LABEL_3");
    cr_assert_eq(id_of(root, "LABEL_0"), 0);

    /* a base config that is already a classifier keeps its names when they are all there */
    char *base = cJSON_Print(root);
    cJSON *named = cJSON_Parse(base);
    free(base);
    cJSON *i2l = cJSON_GetObjectItemCaseSensitive(named, "id2label");
    cJSON_ReplaceItemInObjectCaseSensitive(i2l, "2", cJSON_CreateString("vibration"));
    base = cJSON_Print(named);
    cJSON_Delete(root);
    root = classified(&mc, base, "", &status);
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(label_of(root, "2"), "vibration");
    cr_assert_eq(id_of(root, "vibration"), 2);
    cJSON_Delete(root);
    /* ... but task.labels wins, and a base with another count falls back to LABEL_i */
    root = classified(&mc, base, "a,b,c,d", &status);
    cr_assert_str_eq(label_of(root, "2"), "c");
    cJSON_Delete(root);
    ModelConfig five = tiny_classifier(ARCH_QWEN2, 5);
    root = classified(&five, base, "", &status);
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(label_of(root, "2"), "LABEL_2");
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(root, "num_labels")->valueint, 5);
    cJSON_Delete(root);
    cJSON_Delete(named);
    free(base);
}

Test(cls_export, hostile_class_names_are_refused)
{
    ModelConfig mc = tiny_classifier(ARCH_LLAMA, 3);
    char long_name[80];
    memset(long_name, 'x', 64);
    long_name[64] = 0;
    char too_long[200];
    snprintf(too_long, sizeof(too_long), "a,%s,c", long_name);
    const struct {
        const char *names, *message;
    } cases[] = {
        {"a,b", "task.labels: 2 names for task.num_labels 3"},
        {"a,b,c,d", "task.labels: 4 names for task.num_labels 3"},
        {"a,,c", "task.labels: name 1 is empty (expected 3 names separated by commas)"},
        {"a,b,c,", "task.labels: name 3 is empty"},
        {",", "task.labels: name 0 is empty"},
        {"  ,b,c", "task.labels: name 0 is empty"},
        {"a,b,a", "task.labels: \"a\" names both label 0 and 2"},
        {too_long, "task.labels: name 1 (\"xxxxxxxxxxxxxxxxxxxx...\") is longer than 63"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int status;
        cJSON *root = classified(&mc, NULL, cases[i].names, &status);
        cr_assert_eq(status, DS_ERR_INPUT, "\"%s\" accepted", cases[i].names);
        cr_assert_null(root);
        cr_assert(strstr(ds_last_error(), cases[i].message) != NULL, "\"%s\": %s", cases[i].names,
                  ds_last_error());
    }
    /* a 63-character name is fine */
    long_name[63] = 0;
    snprintf(too_long, sizeof(too_long), "a,%s,c", long_name);
    int status;
    cJSON *root = classified(&mc, NULL, too_long, &status);
    cr_assert_eq(status, DS_OK, "%s", ds_last_error());
    cr_assert_str_eq(label_of(root, "1"), long_name);
    cJSON_Delete(root);
    /* not a JSON object */
    char *text = strdup("[1, 2]");
    cr_assert_eq(hf_config_json_classification(&mc, "", &text), DS_ERR_INPUT);
    free(text);
}

static int load_config_text(const char *text, ModelConfig *mc)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/config.json", tmpdir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return hf_config_load(tmpdir, mc);
}

#define SHAPE                                                                                      \
    "\"vocab_size\": 32, \"hidden_size\": 16, \"intermediate_size\": 32, "                         \
    "\"num_hidden_layers\": 1, \"num_attention_heads\": 2"

Test(cls_export, hf_config_load_reads_classifiers)
{
    ModelConfig mc;
    cr_assert_eq(load_config_text("{\"architectures\": [\"LlamaForSequenceClassification\"], "
                                  "\"num_labels\": 4, " SHAPE "}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert(mc.arch == ARCH_LLAMA && mc.num_labels == 4 && !mc.qkv_bias);
    /* only id2label: its count, as transformers does */
    cr_assert_eq(load_config_text("{\"architectures\": [\"Qwen2ForSequenceClassification\"], "
                                  "\"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}, " SHAPE
                                  "}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert(mc.arch == ARCH_QWEN2 && mc.num_labels == 3 && mc.qkv_bias);
    /* neither: transformers' default of 2 */
    cr_assert_eq(load_config_text("{\"architectures\": [\"LlamaForSequenceClassification\"], "
                                  "\"model_type\": \"llama\", " SHAPE "}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.num_labels, 2);
    /* causal LMs, also when named only by model_type, have no labels */
    cr_assert_eq(load_config_text("{\"architectures\": [\"LlamaForCausalLM\"], \"num_labels\": "
                                  "7, " SHAPE "}",
                                  &mc),
                 DS_OK, "%s", ds_last_error());
    cr_assert_eq(mc.num_labels, 0);
    cr_assert_eq(load_config_text("{\"model_type\": \"qwen2\", " SHAPE "}", &mc), DS_OK, "%s",
                 ds_last_error());
    cr_assert(mc.arch == ARCH_QWEN2 && mc.num_labels == 0);
}

Test(cls_export, hf_config_load_refuses_hostile_classifiers)
{
    const struct {
        const char *fields, *message;
    } cases[] = {
        {"\"num_labels\": 1", "config.json: num_labels: expected 2..1000000 classes, got 1 (1 is "
                              "regression in transformers"},
        {"\"num_labels\": 0", "num_labels: expected 2..1000000 classes, got 0"},
        {"\"num_labels\": -3", "num_labels: expected 2..1000000 classes, got -3"},
        {"\"num_labels\": 1000001", "num_labels: expected 2..1000000 classes, got 1000001"},
        {"\"num_labels\": 1e12", "num_labels: expected an integer, got 1000000000000"},
        {"\"num_labels\": 2.5", "num_labels: expected an integer, got 2.5"},
        {"\"num_labels\": \"3\"", "num_labels: expected an integer, got \"3\""},
        {"\"num_labels\": 3, \"id2label\": {\"0\": \"a\", \"1\": \"b\"}",
         "config.json: num_labels: 3, but id2label names 2 labels"},
        {"\"id2label\": [\"a\", \"b\"]", "config.json: id2label: expected an object, got"},
        {"\"id2label\": \"a\"", "config.json: id2label: expected an object, got \"a\""},
        {"\"id2label\": {\"0\": \"a\"}", "num_labels: expected 2..1000000 classes, got 1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[600];
        snprintf(text, sizeof(text),
                 "{\"architectures\": [\"LlamaForSequenceClassification\"], %s, " SHAPE "}",
                 cases[i].fields);
        ModelConfig mc;
        cr_assert_eq(load_config_text(text, &mc), DS_ERR_INPUT, "accepted: %s", text);
        cr_assert(strstr(ds_last_error(), cases[i].message) != NULL, "%s: %s", cases[i].fields,
                  ds_last_error());
    }
    ModelConfig mc;
    cr_assert_eq(load_config_text("{\"architectures\": [\"Qwen2ForSequenceClassification\"], "
                                  "\"model_type\": \"llama\", " SHAPE "}",
                                  &mc),
                 DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "model_type: \"llama\" does not match architectures "
                                      "\"Qwen2ForSequenceClassification\"") != NULL,
              "%s", ds_last_error());
    cr_assert_eq(load_config_text(
                     "{\"architectures\": [\"GemmaForSequenceClassification\"], " SHAPE "}", &mc),
                 DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(),
                     "\"GemmaForSequenceClassification\" is not supported (supported: "
                     "LlamaForCausalLM, LlamaForSequenceClassification, Qwen2ForCausalLM, "
                     "Qwen2ForSequenceClassification, DeepseekV2ForCausalLM, "
                     "DeepseekV3ForCausalLM)") != NULL,
              "%s", ds_last_error());
}

static void meta_for(CkptMeta *m, const char *hf_config_json)
{
    memset(m, 0, sizeof(*m));
    m->step = 1;
    m->optim_t = 1;
    m->lr = 1e-3;
    m->seed = 7;
    m->train_steps = 1;
    m->model_path = "";
    m->model_preset = "tiny";
    m->config_yaml = "train:\n  steps: 1\n";
    m->hf_config_json = hf_config_json;
}

Test(cls_export, export_of_a_classifier_loads_back_with_the_same_logits)
{
    const ModelArch archs[2] = {ARCH_LLAMA, ARCH_QWEN2};
    for (int a = 0; a < 2; a++) {
        const int B = 3, T = 12, L = 3;
        ModelConfig mc = tiny_classifier(archs[a], L);
        Model m = {0};
        cr_assert_eq(model_init(&m, &mc, backend_cpu(), B, T), DS_OK, "%s", ds_last_error());
        model_init_weights(&m, 5 + (uint64_t)a, 0.02f);
        for (int i = 0; i < m.table.count; i++) /* the tiny init leaves biases at 0 */
            if (strstr(m.table.items[i].name, ".bias"))
                for (size_t e = 0; e < m.table.items[i].numel; e++)
                    m.params[m.table.items[i].offset + e] = 0.01f * (float)((e % 7) + 1);
        char dir[700], step[800], out[800];
        snprintf(dir, sizeof(dir), "%s/ckpt-%d", tmpdir, a);
        CkptWriterOptions o = {
            .dir = dir, .keep = 1, .layout = {.tp = 1, .dp = 1}, .tmp_tag = getpid()};
        CkptWriter *w;
        cr_assert_eq(ckpt_writer_open(&o, &m.table, &w), DS_OK);
        char *hf = NULL;
        cr_assert_eq(hf_config_json_text(&mc, "", &hf), DS_OK);
        cr_assert_eq(hf_config_json_classification(&mc, "ok,bearing_fault,overheat", &hf), DS_OK);
        CkptMeta meta;
        meta_for(&meta, hf);
        CkptBuffer b = {.prefix = "params", .base = m.params};
        cr_assert_eq(ckpt_writer_save(w, &meta, &b, 1, NULL, 0, NULL), DS_OK);
        cr_assert_eq(ckpt_writer_wait(w), DS_OK, "%s", ds_last_error());
        ckpt_writer_close(w);
        free(hf);

        /* rows of different lengths, right-padded with pad_token_id 1 */
        for (int r = 0; r < B; r++)
            for (int t = 0; t < T; t++)
                m.inputs[r * T + t] = t < 5 + 3 * r ? 2 + (r * 31 + t * 7) % 250 : 1;
        float ref[3 * 3], got[3 * 3];
        model_forward(&m, m.inputs, NULL, NULL, ref);

        snprintf(step, sizeof(step), "%s/step-00000001", dir);
        for (int k = 0; k < 2; k++) {
            const DType dtype = k == 0 ? DT_F32 : DT_BF16;
            snprintf(out, sizeof(out), "%s/hf-%d-%d", tmpdir, a, k);
            cr_assert_eq(hf_export_checkpoint(step, out, dtype, 5000000000ull, 0), DS_OK, "%s",
                         ds_last_error());
            /* tensors: the table's names and shapes, score.weight [L, C], no lm_head */
            char shard[900];
            snprintf(shard, sizeof(shard), "%s/model-00001-of-00001.safetensors", out);
            SafetensorsFile f;
            cr_assert_eq(safetensors_open(shard, &f), DS_OK, "%s", ds_last_error());
            cr_assert_eq(f.count, m.table.count);
            const STEntry *score = safetensors_find(&f, "score.weight");
            cr_assert(score && score->ndim == 2 && score->shape[0] == L &&
                      score->shape[1] == mc.hidden_size);
            cr_assert_null(safetensors_find(&f, "lm_head.weight"));
            for (int i = 0; i < m.table.count; i++) {
                const ParamInfo *p = &m.table.items[i];
                const STEntry *e = safetensors_find(&f, p->name);
                cr_assert(e, "%s missing", p->name);
                cr_assert(e->ndim == p->ndim && e->shape[0] == p->shape[0] &&
                              (p->ndim == 1 || e->shape[1] == p->shape[1]) &&
                              e->dtype == (int)dtype,
                          "%s", p->name);
                cr_assert(strcmp(p->name, "score.weight") == 0 ||
                              strncmp(p->name, "model.", 6) == 0,
                          "%s", p->name);
            }
            if (archs[a] == ARCH_QWEN2)
                cr_assert_not_null(safetensors_find(&f, "model.layers.0.self_attn.q_proj.bias"));
            safetensors_close(&f);

            /* dstrain's loader reads it back */
            ModelConfig mc2;
            cr_assert_eq(hf_config_load(out, &mc2), DS_OK, "%s", ds_last_error());
            cr_assert(mc2.num_labels == L && mc2.arch == archs[a] && mc2.pad_token_id == 1 &&
                      mc2.hidden_size == mc.hidden_size && mc2.qkv_bias == mc.qkv_bias);
            Model m2 = {0};
            cr_assert_eq(model_init(&m2, &mc2, backend_cpu(), B, T), DS_OK);
            cr_assert_eq(hf_load_weights(out, &mc2, &m2.table, m2.params), DS_OK, "%s",
                         ds_last_error());
            int bad = 0;
            for (int i = 0; i < m.table.count; i++) {
                const ParamInfo *p = &m.table.items[i];
                for (size_t e = p->offset; e < p->offset + p->numel; e++) {
                    float want =
                        dtype == DT_F32 ? m.params[e] : bf16_to_f32(f32_to_bf16(m.params[e]));
                    bad += memcmp(&want, &m2.params[e], sizeof(float)) != 0;
                }
            }
            cr_assert_eq(bad, 0, "arch %d dtype %d: %d parameters differ", a, k, bad);
            memcpy(m2.inputs, m.inputs, (size_t)B * T * sizeof(int32_t));
            model_forward(&m2, m2.inputs, NULL, NULL, got);
            if (dtype == DT_F32) {
                cr_assert_eq(memcmp(ref, got, sizeof(ref)), 0, "arch %d: fp32 logits differ", a);
            } else {
                for (int i = 0; i < B * L; i++)
                    cr_assert_float_eq(ref[i], got[i], 2e-2, "bf16 logit %d: %g vs %g", i, ref[i],
                                       got[i]);
            }
            /* the logits depend on the padding position: the rows differ */
            cr_assert(ref[0] != ref[L] && ref[L] != ref[2 * L]);
            model_free(&m2);
        }
        model_free(&m);
    }
}
