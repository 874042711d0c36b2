"""FP8 model code: :class:`Linear`, scaling recipes and :func:`convert`.

>>> import torch, portable_fp8 as fp8
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
>>> model = fp8.nn.convert(model, recipe=fp8.nn.CurrentScaling())
>>> type(model[0]).__name__
'Linear'
>>> model.fp8_conversion.converted
['0']
"""

from .convert import ConversionReport, convert
from .linear import Linear
from .recipes import (
    Blockwise,
    CurrentScaling,
    DelayedScaling,
    GemmSpec,
    Recipe,
    StaticScaling,
)

__all__ = [
    "Blockwise",
    "ConversionReport",
    "CurrentScaling",
    "DelayedScaling",
    "GemmSpec",
    "Linear",
    "Recipe",
    "StaticScaling",
    "convert",
]
