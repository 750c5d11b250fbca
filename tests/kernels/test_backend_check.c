/* test_backend_check.c: backend_check accepts the CPU backend's table and refuses a table with a
 * required op missing, or with part of an optional group, naming the op. */
#include <criterion/criterion.h>
#include <string.h>

#include "kernels/ops.h"
#include "trainer/common.h"

static void refresh_nothing(const float *params)
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
