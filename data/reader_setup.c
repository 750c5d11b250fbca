/* reader_setup.c: the trainer's data readers from its Config (data.train as one path or a
 * weighted list, data.eval files, data.mode), so that train.c only calls one function.
 * Not here: the reading itself (reader.c). */
#include "data/reader.h"

#include "trainer/common.h"
#include "trainer/config.h"

#include <stdio.h>
#include <string.h>

/* Batches read ahead: two steps' worth, at least 4, so one slow read does not stall a step. */
static int setup_prefetch(const Config *cfg)
{
    int n = 2 * cfg->train_grad_accum;
    return n < 4 ? 4 : n > 64 ? 64 : n;
}

int data_readers_open(const Config *cfg, int model_vocab, int dp_rank, int dp_size,
                      DataReader **train, DataReader **eval, int *n_eval)
{
    *train = NULL;
    *n_eval = 0;
    DataMode mode;
    DS_TRY(data_mode_parse(cfg->data_mode, &mode));
    const int classification = strcmp(cfg->task_type, "classification") == 0;
    if (classification && cfg->task_num_labels < 2)
        return ds_error(DS_ERR_INPUT,
                        "task.num_labels: task.type classification needs at least 2 labels, "
                        "got %d",
                        cfg->task_num_labels);
    if (classification != (mode == DATA_MODE_CLASSIFICATION))
        return ds_error(DS_ERR_INPUT,
                        "config: data.mode %s does not go with task.type %s (classification "
                        "needs both)",
                        cfg->data_mode, cfg->task_type);
    static char bundled[CONFIG_STR_MAX];
    DataSource sources[DATA_MAX_SOURCES];
    int n = cfg->data_train_files.count;
    if (n == 0) {
        snprintf(bundled, sizeof(bundled), "%s/data/bundled/kjv-train.h5", DSTRAIN_SOURCE_DIR);
        sources[0] = (DataSource){bundled, 1.0};
        n = 1;
    } else {
        for (int i = 0; i < n; i++)
            sources[i] = (DataSource){cfg->data_train_files.items[i].path,
                                      cfg->data_train_files.items[i].weight};
    }
    DataReaderOptions o = {
        .mode = mode,
        .sources = sources,
        .n_sources = n,
        .model_vocab = model_vocab,
        .num_labels = classification ? cfg->task_num_labels : 0,
        .seq_len = cfg->train_seq_len,
        .micro_batch = cfg->train_micro_batch_size,
        .grad_accum = cfg->train_grad_accum,
        .dp_rank = dp_rank,
        .dp_size = dp_size,
        .seed = (uint64_t)cfg->train_seed,
        .prefetch = setup_prefetch(cfg),
    };
    DS_TRY(data_reader_open(&o, train));
    if (cfg->eval_every <= 0) return DS_OK;
    /* Each eval file on its own, one micro-batch a call, in a fixed order (seed 0). */
    for (int i = 0; i < cfg->data_eval_files.count; i++) {
        DataSource src = {cfg->data_eval_files.items[i].path, 1.0};
        DataReaderOptions e = o;
        e.sources = &src;
        e.n_sources = 1;
        e.grad_accum = 1;
        e.seed = 0;
        e.prefetch = 2;
        int status = data_reader_open(&e, &eval[i]);
        if (status != DS_OK) {
            for (int k = 0; k < i; k++)
                data_reader_close(eval[k]);
            data_reader_close(*train);
            *train = NULL;
            return status;
        }
        *n_eval = i + 1;
    }
    return DS_OK;
}
