"""``portable_fp8.nn.Linear``: a drop-in ``torch.nn.Linear`` whose three GEMMs run in FP8.

Contract (per call, with ``x`` of shape (..., in) flattened to M x K and W of shape N x K):

* forward ``y = x W^T (+ bias)``: x and W cast with the recipe's forward formats and
  granularities, one scaled GEMM to ``forward.out_dtype`` (default: the activation dtype),
  bias added in that dtype;
* backward ``dx = dy W`` (dgrad) and ``dW = dy^T x`` (wgrad): dy cast to the recipe's gradient
  format (E5M2 by default), scaled GEMMs to ``dgrad.out_dtype`` (default: x's dtype) and
  ``wgrad.out_dtype`` (default: the weight's dtype); ``dbias`` summed in fp32.
* A GEMM whose spec has ``fast_accum=True`` may run with the backend's declared fast
  accumulator (see :func:`portable_fp8.scaled_mm`); by default none does.
* A high-precision wgrad (``wgrad=GemmSpec.high_precision()``) is ``dW = dy^T x`` by
  ``torch.mm`` of the unquantised dy and x, both in the activation dtype, rounded to
  ``wgrad.out_dtype`` (default: the weight's dtype); x is then saved for the backward pass
  in its own dtype instead of as FP8 codes, and no transposed codes of x or dy are written.
* Weights stay in their own (master) dtype; only the GEMM operands are FP8. Tensorwise recipes
  cast x, W and dy once each with :func:`portable_fp8.quantize_transpose`, which also writes
  the transposed codes the other GEMM needs (cuBLASLt takes FP8 operands only as row-major A
  and column-major B); other granularities cast each operand along its GEMM's reduction
  dimension.
* Every cast and GEMM goes through :mod:`portable_fp8.dispatch.ops` (as torch.library custom
  ops, see :mod:`._custom_ops`), so the registry chooses the backend as for any other call;
  ``backend`` pins one by name. Operands travel as :class:`~portable_fp8.numerics.tensor.
  Fp8Tensor` (with the reciprocal of their scale, computed once where they were quantised),
  flattened to tensors only at the custom-op boundary.
* Delayed scaling keeps ``amax_history`` (3 x history_len, rows: input, weight, grad_output;
  column 0 newest) and ``scale`` (3,) as buffers: they are in ``state_dict`` and are plain
  fp32 tensors, so a checkpoint moves between backends and devices. They are updated in
  training mode only.
* If the backend needs K and N to be multiples of some m (``gemm_dim_multiple``), the token
  dimension (wgrad's K) is padded with zeros, which changes no result; layers whose feature
  sizes are not multiples are left to :func:`portable_fp8.nn.convert` to skip.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics.formats import get_format
from ..numerics.granularity import TENSORWISE, Granularity
from ..numerics.scaling import scale_from_amax
from ..numerics.tensor import Fp8Tensor
from ._distributed import reduce_amaxes, reduction_group
from .recipes import ROLES, CurrentScaling, DelayedScaling, GemmSpec, Recipe, StaticScaling

__all__ = ["Linear"]


_cops: ModuleType | None = None  # the torch.library custom ops, registered on first use


def _custom_ops() -> ModuleType:
    """The custom-op module, imported (and its ops registered) when first needed: a
    ``torch.library.Library`` alive at interpreter exit costs about 0.2 s of teardown, which
    a program that never builds a Linear should not pay."""
    global _cops
    if _cops is None:
        from . import _custom_ops as module

        _cops = module
    return _cops


class _Cfg(NamedTuple):
    recipe: Recipe
    backend: str | None
    dim_multiple: int
    update_state: bool
    dtype: torch.dtype
    #: Telemetry hook (:mod:`.telemetry`), None when off: ``probe(role, hp, q)`` gets each
    #: high-precision operand and its cast; it reads them and changes nothing.
    probe: Callable[[str, torch.Tensor, Fp8Tensor], None] | None = None
    #: Process group the amaxes are all-reduced over (MAX), None: no reduction
    #: (:func:`._distributed.reduction_group`).
    amax_group: object = None


def _quantize(x: torch.Tensor, fmt: str, gran: Granularity, scale, cfg: _Cfg) -> Fp8Tensor:
    r = cfg.recipe
    data, s, s_inv = _custom_ops().quantize(
        x, fmt, gran.name, scale, r.margin, r.power_of_two, cfg.backend
    )
    return Fp8Tensor(data, s, get_format(fmt), gran, s_inv)


def _quantize_b(bt: torch.Tensor, fmt: str, gran: Granularity, scale, cfg: _Cfg) -> Fp8Tensor:
    """The B operand (K x N) of granularity ``gran``, cast from its transpose ``bt`` (N x K)."""
    return _quantize(bt, fmt, gran.transposed(), scale, cfg).t()


def _amax(x: torch.Tensor, cfg: _Cfg) -> torch.Tensor:
    """max |x| (fp32, 0-d). Under torch.compile in plain torch ops, which the compiler fuses
    into the kernel that produced ``x`` (a pass over ``x`` saved); eagerly, the backend's.

    Where the compiler recomputes ``x``'s producer inside the reduction (inductor does for
    GELU), that copy may round differently from the ``x`` it materialises; the scale then
    comes from an amax one rounding away, and a value above it saturates (one code at most).
    """
    if torch.compiler.is_compiling():
        return x.abs().amax().to(torch.float32)  # exact in any order; NaN propagates
    return _custom_ops().amax(x, cfg.backend)


def _quantize_pair(x: torch.Tensor, fmt: str, scale, cfg: _Cfg, transposed: bool):
    """Tensorwise codes of ``x`` and, if ``transposed``, of ``x.T`` (else None).

    ``scale=None``: current scaling; under torch.compile its amax comes from :func:`_amax`.
    """
    if not transposed:
        return _quantize(x, fmt, TENSORWISE, scale, cfg), None
    r = cfg.recipe
    amax = _amax(x, cfg) if scale is None and torch.compiler.is_compiling() else None
    data, data_t, s, s_inv, _ = _custom_ops().quantize_transpose(
        x, fmt, scale, amax, r.margin, r.power_of_two, cfg.backend
    )
    f = get_format(fmt)
    return Fp8Tensor(data, s, f, TENSORWISE, s_inv), Fp8Tensor(data_t, s, f, TENSORWISE, s_inv)


def _mm(
    a: Fp8Tensor, b: Fp8Tensor, spec: GemmSpec, default_out: torch.dtype, cfg: _Cfg
) -> torch.Tensor:
    """One of the layer's GEMMs: ``spec`` gives its output dtype (else ``default_out``) and
    whether it may use the backend's fast accumulator. The operands are flattened here, at
    the custom op's boundary."""
    return _custom_ops().scaled_mm(
        a.data, a.scale, a.scale_inv, a.format.name, a.granularity.name,
        b.data, b.scale, b.scale_inv, b.format.name, b.granularity.name,
        spec.out_dtype or default_out, spec.fast_accum, cfg.backend,
    )  # fmt: skip


def _amax_stats(tensors: tuple[torch.Tensor, ...], cfg: _Cfg):
    """(amax, non-empty) of each tensor, all-reduced in one collective over
    ``cfg.amax_group``; None when there is no group (each cast then takes its own amax)."""
    if cfg.amax_group is None:
        return None
    amaxes = [_amax(t, cfg) for t in tensors]
    reduced, nonempty = reduce_amaxes(tensors, amaxes, cfg.amax_group)
    return list(zip(reduced, nonempty, strict=True))


def _tensor_scale(
    role: int, x: torch.Tensor, fmt: str, cfg: _Cfg, history, scales, stat=None
) -> torch.Tensor | None:
    """The tensorwise scale for ``x`` in ``role`` (None: let the backend compute it).

    ``stat``: ``(amax, non-empty)`` from :func:`_amax_stats` (reduced across ranks); None:
    ``x``'s own amax, where one is needed.
    """
    r = cfg.recipe
    f = get_format(fmt)
    if isinstance(r, StaticScaling):
        return torch.full((), r.scales()[ROLES[role]], dtype=torch.float32, device=x.device)
    amax, nonempty = stat if stat is not None else (None, x.numel() > 0)
    if isinstance(r, DelayedScaling):
        amax = _amax(x, cfg) if amax is None else amax
        hist = history[role]
        current = scale_from_amax(amax, f, margin=r.margin, power_of_two=r.power_of_two,
                                  choices=r.scale_choices)  # fmt: skip
        # Empty history (first step): scale from the current amax instead of the initial 1.
        scale = torch.where(hist.amax() > 0, scales[role], current)
        if cfg.update_state and nonempty:  # an empty batch says nothing about the range
            hist.copy_(torch.cat([amax.reshape(1), hist[:-1]]))
            ref = hist.amax() if r.amax_compute == "max" else hist[0]
            scales[role] = scale_from_amax(ref, f, margin=r.margin, power_of_two=r.power_of_two,
                                           choices=r.scale_choices)  # fmt: skip
        return scale
    if r.scale_choices is not None or amax is not None:
        amax = _amax(x, cfg) if amax is None else amax
        return scale_from_amax(amax, f, margin=r.margin, power_of_two=r.power_of_two,
                               choices=r.scale_choices)  # fmt: skip
    return None


def _pad_tokens(q: Fp8Tensor, dim: int, multiple: int) -> Fp8Tensor:
    """Zero-pad the token dimension ``dim`` of a tensorwise operand to ``multiple``."""
    n = q.data.shape[dim]
    extra = (-n) % multiple
    if extra == 0:
        return q
    codes = q.data.view(torch.uint8)  # code 0 is +0 in every element format
    pad = (0, extra) if dim == 1 else (0, 0, 0, extra)
    padded = F.pad(codes, pad).view(q.data.dtype)
    return Fp8Tensor(padded, q.scale, q.format, q.granularity, q.scale_inv)


def _pad_rows(x: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-x.shape[0]) % multiple
    return x if extra == 0 else F.pad(x, (0, 0, 0, extra))


def _hp_wgrad(dy2: torch.Tensor, x2: torch.Tensor, spec: GemmSpec, cfg: _Cfg, w_dtype):
    """The unquantised wgrad ``dy^T x``: one ``torch.mm`` in the activation dtype, rounded
    to ``spec.out_dtype`` (else ``w_dtype``). No backend is involved: nothing is FP8."""
    dt = cfg.dtype
    return torch.mm(dy2.t().to(dt), x2.to(dt)).to(spec.out_dtype or w_dtype)


class _Fp8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, cfg: _Cfg, history, scales):
        r = cfg.recipe
        a_gran, b_gran = r.granularities()
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        w = weight.detach()
        fx, fw = r.forward.a_format, r.forward.b_format
        if r.tensorwise:
            # The backward pass needs x^T (wgrad's B) and W^T (dgrad's B) codes: written now,
            # from the same read, and only where that gradient is wanted. A high-precision
            # wgrad needs x itself instead of x^T codes.
            need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            hp_dw = need_dw and not r.wgrad.quantized
            stats = _amax_stats((x2, w), cfg) or (None, None)  # one collective for both
            sx = _tensor_scale(0, x2, fx, cfg, history, scales, stats[0])
            qx, qx_t = _quantize_pair(x2, fx, sx, cfg, transposed=need_dw and not hp_dw)
            sw = _tensor_scale(1, w, fw, cfg, history, scales, stats[1])
            qw, qw_t = _quantize_pair(w, fw, sw, cfg, transposed=need_dx)
            if cfg.probe is not None:  # telemetry hook point
                cfg.probe("input", x2, qx)
                cfg.probe("weight", w, qw)
            saved = [q for q in (qx_t, qw_t) if q is not None]
            tensors = [t for q in saved for t in (q.data, q.scale, q.scale_inv)]
            ctx.save_for_backward(*tensors, *([x2] if hp_dw else []))
            qwt = qw.t()
        else:
            qx = _quantize(x2, fx, a_gran, None, cfg)
            qwt = _quantize_b(w, fw, b_gran, None, cfg)
            if cfg.probe is not None:  # telemetry hook point
                cfg.probe("input", x2, qx)
                cfg.probe("weight", w, qwt.t())
            ctx.save_for_backward(x2, w)
        out = _mm(qx, qwt, r.forward, cfg.dtype, cfg).to(cfg.dtype)
        if bias is not None:
            out = out + bias.to(cfg.dtype)
        # Tensors mutated later (delayed-scaling state) travel as attributes, not saved
        # tensors, so their version counters are not checked.
        ctx.cfg, ctx.history, ctx.scales = cfg, history, scales
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        # Not a view (``reshape`` would make one): an in-place op on a view returned by an
        # autograd Function drops hooks on its output, e.g. FSDP2's pre-backward hook.
        return torch.ops.aten._unsafe_view(out, (*x.shape[:-1], out.shape[-1]))

    @staticmethod
    def backward(ctx, dy):
        cfg: _Cfg = ctx.cfg
        r = cfg.recipe
        a_gran, b_gran = r.granularities()
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dy2 = dy.reshape(-1, dy.shape[-1]).contiguous()
        mult = cfg.dim_multiple
        dx = dw = None
        hp_dw = need_dw and not r.wgrad.quantized
        if r.tensorwise:
            # x^T codes if need_dw (x itself, last, if wgrad is high precision), then W^T
            # codes if need_dx
            saved = list(ctx.saved_tensors)
            fg = r.dgrad.a_format
            stat = (_amax_stats((dy2,), cfg) or (None,))[0]
            sg = _tensor_scale(2, dy2, fg, cfg, ctx.history, ctx.scales, stat)
            qdy, qdy_t = _quantize_pair(dy2, fg, sg, cfg, transposed=need_dw and not hp_dw)
            if cfg.probe is not None:  # telemetry hook point
                cfg.probe("grad_output", dy2, qdy)
            if hp_dw:
                dw = _hp_wgrad(dy2, saved.pop(), r.wgrad, cfg, ctx.w_dtype)
            elif need_dw:
                xt = saved[:3]
                del saved[:3]
            if need_dx:
                w_data, w_scale, w_inv = saved
                fw = get_format(r.dgrad.b_format)
                qw = Fp8Tensor(w_data, w_scale, fw, TENSORWISE, w_inv).t()  # N x K, col-major
                dx = _mm(qdy, qw, r.dgrad, ctx.x_dtype, cfg)
            if need_dw and not hp_dw:
                fx = get_format(r.wgrad.b_format)
                qx = Fp8Tensor(xt[0], xt[1], fx, TENSORWISE, xt[2]).t()  # M x K, col-major
                a, b = qdy_t, qx
                if mult > 1:
                    a, b = _pad_tokens(a, 1, mult), _pad_tokens(b, 0, mult)
                dw = _mm(a, b, r.wgrad, ctx.w_dtype, cfg)
        else:
            x2, w = ctx.saved_tensors
            if cfg.probe is not None:  # telemetry hook point: dy as dgrad's A operand casts it
                cfg.probe("grad_output", dy2, _quantize(dy2, r.dgrad.a_format, a_gran, None, cfg))
            if need_dx:
                qdy = _quantize(dy2, r.dgrad.a_format, a_gran, None, cfg)
                qw = _quantize_b(w.t().contiguous(), r.dgrad.b_format, b_gran, None, cfg)
                dx = _mm(qdy, qw, r.dgrad, ctx.x_dtype, cfg)
            if hp_dw:
                dw = _hp_wgrad(dy2, x2, r.wgrad, cfg, ctx.w_dtype)
            elif need_dw:
                dyp, xp = (_pad_rows(dy2, mult), _pad_rows(x2, mult)) if mult > 1 else (dy2, x2)
                qdyt = _quantize(dyp.t().contiguous(), r.wgrad.a_format, a_gran, None, cfg)
                qx = _quantize_b(xp.t().contiguous(), r.wgrad.b_format, b_gran, None, cfg)
                dw = _mm(qdyt, qx, r.wgrad, ctx.w_dtype, cfg)
        if dx is not None:
            dx = dx.to(ctx.x_dtype).reshape(ctx.x_shape)
        if dw is not None:
            dw = dw.to(ctx.w_dtype)
        dbias = None
        if ctx.b_dtype is not None and ctx.needs_input_grad[2]:
            dbias = dy2.to(torch.float32).sum(0).to(ctx.b_dtype)
        return dx, dw, dbias, None, None, None


class Linear(nn.Linear):
    """``torch.nn.Linear`` with FP8 forward and backward GEMMs (see the module docstring).

    ``recipe`` defaults to :class:`~portable_fp8.nn.recipes.CurrentScaling` (tensorwise,
    E4M3 forward, E5M2 gradients). ``backend`` names a backend; None lets the registry choose
    (``use_backend``, ``PORTABLE_FP8_BACKEND``, or the tensors' device).
    ``amax_reduction_group``: the ``torch.distributed`` process group the recipe's amaxes are
    all-reduced over when it reduces them (``DelayedScaling`` by default, ``CurrentScaling``
    with ``reduce_amax=True``); None: the default (world) group. A plain attribute, which
    may be set after construction or conversion. See docs/distributed.md.
    """

    #: Set by :mod:`portable_fp8.nn.telemetry` on sampled steps only (None: telemetry off).
    _fp8_probe: Callable[[str, torch.Tensor, Fp8Tensor], None] | None = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        recipe: Recipe | None = None,
        backend: str | None = None,
        amax_reduction_group=None,
    ) -> None:
        _custom_ops().prepare_for_compile()  # before any torch.compile can trace forward
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = recipe if recipe is not None else CurrentScaling()
        self.backend = backend
        self.amax_reduction_group = amax_reduction_group
        self._init_state(self.weight.device)

    def _init_state(self, device) -> None:
        if isinstance(self.recipe, DelayedScaling):
            n = len(ROLES)
            hist = torch.zeros(n, self.recipe.history_len, dtype=torch.float32, device=device)
            self.register_buffer("amax_history", hist)
            self.register_buffer("scale", torch.ones(n, dtype=torch.float32, device=device))
        else:
            self.amax_history = None
            self.scale = None

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, recipe: Recipe | None = None, backend: str | None = None
    ) -> Linear:
        """An FP8 Linear sharing ``linear``'s parameters (the same Parameter objects)."""
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device="meta",
            recipe=recipe,
            backend=backend,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new._init_state(linear.weight.device)
        return new

    def __setstate__(self, state) -> None:
        # Unpickling and deepcopy skip __init__; a restored layer may be compiled next.
        _custom_ops().prepare_for_compile()
        super().__setstate__(state)
        self.__dict__.setdefault("amax_reduction_group", None)  # pickled before it existed

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of the high-precision model has no FP8 state: keep the fresh one
        # (empty history), so converting and then loading such a checkpoint just works.
        for name in ("amax_history", "scale"):
            buf = getattr(self, name)
            if buf is not None and prefix + name not in state_dict:
                state_dict[prefix + name] = buf.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        else:
            dtype = x.dtype
        cfg = _Cfg(
            recipe=self.recipe,
            backend=self.backend,
            dim_multiple=_custom_ops().gemm_dim_multiple(self.backend, device_type),
            update_state=self.training,
            dtype=dtype,
            probe=self._fp8_probe,
            amax_group=reduction_group(self.recipe, self.amax_reduction_group),
        )
        out = _Fp8LinearFn.apply(x, self.weight, self.bias, cfg, self.amax_history, self.scale)
        return out

    def extra_repr(self) -> str:
        backend = f", backend={self.backend!r}" if self.backend else ""
        return f"{super().extra_repr()}, recipe={self.recipe}{backend}"
