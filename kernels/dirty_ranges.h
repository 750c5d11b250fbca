/* dirty_ranges.h: the parts of a buffer written since some point, kept few: sorted, disjoint
 * element ranges [lo, hi), at most DIRTY_RANGES_MAX of them. A range that overlaps or touches
 * others is merged with them; when one more would not fit, the two ranges with the smallest gap
 * between them (the first such pair) become one, the gap with them, so the set always covers what
 * was written and a little more, never less. The CUDA backend's weight copies keep one a buffer
 * (kernels/cuda/matmul.cuh) to round again only what was written; plain C, header only, so the
 * CPU tests check it (tests/kernels/test_dirty_ranges.c). */
#ifndef DSTRAIN_DIRTY_RANGES_H
#define DSTRAIN_DIRTY_RANGES_H

#include <stddef.h>

#define DIRTY_RANGES_MAX 64 /* a range a layer: DeepSeek-V3's 58 MoE layers' router biases */

typedef struct DirtyRanges {
    int count;
    size_t lo[DIRTY_RANGES_MAX + 1], hi[DIRTY_RANGES_MAX + 1]; /* one over while merging */
} DirtyRanges;

static inline void dirty_ranges_clear(DirtyRanges *d)
{
    d->count = 0;
}

/* Elements [lo, hi) were written (nothing when lo >= hi). */
static inline void dirty_ranges_add(DirtyRanges *d, size_t lo, size_t hi)
{
    if (lo >= hi) return;
    int i = 0;
    while (i < d->count && d->hi[i] < lo) /* ranges wholly before, with a gap */
        i++;
    int j = i;
    for (; j < d->count && d->lo[j] <= hi; j++) { /* ranges i..j-1 overlap or touch it */
        lo = d->lo[j] < lo ? d->lo[j] : lo;
        hi = d->hi[j] > hi ? d->hi[j] : hi;
    }
    const int shift = 1 - (j - i); /* how far the ranges from j on move right */
    if (shift > 0)
        for (int k = d->count - 1; k >= j; k--)
            d->lo[k + shift] = d->lo[k], d->hi[k + shift] = d->hi[k];
    else if (shift < 0)
        for (int k = j; k < d->count; k++)
            d->lo[k + shift] = d->lo[k], d->hi[k + shift] = d->hi[k];
    d->lo[i] = lo, d->hi[i] = hi;
    d->count += shift;
    if (d->count <= DIRTY_RANGES_MAX) return;
    int best = 0;
    for (int k = 1; k + 1 < d->count; k++)
        if (d->lo[k + 1] - d->hi[k] < d->lo[best + 1] - d->hi[best]) best = k;
    d->hi[best] = d->hi[best + 1];
    for (int k = best + 1; k + 1 < d->count; k++)
        d->lo[k] = d->lo[k + 1], d->hi[k] = d->hi[k + 1];
    d->count--;
}

/* How many elements the ranges cover. */
static inline size_t dirty_ranges_elements(const DirtyRanges *d)
{
    size_t n = 0;
    for (int i = 0; i < d->count; i++)
        n += d->hi[i] - d->lo[i];
    return n;
}

#endif
