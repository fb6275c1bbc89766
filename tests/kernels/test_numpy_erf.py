"""The NumPy backend's erf (NumPy has none): against math.erf, tails included, and its
coefficients refitted from 50-digit values so that they cannot silently rot."""

import functools
import math

import numpy as np
import pytest

from gpunn.backends import numpy_activations


def ulps(got, expected):
    return np.abs(got - expected) / np.spacing(np.abs(expected))


def test_erf_matches_math_erf_within_3_ulp(rng):
    x = np.concatenate([rng.normal(size=20000) * 3, rng.uniform(-7, 7, 20000), np.linspace(-6.5, 6.5, 20001),
                        [0.0, -0.0, 1e-300, -1e-300, 5e-324, 1.999999999, 2.0, 5.999999, 6.0, 27.0, -27.0, 1e308]])
    expected = np.array([math.erf(v) for v in x])
    got = numpy_activations.erf(x)
    assert ulps(got, expected).max() <= 3
    assert np.signbit(numpy_activations.erf(np.array([-0.0])))[0]


def test_erf_edges_and_dtypes():
    got = numpy_activations.erf(np.array([np.inf, -np.inf, np.nan, 1000.0, -1000.0]))
    assert got[0] == 1 and got[1] == -1 and np.isnan(got[2]) and got[3] == 1 and got[4] == -1
    single = numpy_activations.erf(np.array([0.5, -3.0], np.float32))
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, [math.erf(0.5), math.erf(-3.0)], rtol=4 * 2.0 ** -23)


def test_float32_erf_matches_math_erf_within_4_ulp(rng):
    """float32 arrays take a float32 path (fewer terms, no float64 round trip)."""
    x = np.concatenate([rng.normal(size=20000) * 3, np.linspace(-5, 5, 20001),
                        [0.0, -0.0, 1e-30, 1.9999999, 2.0, 3.999, 4.0, 27.0, -27.0, 3e38],
                        np.geomspace(4, 1e30, 300), -np.geomspace(4, 1e30, 300)]).astype(np.float32)
    expected = np.array([math.erf(v) for v in x.astype(np.float64)])
    got = numpy_activations.erf(x)
    assert got.dtype == np.float32
    spacing = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    assert (np.abs(got - expected) / spacing).max() <= 4
    edges = numpy_activations.erf(np.array([np.inf, -np.inf, np.nan, -0.0], np.float32))
    assert edges[0] == 1 and edges[1] == -1 and np.isnan(edges[2]) and np.signbit(edges[3])


def _chebyfit_highest_first(mpmath, function, interval, degree):
    """mpmath.chebyfit's coefficients, highest degree first: mpmath 1.4 deprecates that order by
    default and takes ``asc=True``, which 1.3 does not know."""
    try:
        return list(mpmath.chebyfit(function, interval, degree, asc=True))[::-1]
    except TypeError:
        return list(mpmath.chebyfit(function, interval, degree))


def test_coefficients_are_the_fit_they_claim():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    chebyfit = functools.partial(_chebyfit_highest_first, mpmath)
    small = chebyfit(lambda u: (lambda t: mpmath.erf(mpmath.sqrt(t)) / mpmath.sqrt(t) if t > 0
                                       else 2 / mpmath.sqrt(mpmath.pi))((u + 1) * 2), [-1, 1], 17)
    tail = chebyfit(lambda u: (lambda v: mpmath.erfc(v) * mpmath.exp(v * v))(u * 2 + 4), [-1, 1], 21)
    assert tuple(float(c) for c in small) == numpy_activations._ERF_SMALL
    assert tuple(float(c) for c in tail) == numpy_activations._ERFC_SCALED


def test_float32_tanh_form_is_the_fit_it_claims():
    """G of erf(x) = tanh(x·G(x²)): weighted least squares to atanh(erf(x))/x on (0, 4], G(0) = 2/√π,
    each point weighted by (1 − erf²)·x/erf, how much erf moves relatively per unit of x·G."""
    top, degree = 4.0, len(numpy_activations._ERF_TANH_32) - 1
    x = np.linspace(0, top, 4001)[1:]
    erf, erfc = np.array([math.erf(v) for v in x]), np.array([math.erfc(v) for v in x])
    target = 0.5 * np.log((1 + erf) / erfc) / x - 2 / math.sqrt(math.pi)
    weight = (1 - erf * erf) * x / erf
    powers = np.vander((x / top) ** 2, degree + 1, increasing=True)[:, 1:]
    fitted, *_ = np.linalg.lstsq(powers * weight[:, None], target * weight, rcond=None)
    expected = [2 / math.sqrt(math.pi), *(fitted / (top * top) ** np.arange(1, degree + 1))]
    np.testing.assert_allclose(numpy_activations._ERF_TANH_32[::-1], expected, rtol=1e-9)
