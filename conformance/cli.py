"""``portable-fp8 conformance``: run the suite from the command line.

Exit statuses:

* 0: every selected case ran and none failed;
* 1: some case failed (the reports say which);
* 2: usage error, found before any case runs: unknown or unavailable backend, a ``--case``
  pattern matching no case, an unreadable or malformed ``--deviations`` file, a ``--json``,
  ``--report`` or ``--markdown`` path that cannot be written, an ``--out-dir`` that cannot
  be created;
* 3: interrupted (Ctrl-C / SIGINT: the reports are written, marked interrupted, with the
  cases that ran) or an internal error.

Reports: without ``--json``, ``--report`` or ``--markdown``, all three are written into
``--out-dir`` (default ``conformance-report/``, created) as ``<backend>-<profile>.json``,
``.html`` and ``.md``; with any of them, only those (plus, if ``--out-dir`` is given too,
the others into it). Reports are written atomically (a temporary file in the same
directory, then renamed), so a reader never sees half a report.
"""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
import traceback
from pathlib import Path

from ._files import output_path_problem
from .deviations import load_deviations
from .model import PROFILES, Verdict
from .progress import DEFAULT_INTERVAL_S
from .runner import SuiteInterrupted, SuiteReport, list_cases, resolve_backend, run_suite

#: Exit statuses (the module docstring and ``--help`` explain them).
EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3

_EPILOG = """exit status:
  0  every selected case ran and none failed
  1  some case failed
  2  usage error (unknown/unavailable backend, --case matching nothing, unreadable
     --deviations file, unwritable --json/--report/--markdown path or --out-dir);
     nothing ran
  3  interrupted (reports written, marked "interrupted") or internal error

examples:
  portable-fp8 conformance --backend cpu       # quick: reports in conformance-report/
  portable-fp8 conformance --backend cuda --profile full --case 'gemm/*'
  portable-fp8 conformance --backend triton --json triton.json --no-progress  # CI"""

_DESCRIPTION = """\
Run the conformance suite on one backend: every case its declared capabilities allow is
run and compared with the reference emulator (bit for bit, or within the analytic GEMM
error bound of the declared accumulator). Then a summary per kind of case is printed and
the JSON, HTML and Markdown reports are written. Exit 0 only if nothing failed."""

#: Where reports go when no report path is given.
DEFAULT_OUT_DIR = "conformance-report"

_PROFILE_HELP = (
    "quick: every op, format, granularity pair and declared feature with representative "
    "inputs (cast scales 2^0, 2^-4, 3.7, 2^-16, 2^16; 2^16 random fp32 values per format; "
    "GEMM K sweep 16..2048 on one granularity pair; FP8 Linear with 2-D fp32 inputs): about "
    "2700 cases, seconds to a minute on a CPU, for CI. full: adds cast scales (10 in all), "
    "2^21 random values, larger and ragged GEMM shapes, the K sweep to 16384 on every "
    "granularity pair, every FP8 Linear recipe with 3-D and bf16 inputs: about 3600 cases, "
    "for bringing up a backend"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's layout and appends each option's default to
    its help: ``(default: quick)``, ``(default: off)`` for a flag; an option whose help
    already says its default (``default:`` in it), or whose default is None, gets none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or "%(default)" in text or action.default is argparse.SUPPRESS:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


__all__ = ["add_parser", "main", "summary_table", "HelpFormatter", "DEFAULT_OUT_DIR"]


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


_REPORTS = (("json", ".json"), ("report", ".html"), ("markdown", ".md"))


def _report_paths(args: argparse.Namespace, backend: str) -> dict[str, str]:
    """Option -> path of every report to write (see the module docstring)."""
    paths = {opt: getattr(args, opt) for opt, _ in _REPORTS if getattr(args, opt)}
    if not paths or args.out_dir is not None:
        folder = Path(args.out_dir or DEFAULT_OUT_DIR)
        for opt, suffix in _REPORTS:
            paths.setdefault(opt, str(folder / f"{backend}-{args.profile}{suffix}"))
    return paths


def _write_reports(report: SuiteReport, paths: dict[str, str]) -> None:
    from .report_html import write_html
    from .report_json import write_json
    from .report_md import write_markdown

    writers = {"json": write_json, "report": write_html, "markdown": write_markdown}
    for opt in ("report", "json", "markdown"):  # the page people open, named first
        if opt in paths:
            writers[opt](report, paths[opt])
    shown = ", ".join(paths[o] for o in ("report", "json", "markdown") if o in paths)
    print(f"portable-fp8 conformance: reports written: {shown}", file=sys.stderr)


def _prepare_outputs(args: argparse.Namespace, backend: str) -> dict[str, str] | int:
    """The report paths (explicit ones already checked), the output folder created where
    it is used and every path checked writable; or the usage error's exit status."""
    paths = _report_paths(args, backend)
    folder = Path(args.out_dir or DEFAULT_OUT_DIR)
    if any(Path(p).parent == folder for p in paths.values()):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            return _usage_error(f"--out-dir {str(folder)!r} cannot be created: {why}")
    for path in paths.values():
        problem = output_path_problem(path)
        if problem is not None:
            return _usage_error(f"--out-dir: {path!r} cannot be written: {problem}")
    return paths


def _run(args: argparse.Namespace) -> int:
    for option in ("json", "report", "markdown"):  # a bad explicit path: before anything
        path = getattr(args, option)
        problem = None if path is None else output_path_problem(path)
        if problem is not None:
            return _usage_error(f"--{option} {path!r} cannot be written: {problem}")
    command = "portable-fp8 " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        deviations = load_deviations(args.deviations)
        backend = resolve_backend(args.backend)
        cases = list_cases(backend, args.profile)
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
    paths = _prepare_outputs(args, backend.name)
    if isinstance(paths, int):
        return paths
    print(
        f"portable-fp8 conformance: running {selected} cases of the {args.profile} profile on "
        f"backend {backend.name}...",
        file=sys.stderr,
        flush=True,
    )
    try:
        report = run_suite(
            backend,
            profile=args.profile,
            deviations=deviations,
            select=args.case,
            progress=not args.no_progress,
            fingerprint=not args.no_fingerprint,
            command=command,
            progress_interval=args.progress_interval,
            exitfirst=args.exitfirst,
        )
    except SuiteInterrupted as stop:
        report = stop.report
        print(f"\n{summary_table(report)}")
        _write_reports(report, paths)
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
    _write_reports(report, paths)
    return EXIT_PASSED if report.ok else EXIT_FAILED


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``conformance`` subcommand to the ``portable-fp8`` parser."""
    p = subparsers.add_parser(
        "conformance",
        help="check a backend against the FP8 numerics contract and write reports",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--backend",
        default=None,
        help="backend name, as 'portable-fp8 backends' lists them (default: "
        "$PORTABLE_FP8_BACKEND, else the available backend of highest priority)",
    )
    p.add_argument("--profile", choices=PROFILES, default="quick", help=_PROFILE_HELP)
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        default=None,
        help="folder for the reports <backend>-<profile>.json/.html/.md (created); with "
        "--json/--report/--markdown it takes the reports they do not name (default: "
        f"{DEFAULT_OUT_DIR}/, used only when none of those three is given)",
    )
    for option, metavar, what in (
        ("--json", "OUT.json", "the JSON report (every case, machine-readable)"),
        ("--report", "OUT.html", "the HTML report (self-contained page)"),
        ("--markdown", "OUT.md", "the Markdown summary"),
    ):
        p.add_argument(
            option,
            metavar=metavar,
            help=f"write {what} here (default: in --out-dir when no report path is given)",
        )
    p.add_argument(
        "--deviations",
        metavar="FILE",
        help="known deviations, one '<case id> <reason>' per line: listed failures count as "
        "'known deviation' (default: none)",
    )
    p.add_argument(
        "--case",
        metavar="GLOB",
        help="run only the cases whose id matches GLOB, e.g. 'gemm/*' (default: every case)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="write no progress to stderr (by default: a bar on a terminal, else a plain "
        "line every --progress-interval seconds)",
    )
    p.add_argument(
        "--progress-interval",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help="seconds between progress lines when stderr is not a terminal (0: a line as "
        "each case starts and ends)",
    )
    p.add_argument(
        "--no-fingerprint",
        action="store_true",
        help="skip the numerics fingerprint probes (accumulator bits, rounding, specials) "
        "that follow the cases",
    )
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
