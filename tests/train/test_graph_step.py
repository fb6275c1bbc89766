"""TrainStep(graph=True): the recording, replay and fallback logic, checked on the CPU.

``ReplayingBackend`` (tests/support) stands in for CUDA graphs on NumPy the way a real graph behaves: recording
runs the step once (CuPy's capture runs it eagerly, then records without running), and a replay
runs the step again on whatever the recorded arrays hold at that moment. So a TrainStep that
forgot to copy a batch into its static inputs, or replayed a graph whose learning rate had
changed, trains differently from the eager step and these tests fail. The real capture runs in
tests/backends/test_cupy_parity.py on a GPU.
"""

import gc
import itertools

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.numpy_backend import NumpyBackend
from support.replaying_backend import ReplayingBackend


def make_model(backend, seed=1):
    with gn.use_backend(backend):
        return gn.Sequential(gn.Dense(6, 16, dtype="float64", seed=seed), gn.Tanh(),
                             gn.Dense(16, 3, dtype="float64", seed=seed + 1))


def train(backend, x, labels, graph, epochs=4, lr_schedule=None, batch_size=16):
    model = make_model(backend)
    optimizer = gn.SGD(lr=0.1, momentum=0.9)

    def schedule(epoch, logs):
        if lr_schedule:
            optimizer.lr = lr_schedule(epoch)

    history = model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
                        batch_size=batch_size, seed=5, verbose=0, callback=schedule, graph=graph)
    return history["loss"], model.predict(x)


@pytest.fixture
def data(rng):
    return rng.normal(size=(70, 6)), rng.integers(0, 3, size=70)  # 70 = 4 batches of 16 and one of 6


def test_graph_fit_trains_exactly_like_eager_fit(data):
    replaying = ReplayingBackend()
    eager = train(NumpyBackend(), *data, graph=False)
    graphed = train(replaying, *data, graph=True)
    np.testing.assert_array_equal(graphed[0], eager[0])
    np.testing.assert_array_equal(graphed[1], eager[1])
    # 4 epochs x 4 full batches: the first eager, the second recorded, 14 replays; last batches eager.
    assert (replaying.recordings, replays := replaying.replays) == (1, 14), replays


def test_a_changed_learning_rate_does_not_record_again(data):
    """The rate lives in a table on the device: a new rate rewrites it, the graph stays valid."""
    replaying = ReplayingBackend()
    schedule = [0.05, 0.05, 0.02, 0.01].__getitem__  # the rate after each epoch: changes twice in training
    eager = train(NumpyBackend(), *data, graph=False, lr_schedule=schedule)
    graphed = train(replaying, *data, graph=True, lr_schedule=schedule)
    np.testing.assert_array_equal(graphed[1], eager[1])
    assert replaying.recordings == 1


@pytest.mark.parametrize("optimizer", [
    lambda: gn.Adam(lr=gn.schedules.CosineDecay(0.01, total_steps=100, warmup_steps=10), max_grad_norm=1.0),
    lambda: gn.SGD(lr=gn.schedules.OneCycle(0.1, total_steps=100), momentum=0.9, nesterov=True, weight_decay=0.01)])
def test_a_hundred_scheduled_steps_record_once(rng, optimizer):
    """A schedule, Adam's step count and clipping are read on the device: one recording, and the
    replayed trajectory equals the eager one bit for bit."""
    x, t = rng.normal(size=(8, 6)), rng.normal(size=(8, 3))
    results = []
    for backend, graph in ((NumpyBackend(), False), (ReplayingBackend(), True)):
        model = make_model(backend)
        step = gn.TrainStep(model, gn.MSELoss(), optimizer(), graph=graph)
        prepared = step.prepare(x, t)
        losses = [float(step(*prepared)) for _ in range(100)]
        results.append((losses, model.predict(x), backend))
    (eager_losses, eager_out, _), (graph_losses, graph_out, replaying) = results
    assert (replaying.recordings, replaying.replays) == (1, 98)
    np.testing.assert_array_equal(graph_losses, eager_losses)
    np.testing.assert_array_equal(graph_out, eager_out)


def test_a_changed_momentum_records_again(data):
    replaying = ReplayingBackend()
    model = make_model(replaying)
    optimizer = gn.SGD(lr=0.1, momentum=0.9)
    step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), optimizer, graph=True)
    x, t = step.prepare(data[0][:16], data[1][:16])
    for _ in range(3):
        step(x, t)
    optimizer.momentum = 0.5
    step(x, t)
    assert replaying.recordings == 2
    del step
    gc.collect()
    assert (replaying.pools, replaying.pools_freed) == (1, 1), "one private pool per TrainStep, freed with it"


def test_steps_return_independent_loss_values(rng):
    backend = ReplayingBackend()
    model = make_model(backend)
    step = gn.TrainStep(model, gn.MSELoss(), gn.SGD(lr=0.05), graph=True)
    x, t = step.prepare(rng.normal(size=(8, 6)), rng.normal(size=(8, 3)))
    values = [step(x, t) for _ in range(5)]
    assert backend.replays == 3
    assert len({id(value) for value in values}) == 5
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values  # each kept its value


def test_graph_needs_a_backend_that_captures():
    model = make_model(NumpyBackend())
    with pytest.raises(ValueError, match="graph=True needs a backend that captures CUDA graphs"):
        gn.TrainStep(model, gn.MSELoss(), gn.SGD(lr=0.1), graph=True)
    with pytest.raises(NotImplementedError, match="numpy backend cannot capture"):
        NumpyBackend().capture(lambda: None)


def test_a_scheduled_fit_records_once_up_to_its_last_step(rng, monkeypatch):
    """fit reserves exactly its steps in the table of rates; recording, which runs the step twice,
    must not grow (and so replace) the table at the last step."""
    from gpunn.optim import optimizer as optimizer_module

    monkeypatch.setattr(optimizer_module, "_LR_TABLE_MINIMUM", 8)
    replaying = ReplayingBackend()
    model = make_model(replaying)
    optimizer = gn.SGD(lr=gn.schedules.CosineDecay(0.1, total_steps=32), momentum=0.9)
    model.fit(rng.normal(size=(64, 6)), rng.integers(0, 3, size=64), loss=gn.SoftmaxCrossEntropyLoss(),
              optimizer=optimizer, epochs=8, batch_size=16, seed=1, verbose=0, graph=True)
    assert (replaying.recordings, replaying.replays) == (1, 30)


@pytest.mark.parametrize("attribute", ["lr", "schedule"])
def test_a_schedule_set_after_recording_is_the_one_replayed(rng, attribute):
    """``optimizer.schedule = …`` is ``optimizer.lr = …``: it was a plain attribute, so the
    device's table of rates kept the old ones (eager steps too) while ``optimizer.lr`` reported
    the new one."""
    x, t = rng.normal(size=(8, 6)), rng.normal(size=(8, 3))
    results = []
    for backend, graph in ((NumpyBackend(), False), (ReplayingBackend(), True), (NumpyBackend(), False)):
        model = make_model(backend)
        optimizer = gn.SGD(lr=gn.schedules.StepDecay(0.1, step_size=2), momentum=0.9)
        step = gn.TrainStep(model, gn.MSELoss(), optimizer, graph=graph)
        prepared = step.prepare(x, t)
        for index in range(8):
            if index == 4 and len(results) < 2:  # the third run keeps its first schedule
                setattr(optimizer, attribute, gn.schedules.ExponentialDecay(0.5, gamma=0.9))
            step(*prepared)
        results.append(model.predict(x))
    assert optimizer.lr == 0.1 * 0.1 ** 4 and not np.array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[0])


def test_a_cosine_schedule_records_once_however_long_a_loop_of_steps_runs(rng, monkeypatch):
    """CosineDecay holds final_lr after total_steps, so the device's table of rates stops there:
    a TrainStep loop (which, unlike fit, reserves one step at a time) never outgrows it. It grew
    by doublings before, each a new array and so a new recording."""
    from gpunn.optim import optimizer as optimizer_module

    monkeypatch.setattr(optimizer_module, "_LR_TABLE_MINIMUM", 8)
    x, t = rng.normal(size=(8, 6)), rng.normal(size=(8, 3))
    results = []
    for backend, graph in ((NumpyBackend(), False), (ReplayingBackend(), True)):
        model = make_model(backend)
        schedule = gn.schedules.CosineDecay(0.05, total_steps=20, final_lr=0.01, warmup_steps=3)
        step = gn.TrainStep(model, gn.MSELoss(), gn.Adam(lr=schedule), graph=graph)
        prepared = step.prepare(x, t)
        results.append([float(step(*prepared)) for _ in range(50)])
    assert (backend.recordings, backend.replays) == (1, 48)
    assert results[1] == results[0]


def test_a_replayed_fit_step_launches_one_copy_outside_its_graph():
    """Issue 21, item 8: a replayed step of fit(graph=True) gathers its batch, sums its loss and
    metrics inside the graph; outside it only the batch's row indices are copied in (a memcpy, as
    CuPy's copyto of a contiguous array is). Counted through the CuPy stand-in, CuPy's launches per
    routine. Before: 11 launches outside the graph per step (2 gathers, 2 copies into the static
    inputs, the loss copy and its accumulation, 5 for the accuracy)."""
    from support import cupy_standin

    rng = np.random.default_rng(0)
    x, labels, weights = rng.normal(size=(96, 5)), rng.integers(0, 3, size=96), rng.uniform(0.5, 2, size=96)
    with cupy_standin.installed() as standin, gn.use_backend("cupy"):
        marks = []

        class Mark(gn.Callback):
            def on_train_batch_begin(self, batch):
                marks.append((batch, len(standin.device.launches)))

        model = gn.Sequential(gn.Dense(5, 8, seed=1), gn.Dropout(0.1, seed=3), gn.ReLU(), gn.Dense(8, 3, seed=2))
        model.fit(x, labels, loss=gn.SoftmaxCrossEntropyLoss(), optimizer=gn.Adam(), epochs=2, batch_size=16,
                  sample_weight=weights, metrics=["accuracy"], graph=True, callbacks=[Mark()], verbose=0, seed=0)
        counted = [standin.device.count(start) - standin.device.count(end)
                   for (batch, start), (_, end) in itertools.pairwise(marks) if 2 <= batch < 5]
    assert len(counted) == 6  # steps 3 to 5 of each epoch (of 6): replays (the last step of an epoch is left out)
    for counts in counted:
        assert dict(counts) == {"graph": 1, "memory": 1}, counts
        assert sum(counts.values()) - counts["graph"] <= 2


def test_graph_fits_and_re_recordings_keep_device_memory_bounded():
    """Issue 21, item 9, through the stand-in's model of CuPy's pool (tests/support/cupy_standin/_pool.py):
    a fit(graph=True) lets go of every array of its graph's private pool before dropping the graph
    (the loss's saved arrays held one: its split block then stayed with the dead pool, 6656 bytes a
    fit here), and recording again reuses the one pool. The bound: device memory after N fits, or
    after M recordings of one step, is what it was after the first."""
    from support import cupy_standin

    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(64, 12)), rng.integers(0, 50, size=64)  # 50 classes: blocks of several sizes
    with cupy_standin.installed() as standin, gn.use_backend("cupy"):
        device = standin.device
        model = gn.Sequential(gn.Dense(12, 64, seed=1), gn.Dropout(0.2, seed=1), gn.Tanh(), gn.Dense(64, 50, seed=2))
        loss, optimizer = gn.SoftmaxCrossEntropyLoss(), gn.Adam()
        held = []
        for seed in range(4):
            model.fit(x, labels, loss=loss, optimizer=optimizer, epochs=1, batch_size=32, seed=seed, verbose=0,
                      graph=True, metrics=["accuracy"])
            gc.collect()
            assert device.bytes_of_dropped_pools() == 0, "an array of a dropped graph's pool outlives the fit"
            held.append(device.held_bytes())
        assert held == held[:1] * 4, held

        step = gn.TrainStep(model, loss, optimizer, graph=True)
        xb, tb = step.prepare(x[:32], labels[:32])
        step(xb, tb)
        recorded, captures, capture = [], [], model.backend.capture
        model.backend.capture = lambda *arguments: captures.append(1) or capture(*arguments)
        try:
            for change in range(6):  # each records again: new betas, another dropout rate
                optimizer.betas = (0.9, 0.99 - 0.001 * change)
                model.layers[1].rate = 0.1 + 0.05 * (change % 2)
                step(xb, tb)
                gc.collect()
                recorded.append(device.held_bytes())
        finally:
            del model.backend.capture
        assert len(captures) == 6
        assert recorded == recorded[:1] * 6, recorded


@pytest.mark.parametrize("graph", [False, True])
def test_a_step_on_rows_trains_like_a_step_on_the_gathered_batch(rng, graph):
    """TrainStep(rows=...) gathers the batch itself (inside its graph); bad rows are refused early."""
    x, labels = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40)
    order = rng.permutation(40)
    losses = {}
    for gathered in (False, True):
        backend = ReplayingBackend() if graph else NumpyBackend()
        model = make_model(backend)
        step = gn.TrainStep(model, gn.SoftmaxCrossEntropyLoss(), gn.SGD(lr=0.1, momentum=0.9), graph=graph)
        xs, ts = step.prepare(x, labels)
        runs = []
        for start in (0, 16, 0, 16):
            rows = order[start:start + 16]
            runs.append(float(step(xs, ts, rows=rows) if gathered else step(xs[rows], ts[rows])))
        losses[gathered] = runs
    assert losses[True] == losses[False]
    with pytest.raises(TypeError, match="1-D integer"):
        step(xs, ts, rows=order[:16].astype(float))
    with pytest.raises(ValueError, match="equal length"):
        step(xs, ts[:20], rows=order[:16])
