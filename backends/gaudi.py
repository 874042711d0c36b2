"""The ``gaudi`` backend: Intel Gaudi2 / Gaudi3 through the Habana PyTorch bridge's FP8 ops.

A thin adapter over three ops that ``habana_frameworks`` registers (schemas and semantics in
``docs/notes/gaudi_ops.md``, read from the bridge's own tests and public call sites)::

    hpu::cast_to_fp8_v2(input, scale, stochastic_rounding, is_amax, dtype, scale_shape)
        -> (fp8 = round(input * scale), amax of the unscaled input or an empty tensor)
    hpu::cast_from_fp8(input, scale, out_dtype, scale_shape) -> out_dtype(fp8 * scale)
    hpu::fp8_gemm_v2(A, trans_A, B, trans_B, D, out_dtype, A_scale_inv, B_scale_inv, bias,
                     accumulate) -> (op(A) @ op(B)) * A_scale_inv * B_scale_inv + bias + D

Argument mapping (our convention: a scale is the quantisation multiplier ``s``):

- ``cast_to_fp8_v2`` takes the quantisation scale itself; ``cast_from_fp8`` and the GEMM
  take dequantisation factors, which get ``fp32(1 / s)`` (``Fp8Tensor.scale_inv``).
- Rowwise and columnwise scales keep their 2-D shapes ``(R, 1)`` / ``(1, C)`` and broadcast
  (the GEMM's A scale is per output row ``(M, 1)``, its B scale per output column ``(1, N)``).
- A transposed operand (a view whose transpose is contiguous) is passed as that contiguous
  tensor with ``trans_A`` / ``trans_B`` set, so no copy is made.
- fp16 inputs are widened to fp32 first (exact; the bridge rejects fp16). The bridge outputs
  fp32 or bf16 only: fp16 results are produced in fp32 and rounded once more, which is the
  contract's own path (fp32, then the output dtype).
- Casts from FP8 always ask the bridge for fp32 and convert, so the result is
  ``out_dtype(fp32(q) * scale_inv)`` as the contract says, whatever the bridge does in bf16.
- GEMMs with a bias or ``c`` run with fp32 output, fp32 bias and an fp32 copy of ``c`` as
  ``D`` (``accumulate=True``), so neither addend is rounded to a narrower type first.
- Stochastic rounding: the contract makes a cast with explicit random bits bit-exact, and
  the bridge's ``stochastic_rounding=True`` draws its own bits. By default the backend
  therefore rounds stochastically with the shared integer implementation on the device;
  ``GaudiBackend(stochastic_rounding="device")`` (or ``PORTABLE_FP8_GAUDI_SR=device``) passes
  the bridge's flag instead, ignoring the given bits, and says so in its capabilities.
- :meth:`GaudiBackend.cast_to_fp8_with_amax` maps ``is_amax=True`` (one pass for cast and
  amax, for delayed scaling).

Gaudi2 and Gaudi3 are told apart at run time. Gaudi2's E4M3 saturates at 240, so it declares
the format ``e4m3_gaudi2`` and not ``e4m3fn``; Gaudi3 declares ``e4m3fn`` (448). Both declare
``e5m2``. Gaudi2's hardware-aligned quantisation scales are ``GAUDI2_HW_ALIGNED_SCALES``;
Gaudi3's are the powers of two (:meth:`GaudiBackend.hw_aligned_scale_from_amax`).

Nothing here has run on Gaudi hardware: the adapter is tested against a stand-in of the three
ops (``tests/_gaudi_standin``), and ``ci/gaudi.sh`` is what runs it on a real machine.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import os
from typing import TYPE_CHECKING, Literal

import torch

from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.dispatch.hookspecs import hookimpl
from portable_fp8.errors import Fp8ValueError, NotSupportedError
from portable_fp8.numerics.cast import as_fp8_tensor, round_to_codes
from portable_fp8.numerics.formats import Format
from portable_fp8.numerics.gemm import FP32_ACCUMULATOR
from portable_fp8.numerics.granularity import Granularity, as_2d_shape
from portable_fp8.numerics.scaling import scale_from_amax
from portable_fp8.numerics.tensor import Fp8Tensor

if TYPE_CHECKING:
    from portable_fp8.nn.recipes import GemmSpec, Recipe

__all__ = [
    "GAUDI2_HW_ALIGNED_SCALES",
    "GAUDI_OPS",
    "HabanaBridge",
    "GaudiBackend",
    "gaudi2_recipe",
    "gaudi_capabilities",
    "portable_fp8_backends",
]

#: The bridge ops the adapter calls (namespace ``hpu``).
GAUDI_OPS: tuple[str, ...] = ("cast_to_fp8_v2", "cast_from_fp8", "fp8_gemm_v2")

#: Quantisation scales Gaudi2's E4M3 path applies without extra work: 2**(bias - 7) for the
#: exponent biases {3, 7, 11, 15} (Intel Neural Compressor, fp8_quant ``EXP_BIAS_SETS``).
#: Gaudi3 accepts any power of two.
GAUDI2_HW_ALIGNED_SCALES: tuple[float, ...] = (2.0**-4, 1.0, 2.0**4, 2.0**8)

Generation = Literal["gaudi2", "gaudi3"]


def gaudi2_recipe(recipe: Recipe | None = None) -> Recipe:
    """The Gaudi2 variant of a tensorwise recipe (default :class:`CurrentScaling`): every
    ``e4m3fn`` operand becomes ``e4m3_gaudi2`` (E4M3FN codes, +-240), and the scales are
    rounded down into :data:`GAUDI2_HW_ALIGNED_SCALES`. It runs on any backend that casts
    ``e4m3_gaudi2`` (``reference`` and ``cpu`` emulate a Gaudi2 with it)."""
    from portable_fp8.nn.recipes import CurrentScaling  # the model layer, on first use

    recipe = recipe if recipe is not None else CurrentScaling()

    def _swap(spec: GemmSpec) -> GemmSpec:
        if not spec.quantized:  # a high-precision GEMM stays one
            return spec
        a = "e4m3_gaudi2" if spec.a_format == "e4m3fn" else spec.a_format
        b = "e4m3_gaudi2" if spec.b_format == "e4m3fn" else spec.b_format
        return dataclasses.replace(spec, a_format=a, b_format=b)

    return dataclasses.replace(
        recipe,
        forward=_swap(recipe.forward),
        dgrad=_swap(recipe.dgrad),
        wgrad=_swap(recipe.wgrad),
        scale_choices=GAUDI2_HW_ALIGNED_SCALES,
    )


SrMode = Literal["explicit_bits", "device"]

_SR_ENV = "PORTABLE_FP8_GAUDI_SR"
_CAST_GRANULARITIES = frozenset({"tensorwise", "rowwise", "columnwise"})
_GEMM_GRANULARITIES = frozenset({("tensorwise", "tensorwise"), ("rowwise", "columnwise")})
_BRIDGE_OUT = (torch.float32, torch.bfloat16)
_INSTALL_HINT = (
    "it ships with the Intel Gaudi software stack (package habana-torch-plugin, not on PyPI); "
    "see docs/gaudi.md"
)


_UNDETECTED_NOTE = "generation not detected (no HPU): shown as Gaudi3; Gaudi2 has e4m3_gaudi2"


@functools.cache
def gaudi_capabilities(
    generation: Generation, *, device_type: str = "hpu", sr_mode: SrMode = "explicit_bits"
) -> Capabilities:
    """What the adapter declares on a Gaudi of ``generation`` (data; see the module doc)."""
    e4m3 = "e4m3_gaudi2" if generation == "gaudi2" else "e4m3fn"
    formats = (e4m3, "e5m2")
    aligned = (
        "hardware-aligned quantisation scales: {1/16, 1, 16, 256} (GAUDI2_HW_ALIGNED_SCALES)"
        if generation == "gaudi2"
        else "hardware-aligned quantisation scales: powers of two"
    )
    sr = (
        "stochastic rounding: explicit random bits honoured (integer rounding on the device)"
        if sr_mode == "explicit_bits"
        else "stochastic rounding: the bridge's own RNG; explicit random bits are ignored, "
        "so SR is unbiased but not bit-exact to the emulator"
    )
    return Capabilities(
        devices=frozenset({device_type}),
        cast_formats=frozenset(formats),
        gemm_formats=frozenset((a, b) for a in formats for b in formats),
        granularities=_CAST_GRANULARITIES,
        gemm_granularities=_GEMM_GRANULARITIES,
        rounding=frozenset({"nearest", "stochastic"}),
        non_saturating=False,
        out_dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
        accumulator=FP32_ACCUMULATOR,
        gemm_bias=True,
        gemm_accumulate=True,
        gemm_dim_multiple=1,
        notes=(
            f"{generation}: E4M3 is {e4m3} (max {448 if generation == 'gaudi3' else 240})",
            aligned,
            sr,
            "casts always saturate (the bridge has no non-saturating mode)",
            "fp16 inputs widened to fp32; fp16 outputs produced in fp32 and rounded",
            "GEMM accumulator assumed fp32 (unverified on hardware: the suite measures it)",
        ),
    )


class HabanaBridge:
    """Lazy access to ``habana_frameworks``: import, device presence, generation, ops.

    ``device_type`` is the torch device type the ops take tensors on (``"hpu"``); the test
    stand-in, whose ops run on CPU tensors, passes ``"cpu"``.
    """

    def __init__(self, device_type: str = "hpu", namespace: str = "hpu") -> None:
        self.device_type = device_type
        self.namespace = namespace
        self._import_error: str | None | bool = False  # False: not tried yet

    def import_error(self) -> str | None:
        """None when the bridge imports; else a sentence saying why not (asked once)."""
        if self._import_error is False:
            try:
                importlib.import_module("habana_frameworks.torch.core")
                importlib.import_module("habana_frameworks.torch.hpu")
            except ImportError as exc:
                self._import_error = f"habana_frameworks is not importable ({exc}); {_INSTALL_HINT}"
            except Exception as exc:  # the bridge loads native libraries: anything can fail
                self._import_error = f"importing habana_frameworks failed: {exc!r}"
            else:
                self._import_error = None
        return self._import_error  # type: ignore[return-value]

    def is_available(self) -> bool:
        """Whether an HPU is present (``habana_frameworks.torch.hpu.is_available()``)."""
        return bool(importlib.import_module("habana_frameworks.torch.hpu").is_available())

    def generation(self) -> str:
        """``"gaudi"``, ``"gaudi2"``, ``"gaudi3"`` or the device name as the bridge gives it.

        Asks ``habana_frameworks.torch.utils.experimental._get_device_type()`` first (the
        check vLLM-Gaudi, DeepSpeed and Intel Neural Compressor use), then the device name.
        """
        try:
            htexp = importlib.import_module("habana_frameworks.torch.utils.experimental")
            device = htexp._get_device_type()
            kinds = htexp.synDeviceType
            for gen, attr in (
                ("gaudi3", "synDeviceGaudi3"),
                ("gaudi2", "synDeviceGaudi2"),
                ("gaudi", "synDeviceGaudi"),
            ):
                if hasattr(kinds, attr) and device == getattr(kinds, attr):
                    return gen
        except Exception:
            pass
        name = str(importlib.import_module("habana_frameworks.torch.hpu").get_device_name())
        upper = name.upper()
        for gen in ("GAUDI3", "GAUDI2"):
            if gen in upper:
                return gen.lower()
        return "gaudi" if upper.rstrip("0123456789 ").endswith("GAUDI") else name

    def ops(self):
        """The op namespace (``torch.ops.hpu``)."""
        return getattr(torch.ops, self.namespace)

    def missing_ops(self) -> list[str]:
        """Which of :data:`GAUDI_OPS` the installed bridge does not register."""
        namespace = self.ops()
        missing = []
        for op in GAUDI_OPS:
            try:
                getattr(namespace, op)
            except (AttributeError, RuntimeError):
                missing.append(f"{self.namespace}::{op}")
        return missing

    def version(self) -> str:
        """The installed bridge's version, as its distribution or module reports it."""
        for dist in ("habana-torch-plugin", "habana_frameworks"):
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        module = importlib.import_module("habana_frameworks.torch")
        return str(getattr(module, "__version__", "unknown"))


def _operand(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(tensor, trans)`` with ``op(tensor) == t`` and ``tensor`` contiguous, copying only
    when neither ``t`` nor ``t.T`` is contiguous."""
    if t.is_contiguous():
        return t, False
    if t.t().is_contiguous():
        return t.t(), True
    return t.contiguous(), False


def _bridge_input(x: torch.Tensor) -> torch.Tensor:
    """fp16 widened to fp32 (exact, and the product ``fp32(x) * s`` is unchanged)."""
    return x.to(torch.float32) if x.dtype == torch.float16 else x


class GaudiBackend(Backend):
    """Adapter over the Gaudi bridge's FP8 ops (see the module docstring for the mapping)."""

    def __init__(
        self,
        bridge: HabanaBridge | None = None,
        *,
        name: str = "gaudi",
        priority: int = 50,
        stochastic_rounding: SrMode | None = None,
    ) -> None:
        self.bridge = bridge or HabanaBridge()
        self.name = name
        self.priority = priority
        mode = stochastic_rounding or os.environ.get(_SR_ENV, "explicit_bits")
        if mode not in ("explicit_bits", "device"):
            raise Fp8ValueError(
                f"stochastic_rounding (or ${_SR_ENV}) must be 'explicit_bits' or 'device', "
                f"not {mode!r}"
            )
        self.sr_mode: SrMode = mode  # type: ignore[assignment]
        self._generation: str | None = None
        self._reason: str | None | bool = False  # False: not checked yet

    # -- availability and declarations -------------------------------------------------------

    def unavailable_reason(self) -> str | None:
        if self._reason is False:
            self._reason = self._check()
        return self._reason  # type: ignore[return-value]

    def _check(self) -> str | None:
        error = self.bridge.import_error()
        if error is not None:
            return error
        if not self.bridge.is_available():
            return "habana_frameworks imports but no HPU is present (hpu.is_available() is False)"
        generation = self.bridge.generation()
        if generation not in ("gaudi2", "gaudi3"):
            return f"the HPU is {generation!r}; FP8 needs Gaudi2 or Gaudi3"
        self._generation = generation
        missing = self.bridge.missing_ops()
        if missing:
            return f"the installed Gaudi bridge lacks {', '.join(missing)}; update the software"
        return None

    @property
    def generation(self) -> Generation | None:
        """``"gaudi2"`` or ``"gaudi3"`` once detected (None while unavailable)."""
        if self.unavailable_reason() is None:
            return self._generation  # type: ignore[return-value]
        return None

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        generation = self.generation
        caps = gaudi_capabilities(
            generation or "gaudi3", device_type=self.bridge.device_type, sr_mode=self.sr_mode
        )
        if generation is not None:
            return caps
        return dataclasses.replace(caps, notes=(_UNDETECTED_NOTE, *caps.notes))

    @property
    def scale_choices(self) -> tuple[float, ...] | None:
        """Gaudi2's hardware-aligned quantisation scales; None (any power of two) on Gaudi3."""
        return GAUDI2_HW_ALIGNED_SCALES if self.generation == "gaudi2" else None

    def hw_aligned_scale_from_amax(
        self, amax: torch.Tensor, fmt: Format, *, margin: int = 0
    ) -> torch.Tensor:
        """The largest hardware-aligned quantisation scale that keeps ``amax`` in range:
        rounded down into ``GAUDI2_HW_ALIGNED_SCALES`` on Gaudi2, to a power of two on Gaudi3.
        """
        return scale_from_amax(
            amax, fmt, margin=margin, power_of_two=True, choices=self.scale_choices
        )

    def describe(self) -> dict:
        return {
            "bridge": f"habana_frameworks {self.bridge.version()}",
            "generation": self.generation,
            "device": self.bridge.device_type,
            "cast_path": f"{self.bridge.namespace}::cast_to_fp8_v2 / cast_from_fp8 (fp32 out)",
            "gemm_path": f"{self.bridge.namespace}::fp8_gemm_v2 (trans_A/trans_B, no copies)",
            "stochastic_rounding": self.sr_mode,
            "hw_aligned_scales": "GAUDI2_HW_ALIGNED_SCALES"
            if self.generation == "gaudi2"
            else "powers of two",
        }

    # -- casts -------------------------------------------------------------------------------

    def cast_to_fp8(self, x, fmt: Format, scale, granularity, *, saturate, rand_bits):
        if not saturate:  # the op layer checks capabilities; this guards direct callers
            raise NotSupportedError(self.name, "saturate=False (the Gaudi bridge's casts saturate)")
        x2 = self._view_2d(_bridge_input(x), granularity)
        if rand_bits is not None and self.sr_mode == "explicit_bits":
            y = x2.to(torch.float32) * scale
            codes = round_to_codes(y, fmt, saturate=True, rand_bits=rand_bits.reshape(y.shape))
            return as_fp8_tensor(codes, fmt).reshape(x.shape)
        q, _ = self.bridge.ops().cast_to_fp8_v2(
            x2, scale, rand_bits is not None, False, fmt.torch_dtype
        )
        return q.reshape(x.shape)

    def cast_to_fp8_with_amax(
        self, x: torch.Tensor, fmt: Format, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensorwise cast and amax of the unscaled ``x`` in one bridge call (``is_amax``).

        For delayed scaling: the amax feeds the next step's scale. NaN propagation into the
        amax is the bridge's (unverified on hardware; the emulator's amax is NaN if any NaN).
        """
        scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(())
        q, amax = self.bridge.ops().cast_to_fp8_v2(
            _bridge_input(x), scale, False, True, fmt.torch_dtype
        )
        return q, amax.reshape(())

    def cast_from_fp8(self, q, fmt: Format, scale_inv, granularity, out_dtype):
        q2 = self._view_2d(q, granularity)
        out = self.bridge.ops().cast_from_fp8(q2, scale_inv, torch.float32)
        return out.reshape(q.shape).to(out_dtype)

    @staticmethod
    def _view_2d(t: torch.Tensor, granularity: Granularity) -> torch.Tensor:
        """Tensorwise: as is; rowwise/columnwise: the 2-D view their ``(R, 1)``/``(1, C)``
        scales broadcast against."""
        return t if granularity.is_tensorwise else t.reshape(as_2d_shape(t.shape))

    # -- GEMM --------------------------------------------------------------------------------

    def scaled_mm(self, a: Fp8Tensor, b: Fp8Tensor, *, out_dtype, bias, c, fast_accum=False):
        # No fast accumulator declared: fast_accum is ignored (fp32 is at least as accurate).
        mat_a, trans_a = _operand(a.data)
        mat_b, trans_b = _operand(b.data)
        direct = out_dtype in _BRIDGE_OUT and bias is None and c is None
        bridge_out = out_dtype if direct else torch.float32
        d = None if c is None else c.to(torch.float32, copy=True)
        out = self.bridge.ops().fp8_gemm_v2(
            mat_a,
            trans_a,
            mat_b,
            trans_b,
            d,
            bridge_out,
            a.scale_inv,
            b.scale_inv,
            None if bias is None else bias.to(torch.float32),
            c is not None,
        )
        return out.to(out_dtype)


@hookimpl
def portable_fp8_backends() -> list[Backend]:
    return [GaudiBackend()]
