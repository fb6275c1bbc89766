// Dropout masks from a counter-based generator: Philox4x64-10 (Salmon et al., SC'11), the
// generator NumPy ships as numpy.random.Philox. A mask bit depends only on (key, step, element
// index), so NumPy and CUDA draw the same mask, nothing is stored between forward and backward
// (backward draws it again), and a step counter kept on the device replays inside a CUDA graph.
#pragma once

typedef unsigned long long gpunn_u64;

__host__ __device__ inline gpunn_u64 gpunn_mulhi64(gpunn_u64 a, gpunn_u64 b) {
#ifdef __CUDA_ARCH__
    return __umul64hi(a, b);
#else
    return (gpunn_u64)(((unsigned __int128)a * b) >> 64);
#endif
}

// Word `word` (0..3) of the Philox4x64-10 block for counter (c0, c1, 0, 0) and key (k0, k1).
// numpy.random.Philox(key=k0 + k1·2^64, counter=c − 1).random_raw() yields the same block.
__host__ __device__ inline gpunn_u64 gpunn_philox4x64_10(gpunn_u64 c0, gpunn_u64 c1, gpunn_u64 k0,
                                                          gpunn_u64 k1, int word) {
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
    return word == 0 ? c0 : word == 1 ? c1 : word == 2 ? c2 : c3;
}

// Element i at `step` keeps its value when word i mod 4 of block (⌊i/4⌋, step) is at least
// `threshold` = ⌊rate·2^64⌋; a threshold of 0 (no dropout) skips the generator.
__host__ __device__ inline bool gpunn_dropout_keep(gpunn_u64 index, gpunn_u64 step, gpunn_u64 k0,
                                                   gpunn_u64 k1, gpunn_u64 threshold) {
    if (threshold == 0) return true;
    return gpunn_philox4x64_10(index >> 2, step, k0, k1, (int)(index & 3)) >= threshold;
}

// Kept values are scaled by 1/(1 − rate) (inverted dropout), so evaluation needs no rescaling.
// A product, not a select: a dropped NaN or ∞ stays NaN, as in NumPy and torch.
template <typename C>
__host__ __device__ inline C gpunn_dropout(C value, gpunn_u64 index, gpunn_u64 step, gpunn_u64 k0,
                                           gpunn_u64 k1, gpunn_u64 threshold, C scale) {
    return value * (gpunn_dropout_keep(index, step, k0, k1, threshold) ? scale : C(0));
}
