"""Save and load models: an npz of arrays plus JSON metadata, never pickle.

Arrays are stored on the host, so a model saved on one backend loads on any other. Files
are written to a temporary name and renamed into place, so an interrupted save never
leaves a truncated file where a good one stood.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "gpunn-model"
FORMAT_VERSION = 2
#: Versions this gpunn reads: 1 had no optimizer state.
READABLE_VERSIONS = (1, 2)
_META_KEY = "__gpunn_meta__"


class ModelFileError(ValueError):
    """The file is not a gpunn model this version can read; the message says why."""


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _layer_record(layer) -> dict:
    return {"type": type(layer).__name__, **layer.config()}


def save(model, path, extras: dict | None = None, optimizer=None) -> None:
    """Write ``model`` (host arrays in ``extras``, e.g. a scaler, and ``optimizer``'s state) to ``path``."""
    from . import __version__

    arrays = {}
    for index, layer in enumerate(model.layers):
        for parameter in layer.parameters():
            arrays[f"layer{index}.{parameter.name}"] = model.backend.to_numpy(parameter.value)
    for name, value in (extras or {}).items():
        arrays[f"extra.{name}"] = np.asarray(value)
    optimizer_config = None
    if optimizer is not None:
        state = optimizer.state_dict()
        optimizer_config = state["config"]
        for name, value in state["arrays"].items():
            arrays[f"optimizer.{name}"] = value
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "dtype": str(model.dtype),
        "layers": [_layer_record(layer) for layer in model.layers],
        "optimizer": optimizer_config,
    }
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _read(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise ModelFileError(f"{path}: not a readable gpunn model file ({error})") from error
    if not isinstance(arrays, dict) or _META_KEY not in arrays:
        raise ModelFileError(f"{path}: not a gpunn model file (no gpunn metadata inside)")
    try:
        meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: corrupt gpunn metadata ({error})") from error
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a gpunn model file (format {meta.get('format')!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(f"{path}: written in gpunn model format version "
                             f"{meta.get('format_version')!r} by gpunn {meta.get('gpunn_version')}; "
                             f"this gpunn reads versions {READABLE_VERSIONS}")
    return meta, arrays


def load(path, backend=None):
    """Rebuild a saved model on ``backend`` (default: the current one); extras land in ``model.extras``."""
    from .backends import use_backend, get_backend
    from .layers import ACTIVATION_LAYERS, Dense
    from .model import Sequential

    meta, arrays = _read(path)
    activation_types = {cls.__name__: cls for cls in ACTIVATION_LAYERS.values()}
    with use_backend(backend if backend is not None else get_backend()):
        layers = []
        for index, record in enumerate(meta.get("layers", [])):
            kind = record.get("type")
            if kind == "Dense":
                try:
                    weight, bias = arrays[f"layer{index}.W"], arrays[f"layer{index}.b"]
                    layers.append(Dense(record["in_features"], record["out_features"], weight=weight,
                                        bias=bias, init=record.get("init", "xavier"), dtype=meta["dtype"]))
                except (KeyError, ValueError) as error:
                    raise ModelFileError(f"{path}: layer {index} (Dense) is damaged: {error}") from error
            elif kind in activation_types:
                layers.append(activation_types[kind]())
            else:
                raise ModelFileError(f"{path}: unknown layer type {kind!r} at position {index}")
        model = Sequential(*layers)
    model.extras = {name[len("extra."):]: value for name, value in arrays.items() if name.startswith("extra.")}
    return model


def read_optimizer_state(path) -> dict:
    """The optimizer state saved with a model: ``{"config": ..., "arrays": ...}`` (see Optimizer.state_dict)."""
    meta, arrays = _read(path)
    config = meta.get("optimizer")
    if not isinstance(config, dict):
        raise ModelFileError(f"{path}: holds no optimizer state (save it with model.save(path, optimizer=opt))")
    prefix = "optimizer."
    return {"config": config, "arrays": {name[len(prefix):]: value for name, value in arrays.items()
                                         if name.startswith(prefix)}}


def load_optimizer(path, model):
    """The optimizer saved in ``path``, bound to ``model`` (load the model from the same file first)."""
    from .optim import load_optimizer_state

    state = read_optimizer_state(path)
    try:
        return load_optimizer_state(state, model)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: the optimizer state does not fit this model: {error}") from error
