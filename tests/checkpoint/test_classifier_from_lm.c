/* test_classifier_from_lm.c: a causal LM directory loaded as a sequence classifier
 * (hf_load_weights_seeded): every body tensor holds the file's values, the LM's head is not
 * used, the new score.weight has the mean and spread of normal(0, initializer_range) and is the
 * same for a seed on every tensor-parallel rank, one line says so; a classifier directory that
 * lacks its head is still refused. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint/hf_model.h"
#include "checkpoint/safetensors.h"

#define LABELS 8
#define HIDDEN 64

static char tmpdir[512];

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "%s/checkpoint_cls_lm_%ld", DSTRAIN_TEST_TMP, (long)getpid());
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", tmpdir, tmpdir);
    cr_assert_eq(system(cmd), 0);
}

static void teardown(void)
{
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
}

TestSuite(classifier_from_lm, .init = setup, .fini = teardown);

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[900];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    cr_assert(fp, "%s", path);
    fputs(text, fp);
    fclose(fp);
}

/* The value the file holds for element j of tensor i (a pattern no initialiser produces). */
static float file_value(int i, size_t j)
{
    return sinf((float)j * 0.731f + (float)i * 1.37f) * (1.0f + (float)(i % 3));
}

/* A tiny LlamaForCausalLM directory: config.json (initializer_range given unless init_range is
 * 0; architecture arch) and every tensor of the causal LM's table, lm_head included, in F32, in
 * one file or in two shards with an index. Returns the directory. */
static const char *write_lm(const char *name, const char *arch, double init_range, int sharded)
{
    static char dir[700];
    snprintf(dir, sizeof(dir), "%s/%s", tmpdir, name);
    cr_assert_eq(mkdir(dir, 0755), 0);
    char config[2048], range[64] = "";
    if (init_range > 0) snprintf(range, sizeof(range), "\"initializer_range\": %g, ", init_range);
    snprintf(config, sizeof(config),
             "{\"architectures\": [\"%s\"], \"model_type\": \"llama\", %s"
             "\"hidden_size\": %d, \"intermediate_size\": 24, \"num_hidden_layers\": 2, "
             "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 40, "
             "\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"bos_token_id\": 1, "
             "\"eos_token_id\": 2, \"tie_word_embeddings\": false}\n",
             arch, range, HIDDEN);
    write_text(dir, "config.json", config);
    ModelConfig lm;
    cr_assert_eq(hf_config_load(dir, &lm), DS_OK, "%s", ds_last_error());
    lm.num_labels = 0; /* the causal LM's tensors, whatever the architecture says */
    ParamTable pt;
    cr_assert_eq(param_table_build(&lm, &pt), DS_OK);
    cr_assert_not_null(param_table_find(&pt, "lm_head.weight"));
    STWriteItem *items = calloc((size_t)pt.count, sizeof(STWriteItem));
    float **bufs = calloc((size_t)pt.count, sizeof(float *));
    for (int i = 0; i < pt.count; i++) {
        const ParamInfo *p = &pt.items[i];
        bufs[i] = malloc(p->numel * sizeof(float));
        for (size_t j = 0; j < p->numel; j++)
            bufs[i][j] = file_value(i, j);
        items[i] = (STWriteItem){p->name, DT_F32, p->ndim, {p->shape[0], p->shape[1]}, bufs[i]};
    }
    char path[900];
    if (!sharded) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        cr_assert_eq(safetensors_write(path, items, pt.count, "{\"format\":\"pt\"}"), DS_OK);
    } else {
        const int half = pt.count / 2;
        char index[1 << 15];
        size_t at = (size_t)snprintf(index, sizeof(index), "{\"weight_map\": {");
        for (int s = 0; s < 2; s++) {
            char shard[64];
            snprintf(shard, sizeof(shard), "model-%05d-of-00002.safetensors", s + 1);
            snprintf(path, sizeof(path), "%s/%s", dir, shard);
            const int lo = s ? half : 0, hi = s ? pt.count : half;
            cr_assert_eq(safetensors_write(path, items + lo, hi - lo, "{\"format\":\"pt\"}"),
                         DS_OK);
            for (int i = lo; i < hi; i++)
                at += (size_t)snprintf(index + at, sizeof(index) - at, "%s\"%s\": \"%s\"",
                                       i ? ", " : "", items[i].name, shard);
        }
        snprintf(index + at, sizeof(index) - at, "}}\n");
        write_text(dir, "model.safetensors.index.json", index);
    }
    for (int i = 0; i < pt.count; i++)
        free(bufs[i]);
    free(bufs);
    free(items);
    param_table_free(&pt);
    return dir;
}

/* dir's config as the training driver makes it for task.type classification. */
static ModelConfig classifier_config(const char *dir)
{
    ModelConfig mc;
    cr_assert_eq(hf_config_load(dir, &mc), DS_OK, "%s", ds_last_error());
    mc.num_labels = LABELS;
    return mc;
}

/* Load dir as a classifier with a seed through a table of tp_rank of tp_size; returns params. */
static float *load_classifier(const char *dir, uint64_t seed, int tp_rank, int tp_size,
                              ParamTable *pt)
{
    ModelConfig mc = classifier_config(dir);
    cr_assert_eq(param_table_build_tp(&mc, tp_rank, tp_size, pt), DS_OK, "%s", ds_last_error());
    float *params = calloc(pt->total, sizeof(float));
    int rc = hf_load_weights_seeded(dir, &mc, pt, params, seed);
    cr_assert_eq(rc, DS_OK, "%s", ds_last_error());
    return params;
}

/* Every body tensor equals the file's values (the causal LM table's index i of that name). */
static void assert_body_from_file(const char *dir, const ParamTable *pt, const float *params)
{
    ModelConfig lm;
    cr_assert_eq(hf_config_load(dir, &lm), DS_OK);
    lm.num_labels = 0;
    ParamTable full;
    cr_assert_eq(param_table_build(&lm, &full), DS_OK);
    int checked = 0;
    for (int i = 0; i < full.count; i++) {
        const ParamInfo *f = &full.items[i];
        const ParamInfo *p = param_table_find(pt, f->name);
        if (strcmp(f->name, "lm_head.weight") == 0) {
            cr_assert_null(p, "the classifier's table has no lm_head");
            continue;
        }
        cr_assert_not_null(p, "%s", f->name);
        const size_t cols = f->ndim == 2 ? (size_t)f->shape[1] : 1;
        for (size_t j = 0; j < p->numel; j++) {
            /* this rank's element j is the full tensor's element at (row, col) */
            size_t row = j / cols, col = j % cols;
            if (p->split_dim == 0) row += (size_t)p->slice_start;
            if (p->split_dim == 1) {
                row = j / (size_t)p->slice_len;
                col = j % (size_t)p->slice_len + (size_t)p->slice_start;
            }
            float want = file_value(i, row * cols + col);
            cr_assert_eq(params[p->offset + j], want, "%s[%zu]: %g, the file holds %g", f->name, j,
                         params[p->offset + j], want);
        }
        checked++;
    }
    cr_assert_eq(checked, full.count - 1);
    param_table_free(&full);
}

/* The head's sample mean and standard deviation against normal(0, std): with n = 512 draws the
 * mean's standard error is std / sqrt(n) and the sample deviation's relative standard error
 * 1 / sqrt(2 n); 5 standard errors each (a false alarm about once in 3 million). */
static void assert_head_normal(const ParamTable *pt, const float *params, double std)
{
    const ParamInfo *h = param_table_find(pt, "score.weight");
    cr_assert_not_null(h);
    cr_assert_eq(h->shape[0], LABELS);
    cr_assert_eq(h->shape[1], HIDDEN);
    const size_t n = h->numel;
    double sum = 0, sq = 0;
    for (size_t j = 0; j < n; j++) {
        const double v = params[h->offset + j];
        cr_assert(isfinite(v));
        sum += v;
        sq += v * v;
    }
    const double mean = sum / (double)n;
    const double sd = sqrt(sq / (double)n - mean * mean);
    cr_assert_leq(fabs(mean), 5 * std / sqrt((double)n), "head mean %g (std %g, n %zu)", mean, std,
                  n);
    cr_assert_leq(fabs(sd / std - 1), 5 / sqrt(2.0 * (double)n),
                  "head standard deviation %g, expected %g (n %zu)", sd, std, n);
}

Test(classifier_from_lm, body_from_the_file_and_a_normal_head)
{
    const char *dir = write_lm("lm", "LlamaForCausalLM", 0.05, 0);
    ParamTable pt;
    float *params = load_classifier(dir, 7, 0, 1, &pt);
    assert_body_from_file(dir, &pt, params);
    assert_head_normal(&pt, params, 0.05);
    free(params);
    param_table_free(&pt);
}

Test(classifier_from_lm, sharded_lm_with_an_index)
{
    const char *dir = write_lm("lm_sharded", "LlamaForCausalLM", 0.05, 1);
    ParamTable pt;
    float *params = load_classifier(dir, 7, 0, 1, &pt);
    assert_body_from_file(dir, &pt, params);
    assert_head_normal(&pt, params, 0.05);
    free(params);
    param_table_free(&pt);
}

Test(classifier_from_lm, default_std_without_initializer_range)
{
    const char *dir = write_lm("lm_default", "LlamaForCausalLM", 0, 0);
    ParamTable pt;
    float *params = load_classifier(dir, 11, 0, 1, &pt);
    assert_body_from_file(dir, &pt, params);
    assert_head_normal(&pt, params, HF_HEAD_INIT_STD_DEFAULT);
    free(params);
    param_table_free(&pt);
}

Test(classifier_from_lm, head_is_a_function_of_the_seed_and_not_of_the_layout)
{
    const char *dir = write_lm("lm_seed", "LlamaForCausalLM", 0.05, 0);
    ParamTable a, b, c, t1;
    float *pa = load_classifier(dir, 7, 0, 1, &a);
    float *pb = load_classifier(dir, 7, 0, 1, &b);
    float *pc = load_classifier(dir, 8, 0, 1, &c);
    float *p1 = load_classifier(dir, 7, 1, 2, &t1); /* tensor-parallel rank 1 of 2 */
    const ParamInfo *ha = param_table_find(&a, "score.weight");
    const ParamInfo *hb = param_table_find(&b, "score.weight");
    const ParamInfo *hc = param_table_find(&c, "score.weight");
    const ParamInfo *h1 = param_table_find(&t1, "score.weight");
    cr_assert_eq(memcmp(pa + ha->offset, pb + hb->offset, ha->numel * sizeof(float)), 0,
                 "the same seed gives the same head");
    cr_assert_eq(h1->numel, ha->numel);
    cr_assert_eq(memcmp(pa + ha->offset, p1 + h1->offset, ha->numel * sizeof(float)), 0,
                 "tensor-parallel rank 1 holds the same head");
    assert_body_from_file(dir, &t1, p1);
    /* another seed: another draw; independent draws correlate by about 1 / sqrt(n) */
    double dot = 0, na = 0, nc = 0;
    for (size_t j = 0; j < ha->numel; j++) {
        const double x = pa[ha->offset + j], y = pc[hc->offset + j];
        dot += x * y;
        na += x * x;
        nc += y * y;
    }
    const double corr = dot / sqrt(na * nc);
    cr_assert_leq(fabs(corr), 5 / sqrt((double)ha->numel), "seeds 7 and 8: correlation %g", corr);
    free(pa);
    free(pb);
    free(pc);
    free(p1);
    param_table_free(&a);
    param_table_free(&b);
    param_table_free(&c);
    param_table_free(&t1);
}

Test(classifier_from_lm, says_what_it_did, .init = cr_redirect_stdout)
{
    setup();
    const char *dir = write_lm("lm_line", "LlamaForCausalLM", 0.05, 0);
    ParamTable pt;
    float *params = load_classifier(dir, 7, 0, 1, &pt);
    fflush(stdout);
    FILE *out = cr_get_redirected_stdout();
    char line[1024] = "";
    cr_assert_not_null(fgets(line, sizeof(line), out));
    cr_assert(strstr(line, "is a causal LM"), "%s", line);
    cr_assert(strstr(line, "score.weight [8, 64]"), "%s", line);
    cr_assert(strstr(line, "normal(0, 0.05)"), "%s", line);
    cr_assert(strstr(line, "seed 7"), "%s", line);
    cr_assert(strstr(line, "(not lm_head.weight)"), "%s", line);
    free(params);
    param_table_free(&pt);
}

Test(classifier_from_lm, plain_loader_and_a_headless_classifier_still_refuse)
{
    const char *lm = write_lm("lm_plain", "LlamaForCausalLM", 0.05, 0);
    ModelConfig mc = classifier_config(lm);
    ParamTable pt;
    cr_assert_eq(param_table_build(&mc, &pt), DS_OK);
    float *params = calloc(pt.total, sizeof(float));
    ds_clear_error();
    cr_assert_eq(hf_load_weights(lm, &mc, &pt, params), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "score.weight is missing"), "%s", ds_last_error());

    /* a *ForSequenceClassification directory without score.weight is damaged, not an LM */
    const char *cls = write_lm("cls_headless", "LlamaForSequenceClassification", 0.05, 0);
    ModelConfig cc;
    cr_assert_eq(hf_config_load(cls, &cc), DS_OK, "%s", ds_last_error());
    cr_assert_eq(cc.num_labels, 2);
    cc.num_labels = LABELS;
    ds_clear_error();
    cr_assert_eq(hf_load_weights_seeded(cls, &cc, &pt, params, 7), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "score.weight is missing"), "%s", ds_last_error());
    free(params);
    param_table_free(&pt);
}
