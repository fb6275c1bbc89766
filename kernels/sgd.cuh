// The SGD update, in place, one pass per parameter (PyTorch's convention for momentum).
#pragma once

template <typename C> __host__ __device__ inline C gpunn_sgd_step(C param, C grad, C lr) {
    return param - lr * grad;
}

// v ← μ·v + g;  p ← p − lr·v.  Both are read and written in the same pass.
template <typename C>
__host__ __device__ inline void gpunn_sgd_momentum_step(C& param, C& velocity, C grad, C lr, C momentum) {
    velocity = momentum * velocity + grad;
    param = param - lr * velocity;
}
