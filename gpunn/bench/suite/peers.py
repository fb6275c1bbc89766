"""The implementations the benchmarks compare: gpunn on each backend, and PyTorch as a peer.

Each peer builds a zero-argument ``step`` for a case; a step does the work and waits for the
device, so a host timer around it is honest. Shapes, dtype, initialisation (xavier/glorot for
sigmoid and tanh, he for relu, zero biases) and optimizer (SGD with momentum 0.9, or Adam/AdamW
with torch's defaults; torch.optim runs its foreach implementation) match across peers.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass

import numpy as np

import gpunn as gn
from gpunn.backends.selection import cupy_unavailable_reason, resolve_backend

LR, MOMENTUM = 0.01, 0.9
#: optimizer name -> (gpunn optimizer, torch.optim class and keyword arguments); the same settings.
OPTIMIZERS = {
    "sgd": (lambda: gn.SGD(lr=LR, momentum=MOMENTUM), ("SGD", {"lr": LR, "momentum": MOMENTUM})),
    "adam": (lambda: gn.Adam(lr=1e-3), ("Adam", {"lr": 1e-3, "foreach": True})),
    "adamw": (lambda: gn.AdamW(lr=1e-3, weight_decay=0.01), ("AdamW", {"lr": 1e-3, "weight_decay": 0.01,
                                                                       "foreach": True})),
}


def torch_optimizer(torch, parameters, optimizer: str, graph: bool):
    """The torch.optim peer of ``OPTIMIZERS[optimizer]``; for CUDA-graph capture with
    ``capturable=True`` where the class has it (Adam, AdamW): torch refuses to capture ``step()``
    otherwise ("Attempting CUDA graph capture of step() for an instance of Adam but param_groups'
    capturable is False": torch/optim/optimizer.py, ``_cuda_graph_capture_health_check``, torch
    2.13), because the uncapturable step keeps its step count on the host. SGD has no host state
    and no such flag."""
    import inspect

    name, options = OPTIMIZERS[optimizer][1]
    kind = getattr(torch.optim, name)
    if graph and "capturable" in inspect.signature(kind).parameters:
        options = {**options, "capturable": True}
    return kind(parameters, **options)


@dataclass(frozen=True)
class TrainConfig:
    sizes: tuple
    activation: str
    loss: str  # "softmax-ce" | "mse"
    batch: int

    def gemm_flops(self) -> int:
        """Forward X·W, backward dW for every layer, dX for all but the first."""
        layers = list(zip(self.sizes, self.sizes[1:]))
        per_layer = [2 * self.batch * a * b for a, b in layers]
        return 2 * sum(per_layer) + sum(per_layer[1:])


TRAIN_CONFIGS = {
    "S": TrainConfig((784, 512, 512, 10), "tanh", "softmax-ce", 128),
    "M": TrainConfig((4096, 2048, 1024), "sigmoid", "mse", 640),
    "L": TrainConfig((4096, 4096, 4096, 4096, 4096), "tanh", "mse", 8192),
    "CPU": TrainConfig((784, 1024, 1024, 10), "tanh", "mse", 256),
    "GELU": TrainConfig((784, 1024, 1024, 10), "gelu", "mse", 256),
}


def train_case(case: str, dtype: str = "float32"):
    """(config, dtype, tf32, optimizer) for a case name such as "L", "L-tf32", "L-fp16" or "S-adam"."""
    name, _, variant = case.partition("-")
    optimizer = variant if variant in ("adam", "adamw") else "sgd"
    return TRAIN_CONFIGS[name], "float16" if variant == "fp16" else dtype, variant == "tf32", optimizer


TORCH_ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "ReLU", "gelu": "GELU", "silu": "SiLU"}


def _targets(config: TrainConfig, rng):
    if config.loss == "softmax-ce":
        return rng.integers(0, config.sizes[-1], size=config.batch)
    return rng.normal(size=(config.batch, config.sizes[-1]))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class Peer:
    name = library = device = ""
    graph = False  # a CUDA-graph peer runs only the training-step cases

    def unavailable(self) -> str | None:
        return None

    def device_name(self) -> str:
        return _cpu_name()

    def versions(self) -> dict:
        return {"numpy": np.__version__, "gpunn": gn.__version__}


class GpunnPeer(Peer):
    library = "gpunn"

    def __init__(self, backend: str, graph: bool = False):
        self.backend_name, self.graph = backend, graph
        self.name = f"gpunn-{backend}" + ("-graph" if graph else "")
        self.device = "gpu" if backend == "cupy" else "cpu"

    def unavailable(self):
        return None if self.backend_name == "numpy" else cupy_unavailable_reason()

    @property
    def backend(self):
        return resolve_backend(self.backend_name)

    def device_name(self):
        if self.device == "cpu":
            return _cpu_name()
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else name

    def versions(self):
        versions = super().versions()
        if self.device == "gpu":
            import cupy

            versions.update(cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
        return versions

    def _synced(self, work):
        backend = self.backend

        def step():
            work()
            backend.synchronize()

        return step

    def _random(self, shape, dtype, rng):
        return self.backend.asarray(rng.normal(size=shape), dtype)

    # --- cases --------------------------------------------------------------------------
    def matmul(self, op, n, k, m, dtype, rng):
        backend = self.backend
        x, w, dy = (self._random(s, dtype, rng) for s in ((n, k), (k, m), (n, m)))
        if op == "forward":
            out = backend.empty((n, m), dtype)
            return self._synced(lambda: backend.matmul(x, w, out=out))
        if op == "grad_input":
            out = backend.empty((n, k), dtype)
            return self._synced(lambda: backend.matmul_nt(dy, w, out=out))
        out = backend.empty((k, m), dtype)
        return self._synced(lambda: backend.matmul_tn(x, dy, out=out))

    def activation(self, activation, direction, rows, cols, dtype, rng):
        """The training-mode fused pass: an activation whose backward reads its input (GELU,
        SiLU) also writes the pre-activation, into the matmul's buffer as Dense does."""
        from gpunn.kernels.activations import REGISTRY

        backend = self.backend
        z, dy = self._random((rows, cols), dtype, rng), self._random((rows, cols), dtype, rng)
        bias, out = self._random((cols,), dtype, rng), backend.empty((rows, cols), dtype)
        saving = REGISTRY[activation].reads_input
        saved = z.copy() if saving else backend.bias_activation(z, bias, activation)
        if saving:
            backend.bias_activation(saved, bias, activation, out=out, saved=saved)
        if direction == "forward" and saving:
            return self._synced(lambda: backend.bias_activation(z, bias, activation, out=out, saved=saved))
        if direction == "forward":
            return self._synced(lambda: backend.bias_activation(z, bias, activation, out=out))
        return self._synced(lambda: backend.activation_backward(dy, saved, activation, out=out))

    def dense(self, batch, inputs, outputs, activation, dtype, rng):
        with gn.use_backend(self.backend_name):
            model = gn.Sequential(gn.Dense(inputs, outputs, dtype=dtype, seed=0,
                                           init="he" if activation == "relu" else "xavier"),
                                  gn.layers.ACTIVATION_LAYERS[activation]())
        x, dy = self._random((batch, inputs), dtype, rng), self._random((batch, outputs), dtype, rng)

        def work():
            model._forward(x)
            model.zero_grad()
            model.backward(dy)

        return self._synced(work)

    def build_train_step(self, config: TrainConfig, dtype, rng, optimizer: str = "sgd"):
        with gn.use_backend(self.backend_name):
            layers = []
            pairs = list(zip(config.sizes, config.sizes[1:]))
            for index, (a, b) in enumerate(pairs):
                layers.append(gn.Dense(a, b, dtype=dtype, seed=index,
                                       init="he" if config.activation == "relu" else "xavier"))
                if index < len(pairs) - 1:
                    layers.append(gn.layers.ACTIVATION_LAYERS[config.activation]())
            model = gn.Sequential(*layers)
            loss = gn.SoftmaxCrossEntropyLoss() if config.loss == "softmax-ce" else gn.MSELoss()
            train_step = gn.TrainStep(model, loss, OPTIMIZERS[optimizer][0](), graph=self.graph)
            x, t = train_step.prepare(rng.normal(size=(config.batch, config.sizes[0])), _targets(config, rng))
        return train_step, x, t

    def train_step(self, config: TrainConfig, dtype, rng, optimizer: str = "sgd"):
        train_step, x, t = self.build_train_step(config, dtype, rng, optimizer)
        return self._synced(lambda: train_step(x, t))

    def gemm_floor(self, config: TrainConfig, dtype, rng):
        """Only the GEMMs of one training step, into preallocated outputs: the step's floor.

        Nothing is fed back from one round to the next, so the data stays the finite values it
        starts as (overflowing into Inf/NaN would time something else).
        """
        backend = self.backend
        pairs = list(zip(config.sizes, config.sizes[1:]))
        inputs = [self._random((config.batch, a), dtype, rng) for a, _ in pairs]
        weights = [backend.asarray(rng.normal(size=(a, b)) / np.sqrt(a), dtype) for a, b in pairs]
        outputs = [backend.empty((config.batch, b), dtype) for _, b in pairs]
        weight_grads = [backend.empty((a, b), dtype) for a, b in pairs]
        input_grads = [backend.empty((config.batch, a), dtype) for a, _ in pairs]

        def work():
            for x, w, y in zip(inputs, weights, outputs):
                backend.matmul(x, w, out=y)
            for index in range(len(pairs) - 1, -1, -1):
                backend.matmul_tn(inputs[index], outputs[index], out=weight_grads[index])
                if index:
                    backend.matmul_nt(outputs[index], weights[index], out=input_grads[index])

        return self._synced(work)

    def epoch(self, dataset, dtype, seed):
        with gn.use_backend(self.backend_name):
            model = gn.Sequential(gn.Dense(64, 128, dtype=dtype, seed=0), gn.Tanh(),
                                  gn.Dense(128, 64, dtype=dtype, seed=1), gn.Tanh(), gn.Dense(64, 10, dtype=dtype, seed=2))
        optimizer = gn.SGD(lr=0.05, momentum=MOMENTUM)
        return self._synced(lambda: model.fit(dataset[0], dataset[1], loss=gn.SoftmaxCrossEntropyLoss(),
                                              optimizer=optimizer, epochs=1, batch_size=32, seed=seed, verbose=0))

    def copy(self, n, dtype, rng):
        backend = self.backend
        source, target = self._random((n,), dtype, rng), backend.empty((n,), dtype)
        return self._synced(lambda: backend.xp.copyto(target, source))

    def transfer(self, direction, n, dtype, rng):
        backend = self.backend
        host = rng.normal(size=n).astype(dtype)
        device = backend.asarray(host)
        if direction == "host_to_device":
            return self._synced(lambda: backend.asarray(host))
        return self._synced(lambda: backend.to_numpy(device))


class TorchPeer(Peer):
    library = "torch"

    def __init__(self, device: str, graph: bool = False):
        self.torch_device, self.graph = device, graph
        self.device = "gpu" if device == "cuda" else "cpu"
        self.name = f"torch-{device}" + ("-graph" if graph else "")

    def unavailable(self):
        try:
            torch = importlib.import_module("torch")
        except ImportError:
            return "PyTorch is not installed"
        if self.torch_device == "cuda" and not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        return None

    @property
    def torch(self):
        return importlib.import_module("torch")

    def device_name(self):
        return self.torch.cuda.get_device_name(0) if self.device == "gpu" else _cpu_name()

    def versions(self):
        return {**super().versions(), "torch": self.torch.__version__}

    def sync(self):
        if self.device == "gpu":
            self.torch.cuda.synchronize()

    def _synced(self, work):
        def step():
            work()
            self.sync()

        return step

    def _random(self, shape, dtype, rng):
        return self.torch.as_tensor(rng.normal(size=shape), dtype=getattr(self.torch, dtype),
                                    device=self.torch_device)

    def matmul(self, op, n, k, m, dtype, rng):
        torch = self.torch
        x, w, dy = (self._random(s, dtype, rng) for s in ((n, k), (k, m), (n, m)))
        if op == "forward":
            out = torch.empty((n, m), dtype=x.dtype, device=x.device)
            return self._synced(lambda: torch.matmul(x, w, out=out))
        if op == "grad_input":
            out = torch.empty((n, k), dtype=x.dtype, device=x.device)
            return self._synced(lambda: torch.matmul(dy, w.t(), out=out))
        out = torch.empty((k, m), dtype=x.dtype, device=x.device)
        return self._synced(lambda: torch.matmul(x.t(), dy, out=out))

    def activation(self, activation, direction, rows, cols, dtype, rng):
        torch = self.torch
        z, dy, bias = self._random((rows, cols), dtype, rng), self._random((rows, cols), dtype, rng), \
            self._random((cols,), dtype, rng)
        out = torch.empty_like(z)
        aten = torch.ops.aten
        forward = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "identity": lambda v, out: v,
                   "gelu": lambda v, out: aten.gelu.out(v, out=out), "silu": lambda v, out: aten.silu.out(v, out=out)}
        backward = {"sigmoid": aten.sigmoid_backward, "tanh": aten.tanh_backward,
                    "relu": lambda g, y: aten.threshold_backward(g, y, 0), "gelu": aten.gelu_backward,
                    "silu": aten.silu_backward}
        pre = z + bias
        y = pre if activation in ("identity", "gelu", "silu") else forward[activation](pre)  # what backward reads
        if direction == "forward":  # eager PyTorch: the bias add and the activation are two passes
            def work():
                if activation in ("gelu", "silu"):  # autograd keeps the pre-activation
                    torch.add(z, bias, out=pre)
                    forward[activation](pre, out=out)
                    return
                torch.add(z, bias, out=out)
                if activation == "relu":
                    torch.relu_(out)
                elif activation != "identity":
                    forward[activation](out, out=out)
            return self._synced(work)
        return self._synced(lambda: backward[activation](dy, y))

    def _mlp(self, sizes, activation, dtype):
        torch = self.torch
        nn = torch.nn
        torch.manual_seed(0)
        layers, pairs = [], list(zip(sizes, sizes[1:]))
        for index, (a, b) in enumerate(pairs):
            linear = nn.Linear(a, b)
            if activation == "relu":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if index < len(pairs) - 1:
                layers.append(getattr(nn, TORCH_ACTIVATIONS[activation])())
        return nn.Sequential(*layers).to(device=self.torch_device, dtype=getattr(torch, dtype))

    def dense(self, batch, inputs, outputs, activation, dtype, rng):
        model = self._mlp((inputs, outputs), activation, dtype)
        act = getattr(self.torch.nn, TORCH_ACTIVATIONS[activation])()
        x = self._random((batch, inputs), dtype, rng).requires_grad_(True)
        dy = self._random((batch, outputs), dtype, rng)

        def work():
            model.zero_grad(set_to_none=True)
            x.grad = None
            act(model(x)).backward(dy)

        return self._synced(work)

    def train_step(self, config: TrainConfig, dtype, rng, optimizer: str = "sgd"):
        torch = self.torch
        model = self._mlp(config.sizes, config.activation, dtype)
        optimizer = torch_optimizer(torch, model.parameters(), optimizer, self.graph)
        loss_fn = torch.nn.CrossEntropyLoss() if config.loss == "softmax-ce" else torch.nn.MSELoss()
        x = self._random((config.batch, config.sizes[0]), dtype, rng)
        targets = _targets(config, rng)
        t = torch.as_tensor(targets, device=self.torch_device)
        t = t if config.loss == "softmax-ce" else t.to(getattr(torch, dtype))

        def eager():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), t).backward()
            optimizer.step()

        if not self.graph:
            return self._synced(eager)
        # PyTorch's documented whole-network capture: warm up on a side stream, then capture.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss_fn(model(x), t).backward()
            optimizer.step()
        return self._synced(graph.replay)

    def epoch(self, dataset, dtype, seed):
        torch = self.torch
        model = self._mlp((64, 128, 64, 10), "tanh", dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=MOMENTUM)
        loss_fn = torch.nn.CrossEntropyLoss()
        x = torch.as_tensor(dataset[0], dtype=getattr(torch, dtype), device=self.torch_device)
        y = torch.as_tensor(dataset[1], device=self.torch_device)
        generator = torch.Generator().manual_seed(seed)

        def work():
            order = torch.randperm(len(x), generator=generator).to(self.torch_device)
            for start in range(0, len(x), 32):
                rows = order[start:start + 32]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x[rows]), y[rows]).backward()
                optimizer.step()

        return self._synced(work)

    def copy(self, n, dtype, rng):
        source = self._random((n,), dtype, rng)
        target = self.torch.empty_like(source)
        return self._synced(lambda: target.copy_(source))

    def transfer(self, direction, n, dtype, rng):
        host = self.torch.as_tensor(rng.normal(size=n).astype(dtype))
        device = host.to(self.torch_device)
        if direction == "host_to_device":
            return self._synced(lambda: host.to(self.torch_device))
        return self._synced(lambda: device.cpu())


PEERS = {peer.name: peer for peer in (GpunnPeer("numpy"), GpunnPeer("cupy"), GpunnPeer("cupy", graph=True),
                                      TorchPeer("cpu"), TorchPeer("cuda"), TorchPeer("cuda", graph=True))}
