"""Scaling granularities: which elements of a tensor share one scale.

A granularity is a block shape ``(rows, cols)`` on the tensor's 2-D view (all leading
dimensions flattened into rows, the last dimension as columns); ``-1`` stands for the whole
dimension. Every block of elements shares one scale, so the scale tensor has shape
``(ceil(R / rows), ceil(C / cols))``; tensorwise scales are 0-d. Blocks at the right and
bottom edges may be partial.

=================  ============  ==========================================
name               block         typical use
=================  ============  ==========================================
``tensorwise``     (-1, -1)      one scale per tensor
``rowwise``        (1, -1)       one scale per row (activations, per token)
``columnwise``     (-1, 1)       one scale per column (B operand, per channel)
``block_1x128``    (1, 128)      DeepSeek-V3 activations
``block_128x128``  (128, 128)    DeepSeek-V3 weights
``mx_1x32``        (1, 32)       OCP MX: power-of-two scales stored as E8M0
=================  ============  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import Fp8ValueError

__all__ = [
    "Granularity",
    "TENSORWISE",
    "ROWWISE",
    "COLUMNWISE",
    "BLOCK_1x128",
    "BLOCK_128x128",
    "MX_1x32",
    "GRANULARITIES",
    "get_granularity",
    "as_2d_shape",
]


@dataclass(frozen=True)
class Granularity:
    """Block shape ``(rows, cols)`` sharing one scale; ``-1`` is a whole dimension.

    ``power_of_two`` marks granularities whose scales must be powers of two (OCP MX, whose
    scales are stored as E8M0).

    ``scale_format`` names the format the block scales are stored in when exported (None:
    fp32). Any format may be one (``Format.element`` or not): OCP MX stores E8M0; a
    two-level scheme may store E4M3 block scales under an fp32
    ``Fp8Tensor.global_scale``. In an :class:`~portable_fp8.numerics.tensor.Fp8Tensor` the
    scales are always fp32 tensors (holding values of that format).
    """

    name: str
    rows: int
    cols: int
    power_of_two: bool = False
    scale_format: str | None = None

    def __post_init__(self) -> None:
        if self.scale_format is not None:
            from .formats import FORMATS

            if self.scale_format not in FORMATS:
                raise Fp8ValueError(
                    f"granularity {self.name}: unknown scale_format {self.scale_format!r}; "
                    f"known: {', '.join(FORMATS)}"
                )

    @property
    def is_tensorwise(self) -> bool:
        return self.rows == -1 and self.cols == -1

    def block(self, shape2d: tuple[int, int]) -> tuple[int, int]:
        """The concrete block shape on a 2-D view of shape ``shape2d``."""
        r, c = shape2d
        return (
            max(r, 1) if self.rows == -1 else self.rows,
            max(c, 1) if self.cols == -1 else self.cols,
        )

    def scale_shape(self, shape2d: tuple[int, int]) -> tuple[int, ...]:
        """Shape of the scale tensor for a 2-D view of shape ``shape2d`` (0-d if tensorwise)."""
        if self.is_tensorwise:
            return ()
        br, bc = self.block(shape2d)
        # A whole-dimension block (-1) is one block even when the dimension is empty, so a
        # rowwise scale is (R, 1) for every R x C, C = 0 included.
        rows = 1 if self.rows == -1 else -(-shape2d[0] // br)
        cols = 1 if self.cols == -1 else -(-shape2d[1] // bc)
        return (rows, cols)

    def transposed(self) -> Granularity:
        """The granularity of the transposed tensor (rowwise <-> columnwise, 1x128 -> 128x1)."""
        key = (self.cols, self.rows, self.power_of_two, self.scale_format)
        for g in GRANULARITIES.values():
            if (g.rows, g.cols, g.power_of_two, g.scale_format) == key:
                return g
        return Granularity(
            f"{self.name}^T", self.cols, self.rows, self.power_of_two, self.scale_format
        )

    def expand(self, scale: torch.Tensor, shape2d: tuple[int, int]) -> torch.Tensor:
        """Broadcast a scale tensor to one scale per element of the 2-D view."""
        if self.is_tensorwise:
            return scale.reshape(1, 1)
        br, bc = self.block(shape2d)
        full = scale.repeat_interleave(br, dim=0).repeat_interleave(bc, dim=1)
        return full[: shape2d[0], : shape2d[1]]

    def per_element(self, scale: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The scale broadcastable to a tensor of ``shape`` (0-d if tensorwise)."""
        if self.is_tensorwise:
            return scale.reshape(())
        return self.expand(scale, as_2d_shape(shape)).reshape(shape)

    def __repr__(self) -> str:
        return f"Granularity({self.name!r})"


TENSORWISE = Granularity("tensorwise", -1, -1)
ROWWISE = Granularity("rowwise", 1, -1)
COLUMNWISE = Granularity("columnwise", -1, 1)
BLOCK_1x128 = Granularity("block_1x128", 1, 128)
BLOCK_128x128 = Granularity("block_128x128", 128, 128)
MX_1x32 = Granularity("mx_1x32", 1, 32, power_of_two=True, scale_format="e8m0fnu")

#: The named granularities.
GRANULARITIES: dict[str, Granularity] = {
    g.name: g for g in (TENSORWISE, ROWWISE, COLUMNWISE, BLOCK_1x128, BLOCK_128x128, MX_1x32)
}
GRANULARITIES["block_128x1"] = Granularity("block_128x1", 128, 1)
GRANULARITIES["mx_32x1"] = Granularity("mx_32x1", 32, 1, power_of_two=True, scale_format="e8m0fnu")


def get_granularity(spec: str | Granularity) -> Granularity:
    """Return the granularity named by ``spec`` (or ``spec`` itself)."""
    if isinstance(spec, Granularity):
        return spec
    if isinstance(spec, str) and spec in GRANULARITIES:
        return GRANULARITIES[spec]
    raise Fp8ValueError(f"unknown granularity {spec!r}; known: {', '.join(GRANULARITIES)}")


def as_2d_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view a granularity applies to: leading dimensions flattened into rows."""
    if len(shape) == 0:
        return (1, 1)
    cols = shape[-1]
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return (rows, cols)
