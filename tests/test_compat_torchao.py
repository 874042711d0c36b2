"""portable_fp8.compat.torchao: a torchao float8 training script runs with one changed line.

``TORCHAO_SCRIPT`` is written against ``torchao.float8``'s API (as its README teaches it:
build the model, convert it with a filter and a config, train with AdamW). The test runs it
with its import line swapped for ours, and checks that nothing else had to change (a
one-line diff), that the right layers were converted, that training works, that the mapping
of each recipe name is the documented portable-fp8 recipe (bit-identical training to
``portable_fp8.convert`` with that recipe spelled out), and that the first FP8 layer's
output is within the E4M3 bound of the float32 one.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import warnings

import pytest
import torch
from torch import nn

import portable_fp8 as fp8
import portable_fp8.nn as pn
from portable_fp8 import Backend
from portable_fp8.compat.torchao import (
    Float8LinearConfig,
    Float8LinearRecipeName,
    convert_to_float8_training,
)

TORCHAO_IMPORT = "from torchao.float8 import convert_to_float8_training, Float8LinearConfig"
OUR_IMPORT = (
    "from portable_fp8.compat.torchao import convert_to_float8_training, Float8LinearConfig"
)

#: A training script for torchao.float8 (dims multiples of 16, as torchao's kernels need).
TORCHAO_SCRIPT = f"""
import torch
from torch import nn
{TORCHAO_IMPORT}


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.GELU(),
        nn.Linear(128, 64),
        nn.GELU(),
        nn.Linear(64, 8),  # the output layer: kept in high precision
        nn.Linear(8, 8),  # sizes not multiples of 16: torchao cannot take it
    )


def module_filter_fn(mod: nn.Module, fqn: str) -> bool:
    if fqn == "4":
        return False
    if isinstance(mod, nn.Linear) and (mod.in_features % 16 or mod.out_features % 16):
        return False
    return True


def train(recipe_name: str, steps: int = 25, convert: bool = True, device: str = "cpu"):
    model = build_model().to(device)
    if convert:
        config = Float8LinearConfig.from_recipe_name(recipe_name)
        model = convert_to_float8_training(model, module_filter_fn=module_filter_fn, config=config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(64, 8, generator=gen) / 8
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 16, 64, generator=gen)
        x, y = x.to(device), torch.tanh(x @ teacher).to(device)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses
"""

RECIPE_NAMES = ["tensorwise", "rowwise", "rowwise_with_gw_hp"]

_FAST = pn.GemmSpec("e4m3fn", "e4m3fn", fast_accum=True)
_E4M3 = pn.GemmSpec("e4m3fn", "e4m3fn")
#: The documented mapping (docs/guide.md, section 5), spelled out independently here.
DOCUMENTED = {
    "tensorwise": pn.CurrentScaling(forward=_FAST),
    "rowwise": pn.CurrentScaling(
        granularity="rowwise", power_of_two=True, forward=_FAST, dgrad=_E4M3, wgrad=_E4M3
    ),
    "rowwise_with_gw_hp": pn.CurrentScaling(
        granularity="rowwise", forward=_FAST, dgrad=_E4M3, wgrad=pn.GemmSpec.high_precision()
    ),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The model is tiny: one thread does its GEMMs in microseconds, while several threads
    on a loaded machine spend milliseconds per call waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _our_script() -> str:
    return TORCHAO_SCRIPT.replace(TORCHAO_IMPORT, OUR_IMPORT)


def _load(script: str) -> dict:
    namespace: dict = {}
    exec(compile(script, "torchao_style_script", "exec"), namespace)
    return namespace


def test_the_switch_is_the_import_line_only():
    diff = [
        line
        for line in difflib.unified_diff(
            TORCHAO_SCRIPT.splitlines(), _our_script().splitlines(), lineterm="", n=0
        )
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert diff == [f"-{TORCHAO_IMPORT}", f"+{OUR_IMPORT}"]


def _assert_converted_and_trained(model: nn.Module, losses: list, name: str, backend: str):
    # The filter excluded the head and the 8x8 layer; the rest are our FP8 Linear.
    assert [type(model[i]) for i in (0, 2, 4, 5)] == [pn.Linear, pn.Linear, nn.Linear, nn.Linear]
    report = model.fp8_conversion
    assert report.converted == ["0", "2"] and report.excluded == ["4", "5"]
    assert report.skipped == {} and report.backend == backend
    assert model[0].recipe == DOCUMENTED[name]
    # Training works: finite losses, the last five well below the first (float32 on this
    # data, CPU: 0.494 -> 0.232 in 25 steps; each FP8 recipe ends within 0.5% of that).
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0]


@pytest.fixture(scope="module")
def script() -> dict:
    return _load(_our_script())


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_torchao_script_trains(script, name):
    with fp8.use_backend("cpu"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer skipped: the filter took out the 8x8 one
        model, losses = script["train"](name)
        ref, ref_losses = script["train"](name, convert=False)  # the float32 run

    _assert_converted_and_trained(model, losses, name, "cpu")
    assert sum(ref_losses[-5:]) / 5 < 0.6 * ref_losses[0]

    # The mapping is the documented recipe: training with portable_fp8.convert and that
    # recipe, same filter, is bit-identical (same casts, same GEMMs, same updates).
    torch.manual_seed(0)
    direct = script["build_model"]()
    direct = fp8.convert(
        direct, DOCUMENTED[name], module_filter_fn=script["module_filter_fn"], backend="cpu"
    )
    opt = torch.optim.AdamW(direct.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(64, 8, generator=gen) / 8
    for want in losses:
        x = torch.randn(4, 16, 64, generator=gen)
        opt.zero_grad()
        loss = nn.functional.mse_loss(direct(x), torch.tanh(x @ teacher))
        loss.backward()
        opt.step()
        assert loss.item() == want
    for p, q in zip(direct.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_torchao_script_trains_on_the_gpu(name):
    """The same script, its model moved to the GPU as torchao's examples do: the tensors'
    device picks the ``cuda`` backend, the same layers convert, and training works."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, losses = _load(_our_script())["train"](name, device="cuda")
    _assert_converted_and_trained(model, losses, name, "cuda")


def _e4m3_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound on |y_fp8 - x W^T| for E4M3 x and W with amax scaling (tensorwise or rowwise).

    Per element, round-to-nearest to E4M3 (3 mantissa bits) moves a normal value by at most
    2**-4 of itself and a subnormal one by at most half the smallest subnormal, 2**-10, in
    scaled units. The scale is s = 448 / amax (power_of_two: at least half that), with amax
    the tensor's or the row's; the tensor's amax is the larger, so in x's units that second
    term is at most 2**-10 * amax_tensor / 224. Unscaling by fp32(1/s) adds 2**-24
    relative; 2**-22 |x| covers it. With |dx| <= ex and |dw| <= ew elementwise,
    |xq wq - x w| <= ex |w| + |x| ew + ex ew, summed over K. The CPU backend accumulates in
    fp32: gamma_{K+4} sum |xq||wq| with K = 64 is below 2**-17 sum |xq||wq|, and
    |xq| <= (1 + 2**-4) |x| + the subnormal term; 2**-16 (|x| + ex)(|w| + ew) covers it.
    A bias adds one fp32 rounding, 2**-24 |y|, covered by the same 2**-16 term plus |b|.
    """

    def err(t: torch.Tensor) -> torch.Tensor:
        t = t.double().abs()
        return 2.0**-4 * t + 2.0**-10 * t.amax() / 224 + 2.0**-22 * t

    ax, aw = x.double().abs(), w.double().abs()
    ex, ew = err(x), err(w)
    quant = ex @ aw.t() + ax @ ew.t() + ex @ ew.t()
    return quant + 2.0**-16 * ((ax + ex) @ (aw + ew).t())


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_first_fp8_layer_matches_float32_within_the_e4m3_bound(script, name):
    """Step 0, before any update: the converted first layer against the float32 layer."""
    fp32 = script["build_model"]()
    ours = convert_to_float8_training(
        script["build_model"](),
        module_filter_fn=script["module_filter_fn"],
        config=Float8LinearConfig.from_recipe_name(name),
    )
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(5)) * 2
    x[3, 7] = 30.0  # an outlier: small values then fall to E4M3 subnormals tensorwise
    with fp8.use_backend("cpu"):
        y = ours[0](x).detach()
    w, b = fp32[0].weight.detach(), fp32[0].bias.detach()
    want = (x.double() @ w.double().t() + b.double()).float()
    bound = _e4m3_bound(x, w) + 2.0**-24 * b.double().abs()
    diff = (y.double() - want.double()).abs()
    assert torch.all(diff <= bound), float((diff - bound).max())
    assert not torch.equal(y, want)  # it is FP8: not the float32 result


# -- one test per recipe name, and the config's keywords ---------------------------------------


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_name_maps_to_the_documented_recipe(name):
    config = Float8LinearConfig.from_recipe_name(name)
    assert config.to_recipe() == DOCUMENTED[name] and config.backend_name() is None
    assert Float8LinearConfig.from_recipe_name(Float8LinearRecipeName(name)) == config
    # A Linear converted with it runs forward and backward on the reference emulator.
    torch.manual_seed(6)
    lin = nn.Linear(32, 16)
    new = convert_to_float8_training(lin, config=dataclasses.replace(config, emulate=True))
    assert isinstance(new, pn.Linear) and new.backend == "reference"
    assert new.fp8_conversion.converted == [""]
    x = torch.randn(8, 32, requires_grad=True)
    g = torch.randn(8, 16)
    new(x).backward(g)
    assert torch.isfinite(x.grad).all() and torch.isfinite(lin.weight.grad).all()
    want_hp = torch.mm(g.t(), x.detach())
    # rowwise_with_gw_hp: wgrad is the high-precision matmul exactly; the others quantise it.
    assert torch.equal(lin.weight.grad, want_hp) == (name == "rowwise_with_gw_hp")


def test_default_config_is_tensorwise():
    assert Float8LinearConfig() == Float8LinearConfig.from_recipe_name("tensorwise")
    model = convert_to_float8_training(nn.Sequential(nn.Linear(16, 16)))
    assert model[0].recipe == DOCUMENTED["tensorwise"]


def test_unknown_recipe_name_lists_the_valid_ones():
    with pytest.raises(fp8.UnknownRecipeError, match="rowwise_with_gw_hp") as info:
        Float8LinearConfig.from_recipe_name("blockwise")
    assert isinstance(info.value, fp8.Fp8ValueError)
    assert all(n in str(info.value) for n in RECIPE_NAMES)
    with pytest.raises(fp8.Fp8TypeError):
        Float8LinearConfig.from_recipe_name(3)


def test_config_keywords_torchao_spells():
    pow2 = Float8LinearConfig(round_scales_to_power_of_2=True)
    assert pow2.to_recipe() == dataclasses.replace(DOCUMENTED["tensorwise"], power_of_two=True)
    assert Float8LinearConfig(emulate=True).backend_name() == "reference"
    assert Float8LinearConfig(backend="cpu").backend_name() == "cpu"
    with pytest.raises(fp8.Fp8ValueError, match="reference"):
        Float8LinearConfig(emulate=True, backend="cpu")
    ours = Float8LinearConfig(recipe=pn.DelayedScaling(history_len=4))
    assert ours.to_recipe() == pn.DelayedScaling(history_len=4)
    # Accepted at their default, rejected when asked for.
    for flag in ("enable_fsdp_float8_all_gather", "force_recompute_fp8_weight_in_bwd",
                 "pad_inner_dim"):  # fmt: skip
        assert Float8LinearConfig(**{flag: False}) == Float8LinearConfig()
        with pytest.raises(fp8.Fp8ValueError, match="not implemented"):
            Float8LinearConfig(**{flag: True})
    with pytest.raises(fp8.Fp8TypeError, match="recipe=portable_fp8.nn.CurrentScaling"):
        Float8LinearConfig(cast_config_input=object())
    with pytest.raises(fp8.Fp8TypeError, match="fast_accum"):
        Float8LinearConfig(gemm_config_output=object())
    with pytest.raises(fp8.Fp8TypeError, match="unknown keyword 'no_such_option'"):
        Float8LinearConfig(no_such_option=1)
    with pytest.raises(fp8.Fp8TypeError, match="bool"):
        Float8LinearConfig(emulate=1)
    with pytest.raises(fp8.Fp8TypeError, match="not from torchao.float8"):
        convert_to_float8_training(nn.Linear(16, 16), config=object())


def test_layers_the_backend_cannot_take_are_kept_and_reported(monkeypatch):
    """No filter: torchao would convert the 32x8 layer, whose N its GEMM cannot take; we keep
    it in high precision with a warning (a backend that needs multiples of 16) and say so."""

    class Needs16(Backend):
        name = "needs16"

        def __init__(self):
            caps = fp8.get_backend("reference").capabilities
            self.capabilities = dataclasses.replace(caps, gemm_dim_multiple=16)

    conv = importlib.import_module("portable_fp8.nn.convert")  # the module, not the function
    monkeypatch.setattr(conv, "select_backend", lambda name, device: Needs16())
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 8))
    with pytest.warns(UserWarning, match="multiples of 16"):
        model = convert_to_float8_training(model)
    assert model.fp8_conversion.converted == ["0"] and list(model.fp8_conversion.skipped) == ["1"]
    assert isinstance(model[0], pn.Linear) and type(model[1]) is nn.Linear
