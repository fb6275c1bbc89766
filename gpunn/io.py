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
    """A layer's type and config; a residual block's branch nests as its "layers"."""
    record = {"type": type(layer).__name__, **layer.config()}
    if layer.sublayers():
        record["layers"] = [_layer_record(inner) for inner in layer.sublayers()]
    return record


def save(model, path, extras: dict | None = None, optimizer=None) -> None:
    """Write ``model`` (host arrays in ``extras``, e.g. a scaler, and ``optimizer``'s state) to ``path``."""
    from . import __version__

    arrays = {name: model.backend.to_numpy(parameter.value) for name, parameter in model.named_parameters()}
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


def _build_layer(path, record, position: str, arrays: dict, dtype):
    """The layer ``record`` describes, nested layers first, with its saved arrays copied in."""
    from .layers import LAYER_TYPES

    kind = record.get("type") if isinstance(record, dict) else None
    cls = LAYER_TYPES.get(kind)
    if cls is None:
        raise ModelFileError(f"{path}: unknown layer type {kind!r} at position {position}")
    config = {key: value for key, value in record.items() if key not in ("type", "layers")}
    try:
        sublayers = [_build_layer(path, inner, f"{position}.{index}", arrays, dtype)
                     for index, inner in enumerate(record.get("layers", []))]
        layer = cls.from_config(config, dtype, sublayers)
        if not sublayers:
            for name, parameter in layer.named_parameters(f"layer{position}"):
                saved = layer.backend.asarray(arrays[name], parameter.value.dtype)
                if saved.shape != parameter.shape:
                    raise ValueError(f"{name} has shape {saved.shape}, expected {parameter.shape}")
                parameter.value[...] = saved
    except (KeyError, ValueError, TypeError) as error:
        raise ModelFileError(f"{path}: layer {position} ({kind}) is damaged: {error}") from error
    return layer


def load(path, backend=None):
    """Rebuild a saved model on ``backend`` (default: the current one); extras land in ``model.extras``."""
    from .backends import use_backend, get_backend
    from .model import Sequential

    meta, arrays = _read(path)
    with use_backend(backend if backend is not None else get_backend()):
        layers = [_build_layer(path, record, str(index), arrays, meta.get("dtype"))
                  for index, record in enumerate(meta.get("layers", []))]
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
