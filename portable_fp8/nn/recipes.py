"""Scaling recipes: small frozen configs that say how an FP8 Linear picks its scales.

Every recipe describes the three GEMMs of a linear layer ``y = x W^T``:

==========  =====================  ==================  ===========================
GEMM        A operand (M x K)      B operand (K x N)   default formats (A, B)
==========  =====================  ==================  ===========================
forward     x          (tokens x in)   W^T  (in x out)    e4m3fn x e4m3fn
dgrad       dy         (tokens x out)  W    (out x in)    e5m2 x e4m3fn
wgrad       dy^T       (out x tokens)  x    (tokens x in) e5m2 x e4m3fn
==========  =====================  ==================  ===========================

E4M3 for values, E5M2 (more range, less precision) for gradients is the "hybrid" scheme of
Micikevicius et al., *FP8 Formats for Deep Learning* (arXiv:2209.05433). Each GEMM's formats
and output dtype can be changed with :class:`GemmSpec`; ``GemmSpec.high_precision()`` runs the
wgrad GEMM unquantized, in the activation dtype (torchao's ``rowwise_with_gw_hp``).

All scales follow the project's one convention: a scale is the quantisation multiplier
(``q = fp8(x * s)``), see :mod:`portable_fp8.numerics.scaling`.

Recipes:

* :class:`CurrentScaling` -- scales from this step's amax (tensorwise or rowwise). Costs one
  extra read of each operand per cast; protects against any change of range between steps.
* :class:`DelayedScaling` -- tensorwise scales from an amax history kept in module buffers
  (TransformerEngine's recipe). The cast needs no amax of the tensor it casts, but a sudden
  jump of the range saturates until the history catches up.
* :class:`StaticScaling` -- fixed scales, no amax at all (for unit-scaled models, in the
  spirit of unit scaling / u-muP). Cheapest; protects against nothing.
* :class:`Blockwise` -- DeepSeek-V3's fine-grained scaling: 1x128 blocks for the A operands,
  128x128 blocks for the B operands. Protects against outliers inside a tensor.

Any recipe can round its scales down to powers of two (``power_of_two=True``: scaling is then
exact) or to a fixed set (``scale_choices``, tensorwise recipes only). Vendor variants live
with their backend: ``portable_fp8.backends.gaudi.gaudi2_recipe`` makes Gaudi2's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import Fp8TypeError, Fp8ValueError
from ..numerics.formats import get_format
from ..numerics.granularity import Granularity, get_granularity
from ..numerics.scaling import check_margin

__all__ = [
    "GemmSpec",
    "Recipe",
    "CurrentScaling",
    "DelayedScaling",
    "StaticScaling",
    "Blockwise",
    "ROLES",
]

#: The tensors a Linear quantises, in the order of the delayed-scaling buffers' rows.
ROLES: tuple[str, ...] = ("input", "weight", "grad_output")


@dataclass(frozen=True)
class GemmSpec:
    """Formats of one GEMM's operands, its output dtype and its accumulation.

    ``out_dtype=None`` means: the activation dtype for forward and dgrad (the input's dtype,
    or the autocast dtype), the weight's dtype for wgrad (the accumulator's fp32 sum is
    rounded once to it, so fp32 master weights get an fp32 gradient).
    ``fast_accum=True`` lets the GEMM use the backend's declared fast accumulator (Hopper:
    about 14 bits, not promoted to fp32; see :func:`portable_fp8.scaled_mm`). torchao turns
    it on for the forward GEMM by default; here it is off unless asked for, e.g.
    ``CurrentScaling(forward=GemmSpec("e4m3fn", "e4m3fn", fast_accum=True))``.

    Both formats None (:meth:`high_precision`) means the GEMM is not quantised: a plain
    ``torch.mm`` of the unquantised operands, both in the activation dtype, rounded to
    ``out_dtype`` (default as above). Only the wgrad GEMM may be high precision.
    """

    a_format: str | None
    b_format: str | None
    out_dtype: torch.dtype | None = None
    fast_accum: bool = False

    @classmethod
    def high_precision(cls, out_dtype: torch.dtype | None = None) -> GemmSpec:
        """A GEMM that runs unquantised, in the activation dtype (see the class docstring)."""
        return cls(None, None, out_dtype=out_dtype)

    @property
    def quantized(self) -> bool:
        """False for a :meth:`high_precision` GEMM."""
        return self.a_format is not None

    def formats(self) -> tuple[str, ...]:
        """The operands' FP8 formats; empty for a high-precision GEMM."""
        return (self.a_format, self.b_format) if self.quantized else ()

    def __post_init__(self) -> None:
        if (self.a_format is None) != (self.b_format is None):
            raise Fp8ValueError(
                "GemmSpec: give both operand formats, or neither (GemmSpec.high_precision())"
            )
        if not self.quantized and self.fast_accum:
            raise Fp8ValueError("GemmSpec: fast_accum needs an FP8 GEMM, not a high-precision one")
        for name in self.formats():
            if not get_format(name).element:
                raise Fp8ValueError(f"{name} is a block-scale format only, not an element format")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Common fields of every recipe (use one of the subclasses).

    ``margin``: scales map amax to ``max / 2**margin``; an ``int`` in
    ``[0, max_margin(f)]`` for every format ``f`` the recipe casts to (6 for E4M3FN, 5 for
    the 240-range E4M3s, 13 for E5M2; see :func:`portable_fp8.numerics.scaling.check_margin`).
    ``power_of_two``: a ``bool``; scales rounded down to powers of two. ``scale_choices``:
    scales rounded down to the largest allowed value (tensorwise recipes only).
    """

    forward: GemmSpec = GemmSpec("e4m3fn", "e4m3fn")
    dgrad: GemmSpec = GemmSpec("e5m2", "e4m3fn")
    wgrad: GemmSpec = GemmSpec("e5m2", "e4m3fn")
    margin: int = 0
    power_of_two: bool = False
    scale_choices: tuple[float, ...] | None = None

    #: Granularity names of the (A, B) operands of every GEMM.
    def granularities(self) -> tuple[Granularity, Granularity]:
        raise Fp8TypeError(
            f"recipe: {type(self).__name__} defines no granularities(); use CurrentScaling, "
            "DelayedScaling, StaticScaling or Blockwise, or a Recipe subclass that defines it"
        )

    @property
    def tensorwise(self) -> bool:
        return self.granularities()[0].is_tensorwise

    def gemms(self) -> dict[str, GemmSpec]:
        return {"forward": self.forward, "dgrad": self.dgrad, "wgrad": self.wgrad}

    def role_formats(self) -> dict[str, str]:
        """The format each tensor is cast to (a tensorwise cast is shared by two GEMMs)."""
        return {
            "input": self.forward.a_format,
            "weight": self.forward.b_format,
            "grad_output": self.dgrad.a_format,
        }

    def _require_bool(self, field: str) -> None:
        """Raise Fp8TypeError unless the field holds a bool (not 0/1 or another truthy)."""
        value = getattr(self, field)
        if value.__class__ is not bool:
            raise Fp8TypeError(f"{field} must be a bool, got {value!r}")

    def _validate(self) -> None:
        for gemm in ("forward", "dgrad"):
            if not self.gemms()[gemm].quantized:
                raise Fp8ValueError(f"{gemm}: only the wgrad GEMM may be GemmSpec.high_precision()")
        for spec in self.gemms().values():
            for name in spec.formats():
                check_margin(self.margin, get_format(name))
        self._require_bool("power_of_two")
        if self.scale_choices is not None:
            if not self.tensorwise:
                raise Fp8ValueError("scale_choices needs a tensorwise recipe")
            if not self.scale_choices or any(c <= 0 for c in self.scale_choices):
                raise Fp8ValueError("scale_choices must be positive numbers")
        if self.tensorwise:
            # A tensorwise cast is reused by two GEMMs, so they must agree on its format
            # (a high-precision wgrad reuses no cast).
            hp_wgrad = not self.wgrad.quantized
            same = (
                hp_wgrad or self.forward.a_format == self.wgrad.b_format,
                self.forward.b_format == self.dgrad.b_format,
                hp_wgrad or self.dgrad.a_format == self.wgrad.a_format,
            )
            if not all(same):
                raise Fp8ValueError(
                    "a tensorwise recipe casts x, W and dy once each: forward.a_format must "
                    "equal wgrad.b_format, forward.b_format dgrad.b_format, and dgrad.a_format "
                    "wgrad.a_format"
                )

    def __post_init__(self) -> None:
        self._validate()


@dataclass(frozen=True, kw_only=True)
class CurrentScaling(Recipe):
    """Scales from the amax of the tensor being cast, every step (dynamic scaling).

    ``reduce_amax=True`` (tensorwise only; for tensor or sequence parallelism) all-reduces
    each amax (MAX) over the layer's ``amax_reduction_group`` (default: the world group)
    before the scale is computed, so every rank casts its shard with the scale of the whole
    tensor. Off by default: under plain data parallelism each rank's own amax is enough.
    """

    granularity: Literal["tensorwise", "rowwise"] = "tensorwise"
    reduce_amax: bool = False

    def granularities(self) -> tuple[Granularity, Granularity]:
        if self.granularity == "tensorwise":
            return get_granularity("tensorwise"), get_granularity("tensorwise")
        if self.granularity == "rowwise":
            return get_granularity("rowwise"), get_granularity("columnwise")
        raise Fp8ValueError(
            f"granularity must be 'tensorwise' or 'rowwise', got {self.granularity!r}"
        )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require_bool("reduce_amax")
        if self.reduce_amax and not self.tensorwise:
            raise Fp8ValueError("reduce_amax needs granularity='tensorwise'")


@dataclass(frozen=True, kw_only=True)
class DelayedScaling(Recipe):
    """Tensorwise scales from an amax history (TransformerEngine's delayed scaling).

    Each Linear keeps, per tensor role (input, weight, grad_output), the last
    ``history_len`` amaxes and the scale in buffers. A step casts with the stored scale,
    then records the tensor's amax and recomputes the scale from the history's maximum
    (``amax_compute="max"``) or its newest entry (``"most_recent"``). While the history is
    empty (first step), the scale comes from the current amax. An empty batch (a tensor
    with no elements, e.g. a rank with no tokens) leaves the history and the scale as they
    are: its amax of 0 says nothing about the range, and recording it would make the next
    step quantise with a scale from an empty window (``most_recent``: scale 1).

    ``reduce_amax`` (default True): when torch.distributed is initialised, each step's
    amaxes are all-reduced (MAX) over the layer's ``amax_reduction_group`` (default: the
    world group, i.e. data parallelism) before they enter the history, so every rank keeps
    the same history and scales, those of one process seeing the whole global batch
    (TransformerEngine reduces by default too). A batch is empty only if it is empty on
    every rank. ``reduce_amax=False`` keeps each rank's own history.
    """

    history_len: int = 16
    amax_compute: Literal["max", "most_recent"] = "max"
    reduce_amax: bool = True

    def granularities(self) -> tuple[Granularity, Granularity]:
        return get_granularity("tensorwise"), get_granularity("tensorwise")

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise Fp8ValueError(f"history_len must be >= 1, got {self.history_len}")
        if self.amax_compute not in ("max", "most_recent"):
            raise Fp8ValueError(
                f"amax_compute must be 'max' or 'most_recent', got {self.amax_compute!r}"
            )
        self._require_bool("reduce_amax")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class StaticScaling(Recipe):
    """Fixed tensorwise scales: no amax is ever computed (unit-scaled models).

    With the default scales of 1 the model must keep its values inside the formats' range
    (|x|, |W| <= 448 for E4M3, |dy| <= 57344 for E5M2) and well above their smallest
    subnormals; larger values saturate, smaller ones flush to zero.
    """

    input_scale: float = 1.0
    weight_scale: float = 1.0
    grad_output_scale: float = 1.0

    def granularities(self) -> tuple[Granularity, Granularity]:
        return get_granularity("tensorwise"), get_granularity("tensorwise")

    def scales(self) -> dict[str, float]:
        return {
            "input": self.input_scale,
            "weight": self.weight_scale,
            "grad_output": self.grad_output_scale,
        }

    def __post_init__(self) -> None:
        if any(not s > 0 for s in self.scales().values()):
            raise Fp8ValueError("static scales must be positive")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class Blockwise(Recipe):
    """DeepSeek-V3 fine-grained scaling: A operands in 1x128 blocks, B operands in 128x128.

    Current (per-step) scales per block; see arXiv:2412.19437, section 3.3.
    """

    def granularities(self) -> tuple[Granularity, Granularity]:
        return get_granularity("block_1x128"), get_granularity("block_128x128")
