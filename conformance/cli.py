"""``portable-fp8 conformance``: run the suite from the command line.

Exit status 0 only if no case failed (1 if some did, 2 for a usage or backend error).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .model import PROFILES, Verdict
from .runner import SuiteReport, run_suite

__all__ = ["add_parser", "main", "summary_table"]


def summary_table(report: SuiteReport) -> str:
    """Per-kind counts of each verdict, as a plain-text table, and the failed case ids."""
    kinds = sorted({r.kind for r in report.records})
    verdicts = [v.value for v in Verdict]
    head = f"{'kind':<12}" + "".join(f"{v:>17}" for v in verdicts)
    lines = [head, "-" * len(head)]
    for kind in kinds:
        recs = [r for r in report.records if r.kind == kind]
        lines.append(
            f"{kind:<12}"
            + "".join(f"{sum(r.result.verdict.value == v for r in recs):>17}" for v in verdicts)
        )
    total = report.counts()
    lines.append("-" * len(head))
    lines.append(f"{'total':<12}" + "".join(f"{total[v]:>17}" for v in verdicts))
    for r in report.failed[:50]:
        lines.append(f"FAILED {r.id}: {r.result.detail[:200]}")
    if len(report.failed) > 50:
        lines.append(f"... and {len(report.failed) - 50} more failures (see the reports)")
    lines.append(
        f"backend {report.backend} on {report.device}, profile {report.profile}, "
        f"{report.seconds:.1f} s: {'PASSED' if report.ok else 'FAILED'}"
    )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .report_html import write_html
    from .report_json import write_json
    from .report_md import write_markdown

    command = "portable-fp8 " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        report = run_suite(
            args.backend,
            profile=args.profile,
            deviations=args.deviations,
            select=args.case,
            progress=None if not args.no_progress else False,
            fingerprint=not args.no_fingerprint,
            command=command,
        )
    except Exception as exc:
        print(f"portable-fp8 conformance: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(summary_table(report))
    if args.json:
        write_json(report, args.json)
    if args.report:
        write_html(report, args.report)
    if args.markdown:
        write_markdown(report, args.markdown)
    return 0 if report.ok else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``conformance`` subcommand to the ``portable-fp8`` parser."""
    p = subparsers.add_parser(
        "conformance",
        help="check a backend against the FP8 numerics contract",
        description="Run the conformance suite on one backend; exit 0 only if nothing failed.",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="backend name (default: $PORTABLE_FP8_BACKEND, then the automatic choice)",
    )
    p.add_argument("--profile", choices=PROFILES, default="quick")
    p.add_argument("--json", metavar="OUT.json", help="write the JSON report here")
    p.add_argument("--report", metavar="OUT.html", help="write the HTML report here")
    p.add_argument("--markdown", metavar="OUT.md", help="write a Markdown summary here")
    p.add_argument(
        "--deviations", metavar="FILE", help="known deviations: '<case id> <reason>' per line"
    )
    p.add_argument("--case", metavar="GLOB", help="run only the cases whose id matches GLOB")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-fingerprint", action="store_true", help="skip the numerics probes")
    p.set_defaults(func=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m portable_fp8.conformance.cli``: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="portable-fp8")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["conformance", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
