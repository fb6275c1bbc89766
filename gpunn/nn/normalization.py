"""Layer normalisation: each row to zero mean and unit variance, then a learned gain and bias."""

from __future__ import annotations

from gpunn import checks
from gpunn.backends.selection import get_backend
from gpunn.nn import dtype as dtype_setting
from gpunn.nn.layer import Layer, register_layer
from gpunn.nn.parameter import Parameter, ParameterAttribute


@register_layer
class LayerNorm(Layer):
    """``(x − mean)/√(var + eps)·gain + bias`` over each row's ``features`` values (biased
    variance, as torch.nn.LayerNorm); gain starts at 1 and bias at 0. The row statistics are
    computed once per forward, in float32 for float16 storage, and reused by backward."""

    gain, bias = ParameterAttribute(), ParameterAttribute()

    def __init__(self, features: int, eps: float = 1e-5, dtype=None):
        super().__init__()
        features = checks.count("LayerNorm", "features", features)
        eps = checks.positive("LayerNorm", "eps", eps)
        self.backend = backend = get_backend()
        self.dtype = backend.check_dtype(dtype_setting.resolve(dtype))
        self.in_features = self.out_features = self.features = features
        self.eps = float(eps)
        self.gain = Parameter(backend.asarray([1.0] * features, self.dtype), "gain", backend)
        self.bias = Parameter(backend.zeros((features,), self.dtype), "bias", backend)
        self._statistics_dtype = "float32" if self.dtype.itemsize < 4 else self.dtype

    def parameters(self):
        return [self.gain, self.bias]

    def config(self) -> dict:
        return {"features": self.features, "eps": self.eps}

    @classmethod
    def from_config(cls, config: dict, dtype, sublayers: list):
        return cls(**config, dtype=dtype)

    def forward(self, x):
        backend, rows = self.backend, x.shape[0]
        state = self.state
        y = self._buffer("y", x.shape, backend, self.dtype)
        state.mean = self._buffer("mean", (rows,), backend, self._statistics_dtype)
        state.rstd = self._buffer("rstd", (rows,), backend, self._statistics_dtype)
        state.x = x
        return backend.layer_norm_forward(x, self.gain.value, self.bias.value, self.eps, y, state.mean, state.rstd)

    def backward(self, dy, input_gradient: bool = True):
        state = self.state
        if state.x is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        backend, x, mean, rstd = self.backend, state.x, state.mean, state.rstd
        self.gain.accept_gradient(lambda out: backend.layer_norm_gain_gradient(dy, x, mean, rstd, out=out))
        self.bias.accept_gradient(lambda out: backend.bias_gradient(dy, out=out))
        if not input_gradient:
            return None
        dx = self._buffer("dx", x.shape, backend, self.dtype)
        return backend.layer_norm_backward(dy, x, self.gain.value, mean, rstd, out=dx)
