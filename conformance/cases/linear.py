"""FP8 Linear cases: :class:`portable_fp8.nn.Linear` end to end against the same layer pinned
to the reference backend.

For every recipe (current tensorwise and rowwise, delayed with both amax rules, static,
blockwise, the Gaudi2 variant, a forward GEMM asked for with ``fast_accum``), one Linear runs
forward and backward on the backend under test and one on ``reference``, with identical
weights, bias, inputs and grad_output drawn from the case's own generator. A recipe the
backend cannot run is "not supported" with the reason
:func:`portable_fp8.nn.convert.unsupported_reason` gives (every GEMM's output dtype is made
explicit, the activation dtype, so that the check covers it too).

Both sides run through a recording wrapper of their backend, which keeps the operands of
every scaled GEMM the layer makes (forward, dgrad, wgrad). The judgement:

* **Casts, bit for bit**: casts and amax are bit-exact by contract and the inputs are
  identical, so each GEMM's FP8 operands (codes, scales, format, granularity) must equal the
  reference's. Where the backend needs K and N to be multiples of m, the layer pads wgrad's K
  (the tokens) with zeros: the padding must be code 0 and the rest equal.
* **GEMMs, within the analytic bound**: the operands being equal, y, dx and dW can differ
  only by the accumulation. With ``E`` the exact product of the (shared) dequantised operands,
  each side's GEMM output ``g_s`` satisfies ``|g_s - E| <= B_s``, ``B_s`` the
  :func:`~portable_fp8.numerics.gemm.gemm_error_bound` of the accumulator that side declares
  (the fast one for a ``fast_accum`` GEMM where declared, as the op layer decides; the
  reference's is exact) and its own K (padded or not), which includes the GEMM's rounding to
  its output dtype. So ``|g_b - g_r| <= B_b + B_r``. ``E`` is computed in float64, so as in
  :mod:`.gemm` each side's bound also carries ``gamma_{K+2}(2**-53) sum |a||b|``.
* **The layer's own rounding after the GEMM**: the forward GEMM's output dtype is the
  activation dtype, so the only further rounding is the bias addition ``y = g + bias`` in that
  dtype, on each side: one correctly rounded addition (for bf16/fp16, possibly via fp32: a
  double rounding), at most one ulp of the out dtype at the result's magnitude (rounding to
  nearest never leaves the binade of the exact sum downwards, so the ulp at ``|y_s|`` is at
  least the ulp at the exact sum). Hence ``+ ulp(|y_b|) + ulp(|y_r|)`` for a layer with bias;
  dx and dW are the GEMM outputs themselves (the layer's ``.to`` is to the same dtype).
* **dbias** is ``sum_tokens dy`` in fp32 then rounded to the bias dtype, by torch on each
  side's device (the summation order may differ between devices): a GEMM of ``dy^T`` with a
  ones vector in an fp32 accumulator, judged by the same bound for both sides.
* **Delayed scaling**: three steps with input and gradient ranges changing between steps
  (x times 1, 8, 1/4; dy times 1, 1/2, 4), so the stored scales lag the data and the history
  decides them; after every step ``amax_history`` and ``scale`` must equal the reference's bit
  for bit (as must every step's operands).
* **Whole results**: y, dx, dW and dbias have the dtype, shape and device of the layer's
  parameters and input (3-D inputs keep their leading dimensions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from portable_fp8.backends.gaudi import gaudi2_recipe
from portable_fp8.backends.reference import ReferenceBackend
from torch import nn

from portable_fp8.dispatch import registry
from portable_fp8.dispatch.backend import Backend
from portable_fp8.nn.convert import unsupported_reason
from portable_fp8.nn.linear import Linear
from portable_fp8.nn.recipes import (
    Blockwise,
    CurrentScaling,
    DelayedScaling,
    GemmSpec,
    Recipe,
    StaticScaling,
)
from portable_fp8.numerics.cast import codes_of, codes_to_float
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR, abs_product_sum, gemm_error_bound
from portable_fp8.numerics.tensor import Fp8Tensor

from .. import data
from ..model import Case, CaseResult, Env, Verdict

__all__ = ["LinearSpec", "linear_cases", "LINEAR_RECIPES"]

_DT_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_GEMMS = ("forward", "dgrad", "wgrad")
#: Registry keys under which the case installs its two recording wrappers (removed after).
_UNDER_TEST, _REFERENCE = "conformance-linear:under-test", "conformance-linear:reference"

#: Recipe name -> (recipe, description). Static scales keep randn data (|x| < 8, |W| < 1,
#: |dy| < 8) inside E4M3's 448 and E5M2's 57344 without flushing most of it to zero.
LINEAR_RECIPES: dict[str, tuple[Callable[[], Recipe], str]] = {
    "current": (CurrentScaling, "current scaling, tensorwise"),
    "current-pow2": (
        partial(CurrentScaling, power_of_two=True, margin=1),
        "current scaling, tensorwise, power-of-two scales, margin 1",
    ),
    "current-rowwise": (
        partial(CurrentScaling, granularity="rowwise"),
        "current scaling, rowwise A x columnwise B",
    ),
    "delayed": (
        partial(DelayedScaling, history_len=4),
        "delayed scaling, history 4, amax_compute=max (3 steps)",
    ),
    "delayed-most-recent": (
        partial(DelayedScaling, history_len=2, amax_compute="most_recent"),
        "delayed scaling, history 2, amax_compute=most_recent (3 steps)",
    ),
    "static": (
        partial(StaticScaling, input_scale=32.0, weight_scale=192.0, grad_output_scale=1000.0),
        "static scales 32 (x), 192 (W), 1000 (dy)",
    ),
    "blockwise": (Blockwise, "blockwise: 1x128 A blocks, 128x128 B blocks"),
    "gaudi2": (
        lambda: gaudi2_recipe(CurrentScaling()),
        "Gaudi2 variant of current scaling (e4m3_gaudi2, hardware-aligned scales)",
    ),
    "fast-accum": (
        partial(CurrentScaling, forward=GemmSpec("e4m3fn", "e4m3fn", fast_accum=True)),
        "current scaling, forward GEMM with fast_accum=True",
    ),
}
_QUICK_RECIPES = ("current", "current-rowwise", "delayed", "static", "blockwise", "gaudi2",
                  "fast-accum")  # fmt: skip


@dataclass(frozen=True)
class LinearSpec:
    """One case: recipe name, input shape (..., in), out features, dtype, bias."""

    recipe: str
    x_shape: tuple[int, ...]
    out_features: int
    dtype: torch.dtype = torch.float32
    bias: bool = False

    @property
    def in_features(self) -> int:
        return self.x_shape[-1]

    @property
    def steps(self) -> int:
        return 3 if self.recipe.startswith("delayed") else 1

    @property
    def id(self) -> str:
        shape = "x".join(map(str, self.x_shape))
        return (
            f"linear/{self.recipe}/{_DT_NAMES[self.dtype]}/x={shape}/out={self.out_features}"
            + "/bias" * self.bias
        )

    def describe(self) -> str:
        bias = "with bias" if self.bias else "no bias"
        return (
            f"FP8 Linear({self.in_features}, {self.out_features}, {bias}), "
            f"{LINEAR_RECIPES[self.recipe][1]}; x {tuple(self.x_shape)} "
            f"{_DT_NAMES[self.dtype]} (weights too), randn data; forward and backward "
            "against the reference"
        )

    def recipe_object(self) -> Recipe:
        """The recipe with every GEMM's output dtype made explicit (the activation dtype)."""
        r = LINEAR_RECIPES[self.recipe][0]()
        gemms = {k: dataclasses.replace(v, out_dtype=self.dtype) for k, v in r.gemms().items()}
        return dataclasses.replace(r, **gemms)


# -- running one side ----------------------------------------------------------------------


class _Recorder:
    """A backend as it is, but keeping the operands of every ``scaled_mm`` it runs."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.gemms: list[tuple[Fp8Tensor, Fp8Tensor, bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def scaled_mm(self, a: Fp8Tensor, b: Fp8Tensor, **kw: Any) -> torch.Tensor:
        self.gemms.append((a, b, bool(kw.get("fast_accum", False))))
        return self._backend.scaled_mm(a, b, **kw)


@contextlib.contextmanager
def _registered(backends: dict[str, Any]) -> Iterator[None]:
    """Make ``backends`` reachable by key for ``Linear(backend=key)`` during the block.

    The registry has no public registration call besides entry points, and the backend under
    test may be an object it does not hold (a mutant, a differently configured instance), so
    the keys are added to the loaded registry and removed after, as is any availability entry
    the lookups add.
    """
    state = registry._registry()
    known = set(state.unavailable)
    for key, backend in backends.items():
        state.backends[key] = backend
    try:
        yield
    finally:
        for key in backends:
            state.backends.pop(key, None)
        for name in set(state.unavailable) - known:
            del state.unavailable[name]


@dataclass
class _Step:
    """What one training step of one side produced."""

    y: torch.Tensor
    dx: torch.Tensor | None
    dw: torch.Tensor | None
    db: torch.Tensor | None
    gemms: list[tuple[Fp8Tensor, Fp8Tensor, bool]]
    history: torch.Tensor | None
    scale: torch.Tensor | None


def _layer(spec: LinearSpec, key: str, w: torch.Tensor, b: torch.Tensor | None) -> Linear:
    """The FP8 Linear on ``w``'s device with parameters sharing ``w`` and ``b``'s storage
    (built on the meta device, so torch's global generator is not drawn from)."""
    plain = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias, device="meta")
    plain.weight = nn.Parameter(w)
    if b is not None:
        plain.bias = nn.Parameter(b)
    return Linear.from_linear(plain, recipe=spec.recipe_object(), backend=key).train()


def _step(layer: Linear, rec: _Recorder, x: torch.Tensor, dy: torch.Tensor) -> _Step:
    layer.weight.grad = None
    if layer.bias is not None:
        layer.bias.grad = None
    rec.gemms = []
    xin = x.detach().requires_grad_(True)  # shares x's storage: writes into it are seen
    y = layer(xin)
    y.backward(dy)
    hist, scale = layer.amax_history, layer.scale
    return _Step(
        y.detach(),
        xin.grad,
        layer.weight.grad,
        None if layer.bias is None else layer.bias.grad,
        rec.gemms,
        None if hist is None else hist.detach().clone(),
        None if scale is None else scale.detach().clone(),
    )


# -- judging -------------------------------------------------------------------------------


def _operand_problem(what: str, got: Fp8Tensor, want: Fp8Tensor) -> str | None:
    """Why the backend's GEMM operand differs from the reference's (None: bit-identical)."""
    if got.format != want.format or got.granularity != want.granularity:
        return (
            f"{what}: {got.format.name} {got.granularity.name}, want {want.format.name} "
            f"{want.granularity.name}"
        )
    g = got.data.cpu()
    if g.dim() != 2 or want.data.dim() != 2:
        return f"{what}: {g.dim()}-D codes, want 2-D"
    (gm, gk), (wm, wk) = g.shape, want.data.shape
    if (gm, gk) != (wm, wk):
        # Zero padding of K (tokens) for a backend that needs multiples: the rest must be 0.
        if gm < wm or gk < wk or (gm != wm and gk != wk):
            return f"{what}: shape {(gm, gk)}, want {(wm, wk)}"
        pad = codes_of(g).clone()
        pad[:wm, :wk] = 0
        if bool(pad.any()):
            return f"{what}: the padding of K from {(wm, wk)} to {(gm, gk)} is not code 0"
        g = g[:wm, :wk]
    gs, ws = got.scale.cpu().float(), want.scale.float()
    if gs.shape != ws.shape:
        return f"{what}: scale shape {tuple(gs.shape)}, want {tuple(ws.shape)}"
    bad_scales = data.float_mismatches(gs, ws)
    bad_codes = data.code_mismatches(g, want.data, want.format)
    if not (bad_scales.any() or bad_codes.any()):
        return None
    parts = []
    if bad_scales.any():
        i = int(bad_scales.nonzero()[0, 0])
        parts.append(
            f"{int(bad_scales.sum())} of {ws.numel()} scales differ (first: block {i}, got "
            f"{float(gs.reshape(-1)[i])!r} want {float(ws.reshape(-1)[i])!r})"
        )
    if bad_codes.any():
        i = int(bad_codes.nonzero()[0, 0])
        gc, wc = codes_of(g).reshape(-1), codes_of(want.data).reshape(-1)
        parts.append(
            f"{int(bad_codes.sum())} of {wc.numel()} codes differ (first: element {i}, got "
            f"0x{int(gc[i]):02x} want 0x{int(wc[i]):02x})"
        )
    return f"{what}: " + " and ".join(parts) + " from the reference's (casts are bit-exact)"


def _dequant64(q: Fp8Tensor) -> torch.Tensor:
    return codes_to_float(codes_of(q.data), q.format).double() * q.expanded_scale_inv().double()


def _gemm_bound(
    gemm: tuple[Fp8Tensor, Fp8Tensor, bool], caps, out_dtype: torch.dtype, k: int, ref_ops
) -> torch.Tensor:
    """One side's bound on |g_s - E| (see the module docstring), for its own K and accumulator,
    computed on the reference's operands ``ref_ops`` (which equal the backend's)."""
    a, b = ref_ops
    abs_sum = abs_product_sum(
        a.data, b.data, a.format, b.format, a.scale, b.scale, a.granularity, b.granularity
    )
    exact = _dequant64(a) @ _dequant64(b)
    acc = caps.fast_accumulator if gemm[2] else caps.accumulator
    bound = gemm_error_bound(abs_sum, k, accumulator=acc, out_dtype=out_dtype, exact=exact)
    n64 = k + 2  # the float64 E's own rounding, as in .gemm
    return bound + n64 * 2.0**-53 / (1 - n64 * 2.0**-53) * abs_sum


def _ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One ulp of ``dtype`` at |v| (float64; the subnormal spacing below the smallest normal)."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(v.double().abs().clamp_min(fi.smallest_normal))
    return torch.ldexp(torch.full_like(v, fi.eps, dtype=torch.float64), e - 1)


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor):
    """(max |error|/bound, problem or None) of ``got`` against the reference's ``want``."""
    g, w = got.detach().cpu().double().reshape(-1), want.detach().double().reshape(-1)
    b = bound.reshape(-1)
    finite = torch.isfinite(w)
    special = ~finite & data.float_mismatches(got.detach().cpu(), want.detach())
    err = torch.where(finite, (g - w).abs(), torch.zeros_like(w))
    err = torch.where(finite & ~torch.isfinite(g), torch.inf, err)
    ratio = err / b
    over = finite & ~(err <= b)
    worst = float(ratio.max()) if ratio.numel() else 0.0
    if not (over.any() or special.any()):
        return worst, None
    i = int((over | special).nonzero()[0, 0])
    return worst, (
        f"{what}: {int(over.sum())} of {w.numel()} elements over the bound, "
        f"{int(special.sum())} NaN/inf mismatches; first at flat index {i}: got "
        f"{float(g[i])!r}, reference {float(w[i])!r}, bound {float(b[i]):.3g}"
    )


def _results_problem(spec: LinearSpec, s: _Step, device: torch.device) -> str | None:
    out_shape = (*spec.x_shape[:-1], spec.out_features)
    wanted = [
        ("y", s.y, out_shape),
        ("dx", s.dx, spec.x_shape),
        ("dW", s.dw, (spec.out_features, spec.in_features)),
    ]
    if spec.bias:
        wanted.append(("dbias", s.db, (spec.out_features,)))
    for what, t, shape in wanted:
        if t is None:
            return f"{what}: no gradient was produced"
        p = data.result_problem(t, dtype=spec.dtype, shape=shape, device=device, what=what)
        if p:
            return p
    if len(s.gemms) != len(_GEMMS):
        return f"the layer ran {len(s.gemms)} scaled GEMMs in a step, want 3 ({_GEMMS})"
    return None


def _judge_step(spec: LinearSpec, dy: torch.Tensor, got: _Step, ref: _Step, caps, ref_caps):
    """(worst error/bound ratio per output, problems) of one step."""
    problems: list[str] = []
    for name, g, w in zip(_GEMMS, got.gemms, ref.gemms, strict=True):
        for which, go, wo in (("A", g[0], w[0]), ("B", g[1], w[1])):
            p = _operand_problem(f"{name} GEMM operand {which}", go, wo)
            if p:
                problems.append(p)
    if problems:  # the values cannot be judged by the accumulation bound
        return {}, problems
    bounds = {}
    for name, g, w in zip(_GEMMS, got.gemms, ref.gemms, strict=True):
        ops = (w[0], w[1])
        bounds[name] = _gemm_bound(g, caps, spec.dtype, g[0].data.shape[1], ops) + _gemm_bound(
            w, ref_caps, spec.dtype, w[0].data.shape[1], ops
        )
    y_bound = bounds["forward"].reshape(got.y.shape)
    if spec.bias:  # the bias addition's rounding, on each side
        y_bound = y_bound + _ulp(got.y.cpu(), spec.dtype) + _ulp(ref.y, spec.dtype)
    pairs = [
        ("y", got.y, ref.y, y_bound),
        ("dx", got.dx, ref.dx, bounds["dgrad"]),
        ("dW", got.dw, ref.dw, bounds["wgrad"]),
    ]
    if spec.bias:
        pairs.append(("dbias", got.db, ref.db, _dbias_bound(dy, spec.dtype)))
    ratios = {}
    for what, g, w, bound in pairs:
        ratios[what], p = _compare(what, g, w, bound)
        if p:
            problems.append(p)
    return ratios, problems


def _dbias_bound(dy: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Both sides' fp32 sums of ``dy`` over the tokens, as GEMMs ``dy^T 1`` with an fp32
    accumulator (see the module docstring)."""
    d = dy.detach().cpu().double().reshape(-1, dy.shape[-1])
    one = gemm_error_bound(
        d.abs().sum(0), d.shape[0], accumulator=FP32_ACCUMULATOR, out_dtype=dtype, exact=d.sum(0)
    )
    return 2 * one  # the backend's sum and the reference's, each within ``one`` of the exact


# -- the case ------------------------------------------------------------------------------

#: Per-step magnitudes of x and dy (delayed scaling: the ranges move, the history lags).
_X_MAGS, _DY_MAGS = (1.0, 8.0, 0.25), (1.0, 0.5, 4.0)


def run_linear(env: Env, spec: LinearSpec) -> CaseResult:
    """Run the layer on the backend and on the reference and judge it (module docstring)."""
    g = env.generator(53)
    w = (torch.randn(spec.out_features, spec.in_features, generator=g)
         / math.sqrt(spec.in_features)).to(spec.dtype)  # fmt: skip
    b = (torch.randn(spec.out_features, generator=g) * 0.5).to(spec.dtype) if spec.bias else None
    out_shape = (*spec.x_shape[:-1], spec.out_features)
    steps = [
        (
            (torch.randn(spec.x_shape, generator=g) * _X_MAGS[t]).to(spec.dtype),
            (torch.randn(out_shape, generator=g) * _DY_MAGS[t]).to(spec.dtype),
        )
        for t in range(spec.steps)
    ]
    rec, ref_rec = _Recorder(env.backend), _Recorder(ReferenceBackend())
    caps, ref_caps = env.backend.capabilities, ref_rec.capabilities
    with _registered({_UNDER_TEST: rec, _REFERENCE: ref_rec}):
        dev_w = env.to_device(w)
        dev_b = None if b is None else env.to_device(b)
        layer = _layer(spec, _UNDER_TEST, dev_w, dev_b)
        ref_layer = _layer(spec, _REFERENCE, w.clone(), None if b is None else b.clone())
        worst: dict[str, float] = {}
        for t, (x, dy) in enumerate(steps):
            got = _step(layer, rec, env.to_device(x), env.to_device(dy))
            ref = _step(ref_layer, ref_rec, x.clone(), dy.clone())
            where = f"step {t + 1} of {spec.steps}: " if spec.steps > 1 else ""
            problem = _results_problem(spec, got, env.device)
            if problem:
                return _failed(env, spec, where + problem)
            ratios, problems = _judge_step(spec, dy, got, ref, caps, ref_caps)
            if got.history is not None:
                for what, gb, wb in (
                    ("amax_history", got.history, ref.history),
                    ("scale", got.scale, ref.scale),
                ):
                    n = int(data.float_mismatches(gb.cpu(), wb).sum())
                    if n:
                        problems.append(
                            f"{what}: {n} of {wb.numel()} entries differ from the reference's "
                            f"(got {gb.cpu().tolist()}, want {wb.tolist()})"
                        )
            if problems:
                return _failed(env, spec, where + "; ".join(problems))
            for k, v in ratios.items():
                worst[k] = max(worst.get(k, 0.0), v)
        rec.gemms, ref_rec.gemms = [], []
    summary = ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
    top = max(worst.values(), default=0.0)
    return CaseResult(
        Verdict.PASSED,
        top,
        1.0,
        detail=f"operands bit-identical in every GEMM; max |error|/bound: {summary}",
        extra={"max_error_over_bound": worst, "steps": spec.steps},
    )


def _failed(env: Env, spec: LinearSpec, detail: str) -> CaseResult:
    repro = (
        "from portable_fp8.conformance import run_case\n"
        f"print(run_case({spec.id!r}, backend={env.backend.name!r}).detail)"
    )
    return CaseResult(Verdict.FAILED, detail=detail, reproducer=repro)


def _specs(env: Env) -> list[LinearSpec]:
    shapes: list[tuple[tuple[int, ...], int, torch.dtype, bool]] = [
        ((32, 64), 48, torch.float32, False),
        ((16, 128), 32, torch.float32, True),
    ]
    recipes = _QUICK_RECIPES
    if env.full:
        recipes = tuple(LINEAR_RECIPES)
        shapes += [
            ((2, 24, 64), 48, torch.float32, False),
            ((2, 24, 64), 48, torch.float32, True),
            ((48, 256), 160, torch.float32, True),  # several 1x128 and 128x128 blocks
            ((1, 7, 32), 16, torch.float32, True),  # 7 tokens: padded where K must be m-aligned
            ((2, 24, 64), 48, torch.bfloat16, True),
            ((32, 64), 48, torch.bfloat16, False),
        ]
    return [
        LinearSpec(r, x_shape, n, dtype, bias)
        for r in recipes
        for x_shape, n, dtype, bias in shapes
    ]


def linear_cases(env: Env) -> list[Case]:
    """Every recipe x shapes (quick: two 2-D; full: 3-D, bias or not, bf16, several blocks)."""
    cases = []
    for s in _specs(env):
        why = unsupported_reason(env.backend, s.recipe_object(), s.in_features, s.out_features)
        cases.append(
            Case(
                id=s.id,
                kind="linear",
                description=s.describe(),
                run=partial(run_linear, spec=s),
                unsupported=why,
            )
        )
    return cases
