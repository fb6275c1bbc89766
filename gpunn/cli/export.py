"""``gpunn export RUN_OR_CHECKPOINT model.onnx``: a ``gpunn train`` checkpoint as one ONNX graph that
serves raw rows. The feature scaler runs inside the graph, so the input is the training file's
feature columns in their training order; a classifier's outputs are ``probabilities`` (a column per
class) and ``class_index`` (into the class names of the metadata), a regressor's ``value`` in the
target's own units. A run's --impute fills run inside too (a NaN input gets its column's fill); a run
that one-hot encodes text columns is refused (its input is not a number matrix). The metadata holds the task, the feature and label column names and the classes."""

from __future__ import annotations

import json
import os

import numpy as np

from gpunn.cli.checkpoint import Checkpoint, checkpoint_path
from gpunn.cli.options import UserError
from gpunn.io.onnx_export import model_graph, write
from gpunn.version import __version__


def command_export(args) -> int:
    path = checkpoint_path(args.checkpoint, "export")
    checkpoint = Checkpoint.read(path)
    model = checkpoint.model
    compute = "float32" if model.dtype.name == "float16" else model.dtype.name
    encoding = checkpoint.encoding
    if encoding is not None and encoding.categorical:
        raise UserError(f"gpunn export: {path} one-hot encodes the text column(s) {', '.join(map(repr, encoding.categorical))}; "
                        "the ONNX graph takes number columns only (gpunn predict serves this run)")

    def standardise(graph, x):
        if encoding is not None and encoding.impute is not None:  # --impute: a missing (NaN) input gets its fill
            fills = np.array([np.nan if column.fill is None else column.fill for column in encoding.columns])
            x = graph.node("Where", [graph.node("IsNaN", [x]), graph.constant(fills, "fill"), x])
        mean = graph.constant(checkpoint.scaler.mean, "mean")
        return graph.node("Div", [graph.node("Sub", [x, mean]), graph.constant(checkpoint.scaler.std, "std")])

    def outputs(graph, y):
        if checkpoint.task == "regress":
            scale = graph.constant(checkpoint.target_scaler.std, "target_std")
            value = graph.node("Add", [graph.node("Mul", [y, scale]), graph.constant(checkpoint.target_scaler.mean,
                                                                                     "target_mean")])
            return {"value": (value, compute, 1)}
        probabilities = graph.node("Softmax", [y], axis=1)
        index = graph.node("ArgMax", [y], axis=1, keepdims=0)
        return {"probabilities": (probabilities, compute, len(checkpoint.classes)), "class_index": (index, "int64", None)}

    exported = model_graph(model, head=standardise, tail=outputs, input_dtype=compute, name="gpunn_checkpoint")
    metadata = {"task": checkpoint.task, "gpunn_version": __version__, "source": os.path.basename(path),
                "features": json.dumps(checkpoint.features), "label": json.dumps(checkpoint.label)}
    if checkpoint.classes is not None:
        metadata["classes"] = json.dumps([str(name) for name in checkpoint.classes])
    try:
        write(exported, args.out, metadata)
    except OSError as error:
        raise UserError(f"gpunn export: {args.out}: {error.strerror or error}") from None
    outputs_text = "value" if checkpoint.task == "regress" else "probabilities, class_index"
    print(f"exported {path} to {args.out}: input 'input' ({compute}, batch x {model.in_features} raw features), "
          f"outputs {outputs_text}")
    return 0
