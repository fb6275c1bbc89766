"""Save and load models: an npz of arrays plus JSON metadata, never pickle.

Arrays are stored on the host, so a model saved on one backend loads on any other. Saving
checks everything first and writes to a temporary name that is renamed into place, so a
refused or interrupted save never touches the file that was there. Loading trusts nothing in
the file: the metadata is checked against a schema, the model is built from it, and each
array's header is checked against the parameter it fills before any data is read; arrays
the metadata does not name are never read.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile

import numpy as np

from gpunn.io.atomic import atomic_write, user_path
from gpunn.nn.layer import build_layer, layer_record
from gpunn.version import __version__

FORMAT = "gpunn-model"
FORMAT_VERSION = 2  # 2: metadata names the extras (and optimizer state) it stores
READABLE_VERSIONS = (1, 2)
_META_KEY = "__gpunn_meta__"
_MAX_META_BYTES = 16 * 2**20
_MAX_NESTING = 32
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}\Z")
#: What zipfile raises for features save never writes: encryption, a newer zip version, patched data.
_UNSUPPORTED_ZIP = (RuntimeError, NotImplementedError)
EXTRA_KINDS = "biufU"  # booleans, integers, floats, strings: what np.load reads without pickle
STATE_KINDS = "biuf"

__all__ = ["FORMAT_VERSION", "ModelFileError", "atomic_write", "load", "read_optimizer_state",
           "save"]


class ModelFileError(ValueError):
    """The file is not a gpunn model this version can read; the message says why."""


# --- checks shared by save and load: what one writes, the other reads back ---------------
def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be a string of letters, digits, '_', '.', '-' "
                         "(starting with a letter or '_', at most 100 characters)")
    return name


def _check_array(array: np.ndarray, what: str, kinds: str) -> np.ndarray:
    """``array`` if its dtype is one of ``kinds`` and its floats are finite, else ValueError."""
    if array.dtype.kind not in kinds or array.dtype.hasobject:
        names = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}
        allowed = ", ".join(dict.fromkeys(names[kind] for kind in kinds))
        raise TypeError(f"{what} has dtype {array.dtype}; it must hold {allowed}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or Inf")
    return array


def _host_array(value, what: str, kinds: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:  # ragged lists, objects that refuse conversion
        raise TypeError(f"{what} cannot be stored as an array: {error}") from None
    return _check_array(array, what, kinds)


def _named_arrays(mapping, what: str, kinds: str) -> dict:
    if not isinstance(mapping, dict):
        raise TypeError(f"{what} must be a dict of name -> array, got {type(mapping).__name__}")
    return {_check_name(name, what): _host_array(value, f"{what}[{name!r}]", kinds)
            for name, value in mapping.items()}


def _optimizer_state(optimizer):
    """(config, arrays) from ``optimizer.state_dict()``, checked as load will check them."""
    state = optimizer.state_dict()
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "arrays" not in state:
        raise TypeError("optimizer.state_dict() must return {'config': dict, 'arrays': {name: array}}")
    try:
        json.dumps(state["config"], allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"optimizer config is not JSON-serialisable with finite numbers: {error}") from None
    return state["config"], _named_arrays(state["arrays"], "optimizer state", STATE_KINDS)


# --- saving -------------------------------------------------------------------------------
def save(model, path, extras: dict | None = None, optimizer=None) -> None:
    """Write ``model`` to ``path``: architecture, weights, ``extras`` and optimizer state.

    ``extras`` (default: ``model.extras``, so a loaded checkpoint keeps what it came with) maps
    names to arrays of numbers or strings, e.g. a scaler; pass ``{}`` to store none.
    ``optimizer`` (optional) has ``state_dict()`` -> ``{"config": JSON dict, "arrays": {name:
    host array}}``; ``read_optimizer_state`` gives it back. Everything is checked before the
    file is touched: anything ``load`` would refuse (NaN/Inf weights, an extra that is not
    numbers or strings) raises TypeError/ValueError and the old file stays as it was.
    """

    extras = _named_arrays(getattr(model, "extras", {}) if extras is None else extras, "extras", EXTRA_KINDS)
    arrays = {}
    for name, parameter in model.named_parameters():
        try:
            arrays[name] = _check_array(model.backend.to_numpy(parameter.value), f"parameter {name}", "f")
        except ValueError as error:
            raise ValueError(f"save: {error}: the model diverged or was given non-finite weights; "
                             "not writing a file that load would refuse") from None
    arrays.update({f"extra.{name}": value for name, value in extras.items()})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gpunn_version": __version__,
        "dtype": str(model.dtype),
        "layers": [layer_record(layer) for layer in model.layers],
        "extras": sorted(extras),
    }
    frozen = [name for name, parameter in model.named_parameters() if not parameter.trainable]
    if frozen:  # as Keras saves each layer's trainable flag: a loaded fine-tuning run keeps its base frozen
        meta["frozen"] = frozen
    if optimizer is not None:
        config, state = _optimizer_state(_bound_to(optimizer, model))
        meta["optimizer"] = {"config": config, "arrays": sorted(state)}
        arrays.update({f"optimizer.{name}": value for name, value in state.items()})
    text = json.dumps(meta, allow_nan=False).encode()
    _check_readable(meta, text, sum(array.nbytes for array in arrays.values()))
    arrays[_META_KEY] = np.frombuffer(text, dtype=np.uint8)
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _bound_to(optimizer, model):
    """``optimizer`` if it is an optimizer of ``model``: another model's state would load into this
    one's parameters (same shapes) or be refused only when the file is read back."""
    if isinstance(optimizer, type) or not hasattr(optimizer, "state_dict"):
        raise TypeError(f"save: optimizer must be the gpunn optimizer training this model (e.g. gn.Adam("
                        f"model.parameters())), got {type(optimizer).__name__} {str(optimizer)[:50]!r}")
    check_model = getattr(optimizer, "check_model", None)
    if check_model is not None:
        try:
            check_model(model)
        except ValueError as error:
            raise ValueError(f"save: {error}; pass the optimizer of the model being saved") from None
    return optimizer


def _check_readable(meta: dict, text: bytes, size: int) -> None:
    """What ``load`` checks of the metadata, checked before writing (``size``: the bytes of the arrays,
    which the file holds at least): a file that save writes, load reads back."""
    if not meta["layers"]:
        raise ValueError("save: the model has no layers; load refuses a model file without any")
    if len(text) > _MAX_META_BYTES:
        raise ValueError(f"save: the model's metadata takes {len(text)} bytes; load reads at most {_MAX_META_BYTES}")
    depth = _nesting(meta)
    if depth > _MAX_NESTING:
        raise ValueError(f"save: the model's layers nest {depth} levels deep in the file's metadata (each "
                         f"Residual inside another adds two); load reads at most {_MAX_NESTING}: flatten the "
                         "nesting (a Residual's branch may hold several layers)")
    for index, record in enumerate(meta["layers"]):
        if not _sizes_fit_the_file(record, np.dtype(meta["dtype"]).itemsize, size):
            raise ValueError(f"save: layer {index} ({record['type']}) declares sizes that load would take for a "
                             "crafted file")

    def fail(message):
        return ValueError(f"save: load would refuse this file: {message}")

    _check_metadata(json.loads(text), fail)


# --- reading ------------------------------------------------------------------------------
class _Archive:
    """An opened model file: its zip directory, and arrays read one by one on request."""

    def __init__(self, path):
        self.path = user_path(path, "load")
        try:  # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it
            descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise FileNotFoundError(2, f"{self.path}: no such model file") from None
        except OSError as error:
            raise ModelFileError(f"{self.path}: cannot be read ({error.strerror})") from None
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            os.close(descriptor)
            raise ModelFileError(f"{self.path}: not a regular file (a folder, FIFO or device); "
                                 "a model file is an .npz written by save")
        self.size = info.st_size
        self.file = os.fdopen(descriptor, "rb")
        try:
            self.zip = zipfile.ZipFile(self.file)
            self.members = {item.filename: item for item in self.zip.infolist()}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, *_UNSUPPORTED_ZIP) as error:
            self.file.close()
            raise ModelFileError(f"{self.path}: not a readable gpunn model file ({error})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()
        self.file.close()

    def fail(self, message: str):
        return ModelFileError(f"{self.path}: {message}")

    def has(self, name: str) -> bool:
        return f"{name}.npy" in self.members

    def header(self, name: str, kinds: str):
        """(shape, dtype) of array ``name`` from its npy header, checked against the member's size
        (which an uncompressed member cannot make larger than the file) without reading the data."""
        item = self.members.get(f"{name}.npy")
        if item is None:
            raise self.fail(f"array {name!r} is missing")
        if item.compress_type != zipfile.ZIP_STORED or item.file_size > self.size:
            raise self.fail(f"array {name!r} is compressed or larger than the file; gpunn writes "
                            "arrays uncompressed")
        try:
            with self.zip.open(item) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"npy format version {version}")
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(member)
                offset = member.tell()
        except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile, *_UNSUPPORTED_ZIP) as error:
            raise self.fail(f"array {name!r} has a damaged header ({error})") from None
        try:
            _check_array(np.empty(0, dtype), f"array {name!r}", kinds)
        except TypeError as error:
            raise self.fail(str(error)) from None
        declared = math.prod(shape) * dtype.itemsize
        if declared != item.file_size - offset:
            raise self.fail(f"array {name!r} claims shape {shape} ({declared} bytes) but holds "
                            f"{item.file_size - offset} bytes")
        return tuple(shape), dtype

    def read(self, name: str, kinds: str, shape=None) -> np.ndarray:
        """Array ``name``, after its header is checked (and, given ``shape``, matches it)."""
        stored, _ = self.header(name, kinds)
        if shape is not None and stored != tuple(shape):
            raise self.fail(f"array {name!r} has shape {stored}; the architecture needs {tuple(shape)}")
        try:
            with self.zip.open(self.members[f"{name}.npy"]) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, *_UNSUPPORTED_ZIP) as error:
            raise self.fail(f"array {name!r} is damaged ({error})") from None
        try:
            return _check_array(array, f"array {name!r}", kinds)
        except ValueError as error:
            raise self.fail(str(error)) from None

    def metadata(self) -> dict:
        if not self.has(_META_KEY):
            raise self.fail("not a gpunn model file (no gpunn metadata inside)")
        shape, _ = self.header(_META_KEY, "u")
        if len(shape) != 1 or shape[0] > _MAX_META_BYTES:
            raise self.fail(f"corrupt gpunn metadata (shape {shape})")
        try:
            meta = json.loads(self.read(_META_KEY, "u").tobytes().decode())
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise self.fail(f"corrupt gpunn metadata ({type(error).__name__}: {str(error)[:100]})") from None
        return _check_metadata(meta, self.fail)


def _nesting(value) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit to hit)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_metadata(meta, fail) -> dict:
    """The metadata if it has the shape this version reads; else ModelFileError saying what is off."""
    if not isinstance(meta, dict):
        raise fail(f"corrupt gpunn metadata (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise fail(f"not a gpunn model file (format {str(meta.get('format'))[:50]!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise fail(f"written in gpunn model format version {str(version)[:20]} by gpunn "
                   f"{str(meta.get('gpunn_version'))[:20]}; this gpunn reads versions "
                   f"{', '.join(map(str, READABLE_VERSIONS))}")
    if _nesting(meta) > _MAX_NESTING:
        raise fail(f"corrupt gpunn metadata (nested more than {_MAX_NESTING} deep)")
    if not isinstance(meta.get("dtype"), str):
        raise fail(f"corrupt gpunn metadata (dtype {str(meta.get('dtype'))[:50]!r} is not a dtype name)")
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(r, dict) and isinstance(r.get("type"), str)
                                               for r in layers):
        raise fail("corrupt gpunn metadata ('layers' must be a list of objects, each with a 'type')")
    if not layers:  # Sequential() would return its input: never what was saved
        raise fail("corrupt gpunn metadata (no layers: a model file holds at least one)")
    if version >= 2 and "extras" not in meta:  # version 2 always names its extras (maybe none)
        raise fail("corrupt gpunn metadata (a version-2 file without its 'extras' list)")
    names = meta.get("extras", [])
    optimizer = meta.get("optimizer", {"arrays": []})
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("config", {}), dict):
        raise fail("corrupt gpunn metadata ('optimizer' must be an object with a 'config' object)")
    for key, listed in (("extras", names), ("optimizer arrays", optimizer.get("arrays"))):
        if not isinstance(listed, list) or not all(isinstance(n, str) and _NAME.match(n) for n in listed):
            raise fail(f"corrupt gpunn metadata ({key!r} must be a list of array names)")
    return meta


def _sizes_fit_the_file(record: dict, itemsize: int, file_size: int) -> bool:
    """A layer's size fields multiplied (a Dense's in × out is its weight count) cannot need
    more bytes than the whole file holds: checked before building, so that a crafted size
    cannot make the build allocate terabytes. Nested layer records are checked each."""
    sizes = [value for key, value in record.items()
             if isinstance(value, int) and not isinstance(value, bool) and key not in ("seed", "step")]
    nested = [item for value in record.values() if isinstance(value, list) for item in value
              if isinstance(item, dict)]
    return (math.prod(abs(size) for size in sizes) * itemsize <= file_size
            and all(_sizes_fit_the_file(item, itemsize, file_size) for item in nested))


def _build_model(archive: _Archive, meta: dict):
    from gpunn.backends.selection import get_backend
    from gpunn.nn.sequential import Sequential

    backend = get_backend()
    try:
        dtype = backend.check_dtype(meta["dtype"])
    except (TypeError, ValueError) as error:
        raise archive.fail(f"cannot hold its weights here: {error}") from None
    layers = []
    for index, record in enumerate(meta["layers"]):
        kind = record["type"][:50]
        if not _sizes_fit_the_file(record, dtype.itemsize, archive.size):
            raise archive.fail(f"layer {index} ({kind}) declares sizes larger than the file could hold")
        try:
            layer = build_layer(record, dtype)
        except LookupError as error:
            raise archive.fail(f"{error} at position {index}") from None
        except (TypeError, ValueError) as error:
            raise archive.fail(f"layer {index} ({kind}) is damaged: {error}") from None
        for name, parameter in layer.named_parameters(f"layer{index}"):
            if not archive.has(name):
                raise archive.fail(f"layer {index} ({kind}) is damaged: array {name!r} is missing")
            stored = archive.read(name, "f", shape=parameter.shape)
            parameter.value[...] = backend.asarray(stored, dtype)  # in place: views stay views
        layers.append(layer)
    try:
        model = Sequential(*layers)
    except (TypeError, ValueError) as error:
        raise archive.fail(f"the layers do not fit together: {error}") from None
    frozen = meta.get("frozen", [])
    parameters = dict(model.named_parameters())
    if not isinstance(frozen, list) or not all(isinstance(name, str) and name in parameters for name in frozen):
        raise archive.fail("corrupt gpunn metadata ('frozen' must list parameter names of the model)")
    for name in frozen:
        parameters[name].trainable = False
    return model


def load(path, backend=None):
    """Rebuild a saved model on ``backend`` (default: the current one); extras land in ``model.extras``.

    Raises FileNotFoundError for a missing file and ModelFileError for anything else that is
    not a sound gpunn model file (damaged, crafted, NaN/Inf weights, a newer format).
    """
    from gpunn.backends.selection import get_backend, use_backend

    with _Archive(path) as archive:
        meta = archive.metadata()
        with use_backend(backend if backend is not None else get_backend()):
            model = _build_model(archive, meta)
        if meta["format_version"] == 1:  # version 1 did not list its extras
            names = [name[len("extra."):-len(".npy")] for name in archive.members
                     if name.startswith("extra.") and name.endswith(".npy")]
        else:
            names = meta["extras"]
        model.extras = {name: archive.read(f"extra.{name}", EXTRA_KINDS) for name in names}
    return model


def read_optimizer_state(path) -> dict:
    """``{"config": dict, "arrays": {name: host array}}`` as saved by ``save(..., optimizer=)``;
    ModelFileError when the file holds none or it is damaged."""
    with _Archive(path) as archive:
        meta = archive.metadata()
        if "optimizer" not in meta:
            raise archive.fail("holds no optimizer state (saved without optimizer=)")
        state = meta["optimizer"]
        return {"config": state.get("config", {}),
                "arrays": {name: archive.read(f"optimizer.{name}", STATE_KINDS) for name in state["arrays"]}}


def load_optimizer(path, model):
    """The optimizer saved in ``path``, bound to ``model`` (load the model from the same file first)."""
    from gpunn.nn.sequential import Sequential
    from gpunn.optim import load_optimizer_state

    if not isinstance(model, Sequential):
        raise TypeError(f"load_optimizer: model must be the gpunn model the optimizer trains (model = "
                        f"gn.load(path), then gn.load_optimizer(path, model)), got {type(model).__name__}")
    state = read_optimizer_state(path)
    try:
        return load_optimizer_state(state, model)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: the optimizer state does not fit this model: {error}") from error
