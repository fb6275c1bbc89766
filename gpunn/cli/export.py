"""``gpunn export RUN_OR_CHECKPOINT model.onnx``: a ``gpunn train`` checkpoint as one ONNX graph that
serves raw rows. The feature scaler runs inside the graph, so the input is the training file's
feature columns in their training order; a classifier's outputs are ``probabilities`` (a column per
class) and ``class_index`` (into the class names of the metadata), a regressor's ``value`` in the
target's own units. The metadata holds the task, the feature and label column names and the classes."""

from __future__ import annotations

import json
import os

from gpunn.cli.checkpoint import Checkpoint
from gpunn.cli.options import UserError
from gpunn.io.onnx_export import model_graph, write
from gpunn.version import __version__


def checkpoint_path(source: str) -> str:
    """A run folder's best.npz (its last.npz where no validation chose a best), or the file itself."""
    if os.path.isdir(source):
        for name in ("best.npz", "last.npz"):
            if os.path.isfile(os.path.join(source, name)):
                return os.path.join(source, name)
        raise UserError(f"gpunn export: {source} holds neither best.npz nor last.npz (is it a gpunn train --out "
                        "folder?)")
    return source


def command_export(args) -> int:
    path = checkpoint_path(args.checkpoint)
    checkpoint = Checkpoint.read(path)
    model = checkpoint.model
    compute = "float32" if model.dtype.name == "float16" else model.dtype.name

    def standardise(graph, x):
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
