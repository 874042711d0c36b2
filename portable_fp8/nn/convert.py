"""``convert(model)``: swap a model's ``torch.nn.Linear`` layers for FP8 ones, in place.

Each candidate layer is checked against the capabilities the backend declares (formats, cast
granularities, GEMM granularity pairs, explicit output dtypes, the multiple that K and N must
be); a layer the backend cannot take is left as it is and listed, with the reason, in the
returned :class:`ConversionReport` (and in a warning). The new layers share the old layers'
Parameter objects, so an optimizer built before the conversion keeps working.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..dispatch.backend import Backend
from ..dispatch.registry import select_backend
from ..numerics.formats import element_formats
from .linear import Linear
from .recipes import CurrentScaling, Recipe

__all__ = ["ConversionReport", "convert", "unsupported_reason"]


@dataclass
class ConversionReport:
    """What :func:`convert` did: layer names converted, skipped (with why), and excluded."""

    model: nn.Module
    backend: str
    recipe: Recipe
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} Linear layer(s) to FP8 on backend "
            f"{self.backend!r}; skipped {len(self.skipped)}; excluded {len(self.excluded)}"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def unsupported_reason(
    backend: Backend,
    recipe: Recipe,
    in_features: int,
    out_features: int,
    *,
    device: str | None = None,
) -> str | None:
    """Why ``backend`` cannot run a Linear(in, out) with ``recipe`` on ``device`` (a device
    type; None: any the backend declares), or None if it can.

    Asks the backend's capabilities (its ``why_not_*`` methods) about casts to every GEMM
    operand's format, the scaling of the activations and of the weight as stored, each
    GEMM's formats and explicit output dtype with the recipe's granularity pair, and the
    K/N multiple with in_features and out_features (the forward and dgrad GEMMs' K and N;
    the Linear pads the token dimension, wgrad's K).
    """
    caps = backend.capabilities
    a_gran, b_gran = recipe.granularities()
    w_gran = b_gran.transposed()
    for spec in recipe.gemms().values():
        for fmt in (spec.a_format, spec.b_format):
            why = caps.why_not_cast(device, fmt)
            if why is not None:
                castable = sorted(
                    f.name for f in element_formats() if caps.why_not_cast(device, f) is None
                )
                hint = f" (it casts to {', '.join(castable)}: use a recipe of those)"
                return f"backend {backend.name!r} does not support {why}{hint if castable else ''}"
    for gran in (a_gran, w_gran):
        why = caps.why_not_scaling(device, gran)
        if why is not None:
            return f"backend {backend.name!r} does not support {why}"
    for gemm, spec in recipe.gemms().items():
        # out_dtype None (the activation dtype) is not known here: checked when it runs
        why = caps.why_not_gemm(
            device, spec.a_format, spec.b_format, a_gran, b_gran, spec.out_dtype
        )
        if why is not None:
            return f"backend {backend.name!r} does not support {why} ({gemm})"
    why = caps.why_not_gemm_dims(in_features, out_features)
    if why is not None:
        return f"backend {backend.name!r} needs {why} (in_features, out_features)"
    return None


def convert(
    model: nn.Module,
    recipe: Recipe | None = None,
    *,
    module_filter: Callable[[str, nn.Linear], bool] | None = None,
    backend: str | None = None,
) -> ConversionReport:
    """Replace every ``nn.Linear`` in ``model`` that the backend can take by an FP8 Linear.

    ``module_filter(name, module)`` returning False keeps a layer in high precision (for
    example the output head). ``backend`` names the backend to check (and pin in the new
    layers); None checks the one the registry chooses now for the model's device (convert
    after moving the model to its device). Layers inside ``nn.MultiheadAttention`` are
    skipped: it reads their weights directly instead of calling them. If ``model`` itself
    is a Linear, the replacement is ``report.model``.
    """
    recipe = recipe if recipe is not None else CurrentScaling()
    params = list(model.parameters())
    device_type = params[0].device.type if params else "cpu"
    chosen = select_backend(backend, device_type)
    report = ConversionReport(model=model, backend=chosen.name, recipe=recipe)

    def visit(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Linear) and not isinstance(module, Linear):
            if module_filter is not None and not module_filter(name, module):
                report.excluded.append(name)
                return module
            why = unsupported_reason(
                chosen, recipe, module.in_features, module.out_features, device=device_type
            )
            if why is not None:
                report.skipped[name] = why
                return module
            report.converted.append(name)
            return Linear.from_linear(module, recipe=recipe, backend=backend)
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(module, nn.MultiheadAttention):
                if isinstance(child, nn.Linear):
                    report.skipped[full] = "nn.MultiheadAttention uses its weights directly"
                continue
            new = visit(full, child)
            if new is not child:
                setattr(module, child_name, new)
        return module

    report.model = visit("", model)
    if report.skipped:
        warnings.warn(
            "portable_fp8.nn.convert kept these Linear layers in high precision:\n"
            + "\n".join(f"  {n}: {w}" for n, w in report.skipped.items()),
            stacklevel=2,
        )
    return report
