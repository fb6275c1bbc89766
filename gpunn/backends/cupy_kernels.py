"""The kernels the CuPy backend launches: one ``KernelSpec`` per fused op, each an
ElementwiseKernel (or ReductionKernel) whose operation calls a ``kernels/*.cuh`` function, the
file's text being the preamble. ``KERNELS`` is the one table: the backend builds from it and
tests/kernels/test_nvrtc_compile.py compiles every entry, variant and dtype as CuPy generates it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import cupy

from gpunn.kernels.activations import REGISTRY
from gpunn.kernels.source import kernel_source
from gpunn.kernels.update_rules import RULES

# Storage dtype -> (compute dtype name for kernel signatures, C++ compute type).
_COMPUTE = {"float16": ("float32", "float"), "float32": ("float32", "float"), "float64": ("float64", "double")}

# Layer normalisation's row and column sums. Every ReductionKernel here takes two or more inputs,
# so CuPy never swaps in its CUB block reduction (cupy/_core/_cub_reduction.pyx,
# _can_use_cub_block_reduction: "1 input and 1 output" only), whose post-map rewrites
# _in_ind.size(); the plain kernel reduces each output with a block of threads
# (_reduction.pyx, _get_block_specs) and writes into the given ``out`` without allocating.
_LAYER_NORM_REDUCTIONS = {
    # op: (inputs, output, map expression, post-map expression)
    "layer_norm_mean": ("T x, int64 cols", "{cn} mean", "({c}) x", "mean = a / ({c}) cols"),
    "layer_norm_rstd": ("T x, {cn} mean, int64 cols, {cn} eps", "{cn} rstd",
                        "(({c}) x - mean) * (({c}) x - mean)", "rstd = gpunn_layer_norm_rstd(a, ({c}) cols, eps)"),
    "layer_norm_mean_g": ("T dy, T gain, int64 cols", "{cn} mean_g", "({c}) dy * ({c}) gain",
                          "mean_g = a / ({c}) cols"),
    "layer_norm_mean_g_xhat": ("T dy, T x, T gain, {cn} mean, {cn} rstd, int64 cols", "{cn} mean_g_xhat",
                               "({c}) dy * ({c}) gain * ((({c}) x - mean) * rstd)", "mean_g_xhat = a / ({c}) cols"),
    "layer_norm_gain_gradient": ("T dy, T x, {cn} mean, {cn} rstd", "T dgain",
                                 "({c}) dy * ((({c}) x - mean) * rstd)", "dgain = (T) a"),
}


#: The optimizer's launches (the norm and the update): blocks of GRID_BLOCK threads (a power of
#: two, as gpunn_block_sum needs), at most GRID_MAX_BLOCKS of them striding over the buffer; 2048
#: blocks of 128 threads fill an H100 (132 SMs, 2048 resident threads each) once over.
GRID_BLOCK, GRID_MAX_BLOCKS = 128, 2048


class Arg(NamedTuple):
    """One argument as gpunn passes it at launch: an array of the batch's shape (``"array"``), a
    vector broadcast over the rows (``"row"``, a bias) or the columns (``"column"``), a scalar,
    a 1-d ``"raw"`` array the operation indexes itself, or a reduction's 2-d input reduced along
    each row (``"matrix"``) into a 1-d output (``"rows"``)."""
    dtype: str
    kind: str = "array"


class KernelSpec(NamedTuple):
    """A kernel the backend builds, once per variant (an activation, or ``""``) and storage dtype.

    ``arguments(variant, dtype)`` lists the launch's inputs then outputs, so that a test can generate the
    source CuPy will compile and compile it with NVRTC (tests/kernels/test_nvrtc_compile.py)."""
    build: Callable[[str, str], object]  # (variant, storage dtype) -> cupy kernel
    arguments: Callable[[str, str], tuple]  # (variant, storage dtype) -> (Arg, ...)
    variants: tuple[str, ...] = ("",)
    dtypes: tuple[str, ...] = tuple(_COMPUTE)


# The fused activation kernels run one thread per dropout group, or per two neighbouring groups
# (kernels/dropout.cuh): CuPy's index ``i`` counts threads from ``first_group``, the arrays are raw
# and flat, ``n`` elements long.
DROPOUT_PARAMETERS = ("uint64 first_group, uint64 n, raw uint64 dropout_step, uint64 dropout_k0, uint64 dropout_k1, "
                      "uint32 dropout_threshold, uint64 dropout_skip")
DROPOUT_GROUPS = ("first_group + {width} * i, dropout_skip, n, {columns}, dropout_step[0], dropout_k0, dropout_k1, "
                  "dropout_threshold")
#: Launch arguments of DROPOUT_PARAMETERS and the scale after them.
DROPOUT_ARGUMENTS = (Arg("uint64", "scalar"), Arg("uint64", "scalar"), Arg("uint64", "raw"), Arg("uint64", "scalar"),
                     Arg("uint64", "scalar"), Arg("uint32", "scalar"), Arg("uint64", "scalar"))
#: The fused activation ops, each also built as "<op>_pairs" and "<op>_quads": two or four
#: neighbouring elements per thread and slot, one vector load and store for them
#: (CupyBackend._activation_launch picks the widest that fits), for the storage dtypes whose kernels
#: the per-element bookkeeping bounds (issue 21's cost model); a float64 element moves 16 bytes, and
#: its kernels are bound by memory or by FP64 maths instead.
ACTIVATION_OPS = ("bias_activation", "bias_activation_saving", "activation_backward")
VECTOR_WIDTHS = {4: "_quads", 2: "_pairs"}
VECTOR_DTYPES = ("float16", "float32")


def _elementwise(in_params, out_params, operation, name, *files, **code):
    """An ElementwiseKernel calling functions of ``files``; ``code``: CuPy's loop_prep/after_loop."""
    return cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=kernel_source(*files), **code)


def _bce_with_logits_loss(_, dtype):
    compute_name, compute = _COMPUTE[dtype]
    return cupy.ReductionKernel(
        "T z, T t", f"{compute_name} loss", f"gpunn_bce_with_logits(({compute}) z, ({compute}) t)",
        "a + b", f"loss = a / ({compute}) (_in_ind.size() / _out_ind.size())", "0",
        "gpunn_bce_with_logits_mean_kernel", preamble=kernel_source("losses.cuh"))


class RowsOp(NamedTuple):
    """An elementwise op over a rows × columns matrix, for ``_rows_kernel``: ``value`` (C++, the
    output in the compute type) names each operand in braces: ``elements`` are read at the element,
    ``per_row`` (the compute type, or "type name") at its row, ``per_column`` at its column, and
    ``{column}`` is the element's column; ``scalars`` are further parameters (used by name),
    ``prologue`` runs once per thread. The launch passes them in this order."""
    elements: tuple[str, ...]
    per_row: tuple[str, ...]
    per_column: tuple[str, ...]
    value: str
    scalars: str = ""
    prologue: str = ""


def _rows_kernel(op: RowsOp, name: str, dtype: str, width: int, *files):
    """An elementwise kernel over C-contiguous flat arrays of ``rows`` × ``columns`` elements, launched
    over ``row_stride`` × ``columns / width`` threads (CupyBackend._rows_launch): each thread keeps
    ``width`` neighbouring columns (1, or 2 when the columns are even: one 2-element load and store
    per operand then serves two elements, and each row's values are read once for both) and steps
    down the rows, so the body needs no division, and what depends on the column alone (a gain, a
    bias) or on nothing (a loss scale on the device) is read once per thread. CuPy's 2-d indexer
    divides every element's index by the column count instead (CIndexer::set), which made these
    kernels bound by instruction issue (issue 21). A warp's threads hold neighbouring columns (and
    rows), so its loads stay coalesced."""
    compute_name, compute = _COMPUTE[dtype]
    lanes = ("a", "b")[:width]

    def value(index, lane):
        names = {e: f"({compute}) {e}_v.{lane}" for e in op.elements}
        names.update({r.split()[-1]: f"{r.split()[-1]}_v" for r in op.per_row})
        names.update({c: f"{c}_{lane}" for c in op.per_column})
        return op.value.format(column=f"(column + {index})", **names)

    per_column = "".join(f"const {compute} {c}_{lane} = ({compute}) {c}[column + {index}]; "
                         for c in op.per_column for index, lane in enumerate(lanes))
    per_row = "".join(f"const auto {r.split()[-1]}_v = {r.split()[-1]}[row]; " for r in op.per_row)
    elements = "".join(f"const auto {e}_v = gpunn_load<T, {width}>(&{e}[k]); " for e in op.elements)
    result = "; ".join(f"result.{lane} = (T) ({value(index, lane)})" for index, lane in enumerate(lanes))
    operation = f"""const unsigned int threads_per_row = columns / {width};
        const unsigned int column = {width} * (unsigned int) (i % threads_per_row);
        const unsigned int row_stride = (unsigned int) (_ind.size() / threads_per_row);
        {per_column}{op.prologue};
        for (unsigned int row = (unsigned int) (i / threads_per_row); row < rows; row += row_stride) {{
            const long long k = (long long) row * columns + column;
            {per_row}{elements}
            gpunn_vector<T, {width}> result; {result};
            gpunn_store(&out[k], result);
        }}"""
    rows = [f"raw {r}" if " " in r else f"raw {compute_name} {r}" for r in op.per_row]
    in_params = ", ".join([f"raw T {e}" for e in op.elements] + rows + [f"raw T {c}" for c in op.per_column]
                          + ([op.scalars] if op.scalars else []))
    return _elementwise(f"{in_params}, uint32 rows, uint32 columns", "raw T out", operation, name, *files,
                        "vector.cuh")


#: A loss gradient's scalars (RowsOp.scalars, RowsOp.prologue): its scale and the loss scale.
_LOSS_SCALE = ("{cn} scale, raw float64 loss_scale", "const {c} total_scale = scale * ({c}) loss_scale[0]")


def _loss_scale_arguments(compute):
    return Arg(compute, "scalar"), Arg("float64", "raw")


def _rows_spec(op: RowsOp, name: str, *files, scalars=lambda compute: ()):
    """A KernelSpec of ``_rows_kernel``: variant "" one column per thread, "pairs" two."""
    def build(variant, dtype):
        compute_name, compute = _COMPUTE[dtype]
        formatted = op._replace(scalars=op.scalars.format(cn=compute_name), prologue=op.prologue.format(c=compute))
        width = 2 if variant == "pairs" else 1  # a kernel's name says its width (profiles tell them apart)
        return _rows_kernel(formatted, name if width == 1 else name.replace("_kernel", "_pairs_kernel"), dtype,
                            width, *files)

    def arguments(_, dtype):
        compute = _compute_name(dtype)
        return (*(Arg(dtype, "raw") for _ in op.elements),
                *(Arg("int64" if " " in r else compute, "raw") for r in op.per_row),
                *(Arg(dtype, "raw") for _ in op.per_column), *scalars(compute),
                Arg("uint32", "scalar"), Arg("uint32", "scalar"), Arg(dtype, "raw"))

    return KernelSpec(build, arguments, ("", "pairs"))


def _update(rule, with_master: bool):
    """One rule's fused update over flat buffers: the learning rate from the device's table, the
    loss scale from its counters, each element's segment (its state, whether it is updated this
    step, its parameter's step count) from the segment table, unscale and clip, the rule, float16
    rounding of masters. Frozen segments are skipped inside this one launch.

    A capped grid strides over the buffer (CupyBackend._grid_threads), so the last-block ticket
    that advances the counters is taken by at most GRID_MAX_BLOCKS blocks, whatever the size."""
    states = list(rule.states)
    # The counters, the step counts and the ticket are outputs: the last block writes them (CuPy's
    # raw inputs are const).
    outputs = (["raw C master"] if with_master else []) + ["raw T p"] + [f"raw C {name}" for name in states] + \
        ["raw float64 scalars", "raw float64 steps", "raw uint32 tickets"]
    arguments = ", ".join([f"{name}[s]" for name in states] + ["unused"] * (2 - len(states)))
    # Every thread reads this step's counters and step counts in its loop; they change only after
    # every block has taken its ticket (after_loop).
    prologue = """const C norm_value = norm[0];
        const bool skip = dynamic && !gpunn_isfinite(norm_value);
        const long long attempted = (long long) scalars[1];
        const C lr = (C) lr_table[attempted < lr_length ? attempted : lr_length - 1];
        const gpunn_unscale<C> unscale(scalars[2], norm_value, max_norm);
        const long long* table = &segments[0]"""
    # A float16 parameter written from outside (assignment, a restored best epoch) no longer
    # equals its rounded master weight: the written value wins, so training never ignores it.
    # Per element of this thread: to its segment (a register compare, a search only past its end), then
    # the inner loop over this thread's elements of that segment, where the step count is loop-invariant:
    # the rule's constructor computes what depends on it (Adam's bias corrections) once per segment.
    operation = f"""
        gpunn_segment_cursor segment;
        for (ptrdiff_t k = i; k < n && !skip;) {{
            if (!segment.at(table, segment_count, k)) {{  // frozen, no gradient, or no bound parameter
                k += _ind.size();
                continue;
            }}
            const {rule.function}<C> rule(lr, (C) (steps[segment.index] + 1.0), h0, h1, h2, flag);
            const ptrdiff_t stop = segment.stop < n ? segment.stop : n, shift = segment.state - segment.start;
            for (; k < stop; k += _ind.size()) {{
                const ptrdiff_t s = k + shift;
                C param = {"((T) master[s] == p[k]) ? master[s] : (C) p[k]" if with_master else "(C) p[k]"};
                C unused = C(0);
                rule(param, {arguments}, unscale((C) g[k]), k < decay_end ? weight_decay : C(0));
                {"master[s] = param;" if with_master else ""}
                p[k] = (T) param;
            }}
        }}"""
    # The last block counts the step: each updated segment's own count (unless the step was skipped), then
    # the model's counters and loss scale.
    counters = """if (gpunn_last_block(&tickets[1])) {
            for (long long t = threadIdx.x; t < segment_count && !skip; t += blockDim.x)
                if (table[GPUNN_SEGMENT_FIELDS * t + 3] != 0) steps[t] += 1.0;
            if (threadIdx.x == 0) gpunn_after_update(&scalars[0], norm_value, dynamic, growth_interval);
        }"""

    def build(_, dtype):
        return _elementwise(
            "raw T g, int64 n, raw float64 lr_table, int64 lr_length, raw C norm, C max_norm, bool dynamic, "
            "C weight_decay, int64 decay_end, C h0, C h1, C h2, bool flag, raw int64 segments, int64 segment_count, "
            "float64 growth_interval",
            ", ".join(outputs), operation, f"{rule.function}_kernel", "optim.cuh", "grid.cuh", loop_prep=prologue,
            after_loop=counters)

    def arguments_for(_, dtype):
        compute = _compute_name(dtype)
        scalar = Arg(compute, "scalar")
        return (Arg(dtype, "raw"), Arg("int64", "scalar"), Arg("float64", "raw"), Arg("int64", "scalar"),
                Arg(compute, "raw"), scalar, Arg("bool", "scalar"), scalar, Arg("int64", "scalar"), scalar, scalar,
                scalar, Arg("bool", "scalar"), Arg("int64", "raw"), Arg("int64", "scalar"), Arg("float64", "scalar"),
                *([Arg(compute, "raw")] if with_master else []), Arg(dtype, "raw"),
                *(Arg(compute, "raw") for _ in states), Arg("float64", "raw"), Arg("float64", "raw"),
                Arg("uint32", "raw"))

    return KernelSpec(build, arguments_for, dtypes=("float16",) if with_master else ("float32", "float64"))


#: √Σx²'s per-thread loop over single elements: each element's segment, then the elements of that
#: segment this thread strides over.
_NORM_ELEMENTS = """gpunn_segment_cursor segment;
        for (ptrdiff_t k = i; k < n;) {
            ptrdiff_t stop = n;  // no table: every element
            if (segment_count > 0) {
                if (!segment.at(&segments[0], segment_count, k)) {
                    k += _ind.size();
                    continue;
                }
                stop = segment.stop < n ? segment.stop : n;
            }
            for (; k < stop; k += _ind.size()) {
                C value = (C) x[k];
                thread_sum += value * value;
            }
        }"""
#: The same over pairs of neighbours (elements 2p and 2p + 1, x aligned to two elements): a pair
#: wholly inside an updated segment is one two-element load; a pair across a segment's edge, or whose
#: first element counts for nothing, is summed element by element.
_NORM_PAIRS = """gpunn_segment_cursor segment;
        for (ptrdiff_t k = 2 * i; k < n;) {  // k: the first element of this thread's pair
            ptrdiff_t stop = n;  // no table: every element
            const bool first = segment_count == 0 || segment.at(&segments[0], segment_count, k);
            if (segment_count > 0) stop = segment.stop < n ? segment.stop : n;
            if (first) {
                for (; k + 1 < stop; k += 2 * _ind.size()) {
                    const gpunn_vector<T, 2> pair = gpunn_load<T, 2>(&x[k]);
                    const C a = (C) pair.a, b = (C) pair.b;
                    thread_sum += a * a + b * b;
                }
                if (k >= stop) continue;  // the next pair starts at or past the segment's end: look it up
                const C value = (C) x[k];  // the segment's last element; its neighbour is the next one's
                thread_sum += value * value;
            }
            if (k + 1 < n && (segment_count == 0 || segment.at(&segments[0], segment_count, k + 1))) {
                const C value = (C) x[k + 1];
                thread_sum += value * value;
            }
            k += 2 * _ind.size();
        }"""


def _gradient_norm(loop: str, name: str):
    """√Σx² of a flat buffer in one launch (see CupyBackend.global_norm); with a segment table
    (``segment_count`` > 0) over the segments the update updates only. ``loop``: each thread's
    partial sum, over elements or over pairs."""
    def build(_, dtype):
        return _elementwise(
            "raw T x, int64 n, raw int64 segments, int64 segment_count", "raw C partials, raw C norm, raw uint32 tickets",
            loop, name, "optim.cuh", "grid.cuh", "vector.cuh", loop_prep="C thread_sum = C(0)",
            after_loop=f"""C block_sum = gpunn_block_sum<{GRID_BLOCK}>(thread_sum);
        if (threadIdx.x == 0) partials[blockIdx.x] = block_sum;
        if (gpunn_last_block(&tickets[0])) {{
            volatile C* sums = &partials[0];  // written by other blocks: read past this SM's L1
            C total = C(0);
            for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) total += sums[b];
            total = gpunn_block_sum<{GRID_BLOCK}>(total);
            if (threadIdx.x == 0) norm[0] = gpunn_sqrt(total);
        }}""")

    return build


def _build_activation(op: str, name: str, compute_name: str, compute: str, width: int):
    """An activation kernel from its registry entry: parameters become scalar arguments. Each
    thread runs ``width`` neighbouring dropout groups (16 slots 32 elements apart; with width 2 or 4
    each slot is that many neighbours, loaded and stored as one vector) through
    ``gpunn_dropout_groups``; the forward reads the bias at the element's column, which the group
    tracks without dividing."""
    kind = REGISTRY[name]
    parameters = "".join(f", {compute_name} {parameter}" for parameter, _ in kind.parameters)
    values = [parameter for parameter, _ in kind.parameters]
    preamble = kernel_source("activations.cuh", "dropout.cuh", "vector.cuh")
    lanes = ("a", "b", "c", "d")[:width]
    pairs = VECTOR_WIDTHS.get(width, "")

    def load(array, at):
        return f"const auto {array}_v = gpunn_load<T, {width}>(&{array}[{at}]); "

    def each_lane(statement):
        """``statement(lane, keep)`` for each lane; keep: the C++ test of its mask bit."""
        return " ".join(statement(lane, f"(keep & {1 << index}u) != 0") for index, lane in enumerate(lanes))

    if op == "activation_backward":
        def backward(lane, keep):
            kept = f"gpunn_dropout(({compute}) dy_v.{lane}, {keep}, dropout_scale)"
            return f"dz_v.{lane} = (T) {kind.backward_call(kept, f'({compute}) saved_v.{lane}', values)};"

        body = (f"{load('dy', 'k')}{load('saved', 'k')}gpunn_vector<T, {width}> dz_v; {each_lane(backward)} "
                "gpunn_store(&dz[k], dz_v);")
        return cupy.ElementwiseKernel(
            f"raw T dy, raw T saved, {DROPOUT_PARAMETERS}, {compute_name} dropout_scale{parameters}", "raw T dz",
            _group_loop(body, "1, 0", width), f"gpunn_{name}_backward{pairs}_kernel", preamble=preamble)
    saving = op == "bias_activation_saving"

    def forward(lane, keep):
        statement = (f"const {compute} pre_{lane} = ({compute}) z_v.{lane} + ({compute}) b_v.{lane}; "
                     f"const {compute} a_{lane} = {kind.forward_call(f'pre_{lane}', values)}; "
                     f"y_v.{lane} = (T) gpunn_dropout(a_{lane}, {keep}, dropout_scale);")
        return statement + (f" saved_v.{lane} = (T) {'pre' if kind.reads_input else 'a'}_{lane};" if saving else "")

    body = (f"{load('z', 'k')}{load('b', 'column')}gpunn_vector<T, {width}> y_v{', saved_v' if saving else ''}; "
            f"{each_lane(forward)} gpunn_store(&y[k], y_v);{' gpunn_store(&saved[k], saved_v);' if saving else ''}")
    suffix = "_saving" if saving else ""
    return cupy.ElementwiseKernel(
        f"raw T z, raw T b, uint32 columns, uint32 lane_columns, {DROPOUT_PARAMETERS}, "
        f"{compute_name} dropout_scale{parameters}", "raw T y" + (", raw T saved" if saving else ""),
        _group_loop(body, "columns, lane_columns", width), f"gpunn_bias_{name}{suffix}{pairs}_kernel",
        preamble=preamble)


def _group_loop(body: str, columns: str, width: int) -> str:
    """The operation: ``body`` for each slot of this thread's ``width`` dropout groups."""
    return (f"gpunn_dropout_groups<{width}>({DROPOUT_GROUPS.format(width=width, columns=columns)}, "
            f"[&](gpunn_u64 k, unsigned int column, unsigned int keep) {{ {body} }})")


def _activation(op, width, dtypes=tuple(_COMPUTE)):
    def build(name, dtype):
        compute_name, compute = _COMPUTE[dtype]
        return _build_activation(op, name, compute_name, compute, width)

    def arguments(name, dtype):
        compute = _compute_name(dtype)
        parameters = tuple(Arg(compute, "scalar") for _ in REGISTRY[name].parameters)
        if op == "activation_backward":
            inputs = (Arg(dtype, "raw"), Arg(dtype, "raw"))
        else:
            inputs = (Arg(dtype, "raw"), Arg(dtype, "raw"), Arg("uint32", "scalar"), Arg("uint32", "scalar"))
        inputs += (*DROPOUT_ARGUMENTS, Arg(compute, "scalar"), *parameters)
        return inputs + ((Arg(dtype, "raw"), Arg(dtype, "raw")) if op == "bias_activation_saving"
                         else (Arg(dtype, "raw"),))

    return KernelSpec(build, arguments, tuple(REGISTRY), dtypes)


def _layer_norm_reduction(op):
    def build(_, dtype):
        compute_name, compute = _COMPUTE[dtype]
        inputs, output, map_expression, post_map = (text.format(cn=compute_name, c=compute)
                                                    for text in _LAYER_NORM_REDUCTIONS[op])
        return cupy.ReductionKernel(inputs, output, map_expression, "a + b", post_map, "0", f"gpunn_{op}_kernel",
                                    reduce_type=compute, preamble=kernel_source("layer_norm.cuh"))

    def arguments(_, dtype):
        compute = _compute_name(dtype)
        kinds = {"T": lambda name: Arg(dtype, "row" if name == "gain" else "matrix"),
                 "{cn}": lambda name: Arg(compute, "column" if name in ("mean", "rstd") else "scalar"),
                 "int64": lambda name: Arg("int64", "scalar")}
        inputs, output = _LAYER_NORM_REDUCTIONS[op][:2]
        parsed = [kinds[kind](name) for kind, name in (item.split() for item in inputs.split(", "))]
        result_type = dtype if output.startswith("T ") else compute
        return (*parsed, Arg(result_type, "rows"))

    return KernelSpec(build, arguments)


def _compute_name(dtype):
    return _COMPUTE[dtype][0]


def _norm_arguments(_, dtype):
    compute = _compute_name(dtype)
    return (Arg(dtype, "raw"), Arg("int64", "scalar"), Arg("int64", "raw"), Arg("int64", "scalar"), Arg(compute, "raw"),
            Arg(compute, "raw"), Arg("uint32", "raw"))


#: Every kernel the backend builds. A new fused op is one entry here (and its ``.cuh`` function):
#: the backend builds it through ``_build`` and the NVRTC test compiles every variant and dtype.
KERNELS: dict[str, KernelSpec] = {
    **{op: _activation(op, 1) for op in ACTIVATION_OPS},
    **{op + suffix: _activation(op, width, VECTOR_DTYPES) for op in ACTIVATION_OPS
       for width, suffix in VECTOR_WIDTHS.items()},
    **{op: _layer_norm_reduction(op) for op in _LAYER_NORM_REDUCTIONS},
    "layer_norm_forward": _rows_spec(RowsOp(
        ("x",), ("mean", "rstd"), ("gain", "bias"), "gpunn_layer_norm_forward({x}, {mean}, {rstd}, {gain}, {bias})"),
        "gpunn_layer_norm_forward_kernel", "layer_norm.cuh"),
    "layer_norm_backward": _rows_spec(RowsOp(
        ("dy", "x"), ("mean", "rstd", "mean_g", "mean_g_xhat"), ("gain",),
        "gpunn_layer_norm_backward({dy}, {x}, {gain}, {mean}, {rstd}, {mean_g}, {mean_g_xhat})"),
        "gpunn_layer_norm_backward_kernel", "layer_norm.cuh"),
    **{f"update_{name}{suffix}": _update(rule, bool(suffix)) for name, rule in RULES.items()
       for suffix in ("", "_master")},
    "gradient_norm": KernelSpec(_gradient_norm(_NORM_ELEMENTS, "gpunn_gradient_norm_kernel"), _norm_arguments),
    # float16 only: its element moves 2 bytes, which leave an H100 20 weighted instructions per element.
    "gradient_norm_pairs": KernelSpec(_gradient_norm(_NORM_PAIRS, "gpunn_gradient_norm_pairs_kernel"), _norm_arguments,
                                      dtypes=("float16",)),
    # A loss head's gradient, in the compute type: the mean's small factor and the float16 loss scale
    # (a float64 on the device, for graph replay; read and converted once per thread) meet before
    # anything is rounded to storage. Launched over the arrays as rows of their last axis.
    "mse_grad": _rows_spec(RowsOp(("y", "t"), (), (), "gpunn_mse_grad({y}, {t}, total_scale)", *_LOSS_SCALE),
                           "gpunn_mse_grad_kernel", "losses.cuh", scalars=_loss_scale_arguments),
    "bce_with_logits_loss": KernelSpec(_bce_with_logits_loss, lambda v, d: (Arg(d), Arg(d), Arg(_compute_name(d)))),
    "bce_with_logits_grad": _rows_spec(RowsOp(("y", "t"), (), (), "gpunn_bce_with_logits_grad({y}, {t}, total_scale)",
                                              *_LOSS_SCALE), "gpunn_bce_with_logits_grad_kernel", "losses.cuh",
                                       scalars=_loss_scale_arguments),
    "softmax_cross_entropy_grad": _rows_spec(RowsOp(
        ("z",), ("lse", "I label"), (), "gpunn_softmax_xent_grad({z}, {lse}, {label} == (I) {column}, total_scale)",
        *_LOSS_SCALE), "gpunn_softmax_xent_grad_kernel", "losses.cuh", scalars=_loss_scale_arguments),
}


def kernel_catalogue():
    """``(op, variant, dtype)`` for every kernel the backend can build."""
    return [(op, variant, dtype) for op, spec in KERNELS.items() for variant in spec.variants for dtype in spec.dtypes]


def _build(op: str, variant: str, dtype: str):
    """One kernel for one op, variant and storage dtype; its operation calls a kernels/*.cuh function."""
    spec = KERNELS.get(op)
    if spec is None:
        raise ValueError(f"unknown kernel {op!r}; known: {sorted(KERNELS)}")
    return spec.build(variant, dtype)
