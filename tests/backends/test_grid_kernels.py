"""The kernels whose threads work together (kernels/grid.cuh: the one-launch gradient norm, the
update that advances its own counters), run on the CuPy stand-in with CuPy's real blocks of
threads: each block's threads are host threads that meet at every __syncthreads, so a missing
barrier, a shared array read too early or a wrong last block shows here before any GPU runs it."""

import sys

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.selection import resolve_backend
from support import cupy_standin

import test_backend_conformance as conformance
from support.models import mlp


@pytest.fixture
def threaded():
    with cupy_standin.installed(block_threads=True) as standin:
        yield standin, resolve_backend("cupy")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("max_blocks", [2048, 3])  # 3: the threads stride over the buffer
def test_gradient_norm_in_one_launch(threaded, monkeypatch, rng, dtype, max_blocks):
    standin, backend = threaded
    monkeypatch.setattr(sys.modules["gpunn.backends.cupy_backend"], "GRID_MAX_BLOCKS", max_blocks)
    compute = "float64" if dtype == "float64" else "float32"
    scratch = backend.optimizer_scratch(compute)
    for size in (0, 1, 127, 128, 129, 1000, 3 * 128 * 4 + 5):  # around a block, and several per thread
        x = rng.normal(size=size).astype(dtype)
        X, out = backend.asarray(x), backend.zeros((1,), compute)
        launches = standin.count(lambda: backend.global_norm(X, out=out, scratch=scratch))
        assert dict(launches) == {"kernel": 1}
        np.testing.assert_allclose(backend.to_numpy(out)[0], np.linalg.norm(x.astype(np.float64)),
                                   rtol=1e-5 if compute == "float32" else 1e-13)
        assert backend.to_numpy(scratch.tickets).tolist() == [0, 0]  # ready for the next launch or replay


@pytest.mark.parametrize("offset", [0, 1])  # x aligned to a pair (the pairs kernel) or one element off
@pytest.mark.parametrize("max_blocks", [2048, 3])  # 3: threads stride over segments and their edges
def test_the_float16_norm_in_pairs_follows_the_segment_table(threaded, monkeypatch, rng, offset, max_blocks):
    """float16's norm reads two neighbours per load where x is aligned to two elements: segments
    that start or stop between the two elements of a pair, a segment not updated this step and a
    gap between segments give the norm of the updated elements only, as one element per thread
    gives it."""
    _, backend = threaded
    monkeypatch.setattr(sys.modules["gpunn.backends.cupy_backend"], "GRID_MAX_BLOCKS", max_blocks)
    launched = []
    build = backend._kernel
    monkeypatch.setattr(backend, "_kernel", lambda op, *rest: launched.append(op) or build(op, *rest))
    n = 4001
    cut = [0, 1, 2, 601, 1000, 1001, 2501, 3000, n]  # odd and even edges; [2501, 3000) lies between segments
    rows = [(cut[0], cut[1], 1), (cut[1], cut[2], 1), (cut[2], cut[3], 0), (cut[3], cut[4], 1), (cut[4], cut[5], 1),
            (cut[5], cut[6], 1), (cut[7], cut[8], 1)]
    table = [v for start, stop, updated in rows for v in (start, stop, 0, updated)]
    x = rng.normal(size=n).astype("float16")
    X = backend.asarray(np.concatenate([np.zeros(offset, "float16"), x]))[offset:]
    out = backend.zeros((1,), "float32")
    for segments, kept in ((backend.asarray(table, "int64"), [(a, b) for a, b, updated in rows if updated]),
                           (None, [(0, n)])):
        backend.global_norm(X, out=out, segments=segments)
        expected = np.sqrt(sum(np.sum(x[a:b].astype(np.float64) ** 2) for a, b in kept))
        np.testing.assert_allclose(backend.to_numpy(out)[0], expected, rtol=1e-5)
    assert launched == ["gradient_norm" if offset else "gradient_norm_pairs"] * 2


def test_a_non_finite_gradient_gives_a_non_finite_norm(threaded):
    _, backend = threaded
    out = backend.zeros((1,), "float32")
    for bad in (np.inf, np.nan):
        x = np.ones(700, np.float32)
        x[513] = bad
        backend.global_norm(backend.asarray(x), out=out)
        assert not np.isfinite(backend.to_numpy(out)[0])


@pytest.mark.parametrize("max_blocks", [2048, 2])  # 2: each thread updates several elements, across segments
def test_counters_and_segments_with_real_blocks(threaded, monkeypatch, rng, max_blocks):
    _, backend = threaded
    monkeypatch.setattr(sys.modules["gpunn.backends.cupy_backend"], "GRID_MAX_BLOCKS", max_blocks)
    conformance.test_the_update_advances_the_counters_after_every_element_read_them(backend, 300)
    conformance.test_the_update_follows_its_segment_table(backend, rng, "float32", 300)


@pytest.mark.parametrize("dtype,make", [
    ("float32", lambda: gn.Adam(lr=1e-2, max_grad_norm=0.5)),
    ("float16", lambda: gn.AdamW(lr=1e-2)),  # the loss scale's overflow check reads the norm
])
def test_training_steps_match_numpy(threaded, rng, dtype, make):
    """A few clipped (or loss-scaled) steps of a 1,600-parameter model: 13 blocks of 128 threads."""
    x, t = rng.normal(size=(16, 6)), rng.normal(size=(16, 3))
    results = []
    for backend in ("numpy", "cupy"):
        model = mlp(backend, dtype=dtype, widths=(6, 40, 30, 3))
        optimizer = make()
        step = gn.TrainStep(model, gn.MSELoss(), optimizer)
        X, T = step.prepare(x, t)
        for _ in range(3):
            step(X, T)
        results.append((model.backend.to_numpy(model.flat.values).astype(np.float64),
                        model.backend.to_numpy(optimizer._scalars)))
    (values, counters), (device_values, device_counters) = results
    np.testing.assert_allclose(device_values, values, rtol=2e-3 if dtype == "float16" else 1e-5, atol=1e-4)
    np.testing.assert_array_equal(device_counters, counters)
