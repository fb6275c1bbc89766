// Float-type dispatch for the maths the kernels use.
// Overloads name the float or double function explicitly, so that float maths stays float on
// the device (NVRTC, through CuPy) and on the host (nvcc/g++ for the CI comparison alike).
#pragma once

__host__ __device__ inline float gpunn_exp(float x) { return expf(x); }
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
// a / b for a divisor known to lie in [1, 2] (1 + e^−|z|). On the device __fdividef: the CUDA C++
// Programming Guide's table of intrinsic functions bounds its error at 2 ulp for |b| in
// [2^−126, 2^126], and it has no slow path, where IEEE division (0.5 ulp) adds a range check and a
// call to a subroutine for operands it cannot handle inline. IEEE division on the host and in double.
__host__ __device__ inline float gpunn_divide_by_one_to_two(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdividef(a, b);
#else
    return a / b;
#endif
}
__host__ __device__ inline double gpunn_divide_by_one_to_two(double a, double b) { return a / b; }
