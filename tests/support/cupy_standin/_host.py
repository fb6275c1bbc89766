"""Compiling a kernel's C++ for the host: the prelude that stands in for CuPy's headers; the
build and its cache are gpunn.backends.native's (one compile per distinct kernel)."""

from __future__ import annotations

import ctypes

from gpunn.backends.native import HostCompilerError, build, cache_dir

MAX_DIMS = 32

#: What kernel code finds on the device, defined for the host: CuPy's CArray, CIndexer, float16
#: and CUPY_FOR (cupy/_core/include/cupy/carray.cuh, float16.cuh), the CUDA math-API names that
#: the C library lacks, and the few CUDA built-ins a kernel's block-level code uses.
PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <vector>
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

// A launch of cooperating threads (gpunn_standin_launch): the blocks run one after another (so a
// function's static ``__shared__`` array is its block's), each thread of a block a host thread, and
// __syncthreads is a barrier of the block's threads. CUPY_FOR is CuPy's grid-stride loop (carray.cuh).
struct gpunn_standin_dim3 { unsigned int x, y, z; };
static thread_local gpunn_standin_dim3 threadIdx = {0, 0, 0}, blockDim = {1, 1, 1}, blockIdx = {0, 0, 0},
                                       gridDim = {1, 1, 1};
#define CUPY_FOR(i, n) \
    for (ptrdiff_t i = (ptrdiff_t) blockIdx.x * blockDim.x + threadIdx.x; i < (ptrdiff_t)(n); \
         i += (ptrdiff_t) blockDim.x * gridDim.x)

class gpunn_standin_barrier {
  std::mutex mutex_;
  std::condition_variable arrived_;
  unsigned int count_, waiting_ = 0, generation_ = 0;
 public:
  explicit gpunn_standin_barrier(unsigned int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    unsigned int generation = generation_;
    if (++waiting_ == count_) { waiting_ = 0; ++generation_; arrived_.notify_all(); return; }
    const char* limit = std::getenv("GPUNN_STANDIN_BARRIER_SECONDS");
    const long seconds = limit ? std::atol(limit) : 60;
    if (!arrived_.wait_for(lock, std::chrono::seconds(seconds), [&] { return generation != generation_; })) {
      // On a GPU a barrier that some threads of the block skip is undefined behaviour (often a hang).
      std::fprintf(stderr, "CuPy stand-in: __syncthreads in block %u waited %ld s for %u of its %u threads; "
                   "some threads never reach it (a barrier inside a branch that differs between threads?)\n",
                   blockIdx.x, seconds, count_ - waiting_, count_);
      std::abort();
    }
  }
};
static thread_local gpunn_standin_barrier* gpunn_standin_block = nullptr;

// The memory order of the last-block pattern, checked as the threads run (the host's own memory
// model is stronger than the GPU's, so a missing fence would go unnoticed otherwise): a thread's
// atomicInc must come after a __threadfence of that thread (release: its block's writes are
// visible before its ticket), and the thread that draws the last ticket (the one that wraps) must
// fence again before its block's next barrier (acquire: the other blocks' writes are visible
// before the last block reads them). Each breach is counted; the launch reports it.
static std::atomic<int> gpunn_standin_order_breaches{0};
static thread_local bool gpunn_standin_fenced = false, gpunn_standin_acquire_due = false;
extern "C" int gpunn_standin_breaches() { return gpunn_standin_order_breaches.exchange(0); }
inline void gpunn_standin_block_start() { gpunn_standin_fenced = gpunn_standin_acquire_due = false; }
inline void gpunn_standin_check_acquire() {
  if (gpunn_standin_acquire_due) { gpunn_standin_order_breaches += 1000; gpunn_standin_acquire_due = false; }
}
inline void __syncthreads() {
  gpunn_standin_check_acquire();
  if (gpunn_standin_block) gpunn_standin_block->wait();
}
inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  gpunn_standin_fenced = true;
  gpunn_standin_acquire_due = false;
}
static std::mutex gpunn_standin_atomics;
inline unsigned int atomicInc(unsigned int* address, unsigned int value) {
  if (!gpunn_standin_fenced) gpunn_standin_order_breaches += 1;  // no release fence before the ticket
  gpunn_standin_fenced = false;
  std::lock_guard<std::mutex> lock(gpunn_standin_atomics);
  unsigned int old = *address;
  *address = old >= value ? 0u : old + 1u;
  gpunn_standin_acquire_due = old >= value;  // the last ticket: an acquire fence is due
  return old;
}

// The blocks run in a shuffled order (fixed per grid size), as a GPU schedules them in no promised
// order: code that assumes the last block to finish is the highest (or block 0) fails here.
template <typename Body>
void gpunn_standin_launch(unsigned int blocks, unsigned int threads, Body body) {
  gpunn_standin_barrier barrier(threads);
  std::vector<unsigned int> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), std::mt19937(blocks));
  auto run = [&](unsigned int t) {
    threadIdx.x = t; blockDim.x = threads; gridDim.x = blocks; gpunn_standin_block = &barrier;
    for (unsigned int block : order) {
      blockIdx.x = block;
      gpunn_standin_block_start();
      body();
      __syncthreads();  // the block is done before the next one reuses its shared memory
    }
    threadIdx = blockIdx = {0, 0, 0}; blockDim = gridDim = {1, 1, 1}; gpunn_standin_block = nullptr;
  };
  if (threads == 1) { run(0); return; }
  std::vector<std::thread> team;
  for (unsigned int t = 0; t < threads; ++t) team.emplace_back(run, t);
  for (std::thread& thread : team) thread.join();
}

#define GPUNN_STANDIN_MAX_DIMS @MAX_DIMS@

// CUDA overloads the math functions for float; the C library's global ones take double.
using std::abs; using std::sqrt; using std::exp; using std::log; using std::log1p; using std::expm1;
using std::tanh; using std::sin; using std::cos; using std::pow; using std::erf; using std::erfc;
using std::fabs; using std::fmin; using std::fmax; using std::floor; using std::ceil; using std::round;
using std::isnan; using std::isinf; using std::isfinite; using std::signbit; using std::cbrt; using std::atan;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
template <typename A, typename B> inline auto min(A a, B b) -> decltype(a + b) { return b < a ? b : a; }
template <typename A, typename B> inline auto max(A a, B b) -> decltype(a + b) { return a < b ? b : a; }

// CuPy's float16 (float16.cuh): half storage, arithmetic through float.
class float16 {
  _Float16 data_;
 public:
  float16() {}
  float16(float v) : data_((_Float16)v) {}
  explicit float16(bool v) : data_((_Float16)(float)v) {}
  explicit float16(double v) : data_((_Float16)(float)v) {}
  explicit float16(int v) : data_((_Float16)(float)v) {}
  explicit float16(unsigned int v) : data_((_Float16)(float)v) {}
  explicit float16(long long v) : data_((_Float16)(float)v) {}
  explicit float16(unsigned long long v) : data_((_Float16)(float)v) {}
  operator float() const { return (float)data_; }
  float16& operator=(const float16&) = default;
  template <typename T> float16& operator=(const T& rhs) { *this = static_cast<float16>(rhs); return *this; }
  template <typename T> float16& operator+=(const T& rhs) { *this = *this + rhs; return *this; }
  template <typename T> float16& operator-=(const T& rhs) { *this = *this - rhs; return *this; }
  template <typename T> float16& operator*=(const T& rhs) { *this = *this * rhs; return *this; }
  template <typename T> float16& operator/=(const T& rhs) { *this = *this / rhs; return *this; }
};
inline float16 min(float16 x, float16 y) { return float16(fminf(float(x), float(y))); }
inline float16 max(float16 x, float16 y) { return float16(fmaxf(float(x), float(y))); }
inline int isnan(float16 x) { return std::isnan(float(x)); }
inline int isinf(float16 x) { return std::isinf(float(x)); }
inline int isfinite(float16 x) { return std::isfinite(float(x)); }

// CuPy's CArray and CIndexer (carray.cuh), with the number of dimensions held at run time.
template <typename T> struct CArray {
  T* data_;
  ptrdiff_t size_, ndim_;
  ptrdiff_t shape_[GPUNN_STANDIN_MAX_DIMS], strides_[GPUNN_STANDIN_MAX_DIMS];
  ptrdiff_t size() const { return size_; }
  const ptrdiff_t* shape() const { return shape_; }
  const ptrdiff_t* strides() const { return strides_; }
  T* data() const { return data_; }
  // As in carray.cuh, an array parameter declared const (every input) gives const elements.
  T& operator[](const ptrdiff_t* idx) { return const_cast<T&>(static_cast<const CArray&>(*this)[idx]); }
  const T& operator[](const ptrdiff_t* idx) const {
    ptrdiff_t diff = 0;
    for (ptrdiff_t dim = 0; dim < ndim_; ++dim) diff += strides_[dim] * idx[dim];
    return *reinterpret_cast<const T*>(reinterpret_cast<const char*>(data_) + diff);
  }
  // Any integer index (a literal 0 too, which would otherwise also fit the pointer overload, where
  // CuPy's carray.cuh takes an array reference instead).
  template <typename I, typename = typename std::enable_if<std::is_integral<I>::value>::type>
  T& operator[](I index) { return const_cast<T&>(static_cast<const CArray&>(*this)[index]); }
  template <typename I, typename = typename std::enable_if<std::is_integral<I>::value>::type>
  const T& operator[](I index) const {
    ptrdiff_t i = (ptrdiff_t) index, diff = 0;
    for (ptrdiff_t dim = ndim_; --dim > 0;) { diff += strides_[dim] * (i % shape_[dim]); i /= shape_[dim]; }
    if (ndim_ > 0) diff += strides_[0] * i;
    return *reinterpret_cast<const T*>(reinterpret_cast<const char*>(data_) + diff);
  }
};
struct CIndexer {
  ptrdiff_t size_, ndim_;
  ptrdiff_t shape_[GPUNN_STANDIN_MAX_DIMS], index_[GPUNN_STANDIN_MAX_DIMS];
  ptrdiff_t size() const { return size_; }
  const ptrdiff_t* get() const { return index_; }
  void set(ptrdiff_t i) {
    for (ptrdiff_t dim = ndim_; --dim > 0;) { index_[dim] = i % shape_[dim]; i /= shape_[dim]; }
    if (ndim_ > 0) index_[0] = i;
  }
};
""".replace("@MAX_DIMS@", str(MAX_DIMS))

ENTRY = "gpunn_standin_entry"


class CArrayArgument(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_ssize_t), ("ndim", ctypes.c_ssize_t),
                ("shape", ctypes.c_ssize_t * MAX_DIMS), ("strides", ctypes.c_ssize_t * MAX_DIMS)]


class IndexerArgument(ctypes.Structure):
    _fields_ = [("size", ctypes.c_ssize_t), ("ndim", ctypes.c_ssize_t),
                ("shape", ctypes.c_ssize_t * MAX_DIMS), ("index", ctypes.c_ssize_t * MAX_DIMS)]


def array_argument(host) -> CArrayArgument:
    if host.ndim > MAX_DIMS:
        raise ValueError(f"the CuPy stand-in handles at most {MAX_DIMS} dimensions, got {host.ndim}")
    return CArrayArgument(host.__array_interface__["data"][0], host.size, host.ndim,
                          (ctypes.c_ssize_t * MAX_DIMS)(*host.shape), (ctypes.c_ssize_t * MAX_DIMS)(*host.strides))


def indexer_argument(shape) -> IndexerArgument:
    size = 1
    for extent in shape:
        size *= extent
    return IndexerArgument(size, len(shape), (ctypes.c_ssize_t * MAX_DIMS)(*shape))


_FLAGS = ("-std=c++17", "-O1", "-pthread")  # CuPy compiles with --std=c++17 (cupy/cuda/compiler.py)


def load(source: str):
    """The entry function of ``PRELUDE + source`` built as a shared object (cached)."""
    try:
        library = build(PRELUDE + source, _FLAGS, cache_dir("GPUNN_STANDIN_CACHE", "gpunn-cupy-standin"))
    except HostCompilerError as error:
        raise RuntimeError(f"the CuPy stand-in compiles kernels as host C++: {error}") from error
    entry = getattr(library, ENTRY)
    entry.argtypes, entry.restype = [ctypes.POINTER(ctypes.c_void_p)], None
    breaches = library.gpunn_standin_breaches
    breaches.argtypes, breaches.restype = [], ctypes.c_int

    def run(block):
        entry(block)
        count = breaches()
        if count:
            from support.cupy_standin._device import StandinViolation

            missing = [what for what, number in (("release", count % 1000), ("acquire", count // 1000)) if number]
            raise StandinViolation(
                f"the last-block ticket ran without its {' and '.join(missing)} __threadfence(): on a GPU the "
                "last block could read the other blocks' partial results before they are visible "
                "(CUDA programming guide, memory fence functions; kernels/grid.cuh)")

    return run
