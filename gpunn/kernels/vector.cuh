// One or two neighbouring elements of a flat array, loaded and stored as one access: a float16 pair
// is one 32-bit load, a float32 pair one 64-bit load, where two scalar loads cost two issue slots
// of the load/store units and two address computations (issue 21). The address must be aligned
// to the whole vector (the backend checks both before it picks width 2).
#pragma once

template <typename T, int Width> struct gpunn_vector;
template <typename T> struct alignas(sizeof(T)) gpunn_vector<T, 1> { T a; };
template <typename T> struct alignas(2 * sizeof(T)) gpunn_vector<T, 2> { T a, b; };

template <typename T, int Width>
__host__ __device__ inline gpunn_vector<T, Width> gpunn_load(const T* at) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const gpunn_vector<T, Width>*>(at);
#else  // the host (CuPy stand-in, host harness): no type punning through a pointer
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
    __builtin_memcpy(at, &value, sizeof(value));
#endif
}
