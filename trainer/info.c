/* info.c: `dstrain info PATH`: what is in a checkpoint (step, layout, state, files, checksums),
 * a Hugging Face model directory (architecture, shape, parameter count, dtypes from the
 * safetensors headers), a dataset (documents, tokens, length histogram, labels, tasks) or one
 * safetensors file. It reads headers and metadata through the modules' validating readers and
 * never loads weights. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/hf_model.h"
#include "../checkpoint/model_path.h"
#include "../checkpoint/safetensors.h"
#include "../data/dataset.h"
#include "common.h"
#include "config.h"
#include "inspect.h"
#include "layout.h"

#define INFO_JSON_MAX_BYTES ((size_t)64 << 20)

static char *read_small_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && (size_t)n <= INFO_JSON_MAX_BYTES && fseek(f, 0, SEEK_SET) == 0 &&
            (text = malloc((size_t)n + 1)) != NULL) {
            if (fread(text, 1, (size_t)n, f) != (size_t)n) {
                free(text);
                text = NULL;
            } else {
                text[n] = 0;
            }
        }
    }
    fclose(f);
    return text;
}

static void human_bytes(double b, char *buf, size_t cap)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(buf, cap, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

static void human_count(double n, char *buf, size_t cap)
{
    if (n >= 1e9)
        snprintf(buf, cap, "%.2fB", n / 1e9);
    else if (n >= 1e6)
        snprintf(buf, cap, "%.2fM", n / 1e6);
    else if (n >= 1e3)
        snprintf(buf, cap, "%.1fK", n / 1e3);
    else
        snprintf(buf, cap, "%.0f", n);
}

/* ---- safetensors ------------------------------------------------------------------------------
 */

typedef struct DtypeTally {
    char name[12];
    double params, bytes;
    int tensors;
} DtypeTally;

static void tally_file(const SafetensorsFile *f, DtypeTally *t, int *nt, int cap)
{
    for (int i = 0; i < f->count; i++) {
        const STEntry *e = &f->entries[i];
        double numel = 1;
        for (int d = 0; d < e->ndim; d++)
            numel *= (double)e->shape[d];
        int k = 0;
        while (k < *nt && strcmp(t[k].name, e->dtype_name) != 0)
            k++;
        if (k == *nt) {
            if (*nt == cap) continue;
            memset(&t[k], 0, sizeof(t[k]));
            snprintf(t[k].name, sizeof(t[k].name), "%s", e->dtype_name);
            (*nt)++;
        }
        t[k].params += numel;
        t[k].bytes += (double)(e->end - e->begin);
        t[k].tensors++;
    }
}

static void print_tally(FILE *out, const DtypeTally *t, int nt)
{
    double params = 0, bytes = 0;
    int tensors = 0;
    for (int k = 0; k < nt; k++) {
        params += t[k].params;
        bytes += t[k].bytes;
        tensors += t[k].tensors;
    }
    char p[32], b[32];
    human_count(params, p, sizeof(p));
    human_bytes(bytes, b, sizeof(b));
    fprintf(out, "parameters:   %.0f (%s) in %d tensors, %s\n", params, p, tensors, b);
    for (int k = 0; k < nt; k++) {
        human_count(t[k].params, p, sizeof(p));
        fprintf(out, "  dtype %-6s %d tensors, %.0f parameters (%s)\n", t[k].name, t[k].tensors,
                t[k].params, p);
    }
}

static int info_safetensors(const char *path, FILE *out)
{
    SafetensorsFile f;
    DS_TRY(safetensors_open(path, &f));
    char text[600];
    fprintf(out, "safetensors file %s\n", ds_printable(text, sizeof(text), path, 500));
    DtypeTally t[16];
    int nt = 0;
    tally_file(&f, t, &nt, 16);
    print_tally(out, t, nt);
    if (f.metadata_json) { /* JSON, whose strings cJSON escaped; DEL it leaves as it is */
        size_t o = 0;
        for (const char *p = f.metadata_json; *p && o + 8 < sizeof(text); p++)
            o += *p == 0x7F ? (size_t)snprintf(text + o, sizeof(text) - o, "\\x7F")
                            : (size_t)(text[o] = *p, 1);
        text[o] = 0;
        fprintf(out, "metadata:     %s\n", text);
    }
    const int shown = f.count < 20 ? f.count : 20;
    for (int i = 0; i < shown; i++) {
        const STEntry *e = &f.entries[i];
        fprintf(out, "  %-48s %-5s [", ds_printable(text, sizeof(text), e->name, 200),
                e->dtype_name);
        for (int d = 0; d < e->ndim; d++)
            fprintf(out, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
        fprintf(out, "]\n");
    }
    if (f.count > shown) fprintf(out, "  ... and %d more tensors\n", f.count - shown);
    safetensors_close(&f);
    return DS_OK;
}

/* ---- Hugging Face model directory ----------------------------------------------------------- */

/* Parameters from the architecture's table, and for a mixture of experts its experts and the
 * parameters one token goes through (the routed experts count k / E of theirs). */
static int info_parameters(const ModelConfig *mc, FILE *out)
{
    double total = 0, active = 0;
    DS_TRY(model_param_counts(mc, &total, &active));
    char t[32], a[32];
    human_count(total, t, sizeof(t));
    human_count(active, a, sizeof(a));
    if (mc->n_routed_experts <= 0) {
        fprintf(out, "parameters:   %s\n", t);
        return DS_OK;
    }
    int moe_layers = 0;
    for (int l = 0; l < mc->num_layers; l++)
        moe_layers += l >= mc->first_k_dense_replace;
    static const char *methods[] = {"greedy", "group_limited_greedy", "noaux_tc"};
    fprintf(out,
            "experts:      %d MoE layers (from layer %d): %d routed (%d per token, %s, %s "
            "scores",
            moe_layers, mc->first_k_dense_replace, mc->n_routed_experts, mc->num_experts_per_tok,
            methods[mc->topk_method], mc->scoring == MOE_SIGMOID ? "sigmoid" : "softmax");
    if (mc->topk_method != MOE_GREEDY)
        fprintf(out, ", best %d of %d groups", mc->topk_group, mc->n_group);
    fprintf(out, "), %d shared, expert size %d\n", mc->n_shared_experts,
            mc->moe_intermediate_size);
    fprintf(out, "parameters:   %s total, %s active per token (embeddings included)\n", t, a);
    if (mc->num_nextn_predict_layers > 0)
        fprintf(out,
                "multi-token:  %d prediction layer%s (model.layers.%d%s), kept unchanged, not "
                "trained\n",
                mc->num_nextn_predict_layers, mc->num_nextn_predict_layers == 1 ? "" : "s",
                mc->num_layers, mc->num_nextn_predict_layers == 1 ? "" : "..");
    return DS_OK;
}

/* What a full fine-tune holds per GPU (layout_memory_estimate) at one rank, eight
 * data-parallel ranks (ZeRO-1), eight tensor-parallel ranks and, for a model with routed
 * experts, eight data-parallel ranks with the experts split over all eight (ep 8), when the
 * model splits so: bf16
 * mixed precision, one row of 4096 tokens, activation checkpointing. */
static void info_memory(const ModelConfig *model, FILE *out)
{
    Config cfg;
    config_set_defaults(&cfg);
    snprintf(cfg.device, sizeof(cfg.device), "cuda");
    snprintf(cfg.precision, sizeof(cfg.precision), "bf16");
    cfg.train_micro_batch_size = 1;
    cfg.train_seq_len = 4096;
    cfg.parallel_zero = 1;
    ModelConfig mc = *model;
    mc.activation_checkpointing = CKPT_FULL;
    /* tp, dp, ep; the last only for a model with routed experts */
    const int layouts[][3] = {{1, 1, 1}, {1, 8, 1}, {8, 1, 1}, {1, 8, 8}};
    char line[320] = "";
    size_t used = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(layouts); i++) {
        RunMemory mem;
        cfg.parallel_ep = layouts[i][2];
        if (layouts[i][2] > 1 && mc.n_routed_experts <= 0) continue;
        if (layout_memory_estimate(&cfg, &mc, layouts[i][0], layouts[i][1], &mem) != DS_OK) {
            ds_clear_error(); /* a tp or ep the model does not split: left out */
            continue;
        }
        char b[32], ep[16] = "";
        human_bytes(mem.total, b, sizeof(b));
        if (layouts[i][2] > 1) snprintf(ep, sizeof(ep), " (ep %d)", layouts[i][2]);
        used += (size_t)snprintf(line + used, sizeof(line) - used, "%s%s at tp %d x dp %d%s",
                                 used ? ", " : "", b, layouts[i][0], layouts[i][1], ep);
        if (used >= sizeof(line)) break;
    }
    if (used)
        fprintf(out,
                "memory:       full fine-tune per GPU (bf16, 1 x 4096 tokens, activation "
                "checkpointing, ZeRO-1): %s\n",
                line);
}

static int info_hf_model(const char *dir, FILE *out)
{
    ModelConfig mc;
    /* info describes what is there: tensors the model lacks are a warning, as
     * model.allow_extra_tensors makes them, and the weight files are listed whole below */
    DS_TRY(hf_config_load_with(dir, HF_EXTRA_WARN, &mc));
    fprintf(out, "Hugging Face model directory %s\n", dir);
    fprintf(out, "architecture: %s\n", model_arch_name(mc.arch));
    fprintf(out,
            "shape:        %d layers, hidden %d, intermediate %d, %d heads (%d kv, head dim "
            "%d), vocab %d, context %d\n",
            mc.num_layers, mc.hidden_size, mc.intermediate_size, mc.num_heads, mc.num_kv_heads,
            mc.head_dim, mc.vocab_size, mc.max_position_embeddings);
    fprintf(out, "config form:  %s; torch dtype %s; tied embeddings %s\n",
            mc.new_form ? "transformers 5 (rope_parameters)" : "classic (rope_theta)",
            mc.torch_dtype[0] ? mc.torch_dtype : "unset", mc.tie_word_embeddings ? "yes" : "no");
    if (mc.num_labels > 0) fprintf(out, "task:         classification, %d labels\n", mc.num_labels);
    if (mc.kv_lora_rank > 0) {
        char q[48];
        if (mc.q_lora_rank > 0)
            snprintf(q, sizeof(q), "q latent %d", mc.q_lora_rank);
        else
            snprintf(q, sizeof(q), "q plain");
        fprintf(out,
                "attention:    multi-head latent: kv latent %d, %s, q/k head %d (%d + rotary %d), "
                "v head %d\n",
                mc.kv_lora_rank, q, mc.qk_nope_head_dim + mc.qk_rope_head_dim, mc.qk_nope_head_dim,
                mc.qk_rope_head_dim, mc.v_head_dim);
    }
    DS_TRY(info_parameters(&mc, out));
    info_memory(&mc, out);

    /* the weight files: the shards the index names, else model.safetensors */
    char path[2048];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    char *index = read_small_file(path);
    const int sharded = index != NULL;
    char files[256][256];
    int nfiles = 0;
    if (index) {
        cJSON *root = cJSON_Parse(index);
        cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
        if (!cJSON_IsObject(map)) {
            cJSON_Delete(root);
            free(index);
            return ds_error(DS_ERR_INPUT, "%s: weight_map: expected an object", path);
        }
        for (cJSON *it = map->child; it; it = it->next) {
            if (!cJSON_IsString(it) || !ckpt_plain_name(it->valuestring)) {
                cJSON_Delete(root);
                free(index);
                return ds_error(DS_ERR_INPUT, "%s: weight_map: \"%s\": expected a plain file name",
                                path, it->string ? it->string : "");
            }
            int seen = 0;
            for (int k = 0; k < nfiles && !seen; k++)
                seen = strcmp(files[k], it->valuestring) == 0;
            if (!seen && nfiles < 256) snprintf(files[nfiles++], 256, "%s", it->valuestring);
        }
        cJSON_Delete(root);
        free(index);
    } else {
        snprintf(files[nfiles++], 256, "model.safetensors");
    }
    DtypeTally t[16];
    int nt = 0;
    for (int k = 0; k < nfiles; k++) {
        SafetensorsFile f;
        snprintf(path, sizeof(path), "%s/%s", dir, files[k]);
        DS_TRY(safetensors_open(path, &f));
        tally_file(&f, t, &nt, 16);
        safetensors_close(&f);
    }
    fprintf(out, "weights:      %d file%s%s\n", nfiles, nfiles == 1 ? "" : "s",
            sharded ? " (sharded, model.safetensors.index.json)" : "");
    print_tally(out, t, nt);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    struct stat st;
    fprintf(out, "tokenizer:    %s\n",
            stat(path, &st) == 0 ? "tokenizer.json" : "none (byte-level)");
    return DS_OK;
}

/* ---- checkpoint --------------------------------------------------------------------------- */

static int info_checkpoint(const char *dir, FILE *out)
{
    Ckpt *c;
    DS_TRY(ckpt_open(dir, &c));
    const int verify = ckpt_verify(c);
    char verify_error[512];
    snprintf(verify_error, sizeof(verify_error), "%s", verify == DS_OK ? "" : ds_last_error());
    const CkptLayout l = ckpt_layout(c);
    fprintf(out, "checkpoint %s\n", dir);
    fprintf(out, "step:         %d\n", ckpt_step(c));
    char ep[32] = "";
    if (l.ep > 1) snprintf(ep, sizeof(ep), ", experts over ep %d", l.ep);
    fprintf(out, "layout:       tp %d x dp %d (%d ranks)%s, zero %d\n", l.tp, l.dp, l.tp * l.dp,
            ep, l.zero);
    long long v;
    double d;
    fprintf(out, "state:       ");
    if (ckpt_state_int(c, "train_steps", &v) == DS_OK) fprintf(out, " train.steps %lld,", v);
    if (ckpt_state_int(c, "optim_t", &v) == DS_OK) fprintf(out, " optimizer step %lld,", v);
    if (ckpt_state_number(c, "lr", &d) == DS_OK) fprintf(out, " lr %.4g,", d);
    if (ckpt_state_int(c, "seed", &v) == DS_OK) fprintf(out, " seed %lld", v);
    fprintf(out, "\n");
    const char *mpath = ckpt_model_string(c, "path"), *preset = ckpt_model_string(c, "preset");
    char shown[600];
    fprintf(out, "model:        %s%s\n", mpath[0] ? "" : "preset ",
            ds_printable(shown, sizeof(shown), mpath[0] ? mpath : preset, 500));

    /* the manifest's lists, read as data: buffers held, files with their checksums */
    char path[2048];
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    char *text = read_small_file(path);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    const cJSON *tensors = root ? cJSON_GetObjectItemCaseSensitive(root, "tensors") : NULL;
    char buffers[16][64];
    int nbuf = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tensors)
    {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(t, "buffer");
        if (!cJSON_IsString(b)) continue;
        int seen = 0;
        for (int k = 0; k < nbuf && !seen; k++)
            seen = strcmp(buffers[k], b->valuestring) == 0;
        if (!seen && nbuf < 16) snprintf(buffers[nbuf++], 64, "%s", b->valuestring);
    }
    fprintf(out, "buffers:     ");
    for (int k = 0; k < nbuf; k++)
        fprintf(out, " %s%s", ds_printable(shown, sizeof(shown), buffers[k], 60),
                k + 1 < nbuf ? "," : "");
    fprintf(out, "\n");
    const cJSON *config = root ? cJSON_GetObjectItemCaseSensitive(root, "config") : NULL;
    if (cJSON_IsString(config))
        fprintf(out, "config:       %s/%s\n", dir,
                ds_printable(shown, sizeof(shown), config->valuestring, 200));
    const cJSON *files = root ? cJSON_GetObjectItemCaseSensitive(root, "files") : NULL;
    double total = 0;
    fprintf(out, "files:\n");
    const cJSON *f;
    cJSON_ArrayForEach(f, files)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
        const cJSON *size = cJSON_GetObjectItemCaseSensitive(f, "size");
        const cJSON *crc = cJSON_GetObjectItemCaseSensitive(f, "crc32c");
        if (!cJSON_IsString(name) || !cJSON_IsNumber(size)) continue;
        char b[32];
        human_bytes(size->valuedouble, b, sizeof(b));
        total += size->valuedouble;
        char shown_crc[64];
        fprintf(out, "  %-32s %10s  crc32c %s\n",
                ds_printable(shown, sizeof(shown), name->valuestring, 200), b,
                cJSON_IsString(crc) ? ds_printable(shown_crc, sizeof(shown_crc), crc->valuestring, 16)
                                    : "?");
    }
    char b[32];
    human_bytes(total, b, sizeof(b));
    fprintf(out, "total:        %s\n", b);
    if (verify == DS_OK)
        fprintf(out, "checksums:    OK (every file's size and CRC-32C match the manifest)\n");
    else
        fprintf(out, "checksums:    FAILED: %s\n", verify_error);
    cJSON_Delete(root);
    free(text);
    ckpt_close(c);
    return verify == DS_OK ? DS_OK : ds_error(DS_ERR_INPUT, "%s", verify_error);
}

/* ---- dataset ------------------------------------------------------------------------------- */

static int compare_i64(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Count distinct values of v[0..n) (sorted in place); prints at most 20 "value: count". */
static void print_value_counts(FILE *out, const char *what, int64_t *v, int64_t n)
{
    qsort(v, (size_t)n, sizeof(int64_t), compare_i64);
    int64_t distinct = 0;
    for (int64_t i = 0; i < n; i++)
        distinct += i == 0 || v[i] != v[i - 1];
    fprintf(out, "%s: %lld distinct\n", what, (long long)distinct);
    int64_t shown = 0;
    for (int64_t i = 0; i < n && shown < 20;) {
        int64_t j = i;
        while (j < n && v[j] == v[i])
            j++;
        fprintf(out, "  %-8lld %lld documents\n", (long long)v[i], (long long)(j - i));
        shown++;
        i = j;
    }
    if (distinct > shown) fprintf(out, "  ... and %lld more\n", (long long)(distinct - shown));
}

static int info_dataset(const char *path, FILE *out)
{
    TokenDataset *ds;
    DS_TRY(dataset_open(path, 0, &ds));
    const DatasetInfo *di = dataset_info(ds);
    fprintf(out, "dataset %s\n", path);
    char c1[32], c2[32];
    human_count((double)di->n_docs, c1, sizeof(c1));
    human_count((double)di->n_tokens, c2, sizeof(c2));
    fprintf(out, "documents:    %lld (%s)\n", (long long)di->n_docs, c1);
    fprintf(out, "tokens:       %lld (%s)\n", (long long)di->n_tokens, c2);
    char tokenizer[600]; /* an attribute of the file: escaped, it cannot add lines or escapes */
    if (di->tokenizer[0])
        ds_quoted(tokenizer, sizeof(tokenizer), di->tokenizer, 400);
    else
        snprintf(tokenizer, sizeof(tokenizer), "unknown");
    fprintf(out, "vocabulary:   %d (tokenizer %s); bos %d, eos %d, pad %d\n", di->vocab_size,
            tokenizer, di->bos_id, di->eos_id, di->pad_id);
    fprintf(out, "loss mask:    %s\n", di->has_loss_mask ? "yes" : "no");
    int status = DS_OK;
    if (di->n_docs > 0) {
        /* document lengths in power-of-two buckets: [1,2) [2,4) ... */
        int64_t buckets[64] = {0}, shortest = INT64_MAX, longest = 0;
        for (int64_t d = 0; d < di->n_docs; d++) {
            int64_t len = dataset_doc_length(ds, d);
            if (len < shortest) shortest = len;
            if (len > longest) longest = len;
            int b = 0;
            while (b < 63 && (len >> (b + 1)) > 0)
                b++;
            buckets[len > 0 ? b + 1 : 0]++;
        }
        fprintf(out, "lengths:      min %lld, mean %.1f, max %lld tokens\n", (long long)shortest,
                (double)di->n_tokens / (double)di->n_docs, (long long)longest);
        int64_t most = 1;
        for (int b = 0; b < 64; b++)
            if (buckets[b] > most) most = buckets[b];
        for (int b = 0; b < 64; b++) {
            if (!buckets[b]) continue;
            char range[48];
            if (b == 0)
                snprintf(range, sizeof(range), "0");
            else
                snprintf(range, sizeof(range), "%lld-%lld", 1LL << (b - 1), (1LL << b) - 1);
            int bar = (int)(40.0 * (double)buckets[b] / (double)most + 0.5);
            fprintf(out, "  %-16s %10lld  ", range, (long long)buckets[b]);
            for (int i = 0; i < bar; i++)
                fputc('#', out);
            fputc('\n', out);
        }
    }
    const int64_t n = di->n_docs;
    int64_t *values = n > 0 ? ds_malloc((size_t)n * sizeof(int64_t)) : NULL;
    if (n > 0 && !values) status = DS_ERR_INTERNAL;
    if (status == DS_OK && di->has_labels) {
        if ((status = dataset_read_labels(ds, 0, n, values)) == DS_OK)
            print_value_counts(out, "labels", values, n);
    } else if (status == DS_OK) {
        fprintf(out, "labels:       none\n");
    }
    if (status == DS_OK && di->has_task_ids) {
        int32_t *tasks = ds_malloc((size_t)n * sizeof(int32_t));
        if (!tasks) status = DS_ERR_INTERNAL;
        if (status == DS_OK && (status = dataset_read_task_ids(ds, 0, n, tasks)) == DS_OK) {
            for (int64_t i = 0; i < n; i++)
                values[i] = tasks[i];
            print_value_counts(out, "tasks", values, n);
        }
        free(tasks);
    } else if (status == DS_OK) {
        fprintf(out, "tasks:        none\n");
    }
    free(values);
    dataset_close(ds);
    return status;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int info_print(const char *path, FILE *out)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return ds_error(DS_ERR_INPUT, "info: %s: no such file or directory", path);
    if (S_ISDIR(st.st_mode)) { /* a model, as every command that reads one takes it */
        char dir[MODEL_PATH_MAX];
        ModelPathKind kind;
        DS_TRY(model_path_resolve("info", path, dir, sizeof(dir), &kind));
        return kind == MODEL_PATH_CHECKPOINT ? info_checkpoint(dir, out) : info_hf_model(dir, out);
    }
    if (ends_with(path, ".safetensors")) return info_safetensors(path, out);
    /* anything else is tried as HDF5: the reader checks the signature and the layout */
    FILE *f = fopen(path, "rb");
    unsigned char sig[8] = {0};
    size_t got = f ? fread(sig, 1, 8, f) : 0;
    if (f) fclose(f);
    if (got == 8 && memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0) return info_dataset(path, out);
    return ds_error(DS_ERR_INPUT,
                    "info: %s: not a checkpoint, model directory, dataset (.h5) or safetensors "
                    "file",
                    path);
}

int info_main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        printf("usage: dstrain info PATH\n"
               "  PATH: a model: a Hugging Face model directory, a checkpoint (step-N), a\n"
               "  checkpoint directory (its newest complete checkpoint) or a run directory (its\n"
               "  checkpoints/, else its export/); or a dataset (.h5) or a .safetensors file\n");
        return DS_OK;
    }
    if (argc != 2)
        return ds_error(DS_ERR_INPUT, "info: expected one PATH (see dstrain info --help)");
    return info_print(argv[1], stdout);
}
