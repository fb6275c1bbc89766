// Activations, forward from the pre-activation z and backward from the saved output y.
// C is the compute type: float for float16 and float32 storage, double for float64.
#pragma once
#include "math.cuh"

// σ(z) = exp(min(z, 0)) / (1 + exp(−|z|)): no overflow for any z, exact in both tails, NaN stays
// NaN. The NumPy backend evaluates the same formula.
template <typename C> __host__ __device__ inline C gpunn_sigmoid_forward(C z) {
    C e = gpunn_exp(-gpunn_abs(z));
    return (z < C(0) ? e : C(1)) / (C(1) + e);
}
template <typename C> __host__ __device__ inline C gpunn_tanh_forward(C z) { return gpunn_tanh(z); }
// Written as "z < 0 ? 0 : z" so that NaN passes through, as NumPy's maximum does.
template <typename C> __host__ __device__ inline C gpunn_relu_forward(C z) { return z < C(0) ? C(0) : z; }
template <typename C> __host__ __device__ inline C gpunn_identity_forward(C z) { return z; }

// dZ = dY ⊙ f'(Z), with f' written in terms of the output: σ' = y(1−y), tanh' = 1−y².
template <typename C> __host__ __device__ inline C gpunn_sigmoid_backward(C dy, C y) {
    return dy * (y * (C(1) - y));
}
template <typename C> __host__ __device__ inline C gpunn_tanh_backward(C dy, C y) {
    return dy * (C(1) - y * y);
}
// A product rather than a select, so that a NaN gradient stays NaN (as in NumPy).
template <typename C> __host__ __device__ inline C gpunn_relu_backward(C dy, C y) {
    return dy * (y > C(0) ? C(1) : C(0));
}
template <typename C> __host__ __device__ inline C gpunn_identity_backward(C dy, C y) { return dy; }
