// Optimizer update rules, one element of the flat parameter buffer at a time, with the same
// semantics (and the same order of operations) as torch.optim. C is the compute type: float for
// float16 and float32 storage (float16 models update float32 master weights), double for float64.
// A rule is one struct: its constructor, (lr, step, h0, h1, h2, flag), runs once per parameter
// segment and keeps what does not change within it (Adam's bias corrections: a power, a square
// root and two divisions), and its call, (param, state0, state1, grad, weight_decay), runs per
// element. ``step`` counts this update of this parameter (1 for its first), for Adam's bias
// correction: as torch.optim's state["step"], one count per parameter, which a step that leaves it
// out does not advance. Computing a constant once instead of per element changes no bit.
#pragma once
#include "math.cuh"

// The gradient a rule sees: the stored gradient times the reciprocal of the loss scale (mixed
// precision; torch's GradScaler multiplies by the float64 reciprocal rounded to float32, as the
// NumPy twin does), then clipped with torch's clip_grad_norm_ factor min(1, max_norm / (norm +
// 1e-6)), where ``norm`` is the global L2 norm of the stored gradients (so norm / loss_scale is the
// true one). A NaN norm makes the factor NaN, as in torch. Constructed once per step and thread.
template <typename C>
struct gpunn_unscale {
    C inverse, clip = C(1);

    __host__ __device__ gpunn_unscale(double loss_scale, C norm, C max_norm) : inverse((C) (1.0 / loss_scale)) {
        if (max_norm > C(0)) {
            C coefficient = max_norm / (norm / (C) loss_scale + C(1e-6));
            clip = coefficient > C(1) ? C(1) : coefficient;
        }
    }

    __host__ __device__ C operator()(C stored) const { return stored * inverse * clip; }
};

// L2 weight decay g + wd·p, skipped at wd = 0 as torch.optim skips it: 0·p would turn a
// parameter that has diverged to ±Inf into NaN.
template <typename C>
__host__ __device__ inline C gpunn_decay_l2(C grad, C param, C weight_decay) {
    return weight_decay != C(0) ? grad + weight_decay * param : grad;
}

// SGD: g += wd·p; v = μ·v + g; g = nesterov ? g + μ·v : v (plain SGD when μ = 0); p −= lr·g.
template <typename C>
struct gpunn_sgd_update {
    C lr, momentum;
    bool nesterov;

    __host__ __device__ gpunn_sgd_update(C lr, C step, C momentum, C h1, C h2, bool nesterov)
        : lr(lr), momentum(momentum), nesterov(nesterov) {}

    __host__ __device__ void operator()(C& param, C& velocity, C& unused, C grad, C weight_decay) const {
        grad = gpunn_decay_l2(grad, param, weight_decay);
        if (momentum != C(0)) {
            velocity = momentum * velocity + grad;
            grad = nesterov ? grad + momentum * velocity : velocity;
        }
        param = param - lr * grad;
    }
};

// Adam (L2 decay added to the gradient) or AdamW (decoupled: p ·= 1 − lr·wd first), as torch.optim:
// m ← m + (1−β1)(g − m); v ← β2·v + (1−β2)·g²; p −= lr/(1−β1ᵗ) · (m / (√v/√(1−β2ᵗ) + ε)), the
// quotient first as torch's addcdiv; √v is multiplied by 1/√(1−β2ᵗ), as the NumPy twin does it.
// The step size and that reciprocal depend on the segment's step count only: computed per segment.
template <typename C>
struct gpunn_adam_update {
    C lr, beta1, beta2, eps, step_size, correction;
    bool decoupled;

    __host__ __device__ gpunn_adam_update(C lr, C step, C beta1, C beta2, C eps, bool decoupled)
        : lr(lr), beta1(beta1), beta2(beta2), eps(eps), step_size(lr / (C(1) - gpunn_pow(beta1, step))),
          correction(C(1) / gpunn_sqrt(C(1) - gpunn_pow(beta2, step))), decoupled(decoupled) {}

    __host__ __device__ void operator()(C& param, C& exp_avg, C& exp_avg_sq, C grad, C weight_decay) const {
        if (decoupled) {
            param = param * (C(1) - lr * weight_decay);
        } else {
            grad = gpunn_decay_l2(grad, param, weight_decay);
        }
        exp_avg = exp_avg + (C(1) - beta1) * (grad - exp_avg);
        exp_avg_sq = exp_avg_sq * beta2 + (C(1) - beta2) * grad * grad;
        C denominator = gpunn_sqrt(exp_avg_sq) * correction + eps;
        // With eps = 0 the denominator is 0 where no gradient was seen, and on the GPU also where the
        // second moment is subnormal: CuPy compiles with -ftz=true (cupy/cuda/compiler.py), which
        // flushes it to 0 while exp_avg is not. Such an element does not move (no 0/0 NaN, no x/0 Inf);
        // a NaN denominator still compares unequal to 0, so a NaN gradient still poisons its parameter.
        param = param - step_size * (denominator == C(0) ? C(0) : exp_avg / denominator);
    }
};

// The segment table of one update (gpunn/optim/segments.py builds it): per bound parameter
// GPUNN_SEGMENT_FIELDS int64 numbers, [start, stop) in the flat buffer, where its optimizer state
// starts, and whether this step updates it (1) or leaves it and its state as they are (0: frozen, or
// no gradient). Segments are sorted and disjoint; an element between two belongs to no bound parameter.
#define GPUNN_SEGMENT_FIELDS 4

// A search that runs only when a thread's element leaves its segment: kept out of line on the GPU, so
// the per-element loop stays a short straight path (and the cost model in gpunn/bench reads it as such).
#if defined(__CUDACC__)
#define GPUNN_RARELY_CALLED __noinline__
#else
#define GPUNN_RARELY_CALLED
#endif

// The first segment from ``from`` on whose stop lies above flat element ``k`` (``count`` if none).
static GPUNN_RARELY_CALLED __host__ __device__ long long gpunn_segment_of(const long long* segments, long long count,
                                                                   long long k, long long from) {
    long long low = from, high = count;
    while (low < high) {
        long long middle = low + (high - low) / 2;
        if (segments[GPUNN_SEGMENT_FIELDS * middle + 1] <= k) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    return low;
}

// A grid-strided thread's place in the segment table: the segment of its last element, in registers.
// Its elements only grow, so ``at`` compares with the segment's stop and searches on only past it.
struct gpunn_segment_cursor {
    long long index = 0, start = 0, stop = 0, state = 0;
    bool updates = false;

    // Whether this step updates flat element ``k`` (then its state is at state + k - start).
    __host__ __device__ inline bool at(const long long* segments, long long count, long long k) {
        if (k >= stop) {
            index = gpunn_segment_of(segments, count, k, index);
            if (index < count) {
                const long long* entry = segments + GPUNN_SEGMENT_FIELDS * index;
                start = entry[0], stop = entry[1], state = entry[2], updates = entry[3] != 0;
            } else {  // past the last segment: nothing more to update
                stop = (long long) (~0ULL >> 1), updates = false;
            }
        }
        return updates && k >= start;
    }
};

// The per-step counters in ``scalars`` (double): [0] updates applied, [1] updates attempted (the
// schedule's step), [2] loss scale, [3] good steps since the scale last changed, [4] skipped steps.
// With dynamic loss scaling a non-finite gradient norm skips the update, halves the scale and counts
// the skip; ``growth_interval`` good steps in a row double it (torch's GradScaler defaults).
template <typename C>
__host__ __device__ inline void gpunn_after_update(double* scalars, C norm, bool dynamic_scale,
                                                   double growth_interval) {
    scalars[1] += 1.0;
    if (dynamic_scale && !gpunn_isfinite(norm)) {
        scalars[2] *= 0.5;
        scalars[3] = 0.0;
        scalars[4] += 1.0;
        return;
    }
    scalars[0] += 1.0;
    if (dynamic_scale) {
        scalars[3] += 1.0;
        if (scalars[3] >= growth_interval) {
            scalars[2] *= 2.0;
            scalars[3] = 0.0;
        }
    }
}
