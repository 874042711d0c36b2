"""Scale helpers, granularities (shapes, expand, transpose), per-block amax and Fp8Tensor.

Expected values are computed here from the definitions (numpy float32 arithmetic for the
scale formula, float64 ``math.frexp`` for exponents), not read back from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import portable_fp8 as fp8
from portable_fp8.dispatch.registry import get_backend
from portable_fp8.errors import Fp8TypeError, Fp8ValueError
from portable_fp8.numerics.formats import FORMATS, element_formats
from portable_fp8.numerics.granularity import (
    GRANULARITIES,
    Granularity,
    as_2d_shape,
    get_granularity,
)
from portable_fp8.numerics.scaling import (
    check_margin,
    max_margin,
    mx_scale_from_amax,
    reciprocal,
    round_scale_to_choices,
    round_scale_to_power_of_two,
    scale_from_amax,
)

AMAXES = [1e-3, 0.1, 0.5, 1.0, 3.0, 448.0, 1000.0, 57344.0, 3.4e38]


# -- scales from amax -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", element_formats(), ids=lambda f: f.name)
@pytest.mark.parametrize("margin", [0, 1, 3])
def test_scale_from_amax_is_max_over_amax_in_fp32(fmt, margin):
    # One correctly rounded fp32 division (torch's `float / tensor` is a reciprocal and a
    # multiply, two roundings: 240 / 448 came out one ulp high before scaling.py was fixed).
    amax = torch.tensor(AMAXES, dtype=torch.float32)
    got = scale_from_amax(amax, fmt, margin=margin)
    expected = np.float32(fmt.max) / amax.numpy() / np.float32(2.0**margin)  # fp32 division
    assert got.dtype == torch.float32
    assert np.array_equal(got.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("fmt", element_formats(), ids=lambda f: f.name)
def test_degenerate_amax_gives_scale_one(fmt):
    amax = torch.tensor([0.0, math.inf, math.nan, -0.0])
    assert scale_from_amax(amax, fmt).tolist() == [1.0] * 4
    assert scale_from_amax(amax, fmt, power_of_two=True).tolist() == [1.0] * 4
    assert mx_scale_from_amax(amax, fmt).tolist() == [1.0] * 4


def test_tiny_amax_scale_clamped_to_largest_fp32_power_of_two():
    # 448 / 1e-40 overflows fp32; the scale is clamped to 2**127 (finite, a power of two).
    got = scale_from_amax(torch.tensor([1e-40, 1e-45]), FORMATS["e4m3fn"])
    assert got.tolist() == [2.0**127, 2.0**127]


@pytest.mark.parametrize("fmt", element_formats(), ids=lambda f: f.name)
def test_power_of_two_scale_rounds_down(fmt):
    rng = np.random.default_rng(0)
    amax = torch.from_numpy(np.exp2(rng.uniform(-20, 20, 1000)).astype(np.float32))
    plain = scale_from_amax(amax, fmt)
    p2 = scale_from_amax(amax, fmt, power_of_two=True)
    for s, q in zip(plain.tolist(), p2.tolist(), strict=True):
        mant, _ = math.frexp(q)
        assert mant == 0.5  # a power of two
        assert q <= s < 2 * q  # the largest one not above the plain scale
    # So the scaled amax still fits: amax * scale <= max (in exact arithmetic).
    assert (amax.double() * p2.double() <= fmt.max).all()


def test_round_scale_to_power_of_two_exact_powers_stay():
    s = torch.tensor([1.0, 2.0**-20, 2.0**100, 3.0, 0.75])
    assert round_scale_to_power_of_two(s).tolist() == [1.0, 2.0**-20, 2.0**100, 2.0, 0.5]


def test_choices_round_down_else_smallest():
    choices = (2.0**-4, 1.0, 2.0**4, 2.0**8)  # Gaudi2's hardware-aligned set
    s = torch.tensor([20.0, 16.0, 15.9, 1.0, 0.5, 0.01, 300.0, 2.0**8])
    got = round_scale_to_choices(s, choices)
    assert got.tolist() == [16.0, 16.0, 1.0, 1.0, 2.0**-4, 2.0**-4, 256.0, 256.0]
    via = scale_from_amax(torch.tensor([10.0]), FORMATS["e4m3_gaudi2"], choices=choices)
    assert via.tolist() == [16.0]  # 240 / 10 = 24 -> 16


@pytest.mark.parametrize(
    ("name", "emax"),
    [("e4m3fn", 8), ("e5m2", 15), ("e4m3fnuz", 7), ("e5m2fnuz", 15), ("e4m3_gaudi2", 7)],
)
def test_mx_scale_is_ocp_shared_exponent(name, emax):
    """OCP MX v1.0: X = 2**(floor(log2 amax) - emax_elem); our scale is 1 / X."""
    fmt = FORMATS[name]
    assert math.frexp(fmt.max)[1] - 1 == emax  # emax_elem: exponent of the largest normal
    rng = np.random.default_rng(1)
    amax = np.exp2(rng.uniform(-60, 60, 2000)).astype(np.float32)
    amax = np.concatenate([amax, np.float32([1.0, 2.0, 0.75, fmt.max])])
    got = mx_scale_from_amax(torch.from_numpy(amax), fmt).numpy().astype(np.float64)
    for a, s in zip(amax.astype(np.float64), got, strict=True):
        floor_log2 = math.frexp(a)[1] - 1
        assert s == 2.0 ** (emax - floor_log2)
        assert 2.0**emax <= a * s < 2.0 ** (emax + 1)


def test_mx_scale_exponent_is_clamped_to_e8m0_range():
    fmt = FORMATS["e4m3fn"]
    got = mx_scale_from_amax(torch.tensor([1e-44, 3e38]), fmt)
    assert got.tolist() == [2.0**127, 2.0 ** (8 - 127)]


def test_reciprocal_is_fp32_division():
    s = torch.tensor([3.0, 0.1, 448.0, 2.0**-126], dtype=torch.float64)
    got = reciprocal(s)
    assert got.dtype == torch.float32
    expected = np.float32(1.0) / s.numpy().astype(np.float32)
    assert np.array_equal(got.numpy(), expected)


# -- granularities --------------------------------------------------------------------------

_SHAPES_300x260 = {
    "tensorwise": (),
    "rowwise": (300, 1),
    "columnwise": (1, 260),
    "block_1x128": (300, 3),
    "block_128x128": (3, 3),
    "block_128x1": (3, 260),
    "mx_1x32": (300, 9),
    "mx_32x1": (10, 260),
}


def test_named_granularities():
    assert set(GRANULARITIES) == set(_SHAPES_300x260)
    assert GRANULARITIES["mx_1x32"].power_of_two and GRANULARITIES["mx_32x1"].power_of_two
    assert not GRANULARITIES["block_1x128"].power_of_two


@pytest.mark.parametrize("name", sorted(_SHAPES_300x260))
def test_scale_shape_and_expand(name):
    g = get_granularity(name)
    shape = (300, 260)
    assert g.scale_shape(shape) == _SHAPES_300x260[name]
    n = math.prod(_SHAPES_300x260[name])
    scale = torch.arange(n, dtype=torch.float32).reshape(_SHAPES_300x260[name])
    full = g.expand(scale, shape)
    br = shape[0] if g.rows == -1 else g.rows
    bc = shape[1] if g.cols == -1 else g.cols
    i = torch.arange(shape[0]).reshape(-1, 1) // br
    j = torch.arange(shape[1]).reshape(1, -1) // bc
    expected = scale.reshape(-1)[i * (scale.shape[-1] if scale.dim() else 1) + j]
    assert torch.equal(full.expand(shape), expected.expand(shape))


def test_whole_dimension_blocks_of_empty_tensors():
    # "-1" is one block along that dimension even when it is empty (found by fuzzing: a
    # rowwise (3, 0) operand had (3, 0) scales, which torch._scaled_mm rejects).
    assert get_granularity("rowwise").scale_shape((3, 0)) == (3, 1)
    assert get_granularity("columnwise").scale_shape((0, 5)) == (1, 5)
    assert get_granularity("block_1x128").scale_shape((3, 0)) == (3, 0)
    assert get_granularity("mx_32x1").scale_shape((0, 4)) == (0, 4)
    q = fp8.quantize(torch.empty(3, 0), granularity="rowwise", backend="reference")
    assert q.scale.tolist() == [[1.0]] * 3


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("rowwise", "columnwise"),
        ("block_1x128", "block_128x1"),
        ("mx_1x32", "mx_32x1"),
        ("block_128x128", "block_128x128"),
        ("tensorwise", "tensorwise"),
    ],
)
def test_transposed(a, b):
    ga, gb = get_granularity(a), get_granularity(b)
    assert ga.transposed() is gb and gb.transposed() is ga


def test_transposed_of_unnamed_block():
    g = Granularity("custom", 2, 3)
    t = g.transposed()
    assert (t.rows, t.cols, t.name) == (3, 2, "custom^T")
    assert (t.transposed().rows, t.transposed().cols) == (2, 3)


def test_unknown_granularity_lists_known():
    with pytest.raises(Fp8ValueError) as info:
        get_granularity("block_64x64")
    for name in GRANULARITIES:
        assert name in str(info.value)


def test_as_2d_shape():
    assert as_2d_shape(()) == (1, 1)
    assert as_2d_shape((5,)) == (1, 5)
    assert as_2d_shape((2, 3, 4)) == (6, 4)
    assert as_2d_shape((0, 7)) == (0, 7)


@pytest.mark.parametrize("name", sorted(_SHAPES_300x260))
def test_per_block_amax(name):
    """Backend.amax per block, against slicing each block; NaN only in its own block."""
    g = get_granularity(name)
    x = torch.randn(300, 260, generator=torch.Generator().manual_seed(2)) * 10
    x[7, 200] = math.nan
    got = get_backend("reference").amax(x, g)
    shape = g.scale_shape((300, 260))
    assert tuple(got.shape) == shape
    br = 300 if g.rows == -1 else g.rows
    bc = 260 if g.cols == -1 else g.cols
    flat = got.reshape(-1)
    cols = 1 if not shape else shape[1]
    for bi in range(-(-300 // br)):
        for bj in range(-(-260 // bc)):
            block = x[bi * br : (bi + 1) * br, bj * bc : (bj + 1) * bc]
            value = flat[bi * cols + bj].item()
            if block.isnan().any():
                assert math.isnan(value)
            else:
                assert value == block.abs().max().item()


# -- Fp8Tensor ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "block_1x128", "mx_1x32"])
def test_fp8_tensor_transpose_is_a_view_with_transposed_scales(name):
    x = torch.randn(130, 257, generator=torch.Generator().manual_seed(3))
    q = fp8.quantize(x, "e4m3fn", granularity=name, backend="reference")
    t = q.t()
    assert t.data.data_ptr() == q.data.data_ptr()  # no copy
    assert t.shape == (257, 130)
    assert t.granularity is q.granularity.transposed()
    assert tuple(t.scale.shape) == tuple(reversed(q.scale.shape))
    d = fp8.dequantize(q, backend="reference")
    dt = fp8.dequantize(t, backend="reference")
    assert torch.equal(dt, d.t())
    assert torch.equal(t.expanded_scale_inv(), q.expanded_scale_inv().t())
    assert t.t().granularity is q.granularity


def test_fp8_tensor_t_needs_2d():
    q = fp8.quantize(torch.ones(2, 3, 4), "e4m3fn", backend="reference")
    with pytest.raises(ValueError, match="2-D"):
        q.t()


def test_fp8_tensor_scale_inv_and_repr():
    q = fp8.quantize(torch.tensor([[1.0, -3.0]]), "e5m2", scale=3.0, backend="reference")
    assert q.scale_inv.item() == np.float32(1.0) / np.float32(3.0)
    assert "e5m2" in repr(q) and "tensorwise" in repr(q)


# -- the margin's range -----------------------------------------------------------------------


def test_max_margin_is_floor_log2_max_minus_two():
    expected = {"e4m3fn": 6, "e5m2": 13, "e4m3fnuz": 5, "e5m2fnuz": 13, "e4m3_gaudi2": 5}
    assert {f.name: max_margin(f) for f in element_formats()} == expected


@pytest.mark.parametrize("fmt", element_formats(), ids=lambda f: f.name)
def test_every_allowed_margin_keeps_every_scale_a_normal_fp32(fmt):
    # The extremes of the amax range: the largest finite fp32 gives the smallest scale.
    fmax = torch.finfo(torch.float32)
    amax = torch.tensor([fmax.max, fmax.max / 3, 1.0, fmax.tiny, 2.0**-149])
    for margin in range(max_margin(fmt) + 1):
        for p2 in (False, True):
            s = scale_from_amax(amax, fmt, margin=margin, power_of_two=p2)
            assert bool(((s >= fmax.tiny) & (s <= 2.0**127)).all()), (margin, s)
            assert torch.isfinite(torch.reciprocal(s)).all()
    # One more and the largest amax gets a subnormal scale: the bound is tight.
    one_more = torch.full((), fmt.max, dtype=torch.float32) / amax[0] / 2.0 ** (max_margin(fmt) + 1)
    assert float(one_more) < fmax.tiny


@pytest.mark.parametrize(
    ("margin", "exc"),
    [(None, Fp8TypeError), ("1", Fp8TypeError), (1.0, Fp8TypeError), (True, Fp8TypeError),
     (-1, Fp8ValueError), (14, Fp8ValueError), (2000, Fp8ValueError)],
)  # fmt: skip
def test_scale_from_amax_rejects_bad_margins(margin, exc):
    with pytest.raises(exc, match="margin"):
        scale_from_amax(torch.ones(2), FORMATS["e5m2"], margin=margin)
    with pytest.raises(exc, match="margin"):
        check_margin(margin, FORMATS["e5m2"])
