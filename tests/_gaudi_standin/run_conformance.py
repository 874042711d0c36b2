"""STAND-IN, NOT HARDWARE: run the conformance suite on the ``gaudi`` adapter over the stand-in.

Usage (from the repository root)::

    PYTHONPATH=tests python -m _gaudi_standin.run_conformance --generation gaudi2 \\
        --profile full --out docs/conformance/gaudi-standin

writes ``<generation>-<profile>.json``, ``.html`` and ``.md`` there. The backend under test
is the real ``GaudiBackend`` class over the stand-in bridge ops (``gaudi-standin``), so the
report checks the adapter's argument mapping against the documented op semantics, not Gaudi
hardware; the JSON record carries a ``standin`` note saying so. Exit status 0 only if
nothing failed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import NAME, standin_backend

__all__ = ["main"]

NOTE = (
    "STAND-IN, NOT HARDWARE: the gaudi backend's adapter (backends/gaudi.py) over a stand-in "
    "of hpu::cast_to_fp8_v2 / cast_from_fp8 / fp8_gemm_v2 (tests/_gaudi_standin) computed "
    "by the portable-fp8 emulator on the CPU. It checks the argument mapping, not what a "
    "Gaudi computes; nothing here ran on Gaudi hardware."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", choices=("gaudi2", "gaudi3"), default="gaudi2")
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", type=Path, required=True, help="directory for the reports")
    args = parser.parse_args(argv)

    from portable_fp8.conformance.cli import summary_table
    from portable_fp8.conformance.report_html import write_html
    from portable_fp8.conformance.report_json import write_json
    from portable_fp8.conformance.report_md import render_markdown
    from portable_fp8.conformance.runner import run_suite

    command = "PYTHONPATH=tests python -m _gaudi_standin.run_conformance " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    report = run_suite(
        standin_backend(args.generation), profile=args.profile, progress=False, command=command
    )
    report.versions["standin"] = NOTE
    report.versions["standin_generation"] = args.generation
    print(NOTE)
    print(summary_table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.generation}-{args.profile}"
    write_json(report, stem.with_suffix(".json"))
    write_html(report, stem.with_suffix(".html"))
    banner = f"> **{NOTE}**\n\n"
    stem.with_suffix(".md").write_text(banner + render_markdown(report))
    record = json.loads(stem.with_suffix(".json").read_text())
    record["standin"] = NOTE
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"{NAME}: wrote {stem}.json, .html and .md")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
