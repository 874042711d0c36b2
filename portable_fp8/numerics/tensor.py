"""The quantised tensor value that :func:`portable_fp8.quantize` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import Format
from .granularity import Granularity, as_2d_shape
from .scaling import reciprocal

__all__ = ["Fp8Tensor"]


@dataclass(frozen=True)
class Fp8Tensor:
    """FP8 codes with their scales: ``dequantised = fp32(data) * fp32(1 / scale)``.

    ``data`` holds the codes in ``format``'s torch dtype (any strides), ``scale`` the fp32
    quantisation scales laid out as ``granularity.scale_shape(as_2d_shape(data.shape))``.
    """

    data: torch.Tensor
    scale: torch.Tensor
    format: Format
    granularity: Granularity

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def scale_inv(self) -> torch.Tensor:
        """The dequantisation factors ``fp32(1 / scale)``."""
        return reciprocal(self.scale)

    def t(self) -> Fp8Tensor:
        """The transpose of a 2-D quantised tensor (a view: no data is copied)."""
        if self.data.dim() != 2:
            raise ValueError("Fp8Tensor.t() needs a 2-D tensor")
        scale = self.scale if self.scale.dim() == 0 else self.scale.t()
        return Fp8Tensor(self.data.t(), scale, self.format, self.granularity.transposed())

    def expanded_scale_inv(self) -> torch.Tensor:
        """One dequantisation factor per element of the 2-D view (leading dims flattened)."""
        return self.granularity.expand(self.scale_inv, as_2d_shape(self.data.shape))

    def __repr__(self) -> str:
        return (
            f"Fp8Tensor(shape={tuple(self.shape)}, format={self.format.name}, "
            f"granularity={self.granularity.name}, device={self.device})"
        )
