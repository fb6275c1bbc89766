"""The command line: ``gpunn info | train | predict | bench`` (also ``python -m gpunn``).

User errors (a missing file, a bad option value, a checkpoint that does not fit) print one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gpunn.cli.options import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, use_backend_option
from gpunn.cli.parser import build_parser
from gpunn.cli.export import command_export
from gpunn.cli.train import command_train
from gpunn.extras import cuda_install_hint
from gpunn.version import __version__


# --- info ---------------------------------------------------------------------------------
def _cupy_report() -> list[str]:
    from gpunn.backends.selection import cupy_unavailable_reason, resolve_backend

    try:
        import cupy
    except ImportError:
        return [f"cupy: not installed ({cuda_install_hint()})"]
    except OSError:  # CuPy's import could not create its kernel cache folder
        return [f"cupy backend: unusable: {cupy_unavailable_reason()}"]
    lines = [f"cupy: {cupy.__version__}"]
    try:
        runtime = cupy.cuda.runtime.runtimeGetVersion()
        lines.append(f"CUDA runtime: {runtime // 1000}.{runtime % 1000 // 10}")
    except Exception as error:  # the runtime library itself is missing
        lines.append(f"CUDA runtime: unavailable ({error})")
    reason = cupy_unavailable_reason()
    if reason is not None:
        return lines + [f"cupy backend: unusable: {reason}"]
    properties = cupy.cuda.runtime.getDeviceProperties(0)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"]
    lines.append(f"device 0: {name}, {properties['totalGlobalMem'] / 2**30:.1f} GiB, compute capability "
                 f"{properties['major']}.{properties['minor']}")
    try:
        backend = resolve_backend("cupy")
        probe = backend.asarray([[-1.0, 2.0]], "float32")
        backend.to_numpy(backend.bias_activation(probe, 0, "sigmoid"))
    except Exception as error:
        return lines + [f"cupy backend: unusable: kernel compile failed ({error})"]
    return lines + ["cupy backend: usable"]


def command_info(args) -> int:
    from gpunn.backends import available_backends, get_matmul_precision, native
    from gpunn.nn.dtype import get_default_dtype
    from gpunn.distributed.world import mpi_report, nccl_report

    lines = [f"gpunn: {__version__}", f"numpy: {np.__version__}", *_cupy_report(), mpi_report(), nccl_report(),
             f"backends available: {', '.join(available_backends())}",
             f"default dtype: {get_default_dtype()}", f"matmul precision: {get_matmul_precision()}",
             f"numpy optimizer update: {native.update_status()}",
             f"numpy activations: {native.activation_status()}"]
    print("\n".join(lines))
    return 0


# --- predict ------------------------------------------------------------------------------
def command_predict(args) -> int:
    import csv
    import io

    from gpunn.cli.checkpoint import Checkpoint, checkpoint_path
    from gpunn.cli.data import read_table

    path = checkpoint_path(args.checkpoint, "predict")
    if args.out and any(os.path.exists(args.out) and os.path.samefile(args.out, source)
                        for source in (path, args.input) if os.path.exists(source)):
        raise UserError(f"gpunn predict: --out {args.out} is the checkpoint or the input; writing there would "
                        "destroy it")
    use_backend_option(args.backend)
    checkpoint = Checkpoint.read(path)
    table = read_table(args.input, args.label or checkpoint.label or "label", need_labels=False, target_last=False,
                       text=[] if checkpoint.encoding is None else checkpoint.encoding.categorical)
    header, rows = checkpoint.predictions(checkpoint.inputs(table, args.input), args.input)
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if args.out:
        from gpunn.io.atomic import atomic_write

        try:
            atomic_write(args.out, lambda file: file.write(text.getvalue().encode()))
        except OSError as error:
            raise UserError(f"gpunn predict: {error.strerror or error}") from None
    else:
        sys.stdout.write(text.getvalue())
    return 0


def command_bench(args) -> int:
    from pathlib import Path

    from gpunn.bench.report import BACKEND_PEERS, run_suite, write_report

    out = Path(args.out)
    if getattr(args, "cost_model", False):
        return command_cost_model(out)
    peers = args.peers or (",".join(BACKEND_PEERS.values()) if args.backend == "all" else BACKEND_PEERS[args.backend])
    try:
        raws = run_suite(out, args.quick, peers, args.case or [], args.keyword, args.threads, args.max_time,
                         args.min_rounds, args.passes)
        path, text = write_report(raws, out, "gpunn " + " ".join(sys.argv[1:]))
    except RuntimeError as error:
        raise UserError(f"gpunn bench: {error}") from None
    except OSError as error:
        raise UserError(f"gpunn bench: --out {out}: {error.strerror or error}") from None
    print(text)
    print(f"report: {path} (raw: {path.with_suffix('.json')})")
    return 0


def command_cost_model(out) -> int:
    """``gpunn bench --cost-model``: the table, and its JSON beside the other reports."""
    from gpunn.bench import cost_model

    try:
        costs = cost_model.run()
        paths = cost_model.write(costs, out)
    except cost_model.CostModelError as error:
        raise UserError(f"gpunn bench --cost-model: {error}") from None
    except OSError as error:
        raise UserError(f"gpunn bench: --out {out}: {error.strerror or error}") from None
    print(cost_model.table(costs))
    print(f"a model, not a measurement (see gpunn/bench/cost_model.py); written to {', '.join(map(str, paths))}")
    return 0


COMMANDS = {"info": command_info, "train": command_train, "predict": command_predict, "bench": command_bench,
            "export": command_export}


def main(argv=None) -> int:
    from gpunn.backends.selection import BackendUnavailableError
    from gpunn.cli.data import DataError
    from gpunn.distributed.world import DistributedError, current_world
    from gpunn.io.model_file import ModelFileError
    from gpunn.train.step import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UserError, DataError, ModelFileError, BackendUnavailableError, TrainingDiverged,
            DistributedError) as error:
        message = str(error)
        print(message if message.startswith("gpunn") else f"gpunn: error: {message}", file=sys.stderr)
        world = current_world()
        if world is not None and world.size > 1:  # the other ranks may wait in a collective: end them too
            world.abort(EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # train handles its own (it names the checkpoint it kept)
        print("gpunn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `gpunn predict ... | head`: the reader left; say nothing more
        try:  # so that the interpreter's final flush of stdout does not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_BROKEN_PIPE
