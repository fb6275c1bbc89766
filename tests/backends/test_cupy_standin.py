"""The CuPy stand-in itself: CuPy's kernel rules on cases from CuPy's documentation and tests,
CuPy's device wall, the cuBLAS model, isolation from other tests, and the launch log."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.selection import backend_of, resolve_backend
from gpunn.backends import cublas
from support import cupy_standin
from support.cupy_standin import StandinViolation


@pytest.fixture
def standin():
    with cupy_standin.installed() as installed:
        yield installed


@pytest.fixture
def cp(standin):
    return standin.cupy


# --- ElementwiseKernel: the examples of CuPy v14.2.0 docs/source/user_guide/kernel.rst -------
def test_documented_broadcasting_scalars_and_outputs(cp):
    squared_diff = cp.ElementwiseKernel("float32 x, float32 y", "float32 z", "z = (x - y) * (x - y)", "squared_diff")
    x = cp.asarray(np.arange(10, dtype=np.float32).reshape(2, 5))
    y = cp.asarray(np.arange(5, dtype=np.float32))
    expected = [[0.0] * 5, [25.0] * 5]
    assert squared_diff(x, y).get().tolist() == expected  # y broadcast over the rows
    assert squared_diff(x, 5).get().tolist() == [[25, 16, 9, 4, 1], [0, 1, 4, 9, 16]]  # a typed scalar
    z = cp.empty((2, 5), dtype=np.float32)
    assert squared_diff(x, y, z) is z and z.get().tolist() == expected  # the output passed positionally


def test_documented_type_placeholders(cp):
    generic = cp.ElementwiseKernel("T x, T y", "T z", "T diff = x - y; z = diff * diff;", "squared_diff_generic")
    for dtype in ("float16", "float64", "int32"):
        x = cp.asarray(np.arange(6, dtype=dtype).reshape(2, 3))
        got = generic(x, cp.asarray(np.array([1, 2, 3], dtype)))
        assert got.dtype == dtype and got.get().tolist() == [[1, 1, 1], [4, 4, 4]]
    super_generic = cp.ElementwiseKernel("X x, Y y", "Z z", "z = (x - y) * (x - y)", "squared_diff_super_generic")
    x, y = cp.asarray(np.arange(3, dtype=np.float32)), cp.asarray(np.ones(3, np.int64))
    with pytest.raises(KeyError):  # "requires the output argument to be explicitly specified"
        super_generic(x, y)
    z = cp.empty(3, np.float64)
    assert super_generic(x, y, z).get().tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(TypeError, match="Type is mismatched"):
        generic(x, cp.asarray(np.ones(3, np.float64)))


def test_documented_raw_argument_and_index(cp):
    add_reverse = cp.ElementwiseKernel("T x, raw T y", "T z", "z = x + y[_ind.size() - i - 1]", "add_reverse")
    x = cp.asarray(np.arange(5.0))
    y = cp.asarray(np.arange(10.0)[::2])  # raw arguments may be strided
    assert add_reverse(x, y).get().tolist() == [8.0, 7.0, 6.0, 5.0, 4.0]


def test_raw_inputs_are_const_as_in_cupy(cp):
    """carray.cuh: an input's elements are const, so a kernel writing through a raw input fails to
    compile with CuPy; the stand-in must refuse it too (it once compiled such a kernel)."""
    writes_input = cp.ElementwiseKernel("raw float32 x", "float32 y", "x[i] = 1; y = 0", "writes_input")
    with pytest.raises(RuntimeError, match="did not compile"):
        writes_input(cp.zeros(3, "float32"), cp.zeros(3, "float32"))


@pytest.mark.parametrize("block_threads", [True, False])
def test_code_around_the_loop_meets_a_grid_of_blocks(block_threads):
    """loop_prep and after_loop run in every thread of CuPy's launch (⌈size / block_size⌉ blocks, of
    block_size threads, or of one by default), CUPY_FOR strides over the grid, and __syncthreads
    makes a block's shared writes visible to its other threads: each reads its neighbour's count."""
    with cupy_standin.installed(block_threads=block_threads) as standin:
        cp = standin.cupy
        grid = cp.ElementwiseKernel(
            "raw float32 x", "raw int64 counts, raw int64 neighbours, raw int64 shape", "++seen", "grid",
            loop_prep="long long seen = 0",
            after_loop="""__shared__ long long values[64];
            long long thread = blockIdx.x * blockDim.x + threadIdx.x;
            values[threadIdx.x] = seen + thread;
            __syncthreads();
            counts[thread] = seen;
            neighbours[thread] = values[(threadIdx.x + 1) % blockDim.x];
            if (thread == 0) { shape[0] = gridDim.x; shape[1] = blockDim.x; }""")
        counts, neighbours, shape = cp.zeros(320, "int64"), cp.zeros(320, "int64"), cp.zeros(2, "int64")
        grid(cp.zeros(1, "float32"), counts, neighbours, shape, size=300, block_size=64)
        threads = 64 if block_threads else 1
        assert cp.asnumpy(shape).tolist() == [5, threads]
        thread = np.arange(5 * threads)
        expected = np.array([np.count_nonzero(np.arange(300) % (5 * threads) == t) for t in thread])
        neighbour = thread // threads * threads + (thread + 1) % threads
        np.testing.assert_array_equal(cp.asnumpy(counts)[:thread.size], expected)
        np.testing.assert_array_equal(cp.asnumpy(neighbours)[:thread.size], expected[neighbour] + neighbour)


def test_a_barrier_some_threads_skip_aborts_with_its_block_named(tmp_path):
    """On a GPU a __syncthreads that not every thread of the block reaches is undefined behaviour;
    the stand-in stops the process with a message instead of hanging the test run."""
    script = tmp_path / "divergent.py"
    script.write_text(
        "from support import cupy_standin\n"
        "with cupy_standin.installed(block_threads=True) as standin:\n"
        "    cp = standin.cupy\n"
        "    kernel = cp.ElementwiseKernel('raw float32 x', 'raw float32 y', '', 'divergent',\n"
        "                                  after_loop='if (threadIdx.x > 0) __syncthreads()')\n"
        "    kernel(cp.zeros(1, 'float32'), cp.zeros(1, 'float32'), size=64, block_size=32)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "GPUNN_STANDIN_BARRIER_SECONDS": "1",
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))})
    assert result.returncode != 0
    assert "__syncthreads in block" in result.stderr and "for 1 of its 32 threads" in result.stderr


def test_documented_reduction(cp):
    l2norm = cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "l2norm")
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    got = l2norm(cp.asarray(x), axis=1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.get(), [5.477226, 15.9687195], rtol=1e-7)
    np.testing.assert_allclose(l2norm(cp.asarray(x), axis=0).get(), np.sqrt((x * x).sum(axis=0)), rtol=1e-7)
    assert l2norm(cp.asarray(x), axis=1, keepdims=True).shape == (2, 1)
    assert l2norm(cp.asarray(x)).shape == ()
    sizes = cp.ReductionKernel("T x", "int64 n", "0", "a + b", "n = _in_ind.size() * 100 + _out_ind.size()", "0", "sizes")
    assert sizes(cp.asarray(np.ones((3, 4, 5))), axis=(0, 2)).get().tolist() == [60 * 100 + 4] * 4


# --- size and raw rules: CuPy v14.2.0 tests/cupy_tests/core_tests/test_userkernel.py --------
def no_op(cp, input_raw, output_raw):
    inputs = ", ".join(f"{'raw ' if raw else ''}float32 x{i}" for i, raw in enumerate(input_raw))
    outputs = ", ".join(f"{'raw ' if raw else ''}float32 y{i}" for i, raw in enumerate(output_raw))
    return cp.ElementwiseKernel(inputs, outputs, "", "kernel")


SIZE_REQUIRED, SIZE_NOT_ALLOWED = r"^Loop size is undecided\.", r"^Specified 'size' can"
SIZE_CASES = [  # (input raw flags, output raw flags, arguments, size, expected error or None)
    ((True, True), (False,), "aa", 2, None), ((True, True), (False,), "aa", None, SIZE_REQUIRED),
    ((True, True), (True,), "aa", 2, None), ((True, True), (True,), "aa", None, SIZE_REQUIRED),
    ((False, False), (False,), "aa", 2, SIZE_NOT_ALLOWED), ((True, False), (True,), "aa", 2, SIZE_NOT_ALLOWED),
    ((False, False), (False,), "a7", 2, SIZE_NOT_ALLOWED), ((False, False), (True,), "7a", 2, SIZE_NOT_ALLOWED),
    ((True, False), (False,), "a7", 2, None), ((True, False), (False,), "a7", None, SIZE_REQUIRED),
    ((False, True), (True,), "7a", 2, None), ((False, True), (True,), "7a", None, SIZE_REQUIRED),
    ((True,), (False,), "aa", None, None), ((True,), (False,), "aa", 2, SIZE_NOT_ALLOWED),
    ((), (False,), "a", None, None), ((), (False,), "a", 2, SIZE_NOT_ALLOWED),
    ((), (True,), "a", 2, None), ((), (True,), "a", None, SIZE_REQUIRED)]


@pytest.mark.parametrize("input_raw, output_raw, arguments, size, error", SIZE_CASES)
def test_size_rules(cp, input_raw, output_raw, arguments, size, error):
    kernel = no_op(cp, input_raw, output_raw)
    args = [cp.asarray(np.array([1, 2], np.float32)) if a == "a" else 7 for a in arguments]
    kwargs = {} if size is None else {"size": size}
    if error is None:
        kernel(*args, **kwargs)
    else:
        with pytest.raises(ValueError, match=error):
            kernel(*args, **kwargs)


def test_manual_indexing_equals_automatic(cp, rng):
    """test_userkernel.py, test_manual_indexing: raw arguments indexed by i, with size=n."""
    a, b = (cp.asarray(rng.uniform(-1, 1, 100).astype(np.float32)) for _ in range(2))
    automatic = cp.ElementwiseKernel("T x, T y", "T z", "z = x + y;", "user_kernel_1")(a, b)
    manual = cp.ElementwiseKernel("raw T x, raw T y", "raw T z", "z[i] = x[i] + y[i];", "user_kernel_2")(a, b, size=100)
    np.testing.assert_array_equal(automatic.get(), manual.get())


@pytest.mark.parametrize("value", [-1, 2 ** 32, 2 ** 63 - 1, -(2 ** 63)])
@pytest.mark.parametrize("dtype", ["int8", "int32", "uint32", "int64", "float16", "float32"])
def test_python_scalars_take_the_parameter_type(cp, value, dtype):
    """test_userkernel.py, TestUserkernelScalar: NumPy's assignment rules, overflow refused."""
    kernel = cp.ElementwiseKernel("T x, T y", "T z", "z = x + y", "scalar_add")
    x = np.zeros(3, dtype)
    try:
        with np.errstate(over="ignore"):  # float16: a large integer becomes inf, as on the device
            expected = x + np.array(value, dtype)
    except OverflowError:
        with pytest.raises(OverflowError):
            kernel(cp.asarray(x), value)
        return
    np.testing.assert_array_equal(kernel(cp.asarray(x), value).get(), expected)


def test_output_rules(cp):
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x + x", "double_it")
    x = cp.asarray(np.arange(3.0))
    with pytest.raises(ValueError, match=r"could not be broadcast together with shapes \(3,\) \(4,\)"):
        kernel(x, cp.empty((4,)))
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        kernel(cp.empty((2, 3)), x)
    wider = cp.empty((2, 3))  # outputs take part in broadcasting (_kernel.pyx, __call__)
    assert kernel(x, wider).get().tolist() == [[0, 2, 4]] * 2
    with pytest.raises(TypeError, match="Output arguments type must be cupy.ndarray"):
        kernel(x, 5.0)
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        kernel()
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        kernel(np.arange(3.0))
    kernel(x, x)  # in place: the output may be an input
    assert x.get().tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="Invalid kernel name"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "no spaces")


# --- the device wall, isolation ------------------------------------------------------------
def test_device_arrays_stay_on_the_device(cp):
    x = cp.asarray(np.ones((2, 2)))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + np.ones((2, 2))
    assert backend_of(x).name == "cupy" and hasattr(x, "__cuda_array_interface__")
    with pytest.raises(TypeError, match="got a cupy array .* on the numpy backend"):
        resolve_backend("numpy").asarray(x)
    assert isinstance(cp.exp(x), cp.ndarray) and isinstance(x.sum(axis=0), cp.ndarray)


def test_installation_is_undone():
    loader, current = cublas.load_library, gn.get_backend()  # "auto" may import the real CuPy: first
    before = {name: sys.modules.get(name) for name in ("cupy", *cupy_standin.BACKEND_MODULES)}
    with cupy_standin.installed() as standin:
        import cupy

        assert cupy is standin.cupy
        assert resolve_backend("cupy").xp is standin.cupy
        gn.use_backend("cupy")  # for the rest of the context, as the CLI does
    assert {name: sys.modules.get(name) for name in before} == before
    assert gn.get_backend() is current
    assert cublas.load_library is loader
    assert "__standin__" not in vars(sys.modules.get("cupy") or sys)


# --- the cuBLAS model ------------------------------------------------------------------------
def test_gemm_receives_what_row_major_gemm_chooses(standin, rng):
    backend = resolve_backend("cupy")
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 3))
    got = backend.matmul_tn(backend.asarray(a), backend.asarray(b))
    np.testing.assert_allclose(got.get(), a.T @ b, rtol=1e-12)
    _, trans_first, trans_second, m, n, k, ld_first, ld_second, ldc = cublas.row_major_gemm("tn", a.shape, b.shape)
    assert standin.cublas.calls[-1] == (trans_first, trans_second, m, n, k, 1, ld_first, 1, ld_second, 1, ldc,
                                        cublas.COMPUTE_64F, -1)


def test_gemm_model_refuses_what_a_gpu_would_punish(standin):
    import ctypes

    library = standin.cublas
    handle = ctypes.c_void_p()
    assert library.cublasCreate_v2(ctypes.byref(handle)) == 0
    library.cublasSetStream_v2(handle, 0)
    x = standin.cupy.asarray(np.ones((2, 2)))
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    common = (handle, 0, 0, 2, 2, 2)
    with pytest.raises(StandinViolation, match="reads alpha as a c_double"):
        library.cublasGemmEx(*common, ctypes.byref(one), x.data.ptr, 1, 2, x.data.ptr, 1, 2, ctypes.byref(zero),
                             x.data.ptr, 1, 2, cublas.COMPUTE_64F, -1)
    one, zero = ctypes.c_double(1.0), ctypes.c_double(0.0)
    with pytest.raises(StandinViolation, match="out-of-bounds"):
        library.cublasGemmEx(handle, 0, 0, 3, 2, 2, ctypes.byref(one), x.data.ptr, 1, 3, x.data.ptr, 1, 2,
                             ctypes.byref(zero), x.data.ptr, 1, 3, cublas.COMPUTE_64F, -1)
    assert library.cublasGemmEx(*common, ctypes.byref(one), x.data.ptr, 1, 1, x.data.ptr, 1, 2, ctypes.byref(zero),
                                x.data.ptr, 1, 2, cublas.COMPUTE_64F, -1) == 7  # lda < m: invalid value
    assert library.cublasGemmEx(*common, ctypes.byref(one), x.data.ptr, 1, 2, x.data.ptr, 1, 2, ctypes.byref(zero),
                                x.data.ptr, 1, 2, cublas.COMPUTE_32F, -1) == 15  # float64 data, 32F compute
    with pytest.raises(ctypes.ArgumentError):
        library.cublasGemmEx(*common, ctypes.byref(one), x.data.ptr, 1.5, 2, x.data.ptr, 1, 2, ctypes.byref(zero),
                             x.data.ptr, 1, 2, cublas.COMPUTE_64F, -1)


# --- launches ----------------------------------------------------------------------------------
def mlp_step(rows, width, graph=False):
    model = gn.Sequential(gn.Dense(width, width, seed=1), gn.Tanh(), gn.Dense(width, 3, seed=2))
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.1, momentum=0.9), graph=graph)
    x, t = step.prepare(np.random.default_rng(0).normal(size=(rows, width)), np.arange(rows) % 3)
    step(x, t)
    return lambda: step(x, t)


def test_launches_per_step_do_not_depend_on_sizes(standin):
    with gn.use_backend("cupy"):
        small, large = standin.count(mlp_step(4, 5)), standin.count(mlp_step(32, 40))
        graph = mlp_step(4, 5, graph=True)
        graph()  # the second step records the graph; later steps replay it
        replayed = standin.count(graph)
    assert small == large and small["cublas"] >= 5 and small["kernel"] >= 4
    # A replay is one graph launch; what stays eager is copying the batch in and the loss out.
    assert replayed["graph"] == 1 and replayed["cublas"] == 0 and replayed["kernel"] < small["kernel"]


def test_leaving_the_stand_in_gives_back_the_real_backend_modules():
    """After the block, `from gpunn.backends import cupy_kernels` is the module built on the real CuPy
    again (the package's attribute, not only sys.modules): a kernel built later is CuPy's own."""
    import gpunn.backends
    from gpunn.backends import cupy_kernels as before

    with cupy_standin.installed():
        from gpunn.backends import cupy_kernels as inside
        assert inside is not before
    from gpunn.backends import cupy_kernels as after
    assert after is before and gpunn.backends.cupy_kernels is before and sys.modules["gpunn.backends.cupy_kernels"] is before


def test_routines_launch_what_cupys_source_launches(standin, rng):
    """Per routine, CuPy 14.2's own launches (tests/support/cupy_standin/_launches.py cites each)."""
    cp = standin.cupy
    z = cp.asarray(rng.normal(size=(6, 4)).astype("float32"))
    labels = cp.asarray(rng.integers(0, 4, size=(6, 1)))
    big = cp.asarray(np.ones(5000, "float32"))
    out = cp.empty((6, 4), "float32")
    expected = [
        (lambda: cp.take_along_axis(z, labels, axis=1), {"kernel": 4, "memory": 1}),  # arange, 2 index preps, take
        (lambda: cp.copyto(out, z), {"memory": 1}),  # contiguous, one dtype: a memcpy
        (lambda: cp.copyto(out, z.T.T[:, ::-1]), {"kernel": 1}),  # strided: elementwise_copy
        (lambda: z.sum(), {"kernel": 1}),  # CUB DeviceReduce, one tile
        (lambda: big.sum(), {"kernel": 2}),  # CUB DeviceReduce, two passes
        (lambda: z.sum(axis=1), {"kernel": 1}),  # CUB segmented
        (lambda: z.mean(), {"kernel": 2}),  # CUB sum, then true_divide
        (lambda: z.astype("float16").mean(), {"kernel": 3}),  # astype; a float32 sum is no CUB sum: _mean; astype
        (lambda: (z > 0).sum(), {"kernel": 2}),  # the comparison; bool is not CUB's: CuPy's reduction
        (lambda: z.argmax(axis=1), {"kernel": 1}),  # no segmented argmax in CUB: CuPy's reduction
        (lambda: z.copy(), {"kernel": 1}),  # _astype → elementwise_copy
        (lambda: out.fill(0), {"memory": 1}),
        (lambda: out.fill(2), {"kernel": 1}),
    ]
    for work, counts in expected:
        assert dict(standin.count(work)) == counts, counts
