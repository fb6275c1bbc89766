"""One family of argument validators (gpunn/checks.py): one rule and one message style for layers,
optimizers, schedules, fit and the callbacks. A wrong type is a TypeError and a value out of range a
ValueError, as in torch.optim; NumPy scalars are numbers everywhere Python numbers are."""

import math

import numpy as np
import pytest

import gpunn as gn
from gpunn import checks


@pytest.mark.parametrize("value", [0.25, 1, np.float32(0.25), np.float64(0.25), np.int64(1), np.float16(0.5)])
def test_numbers_of_any_real_type_are_accepted(value):
    assert checks.number("Owner", "x", value, low=0.0, high=1.0) == float(value)


@pytest.mark.parametrize("value", [True, np.bool_(True), "0.5", None, [0.5], 1j])
def test_anything_but_a_real_number_is_a_type_error_naming_owner_and_argument(value):
    with pytest.raises(TypeError, match="Owner: x must be a number, got"):
        checks.number("Owner", "x", value)


@pytest.mark.parametrize("value,bounds,interval", [
    (1.0, dict(low=0.0, high=1.0, high_open=True), r"\[0, 1\)"),
    (0.0, dict(low=0.0, low_open=True), r"\(0, inf\)"),
    (-0.5, dict(low=0.0), r"\[0, inf\)"),
    (math.nan, dict(low=0.0), r"\[0, inf\)"),
    (math.inf, dict(low=0.0), r"\[0, inf\)"),
])
def test_out_of_range_is_a_value_error_naming_the_interval(value, bounds, interval):
    with pytest.raises(ValueError, match=rf"Owner: x must lie in {interval} \(a finite number\), got"):
        checks.number("Owner", "x", value, **bounds)


def test_an_unbounded_number_only_has_to_be_finite():
    assert checks.number("Owner", "x", -1e300) == -1e300
    with pytest.raises(ValueError, match="Owner: x must be a finite number, got nan"):
        checks.number("Owner", "x", float("nan"))


@pytest.mark.parametrize("value,error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                         ("3", TypeError), (None, TypeError)])
def test_counts(value, error):
    with pytest.raises(error, match="Owner: n must be an int >= 1"):
        checks.count("Owner", "n", value)
    assert checks.count("Owner", "n", np.int32(3)) == 3 and type(checks.count("Owner", "n", np.int32(3))) is int


@pytest.mark.parametrize("value", [-1, 1.5, True, "7", 2**64])
def test_seeds_are_refused_alike_whatever_is_wrong(value):
    with pytest.raises(ValueError, match="Owner: seed must be None, an int >= 0"):
        checks.seed("Owner", value, below=2**64)
    assert checks.seed("Owner", None) is None and checks.seed("Owner", np.uint32(7)) == 7


@pytest.mark.parametrize("value", ["False", 0, 1, None])
def test_flags_are_true_or_false_not_truthy(value):
    with pytest.raises(TypeError, match="Owner: f must be True or False"):
        checks.flag("Owner", "f", value)
    assert checks.flag("Owner", "f", np.bool_(False)) is False


@pytest.mark.parametrize("make", [
    lambda v: gn.LeakyReLU(negative_slope=v(0.2)),
    lambda v: gn.Softplus(beta=v(1.5), threshold=v(10)),
    lambda v: gn.Dropout(v(0.2), seed=np.int64(3)),
    lambda v: gn.LayerNorm(np.int64(4), eps=v(1e-5)),
    lambda v: gn.EarlyStopping(patience=np.int32(2), min_delta=v(0.001)),
    lambda v: gn.BCELoss(eps=v(1e-6)),
    lambda v: gn.SGD(lr=v(0.1), momentum=v(0.9)),
    lambda v: gn.Adam(lr=v(0.01), betas=(v(0.9), v(0.999)), eps=v(1e-8), weight_decay=v(0.0)),
    lambda v: gn.schedules.CosineDecay(v(0.1), np.int64(10), warmup_steps=np.int64(2)),
    lambda v: gn.schedules.StepDecay(v(0.1), step_size=np.int16(3), gamma=v(0.5)),
])
@pytest.mark.parametrize("kind", [np.float32, np.float64])
def test_numpy_scalars_are_numbers_in_every_constructor(make, kind):
    """The earlier refusals read "must be a finite number, got np.float32(0.2)": self-contradicting."""
    make(kind)


def test_the_validators_are_the_only_number_rules_in_the_library():
    """Nothing else spells out a number rule by hand (isinstance(x, (int, float)) refuses NumPy scalars)."""
    from pathlib import Path

    package = Path(checks.__file__).resolve().parent
    offenders = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "isinstance(" in line and "(int, float)" in line]
    assert not offenders, offenders
