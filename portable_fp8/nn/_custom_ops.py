"""torch.library custom ops around the backend calls the FP8 Linear makes.

``torch.compile`` sees each call as one opaque op (with a fake implementation giving output
shapes and dtypes), so a model with :class:`portable_fp8.nn.Linear` compiles with
``fullgraph=True``: the registry, the backend's Python and its kernels stay outside the
graph and run at execution time through :mod:`portable_fp8.dispatch.ops`, with all its validation.

Ops (namespace ``portable_fp8_nn``):

The ops take and return plain tensors and strings (what a custom-op schema can hold): an
:class:`~portable_fp8.numerics.tensor.Fp8Tensor` is flattened to ``(data, scale, scale_inv)``
at this boundary and rebuilt on the other side, so the reciprocal a backend computed once
travels with the codes to the GEMM instead of being recomputed.

* ``quantize(x, format, granularity, scale, margin, power_of_two, backend) -> (data, scale,
  scale_inv)`` -- :func:`portable_fp8.dispatch.ops.quantize`; ``data`` is contiguous,
  ``scale`` fp32 in the granularity's scale layout (a new tensor, even when ``scale`` was
  given), ``scale_inv`` its reciprocal in the same layout.
* ``quantize_transpose(x, format, scale, amax, margin, power_of_two, backend) -> (data,
  data_t, scale, scale_inv, amax)`` -- :func:`portable_fp8.dispatch.ops.quantize_transpose`
  (tensorwise, 2-D ``x``); ``data_t`` holds the codes of ``x.T``, contiguous.
* ``scaled_mm(a_data, a_scale, a_scale_inv, a_format, a_granularity, b_data, b_scale,
  b_scale_inv, b_format, b_granularity, out_dtype, fast_accum, backend) -> out`` --
  :func:`portable_fp8.dispatch.ops.scaled_mm`; ``*_scale_inv`` must be ``fp32(1 / scale)``
  (as the quantize ops return it).
* ``amax(x, backend) -> amax`` -- :func:`portable_fp8.dispatch.ops.compute_amax` (0-d fp32).

Gradients are not registered: the Linear's autograd Function calls these ops on detached
tensors in its forward and backward.
"""

from __future__ import annotations

import torch

from ..dispatch import ops
from ..dispatch.registry import select_backend
from ..numerics.formats import get_format
from ..numerics.granularity import as_2d_shape, get_granularity
from ..numerics.tensor import Fp8Tensor

__all__ = [
    "quantize",
    "quantize_transpose",
    "scaled_mm",
    "amax",
    "gemm_dim_multiple",
    "prepare_for_compile",
]

_NS = "portable_fp8_nn"
#: The ops are defined with the low-level ``torch.library.Library`` API and one
#: CompositeExplicitAutograd kernel each: a call then costs about 2 us of host time, against
#: 10-40 us through ``torch.library.custom_op``'s Python autograd and aliasing wrappers
#: (measured on torch 2.13, CPU). No output aliases an input (the kernels copy where needed).
_LIB = torch.library.Library(_NS, "DEF")


def _define(schema: str, kernel, fake):
    """Register ``schema`` with ``kernel`` for every device and ``fake`` for tracing."""
    name = schema.split("(", 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_NS}::{name}", fake, lib=_LIB)
    return getattr(getattr(torch.ops, _NS), name).default


def _quantize(x, format, granularity, scale, margin, power_of_two, backend):
    t = ops.quantize(
        x,
        format,
        granularity=granularity,
        scale=scale,
        margin=margin,
        power_of_two=power_of_two,
        backend=backend,
    )
    out_scale = t.scale.clone() if scale is not None else t.scale.contiguous()
    return t.data.contiguous(), out_scale, t.scale_inv.contiguous()


def _quantize_fake(x, format, granularity, scale, margin, power_of_two, backend):
    fmt = get_format(format)
    shape = get_granularity(granularity).scale_shape(as_2d_shape(x.shape))
    data = x.new_empty(x.shape, dtype=fmt.torch_dtype)
    return data, x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


quantize = _define(
    "quantize(Tensor x, str format, str granularity, Tensor? scale, int margin, "
    "bool power_of_two, str? backend) -> (Tensor, Tensor, Tensor)",
    _quantize,
    _quantize_fake,
)


def _quantize_transpose(x, format, scale, amax, margin, power_of_two, backend):
    q, qt, out_amax = ops.quantize_transpose(
        x,
        format,
        scale=scale,
        amax=amax,
        margin=margin,
        power_of_two=power_of_two,
        backend=backend,
    )
    out_scale = q.scale.clone() if scale is not None else q.scale
    out_amax = out_amax.clone() if amax is not None else out_amax
    return q.data, qt.data, out_scale, q.scale_inv, out_amax


def _quantize_transpose_fake(x, format, scale, amax, margin, power_of_two, backend):
    dtype = get_format(format).torch_dtype
    rows, cols = x.shape
    data, data_t = x.new_empty((rows, cols), dtype=dtype), x.new_empty((cols, rows), dtype=dtype)
    scale, scale_inv, out_amax = (x.new_empty((), dtype=torch.float32) for _ in range(3))
    return data, data_t, scale, scale_inv, out_amax


quantize_transpose = _define(
    "quantize_transpose(Tensor x, str format, Tensor? scale, Tensor? amax, int margin, "
    "bool power_of_two, str? backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _quantize_transpose,
    _quantize_transpose_fake,
)


def _scaled_mm(a_data, a_s, a_si, a_fmt, a_gran, b_data, b_s, b_si, b_fmt, b_gran, od, fast, be):
    a = Fp8Tensor(a_data, a_s, get_format(a_fmt), get_granularity(a_gran), a_si)
    b = Fp8Tensor(b_data, b_s, get_format(b_fmt), get_granularity(b_gran), b_si)
    return ops.scaled_mm(a, b, out_dtype=od, fast_accum=fast, backend=be).contiguous()


def _scaled_mm_fake(a_data, a_s, a_si, a_fmt, a_gran, b_data, b_s, b_si, b_fmt, b_gran, od, *_):
    return a_data.new_empty((a_data.shape[0], b_data.shape[1]), dtype=od)


scaled_mm = _define(
    "scaled_mm(Tensor a_data, Tensor a_scale, Tensor a_scale_inv, str a_format, "
    "str a_granularity, Tensor b_data, Tensor b_scale, Tensor b_scale_inv, str b_format, "
    "str b_granularity, ScalarType out_dtype, bool fast_accum, str? backend) -> Tensor",
    _scaled_mm,
    _scaled_mm_fake,
)


def _amax(x, backend):
    # compute_amax runs on whatever backend the ops layer uses for amax (the emulator's
    # definition); `backend` is accepted for symmetry and future per-backend fusion.
    del backend
    return ops.compute_amax(x).reshape(()).to(torch.float32).clone()


def _amax_fake(x, backend):
    return x.new_empty((), dtype=torch.float32)


amax = _define("amax(Tensor x, str? backend) -> Tensor", _amax, _amax_fake)


def gemm_dim_multiple(backend: str | None, device_type: str) -> int:
    """The multiple K and N must be for the backend that runs on ``device_type`` (1: any).

    Once :func:`prepare_for_compile` has run, evaluated once at trace time under
    torch.compile (the registry is not traced).
    """
    return select_backend(backend, device_type).capabilities.gemm_dim_multiple


_prepared = False


def prepare_for_compile() -> None:
    """Mark :func:`gemm_dim_multiple` as a constant for torch.compile; idempotent.

    Marking imports ``torch._dynamo`` (about 3 s), so it is not done when this module is
    imported but by :class:`portable_fp8.nn.Linear` when one is built or unpickled, which is
    before any torch.compile can trace its forward. The op registrations above cost well
    under a millisecond and stay at import, so every op exists before anything traces.
    """
    global _prepared
    if not _prepared:
        torch.compiler.assume_constant_result(gemm_dim_multiple)  # marks the function in place
        _prepared = True
