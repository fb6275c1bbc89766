"""The ``gpunn`` command line's parser: every subcommand and option, with its help text."""

from __future__ import annotations

import argparse
import os
from types import MappingProxyType

from gpunn.bench.report import GROUPS
from gpunn.cli.options import (ACTIVATION_CHOICES, BACKEND_CHOICES, BACKEND_HELP, LOSS_CHOICES, OPTIMIZER_CHOICES,
                               SCHEDULE_CHOICES, Parser, fraction, hidden_sizes, non_negative, positive, seed)
from gpunn.extras import install_command
from gpunn.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gpunn", description="Train multilayer perceptrons on NumPy (CPU) or CuPy (GPU).")
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    info = commands.add_parser("info", help="versions, backends, and why CuPy is or is not usable")
    info.set_defaults(command="info")

    train = commands.add_parser(
        "train", help="train an MLP classifier or regressor (default: the bundled handwritten digits)",
        description="Train an MLP and report loss and accuracy (RMSE and R² with --task regress) per epoch. "
                    f"Without --data it uses scikit-learn's bundled 8x8 digits ({install_command('data')}). The "
                    "data is split into train/validation/test parts (stratified for classes; by position with --stream) "
                    "and standardised on the training part; each epoch writes last.npz, the best validation epoch "
                    "best.npz.")
    add_train_arguments(train)

    predict = commands.add_parser("predict", help="predict with a trained run or checkpoint for a .csv/.parquet/.npz/.npy",
                                  description="Write one CSV row per input row: the predicted class and "
                                              "each class's probability, or the predicted value of a "
                                              "regression. CSV and Parquet columns are matched to the training "
                                              "features by name, and encoded as in training (text columns "
                                              "one-hot, --impute's fills); a category the training data never "
                                              "had is an error.")
    predict.add_argument("checkpoint", help="a gpunn train --out folder (its best.npz, else its last.npz), or a "
                                            "checkpoint .npz written by 'gpunn train'")
    predict.add_argument("input", help=".csv or .parquet with the training feature columns by name (a label column "
                                       "is ignored), .npz (array X, columns in training order) or .npy (the "
                                       "features, or the features and the target as the last column)")
    predict.add_argument("--label", help="a CSV or Parquet column to ignore as the label (default: the training label)")
    predict.add_argument("--out", help="write the CSV here instead of to standard output")
    predict.add_argument("--backend", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    predict.set_defaults(command="predict")

    export = commands.add_parser(
        "export", help="a trained checkpoint as an ONNX model that serves raw rows",
        description="Write a gpunn train checkpoint (a run folder's best.npz, else its last.npz, or a .npz) as "
                    "one ONNX graph: raw feature columns in the training order in (standardised inside), "
                    "class probabilities and the class index (or the predicted value) out, the feature and "
                    f"class names in its metadata. Needs {install_command('onnx')}.")
    export.add_argument("checkpoint", help="a gpunn train --out folder, or a checkpoint .npz")
    export.add_argument("out", help="the .onnx file to write")
    export.set_defaults(command="export")

    bench = commands.add_parser(
        "bench", help="benchmark gpunn against PyTorch on CPU and GPU, and write a report",
        description="Run the pytest-benchmark suite (gpunn on NumPy and CuPy, PyTorch eager and with CUDA "
                    "graphs where installed) and write the raw JSON, a markdown report and a plot named by "
                    f"device and date. Needs {install_command('bench')}.")
    bench.add_argument("--quick", action="store_true", help="small sizes (on 2 CPU cores: about a minute without PyTorch, 3 to 5 with it)")
    bench.add_argument("--backend", choices=["numpy", "cupy", "all"], default="all",
                       help="numpy: CPU peers; cupy: GPU peers; all: whatever can run (default)")
    bench.add_argument("--peers", help="comma-separated implementations, e.g. gpunn-numpy,torch-cpu")
    bench.add_argument("--case", action="append", choices=GROUPS, help="only these groups (repeatable)")
    bench.add_argument("-k", dest="keyword", help="a pytest -k expression over the case names")
    bench.add_argument("--out", default=os.path.join("benchmarks", "results"), help="(default: benchmarks/results)")
    bench.add_argument("--threads", type=positive(int), help="CPU threads for NumPy's BLAS and PyTorch (default: all)")
    bench.add_argument("--max-time", type=positive(float), default=1.0, help="seconds per case (default: 1.0)")
    bench.add_argument("--min-rounds", type=positive(int), default=5, help="rounds per case at least (default: 5)")
    bench.add_argument("--passes", type=positive(int), default=1,
                       help="run the suite this many times; each time reported is the median over passes, each ratio the median of the per-pass ratios (default: 1)")
    bench.add_argument("--cost-model", action="store_true",
                       help="instead of timing: predict each kernel's fraction of copy bandwidth on an H100/H200 "
                            "from its sm_90 SASS and on an A100 from its sm_80 SASS (NVRTC + nvdisasm, no GPU "
                            "needed), as two bounds: instructions issued one after another (pessimistic) and "
                            "overlapping on the SM's pipes (optimistic); a model, not a measurement; writes "
                            "cost-model-sm_90.json and cost-model-sm_80.json into --out")
    bench.set_defaults(command="bench")
    return parser


def add_train_arguments(train) -> None:
    """The options of ``gpunn train``. Those in the "run settings" group describe the run: they are
    saved in its checkpoint, and ``--resume`` continues with them (``args.run_settings`` maps each
    one's name to its default, derived here from the options themselves)."""
    settings = train.add_argument_group(
        "run settings", "kept in the run's last.npz: --resume continues with them and refuses other values")
    defaults = {}

    def setting(*flags, **options):
        action = settings.add_argument(*flags, **options)
        defaults[action.dest] = action.default

    setting("--data", help="your .csv or .csv.gz (a header row and a label column; read by PyArrow), .parquet (a label "
                           "column), .npz (arrays X and y) or .npy (2-D, memory-mapped: the target is its last "
                           "column). Text feature columns are one-hot encoded; missing cells are refused (--impute)")
    setting("--stream", action="store_true",
            help="never load --data whole (for files larger than memory; .npy, .npz saved with np.savez, .parquet, "
                 ".csv): one pass computes the training rows' mean and std and the classes, then batches are read "
                 "and standardised as they train. The parts are contiguous, not stratified: test is the last "
                 "--test-fraction of the rows, validation the --validation-fraction before it (shuffle a file "
                 "sorted by label first; the run prints each part's rows per class). Number columns and number "
                 "labels only: text columns and missing cells are refused (--impute mean fills them; median "
                 "is refused)")
    setting("--label", default="label", help="the label column of a CSV or Parquet file (default: label)")
    setting("--validation-data", metavar="FILE",
            help="validation rows from this file (same columns as --data) instead of --validation-fraction")
    setting("--test-data", metavar="FILE",
            help="test rows from this file (same columns as --data) instead of --test-fraction")
    setting("--impute", choices=["mean", "median"],
            help="fill missing number cells (empty, NA, NaN) with the training rows' mean or median of the column, "
                 "stored in the checkpoints and applied by predict (default: refuse missing cells)")
    setting("--task", default="auto", choices=["auto", "classify", "regress"],
            help="classify: labels are classes; regress: predict the numeric label (MSE on "
                 "standardised targets; RMSE and R² reported); auto (default): classify, but "
                 "refuse a numeric label column that looks like a quantity")
    train.add_argument("--backend", choices=BACKEND_CHOICES, help=BACKEND_HELP)
    setting("--hidden", type=hidden_sizes, default=[128, 64], help="hidden layer sizes (default: 128,64)")
    setting("--activation", default="tanh", choices=list(ACTIVATION_CHOICES),
            help="hidden activation (default: tanh)")
    setting("--dropout", type=fraction(low_inclusive=True), default=0.0,
            help="dropout rate after each hidden activation, in [0, 1) (default: 0, none)")
    setting("--layer-norm", action="store_true", help="LayerNorm after each hidden Dense")
    setting("--residual", action="store_true",
            help="hidden layers as wide as the previous one become residual blocks x + f(x)")
    setting("--loss", choices=list(LOSS_CHOICES),
            help="softmax-ce (default for classes): softmax cross-entropy; mse: MSE on one-hot "
                 "targets (and the only loss of --task regress)")
    setting("--class-weight", choices=["balanced"], default=None,
            help="balanced: weigh each class's rows by n_rows / (n_classes x its rows) in the training "
                 "loss, sklearn's formula, for imbalanced classes (default: every row weighs 1)")
    setting("--epochs", type=positive(int), default=None,
            help="the last epoch to train to (default: 30; with --resume, the stored one)")
    setting("--batch-size", type=positive(int), default=32, help="mini-batch size (default: 32)")
    setting("--optimizer", default="adam", choices=list(OPTIMIZER_CHOICES),
            help="sgd (with --momentum), adam, or adamw (decoupled weight decay) (default: adam)")
    setting("--lr", type=positive(float), default=None,
            help="(peak) learning rate (default: 0.002 for adam and adamw, 0.05 for sgd)")
    setting("--momentum", type=fraction(low_inclusive=True), default=0.9,
            help="SGD momentum in [0, 1) (default: 0.9)")
    setting("--weight-decay", type=non_negative, default=None,
            help="weight decay (L2 for sgd and adam, decoupled for adamw; default: 0, adamw 0.01)")
    setting("--schedule", default="constant", choices=SCHEDULE_CHOICES,
            help="learning-rate schedule over the run: constant, step (x0.1 at each third), cosine "
                 "(to 0, after --warmup-steps), onecycle (default: constant)")
    setting("--warmup-steps", type=seed, default=0,
            help="linear warmup updates before the cosine schedule (default: 0)")
    setting("--max-grad-norm", type=positive(float), default=None,
            help="clip gradients to this global L2 norm (default: no clipping)")
    setting("--dtype", default="float32", choices=["float16", "float32", "float64"],
            help="float16 trains with float32 master weights and dynamic loss scaling (default: float32)")
    setting("--seed", type=seed, default=0,
            help="seed for the splits, initialisation and shuffling (default: 0)")
    setting("--test-fraction", type=fraction(low_inclusive=False), default=0.2,
            help="share of rows held out for the final test (default: 0.2)")
    setting("--validation-fraction", type=fraction(low_inclusive=True), default=0.1,
            help="share of the training part kept for validation, which picks best.npz and drives "
                 "--early-stopping; 0 for none (default: 0.1)")
    setting("--early-stopping", type=positive(int), default=None, metavar="PATIENCE",
            help="stop after PATIENCE epochs without a better validation loss")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its last.npz, exactly (its settings are kept and "
                            "other values of them refused; --epochs may extend a run with --schedule constant)")
    train.add_argument("--out", help="folder for last.npz, best.npz and curves.png (default: gpunn-run; with "
                                      "--resume, the resumed run's folder). A folder holding another run is refused")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (without it, gpunn train never replaces a run)")
    train.add_argument("--graph", action="store_true",
                       help="replay each full batch's step as a CUDA graph (cupy backend)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training over the MPI job that started this process "
                            "(mpiexec -n 4 gpunn train --distributed); --batch-size is the global batch")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(command="train", run_settings=MappingProxyType(defaults))
