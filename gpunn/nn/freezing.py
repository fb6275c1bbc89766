"""Freezing: ``layer.trainable = False`` and ``model.freeze(...)`` keep parameters out of the update.

A parameter's ``trainable`` flag is read by the optimizer at every step: its one fused update skips
frozen parameters, their state and their step count (``optim.segments``), so a frozen parameter stays
bit-identical, weight decay and momentum included, its bias correction later counts its own updates
only, and a change takes effect at the next step without binding the optimizer again.
"""

from __future__ import annotations

import numbers

from gpunn import checks


def is_trainable(layer) -> bool:
    """True unless every parameter of ``layer`` (nested layers' too) is frozen; a layer without
    parameters counts as trainable, as in Keras."""
    parameters = layer.parameters()
    return not parameters or any(parameter.trainable for parameter in parameters)


def set_trainable(layers, value, owner: str = "trainable") -> None:
    """Set every parameter of ``layers`` trainable (True) or frozen (False)."""
    value = checks.flag(owner, "trainable", value)
    for layer in layers:
        for parameter in layer.parameters():
            parameter.trainable = value


def select_layers(model, which, owner: str) -> list:
    """The layers ``which`` names in ``model``: indices into ``model.layers`` (negative ones count from
    the end) or layers of the model (nested ones too); none names every layer."""
    if not which:
        return list(model.layers)
    layers, held = [], model.all_layers()
    for item in which:
        if isinstance(item, bool) or not (isinstance(item, numbers.Integral) or hasattr(item, "parameters")):
            raise TypeError(f"{owner}: name layers by index into model.layers or by the layer itself, "
                            f"got {type(item).__name__} {item!r:.40}")
        if isinstance(item, numbers.Integral):
            if not -len(model.layers) <= item < len(model.layers):
                raise ValueError(f"{owner}: layer index {item} is out of range for a model of "
                                 f"{len(model.layers)} layers")
            layers.append(model.layers[item])
        elif any(item is layer for layer in held):
            layers.append(item)
        else:
            raise ValueError(f"{owner}: {item!r} is not a layer of this model")
    return layers


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, frozen) numbers of parameter elements, as Keras's summary counts them."""
    trainable = sum(p.size for p in model.parameters() if p.trainable)
    return trainable, sum(p.size for p in model.parameters()) - trainable
