"""The cpu backend's intel-extension-for-pytorch (IPEX) path.

IPEX pins torch 2.8, so it is not installed with this project's torch; ci/ipex.sh runs the
conformance suite with the real extension in its own environment (report under
docs/conformance/cpu-ipex/). Here a minimal fake of the two IPEX cast ops, written from
their observed semantics (TransformerEngine-style: ``scale[i]``, ``amax[i]``,
``scale_inv[i]`` indexed by the tensor's slot ``i``; the cast multiplies by ``scale[i]`` and
saturates, the decode multiplies by ``scale_inv[i]``), checks that the backend takes the
path when the extension imports, passes the right arguments and stays bit-exact, and that it
is never used where it does not apply.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types

import pytest
import torch
from portable_fp8.backends.cpu import CpuBackend

import portable_fp8 as fp8
from portable_fp8.numerics.cast import as_fp8_tensor, codes_of, codes_to_float, round_to_codes
from portable_fp8.numerics.formats import get_format
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound

_CALLS: list[tuple[str, tuple]] = []
_LIB: list = []


class _Float8Format(enum.IntEnum):  # IPEX 2.8's values (intel_extension_for_pytorch._isa_help)
    kFloat8_E5M2 = 23
    kFloat8_E4M3 = 24


_NAMES = {24: "e4m3fn", 23: "e5m2"}


def _cast_to(x, scale, amax, scale_inv, index, otype):
    _CALLS.append(("cast_to_fp8", (x, scale, amax, scale_inv, index, otype)))
    fmt = get_format(_NAMES[otype])
    amax[index] = x.abs().max().float()
    codes = round_to_codes(x.float() * scale[index], fmt, saturate=True)
    return as_fp8_tensor(codes, fmt)


def _cast_from(q, scale_inv, index, itype, out_dtype):
    _CALLS.append(("cast_from_fp8", (q, scale_inv, index, itype, out_dtype)))
    return (codes_to_float(codes_of(q), get_format(_NAMES[itype])) * scale_inv[index]).to(out_dtype)


def _linear(a, a_scale_inv, a_index, a_type, w, w_scale_inv, w_index, w_type, bias, out):
    """``out = (A sa) @ (W sw).T (+ bias)``, A (M, K) and the weight W (N, K), in float64."""
    _CALLS.append(("fp8_linear", (a, a_scale_inv, a_index, a_type, w, w_scale_inv, w_index,
                                  w_type, bias, out)))  # fmt: skip
    av = codes_to_float(codes_of(a), get_format(_NAMES[a_type])).double() * a_scale_inv[a_index]
    wv = codes_to_float(codes_of(w), get_format(_NAMES[w_type])).double() * w_scale_inv[w_index]
    result = av @ wv.T + (0.0 if bias is None else bias.double())
    out.copy_(result.to(out.dtype))
    return out


@pytest.fixture
def fake_ipex(monkeypatch):
    """A fake ``intel_extension_for_pytorch`` with the two cast ops (no FP8 GEMM support;
    set ``fake_ipex._C.onednn_has_fp8_support`` to turn its ``fp8_linear`` on)."""
    if not _LIB:
        lib = torch.library.Library("torch_ipex", "DEF")
        lib.define(
            "cast_to_fp8(Tensor _0, Tensor _1, Tensor _2, Tensor _3, int _4, int _5) -> Tensor"
        )
        lib.define("cast_from_fp8(Tensor _0, Tensor _1, int _2, int _3, ScalarType _4) -> Tensor")
        lib.impl("cast_to_fp8", _cast_to, "CPU")
        lib.impl("cast_from_fp8", _cast_from, "CPU")
        lib.define(
            "fp8_linear(Tensor _0, Tensor _1, int _2, int _3, Tensor _4, Tensor _5, int _6, "
            "int _7, Tensor? _8, Tensor? _9) -> Tensor"
        )
        lib.impl("fp8_linear", _linear, "CPU")
        _LIB.append(lib)
    module = types.ModuleType("intel_extension_for_pytorch")
    module.__version__ = "2.8.0+fake"
    module.__spec__ = types.SimpleNamespace(name="intel_extension_for_pytorch")
    module._C = types.SimpleNamespace(onednn_has_fp8_support=lambda: False)
    isa = types.ModuleType("intel_extension_for_pytorch._isa_help")
    isa.Float8Format = _Float8Format
    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch", module)
    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch._isa_help", isa)
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return module.__spec__ if name == module.__name__ else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    _CALLS.clear()
    return module


def test_without_ipex_the_native_path_runs_and_says_so():
    info = CpuBackend().describe()
    if "intel_extension_for_pytorch" in sys.modules:
        pytest.skip("a real intel-extension-for-pytorch is loaded")
    assert info["ipex"].startswith("not used")
    assert "torch_ipex" not in info["cast_path"]


def test_ipex_can_be_switched_off(fake_ipex, monkeypatch):
    monkeypatch.setenv("PORTABLE_FP8_CPU_IPEX", "0")
    b = CpuBackend()
    assert "disabled" in b.describe()["ipex"]
    b.cast_to_fp8(
        torch.ones(3),
        get_format("e4m3fn"),
        torch.tensor(1.0),
        fp8.GRANULARITIES["tensorwise"],
        saturate=True,
        rand_bits=None,
    )
    assert not _CALLS


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ipex_cast_path_arguments_and_results(fake_ipex, name, dtype):
    b = CpuBackend()
    info = b.describe()
    assert info["ipex"] == "2.8.0+fake" and "torch_ipex::cast_to_fp8" in info["cast_path"]
    assert "oneDNN reports no FP8 support" in info["gemm_path"]
    fmt, tw = get_format(name), fp8.GRANULARITIES["tensorwise"]
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2000, generator=g) * 300).to(dtype)
    s = torch.tensor(0.75)
    q = b.cast_to_fp8(x, fmt, s, tw, saturate=True, rand_bits=None)
    op, (arg_x, scale, _, scale_inv, index, otype) = _CALLS[-1]
    assert op == "cast_to_fp8" and arg_x is x and index == 0
    assert otype == {"e4m3fn": 24, "e5m2": 23}[name]
    assert scale.tolist() == [0.75]  # the quantisation scale itself: the op multiplies
    assert torch.equal(scale_inv, torch.reciprocal(torch.tensor([0.75])))
    want = fp8.cast_to_fp8(x, fmt, s, backend="reference")
    assert q.dtype == fmt.torch_dtype and torch.equal(codes_of(q), codes_of(want))
    out = b.cast_from_fp8(q, fmt, torch.tensor(1 / 0.75), tw, torch.bfloat16)
    assert _CALLS[-1][0] == "cast_from_fp8"
    ref = fp8.cast_from_fp8(q, 0.75, out_dtype=torch.bfloat16, backend="reference")
    assert torch.equal(out, ref)


@pytest.mark.parametrize(
    "call",
    [
        # non-saturating: IPEX always saturates
        lambda b, x, tw: b.cast_to_fp8(
            x, get_format("e4m3fn"), torch.tensor(1.0), tw, saturate=False, rand_bits=None
        ),
        # stochastic rounding: IPEX rounds to nearest
        lambda b, x, tw: b.cast_to_fp8(
            x,
            get_format("e4m3fn"),
            torch.tensor(1.0),
            tw,
            saturate=True,
            rand_bits=torch.zeros(x.shape, dtype=torch.int32),
        ),
        # formats IPEX lacks
        lambda b, x, tw: b.cast_to_fp8(
            x, get_format("e4m3fnuz"), torch.tensor(1.0), tw, saturate=True, rand_bits=None
        ),
        # rowwise scales: IPEX takes one scale per tensor
        lambda b, x, tw: b.cast_to_fp8(
            x,
            get_format("e5m2"),
            torch.ones(4, 1),
            fp8.GRANULARITIES["rowwise"],
            saturate=True,
            rand_bits=None,
        ),
    ],
)
def test_ipex_path_not_used_where_it_does_not_apply(fake_ipex, call):
    x = torch.randn(4, 8) * 1000
    call(CpuBackend(), x, fp8.GRANULARITIES["tensorwise"])
    assert not _CALLS


def test_ipex_gemm_path_maps_the_linear_layout(fake_ipex):
    fake_ipex._C.onednn_has_fp8_support = lambda: True
    b = CpuBackend()
    assert "torch_ipex::fp8_linear" in b.describe()["gemm_path"]
    g = torch.Generator().manual_seed(4)
    with fp8.use_backend("reference"):
        qa = fp8.quantize(torch.randn(9, 40, generator=g), "e4m3fn")
        qw = fp8.quantize(torch.randn(7, 40, generator=g), "e5m2")  # weight (N, K)
    got = b.scaled_mm(qa, qw.t(), out_dtype=torch.bfloat16, bias=None, c=None)
    op, args = _CALLS[-1]
    assert op == "fp8_linear"
    assert args[0].shape == (9, 40) and args[4].shape == (7, 40)  # A, and the weight as (N, K)
    assert (args[2], args[3], args[6], args[7]) == (0, 24, 0, 23)
    assert torch.equal(args[1], qa.scale_inv.reshape(1))  # dequantisation factors
    assert torch.equal(args[5], qw.scale_inv.reshape(1))
    assert args[9].dtype == torch.float32  # fp32 out, rounded to bf16 afterwards
    # Within the contract's bound for an fp32 accumulator (numerics/gemm.py), bf16 output.
    exact = fp8.scaled_mm(qa, qw.t(), out_dtype=torch.float32, backend="reference").double()
    args_ = (qa.data, qw.t().data, qa.format, qw.format, qa.scale, qw.scale)
    grans = (qa.granularity, qw.t().granularity)
    bound = gemm_error_bound(
        abs_product_sum(*args_, *grans),
        40,
        accumulator=FP32_ACCUMULATOR,
        out_dtype=torch.bfloat16,
        exact=exact,
    )
    assert got.dtype == torch.bfloat16
    assert bool(((got.double() - exact).abs() <= bound).all())
    _CALLS.clear()
    with fp8.use_backend("reference"):
        qr = fp8.quantize(torch.randn(9, 40, generator=g), "e4m3fn", granularity="rowwise")
    b.scaled_mm(qr, qr.t(), out_dtype=torch.float32, bias=None, c=None)
    assert not _CALLS  # rowwise scales: not IPEX's (one scale per tensor)
