"""portable-fp8: one FP8 operator API (casts, quantize, scaled GEMMs) on every accelerator.

Model code imports the ops from here; the registry picks the backend that runs them::

    import portable_fp8 as fp8

    q = fp8.quantize(x, "e4m3fn", granularity="rowwise")
    y = fp8.scaled_mm(q, fp8.quantize(w, "e4m3fn", granularity="rowwise").t())

A backend plugin subclasses :class:`Backend`, declares its :class:`Capabilities` and
returns its instances from a :data:`hookimpl`-marked ``portable_fp8_backends`` function (see
:mod:`portable_fp8.dispatch.hookspecs`). Every error raised on purpose is an
:class:`Fp8Error`.
"""

from . import nn
from .dispatch.backend import Backend, Capabilities, CastTranspose
from .dispatch.hookspecs import hookimpl
from .dispatch.ops import (
    cast_from_fp8,
    cast_to_fp8,
    compute_amax,
    dequantize,
    quantize,
    quantize_transpose,
    scaled_mm,
)
from .dispatch.registry import ENV_VAR, get_backend, list_backends, select_backend, use_backend
from .errors import (
    BackendUnavailableError,
    Fp8Error,
    Fp8TypeError,
    Fp8ValueError,
    NotSupportedError,
    UnknownBackendError,
    UnknownFormatError,
    UnknownRecipeError,
)
from .nn import convert
from .numerics.formats import FORMATS, Format, get_format
from .numerics.granularity import GRANULARITIES, Granularity, get_granularity
from .numerics.tensor import Fp8Tensor

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "Capabilities",
    "CastTranspose",
    "ENV_VAR",
    "FORMATS",
    "Format",
    "Fp8Error",
    "Fp8Tensor",
    "Fp8TypeError",
    "Fp8ValueError",
    "GRANULARITIES",
    "Granularity",
    "NotSupportedError",
    "UnknownBackendError",
    "UnknownFormatError",
    "UnknownRecipeError",
    "cast_from_fp8",
    "cast_to_fp8",
    "compute_amax",
    "convert",
    "dequantize",
    "get_backend",
    "get_format",
    "get_granularity",
    "hookimpl",
    "list_backends",
    "nn",
    "quantize",
    "quantize_transpose",
    "scaled_mm",
    "select_backend",
    "use_backend",
]
