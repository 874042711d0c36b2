"""Argument validators of the public op layer (:mod:`portable_fp8.dispatch.ops`).

Each one checks one kind of argument and raises the documented error: a wrong type
:class:`~portable_fp8.errors.Fp8TypeError`, a wrong value, shape, layout or device
:class:`~portable_fp8.errors.Fp8ValueError`; the message names the argument, says what was
given and what is accepted.

Scale values. A scale must be a positive normal fp32 number, ``2**-126 <= s <= fp32 max``
(so that ``x * s`` and the dequantisation factor ``fp32(1 / s)`` are finite and nonzero).
Python numbers are always checked. Scale *tensors* are checked where that costs no device
synchronisation, i.e. when they live on the CPU (one fused reduction over the scales); on
an accelerator (CUDA, XPU, HPU) reading the result of the check would stall the host until
the device catches up, which the FP8 Linear's hot path cannot afford, so their values are
not checked and a bad value propagates through the cast as the contract says (a zero
scale gives zero codes and NaN on dequantisation). Shapes, dtypes and devices are checked
everywhere.
"""

from __future__ import annotations

import torch

from ..errors import Fp8TypeError, Fp8ValueError
from ..numerics.formats import Format
from ..numerics.granularity import Granularity, as_2d_shape
from ..numerics.tensor import Fp8Tensor

__all__ = [
    "HIGH_PRECISION",
    "MIN_SCALE",
    "MAX_SCALE",
    "check_bool",
    "check_backend_name",
    "check_tensor",
    "check_high_precision",
    "check_out_dtype",
    "check_generator",
    "check_scale_number",
    "check_scale_values",
    "check_fp8_tensor",
]

HIGH_PRECISION = (torch.float32, torch.bfloat16, torch.float16)

#: The smallest and largest accepted scale: fp32's smallest normal and largest finite value.
MIN_SCALE = torch.finfo(torch.float32).tiny
MAX_SCALE = torch.finfo(torch.float32).max


def check_bool(value: object, what: str) -> bool:
    """``value`` itself if it is a ``bool`` (not an int, a string or a tensor)."""
    if value.__class__ is not bool:
        raise Fp8TypeError(f"{what} must be a bool, got {type(value).__name__} {value!r}")
    return value  # type: ignore[return-value]


def check_backend_name(backend: object) -> str | None:
    """``backend`` if it is None (let the registry choose) or a backend name (a str)."""
    if backend is not None and backend.__class__ is not str:
        raise Fp8TypeError(
            f"backend must be a backend name (str) or None, got {type(backend).__name__} "
            f"{backend!r}"
        )
    return backend  # type: ignore[return-value]


def check_tensor(x: object, what: str) -> torch.Tensor:
    """``x`` if it is a dense (strided, non-nested, non-quantised) tensor, detached from
    autograd: the ops are not differentiable and return no autograd state. (Tensors on a
    device no backend runs on, ``meta`` included, are left to the backend check, which
    raises NotSupportedError or BackendUnavailableError.)"""
    if not isinstance(x, torch.Tensor):
        raise Fp8TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout is not torch.strided or x.is_nested or x.is_quantized:
        kind = "nested" if x.is_nested else ("quantized" if x.is_quantized else x.layout)
        raise Fp8ValueError(f"{what} must be a dense (strided) tensor, got a {kind} tensor")
    return x.detach() if x.requires_grad else x


def check_high_precision(x: object, what: str = "x") -> torch.Tensor:
    """``x`` as :func:`check_tensor` returns it, if its dtype is fp32, bf16 or fp16."""
    x = check_tensor(x, what)
    if x.dtype not in HIGH_PRECISION:
        raise Fp8TypeError(f"{what} must be float32, bfloat16 or float16, got {x.dtype}")
    return x


def check_out_dtype(out_dtype: object, what: str = "out_dtype") -> torch.dtype:
    """``out_dtype`` if it is one of torch.float32, torch.bfloat16, torch.float16."""
    if out_dtype.__class__ is not torch.dtype or out_dtype not in HIGH_PRECISION:
        raise Fp8TypeError(
            f"{what} must be torch.float32, torch.bfloat16 or torch.float16, got {out_dtype!r}"
        )
    return out_dtype  # type: ignore[return-value]


def check_generator(generator: object, like: torch.Tensor) -> torch.Generator | None:
    """``generator`` if it is None or a torch.Generator on ``like``'s device type."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise Fp8TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if generator.device.type != like.device.type:
        raise Fp8ValueError(f"generator is on {generator.device} but the input is on {like.device}")
    return generator


def check_scale_number(scale: float, what: str) -> float:
    """``float(scale)`` if it is a positive normal fp32 number (see the module docstring)."""
    s = float(scale)
    # The value the op will use is fp32(s): 1e39 becomes inf, 1e-50 becomes 0.
    s32 = torch.tensor(s, dtype=torch.float32).item() if s == s else s
    if not MIN_SCALE <= s32 <= MAX_SCALE:
        raise Fp8ValueError(
            f"{what} must be a finite positive number in [2**-126, {MAX_SCALE:.4g}] "
            f"(a normal fp32), got {scale!r}"
        )
    return s


def check_scale_values(scale: torch.Tensor, what: str) -> None:
    """Raise unless every element of the fp32 ``scale`` is a positive normal fp32 number.

    Checked for CPU tensors only (see the module docstring for why not on accelerators).
    """
    if not scale.is_cpu or scale.numel() == 0:
        return
    ok = ((scale >= MIN_SCALE) & (scale <= MAX_SCALE)).all()  # NaN fails both comparisons
    if not bool(ok):
        bad = scale[~((scale >= MIN_SCALE) & (scale <= MAX_SCALE))].flatten()[0].item()
        raise Fp8ValueError(
            f"{what} must hold finite positive values in [2**-126, {MAX_SCALE:.4g}] "
            f"(normal fp32), got {bad!r}"
        )


def check_fp8_tensor(t: object, what: str) -> Fp8Tensor:
    """``t`` if it is an Fp8Tensor whose parts agree: codes in the format's dtype, fp32
    scales of the granularity's scale shape on the codes' device, valid scale values.

    Returns an Fp8Tensor with detached codes and scales."""
    if not isinstance(t, Fp8Tensor):
        raise Fp8TypeError(f"{what} must be an Fp8Tensor (see quantize), got {type(t).__name__}")
    if not isinstance(t.format, Format):
        raise Fp8TypeError(f"{what}.format must be a Format, got {type(t.format).__name__}")
    if not isinstance(t.granularity, Granularity):
        raise Fp8TypeError(
            f"{what}.granularity must be a Granularity, got {type(t.granularity).__name__}"
        )
    data = check_tensor(t.data, f"{what}.data")
    scale = check_tensor(t.scale, f"{what}.scale")
    fmt, gran = t.format, t.granularity
    if fmt.is_scale_format:
        raise Fp8ValueError(f"{what}.format {fmt.name} is a block-scale format")
    if data.dtype != fmt.torch_dtype:
        raise Fp8TypeError(
            f"{what}.data has dtype {data.dtype}, but format {fmt.name} is stored as "
            f"{fmt.torch_dtype}"
        )
    if scale.dtype != torch.float32:
        raise Fp8TypeError(f"{what}.scale must be float32, got {scale.dtype}")
    if data.dim() == 0 and not gran.is_tensorwise:
        raise Fp8ValueError(f"{what}: granularity {gran.name} needs codes of at least 1 dim")
    expected = () if gran.is_tensorwise else gran.scale_shape(as_2d_shape(data.shape))
    if tuple(scale.shape) != tuple(expected) and not (expected == () and scale.numel() == 1):
        raise Fp8ValueError(
            f"{what}.scale has shape {tuple(scale.shape)}, but {gran.name} scales of codes "
            f"of shape {tuple(data.shape)} have shape {tuple(expected)}"
        )
    if scale.device != data.device:
        raise Fp8ValueError(f"{what}.scale is on {scale.device} but its data on {data.device}")
    check_scale_values(scale, f"{what}.scale")
    if tuple(scale.shape) != tuple(expected):
        scale = scale.reshape(expected)
    if data is t.data and scale is t.scale:
        return t
    return Fp8Tensor(data, scale, fmt, gran)
