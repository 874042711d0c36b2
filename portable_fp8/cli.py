"""The ``portable-fp8`` command line (also ``python -m portable_fp8``).

``portable-fp8 backends`` lists every backend, whether it can run here (and why not), which
implementation path it uses and what it declares. ``portable-fp8 conformance`` runs the
conformance suite (see :mod:`portable_fp8.conformance`). ``portable-fp8 telemetry RUN.jsonl``
draws a telemetry file as an HTML report (see :mod:`portable_fp8.nn.telemetry_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence

from . import __version__
from .conformance.capability_text import TIMES, capability_rows
from .conformance.cli import HelpFormatter
from .conformance.cli import add_parser as add_conformance
from .dispatch import registry
from .nn.telemetry_report import add_parser as add_telemetry

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
    times = _times_sign(sys.stdout)
    width = max(shutil.get_terminal_size((100, 24)).columns, 60)
    for info in rows:
        status = "available" if info["available"] else f"unavailable: {info['reason']}"
        priority = "  -" if info["priority"] is None else f"{info['priority']:>3}"
        print(
            textwrap.fill(f"{info['name']:<12} priority {priority}  {status}", width=width,
                          subsequent_indent=" " * 28, break_on_hyphens=False)
        )  # fmt: skip
        caps = info["capabilities"]
        if caps is None:
            continue
        details = capability_rows(caps, times)
        details += [(str(k), str(v)) for k, v in info.get("implementation", {}).items()]
        for label, words in details:
            print(_wrapped(label, words, width, times))
        print()
    for name, error in sorted(errors.items()):
        print(f"plugin {name!r}: {error}")
    return 0


def _times_sign(stream) -> str:
    """The multiplication sign if ``stream`` can encode it, else ``x``."""
    try:
        TIMES.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "x"
    return TIMES


def _wrapped(label: str, words: str, width: int, times: str) -> str:
    """``  label   words`` with the words wrapped under themselves (never inside a pair)."""
    head = f"  {label:<31} "
    glued = words.replace(f" {times} ", f"\0{times}\0")  # "a × b" stays on one line
    text = textwrap.fill(
        glued, width=width, initial_indent=head, subsequent_indent=" " * len(head),
        break_on_hyphens=False, break_long_words=False,
    )  # fmt: skip
    return text.replace("\0", " ")


_DESCRIPTION = """\
FP8 arithmetic that computes the same on every accelerator: one operator API (casts,
quantisation, scaled GEMMs, an FP8 nn.Linear) over pluggable backends, a reference emulator
that is the contract, and a conformance suite that checks a backend against it.
Run 'portable-fp8 COMMAND --help' for a command's options."""

_EXAMPLES = """\
examples:
  portable-fp8 backends
  portable-fp8 conformance --backend cpu              # quick profile; reports in
                                                      # conformance-report/
  portable-fp8 conformance --backend cuda --profile full --report cuda-full.html
  portable-fp8 telemetry run.jsonl --report run.html  # FP8 telemetry as plots
  python -m portable_fp8 backends --json              # the same tool as a module"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portable-fp8",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the package version and exit",
    )  # fmt: skip
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    p_backends = sub.add_parser(
        "backends",
        help="list the installed backends: available here or why not, priority, "
        "implementation path, declared formats, granularities and accumulator",
        description="List every installed backend: whether it can run on this machine (and\n"
        "why not), its priority (the automatic choice takes the highest available), its\n"
        "implementation path and its declared capabilities.",
        formatter_class=HelpFormatter,
    )
    p_backends.add_argument(
        "--json", action="store_true",
        help="print JSON (capabilities as in the conformance JSON report) instead of text",
    )  # fmt: skip
    p_backends.set_defaults(func=_cmd_backends)

    add_conformance(sub)
    add_telemetry(sub, HelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``portable-fp8`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `portable-fp8 backends | head`: the reader left; not an error
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (flushed at exit, then closed)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
