/* reader.c: the training data reader (reader.h). A producer (the prefetch thread, or the caller
 * when prefetch is 0) walks the global order and fills micro-batches into a ring of slots
 * allocated at open; data_reader_next copies the oldest ready slot out. Not here: the layout
 * checks (dataset.c) and the orders themselves (order.c).
 * Invariants: slots [head, head + ready) belong to the consumer, the others to the producer;
 * the producer holds data_hdf5_lock around every HDF5 call. */
#include "data/reader.h"

#include "data/dataset.h"
#include "data/order.h"
#include "trainer/common.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Blocks of the shuffled order hold about this many tokens (about one HDF5 chunk of `dstrain
 * pack`), and groups of this many blocks are shuffled together. In lm mode a block is read whole
 * (one HDF5 read instead of one per window) into a cache of READER_BLOCK_SLOTS blocks per file,
 * which holds a whole group: 9 x 256K tokens x 5 bytes = 11 MiB per file. */
#define READER_BLOCK_TOKENS (1LL << 18)
#define READER_GROUP_BLOCKS 8
#define READER_BLOCK_SLOTS (READER_GROUP_BLOCKS + 1)

static pthread_mutex_t hdf5_mutex = PTHREAD_MUTEX_INITIALIZER;

void data_hdf5_lock(void)
{
    pthread_mutex_lock(&hdf5_mutex);
}

void data_hdf5_unlock(void)
{
    pthread_mutex_unlock(&hdf5_mutex);
}

static const char *const MODE_NAMES[] = {"lm", "sft", "classification"};

int data_mode_parse(const char *name, DataMode *mode)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(name, MODE_NAMES[i]) == 0) {
            *mode = (DataMode)i;
            return DS_OK;
        }
    }
    return ds_error(DS_ERR_INPUT, "data.mode: expected one of lm, sft, classification, got \"%s\"",
                    name);
}

const char *data_mode_name(DataMode mode)
{
    return (unsigned)mode < 3 ? MODE_NAMES[mode] : "?";
}

typedef struct BlockSlot {
    int64_t block; /* -1 = empty */
    uint64_t last_use;
    int32_t *tokens; /* block (seq_len + 1) tokens: the block's windows back to back */
    uint8_t *mask;
} BlockSlot;

typedef struct ReaderSource {
    TokenDataset *ds;
    BlockSlot blocks[READER_BLOCK_SLOTS]; /* lm mode, files of at least one full block */
    uint64_t use_clock;
    double cumulative; /* upper end of this source's share of [0, 1) */
    int64_t n_samples; /* per epoch */
    int pad_id;        /* what short rows are padded with */
    BlockedOrder order;
} ReaderSource;

typedef struct Slot {
    int32_t *inputs, *targets;
    float *weights;
    int64_t *labels;
    int status;
    char message[1024];
    int step_end;          /* the last micro-batch of a step */
    DataReaderState after; /* position after this step (step_end only) */
} Slot;

struct DataReader {
    DataReaderOptions opt;
    ReaderSource src[DATA_MAX_SOURCES];
    int n_src;
    /* producer cursor */
    DataReaderState cursor; /* global_sample = first sample of the producer's current step */
    int micro;              /* next micro-batch of that step */
    int64_t mix_position;   /* cursor.consumed counts the global samples [0, mix_position) */
    int32_t *window_tokens, *raw_tokens;
    uint8_t *window_mask, *raw_mask;
    int32_t *block_raw_tokens; /* scratch for reading a whole block, sized for the largest */
    uint8_t *block_raw_mask;
    /* ring */
    Slot *slots;
    int n_slots, head, ready;
    int stop, running, failed;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t can_produce, can_consume;
    /* consumer */
    DataReaderState state; /* after the last complete step consumed */
    int consumed_micro;    /* micro-batches of the current step consumed */
    double wait_seconds;
};

/* ---- the global order ---------------------------------------------------------------------- */

/* The source of global sample g: a hash of (seed, g) against the cumulative weights, so the
 * interleaving is deterministic, needs no state and has the weights' proportions. */
static int reader_pick_source(const DataReader *r, int64_t g)
{
    if (r->n_src == 1) return 0;
    uint64_t h = order_mix64(order_mix64(r->cursor.seed ^ 0xA5A5A5A5ULL) ^ (uint64_t)g);
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    for (int s = 0; s < r->n_src - 1; s++)
        if (u < r->src[s].cumulative) return s;
    return r->n_src - 1;
}

/* Positions past this are refused: 2^61 samples is beyond any run, and the step arithmetic
 * (position + a step's samples) stays far from overflow. */
#define DATA_READER_MAX_POSITION (INT64_MAX / 4)
/* Samples data_reader_seek_global walks through for a mixture (a hash each, 10^8 a second). */
#define DATA_READER_MAX_WALK (1LL << 32)

/* Count global samples [mix_position, g) into cursor.consumed. */
static void reader_mix_advance(DataReader *r, int64_t g)
{
    for (; r->mix_position < g; r->mix_position++)
        r->cursor.consumed[reader_pick_source(r, r->mix_position)]++;
}

static uint64_t reader_source_seed(uint64_t seed, int s)
{
    return order_mix64(seed + 0x632BE59BD9B4E019ULL * (uint64_t)(s + 1));
}

/* ---- filling rows ---------------------------------------------------------------------------- */

/* LM window `sample` of a file from its block cache, reading the whole block on a miss; windows
 * outside the full blocks (the tail) are read alone. *tokens and *mask point at seq_len + 1. */
static int reader_lm_window(DataReader *r, ReaderSource *src, int64_t sample,
                            const int32_t **tokens, const uint8_t **mask)
{
    const int64_t K = src->order.block, W = (int64_t)r->opt.seq_len + 1;
    const int64_t block = sample / K;
    if (block >= src->order.full_blocks) {
        DS_TRY(dataset_read_lm_window(src->ds, sample, r->opt.seq_len, r->window_tokens,
                                      r->window_mask, r->raw_tokens, r->raw_mask));
        *tokens = r->window_tokens;
        *mask = r->window_mask;
        return DS_OK;
    }
    BlockSlot *hit = NULL, *oldest = &src->blocks[0];
    for (int i = 0; i < READER_BLOCK_SLOTS && !hit; i++) {
        if (src->blocks[i].block == block) hit = &src->blocks[i];
        if (src->blocks[i].last_use < oldest->last_use) oldest = &src->blocks[i];
    }
    if (!hit) {
        hit = oldest;
        hit->block = -1;
        if (!hit->tokens) {
            hit->tokens = ds_malloc((size_t)(K * W) * sizeof(int32_t));
            hit->mask = ds_malloc((size_t)(K * W));
            if (!hit->tokens || !hit->mask) return DS_ERR_INTERNAL;
        }
        DS_TRY(dataset_read_lm_windows(src->ds, block * K, K, r->opt.seq_len, hit->tokens,
                                       hit->mask, r->block_raw_tokens, r->block_raw_mask));
        hit->block = block;
    }
    hit->last_use = ++src->use_clock;
    *tokens = hit->tokens + (sample - block * K) * W;
    *mask = hit->mask + (sample - block * K) * W;
    return DS_OK;
}

static int reader_fill_row(DataReader *r, Slot *slot, int b, int s, int64_t sample)
{
    ReaderSource *src = &r->src[s];
    const int T = r->opt.seq_len;
    int32_t *in = slot->inputs + (size_t)b * T, *tg = slot->targets + (size_t)b * T;
    float *wt = slot->weights + (size_t)b * T;
    if (r->opt.mode == DATA_MODE_LM) {
        const int32_t *window;
        const uint8_t *mask;
        DS_TRY(reader_lm_window(r, src, sample, &window, &mask));
        memcpy(in, window, (size_t)T * sizeof(int32_t));
        memcpy(tg, window + 1, (size_t)T * sizeof(int32_t));
        for (int t = 0; t < T; t++)
            wt[t] = mask[t + 1] ? 1.0f : 0.0f;
        return DS_OK;
    }
    int64_t len = dataset_doc_length(src->ds, sample);
    if (r->opt.mode == DATA_MODE_SFT) {
        /* One example per row from its first token: truncated to T + 1, padded after. */
        int64_t take = len < (int64_t)T + 1 ? len : (int64_t)T + 1;
        DS_TRY(dataset_read_doc(src->ds, sample, 0, take, r->window_tokens, r->window_mask));
        for (int t = 0; t < T; t++) {
            int have = t + 1 < take;
            in[t] = t < take ? r->window_tokens[t] : src->pad_id;
            tg[t] = have ? r->window_tokens[t + 1] : src->pad_id;
            wt[t] = have && r->window_mask[t + 1] ? 1.0f : 0.0f;
        }
        return DS_OK;
    }
    /* classification: the example's first T tokens, padded; its label */
    int64_t take = len < (int64_t)T ? len : (int64_t)T;
    DS_TRY(dataset_read_doc(src->ds, sample, 0, take, r->window_tokens, NULL));
    for (int t = 0; t < T; t++)
        in[t] = t < take ? r->window_tokens[t] : src->pad_id;
    DS_TRY(dataset_read_labels(src->ds, sample, 1, &slot->labels[b]));
    int64_t label = slot->labels[b];
    if (label < 0 || label > INT32_MAX || (r->opt.num_labels > 0 && label >= r->opt.num_labels))
        return ds_error(DS_ERR_INPUT,
                        "%s: dataset \"labels\": label %" PRId64 " of document %" PRId64
                        " is outside [0, %d)",
                        dataset_path(src->ds), label, sample, r->opt.num_labels);
    return DS_OK;
}

/* Produce the next micro-batch of this rank into slot. Step s covers global samples
 * [s G, (s + 1) G), G = micro_batch x grad_accum x dp_size; rank r takes the contiguous share
 * [s G + r L, s G + (r + 1) L), L = micro_batch x grad_accum, micro-batch a its rows
 * [a B, (a + 1) B) of that share. */
static int reader_produce(DataReader *r, Slot *slot)
{
    const int B = r->opt.micro_batch;
    const int64_t L = (int64_t)B * r->opt.grad_accum, G = L * r->opt.dp_size;
    const int64_t first = r->cursor.global_sample + r->opt.dp_rank * L + (int64_t)r->micro * B;
    slot->step_end = 0;
    if (r->opt.mode == DATA_MODE_CLASSIFICATION) {
        memset(slot->targets, 0, (size_t)B * r->opt.seq_len * sizeof(int32_t));
        memset(slot->weights, 0, (size_t)B * r->opt.seq_len * sizeof(float));
    }
    for (int b = 0; b < B; b++) {
        reader_mix_advance(r, first + b);
        int s = reader_pick_source(r, first + b);
        int64_t k = r->cursor.consumed[s]++;
        r->mix_position++;
        ReaderSource *src = &r->src[s];
        int64_t sample = blocked_order_sample(&src->order, k / src->n_samples, k % src->n_samples);
        int status = reader_fill_row(r, slot, b, s, sample);
        if (status != DS_OK) return status;
    }
    if (r->opt.mode == DATA_MODE_CLASSIFICATION) {
        for (int b = 0; b < B; b++) {
            slot->targets[b] = (int32_t)slot->labels[b];
            slot->weights[b] = 1.0f;
        }
    }
    if (++r->micro == r->opt.grad_accum) {
        r->micro = 0;
        r->cursor.global_sample += G;
        reader_mix_advance(r, r->cursor.global_sample);
        slot->step_end = 1;
        slot->after = r->cursor;
    }
    return DS_OK;
}

static void reader_produce_locked(DataReader *r, Slot *slot)
{
    data_hdf5_lock();
    slot->status = reader_produce(r, slot);
    data_hdf5_unlock();
    if (slot->status != DS_OK)
        snprintf(slot->message, sizeof(slot->message), "%s", ds_last_error());
}

static void *reader_thread(void *arg)
{
    DataReader *r = arg;
    data_hdf5_lock();
    dataset_quiet_hdf5_errors();
    data_hdf5_unlock();
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->ready == r->n_slots)
            pthread_cond_wait(&r->can_produce, &r->mu);
        if (r->stop) break;
        Slot *slot = &r->slots[(r->head + r->ready) % r->n_slots];
        pthread_mutex_unlock(&r->mu);
        reader_produce_locked(r, slot);
        pthread_mutex_lock(&r->mu);
        r->ready++;
        pthread_cond_signal(&r->can_consume);
        if (slot->status != DS_OK) break; /* the error is delivered in order; nothing after it */
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static int reader_start(DataReader *r)
{
    r->head = r->ready = 0;
    r->stop = 0;
    if (r->opt.prefetch == 0) return DS_OK;
    if (pthread_create(&r->thread, NULL, reader_thread, r) != 0)
        return ds_error(DS_ERR_INTERNAL, "data reader: cannot start the prefetch thread");
    r->running = 1;
    return DS_OK;
}

static void reader_stop(DataReader *r)
{
    if (!r->running) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->can_produce);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->running = 0;
}

/* ---- open / close -------------------------------------------------------------------------- */

static int reader_check_options(const DataReaderOptions *o)
{
    if (o->n_sources < 1 || o->n_sources > DATA_MAX_SOURCES)
        return ds_error(DS_ERR_INPUT, "data.train: %d files; 1 to %d are supported", o->n_sources,
                        DATA_MAX_SOURCES);
    if (o->seq_len < 1 || o->micro_batch < 1 || o->grad_accum < 1 || o->prefetch < 0)
        return ds_error(DS_ERR_INPUT,
                        "data reader: seq_len, micro_batch and grad_accum must be >= 1");
    if (o->dp_size < 1 || o->dp_rank < 0 || o->dp_rank >= o->dp_size)
        return ds_error(DS_ERR_INPUT, "data reader: data-parallel rank %d of %d is out of range",
                        o->dp_rank, o->dp_size);
    if ((unsigned)o->mode > DATA_MODE_CLASSIFICATION)
        return ds_error(DS_ERR_INPUT, "data reader: unknown mode %d", (int)o->mode);
    for (int s = 0; s < o->n_sources; s++)
        if (!(o->sources[s].weight > 0) || o->sources[s].weight > 1e12)
            return ds_error(DS_ERR_INPUT, "%s: weight %g: expected a number > 0",
                            o->sources[s].path, o->sources[s].weight);
    return DS_OK;
}

/* Open one file and work out what a sample of it is in this mode. Runs under data_hdf5_lock. */
static int reader_open_source(DataReader *r, int s, const char *path)
{
    const DataReaderOptions *o = &r->opt;
    ReaderSource *src = &r->src[s];
    DS_TRY(dataset_open(path, o->model_vocab, &src->ds));
    const DatasetInfo *info = dataset_info(src->ds);
    double tokens_per_sample;
    if (o->mode == DATA_MODE_LM) {
        src->n_samples = dataset_lm_windows(src->ds, o->seq_len);
        if (src->n_samples == 0)
            return ds_error(DS_ERR_INPUT,
                            "%s: file too small for seq_len %d: %" PRId64
                            " tokens (with separators) do not fill one window of %d",
                            path, o->seq_len, info->n_tokens, o->seq_len + 1);
        tokens_per_sample = o->seq_len + 1.0;
    } else {
        src->n_samples = info->n_docs;
        tokens_per_sample = (double)info->n_tokens / (double)info->n_docs;
    }
    src->pad_id = info->pad_id >= 0 ? info->pad_id : info->eos_id >= 0 ? info->eos_id : 0;
    if (o->mode == DATA_MODE_CLASSIFICATION) {
        if (!info->has_labels)
            return ds_error(DS_ERR_INPUT,
                            "%s: dataset \"labels\" is missing (data.mode classification needs "
                            "one label per document)",
                            path);
        if (info->pad_id < 0 && o->has_fallback_pad) src->pad_id = o->fallback_pad_id;
        int64_t shortest = o->seq_len;
        for (int64_t d = 0; info->pad_id < 0 && !o->has_fallback_pad && d < info->n_docs &&
                            shortest >= o->seq_len;
             d++)
            if (dataset_doc_length(src->ds, d) < shortest) shortest = dataset_doc_length(src->ds, d);
        if (info->pad_id < 0 && !o->has_fallback_pad && shortest < o->seq_len)
            return ds_error(DS_ERR_INPUT,
                            "%s: the data file has no \"pad_id\" attribute, and the model has "
                            "no pad_token_id to use instead (data.mode classification pads "
                            "examples shorter than train.seq_len with the file's pad_id): pack "
                            "the file again with dstrain pack --pad-id ID (the tokenizer's pad "
                            "id, or its eos id when it has none), or set \"pad_token_id\" in "
                            "the model's config.json",
                            path);
        if (o->num_labels > 0) {
            /* Every label checked up front, in slices: a bad one stops the run before step 1. */
            int64_t labels[4096];
            for (int64_t d = 0; d < info->n_docs; d += 4096) {
                int64_t n = info->n_docs - d < 4096 ? info->n_docs - d : 4096;
                DS_TRY(dataset_read_labels(src->ds, d, n, labels));
                for (int64_t i = 0; i < n; i++)
                    if (labels[i] < 0 || labels[i] >= o->num_labels)
                        return ds_error(DS_ERR_INPUT,
                                        "%s: dataset \"labels\": label %" PRId64
                                        " of document %" PRId64
                                        " is outside [0, %d) (task.num_labels)",
                                        path, labels[i], d + i, o->num_labels);
            }
        }
    }
    for (int i = 0; i < READER_BLOCK_SLOTS; i++)
        src->blocks[i].block = -1;
    int64_t block = (int64_t)(READER_BLOCK_TOKENS / tokens_per_sample);
    blocked_order_init(&src->order, src->n_samples, block, READER_GROUP_BLOCKS,
                       reader_source_seed(o->seed, s));
    return DS_OK;
}

static DataReaderState reader_initial_state(const DataReader *r, uint64_t seed)
{
    DataReaderState st;
    memset(&st, 0, sizeof(st));
    st.version = DATA_READER_STATE_VERSION;
    st.mode = (int32_t)r->opt.mode;
    st.seq_len = r->opt.seq_len;
    st.n_sources = r->n_src;
    st.seed = seed;
    for (int s = 0; s < r->n_src; s++)
        st.samples_per_epoch[s] = r->src[s].n_samples;
    return st;
}

int data_reader_open(const DataReaderOptions *opt, DataReader **out)
{
    *out = NULL;
    DS_TRY(reader_check_options(opt));
    DataReader *r = ds_calloc(1, sizeof(DataReader));
    if (!r) return DS_ERR_INTERNAL;
    r->opt = *opt;
    r->opt.sources = NULL; /* the caller's array need not outlive open */
    r->n_src = opt->n_sources;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->can_produce, NULL);
    pthread_cond_init(&r->can_consume, NULL);
    int status = DS_OK;
    double total = 0;
    for (int s = 0; s < r->n_src; s++)
        total += opt->sources[s].weight;
    double running = 0;
    data_hdf5_lock();
    for (int s = 0; s < r->n_src && status == DS_OK; s++) {
        running += opt->sources[s].weight / total;
        r->src[s].cumulative = running;
        status = reader_open_source(r, s, opt->sources[s].path);
    }
    data_hdf5_unlock();

    const size_t T = (size_t)opt->seq_len, B = (size_t)opt->micro_batch;
    r->n_slots = opt->prefetch > 0 ? opt->prefetch : 1;
    if (status == DS_OK) {
        r->window_tokens = ds_malloc((T + 1) * sizeof(int32_t));
        r->raw_tokens = ds_malloc((T + 1) * sizeof(int32_t));
        r->window_mask = ds_malloc(T + 1);
        r->raw_mask = ds_malloc(T + 1);
        r->slots = ds_calloc((size_t)r->n_slots, sizeof(Slot));
        if (!r->window_tokens || !r->raw_tokens || !r->window_mask || !r->raw_mask || !r->slots)
            status = DS_ERR_INTERNAL;
    }
    if (status == DS_OK && opt->mode == DATA_MODE_LM) {
        int64_t largest = 0;
        for (int s = 0; s < r->n_src; s++)
            if (r->src[s].order.full_blocks > 0 && r->src[s].order.block > largest)
                largest = r->src[s].order.block;
        if (largest > 0) {
            size_t n = (size_t)largest * (T + 1);
            r->block_raw_tokens = ds_malloc(n * sizeof(int32_t));
            r->block_raw_mask = ds_malloc(n);
            if (!r->block_raw_tokens || !r->block_raw_mask) status = DS_ERR_INTERNAL;
        }
    }
    for (int i = 0; status == DS_OK && i < r->n_slots; i++) {
        Slot *slot = &r->slots[i];
        slot->inputs = ds_malloc(B * T * sizeof(int32_t));
        slot->targets = ds_malloc(B * T * sizeof(int32_t));
        slot->weights = ds_malloc(B * T * sizeof(float));
        slot->labels = ds_calloc(B, sizeof(int64_t));
        if (!slot->inputs || !slot->targets || !slot->weights || !slot->labels)
            status = DS_ERR_INTERNAL;
    }
    if (status == DS_OK) {
        r->cursor = r->state = reader_initial_state(r, opt->seed);
        status = reader_start(r);
    }
    if (status != DS_OK) {
        data_reader_close(r);
        return status;
    }
    *out = r;
    return DS_OK;
}

void data_reader_close(DataReader *r)
{
    if (!r) return;
    reader_stop(r);
    data_hdf5_lock();
    for (int s = 0; s < r->n_src; s++) {
        dataset_close(r->src[s].ds);
        for (int i = 0; i < READER_BLOCK_SLOTS; i++) {
            free(r->src[s].blocks[i].tokens);
            free(r->src[s].blocks[i].mask);
        }
    }
    data_hdf5_unlock();
    free(r->block_raw_tokens);
    free(r->block_raw_mask);
    for (int i = 0; r->slots && i < r->n_slots; i++) {
        free(r->slots[i].inputs);
        free(r->slots[i].targets);
        free(r->slots[i].weights);
        free(r->slots[i].labels);
    }
    free(r->slots);
    free(r->window_tokens);
    free(r->raw_tokens);
    free(r->window_mask);
    free(r->raw_mask);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->can_produce);
    pthread_cond_destroy(&r->can_consume);
    free(r);
}

/* ---- consuming ------------------------------------------------------------------------------ */

int data_reader_next(DataReader *r, int32_t *inputs, int32_t *targets, float *weights,
                     int64_t *labels)
{
    Slot *slot;
    if (r->opt.prefetch == 0) {
        slot = &r->slots[0];
        if (!r->failed) reader_produce_locked(r, slot);
    } else {
        double t0 = ds_now();
        pthread_mutex_lock(&r->mu);
        while (r->ready == 0)
            pthread_cond_wait(&r->can_consume, &r->mu);
        slot = &r->slots[r->head];
        pthread_mutex_unlock(&r->mu);
        r->wait_seconds += ds_now() - t0;
    }
    if (slot->status != DS_OK) {
        r->failed = 1;
        return ds_error(slot->status, "%s", slot->message);
    }
    const size_t n = (size_t)r->opt.micro_batch * r->opt.seq_len;
    memcpy(inputs, slot->inputs, n * sizeof(int32_t));
    memcpy(targets, slot->targets, n * sizeof(int32_t));
    memcpy(weights, slot->weights, n * sizeof(float));
    if (labels) memcpy(labels, slot->labels, (size_t)r->opt.micro_batch * sizeof(int64_t));
    if (slot->step_end) {
        r->state = slot->after;
        r->consumed_micro = 0;
    } else {
        r->consumed_micro++;
    }
    if (r->opt.prefetch > 0) {
        pthread_mutex_lock(&r->mu);
        r->head = (r->head + 1) % r->n_slots;
        r->ready--;
        pthread_cond_signal(&r->can_produce);
        pthread_mutex_unlock(&r->mu);
    }
    return DS_OK;
}

int data_reader_get_state(const DataReader *r, DataReaderState *state)
{
    if (r->consumed_micro != 0)
        return ds_error(DS_ERR_INTERNAL,
                        "data reader: position asked in the middle of a step (%d of %d "
                        "micro-batches read)",
                        r->consumed_micro, r->opt.grad_accum);
    *state = r->state;
    return DS_OK;
}

int data_reader_set_state(DataReader *r, const DataReaderState *st)
{
    if (st->version != DATA_READER_STATE_VERSION)
        return ds_error(DS_ERR_INPUT, "data position: version %u is not supported (expected %d)",
                        st->version, DATA_READER_STATE_VERSION);
    if (st->mode != (int32_t)r->opt.mode || st->seq_len != r->opt.seq_len ||
        st->n_sources != r->n_src)
        return ds_error(DS_ERR_INPUT,
                        "data position: saved for data.mode %s, seq_len %d, %d file(s); this run "
                        "has data.mode %s, seq_len %d, %d file(s)",
                        data_mode_name((DataMode)st->mode), st->seq_len, st->n_sources,
                        data_mode_name(r->opt.mode), r->opt.seq_len, r->n_src);
    for (int s = 0; s < r->n_src; s++) {
        if (st->samples_per_epoch[s] != r->src[s].n_samples)
            return ds_error(DS_ERR_INPUT,
                            "data position: file %d (%s) had %" PRId64
                            " samples per epoch when saved, now %" PRId64 " (another file?)",
                            s, dataset_path(r->src[s].ds), st->samples_per_epoch[s],
                            r->src[s].n_samples);
        if (st->consumed[s] < 0)
            return ds_error(DS_ERR_INPUT, "data position: negative count for file %d", s);
    }
    if (st->global_sample < 0)
        return ds_error(DS_ERR_INPUT, "data position: negative global sample index");
    /* Every global sample before the position was drawn from exactly one file, so the counts
     * add up to it; a position that does not is damaged or edited, and one past
     * DATA_READER_MAX_POSITION would overflow the step arithmetic. */
    int64_t total = 0;
    for (int s = 0; s < r->n_src; s++) {
        if (st->consumed[s] > DATA_READER_MAX_POSITION - total)
            return ds_error(DS_ERR_INPUT,
                            "data position: file %d count %" PRId64 " is beyond any run", s,
                            st->consumed[s]);
        total += st->consumed[s];
    }
    if (total != st->global_sample)
        return ds_error(DS_ERR_INPUT,
                        "data position: global sample %" PRId64 " is not the sum of the per-file "
                        "counts (%" PRId64 "): a damaged or edited position",
                        st->global_sample, total);
    reader_stop(r);
    r->cursor = *st;
    r->state = *st;
    r->micro = 0;
    r->consumed_micro = 0;
    r->mix_position = st->global_sample;
    r->failed = 0;
    for (int s = 0; s < r->n_src; s++) {
        ReaderSource *src = &r->src[s];
        blocked_order_init(&src->order, src->n_samples, src->order.block, src->order.group,
                           reader_source_seed(st->seed, s));
    }
    return reader_start(r);
}

int data_reader_global_sample(const DataReader *r, int64_t *global_sample)
{
    DataReaderState st = {0};
    DS_TRY(data_reader_get_state(r, &st));
    *global_sample = st.global_sample;
    return DS_OK;
}

int data_reader_seek_global(DataReader *r, int64_t global_sample)
{
    if (global_sample < 0)
        return ds_error(DS_ERR_INPUT, "data position: negative global sample index %" PRId64,
                        global_sample);
    if (global_sample > DATA_READER_MAX_POSITION)
        return ds_error(DS_ERR_INPUT, "data position: global sample %" PRId64 " is beyond any run",
                        global_sample);
    /* a mixture's counts come from a hash per sample: the walk is bounded (a minute at most) */
    if (r->n_src > 1 && global_sample > DATA_READER_MAX_WALK)
        return ds_error(DS_ERR_INPUT,
                        "data position: global sample %" PRId64 " of a mixture of %d files is "
                        "more than %lld samples to walk; resume from a checkpoint's whole state",
                        global_sample, r->n_src, (long long)DATA_READER_MAX_WALK);
    DataReaderState st = reader_initial_state(r, r->state.seed);
    reader_stop(r);
    r->cursor = st;
    r->mix_position = 0;
    if (r->n_src == 1) { /* one file: every sample is its own, no walk */
        r->cursor.consumed[0] = global_sample;
        r->mix_position = global_sample;
    }
    reader_mix_advance(r, global_sample);
    st = r->cursor;
    st.global_sample = global_sample;
    return data_reader_set_state(r, &st);
}

int data_reader_rewind(DataReader *r)
{
    DataReaderState st = reader_initial_state(r, r->state.seed);
    return data_reader_set_state(r, &st);
}

int64_t data_reader_samples_per_epoch(const DataReader *r, int source)
{
    return source >= 0 && source < r->n_src ? r->src[source].n_samples : -1;
}

double data_reader_wait_seconds(const DataReader *r)
{
    return r->wait_seconds;
}
