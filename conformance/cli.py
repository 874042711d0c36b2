"""``portable-fp8 conformance``: run the suite from the command line.

Exit statuses:

* 0: every selected case ran and none failed;
* 1: some case failed (the reports say which);
* 2: usage error, found before any case runs: unknown or unavailable backend, a ``--case``
  pattern matching no case, an unreadable or malformed ``--deviations`` file, a ``--json``,
  ``--report`` or ``--markdown`` path that cannot be written;
* 3: interrupted (Ctrl-C / SIGINT: the reports are written, marked interrupted, with the
  cases that ran) or an internal error.

Reports are written atomically (a temporary file in the same directory, then renamed), so a
reader never sees half a report.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import traceback

from ._files import output_path_problem
from .deviations import load_deviations
from .model import PROFILES, Verdict
from .runner import SuiteInterrupted, SuiteReport, list_cases, run_suite

#: Exit statuses (the module docstring and ``--help`` explain them).
EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3

_EPILOG = """exit status:
  0  every selected case ran and none failed
  1  some case failed
  2  usage error (unknown/unavailable backend, --case matching nothing, unreadable
     --deviations file, unwritable --json/--report/--markdown path); nothing ran
  3  interrupted (reports written, marked "interrupted") or internal error"""

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
        f"{report.seconds:.1f} s: {report.status.upper()}"
    )
    return "\n".join(lines)


def _usage_error(message: str) -> int:
    print(f"portable-fp8 conformance: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _write_reports(report: SuiteReport, args: argparse.Namespace) -> None:
    from .report_html import write_html
    from .report_json import write_json
    from .report_md import write_markdown

    for path, write in ((args.json, write_json), (args.report, write_html),
                        (args.markdown, write_markdown)):  # fmt: skip
        if path:
            write(report, path)


def _run(args: argparse.Namespace) -> int:
    for option in ("json", "report", "markdown"):
        path = getattr(args, option)
        problem = None if path is None else output_path_problem(path)
        if problem is not None:
            return _usage_error(f"--{option} {path!r} cannot be written: {problem}")
    command = "portable-fp8 " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        deviations = load_deviations(args.deviations)
        cases = list_cases(args.backend, args.profile)
    except Exception as exc:  # unknown/unavailable backend, bad deviations file
        return _usage_error(f"{type(exc).__name__}: {exc}")
    if args.case is not None:
        selected = sum(fnmatch.fnmatchcase(c.id, args.case) for c in cases)
    else:
        selected = len(cases)
    if not selected:
        return _usage_error(
            f"--case {args.case!r} matches none of the {len(cases)} cases of profile "
            f"{args.profile!r} (ids look like {cases[0].id!r})"
            if cases
            else f"--case {args.case!r}: profile {args.profile!r} has no cases here"
        )
    print(f"portable-fp8 conformance: running {selected} cases...", file=sys.stderr, flush=True)
    try:
        report = run_suite(
            args.backend,
            profile=args.profile,
            deviations=deviations,
            select=args.case,
            progress=None if not args.no_progress else False,
            fingerprint=not args.no_fingerprint,
            command=command,
            exitfirst=args.exitfirst,
        )
    except SuiteInterrupted as stop:
        report = stop.report
        print(f"\n{summary_table(report)}")
        _write_reports(report, args)
        print("portable-fp8 conformance: interrupted; reports written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before the first case (e.g. while loading the backend)
        print("portable-fp8 conformance: interrupted before any case ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print("portable-fp8 conformance: internal error (above)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(report))
    _write_reports(report, args)
    return EXIT_PASSED if report.ok else EXIT_FAILED


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``conformance`` subcommand to the ``portable-fp8`` parser."""
    p = subparsers.add_parser(
        "conformance",
        help="check a backend against the FP8 numerics contract",
        description="Run the conformance suite on one backend; exit 0 only if nothing failed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    p.add_argument(
        "-x",
        "--exitfirst",
        action="store_true",
        help="stop at the first failed case (exit 1; the reports hold the cases that ran)",
    )
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
