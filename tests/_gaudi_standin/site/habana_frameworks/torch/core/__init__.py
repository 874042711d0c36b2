"""STAND-IN, NOT HARDWARE: importing this registers the stand-in ``hpu::`` FP8 ops."""

from _gaudi_standin import ops as _ops

_ops.register()
