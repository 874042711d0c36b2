"""The ``portable-fp8`` command line.

``portable-fp8 backends`` lists every backend, whether it can run here (and why not), which
implementation path it uses and what it declares. ``portable-fp8 conformance`` runs the
conformance suite (see :mod:`portable_fp8.conformance`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from .dispatch import registry

__all__ = ["main"]


def _backend_row(name: str, backend) -> dict:
    """One row of the listing; a backend with broken declarations is shown with its reason."""
    reason = registry.unavailable_reason(backend)
    info = {"name": name, "available": reason is None, "reason": reason}
    info["priority"] = info["capabilities"] = None  # unless declared well (else: reason)
    with contextlib.suppress(Exception):
        priority = backend.priority
        if isinstance(priority, int) and not isinstance(priority, bool):
            info["priority"] = priority
    with contextlib.suppress(Exception):
        info["capabilities"] = backend.capabilities.as_dict()
    if reason is None:
        try:
            info["implementation"] = backend.describe()
        except Exception as exc:  # describing must never hide the listing
            info["implementation"] = {"error": str(exc)}
    return info


def _cmd_backends(args: argparse.Namespace) -> int:
    backends = registry.list_backends()
    rows = [_backend_row(name, b) for name, b in backends.items()]
    rows.sort(key=lambda r: (r["priority"] is None, -(r["priority"] or 0), r["name"]))
    conflicts = registry.conflicts()
    for name, why in sorted(conflicts.items()):
        rows.append(
            {"name": name, "available": False, "reason": f"conflict: {why}", "priority": None,
             "capabilities": None}
        )  # fmt: skip
    errors = registry.plugin_errors()
    if args.json:
        json.dump({"backends": rows, "plugin_errors": errors}, sys.stdout, indent=2)
        print()
        return 0
    for info in rows:
        status = "available" if info["available"] else f"unavailable: {info['reason']}"
        priority = "  -" if info["priority"] is None else f"{info['priority']:>3}"
        print(f"{info['name']:<12} priority {priority}  {status}")
        caps = info["capabilities"]
        if caps is None:
            continue
        print(f"  devices       {', '.join(caps['devices'])}")
        print(f"  cast formats  {', '.join(caps['cast_formats'])}")
        print(f"  granularities {', '.join(caps['gemm_granularities'])}")
        print(f"  rounding      {', '.join(caps['rounding'])}")
        print(f"  out dtypes    {', '.join(caps['out_dtypes'])}")
        print(f"  accumulator   {caps['accumulator']}")
        if caps.get("fast_accumulator"):
            print(f"  fast_accum    {caps['fast_accumulator']}")
        for key, value in info.get("implementation", {}).items():
            print(f"  {key:<13} {value}")
    for name, error in sorted(errors.items()):
        print(f"plugin {name!r}: {error}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portable-fp8", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_backends = sub.add_parser("backends", help="list backends, availability and capabilities")
    p_backends.add_argument("--json", action="store_true", help="print JSON instead of text")
    p_backends.set_defaults(func=_cmd_backends)
    from .conformance.cli import add_parser as add_conformance

    add_conformance(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``portable-fp8`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
