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

EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130
LOSS_CHOICES = {"softmax-ce": "SoftmaxCrossEntropyLoss", "mse": "MSELoss"}
ACTIVATION_CHOICES = {"tanh": "Tanh", "relu": "ReLU", "sigmoid": "Sigmoid", "gelu": "GELU", "silu": "SiLU",
                      "leaky-relu": "LeakyReLU"}


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, without a traceback."""


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
    from .backends import available_backends, get_matmul_precision
    from .distributed import mpi_report, nccl_report

    lines = [f"gpunn: {__version__}", f"numpy: {np.__version__}", *_cupy_report(), mpi_report(), nccl_report(),
             f"backends available: {', '.join(available_backends())}",
             "default dtype: float32", f"matmul precision: {get_matmul_precision()}"]
    print("\n".join(lines))
    return 0


# --- train --------------------------------------------------------------------------------
def _hidden_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,64, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,64, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _fraction(low_inclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (0 <= value < 1 if low_inclusive else 0 < value < 1):
            interval = "[0, 1)" if low_inclusive else "(0, 1)"
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value

    return parse


# --- predict ------------------------------------------------------------------------------
def command_predict(args) -> int:
    import gpunn as gn
    from .data import DataError, read_features

    gn.use_backend(args.backend)
    try:
        model = gn.load(args.checkpoint)
    except FileNotFoundError:
        raise DataError(f"{args.checkpoint}: no such checkpoint") from None
    if "mean" not in model.extras or "classes" not in model.extras:
        raise DataError(f"{args.checkpoint}: not a checkpoint written by 'gpunn train' (no scaler or classes)")
    X, _ = read_features(args.input, args.label, need_labels=False)
    if X.shape[1] != model.in_features:
        raise DataError(f"{args.input}: {X.shape[1]} features, but the checkpoint expects {model.in_features}")
    scores = model.predict((X - model.extras["mean"]) / model.extras["std"]).astype(np.float64)
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    classes = [str(c) for c in model.extras["classes"]]
    lines = [",".join(["prediction"] + [f"p_{c}" for c in classes])]
    for row in probabilities:
        lines.append(",".join([classes[int(row.argmax())]] + [f"{p:.6f}" for p in row]))
    text = "\n".join(lines) + "\n"
    if args.out:
        from .io import atomic_write

        atomic_write(args.out, lambda file: file.write(text.encode()))
    else:
        sys.stdout.write(text)
    return 0


# --- the parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpunn", description="Train multilayer perceptrons on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    info = commands.add_parser("info", help="versions, backends, and why CuPy is or is not usable")
    info.set_defaults(run=command_info)

    train = commands.add_parser(
        "train", help="train an MLP classifier (default: the bundled handwritten digits)",
        description="Train an MLP classifier and report loss and accuracy per epoch. Without --data it uses "
                    "scikit-learn's bundled 8x8 digits (pip install 'gpunn[data]'). The data is split into "
                    "stratified train/validation/test parts and standardised on the training part; each epoch "
                    "writes last.npz, the best validation epoch best.npz.")
    from . import cli_train

    cli_train.add_train_arguments(train, sys.modules[__name__])

    predict = commands.add_parser("predict", help="predict classes for a .npz/.csv with a trained checkpoint",
                                  description="Write one CSV row per input row: the predicted class and "
                                              "each class's probability.")
    predict.add_argument("checkpoint", help="model.npz written by 'gpunn train'")
    predict.add_argument("input", help=".npz (array X) or .csv with the training features (a label column is ignored)")
    predict.add_argument("--label", default="label", help="a CSV column to ignore as the label (default: label)")
    predict.add_argument("--out", help="write the CSV here instead of to standard output")
    predict.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
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
                       help="run the suite this many times; each time reported is the median over passes (default: 1)")
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
