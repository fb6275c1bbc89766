"""Streamed batches on the CuPy backend (through the stand-in, whose _streams.py queues pinned copies on
their stream): gathered into pinned buffers, copied on a side stream, double-buffered; the same training
as NumPy's, and the stand-in fails the two races double buffering can have."""

import contextlib

import numpy as np
import pytest
from support import cupy_standin

import gpunn as gn
from gpunn.data import stream


@pytest.fixture
def files(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(stream, "CHUNK_BYTES", 64 * 6 * 8)  # several chunks of 64 rows
    x = rng.normal(size=(200, 6))
    t = rng.integers(0, 3, size=200)
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r"), t


def train(backend, X, t, **options):
    with gn.use_backend(backend):
        model = gn.Sequential(gn.Dense(6, 12, dtype="float64", seed=0), gn.Tanh(), gn.Dense(12, 3, dtype="float64", seed=1))
    history = model.fit(X, t, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.SGD(lr=0.1, momentum=0.9), epochs=2,
                        batch_size=16, seed=4, verbose=0, metrics=("accuracy",), **options)
    return history, np.asarray(model.backend.to_numpy(model.flat.values)), model


def test_a_streamed_fit_on_cupy_equals_numpy_through_pinned_double_buffers(files):
    X, t = files
    expected, weights, _ = train("numpy", X, t, validation_split=0.25)
    with cupy_standin.installed() as standin:
        got, cupy_weights, model = train("cupy", X, t, validation_split=0.25)
        state = standin.device.streams_state
        # per epoch, fit and validation each take a ring of pinned inputs and targets (from CuPy's pinned pool)
        assert len(state["pinned"]) == 2 * 2 * stream.RING * 2
        assert not state["pending"]  # every copy completed
        predicted = model.predict(X, batch_size=50)
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-12), key
    np.testing.assert_allclose(cupy_weights, weights, rtol=1e-12, atol=1e-14)
    assert predicted.shape == (200, 3)


def test_the_stand_in_fails_a_step_that_reads_a_batch_before_waiting_for_its_copy(files, monkeypatch):
    X, t = files
    with cupy_standin.installed() as standin:
        monkeypatch.setattr(type(standin.cupy.cuda.Stream.null), "wait_event", lambda stream, event: None)
        with pytest.raises(cupy_standin.StandinViolation, match="before its stream waited for the event"):
            train("cupy", X, t)


def pinned_batches(backend, count, refill):
    """Batches in two pinned buffers taken in turn, each refilled with ``refill`` as soon as it is released."""
    from gpunn.data.stream import Batch

    buffers = [backend.host_buffer((4, 3), "float64") for _ in range(2)]
    for index in range(count):
        buffer = buffers[index % 2]
        buffer[...] = index
        yield Batch(np.arange(4), buffer, None, 4, 0, lambda buffer=buffer: buffer.fill(refill))


@pytest.mark.parametrize("broken", [False, True])
def test_the_stand_in_fails_a_pinned_buffer_refilled_before_its_copy_completed(monkeypatch, broken):
    with cupy_standin.installed() as standin, gn.use_backend("cupy") as backend:
        if broken:  # the host no longer waits for a copy before handing its pinned buffer back
            monkeypatch.setattr(standin.cupy.cuda.Event, "synchronize", lambda event: None)
        sums = []
        with pytest.raises(cupy_standin.StandinViolation, match="refilled before its copy to the device completed") \
                if broken else contextlib.nullcontext():
            for _, x, _ in backend.device_batches(pinned_batches(backend, 4, refill=-1.0)):
                sums.append(float(x.sum()))  # the step reads each batch before the next is asked for
        if not broken:
            assert sums == [0.0, 12.0, 24.0, 36.0]
