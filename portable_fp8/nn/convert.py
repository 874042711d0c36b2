"""``model = convert(model)``: swap a model's ``torch.nn.Linear`` layers for FP8 ones, in place.

Each candidate layer is checked against the capabilities the backend declares (formats, cast
granularities, GEMM granularity pairs, explicit output dtypes, the multiple that K and N must
be); a layer the backend cannot take is left as it is and listed, with the reason, in the
:class:`ConversionReport` that the returned model carries as ``model.fp8_conversion`` (and in
a warning). The new layers share the old layers' Parameter objects, so an optimizer built
before the conversion keeps working.

The filter is torchao's: ``module_filter_fn(module, fqn)`` returning False keeps a layer in
high precision. The older ``module_filter(name, module)`` still works, with a
DeprecationWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..dispatch.backend import Backend
from ..dispatch.registry import select_backend
from ..errors import Fp8TypeError
from ..numerics.formats import element_formats
from .linear import Linear
from .recipes import CurrentScaling, Recipe

__all__ = ["REPORT_ATTRIBUTE", "ConversionReport", "convert", "unsupported_reason"]

#: The attribute of the model returned by :func:`convert` that holds its ConversionReport.
REPORT_ATTRIBUTE = "fp8_conversion"


@dataclass
class ConversionReport:
    """What :func:`convert` did: layer names (fully qualified, ``""`` for a root Linear)
    converted, skipped by the backend check (name -> why), and excluded by the filter.

    Reach it as ``model.fp8_conversion`` on the model :func:`convert` returned. It holds no
    reference back to the model (the ``model`` field it once had is gone): the model holds
    it, and a cycle would keep a deleted model's memory alive until the garbage collector
    ran.
    """

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
        for fmt in spec.formats():  # none for a high-precision GEMM: plain torch
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
        if not spec.quantized:
            continue
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


def _filter_fn(
    module_filter_fn: Callable[[nn.Module, str], bool] | None,
    module_filter: Callable[[str, nn.Module], bool] | None,
) -> Callable[[nn.Module, str], bool] | None:
    """The one ``(module, fqn)`` filter, from torchao's keyword or the deprecated one."""
    if module_filter is None:
        return module_filter_fn
    if module_filter_fn is not None:
        raise Fp8TypeError(
            "convert: pass module_filter_fn(module, fqn) only; module_filter(name, module) "
            "is its deprecated form"
        )
    warnings.warn(
        "portable_fp8.convert: module_filter(name, module) is deprecated; pass "
        "module_filter_fn(module, fqn) (torchao's name and argument order)",
        DeprecationWarning,
        stacklevel=3,
    )
    return lambda module, fqn: module_filter(fqn, module)


def _device_and_backend(model: nn.Module, backend: str | None) -> tuple[str, Backend]:
    """The device type of ``model``'s first parameter ("cpu" without any) and the backend
    named ``backend``, or the registry's choice for that device."""
    first = next(model.parameters(), None)
    device_type = first.device.type if first is not None else "cpu"
    return device_type, select_backend(backend, device_type)


def _replace_linears(
    model: nn.Module,
    replace: Callable[[str, nn.Linear], nn.Module],
    skipped: dict[str, str],
    *,
    already: tuple[type, ...] = (),
) -> nn.Module:
    """Put ``replace(fqn, layer)`` in the place of every ``nn.Linear`` of ``model`` (in
    place; a root Linear's replacement is returned). Instances of ``already`` are left
    alone; Linears inside ``nn.MultiheadAttention``, which reads their weights directly
    instead of calling them, are recorded in ``skipped`` and left alone."""

    def visit(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, nn.Linear) and not isinstance(module, already):
            return replace(name, module)
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(module, nn.MultiheadAttention):
                if isinstance(child, nn.Linear):
                    skipped[full] = "nn.MultiheadAttention uses its weights directly"
                continue
            new = visit(full, child)
            if new is not child:
                setattr(module, child_name, new)
        return module

    return visit("", model)


def convert(
    model: nn.Module,
    recipe: Recipe | None = None,
    *,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
    backend: str | None = None,
    module_filter: Callable[[str, nn.Module], bool] | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` that the backend can take by an FP8 Linear,
    in place, and return the model (``model = convert(model)``, as with torchao).

    If ``model`` itself is an ``nn.Linear``, its replacement is returned (the argument is
    left as it was). The returned model's ``fp8_conversion`` attribute is the
    :class:`ConversionReport` of this call: what was converted, skipped by the backend check
    (with why; also warned) and excluded by the filter.

    ``module_filter_fn(module, fqn)`` returning False keeps a layer in high precision (for
    example the output head); it is called for each ``nn.Linear`` with its fully qualified
    name (``""`` for a root Linear), as torchao's ``convert_to_float8_training`` calls its
    filter. ``module_filter(name, module)`` is the deprecated form (arguments the other way
    round; DeprecationWarning). ``backend`` names the backend to check (and pin in the new
    layers); None checks the one the registry chooses now for the model's device (convert
    after moving the model to its device). Layers inside ``nn.MultiheadAttention`` are
    skipped: it reads their weights directly instead of calling them.
    """
    keep = _filter_fn(module_filter_fn, module_filter)
    recipe = recipe if recipe is not None else CurrentScaling()
    device_type, chosen = _device_and_backend(model, backend)
    report = ConversionReport(backend=chosen.name, recipe=recipe)

    def replace(name: str, module: nn.Linear) -> nn.Module:
        if keep is not None and not keep(module, name):
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

    model = _replace_linears(model, replace, report.skipped, already=(Linear,))
    setattr(model, REPORT_ATTRIBUTE, report)
    if report.skipped:
        warnings.warn(
            "portable_fp8.nn.convert kept these Linear layers in high precision:\n"
            + "\n".join(f"  {n}: {w}" for n, w in report.skipped.items()),
            stacklevel=2,
        )
    return model
