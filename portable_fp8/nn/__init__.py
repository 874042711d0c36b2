"""FP8 model code: :class:`Linear`, scaling recipes and :func:`convert` (training);
:func:`convert_for_inference`, :func:`calibrate` and FP8 checkpoints (inference).

>>> import torch, portable_fp8 as fp8
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
>>> model = fp8.nn.convert(model, recipe=fp8.nn.CurrentScaling())
>>> type(model[0]).__name__
'Linear'
>>> model.fp8_conversion.converted
['0']
"""

from .calibration import Calibration, calibrate
from .checkpoints import (
    CheckpointReport,
    fp8_state_dict,
    load_fp8_checkpoint,
    load_fp8_state_dict,
    save_fp8_checkpoint,
)
from .convert import ConversionReport, convert
from .inference import (
    InferenceLinear,
    InferenceReport,
    NoTrainableWeightError,
    convert_for_inference,
)
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
    "Calibration",
    "CheckpointReport",
    "ConversionReport",
    "CurrentScaling",
    "DelayedScaling",
    "GemmSpec",
    "InferenceLinear",
    "InferenceReport",
    "Linear",
    "NoTrainableWeightError",
    "Recipe",
    "StaticScaling",
    "calibrate",
    "convert",
    "convert_for_inference",
    "fp8_state_dict",
    "load_fp8_checkpoint",
    "load_fp8_state_dict",
    "save_fp8_checkpoint",
]
