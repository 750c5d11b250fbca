/* eval.c: `dstrain eval`: the mean next-token loss of a model over every document of a dataset,
 * each document scored on its own from its first token (no packing, no padding counted). A
 * document longer than the sequence length is scored in consecutive windows of seq_len inputs,
 * each window starting where the previous one's targets ended, so every token after the first is
 * predicted exactly once. Tokens whose loss mask is 0 are not counted. Cheap checks come first:
 * the options, the data file, then the window sized from the data and the model's memory against
 * the host's, before anything large is allocated or the weights are read. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/hf_model.h"
#include "../checkpoint/model_path.h"
#include "../data/dataset.h"
#include "classify.h"
#include "common.h"
#include "memory.h"
#include "train.h"

static void eval_usage(FILE *out)
{
    fprintf(out,
            "usage: dstrain eval --model DIR --data FILE.h5 [--seq-len N] [--batch N]\n"
            "                    [--logits FILE] [--allow-extra-tensors]\n"
            "                    [--device cpu|cuda] [--precision auto|fp32|bf16|tf32]\n"
            "  DIR: a Hugging Face model directory, a checkpoint (step-N), a checkpoint\n"
            "  directory (its newest complete checkpoint) or a run directory (its checkpoints/,\n"
            "  else its export/).\n"
            "  --seq-len: tokens a window (default max_position_embeddings), no more than the\n"
            "  longest document needs; --batch: windows a forward (default about 4096 tokens),\n"
            "  no more than there are. Both are checked, and the model's memory against the\n"
            "  host's (the GPU's with --device cuda), before the model is loaded.\n"
            "  --device: where the model computes (default cpu); --precision: as the train\n"
            "  config's key precision (auto: bf16 mixed precision on cuda, fp32 on the CPU).\n"
            "  Prints eval_loss=<mean next-token loss> tokens=<predicted tokens> last; for a\n"
            "  *ForSequenceClassification model eval_accuracy=<fraction> examples=<documents>\n"
            "  (--logits: each document's label and logits, one line each).\n"
            "  --allow-extra-tensors: weight files may hold tensors the model lacks (a layer\n"
            "  beyond num_hidden_layers): left out with a warning naming them, not refused.\n");
}

static int parse_positive(const char *flag, const char *text, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text < '0' || *text > '9' || *end != 0 || v <= 0 || v > (1 << 24))
        return ds_error(DS_ERR_INPUT, "%s: expected a positive integer, got \"%s\"", flag, text);
    *out = (int)v;
    return DS_OK;
}

int eval_check_memory(const ModelConfig *mc, int batch, int seq_len, const Backend *be)
{
    ModelMemory mm;
    DS_TRY(model_memory_estimate(mc, batch, seq_len, 1, 1, 0, &mm));
    char subject[200], a[24], b[24], c[24], d[24];
    const char *advice = "lower --seq-len or --batch";
    const double weights = (double)mm.params + (double)mm.grads;
    if (be->host_memory) {
        snprintf(subject, sizeof(subject),
                 "eval at --batch %d x --seq-len %d (parameters and gradients %s, activations %s)",
                 batch, seq_len, memory_bytes_text(a, weights),
                 memory_bytes_text(b, (double)mm.activations));
        return memory_check_host(weights + (double)mm.activations, subject, advice);
    }
    /* the weights are read into host memory once, then copied to the GPU */
    snprintf(subject, sizeof(subject), "reading the weights for the GPU (a host copy of %s)",
             memory_bytes_text(a, (double)mm.params));
    DS_TRY(memory_check_host((double)mm.params, subject, "evaluate on a host with more memory"));
    const double act_share = be->act_size(be) / 4.0;
    const double copies = be->act_size(be) < 4 ? mm.params / 2.0 : 0.0; /* the bf16 copy */
    const double need = weights + copies + (double)mm.activations * act_share;
    uint64_t have = 0, total = 0;
    DS_TRY(memory_device_free(be, &have, &total));
    if (need <= (double)have) return DS_OK;
    return ds_error(DS_ERR_INPUT,
                    "memory: eval at --batch %d x --seq-len %d needs at least %s of GPU memory "
                    "(parameters and gradients %s, activations %s), more than the %s free on "
                    "this GPU; %s",
                    batch, seq_len, memory_bytes_text(a, need), memory_bytes_text(b, weights),
                    memory_bytes_text(c, (double)mm.activations * act_share),
                    memory_bytes_text(d, (double)have), advice);
}

int eval_device_check(const char *device, const char *precision)
{
    static const char *const devices[] = {"cpu", "cuda"};
    static const char *const precisions[] = {"auto", "fp32", "bf16", "tf32"};
    int known = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(devices); i++)
        known |= strcmp(device, devices[i]) == 0;
    if (!known)
        return ds_error(DS_ERR_INPUT, "--device: expected cpu or cuda, got \"%s\"", device);
    known = 0;
    for (size_t i = 0; i < DS_ARRAY_LEN(precisions); i++)
        known |= strcmp(precision, precisions[i]) == 0;
    if (!known)
        return ds_error(DS_ERR_INPUT, "--precision: expected auto, fp32, bf16 or tf32, got \"%s\"",
                        precision);
    if (strcmp(device, "cpu") == 0 && strcmp(precision, "auto") != 0 &&
        strcmp(precision, "fp32") != 0)
        return ds_error(DS_ERR_INPUT,
                        "--precision: %s needs --device cuda (the CPU computes in fp32 only; use "
                        "auto or fp32)",
                        precision);
    return DS_OK;
}

int eval_backend(const char *device, const char *precision, const Backend **be)
{
    DS_TRY(eval_device_check(device, precision));
    return backend_create(&(BackendOptions){.device = device, .precision = precision}, be);
}

/* Score the rows filled so far and reset the batch. */
static void eval_flush(Model *m, int rows, double *sum, double *count)
{
    const int T = m->T;
    for (int i = rows * T; i < m->B * T; i++) {
        m->inputs[i] = 0;
        m->targets[i] = 0;
        m->loss_weights[i] = 0.0f;
    }
    for (int i = 0; i < rows * T; i++) *count += m->loss_weights[i];
    *sum += model_forward(m, m->inputs, m->targets, m->loss_weights, NULL);
}

/* The mean loss of a causal LM over every document of data_path, on be. */
static int eval_lm(const char *model_dir, const ModelConfig *mc, const Backend *be,
                   const char *data_path, int seq_len, int batch)
{
    TokenDataset *ds = NULL;
    Model m = {0};
    int32_t *doc = NULL;
    uint8_t *mask = NULL;
    int status = dataset_open(data_path, mc->vocab_size, &ds);
    if (status != DS_OK) return status;
    /* cheap checks first: the window is sized from the data (no longer than the longest
     * document needs: each document is then one window, whatever --seq-len asked, and the
     * result is the same), and the model must fit the host before anything is allocated */
    int64_t longest = 0, windows = 0;
    for (int64_t d = 0; d < dataset_info(ds)->n_docs; d++)
        if (dataset_doc_length(ds, d) > longest) longest = dataset_doc_length(ds, d);
    if (seq_len == 0)
        seq_len = mc->max_position_embeddings > 0 ? mc->max_position_embeddings : 2048;
    if (longest - 1 < seq_len) seq_len = longest > 2 ? (int)(longest - 1) : 1;
    for (int64_t d = 0; d < dataset_info(ds)->n_docs; d++) { /* and no more rows than windows */
        const int64_t len = dataset_doc_length(ds, d);
        if (len > 1) windows += (len - 1 + seq_len - 1) / seq_len;
    }
    if (batch == 0) batch = seq_len >= 4096 ? 1 : 4096 / seq_len;
    if (windows > 0 && batch > windows) batch = (int)windows;
    if ((status = eval_check_memory(mc, batch, seq_len, be)) != DS_OK) goto done;
    if ((status = model_init(&m, mc, be, batch, seq_len)) != DS_OK) goto done;
    if ((status = model_load_path(&m, model_dir, mc)) != DS_OK) goto done;
    const DatasetInfo *info = dataset_info(ds);
    doc = ds_malloc(((size_t)seq_len + 1) * sizeof(int32_t));
    mask = ds_malloc((size_t)seq_len + 1);
    if (!doc || !mask) {
        status = DS_ERR_INTERNAL;
        goto done;
    }

    double sum = 0.0, count = 0.0;
    int rows = 0;
    const int T = seq_len;
    for (int64_t d = 0; d < info->n_docs; d++) {
        const int64_t len = dataset_doc_length(ds, d);
        /* window w: inputs tokens [w*T, w*T + T), targets shifted by one */
        for (int64_t start = 0; start + 1 < len; start += T) {
            int64_t take = len - start < (int64_t)T + 1 ? len - start : (int64_t)T + 1;
            if ((status = dataset_read_doc(ds, d, start, take, doc, mask)) != DS_OK) goto done;
            int32_t *in = m.inputs + (size_t)rows * T, *tg = m.targets + (size_t)rows * T;
            float *w = m.loss_weights + (size_t)rows * T;
            for (int t = 0; t < T; t++) {
                int have = t + 1 < take;
                in[t] = t < take ? doc[t] : 0;
                tg[t] = have ? doc[t + 1] : 0;
                w[t] = have && mask[t + 1] ? 1.0f : 0.0f;
            }
            if (++rows == batch) {
                eval_flush(&m, rows, &sum, &count);
                rows = 0;
            }
        }
    }
    if (rows > 0) eval_flush(&m, rows, &sum, &count);
    if (count == 0) {
        status = ds_error(DS_ERR_INPUT, "%s: no token to predict (every document has < 2 tokens)",
                          data_path);
        goto done;
    }
    printf("eval_loss=%.7f tokens=%.0f\n", sum / count, count);
done:
    free(doc);
    free(mask);
    model_free(&m);
    dataset_close(ds);
    return status;
}

int eval_main(int argc, char **argv)
{
    const char *model_dir = NULL, *data_path = NULL, *logits_path = NULL;
    const char *device = "cpu", *precision = "auto";
    int seq_len = 0, batch = 0, allow_extra = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            eval_usage(stdout);
            return DS_OK;
        }
        if (strcmp(a, "--allow-extra-tensors") == 0) {
            allow_extra = 1;
            continue;
        }
        if (i + 1 >= argc) return ds_error(DS_ERR_INPUT, "%s: expects a value", a);
        if (strcmp(a, "--model") == 0)
            model_dir = argv[++i];
        else if (strcmp(a, "--data") == 0)
            data_path = argv[++i];
        else if (strcmp(a, "--seq-len") == 0)
            DS_TRY(parse_positive(a, argv[++i], &seq_len));
        else if (strcmp(a, "--batch") == 0)
            DS_TRY(parse_positive(a, argv[++i], &batch));
        else if (strcmp(a, "--logits") == 0)
            logits_path = argv[++i];
        else if (strcmp(a, "--device") == 0)
            device = argv[++i];
        else if (strcmp(a, "--precision") == 0)
            precision = argv[++i];
        else
            return ds_error(DS_ERR_INPUT, "eval: unknown option %s (see dstrain eval --help)", a);
    }
    if (!model_dir || !data_path) {
        eval_usage(stderr);
        return ds_error(DS_ERR_INPUT, "eval: --model and --data are required");
    }
    DS_TRY(eval_device_check(device, precision)); /* the flags first, the device once the
                                                   * model is found */
    char resolved[MODEL_PATH_MAX];
    ModelPathKind kind;
    DS_TRY(model_path_resolve("eval", model_dir, resolved, sizeof(resolved), &kind));
    model_dir = resolved;
    ModelConfig mc;
    /* a checkpoint holds its model's config.json */
    DS_TRY(hf_config_load_with(model_dir, allow_extra ? HF_EXTRA_WARN : HF_EXTRA_REFUSE, &mc));
    const Backend *be = NULL;
    DS_TRY(eval_backend(device, precision, &be));
    int status;
    if (mc.num_labels > 0) { /* classify.c */
        double accuracy;
        status =
            classify_eval(model_dir, &mc, be, data_path, seq_len, batch, logits_path, &accuracy);
    } else if (logits_path) {
        status = ds_error(DS_ERR_INPUT,
                          "eval: --logits is for classification models; %s is a "
                          "causal LM",
                          model_dir);
    } else {
        status = eval_lm(model_dir, &mc, be, data_path, seq_len, batch);
    }
    backend_free(be);
    return status;
}
