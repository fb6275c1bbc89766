// Cooperation across a launch, for a kernel that must reduce over the whole grid (the gradient
// norm) or act once after every block is done (the optimizer's counters) without a second launch.
// Both functions synchronise the block: every thread of the block calls them, outside any branch
// that differs between its threads. The pattern is CUDA's threadFenceReduction sample: each block
// publishes its part, fences, and takes a ticket; the block with the last ticket sees them all.
#pragma once

// The sum of ``value`` over the threads of this block, returned to every thread, always added in the
// same order (so every block that sums the same values gets the same bits). blockDim.x must be a
// power of two no larger than MaxThreads.
template <unsigned int MaxThreads, typename C>
__device__ inline C gpunn_block_sum(C value) {
    __shared__ C sums[MaxThreads];
    __syncthreads();  // readers of an earlier call's sums[0] are done
    sums[threadIdx.x] = value;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
        __syncthreads();
    }
    return sums[0];
}

// True in every thread of the block that arrives last, once every block of the grid has arrived.
// ``ticket`` must start at 0; atomicInc wraps it back to 0 at the last ticket, so the next launch
// (or replay of a captured graph) needs no reset. Global writes that any block made before its
// call are visible to the last block afterwards through volatile or atomic reads only: a plain
// load may hit a stale line in this SM's L1.
__device__ inline bool gpunn_last_block(unsigned int* ticket) {
    __shared__ bool last;
    __syncthreads();  // this block's threads are done with their loop
    if (threadIdx.x == 0) {
        __threadfence();  // release: this block's writes before its ticket
        last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
        if (last) __threadfence();  // acquire: the others' writes before what the last block reads
    }
    __syncthreads();
    return last;
}
