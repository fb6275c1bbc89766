// Activations: forward from the pre-activation z, backward from what the registry says it reads
// (gpunn/backends/activations.py): the output y for sigmoid, tanh, relu and identity, the
// pre-activation x for the others. Parameters follow in the registry's order.
// C is the compute type: float for float16 and float32 storage, double for float64.
// Formulas follow torch.nn.functional, so that values agree to rounding; where torch's form
// overflows (softplus with a large threshold) the stable form is used instead.
#pragma once
#include "math.cuh"

// σ(z) = exp(min(z, 0)) / (1 + exp(−|z|)): no overflow for any z, exact in both tails, NaN stays
// NaN. The NumPy backend evaluates the same formula.
template <typename C> __host__ __device__ inline C gpunn_sigmoid_forward(C z) {
    C e = gpunn_exp(-gpunn_abs(z));
    return gpunn_divide_by_at_least_one(z < C(0) ? e : C(1), C(1) + e);
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

// GELU, exact: x·Φ(x) = x/2·(1 + erf(x/√2)); Φ'(x)·x + Φ(x) for backward. erf saturates to ±1,
// so ±1000 gives 1000 and −0.
template <typename C> __host__ __device__ inline C gpunn_gelu_forward(C x) {
    return x * C(0.5) * (C(1) + gpunn_erf(x * C(0.70710678118654752440)));
}
template <typename C> __host__ __device__ inline C gpunn_gelu_backward(C dy, C x) {
    C cdf = C(0.5) * (C(1) + gpunn_erf(x * C(0.70710678118654752440)));
    C pdf = C(0.39894228040143267794) * gpunn_exp(x * x * C(-0.5));
    return dy * (cdf + x * pdf);
}

// GELU, tanh approximation: x/2·(1 + tanh(√(2/π)(x + 0.044715x³))).
template <typename C> __host__ __device__ inline C gpunn_gelu_tanh_forward(C x) {
    C inner = C(0.79788456080286535588) * (x + C(0.044715) * (x * x * x));
    return C(0.5) * x * (C(1) + gpunn_tanh(inner));
}
// Where tanh has saturated its slope is exactly 0; the guard keeps 0·∞ (x³ overflowing) from
// turning a finite gradient into NaN.
template <typename C> __host__ __device__ inline C gpunn_gelu_tanh_backward(C dy, C x) {
    C x_squared = x * x;
    C t = gpunn_tanh(C(0.79788456080286535588) * (x + C(0.044715) * (x_squared * x)));
    C tanh_slope = C(1) - t * t;
    C inner_slope = C(0.79788456080286535588) * (C(1) + C(3) * C(0.044715) * x_squared);
    C right = tanh_slope == C(0) ? C(0) : C(0.5) * x * tanh_slope * inner_slope;
    return dy * (C(0.5) * (C(1) + t) + right);
}

// SiLU: x·σ(x), as torch writes it: x / (1 + exp(−x)); exp overflowing to ∞ gives −0.
template <typename C> __host__ __device__ inline C gpunn_silu_forward(C x) {
    return gpunn_divide_by_at_least_one(x, C(1) + gpunn_exp(-x));
}
template <typename C> __host__ __device__ inline C gpunn_silu_backward(C dy, C x) {
    // IEEE division: 1 − s is scaled by x, so __fdividef's 2 ulp at s = 1 would grow with x
    // (tests/kernels/test_device_maths.py finds 1.2e-4 at x = 1000).
    C s = C(1) / (C(1) + gpunn_exp(-x));
    return dy * s * (C(1) + x * (C(1) - s));
}

// LeakyReLU: x for x > 0, negative_slope·x otherwise (NaN stays NaN: the product).
template <typename C> __host__ __device__ inline C gpunn_leaky_relu_forward(C x, C negative_slope) {
    return x > C(0) ? x : x * negative_slope;
}
template <typename C> __host__ __device__ inline C gpunn_leaky_relu_backward(C dy, C x, C negative_slope) {
    return x > C(0) ? dy : dy * negative_slope;
}

// Softplus: log(1 + exp(βx))/β, linear above the threshold (torch's definition), written as
// (max(βx, 0) + log1p(exp(−|βx|)))/β so that no threshold can make it overflow.
template <typename C> __host__ __device__ inline C gpunn_softplus_forward(C x, C beta, C threshold) {
    C scaled = x * beta;
    if (scaled > threshold) return x;
    return ((scaled > C(0) ? scaled : C(0)) + gpunn_log1p(gpunn_exp(-gpunn_abs(scaled)))) / beta;
}
template <typename C> __host__ __device__ inline C gpunn_softplus_backward(C dy, C x, C beta, C threshold) {
    C scaled = x * beta;
    return scaled > threshold ? dy : dy * gpunn_sigmoid_forward(scaled);
}
