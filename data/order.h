/* order.h: deterministic sample orders for the readers. A keyed Feistel permutation of [0, n)
 * in O(1) memory, and the blocked order built on it (blocks of neighbouring samples permuted,
 * samples shuffled inside groups of blocks) that keeps reads local enough for the HDF5 chunk
 * cache. Both are pure functions of (seed, epoch, n): no state beyond small caches. */
#ifndef DSTRAIN_ORDER_H
#define DSTRAIN_ORDER_H

#include <stdint.h>

typedef struct Permutation {
    int64_t n;
    int half_bits;
    uint64_t half_mask;
    uint64_t keys[4];
} Permutation;

uint64_t order_mix64(uint64_t x);
/* A bijection on [0, n) keyed by (seed, epoch); n >= 1. */
void permutation_init(Permutation *p, int64_t n, uint64_t seed, int64_t epoch);
int64_t permutation_apply(const Permutation *p, int64_t i);

/* Blocked order of [0, n): samples are cut into blocks of `block` neighbours (the tail that
 * does not fill a block stays apart); blocks are permuted, then taken `group` blocks at a time,
 * and the samples of those blocks are shuffled together. Reads of one group touch `group`
 * regions of the file, so the chunk cache serves them. */
typedef struct BlockedOrder {
    int64_t n, block, group;
    int64_t full_blocks, full_groups, rest; /* rest: samples after the full groups */
    uint64_t seed;
    int64_t epoch, cached_group; /* caches: the permutations below belong to these */
    Permutation blocks, local;
} BlockedOrder;

void blocked_order_init(BlockedOrder *o, int64_t n, int64_t block, int64_t group, uint64_t seed);
/* The sample at position p (0 <= p < n) of epoch `epoch`. */
int64_t blocked_order_sample(BlockedOrder *o, int64_t epoch, int64_t p);

#endif
