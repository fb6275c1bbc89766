"""``cupy.ndarray`` and CuPy's generic routines, as NumPy arrays held behind a device wall.

The wall is CuPy's: no implicit conversion to NumPy (``__array__`` raises, as in CuPy), NumPy
arrays refused as operands of device routines, transfers only through ``asarray``/``get``/
``asnumpy``. Every routine that would launch a CUDA kernel on a GPU (a ufunc, a reduction, a
copy, advanced indexing) is logged as the launches CuPy's source makes for it (``_launches.py``:
``take_along_axis`` is four kernels and a memset, a contiguous ``copyto`` a memcpy); views
(reshape, slicing, ``.T``) launch nothing.
"""

from __future__ import annotations

import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from support.cupy_standin import _streams
from support.cupy_standin._device import current
from support.cupy_standin._launches import launches


def _refuse_host_array(value):
    # CuPy's kernels wrap every non-CuPy argument into a CScalar, which refuses NumPy arrays with
    # "Unsupported type <class 'numpy.ndarray'>" (cupy/_core/_scalar.pyx, CScalar.__init__).
    raise TypeError(f"Unsupported type {type(value)}")


def unwrap(value, devices: list, allow_host: bool = False):
    """``value`` with every device array replaced by its host buffer (collected in ``devices``)."""
    if isinstance(value, ndarray):
        devices.append(value._host)
        return value._host
    if isinstance(value, np.ndarray) and not allow_host:
        _refuse_host_array(value)
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(item, devices, allow_host) for item in value)
    if isinstance(value, dict):
        return {key: unwrap(item, devices, allow_host) for key, item in value.items()}
    return value


def wrap(value, originals=()):
    """Host results as device arrays; a result that *is* an argument's buffer gives that argument."""
    if isinstance(value, np.ndarray):
        for original in originals:
            if original._host is value:
                return original
        return ndarray._of(value)
    if isinstance(value, np.generic):
        return ndarray._of(np.asarray(value))
    if isinstance(value, (list, tuple)):
        return type(value)(wrap(item, originals) for item in value)
    return value


def _flat_arrays(value) -> list:
    if isinstance(value, (np.ndarray, np.generic)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in _flat_arrays(item)]
    return []


def device_call(name: str, function, args, kwargs, *, allow_host: bool = False, always: bool = False,
                view: bool = False):
    """Run a NumPy routine on device arrays; log a kernel launch when it writes device memory
    (``always``: it launches even when it writes into given outputs, as a ufunc does; ``view``:
    basic indexing, which makes a view on any device and launches nothing)."""
    device, originals = current(), _flat_arrays_of([list(args), list(kwargs.values())])
    inputs: list = []
    host_args, host_kwargs = unwrap(args, inputs, allow_host), unwrap(kwargs, inputs, allow_host)
    for host in inputs if not view else ():  # CuPy's kernels check each array's device (_kernel.pyx, _preprocess_arg)
        device.check_peer(host)
    # While capturing, device memory must not change before the graph is launched: what the
    # routine writes into its arguments is undone, and only new results keep their values.
    saved = [(host, host.copy()) for host in inputs] if device.capture is not None else ()
    result = function(*host_args, **host_kwargs)
    for host, copy in saved:
        np.copyto(host, copy)
    results = [np.asarray(r) if isinstance(r, np.generic) else r for r in _flat_arrays(result)]
    fresh = [index for index, r in enumerate(results) if not any(np.may_share_memory(r, i) for i in inputs)]
    wrapped = wrap(result if not isinstance(result, np.generic) else results[0], originals)
    targets = [array._host for array in _flat_arrays_of(wrapped)]
    written_out = kwargs.get("out") is not None  # a routine writing into a given output (take(..., out=))
    if always or written_out or (result is None and inputs) or any(results[index].size for index in fresh):

        def run():
            values = _flat_arrays(function(*host_args, **host_kwargs))
            for index in fresh:
                np.copyto(targets[index], values[index])

        writes = targets + ([inputs[0]] if result is None and inputs else [])
        operations = launches(name, args, kwargs, host_args)
        if operations is None:  # a ufunc, or a routine of one kernel
            operations = [("kernel", "")]
        for index, (kind, label) in enumerate(operations):  # the first does the work; CuPy's others follow
            device.launch(kind, f"{name}: {label}" if label else name,
                          (run if device.capture is not None else _nothing) if index == 0 else _nothing,
                          reads=inputs if index == 0 else (), writes=writes if index == 0 else ())
    return wrapped


def _nothing():
    return None


def _flat_arrays_of(value) -> list:
    if isinstance(value, ndarray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in _flat_arrays_of(item)]
    return []


class _Pointer:
    """``ndarray.data``: CuPy's MemoryPointer, of which gpunn reads ``ptr`` (and ``device_id``)."""

    def __init__(self, ptr: int, device_id: int = 0):
        self.ptr, self.device_id = ptr, device_id

    def __int__(self):
        return self.ptr


class ndarray(NDArrayOperatorsMixin):
    """A device array: a NumPy buffer that only device routines may touch."""

    __slots__ = ("_host", "__weakref__")
    __module__ = "cupy"  # as CuPy's class reports itself (error messages name the library)
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        self._host = np.empty(shape, dtype, order=order)
        current().register(self._host)

    @classmethod
    def _of(cls, host: np.ndarray) -> "ndarray":
        array = object.__new__(cls)
        array._host = host
        current().register(host)
        return array

    # --- what CuPy's ndarray exposes ----------------------------------------------------
    shape = property(lambda self: self._host.shape)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    strides = property(lambda self: self._host.strides)
    flags = property(lambda self: self._host.flags)
    T = property(lambda self: ndarray._of(self._host.T))

    @property
    def data(self) -> _Pointer:
        return _Pointer(self._host.__array_interface__["data"][0], current().register(self._host))

    @property
    def device(self):
        """The device the array was allocated on (``ndarray.device`` is ``data.device``)."""
        from support.cupy_standin._cuda import Device

        return Device(current().register(self._host))

    @property
    def __cuda_array_interface__(self) -> dict:
        host = self._host
        return {"shape": host.shape, "typestr": host.dtype.str, "version": 3,
                "data": (host.__array_interface__["data"][0], False),
                "strides": None if host.flags.c_contiguous else host.strides}

    def __array__(self, dtype=None, copy=None):
        # CuPy's own message (cupy/_core/core.pyx, ndarray.__array__).
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        """Device to host: a synchronising copy, refused while a stream is captured."""
        current().host_read(self._host, "a device-to-host copy", None if stream is None else stream.ptr, blocking)
        _streams.touch(self._host)  # a copy queued into this array is delivered first, or refused
        copy = np.array(self._host, order=order)
        if out is not None:
            np.copyto(out, copy)
            return out
        return copy

    def set(self, host, stream=None):
        device = current()
        target = device.current_stream() if stream is None else stream.ptr
        device.refuse_during_capture("a host-to-device copy", target)
        device.launches.append(("memory", "memcpy host-to-device"))
        # queued on its stream from pinned memory (_streams.py), ordered as that stream's write
        device.run_on(target, lambda: _streams.copy_from_host(self._host, host, stream), (), (self._host,),
                      "memory memcpy host-to-device")

    def item(self):
        return self.get().item()

    def tolist(self):
        return self.get().tolist()

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __index__(self):
        return self.get().__index__()

    def __bool__(self):
        return bool(self.get())

    def __len__(self):
        return len(self._host)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return repr(self.get())

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (_from_host, (self.get(),))

    # --- routines -----------------------------------------------------------------------
    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if not any(k is Ellipsis for k in key):
            key = key + (Ellipsis,)  # a 0-d view rather than a NumPy scalar, as CuPy returns
        basic = all(k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice)) for k in key)
        return device_call("ndarray.__getitem__", lambda host, k: host[k], (self, key), {}, allow_host=True,
                           view=basic)

    def __setitem__(self, key, value):  # CuPy accepts host values here (a host-to-device copy)
        device_call("ndarray.__setitem__", _setitem, (self, key, value), {}, allow_host=True)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        function = ufunc if method == "__call__" else getattr(ufunc, method)
        return device_call(f"cupy.{ufunc.__name__}", function, inputs, kwargs, always=True)

    def __array_function__(self, function, types_, args, kwargs):
        return device_call(f"cupy.{function.__name__}", function, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):  # NumPy's protocols (__array_interface__, ...) stay hidden, as in CuPy
            raise AttributeError(name)
        attribute = getattr(self._host, name)
        if not callable(attribute):
            return wrap(attribute)
        method = getattr(np.ndarray, name)
        return lambda *args, **kwargs: device_call(f"ndarray.{name}", method, (self, *args), kwargs)


def _setitem(host, key, value):
    host[key] = value


def _from_host(host):
    return ndarray._of(np.array(host))


class Namespace(types.ModuleType):
    """A CuPy namespace made from a NumPy one: routines run on device arrays, types pass."""

    def __init__(self, name: str, numpy_module):
        super().__init__(name)
        self._numpy = numpy_module

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            attribute = getattr(self._numpy, name)
        except AttributeError:
            raise AttributeError(f"the CuPy stand-in has no {self.__name__}.{name} (NumPy has none to stand in "
                                 "for it): add it to tests/support/cupy_standin") from None
        if isinstance(attribute, type) or not callable(attribute) and not isinstance(attribute, types.ModuleType):
            return attribute  # dtypes, scalar types, constants
        if isinstance(attribute, types.ModuleType):
            routine = Namespace(f"{self.__name__}.{name}", attribute)
        else:
            label, is_ufunc = f"{self.__name__}.{name}", isinstance(attribute, np.ufunc)

            def routine(*args, **kwargs):  # a ufunc launches a kernel even into a given ``out``
                return device_call(label, attribute, args, kwargs, always=is_ufunc)

            routine.__name__ = name
        setattr(self, name, routine)
        return routine
