// Layer normalisation, per element; the row statistics (mean, 1/√(var + eps)) come from row
// reductions (CuPy ReductionKernels on the GPU) computed once per forward in the compute type
// (float32 for float16 storage) and kept for backward.
#pragma once
#include "math.cuh"

template <typename C> __host__ __device__ inline C gpunn_layer_norm_rstd(C sum_of_squares, C cols, C eps) {
    return C(1) / gpunn_sqrt(sum_of_squares / cols + eps);
}

// y = x̂·gain + bias with x̂ = (x − mean)·rstd.
template <typename C>
__host__ __device__ inline C gpunn_layer_norm_forward(C x, C mean, C rstd, C gain, C bias) {
    return (x - mean) * rstd * gain + bias;
}

// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·gain: the row means are reduced first.
template <typename C>
__host__ __device__ inline C gpunn_layer_norm_backward(C dy, C x, C gain, C mean, C rstd, C mean_g,
                                                       C mean_g_xhat) {
    C xhat = (x - mean) * rstd;
    return rstd * (dy * gain - mean_g - xhat * mean_g_xhat);
}
