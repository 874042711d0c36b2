"""Entry points shaped like other FP8 libraries' APIs, mapped onto portable-fp8.

* :mod:`portable_fp8.compat.torchao` -- ``convert_to_float8_training`` and
  ``Float8LinearConfig`` as in ``torchao.float8``: a torchao training script switches by its
  import line only.
"""

from . import torchao

__all__ = ["torchao"]
