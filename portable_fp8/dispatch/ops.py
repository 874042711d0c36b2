"""The FP8 operator API that model code calls.

Every function validates its arguments here, once, then hands them to the backend chosen by
the registry (see :mod:`portable_fp8.dispatch.registry`). Which features a backend declares is
asked of
its ``capabilities`` object (:meth:`~portable_fp8.dispatch.capabilities.Capabilities.why_not_cast`
and its siblings), which remembers its answers; the arguments' types, shapes, devices and
values are checked on every call. Scales follow one convention: a scale is
the **quantisation multiplier** (``cast_to_fp8(x, scale=s)`` stores ``x * s``, and
dequantising multiplies by ``fp32(1 / s)``).

Errors: wrong types raise :class:`~portable_fp8.errors.Fp8TypeError`, wrong shapes,
devices or values :class:`~portable_fp8.errors.Fp8ValueError`, unknown formats
:class:`~portable_fp8.errors.UnknownFormatError`, features the backend does not declare
:class:`~portable_fp8.errors.NotSupportedError`. Inputs of any strides are accepted; only
dense (strided) tensors are (sparse, nested, quantised and meta tensors raise
Fp8ValueError). Flags (``saturate``, ``power_of_two``, ``fast_accum``) must be ``bool``;
``margin`` an ``int`` in ``[0, max_margin(format)]`` (see
:func:`portable_fp8.numerics.scaling.check_margin`); ``generator`` a ``torch.Generator``.
Scales must be positive normal fp32 numbers; scale *tensors* are value-checked on the CPU
only, as on an accelerator the check would cost a device synchronisation (see
:mod:`portable_fp8.dispatch._validate`). Results carry no autograd state: codes, scales
and outputs are detached even when an input requires grad (these ops are not
differentiable; :class:`portable_fp8.nn.Linear` supplies the gradients).
"""

from __future__ import annotations

import torch

from ..errors import Fp8TypeError, Fp8ValueError, NotSupportedError
from ..numerics.cast import amax as _amax
from ..numerics.formats import Format, get_format
from ..numerics.granularity import TENSORWISE, Granularity, as_2d_shape, get_granularity
from ..numerics.scaling import check_margin, reciprocal
from ..numerics.tensor import Fp8Tensor
from . import _validate as _v
from .backend import Backend, CastTranspose
from .registry import select_backend

__all__ = [
    "cast_to_fp8",
    "cast_from_fp8",
    "compute_amax",
    "quantize",
    "quantize_transpose",
    "dequantize",
    "scaled_mm",
]

_HIGH_PRECISION = _v.HIGH_PRECISION
_ROUNDINGS = ("nearest", "stochastic")

FormatLike = str | torch.dtype | Format


_check_tensor = _v.check_tensor
_check_high_precision = _v.check_high_precision


def _device_type(t: torch.Tensor) -> str:
    """``t.device.type``, without building a ``torch.device`` for CUDA and CPU tensors."""
    if t.is_cuda:
        return "cuda"
    if t.is_cpu:
        return "cpu"
    return t.device.type


def _backend_for(backend: str | None, *tensors: torch.Tensor) -> tuple[Backend, str]:
    """The backend for a call on ``tensors`` (one device type) and that device type.

    Whether the backend runs on that device is checked by the caller's ``_check_*`` (cached).
    """
    _v.check_backend_name(backend)
    device = _device_type(tensors[0]) if tensors else "cpu"
    for t in tensors[1:]:
        if _device_type(t) != device:
            devices = sorted({t.device.type for t in tensors})
            raise Fp8ValueError(f"tensors are on different devices: {devices}")
    return select_backend(backend, device), device


#: str or dtype spellings of formats already resolved by get_format.
_FORMAT_OF: dict[str | torch.dtype, Format] = {}


def _format(spec: FormatLike) -> Format:
    """:func:`get_format` with its answers for str and dtype specs remembered."""
    if spec.__class__ is str or spec.__class__ is torch.dtype:
        fmt = _FORMAT_OF.get(spec)  # type: ignore[arg-type]
        if fmt is None:
            fmt = get_format(spec)
            if len(_FORMAT_OF) < 256:
                _FORMAT_OF[spec] = fmt  # type: ignore[index]
        return fmt
    return get_format(spec)


def _element_format(spec: FormatLike) -> Format:
    fmt = _format(spec)
    if not fmt.element:
        raise Fp8ValueError(f"{fmt.name} is a block-scale format only, not an element format")
    return fmt


def _scale_tensor(
    scale: torch.Tensor | float | None,
    like: torch.Tensor,
    shape: tuple[int, ...],
    what: str,
    *,
    check_values: bool = True,
) -> torch.Tensor:
    """The scale as an fp32 tensor of ``shape`` on ``like``'s device (None -> 1.0).

    A tensor that already is one (fp32, ``shape``, same device, dense, no grad) is returned
    itself, so that caches keyed by the scale tensor (e.g. of its reciprocal) hit across
    calls. ``check_values``: the values must be positive normal fp32 numbers (always for
    Python numbers, for CPU tensors only; see :mod:`._validate`).
    """
    if (
        scale.__class__ is torch.Tensor
        and scale.dtype is torch.float32
        and scale.shape == shape
        and scale.device == like.device
        and scale.layout is torch.strided
        and not scale.requires_grad
    ):
        if check_values:
            _v.check_scale_values(scale, what)
        return scale
    if scale is None:
        return torch.ones(shape, dtype=torch.float32, device=like.device)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.Tensor)):
        raise Fp8TypeError(f"{what} must be a float or a tensor, got {type(scale).__name__}")
    if not isinstance(scale, torch.Tensor):
        if check_values:
            scale = _v.check_scale_number(scale, what)
        elif isinstance(scale, int) and abs(scale) > _v.MAX_SCALE:
            raise Fp8ValueError(f"{what} must fit in fp32, got {scale!r}")
        else:  # an unchecked value (amax): fp32 rounds beyond its range to inf, as a cast does
            value = torch.tensor(float(scale), dtype=torch.float64).to(torch.float32)
            return value.expand(shape).to(like.device, copy=True)
        return torch.full(shape, float(scale), dtype=torch.float32, device=like.device)
    scale = _check_tensor(scale, what)
    if not scale.is_floating_point():
        raise Fp8TypeError(f"{what} must be a floating-point tensor, got {scale.dtype}")
    if scale.device != like.device:
        raise Fp8ValueError(f"{what} is on {scale.device} but the input is on {like.device}")
    if tuple(scale.shape) != shape and not (shape == () and scale.numel() == 1):
        raise Fp8ValueError(f"{what} must have shape {shape}, got {tuple(scale.shape)}")
    scale = scale.to(torch.float32).reshape(shape)
    if check_values:
        _v.check_scale_values(scale, what)
    return scale


def _rand_bits(
    x: torch.Tensor,
    rounding: str,
    rand_bits: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor | None:
    if rounding.__class__ is not str or rounding not in _ROUNDINGS:
        raise Fp8ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    generator = _v.check_generator(generator, x)
    if rounding == "nearest":
        if rand_bits is not None or generator is not None:
            raise Fp8ValueError("rand_bits and generator need rounding='stochastic'")
        return None
    if rand_bits is None:
        return torch.randint(
            -(2**31), 2**31, x.shape, dtype=torch.int32, device=x.device, generator=generator
        )
    rand_bits = _check_tensor(rand_bits, "rand_bits")
    if rand_bits.dtype not in (torch.int32, torch.int64, torch.uint32):
        raise Fp8TypeError(f"rand_bits must be int32, uint32 or int64, got {rand_bits.dtype}")
    if rand_bits.shape != x.shape:
        raise Fp8ValueError(f"rand_bits has shape {tuple(rand_bits.shape)}, x {tuple(x.shape)}")
    if rand_bits.device != x.device:
        raise Fp8ValueError(f"rand_bits is on {rand_bits.device} but x is on {x.device}")
    return rand_bits


def _check_cast_support(
    backend: Backend,
    device: str,
    fmt: Format,
    saturate: bool,
    rounding: str,
    granularity: Granularity | None = None,
) -> None:
    """Raise NotSupportedError unless ``backend`` declares this cast."""
    reason = backend.capabilities.why_not_cast(
        device, fmt.name, saturate=saturate, rounding=rounding, granularity=granularity
    )
    if reason is not None:
        raise NotSupportedError(backend.name, reason)


def _check_decode_support(backend: Backend, device: str, fmt: Format) -> None:
    """Raise NotSupportedError unless ``backend`` declares casts from ``fmt``."""
    reason = backend.capabilities.why_not_decode(device, fmt.name)
    if reason is not None:
        raise NotSupportedError(backend.name, reason)


def compute_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 0-d tensor; NaN if any element is NaN; 0 for an empty tensor."""
    return _amax(_check_high_precision(x))


def cast_to_fp8(
    x: torch.Tensor,
    format: FormatLike = "e4m3fn",
    scale: torch.Tensor | float | None = None,
    *,
    saturate: bool = True,
    rounding: str = "nearest",
    rand_bits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Cast ``x`` (fp32/bf16/fp16) to FP8: the codes of ``x * scale`` in ``format``'s dtype.

    ``scale`` is one quantisation multiplier for the whole tensor (a float or a 1-element
    tensor; None means 1). Rounding is to nearest even, or stochastic with explicit
    ``rand_bits`` (32-bit words, one per element) or random bits drawn from ``generator``.
    ``saturate`` selects the saturating or the OCP non-saturating overflow table. See
    :mod:`portable_fp8.numerics.cast` for the exact contract.

    >>> import torch, portable_fp8 as fp8
    >>> fp8.cast_to_fp8(torch.tensor([1.0, 500.0]), "e4m3fn").float()
    tensor([  1., 448.])
    """
    x = _check_high_precision(x)
    fmt = _format(format)
    _v.check_bool(saturate, "saturate")
    s = _scale_tensor(scale, x, (), "scale")
    bits = _rand_bits(x, rounding, rand_bits, generator)
    chosen, device = _backend_for(backend, x)
    _check_cast_support(chosen, device, fmt, saturate, rounding)
    return chosen.cast_to_fp8(x, fmt, s, TENSORWISE, saturate=bool(saturate), rand_bits=bits)


def cast_from_fp8(
    q: torch.Tensor,
    scale: torch.Tensor | float | None = None,
    *,
    format: FormatLike | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Dequantise FP8 codes: ``out_dtype(fp32(q) * fp32(1 / scale))``.

    ``scale`` is the quantisation scale the codes were made with. ``format`` defaults to the
    one ``q``'s dtype stores; name it for formats that share a dtype (``"e4m3_gaudi2"``)
    or for codes held as uint8.
    """
    q = _check_tensor(q, "q")
    if format is None:
        if q.dtype == torch.uint8:
            raise Fp8ValueError("uint8 codes need format= to say which FP8 format they hold")
        fmt = _format(q.dtype)
    else:
        fmt = _format(format)
        if q.dtype not in (torch.uint8, fmt.torch_dtype):
            raise Fp8TypeError(f"q has dtype {q.dtype}, which does not store {fmt.name}")
    _v.check_out_dtype(out_dtype)
    s = _scale_tensor(scale, q, (), "scale")
    chosen, device = _backend_for(backend, q)
    _check_decode_support(chosen, device, fmt)
    return chosen.cast_from_fp8(q, fmt, reciprocal(s), TENSORWISE, out_dtype)


def quantize(
    x: torch.Tensor,
    format: FormatLike = "e4m3fn",
    *,
    granularity: str | Granularity = "tensorwise",
    scale: torch.Tensor | float | None = None,
    margin: int = 0,
    power_of_two: bool = False,
    saturate: bool = True,
    rounding: str = "nearest",
    rand_bits: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> Fp8Tensor:
    """Quantise ``x`` to an :class:`Fp8Tensor` with one scale per block of ``granularity``.

    With ``scale=None`` the scales are computed from this tensor (current scaling): per
    block, ``scale = format.max / (amax * 2**margin)``, rounded down to a power of two if
    ``power_of_two`` (always, as the OCP MX rule, for ``mx_1x32``). A given ``scale`` must
    have the granularity's scale shape (see :mod:`portable_fp8.numerics.granularity`).
    """
    x = _check_high_precision(x)
    fmt = _element_format(format)
    gran = get_granularity(granularity)
    check_margin(margin, fmt)
    _v.check_bool(power_of_two, "power_of_two")
    _v.check_bool(saturate, "saturate")
    if x.dim() == 0 and not gran.is_tensorwise:
        raise Fp8ValueError(f"granularity {gran.name} needs a tensor of at least 1 dimension")
    bits = _rand_bits(x, rounding, rand_bits, generator)
    chosen, device = _backend_for(backend, x)
    _check_cast_support(chosen, device, fmt, saturate, rounding, gran)
    if scale is None:
        return chosen.quantize_dynamic(
            x,
            fmt,
            gran,
            margin=margin,
            power_of_two=power_of_two,
            saturate=bool(saturate),
            rand_bits=bits,
        )
    shape = () if gran is TENSORWISE else gran.scale_shape(as_2d_shape(x.shape))
    s = _scale_tensor(scale, x, shape, "scale")
    data = chosen.cast_to_fp8(x, fmt, s, gran, saturate=bool(saturate), rand_bits=bits)
    return Fp8Tensor(data, s, fmt, gran)


def quantize_transpose(
    x: torch.Tensor,
    format: FormatLike = "e4m3fn",
    *,
    scale: torch.Tensor | float | None = None,
    amax: torch.Tensor | None = None,
    margin: int = 0,
    power_of_two: bool = False,
    saturate: bool = True,
    backend: str | None = None,
) -> CastTranspose:
    """Tensorwise-quantise the 2-D ``x`` and, from the same read where the backend fuses it,
    ``x.T`` (contiguous): what an FP8 GEMM's backward needs of an operand.

    Returns ``(data, transposed, amax)``: ``transposed`` equals
    ``quantize(x.T.contiguous(), format, scale=data.scale)`` bit for bit, and ``amax`` is
    ``max |x|`` (with a given ``scale`` -- delayed scaling -- it is measured during the cast,
    for the amax history). Rounding is to nearest even.

    ``amax``: ``max |x|`` computed beforehand (e.g. fused by a compiler into the op that
    produced ``x``; its sign is ignored); the scale is then ``scale_from_amax(amax)``, with no
    pass over ``x`` for it.
    At most one of ``scale`` and ``amax`` may be given.

    >>> import torch, portable_fp8 as fp8
    >>> q, qt, amax = fp8.quantize_transpose(torch.tensor([[1.0, -2.0], [4.0, 0.5]]))
    >>> qt.data.float() / qt.scale, float(amax)
    (tensor([[ 1.0000,  4.0000],
            [-2.0000,  0.5000]]), 4.0)
    """
    x = _check_high_precision(x)
    if x.dim() != 2:
        raise Fp8ValueError(f"quantize_transpose takes a 2-D tensor, got shape {tuple(x.shape)}")
    fmt = _element_format(format)
    check_margin(margin, fmt)
    _v.check_bool(power_of_two, "power_of_two")
    _v.check_bool(saturate, "saturate")
    chosen, device = _backend_for(backend, x)
    _check_cast_support(chosen, device, fmt, saturate, "nearest")
    s = None if scale is None else _scale_tensor(scale, x, (), "scale")
    if amax is not None:
        if s is not None:
            raise Fp8ValueError("give scale or amax, not both")
        amax = _scale_tensor(amax, x, (), "amax", check_values=False)
    return chosen.quantize_transpose(
        x, fmt, s, amax, margin=margin, power_of_two=power_of_two, saturate=bool(saturate)
    )


def dequantize(
    t: Fp8Tensor, out_dtype: torch.dtype = torch.float32, *, backend: str | None = None
) -> torch.Tensor:
    """The high-precision value of ``t``: ``out_dtype(fp32(t.data) * t.scale_inv)``.

    With a second scale level: ``out_dtype(fp32(fp32(t.data) * t.scale_inv) *
    t.global_scale_inv)``, on backends that declare ``capabilities.global_scale`` (others
    raise NotSupportedError).
    """
    t = _v.check_fp8_tensor(t, "t")
    _v.check_out_dtype(out_dtype)
    chosen, device = _backend_for(backend, t.data)
    _check_decode_support(chosen, device, t.format)
    if t.global_scale is None:
        return chosen.cast_from_fp8(t.data, t.format, t.scale_inv, t.granularity, out_dtype)
    reason = chosen.capabilities.why_not_global_scale()
    if reason is not None:
        raise NotSupportedError(chosen.name, reason)
    blocks = chosen.cast_from_fp8(t.data, t.format, t.scale_inv, t.granularity, torch.float32)
    return (blocks * t.global_scale_inv).to(out_dtype)


def scaled_mm(
    a: Fp8Tensor,
    b: Fp8Tensor,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    fast_accum: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """``out_dtype(A @ B + bias + c)`` for quantised ``a`` (M x K) and ``b`` (K x N).

    A and B are the dequantised operands; products are exact and the accumulation is the
    backend's declared accumulator (see :mod:`portable_fp8.numerics.gemm`). Supported
    granularity pairs (A, B): tensorwise x tensorwise, rowwise x columnwise,
    block_1x128 x block_128x128 and mx_1x32 x mx_32x1, as the backend declares.
    ``bias`` has shape (N,), ``c`` (M, N); both must be floating point.

    ``fast_accum=True`` lets the backend use its declared ``capabilities.fast_accumulator``
    (on Hopper: about 14 bits, never promoted to fp32; faster, less accurate for large K).
    A backend that declares none runs its ``accumulator``, which is at least as accurate.
    """
    _check_operands(a, b)
    a, b = _v.check_fp8_tensor(a, "a"), _v.check_fp8_tensor(b, "b")
    (m, k), (k2, n) = a.data.shape, b.data.shape
    if k != k2:
        raise Fp8ValueError(f"inner dimensions differ: a is {m}x{k}, b is {k2}x{n}")
    _v.check_out_dtype(out_dtype)
    _v.check_bool(fast_accum, "fast_accum")
    if bias is None and c is None:
        device = _device_type(a.data)
        if _device_type(b.data) != device:
            _backend_for(backend, a.data, b.data)  # raises the error for mixed devices
        chosen = select_backend(_v.check_backend_name(backend), device)
    else:
        extra = []
        if bias is not None:
            bias = _check_tensor(bias, "bias")  # detached: the result carries no grad
            if not bias.is_floating_point() or tuple(bias.shape) != (n,):
                raise Fp8ValueError(
                    f"bias must be a floating tensor of shape ({n},), got "
                    f"{bias.dtype} {tuple(bias.shape)}"
                )
            extra.append(bias)
        if c is not None:
            c = _check_tensor(c, "c")
            if not c.is_floating_point() or tuple(c.shape) != (m, n):
                raise Fp8ValueError(
                    f"c must be a floating tensor of shape ({m}, {n}), got {c.dtype} "
                    f"{tuple(c.shape)}"
                )
            extra.append(c)
        chosen, device = _backend_for(backend, a.data, b.data, *extra)
    caps = chosen.capabilities
    reason = caps.why_not_gemm(
        device,
        a.format.name,
        b.format.name,
        a.granularity.name,
        b.granularity.name,
        out_dtype,
        bias=bias is not None,
        c=c is not None,
    )
    if reason is not None:
        raise NotSupportedError(chosen.name, reason)
    reason = caps.why_not_gemm_dims(k, n)
    if reason is not None:
        raise Fp8ValueError(f"backend {chosen.name!r} needs {reason}")
    if a.global_scale is not None or b.global_scale is not None:
        reason = caps.why_not_global_scale()
        if reason is not None:
            raise NotSupportedError(chosen.name, reason)
    fast = caps.runs_fast_accumulator(fast_accum)
    return chosen.scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c, fast_accum=fast)


def _check_operands(a: object, b: object) -> None:
    """Raise the error for the first GEMM operand that is not a 2-D Fp8Tensor."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Fp8Tensor):
            raise Fp8TypeError(
                f"{name} must be an Fp8Tensor (see quantize), got {type(t).__name__}"
            )
        if t.data.dim() != 2:
            raise Fp8ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
