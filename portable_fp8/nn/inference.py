"""FP8 inference: :class:`InferenceLinear` and :func:`convert_for_inference`.

Contract (per call, ``x`` of shape (..., in) flattened to M x K, weight W of shape N x K):

* The weight is quantised **once**, at conversion (or loaded as codes from an FP8
  checkpoint, see :mod:`portable_fp8.nn.checkpoints`), and kept as two buffers:
  ``weight_codes`` (N x K, the format's FP8 dtype) and ``weight_scale`` (fp32 quantisation
  multipliers, our convention: ``W ~= fp32(codes) * fp32(1 / weight_scale)`` per block;
  shape ``()`` tensorwise, ``(N, 1)`` rowwise -- one per output channel -- or
  ``(ceil(N/128), ceil(K/128))`` for ``block_128x128``). The high-precision weight is not
  kept: the module has **no parameters** (``parameters()`` is empty), so no optimizer can
  train it and no gradient reaches it.
* Forward: x is quantised with the op API's :func:`~portable_fp8.quantize` -- dynamically
  (one scale per tensor, or per token with ``activation_granularity="rowwise"``) or with the
  static ``input_scale`` buffer (from :func:`portable_fp8.nn.calibrate`) -- then one
  :func:`~portable_fp8.scaled_mm` to x's dtype, bias fused into it (added in fp32, one
  rounding to x's dtype).
* Scales that are constant over a larger block are spread to the granularity pair the GEMM
  API takes (tensorwise x tensorwise, rowwise x columnwise, block_1x128 x block_128x128):
  e.g. a tensorwise activation against a rowwise weight gets its one scale repeated per
  row. The codes and the dequantised operands are unchanged by this (the same value, the
  same reciprocal).
* Inference only: calling it with an input that requires grad while grad mode is on raises
  :class:`~portable_fp8.errors.Fp8Error` (the op API returns detached results, so a gradient
  would silently be missing); run under ``torch.no_grad()`` / ``torch.inference_mode()``.
* ``model.to(dtype)`` moves the FP8 codes and fp32 scales to the new device but keeps their
  dtypes (``nn.Module.to`` would otherwise turn float8 codes into bf16); the bias follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..dispatch import ops
from ..errors import Fp8Error, Fp8TypeError, Fp8ValueError
from ..numerics.formats import get_format
from ..numerics.granularity import get_granularity
from ..numerics.scaling import round_scale_to_choices, scale_from_amax
from ..numerics.tensor import Fp8Tensor
from .convert import _device_and_backend, _replace_linears

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_GRANULARITIES",
    "WEIGHT_GRANULARITIES",
    "InferenceLinear",
    "InferenceReport",
    "NoTrainableWeightError",
    "convert_for_inference",
]

WEIGHT_GRANULARITIES = ("tensorwise", "rowwise", "block_128x128")
ACTIVATIONS = ("dynamic", "static")
ACTIVATION_GRANULARITIES = ("tensorwise", "rowwise")

#: The (activation, weight-as-B) granularity pair of the GEMM for each weight granularity.
_PAIR_FOR_WEIGHT = {
    "tensorwise": ("tensorwise", "tensorwise"),
    "rowwise": ("rowwise", "columnwise"),
    "block_128x128": ("block_1x128", "block_128x128"),
}


def _gemm_pair(weight_gran: str, activation_gran: str) -> tuple[str, str]:
    """The GEMM's (A, B) granularity pair: the weight's, made rowwise x columnwise when
    per-token activations meet a tensorwise weight."""
    if weight_gran == "tensorwise" and activation_gran == "rowwise":
        return "rowwise", "columnwise"
    return _PAIR_FOR_WEIGHT[weight_gran]


def _check_choice(value: object, allowed: Sequence[str], what: str) -> str:
    if value.__class__ is not str or value not in allowed:
        raise Fp8ValueError(f"{what} must be one of {tuple(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def _spread(q: Fp8Tensor, gran_name: str) -> Fp8Tensor:
    """``q`` (tensorwise or rowwise scales) with its scales repeated onto ``gran_name``.

    Only used where every new block lies inside one old block, so each element keeps its
    scale (and reciprocal): the dequantised value is unchanged.
    """
    if q.granularity.name == gran_name:
        return q
    gran = get_granularity(gran_name)
    shape = gran.scale_shape(tuple(q.data.shape))
    scale = q.scale.reshape(-1, 1) if q.scale.dim() else q.scale.reshape(1, 1)
    inv = q.scale_inv.reshape(scale.shape)  # type: ignore[union-attr]
    return Fp8Tensor(
        q.data,
        scale.expand(shape).contiguous(),
        q.format,
        gran,
        inv.expand(shape).contiguous(),
    )


class NoTrainableWeightError(Fp8Error, AttributeError):
    """``InferenceLinear.weight`` was asked for: the layer keeps no high-precision,
    trainable weight. An AttributeError too, so ``hasattr(layer, "weight")`` is False."""


class InferenceLinear(nn.Module):
    """An inference-only FP8 ``Linear`` (see the module docstring for the contract).

    Build one with :meth:`from_linear` (quantises a ``torch.nn.Linear``'s weight) or
    :meth:`from_codes` (wraps codes and scales loaded from a checkpoint).
    """

    def __init__(
        self,
        weight_codes: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        weight_granularity: str = "tensorwise",
        activation: str = "dynamic",
        activation_granularity: str = "tensorwise",
        input_scale: torch.Tensor | float | None = None,
        format: str = "e4m3fn",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.weight_granularity = _check_choice(
            weight_granularity, WEIGHT_GRANULARITIES, "weight_granularity"
        )
        self.activation = _check_choice(activation, ACTIVATIONS, "activation")
        self.activation_granularity = _check_choice(
            activation_granularity, ACTIVATION_GRANULARITIES, "activation_granularity"
        )
        self.format = get_format(format)
        self.backend = backend
        if weight_codes.dim() != 2:
            raise Fp8ValueError(f"weight_codes must be 2-D, got {tuple(weight_codes.shape)}")
        # Validates dtype, scale dtype and shape against the granularity.
        Fp8Tensor(weight_codes, weight_scale, self.format, get_granularity(weight_granularity))
        self.out_features, self.in_features = weight_codes.shape
        self.register_buffer("weight_codes", weight_codes.detach())
        self.register_buffer("weight_scale", weight_scale.detach())
        self.register_buffer("bias", None if bias is None else bias.detach())
        if activation == "static":
            if input_scale is None:
                raise Fp8ValueError("activation='static' needs an input_scale (see calibrate)")
            if activation_granularity != "tensorwise":
                raise Fp8ValueError(
                    "static activation scales are tensorwise (one calibrated scale per layer); "
                    "per-token scaling is dynamic by nature"
                )
            s = torch.as_tensor(input_scale, dtype=torch.float32, device=weight_codes.device)
            self.register_buffer("input_scale", s.reshape(()).clone())
        elif input_scale is not None:
            raise Fp8ValueError("input_scale is only used with activation='static'")
        else:
            self.register_buffer("input_scale", None)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        weight_granularity: str = "tensorwise",
        activation: str = "dynamic",
        activation_granularity: str = "tensorwise",
        input_scale: torch.Tensor | float | None = None,
        format: str = "e4m3fn",
        margin: int = 0,
        power_of_two: bool = False,
        choices: Sequence[float] | None = None,
        backend: str | None = None,
    ) -> InferenceLinear:
        """Quantise ``linear.weight`` once (scales per ``weight_granularity`` by our rule:
        ``scale_from_amax`` with ``margin``, ``power_of_two`` and ``choices``)."""
        _check_choice(weight_granularity, WEIGHT_GRANULARITIES, "weight_granularity")
        w = linear.weight.detach()
        q = ops.quantize(
            w,
            format,
            granularity=weight_granularity,
            margin=margin,
            power_of_two=power_of_two,
            backend=backend,
        )
        if choices is not None:
            # round_scale_to_choices after the plain (or power-of-two) scale is exactly
            # scale_from_amax(amax, choices=...): the same rule, applied per block.
            scale = round_scale_to_choices(q.scale, choices)
            q = ops.quantize(
                w, format, granularity=weight_granularity, scale=scale, backend=backend
            )
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(
            q.data,
            q.scale,
            bias,
            weight_granularity=weight_granularity,
            activation=activation,
            activation_granularity=activation_granularity,
            input_scale=input_scale,
            format=format,
            backend=backend,
        )

    @classmethod
    def from_codes(cls, weight_codes: torch.Tensor, weight_scale: torch.Tensor, **kwargs):
        """Wrap existing codes and quantisation scales (our convention: multipliers)."""
        return cls(weight_codes, weight_scale, **kwargs)

    # -- the weight --------------------------------------------------------------------------

    @property
    def quantized_weight(self) -> Fp8Tensor:
        """The weight as an :class:`Fp8Tensor` (N x K)."""
        gran = get_granularity(self.weight_granularity)
        return Fp8Tensor(self.weight_codes, self.weight_scale, self.format, gran)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``dtype(fp32(codes) * fp32(1 / weight_scale))``: the weight this layer computes
        with (no gradient)."""
        return ops.dequantize(self.quantized_weight, dtype, backend=self.backend)

    def __getattr__(self, name: str):
        if name == "weight":
            raise NoTrainableWeightError(
                "InferenceLinear has no trainable weight (and no gradient through it): its "
                "FP8 codes are the buffer weight_codes with scales weight_scale; "
                "dequantized_weight() gives their values. Use portable_fp8.nn.convert to train."
            )
        return super().__getattr__(name)

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise Fp8Error(
                "InferenceLinear is inference only: no gradient flows through it (its FP8 "
                "weight is not a parameter). Run under torch.no_grad() or "
                "torch.inference_mode(), or use portable_fp8.nn.convert for training."
            )
        if x.shape[-1] != self.in_features:
            raise Fp8ValueError(
                f"input has {x.shape[-1]} features, the layer takes {self.in_features}"
            )
        x2 = x.reshape(-1, self.in_features)
        if self.input_scale is not None:
            qx = ops.quantize(x2, self.format, scale=self.input_scale, backend=self.backend)
        else:
            qx = ops.quantize(
                x2, self.format, granularity=self.activation_granularity, backend=self.backend
            )
        a_gran, b_gran = _gemm_pair(self.weight_granularity, qx.granularity.name)
        qx = _spread(qx, a_gran)
        qw = _spread(self.quantized_weight.t(), b_gran)  # K x N (views)
        out = ops.scaled_mm(qx, qw, out_dtype=x.dtype, bias=self.bias, backend=self.backend)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        """Device moves apply to the codes and scales; dtype changes do not (see module doc)."""
        keep = {
            name: getattr(self, name)
            for name in ("weight_codes", "weight_scale", "input_scale")
            if getattr(self, name) is not None
        }
        super()._apply(fn, recurse)
        for name, old in keep.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def weight_bytes(self) -> int:
        """Bytes of the stored weight: codes plus scales."""
        return sum(t.numel() * t.element_size() for t in (self.weight_codes, self.weight_scale))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={self.format.name}, "
            f"weight={self.weight_granularity}, activation={self.activation}"
            f"/{self.activation_granularity}, backend={self.backend}"
        )


@dataclass
class InferenceReport:
    """What :func:`convert_for_inference` did (reach it as ``model.fp8_conversion``):
    layer names converted, skipped by the backend check (name -> why), excluded by the
    filter, and the weight bytes before (the high-precision weights of the converted
    layers) and after (their FP8 codes and scales)."""

    backend: str
    weight_granularity: str
    activation: str
    activation_granularity: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0

    def __str__(self) -> str:
        return (
            f"converted {len(self.converted)} Linear layer(s) to FP8 inference on backend "
            f"{self.backend!r} ({self.weight_granularity} weights, {self.activation} "
            f"{self.activation_granularity} activations); weights {self.weight_bytes_before} "
            f"-> {self.weight_bytes_after} bytes; skipped {len(self.skipped)}; "
            f"excluded {len(self.excluded)}"
        )


def _unsupported(backend, device: str, fmt: str, weight_gran: str, act_gran: str, k: int, n: int):
    caps = backend.capabilities
    a_gran, b_gran = _gemm_pair(weight_gran, act_gran)
    for gran in {weight_gran, act_gran}:
        why = caps.why_not_cast(device, fmt, saturate=True, rounding="nearest", granularity=gran)
        if why is not None:
            return why
    why = caps.why_not_gemm(device, fmt, fmt, a_gran, b_gran, None, bias=True, c=False)
    if why is not None:
        return why
    return caps.why_not_gemm_dims(k, n)


def convert_for_inference(
    model: nn.Module,
    *,
    weight_granularity: str = "tensorwise",
    activation: str = "dynamic",
    activation_granularity: str = "tensorwise",
    calibration=None,
    format: str = "e4m3fn",
    margin: int = 0,
    power_of_two: bool = False,
    choices: Sequence[float] | None = None,
    backend: str | None = None,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Replace each ``torch.nn.Linear`` of ``model`` by an :class:`InferenceLinear`, in place;
    return the model, carrying an :class:`InferenceReport` as ``model.fp8_conversion``.

    ``activation="static"`` needs ``calibration`` (a :class:`~portable_fp8.nn.Calibration`
    holding an amax for every converted layer, else Fp8ValueError); its scales follow the
    same rule as the weights' (``margin``, ``power_of_two``, ``choices`` -- e.g. Gaudi2's
    ``GAUDI2_HW_ALIGNED_SCALES``, passed in by the caller). ``module_filter_fn(module, fqn)``
    returning False keeps a layer in high precision. Layers the backend cannot run (formats,
    granularities, K/N multiples) are kept and listed in ``report.skipped``. Layers inside
    ``nn.MultiheadAttention`` are skipped (it reads their weights directly).
    """
    _check_choice(weight_granularity, WEIGHT_GRANULARITIES, "weight_granularity")
    _check_choice(activation, ACTIVATIONS, "activation")
    _check_choice(activation_granularity, ACTIVATION_GRANULARITIES, "activation_granularity")
    if activation == "static":
        if calibration is None:
            raise Fp8ValueError("activation='static' needs calibration= (see calibrate)")
        if activation_granularity != "tensorwise":
            raise Fp8ValueError("static activation scales are tensorwise")
    elif calibration is not None:
        raise Fp8ValueError("calibration= is only used with activation='static'")
    if module_filter_fn is not None and not callable(module_filter_fn):
        raise Fp8TypeError("module_filter_fn must be callable(module, fqn) -> bool")
    fmt = get_format(format).name
    device, chosen = _device_and_backend(model, backend)
    report = InferenceReport(chosen.name, weight_granularity, activation, activation_granularity)

    def replace(name: str, module: nn.Linear) -> nn.Module:
        if module_filter_fn is not None and not module_filter_fn(module, name):
            report.excluded.append(name)
            return module
        why = _unsupported(
            chosen, device, fmt, weight_granularity, activation_granularity,
            module.in_features, module.out_features,
        )  # fmt: skip
        if why is not None:
            report.skipped[name] = why
            return module
        input_scale = None
        if activation == "static":
            amax = calibration.amax_of(name)
            input_scale = scale_from_amax(
                torch.tensor(amax, dtype=torch.float32),
                get_format(fmt),
                margin=margin,
                power_of_two=power_of_two,
                choices=choices,
            ).to(module.weight.device)
        new = InferenceLinear.from_linear(
            module,
            weight_granularity=weight_granularity,
            activation=activation,
            activation_granularity=activation_granularity,
            input_scale=input_scale,
            format=fmt,
            margin=margin,
            power_of_two=power_of_two,
            choices=choices,
            backend=backend,
        )
        report.converted.append(name)
        w = module.weight
        report.weight_bytes_before += w.numel() * w.element_size()
        report.weight_bytes_after += new.weight_bytes()
        return new

    model = _replace_linears(model, replace, report.skipped)
    model.fp8_conversion = report  # type: ignore[assignment]
    return model
