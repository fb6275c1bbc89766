"""The backend interface: every array operation the model library needs, and nothing else.

Layers, losses, optimizers and the training loop hold a ``Backend`` and call it; only the
backend modules import an array library. A new backend implements every abstract method
(``tests/test_backend_interface.py`` checks that the signatures match exactly).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from gpunn.kernels.activations import ACTIVATIONS, ActivationFunction, as_activation_function  # noqa: F401 (re-exported)


#: kernels/dropout.cuh's layout: one Philox4x64-10 block gives DROPOUT_GROUP elements DROPOUT_BITS
#: bits each; a group's members are DROPOUT_LANES elements apart, a tile is DROPOUT_LANES groups.
DROPOUT_LANES, DROPOUT_GROUP, DROPOUT_BITS = 32, 16, 16
DROPOUT_TILE = DROPOUT_LANES * DROPOUT_GROUP


@dataclass(frozen=True)
class DropoutMask:
    """Which elements inverted dropout keeps at the current step, and how survivors scale.

    Element n (flat, in the global batch) is slot j = ⌊n / 32⌋ mod 16 of group
    q = ⌊n / 512⌋·32 + n mod 32; it survives when bits 16·(j mod 4) … 16·(j mod 4) + 15 of word
    ⌊j / 4⌋ of the Philox4x64-10 block with counter (q, step[0], 0, 0) and key
    (key & (2^64 − 1), key >> 64) are at least ``threshold`` (= ⌊rate·2^16⌋, ``threshold_of``);
    survivors are multiplied by ``scale`` (= 1/(1 − rate)). ``step`` is a 1-element uint64 array on
    the backend's device, read by the kernels there. ``row_offset`` places a shard in its global
    batch: its row r draws the mask of global row r + row_offset, so data-parallel ranks drop what
    one process training the whole batch would.
    """

    key: int
    threshold: int
    scale: float
    step: object
    row_offset: int = 0

    def __post_init__(self):
        # 0 drops nothing (no mask: None, which every backend treats alike); a 64-bit threshold of
        # the old mask would drop every element.
        if not 0 < self.threshold < 1 << DROPOUT_BITS:
            raise ValueError(f"DropoutMask: threshold must lie in [1, 2**{DROPOUT_BITS}), got {self.threshold}; "
                             "use DropoutMask.threshold_of(rate), and no mask where that is 0")

    @staticmethod
    def threshold_of(rate: float) -> int:
        """⌊rate·2^16⌋: a rate is kept to 2^-16 (kernels/dropout.cuh says why that is enough)."""
        return int(rate * (1 << DROPOUT_BITS))

    def skip(self, columns: int) -> int:
        """Elements of the global batch before this shard's first (the index of its element 0)."""
        return self.row_offset * columns

    @property
    def key_words(self) -> tuple[int, int]:
        return self.key & 0xFFFFFFFFFFFFFFFF, self.key >> 64


#: DLPack's device types (dlpack.h, DLDeviceType) by the names messages give them.
DLPACK_DEVICES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal", 10: "rocm",
                  13: "cuda_managed", 14: "oneapi"}
DLPACK_CPU, DLPACK_CUDA, DLPACK_CUDA_MANAGED = 1, 2, 13


def dlpack_device(x) -> tuple[int, int] | None:
    """(device type, device id) of a foreign array that speaks DLPack (PyTorch, JAX, …), else None."""
    if isinstance(x, np.ndarray) or not hasattr(x, "__dlpack_device__") or not hasattr(x, "__dlpack__"):
        return None
    device_type, device_id = x.__dlpack_device__()
    return int(device_type), int(device_id)


def device_name(device: tuple[int, int]) -> str:
    kind = DLPACK_DEVICES.get(device[0], f"DLPack device type {device[0]}")
    return kind if device[0] == DLPACK_CPU else f"{kind}:{device[1]}"


def host_view(x):
    """A CPU array that speaks DLPack as a NumPy array sharing its memory (no copy)."""
    try:
        return np.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as error:  # e.g. a tensor that requires grad
        raise TypeError(f"the {type(x).__module__.split('.')[0]} array ({type(x).__name__}) cannot be shared "
                        f"through DLPack: {error}") from None


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

    # --- streamed batches (gpunn.data) -----------------------------------------------------
    @abc.abstractmethod
    def host_buffer(self, shape, dtype):
        """A reused host array that batches are gathered into on their way to the device (pinned
        memory where the device copies from it asynchronously)."""

    @abc.abstractmethod
    def device_batches(self, batches):
        """gpunn.data's host ``Batch``es as ``(batch, x, t)`` on the device, each batch's host buffers
        released (``batch.release()``) once the device no longer reads them."""

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
    def bias_activation(self, z, bias, activation, out=None, saved=None, dropout=None, kept=None):
        """``dropout(f(z + bias))`` in one pass, the bias broadcast over rows; ``out`` may be ``z``.

        ``activation`` is a registry name or an ``ActivationFunction``. With ``saved``, the same
        pass also writes what backward reads: ``z + bias`` when the activation's backward reads
        the input, ``f(z + bias)`` (before dropout) when it reads the output; ``saved`` may be
        ``z`` but not ``out``. ``dropout`` is a ``DropoutMask`` or None. ``kept``: a buffer of
        z's shape, given with ``saved`` where ``keeps(activation)``, for what backward reuses.
        """

    @abc.abstractmethod
    def activation_backward(self, dy, saved, activation, out=None, dropout=None, kept=None):
        """``dropout(dy) ⊙ f'(·)`` in one pass, f' from ``saved`` (the output, or the input where
        the registry says so; see ``bias_activation``) and ``kept``, when the forward had it;
        ``out`` may be ``dy``."""

    @abc.abstractmethod
    def keeps(self, activation, dtype) -> bool:
        """Whether the fused forward of ``activation`` in ``dtype`` wants a ``kept`` buffer for a
        part of the slope that is dear to recompute on this backend (the NumPy backend's GELU)."""

    @abc.abstractmethod
    def bias_gradient(self, dz, out=None):
        """Column sums of ``dz``: the bias gradient."""

    # --- layer normalisation ---------------------------------------------------------------
    @abc.abstractmethod
    def layer_norm_forward(self, x, gain, bias, eps: float, out, mean, rstd):
        """``out = (x − mean)·rstd·gain + bias`` per row, ``rstd = 1/√(var + eps)`` (biased
        variance); writes the row statistics into ``mean`` and ``rstd`` ((rows,), in the compute
        dtype: float32 for float16 storage) for backward. Returns ``out``."""

    @abc.abstractmethod
    def layer_norm_backward(self, dy, x, gain, mean, rstd, out=None):
        """dL/dx of layer normalisation, from the statistics its forward wrote."""

    @abc.abstractmethod
    def layer_norm_gain_gradient(self, dy, x, mean, rstd, out=None):
        """Column sums of ``dy ⊙ x̂`` (x̂ = (x − mean)·rstd): the gain gradient."""

    # --- optimizers over flat buffers (see gpunn/optim and kernels/optim.cuh) ----------------
    @abc.abstractmethod
    def optimizer_scratch(self, compute_dtype):
        """Device scratch that one optimizer's norm and update kernels keep between steps (None
        where the backend needs none); it belongs to one optimizer so that no other launch shares it."""

    @abc.abstractmethod
    def global_norm(self, x, out, scratch=None, segments=None):
        """The L2 norm of the flat array ``x`` into the 1-element array ``out`` (compute dtype); with
        ``segments`` (an update's segment table) the norm of the segments it updates only."""

    @abc.abstractmethod
    def optimizer_update(self, rule, param, grad, states, master, scalars, lr_table, norm, hyper, flag,
                         weight_decay: float, decay_end: int, max_norm: float, dynamic_scale: bool, segments, steps,
                         growth_interval: float = 2000.0, scratch=None) -> None:
        """One fused update of ``rule`` (an ``optim.rules.UpdateRule``) over flat arrays, in place.

        ``segments`` (int64, ``kernels/optim.cuh``'s segment table: per parameter its [start, stop) in
        ``param``, where its state starts in ``states`` and ``master``, and whether this step updates
        it) says which elements are updated; the others, and their state, are left as they are.
        ``steps`` (float64, one per segment) counts each segment's updates applied: an element's step
        is its segment's count + 1. The learning rate is ``lr_table[min(scalars[1], len − 1)]``;
        the gradient is unscaled by ``scalars[2]`` and clipped to ``max_norm`` (when > 0) using
        ``norm``; with ``dynamic_scale`` a non-finite ``norm`` skips the update. ``master`` (float32
        master weights of a float16 model, or None) is updated and rounded into ``param``. Elements
        from ``decay_end`` on get no weight decay. The same launch then advances the updated segments'
        ``steps`` (unless the update was skipped) and the counters (``kernels/optim.cuh``
        gpunn_after_update: the loss scale halves on a skipped step and doubles after
        ``growth_interval`` good ones). Nothing here waits for the device.
        """

    # --- fused loss heads -----------------------------------------------------------------
    @abc.abstractmethod
    def bce_with_logits_loss(self, z, t):
        """Mean of ``max(z,0) − z·t + log1p(exp(−|z|))`` as a 0-d array (stable BCE on logits)."""

    @abc.abstractmethod
    def mse_grad(self, y, t, scale: float, loss_scale=None, out=None):
        """``(y − t)·scale·loss_scale`` in one pass, computed in the compute dtype.

        ``loss_scale`` is a 1-element float64 device array (mixed precision's loss scale) or None
        for 1. Keeping the mean's tiny factor in the compute dtype, times the loss scale, is what
        keeps float16 gradients from underflowing.
        """

    @abc.abstractmethod
    def bce_with_logits_grad(self, z, t, scale: float, loss_scale=None, out=None):
        """``(σ(z) − t)·scale·loss_scale`` in one pass."""

    @abc.abstractmethod
    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, loss_scale=None, out=None):
        """``(softmax(z) − onehot(labels))·scale·loss_scale`` in one pass, given each row's log-sum-exp."""

    # --- whole-step capture ----------------------------------------------------------------
    @abc.abstractmethod
    def capture(self, step, previous=None):
        """Run ``step()`` once, then record it for replay: returns ``(result, graph)``.

        ``graph.replay()`` queues the recorded work again on the current stream and leaves its
        result in ``graph.output`` (the same array every time). ``step`` must allocate nothing
        that outlives it and touch no host data: a replay repeats the device work only.
        ``previous``, the stale graph of the same step, is dropped and its memory reused.
        """

