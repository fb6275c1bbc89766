// The kernels' maths, built twice by the tests (tests/test_kernels_host.py):
//  * as host code into a shared library, loaded with ctypes and compared with the NumPy backend;
//  * as device code for sm_90, through the __global__ wrappers below, so every CI run proves that
//    the functions CuPy compiles at run time also compile for the GPU (float16 storage included).
#include <cmath>
#include <cuda_fp16.h>

#include "activations.cuh"
#include "losses.cuh"
#include "sgd.cuh"

#define GPUNN_ACTIVATION_HOST(ACT, T, SUFFIX)                                                    \
    extern "C" void bias_##ACT##_##SUFFIX(const T* z, const T* b, T* y, long rows, long cols) { \
        for (long i = 0; i < rows * cols; ++i) y[i] = gpunn_##ACT##_forward(z[i] + b[i % cols]);          \
    }                                                                                            \
    extern "C" void ACT##_backward_##SUFFIX(const T* dy, const T* y, T* dz, long n) {            \
        for (long i = 0; i < n; ++i) dz[i] = gpunn_##ACT##_backward(dy[i], y[i]);               \
    }

#define GPUNN_HOST(T, SUFFIX)                                                                    \
    GPUNN_ACTIVATION_HOST(sigmoid, T, SUFFIX)                                                    \
    GPUNN_ACTIVATION_HOST(relu, T, SUFFIX)                                                       \
    GPUNN_ACTIVATION_HOST(identity, T, SUFFIX)                                                   \
    GPUNN_ACTIVATION_HOST(tanh, T, SUFFIX)                                                       \
    extern "C" void sgd_step_##SUFFIX(T* p, const T* g, T lr, long n) {                          \
        for (long i = 0; i < n; ++i) p[i] = gpunn_sgd_step(p[i], g[i], lr);                      \
    }                                                                                            \
    extern "C" void sgd_momentum_step_##SUFFIX(T* p, T* v, const T* g, T lr, T mu, long n) {     \
        for (long i = 0; i < n; ++i) gpunn_sgd_momentum_step(p[i], v[i], g[i], lr, mu);          \
    }                                                                                            \
    extern "C" void bce_with_logits_##SUFFIX(const T* z, const T* t, T* out, long n) {           \
        for (long i = 0; i < n; ++i) out[i] = gpunn_bce_with_logits(z[i], t[i]);                 \
    }                                                                                            \
    extern "C" void bce_with_logits_grad_##SUFFIX(const T* z, const T* t, T scale, T* out, long n) { \
        for (long i = 0; i < n; ++i) out[i] = gpunn_bce_with_logits_grad(z[i], t[i], scale);     \
    }                                                                                            \
    extern "C" void softmax_xent_grad_##SUFFIX(const T* z, const T* lse, const long* labels,     \
                                               T scale, T* out, long rows, long cols) {          \
        for (long i = 0; i < rows * cols; ++i)                                                   \
            out[i] = gpunn_softmax_xent_grad(z[i], lse[i / cols], labels[i / cols] == i % cols, scale); \
    }

GPUNN_HOST(float, f32)
GPUNN_HOST(double, f64)

// Device instantiations: never launched here, compiled so that nvcc checks the device code.
template <typename S, typename C>
__global__ void gpunn_device_check(const S* z, const S* b, const S* t, S* y, S* v, long n, long cols) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    C zc = C(z[i]) + C(b[i % cols]);
    C out = gpunn_sigmoid_forward(zc) + gpunn_tanh_forward(zc) + gpunn_relu_forward(zc) + gpunn_identity_forward(zc);
    C dy = C(t[i]);
    out += gpunn_sigmoid_backward(dy, out) + gpunn_tanh_backward(dy, out) +
           gpunn_relu_backward(dy, out) + gpunn_identity_backward(dy, out);
    out += gpunn_bce_with_logits(zc, dy) + gpunn_bce_with_logits_grad(zc, dy, C(0.5)) +
           gpunn_softmax_xent_grad(zc, C(1), i % cols == 0, C(0.5));
    C param = out, velocity = C(v[i]);
    gpunn_sgd_momentum_step(param, velocity, dy, C(0.1), C(0.9));
    y[i] = S(gpunn_sgd_step(param, dy, C(0.1)));
    v[i] = S(velocity);
}

template __global__ void gpunn_device_check<float, float>(const float*, const float*, const float*,
                                                          float*, float*, long, long);
template __global__ void gpunn_device_check<double, double>(const double*, const double*, const double*,
                                                            double*, double*, long, long);
template __global__ void gpunn_device_check<__half, float>(const __half*, const __half*, const __half*,
                                                           __half*, __half*, long, long);
