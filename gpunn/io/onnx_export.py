"""ONNX export: any gpunn model as an ONNX graph built with the ``onnx`` package, to serve with ONNX
Runtime or any other ONNX engine. Needs ``pip install ".[onnx]"``.

Each layer becomes the ONNX operators of the same maths: Dense is ``Gemm``; Sigmoid, Tanh, ReLU,
LeakyReLU and Identity their own operators; GELU (exact and tanh), SiLU and Softplus (with torch's
``beta`` and ``threshold``) their formulas; LayerNorm ``LayerNormalization``; Residual an ``Add`` of
its input and its branch; Dropout the identity (inference). The batch dimension is dynamic.

A float16 model computes as gpunn's float16 backend does: each layer in float32 and its output
rounded to float16 (a Cast pair), with float16 at the graph's input and output.
"""

from __future__ import annotations

import math

import numpy as np

from gpunn.extras import install_command
from gpunn.io.atomic import atomic_write

#: Opset 17: LayerNormalization arrives in it, and ONNX Runtime 1.14 and newer run it.
OPSET = 17
_ELEMENT = {"float16": 10, "float32": 1, "float64": 11}  # onnx.TensorProto's data types


def _onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError(f"ONNX export needs the onnx package ({error}): {install_command('onnx')}") from None
    return onnx


class GraphBuilder:
    """Nodes and initializers of one graph, with fresh names, computing in ``dtype``."""

    def __init__(self, onnx, dtype: str):
        self.onnx, self.dtype, self.nodes, self.initializers, self._count = onnx, dtype, [], [], 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, array, hint: str, dtype=None) -> str:
        name = self.name(hint)
        array = np.asarray(array, dtype=dtype or self.dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attributes) -> str:
        output = self.name(hint or op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], **attributes))
        return output

    def scalar(self, value: float) -> str:
        return self.constant(np.array(value), "c")


def _activation(graph: GraphBuilder, layer, x: str) -> str:
    name, values = layer.function.name, layer.function.values
    if name in ("sigmoid", "tanh", "relu", "identity"):
        return graph.node({"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "identity": "Identity"}[name], [x])
    if name == "leaky_relu":
        return graph.node("LeakyRelu", [x], alpha=float(values[0]))
    if name == "silu":
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])])
    if name == "gelu":  # x·Φ(x) = 0.5·x·(1 + erf(x/√2))
        erf = graph.node("Erf", [graph.node("Mul", [x, graph.scalar(1 / math.sqrt(2))])])
        return graph.node("Mul", [graph.node("Mul", [x, graph.scalar(0.5)]), graph.node("Add", [erf, graph.scalar(1)])])
    if name == "gelu_tanh":  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        cube = graph.node("Mul", [graph.node("Mul", [x, x]), x])
        inner = graph.node("Add", [x, graph.node("Mul", [cube, graph.scalar(0.044715)])])
        tanh = graph.node("Tanh", [graph.node("Mul", [inner, graph.scalar(math.sqrt(2 / math.pi))])])
        return graph.node("Mul", [graph.node("Mul", [x, graph.scalar(0.5)]), graph.node("Add", [tanh, graph.scalar(1)])])
    if name == "softplus":  # torch's: log(1 + exp(beta·x)) / beta, and x itself where beta·x > threshold
        beta, threshold = (float(value) for value in values)
        scaled = graph.node("Mul", [x, graph.scalar(beta)])
        smooth = graph.node("Div", [graph.node("Softplus", [scaled]), graph.scalar(beta)])
        return graph.node("Where", [graph.node("Greater", [scaled, graph.scalar(threshold)]), x, smooth])
    raise NotImplementedError(f"ONNX export: no operators for the activation {name!r}")


def _layer(graph: GraphBuilder, layer, x: str, to_host) -> str:
    """The output of ``layer`` on ``x`` (computed in the graph's dtype)."""
    kind = type(layer).__name__
    if kind == "Dense":
        weight, bias = (graph.constant(to_host(array), hint) for array, hint in ((layer.W, "W"), (layer.b, "b")))
        return graph.node("Gemm", [x, weight, bias])
    if kind == "LayerNorm":
        gain, bias = (graph.constant(to_host(p.value), hint) for p, hint in ((layer.gain, "gain"), (layer.bias, "beta")))
        return graph.node("LayerNormalization", [x, gain, bias], axis=-1, epsilon=float(layer.eps))
    if kind == "Dropout":
        return x  # the identity outside training
    if kind == "Residual":
        branch = x
        for inner in layer.layers:
            branch = _layer(graph, inner, branch, to_host)
        return graph.node("Add", [x, branch])
    if hasattr(layer, "function"):
        return _activation(graph, layer, x)
    raise NotImplementedError(f"ONNX export: no operators for the layer {kind}")


def model_graph(model, *, head=None, tail=None, input_dtype: str | None = None, name: str = "gpunn"):
    """The ONNX ModelProto of ``model``. ``head(graph, x)`` may add nodes before the layers (the CLI's
    standardisation); ``tail(graph, y)`` returns the outputs as ``{name: (value, element type, width or
    None)}`` (the CLI's probabilities and class index); by default the one output is ``output``, in the
    model's dtype, as is the input unless ``input_dtype`` says otherwise."""
    onnx = _onnx()
    stored = np.dtype(model.dtype).name
    compute = "float32" if stored == "float16" else stored
    input_dtype = input_dtype or stored
    graph = GraphBuilder(onnx, compute)
    x = "input" if input_dtype == compute else graph.node("Cast", ["input"], to=_ELEMENT[compute])
    if head is not None:
        x = head(graph, x)
    for layer in model.layers:
        x = _layer(graph, layer, x, model.backend.to_numpy)
        if stored != compute and type(layer).__name__ != "Dropout":  # the backend stores float16 between layers
            x = graph.node("Cast", [graph.node("Cast", [x], to=_ELEMENT[stored])], to=_ELEMENT[compute])
    if tail is not None:
        results = tail(graph, x)
    elif stored != compute:
        results = {"output": (graph.node("Cast", [x], to=_ELEMENT[stored]), stored, model.out_features)}
    else:
        results = {"output": (x, compute, model.out_features)}
    outputs = []
    for output, (value, element, width) in results.items():
        graph.nodes.append(onnx.helper.make_node("Identity", [value], [output]))
        element_type = _ELEMENT[element] if element in _ELEMENT else onnx.TensorProto.INT64
        outputs.append(onnx.helper.make_tensor_value_info(output, element_type, ["batch", width] if width else ["batch"]))
    features = model.in_features if model.in_features is not None else "features"
    inputs = [onnx.helper.make_tensor_value_info("input", _ELEMENT[input_dtype], ["batch", features])]
    exported = onnx.helper.make_model(onnx.helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers),
                                      opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="gpunn")
    exported.ir_version = min(exported.ir_version, 8)  # opset 17's IR version: what older runtimes read
    onnx.checker.check_model(exported, full_check=True)
    return exported


def export_onnx(model, path, *, metadata: dict | None = None) -> None:
    """Write ``model`` (a ``gpunn.Sequential``) to ``path`` as ONNX: input ``input`` (batch, features),
    output ``output`` (batch, outputs), in the model's dtype; ``metadata`` strings go into the model's
    metadata_props. The file is written atomically."""
    exported = model_graph(model)
    write(exported, path, metadata)


def write(exported, path, metadata: dict | None = None) -> None:
    onnx = _onnx()
    if metadata:
        onnx.helper.set_model_props(exported, {str(key): str(value) for key, value in metadata.items()})
    data = exported.SerializeToString()
    atomic_write(path, lambda file: file.write(data))
