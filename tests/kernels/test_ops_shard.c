/* test_ops_shard.c: the vocab-parallel ops of the CPU backend. The vocabulary is cut into 1, 2,
 * 3 and 4 shards and the all-reduces between the parts are done here by hand; the result must
 * equal the unsharded embedding and cross_entropy (losses and gradients), including rows of
 * weight 0 and a weighted row whose target is outside the vocabulary. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

static uint64_t rng_state = 88172645463325252ull;
static float urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

enum { N = 9, V = 24, C = 5 };

static void run_cross_entropy_sharded(int shards, const float *logits, const int32_t *targets,
                                      const float *weights, float *losses, float *grads)
{
    const Backend *be = backend_cpu();
    const int Vl = V / shards;
    float *local[4], row_max[N], stats[N * 3];
    for (int s = 0; s < shards; s++) {
        local[s] = malloc(sizeof(float) * N * Vl);
        for (int i = 0; i < N; i++)
            memcpy(local[s] + i * Vl, logits + i * V + s * Vl, sizeof(float) * Vl);
    }
    /* part 1 and the MAX all-reduce */
    float part_max[4][N];
    for (int s = 0; s < shards; s++)
        be->cross_entropy_shard_max(be, part_max[s], local[s], N, Vl);
    for (int i = 0; i < N; i++) {
        row_max[i] = part_max[0][i];
        for (int s = 1; s < shards; s++)
            row_max[i] = fmaxf(row_max[i], part_max[s][i]);
    }
    /* part 2 and the SUM all-reduce */
    memset(stats, 0, sizeof(stats));
    for (int s = 0; s < shards; s++) {
        float part[N * 3];
        be->cross_entropy_shard_stats(be, part, local[s], row_max, targets, N, Vl, s * Vl);
        for (int k = 0; k < N * 3; k++)
            stats[k] += part[k];
    }
    /* part 3 on every shard: each writes its own slice of the gradient; losses agree */
    for (int s = 0; s < shards; s++) {
        float shard_losses[N];
        be->cross_entropy_shard_finish(be, shard_losses, local[s], row_max, stats, targets, weights,
                                       N, Vl, s * Vl, 1);
        for (int i = 0; i < N; i++) {
            if (s == 0)
                losses[i] = shard_losses[i];
            else if (!isnan(losses[i]))
                cr_assert_eq(shard_losses[i], losses[i], "shard %d row %d loss differs", s, i);
            memcpy(grads + i * V + s * Vl, local[s] + i * Vl, sizeof(float) * Vl);
        }
        free(local[s]);
    }
}

Test(ops_shard, cross_entropy_in_shards_equals_the_whole)
{
    float logits[N * V], ref_grad[N * V], ref_loss[N], weights[N];
    int32_t targets[N];
    for (int k = 0; k < N * V; k++)
        logits[k] = 4.0f * urand();
    logits[2 * V + 17] = 60.0f; /* one peaked row: the maximum sits in a later shard */
    for (int i = 0; i < N; i++) {
        targets[i] = (i * 7 + 3) % V;
        weights[i] = 0.1f + 0.05f * i;
    }
    weights[4] = 0.0f;
    targets[4] = -100;  /* ignored row: anything goes */
    targets[6] = V + 3; /* weighted and out of range: NaN loss, zero gradient */
    memcpy(ref_grad, logits, sizeof(logits));
    backend_cpu()->cross_entropy(backend_cpu(), ref_loss, ref_grad, targets, weights, N, V, 1);
    const int shard_counts[] = {1, 2, 3, 4};
    for (int c = 0; c < 4; c++) {
        float loss[N], grad[N * V];
        run_cross_entropy_sharded(shard_counts[c], logits, targets, weights, loss, grad);
        for (int i = 0; i < N; i++) {
            if (i == 6) {
                cr_assert(isnan(loss[i]), "out-of-range target must give NaN");
            } else {
                cr_assert_float_eq(loss[i], ref_loss[i], 2e-6f * (1 + fabsf(ref_loss[i])),
                                   "%d shards, row %d: loss %.9g vs %.9g", shard_counts[c], i,
                                   loss[i], ref_loss[i]);
            }
            for (int j = 0; j < V; j++)
                cr_assert_float_eq(grad[i * V + j], ref_grad[i * V + j], 1e-7f,
                                   "%d shards, grad [%d,%d]: %g vs %g", shard_counts[c], i, j,
                                   grad[i * V + j], ref_grad[i * V + j]);
        }
        for (int j = 0; j < V; j++) {
            cr_assert_eq(grad[4 * V + j], 0.0f, "weight-0 row has no gradient");
            cr_assert_eq(grad[6 * V + j], 0.0f, "unscorable row has no gradient");
        }
    }
}

Test(ops_shard, embedding_shards_sum_to_the_whole_and_scatter_only_their_rows)
{
    const Backend *be = backend_cpu();
    float table[V * C], full[N * C], dout[N * C], dtable_ref[V * C];
    int32_t tokens[N] = {0, 5, 23, 5, 12, 11, 6, 17, 18};
    for (int k = 0; k < V * C; k++)
        table[k] = urand();
    for (int k = 0; k < N * C; k++)
        dout[k] = urand();
    be->embedding_forward(be, full, tokens, table, N, C);
    memset(dtable_ref, 0, sizeof(dtable_ref));
    be->embedding_backward(be, dtable_ref, dout, tokens, N, C);
    for (int shards = 1; shards <= 4; shards *= 2) {
        const int Vl = V / shards;
        float sum[N * C] = {0}, dtable[V * C];
        for (int k = 0; k < V * C; k++)
            dtable[k] = 0.5f; /* accumulates on top */
        for (int s = 0; s < shards; s++) {
            float part[N * C];
            for (int k = 0; k < N * C; k++)
                part[k] = NAN; /* every row is written */
            be->embedding_forward_shard(be, part, tokens, table + s * Vl * C, N, C, s * Vl, Vl);
            for (int i = 0; i < N; i++) {
                int mine = tokens[i] >= s * Vl && tokens[i] < (s + 1) * Vl;
                for (int j = 0; j < C; j++) {
                    if (!mine) cr_assert_eq(part[i * C + j], 0.0f);
                    sum[i * C + j] += part[i * C + j];
                }
            }
            be->embedding_backward_shard(be, dtable + s * Vl * C, dout, tokens, N, C, s * Vl, Vl);
        }
        for (int k = 0; k < N * C; k++)
            cr_assert_eq(sum[k], full[k]);
        for (int k = 0; k < V * C; k++)
            cr_assert_float_eq(dtable[k], dtable_ref[k] + 0.5f, 1e-6f, "%d shards dtable[%d]",
                               shards, k);
    }
}
