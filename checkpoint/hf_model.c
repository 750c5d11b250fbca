/* hf_model.c: Hugging Face model directories in: config.json (the old rope_theta/rope_scaling
 * form and the transformers-5 rope_parameters/dtype form) into a ModelConfig, and weights from
 * model.safetensors or the shards named by model.safetensors.index.json into this rank's fp32
 * slices, and a new classification head for a causal LM fine-tuned as a classifier. It does not
 * write directories (export lives elsewhere) and never guesses shard names.
 * Tensor bytes are read straight from the mapping and released after use, so the model is never
 * held in memory twice. */
#include "hf_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../trainer/log.h"
#include "safetensors.h"

#define HF_PATH_MAX 1024
#define HF_JSON_MAX_BYTES ((size_t)256 << 20) /* config and index files are small */
#define HF_FILE_NAME_MAX_CHECK 256

/* ---- small JSON helpers (errors name the file and the key) --------------------------------- */

static int read_text_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    FILE *fp = ds_fopen_regular(path, "rb"); /* a FIFO is refused, not waited on */
    if (!fp) return DS_ERR_INPUT;
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return ds_error(DS_ERR_INPUT, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > HF_JSON_MAX_BYTES) {
        fclose(fp);
        return ds_error(DS_ERR_INPUT, "%s: %lld bytes is too large for a JSON file of this kind",
                        path, (long long)st.st_size);
    }
    char *buf = ds_malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(fp);
        return DS_ERR_INTERNAL;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, fp);
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    if (err) {
        free(buf);
        return ds_error(DS_ERR_INPUT, "%s: cannot read: %s", path, strerror(err));
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return DS_OK;
}

static int parse_json_file(const char *path, cJSON **root)
{
    char *text;
    size_t len = 0;
    DS_TRY(read_text_file(path, &text, &len));
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    /* Only whitespace may follow the value (cJSON's own check stops at an embedded NUL). */
    const char *rest = *root ? end : NULL;
    while (rest && rest < text + len &&
           (*rest == ' ' || *rest == '\t' || *rest == '\n' || *rest == '\r'))
        rest++;
    if (rest && rest < text + len) {
        cJSON_Delete(*root);
        *root = NULL;
        end = rest;
    }
    if (!*root) {
        /* Report a line number: these files are edited by hand. */
        int line = 1;
        for (const char *p = text; end && p < end && p < text + len; p++)
            line += *p == '\n';
        free(text);
        return ds_error(DS_ERR_INPUT, "%s:%d: not valid JSON", path, line);
    }
    free(text);
    if (!cJSON_IsObject(*root)) {
        cJSON_Delete(*root);
        *root = NULL;
        return ds_error(DS_ERR_INPUT, "%s: expected a JSON object at the top level", path);
    }
    return DS_OK;
}

/* A value as the user wrote it, short: "abc" with quotes, 1.5, [1,2], null. */
static void json_describe(const cJSON *v, char *out, size_t cap)
{
    char *s = cJSON_PrintUnformatted(v);
    if (!s) {
        snprintf(out, cap, "(unprintable)");
        return;
    }
    if (strlen(s) > 60) memcpy(s + 57, "...", 4);
    snprintf(out, cap, "%s", s);
    cJSON_free(s);
}

/* Where errors point: the file and the key path inside it. */
typedef struct JsonWhere {
    const char *file;
    const char *prefix; /* "rope_scaling." for nested keys, or "" */
} JsonWhere;

static int json_type_error(const JsonWhere *w, const char *key, const char *expected,
                           const cJSON *got)
{
    char desc[96];
    json_describe(got, desc, sizeof(desc));
    return ds_error(DS_ERR_INPUT, "%s: %s%s: expected %s, got %s", w->file, w->prefix, key,
                    expected, desc);
}

static int json_missing_error(const JsonWhere *w, const char *key)
{
    return ds_error(DS_ERR_INPUT, "%s: %s%s: missing", w->file, w->prefix, key);
}

/* Absent and null both mean "not given". */
static const cJSON *json_get(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static int json_int(const JsonWhere *w, const cJSON *obj, const char *key, int required, int dflt,
                    int *out)
{
    const cJSON *v = json_get(obj, key);
    if (!v) {
        if (required) return json_missing_error(w, key);
        *out = dflt;
        return DS_OK;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < INT_MIN || d > INT_MAX)
        return json_type_error(w, key, "an integer", v);
    *out = (int)d;
    return DS_OK;
}

static int json_number(const JsonWhere *w, const cJSON *obj, const char *key, int required,
                       double dflt, double *out)
{
    const cJSON *v = json_get(obj, key);
    if (!v) {
        if (required) return json_missing_error(w, key);
        *out = dflt;
        return DS_OK;
    }
    if (!cJSON_IsNumber(v)) return json_type_error(w, key, "a number", v);
    *out = v->valuedouble;
    return DS_OK;
}

static int json_bool(const JsonWhere *w, const cJSON *obj, const char *key, int dflt, int *out)
{
    const cJSON *v = json_get(obj, key);
    if (!v) {
        *out = dflt;
        return DS_OK;
    }
    if (!cJSON_IsBool(v)) return json_type_error(w, key, "true or false", v);
    *out = cJSON_IsTrue(v);
    return DS_OK;
}

/* *out is NULL when absent or null. */
static int json_string(const JsonWhere *w, const cJSON *obj, const char *key, const char **out)
{
    const cJSON *v = json_get(obj, key);
    *out = NULL;
    if (!v) return DS_OK;
    if (!cJSON_IsString(v)) return json_type_error(w, key, "a string", v);
    *out = v->valuestring;
    return DS_OK;
}

/* bos/eos/pad: an integer, null (-1), or (eos in newer configs) a list whose first entry is the
 * primary token. */
static int json_token_id(const JsonWhere *w, const cJSON *obj, const char *key, int *out)
{
    const cJSON *v = json_get(obj, key);
    *out = -1;
    if (!v) return DS_OK;
    if (cJSON_IsArray(v)) {
        if (!v->child) return DS_OK;
        v = v->child;
    }
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < -1 || d > INT_MAX)
        return json_type_error(w, key, "a token id (integer, list of integers or null)", v);
    *out = (int)d;
    return DS_OK;
}

int hf_json_int(const HfJson *j, const char *key, int required, int dflt, int *out)
{
    JsonWhere w = {j->file, ""};
    return json_int(&w, j->root, key, required, dflt, out);
}

int hf_json_number(const HfJson *j, const char *key, int required, double dflt, double *out)
{
    JsonWhere w = {j->file, ""};
    return json_number(&w, j->root, key, required, dflt, out);
}

int hf_json_bool(const HfJson *j, const char *key, int dflt, int *out)
{
    JsonWhere w = {j->file, ""};
    return json_bool(&w, j->root, key, dflt, out);
}

int hf_json_string(const HfJson *j, const char *key, const char **out)
{
    JsonWhere w = {j->file, ""};
    return json_string(&w, j->root, key, out);
}

int hf_json_has(const HfJson *j, const char *key)
{
    return json_get(j->root, key) != NULL;
}

/* ---- config.json ---------------------------------------------------------------------------- */

/* One rope block: old "rope_scaling" (type in "type" or "rope_type") or new "rope_parameters". */
static int parse_rope_block(const char *file, const cJSON *block, const char *label,
                            int allow_yarn, ModelConfig *mc)
{
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s.", label);
    JsonWhere w = {file, prefix};
    const char *type = NULL;
    DS_TRY(json_string(&w, block, "rope_type", &type));
    if (!type) DS_TRY(json_string(&w, block, "type", &type));
    if (!type) type = "default";
    if (strcmp(type, "default") == 0) {
        mc->rope_type = ROPE_DEFAULT;
    } else if (strcmp(type, "linear") == 0) {
        mc->rope_type = ROPE_LINEAR;
        DS_TRY(json_number(&w, block, "factor", 1, 0, &mc->rope_factor));
    } else if (strcmp(type, "llama3") == 0) {
        mc->rope_type = ROPE_LLAMA3;
        DS_TRY(json_number(&w, block, "factor", 1, 0, &mc->rope_factor));
        DS_TRY(json_number(&w, block, "low_freq_factor", 1, 0, &mc->rope_low_freq_factor));
        DS_TRY(json_number(&w, block, "high_freq_factor", 1, 0, &mc->rope_high_freq_factor));
        DS_TRY(json_int(&w, block, "original_max_position_embeddings", 1, 0,
                        &mc->rope_original_max_position));
        if (!(mc->rope_low_freq_factor > 0) ||
            !(mc->rope_high_freq_factor > mc->rope_low_freq_factor) ||
            mc->rope_original_max_position <= 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: %s: llama3 needs 0 < low_freq_factor < high_freq_factor and a "
                            "positive original_max_position_embeddings (got %g, %g, %d)",
                            file, label, mc->rope_low_freq_factor, mc->rope_high_freq_factor,
                            mc->rope_original_max_position);
    } else if (allow_yarn && strcmp(type, "yarn") == 0) {
        mc->rope_type = ROPE_YARN;
        DS_TRY(json_number(&w, block, "factor", 1, 0, &mc->rope_factor));
        DS_TRY(json_int(&w, block, "original_max_position_embeddings", 1, 0,
                        &mc->rope_original_max_position));
        DS_TRY(json_number(&w, block, "beta_fast", 0, 32.0, &mc->rope_beta_fast));
        DS_TRY(json_number(&w, block, "beta_slow", 0, 1.0, &mc->rope_beta_slow));
        DS_TRY(json_number(&w, block, "mscale", 0, 0.0, &mc->rope_mscale));
        DS_TRY(json_number(&w, block, "mscale_all_dim", 0, 0.0, &mc->rope_mscale_all_dim));
        DS_TRY(json_number(&w, block, "attention_factor", 0, 0.0, &mc->rope_attention_factor));
        DS_TRY(json_bool(&w, block, "truncate", 1, &mc->rope_truncate));
        if (mc->rope_original_max_position <= 0 || !(mc->rope_beta_fast > mc->rope_beta_slow))
            return ds_error(DS_ERR_INPUT,
                            "%s: %s: yarn needs a positive original_max_position_embeddings and "
                            "beta_fast > beta_slow (got %d, %g, %g)",
                            file, label, mc->rope_original_max_position, mc->rope_beta_fast,
                            mc->rope_beta_slow);
    } else {
        return ds_error(DS_ERR_INPUT,
                        "%s: %s: rope type \"%s\" is not supported (supported: default, linear, "
                        "llama3%s)",
                        file, label, type, allow_yarn ? ", yarn" : "");
    }
    if (mc->rope_type != ROPE_DEFAULT && !(mc->rope_factor > 0))
        return ds_error(DS_ERR_INPUT, "%s: %sfactor: must be positive, got %g", file, prefix,
                        mc->rope_factor);
    return DS_OK;
}

static int parse_config(const char *file, const cJSON *root, ModelConfig *mc)
{
    JsonWhere w = {file, ""};

    /* Architecture: architectures[0], with model_type as a cross-check (or the fallback); the
     * registered architectures (param_table.h) and their sequence classifiers. */
    const cJSON *arr = json_get(root, "architectures");
    const char *model_type = NULL;
    DS_TRY(json_string(&w, root, "model_type", &model_type));
    const Architecture *arch = NULL;
    int classification = 0; /* score.weight [num_labels, hidden] instead of lm_head */
    char supported[512] = "", supported_types[128] = "";
    for (int i = 0, n = 0; model_architecture_at(i); i++) {
        const Architecture *a = model_architecture_at(i);
        if (!a->layer_forward) continue; /* described, not runnable yet */
        const char *sep = n++ ? ", " : "";
        strncat(supported, sep, sizeof(supported) - strlen(supported) - 1);
        strncat(supported, a->name, sizeof(supported) - strlen(supported) - 1);
        if (a->classifier_name) {
            strncat(supported, ", ", sizeof(supported) - strlen(supported) - 1);
            strncat(supported, a->classifier_name, sizeof(supported) - strlen(supported) - 1);
        }
        strncat(supported_types, sep, sizeof(supported_types) - strlen(supported_types) - 1);
        strncat(supported_types, a->model_type, sizeof(supported_types) - strlen(supported_types) - 1);
    }
    if (arr) {
        if (!cJSON_IsArray(arr) || !cJSON_IsString(arr->child))
            return json_type_error(&w, "architectures", "a list of architecture names", arr);
        const char *name = arr->child->valuestring;
        for (int i = 0; model_architecture_at(i) && !arch; i++) {
            const Architecture *a = model_architecture_at(i);
            if (!a->layer_forward) continue;
            if (strcmp(name, a->name) == 0) arch = a;
            if (a->classifier_name && strcmp(name, a->classifier_name) == 0)
                arch = a, classification = 1;
        }
        char shown[200], shown2[200];
        if (!arch)
            return ds_error(DS_ERR_INPUT,
                            "%s: architectures: \"%s\" is not supported (supported: %s)",
                            file, ds_printable(shown, sizeof(shown), name, 80), supported);
        if (model_type && strcmp(model_type, arch->model_type) != 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: model_type: \"%s\" does not match architectures \"%s\" "
                            "(expected \"%s\")",
                            file, ds_printable(shown, sizeof(shown), model_type, 80),
                            ds_printable(shown2, sizeof(shown2), name, 80), arch->model_type);
    } else if (model_type) {
        for (int i = 0; model_architecture_at(i) && !arch; i++)
            if (model_architecture_at(i)->layer_forward &&
                strcmp(model_type, model_architecture_at(i)->model_type) == 0)
                arch = model_architecture_at(i); /* the causal LM */
        char shown[200];
        if (!arch)
            return ds_error(DS_ERR_INPUT,
                            "%s: model_type: \"%s\" is not supported (supported: %s)", file,
                            ds_printable(shown, sizeof(shown), model_type, 80), supported_types);
    } else {
        return ds_error(DS_ERR_INPUT, "%s: architectures: missing (and no model_type)", file);
    }
    mc->arch = arch->id;
    if (classification) {
        /* transformers takes num_labels from id2label when only that is given, else 2 */
        const cJSON *id2label = json_get(root, "id2label");
        if (id2label && !cJSON_IsObject(id2label))
            return json_type_error(&w, "id2label", "an object", id2label);
        const int named = id2label ? cJSON_GetArraySize(id2label) : 0;
        DS_TRY(json_int(&w, root, "num_labels", 0, named ? named : 2, &mc->num_labels));
        if (mc->num_labels < 2 || mc->num_labels > 1000000)
            return ds_error(DS_ERR_INPUT,
                            "%s: num_labels: expected 2..1000000 classes, got %d (1 is "
                            "regression in transformers, which dstrain does not train)",
                            file, mc->num_labels);
        if (named && named != mc->num_labels)
            return ds_error(DS_ERR_INPUT, "%s: num_labels: %d, but id2label names %d labels", file,
                            mc->num_labels, named);
    }

    DS_TRY(json_int(&w, root, "vocab_size", 1, 0, &mc->vocab_size));
    DS_TRY(json_int(&w, root, "hidden_size", 1, 0, &mc->hidden_size));
    DS_TRY(json_int(&w, root, "intermediate_size", 1, 0, &mc->intermediate_size));
    DS_TRY(json_int(&w, root, "num_hidden_layers", 1, 0, &mc->num_layers));
    DS_TRY(json_int(&w, root, "num_attention_heads", 1, 0, &mc->num_heads));
    if (mc->num_heads <= 0)
        return ds_error(DS_ERR_INPUT, "%s: num_attention_heads: must be a positive integer, got %d",
                        file, mc->num_heads);
    DS_TRY(json_int(&w, root, "num_key_value_heads", 0, mc->num_heads, &mc->num_kv_heads));
    if (json_get(root, "head_dim")) {
        DS_TRY(json_int(&w, root, "head_dim", 1, 0, &mc->head_dim));
    } else {
        if (mc->hidden_size % mc->num_heads != 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: head_dim: not given, and hidden_size %d is not divisible by "
                            "num_attention_heads %d",
                            file, mc->hidden_size, mc->num_heads);
        mc->head_dim = mc->hidden_size / mc->num_heads;
    }
    DS_TRY(json_int(&w, root, "max_position_embeddings", 0, arch->default_max_positions,
                    &mc->max_position_embeddings));
    double eps = 0;
    DS_TRY(json_number(&w, root, "rms_norm_eps", 0, 1e-6, &eps));
    mc->rms_norm_eps = (float)eps;

    const char *act = NULL;
    DS_TRY(json_string(&w, root, "hidden_act", &act));
    char shown_act[200];
    if (act && strcmp(act, "silu") != 0)
        return ds_error(DS_ERR_INPUT, "%s: hidden_act: \"%s\" is not supported (supported: silu)",
                        file, ds_printable(shown_act, sizeof(shown_act), act, 80));
    DS_TRY(json_bool(&w, root, "tie_word_embeddings", 0, &mc->tie_word_embeddings));

    const HfJson json = {file, root};
    if (arch->parse_config) DS_TRY(arch->parse_config(&json, mc));

    DS_TRY(json_token_id(&w, root, "bos_token_id", &mc->bos_token_id));
    DS_TRY(json_token_id(&w, root, "eos_token_id", &mc->eos_token_id));
    DS_TRY(json_token_id(&w, root, "pad_token_id", &mc->pad_token_id));

    /* RoPE: transformers 5 keeps theta and scaling in rope_parameters; older files have
     * rope_theta at the top and an optional rope_scaling block. */
    mc->rope_type = ROPE_DEFAULT;
    DS_TRY(json_number(&w, root, "rope_theta", 0, 10000.0, &mc->rope_theta));
    const cJSON *params = json_get(root, "rope_parameters");
    const cJSON *scaling = json_get(root, "rope_scaling");
    if (params) {
        if (!cJSON_IsObject(params))
            return json_type_error(&w, "rope_parameters", "an object", params);
        mc->new_form = 1;
        JsonWhere pw = {file, "rope_parameters."};
        DS_TRY(json_number(&pw, params, "rope_theta", 0, mc->rope_theta, &mc->rope_theta));
        DS_TRY(parse_rope_block(file, params, "rope_parameters", arch->rope_yarn, mc));
    } else if (scaling) {
        if (!cJSON_IsObject(scaling))
            return json_type_error(&w, "rope_scaling", "an object or null", scaling);
        DS_TRY(parse_rope_block(file, scaling, "rope_scaling", arch->rope_yarn, mc));
    }

    const char *dtype = NULL;
    DS_TRY(json_string(&w, root, "dtype", &dtype));
    const char *dtype_key = "dtype";
    if (dtype) {
        mc->new_form = 1;
    } else {
        dtype_key = "torch_dtype";
        DS_TRY(json_string(&w, root, "torch_dtype", &dtype));
    }
    if (dtype) {
        if (strlen(dtype) >= sizeof(mc->torch_dtype))
            return ds_error(DS_ERR_INPUT, "%s: %s: unknown dtype \"%.40s\"", file, dtype_key,
                            dtype);
        snprintf(mc->torch_dtype, sizeof(mc->torch_dtype), "%s", dtype);
    }
    return DS_OK;
}

/* ---- config.json against the weight files --------------------------------------------------- */

static int shard_name_ok(const char *name);
static void shape_text(char *out, size_t cap, int ndim, const int64_t *shape);

/* Tensors a directory may hold beyond its model: a tied or unused LM head, and the rotary
 * inverse frequencies older transformers saved as buffers. */
static int tensor_allowed_extra(const char *name)
{
    static const char suffix[] = ".rotary_emb.inv_freq";
    size_t n = strlen(name), k = sizeof(suffix) - 1;
    return strcmp(name, "lm_head.weight") == 0 || (n > k && strcmp(name + n - k, suffix) == 0);
}

typedef struct FileTensor {
    const char *name; /* into a SafetensorsFile that stays open until the check ends */
    const char *file;
    int ndim;
    const int64_t *shape;
} FileTensor;

static int cmp_file_tensor(const void *a, const void *b)
{
    return strcmp(((const FileTensor *)a)->name, ((const FileTensor *)b)->name);
}

static int cmp_param_name(const void *a, const void *b)
{
    return strcmp((*(const ParamInfo *const *)a)->name, (*(const ParamInfo *const *)b)->name);
}

/* Sizes in config.json decide every allocation that follows (parameters, optimizer state,
 * activations), and a file can say anything: vocab_size 2^31-1, 10^5 layers. Before any of
 * that, the config is checked against the weight files' headers: as many tensors as the config
 * implies, each one of the model's with the shape the config gives, and none the model lacks (a
 * layer beyond num_hidden_layers would otherwise be silently left out). A directory without
 * weight files (model.random_init takes only the shape, a checkpoint keeps its own) is not
 * checked here. */
static int hf_config_check_weights(const char *dir, const char *file, const ModelConfig *mc,
                                   HfExtraTensors extra)
{
    char index_path[HF_PATH_MAX], path[HF_PATH_MAX + HF_FILE_NAME_MAX_CHECK];
    snprintf(index_path, sizeof(index_path), "%s/model.safetensors.index.json", dir);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    struct stat st;
    int have_index = stat(index_path, &st) == 0, have_single = stat(path, &st) == 0;
    if (!have_index && !have_single) return DS_OK;

    /* the shard files: every distinct name of the index (checked as the loader checks them) */
    cJSON *root = NULL;
    int nshards = 0, status = DS_OK;
    const char **shards = NULL;
    if (have_index) {
        DS_TRY(parse_json_file(index_path, &root));
        const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        int n = cJSON_IsObject(map) ? cJSON_GetArraySize(map) : 0;
        shards = ds_calloc((size_t)(n ? n : 1), sizeof(*shards));
        if (!shards) status = DS_ERR_INTERNAL;
        for (const cJSON *kv = n ? map->child : NULL; kv && status == DS_OK; kv = kv->next) {
            if (!cJSON_IsString(kv) || !shard_name_ok(kv->valuestring)) continue; /* the loader says */
            int k = 0;
            while (k < nshards && strcmp(shards[k], kv->valuestring) != 0)
                k++;
            if (k == nshards) shards[nshards++] = kv->valuestring;
        }
    } else {
        static const char *single[] = {"model.safetensors"};
        shards = single;
        nshards = 1;
    }
    SafetensorsFile *files = ds_calloc((size_t)(nshards ? nshards : 1), sizeof(SafetensorsFile));
    if (!files) status = DS_ERR_INTERNAL;
    int64_t n_tensors = 0;
    for (int k = 0; k < nshards && status == DS_OK; k++) {
        snprintf(path, sizeof(path), "%s/%s", dir, shards[k]);
        status = safetensors_open(path, &files[k]);
        if (status == DS_OK) n_tensors += files[k].count;
    }
    /* the count first, from arithmetic alone: the table is built only when it is bounded */
    const int64_t expected = param_table_count(mc);
    if (status == DS_OK && (mc->num_layers < 0 || expected > n_tensors))
        status = ds_error(DS_ERR_INPUT,
                          "%s: num_hidden_layers %d means %lld tensors, but the weight files "
                          "hold %lld",
                          file, mc->num_layers, (long long)expected, (long long)n_tensors);
    FileTensor *have = NULL;
    ParamTable pt = {0};
    if (status == DS_OK) {
        have = ds_calloc((size_t)(n_tensors ? n_tensors : 1), sizeof(FileTensor));
        if (!have) status = DS_ERR_INTERNAL;
    }
    int64_t n_have = 0;
    for (int k = 0; k < nshards && status == DS_OK; k++)
        for (int i = 0; i < files[k].count; i++)
            have[n_have++] = (FileTensor){files[k].entries[i].name, shards[k],
                                          files[k].entries[i].ndim, files[k].entries[i].shape};
    if (status == DS_OK) {
        qsort(have, (size_t)n_have, sizeof(FileTensor), cmp_file_tensor);
        status = param_table_build(mc, &pt);
        if (status != DS_OK) status = ds_error_context(DS_ERR_INPUT, "%s", file);
    }
    /* every tensor of the model, with the config's shape */
    for (int i = 0; i < pt.count && status == DS_OK; i++) {
        const ParamInfo *p = &pt.items[i];
        FileTensor key = {p->name, NULL, 0, NULL};
        const FileTensor *t = bsearch(&key, have, (size_t)n_have, sizeof(FileTensor), cmp_file_tensor);
        if (!t) continue; /* the loader names a missing tensor */
        int same = t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++)
            same = t->shape[d] == p->shape[d];
        if (!same) {
            char got[160], want[64];
            shape_text(got, sizeof(got), t->ndim, t->shape);
            shape_text(want, sizeof(want), p->ndim, p->shape);
            char shown_file[300];
            status = ds_error(DS_ERR_INPUT,
                              "%s: tensor %s: shape %s in %s, but config.json gives %s", dir,
                              p->name, got, ds_printable(shown_file, sizeof(shown_file), t->file, 200),
                              want);
        }
    }
    /* and nothing else, unless the caller allows more (model.allow_extra_tensors): then one
     * warning names the first few and the count, and the loader leaves them out */
    if (status == DS_OK && extra != HF_EXTRA_QUIET) {
        const ParamInfo **names = ds_calloc((size_t)(pt.count ? pt.count : 1), sizeof(*names));
        if (!names) status = DS_ERR_INTERNAL;
        for (int i = 0; i < pt.count && names; i++)
            names[i] = &pt.items[i];
        if (names) qsort(names, (size_t)pt.count, sizeof(*names), cmp_param_name);
        char listed[1024] = "", shown[300], shown_file[300], shown_dir[600];
        int64_t n_extra = 0;
        for (int64_t i = 0; i < n_have && status == DS_OK && names; i++) {
            if (tensor_allowed_extra(have[i].name) || model_is_mtp_tensor(mc, have[i].name))
                continue; /* multi-token prediction: kept aside for the export */
            int found = 0;
            for (int lo = 0, hi = pt.count - 1; lo <= hi && !found;) {
                int mid = lo + (hi - lo) / 2;
                int c = strcmp(have[i].name, names[mid]->name);
                if (c == 0) found = 1;
                else if (c < 0) hi = mid - 1;
                else lo = mid + 1;
            }
            if (found) continue;
            ds_printable(shown, sizeof(shown), have[i].name, 200);
            ds_printable(shown_file, sizeof(shown_file), have[i].file, 200);
            if (extra == HF_EXTRA_REFUSE) {
                status = ds_error(DS_ERR_INPUT,
                                  "%s: tensor %s in %s is not part of the model config.json "
                                  "describes (%d layer%s); model.allow_extra_tensors: true "
                                  "(--allow-extra-tensors) loads the model without it",
                                  ds_printable(shown_dir, sizeof(shown_dir), dir, 400), shown,
                                  shown_file, mc->num_layers, mc->num_layers == 1 ? "" : "s");
                break;
            }
            if (n_extra < 4) {
                size_t o = strlen(listed);
                snprintf(listed + o, sizeof(listed) - o, "%s%s", n_extra ? ", " : "", shown);
            }
            n_extra++;
        }
        if (status == DS_OK && n_extra > 0)
            progress_warn("%s: %lld tensor%s not part of the model config.json describes (%d "
                          "layer%s) %s left out (model.allow_extra_tensors): %s%s",
                          ds_printable(shown_dir, sizeof(shown_dir), dir, 400),
                          (long long)n_extra, n_extra == 1 ? "" : "s", mc->num_layers,
                          mc->num_layers == 1 ? "" : "s", n_extra == 1 ? "is" : "are", listed,
                          n_extra > 4 ? ", ..." : "");
        free(names);
    }
    param_table_free(&pt);
    free(have);
    for (int k = 0; k < nshards && files; k++)
        if (files[k].map) safetensors_close(&files[k]);
    free(files);
    if (have_index) free(shards);
    cJSON_Delete(root);
    return status;
}

int hf_config_load(const char *dir, ModelConfig *mc)
{
    return hf_config_load_with(dir, HF_EXTRA_REFUSE, mc);
}

int hf_config_load_with(const char *dir, HfExtraTensors extra, ModelConfig *mc)
{
    char file[HF_PATH_MAX];
    memset(mc, 0, sizeof(*mc));
    if ((size_t)snprintf(file, sizeof(file), "%s/config.json", dir) >= sizeof(file))
        return ds_error(DS_ERR_INPUT, "%.200s...: model path too long", dir);
    cJSON *root;
    DS_TRY(parse_json_file(file, &root));
    int status = parse_config(file, root, mc);
    cJSON_Delete(root);
    if (status != DS_OK) return status;
    DS_TRY(model_config_check(mc, file));
    return hf_config_check_weights(dir, file, mc, extra);
}

int hf_dir_kind(const char *dir)
{
    char file[HF_PATH_MAX];
    struct stat st;
    if ((size_t)snprintf(file, sizeof(file), "%s/config.json", dir) >= sizeof(file)) return 0;
    return stat(file, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- weights -------------------------------------------------------------------------------- */

#define HF_FILE_NAME_MAX 256

/* Shard names come from a file we did not write: only plain names inside dir are followed. */
static int shard_name_ok(const char *name)
{
    return name[0] && strlen(name) < HF_FILE_NAME_MAX && !strchr(name, '/') &&
           strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static void shape_text(char *out, size_t cap, int ndim, const int64_t *shape)
{
    size_t at = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(out + at, cap - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < cap) snprintf(out + at, cap - at, "]");
}

static void convert_to_f32(float *dst, const unsigned char *src, size_t n, int dtype)
{
    if (dtype == DT_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    /* Source bytes need not be 2-byte aligned: a header can place a tensor anywhere. */
    if (dtype == DT_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = bf16_to_f32(h);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = f16_to_f32(h);
        }
    }
}

/* Let the kernel drop the pages of a tensor once converted (they are clean file pages). */
static void release_pages(const SafetensorsFile *f, const STEntry *e)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t lo = (f->data_start + e->begin) / page * page;
    size_t hi = DS_ALIGN_UP(f->data_start + e->end, page);
    if (hi > DS_ALIGN_UP(f->size, page)) hi = DS_ALIGN_UP(f->size, page);
    if (hi > lo) madvise(f->map + lo, hi - lo, MADV_DONTNEED);
}

/* Copy this rank's slice of one parameter from an open file into dst, as fp32. */
static int load_param(const char *dir, const char *fname, const SafetensorsFile *f,
                      const ParamInfo *p, float *dst)
{
    const STEntry *e = safetensors_find(f, p->name);
    if (!e)
        return ds_error(DS_ERR_INPUT, "%s: tensor %s is missing (not in %s)", dir, p->name, fname);
    if (e->dtype != DT_F32 && e->dtype != DT_BF16 && e->dtype != DT_F16)
        return ds_error(DS_ERR_INPUT, "%s: tensor %s: dtype %s is not supported (F32, BF16, F16)",
                        f->path, p->name, e->dtype_name);
    int same = e->ndim == p->ndim;
    for (int d = 0; same && d < p->ndim; d++)
        same = e->shape[d] == p->shape[d];
    if (!same) {
        char got[160], want[64];
        shape_text(got, sizeof(got), e->ndim, e->shape);
        shape_text(want, sizeof(want), p->ndim, p->shape);
        return ds_error(DS_ERR_INPUT, "%s: tensor %s: shape %s in %s, expected %s", dir, p->name,
                        got, fname, want);
    }
    const unsigned char *src = safetensors_data(f, e);
    const size_t es = e->elem_size;
    const int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
    const int sd = p->split_dim;
    if (sd >= p->ndim || sd < -1 || p->slice_start < 0 || p->slice_len < 0 ||
        (sd >= 0 && p->slice_start + p->slice_len > p->shape[sd]) ||
        p->numel != (size_t)(sd == -1  ? rows * cols
                             : sd == 0 ? p->slice_len * cols
                                       : rows * p->slice_len))
        return ds_error(DS_ERR_INTERNAL,
                        "parameter table: %s: slice [%lld, +%lld) of dim %d "
                        "does not fit its shape or size",
                        p->name, (long long)p->slice_start, (long long)p->slice_len, sd);
    if (sd == -1) {
        convert_to_f32(dst, src, p->numel, e->dtype);
    } else if (sd == 0) {
        convert_to_f32(dst, src + (size_t)(p->slice_start * cols) * es, p->numel, e->dtype);
    } else {
        for (int64_t r = 0; r < rows; r++)
            convert_to_f32(dst + r * p->slice_len, src + (size_t)(r * cols + p->slice_start) * es,
                           (size_t)p->slice_len, e->dtype);
    }
    release_pages(f, e);
    return DS_OK;
}

/* The shard file of every parameter, from the index's weight_map. files[] gets each distinct
 * name once, in first-use order; file_of[i] indexes it. */
static int read_index(const char *dir, const char *index_path, const ParamTable *table,
                      const char *optional, char (*files)[HF_FILE_NAME_MAX], int *nfiles,
                      int *file_of)
{
    cJSON *root;
    DS_TRY(parse_json_file(index_path, &root));
    int status = DS_OK;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        JsonWhere w = {index_path, ""};
        status = map ? json_type_error(&w, "weight_map", "an object", map)
                     : json_missing_error(&w, "weight_map");
    }
    for (const cJSON *kv = map ? map->child : NULL; kv && status == DS_OK; kv = kv->next) {
        if (!cJSON_IsString(kv)) {
            char desc[96];
            json_describe(kv, desc, sizeof(desc));
            status = ds_error(DS_ERR_INPUT,
                              "%s: weight_map: tensor \"%s\": expected a file name, got %s",
                              index_path, kv->string, desc);
        } else if (!shard_name_ok(kv->valuestring)) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: weight_map: tensor \"%s\" names file \"%.300s\"; shard files "
                              "must be plain file names inside the model directory",
                              index_path, kv->string, kv->valuestring);
        }
    }
    for (int i = 0; i < table->count && status == DS_OK; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, table->items[i].name);
        if (!v && optional && strcmp(table->items[i].name, optional) == 0) {
            file_of[i] = -1; /* not in this directory: the caller fills it */
            continue;
        }
        if (!v) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: tensor %s is missing (model.safetensors.index.json does not "
                              "list it)",
                              dir, table->items[i].name);
            break;
        }
        int k = 0;
        while (k < *nfiles && strcmp(files[k], v->valuestring) != 0)
            k++;
        if (k == *nfiles) snprintf(files[(*nfiles)++], HF_FILE_NAME_MAX, "%s", v->valuestring);
        file_of[i] = k;
    }
    cJSON_Delete(root);
    return status;
}

/* The loader behind hf_load_weights and hf_load_weights_seeded. optional (or NULL) names one
 * tensor of the table that the directory may lack: *optional_found says whether it was there,
 * and its slice is left untouched when it was not. */
static int load_weights(const char *dir, const ParamTable *table, float *params,
                        const char *optional, int *optional_found)
{
    char index_path[HF_PATH_MAX], path[HF_PATH_MAX + HF_FILE_NAME_MAX];
    if (optional_found) *optional_found = 0;
    if ((size_t)snprintf(index_path, sizeof(index_path), "%s/model.safetensors.index.json", dir) >=
        sizeof(index_path))
        return ds_error(DS_ERR_INPUT, "%.200s...: model path too long", dir);
    int count = table->count;
    char(*files)[HF_FILE_NAME_MAX] = ds_calloc((size_t)(count ? count : 1), HF_FILE_NAME_MAX);
    int *file_of = ds_calloc((size_t)(count ? count : 1), sizeof(int));
    if (!files || !file_of) {
        free(files);
        free(file_of);
        return DS_ERR_INTERNAL;
    }
    int nfiles = 0, status = DS_OK;
    struct stat st;
    if (stat(index_path, &st) == 0) {
        status = read_index(dir, index_path, table, optional, files, &nfiles, file_of);
    } else {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        if (stat(path, &st) != 0)
            status = ds_error(DS_ERR_INPUT,
                              "%s: no model weights: neither model.safetensors nor "
                              "model.safetensors.index.json is there",
                              dir);
        snprintf(files[0], HF_FILE_NAME_MAX, "model.safetensors");
        nfiles = 1; /* file_of[] is all zeros */
    }
    /* One file open at a time: convert everything it holds for this rank, then let it go. */
    for (int k = 0; k < nfiles && status == DS_OK && count > 0; k++) {
        SafetensorsFile f;
        snprintf(path, sizeof(path), "%s/%s", dir, files[k]);
        status = safetensors_open(path, &f);
        for (int i = 0; i < count && status == DS_OK; i++) {
            const ParamInfo *p = &table->items[i];
            if (file_of[i] != k) continue;
            if (optional && strcmp(p->name, optional) == 0 && !safetensors_find(&f, p->name))
                continue; /* a single file without it */
            status = load_param(dir, files[k], &f, p, params + p->offset);
            if (status == DS_OK && optional && strcmp(p->name, optional) == 0) *optional_found = 1;
        }
        if (f.map) safetensors_close(&f);
    }
    free(files);
    free(file_of);
    return status;
}

int hf_load_weights(const char *dir, const ModelConfig *mc, const ParamTable *table, float *params)
{
    (void)mc; /* a tied lm_head is simply absent from the table; a file's copy is ignored */
    return load_weights(dir, table, params, NULL, NULL);
}

/* ---- a classification head on a causal LM ---------------------------------------------------- */

/* splitmix64 + Box-Muller: a seeded normal stream, the same on every machine and for every
 * tensor-parallel layout (element j's pair is drawn from its own state). */
static uint64_t head_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double head_uniform01(uint64_t *state)
{
    return ((double)(head_splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* normal(0, std) for every element of p's full tensor; this rank's slice lands in dst. */
static void head_init_normal(const ParamInfo *p, uint64_t seed, double std, float *dst)
{
    const size_t cols = p->ndim == 2 ? (size_t)p->shape[1] : 1;
    const size_t full = (size_t)p->shape[0] * cols;
    const uint64_t state0 = seed * 0x100000001b3ull + 0x5c07e5eedull; /* the head's own stream */
    const size_t s = (size_t)p->slice_start, n = (size_t)p->slice_len;
    for (size_t j = 0; j < full; j += 2) {
        uint64_t state = state0 + (uint64_t)j * 0x9e3779b97f4a7c15ull;
        const double u1 = head_uniform01(&state), u2 = head_uniform01(&state);
        const double r = sqrt(-2.0 * log(u1));
        const double z[2] = {r * cos(2.0 * M_PI * u2), r * sin(2.0 * M_PI * u2)};
        for (size_t k = j; k < j + 2 && k < full; k++) {
            const size_t row = k / cols, col = k % cols;
            const float v = (float)(std * z[k - j]);
            if (p->split_dim < 0)
                dst[k] = v;
            else if (p->split_dim == 0 && row >= s && row < s + n)
                dst[(row - s) * cols + col] = v;
            else if (p->split_dim == 1 && col >= s && col < s + n)
                dst[row * n + (col - s)] = v;
        }
    }
}

/* config.json's initializer_range (transformers' std for new Linear weights; 0.02 when absent). */
static int read_initializer_range(const char *dir, double *out)
{
    char file[HF_PATH_MAX];
    if ((size_t)snprintf(file, sizeof(file), "%s/config.json", dir) >= sizeof(file))
        return ds_error(DS_ERR_INPUT, "%.200s...: model path too long", dir);
    cJSON *root;
    DS_TRY(parse_json_file(file, &root));
    JsonWhere w = {file, ""};
    int status = json_number(&w, root, "initializer_range", 0, HF_HEAD_INIT_STD_DEFAULT, out);
    if (status == DS_OK && !(*out > 0 && *out < 1e3))
        status = ds_error(DS_ERR_INPUT,
                          "%s: initializer_range: expected a positive standard deviation, got %g",
                          file, *out);
    cJSON_Delete(root);
    return status;
}

int hf_load_weights_seeded(const char *dir, const ModelConfig *mc, const ParamTable *table,
                           float *params, uint64_t seed)
{
    const ParamInfo *head = mc->num_labels > 0 ? param_table_find(table, "score.weight") : NULL;
    if (!head) return load_weights(dir, table, params, NULL, NULL);
    /* Which kind the directory is decides whether a missing head is expected (a causal LM) or a
     * damaged classifier. */
    ModelConfig file_mc; /* the caller's hf_config_load_with judged the files already */
    DS_TRY(hf_config_load_with(dir, HF_EXTRA_QUIET, &file_mc));
    if (file_mc.num_labels > 0) return load_weights(dir, table, params, NULL, NULL);
    int found = 0;
    DS_TRY(load_weights(dir, table, params, "score.weight", &found));
    if (found) return DS_OK; /* a causal LM's files that carry a head anyway: use it */
    double std = 0;
    DS_TRY(read_initializer_range(dir, &std));
    head_init_normal(head, seed, std, params + head->offset);
    printf("dstrain: %s is a causal LM: its body is loaded (not lm_head.weight), the new head "
           "score.weight [%lld, %lld] starts from normal(0, %g) (initializer_range; seed %llu)\n",
           dir, (long long)head->shape[0], (long long)head->shape[1], std,
           (unsigned long long)seed);
    fflush(stdout);
    return DS_OK;
}
