/* export.c: Hugging Face model directories out (see export.h). The parameters come from a
 * training checkpoint, reassembled to full tensors whatever layout saved them, so a multi-rank
 * run exports exactly like a single process. The directory is built under a temporary name and
 * renamed into place, so a reader never sees half an export. */
#define _GNU_SOURCE /* nftw */
#include "export.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../trainer/log.h"
#include "ckpt.h"
#include "hf_model.h"
#include "model_path.h"
#include "safetensors.h"

#define EX_PATH_MAX 1400

static int ex_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT ? -1 : 0;
}

static int ex_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    return nftw(path, ex_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int read_whole(const char *path, char **out, size_t *len)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return ds_error(DS_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1LL << 30)) {
        fclose(fp);
        return ds_error(DS_ERR_INPUT, "%s: not a regular file of a sensible size", path);
    }
    char *buf = ds_malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(fp);
        return DS_ERR_INTERNAL;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return ds_error(DS_ERR_INPUT, "%s: cannot read", path);
    }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return DS_OK;
}

/* Write text to path and fsync it. */
static int write_text(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ds_error(DS_ERR_INTERNAL, "%s: cannot create: %s", path, strerror(errno));
    const char *p = text;
    size_t left = len;
    int rc = 0;
    while (left > 0 && rc == 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            rc = -1;
        else
            p += w, left -= (size_t)w;
    }
    if (rc == 0) rc = fsync(fd);
    int err = errno;
    if (close(fd) != 0 && rc == 0) rc = -1, err = errno;
    if (rc != 0) return ds_error(DS_ERR_INTERNAL, "%s: cannot write: %s", path, strerror(err));
    return DS_OK;
}

static int write_json(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    if (!text) return ds_error(DS_ERR_INTERNAL, "out of memory");
    size_t n = strlen(text);
    char *with_newline = ds_malloc(n + 2);
    if (!with_newline) {
        cJSON_free(text);
        return DS_ERR_INTERNAL;
    }
    memcpy(with_newline, text, n);
    with_newline[n] = '\n';
    with_newline[n + 1] = 0;
    cJSON_free(text);
    int status = write_text(path, with_newline, n + 1);
    free(with_newline);
    return status;
}

/* The shortest decimal that reads back as the same float (or double): "1e-05", not
 * "9.99999974737875e-06", since people read these files. */
static cJSON *number_raw(double v, int as_float)
{
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (as_float ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", sizeof(buf) - strlen(buf) - 1);
    return cJSON_CreateRaw(buf);
}

/* ---- config.json ------------------------------------------------------------------------------
 */

int hf_config_json_text(const ModelConfig *mc, const char *base_dir, char **out)
{
    *out = NULL;
    if (base_dir && base_dir[0]) {
        char path[EX_PATH_MAX];
        snprintf(path, sizeof(path), "%s/config.json", base_dir);
        return read_whole(path, out, NULL);
    }
    const Architecture *a = model_architecture(mc->arch);
    if (!a) return ds_error(DS_ERR_INTERNAL, "export: architecture %d is not known", (int)mc->arch);
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(a->name));
    cJSON_AddStringToObject(root, "model_type", a->model_type);
    cJSON_AddNumberToObject(root, "vocab_size", mc->vocab_size);
    cJSON_AddNumberToObject(root, "hidden_size", mc->hidden_size);
    cJSON_AddNumberToObject(root, "intermediate_size", mc->intermediate_size);
    cJSON_AddNumberToObject(root, "num_hidden_layers", mc->num_layers);
    cJSON_AddNumberToObject(root, "num_attention_heads", mc->num_heads);
    cJSON_AddNumberToObject(root, "num_key_value_heads", mc->num_kv_heads);
    cJSON_AddNumberToObject(root, "head_dim", mc->head_dim);
    cJSON_AddNumberToObject(root, "max_position_embeddings", mc->max_position_embeddings);
    cJSON_AddItemToObject(root, "rms_norm_eps", number_raw(mc->rms_norm_eps, 1));
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    cJSON_AddItemToObject(root, "initializer_range", number_raw(0.02, 0));
    cJSON_AddItemToObject(root, "rope_theta", number_raw(mc->rope_theta, 0));
    if (mc->rope_type == ROPE_DEFAULT) {
        cJSON_AddNullToObject(root, "rope_scaling");
    } else {
        cJSON *rs = cJSON_AddObjectToObject(root, "rope_scaling");
        const char *type = mc->rope_type == ROPE_LINEAR   ? "linear"
                           : mc->rope_type == ROPE_LLAMA3 ? "llama3"
                                                          : "yarn";
        cJSON_AddStringToObject(rs, "type", type);
        cJSON_AddStringToObject(rs, "rope_type", type);
        cJSON_AddItemToObject(rs, "factor", number_raw(mc->rope_factor, 0));
        if (mc->rope_type == ROPE_YARN) {
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                    mc->rope_original_max_position);
            cJSON_AddItemToObject(rs, "beta_fast", number_raw(mc->rope_beta_fast, 0));
            cJSON_AddItemToObject(rs, "beta_slow", number_raw(mc->rope_beta_slow, 0));
            if (mc->rope_mscale != 0)
                cJSON_AddItemToObject(rs, "mscale", number_raw(mc->rope_mscale, 0));
            if (mc->rope_mscale_all_dim != 0)
                cJSON_AddItemToObject(rs, "mscale_all_dim", number_raw(mc->rope_mscale_all_dim, 0));
            if (mc->rope_attention_factor > 0)
                cJSON_AddItemToObject(rs, "attention_factor",
                                      number_raw(mc->rope_attention_factor, 0));
            if (!mc->rope_truncate) cJSON_AddBoolToObject(rs, "truncate", 0);
        }
        if (mc->rope_type == ROPE_LLAMA3) {
            cJSON_AddItemToObject(rs, "low_freq_factor", number_raw(mc->rope_low_freq_factor, 0));
            cJSON_AddItemToObject(rs, "high_freq_factor", number_raw(mc->rope_high_freq_factor, 0));
            cJSON_AddNumberToObject(rs, "original_max_position_embeddings",
                                    mc->rope_original_max_position);
        }
    }
    cJSON_AddBoolToObject(root, "tie_word_embeddings", mc->tie_word_embeddings);
    if (a->write_config) a->write_config(root, mc); /* the architecture's own fields */
    if (mc->bos_token_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", mc->bos_token_id);
    if (mc->eos_token_id >= 0) cJSON_AddNumberToObject(root, "eos_token_id", mc->eos_token_id);
    if (mc->pad_token_id >= 0) cJSON_AddNumberToObject(root, "pad_token_id", mc->pad_token_id);
    cJSON_AddStringToObject(root, "torch_dtype", mc->torch_dtype[0] ? mc->torch_dtype : "float32");
    cJSON_AddBoolToObject(root, "use_cache", 1);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return ds_error(DS_ERR_INTERNAL, "out of memory");
    *out = ds_strdup(text);
    cJSON_free(text);
    return *out ? DS_OK : DS_ERR_INTERNAL;
}

/* Split task.labels into n names in place (commas become NULs, blanks around names dropped). */
static int split_label_names(char *text, int n, const char **names)
{
    int count = 0;
    for (char *p = text;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        char *end = p + strcspn(p, ","), *last = end;
        const int more = *end == ',';
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        *last = 0;
        if (!*p)
            return ds_error(DS_ERR_INPUT,
                            "task.labels: name %d is empty (expected %d names "
                            "separated by commas)",
                            count, n);
        if (strlen(p) > 63)
            return ds_error(DS_ERR_INPUT,
                            "task.labels: name %d (\"%.20s...\") is longer than 63 "
                            "characters",
                            count, p);
        for (int j = 0; j < count && j < n; j++)
            if (strcmp(names[j], p) == 0)
                return ds_error(DS_ERR_INPUT, "task.labels: \"%s\" names both label %d and %d", p,
                                j, count);
        if (count < n) names[count] = p;
        count++;
        if (!more) break;
        p = end + 1;
    }
    if (count != n)
        return ds_error(DS_ERR_INPUT, "task.labels: %d names for task.num_labels %d", count, n);
    return DS_OK;
}

/* The config.json fields of a sequence-classification export (export.h). */

static void ex_json_set(cJSON *obj, const char *key, cJSON *value)
{
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, value);
    else
        cJSON_AddItemToObject(obj, key, value);
}

int hf_classification_fields(cJSON *config, const ModelConfig *mc,
                                       const char *const *labels)
{
    if (mc->num_labels <= 0)
        return ds_error(DS_ERR_INTERNAL, "classification export of a model without num_labels");
    const Architecture *a = model_architecture(mc->arch);
    if (!a || !a->classifier_name)
        return ds_error(DS_ERR_INPUT, "%s has no sequence-classification form",
                        model_arch_name(mc->arch));
    const char *arch = a->classifier_name;
    cJSON *archs = cJSON_CreateArray();
    cJSON *id2label = cJSON_CreateObject(), *label2id = cJSON_CreateObject();
    if (!archs || !id2label || !label2id) {
        cJSON_Delete(archs);
        cJSON_Delete(id2label);
        cJSON_Delete(label2id);
        return ds_error(DS_ERR_INTERNAL, "cJSON: out of memory");
    }
    cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
    for (int i = 0; i < mc->num_labels; i++) {
        char id[16], name[64];
        snprintf(id, sizeof(id), "%d", i);
        if (labels && labels[i])
            snprintf(name, sizeof(name), "%s", labels[i]);
        else
            snprintf(name, sizeof(name), "LABEL_%d", i);
        cJSON_AddItemToObject(id2label, id, cJSON_CreateString(name));
        cJSON_AddItemToObject(label2id, name, cJSON_CreateNumber(i));
    }
    ex_json_set(config, "architectures", archs);
    ex_json_set(config, "num_labels", cJSON_CreateNumber(mc->num_labels));
    ex_json_set(config, "id2label", id2label);
    ex_json_set(config, "label2id", label2id);
    ex_json_set(config, "problem_type", cJSON_CreateString("single_label_classification"));
    /* transformers finds the last non-padding token through pad_token_id; without one it uses
     * the last position, as dstrain does */
    ex_json_set(config, "pad_token_id",
             mc->pad_token_id >= 0 ? cJSON_CreateNumber(mc->pad_token_id) : cJSON_CreateNull());
    return DS_OK;
}

int hf_config_json_classification(const ModelConfig *mc, const char *label_names, char **text)
{
    if (mc->num_labels <= 0) return DS_OK;
    cJSON *root = cJSON_Parse(*text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ds_error(DS_ERR_INPUT, "config.json: not a JSON object");
    }
    const int n = mc->num_labels;
    const char **names = ds_calloc((size_t)n, sizeof(char *));
    char *copy = ds_strdup(label_names ? label_names : "");
    int status = names && copy ? DS_OK : DS_ERR_INTERNAL;
    if (status == DS_OK && copy[0]) {
        status = split_label_names(copy, n, names);
    } else if (status == DS_OK) {
        /* a base model that is already a classifier keeps its names when they all fit */
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(root, "id2label");
        int have = cJSON_IsObject(old) && cJSON_GetArraySize(old) == n;
        for (int i = 0; i < n && have; i++) {
            char key[16];
            snprintf(key, sizeof(key), "%d", i);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(old, key);
            have = cJSON_IsString(v) && v->valuestring[0] && strlen(v->valuestring) <= 63;
            if (have) names[i] = v->valuestring;
        }
        if (!have) memset(names, 0, (size_t)n * sizeof(char *));
    }
    if (status == DS_OK) status = hf_classification_fields(root, mc, names);
    char *out = status == DS_OK ? cJSON_Print(root) : NULL;
    if (status == DS_OK && !out) status = ds_error(DS_ERR_INTERNAL, "out of memory");
    if (status == DS_OK) {
        free(*text);
        *text = ds_strdup(out);
        if (!*text) status = DS_ERR_INTERNAL;
    }
    cJSON_free(out);
    cJSON_Delete(root);
    free(copy);
    free(names);
    return status;
}

/* ---- options ----------------------------------------------------------------------------------
 */

int export_parse_size(const char *text, uint64_t *bytes)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    static const struct {
        const char *unit;
        double factor;
    } units[] = {{"", 1},
                 {"B", 1},
                 {"KB", 1e3},
                 {"MB", 1e6},
                 {"GB", 1e9},
                 {"TB", 1e12},
                 {"KiB", 1024.0},
                 {"MiB", 1048576.0},
                 {"GiB", 1073741824.0},
                 {"TiB", 1099511627776.0}};
    while (*end == ' ')
        end++;
    if (end == text || errno || !(v > 0)) goto bad;
    for (size_t i = 0; i < DS_ARRAY_LEN(units); i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            double b = v * units[i].factor;
            if (b < 1 || b > 1e18) goto bad;
            *bytes = (uint64_t)b;
            return DS_OK;
        }
    }
bad:
    return ds_error(DS_ERR_INPUT,
                    "export.max_shard_size: expected a size like 5GB, 500MB or 2GiB, got \"%.60s\"",
                    text);
}

int export_parse_dtype(const char *text, DType *dtype)
{
    if (strcmp(text, "bf16") == 0)
        *dtype = DT_BF16;
    else if (strcmp(text, "fp16") == 0)
        *dtype = DT_F16;
    else if (strcmp(text, "fp32") == 0)
        *dtype = DT_F32;
    else
        return ds_error(DS_ERR_INPUT, "export.dtype: expected bf16, fp16 or fp32, got \"%.40s\"",
                        text);
    return DS_OK;
}

static const char *torch_dtype_name(DType t)
{
    return t == DT_BF16 ? "bfloat16" : t == DT_F16 ? "float16" : "float32";
}

/* ---- tokenizer --------------------------------------------------------------------------------
 */

/* GPT-2's byte-to-character map (what the ByteLevel pre-tokenizer uses), as UTF-8. */
static void byte_char(int b, char out[4])
{
    int cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int n = 0; /* rank of b among the bytes that are remapped */
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
                n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

static cJSON *added_token(int id, const char *content)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id);
    cJSON_AddStringToObject(t, "content", content);
    cJSON_AddBoolToObject(t, "single_word", 0);
    cJSON_AddBoolToObject(t, "lstrip", 0);
    cJSON_AddBoolToObject(t, "rstrip", 0);
    cJSON_AddBoolToObject(t, "normalized", 0);
    cJSON_AddBoolToObject(t, "special", 1);
    return t;
}

static cJSON *byte_level(void)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", "ByteLevel");
    cJSON_AddBoolToObject(p, "add_prefix_space", 0);
    cJSON_AddBoolToObject(p, "trim_offsets", 1);
    cJSON_AddBoolToObject(p, "use_regex", 0);
    return p;
}

/* The byte-level vocabulary of the presets: ids 0..255 are bytes, BOS and EOS follow. */
static int write_byte_tokenizer(const char *dir, const ModelConfig *mc)
{
    static const char *bos = "<s>", *eos = "</s>";
    char path[EX_PATH_MAX];
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    cJSON_AddItemToArray(added, added_token(mc->bos_token_id, bos));
    cJSON_AddItemToArray(added, added_token(mc->eos_token_id, eos));
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", byte_level());
    /* every sequence starts with BOS, as the packed training data does */
    cJSON *post = cJSON_AddObjectToObject(root, "post_processor");
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    const char *seqs[2] = {"single", "pair"};
    for (int s = 0; s < 2; s++) {
        cJSON *arr = cJSON_AddArrayToObject(post, seqs[s]);
        for (int part = 0; part < (s ? 4 : 2); part++) {
            cJSON *item = cJSON_CreateObject(), *inner;
            if (part % 2 == 0) {
                inner = cJSON_AddObjectToObject(item, "SpecialToken");
                cJSON_AddStringToObject(inner, "id", bos);
            } else {
                inner = cJSON_AddObjectToObject(item, "Sequence");
                cJSON_AddStringToObject(inner, "id", part == 1 ? "A" : "B");
            }
            cJSON_AddNumberToObject(inner, "type_id", part / 2);
            cJSON_AddItemToArray(arr, item);
        }
    }
    cJSON *special = cJSON_AddObjectToObject(post, "special_tokens");
    cJSON *st = cJSON_AddObjectToObject(special, bos);
    cJSON_AddStringToObject(st, "id", bos);
    cJSON_AddItemToObject(st, "ids", cJSON_CreateIntArray(&mc->bos_token_id, 1));
    cJSON *toks = cJSON_AddArrayToObject(st, "tokens");
    cJSON_AddItemToArray(toks, cJSON_CreateString(bos));
    cJSON_AddItemToObject(root, "decoder", byte_level());
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 0);
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int b = 0; b < 256; b++) {
        char ch[4];
        byte_char(b, ch);
        cJSON_AddNumberToObject(vocab, ch, b);
    }
    cJSON_AddArrayToObject(model, "merges");
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    int status = write_json(path, root);
    cJSON_Delete(root);
    if (status != DS_OK) return status;

    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "tokenizer_class", "PreTrainedTokenizerFast");
    cJSON_AddStringToObject(root, "bos_token", bos);
    cJSON_AddStringToObject(root, "eos_token", eos);
    cJSON_AddNumberToObject(root, "model_max_length", mc->max_position_embeddings);
    cJSON_AddBoolToObject(root, "clean_up_tokenization_spaces", 0);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    status = write_json(path, root);
    cJSON_Delete(root);
    if (status != DS_OK) return status;
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bos_token", bos);
    cJSON_AddStringToObject(root, "eos_token", eos);
    snprintf(path, sizeof(path), "%s/special_tokens_map.json", dir);
    status = write_json(path, root);
    cJSON_Delete(root);
    return status;
}

static int copy_file(const char *from, const char *to)
{
    char *text;
    size_t len;
    DS_TRY(read_whole(from, &text, &len));
    int status = write_text(to, text, len);
    free(text);
    return status;
}

/* Tokenizer and generation files a base model directory may have; copied when present. */
static const char *const base_files[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
};

/* ---- the export -------------------------------------------------------------------------------
 */

static void store_converted(void *dst, const float *src, size_t n, DType dtype)
{
    if (dtype == DT_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = dtype == DT_BF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]);
    }
}

/* The base model's multi-token-prediction tensors (ModelConfig.num_nextn_predict_layers),
 * unchanged, into dir/model-mtp.safetensors and the index's map; total_size grows by their
 * bytes. A base without weight files, or without those tensors, is an error: the export would
 * silently lose them. */
static int write_mtp_tensors(const char *dir, const char *base, const ModelConfig *mc,
                             cJSON *index, cJSON *map)
{
    char path[EX_PATH_MAX + 64], *text = NULL;
    /* the files to look in: the index's shards, else model.safetensors */
    char files[64][256];
    int nfiles = 0;
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", base);
    if (read_whole(path, &text, NULL) == DS_OK) {
        cJSON *root = cJSON_Parse(text);
        free(text);
        const cJSON *m = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        for (const cJSON *it = m ? m->child : NULL; it; it = it->next) {
            if (!cJSON_IsString(it) || !model_is_mtp_tensor(mc, it->string)) continue;
            int seen = 0;
            for (int k = 0; k < nfiles && !seen; k++)
                seen = strcmp(files[k], it->valuestring) == 0;
            if (!seen && nfiles < 64 && ckpt_plain_name(it->valuestring))
                snprintf(files[nfiles++], sizeof(files[0]), "%s", it->valuestring);
        }
        cJSON_Delete(root);
    } else {
        ds_clear_error();
        snprintf(files[nfiles++], sizeof(files[0]), "model.safetensors");
    }
    SafetensorsFile *open_files = ds_calloc((size_t)nfiles + 1, sizeof(SafetensorsFile));
    STWriteItem *items = NULL;
    int n = 0, cap = 0, status = open_files ? DS_OK : DS_ERR_INTERNAL, opened = 0;
    double bytes = 0;
    for (int k = 0; k < nfiles && status == DS_OK; k++, opened++) {
        snprintf(path, sizeof(path), "%s/%s", base, files[k]);
        if ((status = safetensors_open(path, &open_files[k])) != DS_OK) break;
        const SafetensorsFile *f = &open_files[k];
        for (int i = 0; i < f->count && status == DS_OK; i++) {
            const STEntry *e = &f->entries[i];
            if (!model_is_mtp_tensor(mc, e->name)) continue;
            if (e->dtype < 0 || e->ndim > 2) {
                status = ds_error(DS_ERR_INPUT,
                                  "%s: multi-token-prediction tensor %s: dtype %s with %d "
                                  "dimensions cannot be carried into the export",
                                  path, e->name, e->dtype_name, e->ndim);
                break;
            }
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                STWriteItem *grown = realloc(items, (size_t)cap * sizeof(STWriteItem));
                if (!grown) {
                    status = DS_ERR_INTERNAL;
                    break;
                }
                items = grown;
            }
            STWriteItem *it = &items[n++];
            memset(it, 0, sizeof(*it));
            it->name = e->name;
            it->dtype = (DType)e->dtype;
            it->ndim = e->ndim;
            for (int d = 0; d < e->ndim; d++)
                it->shape[d] = e->shape[d];
            it->data = safetensors_data(f, e);
            bytes += (double)(e->end - e->begin);
        }
    }
    for (int l = mc->num_layers; status == DS_OK && l < mc->num_layers + mc->num_nextn_predict_layers;
         l++) {
        char prefix[48];
        const int len = snprintf(prefix, sizeof(prefix), "model.layers.%d.", l);
        int found = 0;
        for (int i = 0; i < n && !found; i++)
            found = strncmp(items[i].name, prefix, (size_t)len) == 0;
        if (!found)
            status = ds_error(DS_ERR_INPUT,
                              "%s: config.json: num_nextn_predict_layers is %d but the weight "
                              "files hold no model.layers.%d.* tensors to carry into the export",
                              base, mc->num_nextn_predict_layers, l);
    }
    if (status == DS_OK) {
        snprintf(path, sizeof(path), "%s/model-mtp.safetensors", dir);
        status = safetensors_write(path, items, n, "{\"format\":\"pt\"}");
    }
    if (status == DS_OK) {
        for (int i = 0; i < n; i++)
            cJSON_AddStringToObject(map, items[i].name, "model-mtp.safetensors");
        cJSON *meta = cJSON_GetObjectItemCaseSensitive(index, "metadata");
        cJSON *total = meta ? cJSON_GetObjectItemCaseSensitive(meta, "total_size") : NULL;
        if (total) cJSON_SetNumberValue(total, total->valuedouble + bytes);
    }
    for (int k = 0; k < opened; k++)
        safetensors_close(&open_files[k]);
    free(open_files);
    free(items);
    return status;
}

static int write_shards(const char *dir, const ParamTable *table, const float *params, DType dtype,
                        uint64_t max_bytes, const char *mtp_base, const ModelConfig *mc)
{
    const size_t es = dtype_size(dtype);
    int *shard_of = ds_calloc((size_t)table->count + 1, sizeof(int));
    if (!shard_of) return DS_ERR_INTERNAL;
    /* greedy in table order (HF's own module order); a tensor larger than the limit gets a shard
     * of its own */
    int nshards = 0;
    uint64_t used = 0, total = 0;
    for (int i = 0; i < table->count; i++) {
        uint64_t bytes = (uint64_t)table->items[i].numel * es;
        if (nshards == 0 || (used > 0 && used + bytes > max_bytes)) nshards++, used = 0;
        used += bytes;
        total += bytes;
        shard_of[i] = nshards - 1;
    }
    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
    int status = DS_OK;
    STWriteItem *items = ds_calloc((size_t)table->count + 1, sizeof(STWriteItem));
    void **bufs = ds_calloc((size_t)table->count + 1, sizeof(void *));
    if (!items || !bufs) status = DS_ERR_INTERNAL;
    for (int s = 0; s < nshards && status == DS_OK; s++) {
        char name[64], path[EX_PATH_MAX + 64];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, nshards);
        int n = 0;
        for (int i = 0; i < table->count && status == DS_OK; i++) {
            if (shard_of[i] != s) continue;
            const ParamInfo *pi = &table->items[i];
            bufs[n] = ds_malloc(pi->numel * es);
            if (!bufs[n]) {
                status = DS_ERR_INTERNAL;
                break;
            }
            store_converted(bufs[n], params + pi->offset, pi->numel, dtype);
            STWriteItem *it = &items[n];
            it->name = pi->name;
            it->dtype = dtype;
            it->ndim = pi->ndim;
            it->shape[0] = pi->shape[0];
            it->shape[1] = pi->shape[1];
            it->data = bufs[n];
            n++;
            cJSON_AddStringToObject(map, pi->name, name);
        }
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (status == DS_OK) status = safetensors_write(path, items, n, "{\"format\":\"pt\"}");
        for (int k = 0; k < n; k++) {
            free(bufs[k]);
            bufs[k] = NULL;
        }
    }
    if (status == DS_OK && mc->num_nextn_predict_layers > 0) {
        if (!mtp_base || !mtp_base[0])
            status = ds_error(DS_ERR_INPUT,
                              "export: the model has %d multi-token-prediction layer%s "
                              "(num_nextn_predict_layers) but no base model directory to carry "
                              "them from",
                              mc->num_nextn_predict_layers,
                              mc->num_nextn_predict_layers == 1 ? "" : "s");
        else
            status = write_mtp_tensors(dir, mtp_base, mc, index, map);
    }
    if (status == DS_OK) {
        char path[EX_PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        status = write_json(path, index);
    }
    cJSON_Delete(index);
    free(items);
    free(bufs);
    free(shard_of);
    return status;
}

/* config.json of the checkpoint with the exported dtype, in whichever form it came. */
static int write_config(const char *ckpt_dir, const char *dir, DType dtype)
{
    char path[EX_PATH_MAX + 64], *text;
    snprintf(path, sizeof(path), "%s/config.json", ckpt_dir);
    DS_TRY(read_whole(path, &text, NULL));
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ds_error(DS_ERR_INPUT, "%s: not a JSON object", path);
    }
    const char *key = cJSON_GetObjectItemCaseSensitive(root, "dtype") ? "dtype" : "torch_dtype";
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    cJSON_AddStringToObject(root, key, torch_dtype_name(dtype));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    int status = write_json(path, root);
    cJSON_Delete(root);
    return status;
}

static int write_generation_config(const char *dir, const ModelConfig *mc)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddBoolToObject(root, "_from_model_config", 1);
    if (mc->bos_token_id >= 0) cJSON_AddNumberToObject(root, "bos_token_id", mc->bos_token_id);
    if (mc->eos_token_id >= 0) cJSON_AddNumberToObject(root, "eos_token_id", mc->eos_token_id);
    if (mc->pad_token_id >= 0) cJSON_AddNumberToObject(root, "pad_token_id", mc->pad_token_id);
    char path[EX_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/generation_config.json", dir);
    int status = write_json(path, root);
    cJSON_Delete(root);
    return status;
}

/* A model with a NaN or an infinity in its weights is never exported: a serving system would
 * load it without a word and answer with garbage. The message names the source, the first such
 * tensor and element, and how many there are in all. */
static int check_params_finite(const char *src, const ParamTable *table, const float *params)
{
    int first = -1;
    size_t first_element = 0, count = 0, tensors = 0;
    float first_value = 0;
    for (int i = 0; i < table->count; i++) {
        const ParamInfo *pi = &table->items[i];
        const float *w = params + pi->offset;
        size_t here = 0;
        for (size_t e = 0; e < pi->numel; e++) {
            if (isfinite(w[e])) continue;
            if (first < 0) first = i, first_element = e, first_value = w[e];
            here++;
        }
        count += here;
        tensors += here > 0;
    }
    if (first < 0) return DS_OK;
    char shown_src[512], shown_name[300];
    const ParamInfo *pi = &table->items[first];
    return ds_error(DS_ERR_INPUT,
                    "%s: tensor %s: element %zu of %zu is %s (%zu non-finite value%s in %zu "
                    "tensor%s); a model with non-finite weights is not exported",
                    ds_printable(shown_src, sizeof(shown_src), src, 400),
                    ds_printable(shown_name, sizeof(shown_name), pi->name, 200), first_element,
                    pi->numel, isnan(first_value) ? "NaN" : first_value > 0 ? "+Inf" : "-Inf",
                    count, count == 1 ? "" : "s", tensors, tensors == 1 ? "" : "s");
}

/* Export the parameters of checkpoint c, or (c NULL) of the Hugging Face directory src_dir (a
 * copy in another dtype or shard size), into dir. */
static int export_into(Ckpt *c, const char *src_dir, const char *dir, DType dtype,
                       uint64_t max_bytes, HfExtraTensors extra)
{
    const char *ckdir = c ? ckpt_path(c) : src_dir;
    ModelConfig mc;
    DS_TRY(hf_config_load_with(ckdir, extra, &mc));
    ParamTable table;
    DS_TRY(param_table_build(&mc, &table));
    float *params = ds_aligned_alloc(PARAM_ALIGN_BYTES, table.total * sizeof(float));
    int status = params ? DS_OK : DS_ERR_INTERNAL;
    if (status == DS_OK)
        status = c ? ckpt_read_buffer(c, "params", &table, params, 0, 0)
                   : hf_load_weights(src_dir, &mc, &table, params);
    if (status == DS_OK) status = check_params_finite(ckdir, &table, params);
    if (status == DS_OK)
        status = write_shards(dir, &table, params, dtype, max_bytes,
                              c ? ckpt_model_string(c, "path") : src_dir, &mc);
    free(params);
    param_table_free(&table);
    if (status == DS_OK) status = write_config(ckdir, dir, dtype);
    if (status != DS_OK) return status;

    /* tokenizer and generation config: the base model's (a directory's own), else made for the
     * preset */
    const char *base = c ? ckpt_model_string(c, "path") : src_dir;
    int have_tokenizer = 0, have_generation = 0;
    struct stat st;
    if (base[0] && stat(base, &st) == 0) {
        for (size_t i = 0; i < DS_ARRAY_LEN(base_files); i++) {
            char from[EX_PATH_MAX + 64], to[EX_PATH_MAX + 64];
            snprintf(from, sizeof(from), "%s/%s", base, base_files[i]);
            if (stat(from, &st) != 0) continue;
            snprintf(to, sizeof(to), "%s/%s", dir, base_files[i]);
            DS_TRY(copy_file(from, to));
            if (strncmp(base_files[i], "tokenizer", 9) == 0) have_tokenizer = 1;
            if (strcmp(base_files[i], "generation_config.json") == 0) have_generation = 1;
        }
    } else if (base[0]) {
        fprintf(stderr,
                "dstrain: warning: base model %s is gone: the export has no tokenizer files\n",
                base);
    }
    if (!have_generation) DS_TRY(write_generation_config(dir, &mc));
    if (!have_tokenizer && !base[0]) {
        if (mc.bos_token_id == 256 && mc.eos_token_id == 257 && mc.vocab_size >= 258)
            DS_TRY(write_byte_tokenizer(dir, &mc));
        else
            fprintf(stderr,
                    "dstrain: warning: preset %s has no tokenizer of its own; the export "
                    "has no tokenizer files\n",
                    c ? ckpt_model_string(c, "preset") : "");
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return DS_OK;
}

/* hf_export_checkpoint (is_ckpt) or hf_export_hf_dir: src verified or read, out_dir written
 * under a temporary name and renamed into place. */
static int export_model(const char *src, int is_ckpt, const char *out_dir, DType dtype,
                        uint64_t max_shard_bytes, int replace, HfExtraTensors extra)
{
    struct stat st;
    if (!replace && stat(out_dir, &st) == 0)
        return ds_error(DS_ERR_INPUT, "%s: already exists; choose another --output or remove it",
                        out_dir);
    Ckpt *c = NULL;
    if (is_ckpt) DS_TRY(ckpt_open(src, &c));
    int status = c ? ckpt_verify(c) : DS_OK;
    char tmp[EX_PATH_MAX + 32], old[EX_PATH_MAX + 32];
    snprintf(tmp, sizeof(tmp), "%s.tmp-%ld", out_dir, (long)getpid());
    snprintf(old, sizeof(old), "%s.old-%ld", out_dir, (long)getpid());
    if (status == DS_OK) {
        ex_rm_rf(tmp);
        if (mkdir(tmp, 0755) != 0)
            status = ds_error(DS_ERR_INPUT, "%s: cannot create: %s", tmp, strerror(errno));
    }
    ProgressTask task;
    char what[EX_PATH_MAX + 32];
    snprintf(what, sizeof(what), "exporting to %s", out_dir);
    if (status == DS_OK) {
        progress_task_begin(&task, what, 0, "");
        status = export_into(c, src, tmp, dtype, max_shard_bytes, extra);
        if (status == DS_OK) progress_task_end(&task);
    }
    if (c) ckpt_close(c);
    if (status == DS_OK && stat(out_dir, &st) == 0 && rename(out_dir, old) != 0)
        status = ds_error(DS_ERR_INPUT, "%s: cannot replace: %s", out_dir, strerror(errno));
    if (status == DS_OK && rename(tmp, out_dir) != 0)
        status =
            ds_error(DS_ERR_INPUT, "%s: cannot rename into place: %s", out_dir, strerror(errno));
    if (status != DS_OK) {
        ex_rm_rf(tmp);
        return ds_error_context(status, "export");
    }
    ex_rm_rf(old);
    return DS_OK;
}

int hf_export_checkpoint(const char *ckpt_dir, const char *out_dir, DType dtype,
                         uint64_t max_shard_bytes, int replace)
{
    return export_model(ckpt_dir, 1, out_dir, dtype, max_shard_bytes, replace, HF_EXTRA_REFUSE);
}

int hf_export_hf_dir(const char *hf_dir, const char *out_dir, DType dtype,
                     uint64_t max_shard_bytes, int replace, int allow_extra_tensors)
{
    return export_model(hf_dir, 0, out_dir, dtype, max_shard_bytes, replace,
                        allow_extra_tensors ? HF_EXTRA_WARN : HF_EXTRA_REFUSE);
}

static void export_usage(FILE *out)
{
    fprintf(out, "usage: dstrain export --checkpoint DIR --output HF_DIR [--dtype bf16|fp16|fp32]\n"
                 "                      [--max-shard-size 5GB] [--allow-extra-tensors]\n"
                 "  DIR (--checkpoint or --model): a checkpoint (step-N), a checkpoint directory\n"
                 "  (its newest complete checkpoint), a run directory (its checkpoints/, else its\n"
                 "  export/) or a Hugging Face model directory (copied in --dtype and shard size).\n"
                 "  Writes a Hugging Face model directory.\n"
                 "  --allow-extra-tensors: a model directory's weight files may hold tensors the\n"
                 "  model lacks (a layer beyond num_hidden_layers): left out with a warning\n"
                 "  naming them, not refused.\n");
}

int export_main(int argc, char **argv)
{
    const char *ckpt = NULL, *output = NULL, *dtype_text = "bf16", *size_text = "5GB";
    int allow_extra = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            export_usage(stdout);
            return DS_OK;
        }
        if (strcmp(a, "--allow-extra-tensors") == 0) {
            allow_extra = 1;
            continue;
        }
        if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "export: %s expects a value", a);
        if (strcmp(a, "--checkpoint") == 0 || strcmp(a, "--model") == 0)
            ckpt = argv[++i];
        else if (strcmp(a, "--output") == 0)
            output = argv[++i];
        else if (strcmp(a, "--dtype") == 0)
            dtype_text = argv[++i];
        else if (strcmp(a, "--max-shard-size") == 0)
            size_text = argv[++i];
        else
            return ds_error(DS_ERR_INPUT, "export: unknown option %s (see dstrain export --help)",
                            a);
    }
    if (!ckpt || !output) {
        export_usage(stderr);
        return ds_error(DS_ERR_INPUT, "export: --checkpoint and --output are required");
    }
    DType dtype = DT_BF16;
    uint64_t max_bytes = 0;
    DS_TRY(export_parse_dtype(dtype_text, &dtype));
    DS_TRY(export_parse_size(size_text, &max_bytes));
    char path[MODEL_PATH_MAX];
    ModelPathKind kind;
    DS_TRY(model_path_resolve("export", ckpt, path, sizeof(path), &kind));
    if (kind == MODEL_PATH_CHECKPOINT)
        DS_TRY(hf_export_checkpoint(path, output, dtype, max_bytes, 0));
    else
        DS_TRY(hf_export_hf_dir(path, output, dtype, max_bytes, 0, allow_extra));
    printf("dstrain: exported %s to %s (%s)\n", path, output, torch_dtype_name(dtype));
    return DS_OK;
}
