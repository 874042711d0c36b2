"""The top-level namespace: ``portable_fp8.__all__`` is sorted, complete and resolvable, and
the plugin API (Backend, Capabilities, CastTranspose, hookimpl, Fp8Tensor) is part of it."""

from __future__ import annotations

import inspect
import typing

import pluggy

import portable_fp8
from portable_fp8.dispatch import backend as backend_mod
from portable_fp8.dispatch import hookspecs


def test_all_is_sorted_and_unique():
    names = list(portable_fp8.__all__)
    assert names == sorted(set(names))


def test_every_name_in_all_resolves():
    missing = [n for n in portable_fp8.__all__ if not hasattr(portable_fp8, n)]
    assert missing == []


def test_every_public_function_and_class_of_ours_is_in_all():
    ours = {
        name
        for name, value in vars(portable_fp8).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.split(".")[0] == "portable_fp8"
    }
    assert ours - set(portable_fp8.__all__) == set()


def test_plugin_api_is_exported():
    for name in ("Backend", "Capabilities", "CastTranspose", "hookimpl", "Fp8Tensor"):
        assert name in portable_fp8.__all__
    assert portable_fp8.Backend is backend_mod.Backend
    assert portable_fp8.Capabilities is backend_mod.Capabilities
    assert portable_fp8.CastTranspose is backend_mod.CastTranspose
    assert isinstance(portable_fp8.hookimpl, pluggy.HookimplMarker)
    assert portable_fp8.hookimpl is hookspecs.hookimpl
    assert portable_fp8.Fp8Tensor.__module__ == "portable_fp8.numerics.tensor"


def test_hookspec_returns_a_typed_list_of_backends():
    hints = typing.get_type_hints(
        hookspecs.BackendHookSpecs.portable_fp8_backends,
        globalns={**vars(hookspecs), "Backend": backend_mod.Backend},
    )
    assert hints["return"] == list[backend_mod.Backend]


def test_a_plugin_written_against_the_top_level_api_registers():
    """A plugin needs nothing but the top-level names: the hook marker and the base class."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.BackendHookSpecs)

    class _Mine(portable_fp8.Backend):
        name = "mine"

    class _Plugin:
        @portable_fp8.hookimpl
        def portable_fp8_backends(self) -> list[portable_fp8.Backend]:
            return [_Mine()]

    pm.register(_Plugin())
    provided = [b for result in pm.hook.portable_fp8_backends() for b in result]
    assert [b.name for b in provided] == ["mine"]
