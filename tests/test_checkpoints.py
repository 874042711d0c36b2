"""FP8 checkpoints (portable_fp8.nn.checkpoints): the Hugging Face / compressed-tensors "fp8"
layout and the DeepSeek-V3 128x128-block layout, written here by plain torch code the way
those projects describe them (no downloads), loaded, run and saved back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import portable_fp8 as fp8
from portable_fp8.errors import Fp8ValueError
from portable_fp8.nn import (
    InferenceLinear,
    convert_for_inference,
    fp8_state_dict,
    load_fp8_checkpoint,
    load_fp8_state_dict,
    save_fp8_checkpoint,
)
from portable_fp8.nn.checkpoints import exact_scale_for_factor

st = pytest.importorskip("safetensors.torch")

F8 = torch.float8_e4m3fn


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(136)
        self.up = nn.Linear(136, 200)
        self.down = nn.Linear(200, 136, bias=False)
        self.head = nn.Linear(136, 40)  # kept in high precision, like an lm_head

    def forward(self, x):
        return self.head(x + self.down(torch.relu(self.up(self.norm(x)))))


def _has_preimage(d: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(exact_scale_for_factor(d)[0]) == d


def _third_party_fp8(w: torch.Tensor, per_channel: bool = False):
    """What an "fp8" checkpoint writer stores: factor d = amax / 448 (fp32), codes w / d."""
    amax = w.abs().amax(1, keepdim=True) if per_channel else w.abs().amax()
    d = (amax / 448.0).float()
    return (w / d).to(F8), d


def _third_party_block(w: torch.Tensor):
    """DeepSeek-V3 style: one factor per 128x128 block (edge blocks partial)."""
    n, k = w.shape
    d = torch.empty(-(-n // 128), -(-k // 128))
    codes = torch.empty(n, k, dtype=F8)
    for i in range(d.shape[0]):
        for j in range(d.shape[1]):
            blk = w[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
            d[i, j] = blk.abs().amax() / 448.0
            codes[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] = (blk / d[i, j]).to(F8)
    return codes, d


def _checkpoint(layout: str, *, scalar_shape=(), input_scale=True, seed=0):
    torch.manual_seed(seed)
    model = _Block()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in ("up", "down"):
        w = sd.pop(f"{name}.weight")
        if layout == "block_128x128":
            codes, d = _third_party_block(w)
            sd[f"{name}.weight_scale_inv"] = d
        else:
            codes, d = _third_party_fp8(w, per_channel=(name == "down"))
            sd[f"{name}.weight_scale"] = d if name == "down" else d.reshape(scalar_shape)
        sd[f"{name}.weight"] = codes
    if input_scale and layout == "fp8":
        sd["up.input_scale"] = torch.tensor([0.0234375]).reshape(scalar_shape)  # 6/256
    return sd


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8) if a[k].dtype == F8 else a[k],
                           b[k].view(torch.uint8) if b[k].dtype == F8 else b[k]), k  # fmt: skip


@pytest.mark.parametrize(
    "layout,shape",
    [("fp8", ()), ("fp8", (1,)), ("block_128x128", ())],
    ids=["fp8-0d", "fp8-1", "block"],
)
def test_load_then_save_is_the_identity(tmp_path, layout, shape):
    sd = _checkpoint(layout, scalar_shape=shape)
    path = tmp_path / "in.safetensors"
    st.save_file(sd, str(path))
    model = _Block()
    report = load_fp8_checkpoint(model, path)
    assert report.layers == {"up": layout, "down": layout}
    assert isinstance(model.up, InferenceLinear) and isinstance(model.head, nn.Linear)
    want = {"fp8": ("tensorwise", "rowwise"), "block_128x128": ("block_128x128",) * 2}[layout]
    assert (model.up.weight_granularity, model.down.weight_granularity) == want
    out = tmp_path / "out.safetensors"
    save_fp8_checkpoint(model, out)
    _assert_same(sd, st.load_file(str(out)))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("layout", ["fp8", "block_128x128"])
def test_loaded_model_computes_with_the_checkpoint_weights(layout, backend):
    """The loaded layer's weight is the checkpoint's ``fp32(codes) * d`` bit for bit where
    every factor d has an exact preimage (the mapping then reproduces d), and its output is
    within one fp32 rounding of the float64 product of the quantised activation and that
    weight (+ bias) on the reference backend (exact sums), within the fp32 accumulator's
    bound on cpu."""
    sd = _checkpoint(layout, input_scale=False)
    model = _Block()
    report = load_fp8_state_dict(model, sd, backend=backend)
    for name in ("up", "down"):
        _check_layer(sd, model, name, layout, backend)
    all_d = [sd[k] for k in sd if k.endswith(("weight_scale", "weight_scale_inv"))]
    assert report.inexact_scales == sum(int((~_has_preimage(d)).sum()) for d in all_d)


def _check_layer(sd, model, name, layout, backend):
    layer = model.get_submodule(name)
    codes = sd[f"{name}.weight"].float()
    d = sd[f"{name}.weight_scale_inv" if layout == "block_128x128" else f"{name}.weight_scale"]
    if layout == "block_128x128":
        d_full = d.repeat_interleave(128, 0).repeat_interleave(128, 1)[
            : codes.shape[0], : codes.shape[1]
        ]
    else:
        d_full = d.reshape(-1, 1) if d.dim() else d
    # float64 products of a code (4 significant bits) and an fp32 factor (24) are exact;
    # their fp32 roundings (what dequantize returns) would not be.
    w_deq = codes.double() * d_full.double()
    x = torch.randn(9, layer.in_features)
    qx = fp8.quantize(x, backend=backend)
    x_deq = qx.data.double() * torch.reciprocal(qx.scale).double()
    exact = x_deq @ w_deq.t()
    if layer.bias is not None:
        exact = exact + layer.bias.double()
    with torch.no_grad():
        y = layer(x)
    all_exact = bool(_has_preimage(d).all())
    if all_exact:  # the layer's weight is the checkpoint's, bit for bit
        assert torch.equal(layer.dequantized_weight(), (codes * d_full).float())
    # One fp32 rounding of the output (2**-24 |C|), float64's own roundings of the
    # reference (< 2**-50 sum |a||b|), one fp32 ulp of a factor without preimage (2**-23
    # relative per product) and, on cpu, the fp32 accumulator's gamma_{K+4}(2**-24).
    k = layer.in_features
    slack = 2.0**-50
    if not all_exact:
        slack += 2.0**-22
    if backend == "cpu":
        slack += (k + 4) * 2.0**-24 / (1 - (k + 4) * 2.0**-24)
    bound = slack * (x_deq.abs() @ w_deq.abs().t()) + 2.0**-24 * exact.abs() * (1 + 2.0**-20)
    assert ((y.double() - exact).abs() <= bound).all()


def test_a_factor_without_preimage_still_roundtrips_and_is_counted():
    g = torch.Generator().manual_seed(3)
    cands = torch.rand(4096, generator=g) * 0.01 + 1e-4
    bad = cands[~_has_preimage(cands)]
    assert bad.numel() > 0  # they exist (about 1 in 7)
    sd = _checkpoint("fp8", input_scale=False)
    sd["up.weight_scale"] = bad[0].reshape(())
    model = _Block()
    report = load_fp8_state_dict(model, sd)
    assert report.inexact_scales == 1
    s = model.up.weight_scale
    assert s == torch.reciprocal(bad[0])
    assert abs(float(torch.reciprocal(s)) - float(bad[0])) <= 2.0**-23 * float(bad[0])
    _assert_same(sd, fp8_state_dict(model))


def test_static_input_scale_maps_to_our_multiplier():
    sd = _checkpoint("fp8")
    model = _Block()
    load_fp8_state_dict(model, sd)
    assert model.up.activation == "static" and model.down.activation == "dynamic"
    s = model.up.input_scale  # our multiplier: fp32(256/6), whose reciprocal is 6/256 again
    assert s == torch.tensor(256 / 6, dtype=torch.float32)
    assert torch.reciprocal(s) == sd["up.input_scale"].reshape(())
    x = torch.randn(5, 136)
    codes = fp8.quantize(x, scale=model.up.input_scale).data
    want = (x / sd["up.input_scale"]).to(F8)  # vLLM's division; here equal
    assert torch.equal(codes.view(torch.uint8), want.view(torch.uint8))


def test_our_own_conversion_saves_and_reloads_bit_identically(tmp_path):
    torch.manual_seed(1)
    model = convert_for_inference(_Block(), weight_granularity="block_128x128")
    path = tmp_path / "ours.safetensors"
    save_fp8_checkpoint(model, path)
    sd = st.load_file(str(path))
    assert sd["up.weight"].dtype == F8 and sd["up.weight_scale_inv"].shape == (2, 2)
    assert torch.equal(sd["up.weight_scale_inv"], torch.reciprocal(model.up.weight_scale))
    other = _Block()
    report = load_fp8_checkpoint(other, path)
    assert report.inexact_scales == 0
    for name in ("up", "down", "head"):
        a, b = model.get_submodule(name), other.get_submodule(name)
        if isinstance(a, InferenceLinear):
            assert torch.equal(a.weight_scale, b.weight_scale)
            assert torch.equal(a.weight_codes.view(torch.uint8), b.weight_codes.view(torch.uint8))
    x = torch.randn(4, 136)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_mismatched_checkpoints_raise():
    sd = _checkpoint("block_128x128")
    sd["up.weight_scale_inv"] = sd["up.weight_scale_inv"][:1]
    with pytest.raises(Fp8ValueError, match="weight_scale_inv has shape"):
        load_fp8_state_dict(_Block(), sd)
    sd = _checkpoint("fp8")
    sd["stray"] = torch.zeros(1)
    with pytest.raises(Fp8ValueError, match="unexpected"):
        load_fp8_state_dict(_Block(), sd)
    sd = _checkpoint("fp8")
    del sd["up.bias"]
    with pytest.raises(Fp8ValueError, match="no up.bias"):
        load_fp8_state_dict(_Block(), sd)
    sd = _checkpoint("fp8")
    del sd["up.weight_scale"]
    with pytest.raises(Fp8ValueError, match="no weight_scale"):
        load_fp8_state_dict(_Block(), sd)
