"""Faulty third-party plugins are contained: every other backend keeps working.

Each test installs hand-made faulty plugins as a separate distribution (the
``install_plugins`` fixture, conftest.py) and checks three things: ops still run (on
``reference`` explicitly and by the automatic choice for CPU tensors), ``portable-fp8
backends`` still lists everything (with the fault and the distribution's name), and the
fault is reported in exactly one warning. docs/reliability.md maps each fault to its test.
"""

from __future__ import annotations

import json
import textwrap
import warnings

import pytest
import torch

import portable_fp8 as fp8
from portable_fp8 import cli
from portable_fp8.dispatch import registry
from portable_fp8.errors import BackendUnavailableError
from portable_fp8.numerics.cast import codes_of

_HEADER = textwrap.dedent(
    """
    from portable_fp8.backends.reference import ReferenceBackend
    from portable_fp8.dispatch.hookspecs import hookimpl
    """
)


def _hook_returning(expr: str, *, generator: bool = False) -> str:
    """A plugin module whose hook returns ``expr`` (or, as a generator, yields it)."""
    body = f"    yield from {expr}\n" if generator else f"    return {expr}\n"
    return _HEADER + "\n@hookimpl\ndef portable_fp8_backends():\n" + body


def _named(name: str, priority: int = 0, marker: str = "") -> str:
    """A plugin offering a working ReferenceBackend subclass called ``name``."""
    return _HEADER + textwrap.dedent(
        f"""
        class B(ReferenceBackend):
            name = {name!r}
            priority = {priority}
            marker = {marker!r}

        @hookimpl
        def portable_fp8_backends():
            return [B()]
        """
    )


_GOOD = _named("goodone", priority=-5, marker="good")

X = torch.linspace(-300, 300, 257)


def _load_with_one_warning() -> list[str]:
    """Load the registry; return the messages of the RuntimeWarnings it emitted (exactly one)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.list_backends()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    return messages


def _assert_everything_else_works(capsys) -> dict:
    """Ops run on reference and by automatic choice; the listing works. Returns its JSON."""
    ref = fp8.cast_to_fp8(X, "e4m3fn", backend="reference")
    auto = fp8.cast_to_fp8(X, "e4m3fn")
    assert fp8.select_backend().name == "cpu"  # the built-in automatic choice for CPU
    assert torch.equal(codes_of(auto), codes_of(ref))
    good = fp8.cast_to_fp8(X, "e4m3fn", backend="goodone")
    assert torch.equal(codes_of(good), codes_of(ref))
    capsys.readouterr()
    assert cli.main(["backends"]) == 0
    text = capsys.readouterr().out
    assert "reference" in text and "goodone" in text
    assert cli.main(["backends", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "source, expected",
    [
        (_hook_returning("[None]"), "hook returned None (NoneType) at index 0"),
        (_hook_returning("'reference'"), "hook returned a str, not a list of Backend"),
        (_hook_returning("[42]"), "hook returned 42 (int) at index 0"),
        (_hook_returning("42"), "hook returned a int, not a list"),
        (
            _hook_returning("_gen()", generator=False).replace(
                "@hookimpl",
                "def _gen():\n    yield ReferenceBackend()\n    raise RuntimeError('midway')\n\n"
                "@hookimpl",
            ),
            "hook raised RuntimeError: midway",
        ),
        (
            _HEADER
            + "\n@hookimpl\ndef portable_fp8_backends():\n"
            + "    yield ReferenceBackend()\n    raise ValueError('midway')\n",
            "hook raised ValueError: midway",
        ),
        (
            _HEADER + "\n@hookimpl\ndef portable_fp8_backends():\n    raise OSError('no lib')\n",
            "hook raised OSError: no lib",
        ),
    ],
    ids=[
        "list-of-none",
        "string",
        "list-of-int",
        "int",
        "generator-object",
        "generator-hook",
        "hook-raises",
    ],  # fmt: skip
)
def test_hook_returning_garbage_is_contained(install_plugins, capsys, source, expected):
    install_plugins({"bad": source, "goodone": _GOOD})
    (message,) = _load_with_one_warning()
    assert "'bad'" in message and expected in message and "fp8-test-plugins" in message
    errors = registry.plugin_errors()
    assert expected in errors["bad"] and "distribution 'fp8-test-plugins'" in errors["bad"]
    listing = _assert_everything_else_works(capsys)
    assert expected in listing["plugin_errors"]["bad"]
    # A generator that yielded a good backend before raising contributes nothing half-made.
    assert registry.list_backends()["reference"].__class__.__module__.startswith("portable_fp8")


@pytest.mark.parametrize(
    "declaration, reason",
    [
        ("pass", "reading its capabilities raised AttributeError"),
        (
            "@property\ndef capabilities(self):\n    raise RuntimeError('probe crashed')",
            "reading its capabilities raised RuntimeError: probe crashed",
        ),
        ("capabilities = {'devices': ['cpu']}", "its capabilities are a dict, not a"),
        ("priority = 'high'", "its priority must be an int, got 'high'"),
    ],
    ids=["missing", "raises", "dict", "bad-priority"],
)
def test_backend_with_broken_declarations_is_listed_unavailable(
    install_plugins, capsys, declaration, reason
):
    base = "ReferenceBackend" if "priority" in declaration else "Backend"
    source = (
        _HEADER
        + "from portable_fp8.dispatch.backend import Backend\n\n"
        + f"class Broken({base}):\n"
        + '    name = "brokencaps"\n'
        + "    priority = 1000  # would win the automatic choice if it were usable\n"
        + textwrap.indent(textwrap.dedent(declaration), "    ")
        + "\n\n@hookimpl\ndef portable_fp8_backends():\n    return [Broken()]\n"
    )
    install_plugins({"brokencaps": source, "goodone": _GOOD})
    (message,) = _load_with_one_warning()
    assert reason in message
    listing = _assert_everything_else_works(capsys)
    row = next(r for r in listing["backends"] if r["name"] == "brokencaps")
    assert row["available"] is False and reason in row["reason"]
    with pytest.raises(BackendUnavailableError, match="brokencaps.*broken"):
        fp8.get_backend("brokencaps")
    assert fp8.select_backend(device="cpu").name == "cpu"


def test_sys_exit_at_import_is_contained(install_plugins, capsys):
    install_plugins({"exiter": "import sys\nsys.exit(3)\n", "goodone": _GOOD})
    (message,) = _load_with_one_warning()  # the process did not end with status 3
    assert "'exiter'" in message and "SystemExit: 3" in message
    _assert_everything_else_works(capsys)


def test_keyboard_interrupt_at_import_still_interrupts(install_plugins):
    install_plugins({"ctrlc": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        registry.list_backends()


def test_plugin_without_a_hook_is_reported(install_plugins, capsys):
    install_plugins({"nohook": "VALUE = 1\n", "goodone": _GOOD})
    (message,) = _load_with_one_warning()
    assert "implements no portable_fp8_backends hook" in message
    _assert_everything_else_works(capsys)


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_third_party_cannot_replace_a_builtin_by_default(install_plugins, capsys, name):
    install_plugins({"impostor": _named(name, priority=10_000, marker="impostor"),
                     "goodone": _GOOD})  # fmt: skip
    (message,) = _load_with_one_warning()
    assert f"offers backend {name!r}, a name reserved" in message
    assert f"{registry.OVERRIDE_ENV_VAR}={name}" in message
    backend = fp8.get_backend(name)
    assert getattr(backend, "marker", None) is None  # still the built-in
    assert type(backend).__module__.startswith("portable_fp8.backends.")
    _assert_everything_else_works(capsys)


def test_builtin_override_is_opt_in(install_plugins, monkeypatch):
    monkeypatch.setenv(registry.OVERRIDE_ENV_VAR, " reference , xpu")
    install_plugins({"mine": _named("reference", marker="mine")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit override is not a fault
        assert fp8.get_backend("reference").marker == "mine"
    assert type(fp8.get_backend("cpu")).__module__ == "portable_fp8.backends.cpu"


@pytest.mark.parametrize("first", ["vendor_a", "vendor_b"])
def test_two_distributions_offering_one_name_is_an_error_naming_both(
    install_plugins, capsys, first
):
    second = {"vendor_a": "vendor_b", "vendor_b": "vendor_a"}[first]
    install_plugins({"same": _named("samename", marker=first), "goodone": _GOOD}, dist=first)
    install_plugins({"same": _named("samename", marker=second)}, dist=second)
    (message,) = _load_with_one_warning()
    assert "vendor-a" in message and "vendor-b" in message
    with pytest.raises(BackendUnavailableError) as info:
        fp8.get_backend("samename")
    assert "'vendor-a'" in str(info.value) and "'vendor-b'" in str(info.value)
    listing = _assert_everything_else_works(capsys)
    row = next(r for r in listing["backends"] if r["name"] == "samename")
    assert not row["available"] and "vendor-a" in row["reason"] and "vendor-b" in row["reason"]


@pytest.mark.parametrize("value, expected", [(" reference", "reference"), ("cpu ", "cpu"),
                                             ("\treference\n", "reference")])  # fmt: skip
def test_env_var_ignores_surrounding_whitespace(clean_registry, monkeypatch, value, expected):
    monkeypatch.setenv(registry.ENV_VAR, value)
    assert fp8.select_backend().name == expected
    from portable_fp8.conformance.runner import resolve_backend

    assert resolve_backend(None).name == expected


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_env_var_means_unset(clean_registry, monkeypatch, value):
    monkeypatch.setenv(registry.ENV_VAR, value)
    assert fp8.select_backend().name == "cpu"
