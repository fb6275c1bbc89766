"""The backend interface: every array operation the model library needs, and nothing else.

Layers, losses, optimizers and the training loop hold a ``Backend`` and call it; only the
backend modules import an array library. A new backend implements every abstract method
(``tests/test_backend_interface.py`` checks that the signatures match exactly).
"""

from __future__ import annotations

import abc

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return activation


def refuse_complex(x, dtype) -> None:
    """Complex data cast to a real dtype loses its imaginary part with only a warning: refuse it."""
    if dtype is not None and np.dtype(dtype).kind != "c" and np.iscomplexobj(x):
        raise TypeError(f"complex values cannot become {np.dtype(dtype).name}: the imaginary part would be "
                        "lost; pass x.real or abs(x) explicitly")


def check_seed(seed):
    """``seed`` if NumPy's generators take it (None, an int >= 0, or a sequence of them)."""
    try:
        np.random.SeedSequence(seed)
    except (TypeError, ValueError):
        raise ValueError(f"seed must be None, an int >= 0 or a tuple of them, got {seed!r}") from None
    return seed


class HostSeededGenerator:
    """A seedable generator that draws on the host and places the result on the backend.

    Drawing on the host with NumPy's PCG64 makes a seed mean the same numbers on every
    backend, so a CuPy run can be compared with a NumPy run of the same seed. Draws happen
    at initialisation and once per epoch (the shuffle), never inside a training step.
    """

    def __init__(self, backend: "Backend", seed: int | None):
        self._backend = backend
        self._rng = np.random.default_rng(check_seed(seed))

    def normal(self, shape, std: float, dtype):
        return self._backend.asarray(self._rng.normal(0.0, std, size=shape), dtype)

    def uniform(self, shape, low: float, high: float, dtype):
        return self._backend.asarray(self._rng.uniform(low, high, size=shape), dtype)

    def permutation(self, n: int):
        """Indices 0..n-1 in random order, as a host array (indexing moves it once)."""
        return self._rng.permutation(n)


class Backend(abc.ABC):
    """One array library and the fused operations an MLP needs, on one device."""

    name: str = ""
    #: dtypes a model may hold on this backend, as NumPy dtype names.
    supported_dtypes: tuple[str, ...] = ("float32", "float64")
    #: True when the backend's arrays are host memory (so host data needs no copy).
    host_resident: bool = False
    #: True when ``capture`` can record a step as a CUDA graph.
    supports_graphs: bool = False

    def random_generator(self, seed: int | None) -> HostSeededGenerator:
        """The backend's seedable random generator."""
        return HostSeededGenerator(self, seed)

    def check_dtype(self, dtype) -> np.dtype:
        """The NumPy dtype for ``dtype``, or a ValueError naming what this backend supports."""
        try:
            resolved = np.dtype(dtype)
        except TypeError as error:
            raise TypeError(f"dtype: {dtype!r} is not a dtype") from error
        if resolved.name not in self.supported_dtypes:
            raise ValueError(
                f"dtype {resolved.name} is not supported on the {self.name} backend; "
                f"expected one of {self.supported_dtypes}"
            )
        return resolved

    # --- arrays -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def xp(self):
        """The array namespace (numpy or cupy) for generic, unfused maths."""

    @abc.abstractmethod
    def is_array(self, x) -> bool:
        """True when ``x`` is already an array of this backend's device."""

    @abc.abstractmethod
    def asarray(self, x, dtype=None):
        """``x`` as an array on this backend's device, converted to ``dtype`` if given."""

    @abc.abstractmethod
    def to_numpy(self, x):
        """``x`` as a NumPy array on the host."""

    @abc.abstractmethod
    def zeros(self, shape, dtype):
        """A new array of zeros."""

    @abc.abstractmethod
    def empty(self, shape, dtype):
        """A new uninitialised array (for outputs that are fully written)."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait until queued device work is done, so that host timings are honest."""

    # --- dense matmuls (no transposed copies) --------------------------------------------
    @abc.abstractmethod
    def matmul(self, a, b, out=None):
        """``a · b``: the dense forward ``Y = X·W``."""

    @abc.abstractmethod
    def matmul_nt(self, a, b, out=None):
        """``a · bᵀ``: the input gradient ``dX = dY·Wᵀ``."""

    @abc.abstractmethod
    def matmul_tn(self, a, b, out=None):
        """``aᵀ · b``: the weight gradient ``dW = Xᵀ·dY``."""

    # --- fused elementwise work ----------------------------------------------------------
    @abc.abstractmethod
    def bias_activation(self, z, bias, activation: str, out=None):
        """``f(z + bias)`` in one pass, the bias broadcast over rows; ``out`` may be ``z``."""

    @abc.abstractmethod
    def activation_backward(self, dy, y, activation: str, out=None):
        """``dy ⊙ f'(·)`` from the saved output ``y`` in one pass; ``out`` may be ``dy``."""

    @abc.abstractmethod
    def bias_gradient(self, dz, out=None):
        """Column sums of ``dz``: the bias gradient."""

    @abc.abstractmethod
    def sgd_update(self, param, grad, velocity, lr: float, momentum: float) -> None:
        """In place: ``v = momentum·v + g; p -= lr·v`` (``velocity`` is None without momentum)."""

    # --- fused loss heads -----------------------------------------------------------------
    @abc.abstractmethod
    def bce_with_logits_loss(self, z, t):
        """Mean of ``max(z,0) − z·t + log1p(exp(−|z|))`` as a 0-d array (stable BCE on logits)."""

    @abc.abstractmethod
    def bce_with_logits_grad(self, z, t, scale: float, out=None):
        """``(σ(z) − t)·scale`` in one pass."""

    @abc.abstractmethod
    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, out=None):
        """``(softmax(z) − onehot(labels))·scale`` in one pass, given each row's log-sum-exp."""

    # --- whole-step capture ----------------------------------------------------------------
    @abc.abstractmethod
    def capture(self, step):
        """Run ``step()`` once, then record it for replay: returns ``(result, graph)``.

        ``graph.replay()`` queues the recorded work again on the current stream and leaves its
        result in ``graph.output`` (the same array every time). ``step`` must allocate nothing
        that outlives it and touch no host data: a replay repeats the device work only.
        """

