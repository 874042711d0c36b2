"""The layering of docs/architecture.md, checked on the imports of every module (ast).

Every ``import`` counts, at module level or inside a function (a lazy import is still an
arrow), and so do imports under ``if TYPE_CHECKING:``. Arrows point down only:
errors < numerics < dispatch < nn < compat < cli, and backends/ and conformance/ use the core, never
the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Folder -> the package it installs as (the prefix rule of setup.py).
PREFIX = {
    "portable_fp8": "portable_fp8",
    "backends": "portable_fp8.backends",
    "conformance": "portable_fp8.conformance",
}
ROOMS = ("errors", "numerics", "dispatch", "nn", "compat", "cli", "backends", "conformance")


def _module_name(path: Path) -> tuple[str, bool]:
    """The installed dotted name of ``path`` and whether it is a package ``__init__``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts.pop()
    return ".".join([PREFIX[parts[0]], *parts[1:]]), is_pkg


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder in PREFIX:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name, is_pkg = _module_name(path)
            found[name] = (path, is_pkg)
    return found


def _imports(path: Path, name: str, is_pkg: bool) -> set[str]:
    """The absolute names of the portable_fp8 modules ``path`` imports (anywhere in it)."""
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` may name a submodule: count pkg.sub as the target.
            targets = [f"{mod}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t == "portable_fp8" or t.startswith("portable_fp8."))
    return out


def _room(module: str) -> str | None:
    """The room of a portable_fp8 module name (None: the top package itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return parts[1] if parts[1] in ROOMS else None


def _room_of_target(target: str, known: set[str]) -> str | None:
    """The room of an imported name; ``portable_fp8.X`` that is no module is the facade."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return _room(target)


#: Room -> the rooms it may import (None: the top package's facade ``portable_fp8``).
ALLOWED: dict[str, set[str | None]] = {
    "errors": {"errors"},
    "numerics": {"errors", "numerics"},
    "dispatch": {"errors", "numerics", "dispatch"},
    "nn": {"errors", "numerics", "dispatch", "nn"},
    "compat": {"errors", "numerics", "dispatch", "nn", "compat"},
    "backends": {None, "errors", "numerics", "dispatch", "nn", "backends"},
    "conformance": {None, "errors", "numerics", "dispatch", "nn", "backends", "conformance"},
    "cli": {None, *ROOMS},
}


def _edges() -> list[tuple[str, str, str | None]]:
    """(importing module, imported name, imported room) for every portable_fp8 import."""
    modules = _modules()
    known = set(modules)
    return [
        (name, target, _room_of_target(target, known))
        for name, (path, is_pkg) in modules.items()
        for target in sorted(_imports(path, name, is_pkg))
    ]


def test_the_scan_sees_known_arrows():
    # Guards the scan itself: relative, absolute and function-level imports all resolve.
    edges = {(m, t) for m, t, _ in _edges()}
    assert ("portable_fp8.nn.linear", "portable_fp8.nn._custom_ops") in edges  # from . import
    assert ("portable_fp8.dispatch.registry", "portable_fp8.dispatch.hookspecs.ENTRY_POINT_GROUP"
            ) in edges  # fmt: skip
    assert any(m == "portable_fp8.backends.nvidia.triton" and "_triton_gemm" in t
               for m, t in edges)  # fmt: skip  # a lazy import inside a method


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_arrows_point_down_only(room):
    bad = [f"{m} imports {t}" for m, t, r in _edges()
           if _room(m) == room and r not in ALLOWED[room]]  # fmt: skip
    assert bad == []


def test_the_package_facade_imports_no_backend_or_conformance():
    # ``import portable_fp8`` loads the core only; backends load through the registry.
    above = ("backends", "conformance", "cli", "compat")
    bad = [t for m, t, r in _edges() if m == "portable_fp8" and r in above]
    assert bad == []
