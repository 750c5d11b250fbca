/* order.c: keyed permutations and the blocked sample order (see order.h). The permutation is a
 * 4-round Feistel network on the smallest even-bit domain 2^(2h) >= n with cycle walking
 * (re-apply until the value lands in [0, n)): a bijection computed in O(1) memory, so an epoch
 * over billions of samples needs no index array. The domain is < 4n, so a walk takes fewer than
 * 4 rounds on average. */
#include "data/order.h"

uint64_t order_mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

void permutation_init(Permutation *p, int64_t n, uint64_t seed, int64_t epoch)
{
    int bits = 2;
    while (bits < 62 && (1ULL << bits) < (uint64_t)n)
        bits++;
    if (bits & 1) bits++;
    p->n = n;
    p->half_bits = bits / 2;
    p->half_mask = (1ULL << p->half_bits) - 1;
    uint64_t base = order_mix64(seed) ^ order_mix64((uint64_t)epoch * 0xD1B54A32D192ED03ULL + 1);
    for (int r = 0; r < 4; r++)
        p->keys[r] = order_mix64(base + (uint64_t)r * 0x9E3779B97F4A7C15ULL);
}

static uint64_t permutation_round_trip(const Permutation *p, uint64_t x)
{
    uint64_t left = x >> p->half_bits, right = x & p->half_mask;
    for (int r = 0; r < 4; r++) {
        uint64_t next = left ^ (order_mix64(right ^ p->keys[r]) & p->half_mask);
        left = right;
        right = next;
    }
    return (left << p->half_bits) | right;
}

int64_t permutation_apply(const Permutation *p, int64_t i)
{
    uint64_t x = (uint64_t)i;
    do {
        x = permutation_round_trip(p, x);
    } while (x >= (uint64_t)p->n);
    return (int64_t)x;
}

void blocked_order_init(BlockedOrder *o, int64_t n, int64_t block, int64_t group, uint64_t seed)
{
    o->n = n;
    o->block = block < 1 ? 1 : block;
    o->group = group < 1 ? 1 : group;
    o->full_blocks = n / o->block;
    o->full_groups = o->full_blocks / o->group;
    o->rest = n - o->full_groups * o->group * o->block;
    o->seed = seed;
    o->epoch = -1;
    o->cached_group = -1;
}

int64_t blocked_order_sample(BlockedOrder *o, int64_t epoch, int64_t p)
{
    const int64_t K = o->block, span = o->block * o->group;
    if (epoch != o->epoch) {
        if (o->full_blocks > 0) permutation_init(&o->blocks, o->full_blocks, o->seed, epoch);
        o->epoch = epoch;
        o->cached_group = -1;
    }
    int64_t g = p / span;
    if (g > o->full_groups) g = o->full_groups;
    if (g != o->cached_group) {
        int64_t size = g < o->full_groups ? span : o->rest;
        permutation_init(&o->local, size, o->seed ^ order_mix64((uint64_t)g + 0x5151), epoch);
        o->cached_group = g;
    }
    int64_t q = permutation_apply(&o->local, p - g * span);
    /* Blocks of group g are positions [g * group, (g + 1) * group) of the block permutation;
     * the rest group holds the leftover full blocks, then the tail samples in file order. */
    int64_t blocks_here = g < o->full_groups ? o->group : o->full_blocks - g * o->group;
    if (q < blocks_here * K) {
        int64_t block = permutation_apply(&o->blocks, g * o->group + q / K);
        return block * K + q % K;
    }
    return o->full_blocks * K + (q - blocks_here * K);
}
