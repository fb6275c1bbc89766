"""The command line: ``gpunn info | train | predict | bench`` (also ``python -m gpunn``).

User errors (a missing file, a bad option value, a checkpoint that does not fit) print one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import __version__
from .cli_options import BACKEND_CHOICES, BACKEND_HELP, UserError, positive as _positive
from .cli_options import use_backend_option as _use_backend

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141
LOSS_CHOICES = {"softmax-ce": "SoftmaxCrossEntropyLoss", "mse": "MSELoss"}
ACTIVATION_CHOICES = {"tanh": "Tanh", "relu": "ReLU", "sigmoid": "Sigmoid", "gelu": "GELU", "silu": "SiLU",
                      "leaky-relu": "LeakyReLU"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message}")


def _say(line: str, quiet: bool = False) -> None:
    if quiet:
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(line, flush=True)
    else:
        tqdm.write(line)


# --- info ---------------------------------------------------------------------------------
def _cupy_report() -> list[str]:
    from .backends import cupy_unavailable_reason, resolve_backend

    try:
        import cupy
    except ImportError:
        return ["cupy: not installed (pip install 'gpunn[cuda13]' or 'gpunn[cuda12]')"]
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
    from .backends import available_backends, get_matmul_precision, host_activations, host_update

    from .distributed import mpi_report, nccl_report

    lines = [f"gpunn: {__version__}", f"numpy: {np.__version__}", *_cupy_report(), mpi_report(), nccl_report(),
             f"backends available: {', '.join(available_backends())}",
             "default dtype: float32", f"matmul precision: {get_matmul_precision()}",
             f"numpy optimizer update: {host_update.status()}",
             f"numpy activations: {host_activations.status()}"]
    print("\n".join(lines))
    return 0


# --- train --------------------------------------------------------------------------------
# --- predict ------------------------------------------------------------------------------
def command_predict(args) -> int:
    import csv
    import io

    from .checkpoint import Checkpoint
    from .data import read_features

    if args.out and any(os.path.exists(args.out) and os.path.samefile(args.out, path)
                        for path in (args.checkpoint, args.input) if os.path.exists(path)):
        raise UserError(f"gpunn predict: --out {args.out} is the checkpoint or the input; writing there would "
                        "destroy it")
    _use_backend(args.backend)
    checkpoint = Checkpoint.read(args.checkpoint)
    table = read_features(args.input, args.label or checkpoint.label or "label", need_labels=False)
    header, rows = checkpoint.predictions(checkpoint.inputs(table, args.input), args.input)
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if args.out:
        from .atomic import atomic_write

        try:
            atomic_write(args.out, lambda file: file.write(text.getvalue().encode()))
        except OSError as error:
            raise UserError(f"gpunn predict: {error.strerror or error}") from None
    else:
        sys.stdout.write(text.getvalue())
    return 0


# --- the parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpunn", description="Train multilayer perceptrons on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="versions, backends, and why CuPy is or is not usable")
    info.set_defaults(run=command_info)

    train = commands.add_parser(
        "train", help="train an MLP classifier or regressor (default: the bundled handwritten digits)",
        description="Train an MLP and report loss and accuracy (RMSE and R² with --task regress) per epoch. "
                    "Without --data it uses scikit-learn's bundled 8x8 digits (pip install 'gpunn[data]'). The "
                    "data is split into train/validation/test parts (stratified for classes) and standardised on "
                    "the training part; each epoch writes last.npz, the best validation epoch best.npz.")
    from . import cli_train

    cli_train.add_train_arguments(train)

    predict = commands.add_parser("predict", help="predict with a trained checkpoint for a .npz/.csv",
                                  description="Write one CSV row per input row: the predicted class and "
                                              "each class's probability, or the predicted value of a "
                                              "regression. CSV columns are matched to the training "
                                              "features by name.")
    predict.add_argument("checkpoint", help="best.npz or last.npz written by 'gpunn train'")
    predict.add_argument("input", help=".npz (array X, columns in training order) or .csv with the training "
                                       "feature columns by name (a label column is ignored)")
    predict.add_argument("--label", help="a CSV column to ignore as the label (default: the training label)")
    predict.add_argument("--out", help="write the CSV here instead of to standard output")
    predict.add_argument("--backend", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    predict.set_defaults(run=command_predict)

    from .bench import GROUPS

    bench = commands.add_parser(
        "bench", help="benchmark gpunn against PyTorch on CPU and GPU, and write a report",
        description="Run the pytest-benchmark suite (gpunn on NumPy and CuPy, PyTorch eager and with CUDA "
                    "graphs where installed) and write the raw JSON, a markdown report and a plot named by "
                    "device and date. Needs pip install 'gpunn[bench]'.")
    bench.add_argument("--quick", action="store_true", help="small sizes (the CPU suite in under 3 minutes)")
    bench.add_argument("--backend", choices=["numpy", "cupy", "all"], default="all",
                       help="numpy: CPU peers; cupy: GPU peers; all: whatever can run (default)")
    bench.add_argument("--peers", help="comma-separated implementations, e.g. gpunn-numpy,torch-cpu")
    bench.add_argument("--case", action="append", choices=GROUPS, help="only these groups (repeatable)")
    bench.add_argument("-k", dest="keyword", help="a pytest -k expression over the case names")
    bench.add_argument("--out", default=os.path.join("benchmarks", "results"), help="(default: benchmarks/results)")
    bench.add_argument("--threads", type=_positive(int), help="CPU threads for NumPy's BLAS and PyTorch (default: all)")
    bench.add_argument("--max-time", type=_positive(float), default=1.0, help="seconds per case (default: 1.0)")
    bench.add_argument("--min-rounds", type=_positive(int), default=5, help="rounds per case at least (default: 5)")
    bench.add_argument("--passes", type=_positive(int), default=1,
                       help="run the suite this many times; each time reported is the median over passes, each ratio the median of the per-pass ratios (default: 1)")
    bench.set_defaults(run=command_bench)
    return parser


def command_bench(args) -> int:
    from pathlib import Path

    from .bench import BACKEND_PEERS, run_suite, write_report

    peers = args.peers or (",".join(BACKEND_PEERS.values()) if args.backend == "all" else BACKEND_PEERS[args.backend])
    out = Path(args.out)
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


def main(argv=None) -> int:
    from .backends import BackendUnavailableError
    from .data import DataError
    from .distributed import DistributedError, current_world
    from .io import ModelFileError
    from .training import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
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
