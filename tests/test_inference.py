"""FP8 inference: convert_for_inference, InferenceLinear, calibrate (CPU backends only)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import portable_fp8 as fp8
from portable_fp8.errors import Fp8Error, Fp8ValueError
from portable_fp8.nn import Calibration, InferenceLinear, calibrate, convert_for_inference
from portable_fp8.numerics.formats import get_format
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound

BACKENDS = ("reference", "cpu")
WEIGHT_GRANS = ("tensorwise", "rowwise", "block_128x128")
ACT_GRANS = ("tensorwise", "rowwise")
# Gaudi2's hardware-aligned scales (backends/gaudi.py GAUDI2_HW_ALIGNED_SCALES); the core
# takes them from the caller, so the test spells them out rather than importing backends/.
GAUDI2_SCALES = (2.0**-4, 1.0, 2.0**4, 2.0**8)

E4M3 = get_format("e4m3fn")
U = 2.0**-4  # E4M3 unit roundoff: 3 mantissa bits, round to nearest -> |rel err| <= 2**-4
HALF_SUBNORMAL = 2.0**-10  # half E4M3's smallest subnormal 2**-9: abs err below 2**-6


def _model(dtype=torch.float32, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    # 200 x 136 and 136 x 72: partial 128-blocks on both sides.
    return nn.Sequential(nn.Linear(136, 200), nn.GELU(), nn.Linear(200, 72, bias=False)).to(dtype)


def _x(dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 11, 136, generator=g)
    x[0, 0] *= 30  # an outlier token: per-token scaling must differ from per-tensor
    return x.to(dtype)


def _dequant_abs_err_bound(x: torch.Tensor, scale_inv_full: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on |dequant(quant(x)) - x| for an E4M3 round to nearest, saturation
    not reached (scales map amax onto 448): the scaled value y = x*s rounds with relative
    error <= 2**-4 (normal range) or absolute error <= 2**-10 (subnormal range); scaling by
    fp32(1/s) back is one more fp32 rounding (2**-24 relative, absorbed by adding 2**-20)."""
    return (U + 2.0**-20) * x.abs() + HALF_SUBNORMAL * scale_inv_full


def _layer_bound(layer: InferenceLinear, x2: torch.Tensor) -> torch.Tensor:
    """Bound on |y_fp8 - x W^T| for one layer, elementwise over (M, N), in float64.

    With xh = x + dx and wh = w + dw the dequantised operands, |xh wh^T - x w^T| <=
    |dx| |wh|^T + |x| |dw|^T (exact algebra: xh wh - x w = dx wh + x dw), bounded with the
    elementwise cast bounds above; plus the fp32 GEMM accumulation (gemm_error_bound's
    gamma_{K+4}(2**-24) over sum |xh||wh|) and the output rounding to fp32 (2**-24 |y|).
    """
    w = layer._hp_weight.double()  # the weight before conversion (test-only attribute)
    wh = layer.dequantized_weight().double()  # fp32 decode is exact
    w_inv = layer.quantized_weight.expanded_scale_inv().double()
    if layer.input_scale is not None:
        x_inv = torch.full_like(x2, 1 / float(layer.input_scale), dtype=torch.float64)
    elif layer.activation_granularity == "rowwise":
        amax = x2.double().abs().amax(1, keepdim=True).clamp(min=1e-30)
        x_inv = (amax / E4M3.max).expand_as(x2) * (1 + 2.0**-20)
    else:
        x_inv = torch.full_like(x2, x2.abs().max().item() / E4M3.max, dtype=torch.float64)
    x = x2.double()
    dx = _dequant_abs_err_bound(x, x_inv)
    dw = _dequant_abs_err_bound(w, w_inv)
    err = dx @ wh.abs().t() + x.abs() @ dw.t()
    k = x.shape[1]
    gamma = (k + 4) * 2.0**-24 / (1 - (k + 4) * 2.0**-24)
    acc = gamma * ((x.abs() + dx) @ wh.abs().t())
    return err * (1 + 2.0**-20) + acc + 2.0**-24 * (x @ w.t()).abs() + 1e-30


def _convert(model, **kw):
    """convert_for_inference on a copy, keeping each layer's original weight for the bound."""
    model = copy.deepcopy(model)
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules()
                 if isinstance(m, nn.Linear)}  # fmt: skip
    model = convert_for_inference(model, **kw)
    for n, m in model.named_modules():
        if isinstance(m, InferenceLinear):
            m._hp_weight = originals[n]
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act_gran", ACT_GRANS)
@pytest.mark.parametrize("weight_gran", WEIGHT_GRANS)
def test_each_layer_within_the_e4m3_bound(weight_gran, act_gran, backend):
    """Each converted layer's output is within the derived bound of the fp32 Linear on the
    same input (the first layer on x, the second on the first's fp32 output through GELU)."""
    model = _model()
    conv = _convert(
        model, weight_granularity=weight_gran, activation_granularity=act_gran, backend=backend
    )
    assert conv.fp8_conversion.converted == ["0", "2"]
    x = _x().reshape(-1, 136)
    with torch.no_grad():
        h = model[1](model[0](x))
        for layer, ref_layer, inp in ((conv[0], model[0], x), (conv[2], model[2], h)):
            y = layer(inp).double()
            ref = ref_layer(inp).double()
            bound = _layer_bound(layer, inp)
            assert ((y - ref).abs() <= bound).all(), ((y - ref).abs() - bound).max()
            # Not vacuous: about 2 * 2**-4 of sum |x||w| (the worst case of two E4M3
            # roundings); and the layer did quantise (the outputs differ from fp32).
            w = ref_layer.weight.detach().double()
            assert float((bound / (inp.double().abs() @ w.abs().t() + 1e-30)).max()) < 0.15
            assert float((y - ref).abs().max()) > 0


@pytest.mark.parametrize("act_gran", ACT_GRANS)
@pytest.mark.parametrize("weight_gran", WEIGHT_GRANS)
def test_reference_and_cpu_agree(weight_gran, act_gran):
    """Codes (weight and activations) are bit-identical; the GEMMs differ only by the
    accumulators: the reference sums exactly (float64, exact for K*448**2 < 2**53) and
    rounds once to fp32, the cpu backend accumulates in fp32. So |cpu - ref| <= the fp32
    accumulator's gemm_error_bound (the reference being within 2**-24 |C| of exact, which
    that bound's output-rounding term covers). They are not equal in general (checked)."""
    model = _model()
    kw = dict(weight_granularity=weight_gran, activation_granularity=act_gran)
    ref = convert_for_inference(copy.deepcopy(model), backend="reference", **kw)
    cpu = convert_for_inference(copy.deepcopy(model), backend="cpu", **kw)
    for name in ("0", "2"):
        assert torch.equal(
            ref.get_submodule(name).weight_codes.view(torch.uint8),
            cpu.get_submodule(name).weight_codes.view(torch.uint8),
        )
        assert torch.equal(
            ref.get_submodule(name).weight_scale, cpu.get_submodule(name).weight_scale
        )
    x2 = _x().reshape(-1, 136)
    qa = fp8.quantize(x2, granularity=act_gran, backend="reference")
    qb = fp8.quantize(x2, granularity=act_gran, backend="cpu")
    assert torch.equal(qa.data.view(torch.uint8), qb.data.view(torch.uint8))
    assert torch.equal(qa.scale, qb.scale)
    with torch.no_grad():
        y_ref, y_cpu = ref[0](x2), cpu[0](x2)
    layer = ref[0]
    qw = layer.quantized_weight.t()
    from portable_fp8.nn.inference import _PAIR_FOR_WEIGHT, _spread

    a_gran, b_gran = _PAIR_FOR_WEIGHT[weight_gran]
    if weight_gran == "tensorwise" and act_gran == "rowwise":
        a_gran, b_gran = "rowwise", "columnwise"
    a, b = _spread(qa, a_gran), _spread(qw, b_gran)
    s = abs_product_sum(a.data, b.data, a.format, b.format, a.scale, b.scale,
                        a.granularity, b.granularity)  # fmt: skip
    exact = y_ref.double()
    bound = gemm_error_bound(
        s, 136, accumulator=FP32_ACCUMULATOR, out_dtype=torch.float32, exact=exact,
        addends=layer.bias.double().abs().expand_as(exact),
    )  # fmt: skip
    assert ((y_cpu.double() - exact).abs() <= bound).all()


def test_reference_and_cpu_outputs_are_not_bitwise_equal_in_general():
    """What is true: the accumulators differ, so some outputs differ by an fp32 rounding."""
    model = _model()
    x = _x().reshape(-1, 136)
    with torch.no_grad():
        a = convert_for_inference(copy.deepcopy(model), backend="reference")[0](x)
        b = convert_for_inference(copy.deepcopy(model), backend="cpu")[0](x)
    diff = (a - b).abs()
    assert float(diff.max()) <= 2.0**-18 * float(a.abs().max())
    assert not torch.equal(a, b)


@pytest.mark.parametrize("weight_gran", WEIGHT_GRANS)
def test_weight_memory_halves_against_bf16(weight_gran):
    """Stored weight bytes = N*K code bytes + 4 bytes per scale, against 2*N*K for bf16."""
    model = nn.Sequential(nn.Linear(512, 384), nn.ReLU(), nn.Linear(384, 256)).to(torch.bfloat16)
    bf16 = sum(
        m.weight.numel() * m.weight.element_size() for m in model if isinstance(m, nn.Linear)
    )
    conv = convert_for_inference(model, weight_granularity=weight_gran)
    scales = {
        "tensorwise": 1 + 1,
        "rowwise": 384 + 256,
        "block_128x128": 3 * 4 + 2 * 3,
    }[weight_gran]
    buffers = sum(
        b.numel() * b.element_size()
        for m in conv.modules()
        if isinstance(m, InferenceLinear)
        for b in (m.weight_codes, m.weight_scale)
    )
    assert buffers == bf16 // 2 + 4 * scales
    assert conv.fp8_conversion.weight_bytes_before == bf16
    assert conv.fp8_conversion.weight_bytes_after == buffers
    assert list(conv.parameters()) == [p for p in conv.parameters() if p.dim() == 1]  # biases
    assert all(not isinstance(getattr(m, "weight", None), nn.Parameter) for m in conv.modules()
               if isinstance(m, InferenceLinear))  # fmt: skip


def test_bf16_model_output_dtype_and_bound():
    model = _model(torch.bfloat16)
    conv = _convert(model)
    x = _x(torch.bfloat16).reshape(-1, 136)
    with torch.no_grad():
        y = conv[0](x)
        lin = model[0]
        ref = torch.nn.functional.linear(x.double(), lin.weight.double(), lin.bias.double())
    assert y.dtype == torch.bfloat16
    # The fp32 bound plus bf16's output rounding (2**-8 relative, round to nearest; 1.01
    # covers applying it to |ref| rather than to the fp32 result, within a few % of it).
    bound = _layer_bound(conv[0], x.float()) + 2.0**-8 * (ref.abs() + 1e-30) * 1.01
    assert ((y.double() - ref).abs() <= bound).all()


def test_state_dict_roundtrip_and_to_dtype_keeps_codes():
    conv = convert_for_inference(_model())
    sd = conv.state_dict()
    assert sd["0.weight_codes"].dtype == torch.float8_e4m3fn
    assert sd["0.weight_scale"].dtype == torch.float32
    other = convert_for_inference(_model(seed=5))
    other.load_state_dict(sd)
    x = _x()
    with torch.no_grad():
        assert torch.equal(conv(x), other(x))
    conv.to(torch.bfloat16)
    assert conv[0].weight_codes.dtype == torch.float8_e4m3fn
    assert conv[0].weight_scale.dtype == torch.float32
    assert conv[0].bias.dtype == torch.bfloat16
    with torch.no_grad():
        assert conv(x.bfloat16()).dtype == torch.bfloat16


def test_no_gradient_through_the_layer():
    conv = convert_for_inference(_model())
    x = _x().requires_grad_()
    with pytest.raises(Fp8Error, match="inference only"):
        conv(x)
    with torch.no_grad():
        conv(x)
    with torch.inference_mode():
        conv(_x())
    assert not any(p.dim() == 2 for p in conv.parameters())
    with pytest.raises(fp8.nn.NoTrainableWeightError, match="no trainable weight"):
        _ = conv[0].weight
    assert isinstance(fp8.nn.NoTrainableWeightError("x"), Fp8Error)
    assert not hasattr(conv[0], "weight")


def test_filter_and_bad_arguments():
    conv = convert_for_inference(_model(), module_filter_fn=lambda m, fqn: fqn != "2")
    assert isinstance(conv[2], nn.Linear) and conv.fp8_conversion.excluded == ["2"]
    with pytest.raises(Fp8ValueError, match="weight_granularity"):
        convert_for_inference(_model(), weight_granularity="columnwise")
    with pytest.raises(Fp8ValueError, match="calibration"):
        convert_for_inference(_model(), activation="static")
    with pytest.raises(Fp8ValueError, match="tensorwise"):
        convert_for_inference(
            _model(), activation="static", activation_granularity="rowwise",
            calibration=Calibration({"0": 1.0, "2": 1.0}),
        )  # fmt: skip
    with pytest.raises(Fp8ValueError, match="no calibration for layer '2'"):
        convert_for_inference(_model(), activation="static", calibration=Calibration({"0": 1.0}))


# -- calibration ---------------------------------------------------------------------------


def _batches():
    return [_x(seed=s) for s in range(3)]


def test_calibrate_records_max_input_amax_and_roundtrips_json(tmp_path):
    model = _model()
    cal = calibrate(model, _batches())
    assert cal.batches == 3 and sorted(cal.amax) == ["0", "2"]
    want0 = max(float(b.abs().max()) for b in _batches())
    assert cal.amax["0"] == want0
    with torch.no_grad():
        want2 = max(float(model[1](model[0](b)).abs().max()) for b in _batches())
    assert cal.amax["2"] == want2
    path = tmp_path / "cal.json"
    cal.save(path)
    doc = json.loads(path.read_text())
    assert doc["kind"] == "portable_fp8.calibration" and doc["version"] == 1
    back = Calibration.load(path)
    assert back == cal
    # hooks are gone
    assert not model[0]._forward_pre_hooks


def test_calibrating_a_converted_model_records_the_same_first_layer_amax():
    model = _model()
    conv = convert_for_inference(copy.deepcopy(model))
    a, b = calibrate(model, _batches()), calibrate(conv, _batches())
    assert a.amax["0"] == b.amax["0"]
    assert sorted(b.amax) == ["0", "2"]


@pytest.mark.parametrize(
    "rule",
    [dict(), dict(power_of_two=True), dict(choices=GAUDI2_SCALES), dict(margin=1)],
    ids=["plain", "pow2", "gaudi2", "margin1"],
)
def test_static_scales_from_one_file_give_identical_codes_on_both_backends(tmp_path, rule):
    model = _model()
    path = tmp_path / "cal.json"
    calibrate(model, _batches()).save(path)
    cal = Calibration.load(path)
    convs = {
        be: convert_for_inference(
            copy.deepcopy(model), activation="static", calibration=cal, backend=be, **rule
        )
        for be in BACKENDS
    }
    s = convs["cpu"][0].input_scale
    assert torch.equal(s, convs["reference"][0].input_scale)
    assert torch.equal(s, cal.scale("0", **rule))
    if rule.get("power_of_two"):
        assert float(s) == 2.0 ** round(float(torch.log2(s)))
    if "choices" in rule:
        assert float(s) in GAUDI2_SCALES
        assert float(convs["cpu"][0].weight_scale) in GAUDI2_SCALES
    x2 = _x(seed=7).reshape(-1, 136)
    codes = {be: fp8.quantize(x2, scale=s, backend=be).data.view(torch.uint8) for be in BACKENDS}
    assert torch.equal(codes["reference"], codes["cpu"])
    for name in ("0", "2"):
        a, b = (convs[be].get_submodule(name) for be in BACKENDS)
        assert torch.equal(a.weight_codes.view(torch.uint8), b.weight_codes.view(torch.uint8))
    # and the static model stays within its bound
    conv = _convert(model, activation="static", calibration=cal, backend="cpu", **rule)
    x2 = _x(seed=1).reshape(-1, 136)  # a calibration batch: no saturation
    with torch.no_grad():
        y = conv[0](x2).double()
        ref = model[0](x2).double()
    assert ((y - ref).abs() <= _layer_bound(conv[0], x2)).all()


def test_calibration_file_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"kind": "other", "version": 1, "amax": {}}))
    with pytest.raises(Fp8ValueError, match="not a portable_fp8 calibration"):
        Calibration.load(path)
    path.write_text(json.dumps({"kind": "portable_fp8.calibration", "version": 2, "amax": {}}))
    with pytest.raises(Fp8ValueError, match="version"):
        Calibration.load(path)
    with pytest.raises(Fp8ValueError, match="non-finite"):
        Calibration({"0": float("inf")}).save(tmp_path / "x.json")


# -- docs/inference.md ---------------------------------------------------------------------

_DOC = Path(__file__).resolve().parent.parent / "docs" / "inference.md"
_DOC_BLOCKS = re.findall(r"```python\n(.*?)```", _DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(_DOC_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(_DOC_BLOCKS)))
def test_doc_block_runs(index, capsys):
    if "safetensors" in _DOC_BLOCKS[index]:
        pytest.importorskip("safetensors")
    exec(compile(_DOC_BLOCKS[index], f"{_DOC}:block{index}", "exec"), {})
    assert capsys.readouterr().out.strip(), "every example prints what it shows"
