"""Inverted dropout whose mask is the same on every backend for a seed.

The mask is a counter-based draw (Philox4x64-10, see kernels/dropout.cuh): keyed by the seed,
counted by (step, element index), one block for 16 elements of 16 bits each. The step is a
1-element array on the device, advanced by each training forward, so a captured CUDA graph
advances it too; backward draws the same mask again instead of storing it.

Before issue 21 gpunn drew a whole block per element (64 bits each). A checkpoint saved by
that code resumes with this mask stream from its step: the run continues exactly as a run of
this code would from that point, not as the old code would have continued it.
"""

from __future__ import annotations

import contextlib
import secrets

from gpunn import checks
from gpunn.backends.base import DropoutMask
from gpunn.backends.selection import get_backend
from gpunn.nn.layer import Layer, register_layer


@register_layer
class Dropout(Layer):
    """Zero each element with probability ``rate`` in training and scale the rest by 1/(1 − rate);
    the identity in evaluation (``model.eval()``, ``predict``). ``seed=None`` draws one. ``step`` is
    the mask counter to start from: saving a model keeps it, so a resumed run draws the masks an
    uninterrupted one would."""

    def __init__(self, rate: float, seed: int | None = None, step: int = 0):
        super().__init__()
        rate = checks.number("Dropout", "rate", rate, low=0.0, high=1.0, high_open=True)
        seed = checks.seed("Dropout", seed, below=1 << 128)
        if seed is None:
            seed = secrets.randbits(64)
        step = checks.count("Dropout", "step", step, minimum=0)
        if step >= 1 << 64:  # the mask counter is a uint64 on the device
            raise ValueError(f"Dropout: step must be an int in [0, 2**64), got {step!r}")
        self.rate, self.seed = rate, seed
        self._step, self._initial_step = None, step
        #: The first row of this process's shard in the global batch (data parallelism sets it).
        self.row_offset = 0
        self._advance = True

    def config(self) -> dict:
        return {"rate": self.rate, "seed": self.seed, "step": self.step}

    @property
    def step(self) -> int:
        """Training forwards so far (the mask's counter); reading it waits for the device."""
        return self._initial_step if self._step is None else int(self._step[0])

    def forward_mask(self) -> DropoutMask | None:
        """The mask for this forward (advancing the step), or None in evaluation or at a rate below
        2^-16, the mask's resolution (rate 0 included): such a rate drops nothing."""
        if not self.training or DropoutMask.threshold_of(self.rate) == 0:
            self.state.mask = None
            return None
        backend = self.backend = get_backend() if self.backend is None else self.backend
        if self._step is None:
            self._step = backend.asarray([self._initial_step], "uint64")
        if self._advance:
            self._step += 1
        self.state.mask = DropoutMask(self.seed, DropoutMask.threshold_of(self.rate), 1.0 / (1.0 - self.rate),
                                      self._step, self.row_offset)
        return self.state.mask

    @contextlib.contextmanager
    def fixed_mask(self):
        """Inside the block, training forwards reuse the current step's mask (for gradient checks)."""
        before, self._advance = self._advance, False
        try:
            yield self
        finally:
            self._advance = before  # blocks nest (gradcheck holds the mask inside a user's block)

    def forward(self, x):
        mask = self.forward_mask()
        if mask is None:
            return x
        y = self._buffer("y", x.shape, self.backend, x.dtype)
        return self.backend.bias_activation(x, 0, "identity", out=y, dropout=mask)

    def backward(self, dy, input_gradient: bool = True):
        mask = self.state.mask
        if mask is None:
            return dy
        dx = self._buffer("dx", dy.shape, self.backend, dy.dtype)
        return self.backend.activation_backward(dy, dy, "identity", out=dx, dropout=mask)
