"""FP8 checkpoints in the layouts in use, read and written through safetensors.

Two layouts, per Linear with prefix ``p`` (e.g. ``model.layers.0.mlp.up_proj``):

``"fp8"`` (per-tensor or per-channel; Hugging Face / compressed-tensors / vLLM FP8 checkpoints)
    ``p.weight``: float8_e4m3fn (N, K); ``p.weight_scale``: fp32, shape ``()`` or ``(1,)``
    (per tensor) or ``(N, 1)`` (per output channel); optional ``p.input_scale``: fp32 ``()``
    or ``(1,)`` (static activation scale). Both scales are **dequantisation factors**:
    ``W = weight * weight_scale`` and ``x_fp8 = x / input_scale``.
``"block_128x128"`` (DeepSeek-V3)
    ``p.weight``: float8_e4m3fn (N, K); ``p.weight_scale_inv``: fp32
    ``(ceil(N/128), ceil(K/128))``, despite the name also a **dequantisation factor**:
    each 128 x 128 block of ``weight`` times its entry is the weight (edge blocks partial).

Mapping onto our convention (a scale is the quantisation *multiplier*, dequantisation
multiplies by ``fp32(1 / scale)``): a checkpoint factor ``d`` becomes the fp32 scale ``s``
with ``fp32(1 / s) == d`` where one exists (``s = fp32(1 / d)`` or one of its fp32
neighbours); then the dequantised weight is bit-identical to the checkpoint's
``fp32(weight) * d`` and saving writes ``d`` back unchanged. Factors written by this
package always have one (they *are* ``fp32(1 / s)``). For an arbitrary fp32 ``d`` there
may be none (``x -> fp32(1/x)`` is not onto: about 14% of uniformly drawn ``d`` miss); then
``s = fp32(1 / d)`` is used and the dequantised weight differs from the checkpoint's by at
most one fp32 rounding of the factor (relative ``2**-23``); :func:`load_fp8_state_dict`
counts such factors in its report. Saving writes each loaded factor back unchanged while
the layer's scale is still the one mapped from it (so load -> save is the identity in every
case), and ``fp32(1 / s)`` otherwise.

Static activation scales: ``input_scale`` maps the same way; note that we quantise by
multiplying with ``s``; a consumer dividing by ``input_scale`` gets the same codes except
where ``x * s`` and ``x / d`` fall on different sides of a rounding boundary.

Other tensors (biases of the converted layers, norms, embeddings, unconverted layers) are
stored under their ``state_dict`` names in their own dtypes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import Fp8Error, Fp8ValueError
from ..numerics.scaling import reciprocal
from .inference import InferenceLinear

__all__ = [
    "LAYOUTS",
    "CheckpointReport",
    "exact_scale_for_factor",
    "fp8_state_dict",
    "load_fp8_checkpoint",
    "load_fp8_state_dict",
    "save_fp8_checkpoint",
]

LAYOUTS = ("fp8", "block_128x128")


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise Fp8Error(
            "FP8 checkpoints need safetensors: pip install 'portable-fp8[inference]'"
        ) from e
    return st


def exact_scale_for_factor(d: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Our quantisation scales for the dequantisation factors ``d`` (fp32, any shape), and
    how many have no exact preimage (see the module docstring)."""
    d = d.to(torch.float32)
    if not bool((torch.isfinite(d) & (d > 0)).all()):
        raise Fp8ValueError("checkpoint scales must be positive finite fp32 numbers")
    s = reciprocal(d)
    bits = s.view(torch.int32)
    best = s.clone()
    found = reciprocal(s) == d
    for k in (-1, 1, -2, 2):
        cand = (bits + k).view(torch.float32)
        hit = ~found & (reciprocal(cand) == d) & torch.isfinite(cand) & (cand > 0)
        best = torch.where(hit, cand, best)
        found |= hit
    return best, int((~found).sum())


@dataclass
class CheckpointReport:
    """What :func:`load_fp8_state_dict` did: the FP8 layers loaded (fqn -> layout), the
    scale factors without an exact preimage, and the other keys loaded."""

    layers: dict[str, str] = field(default_factory=dict)
    inexact_scales: int = 0
    other_keys: list[str] = field(default_factory=list)


def _layout_of(sd: dict, prefix: str) -> str | None:
    w = sd.get(prefix + "weight")
    if w is None or w.dtype != torch.float8_e4m3fn:
        return None
    if prefix + "weight_scale_inv" in sd:
        return "block_128x128"
    if prefix + "weight_scale" in sd:
        return "fp8"
    raise Fp8ValueError(f"{prefix}weight is FP8 but has no weight_scale or weight_scale_inv")


def load_fp8_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    activation_granularity: str = "tensorwise",
    backend: str | None = None,
    strict: bool = True,
) -> CheckpointReport:
    """Load an FP8 state dict (either layout, told apart per layer) into ``model``, in place:
    each ``nn.Linear`` (or :class:`InferenceLinear`) whose weight is FP8 in ``state_dict``
    becomes an :class:`InferenceLinear` holding those codes; layers with an ``input_scale``
    use it as their static activation scale, the others quantise activations dynamically
    (``activation_granularity``). All other keys go through ``load_state_dict``
    (``strict``: missing or unexpected keys raise)."""
    report = CheckpointReport()
    used: set[str] = set()
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Linear, InferenceLinear)):
            continue
        prefix = f"{name}." if name else ""
        layout = _layout_of(state_dict, prefix)
        if layout is None:
            continue
        codes = state_dict[prefix + "weight"]
        n, k = codes.shape
        if layout == "block_128x128":
            factor = state_dict[prefix + "weight_scale_inv"]
            want = (-(-n // 128), -(-k // 128))
            if tuple(factor.shape) != want:
                raise Fp8ValueError(
                    f"{prefix}weight_scale_inv has shape {tuple(factor.shape)}, want {want}"
                )
            gran, used_keys = "block_128x128", ["weight", "weight_scale_inv"]
        else:
            factor = state_dict[prefix + "weight_scale"]
            if factor.numel() == 1 and factor.dim() <= 2:
                gran = "tensorwise"
            elif tuple(factor.shape) == (n, 1):
                gran = "rowwise"
            else:
                raise Fp8ValueError(
                    f"{prefix}weight_scale has shape {tuple(factor.shape)}: want (), (1,) "
                    f"per tensor or ({n}, 1) per channel"
                )
            used_keys = ["weight", "weight_scale"]
        scale, bad = exact_scale_for_factor(factor)
        if gran == "tensorwise":
            scale = scale.reshape(())
        input_scale = None
        if prefix + "input_scale" in state_dict:
            d_in = state_dict[prefix + "input_scale"]
            if d_in.numel() != 1:
                raise Fp8ValueError(f"{prefix}input_scale must have one element")
            input_scale, bad_in = exact_scale_for_factor(d_in.reshape(()))
            bad += bad_in
            used_keys.append("input_scale")
        report.inexact_scales += bad
        bias = None
        if getattr(module, "bias", None) is not None:
            if prefix + "bias" in state_dict:
                bias = state_dict[prefix + "bias"].detach().clone()
                used_keys.append("bias")
            elif strict:
                raise Fp8ValueError(f"checkpoint has no {prefix}bias for the model's bias")
            else:
                bias = module.bias.detach().clone()
        elif prefix + "bias" in state_dict:
            raise Fp8ValueError(f"checkpoint has {prefix}bias but the model's layer has none")
        device = codes.device
        new = InferenceLinear(
            codes.clone(),
            scale.to(device),
            bias,
            weight_granularity=gran,
            activation="static" if input_scale is not None else "dynamic",
            activation_granularity="tensorwise" if input_scale is not None
            else activation_granularity,
            input_scale=input_scale,
            backend=backend,
        )  # fmt: skip
        # Remember the checkpoint's layout, its spelling of a per-tensor factor's shape and
        # its factors themselves (plain attributes, not state): saving writes a factor back
        # as it was read while the layer's scale is still the one loaded from it, so that
        # load -> save is the identity also for factors without an exact preimage.
        new.checkpoint_factors = {"weight": factor.detach().clone()}
        if input_scale is not None:
            new.checkpoint_factors["input"] = state_dict[prefix + "input_scale"].detach().clone()
        new.checkpoint_layout = layout
        new.checkpoint_scale_shape = tuple(factor.shape)
        new.checkpoint_input_scale_shape = (
            tuple(state_dict[prefix + "input_scale"].shape) if input_scale is not None else None
        )
        _replace(model, name, new)
        report.layers[name] = layout
        used.update(prefix + key for key in used_keys)
    rest = {k: v for k, v in state_dict.items() if k not in used}
    # The new layers' buffers were filled above; only the remaining keys are loaded.
    own = {k for k in model.state_dict() if _inference_key(model, k, report.layers)}
    result = model.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if k not in own]
    if strict and (missing or result.unexpected_keys):
        raise Fp8ValueError(
            f"checkpoint does not match the model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    report.other_keys = sorted(rest)
    return report


def _inference_key(model: nn.Module, key: str, layers: dict[str, str]) -> bool:
    owner, _, _ = key.rpartition(".")
    return owner in layers


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    if name == "":
        raise Fp8ValueError("the model itself is a Linear: load into a container module")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fp8_state_dict(model: nn.Module, *, layout: str | None = None) -> dict[str, torch.Tensor]:
    """The model's state as an FP8 checkpoint: each :class:`InferenceLinear` in its layout
    (``layout`` None: the one it was loaded from, else ``"fp8"`` for tensorwise/rowwise and
    ``"block_128x128"`` for block weights), everything else under its ``state_dict`` name."""
    if layout is not None and layout not in LAYOUTS:
        raise Fp8ValueError(f"layout must be one of {LAYOUTS} or None, got {layout!r}")
    out: dict[str, torch.Tensor] = {}
    inference = {n: m for n, m in model.named_modules() if isinstance(m, InferenceLinear)}
    for key, value in model.state_dict().items():
        owner, _, _ = key.rpartition(".")
        if owner not in inference:
            out[key] = value
    for name, m in inference.items():
        p = f"{name}." if name else ""
        if m.format.name != "e4m3fn":
            raise Fp8ValueError(f"{name}: FP8 checkpoints store e4m3fn, not {m.format.name}")
        want = layout or getattr(m, "checkpoint_layout", None)
        want = want or ("block_128x128" if m.weight_granularity == "block_128x128" else "fp8")
        factor = _factor(m, "weight", m.weight_scale)
        out[p + "weight"] = m.weight_codes
        if want == "block_128x128":
            if m.weight_granularity != "block_128x128":
                raise Fp8ValueError(f"{name}: {m.weight_granularity} weights are not 128x128")
            out[p + "weight_scale_inv"] = factor
        else:
            if m.weight_granularity == "block_128x128":
                raise Fp8ValueError(f"{name}: block weights need layout='block_128x128'")
            shape = getattr(m, "checkpoint_scale_shape", None)
            if m.weight_granularity == "tensorwise" and shape is not None:
                factor = factor.reshape(shape)
            out[p + "weight_scale"] = factor
        if m.input_scale is not None:
            d_in = _factor(m, "input", m.input_scale)
            shape = getattr(m, "checkpoint_input_scale_shape", None)
            out[p + "input_scale"] = d_in.reshape(shape) if shape is not None else d_in
        if m.bias is not None:
            out[p + "bias"] = m.bias
    return {k: v.detach().contiguous() for k, v in out.items()}


def _factor(m: InferenceLinear, which: str, scale: torch.Tensor) -> torch.Tensor:
    """The dequantisation factor to write for ``scale``: the one loaded from a checkpoint
    if ``scale`` still is its mapping (:func:`exact_scale_for_factor`), else ``fp32(1/s)``."""
    loaded = getattr(m, "checkpoint_factors", {}).get(which)
    if loaded is not None:
        mapped, _ = exact_scale_for_factor(loaded)
        if torch.equal(mapped.reshape(scale.shape).to(scale.device), scale):
            return loaded.to(scale.device).reshape(scale.shape)
    return reciprocal(scale)


def save_fp8_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, layout: str | None = None
) -> None:
    """Write :func:`fp8_state_dict` to a ``.safetensors`` file (needs safetensors)."""
    st = _safetensors()
    tensors = {k: v.cpu() for k, v in fp8_state_dict(model, layout=layout).items()}
    st.save_file(tensors, os.fspath(path))


def load_fp8_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, device: str = "cpu", **kwargs
) -> CheckpointReport:
    """Read a ``.safetensors`` file and :func:`load_fp8_state_dict` it into ``model``."""
    st = _safetensors()
    return load_fp8_state_dict(model, st.load_file(os.fspath(path), device=device), **kwargs)
