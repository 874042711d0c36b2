"""The ``gaudi`` backend's adapter, checked against a stand-in of the bridge ops (NOT hardware).

The stand-in (tests/_gaudi_standin) implements ``hpu::cast_to_fp8_v2``, ``hpu::cast_from_fp8``
and ``hpu::fp8_gemm_v2`` with the semantics documented in docs/notes/gaudi_ops.md. These
tests check that the adapter maps our arguments onto those semantics (scale direction, scale
shapes, transposes, output dtypes, rounding flag, fused amax) so that the results equal the
reference backend's, and that the backend declares and refuses what it should. Every
expected number is derived from the format definitions, not read back from the backend.
"""

from __future__ import annotations

import sys

import _gaudi_standin as standin
import pytest
import torch
from _gaudi_standin import ops as standin_ops
from portable_fp8.backends.gaudi import (
    GAUDI2_HW_ALIGNED_SCALES,
    GaudiBackend,
    HabanaBridge,
    gaudi_capabilities,
)

import portable_fp8 as fp8
from portable_fp8.numerics.formats import get_format
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound
from portable_fp8.numerics.scaling import reciprocal

pytestmark = pytest.mark.skipif(
    standin.real_bridge_present(), reason="a real habana_frameworks is installed"
)


@pytest.fixture(autouse=True)
def _standin_off_afterwards():
    """Later tests must not find the fake habana_frameworks on sys.path."""
    yield
    standin.uninstall()


GENERATIONS = ("gaudi2", "gaudi3")
E4M3 = {"gaudi2": "e4m3_gaudi2", "gaudi3": "e4m3fn"}


@pytest.fixture(params=GENERATIONS)
def gen(request):
    return request.param


@pytest.fixture
def backend(gen, monkeypatch):
    """The real GaudiBackend over the stand-in, registered as ``gaudi-standin``."""
    b = standin.standin_backend(gen)
    standin.register_backend(b, monkeypatch.setitem)
    standin_ops.clear_log()
    yield b
    standin_ops.set_generation("gaudi2")


def _last(op: str) -> dict:
    calls = [args for name, args in standin_ops.calls() if name == op]
    assert calls, f"the adapter never called hpu::{op}"
    return calls[-1]


def _codes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def _all_bf16() -> torch.Tensor:
    return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


# -- availability and detection ----------------------------------------------------------------


def _hide_bridge(monkeypatch) -> None:
    """Make every ``habana_frameworks`` import fail, as on a machine without the stack."""
    for key in [k for k in sys.modules if k.split(".")[0] == "habana_frameworks"]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)


def test_unavailable_without_habana_frameworks_says_why_and_how(monkeypatch):
    _hide_bridge(monkeypatch)
    b = GaudiBackend()
    reason = b.unavailable_reason()
    assert reason is not None
    assert "habana_frameworks is not importable" in reason
    assert "not on PyPI" in reason and "docs/gaudi.md" in reason
    assert b.generation is None
    # Capabilities are still data to list: shown as Gaudi3 with a note that says so.
    assert "hpu" in b.capabilities.devices
    assert "not detected" in b.capabilities.notes[0]


def test_entry_point_registers_gaudi_unavailable_here(clean_registry, monkeypatch):
    _hide_bridge(monkeypatch)
    assert "gaudi" in clean_registry.list_backends()
    with pytest.raises(fp8.BackendUnavailableError, match="habana_frameworks"):
        clean_registry.get_backend("gaudi")


def test_no_hpu_present(monkeypatch):
    standin.install("gaudi2")
    import habana_frameworks.torch.hpu as hthpu

    monkeypatch.setattr(hthpu, "is_available", lambda: False)
    reason = GaudiBackend(HabanaBridge(device_type="cpu")).unavailable_reason()
    assert reason is not None and "no HPU" in reason


def test_first_generation_gaudi_has_no_fp8(monkeypatch):
    standin.install("gaudi2")
    import habana_frameworks.torch.utils.experimental as htexp

    monkeypatch.setattr(htexp, "_get_device_type", lambda: htexp.synDeviceType.synDeviceGaudi)
    reason = GaudiBackend(HabanaBridge(device_type="cpu")).unavailable_reason()
    assert reason is not None and "Gaudi2 or Gaudi3" in reason


def test_bridge_without_the_ops_is_unavailable():
    standin.install("gaudi3")
    bridge = HabanaBridge(device_type="cpu", namespace="pfp8_no_such_namespace")
    reason = GaudiBackend(bridge).unavailable_reason()
    assert reason is not None and "pfp8_no_such_namespace::fp8_gemm_v2" in reason


@pytest.mark.parametrize("name", ["GAUDI2", "GAUDI3"])
def test_generation_falls_back_to_device_name(monkeypatch, name):
    standin.install(name.lower())
    import habana_frameworks.torch.utils.experimental as htexp

    def broken():
        raise RuntimeError("private API gone")

    monkeypatch.setattr(htexp, "_get_device_type", broken)
    assert HabanaBridge(device_type="cpu").generation() == name.lower()


# -- declarations ------------------------------------------------------------------------------


def test_capabilities_differ_by_generation(backend, gen):
    caps = backend.capabilities
    assert backend.unavailable_reason() is None and backend.generation == gen
    assert caps.cast_formats == {E4M3[gen], "e5m2"}
    assert caps.gemm_formats == {(a, b) for a in caps.cast_formats for b in caps.cast_formats}
    assert caps.granularities == {"tensorwise", "rowwise", "columnwise"}
    assert caps.gemm_granularities == {("tensorwise", "tensorwise"), ("rowwise", "columnwise")}
    assert not caps.non_saturating
    assert caps.devices == {"cpu"}  # the stand-in's tensors; the real backend's are "hpu"
    assert gaudi_capabilities(gen).devices == {"hpu"}
    expected_choices = GAUDI2_HW_ALIGNED_SCALES if gen == "gaudi2" else None
    assert backend.scale_choices == expected_choices


@pytest.mark.parametrize(
    "request_",
    [
        lambda b, x: fp8.cast_to_fp8(x, "e4m3fn" if b.generation == "gaudi2" else "e4m3_gaudi2"),
        lambda b, x: fp8.cast_to_fp8(x, "e5m2", saturate=False),
        lambda b, x: fp8.cast_to_fp8(x, "e4m3fnuz"),
        lambda b, x: fp8.quantize(x, "e5m2", granularity="block_1x128"),
        lambda b, x: fp8.quantize(x, "e5m2", granularity="mx_1x32"),
    ],
)
def test_undeclared_features_are_refused(backend, request_):
    x = torch.ones(4, 128)
    with fp8.use_backend(backend.name), pytest.raises(fp8.NotSupportedError) as info:
        request_(backend, x)
    assert info.value.backend == backend.name


def test_hw_aligned_scales(backend, gen):
    # amax 3: the ideal scale is max / 3 = 80 (Gaudi2, max 240) or 149.33 (Gaudi3, max 448).
    # Gaudi2 rounds down into {1/16, 1, 16, 256}: 16; Gaudi3 down to a power of two: 128.
    fmt = get_format(E4M3[gen])
    amax = torch.tensor([3.0, 1e-4, 1e6])
    got = backend.hw_aligned_scale_from_amax(amax, fmt)
    # amax 1e-4: ideal 2.4e6 / 4.48e6 -> largest allowed 256 (Gaudi2) or 2**21 / 2**22 (Gaudi3);
    # amax 1e6: ideal 2.4e-4 / 4.48e-4 -> none allowed on Gaudi2, so the smallest, 1/16;
    # on Gaudi3 the power of two below: 2**-13 (1.22e-4) / 2**-12 (2.44e-4).
    expected = [16.0, 256.0, 2.0**-4] if gen == "gaudi2" else [128.0, 2.0**22, 2.0**-12]
    assert got.tolist() == expected


# -- casts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt_key", ["e4m3", "e5m2"])
@pytest.mark.parametrize("scale", [1.0, 3.0, 2.0**-7])
def test_cast_every_bf16_pattern_matches_reference(backend, gen, fmt_key, scale):
    name = E4M3[gen] if fmt_key == "e4m3" else "e5m2"
    x = _all_bf16()
    got = fp8.cast_to_fp8(x, name, scale, backend=backend.name)
    want = fp8.cast_to_fp8(x, name, scale, backend="reference")
    fmt = get_format(name)
    both_nan = (
        fmt.code_values[_codes(got).long()].isnan() & fmt.code_values[_codes(want).long()].isnan()
    )
    assert got.dtype == fmt.torch_dtype
    assert bool(((_codes(got) == _codes(want)) | both_nan).all())
    args = _last("cast_to_fp8_v2")
    # The quantisation scale is passed as is (the op multiplies), with nearest rounding.
    assert float(args["scale"]) == scale
    assert args["stochastic_rounding"] is False and args["is_amax"] is False
    assert args["dtype"] == fmt.torch_dtype


def test_gaudi2_saturates_at_240_gaudi3_at_448(backend, gen):
    # E4M3 with bias 7: 240 = 2**7 * 1.875 (exponent field 14, mantissa 110) and
    # 448 = 2**8 * 1.75 (field 15, mantissa 110); both are the largest finite values.
    x = torch.tensor([500.0, -1000.0, float("inf"), 239.0])
    got = fp8.cast_from_fp8(
        fp8.cast_to_fp8(x, E4M3[gen], backend=backend.name), format=E4M3[gen], backend="reference"
    )
    top = 240.0 if gen == "gaudi2" else 448.0
    # 239 lies between 224 and 240 (spacing 16 in [128, 256)): nearest is 240.
    assert got.tolist() == [top, -top, top, 240.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", ["tensorwise", "rowwise", "columnwise"])
def test_quantize_granularities_and_input_dtypes(backend, gen, dtype, granularity):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 17, 40, generator=g) * torch.logspace(-3, 3, 40)).to(dtype)
    got = fp8.quantize(x, E4M3[gen], granularity=granularity, backend=backend.name)
    want = fp8.quantize(x, E4M3[gen], granularity=granularity, backend="reference")
    assert torch.equal(got.scale, want.scale)
    assert got.data.shape == x.shape
    assert torch.equal(_codes(got.data), _codes(want.data))
    args = _last("cast_to_fp8_v2")
    assert args["input"].dtype == (torch.float32 if dtype == torch.float16 else dtype)
    expected_scale_shape = {"tensorwise": (), "rowwise": (51, 1), "columnwise": (1, 40)}
    assert tuple(args["scale"].shape) == expected_scale_shape[granularity]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", ["tensorwise", "rowwise", "columnwise"])
def test_dequantize_passes_inverse_scale(backend, gen, out_dtype, granularity):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(33, 20, generator=g) * 50
    q = fp8.quantize(x, "e5m2", granularity=granularity, backend="reference")
    got = fp8.dequantize(q, out_dtype, backend=backend.name)
    want = fp8.dequantize(q, out_dtype, backend="reference")
    assert got.dtype == out_dtype and torch.equal(got, want)
    args = _last("cast_from_fp8")
    assert torch.equal(args["scale"], reciprocal(q.scale))  # dequantisation factor fp32(1/s)
    assert args["out_dtype"] == torch.float32  # fp32 from the bridge, then the out dtype


def test_stochastic_rounding_with_explicit_bits_is_bit_exact(backend, gen):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4096, generator=g) * 30
    bits = torch.randint(-(2**31), 2**31, x.shape, dtype=torch.int32, generator=g)
    kw = {"rounding": "stochastic", "rand_bits": bits}
    got = fp8.cast_to_fp8(x, E4M3[gen], 2.0, backend=backend.name, **kw)
    want = fp8.cast_to_fp8(x, E4M3[gen], 2.0, backend="reference", **kw)
    assert torch.equal(_codes(got), _codes(want))
    nearest = fp8.cast_to_fp8(x, E4M3[gen], 2.0, backend="reference")
    assert not torch.equal(_codes(got), _codes(nearest))  # it did round stochastically
    assert not [c for c in standin_ops.calls() if c[0] == "cast_to_fp8_v2"]


def test_device_stochastic_rounding_passes_the_flag_and_is_unbiased(gen, monkeypatch):
    b = standin.standin_backend(gen, name="gaudi-standin-sr", stochastic_rounding="device")
    standin.register_backend(b, monkeypatch.setitem)
    assert any("ignored" in n for n in b.capabilities.notes)
    # y = 1.1 lies between the E4M3 neighbours lo = 1.0 and hi = 1.125 (spacing 2**-3),
    # f = (fp32(1.1) - 1) / 0.125 ~ 0.8. Each sample is lo or hi; the mean of n samples has
    # standard deviation 0.125 * sqrt(f (1 - f) / n) = 0.125 * 0.4 / 256 ~ 2e-4 for n = 65536.
    n = 1 << 16
    x = torch.full((n,), 1.1)
    q = fp8.cast_to_fp8(x, E4M3[gen], rounding="stochastic", backend=b.name)
    assert _last("cast_to_fp8_v2")["stochastic_rounding"] is True
    v = fp8.cast_from_fp8(q, format=E4M3[gen], backend="reference").double()
    assert set(v.unique().tolist()) == {1.0, 1.125}
    sigma = 0.125 * (0.8 * 0.2 / n) ** 0.5
    assert abs(v.mean().item() - float(torch.tensor(1.1))) < 6 * sigma


def test_fused_cast_and_amax(backend, gen):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(300, generator=g).to(torch.bfloat16) * 7
    fmt = get_format(E4M3[gen])
    q, amax = backend.cast_to_fp8_with_amax(x, fmt, torch.tensor(1.3))
    assert amax.dim() == 0 and amax.item() == x.float().abs().max().item()  # unscaled input
    want = fp8.cast_to_fp8(x, fmt, 1.3, backend="reference")
    assert torch.equal(_codes(q), _codes(want))
    assert _last("cast_to_fp8_v2")["is_amax"] is True


# -- GEMM --------------------------------------------------------------------------------------


def _check_gemm(got, qa, qb, out_dtype, bias=None, c=None):
    """|got - exact| within the analytic fp32-accumulator bound (numerics/gemm.py)."""
    args = (qa.data, qb.data, qa.format, qb.format, qa.scale, qb.scale)
    grans = (qa.granularity, qb.granularity)
    exact = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend="reference").double()
    addends = torch.zeros_like(exact)
    if bias is not None:
        exact, addends = exact + bias.double(), addends + bias.double().abs()
    if c is not None:
        exact, addends = exact + c.double(), addends + c.double().abs()
    bound = gemm_error_bound(
        abs_product_sum(*args, *grans),
        qa.shape[1],
        accumulator=FP32_ACCUMULATOR,
        out_dtype=out_dtype,
        exact=exact,
        addends=addends,
    )
    assert got.dtype == out_dtype and got.shape == exact.shape
    assert bool(((got.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pair", [("tensorwise", "tensorwise"), ("rowwise", "columnwise")])
def test_gemm_linear_layout_uses_trans_b_without_copy(backend, gen, out_dtype, pair):
    g = torch.Generator().manual_seed(9)
    x, w = torch.randn(37, 100, generator=g), torch.randn(29, 100, generator=g) * 0.1
    qx = fp8.quantize(x, E4M3[gen], granularity=pair[0], backend="reference")
    qw = fp8.quantize(w, "e5m2", granularity="rowwise" if pair[1] != "tensorwise" else pair[1])
    qb = qw.t()  # (K, N) view of the (N, K) weight: the linear-layer layout
    got = fp8.scaled_mm(qx, qb, out_dtype=out_dtype, backend=backend.name)
    _check_gemm(got, qx, qb, out_dtype)
    args = _last("fp8_gemm_v2")
    assert args["trans_A"] is False and args["trans_B"] is True
    assert args["B"].data_ptr() == qw.data.data_ptr()  # the weight itself, not a copy
    assert torch.equal(args["A_scale_inv"], reciprocal(qx.scale))
    assert torch.equal(args["B_scale_inv"], reciprocal(qb.scale))
    if pair[0] == "rowwise":
        assert args["A_scale_inv"].shape == (37, 1) and args["B_scale_inv"].shape == (1, 29)
    # The bridge makes fp32 and bf16; fp16 is made in fp32 and rounded once more.
    assert args["out_dtype"] == (torch.float32 if out_dtype == torch.float16 else out_dtype)
    assert args["D"] is None and args["bias"] is None and args["accumulate"] is False


def test_gemm_transposed_a_and_plain_b(backend, gen):
    g = torch.Generator().manual_seed(10)
    xt = torch.randn(64, 19, generator=g)  # stored (K, M); A is its transpose
    qa = fp8.quantize(xt, E4M3[gen], backend="reference").t()
    qb = fp8.quantize(torch.randn(64, 23, generator=g), E4M3[gen], backend="reference")
    got = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend=backend.name)
    _check_gemm(got, qa, qb, torch.float32)
    args = _last("fp8_gemm_v2")
    assert args["trans_A"] is True and args["trans_B"] is False
    assert args["A"].shape == (64, 19) and args["B"].shape == (64, 23)


def test_gemm_non_contiguous_operand_is_copied(backend, gen):
    g = torch.Generator().manual_seed(11)
    wide = fp8.quantize(torch.randn(16, 96, generator=g), E4M3[gen], backend="reference")
    qa = fp8.Fp8Tensor(wide.data[:, ::2], wide.scale, wide.format, wide.granularity)
    qb = fp8.quantize(torch.randn(48, 8, generator=g), E4M3[gen], backend="reference")
    got = fp8.scaled_mm(qa, qb, out_dtype=torch.float32, backend=backend.name)
    _check_gemm(got, qa, qb, torch.float32)
    args = _last("fp8_gemm_v2")
    assert args["trans_A"] is False and args["A"].is_contiguous()


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_gemm_bias_and_accumulate_in_fp32(backend, gen, out_dtype):
    g = torch.Generator().manual_seed(12)
    qa = fp8.quantize(torch.randn(20, 64, generator=g), E4M3[gen], granularity="rowwise")
    qw = fp8.quantize(torch.randn(12, 64, generator=g), E4M3[gen], granularity="rowwise")
    bias = torch.randn(12, generator=g).to(torch.bfloat16)
    c = torch.randn(20, 12, generator=g)
    c_before = c.clone()
    got = fp8.scaled_mm(qa, qw.t(), out_dtype=out_dtype, bias=bias, c=c, backend=backend.name)
    _check_gemm(got, qa, qw.t(), out_dtype, bias=bias, c=c)
    args = _last("fp8_gemm_v2")
    assert args["out_dtype"] == torch.float32 and args["accumulate"] is True
    assert args["bias"].dtype == torch.float32 and args["D"].dtype == torch.float32
    assert args["D"].data_ptr() != c.data_ptr()  # the bridge may accumulate in place
    assert torch.equal(c, c_before)


def test_bad_stochastic_rounding_mode_is_an_fp8_value_error(gen):
    with pytest.raises(fp8.Fp8ValueError, match="stochastic_rounding .* not 'sometimes'"):
        standin.standin_backend(gen, stochastic_rounding="sometimes")


def test_a_non_saturating_cast_is_not_supported_even_when_called_directly(backend, gen):
    # The op layer rejects saturate=False from the capabilities; the primitive guards too.
    fmt = fp8.get_format(E4M3[gen])
    one = torch.ones(())
    with pytest.raises(fp8.NotSupportedError, match="saturate=False"):
        backend.cast_to_fp8(torch.ones(4), fmt, one, fp8.get_granularity("tensorwise"),
                            saturate=False, rand_bits=None)  # fmt: skip
