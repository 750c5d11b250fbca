/* classify.c: `dstrain eval` on a sequence classifier (see classify.h). The file is read one
 * document at a time (never whole); a batch's unused rows repeat its first row so that every
 * forward has the same shape, and only the filled rows are counted. */
#include "classify.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/model_path.h"
#include "../data/dataset.h"
#include "common.h"
#include "train.h"

int classify_eval(const char *model_dir, const ModelConfig *mc, const Backend *be,
                  const char *data_path, int seq_len, int batch, const char *logits_path,
                  double *accuracy)
{
    if (mc->num_labels <= 0)
        return ds_error(DS_ERR_INTERNAL, "classify_eval: %s is not a classifier", model_dir);
    const int L = mc->num_labels;
    TokenDataset *ds = NULL;
    Model m = {0};
    int64_t *labels = NULL;
    float *logits = NULL;
    FILE *out = NULL;
    DS_TRY(dataset_open(data_path, mc->vocab_size, &ds));
    const DatasetInfo *info = dataset_info(ds);
    int status = DS_OK;
    if (!info->has_labels) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: dataset \"labels\": missing (a classifier is scored on one label "
                          "per document)",
                          data_path);
        goto done;
    }
    if (info->n_docs == 0) {
        status = ds_error(DS_ERR_INPUT, "%s: no documents", data_path);
        goto done;
    }
    /* rows no longer than the longest document: what --seq-len asks beyond it is padding */
    int64_t longest = 1;
    for (int64_t d = 0; d < info->n_docs; d++)
        if (dataset_doc_length(ds, d) > longest) longest = dataset_doc_length(ds, d);
    if (seq_len == 0) {
        const int64_t limit = mc->max_position_embeddings > 0 ? mc->max_position_embeddings : 4096;
        seq_len = (int)(longest < limit ? longest : limit);
    }
    if (seq_len > longest) seq_len = (int)longest;
    if (batch == 0) batch = seq_len >= 4096 ? 1 : 4096 / seq_len;
    if (batch > info->n_docs) batch = (int)info->n_docs;
    const int B = batch, T = seq_len;
    if ((status = eval_check_memory(mc, B, T, be)) != DS_OK) goto done;
    labels = ds_malloc((size_t)info->n_docs * sizeof(int64_t));
    logits = ds_malloc((size_t)B * L * sizeof(float));
    if (!labels || !logits) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    if ((status = dataset_read_labels(ds, 0, info->n_docs, labels)) != DS_OK) goto done;
    for (int64_t d = 0; d < info->n_docs; d++)
        if (labels[d] < 0 || labels[d] >= L) {
            status = ds_error(DS_ERR_INPUT,
                              "%s: dataset \"labels\": label %lld of document %lld is outside "
                              "[0, num_labels = %d) of %s",
                              data_path, (long long)labels[d], (long long)d, L, model_dir);
            goto done;
        }
    if ((status = model_init(&m, mc, be, B, T)) != DS_OK) goto done;
    if ((status = model_load_path(&m, model_dir, mc)) != DS_OK) goto done;
    if (logits_path && !(out = fopen(logits_path, "w"))) {
        status = ds_error(DS_ERR_INPUT, "%s: cannot write: %s", logits_path, strerror(errno));
        goto done;
    }
    if (out)
        fprintf(out, "# label, then logits 0..%d, one line per document of %s\n", L - 1, data_path);

    int64_t correct = 0;
    for (int64_t first = 0; first < info->n_docs; first += B) {
        const int rows = info->n_docs - first < B ? (int)(info->n_docs - first) : B;
        for (int r = 0; r < B; r++) {
            int32_t *row = m.inputs + (size_t)r * T;
            if (r >= rows) { /* the batch's first row again, not counted */
                memcpy(row, m.inputs, (size_t)T * sizeof(int32_t));
                continue;
            }
            const int64_t d = first + r, len = dataset_doc_length(ds, d);
            const int64_t take = len < T ? len : T; /* longer documents keep their first tokens */
            if (take < T && mc->pad_token_id < 0) {
                status = ds_error(DS_ERR_INPUT,
                                  "%s: document %lld has %lld tokens, fewer than the sequence "
                                  "length %d, and the model has no pad_token_id to pad it with "
                                  "(the key \"pad_token_id\" of %s/config.json, which also "
                                  "marks each row's last token; the data file's pad_id is not "
                                  "used here): set it there (the tokenizer's pad id, or its eos "
                                  "id), or pass a --seq-len no longer than the shortest "
                                  "document",
                                  data_path, (long long)d, (long long)len, T, model_dir);
                goto done;
            }
            if ((status = dataset_read_doc(ds, d, 0, take, row, NULL)) != DS_OK) goto done;
            for (int64_t t = take; t < T; t++)
                row[t] = mc->pad_token_id;
        }
        model_forward(&m, m.inputs, NULL, NULL, logits);
        for (int r = 0; r < rows; r++) {
            const float *z = logits + (size_t)r * L;
            int best = 0;
            for (int c = 1; c < L; c++)
                if (z[c] > z[best]) best = c;
            correct += best == labels[first + r];
            if (out) {
                fprintf(out, "%lld", (long long)labels[first + r]);
                for (int c = 0; c < L; c++)
                    fprintf(out, " %.9g", z[c]);
                fputc('\n', out);
            }
        }
    }
    if (out) {
        int bad = ferror(out);
        bad |= fclose(out) != 0;
        out = NULL;
        if (bad) {
            status = ds_error(DS_ERR_INPUT, "%s: cannot write", logits_path);
            goto done;
        }
    }
    *accuracy = (double)correct / (double)info->n_docs;
    printf("eval_accuracy=%.7f examples=%lld\n", *accuracy, (long long)info->n_docs);
done:
    if (out) fclose(out);
    free(labels);
    free(logits);
    model_free(&m);
    dataset_close(ds);
    return status;
}
