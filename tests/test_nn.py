"""Tests of portable_fp8.nn: recipes, the FP8 Linear (values and gradients), convert(),
state_dict portability between backends, and torch.compile without graph breaks."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
from portable_fp8.backends.gaudi import GAUDI2_HW_ALIGNED_SCALES, gaudi2_recipe
from torch import nn

import portable_fp8 as fp8
import portable_fp8.nn as pn
from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.errors import Fp8ValueError
from portable_fp8.nn import _custom_ops as cops
from portable_fp8.nn.convert import unsupported_reason
from portable_fp8.numerics.formats import get_format
from portable_fp8.numerics.gemm import gemm_error_bound
from portable_fp8.numerics.scaling import round_scale_to_choices

BACKENDS = ["reference", "cpu"]


def _pair(in_f=48, out_f=40, bias=True, seed=0):
    """An nn.Linear and an FP8 copy of it sharing nothing but the initial values."""
    torch.manual_seed(seed)
    ref = nn.Linear(in_f, out_f, bias=bias)
    return ref


# -- the bound every gradient check uses ----------------------------------------------------


def _quant_error(x: torch.Tensor, fmt_name: str, scale: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |dequant(quant(x)) - x| (float64), given the quantisation scale.

    Round-to-nearest to a format with m mantissa bits moves a normal value by at most half an
    ulp, 2**-(m+1) of its magnitude (E4M3: 2**-4, E5M2: 2**-3), and a subnormal one by at
    most half the smallest subnormal; in x's units that is ``min_subnormal / (2 s)``. No value
    overflows: amax scaling maps |x| <= amax to <= max. Dequantising multiplies by
    fp32(1/s), which is 1/s to within 2**-24 relative; 2**-22 of |x| covers that (a value
    moved by at most 2**-4 is below 1.07 |x|).
    """
    fmt = get_format(fmt_name)
    u = 2.0 ** -(fmt.mantissa_bits + 1)
    x = x.double().abs()
    return torch.maximum(u * x, fmt.min_subnormal / (2 * scale.double())) + 2.0**-22 * x


def _amax_scale(x: torch.Tensor, fmt_name: str, dim: int | None) -> torch.Tensor:
    """A lower bound of the current-scaling scale max/amax (per row if dim=1, per column if
    dim=0), in float64: a smaller scale only loosens the subnormal term of the bound."""
    amax = x.double().abs().amax() if dim is None else x.double().abs().amax(dim=dim, keepdim=True)
    return get_format(fmt_name).max / amax * (1 - 2.0**-20)


def _gemm_bound(a, b, fa, fb, sa, sb, accumulator, out_dtype) -> torch.Tensor:
    """Bound on |C - A @ B| for C the FP8 GEMM of A (M x K) and B (K x N), exact A, B.

    With Aq = A + dA, Bq = B + dB (|dA| <= Ea, |dB| <= Eb elementwise, _quant_error):
    |Aq Bq - A B| <= Ea |B| + |A| Eb + Ea Eb (sums over K of products of bounds). The
    backend's accumulation and output rounding of Aq Bq add the GEMM bound of the core
    (gemm_error_bound: gamma_{K+4} sum |Aq||Bq| + output rounding), evaluated with
    |Aq| <= |A| + Ea and |Aq Bq| <= |A B| + the quantisation term.
    """
    ea, eb = _quant_error(a, fa, sa), _quant_error(b, fb, sb)
    a64, b64 = a.double().abs(), b.double().abs()
    quant = ea @ b64 + a64 @ eb + ea @ eb
    exact_mag = (a.double() @ b.double()).abs() + quant
    acc = gemm_error_bound(
        (a64 + ea) @ (b64 + eb),
        a.shape[1],
        accumulator=accumulator,
        out_dtype=out_dtype,
        exact=exact_mag,
    )
    return quant + acc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["tensorwise", "rowwise"])
def test_gradients_against_float64_autograd(backend, granularity):
    """Forward, dgrad and wgrad of the FP8 Linear vs float64 autograd, within the bound.

    Operands: x (M x K) and W (N x K) E4M3, the upstream gradient G (M x N) E5M2. Per GEMM
    (A, B, formats, where the scales are taken):
      y  = x W^T : A = x (E4M3, per row of x),  B = W^T (E4M3, per column = per row of W)
      dx = G W   : A = G (E5M2, per row of G),  B = W   (E4M3, per column of W)
      dW = G^T x : A = G^T (E5M2, per column of G), B = x (E4M3, per column of x)
    (tensorwise: one scale per tensor.) A bias is added in fp32: one more 2**-24 |y|.
    """
    torch.manual_seed(1)
    m, k, n = 37, 48, 40
    lin = nn.Linear(k, n)
    x = torch.randn(m, k) * 3
    x[0, 0] = 40.0  # an outlier, so the tensorwise scale leaves small values subnormal
    g = torch.randn(m, n) * 1e-3
    recipe = pn.CurrentScaling(granularity=granularity)
    ours = pn.Linear.from_linear(lin, recipe=recipe, backend=backend)
    xq = x.clone().requires_grad_()
    y = ours(xq)
    y.backward(g)

    x64 = x.double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    y64 = x64 @ w64.t() + lin.bias.detach().double()
    y64.backward(g.double())

    acc = fp8.get_backend(backend).capabilities.accumulator
    rw = granularity == "rowwise"
    w = lin.weight.detach()

    def scale(t, fmt, dim):
        return _amax_scale(t, fmt, dim if rw else None)

    # forward: A = x rows, B = W^T columns (= rows of W)
    bound_y = _gemm_bound(
        x, w.t(), "e4m3fn", "e4m3fn", scale(x, "e4m3fn", 1), scale(w.t(), "e4m3fn", 0), acc,
        torch.float32,
    ) + 2.0**-24 * y64.detach().abs()  # fmt: skip
    # dgrad: A = G rows, B = W (N x K) columns
    bound_dx = _gemm_bound(
        g, w, "e5m2", "e4m3fn", scale(g, "e5m2", 1), scale(w, "e4m3fn", 0), acc, torch.float32
    )
    # wgrad: A = G^T rows (= columns of G), B = x columns
    bound_dw = _gemm_bound(
        g.t(), x, "e5m2", "e4m3fn", scale(g.t(), "e5m2", 1), scale(x, "e4m3fn", 0), acc,
        torch.float32,
    )  # fmt: skip
    checks = [
        ("y", y.detach(), y64.detach(), bound_y),
        ("dx", xq.grad, x64.grad, bound_dx),
        ("dW", lin.weight.grad, w64.grad, bound_dw),
    ]
    for name, got, want, bound in checks:
        err = (got.double() - want).abs()
        assert torch.all(err <= bound), f"{name}: max excess {(err - bound).max().item():.3g}"
        # The bound is not vacuous: it is a few E4M3/E5M2 half-ulps of the magnitudes.
        assert err.max() > 0
        assert (bound / (want.abs() + bound).amax()).max() < 0.5
    torch.testing.assert_close(lin.bias.grad.double(), g.double().sum(0), rtol=1e-6, atol=1e-9)


def test_fp8_error_is_at_format_precision():
    """The forward error relative to sum|x||w| is about E4M3's 2**-4 rounding, not more."""
    torch.manual_seed(2)
    lin = nn.Linear(256, 64, bias=False)
    x = torch.randn(64, 256)
    y = pn.Linear.from_linear(lin, backend="cpu")(x).detach().double()
    exact = x.double() @ lin.weight.detach().double().t()
    mag = x.double().abs() @ lin.weight.detach().double().abs().t()
    rel = ((y - exact).abs() / mag).max().item()
    # Two E4M3 roundings of at most 2**-4 each bound this by ~2**-3; random signs make the
    # typical value ~2**-4 / sqrt(K) * sqrt(2): it must be well below the worst case.
    assert 0 < rel < 2.0**-3


# -- recipe semantics (bit-exact on the reference backend) ------------------------------------


def _s(fmt, t):
    """The current-scaling scale max / amax(t): one fp32 division, as the contract says."""
    return torch.full((), fmt.max) / t.abs().amax()


def _expected_forward(x, w, bias, fx, fw, sx, sw):
    """y computed from explicit ops calls with the scales the recipe should have chosen."""
    with fp8.use_backend("reference"):
        qx = fp8.quantize(x, fx, scale=sx)
        qw = fp8.quantize(w, fw, scale=sw)
        y = fp8.scaled_mm(qx, qw.t(), out_dtype=torch.float32)
    return y + bias


def test_recipe_scales_current_static_gaudi2():
    torch.manual_seed(3)
    lin = nn.Linear(32, 16)
    x = torch.randn(8, 32) * 5
    w, b = lin.weight.detach(), lin.bias.detach()
    e4 = get_format("e4m3fn")
    g2 = get_format("e4m3_gaudi2")

    cur = pn.Linear.from_linear(lin, pn.CurrentScaling(), backend="reference")(x)
    want = _expected_forward(x, w, b, "e4m3fn", "e4m3fn", _s(e4, x),
                             _s(e4, w))  # fmt: skip
    assert torch.equal(cur, want)

    static = pn.StaticScaling(input_scale=4.0, weight_scale=64.0)
    got = pn.Linear.from_linear(lin, static, backend="reference")(x)
    assert torch.equal(got, _expected_forward(x, w, b, "e4m3fn", "e4m3fn", 4.0, 64.0))

    choices = GAUDI2_HW_ALIGNED_SCALES
    got = pn.Linear.from_linear(lin, gaudi2_recipe(), backend="reference")(x)
    sx = round_scale_to_choices(_s(g2, x), choices)
    sw = round_scale_to_choices(_s(g2, w), choices)
    assert sx.item() in choices and sw.item() in choices
    assert torch.equal(got, _expected_forward(x, w, b, "e4m3_gaudi2", "e4m3_gaudi2", sx, sw))


def test_power_of_two_recipe_uses_power_of_two_scales():
    torch.manual_seed(4)
    lin = nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32) * 3
    got = pn.Linear.from_linear(lin, pn.CurrentScaling(power_of_two=True), backend="reference")(x)
    e4 = get_format("e4m3fn")
    sx = 2.0 ** math.floor(math.log2(_s(e4, x).item()))
    sw = 2.0 ** math.floor(math.log2(e4.max / lin.weight.abs().amax().item()))
    want = _expected_forward(x, lin.weight.detach(), 0.0, "e4m3fn", "e4m3fn", sx, sw)
    assert torch.equal(got, want)


def test_delayed_scaling_history_and_scales():
    """Step 1 (empty history) uses the current amax; step 2 uses step 1's scale even though
    the input doubled (so its largest values saturate), and the history records both."""
    torch.manual_seed(5)
    lin = nn.Linear(32, 16, bias=False)
    recipe = pn.DelayedScaling(history_len=3, amax_compute="max")
    ours = pn.Linear.from_linear(lin, recipe, backend="reference")
    e4, e5 = get_format("e4m3fn"), get_format("e5m2")
    x1 = torch.randn(8, 32)
    x2 = 2 * x1
    w = lin.weight.detach()
    g = torch.randn(8, 16)

    y1 = ours(x1.clone().requires_grad_())
    y1.backward(g)
    s1 = _s(e4, x1)
    assert torch.equal(y1.detach(), _expected_forward(x1, w, 0.0, "e4m3fn", "e4m3fn", s1,
                                                      _s(e4, w)))  # fmt: skip
    y2 = ours(x2)
    assert torch.equal(y2.detach(), _expected_forward(x2, w, 0.0, "e4m3fn", "e4m3fn", s1,
                                                      _s(e4, w)))  # fmt: skip
    hist = ours.amax_history
    assert torch.equal(hist[0], torch.stack([x2.abs().amax(), x1.abs().amax(), torch.tensor(0.0)]))
    assert torch.equal(hist[1, :2], w.abs().amax().repeat(2))
    assert torch.equal(hist[2], torch.stack([g.abs().amax(), torch.tensor(0.0), torch.tensor(0.0)]))
    # Scales now come from the history's max: the input's is that of x2.
    assert torch.equal(ours.scale[0], torch.full((), e4.max) / x2.abs().amax())
    assert torch.equal(ours.scale[2], torch.full((), e5.max) / g.abs().amax())
    # Eval mode leaves the state alone.
    before = hist.clone()
    ours.eval()
    ours(x1 * 10)
    assert torch.equal(ours.amax_history, before)


def test_most_recent_amax():
    lin = nn.Linear(16, 16, bias=False)
    ours = pn.Linear.from_linear(lin, pn.DelayedScaling(history_len=4, amax_compute="most_recent"))
    ours(torch.full((2, 16), 8.0))
    ours(torch.full((2, 16), 2.0))
    assert ours.scale[0].item() == get_format("e4m3fn").max / 2.0


def test_recipe_validation():
    with pytest.raises(Fp8ValueError):
        pn.DelayedScaling(history_len=0)
    with pytest.raises(Fp8ValueError):
        pn.StaticScaling(input_scale=0.0)
    with pytest.raises(Fp8ValueError):
        pn.Blockwise(scale_choices=(1.0,))
    with pytest.raises(Fp8ValueError):
        pn.CurrentScaling(forward=pn.GemmSpec("e5m2", "e4m3fn"))  # x cast once for 2 GEMMs
    with pytest.raises(Fp8ValueError):
        pn.GemmSpec("e8m0fnu", "e4m3fn")
    # Non-tensorwise recipes cast per GEMM, so any format mix is allowed.
    pn.CurrentScaling(granularity="rowwise", forward=pn.GemmSpec("e5m2", "e4m3fn"))
    with pytest.raises(Fp8ValueError):
        pn.CurrentScaling(granularity="columnwise").granularities()


@pytest.mark.parametrize(
    "recipe",
    [pn.Blockwise(), pn.CurrentScaling(granularity="rowwise"), pn.StaticScaling(input_scale=8.0)],
    ids=["blockwise", "rowwise", "static"],
)
def test_other_recipes_match_float64_to_format_precision(recipe):
    """Every recipe's three GEMMs stay within a few E5M2 half-ulps of float64 autograd."""
    torch.manual_seed(6)
    lin = nn.Linear(160, 136)  # not multiples of 128: partial blocks
    x = torch.randn(3, 50, 160)
    g = torch.randn(3, 50, 136)
    ours = pn.Linear.from_linear(lin, recipe, backend="cpu")
    xq = x.clone().requires_grad_()
    ours(xq).backward(g)
    x64 = x.double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    (x64 @ w64.t()).backward(g.double())
    # Each product carries at most (1 + 2**-3)(1 + 2**-4) - 1 < 2**-2 relative error from the
    # two casts, so |error| <= 2**-2 sum |a||b| (static scale 8 keeps x normal in E4M3).
    g2, x2 = g.double().abs().flatten(0, 1), x.double().abs().flatten(0, 1)
    for got, want, mag in (
        (xq.grad, x64.grad, g.double().abs() @ w64.detach().abs()),
        (lin.weight.grad, w64.grad, g2.t() @ x2),
    ):
        assert torch.all((got.double() - want).abs() <= 2.0**-2 * mag + 1e-30)


# -- padding for backends that need K, N multiples ------------------------------------------


def test_token_padding_changes_nothing(monkeypatch):
    """wgrad's K is the token count; zero-padding it to a multiple gives identical results."""
    torch.manual_seed(7)
    lin = nn.Linear(32, 16)
    x = torch.randn(5, 32)
    g = torch.randn(5, 16)
    grads = []
    for recipe in (pn.CurrentScaling(), pn.Blockwise()):
        for mult in (1, 16):
            monkeypatch.setattr(cops, "gemm_dim_multiple", lambda b, d, m=mult: m)
            lin.weight.grad = None
            pn.Linear.from_linear(lin, recipe, backend="reference")(x).backward(g)
            grads.append(lin.weight.grad.clone())
        assert torch.equal(grads[-1], grads[-2])


# -- high-precision wgrad -------------------------------------------------------------------


def test_high_precision_gemm_spec_validation():
    hp = pn.GemmSpec.high_precision()
    assert not hp.quantized and hp.formats() == ()
    with pytest.raises(Fp8ValueError, match="both operand formats"):
        pn.GemmSpec("e5m2", None)
    with pytest.raises(Fp8ValueError, match="fast_accum"):
        pn.GemmSpec(None, None, fast_accum=True)
    for gemm in ("forward", "dgrad"):
        with pytest.raises(Fp8ValueError, match="only the wgrad"):
            pn.CurrentScaling(**{gemm: hp})
    # A tensorwise recipe with an HP wgrad needs no format agreement with wgrad.
    pn.CurrentScaling(dgrad=pn.GemmSpec("e4m3fn", "e4m3fn"), wgrad=hp)
    assert gaudi2_recipe(pn.CurrentScaling(wgrad=hp)).wgrad == hp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "recipe",
    [
        pn.CurrentScaling(wgrad=pn.GemmSpec.high_precision()),
        pn.CurrentScaling(granularity="rowwise", wgrad=pn.GemmSpec.high_precision()),
        pn.DelayedScaling(history_len=2, wgrad=pn.GemmSpec.high_precision()),
    ],
    ids=["tensorwise", "rowwise", "delayed"],
)
def test_high_precision_wgrad_is_the_plain_matmul_exactly(backend, recipe):
    """With wgrad=GemmSpec.high_precision(), dW is exactly torch.mm(dy^T, x) in the
    activation dtype (the same op on the same values: bit-identical), while forward and
    dgrad are the FP8 GEMMs of the same recipe with an FP8 wgrad."""
    torch.manual_seed(21)
    lin = nn.Linear(32, 24)
    x = torch.randn(3, 5, 32)
    g = torch.randn(3, 5, 24)
    fp8_wgrad = dataclasses.replace(recipe, wgrad=pn.GemmSpec("e5m2", "e4m3fn"))
    results = []
    for r in (recipe, fp8_wgrad):
        layer = pn.Linear.from_linear(lin, recipe=r, backend=backend)
        lin.weight.grad = lin.bias.grad = None
        xq = x.clone().requires_grad_()
        y = layer(xq)
        y.backward(g)
        results.append((y.detach(), xq.grad, lin.weight.grad.clone()))
    (y_hp, dx_hp, dw_hp), (y_q, dx_q, dw_q) = results
    want = torch.mm(g.reshape(-1, 24).t(), x.reshape(-1, 32))
    assert torch.equal(dw_hp, want)
    assert not torch.equal(dw_q, want)  # the FP8 wgrad is not the plain matmul
    assert torch.equal(y_hp, y_q) and torch.equal(dx_hp, dx_q)


def test_high_precision_wgrad_runs_in_the_activation_dtype():
    """The HP wgrad is a bf16 matmul for bf16 activations, whether the model is bf16 or has
    fp32 master weights under bf16 autocast (then rounded, exactly, to the fp32 gradient)."""
    torch.manual_seed(22)
    recipe = pn.CurrentScaling(wgrad=pn.GemmSpec.high_precision())
    x = torch.randn(8, 32)
    g = torch.randn(8, 16, dtype=torch.bfloat16)
    want = torch.mm(g.t(), x.to(torch.bfloat16))  # bf16 in, bf16 out

    lin = nn.Linear(32, 16).to(torch.bfloat16)
    pn.Linear.from_linear(lin, recipe=recipe, backend="reference")(x.bfloat16()).backward(g)
    assert lin.weight.grad.dtype == torch.bfloat16 and torch.equal(lin.weight.grad, want)

    master = nn.Linear(32, 16)  # fp32 weights
    layer = pn.Linear.from_linear(master, recipe=recipe, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.backward(g)
    assert master.weight.grad.dtype == torch.float32
    assert torch.equal(master.weight.grad, want.float())


def test_convert_checks_no_formats_for_a_high_precision_wgrad():
    """Only the FP8 GEMMs' formats are asked for: a backend without E5M2 takes a rowwise
    recipe whose only E5M2 use was the wgrad GEMM once that GEMM is high precision."""

    class NoE5M2(_PickyBackend):
        def __init__(self):
            super().__init__()
            self.capabilities = dataclasses.replace(
                self.capabilities,
                cast_formats=frozenset({"e4m3fn"}),
                gemm_formats=frozenset({("e4m3fn", "e4m3fn")}),
                granularities=frozenset({"rowwise", "columnwise"}),
                gemm_granularities=frozenset({("rowwise", "columnwise")}),
            )

    e4m3 = pn.GemmSpec("e4m3fn", "e4m3fn")
    fp8_wgrad = pn.CurrentScaling(granularity="rowwise", dgrad=e4m3)  # wgrad E5M2 x E4M3
    assert "e5m2" in unsupported_reason(NoE5M2(), fp8_wgrad, 32, 32)
    hp = dataclasses.replace(fp8_wgrad, wgrad=pn.GemmSpec.high_precision())
    assert unsupported_reason(NoE5M2(), hp, 32, 32) is None


# -- convert ---------------------------------------------------------------------------------


class _PickyBackend(Backend):
    """A backend that needs K, N multiples of 16 and has no rowwise GEMM (for convert)."""

    name = "picky"

    def __init__(self):
        ref = fp8.get_backend("reference").capabilities
        self.capabilities = Capabilities(
            devices=frozenset({"cpu"}),
            cast_formats=ref.cast_formats,
            gemm_formats=frozenset({("e4m3fn", "e4m3fn"), ("e5m2", "e4m3fn")}),
            granularities=frozenset({"tensorwise"}),
            gemm_granularities=frozenset({("tensorwise", "tensorwise")}),
            gemm_dim_multiple=16,
        )


def test_convert_swaps_and_skips_with_reasons(monkeypatch):
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 20), nn.Sequential(nn.Linear(20, 32))
    )
    model.add_module("head", nn.Linear(32, 16))
    params = [id(p) for p in model.parameters()]
    conv = importlib.import_module("portable_fp8.nn.convert")  # the module, not the function

    monkeypatch.setattr(conv, "select_backend", lambda name, device: _PickyBackend())
    with pytest.warns(UserWarning, match="multiples of 16; got K=64, N=20"):
        out = pn.convert(model, module_filter_fn=lambda m, fqn: fqn != "head")
    assert out is model  # converted in place, and returned
    report = model.fp8_conversion
    assert isinstance(report, pn.ConversionReport) and report.backend == "picky"
    assert report.converted == ["0"]
    assert set(report.skipped) == {"2", "3.0"}
    assert "multiples of 16" in report.skipped["2"]
    assert report.excluded == ["head"]
    assert isinstance(model[0], pn.Linear) and type(model[2]) is nn.Linear
    assert type(model.head) is nn.Linear
    assert [id(p) for p in model.parameters()] == params  # same Parameters: optimizer ok
    assert "skipped 2:" in str(report)

    with pytest.warns(UserWarning, match="does not support rowwise scaling"):
        root = nn.Linear(32, 32)
        out = pn.convert(root, pn.CurrentScaling(granularity="rowwise"))
    assert out is root and type(out) is nn.Linear  # skipped: the root Linear itself
    report = out.fp8_conversion
    assert report.converted == [] and "rowwise" in report.skipped[""]


def test_convert_names_the_formats_the_backend_casts_to():
    class Gaudi2Like(_PickyBackend):
        name = "gaudi2like"

        def __init__(self):
            super().__init__()
            self.capabilities = dataclasses.replace(
                self.capabilities,
                cast_formats=frozenset({"e4m3_gaudi2", "e5m2"}),
                gemm_formats=frozenset({("e4m3_gaudi2", "e4m3_gaudi2"), ("e5m2", "e4m3_gaudi2")}),
            )

    why = unsupported_reason(Gaudi2Like(), pn.CurrentScaling(), 32, 32)
    assert "e4m3fn" in why and "(it casts to e4m3_gaudi2, e5m2: use a recipe of those)" in why
    assert unsupported_reason(Gaudi2Like(), gaudi2_recipe(), 32, 32) is None


def test_convert_root_linear_and_multihead_attention():
    root = nn.Linear(8, 8)
    new = pn.convert(root, backend="reference")
    assert isinstance(new, pn.Linear) and new.weight is root.weight  # the replacement
    assert type(root) is nn.Linear and new.fp8_conversion.converted == [""]
    mha = nn.Sequential(nn.MultiheadAttention(16, 2))
    with pytest.warns(UserWarning, match="out_proj"):
        mha = pn.convert(mha, backend="reference")
    assert "0.out_proj" in mha.fp8_conversion.skipped


def test_convert_filter_is_module_then_fqn_and_the_old_one_is_deprecated():
    """module_filter_fn(module, fqn) sees every nn.Linear once, with its fully qualified name
    (torchao's convention); module_filter(name, module) still works, with a warning."""

    def build():
        torch.manual_seed(3)
        return nn.Sequential(nn.Sequential(nn.Linear(16, 16)), nn.ReLU(), nn.Linear(16, 16))

    seen = []

    def keep(module, fqn):
        seen.append((type(module), fqn))
        return fqn != "2"

    model = pn.convert(build(), module_filter_fn=keep, backend="reference")
    assert seen == [(nn.Linear, "0.0"), (nn.Linear, "2")]
    assert model.fp8_conversion.converted == ["0.0"]
    assert model.fp8_conversion.excluded == ["2"]

    with pytest.warns(DeprecationWarning, match="module_filter_fn"):
        old = pn.convert(build(), module_filter=lambda name, m: name != "2", backend="reference")
    assert old.fp8_conversion.converted == ["0.0"] and old.fp8_conversion.excluded == ["2"]
    assert isinstance(old[0][0], pn.Linear) and type(old[2]) is nn.Linear

    with pytest.raises(fp8.Fp8TypeError, match="module_filter_fn"):
        pn.convert(build(), module_filter_fn=keep, module_filter=lambda n, m: True)


def test_convert_report_replaces_an_earlier_one():
    model = nn.Sequential(nn.Linear(16, 16))
    model = pn.convert(model, backend="reference")
    assert model.fp8_conversion.converted == ["0"]
    model = pn.convert(model, backend="reference")  # nothing left to convert
    assert model.fp8_conversion.converted == [] and isinstance(model[0], pn.Linear)
    assert "fp8_conversion" not in model.state_dict()


# -- state_dict across backends ---------------------------------------------------------------


def _delayed_model(backend):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8))
    pn.convert(model, pn.DelayedScaling(history_len=4), backend=backend)
    return model


def _step(model, opt, x, y):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.mark.parametrize("src,dst", [("reference", "cpu"), ("cpu", "reference")])
def test_delayed_state_dict_moves_between_backends(src, dst):
    torch.manual_seed(9)
    xs, ys = torch.randn(4, 16, 32), torch.randn(4, 16, 8)
    a = _delayed_model(src)
    opt = torch.optim.SGD(a.parameters(), lr=0.1)
    for i in range(3):
        _step(a, opt, xs[i], ys[i])
    state = a.state_dict()
    assert {"0.amax_history", "0.scale", "2.amax_history", "2.scale"} <= set(state)

    b = _delayed_model(dst)
    b.load_state_dict(state)
    for k, v in state.items():
        assert torch.equal(b.state_dict()[k], v), k
    # One more step on each backend from the same state: the casts are bit-identical by the
    # contract, so the amaxes recorded and the scales derived from them are identical too.
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    x = xs[3]
    h_a, h_b = a[0](x).detach(), b[0](x).detach()
    assert torch.equal(a[0].amax_history, b[0].amax_history)
    assert torch.equal(a[0].scale, b[0].scale)
    # Both layers multiply the same FP8 operands; they differ only in the accumulation (exact
    # for reference, fp32 for cpu): at most gamma_{K+4} sum|xq||wq| + 2**-24 |y| (bias add),
    # with sum|xq||wq| <= (1 + 2**-4)**2 sum|x||w| (E4M3 half-ulps), K = 32.
    k, u = 32, 2.0**-24
    gamma = (k + 4) * u / (1 - (k + 4) * u)
    mag = x.abs() @ a[0].weight.detach().abs().t() * (1 + 2.0**-4) ** 2
    assert torch.all((h_a - h_b).abs() <= 2 * (gamma * mag + u * h_a.abs()) + 1e-30)
    # The whole model still trains on the new backend from the loaded state.
    loss_a, loss_b = _step(a, opt, x, ys[3]), _step(b, opt_b, x, ys[3])
    assert torch.isfinite(loss_b)
    # A tie-breaking difference in the second layer's cast can move one element by one E4M3
    # ulp (2**-3 relative); the loss agrees far better than that on this data.
    torch.testing.assert_close(loss_a, loss_b, rtol=2.0**-3, atol=0)


def test_high_precision_checkpoint_loads_into_fp8_model():
    """A state_dict saved before conversion loads strictly into the converted model; delayed
    scaling then starts from an empty history."""
    torch.manual_seed(13)
    plain = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    state = plain.state_dict()
    for recipe in (pn.CurrentScaling(), pn.DelayedScaling(history_len=2)):
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        pn.convert(model, recipe, backend="reference")
        model.load_state_dict(state)  # strict
        assert torch.equal(model[0].weight, plain[0].weight)
        if isinstance(recipe, pn.DelayedScaling):
            assert not model[0].amax_history.any() and torch.equal(model[0].scale, torch.ones(3))


# -- torch.compile ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe", [pn.CurrentScaling(), pn.DelayedScaling(history_len=4)], ids=["current", "delayed"]
)
def test_compile_fullgraph_no_graph_breaks(recipe):
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(10)
    eager = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16))
    compiled = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16))
    compiled.load_state_dict(eager.state_dict())
    pn.convert(eager, recipe, backend="cpu")
    pn.convert(compiled, recipe, backend="cpu")
    x = torch.randn(2, 8, 32)

    explain = torch._dynamo.explain(compiled)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    # The custom ops sit in the autograd Function's forward and backward subgraphs.
    ops_seen = {
        str(n.target)
        for g in explain.graphs
        for sub in g.modules()
        if isinstance(sub, torch.fx.GraphModule)
        for n in sub.graph.nodes
    }
    for op in ("quantize", "scaled_mm"):
        assert f"portable_fp8_nn.{op}.default" in ops_seen, ops_seen
    if isinstance(recipe, pn.DelayedScaling):
        compiled[0].amax_history.zero_()  # explain ran the forward once
        compiled[0].scale.fill_(1.0)
        compiled[2].amax_history.zero_()
        compiled[2].scale.fill_(1.0)

    fn = torch.compile(compiled, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        xe = x.clone().requires_grad_()
        xc = x.clone().requires_grad_()
        eager(xe).square().sum().backward()
        fn(xc).square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)
    for pe, pc in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=0, atol=0)
    for be, bc in zip(eager.buffers(), compiled.buffers(), strict=True):
        assert torch.equal(be, bc)


def test_compile_inductor_cpu():
    """The default (inductor) backend compiles the FP8 MLP on CPU with fullgraph=True."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16))
    pn.convert(model, backend="cpu")
    fn = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 32, requires_grad=True)
    fn(x).sum().backward()
    want = model(x.detach())
    torch.testing.assert_close(fn(x.detach()), want, rtol=1e-6, atol=1e-6)
    assert x.grad is not None and model[0].weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compile_fullgraph_cuda():
    """On CUDA: no graph breaks, and the compiled FP8 MLP matches eager.

    ReLU and no bias keep every step outside our ops exact, so compiled and eager run the
    same custom ops on the same values, except that under compile the tensorwise amax comes
    from inductor's reduction (exact too) and cuBLASLt may choose another algorithm for the
    compiled graph's buffers (another summation order: differences of the accumulator's
    rounding, far below one FP8 code). An FP8 code moved by one step changes a product by at
    most 2**-2 relative (E5M2 gradients); that is the tolerance.
    """
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(12)
    model = nn.Sequential(
        nn.Linear(256, 512, bias=False), nn.ReLU(), nn.Linear(512, 256, bias=False)
    ).cuda()
    report = pn.convert(model).fp8_conversion
    assert report.backend in ("cuda", "triton") and len(report.converted) == 2
    x = torch.randn(64, 256, device="cuda")
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    fn = torch.compile(model, fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye = model(xe)
    ye.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    yc = fn(xc)
    yc.square().sum().backward()
    pairs = [("y", yc, ye), ("dx", xc.grad, xe.grad)]
    params = model.named_parameters()
    pairs += [(f"d{n}", p.grad, g) for (n, p), g in zip(params, grads, strict=True)]
    for name, got, want in pairs:
        torch.testing.assert_close(got, want, rtol=2.0**-2, atol=1e-6, msg=name)


def _triton_interpreted() -> bool:
    backend = fp8.list_backends().get("triton")
    return (
        backend is not None
        and fp8.dispatch.registry.unavailable_reason(backend) is None
        and "cpu" in backend.capabilities.devices
    )


@pytest.mark.skipif(
    not _triton_interpreted(), reason="needs the triton backend in Triton's CPU interpreter "
    "(TRITON_INTERPRET=1 in the environment)",
)  # fmt: skip
@pytest.mark.parametrize(
    "recipe",
    [pn.CurrentScaling(), pn.CurrentScaling(granularity="rowwise"), pn.Blockwise()],
    ids=["tensorwise", "rowwise", "blockwise"],
)
def test_nvidia_casts_in_interpreter_match_reference(recipe):
    """The NVIDIA backends' Triton casts under our Linear give the reference's results: the
    casts are bit-identical, so forward and gradients differ by accumulation only: at most
    gamma_{K+4} sum|aq||bq| for the declared accumulator (gemm_error_bound), K <= 128 here,
    plus the fp32 rounding of the bias add."""
    torch.manual_seed(14)
    lin = nn.Linear(128, 64)
    x = torch.randn(2, 16, 128)
    g = torch.randn(2, 16, 64)
    results = {}
    for backend in ("reference", "triton"):
        lin.weight.grad = None
        xq = x.clone().requires_grad_()
        y = pn.Linear.from_linear(lin, recipe, backend=backend)(xq)
        y.backward(g)
        results[backend] = (y.detach(), xq.grad, lin.weight.grad.clone())
    mags = (
        x.abs() @ lin.weight.detach().abs().t() + lin.bias.detach().abs(),
        g.abs() @ lin.weight.detach().abs(),
        g.abs().flatten(0, 1).t() @ x.abs().flatten(0, 1),
    )
    u = fp8.get_backend("triton").capabilities.accumulator.unit_roundoff
    n = max(x.shape[-1], x.shape[0] * x.shape[1], g.shape[-1]) + 4
    gamma = n * u / (1 - n * u)
    for want, got, mag in zip(results["reference"], results["triton"], mags, strict=True):
        # (1 + 2**-3)**2 < 1.27 covers the FP8 operands' magnitudes vs the unquantised ones.
        bound = gamma * 1.27 * mag + 2.0**-24 * want.abs() + 1e-30
        assert torch.all((got - want).abs() <= bound)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_partial_gradients_match_full(backend):
    """A frozen weight (dgrad only) or an input without grad (wgrad only) gives the same
    gradients as computing both: the forward then skips the transposed codes it would save
    for the gradient nobody wants, and nothing else changes."""
    torch.manual_seed(21)
    lin = nn.Linear(32, 48)
    x = torch.randn(24, 32)
    g = torch.randn(24, 48)
    ours = pn.Linear.from_linear(lin, backend=backend)
    xa = x.clone().requires_grad_()
    ours(xa).backward(g)
    full_dx, full_dw = xa.grad.clone(), lin.weight.grad.clone()

    lin.weight.grad = None
    ours(x).backward(g)  # input without grad: wgrad only
    assert torch.equal(lin.weight.grad, full_dw)

    lin.weight.requires_grad_(False)
    xb = x.clone().requires_grad_()
    ours(xb).backward(g)  # frozen weight: dgrad only
    assert torch.equal(xb.grad, full_dx)


def test_fast_accum_only_in_the_gemms_whose_spec_asks(reference_gemm_calls):
    """GemmSpec(fast_accum=True) reaches the backend for that GEMM only (through the custom
    op and the op layer), and survives gaudi2_recipe()'s format swap."""
    from portable_fp8.backends.nvidia import HOPPER_FAST_ACCUMULATOR

    _, seen, declare = reference_gemm_calls
    declare(HOPPER_FAST_ACCUMULATOR)
    fast_fwd = pn.GemmSpec("e4m3fn", "e4m3fn", fast_accum=True)
    for recipe in (pn.CurrentScaling(forward=fast_fwd), pn.Blockwise(forward=fast_fwd)):
        seen.clear()
        layer = pn.Linear.from_linear(_pair(256, 128), recipe, backend="reference")
        x = torch.randn(16, 256, requires_grad=True)
        layer(x).sum().backward()
        assert seen == [True, False, False], recipe  # forward, dgrad, wgrad
    assert gaudi2_recipe(pn.CurrentScaling(forward=fast_fwd)).forward.fast_accum


# -- faults and bad input -------------------------------------------------------------------


@pytest.mark.parametrize("amax_compute", ["most_recent", "max"])
def test_delayed_scaling_ignores_empty_batches(amax_compute):
    # An empty batch used to record amax 0; with "most_recent" the next step then quantised
    # 1e-3-scale data with scale 1 (output error 3% -> 53%). Now it changes no state, so the
    # layer behaves exactly like a twin that never saw the empty batch.
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=False)
    recipe = pn.DelayedScaling(history_len=4, amax_compute=amax_compute)
    ours = pn.Linear.from_linear(lin, recipe, backend="reference")
    twin = pn.Linear.from_linear(lin, recipe, backend="reference")
    x1, x2 = torch.randn(4, 16) * 1e-3, torch.randn(4, 16) * 1e-3
    for m in (ours, twin):
        m(x1).sum().backward()
    hist, scale = ours.amax_history.clone(), ours.scale.clone()
    empty = torch.zeros(0, 16, requires_grad=True)
    out = ours(empty)
    out.sum().backward()
    assert out.shape == (0, 8)
    # Input and grad_output rows untouched; the weight (not empty) is recorded as every step.
    for role in (0, 2):
        assert torch.equal(ours.amax_history[role], hist[role])
    assert torch.equal(ours.amax_history[1, :2], hist[1, :2].new_full((2,), hist[1, 0]))
    assert torch.equal(ours.scale, scale)
    assert torch.equal(ours(x2), twin(x2))


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 16)])
def test_linear_output_is_not_a_view(shape):
    # FSDP2 warned that the output was a view: an in-place op on a view returned by an
    # autograd Function drops hooks registered on it (FSDP2's pre-backward hook).
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    ours = pn.Linear.from_linear(lin, backend="reference")
    x = torch.randn(*shape, requires_grad=True)
    out = ours(x)
    assert out._base is None and out.shape == (*shape[:-1], 8)
    out.mul_(2.0)  # in place, then backward: the gradient is twice the plain one
    out.sum().backward()
    g_inplace, gw_inplace = x.grad.clone(), ours.weight.grad.clone()
    x.grad = None
    ours.weight.grad = None
    (ours(x) * 2.0).sum().backward()
    assert torch.equal(x.grad, g_inplace) and torch.equal(ours.weight.grad, gw_inplace)


def test_recipe_margin_and_power_of_two_are_checked():
    from portable_fp8.errors import Fp8TypeError

    pn.CurrentScaling(margin=6)  # the largest margin of E4M3FN (E5M2 allows 13)
    with pytest.raises(Fp8ValueError, match="margin must be in \\[0, 6\\] for e4m3fn"):
        pn.CurrentScaling(margin=7)
    with pytest.raises(Fp8ValueError, match="margin must be in \\[0, 5\\] for e4m3_gaudi2"):
        gaudi2_recipe(pn.CurrentScaling(margin=6))
    for margin in (None, "1", 1.0, True):
        with pytest.raises(Fp8TypeError, match="margin must be an int"):
            pn.DelayedScaling(margin=margin)
    with pytest.raises(Fp8TypeError, match="power_of_two must be a bool"):
        pn.CurrentScaling(power_of_two="False")
