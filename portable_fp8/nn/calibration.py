"""Calibration for static activation scales: record each Linear's input amax over sample
batches, save it as JSON, derive scales from it with the project's scale rules.

File format (JSON, UTF-8; ``version`` 1)::

    {
      "kind": "portable_fp8.calibration",
      "version": 1,
      "batches": 8,                      # how many batches were run
      "amax": {"0": 3.25, "2.proj": 11.5}  # layer fqn -> max |input| over all batches
    }

Each amax is the fp32 value ``max |x|`` (computed by the op API's ``compute_amax``) written
as a JSON number; an fp32 value converts to a Python float (float64) exactly, and JSON's
shortest round-trip repr of that float reads back to the same float64, hence to the same
fp32. So the same file gives the same scales, and the same codes, on every backend and
machine. Scales are not stored: they depend on the format and the rule
(:meth:`Calibration.scale`), which the consumer chooses.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..dispatch import ops
from ..errors import Fp8TypeError, Fp8ValueError
from ..numerics.formats import get_format
from ..numerics.scaling import scale_from_amax
from .inference import InferenceLinear

__all__ = ["CALIBRATION_KIND", "CALIBRATION_VERSION", "Calibration", "calibrate"]

CALIBRATION_KIND = "portable_fp8.calibration"
CALIBRATION_VERSION = 1


@dataclass
class Calibration:
    """Input amax per layer (fully qualified name -> float) and the batch count."""

    amax: dict[str, float] = field(default_factory=dict)
    batches: int = 0

    def amax_of(self, name: str) -> float:
        """The recorded amax of layer ``name`` (Fp8ValueError if it was never seen)."""
        if name not in self.amax:
            raise Fp8ValueError(
                f"no calibration for layer {name!r}; calibrated layers: {sorted(self.amax)}"
            )
        return self.amax[name]

    def scale(
        self,
        name: str,
        format: str = "e4m3fn",
        *,
        margin: int = 0,
        power_of_two: bool = False,
        choices: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The static quantisation scale of layer ``name``: ``scale_from_amax`` of its amax
        (plain, ``power_of_two``, or rounded down into ``choices``), an fp32 0-d tensor."""
        amax = torch.tensor(self.amax_of(name), dtype=torch.float32)
        return scale_from_amax(
            amax, get_format(format), margin=margin, power_of_two=power_of_two, choices=choices
        )

    def to_dict(self) -> dict:
        return {
            "kind": CALIBRATION_KIND,
            "version": CALIBRATION_VERSION,
            "batches": self.batches,
            "amax": dict(sorted(self.amax.items())),
        }

    @classmethod
    def from_dict(cls, d: object) -> Calibration:
        if not isinstance(d, dict) or d.get("kind") != CALIBRATION_KIND:
            raise Fp8ValueError(f"not a portable_fp8 calibration (kind {CALIBRATION_KIND!r})")
        if d.get("version") != CALIBRATION_VERSION:
            raise Fp8ValueError(
                f"calibration version {d.get('version')!r}; this portable_fp8 reads "
                f"{CALIBRATION_VERSION}"
            )
        amax = d.get("amax")
        if not isinstance(amax, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in amax.items()
        ):
            raise Fp8ValueError("calibration 'amax' must map layer names to numbers")
        batches = d.get("batches", 0)
        if not isinstance(batches, int) or isinstance(batches, bool):
            raise Fp8ValueError(f"calibration 'batches' must be an int, got {batches!r}")
        return cls({k: float(v) for k, v in amax.items()}, batches)

    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON file (format in the module docstring). Non-finite amax (an input
        held inf or NaN) cannot be written as JSON and raises Fp8ValueError."""
        bad = [k for k, v in self.amax.items() if not math.isfinite(v)]
        if bad:
            raise Fp8ValueError(f"non-finite calibration amax for {bad}: inputs held inf/NaN")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=False)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def calibrate(
    model: nn.Module,
    batches: Iterable,
    *,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
    forward: Callable[[nn.Module, object], object] | None = None,
) -> Calibration:
    """Run ``batches`` through ``model`` (under ``torch.no_grad``) and record each Linear's
    (``torch.nn.Linear`` or :class:`InferenceLinear`) input amax: the max of
    ``compute_amax(x)`` over all batches.

    Each batch is passed as ``model(batch)`` (a tuple or list as ``model(*batch)``, a dict
    as ``model(**batch)``), or as ``forward(model, batch)`` if given. ``module_filter_fn(module,
    fqn)`` returning False skips a layer. Hooks are removed afterwards, also on error.
    """
    if forward is not None and not callable(forward):
        raise Fp8TypeError("forward must be callable(model, batch)")
    cal = Calibration()
    handles = []

    def hook_for(name: str):
        def hook(_module, args):
            amax = float(ops.compute_amax(args[0].detach()))
            old = cal.amax.get(name)
            cal.amax[name] = amax if old is None or amax != amax else max(old, amax)

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, InferenceLinear)):
            if module_filter_fn is not None and not module_filter_fn(module, name):
                continue
            handles.append(module.register_forward_pre_hook(hook_for(name)))
    try:
        with torch.no_grad():
            for batch in batches:
                if forward is not None:
                    forward(model, batch)
                elif isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
                cal.batches += 1
    finally:
        for h in handles:
            h.remove()
    return cal
