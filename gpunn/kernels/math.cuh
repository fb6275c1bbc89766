// Float-type dispatch for the maths the kernels use.
// Overloads name the float or double function explicitly, so that float maths stays float on
// the device (NVRTC, through CuPy) and on the host (nvcc/g++ for the CI comparison alike).
#pragma once

// The device's approximate intrinsics, used where their documented error bounds fit float32's parity
// tolerance (below). A host build that defines GPUNN_MODEL_DEVICE_INTRINSICS supplies its own
// gpunn_model_expf and gpunn_model_fdividef, each erring at the edge of its bound, so that the
// very kernel code runs with them on the host (tests/support/device_maths_model.cu).
#if defined(__CUDA_ARCH__)
#define GPUNN_FAST_EXPF __expf
#define GPUNN_FAST_DIVIDEF __fdividef
#elif defined(GPUNN_MODEL_DEVICE_INTRINSICS)
#define GPUNN_FAST_EXPF gpunn_model_expf
#define GPUNN_FAST_DIVIDEF gpunn_model_fdividef
#endif

// e^x. On the device in float __expf (MUFU.EX2 of x·log2 e, no range reduction): the CUDA C++
// Programming Guide's table of single-precision intrinsic functions bounds its error at
// 2 + floor(|1.173·x|) ulp, where expf has 2 ulp and a longer instruction sequence. Every float
// caller's result is finite and normal only for |x| < 88.8 (sigmoid, SiLU, softplus and BCE take
// e^−|z|, GELU's slope e^−x²/2, softmax e^(z − log-sum-exp), all of them but SiLU's ≤ 0), where the
// bound is at most 106 ulp, a relative 1.3e-5 under float32's parity tolerance of 2e-5
// (tests/kernels/test_device_maths.py runs the kernels' maths with it at that bound). Double, and the
// host (the NumPy twins, the stand-in, the nvcc host harness), keep the exact function.
__host__ __device__ inline float gpunn_exp(float x) {
#ifdef GPUNN_FAST_EXPF
    return GPUNN_FAST_EXPF(x);
#else
    return expf(x);
#endif
}
__host__ __device__ inline double gpunn_exp(double x) { return exp(x); }
__host__ __device__ inline float gpunn_tanh(float x) { return tanhf(x); }
__host__ __device__ inline double gpunn_tanh(double x) { return tanh(x); }
__host__ __device__ inline float gpunn_log1p(float x) { return log1pf(x); }
__host__ __device__ inline double gpunn_log1p(double x) { return log1p(x); }
__host__ __device__ inline float gpunn_abs(float x) { return fabsf(x); }
__host__ __device__ inline double gpunn_abs(double x) { return fabs(x); }
__host__ __device__ inline float gpunn_erf(float x) { return erff(x); }
__host__ __device__ inline double gpunn_erf(double x) { return erf(x); }
__host__ __device__ inline float gpunn_sqrt(float x) { return sqrtf(x); }
__host__ __device__ inline double gpunn_sqrt(double x) { return sqrt(x); }
__host__ __device__ inline float gpunn_pow(float x, float y) { return powf(x, y); }
__host__ __device__ inline double gpunn_pow(double x, double y) { return pow(x, y); }
// x − x is 0 for finite x and NaN for ±Inf and NaN: no library isfinite needed on host or device.
template <typename C> __host__ __device__ inline bool gpunn_isfinite(C x) { return x - x == C(0); }
// a / b for a divisor b ≥ 1 (1 + e^−z). On the device __fdividef: the CUDA C++ Programming Guide's
// table of intrinsic functions bounds its error at 2 ulp for |b| in [2^−126, 2^126], and it has no
// slow path, where IEEE division (0.5 ulp) adds a range check and a call to a subroutine for
// operands it cannot handle inline. Above 2^126 it gives 0 where |a / b| < |a|·2^−126 (SiLU at
// x < −87: a quotient below 1e-35, inside float32's absolute parity tolerance). IEEE division on
// the host and in double.
__host__ __device__ inline float gpunn_divide_by_at_least_one(float a, float b) {
#ifdef GPUNN_FAST_DIVIDEF
    return GPUNN_FAST_DIVIDEF(a, b);
#else
    return a / b;
#endif
}
__host__ __device__ inline double gpunn_divide_by_at_least_one(double a, double b) { return a / b; }
