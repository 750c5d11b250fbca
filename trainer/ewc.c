/* ewc.c: elastic weight consolidation: Fisher estimation after a task, online / separate
 * consolidation, the penalty, and the state's HDF5 files. See ewc.h. The fused AdamW + EWC
 * update is a backend op (Backend.adamw_ewc_update). Not here: the task loop (continual.c) and
 * the collectives that sum a sharded penalty or a Fisher estimated on several data-parallel
 * ranks (the caller reduces). The pairs live in the backend's memory; on a device, whatever is
 * computed on the host walks them in chunks of EWC_STAGE_FLOATS through e->staging
 * (backend_stage, backend_view), in the element order of the host path, so both give the same
 * bits. */
#include "ewc.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../data/hdf5_check.h"
#include "common.h"

int ewc_mode_parse(const char *text, EwcMode *out)
{
    if (strcmp(text, "online") == 0)
        *out = EWC_ONLINE;
    else if (strcmp(text, "separate") == 0)
        *out = EWC_SEPARATE;
    else
        return ds_error(DS_ERR_INPUT, "continual.ewc.mode: expected online or separate, got \"%s\"",
                        text);
    return DS_OK;
}

int fisher_type_parse(const char *text, FisherType *out)
{
    if (strcmp(text, "empirical") == 0)
        *out = FISHER_EMPIRICAL;
    else if (strcmp(text, "sampled") == 0)
        *out = FISHER_SAMPLED;
    else if (strcmp(text, "exact") == 0)
        *out = FISHER_EXACT;
    else if (strcmp(text, "identity") == 0)
        *out = FISHER_IDENTITY;
    else
        return ds_error(DS_ERR_INPUT,
                        "continual.ewc.fisher.type: expected empirical, sampled, exact or "
                        "identity, got \"%s\"",
                        text);
    return DS_OK;
}

int ewc_decay_parse(const char *text, EwcDecay *out)
{
    if (strcmp(text, "anchor") == 0)
        *out = EWC_DECAY_ANCHOR;
    else if (strcmp(text, "zero") == 0)
        *out = EWC_DECAY_ZERO;
    else
        return ds_error(DS_ERR_INPUT, "continual.ewc.decay: expected anchor or zero, got \"%s\"",
                        text);
    return DS_OK;
}

int ewc_init(EwcState *e, EwcMode mode, float lambda, float gamma, size_t lo, size_t hi)
{
    return ewc_init_on(e, mode, lambda, gamma, lo, hi, backend_cpu());
}

int ewc_init_on(EwcState *e, EwcMode mode, float lambda, float gamma, size_t lo, size_t hi,
                const Backend *be)
{
    memset(e, 0, sizeof(*e));
    if (hi < lo) return ds_error(DS_ERR_INTERNAL, "ewc_init: shard [%zu, %zu) is empty", lo, hi);
    e->mode = mode;
    e->lambda = lambda;
    e->gamma = gamma;
    e->decay = EWC_DECAY_ANCHOR;
    e->lo = lo;
    e->hi = hi;
    e->be = be;
    if (!be->host_memory &&
        !(e->staging = ds_aligned_alloc(PARAM_ALIGN_BYTES, 3 * EWC_STAGE_FLOATS * sizeof(float))))
        return DS_ERR_INTERNAL;
    return DS_OK;
}

static void free_sets(EwcState *e)
{
    for (int k = 0; k < e->n_sets; k++) {
        e->be->mem_free(e->be, e->fisher[k]);
        e->be->mem_free(e->be, e->anchor[k]);
        e->fisher[k] = e->anchor[k] = NULL;
    }
    e->n_sets = 0;
}

void ewc_free(EwcState *e)
{
    if (e->be) free_sets(e); /* a state never initialised holds nothing */
    free(e->staging);
    memset(e, 0, sizeof(*e));
}

static int ewc_add_set(EwcState *e, int task_id)
{
    if (e->n_sets >= EWC_MAX_SETS)
        return ds_error(DS_ERR_INPUT,
                        "continual.ewc.mode: separate keeps one Fisher per task, at most %d tasks",
                        EWC_MAX_SETS);
    size_t n = e->hi - e->lo;
    int k = e->n_sets;
    /* zeroed, 256-byte aligned, in the memory the fused update reads */
    e->fisher[k] = e->be->mem_alloc(e->be, (n ? n : 1) * sizeof(float));
    e->anchor[k] = e->be->mem_alloc(e->be, (n ? n : 1) * sizeof(float));
    if (!e->fisher[k] || !e->anchor[k]) {
        e->be->mem_free(e->be, e->fisher[k]);
        e->be->mem_free(e->be, e->anchor[k]);
        e->fisher[k] = e->anchor[k] = NULL;
        return DS_ERR_INTERNAL;
    }
    e->task_id[k] = task_id;
    e->n_sets++;
    return DS_OK;
}

int ewc_reserve_sets(EwcState *e, int n_sets, const int32_t *task_ids, int tasks_seen)
{
    if (e->n_sets != 0)
        return ds_error(DS_ERR_INTERNAL, "ewc_reserve_sets: the state already holds pairs");
    if (n_sets < 0 || (e->mode == EWC_ONLINE && n_sets > 1))
        return ds_error(DS_ERR_INPUT, "EWC state: %d pairs for continual.ewc.mode %s", n_sets,
                        e->mode == EWC_ONLINE ? "online" : "separate");
    for (int k = 0; k < n_sets; k++) DS_TRY(ewc_add_set(e, task_ids[k]));
    e->tasks_seen = tasks_seen;
    return DS_OK;
}

/* Elements per pass over a range: all of them on a host backend, a staging chunk on a device. */
static size_t stage_step(const EwcState *e, size_t n)
{
    return e->be->host_memory || n < EWC_STAGE_FLOATS ? (n ? n : 1) : EWC_STAGE_FLOATS;
}

typedef struct {
    float gamma;
    const float *fisher_new; /* host, indexed as the staged range */
} OnlineFold;

/* f = gamma f + F_new, on one staged piece of the online Fisher */
static int online_fold(void *ctx, float *f, size_t first, size_t len)
{
    const OnlineFold *o = ctx;
    for (size_t i = 0; i < len; i++)
        f[i] = o->gamma * f[i] + o->fisher_new[first + i];
    return DS_OK;
}

int ewc_consolidate(EwcState *e, const float *fisher_new, const float *params, int task_id)
{
    const size_t n = e->hi - e->lo;
    const float *fn = fisher_new + e->lo, *p = params + e->lo;
    if (e->mode == EWC_ONLINE && e->n_sets == 1) {
        OnlineFold fold = {e->gamma, fn};
        DS_TRY(backend_stage(e->be, e->fisher[0], n, STAGE_UPDATE, EWC_STAGE_FLOATS, e->staging,
                             online_fold, &fold));
        e->be->mem_copy(e->be, e->anchor[0], p, n * sizeof(float));
        e->task_id[0] = task_id;
    } else {
        DS_TRY(ewc_add_set(e, task_id));
        e->be->mem_to_device(e->be, e->fisher[e->n_sets - 1], fn, n * sizeof(float));
        e->be->mem_copy(e->be, e->anchor[e->n_sets - 1], p, n * sizeof(float));
    }
    e->tasks_seen++;
    return DS_OK;
}

void ewc_penalty_accumulate(const EwcState *e, const float *params, size_t begin, size_t end,
                            double *sum)
{
    const size_t step = stage_step(e, end > begin ? end - begin : 0);
    float *hp = e->staging, *hf = hp ? hp + EWC_STAGE_FLOATS : NULL;
    float *ha = hp ? hp + 2 * EWC_STAGE_FLOATS : NULL;
    double s = *sum;
    for (int k = 0; k < e->n_sets; k++) {
        for (size_t c = begin; c < end; c += step) {
            const size_t len = end - c < step ? end - c : step;
            const float *p = backend_view(e->be, params + c, len, hp);
            const float *f = backend_view(e->be, e->fisher[k] + (c - e->lo), len, hf);
            const float *a = backend_view(e->be, e->anchor[k] + (c - e->lo), len, ha);
            for (size_t i = 0; i < len; i++) {
                double d = (double)p[i] - a[i];
                s += (double)f[i] * d * d;
            }
        }
    }
    *sum = s;
}

double ewc_penalty(const EwcState *e, const float *params)
{
    double sum = 0.0;
    ewc_penalty_accumulate(e, params, e->lo, e->hi, &sum);
    return 0.5 * e->lambda * sum;
}

int ewc_sets_at(const EwcState *e, size_t offset, const float **fisher, const float **anchor)
{
    for (int k = 0; k < e->n_sets; k++) {
        fisher[k] = e->fisher[k] + (offset - e->lo);
        anchor[k] = e->anchor[k] + (offset - e->lo);
    }
    return e->n_sets;
}

/* ---- Fisher estimation ---------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *state)
{
    return ((double)(rng_next(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Softmax of row in place (double accumulation), then a draw from it. */
static int softmax_draw(float *row, int V, uint64_t *rng)
{
    float mx = row[0];
    for (int j = 1; j < V; j++)
        mx = row[j] > mx ? row[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < V; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    for (int j = 0; j < V; j++)
        row[j] = (float)(row[j] / sum);
    if (!rng) return 0;
    double u = rng_uniform(rng), acc = 0.0;
    for (int j = 0; j < V; j++) {
        acc += row[j];
        if (u < acc) return j;
    }
    return V - 1;
}

static void fisher_accumulate(float *fisher, const float *grads, size_t n, float w)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        fisher[i] += w * grads[i] * grads[i];
}

typedef struct {
    float *fisher; /* host, indexed as the staged range */
    float w;
} FisherSquares;

static int fisher_squares(void *ctx, float *grads, size_t first, size_t len)
{
    const FisherSquares *f = ctx;
    fisher_accumulate(f->fisher + first, grads, len, f->w);
    return DS_OK;
}

/* After a backward: the whole gradient of kv heads shared by tensor-parallel ranks, then its
 * square into fisher; on a device backend the gradient comes to the host in chunks of
 * EWC_STAGE_FLOATS through host_grads (the table has no op that squares into a buffer). */
static int fisher_take(Model *work, float *fisher, float *host_grads, float w)
{
    DS_TRY(model_reduce_shared_grads(work));
    FisherSquares f = {fisher, w};
    return backend_stage(work->be, work->grads, work->table.total, STAGE_READ, EWC_STAGE_FLOATS,
                         host_grads, fisher_squares, &f);
}

/* The causal-LM token signs of example `index` (its place in the pass): w[t] *= +-1 from a
 * stream seeded by (seed, index), so that an example gets the same signs on every rank and in
 * every layout, batched or not. */
static void token_signs(uint64_t seed, int64_t index, float *w, int T)
{
    uint64_t state = (seed + 0x632be59bd9b4e019ull) ^ ((uint64_t)index * 0xd1b54a32d192ed03ull);
    uint64_t bits = 0;
    for (int t = 0; t < T; t++) {
        if (t % 64 == 0) bits = rng_next(&state);
        if ((bits >> (t % 64)) & 1) w[t] = -w[t];
    }
}

/* identity: 1 on every element of every tensor, on shard 0 of a data-parallel split. */
static void fisher_identity(const Model *work, const FisherOptions *opt, float *fisher)
{
    const int shards = opt->shard_size > 1 ? opt->shard_size : 1;
    memset(fisher, 0, work->table.total * sizeof(float));
    if (opt->shard_rank % shards != 0) return;
    for (int i = 0; i < work->table.count; i++) {
        const ParamInfo *p = &work->table.items[i];
        for (size_t e = 0; e < p->numel; e++)
            fisher[p->offset + e] = 1.0f;
    }
}

int ewc_estimate_fisher(Model *work, const FisherOptions *opt, EwcExampleFn next, void *ctx,
                        float *fisher)
{
    const int cls = work->cfg.num_labels > 0;
    const int B = work->B, T = work->T, N = B * T;
    const int V = cls ? work->cfg.num_labels : work->cfg.vocab_size;
    const int rows_out = cls ? B : N; /* rows of logits the forward hands back */
    const size_t total = work->table.total;
    if (opt->type == FISHER_IDENTITY) {
        fisher_identity(work, opt, fisher);
        return DS_OK;
    }
    if (opt->samples <= 0)
        return ds_error(DS_ERR_INPUT, "continual.ewc.fisher.samples: must be positive");
    if (opt->type == FISHER_EXACT && !cls)
        return ds_error(DS_ERR_INPUT, "continual.ewc.fisher.type: exact needs task.type "
                                      "classification (a sum over every token of the vocabulary "
                                      "at every position is not tractable)");
    if (opt->type == FISHER_EXACT && opt->batched)
        return ds_error(DS_ERR_INPUT,
                        "continual.ewc.fisher.batched: the exact Fisher is per example only");
    if (!opt->batched && B != 1)
        return ds_error(DS_ERR_INTERNAL, "ewc_estimate_fisher: per-example mode needs B == 1");

    int status = DS_OK;
    int32_t *inputs = ds_malloc((size_t)N * sizeof(int32_t));
    int32_t *targets = ds_malloc((size_t)N * sizeof(int32_t));
    int32_t *drawn = ds_malloc((size_t)N * sizeof(int32_t));
    float *weights = ds_malloc((size_t)N * sizeof(float));
    float *logits = ds_malloc((size_t)rows_out * V * sizeof(float));
    const size_t stage = total < EWC_STAGE_FLOATS ? total : EWC_STAGE_FLOATS;
    float *host_grads =
        work->be->host_memory ? NULL : ds_malloc((stage ? stage : 1) * sizeof(float));
    const int shards = opt->shard_size > 1 ? opt->shard_size : 1;
    if (!inputs || !targets || !drawn || !weights || !logits ||
        (!work->be->host_memory && !host_grads)) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    memset(fisher, 0, total * sizeof(float));
    uint64_t rng = opt->seed * 0x2545f4914f6cdd1dull + 0x1234567ull;
    double token_mass = 0.0; /* causal LM: sum of w_t^2 over every example of the pass */
    int batches = 0;
    for (int s = 0; s < opt->samples; s += B, batches++) {
        const int rows = opt->samples - s < B ? opt->samples - s : B;
        /* fill rows; rows past the last example get weight 0 */
        memset(inputs, 0, (size_t)N * sizeof(int32_t));
        memset(targets, 0, (size_t)N * sizeof(int32_t));
        memset(weights, 0, (size_t)N * sizeof(float));
        for (int r = 0; r < rows; r++) {
            int32_t *tg = targets + (size_t)r * T;
            float *w = weights + (size_t)r * T;
            if ((status = next(ctx, inputs + (size_t)r * T, tg, w)) != DS_OK) goto done;
            if (cls) {
                int label = tg[0];
                if (label < 0 || label >= V) {
                    status =
                        ds_error(DS_ERR_INPUT, "Fisher pass: label %d outside [0, %d)", label, V);
                    goto done;
                }
                continue;
            }
            for (int t = 0; t < T; t++) {
                if (!(w[t] >= 0.0f) || !isfinite(w[t])) {
                    status = ds_error(DS_ERR_INPUT,
                                      "Fisher pass: example %d: loss weight %g at position %d is "
                                      "not a finite number >= 0",
                                      s + r, (double)w[t], t);
                    goto done;
                }
                token_mass += (double)w[t] * w[t];
            }
            token_signs(opt->seed, (int64_t)s + r, w, T); /* the loss sum_t s_t w_t l_t */
        }
        /* classification: one label and one weight per row, packed at the front */
        int32_t *labels = drawn;
        float *row_w = weights;
        if (cls) {
            for (int r = 0; r < B; r++) {
                labels[r] = r < rows ? targets[(size_t)r * T] : 0;
                row_w[r] = r < rows ? 1.0f / (float)B : 0.0f;
            }
        }
        /* classification batched: B * (mean gradient)^2; causal LM: the signed sum's square */
        const float scale = cls && opt->batched ? (float)B : 1.0f;
        const int owner = batches % shards, mine = owner == opt->shard_rank % shards;
        const int ep = opt->ep ? opt->ep->size : 1;
        /* another rank's unit; under expert parallelism passed along with zero weights when
         * that rank is of this rank's expert-parallel group */
        if (!mine && (ep == 1 || owner / ep != opt->shard_rank / ep)) continue;
        if (!mine) {
            memset(inputs, 0, (size_t)N * sizeof(int32_t));
            memset(targets, 0, (size_t)N * sizeof(int32_t));
            memset(drawn, 0, (size_t)N * sizeof(int32_t));
            memset(weights, 0, (size_t)N * sizeof(float));
        }
        if (opt->type == FISHER_EMPIRICAL) {
            model_zero_grad(work);
            model_forward_train(work, inputs, cls ? labels : targets, row_w, NULL);
            model_backward(work);
            if ((status = fisher_take(work, fisher, host_grads, scale)) != DS_OK) goto done;
        } else if (opt->type == FISHER_SAMPLED) {
            model_forward(work, inputs, NULL, NULL, logits);
            if (cls && mine) {
                for (int r = 0; r < B; r++)
                    labels[r] = r < rows ? softmax_draw(logits + (size_t)r * V, V, &rng) : 0;
            } else if (!cls) {
                for (int i = 0; i < N; i++)
                    drawn[i] =
                        weights[i] != 0.0f ? softmax_draw(logits + (size_t)i * V, V, &rng) : 0;
            }
            model_zero_grad(work);
            model_forward_train(work, inputs, cls ? labels : drawn, row_w, NULL);
            model_backward(work);
            if ((status = fisher_take(work, fisher, host_grads, scale)) != DS_OK) goto done;
        } else { /* exact, classification, B == 1: sum_c p(c|x) g_c^2 */
            model_forward(work, inputs, NULL, NULL, logits);
            softmax_draw(logits, V, NULL);
            /* every rank weighs class c's gradient by the owner's p(c | x): its experts hold
             * rows of the owner's example */
            if (ep > 1 && (status = comm_broadcast(opt->ep, logits, (size_t)V, COMM_F32,
                                                   owner % ep)) != DS_OK)
                goto done;
            const float one = mine ? 1.0f : 0.0f;
            for (int c = 0; c < V; c++) {
                int32_t label = c;
                model_zero_grad(work);
                model_forward_train(work, inputs, &label, &one, NULL);
                model_backward(work);
                if ((status = fisher_take(work, fisher, host_grads, logits[c])) != DS_OK)
                    goto done;
            }
        }
    }
    if (!cls && !(token_mass > 0.0)) {
        status = ds_error(DS_ERR_INPUT,
                          "Fisher pass: the %d examples have no trained token (loss mask all 0)",
                          opt->samples);
        goto done;
    }
    const float inv = cls ? 1.0f / (float)(opt->batched ? batches : opt->samples)
                          : (float)(1.0 / token_mass);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < total; i++)
        fisher[i] *= inv;
    model_zero_grad(work);
done:
    free(inputs);
    free(targets);
    free(drawn);
    free(weights);
    free(logits);
    free(host_grads);
    return status;
}

/* ---- HDF5 file --------------------------------------------------------------------------------
 */

static int h5_attr_write(hid_t loc, const char *name, hid_t type, hsize_t n, const void *value)
{
    hid_t space = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Aexists(loc, name) > 0
                  ? H5Aopen(loc, name, H5P_DEFAULT)
                  : H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, type, value) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc >= 0 ? DS_OK : DS_ERR_INTERNAL;
}

static int h5_attr_read(hid_t loc, const char *path, const char *name, hid_t type, hsize_t n,
                        void *value)
{
    if (H5Aexists(loc, name) <= 0)
        return ds_error(DS_ERR_INPUT, "%s: attribute %s: missing", path, name);
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t space = H5Aget_space(a), stored = H5Aget_type(a);
    hssize_t got = H5Sget_simple_extent_npoints(space);
    /* refused before libhdf5 converts it */
    const int typed =
        got == (hssize_t)n ? hdf5_check_number_type(stored, path, "attribute", name) : DS_OK;
    herr_t rc = got == (hssize_t)n && typed == DS_OK ? H5Aread(a, type, value) : -1;
    H5Tclose(stored);
    H5Sclose(space);
    H5Aclose(a);
    if (typed != DS_OK) return typed;
    if (got != (hssize_t)n)
        return ds_error(DS_ERR_INPUT, "%s: attribute %s: expected %llu values, got %lld", path,
                        name, (unsigned long long)n, (long long)got);
    return rc >= 0 ? DS_OK : ds_error(DS_ERR_INPUT, "%s: attribute %s: unreadable", path, name);
}

/* Read or write [lo, hi) of a 1-D float dataset of length total. */
static int h5_range(hid_t file, const char *path, const char *name, size_t total, size_t lo,
                    size_t hi, float *buf, int write)
{
    hsize_t dims = total, start = lo, count = hi - lo;
    hid_t d;
    if (write && H5Lexists(file, name, H5P_DEFAULT) <= 0) {
        hid_t space = H5Screate_simple(1, &dims, NULL);
        d = H5Dcreate2(file, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Sclose(space);
    } else {
        if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
            return ds_error(DS_ERR_INPUT, "%s: dataset %s: missing", path, name);
        d = H5Dopen2(file, name, H5P_DEFAULT);
    }
    if (d < 0) return ds_error(DS_ERR_INPUT, "%s: dataset %s: cannot open", path, name);
    hid_t fs = H5Dget_space(d);
    hsize_t have = 0;
    H5Sget_simple_extent_dims(fs, &have, NULL);
    int status = DS_OK;
    hid_t stored = H5Dget_type(d);
    if (H5Sget_simple_extent_ndims(fs) != 1 || have != dims) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: dataset %s: expected %zu elements (the parameter "
                          "layout), got %llu",
                          path, name, total, (unsigned long long)have);
    } else if ((status = hdf5_check_number_type(stored, path, "dataset", name)) != DS_OK) {
        /* refused before libhdf5 converts to or from it */
    } else if (count > 0) {
        hid_t ms = H5Screate_simple(1, &count, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL);
        herr_t rc = write ? H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf)
                          : H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf);
        if (rc < 0)
            status = ds_error(DS_ERR_INPUT, "%s: dataset %s: %s failed", path, name,
                              write ? "write" : "read");
        H5Sclose(ms);
    }
    H5Tclose(stored);
    H5Sclose(fs);
    H5Dclose(d);
    return status;
}

typedef struct {
    hid_t file;
    const char *path, *name;
    size_t total, lo;
    int write;
} H5Piece;

static int h5_piece(void *ctx, float *host, size_t first, size_t len)
{
    const H5Piece *h = ctx;
    return h5_range(h->file, h->path, h->name, h->total, h->lo + first, h->lo + first + len, host,
                    h->write);
}

/* h5_range over this rank's [lo, hi) of one of e's buffers (e->be's memory): in one piece from
 * host memory, in staged chunks from a device. */
static int h5_state_range(const EwcState *e, hid_t file, const char *path, const char *name,
                          size_t total, float *state, int write)
{
    /* once a dataset, before libhdf5 decodes it; a file being written is this process's own
     * (and its header may not be on disk yet) */
    if (!write) DS_TRY(hdf5_check_dataset(path, file, name));
    if (e->hi == e->lo) /* the dataset is still made, or its size checked */
        return h5_range(file, path, name, total, e->lo, e->hi, state, write);
    H5Piece h = {file, path, name, total, e->lo, write};
    return backend_stage(e->be, state, e->hi - e->lo, write ? STAGE_READ : STAGE_WRITE,
                         EWC_STAGE_FLOATS, e->staging, h5_piece, &h);
}

int ewc_save(const EwcState *e, const char *path, size_t total, int create)
{
    hid_t file = create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)
                        : H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: cannot %s", path, create ? "create" : "open");
    int status = DS_OK;
    long long tot = (long long)total;
    int ints[3] = {(int)e->mode, e->n_sets, e->tasks_seen};
    double fl[2] = {e->lambda, e->gamma};
    if (create) {
        if ((status = h5_attr_write(file, "format", H5T_NATIVE_INT, 1, &(int){1})) != DS_OK ||
            (status = h5_attr_write(file, "mode_sets_seen", H5T_NATIVE_INT, 3, ints)) != DS_OK ||
            (status = h5_attr_write(file, "lambda_gamma", H5T_NATIVE_DOUBLE, 2, fl)) != DS_OK ||
            (status = h5_attr_write(file, "total", H5T_NATIVE_LLONG, 1, &tot)) != DS_OK ||
            (e->n_sets > 0 && (status = h5_attr_write(file, "task_ids", H5T_NATIVE_INT,
                                                      (hsize_t)e->n_sets, e->task_id)) != DS_OK))
            goto done;
    }
    for (int k = 0; k < e->n_sets && status == DS_OK; k++) {
        char name[32];
        snprintf(name, sizeof(name), "fisher_%d", k);
        status = h5_state_range(e, file, path, name, total, e->fisher[k], 1);
        snprintf(name, sizeof(name), "anchor_%d", k);
        if (status == DS_OK) status = h5_state_range(e, file, path, name, total, e->anchor[k], 1);
    }
done:
    if (H5Fclose(file) < 0 && status == DS_OK)
        status = ds_error(DS_ERR_INTERNAL, "%s: close failed", path);
    return status;
}

int ewc_load(EwcState *e, const char *path, size_t total)
{
    hid_t file = -1;
    /* libhdf5 trusts sizes in the file that these check first (data/hdf5_check.h) */
    struct stat st;
    if (stat(path, &st) == 0) DS_TRY(hdf5_check_root_attributes(path));
    H5E_BEGIN_TRY
    {
        file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: not a readable HDF5 file", path);
    int status = DS_OK, ints[3], format = 0;
    double fl[2];
    long long tot = 0;
    if ((status = h5_attr_read(file, path, "format", H5T_NATIVE_INT, 1, &format)) != DS_OK ||
        (status = h5_attr_read(file, path, "mode_sets_seen", H5T_NATIVE_INT, 3, ints)) != DS_OK ||
        (status = h5_attr_read(file, path, "lambda_gamma", H5T_NATIVE_DOUBLE, 2, fl)) != DS_OK ||
        (status = h5_attr_read(file, path, "total", H5T_NATIVE_LLONG, 1, &tot)) != DS_OK)
        goto done;
    if (format != 1) {
        status = ds_error(DS_ERR_INPUT, "%s: format %d is not supported (1 is)", path, format);
        goto done;
    }
    if (tot != (long long)total) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: EWC state of a model with %lld parameter slots, this "
                          "model has %zu",
                          path, tot, total);
        goto done;
    }
    if (ints[0] != (int)e->mode || ints[1] < 0 || ints[1] > EWC_MAX_SETS ||
        (ints[0] == EWC_ONLINE && ints[1] > 1)) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: saved in mode %s with %d Fisher sets; "
                          "continual.ewc.mode is %s",
                          path, ints[0] == EWC_ONLINE ? "online" : "separate", ints[1],
                          e->mode == EWC_ONLINE ? "online" : "separate");
        goto done;
    }
    int ids[EWC_MAX_SETS] = {0};
    if (ints[1] > 0 && (status = h5_attr_read(file, path, "task_ids", H5T_NATIVE_INT,
                                              (hsize_t)ints[1], ids)) != DS_OK)
        goto done;
    free_sets(e);
    for (int k = 0; k < ints[1] && status == DS_OK; k++) {
        if ((status = ewc_add_set(e, ids[k])) != DS_OK) break;
        char name[32];
        snprintf(name, sizeof(name), "fisher_%d", k);
        status = h5_state_range(e, file, path, name, total, e->fisher[k], 0);
        snprintf(name, sizeof(name), "anchor_%d", k);
        if (status == DS_OK) status = h5_state_range(e, file, path, name, total, e->anchor[k], 0);
    }
    e->tasks_seen = ints[2];
done:
    H5Fclose(file);
    return status;
}

/* ---- layout-free file (format 2) ------------------------------------------------------------ */

int ewc_save_begin(const EwcState *e, const char *path)
{
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: cannot create", path);
    int status = DS_OK, ints[3] = {(int)e->mode, e->n_sets, e->tasks_seen};
    double fl[2] = {e->lambda, e->gamma};
    if ((status = h5_attr_write(file, "format", H5T_NATIVE_INT, 1, &(int){2})) != DS_OK ||
        (status = h5_attr_write(file, "mode_sets_seen", H5T_NATIVE_INT, 3, ints)) != DS_OK ||
        (status = h5_attr_write(file, "lambda_gamma", H5T_NATIVE_DOUBLE, 2, fl)) != DS_OK ||
        (e->n_sets > 0 && (status = h5_attr_write(file, "task_ids", H5T_NATIVE_INT,
                                                  (hsize_t)e->n_sets, e->task_id)) != DS_OK))
        status = ds_error(DS_ERR_INPUT, "%s: cannot write the attributes", path);
    for (int k = 0; k < e->n_sets && status == DS_OK; k++) {
        char name[32];
        for (int which = 0; which < 2 && status == DS_OK; which++) {
            snprintf(name, sizeof(name), "%s_%d", which ? "anchor" : "fisher", k);
            hid_t g = H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            if (g < 0) status = ds_error(DS_ERR_INPUT, "%s: cannot create group %s", path, name);
            else H5Gclose(g);
        }
    }
    if (H5Fclose(file) < 0 && status == DS_OK)
        status = ds_error(DS_ERR_INTERNAL, "%s: close failed", path);
    return status;
}

/* The hyperslab of the full tensor that this rank's slice of p covers. */
static void tensor_slab(const ParamInfo *p, hsize_t dims[2], hsize_t start[2], hsize_t count[2])
{
    for (int d = 0; d < p->ndim; d++) {
        dims[d] = (hsize_t)p->shape[d];
        start[d] = 0;
        count[d] = (hsize_t)p->shape[d];
    }
    if (p->split_dim >= 0) {
        start[p->split_dim] = (hsize_t)p->slice_start;
        count[p->split_dim] = (hsize_t)p->slice_len;
    }
}

/* Read or write this rank's slice of tensor p in group/<name>; buf holds p->numel floats. */
static int tensor_io(hid_t file, const char *path, const char *group, const ParamInfo *p,
                     float *buf, int write)
{
    char name[PARAM_NAME_MAX + 48];
    snprintf(name, sizeof(name), "%s/%s", group, p->name);
    hsize_t dims[2], start[2], count[2];
    tensor_slab(p, dims, start, count);
    hid_t d = -1;
    if (write && H5Lexists(file, name, H5P_DEFAULT) > 0) {
        d = H5Dopen2(file, name, H5P_DEFAULT); /* another tensor-parallel rank's slice is in */
    } else if (write) {
        /* tensor names hold dots, not slashes: the one group level exists */
        hid_t space = H5Screate_simple(p->ndim, dims, NULL);
        d = H5Dcreate2(file, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT,
                       H5P_DEFAULT);
        H5Sclose(space);
    } else {
        DS_TRY(hdf5_check_dataset(path, file, name)); /* before libhdf5 decodes it */
        H5E_BEGIN_TRY
        {
            d = H5Dopen2(file, name, H5P_DEFAULT);
        }
        H5E_END_TRY;
    }
    if (d < 0)
        return ds_error(DS_ERR_INPUT, "%s: dataset %s: %s", path, name,
                        write ? "cannot create" : "missing (a state of another model?)");
    hid_t fs = H5Dget_space(d);
    hsize_t have[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(fs);
    H5Sget_simple_extent_dims(fs, have, NULL);
    int status = DS_OK;
    hid_t stored = H5Dget_type(d);
    if (nd != p->ndim || have[0] != dims[0] || (nd == 2 && have[1] != dims[1])) {
        status = ds_error(DS_ERR_INPUT, "%s: dataset %s: shape differs from the model's", path,
                          name);
    } else if ((status = hdf5_check_number_type(stored, path, "dataset", name)) != DS_OK) {
        /* refused before libhdf5 converts to or from it */
    } else if (p->numel > 0) {
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        hid_t ms = H5Screate_simple(p->ndim, count, NULL);
        herr_t rc = write ? H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf)
                          : H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf);
        if (rc < 0)
            status = ds_error(DS_ERR_INPUT, "%s: dataset %s: %s failed", path, name,
                              write ? "write" : "read");
        H5Sclose(ms);
    }
    H5Tclose(stored);
    H5Sclose(fs);
    H5Dclose(d);
    return status;
}

int ewc_save_set(const char *path, const ParamTable *pt, int k, const float *fisher,
                 const float *anchor)
{
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: cannot open", path);
    int status = DS_OK;
    for (int which = 0; which < 2 && status == DS_OK; which++) {
        char group[32];
        snprintf(group, sizeof(group), "%s_%d", which ? "anchor" : "fisher", k);
        const float *src = which ? anchor : fisher;
        if (!src) continue; /* this half in another call */
        for (int i = 0; i < pt->count && status == DS_OK; i++) {
            const ParamInfo *p = &pt->items[i];
            if (p->tp_copy) continue; /* another tensor-parallel rank writes these values */
            status = tensor_io(file, path, group, p, (float *)(src + p->offset), 1);
        }
    }
    if (H5Fclose(file) < 0 && status == DS_OK)
        status = ds_error(DS_ERR_INTERNAL, "%s: close failed", path);
    return status;
}

int ewc_load_tensors(EwcState *e, const char *path, const ParamTable *pt)
{
    hid_t file = -1;
    /* libhdf5 trusts sizes in the file that these check first (data/hdf5_check.h) */
    struct stat st;
    if (stat(path, &st) == 0) DS_TRY(hdf5_check_root_attributes(path));
    H5E_BEGIN_TRY
    {
        file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    }
    H5E_END_TRY;
    if (file < 0) return ds_error(DS_ERR_INPUT, "%s: not a readable HDF5 file", path);
    int status = DS_OK, ints[3], format = 0;
    double fl[2];
    if ((status = h5_attr_read(file, path, "format", H5T_NATIVE_INT, 1, &format)) != DS_OK) {
        H5Fclose(file);
        return status;
    }
    if (format == 1) { /* a flat file of one layout */
        H5Fclose(file);
        return ewc_load(e, path, pt->total);
    }
    float *buf = NULL;
    if (format != 2) {
        status = ds_error(DS_ERR_INPUT, "%s: format %d is not supported (1 and 2 are)", path,
                          format);
        goto done;
    }
    if ((status = h5_attr_read(file, path, "mode_sets_seen", H5T_NATIVE_INT, 3, ints)) != DS_OK ||
        (status = h5_attr_read(file, path, "lambda_gamma", H5T_NATIVE_DOUBLE, 2, fl)) != DS_OK)
        goto done;
    if (ints[0] != (int)e->mode || ints[1] < 0 || ints[1] > EWC_MAX_SETS ||
        (ints[0] == EWC_ONLINE && ints[1] > 1) || ints[2] < ints[1]) {
        status = ds_error(DS_ERR_INPUT,
                          "%s: saved in mode %s with %d Fisher sets; "
                          "continual.ewc.mode is %s",
                          path, ints[0] == EWC_ONLINE ? "online" : "separate", ints[1],
                          e->mode == EWC_ONLINE ? "online" : "separate");
        goto done;
    }
    int ids[EWC_MAX_SETS] = {0};
    if (ints[1] > 0 && (status = h5_attr_read(file, path, "task_ids", H5T_NATIVE_INT,
                                              (hsize_t)ints[1], ids)) != DS_OK)
        goto done;
    size_t largest = 1;
    for (int i = 0; i < pt->count; i++)
        if (pt->items[i].numel > largest) largest = pt->items[i].numel;
    if (!(buf = ds_malloc(largest * sizeof(float)))) {
        status = DS_ERR_INTERNAL;
        goto done;
    }
    free_sets(e);
    const size_t n = e->hi - e->lo;
    for (int k = 0; k < ints[1] && status == DS_OK; k++) {
        if ((status = ewc_add_set(e, ids[k])) != DS_OK) break;
        for (int which = 0; which < 2 && status == DS_OK; which++) {
            char group[32];
            snprintf(group, sizeof(group), "%s_%d", which ? "anchor" : "fisher", k);
            float *dst = which ? e->anchor[k] : e->fisher[k];
            e->be->mem_zero(e->be, dst, n * sizeof(float));
            for (int i = 0; i < pt->count && status == DS_OK; i++) {
                const ParamInfo *p = &pt->items[i];
                /* the part of the tensor inside this rank's shard [lo, hi) */
                size_t b = p->offset > e->lo ? p->offset : e->lo;
                size_t end = p->offset + p->numel < e->hi ? p->offset + p->numel : e->hi;
                if (b >= end) continue;
                if ((status = tensor_io(file, path, group, p, buf, 0)) != DS_OK) break;
                /* from the host buffer straight into backend memory: no staging needed */
                e->be->mem_to_device(e->be, dst + (b - e->lo), buf + (b - p->offset),
                                     (end - b) * sizeof(float));
            }
        }
    }
    e->tasks_seen = ints[2];
done:
    free(buf);
    H5Fclose(file);
    return status;
}

int ewc_memory_estimate(const ModelConfig *mc, int B, int T, int tp, int dp, int zero, int n_sets,
                        size_t *bytes)
{
    ModelMemory mm;
    DS_TRY(model_memory_estimate(mc, B, T, tp, dp, zero, &mm));
    *bytes = mm.optimizer * (size_t)n_sets; /* two floats per element of the shard, as m and v */
    return DS_OK;
}
