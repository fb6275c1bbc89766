"""The command line: ``gpunn info | train | predict | bench`` (also ``python -m gpunn``).

User errors (a missing file, a bad option value, a checkpoint that does not fit) print one
line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from . import __version__
from .cli_options import (BACKEND_CHOICES, BACKEND_HELP, UserError, fraction as _fraction,
                          hidden_sizes as _hidden_sizes, positive as _positive, seed as _seed,
                          use_backend_option as _use_backend)

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141
LOSS_CHOICES = {"softmax-ce": "SoftmaxCrossEntropyLoss", "mse": "MSELoss"}


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

    lines = [f"gpunn: {__version__}", f"numpy: {np.__version__}", *_cupy_report(),
             f"backends available: {', '.join(available_backends())}",
             "default dtype: float32", f"matmul precision: {get_matmul_precision()}"]
    print("\n".join(lines))
    return 0


# --- train --------------------------------------------------------------------------------
def _build_model(features: int, hidden: list[int], outputs: int, activation: str, dtype: str, seed: int):
    import gpunn as gn
    from .layers import ACTIVATION_LAYERS

    init = "he" if activation == "relu" else "xavier"
    layers, width = [], features
    for index, size in enumerate(hidden):
        layers += [gn.Dense(width, size, init=init, dtype=dtype, seed=(seed, index)), ACTIVATION_LAYERS[activation]()]
        width = size
    layers.append(gn.Dense(width, outputs, dtype=dtype, seed=(seed, len(hidden))))
    return gn.Sequential(*layers)


def _accuracy(model, X, y) -> float:
    return float(np.mean(model.predict(X).argmax(axis=1) == y))


def _regression_scores(model, X, y, target) -> tuple[float, float]:
    """(RMSE in the target's units, R²) of the model on (X, y), computed on the standardised
    scale so that targets near 1e300 do not overflow."""
    scaled = target(y[:, None])[:, 0]
    error = float(np.mean((model.predict(X)[:, 0].astype(np.float64) - scaled) ** 2))
    spread = float(np.mean((scaled - scaled.mean()) ** 2))
    return math.sqrt(error) * float(target.std[0]), (1 - error / spread if spread > 0 else float("nan"))


def _host_memory() -> float:
    """Bytes of physical memory (inf where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return math.inf


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _save_plot(history: dict, path: str, metrics: list[str]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    left.plot(epochs, history["loss"])
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key in metrics:
        right.plot(epochs, history[key], label=key.replace("_", " "))
    title = metrics[0].split("_", 1)[1]
    right.set(xlabel="epoch", ylabel=title, title=title)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _prepare_run(args):
    """(dataset, train rows, test rows, feature scaler, target scaler or None) for ``train``."""
    from .data import DataError, Standardizer, load_digits, load_table, random_split, stratified_split

    if args.task == "regress" and not args.data:
        raise UserError("gpunn train: --task regress needs --data with a numeric label column")
    dataset = load_table(args.data, args.label, args.task) if args.data else load_digits()
    if args.task == "regress":
        train_rows, test_rows = random_split(len(dataset.y), args.test_fraction, args.seed)
    else:
        train_rows, test_rows = stratified_split(dataset.y, args.test_fraction, args.seed)
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise DataError(f"{dataset.name}: too few rows for a train/test split")
    scaler = Standardizer.fit(dataset.X[train_rows])
    target = Standardizer.fit(dataset.y[train_rows, None]) if args.task == "regress" else None
    return dataset, train_rows, test_rows, scaler, target


def command_train(args) -> int:
    import gpunn as gn
    from .checkpoint import Checkpoint
    from .training import TrainingDiverged

    regress = args.task == "regress"
    loss_name = args.loss or ("mse" if regress else "softmax-ce")
    if regress and loss_name != "mse":
        raise UserError("gpunn train: --task regress trains with --loss mse")
    dataset, train_rows, test_rows, scaler, target = _prepare_run(args)
    x_train, x_test = scaler(dataset.X[train_rows]), scaler(dataset.X[test_rows])
    y_train, y_test = dataset.y[train_rows], dataset.y[test_rows]
    outputs = 1 if regress else len(dataset.classes)

    backend = _use_backend(args.backend)
    if args.graph and not backend.supports_graphs:
        raise UserError(f"gpunn train: --graph needs the cupy backend (CUDA graphs); the {backend.name} "
                        "backend runs every step eagerly")
    sizes = [dataset.X.shape[1], *args.hidden, outputs]
    weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    too_big = UserError(f"gpunn train: out of memory for a {'-'.join(map(str, sizes))} MLP ({weights:,} weights, "
                        f"{weights * np.dtype(args.dtype).itemsize / 2**30:,.1f} GiB each for weights, gradients "
                        "and momentum); use smaller --hidden sizes")
    if backend.host_resident and 3 * weights * np.dtype(args.dtype).itemsize > _host_memory():
        raise too_big  # before allocating: a failed build could take minutes and all the RAM first
    try:
        model = _build_model(dataset.X.shape[1], args.hidden, outputs, args.activation, args.dtype, args.seed)
    except MemoryError:
        raise too_big from None
    loss = getattr(gn, LOSS_CHOICES[loss_name])()
    if regress:
        targets = target(y_train[:, None])
    else:
        targets = y_train if loss_name == "softmax-ce" else np.eye(outputs)[y_train]
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:
        raise UserError(f"gpunn train: --out {args.out}: cannot create the folder ({error.strerror or error})") from None
    checkpoint_path = os.path.join(args.out, "model.npz")
    checkpoint = Checkpoint(model, "regress" if regress else "classify", scaler, dataset.classes, target,
                            dataset.features, args.label if args.data else None)
    extras = checkpoint.extras()
    saved_epoch = [0]
    say = lambda line: _say(line, args.quiet)  # noqa: E731
    metrics = ["train_rmse", "test_rmse"] if regress else ["train_accuracy", "test_accuracy"]

    say(f"training on {dataset.name}: {len(train_rows)} train / {len(test_rows)} test rows, "
        f"{dataset.X.shape[1]} features, " + ("a numeric target" if regress else f"{outputs} classes") + "; "
        f"{'-'.join(map(str, sizes))} {args.activation} MLP, "
        f"{loss_name}, SGD lr={args.lr} momentum={args.momentum}, {args.dtype} on {backend.name}")

    def after_epoch(epoch, logs):
        if regress:
            logs["train_rmse"], _ = _regression_scores(model, x_train, y_train, target)
            logs["test_rmse"], logs["test_r2"] = _regression_scores(model, x_test, y_test, target)
            scores = f"train RMSE {logs['train_rmse']:.4g}  test RMSE {logs['test_rmse']:.4g}  test R² {logs['test_r2']:.4f}"
        else:
            logs["train_accuracy"] = _accuracy(model, x_train, y_train)
            logs["test_accuracy"] = _accuracy(model, x_test, y_test)
            scores = f"train acc {logs['train_accuracy']:.4f}  test acc {logs['test_accuracy']:.4f}"
        try:
            model.save(checkpoint_path, extras=extras)
        except OSError as error:
            raise UserError(f"gpunn train: {error.strerror or error}") from None
        except ValueError as error:  # non-finite weights: the run diverged
            raise TrainingDiverged(f"gpunn train: epoch {epoch + 1}: {error}") from None
        saved_epoch[0] = epoch + 1
        say(f"epoch {epoch + 1:3d}/{args.epochs}  loss {logs['loss']:.4f}  {scores}")

    started = time.perf_counter()
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported in one line instead
            history = model.fit(x_train, targets, loss=loss, optimizer=gn.SGD(lr=args.lr, momentum=args.momentum),
                                epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                verbose=0 if args.quiet or not sys.stderr.isatty() else 1, callback=after_epoch,
                                graph=args.graph)
    except MemoryError:
        raise UserError(f"gpunn train: out of memory while training; use a smaller --batch-size or --hidden") from None
    except KeyboardInterrupt:
        kept = (f"the checkpoint of epoch {saved_epoch[0]} is kept at {checkpoint_path}" if saved_epoch[0]
                else "no epoch finished, so no checkpoint was written")
        print(f"gpunn train: interrupted; {kept}", file=sys.stderr)
        return EXIT_INTERRUPTED
    backend.synchronize()
    seconds = time.perf_counter() - started
    plot = _save_plot(history, os.path.join(args.out, "curves.png"), metrics)
    if regress:
        print(f"test RMSE: {history['test_rmse'][-1]:.6g}")
        print(f"test R²: {history['test_r2'][-1]:.4f}")
    else:
        print(f"test accuracy: {history['test_accuracy'][-1]:.4f}")
    print(f"wall time: {seconds:.2f} s for {_plural(args.epochs, 'epoch')} on {backend.name}")
    print(f"checkpoint: {checkpoint_path}")
    print(f"curves: {plot}" if plot else "curves: not drawn (pip install 'gpunn[plot]' for a PNG)")
    return 0


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
        description="Train an MLP with SGD and report loss and accuracy (RMSE and R² with --task regress) per "
                    "epoch. Without --data it uses scikit-learn's bundled 8x8 digits (pip install 'gpunn[data]'). "
                    "The data is split into train/test parts (stratified for classes) and standardised on the "
                    "training part.")
    train.add_argument("--data", help="your .npz (arrays X, y) or .csv (a header row and a label column)")
    train.add_argument("--label", default="label", help="the label column of a CSV (default: label)")
    train.add_argument("--task", default="auto", choices=["auto", "classify", "regress"],
                       help="classify: labels are classes; regress: predict the numeric label (MSE on "
                            "standardised targets; RMSE and R² reported); auto (default): classify, but "
                            "refuse a numeric label column that looks like a quantity")
    train.add_argument("--backend", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    train.add_argument("--hidden", type=_hidden_sizes, default=[128, 64], help="hidden layer sizes (default: 128,64)")
    train.add_argument("--activation", default="tanh", choices=["tanh", "relu", "sigmoid"],
                       help="hidden activation (default: tanh)")
    train.add_argument("--loss", choices=list(LOSS_CHOICES),
                       help="softmax-ce (default for classes): softmax cross-entropy; mse: MSE on one-hot "
                            "targets (and the only loss of --task regress)")
    train.add_argument("--epochs", type=_positive(int), default=30, help="passes over the data (default: 30)")
    train.add_argument("--batch-size", type=_positive(int), default=32, help="mini-batch size (default: 32)")
    train.add_argument("--lr", type=_positive(float), default=0.05, help="learning rate (default: 0.05)")
    train.add_argument("--momentum", type=_fraction(low_inclusive=True), default=0.9, help="SGD momentum in [0, 1) (default: 0.9)")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="(default: float32)")
    train.add_argument("--seed", type=_seed, default=0, help="seed for the split, initialisation and shuffling")
    train.add_argument("--test-fraction", type=_fraction(low_inclusive=False), default=0.2, help="share of rows held out (default: 0.2)")
    train.add_argument("--out", default="gpunn-run", help="folder for model.npz and curves.png (default: gpunn-run)")
    train.add_argument("--graph", action="store_true",
                       help="replay each full batch's step as a CUDA graph (cupy backend)")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(run=command_train)

    predict = commands.add_parser("predict", help="predict with a trained checkpoint for a .npz/.csv",
                                  description="Write one CSV row per input row: the predicted class and "
                                              "each class's probability, or the predicted value of a "
                                              "regression. CSV columns are matched to the training "
                                              "features by name.")
    predict.add_argument("checkpoint", help="model.npz written by 'gpunn train'")
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
    except OSError as error:
        raise UserError(f"gpunn bench: --out {out}: {error.strerror or error}") from None
    print(text)
    print(f"report: {path} (raw: {path.with_suffix('.json')})")
    return 0


def main(argv=None) -> int:
    from .backends import BackendUnavailableError
    from .data import DataError
    from .io import ModelFileError
    from .training import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except (UserError, DataError, ModelFileError, BackendUnavailableError, TrainingDiverged) as error:
        message = str(error)
        print(message if message.startswith("gpunn") else f"gpunn: error: {message}", file=sys.stderr)
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
