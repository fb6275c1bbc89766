"""CUDA graphs on the CPU, a test double: the NumPy backend with ``capture``, where a replay runs the
recorded step again; it counts recordings, replays and the private memory pools CupyBackend.capture
would make and free.

A real graph replays the kernels it recorded with the arguments they had then: a scalar passed
to a kernel (a dropout rate, LayerNorm's eps, a hyperparameter) is baked in, and a layer that
now takes another path (dropout off after ``model.eval()``) still runs its recorded kernels. The
double models that: while recording it logs every launching backend call with its scalar
arguments; a replay runs the step's Python again but hands each backend call the recorded
scalars (the arrays are the same buffers, as in a graph), and a replay whose Python makes other
launches than the recording fails, because a GPU would silently replay the recorded ones.
"""

import dataclasses

import numpy as np

from gpunn.backends.numpy_backend import NumpyBackend

#: The backend methods that launch device work with arguments a graph bakes in.
LAUNCHES = frozenset((
    "activation_backward", "bce_with_logits_grad", "bce_with_logits_loss", "bias_activation", "bias_gradient",
    "global_norm", "layer_norm_backward", "layer_norm_forward", "layer_norm_gain_gradient", "matmul",
    "matmul_nt", "matmul_tn", "mse_grad", "optimizer_update", "softmax_cross_entropy_grad"))


class ReplayDiverged(AssertionError):
    """A replay made other launches than its recording: a GPU would have replayed the recorded ones."""


def _scalars(value) -> list:
    """The scalar leaves of a launch argument (what a graph bakes), in order."""
    if isinstance(value, np.ndarray):
        return []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [leaf for field in dataclasses.fields(value) for leaf in _scalars(getattr(value, field.name))]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _scalars(item)]
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in _scalars(value[key])]
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return [value]
    return []  # an object passed by identity (an activation function): not a baked number


def _substitute(value, baked):
    """``value`` with its scalar leaves replaced by the next ones of ``baked``."""
    if isinstance(value, np.ndarray):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{field.name: _substitute(getattr(value, field.name), baked)
                                             for field in dataclasses.fields(value) if field.init})
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_substitute(item, baked) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(item, baked) for item in value)
    if isinstance(value, dict):
        return {key: _substitute(value[key], baked) for key in sorted(value)}
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return next(baked)
    return value


class ReplayingBackend(NumpyBackend):
    supports_graphs = True

    def __init__(self):
        super().__init__()
        self.recordings = self.replays = self.pools = self.pools_freed = 0
        self._log = None  # while recording: [(method, scalars)]
        self._playing = None  # while replaying: an iterator over the recording's log

    def __getattribute__(self, name):
        attribute = object.__getattribute__(self, name)
        if name not in LAUNCHES:
            return attribute
        log, playing = object.__getattribute__(self, "_log"), object.__getattribute__(self, "_playing")
        if log is None and playing is None:
            return attribute

        def launch(*args, **kwargs):
            arguments = (list(args), dict(kwargs))
            if log is not None:
                log.append((name, _scalars(arguments)))
                return attribute(*args, **kwargs)
            recorded = next(playing, None)
            if recorded is None or recorded[0] != name:
                raise ReplayDiverged(f"the replay calls {name} where the recording "
                                     f"{'ended' if recorded is None else 'called ' + recorded[0]}: a graph replays "
                                     "the recorded launches, whatever the Python would do now")
            args, kwargs = _substitute(arguments, iter(recorded[1]))
            return attribute(*args, **kwargs)

        return launch

    def capture(self, step, previous=None):
        """Counts private pools as CupyBackend.capture makes them: a new one unless ``previous``
        hands its own over; a pool is freed when the graph holding it is dropped."""
        self.recordings += 1
        if previous is None:
            self.pools += 1
        else:
            previous.pool_owned = False
        self._log = []
        try:
            result = step()
        finally:
            log, self._log = self._log, None
        return result, _Replay(self, step, result, log)


class _Replay:
    def __init__(self, backend, step, like, log):
        self.backend, self.step, self.output, self.log = backend, step, np.empty_like(like), log
        self.pool_owned = True

    def replay(self):
        assert self.pool_owned, "a graph replayed after handing its memory to a new recording"
        backend = self.backend
        backend.replays += 1
        backend._playing = playing = iter(self.log)
        try:
            value = self.step()
        finally:
            backend._playing = None
        left = next(playing, None)
        if left is not None:
            raise ReplayDiverged(f"the replay skipped the recorded {left[0]}: a graph replays the recorded "
                                 "launches, whatever the Python would do now")
        np.copyto(self.output, value)

    def __del__(self):
        if self.pool_owned:
            self.backend.pools_freed += 1
