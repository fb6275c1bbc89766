"""The NumPy backend: the CPU reference every other backend is compared against."""

from __future__ import annotations

import functools

import numpy as np

from gpunn.backends import native
from gpunn.backends.base import (DLPACK_CPU, DROPOUT_GROUP, DROPOUT_LANES, DROPOUT_TILE, Backend,
                                as_activation_function, device_name, dlpack_device, host_view, refuse_complex)
from gpunn.backends.numpy_activations import KEEPING, TWINS, _sigmoid_inplace
from gpunn.kernels.update_rules import SEGMENT_FIELDS


def dropout_keep(mask, shape):
    """Which elements survive, as kernels/dropout.cuh draws them (see DropoutMask): the groups of
    the tiles that hold elements [skip, skip + size) are consecutive Philox counters
    (q, step, 0, 0), so numpy.random.Philox started one counter before the first yields all their
    blocks in one call; block q's 16-bit pieces, low first, are its slots 0…15."""
    size = int(np.prod(shape))
    skip = mask.skip(shape[-1] if len(shape) else 1)
    first_tile, last_tile = skip // DROPOUT_TILE, (skip + max(size, 1) - 1) // DROPOUT_TILE
    tiles = last_tile - first_tile + 1
    counter = (int(mask.step[0]) << 64) + first_tile * DROPOUT_LANES - 1
    words = np.random.Philox(key=mask.key, counter=counter % (1 << 256)).random_raw(4 * DROPOUT_LANES * tiles)
    pieces = words.astype("<u8", copy=False).view("<u2").reshape(tiles, DROPOUT_LANES, DROPOUT_GROUP)
    start = skip - first_tile * DROPOUT_TILE
    bits = pieces.transpose(0, 2, 1).reshape(-1)[start:start + size]  # tile, slot, lane: the element order
    return (bits >= mask.threshold).reshape(shape)


def _apply_dropout(values, mask):
    """``values ⊙ keep · scale`` in place; nothing when ``mask`` is None."""
    if mask is not None and mask.threshold:
        keep = dropout_keep(mask, values.shape)
        with np.errstate(invalid="ignore"):  # a dropped ∞ becomes NaN, as in the kernel and torch
            np.multiply(values, keep, out=values)
        values *= values.dtype.type(mask.scale)
    return values


def _saturating(function):
    """Run a twin where exp over- and underflowing to ∞ and 0 are the intended limits, not events
    (and ±∞ inputs give what the kernels give, NaN where torch's formula does)."""
    def run(*arguments):
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            return function(*arguments)

    return run


def _copy(source, out):
    if out is None:
        return source.copy()
    np.copyto(out, source)
    return out


def _float16_computes_in_float32(method):
    """float16 storage computes in float32, as the CUDA kernels and cuBLAS do: the float16 arrays
    among the arguments are widened, and the result is rounded once into ``out`` (or a new array)."""

    def half(a) -> bool:
        return isinstance(a, np.ndarray) and a.dtype == np.float16

    @functools.wraps(method)
    def wrapper(self, *args, out=None, **kwargs):
        if not any(map(half, args)):
            return method(self, *args, out=out, **kwargs)
        wide = [a.astype(np.float32) if half(a) else a for a in args]
        # Keyword arrays the method writes (``saved``) get a float32 stand-in, rounded back after.
        written = {name: value for name, value in kwargs.items() if half(value)}
        kwargs.update({name: value.astype(np.float32) for name, value in written.items()})
        # Overflow to Inf in float16 is what the dynamic loss scale detects and undoes: no warning.
        with np.errstate(over="ignore", invalid="ignore"):
            result = method(self, *wide, **kwargs)
            for name, value in written.items():
                np.copyto(value, kwargs[name], casting="same_kind")
            if out is None:
                return result.astype(np.float16)
            np.copyto(out, result, casting="same_kind")
        return out

    return wrapper


#: Elements per chunk of a fused optimizer update on the CPU: 2^17 ran 8 % faster than 2^16 and 2^15
#: (PERF.md change 12): fewer calls matter more than keeping every pass in L2.
UPDATE_CHUNK = 1 << 17


def _total_scale(scale: float, loss_scale) -> float:
    return scale if loss_scale is None else scale * float(loss_scale[0])


def _foreign_array_error(x, backend_name):
    return TypeError(
        f"got a {type(x).__module__.split('.')[0]} array ({type(x).__name__}) on the "
        f"{backend_name} backend; move it with the owning backend's to_numpy() or asarray() first"
    )


class NumpyBackend(Backend):
    name = "numpy"
    host_resident = True
    supported_dtypes = ("float16", "float32", "float64")

    def __init__(self):
        self._scratch: dict = {}

    @property
    def xp(self):
        return np

    def is_array(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def asarray(self, x, dtype=None):
        device = dlpack_device(x)
        if device is not None:  # PyTorch, JAX, ...: shared without a copy where the memory is the CPU's
            if device[0] != DLPACK_CPU:
                raise ValueError(f"the array is on {device_name(device)} but the numpy backend computes on the "
                                 "CPU: move it there first (PyTorch: .cpu(), JAX: jax.device_get), or train on "
                                 "the cupy backend")
            x = host_view(x)
        if hasattr(x, "__cuda_array_interface__"):
            raise _foreign_array_error(x, self.name)
        refuse_complex(x, dtype)
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        if hasattr(x, "__cuda_array_interface__"):
            raise _foreign_array_error(x, self.name)
        return np.asarray(x)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def synchronize(self) -> None:
        return None

    def host_buffer(self, shape, dtype):
        return np.empty(shape, dtype)

    def device_batches(self, batches):
        """Host memory is the device's: each batch as it is, its buffers back when the next is asked for."""
        for batch in batches:
            yield batch, batch.x, batch.t
            batch.release()

    @_float16_computes_in_float32
    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    @_float16_computes_in_float32
    def matmul_nt(self, a, b, out=None):
        return np.matmul(a, b.T, out=out)

    @_float16_computes_in_float32
    def matmul_tn(self, a, b, out=None):
        return np.matmul(a.T, b, out=out)

    def keeps(self, activation, dtype) -> bool:
        """GELU's NumPy twin keeps Φ(x) from its forward: recomputing it costs about twenty NumPy
        passes. Not where the compiled activations run (recomputing is one vectorised pass), nor
        for float16 models, which compute in float32 (a float16 Φ would round the slope)."""
        dtype = np.dtype(dtype)
        return (as_activation_function(activation).name in KEEPING and dtype != np.float16
                and not native.activations_available(dtype))

    @_float16_computes_in_float32
    def bias_activation(self, z, bias, activation, out=None, saved=None, dropout=None, kept=None):
        function = as_activation_function(activation)
        if kept is None:  # activations.cuh compiled for the host, where it can run: one pass
            result = np.empty_like(z) if out is None else out
            if native.bias_activation(z, bias, function, result, saved):
                return _apply_dropout(result, dropout)
        forward = _saturating(TWINS[function.name][0])
        if saved is None:
            out = np.add(z, bias, out=out)
            forward(out, *function.values)
            return _apply_dropout(out, dropout)
        np.add(z, bias, out=saved)
        if function.reads_input:
            out = _copy(saved, out)
            if kept is None:
                forward(out, *function.values)
            else:
                _saturating(KEEPING[function.name][0])(out, kept, *function.values)
        else:
            forward(saved, *function.values)
            out = _copy(saved, out)
        return _apply_dropout(out, dropout)

    @_float16_computes_in_float32
    def activation_backward(self, dy, saved, activation, out=None, dropout=None, kept=None):
        function = as_activation_function(activation)
        if out is None:
            out = np.empty_like(dy)
        if function.name == "identity":
            np.copyto(out, dy)
            return _apply_dropout(out, dropout)
        if kept is None and native.activation_backward(dy, saved, function, out):
            return _apply_dropout(out, dropout)
        # The slope is built in ``out`` when that aliases no input, else in a temporary.
        aliased = any(np.may_share_memory(out, a) for a in (dy, saved, kept) if a is not None)
        scratch = np.empty_like(dy) if aliased else out
        if kept is None:
            slope = _saturating(TWINS[function.name][1])(saved, scratch, *function.values)
        else:
            slope = _saturating(KEEPING[function.name][1])(saved, kept, scratch, *function.values)
        np.multiply(dy, slope, out=out)
        return _apply_dropout(out, dropout)

    def layer_norm_forward(self, x, gain, bias, eps: float, out, mean, rstd):
        np.mean(x, axis=1, out=mean)
        centered = x - mean[:, None]
        variance = np.mean(np.square(centered), axis=1)
        variance += eps
        np.sqrt(variance, out=variance)
        np.divide(1, variance, out=rstd)
        np.multiply(centered, rstd[:, None], out=out)
        out *= gain
        out += bias
        return out

    def layer_norm_backward(self, dy, x, gain, mean, rstd, out=None):
        xhat = (x - mean[:, None]) * rstd[:, None]
        scaled = dy * gain
        mean_scaled = scaled.mean(axis=1, keepdims=True)
        mean_scaled_xhat = np.mean(scaled * xhat, axis=1, keepdims=True)
        xhat *= mean_scaled_xhat
        out = np.subtract(scaled, mean_scaled, out=out)
        out -= xhat
        out *= rstd[:, None]
        return out

    def layer_norm_gain_gradient(self, dy, x, mean, rstd, out=None):
        xhat = (x - mean[:, None]) * rstd[:, None]
        xhat *= dy
        return np.sum(xhat, axis=0, out=out)

    @_float16_computes_in_float32
    def bias_gradient(self, dz, out=None):
        return np.sum(dz, axis=0, out=out)

    def _scratch_pair(self, size: int, dtype):
        key = (size, np.dtype(dtype).name)
        if key not in self._scratch:
            self._scratch[key] = (np.empty(size, dtype), np.empty(size, dtype))
        return self._scratch[key]

    def optimizer_scratch(self, compute_dtype):
        return None  # the host needs no tickets: one call does the whole update

    def global_norm(self, x, out, scratch=None, segments=None):
        if x.dtype == np.float16:
            x = x.astype(np.float32)
        parts = [x] if segments is None else [x[start:stop] for start, stop, _, _ in update_runs(segments)]
        with np.errstate(over="ignore", invalid="ignore"):
            out[0] = np.sqrt(sum(np.dot(part, part) for part in parts))
        return out

    def optimizer_update(self, rule, param, grad, states, master, scalars, lr_table, norm, hyper, flag,
                         weight_decay: float, decay_end: int, max_norm: float, dynamic_scale: bool, segments, steps,
                         growth_interval: float = 2000.0, scratch=None) -> None:
        norm_value = float(norm[0])
        if not dynamic_scale or np.isfinite(norm_value):  # a float16 overflow skips the update
            for start, stop, state_start, step in update_runs(segments, steps):
                state = slice(state_start, state_start + stop - start)
                self._update(rule, param[start:stop], grad[start:stop], [s[state] for s in states],
                             None if master is None else master[state], scalars, lr_table, norm_value, hyper, flag,
                             weight_decay, max(0, min(decay_end - start, stop - start)), max_norm, step + 1.0)
            steps += segments.reshape(-1, SEGMENT_FIELDS)[:, 3]  # the updated segments' counts
        advance_counters(scalars, norm_value, dynamic_scale, growth_interval)

    def _update(self, rule, param, grad, states, master, scalars, lr_table, norm_value, hyper, flag,
                weight_decay, decay_end, max_norm, step):
        lr = float(lr_table[min(int(scalars[1]), lr_table.size - 1)])
        loss_scale = float(scalars[2])
        if master is None and native.update(rule, param, states, grad, lr, step, weight_decay, decay_end,
                                                 hyper, flag, loss_scale, norm_value, max_norm):
            return  # optim.cuh's rule in one compiled pass; below, its NumPy twin in a dozen
        target = param if master is None else master
        clip = None  # torch's clip_grad_norm_ factor when it is below 1, or NaN (then the gradient is NaN)
        if max_norm > 0:
            coefficient = max_norm / (norm_value / loss_scale + 1e-6)
            clip = None if coefficient >= 1 else coefficient
        chunk = UPDATE_CHUNK
        gradient_buffer, work_buffer = self._scratch_pair(min(chunk, grad.size), target.dtype)
        # The rules read the gradient in place unless it must change first (loss scale, clipping,
        # float16 widening) or L2 decay adds to it: then they get a scratch copy.
        in_place = loss_scale == 1.0 and clip is None and not weight_decay and grad.dtype == target.dtype
        # The rule runs over cache-sized chunks: each of its passes then reads and writes the
        # cache, not main memory. An elementwise rule gives the same numbers chunked or not.
        with np.errstate(over="ignore", invalid="ignore"):  # Inf/NaN updates are fit's divergence check's
            for start in range(0, grad.size, chunk):
                stop = min(start + chunk, grad.size)
                gradient, work = gradient_buffer[:stop - start], work_buffer[:stop - start]
                if in_place:
                    gradient = grad[start:stop]
                else:  # widened first (dtype=): 2^16 is no float16 number
                    np.multiply(grad[start:stop], 1.0 / loss_scale, out=gradient, dtype=gradient.dtype)
                    if clip is not None:
                        gradient *= clip
                if master is not None:  # a parameter written from outside wins over its master weight
                    changed = master[start:stop].astype(param.dtype) != param[start:stop]
                    np.copyto(master[start:stop], param[start:stop], where=changed, casting="unsafe")
                rule.host(np, target[start:stop], [state[start:stop] for state in states], gradient, work, lr, step,
                          weight_decay, max(0, decay_end - start), *hyper, flag)
                if master is not None:
                    np.copyto(param[start:stop], master[start:stop], casting="same_kind")

    @_float16_computes_in_float32
    def mse_grad(self, y, t, scale: float, loss_scale=None, out=None):
        out = np.subtract(y, t, out=out)
        out *= _total_scale(scale, loss_scale)
        return out

    def bce_with_logits_loss(self, z, t):
        if z.dtype == np.float16:  # computed in float32, as the CuPy kernel does
            z, t = z.astype(np.float32), t.astype(np.float32)
        with np.errstate(under="ignore"):
            elementwise = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return np.asarray(elementwise.mean())

    @_float16_computes_in_float32
    def bce_with_logits_grad(self, z, t, scale: float, loss_scale=None, out=None):
        if out is None:
            out = z.copy()
        else:
            np.copyto(out, z)
        _sigmoid_inplace(out)
        out -= t
        out *= _total_scale(scale, loss_scale)
        return out

    @_float16_computes_in_float32
    def softmax_cross_entropy_grad(self, z, log_sum_exp, labels, scale: float, loss_scale=None, out=None):
        out = np.subtract(z, log_sum_exp.reshape(-1, 1), out=out)
        np.exp(out, out=out)
        out[np.arange(out.shape[0]), labels] -= 1
        out *= _total_scale(scale, loss_scale)
        return out

    def capture(self, step, previous=None):
        raise NotImplementedError("the numpy backend cannot capture graphs: NumPy runs every step "
                                  "eagerly (use the cupy backend, or graph=False)")


def update_runs(segments, steps=None) -> list:
    """(start, stop, state start, step count) of the updated segments of an update's segment table
    (kernels/optim.cuh), those back to back in the buffer and the state with the same count merged:
    one pass of the rule each, so an update of the whole model (or of all but a frozen layer) is one
    or a few passes whatever its number of parameters."""
    rows = segments.reshape(-1, SEGMENT_FIELDS).tolist()
    counts = [0.0] * len(rows) if steps is None else steps.tolist()
    runs = []
    for (start, stop, state_start, updated), count in zip(rows, counts):
        if not updated:
            continue
        last = runs[-1] if runs else None
        if last and last[1] == start and last[2] + last[1] - last[0] == state_start and last[3] == count:
            last[1] = stop
        else:
            runs.append([start, stop, state_start, count])
    return runs


def advance_counters(scalars, norm: float, dynamic_scale: bool, growth_interval: float) -> None:
    """kernels/optim.cuh gpunn_after_update on the host: the step counters and GradScaler's rule."""
    scalars[1] += 1
    if dynamic_scale and not np.isfinite(norm):
        scalars[2] *= 0.5
        scalars[3] = 0
        scalars[4] += 1
        return
    scalars[0] += 1
    if dynamic_scale:
        scalars[3] += 1
        if scalars[3] >= growth_interval:
            scalars[2] *= 2
            scalars[3] = 0
