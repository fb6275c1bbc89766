"""What ``gpunn train`` prints and draws: the header, a line per epoch, the test scores and the curves."""

from __future__ import annotations

import math
import os

import numpy as np

import gpunn as gn
from gpunn.extras import install_command
from gpunn.train.callbacks import DIVERGENCE_FACTOR


def save_plot(history: dict, path: str, metric: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key in ("loss", "val_loss"):
        if key in history:
            left.plot(epochs, history[key], label=key.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    for key in (metric, f"val_{metric}"):
        if key in history:
            right.plot(epochs, history[key], label=key.replace("_", " "))
    right.set(xlabel="epoch", ylabel=metric, title=metric)
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def regression_scores(model, X, y, target) -> tuple[float, float]:
    """(RMSE in the target's units, R²) of the model on (X, y), computed on the standardised
    scale so that targets near 1e300 do not overflow."""
    scaled = target(y[:, None])[:, 0]
    error = float(np.mean((model.predict(X)[:, 0].astype(np.float64) - scaled) ** 2))
    spread = float(np.mean((scaled - scaled.mean()) ** 2))
    return math.sqrt(error) * float(target.std[0]), (1 - error / spread if spread > 0 else float("nan"))


def header(args, data, outputs: int, loss_name: str, optimizer: str, backend, world, resumed_after) -> str:
    """The run's first line: the data, the network, the loss, the optimizer, the dtype and backend."""
    features = data.width
    return (f"training on {data.name}: {data.rows('train')} train / {data.rows('validation')} validation / "
            f"{data.rows('test')} test rows, {features} features, "
            + ("a numeric target" if args.task == "regress" else f"{outputs} classes") + "; "
            f"{'-'.join(str(n) for n in [features, *args.hidden, outputs])} {args.activation} MLP, "
            f"{loss_name}, {optimizer}, {args.dtype} on {backend.name}"
            + (f", data-parallel over {world.size} ranks (global batch {args.batch_size})" if world else "")
            + (f"; resuming after epoch {resumed_after}" if resumed_after is not None else ""))


def divergence(epoch: int, loss: float, before: float | None) -> str | None:
    """The warning for an epoch whose training loss is over DIVERGENCE_FACTOR times the loss before this
    run's training (fit compares with the best epoch's, so a run that starts by blowing up, such as
    ``--lr 1e4``, said nothing), else None."""
    if before is None or not math.isfinite(before) or not loss > DIVERGENCE_FACTOR * max(before, 1e-12):
        return None
    return (f"epoch {epoch + 1}: the loss {loss:.4g} is over {DIVERGENCE_FACTOR:.0f}x the loss before training "
            f"({before:.4g}); training is diverging: lower --lr (or clip with --max-grad-norm)")


def epoch_lines(epoch: int, epochs: int, logs: dict, regress: bool) -> list[str]:
    """An epoch's line (loss, accuracy, validation), then its warnings."""
    line = f"epoch {epoch + 1:3d}/{epochs}  loss {logs['loss']:.4f}"
    if not regress:
        line += f"  train acc {logs['accuracy']:.4f}"
    if "val_loss" in logs:
        line += f"  val loss {logs['val_loss']:.4f}" + ("" if regress else f"  val acc {logs['val_accuracy']:.4f}")
    if logs.get("skipped_steps"):
        line += f"  ({logs['skipped_steps']} float16 steps skipped: loss scale lowered)"
    return [line] + [f"warning: {warning}" for warning in logs.get("warnings", [])]


def results(args, model, writer, data, stopper, trained: int, seconds: float, backend, metric: str) -> None:
    """The test scores of the last epoch and of the best validation epoch, then where things are."""
    record, regress = writer.record, args.task == "regress"
    plot = save_plot(record.history, os.path.join(args.out, "curves.png"), metric)
    final = {"last epoch": (model, f"{record.epoch}: last.npz")}
    best = record.best_epoch is not None and os.path.isfile(writer.best)
    if best:
        final["best validation epoch"] = (gn.load(writer.best), f"{record.best_epoch}: best.npz")
    elif record.best_epoch is not None:  # a resumed run whose best.npz was deleted, and no epoch since beat it
        print(f"note: {writer.best} (the best validation epoch, {record.best_epoch}) is gone, so only the last "
              "epoch is scored")
    for index, (name, (trained_model, where)) in enumerate(final.items()):
        label = "" if index == 0 else f" of the {name}"
        if regress:
            rmse, r2 = data.test_scores(trained_model)
            print(f"test RMSE{label}: {rmse:.6g}  test R²: {r2:.4f} ({where})")
        else:
            accuracy = data.test_scores(trained_model)
            print(f"test accuracy{label}: {accuracy:.4f} ({name if index == 0 else 'epoch'} {where})")
    if stopper is not None and stopper.stopped_epoch is not None:
        print(f"early stopping: no better validation loss for {plural(args.early_stopping, 'epoch')}")
    print(f"wall time: {seconds:.2f} s for {plural(trained, 'epoch')} on {backend.name}")
    print(f"checkpoints: {writer.last}" + (f", {writer.best}" if best else ""))
    print(f"curves: {plot}" if plot else f"curves: not drawn ({install_command('plot')} for a PNG)")
