"""The quantised tensor value: codes, their format and granularity, and their scales.

One :class:`Fp8Tensor` type travels between every layer (op layer, backends, the FP8
Linear). Its dequantised value is

    ``dequantised = fp32(fp32(data) * scale_inv[block]) * global_scale_inv``

with ``scale_inv = fp32(1 / scale)`` (:func:`portable_fp8.numerics.scaling.reciprocal`, the
contract's one rule) per block of ``granularity``, and the optional second level
``global_scale_inv = fp32(1 / global_scale)`` (a per-tensor fp32 scale above the block
scales, as two-level formats use: block scales in a narrow scale format, one fp32 scale for
the whole tensor). Without ``global_scale`` the last factor is absent (not a multiplication
by 1). Only backends that declare ``capabilities.global_scale`` accept tensors with one; the
op layer raises :class:`~portable_fp8.errors.NotSupportedError` for the others.

Reciprocals are computed once, at construction, unless given (a backend whose kernel
writes ``fp32(1 / scale)`` next to the scale passes it in and saves the launch). A given
reciprocal must be exactly ``reciprocal(scale)``: it is trusted, not re-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import Fp8TypeError, Fp8ValueError
from .formats import Format
from .granularity import Granularity, as_2d_shape
from .scaling import reciprocal

__all__ = ["Fp8Tensor"]


@dataclass(frozen=True, eq=False)
class Fp8Tensor:
    """Codes with their scales (see the module docstring for the value they stand for).

    * ``data``: the codes, in ``format.torch_dtype`` (or uint8, which stores every format and
      is the storage of packed sub-byte formats), any strides;
    * ``scale``: fp32 quantisation scales laid out as
      ``granularity.scale_shape(as_2d_shape(data.shape))`` (0-d if tensorwise);
    * ``scale_inv``: ``fp32(1 / scale)``, filled in at construction when not given;
    * ``global_scale`` / ``global_scale_inv``: the optional fp32 0-d second level.

    Construction checks types, dtypes and shapes only (no kernel launch beyond the
    reciprocals it has to compute) and raises :class:`~portable_fp8.errors.Fp8TypeError` or
    :class:`~portable_fp8.errors.Fp8ValueError` naming the field.
    """

    data: torch.Tensor
    scale: torch.Tensor
    format: Format
    granularity: Granularity
    scale_inv: torch.Tensor | None = field(default=None, repr=False)
    global_scale: torch.Tensor | None = None
    global_scale_inv: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._check()
        if self.scale_inv is None:
            object.__setattr__(self, "scale_inv", reciprocal(self.scale))
        if self.global_scale is not None and self.global_scale_inv is None:
            object.__setattr__(self, "global_scale_inv", reciprocal(self.global_scale))

    def _check(self) -> None:
        data, scale, fmt, gran = self.data, self.scale, self.format, self.granularity
        if not isinstance(fmt, Format):
            raise Fp8TypeError(f"Fp8Tensor.format must be a Format, got {type(fmt).__name__}")
        if not isinstance(gran, Granularity):
            raise Fp8TypeError(
                f"Fp8Tensor.granularity must be a Granularity, got {type(gran).__name__}"
            )
        if not isinstance(data, torch.Tensor):
            raise Fp8TypeError(f"Fp8Tensor.data must be a tensor, got {type(data).__name__}")
        if data.dtype != fmt.torch_dtype and data.dtype != torch.uint8:
            raise Fp8TypeError(
                f"Fp8Tensor.data has dtype {data.dtype}; format {fmt.name} is stored as "
                f"{fmt.torch_dtype} or torch.uint8"
            )
        _check_fp32("scale", scale)
        want = gran.scale_shape(as_2d_shape(data.shape))
        if scale.shape != want:
            raise Fp8ValueError(
                f"Fp8Tensor.scale has shape {tuple(scale.shape)}; granularity {gran.name} on "
                f"data of shape {tuple(data.shape)} needs {want}"
            )
        if self.scale_inv is not None:
            _check_fp32("scale_inv", self.scale_inv)
            if self.scale_inv.shape != scale.shape:
                raise Fp8ValueError(
                    f"Fp8Tensor.scale_inv has shape {tuple(self.scale_inv.shape)}; it must "
                    f"have the scale's shape {tuple(scale.shape)}"
                )
        for name in ("global_scale", "global_scale_inv"):
            g = getattr(self, name)
            if g is not None:
                _check_fp32(name, g)
                if g.dim() != 0:
                    raise Fp8ValueError(
                        f"Fp8Tensor.{name} has shape {tuple(g.shape)}; it must be 0-d"
                    )
        if self.global_scale is None and self.global_scale_inv is not None:
            raise Fp8ValueError("Fp8Tensor.global_scale_inv given without global_scale")

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    def t(self) -> Fp8Tensor:
        """The transpose of a 2-D quantised tensor (views: no data or scale is copied)."""
        if self.data.dim() != 2:
            raise Fp8ValueError(
                f"Fp8Tensor.t() needs a 2-D tensor, got shape {tuple(self.data.shape)}"
            )
        tensorwise = self.scale.dim() == 0
        return Fp8Tensor(
            self.data.t(),
            self.scale if tensorwise else self.scale.t(),
            self.format,
            self.granularity.transposed(),
            self.scale_inv if tensorwise else _transposed_view(self.scale_inv),
            self.global_scale,
            self.global_scale_inv,
        )

    def expanded_scale_inv(self) -> torch.Tensor:
        """One block dequantisation factor per element of the 2-D view (leading dims
        flattened); the global level, if any, is not included."""
        return self.granularity.expand(self.scale_inv, as_2d_shape(self.data.shape))

    def __repr__(self) -> str:
        two_level = "" if self.global_scale is None else ", global_scale=yes"
        return (
            f"Fp8Tensor(shape={tuple(self.shape)}, format={self.format.name}, "
            f"granularity={self.granularity.name}{two_level}, device={self.device})"
        )


def _transposed_view(s: torch.Tensor) -> torch.Tensor:
    """``s.t()`` as a view; a row or column vector gets unit strides (``(M, 1)`` with strides
    ``(1, 1)``, not ``(1, M)``), the layout torch._scaled_mm demands of its scale vectors."""
    rows, cols = s.shape
    if rows == 1 or cols == 1:
        return s.reshape(-1).view(cols, rows)
    return s.t()


def _check_fp32(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise Fp8TypeError(f"Fp8Tensor.{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise Fp8TypeError(f"Fp8Tensor.{name} has dtype {t.dtype}; it must be torch.float32")
