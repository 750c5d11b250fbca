/* test_dirty_ranges.c: kernels/dirty_ranges.h, the written ranges the CUDA backend's weight
 * copies round again: kept sorted and disjoint whatever the order of the writes, merged where
 * they overlap or touch, and past DIRTY_RANGES_MAX the closest two merged, so that what the set
 * covers always includes every element written (checked against a bitmap of the writes). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "kernels/dirty_ranges.h"

/* ranges sorted, disjoint and apart (a touching pair would have been merged), and covering
 * every element marked in written[n] */
static void check_invariants(const DirtyRanges *d, const unsigned char *written, size_t n)
{
    cr_assert(d->count >= 0 && d->count <= DIRTY_RANGES_MAX, "count %d", d->count);
    for (int i = 0; i < d->count; i++) {
        cr_assert(d->lo[i] < d->hi[i], "range %d empty: [%zu, %zu)", i, d->lo[i], d->hi[i]);
        if (i > 0)
            cr_assert(d->hi[i - 1] < d->lo[i], "ranges %d and %d not apart: %zu, %zu", i - 1, i,
                      d->hi[i - 1], d->lo[i]);
    }
    for (size_t e = 0; e < n; e++) {
        if (!written[e]) continue;
        int covered = 0;
        for (int i = 0; i < d->count; i++)
            covered |= d->lo[i] <= e && e < d->hi[i];
        cr_assert(covered, "element %zu written but not covered", e);
    }
}

static void add(DirtyRanges *d, unsigned char *written, size_t lo, size_t hi)
{
    dirty_ranges_add(d, lo, hi);
    for (size_t e = lo; e < hi; e++)
        written[e] = 1;
}

Test(dirty_ranges, out_of_order_writes_stay_sorted_and_apart)
{
    DirtyRanges d;
    dirty_ranges_clear(&d);
    unsigned char w[100] = {0};
    add(&d, w, 50, 52);
    add(&d, w, 10, 12);
    add(&d, w, 80, 81);
    add(&d, w, 30, 40);
    check_invariants(&d, w, 100);
    cr_assert_eq(d.count, 4);
    cr_assert(d.lo[0] == 10 && d.hi[0] == 12 && d.lo[1] == 30 && d.hi[1] == 40);
    cr_assert(d.lo[2] == 50 && d.hi[2] == 52 && d.lo[3] == 80 && d.hi[3] == 81);
    cr_assert_eq(dirty_ranges_elements(&d), 2 + 10 + 2 + 1);
    dirty_ranges_add(&d, 5, 5); /* empty: nothing */
    cr_assert_eq(d.count, 4);
}

Test(dirty_ranges, touching_and_overlapping_writes_merge)
{
    DirtyRanges d;
    dirty_ranges_clear(&d);
    unsigned char w[100] = {0};
    add(&d, w, 15, 16);
    add(&d, w, 16, 17); /* touches: one range of two */
    cr_assert(d.count == 1 && d.lo[0] == 15 && d.hi[0] == 17);
    add(&d, w, 20, 25);
    add(&d, w, 40, 45);
    add(&d, w, 60, 61);
    add(&d, w, 22, 42); /* spans the second and third: one range 20..45 */
    check_invariants(&d, w, 100);
    cr_assert_eq(d.count, 3);
    cr_assert(d.lo[1] == 20 && d.hi[1] == 45, "[%zu, %zu)", d.lo[1], d.hi[1]);
    add(&d, w, 0, 100); /* everything: one range */
    cr_assert(d.count == 1 && d.lo[0] == 0 && d.hi[0] == 100);
    dirty_ranges_clear(&d);
    cr_assert_eq(dirty_ranges_elements(&d), 0);
}

Test(dirty_ranges, past_the_limit_the_closest_two_merge)
{
    DirtyRanges d;
    dirty_ranges_clear(&d);
    unsigned char w[4000] = {0};
    /* DIRTY_RANGES_MAX single elements 30 apart, then one more 10 past the third: the gap of 9
     * to the third is the smallest, so those two merge and nothing else moves */
    for (int i = 0; i < DIRTY_RANGES_MAX; i++)
        add(&d, w, 15 + 30 * (size_t)i, 16 + 30 * (size_t)i);
    cr_assert_eq(d.count, DIRTY_RANGES_MAX);
    add(&d, w, 85, 86);
    check_invariants(&d, w, 4000);
    cr_assert_eq(d.count, DIRTY_RANGES_MAX);
    cr_assert(d.lo[2] == 75 && d.hi[2] == 86, "[%zu, %zu)", d.lo[2], d.hi[2]);
    cr_assert_eq(dirty_ranges_elements(&d), DIRTY_RANGES_MAX - 1 + 11);
    /* equal gaps: the first pair merges (the weight-copy test's 65 writes 30 apart) */
    dirty_ranges_clear(&d);
    memset(w, 0, sizeof(w));
    for (int i = 0; i <= DIRTY_RANGES_MAX; i++)
        add(&d, w, 15 + 30 * (size_t)i, 16 + 30 * (size_t)i);
    check_invariants(&d, w, 4000);
    cr_assert(d.lo[0] == 15 && d.hi[0] == 46, "[%zu, %zu)", d.lo[0], d.hi[0]);
    cr_assert_eq(dirty_ranges_elements(&d), 31 + DIRTY_RANGES_MAX - 1);
}

Test(dirty_ranges, random_writes_always_covered)
{
    DirtyRanges d;
    dirty_ranges_clear(&d);
    enum { N = 3000 };
    static unsigned char w[N];
    memset(w, 0, sizeof(w));
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int t = 0; t < 2000; t++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const size_t lo = (size_t)(s >> 33) % N, len = 1 + (size_t)(s >> 20) % 7;
        add(&d, w, lo, lo + len < N ? lo + len : N);
        if (t % 97 == 0) check_invariants(&d, w, N);
    }
    check_invariants(&d, w, N);
}
