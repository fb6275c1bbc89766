// The kernels' maths, built twice by the tests (tests/test_kernels_host.py):
//  * as host code into a shared library, loaded with ctypes and compared with the NumPy backend;
//  * as device code for sm_90, through the __global__ wrappers below, so every CI run proves that
//    the functions CuPy compiles at run time also compile for the GPU (float16 storage included).
// The activations' wrappers are generated from the registry by the tests and appended to this
// file, so that every registered activation is checked without an entry here.
#include <cmath>
#include <cuda_fp16.h>

#include "activations.cuh"
#include "dropout.cuh"
#include "layer_norm.cuh"
#include "losses.cuh"
#include "optim.cuh"

// Blocks of Philox4x64-10 for counters (c0[j], c1[j], 0, 0): out[4j .. 4j+3].
extern "C" void philox4x64_10(const gpunn_u64* c0, const gpunn_u64* c1, gpunn_u64 k0, gpunn_u64 k1,
                              gpunn_u64* out, long n) {
    for (long j = 0; j < n; ++j) gpunn_philox4x64_10(c0[j], c1[j], k0, k1, out + 4 * j);
}

// The dropout mask of elements [skip, skip + n) as the group kernels draw it: one call per group of
// the tiles that hold them (width 1), or per two or four neighbouring groups (width 2 or 4, the "pairs"
// and "quads" kernels: skip and n multiples of the width), in an order unlike the GPU's (each element
// is written once either way).
template <int Width>
static void dropout_keep_by(gpunn_u64 skip, gpunn_u64 n, gpunn_u64 step, gpunn_u64 k0, gpunn_u64 k1,
                            unsigned int threshold, unsigned char* keep) {
    const gpunn_u64 first = skip / (GPUNN_DROPOUT_LANES * GPUNN_DROPOUT_GROUP) * GPUNN_DROPOUT_LANES;
    const gpunn_u64 end = ((skip + n - 1) / (GPUNN_DROPOUT_LANES * GPUNN_DROPOUT_GROUP) + 1) * GPUNN_DROPOUT_LANES;
    for (gpunn_u64 group = end; group > first;) {
        group -= Width;
        gpunn_dropout_groups<Width>(group, skip, n, 1u, 0u, step, k0, k1, threshold,
                                    [&](gpunn_u64 k, unsigned int, unsigned int kept) {
            for (int w = 0; w < Width; ++w) keep[k + w] = (kept >> w) & 1u;
        });
    }
}
extern "C" void dropout_keep(gpunn_u64 skip, gpunn_u64 n, gpunn_u64 step, gpunn_u64 k0, gpunn_u64 k1,
                             unsigned int threshold, unsigned char* keep, int width) {
    (width == 4 ? dropout_keep_by<4> : width == 2 ? dropout_keep_by<2> : dropout_keep_by<1>)(skip, n, step, k0, k1,
                                                                                        threshold, keep);
}

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// The GPU's float rules on the host: CuPy compiles every kernel with -ftz=true (cupy/cuda/compiler.py,
// _compile_with_cache_cuda), so float32 subnormals are flushed to zero on the GPU. MXCSR's FTZ (bit 15)
// flushes subnormal results and DAZ (bit 6) reads subnormal operands as zero. Returns the MXCSR before;
// the tests set it around harness calls only (it applies to double too, so they check float32 under it).
extern "C" unsigned int gpunn_host_flush_to_zero(int on) {
    unsigned int before = _mm_getcsr();
    _mm_setcsr(on ? (before | 0x8040u) : (before & ~0x8040u));
    return before;
}
extern "C" float gpunn_host_multiply_f32(float a, float b) { return a * b; }
#endif

// One update rule over n elements, weight decay on [0, decay_end) only, as the CuPy kernel applies it.
#define GPUNN_UPDATE_HOST(RULE, T, SUFFIX)                                                       \
    extern "C" void RULE##_update_##SUFFIX(T* p, T* s0, T* s1, const T* g, T lr, T step, T wd, T h0, T h1, \
                                           T h2, int flag, long decay_end, long n) {             \
        const gpunn_##RULE##_update<T> rule(lr, step, h0, h1, h2, flag != 0);                    \
        for (long i = 0; i < n; ++i) rule(p[i], s0[i], s1[i], g[i], i < decay_end ? wd : T(0));  \
    }

// Per flat element of [0, n): where the fused update keeps its state, or -1 where it updates nothing,
// found as the update kernel's threads find it (each index's elements ``stride`` apart, the search
// resuming from the segment found last).
extern "C" void segment_lookup(const long long* segments, long long count, long n, long stride, long long* state) {
    for (long first = 0; first < stride && first < n; ++first) {
        gpunn_segment_cursor segment;
        for (long k = first; k < n; k += stride)
            state[k] = segment.at(segments, count, k) ? segment.state + (k - segment.start) : -1;
    }
}

#define GPUNN_HOST(T, SUFFIX)                                                                    \
    GPUNN_UPDATE_HOST(sgd, T, SUFFIX)                                                            \
    GPUNN_UPDATE_HOST(adam, T, SUFFIX)                                                           \
    extern "C" void layer_norm_forward_##SUFFIX(const T* x, const T* gain, const T* bias, T eps, T* y, \
                                                T* mean, T* rstd, long rows, long cols) {        \
        for (long r = 0; r < rows; ++r) {                                                        \
            T sum = T(0), squares = T(0);                                                        \
            for (long c = 0; c < cols; ++c) sum += x[r * cols + c];                              \
            mean[r] = sum / T(cols);                                                             \
            for (long c = 0; c < cols; ++c) squares += (x[r * cols + c] - mean[r]) * (x[r * cols + c] - mean[r]); \
            rstd[r] = gpunn_layer_norm_rstd(squares, T(cols), eps);                              \
            for (long c = 0; c < cols; ++c)                                                      \
                y[r * cols + c] = gpunn_layer_norm_forward(x[r * cols + c], mean[r], rstd[r], gain[c], bias[c]); \
        }                                                                                        \
    }                                                                                            \
    extern "C" void layer_norm_backward_##SUFFIX(const T* dy, const T* x, const T* gain, const T* mean, \
                                                 const T* rstd, T* dx, long rows, long cols) {   \
        for (long r = 0; r < rows; ++r) {                                                        \
            T g = T(0), g_xhat = T(0);                                                           \
            for (long c = 0; c < cols; ++c) {                                                    \
                g += dy[r * cols + c] * gain[c];                                                 \
                g_xhat += dy[r * cols + c] * gain[c] * ((x[r * cols + c] - mean[r]) * rstd[r]);  \
            }                                                                                    \
            for (long c = 0; c < cols; ++c)                                                      \
                dx[r * cols + c] = gpunn_layer_norm_backward(dy[r * cols + c], x[r * cols + c], gain[c], mean[r], \
                                                             rstd[r], g / T(cols), g_xhat / T(cols)); \
        }                                                                                        \
    }                                                                                            \
    extern "C" void effective_grad_##SUFFIX(const T* g, double loss_scale, T norm, T max_norm, T* out, long n) { \
        const gpunn_unscale<T> unscale(loss_scale, norm, max_norm);                              \
        for (long i = 0; i < n; ++i) out[i] = unscale(g[i]);                                     \
    }                                                                                            \
    extern "C" void after_update_##SUFFIX(double* scalars, T norm, int dynamic, double growth) { \
        gpunn_after_update(scalars, norm, dynamic != 0, growth);                                  \
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
    C dy = C(t[i]);
    C out = gpunn_layer_norm_forward(zc, C(0.5), C(2), dy, C(1)) +
            gpunn_layer_norm_backward(dy, zc, C(2), C(0.5), C(2), C(0.1), C(0.2)) + gpunn_layer_norm_rstd(zc, C(8), C(1e-5));
    out = gpunn_dropout(out, (i & 1) != 0, C(1.25));
    out += gpunn_bce_with_logits(zc, dy) + gpunn_bce_with_logits_grad(zc, dy, C(0.5)) +
           gpunn_softmax_xent_grad(zc, C(1), i % cols == 0, C(0.5));
    const long long table[GPUNN_SEGMENT_FIELDS] = {0, n, 0, 1};
    gpunn_segment_cursor segment;
    if (!segment.at(table, 1, i)) return;
    C param = out, velocity = C(v[i]), second = C(0);
    C grad = gpunn_unscale<C>(2.0, C(3), C(1))(dy);
    gpunn_sgd_update<C>(C(0.1), C(1), C(0.9), C(0), C(0), true)(param, velocity, second, grad, C(0.01));
    gpunn_adam_update<C>(C(0.1), C(2), C(0.9), C(0.999), C(1e-8), false)(param, velocity, second, grad, C(0.01));
    y[i] = S(param);
    v[i] = S(velocity);
}

// A group kernel's shape (cupy_kernels._build_activation): one thread per Width dropout groups.
template <int Width, typename S, typename C>
__global__ void gpunn_dropout_group_check(const S* z, const S* b, S* y, gpunn_u64 first_group, gpunn_u64 skip,
                                          gpunn_u64 n, unsigned int columns, const gpunn_u64* step) {
    gpunn_u64 i = blockIdx.x * (gpunn_u64)blockDim.x + threadIdx.x;
    gpunn_dropout_groups<Width>(first_group + Width * i, skip, n, columns, 32u % columns, step[0], 5ULL, 7ULL,
                                1u << 14, [&](gpunn_u64 k, unsigned int column, unsigned int keep) {
                                    for (int w = 0; w < Width; ++w)
                                        y[k + w] = S(gpunn_dropout(C(z[k + w]) + C(b[column + w]), (keep >> w) & 1u,
                                                                   C(1.25)));
                                });
}
template __global__ void gpunn_dropout_group_check<1, __half, float>(const __half*, const __half*, __half*, gpunn_u64,
                                                                     gpunn_u64, gpunn_u64, unsigned int,
                                                                     const gpunn_u64*);
template __global__ void gpunn_dropout_group_check<2, __half, float>(const __half*, const __half*, __half*, gpunn_u64,
                                                                     gpunn_u64, gpunn_u64, unsigned int,
                                                                     const gpunn_u64*);
template __global__ void gpunn_dropout_group_check<4, __half, float>(const __half*, const __half*, __half*, gpunn_u64,
                                                                     gpunn_u64, gpunn_u64, unsigned int,
                                                                     const gpunn_u64*);

template __global__ void gpunn_device_check<float, float>(const float*, const float*, const float*,
                                                          float*, float*, long, long);
template __global__ void gpunn_device_check<double, double>(const double*, const double*, const double*,
                                                            double*, double*, long, long);
template __global__ void gpunn_device_check<__half, float>(const __half*, const __half*, const __half*,
                                                           __half*, __half*, long, long);
