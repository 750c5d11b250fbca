/* test_backend_check.c: backend_check accepts the CPU backend's table and refuses a table with a
 * required op missing, or with part of an optional group, naming the op; backend_stage and
 * backend_view reach a backend's memory from the host on a host backend (in place) and on one
 * whose memory must be staged (the CPU table with host_memory off, its copies counted). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "tests/kernels/staged_backend.h"
#include "trainer/common.h"

static void refresh_nothing(const Backend *be, const float *params)
{
    (void)params;
}

Test(backend_check, the_cpu_table_is_whole)
{
    cr_assert_eq(backend_check(backend_cpu()), DS_OK, "%s", ds_last_error());
}

Test(backend_check, a_missing_required_op_is_named)
{
    Backend b = *backend_cpu();
    b.rmsnorm_backward = NULL;
    cr_assert_eq(backend_check(&b), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "backend cpu: rmsnorm_backward is missing"), "%s",
              ds_last_error());
}

Test(backend_check, groups_are_whole_or_absent)
{
    Backend b = *backend_cpu();
    /* none of the latent-attention and expert group: a backend that does not run DeepSeek */
    b.copy_block = NULL, b.act_to_f32 = NULL, b.rope_block_forward = NULL;
    b.rope_block_backward = NULL, b.attention_forward_dv = NULL, b.attention_backward_dv = NULL;
    b.moe_route = NULL, b.moe_route_backward = NULL, b.moe_permute = NULL, b.gather_rows = NULL;
    b.scatter_add_rows = NULL, b.rows_dot = NULL, b.moe_experts_forward = NULL;
    b.moe_experts_backward = NULL, b.moe_balance = NULL;
    cr_assert_eq(backend_check(&b), DS_OK, "%s", ds_last_error());
    /* part of it */
    b.moe_route = backend_cpu()->moe_route;
    cr_assert_eq(backend_check(&b), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "it has moe_route but not copy_block"), "%s",
              ds_last_error());
    /* mixed precision is absent on the CPU; one of its three alone is refused */
    b = *backend_cpu();
    cr_assert_null(b.weights_attach);
    b.weights_refresh = refresh_nothing;
    cr_assert_eq(backend_check(&b), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "it has weights_refresh but not weights_attach"), "%s",
              ds_last_error());
}

Test(backend_check, mem_copy_is_required)
{
    Backend b = *backend_cpu();
    b.mem_copy = NULL;
    cr_assert_eq(backend_check(&b), DS_ERR_INTERNAL);
    cr_assert(strstr(ds_last_error(), "mem_copy is missing"), "%s", ds_last_error());
}

/* ---- backend_stage / backend_view ---------------------------------------------------------- */

typedef struct {
    float *mem;      /* the backend memory being staged (to tell a copy from the memory) */
    size_t next;     /* the first index the next piece must start at */
    size_t longest;  /* the longest piece seen */
    int pieces, in_place, fail_at;
    double sum;      /* of the values read */
} Visit;

/* Reads each value (checks order and contiguity), then writes 2 x value + first index. */
static int visit(void *ctx, float *host, size_t first, size_t len)
{
    Visit *v = ctx;
    cr_assert_eq(first, v->next, "piece at %zu, expected %zu", first, v->next);
    v->next = first + len;
    if (len > v->longest) v->longest = len;
    v->in_place |= host == v->mem + first;
    if (++v->pieces == v->fail_at) return ds_error(DS_ERR_INPUT, "stop at piece %d", v->pieces);
    for (size_t i = 0; i < len; i++) {
        v->sum += host[i];
        host[i] = 2.0f * host[i] + (float)(first + i);
    }
    return DS_OK;
}

/* Fills a piece without reading it: 10 x index. */
static int fill(void *ctx, float *host, size_t first, size_t len)
{
    Visit *v = ctx;
    cr_assert_eq(first, v->next);
    v->next = first + len;
    v->pieces++;
    for (size_t i = 0; i < len; i++)
        host[i] = 10.0f * (float)(first + i);
    return DS_OK;
}

static float *ramp(size_t n)
{
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)i;
    return x;
}

Test(backend_stage, a_host_backend_is_visited_in_place_in_one_piece)
{
    const size_t n = 1000;
    float *x = ramp(n);
    Visit v = {.mem = x};
    cr_assert_eq(backend_stage(backend_cpu(), x, n, STAGE_UPDATE, 64, NULL, visit, &v), DS_OK);
    cr_assert_eq(v.pieces, 1);
    cr_assert(v.in_place);
    cr_assert_float_eq(v.sum, n * (n - 1) / 2.0, 0.5);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(x[i], 3.0f * (float)i);
    cr_assert_eq(backend_view(backend_cpu(), x, n, NULL), x);
    free(x);
}

Test(backend_stage, update_copies_each_chunk_both_ways)
{
    const size_t n = 1000, chunk = 300; /* 300, 300, 300, 100 */
    StagedCounts counts;
    Backend b = staged_backend("cpu-staged", &counts);
    float *x = ramp(n), staging[300];
    Visit v = {.mem = x};
    cr_assert_eq(backend_stage(&b, x, n, STAGE_UPDATE, chunk, staging, visit, &v), DS_OK);
    cr_assert_eq(v.pieces, 4);
    cr_assert_eq(v.longest, chunk);
    cr_assert_not(v.in_place);
    cr_assert_eq(v.next, n);
    cr_assert_float_eq(v.sum, n * (n - 1) / 2.0, 0.5);
    cr_assert_eq(counts.to_host, n * sizeof(float));
    cr_assert_eq(counts.to_device, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(x[i], 3.0f * (float)i, "x[%zu] = %g", i, x[i]);
    free(x);
}

Test(backend_stage, read_leaves_the_memory_and_write_does_not_read_it)
{
    const size_t n = 777;
    StagedCounts counts;
    Backend b = staged_backend("cpu-staged", &counts);
    float *x = ramp(n);
    Visit v = {.mem = x};
    /* read: the staging buffer is allocated here (NULL), the whole range one piece (chunk 0) */
    cr_assert_eq(backend_stage(&b, x, n, STAGE_READ, 0, NULL, visit, &v), DS_OK);
    cr_assert_eq(v.pieces, 1);
    cr_assert_float_eq(v.sum, n * (n - 1) / 2.0, 0.5);
    cr_assert_eq(counts.to_host, n * sizeof(float));
    cr_assert_eq(counts.to_device, 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(x[i], (float)i);
    /* write: nothing is copied in, every piece of what fn fills goes out */
    counts.to_host = 0;
    v = (Visit){.mem = x};
    cr_assert_eq(backend_stage(&b, x, n, STAGE_WRITE, 100, NULL, fill, &v), DS_OK);
    cr_assert_eq(v.pieces, 8);
    cr_assert_eq(v.next, n);
    cr_assert_eq(counts.to_host, 0);
    cr_assert_eq(counts.to_device, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(x[i], 10.0f * (float)i, "x[%zu] = %g", i, x[i]);
    free(x);
}

Test(backend_stage, the_first_error_stops_and_is_returned)
{
    const size_t n = 1000;
    StagedCounts counts;
    Backend b = staged_backend("cpu-staged", &counts);
    float *x = ramp(n);
    Visit v = {.mem = x, .fail_at = 2};
    cr_assert_eq(backend_stage(&b, x, n, STAGE_UPDATE, 400, NULL, visit, &v), DS_ERR_INPUT);
    cr_assert(strstr(ds_last_error(), "stop at piece 2"), "%s", ds_last_error());
    cr_assert_eq(v.pieces, 2);
    /* the first piece was written back, the failed one and the rest were not */
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(x[i], i < 400 ? 3.0f * (float)i : (float)i, "x[%zu] = %g", i, x[i]);
    /* nothing to visit: fn is not called */
    v = (Visit){.mem = x, .fail_at = 1};
    cr_assert_eq(backend_stage(&b, x, 0, STAGE_UPDATE, 400, NULL, visit, &v), DS_OK);
    cr_assert_eq(v.pieces, 0);
    free(x);
}

Test(backend_stage, view_copies_on_a_device_only)
{
    StagedCounts counts;
    Backend b = staged_backend("cpu-staged", &counts);
    float x[5] = {1, 2, 3, 4, 5}, buf[5] = {0};
    const float *h = backend_view(&b, x, 5, buf);
    cr_assert_eq(h, buf);
    cr_assert_eq(counts.to_host, sizeof(x));
    for (int i = 0; i < 5; i++)
        cr_assert_eq(buf[i], x[i]);
}

Test(backend, each_op_is_given_the_table_it_was_called_through)
{
    /* two tables over one set of functions, each with its own context: a copy through one
     * counts in that one only (what lets two CUDA backends live side by side) */
    StagedCounts ca, cb;
    Backend a = staged_backend("cpu-staged-a", &ca), b = staged_backend("cpu-staged-b", &cb);
    float x[7] = {1, 2, 3, 4, 5, 6, 7}, y[7] = {0};
    a.mem_to_host(&a, y, x, sizeof(x));
    b.mem_to_device(&b, y, x, 3 * sizeof(float));
    b.mem_to_device(&b, y, x, 2 * sizeof(float));
    cr_assert_eq(ca.to_host, sizeof(x));
    cr_assert_eq(ca.to_device, 0);
    cr_assert_eq(cb.to_host, 0);
    cr_assert_eq(cb.to_device, 5 * sizeof(float));
    for (int i = 0; i < 7; i++)
        cr_assert_eq(y[i], x[i]);
    /* backend_stage reaches the context through the table it is given */
    float staging[4];
    Visit v = {.mem = x};
    cr_assert_eq(backend_stage(&b, x, 7, STAGE_READ, 4, staging, visit, &v), DS_OK);
    cr_assert_eq(v.pieces, 2);
    cr_assert_eq(cb.to_host, sizeof(x));
    cr_assert_eq(ca.to_host, sizeof(x));
}

Test(backend, create_and_free)
{
    /* the CPU backend: the one static table, no context; backend_free leaves it usable */
    const Backend *be = NULL;
    cr_assert_eq(backend_create(&(BackendOptions){.device = "cpu"}, &be), DS_OK);
    cr_assert_eq(be, backend_cpu());
    cr_assert_null(be->ctx);
    backend_free(be);
    backend_free(NULL);
    float s = be->sum_squares(be, (const float[]){3, 4}, 2);
    cr_assert_float_eq(s, 25.0, 1e-12);
}
