// Loss heads where fusing saves passes over the outputs.
#pragma once
#include "activations.cuh"

// Mean squared error's gradient (y − t)·scale, where scale = 2/size times the loss scale.
template <typename C> __host__ __device__ inline C gpunn_mse_grad(C y, C t, C scale) { return (y - t) * scale; }
// Binary cross-entropy on a logit: max(z,0) − z·t + log1p(exp(−|z|)), finite for any z.
template <typename C> __host__ __device__ inline C gpunn_bce_with_logits(C z, C t) {
    C positive = z > C(0) ? z : C(0);
    return positive - z * t + gpunn_log1p(gpunn_exp(-gpunn_abs(z)));
}
// Its gradient with respect to the logit is σ(z) − t (seed 001), scaled by 1/size for the mean.
template <typename C> __host__ __device__ inline C gpunn_bce_with_logits_grad(C z, C t, C scale) {
    return (gpunn_sigmoid_forward(z) - t) * scale;
}
// Softmax cross-entropy: (softmax(z) − onehot)·scale, given the row's log-sum-exp.
template <typename C>
__host__ __device__ inline C gpunn_softmax_xent_grad(C z, C log_sum_exp, bool is_label, C scale) {
    return (gpunn_exp(z - log_sum_exp) - (is_label ? C(1) : C(0))) * scale;
}
