"""Fp8Tensor: construction checks, the stored reciprocal, transposes, the second scale level."""

from __future__ import annotations

import pytest
import torch
from portable_fp8.backends.cpu import CpuBackend

import portable_fp8 as fp8
from portable_fp8.errors import Fp8TypeError, Fp8ValueError, NotSupportedError
from portable_fp8.numerics.cast import codes_of, codes_to_float
from portable_fp8.numerics.formats import E4M3FN, E5M2
from portable_fp8.numerics.granularity import COLUMNWISE, ROWWISE, TENSORWISE, BLOCK_1x128
from portable_fp8.numerics.scaling import reciprocal
from portable_fp8.numerics.tensor import Fp8Tensor


def _codes(shape, fmt=E4M3FN) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 0x7E, shape, generator=gen, dtype=torch.uint8).view(fmt.torch_dtype)


def test_reciprocal_is_computed_once_at_construction():
    scale = torch.tensor([[2.0], [3.0]])
    t = Fp8Tensor(_codes((2, 4)), scale, E4M3FN, ROWWISE)
    assert torch.equal(t.scale_inv, reciprocal(scale))
    assert t.scale_inv is t.scale_inv  # stored, not recomputed per access
    given = reciprocal(scale)
    assert Fp8Tensor(_codes((2, 4)), scale, E4M3FN, ROWWISE, given).scale_inv is given


def test_uint8_storage_is_accepted_for_every_format():
    t = Fp8Tensor(torch.zeros(4, 4, dtype=torch.uint8), torch.tensor(1.0), E5M2, TENSORWISE)
    assert t.data.dtype == torch.uint8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"data": torch.zeros(2, 4)}, Fp8TypeError, r"Fp8Tensor.data has dtype torch.float32.*"),
        ({"data": _codes((2, 4), E5M2)}, Fp8TypeError, r"data has dtype torch.float8_e5m2"),
        ({"data": [1, 2]}, Fp8TypeError, r"Fp8Tensor.data must be a tensor, got list"),
        ({"scale": torch.ones(2, 1, dtype=torch.float64)}, Fp8TypeError, r"scale has dtype"),
        ({"scale": torch.ones(1, 2)}, Fp8ValueError, r"scale has shape \(1, 2\).*needs \(2, 1\)"),
        ({"scale": 1.0}, Fp8TypeError, r"Fp8Tensor.scale must be a tensor, got float"),
        ({"format": "e4m3fn"}, Fp8TypeError, r"Fp8Tensor.format must be a Format, got str"),
        ({"granularity": "rowwise"}, Fp8TypeError, r"granularity must be a Granularity"),
        ({"scale_inv": torch.ones(2)}, Fp8ValueError, r"scale_inv has shape \(2,\)"),
        ({"global_scale": torch.ones(1)}, Fp8ValueError, r"global_scale has shape \(1,\)"),
        ({"global_scale": torch.tensor(2.0).half()}, Fp8TypeError, r"global_scale has dtype"),
        ({"global_scale_inv": torch.tensor(0.5)}, Fp8ValueError, r"without global_scale"),
    ],
)
def test_construction_rejects_bad_fields(kwargs, error, match):
    fields = {
        "data": _codes((2, 4)),
        "scale": torch.ones(2, 1),
        "format": E4M3FN,
        "granularity": ROWWISE,
    }
    fields.update(kwargs)
    with pytest.raises(error, match=match):
        Fp8Tensor(**fields)


def test_t_is_a_view_with_the_transposed_reciprocal():
    t = Fp8Tensor(_codes((4, 256)), torch.rand(4, 2) + 0.5, E4M3FN, BLOCK_1x128)
    tt = t.t()
    assert tt.granularity.name == "block_128x1"
    assert tt.data.data_ptr() == t.data.data_ptr()
    assert tt.scale_inv.data_ptr() == t.scale_inv.data_ptr()
    assert torch.equal(tt.scale_inv, t.scale_inv.t())
    assert tt.t().granularity is BLOCK_1x128


def test_t_of_a_non_2d_tensor_is_an_fp8_value_error():
    t = Fp8Tensor(_codes((2, 2, 4)), torch.tensor(1.0), E4M3FN, TENSORWISE)
    with pytest.raises(Fp8ValueError, match=r"needs a 2-D tensor, got shape \(2, 2, 4\)"):
        t.t()


def _two_level(x: torch.Tensor, gran, g: float) -> Fp8Tensor:
    q = fp8.quantize(x, "e4m3fn", granularity=gran, backend="reference")
    return Fp8Tensor(q.data, q.scale, q.format, q.granularity, q.scale_inv, torch.tensor(g))


def test_dequantize_with_a_global_scale_on_the_reference():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    t = _two_level(x, "rowwise", 3.0)
    one_level = fp8.dequantize(Fp8Tensor(t.data, t.scale, t.format, t.granularity))
    want = one_level * reciprocal(torch.tensor(3.0))  # fp32(fp32(data) * scale_inv) * g_inv
    assert torch.equal(fp8.dequantize(t, backend="reference"), want)


def _dequant64(t: Fp8Tensor) -> torch.Tensor:
    """The block-level value of ``t`` in float64 (exact), without the global level."""
    values = codes_to_float(codes_of(t.data), t.format).double()
    return values * t.granularity.expand(t.scale_inv.double(), tuple(t.shape))


def test_reference_gemm_with_global_scales():
    gen = torch.Generator().manual_seed(2)
    a = _two_level(torch.randn(8, 64, generator=gen), ROWWISE, 3.0)
    b = _two_level(torch.randn(16, 64, generator=gen), ROWWISE, 5.0).t()
    assert b.granularity is COLUMNWISE
    got = fp8.scaled_mm(a, b, out_dtype=torch.float32, backend="reference")
    deq_a, deq_b = _dequant64(a), _dequant64(b)  # exact: 4-bit x 24-bit significands
    g = float(reciprocal(torch.tensor(3.0))) * float(reciprocal(torch.tensor(5.0)))
    exact = (deq_a @ deq_b) * g  # float64: each op rounds at most 2**-53 relative
    # got = fp32(sum * g_a * g_b): one rounding to fp32 (2**-24 relative, nearest) of a
    # float64 value whose roundings (sums over K = 64 and two scalings) stay below
    # (K + 2) 2**-53 of sum |a||b| here and in `exact`; 2**-45 covers both with room.
    mag = (deq_a.abs() @ deq_b.abs()) * g
    tol = 2.0**-24 * exact.abs() + 2.0**-45 * mag
    assert ((got.double() - exact).abs() <= tol).all()
    one_level = fp8.scaled_mm(
        Fp8Tensor(a.data, a.scale, a.format, a.granularity),
        Fp8Tensor(b.data, b.scale, b.format, b.granularity),
        out_dtype=torch.float32,
        backend="reference",
    )
    assert not torch.equal(got, one_level)  # the global level is applied, not ignored


def test_backends_without_global_scales_refuse_them():
    gen = torch.Generator().manual_seed(3)
    a = _two_level(torch.randn(8, 64, generator=gen), TENSORWISE, 2.0)
    b = _two_level(torch.randn(16, 64, generator=gen), TENSORWISE, 2.0).t()
    assert not CpuBackend().capabilities.global_scale
    with pytest.raises(NotSupportedError, match="two-level"):
        fp8.scaled_mm(a, b, backend="cpu")
    with pytest.raises(NotSupportedError, match="two-level"):
        fp8.dequantize(a, backend="cpu")
