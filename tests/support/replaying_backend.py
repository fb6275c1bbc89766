"""CUDA graphs on the CPU, a test double: the NumPy backend with ``capture``, where a replay runs the
recorded step again; it counts recordings, replays and the private memory pools CupyBackend.capture
would make and free."""

import numpy as np

from gpunn.backends.numpy_backend import NumpyBackend


class ReplayingBackend(NumpyBackend):
    supports_graphs = True

    def __init__(self):
        super().__init__()
        self.recordings = self.replays = self.pools = self.pools_freed = 0

    def capture(self, step, previous=None):
        """Counts private pools as CupyBackend.capture makes them: a new one unless ``previous``
        hands its own over; a pool is freed when the graph holding it is dropped."""
        self.recordings += 1
        if previous is None:
            self.pools += 1
        else:
            previous.pool_owned = False
        result = step()
        return result, _Replay(self, step, result)


class _Replay:
    def __init__(self, backend, step, like):
        self.backend, self.step, self.output = backend, step, np.empty_like(like)
        self.pool_owned = True

    def replay(self):
        assert self.pool_owned, "a graph replayed after handing its memory to a new recording"
        self.backend.replays += 1
        np.copyto(self.output, self.step())

    def __del__(self):
        if self.pool_owned:
            self.backend.pools_freed += 1
