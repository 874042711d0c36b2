"""torchao-compatible conversion: ``convert_to_float8_training`` and ``Float8LinearConfig``.

A training script written for ``torchao.float8`` runs on portable-fp8 (and so on every
backend it has, CPU included) with one changed line::

    from portable_fp8.compat.torchao import convert_to_float8_training, Float8LinearConfig

The calls keep torchao's names and arguments: ``convert_to_float8_training(module, *,
module_filter_fn=None, config=None)`` swaps ``nn.Linear`` layers in place and returns the
module; ``module_filter_fn(module, fqn)`` returning False keeps a layer in high precision;
``Float8LinearConfig.from_recipe_name(name)`` picks a recipe. Each maps onto
:func:`portable_fp8.nn.convert` and a :mod:`portable_fp8.nn.recipes` recipe:

======================  =====================================================================
torchao recipe name     portable-fp8 recipe
======================  =====================================================================
``tensorwise``          ``CurrentScaling()``: one dynamic scale per tensor; x and W E4M3, dy
                        E5M2; forward GEMM with ``fast_accum=True`` (torchao's default)
``rowwise``             ``CurrentScaling(granularity="rowwise", power_of_two=True)``: dynamic
                        scales per row of A and per column of B (along each GEMM's K); E4M3
                        for x, W and dy; scales rounded down to powers of two; forward GEMM
                        with ``fast_accum=True``
``rowwise_with_gw_hp``  as ``rowwise`` without the power-of-two rounding, and with
                        ``wgrad=GemmSpec.high_precision()``: dW = dy^T x unquantised, in the
                        activation dtype
======================  =====================================================================

One difference in ``rowwise_with_gw_hp``: torchao casts W tensorwise for the dgrad GEMM; our
recipes give every GEMM the same granularity pair, so W is scaled per column along dgrad's K
(a finer scaling than torchao's, never a coarser one).

Other differences from torchao, by design: a layer the backend cannot take (e.g. feature
sizes that are not a multiple it needs) is kept in high precision with a warning instead of
failing later, and the returned module's ``fp8_conversion`` attribute says which layers were
converted, skipped (with why) or excluded (the :class:`~portable_fp8.nn.ConversionReport`).
Float8LinearConfig's keywords follow torchao where they mean something here
(``round_scales_to_power_of_2``, ``emulate``: run on the ``reference`` emulator); torchao's
``enable_fsdp_float8_all_gather``, ``force_recompute_fp8_weight_in_bwd`` and
``pad_inner_dim`` are accepted when False and rejected when True (not implemented), and its
per-tensor ``cast_config_*`` / per-GEMM ``gemm_config_*`` fields are rejected with the
portable-fp8 spelling to use instead (``recipe=``, a :class:`~portable_fp8.nn.Recipe`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import Fp8TypeError, Fp8ValueError, UnknownRecipeError
from ..nn.convert import convert
from ..nn.recipes import CurrentScaling, GemmSpec, Recipe

__all__ = ["Float8LinearConfig", "Float8LinearRecipeName", "convert_to_float8_training"]


class Float8LinearRecipeName(str, enum.Enum):
    """torchao's recipe names (``Float8LinearConfig.from_recipe_name`` takes these or their
    string values)."""

    TENSORWISE = "tensorwise"
    ROWWISE = "rowwise"
    ROWWISE_WITH_GW_HP = "rowwise_with_gw_hp"


#: torchao runs the forward GEMM with fast accumulation in every recipe (gemm_config_output).
_FAST_E4M3 = GemmSpec("e4m3fn", "e4m3fn", fast_accum=True)
_E4M3 = GemmSpec("e4m3fn", "e4m3fn")


def _recipe(name: Float8LinearRecipeName) -> Recipe:
    if name is Float8LinearRecipeName.TENSORWISE:
        return CurrentScaling(forward=_FAST_E4M3)
    if name is Float8LinearRecipeName.ROWWISE:
        return CurrentScaling(
            granularity="rowwise", power_of_two=True, forward=_FAST_E4M3, dgrad=_E4M3, wgrad=_E4M3
        )
    return CurrentScaling(
        granularity="rowwise", forward=_FAST_E4M3, dgrad=_E4M3, wgrad=GemmSpec.high_precision()
    )


#: torchao keywords that portable-fp8 does not take, with the spelling to use instead.
_INSTEAD = {
    **dict.fromkeys(
        (
            "cast_config_input",
            "cast_config_input_for_grad_weight",
            "cast_config_weight",
            "cast_config_weight_for_grad_input",
            "cast_config_grad_output",
            "cast_config_grad_output_for_grad_weight",
        ),
        "per-tensor cast configs are not mirrored; pass recipe=portable_fp8.nn.CurrentScaling("
        "granularity=..., forward=GemmSpec(...), dgrad=..., wgrad=...) (formats per GEMM; "
        "GemmSpec.high_precision() for an unquantised wgrad)",
    ),
    **dict.fromkeys(
        ("gemm_config_output", "gemm_config_grad_input", "gemm_config_grad_weight"),
        "pass recipe= with GemmSpec(..., fast_accum=...) for the forward, dgrad or wgrad GEMM",
    ),
    "delayed_scaling_config": "pass recipe=portable_fp8.nn.DelayedScaling(history_len=...)",
    "enable_amax_init": "it has no effect in torchao either; remove it",
    "enable_pre_and_post_forward": "it has no effect in torchao either; remove it",
}

#: torchao flags accepted when False (their default) and rejected when True.
_ONLY_FALSE = {
    "enable_fsdp_float8_all_gather": "FP8 all-gather of FSDP2 weights is not implemented "
    "(FSDP2 works, gathering the weights in their own dtype)",
    "force_recompute_fp8_weight_in_bwd": "recomputing the FP8 weight in the backward pass is "
    "not implemented (the forward pass saves the codes the backward GEMMs need)",
    "pad_inner_dim": "padding in_features/out_features is not implemented: layers whose "
    "sizes the backend cannot take are kept in high precision and listed in "
    "module.fp8_conversion.skipped",
}


def _check_torchao_options(options: dict[str, object]) -> None:
    for key, value in options.items():
        if key in _ONLY_FALSE:
            if value:
                raise Fp8ValueError(f"Float8LinearConfig({key}=True): {_ONLY_FALSE[key]}")
        elif key in _INSTEAD:
            raise Fp8TypeError(f"Float8LinearConfig({key}=...): {_INSTEAD[key]}")
        else:
            known = ["recipe", "round_scales_to_power_of_2", "emulate", "backend", *_ONLY_FALSE]
            raise Fp8TypeError(
                f"Float8LinearConfig got an unknown keyword {key!r}; it takes {known}"
            )


@dataclass(frozen=True, init=False)
class Float8LinearConfig:
    """torchao's conversion config, holding a portable-fp8 recipe.

    ``Float8LinearConfig()`` is torchao's default (``"tensorwise"``);
    :meth:`from_recipe_name` gives the named recipes. Keywords (all optional):

    * ``recipe``: any :class:`~portable_fp8.nn.Recipe` (default: the tensorwise mapping);
    * ``round_scales_to_power_of_2``: torchao's flag; scales rounded down to powers of two
      (the recipe's ``power_of_two``; ORed with it);
    * ``emulate``: torchao's flag; run on the ``reference`` backend (the emulator);
    * ``backend``: a portable-fp8 backend name to check and pin (None: the registry's
      choice for the model's device); must be None or ``"reference"`` with ``emulate``;
    * ``enable_fsdp_float8_all_gather``, ``force_recompute_fp8_weight_in_bwd``,
      ``pad_inner_dim``: accepted when False; True raises :class:`Fp8ValueError`.

    Any other torchao field raises :class:`Fp8TypeError` saying what to pass instead.
    Frozen; ``dataclasses.replace`` works on it.
    """

    recipe: Recipe
    round_scales_to_power_of_2: bool
    emulate: bool
    backend: str | None

    def __init__(
        self,
        *,
        recipe: Recipe | None = None,
        round_scales_to_power_of_2: bool = False,
        emulate: bool = False,
        backend: str | None = None,
        **torchao_options: object,
    ) -> None:
        _check_torchao_options(torchao_options)
        if recipe is None:
            recipe = _recipe(Float8LinearRecipeName.TENSORWISE)
        if not isinstance(recipe, Recipe):
            raise Fp8TypeError(f"recipe must be a portable_fp8.nn.Recipe, got {recipe!r}")
        for name, flag in (("round_scales_to_power_of_2", round_scales_to_power_of_2),
                           ("emulate", emulate)):  # fmt: skip
            if flag.__class__ is not bool:
                raise Fp8TypeError(f"{name} must be a bool, got {flag!r}")
        if emulate and backend not in (None, "reference"):
            raise Fp8ValueError(
                f"emulate=True runs on the 'reference' backend; got backend={backend!r}"
            )
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "round_scales_to_power_of_2", round_scales_to_power_of_2)
        object.__setattr__(self, "emulate", emulate)
        object.__setattr__(self, "backend", backend)

    @staticmethod
    def from_recipe_name(recipe_name: Float8LinearRecipeName | str) -> Float8LinearConfig:
        """The config of torchao's ``"tensorwise"``, ``"rowwise"`` or
        ``"rowwise_with_gw_hp"`` recipe (see the module docstring for the mapping); another
        name raises :class:`~portable_fp8.errors.UnknownRecipeError` listing the valid ones."""
        valid = [n.value for n in Float8LinearRecipeName]
        if not isinstance(recipe_name, str):
            raise Fp8TypeError(f"recipe_name must be a str, one of {valid}; got {recipe_name!r}")
        try:
            name = Float8LinearRecipeName(recipe_name)
        except ValueError:
            raise UnknownRecipeError(
                f"unknown torchao recipe name {recipe_name!r}; valid names: {valid}"
            ) from None
        return Float8LinearConfig(recipe=_recipe(name))

    def to_recipe(self) -> Recipe:
        """The portable-fp8 recipe this config runs (``recipe`` with the torchao flags)."""
        if self.round_scales_to_power_of_2 and not self.recipe.power_of_two:
            return dataclasses.replace(self.recipe, power_of_two=True)
        return self.recipe

    def backend_name(self) -> str | None:
        """The backend to pin: ``"reference"`` with ``emulate``, else ``backend``."""
        return "reference" if self.emulate else self.backend


def convert_to_float8_training(
    module: nn.Module,
    *,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
    config: Float8LinearConfig | None = None,
) -> nn.Module:
    """Swap the ``nn.Linear`` layers of ``module`` for portable-fp8 FP8 Linears, in place, and
    return ``module`` (a root ``nn.Linear``: its replacement), as torchao's function does.

    ``module_filter_fn(module, fqn)`` returning False keeps that Linear as it is; ``config``
    defaults to ``Float8LinearConfig()`` (tensorwise). Runs :func:`portable_fp8.nn.convert`:
    layers the backend cannot take stay in high precision, with a warning, and the returned
    module's ``fp8_conversion`` attribute is the report of what was done.
    """
    if config is None:
        config = Float8LinearConfig()
    if not isinstance(config, Float8LinearConfig):
        raise Fp8TypeError(
            "config must be portable_fp8.compat.torchao.Float8LinearConfig (import it from "
            f"there, not from torchao.float8); got {type(config).__name__}"
        )
    return convert(
        module,
        config.to_recipe(),
        module_filter_fn=module_filter_fn,
        backend=config.backend_name(),
    )
