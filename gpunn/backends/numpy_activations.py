"""The NumPy twins of ``kernels/activations.cuh``: one forward and one slope per registry entry.

``forward(x, *values)`` overwrites ``x`` with f(x); ``slope(saved, scratch, *values)`` returns
f'(·) from what backward reads (the output or the pre-activation, as the registry says), built
in ``scratch`` where it can. Formulas and constants are the kernels', term for term.
"""

from __future__ import annotations

import numpy as np

# erf on the host: NumPy has none, and math.erf one element at a time is ~100 ns per value.
# |x| < 2:  erf(x) = x·A(x²/2 − 1);  2 ≤ |x| < 6:  erf(|x|) = 1 − exp(−x²)·B((|x| − 4)/2);
# |x| ≥ 6:  ±1 (erfc(6) < 2^−55). A and B are Chebyshev-economised polynomials (monomial, highest
# degree first) fitted to erf(√t)/√t and erfc(x)·exp(x²) with 50-digit mpmath values
# (tests/kernels/test_numpy_erf.py refits them); within 3 ulp of math.erf everywhere.
_ERF_SMALL = (1.7169664781829218e-11, -1.4817570672621855e-10, 1.1333579234901372e-09,
              -8.603632056264318e-09, 6.119703939808185e-08, -4.045225228502215e-07,
              2.4758013291882113e-06, -1.3946266839339954e-05, 7.180100865470197e-05,
              -0.0003351435355952211, 0.0014050914236176134, -0.005234875835829469,
              0.017128344571819113, -0.04866277744917855, 0.11947913860985182, -0.2611118609312449,
              0.674933236039655)
_ERFC_SCALED = (2.289129018275158e-09, -6.7237580409382605e-09, 7.51985535709463e-09,
                -2.0848628708497824e-08, 8.400637713845437e-08, -2.3270040011180073e-07,
                6.024756248132528e-07, -1.618701135767133e-06, 4.314825741710838e-06,
                -1.1275073990509855e-05, 2.9011515082962187e-05, -7.352008568773549e-05,
                0.00018330777006575385, -0.000449327170817165, 0.0010819615443804634,
                -0.002557084145437522, 0.005925639504306034, -0.013449456615099843,
                0.029861732979897134, -0.06476701219002746, 0.13699945762506138)
# float32 takes one branch: erf(x) = tanh(x·G(x²)), where G, of degree 7 in x², is a least-squares
# fit to atanh(erf(x))/x on (0, 4] with G(0) = 2/√π, weighted by how much erf moves, relatively, per
# unit of x·G (tanh flattens any error where erf nears ±1). Nothing is clamped: beyond |x| = 4, G
# grows and x·G(x²) > 10, so tanh rounds to ±1 as erf does in float32 (±∞ included). Horner's
# passes and tanh are SIMD ufuncs: a fifth of the cost of a two-branch evaluation; within 4 ulp of
# math.erf (tests/kernels/test_numpy_erf.py refits G).
_ERF_TANH_32 = (4.749570013658804e-09, 4.1775980824119644e-08, -4.893753332043424e-06, 8.48472537628983e-05,
                -0.0006148959369168981, -0.0001958048228068159, 0.10277033738562487, 1.1283791670955126)
_SQRT1_2, _INV_SQRT_2PI, _SQRT_2_OVER_PI, _KAPPA = (0.70710678118654752440, 0.39894228040143267794,
                                                     0.79788456080286535588, 0.044715)
# GELU's erf(x/√2) = tanh(x·K(x²)) with K(s) = G(s/2)/√2: the same fit, with no pass to scale x.
_ERF_SQRT1_2_TANH_32 = tuple(c * 0.5 ** (len(_ERF_TANH_32) - 1 - i) * _SQRT1_2 for i, c in enumerate(_ERF_TANH_32))


def _horner(coefficients, u):
    return _horner_into(coefficients, u, np.empty_like(u))


def _float32_pieces(function, *arrays):
    """``function(*pieces, square, term)`` over cache-sized pieces of same-shaped float32 arrays,
    with two float32 scratch pieces: about twenty passes a piece, each in the cache."""
    flats = [a.reshape(-1) for a in arrays]
    square, term = np.empty(_PIECE, np.float32), np.empty(_PIECE, np.float32)
    with np.errstate(over="ignore"):  # x² and x·G(x²) overflow to ∞ for huge x, and tanh(±∞) = ±1
        for start in range(0, flats[0].size, _PIECE):
            pieces = [flat[start:start + _PIECE] for flat in flats]
            size = pieces[0].size
            function(*pieces, square[:size], term[:size])
    return arrays[-1]


_PIECE = 1 << 16


def _tanh_form(x, coefficients, square, out):
    """tanh(x·P(x²)) into ``out``, P's coefficients highest degree first; x² left in ``square``.
    NaN stays NaN, −0 stays −0."""
    np.multiply(x, x, out=square)
    _horner_into(coefficients, square, out)
    out *= x
    return np.tanh(out, out=out)


def _erf32(x):
    """erf of a float32 array in float32 arithmetic."""
    return _float32_pieces(lambda piece, out, square, _: _tanh_form(piece, _ERF_TANH_32, square, out),
                           x, np.empty(x.shape, np.float32))


def _horner_into(coefficients, u, out):
    """The polynomial (highest degree first) at ``u``, into ``out``, one multiply and one add a term."""
    np.multiply(u, u.dtype.type(coefficients[0]), out=out)
    out += u.dtype.type(coefficients[1])
    for coefficient in coefficients[2:]:
        out *= u
        out += u.dtype.type(coefficient)
    return out


def erf(x):
    """The error function, elementwise, in x's dtype (float32 arithmetic for float32 arrays)."""
    if np.asarray(x).dtype == np.float32:
        return _erf32(np.asarray(x))
    x64 = np.asarray(x, dtype=np.float64)
    size = np.abs(x64)
    result = np.copysign(np.ones_like(x64), x64)  # |x| ≥ 6, ±Inf
    small = size < 2
    values = x64[small]
    result[small] = values * _horner(_ERF_SMALL, values * values * 0.5 - 1)
    middle = (size >= 2) & (size < 6)
    values = size[middle]
    with np.errstate(under="ignore"):
        tail = np.exp(-values * values) * _horner(_ERFC_SCALED, (values - 4) * 0.5)
    result[middle] = np.copysign(1 - tail, x64[middle])
    result[np.isnan(x64)] = np.nan
    return result.astype(np.asarray(x).dtype, copy=False)


def _sigmoid_inplace(x):
    """Stable logistic, exp(min(x, 0)) / (1 + exp(−|x|)): nothing overflows, ±1000 gives 0 or 1,
    both tails keep full relative precision, NaN stays NaN. The same formula as the CUDA kernel."""
    denominator = np.abs(x)
    np.negative(denominator, out=denominator)
    with np.errstate(under="ignore"):  # exp(−1000) = 0 is the right answer, not an event
        np.exp(denominator, out=denominator)
        np.minimum(x, 0, out=x)
        np.exp(x, out=x)
    denominator += 1
    return np.divide(x, denominator, out=x)


def _nothing(x):
    return x


def _relu_forward(x):
    return np.maximum(x, 0, out=x)


def _tanh_forward(x):
    return np.tanh(x, out=x)


def _gelu_forward(x):
    if x.dtype == np.float32:
        _float32_pieces(lambda piece, square, term: _gelu32_forward_piece(piece, term, square), x)
        return x
    return _gelu_forward_keeping(x, np.empty_like(x))


def _gelu_forward_keeping(x, cdf):
    """GELU in place, with Φ(x) left in ``cdf`` for the slope."""
    if x.dtype == np.float32:
        _float32_pieces(lambda piece, cdf_piece, square, _: _gelu32_forward_piece(piece, cdf_piece, square), x, cdf)
        return x
    np.copyto(cdf, erf(x * x.dtype.type(_SQRT1_2)))
    cdf += 1
    cdf *= 0.5
    return np.multiply(x, cdf, out=x)


def _gelu32_forward_piece(x, cdf, square):
    return np.multiply(x, _normal_cdf32(x, square, cdf), out=x)


def _normal_cdf32(x, square, out):
    """Φ(x) = (1 + erf(x/√2))/2 into ``out``, float32, erf from the tanh form's scaled fit."""
    _tanh_form(x, _ERF_SQRT1_2_TANH_32, square, out)
    out += 1
    out *= 0.5
    return out


def _gelu_tanh_forward(x):
    inner = x * x
    inner *= x
    inner *= _KAPPA
    inner += x
    inner *= _SQRT_2_OVER_PI
    np.tanh(inner, out=inner)
    inner += 1
    x *= 0.5
    return np.multiply(x, inner, out=x)


def _silu_forward(x):
    with np.errstate(over="ignore"):  # exp(1000) = ∞ gives −0, the limit
        denominator = np.exp(-x)
    denominator += 1
    return np.divide(x, denominator, out=x)


def _leaky_relu_forward(x, negative_slope):
    return np.multiply(x, np.where(x > 0, 1.0, negative_slope).astype(x.dtype, copy=False), out=x)


def _softplus_forward(x, beta, threshold):
    scaled = x * beta
    linear = scaled > threshold
    smooth = np.abs(scaled)
    np.negative(smooth, out=smooth)
    with np.errstate(under="ignore"):
        np.exp(smooth, out=smooth)
    np.log1p(smooth, out=smooth)
    smooth += np.maximum(scaled, 0)
    smooth /= beta
    np.copyto(x, smooth, where=~linear)
    return x


def _ones_slope(saved, scratch):
    scratch[...] = 1
    return scratch


def _sigmoid_slope(y, scratch):
    np.subtract(1, y, out=scratch)
    return np.multiply(scratch, y, out=scratch)


def _tanh_slope(y, scratch):
    np.multiply(y, y, out=scratch)
    return np.subtract(1, scratch, out=scratch)


def _relu_slope(y, scratch):
    return np.greater(y, 0, out=scratch, casting="unsafe")


def _gelu_slope(x, scratch):
    if x.dtype == np.float32:
        return _float32_pieces(_gelu32_slope_piece, x, scratch)
    cdf = erf(x * x.dtype.type(_SQRT1_2))
    cdf += 1
    cdf *= 0.5
    return _gelu_slope_kept(x, cdf, scratch)


def _gelu32_slope_piece(x, slope, square, cdf):
    return _gelu_slope_kept(x, _normal_cdf32(x, square, cdf), slope)


def _gelu_slope_kept(x, cdf, scratch):
    """Φ(x) + x·φ(x), with Φ(x) given (kept from the forward): one exp and five cheap passes."""
    np.multiply(x, x, out=scratch)
    scratch *= -0.5
    np.exp(scratch, out=scratch)
    scratch *= _INV_SQRT_2PI
    scratch *= x
    return np.add(scratch, cdf, out=scratch)


def _gelu_tanh_slope(x, scratch):
    squared = x * x
    t = squared * x
    t *= _KAPPA
    t += x
    t *= _SQRT_2_OVER_PI
    np.tanh(t, out=t)
    np.multiply(t, t, out=scratch)
    np.subtract(1, scratch, out=scratch)  # the tanh slope; where it is 0 the right term is 0
    squared *= 3 * _KAPPA
    squared += 1
    squared *= _SQRT_2_OVER_PI
    saturated = scratch == 0
    scratch *= squared
    scratch *= x
    scratch *= 0.5
    scratch[saturated] = 0
    t += 1
    t *= 0.5
    return np.add(t, scratch, out=scratch)


def _silu_slope(x, scratch):
    with np.errstate(over="ignore"):
        np.exp(-x, out=scratch)
    scratch += 1
    np.divide(1, scratch, out=scratch)  # σ(x), as torch computes it
    term = 1 - scratch
    term *= x
    term += 1
    return np.multiply(scratch, term, out=scratch)


def _leaky_relu_slope(x, scratch, negative_slope):
    scratch[...] = negative_slope
    np.copyto(scratch, 1, where=x > 0)
    return scratch


def _softplus_slope(x, scratch, beta, threshold):
    np.multiply(x, beta, out=scratch)
    linear = scratch > threshold
    _sigmoid_inplace(scratch)
    np.copyto(scratch, 1, where=linear)
    return scratch


#: Activations whose fused forward keeps part of the slope on this backend (Dense hands over a
#: ``kept`` buffer): name -> (forward(x, kept, *values), slope(saved, kept, scratch, *values)).
KEEPING = {"gelu": (_gelu_forward_keeping, _gelu_slope_kept)}

TWINS = {
    "identity": (_nothing, _ones_slope),
    "sigmoid": (_sigmoid_inplace, _sigmoid_slope),
    "tanh": (_tanh_forward, _tanh_slope),
    "relu": (_relu_forward, _relu_slope),
    "gelu": (_gelu_forward, _gelu_slope),
    "gelu_tanh": (_gelu_tanh_forward, _gelu_tanh_slope),
    "silu": (_silu_forward, _silu_slope),
    "leaky_relu": (_leaky_relu_forward, _leaky_relu_slope),
    "softplus": (_softplus_forward, _softplus_slope),
}
