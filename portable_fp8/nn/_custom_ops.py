"""torch.library custom ops around the backend calls the FP8 Linear makes.

``torch.compile`` sees each call as one opaque op (with a fake implementation giving output
shapes and dtypes), so a model with :class:`portable_fp8.nn.Linear` compiles with
``fullgraph=True``: the registry, the backend's Python and its kernels stay outside the
graph and run at execution time through :mod:`portable_fp8.ops`, with all its validation.

Ops (namespace ``portable_fp8_nn``):

* ``quantize(x, format, granularity, scale, margin, power_of_two, backend) -> (data, scale)``
  -- :func:`portable_fp8.ops.quantize`; ``data`` is contiguous, ``scale`` fp32 in the
  granularity's scale layout (a new tensor, even when ``scale`` was given).
* ``quantize_transpose(x, format, scale, amax, margin, power_of_two, backend) -> (data,
  data_t, scale, amax)`` -- :func:`portable_fp8.ops.quantize_transpose` (tensorwise, 2-D ``x``);
  ``data_t`` holds the codes of ``x.T``, contiguous.
* ``scaled_mm(a_data, a_scale, a_format, a_granularity, b_data, b_scale, b_format,
  b_granularity, out_dtype, backend) -> out`` -- :func:`portable_fp8.ops.scaled_mm`.
* ``amax(x, backend) -> amax`` -- :func:`portable_fp8.ops.compute_amax` (0-d fp32).

Gradients are not registered: the Linear's autograd Function calls these ops on detached
tensors in its forward and backward.
"""

from __future__ import annotations

import torch

from .. import ops
from ..formats import get_format
from ..granularity import as_2d_shape, get_granularity
from ..registry import select_backend
from ..tensor import Fp8Tensor

__all__ = ["quantize", "quantize_transpose", "scaled_mm", "amax", "gemm_dim_multiple"]

_NS = "portable_fp8_nn"


@torch.library.custom_op(f"{_NS}::quantize", mutates_args=())
def quantize(
    x: torch.Tensor,
    format: str,
    granularity: str,
    scale: torch.Tensor | None,
    margin: int,
    power_of_two: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    t = ops.quantize(
        x,
        format,
        granularity=granularity,
        scale=scale,
        margin=margin,
        power_of_two=power_of_two,
        backend=backend,
    )
    # Outputs of a custom op may not alias its inputs: copy a scale that was passed in.
    out_scale = t.scale.clone() if scale is not None else t.scale.contiguous()
    return t.data.contiguous(), out_scale


@quantize.register_fake
def _quantize_fake(x, format, granularity, scale, margin, power_of_two, backend):
    fmt = get_format(format)
    shape = get_granularity(granularity).scale_shape(as_2d_shape(x.shape))
    return x.new_empty(x.shape, dtype=fmt.torch_dtype), x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::quantize_transpose", mutates_args=())
def quantize_transpose(
    x: torch.Tensor,
    format: str,
    scale: torch.Tensor | None,
    amax: torch.Tensor | None,
    margin: int,
    power_of_two: bool,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, qt, out_amax = ops.quantize_transpose(
        x,
        format,
        scale=scale,
        amax=amax,
        margin=margin,
        power_of_two=power_of_two,
        backend=backend,
    )
    # Outputs of a custom op may not alias its inputs: copy what was passed in.
    out_scale = q.scale.clone() if scale is not None else q.scale
    out_amax = out_amax.clone() if amax is not None else out_amax
    return q.data, qt.data, out_scale, out_amax


@quantize_transpose.register_fake
def _quantize_transpose_fake(x, format, scale, amax, margin, power_of_two, backend):
    dtype = get_format(format).torch_dtype
    rows, cols = x.shape
    data, data_t = x.new_empty((rows, cols), dtype=dtype), x.new_empty((cols, rows), dtype=dtype)
    return data, data_t, x.new_empty((), dtype=torch.float32), x.new_empty((), dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::scaled_mm", mutates_args=())
def scaled_mm(
    a_data: torch.Tensor,
    a_scale: torch.Tensor,
    a_format: str,
    a_granularity: str,
    b_data: torch.Tensor,
    b_scale: torch.Tensor,
    b_format: str,
    b_granularity: str,
    out_dtype: torch.dtype,
    backend: str | None,
) -> torch.Tensor:
    a = Fp8Tensor(a_data, a_scale, get_format(a_format), get_granularity(a_granularity))
    b = Fp8Tensor(b_data, b_scale, get_format(b_format), get_granularity(b_granularity))
    return ops.scaled_mm(a, b, out_dtype=out_dtype, backend=backend).contiguous()


@scaled_mm.register_fake
def _scaled_mm_fake(a_data, a_scale, a_format, a_gran, b_data, b_scale, b_format, b_gran, od, be):
    return a_data.new_empty((a_data.shape[0], b_data.shape[1]), dtype=od)


@torch.library.custom_op(f"{_NS}::amax", mutates_args=())
def amax(x: torch.Tensor, backend: str | None) -> torch.Tensor:
    # compute_amax runs on whatever backend the ops layer uses for amax (the emulator's
    # definition); `backend` is accepted for symmetry and future per-backend fusion.
    del backend
    return ops.compute_amax(x).reshape(()).to(torch.float32).clone()


@amax.register_fake
def _amax_fake(x, backend):
    return x.new_empty((), dtype=torch.float32)


@torch.compiler.assume_constant_result
def gemm_dim_multiple(backend: str | None, device_type: str) -> int:
    """The multiple K and N must be for the backend that runs on ``device_type`` (1: any).

    Evaluated once at trace time under torch.compile (the registry is not traced).
    """
    return select_backend(backend, device_type).capabilities.gemm_dim_multiple
