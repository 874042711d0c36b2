"""Every exception the package raises on purpose derives from :class:`portable_fp8.Fp8Error`.

A source scan (ast) finds every ``raise <built-in exception>`` in portable_fp8/, backends/
and conformance/; only the allow-listed ones below may stay. Plus direct checks that the
errors converted from built-ins reach a user as Fp8Error subclasses.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest
import torch
from portable_fp8.conformance import run_case, run_suite
from portable_fp8.conformance.deviations import parse_deviations

import portable_fp8 as fp8
from portable_fp8.dispatch.backend import Backend, Capabilities
from portable_fp8.numerics.cast import round_to_codes
from portable_fp8.numerics.formats import E4M3FN

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("portable_fp8", "backends", "conformance")

_BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)

#: (path, built-in) -> why it may stay. Keep this short; a new entry needs a reason.
ALLOWED = {
    ("portable_fp8/cli.py", "SystemExit"): "the CLI's exit status",
    ("conformance/cli.py", "SystemExit"): "the conformance CLI's exit status",
    ("conformance/cases/__init__.py", "RuntimeError"): (
        "an invariant of the suite itself (two case generators made one id): a bug in "
        "portable-fp8, never caused by a caller's input"
    ),
}


def _builtin_raises() -> list[tuple[str, int, str]]:
    """(path, line, name) of every ``raise X`` / ``raise X(...)`` with X a built-in."""
    found = []
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Raise) or node.exc is None:
                    continue
                exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(exc, ast.Name) and exc.id in _BUILTIN_EXCEPTIONS:
                    found.append((path.relative_to(ROOT).as_posix(), node.lineno, exc.id))
    return found


def test_scan_sees_the_source():
    # The scan must look at real files: the allow-listed CLI exit is one it has to find.
    assert ("portable_fp8/cli.py", "SystemExit") in {(p, n) for p, _, n in _builtin_raises()}


def test_no_builtin_exception_raised_outside_the_allow_list():
    new = [f"{p}:{line}: raise {name}" for p, line, name in _builtin_raises()
           if (p, name) not in ALLOWED]  # fmt: skip
    assert new == [], "raise an Fp8Error subclass from portable_fp8/errors.py instead"


def test_allow_list_has_no_stale_entries():
    seen = {(p, n) for p, _, n in _builtin_raises()}
    assert set(ALLOWED) - seen == set()


class _Declares(Backend):
    """A plugin backend that declares casts and GEMMs but implements no primitive."""

    name = "declares-only"
    capabilities = Capabilities(
        devices=frozenset({"cpu"}),
        cast_formats=frozenset({"e4m3fn"}),
        gemm_formats=frozenset({("e4m3fn", "e4m3fn")}),
        granularities=frozenset({"tensorwise"}),
    )


@pytest.mark.parametrize("primitive", ["cast_to_fp8", "cast_from_fp8", "scaled_mm"])
def test_a_missing_primitive_is_not_supported(primitive):
    b = _Declares()
    x = torch.ones(2, 2)
    call = {
        "cast_to_fp8": lambda: b.cast_to_fp8(x, E4M3FN, x, None, saturate=True, rand_bits=None),
        "cast_from_fp8": lambda: b.cast_from_fp8(x, E4M3FN, x, None, torch.float32),
        "scaled_mm": lambda: b.scaled_mm(None, None, out_dtype=torch.float32, bias=None, c=None),
    }[primitive]
    with pytest.raises(fp8.NotSupportedError, match=f"declares-only.*{primitive}"):
        call()


def test_an_abstract_recipe_is_a_type_error():
    with pytest.raises(fp8.Fp8TypeError, match="Recipe defines no granularities"):
        fp8.nn.Linear(4, 4, recipe=fp8.nn.Recipe())(torch.ones(2, 4))


def test_round_to_codes_needs_float32():
    with pytest.raises(fp8.Fp8TypeError, match="y must be float32, got torch.float16"):
        round_to_codes(torch.ones(2, dtype=torch.float16), E4M3FN)


def test_conformance_argument_errors_are_fp8_errors():
    with pytest.raises(fp8.Fp8ValueError, match="profile must be one of"):
        run_suite("reference", profile="huge")
    with pytest.raises(fp8.Fp8ValueError, match="case_id: no conformance case 'nope'"):
        run_case("nope", backend="reference", profile="quick")
    with pytest.raises(fp8.Fp8ValueError, match="needs a reason"):
        parse_deviations("some.case.id\n")
