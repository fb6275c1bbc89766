// The kernels' float maths with the GPU's approximate intrinsics modelled at the edges of their
// documented error bounds, built for the host by tests/kernels/test_device_maths.py, which appends
// wrappers for every registered activation and compares them with the exact double maths.
// __expf: 2 + floor(|1.173·x|) ulp; __fdividef: 2 ulp for |y| in [2^−126, 2^126], 0 above (the CUDA
// C++ Programming Guide, "Single-Precision Floating-Point Intrinsic Functions"). Each errs by its
// whole bound in the direction set by gpunn_model_directions (+1 up, −1 down), from the correctly
// rounded result.
#include <cmath>

static int gpunn_exp_direction = 0, gpunn_divide_direction = 0;

extern "C" void gpunn_model_directions(int exp_direction, int divide_direction) {
    gpunn_exp_direction = exp_direction;
    gpunn_divide_direction = divide_direction;
}

static float gpunn_step_ulps(float value, int ulps, int direction) {
    if (!std::isfinite(value) || value == 0.0f || direction == 0) return value;
    for (int step = 0; step < ulps; ++step) value = std::nextafter(value, direction > 0 ? INFINITY : -INFINITY);
    return value;
}

extern "C" float gpunn_model_expf(float x) {
    return gpunn_step_ulps((float) std::exp((double) x), 2 + (int) std::floor(std::fabs(1.173 * x)),
                           gpunn_exp_direction);
}

extern "C" float gpunn_model_fdividef(float a, float b) {
    if (std::fabs(b) > 0x1p126f && std::isfinite(b)) return std::signbit(a) != std::signbit(b) ? -0.0f : 0.0f;
    return gpunn_step_ulps((float) ((double) a / (double) b), 2, gpunn_divide_direction);
}

#define GPUNN_MODEL_DEVICE_INTRINSICS
#include "activations.cuh"
#include "losses.cuh"

#define GPUNN_MODEL_LOSSES(T, SUFFIX)                                                            \
    extern "C" void losses_##SUFFIX(const T* z, T* softmax_grad, T* bce_grad, T* bce, long n) {   \
        for (long i = 0; i < n; ++i) {                                                           \
            softmax_grad[i] = gpunn_softmax_xent_grad(z[i] < T(0) ? z[i] : -z[i], T(0), false, T(1)); /* z ≤ lse */ \
            bce_grad[i] = gpunn_bce_with_logits_grad(z[i], T(0.25), T(1));                       \
            bce[i] = gpunn_bce_with_logits(z[i], T(0.25));                                       \
        }                                                                                        \
    }
GPUNN_MODEL_LOSSES(float, f32)
GPUNN_MODEL_LOSSES(double, f64)
