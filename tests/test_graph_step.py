"""TrainStep(graph=True): the recording, replay and fallback logic, checked on the CPU.

``ReplayingBackend`` stands in for CUDA graphs on NumPy the way a real graph behaves: recording
runs the step once (CuPy's capture runs it eagerly, then records without running), and a replay
runs the step again on whatever the recorded arrays hold at that moment. So a TrainStep that
forgot to copy a batch into its static inputs, or replayed a graph whose learning rate had
changed, trains differently from the eager step and these tests fail. The real capture runs in
tests/test_cupy_parity.py on a GPU.
"""

import numpy as np
import pytest

import gpunn as gn
from gpunn.backends.numpy_backend import NumpyBackend


class ReplayingBackend(NumpyBackend):
    supports_graphs = True

    def __init__(self):
        super().__init__()
        self.recordings = self.replays = 0

    def capture(self, step):
        self.recordings += 1
        result = step()
        return result, _Replay(self, step, result)


class _Replay:
    def __init__(self, backend, step, like):
        self.backend, self.step, self.output = backend, step, np.empty_like(like)

    def replay(self):
        self.backend.replays += 1
        np.copyto(self.output, self.step())


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


def test_a_changed_learning_rate_records_again(data):
    replaying = ReplayingBackend()
    schedule = [0.05, 0.05, 0.02, 0.01].__getitem__  # the rate after each epoch: changes twice in training
    eager = train(NumpyBackend(), *data, graph=False, lr_schedule=schedule)
    graphed = train(replaying, *data, graph=True, lr_schedule=schedule)
    np.testing.assert_array_equal(graphed[1], eager[1])
    assert replaying.recordings == 3


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
