/* backend.c: making a backend from the config's options (backend_create), and
 * checking that its table is whole before the model uses it (backend_check), and host access to
 * a backend's memory through a staging buffer (backend_stage). Every op the model
 * may call is either required or part of a group that a backend has whole or not at all (the
 * vocab-parallel ops, mixed precision, the latent-attention and expert ops); moe_balance and
 * mem_info alone may be missing (model_init refuses moe.balance_loss without the first; a
 * backend without the second computes in host memory). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#ifdef DSTRAIN_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#include "trainer/common.h"

typedef struct BackendEntry {
    size_t offset;
    const char *name;
    int group; /* 0: required; otherwise all of a group or none */
} BackendEntry;

#define ENTRY(field, group)                                                                        \
    {                                                                                              \
        offsetof(Backend, field), #field, group                                                    \
    }

/* OPTIONAL: each may be missing on its own (backend_check does not ask for it); listed so that
 * the op list below names every op of the table (backend_op_name). */
enum { REQUIRED = 0, TENSOR_PARALLEL, MIXED_PRECISION, LATENT_AND_EXPERTS, OPTIONAL, GROUPS };

static const BackendEntry entries[] = {
    ENTRY(act_size, REQUIRED),
    ENTRY(matmul_forward, REQUIRED),
    ENTRY(matmul_backward, REQUIRED),
    ENTRY(rmsnorm_forward, REQUIRED),
    ENTRY(add_rmsnorm_forward, REQUIRED),
    ENTRY(rmsnorm_backward, REQUIRED),
    ENTRY(rope_forward, REQUIRED),
    ENTRY(rope_backward, REQUIRED),
    ENTRY(attention_forward, REQUIRED),
    ENTRY(attention_backward, REQUIRED),
    ENTRY(swiglu_forward, REQUIRED),
    ENTRY(swiglu_backward, REQUIRED),
    ENTRY(embedding_forward, REQUIRED),
    ENTRY(embedding_backward, REQUIRED),
    ENTRY(cross_entropy, REQUIRED),
    ENTRY(add, REQUIRED),
    ENTRY(sum_squares, REQUIRED),
    ENTRY(sum_squares_batch, REQUIRED),
    ENTRY(scale, REQUIRED),
    ENTRY(adamw_update, REQUIRED),
    ENTRY(mem_alloc, REQUIRED),
    ENTRY(mem_free, REQUIRED),
    ENTRY(mem_to_device, REQUIRED),
    ENTRY(mem_to_host, REQUIRED),
    ENTRY(mem_zero, REQUIRED),
    ENTRY(mem_copy, REQUIRED),
    ENTRY(adamw_ewc_update, REQUIRED),
    ENTRY(embedding_forward_shard, TENSOR_PARALLEL),
    ENTRY(embedding_backward_shard, TENSOR_PARALLEL),
    ENTRY(cross_entropy_shard_max, TENSOR_PARALLEL),
    ENTRY(cross_entropy_shard_stats, TENSOR_PARALLEL),
    ENTRY(cross_entropy_shard_finish, TENSOR_PARALLEL),
    ENTRY(weights_attach, MIXED_PRECISION),
    ENTRY(weights_refresh, MIXED_PRECISION),
    ENTRY(weights_detach, MIXED_PRECISION),
    ENTRY(weights_touched, MIXED_PRECISION),
    ENTRY(copy_block, LATENT_AND_EXPERTS),
    ENTRY(act_to_f32, LATENT_AND_EXPERTS),
    ENTRY(rope_block_forward, LATENT_AND_EXPERTS),
    ENTRY(rope_block_backward, LATENT_AND_EXPERTS),
    ENTRY(attention_forward_dv, LATENT_AND_EXPERTS),
    ENTRY(attention_backward_dv, LATENT_AND_EXPERTS),
    ENTRY(moe_route, LATENT_AND_EXPERTS),
    ENTRY(moe_route_backward, LATENT_AND_EXPERTS),
    ENTRY(moe_permute, LATENT_AND_EXPERTS),
    ENTRY(gather_rows, LATENT_AND_EXPERTS),
    ENTRY(scatter_add_rows, LATENT_AND_EXPERTS),
    ENTRY(rows_dot, LATENT_AND_EXPERTS),
    ENTRY(moe_experts_forward, LATENT_AND_EXPERTS),
    ENTRY(moe_experts_backward, LATENT_AND_EXPERTS),
    ENTRY(moe_balance, OPTIONAL),
    ENTRY(mem_info, OPTIONAL),
};

static int present(const Backend *be, const BackendEntry *e)
{
    void (*fn)(void);
    memcpy(&fn, (const char *)be + e->offset, sizeof(fn));
    return fn != NULL;
}

int backend_check(const Backend *be)
{
    if (!be || !be->name) return ds_error(DS_ERR_INTERNAL, "backend: the table is not set up");
    /* the first entry found and the first missing, per group */
    const BackendEntry *have[GROUPS] = {0}, *missing[GROUPS] = {0};
    for (size_t i = 0; i < DS_ARRAY_LEN(entries); i++) {
        const BackendEntry *e = &entries[i];
        const BackendEntry **slot = present(be, e) ? &have[e->group] : &missing[e->group];
        if (!*slot) *slot = e;
    }
    if (missing[REQUIRED])
        return ds_error(DS_ERR_INTERNAL, "backend %s: %s is missing", be->name,
                        missing[REQUIRED]->name);
    for (int g = 1; g < GROUPS; g++)
        if (g != OPTIONAL && have[g] && missing[g])
            return ds_error(DS_ERR_INTERNAL, "backend %s: it has %s but not %s (of the same group)",
                            be->name, have[g]->name, missing[g]->name);
    return DS_OK;
}

size_t backend_op_count(void)
{
    return DS_ARRAY_LEN(entries);
}

const char *backend_op_name(size_t i)
{
    return i < DS_ARRAY_LEN(entries) ? entries[i].name : NULL;
}

int backend_op_present(const Backend *be, size_t i)
{
    return i < DS_ARRAY_LEN(entries) && present(be, &entries[i]);
}

int backend_stage(const Backend *be, float *mem, size_t n, StageHow how, size_t chunk,
                  float *staging, StageFn fn, void *ctx)
{
    if (n == 0) return DS_OK;
    if (be->host_memory) return fn(ctx, mem, 0, n);
    const size_t piece = chunk && chunk < n ? chunk : n;
    float *own = staging ? NULL : ds_aligned_alloc(256, piece * sizeof(float));
    float *host = staging ? staging : own;
    if (!host) return DS_ERR_INTERNAL;
    int status = DS_OK;
    for (size_t first = 0; first < n && status == DS_OK; first += piece) {
        const size_t len = n - first < piece ? n - first : piece;
        if (how & STAGE_READ) be->mem_to_host(be, host, mem + first, len * sizeof(float));
        status = fn(ctx, host, first, len);
        if (status == DS_OK && (how & STAGE_WRITE))
            be->mem_to_device(be, mem + first, host, len * sizeof(float));
    }
    free(own);
    return status;
}

const float *backend_view(const Backend *be, const float *src, size_t n, float *buf)
{
    if (be->host_memory) return src;
    be->mem_to_host(be, buf, src, n * sizeof(float));
    return buf;
}

int backend_create(const BackendOptions *o, const Backend **out)
{
    *out = NULL;
    const char *device = o->device && o->device[0] ? o->device : "cpu";
    const char *precision = o->precision && o->precision[0] ? o->precision : "auto";
    if (strcmp(device, "cpu") == 0) {
        if (strcmp(precision, "auto") != 0 && strcmp(precision, "fp32") != 0)
            return ds_error(DS_ERR_INPUT,
                            "precision: %s needs device: cuda (the CPU backend computes in fp32 "
                            "only; use auto or fp32)",
                            precision);
        *out = backend_cpu();
        return backend_check(*out);
    }
    if (strcmp(device, "cuda") == 0) {
#ifdef DSTRAIN_HAVE_CUDA
        const char *attention = o->attention && o->attention[0] ? o->attention : "flash";
        const char *experts = o->experts && o->experts[0] ? o->experts : "streams";
        const char *copy = o->weight_copy && o->weight_copy[0] && strcmp(o->weight_copy, "auto")
                               ? o->weight_copy
                               : "full";
        /* auto: mixed precision */
        DS_TRY(cuda_backend_create(strcmp(precision, "auto") == 0 ? "bf16" : precision, attention,
                                   experts, copy, out));
        const int rc = backend_check(*out);
        if (rc != DS_OK) {
            backend_free(*out);
            *out = NULL;
        }
        return rc;
#else
        return ds_error(DS_ERR_INPUT, "device: cuda: this dstrain was built without CUDA "
                                      "(nvcc was not found, or -DDSTRAIN_CUDA=OFF)");
#endif
    }
    return ds_error(DS_ERR_INPUT, "device: unknown device \"%s\" (known: cpu, cuda)", device);
}

void backend_free(const Backend *be)
{
    if (!be || !be->ctx) return; /* the CPU backend is one static table */
#ifdef DSTRAIN_HAVE_CUDA
    if (strcmp(be->name, "cuda") == 0) cuda_backend_free(be);
#endif
}
