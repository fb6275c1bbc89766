// Dropout masks from a counter-based generator: Philox4x64-10 (Salmon et al., SC'11), the
// generator NumPy ships as numpy.random.Philox. A mask bit depends only on (key, step, element
// index), so NumPy and CUDA draw the same mask, nothing is stored between forward and backward
// (backward draws it again), and a step counter kept on the device replays inside a CUDA graph.
//
// One Philox block (256 bits) serves a group of GPUNN_DROPOUT_GROUP = 16 elements, 16 bits each:
// a block costs 40 64-bit multiplies (about 110 32-bit IMADs in sm_90 SASS), which, drawn per
// element, made dropout bound by instruction issue, not memory (issue 21). 16 bits give the keep
// probability in steps of 2^-16: a rate is off by < 1.6e-5, thirty times less than the sampling
// noise of one mask of a million elements (√(p(1 − p)/n) ≈ 5e-4), and far below anything training
// can see (torch compares float32 uniforms from Philox4x32, steps of 2^-24 near 1; its rate is a
// float32 too). A rate below 2^-16 drops nothing (the Dropout layer draws no mask).
//
// The members of a group are GPUNN_DROPOUT_LANES = 32 elements apart: element n belongs to group
// q = ⌊n / 512⌋·32 + n mod 32 as its slot j = ⌊n / 32⌋ mod 16. A thread handles one group, so the
// 32 threads of a warp handle 32 neighbouring groups and read, for each slot, 32 consecutive
// elements: every load and store of the warp is one contiguous, coalesced access (16 consecutive
// elements per thread would put the warp's accesses 16 elements apart). Or a thread handles two or
// four neighbouring groups, whose members are neighbours: one vector load per slot, and the warp's
// accesses are two or four contiguous runs of 32 elements.
#pragma once

typedef unsigned long long gpunn_u64;

#define GPUNN_DROPOUT_LANES 32
#define GPUNN_DROPOUT_GROUP 16

__host__ __device__ inline gpunn_u64 gpunn_mulhi64(gpunn_u64 a, gpunn_u64 b) {
#ifdef __CUDA_ARCH__
    return __umul64hi(a, b);
#else
    return (gpunn_u64)(((unsigned __int128)a * b) >> 64);
#endif
}

// The Philox4x64-10 block for counter (c0, c1, 0, 0) and key (k0, k1) into out[0..3].
// numpy.random.Philox(key=k0 + k1·2^64, counter=c − 1).random_raw(4) yields the same block.
__host__ __device__ inline void gpunn_philox4x64_10(gpunn_u64 c0, gpunn_u64 c1, gpunn_u64 k0, gpunn_u64 k1,
                                                    gpunn_u64 out[4]) {
    gpunn_u64 c2 = 0, c3 = 0;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B97F4A7C15ULL;
            k1 += 0xBB67AE8584CAA73BULL;
        }
        gpunn_u64 hi0 = gpunn_mulhi64(0xD2E7470EE14C6C93ULL, c0), lo0 = 0xD2E7470EE14C6C93ULL * c0;
        gpunn_u64 hi1 = gpunn_mulhi64(0xCA5A826395121157ULL, c2), lo1 = 0xCA5A826395121157ULL * c2;
        gpunn_u64 n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

// The element a group's slot 0 holds: group q starts at ⌊q / 32⌋·512 + q mod 32.
__host__ __device__ inline gpunn_u64 gpunn_dropout_group_start(gpunn_u64 group) {
    return (group / GPUNN_DROPOUT_LANES) * (GPUNN_DROPOUT_LANES * GPUNN_DROPOUT_GROUP) + group % GPUNN_DROPOUT_LANES;
}

// Runs body(k, column, keep) for each slot of the Width neighbouring groups first, …, first + Width − 1
// (first a multiple of Width; Width 1, 2 or 4) whose members lie inside this launch's elements
// [skip, skip + n): k = the slot's element of group `first` as an index in the launch (global index −
// skip); group first + w holds element k + w; column = k's column (k mod `columns`; skip is whole
// rows, so the global index gives it too); bit w of keep = whether element k + w survives: its 16
// bits (bits 16·(j mod 4) up of word ⌊j/4⌋ of block (first + w, step)) are at least `threshold`
// (⌊rate·2^16⌋; 0 skips the generator and keeps all). `lane_columns` = 32 mod columns, so the column
// follows the slots without a division per element; which slots lie inside the launch is worked out
// once, so an element costs a bit test, not 64-bit comparisons.
//
// Width 2 or 4 (the "pairs" and "quads" kernels) gives a thread that many neighbouring elements per
// slot, one vector load and store for them all, at the same mask: the slot's bookkeeping (the bit
// test, the column, the addresses) is shared by Width elements. The caller guarantees that skip and
// n are multiples of Width (so a slot's elements all lie inside the launch or none does) and, where
// it reads a column's value, that `columns` is one too (the slot's columns are column, …,
// column + Width − 1).
template <int Width, typename Body>
__host__ __device__ inline void gpunn_dropout_groups(gpunn_u64 first, gpunn_u64 skip, gpunn_u64 n,
                                                     unsigned int columns, unsigned int lane_columns, gpunn_u64 step,
                                                     gpunn_u64 k0, gpunn_u64 k1, unsigned int threshold, Body body) {
    gpunn_u64 words[Width][4];
#pragma unroll
    for (int w = 0; w < Width; ++w) {
        words[w][0] = words[w][1] = words[w][2] = words[w][3] = ~0ULL;
        if (threshold != 0) gpunn_philox4x64_10(first + w, step, k0, k1, words[w]);
    }
    const gpunn_u64 start = gpunn_dropout_group_start(first);
    // Slots [low, high) hold elements of the launch: start + 32·slot in [skip, skip + n).
    const gpunn_u64 before = start < skip ? (skip - start + GPUNN_DROPOUT_LANES - 1) / GPUNN_DROPOUT_LANES : 0;
    const gpunn_u64 until = start < skip + n ? (skip + n - start + GPUNN_DROPOUT_LANES - 1) / GPUNN_DROPOUT_LANES : 0;
    const unsigned int low = before < GPUNN_DROPOUT_GROUP ? (unsigned int)before : GPUNN_DROPOUT_GROUP;
    const unsigned int high = until < GPUNN_DROPOUT_GROUP ? (unsigned int)until : GPUNN_DROPOUT_GROUP;
    const unsigned int inside = low < high ? ((1u << high) - 1u) & ~((1u << low) - 1u) : 0u;
    const gpunn_u64 index = start - skip;  // wraps below skip; only slots inside are used
    unsigned int column = (unsigned int)(start % columns);
#pragma unroll
    for (int slot = 0; slot < GPUNN_DROPOUT_GROUP; ++slot) {
        if (inside & (1u << slot)) {
            unsigned int keep = 0;
#pragma unroll
            for (int w = 0; w < Width; ++w) {
                const unsigned int bits = (unsigned int)(words[w][slot / 4] >> (16 * (slot % 4))) & 0xFFFFu;
                keep |= (unsigned int)(bits >= threshold) << w;
            }
            body(index + GPUNN_DROPOUT_LANES * slot, column, keep);
        }
        column += lane_columns;
        if (column >= columns) column -= columns;
    }
}

// Kept values are scaled by 1/(1 − rate) (inverted dropout), so evaluation needs no rescaling.
// A product, not a select: a dropped NaN or ∞ stays NaN, as in NumPy and torch.
template <typename C>
__host__ __device__ inline C gpunn_dropout(C value, bool keep, C scale) {
    return value * (keep ? scale : C(0));
}
