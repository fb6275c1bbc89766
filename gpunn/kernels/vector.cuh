// Two or four neighbouring elements of a flat array, loaded and stored as one access (or one, so a
// kernel written for a width also serves width 1): a float16 pair is one 32-bit load, four float32
// one 128-bit load, where scalar loads cost an issue slot of the load/store units and an address
// computation each (issue 21). The address must be aligned to the whole vector (the backend checks
// the buffers and the counts before it picks a width).
#pragma once

template <typename T, int Width> struct gpunn_vector;
template <typename T> struct alignas(sizeof(T)) gpunn_vector<T, 1> { T a; };
template <typename T> struct alignas(2 * sizeof(T)) gpunn_vector<T, 2> { T a, b; };
template <typename T> struct alignas(4 * sizeof(T)) gpunn_vector<T, 4> { T a, b, c, d; };

#ifndef __CUDA_ARCH__
// On the host a misaligned vector access would work (memcpy), where the GPU faults ("misaligned
// address"): the stand-in stops the process instead, so a launch the backend should not have
// vectorised fails its test.
template <typename T, int Width>
inline void gpunn_require_aligned(const T* at) {
    if (reinterpret_cast<unsigned long long>(at) % sizeof(gpunn_vector<T, Width>) != 0) __builtin_trap();
}
#endif

template <typename T, int Width>
__host__ __device__ inline gpunn_vector<T, Width> gpunn_load(const T* at) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const gpunn_vector<T, Width>*>(at);
#else  // the host (CuPy stand-in, host harness): no type punning through a pointer
    gpunn_require_aligned<T, Width>(at);
    gpunn_vector<T, Width> value;
    __builtin_memcpy(&value, at, sizeof(value));
    return value;
#endif
}

template <typename T, int Width>
__host__ __device__ inline void gpunn_store(T* at, const gpunn_vector<T, Width>& value) {
#ifdef __CUDA_ARCH__
    *reinterpret_cast<gpunn_vector<T, Width>*>(at) = value;
#else
    gpunn_require_aligned<T, Width>(at);
    __builtin_memcpy(at, &value, sizeof(value));
#endif
}
