"""``cupy.ElementwiseKernel`` and ``cupy.ReductionKernel``, run as host C++ over NumPy buffers.

Argument handling is CuPy 14.2's, ported line by line from ``cupy/_core/_kernel.pyx`` and
``cupy/_core/_reduction.pyx`` (tag v14.2.0; the functions named in each comment): parameter
parsing, type placeholders resolved from the array arguments, Python scalars converted to the
declared type, broadcasting of the non-raw arrays (outputs included), positional outputs, shape
checks. The C++ is CuPy's generated kernel with one host thread running the whole index range:
the operation, preamble and typedefs go in unchanged.
"""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np

from support.cupy_standin import _host
from support.cupy_standin._array import _refuse_host_array, ndarray
from support.cupy_standin._device import current

# cupy/_core/_scalar.pyx, _typenames_base.
_TYPENAMES = {np.dtype(name): c for name, c in (
    ("float64", "double"), ("float32", "float"), ("float16", "float16"), ("int64", "long long"),
    ("int32", "int"), ("int16", "short"), ("int8", "signed char"), ("uint64", "unsigned long long"),
    ("uint32", "unsigned int"), ("uint16", "unsigned short"), ("uint8", "unsigned char"), ("bool", "bool"))}
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # cupy/cuda/compiler.py, is_valid_kernel_name


def _typename(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype not in _TYPENAMES:
        raise ValueError(f"Unsupported dtype {dtype}")
    return _TYPENAMES[dtype]


class Param:
    """One declared parameter: _kernel.pyx, ParameterInfo.__init__."""

    def __init__(self, text: str, is_const: bool):
        words = text.split()
        if len(words) < 2:
            raise Exception("Syntax error: %s" % text)
        kind, self.name = words[-2:]
        self.dtype = self.ctype = None
        self.raw, self.is_const = False, is_const
        if kind == "CIndexer":
            pass
        elif len(kind) == 1:
            self.ctype = kind  # a type placeholder such as T
        else:
            self.dtype = np.dtype(kind)
            self.ctype = _typename(self.dtype)
        for word in words[:-2]:
            if word == "raw":
                self.raw = True
            elif word == "_non_const":
                self.is_const = False
            else:
                raise Exception('Unknown keyword "%s"' % word)


def parse_params(text: str, is_const: bool) -> tuple:
    """_kernel.pyx, _get_param_info."""
    return () if not text else tuple(Param(part, is_const) for part in text.strip().split(","))


class Scalar:
    """A Python or NumPy scalar argument (_scalar.pyx, CScalar): converted to the parameter's
    dtype at launch with NumPy's assignment rules (``PyArray_Pack``), out-of-range values refused."""

    def __init__(self, value):
        if isinstance(value, (bool, int, float, complex, np.generic)):
            self.value = value
        else:
            raise TypeError(f"Unsupported type {type(value)}")
        self.dtype = np.asarray(value).dtype

    def storage(self, dtype) -> np.ndarray:
        with np.errstate(over="ignore"):  # float16(2**32) is inf, as PyArray_Pack makes it
            return np.array(self.value, dtype=dtype)


def _preprocess(argument):
    """_kernel.pyx, _preprocess_arg: arrays stay (if they live on the current device:
    ``_check_peer_access``), everything else becomes a scalar."""
    if isinstance(argument, ndarray):
        current().check_peer(argument._host)
        return argument
    if isinstance(argument, np.ndarray):
        _refuse_host_array(argument)
    return Scalar(argument)


def decide_types(in_params, out_params, in_dtypes, out_dtypes):
    """_kernel.pyx, _decide_params_type_core: placeholders bound by array arguments only."""
    bound = {}
    for params, dtypes, is_out in ((out_params, out_dtypes, True), (in_params, in_dtypes, False)):
        for p, a in zip(params, dtypes):
            if a is None:
                if is_out:
                    raise TypeError("Output arguments must be cupy.ndarray")
                continue
            if p.dtype is not None:
                if np.dtype(a) != p.dtype:
                    raise TypeError("Type is mismatched. %s %s %s" % (p.name, a, p.dtype))
            elif p.ctype in bound:
                if np.dtype(bound[p.ctype]) != np.dtype(a):
                    raise TypeError("Type is mismatched. %s %s %s %s" % (p.name, a, bound[p.ctype], p.ctype))
            else:
                bound[p.ctype] = a
    in_types = tuple(np.dtype(bound[p.ctype] if p.dtype is None else p.dtype) for p in in_params)
    out_types = tuple(np.dtype(bound[p.ctype] if p.dtype is None else p.dtype) for p in out_params)
    return in_types, out_types, tuple(sorted((k, np.dtype(v)) for k, v in bound.items()))


def broadcast(args, params, use_size: bool):
    """_kernel.pyx, _broadcast: the non-raw arrays broadcast together; returns (host views, shape)."""
    arrays = [a._host for a, p in zip(args, params) if not p.raw and isinstance(a, ndarray)]
    if use_size and arrays:
        raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
    if not use_size and not arrays:
        raise ValueError("Loop size is undecided.")
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
    except ValueError:  # internal.pyx, _broadcast_core's message
        raise ValueError("operands could not be broadcast together with shapes {}".format(
            " ".join(str(a.shape) if isinstance(a, ndarray) else "()" for a in args))) from None
    views = [(a._host if p.raw else np.broadcast_to(a._host, shape)) if isinstance(a, ndarray) else a
             for a, p in zip(args, params)]
    return views, shape


def out_args_with_params(out_args, out_types, out_shape, out_params, size_given: bool):
    """_kernel.pyx, _get_out_args_with_params."""
    if not out_args:
        for p in out_params:
            if p.raw and not size_given:
                raise ValueError("Output array size is Undecided")
        return [ndarray(out_shape, t) for t in out_types]
    for p, a in zip(out_params, out_args):
        if not isinstance(a, ndarray):
            raise TypeError("Output arguments type must be cupy.ndarray")
        if not p.raw and a.shape != tuple(out_shape):
            raise ValueError("Out shape is mismatched")
    return out_args


def typedefs(type_map) -> str:
    """_kernel.pyx, _TypeMap.get_typedef_code."""
    return "".join(f"typedef {_typename(dtype)} {name};\n" for name, dtype in type_map)


def declarations(params, arguments, dtypes) -> str:
    """The kernel's parameters (_kernel.pyx, _get_kernel_params), read from the argument block."""
    lines = []
    for index, (p, argument, dtype) in enumerate(zip(params, arguments, dtypes)):
        const = "const " if p.is_const else ""
        if isinstance(argument, _host.IndexerArgument):
            lines.append(f"CIndexer {p.name} = *static_cast<CIndexer*>(_args[{index}]);")
        elif isinstance(argument, _host.CArrayArgument):
            ctype = f"CArray<{_typename(dtype)}>"
            name = p.name if p.raw else f"_raw_{p.name}"
            lines.append(f"{const}{ctype} {name} = *static_cast<{ctype}*>(_args[{index}]);")
        else:
            ctype = _typename(argument.dtype)
            lines.append(f"{const}{ctype} {p.name} = *static_cast<const {ctype}*>(_args[{index}]);")
    return "\n  ".join(lines)


def launch(name: str, source: str, arguments: list, hosts: list, written: int) -> None:
    """Compile (once) and run a kernel on the argument block; log it as one kernel launch that reads
    the arrays in ``hosts`` and writes the last ``written`` of them (the outputs). The launch holds
    ``hosts`` (the arrays behind the block), as a captured graph holds its memory."""
    entry = _host.load(source)
    block = (ctypes.c_void_p * len(arguments))(*(ctypes.addressof(a) if isinstance(a, ctypes.Structure)
                                                 else a.ctypes.data for a in arguments))


    def run(held=(hosts, arguments)):  # the memory behind ``block`` lives as long as the launch
        entry(block)

    inputs = [host for host in hosts[:len(hosts) - written] if isinstance(host, np.ndarray)]
    outputs = [host for host in hosts[len(hosts) - written:] if isinstance(host, np.ndarray)]
    current().launch("kernel", name, run, reads=inputs, writes=outputs)


def launch_arguments(hosts, dtypes) -> list:
    """The argument block: a CArray per array, the scalar converted to its parameter's dtype."""
    return [_host.array_argument(host) if isinstance(host, np.ndarray) else host.storage(dtype)
            for host, dtype in zip(hosts, dtypes)]


def _check_name(name: str) -> None:
    if not _VALID_NAME.match(name):
        raise ValueError('Invalid kernel name: "%s"' % name)


class ElementwiseKernel:
    """_kernel.pyx, class ElementwiseKernel (``__init__`` and ``__call__``)."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, **kwargs):
        _check_name(name)
        self.in_params, self.out_params = parse_params(in_params, True), parse_params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params + parse_params("CIndexer _ind", False)
        self.operation, self.name, self.preamble = operation, name, preamble
        self.reduce_dims, self.no_return, self.return_tuple, self.kwargs = reduce_dims, no_return, return_tuple, kwargs
        self.__name__ = name
        if "i" in [p.name for p in self.in_params + self.out_params]:
            raise ValueError("Can not use 'i' as a parameter name")

    def __call__(self, *args, **kwargs):
        size = kwargs.pop("size", -1)
        kwargs.pop("stream", None)
        block_size = kwargs.pop("block_size", 128)
        if kwargs:
            raise TypeError("Wrong arguments %s" % kwargs)
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError("Wrong number of arguments for {!r}. It must be either {} or {} (with outputs), "
                            "but given {}.".format(self.name, self.nin, self.nargs, len(args)))
        arguments = [_preprocess(a) for a in args]
        out_args = arguments[self.nin:]
        views, shape = broadcast(arguments, self.params, size != -1)
        in_args = arguments[:self.nin]
        in_types, out_types, type_map = decide_types(
            self.in_params, self.out_params, tuple(a.dtype if isinstance(a, ndarray) else None for a in in_args),
            tuple(a.dtype for a in out_args))
        if size != -1:
            shape = (size,)
        out_args = out_args_with_params(out_args, out_types, shape, self.out_params, size != -1)
        result = None if self.no_return else out_args[0] if not self.return_tuple and self.nout == 1 \
            else tuple(out_args)
        if 0 in shape:
            return result
        hosts = views[:self.nin] + [a._host for a in out_args]
        arguments = launch_arguments(hosts, in_types + out_types) + [_host.indexer_argument(shape)]
        size = math.prod(shape)
        grid = None
        if self._cooperates():  # function.pyx, linear_launch: ⌈size / block_size⌉ blocks
            grid = (-(-size // block_size), min(block_size, size) if current().block_threads else 1)
        launch(self.name, self._source(arguments, in_types + out_types, type_map, grid), arguments, hosts,
               self.nout)
        return result

    def _cooperates(self) -> bool:
        """Code before or after the loop is where a kernel's threads work together (kernels/grid.cuh)."""
        return bool(self.kwargs.get("loop_prep") or self.kwargs.get("after_loop"))

    def _source(self, arguments, dtypes, type_map, grid) -> str:
        """_kernel.pyx, _get_elementwise_kernel_code and _get_simple_elementwise_kernel_code.

        With ``grid`` = (blocks, threads): CuPy's blocks, run one after another, each of ``threads``
        host threads (CuPy's min(block_size, size), or 1) with their own copy of the parameters,
        meeting at __syncthreads. Without, one thread runs the whole index range, which gives the
        same result for a kernel whose threads never meet, and fast."""
        references = []
        for p, argument in zip(self.params, arguments):
            if isinstance(argument, _host.CArrayArgument) and not p.raw:
                references.append(("const {t} &{n} = _raw_{n}[_ind.get()];" if p.is_const
                                   else "{t} &{n} = _raw_{n}[_ind.get()];").format(t=p.ctype, n=p.name))
        operation = "\n".join(references + [self.operation])
        body = (f"  {declarations(self.params, arguments, dtypes + (None,))}\n"
                f"  {self.kwargs.get('loop_prep', '')};\n"
                f"  CUPY_FOR(i, _ind.size()) {{\n    _ind.set(i);\n    {operation};\n  }}\n"
                f"  {self.kwargs.get('after_loop', '')};\n")
        if grid is not None:
            body = f"  gpunn_standin_launch({grid[0]}, {grid[1]}, [&] {{\n{body}  }});\n"
        return (f"{typedefs(type_map)}\n{self.preamble}\n"
                f"extern \"C\" void {_host.ENTRY}(void** _args) {{  // {self.name}\n{body}}}\n")


class ReductionKernel:
    """_reduction.pyx, class ReductionKernel (``__init__``, ``__call__``) and
    _AbstractReductionKernel._call; the tree reduction of the GPU becomes one loop per output."""

    def __init__(self, in_params, out_params, map_expr, reduce_expr, post_map_expr, identity,
                 name="reduce_kernel", reduce_type=None, reduce_dims=True, preamble="", options=()):
        _check_name(name)
        self.in_params, self.out_params = parse_params(in_params, True), parse_params(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = (self.in_params + self.out_params + parse_params("CIndexer _in_ind, CIndexer _out_ind", False))
        self.identity = "" if identity is None else str(identity)
        self.map_expr, self.reduce_expr, self.post_map_expr = map_expr, reduce_expr, post_map_expr
        self.name, self.preamble, self.options, self.reduce_dims = name, preamble, options, reduce_dims
        self.reduce_type = self.out_params[0].ctype if reduce_type is None else reduce_type
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        out, axis = kwargs.pop("out", None), kwargs.pop("axis", None)
        keepdims = kwargs.pop("keepdims", False)
        kwargs.pop("stream", None)
        if kwargs:
            raise TypeError("Wrong arguments %s" % kwargs)
        if len(args) not in (self.nin, self.nargs):
            raise TypeError("Wrong number of arguments for %s" % self.name)
        out_args = list(args[self.nin:])
        if out is not None:
            if self.nout != 1:
                raise NotImplementedError("")
            if out_args:
                raise ValueError("cannot specify 'out' as both a positional and keyword argument")
            out_args = [out]
        in_args = [_preprocess(a) for a in args[:self.nin]]
        out_args = [_preprocess(a) for a in out_args]
        views, shape = broadcast(in_args, self.in_params, False)
        in_types, out_types, type_map = decide_types(
            self.in_params, self.out_params, tuple(a.dtype if isinstance(a, ndarray) else None for a in in_args),
            tuple(a.dtype if isinstance(a, ndarray) else None for a in out_args))
        reduce_axis, out_axis = _axes(axis, len(shape))
        out_shape = tuple(1 if i in reduce_axis else n for i, n in enumerate(shape)) if keepdims \
            else tuple(shape[i] for i in out_axis)
        out_args = out_args_with_params(out_args, out_types, out_shape, self.out_params, False)
        result = out_args[0]
        if result.size == 0:
            return result
        if self.identity == "" and 0 in shape:
            raise ValueError("zero-size array to reduction operation %s which has no identity" % self.name)
        index_type = np.dtype("int64" if np.prod(shape) / max(np.prod(out_shape), 1) > 0x7FFFFFFF else "int32")
        type_map = type_map + (("IndexT", index_type),)
        permutation = reduce_axis + out_axis  # _reduction.pyx, _set_permuted_args
        in_shape = tuple(shape[i] for i in permutation)
        views = [v.transpose(permutation) if isinstance(v, np.ndarray) and not p.raw else v
                 for v, p in zip(views, self.in_params)]
        hosts = views + [a._host for a in out_args]
        arguments = (launch_arguments(hosts, in_types + out_types)
                     + [_host.indexer_argument(in_shape), _host.indexer_argument(out_shape)])
        launch(self.name, self._source(arguments, in_types + out_types, type_map), arguments, hosts, self.nout)
        return result

    def _source(self, arguments, dtypes, type_map) -> str:
        """_reduction.pyx, _ReductionKernel_get_cached_function_code and _create_reduction_function_code."""
        arrays = [(p, isinstance(a, _host.CArrayArgument) and not p.raw) for p, a in zip(self.params, arguments)]
        input_expr = "\n".join((("const {0} {1}" if p.is_const else "{0}& {1}") + " = _raw_{1}[_in_ind.get()];")
                               .format(p.ctype, p.name) for p, is_array in arrays[:self.nin] if is_array)
        output_expr = "\n".join("{0} &{1} = _raw_{1}[_out_ind.get()];".format(p.ctype, p.name)
                                for p, is_array in arrays[self.nin:self.nargs] if is_array and not p.is_const)
        return (f"{typedefs(type_map)}\n{self.preamble}\n"
                f"#define REDUCE(a, b) ({self.reduce_expr})\n#define POST_MAP(a) ({self.post_map_expr})\n"
                f"typedef {self.reduce_type} _type_reduce;\n"
                f"extern \"C\" void {_host.ENTRY}(void** _args) {{  // {self.name}\n"
                f"  {declarations(self.params, arguments, dtypes + (None, None))}\n"
                "  for (ptrdiff_t _i = 0; _i < _out_ind.size(); ++_i) {\n"
                f"    _type_reduce _s = _type_reduce({self.identity});\n"
                "    for (ptrdiff_t _j = _i; _j < _in_ind.size(); _j += _out_ind.size()) {\n"
                f"      _in_ind.set(_j);\n      {input_expr}\n"
                f"      _type_reduce _a = static_cast<_type_reduce>({self.map_expr});\n"
                "      _s = REDUCE(_s, _a);\n    }\n"
                f"    _out_ind.set(_i);\n    {output_expr}\n    POST_MAP(_s);\n  }}\n}}\n")


def _axes(axis, ndim: int):
    """_reduction.pyx, _get_axis."""
    if axis is None:
        return tuple(range(ndim)), ()
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    reduce_axis = tuple(sorted(_normalize_axis(a, ndim) for a in axis))
    out_axis = tuple(d for d in range(ndim) if d not in reduce_axis)
    if len(reduce_axis) + len(out_axis) != ndim:
        raise ValueError("duplicate value in 'axis'")
    return reduce_axis, out_axis


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(axis, ndim)
    return axis % ndim
