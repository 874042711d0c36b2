"""STAND-IN, NOT HARDWARE: a fake ``habana_frameworks`` for portable-fp8's tests.

Only what the ``gaudi`` backend touches exists: ``torch.core`` (importing it registers the
stand-in ``hpu::`` FP8 ops, see ``tests/_gaudi_standin/ops.py``), ``torch.hpu`` (device
presence and name) and ``torch.utils.experimental`` (device type). Never install this.
"""

STANDIN = True
