"""Progress of a conformance run: plain periodic lines in a log, a tqdm bar on a terminal,
nothing with --no-progress (conformance/progress.py and its use by the runner and CLI)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from portable_fp8.conformance import run_suite
from portable_fp8.conformance.progress import RunProgress

_LINE = re.compile(r"^conformance: (\d+)/(\d+) cases \((\d+)%\), [\d.]+ s elapsed")


class _Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _log_progress(
    total: int, clock: _Clock, interval: float = 5.0
) -> tuple[RunProgress, io.StringIO]:
    stream = io.StringIO()
    bar = RunProgress(total, stream=stream, terminal=False, interval=interval, clock=clock,
                      heartbeat=False)  # fmt: skip
    return bar, stream


def test_a_log_gets_one_plain_line_per_interval_with_counts_eta_and_the_case():
    clock = _Clock()
    bar, stream = _log_progress(10, clock)
    for i in range(10):  # each case takes 2 s (on the fake clock)
        bar.start_case(f"cast/e5m2/case{i}")
        clock.now += 2.0
        bar.end_case(failed=i == 3)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    # 20 s of cases with a 5 s interval: at most one line per 5 s, plus the final line.
    assert 3 <= len(lines) <= 20 / 5 + 1, lines
    assert all(_LINE.match(line) for line in lines), lines
    # The first line is due 5 s in; the first event after that is case 2 ending at 6 s:
    # 3 of 10 done at 2 s each, so 7 x 2 = 14 s left.
    first = lines[0]
    assert first.startswith("conformance: 3/10 cases (30%), 6.0 s elapsed, ~14.0 s left")
    assert "0 failed" in first
    assert any("1 failed" in line and "at cast/e5m2/case" in line for line in lines[1:-1])
    assert lines[-1] == "conformance: 10/10 cases (100%), 20.0 s elapsed, 1 failed, finished"


def test_the_fingerprint_phase_is_shown():
    clock = _Clock()
    bar, stream = _log_progress(2, clock, interval=1.0)
    for i in range(2):
        bar.start_case(f"gemm/{i}")
        bar.end_case(False)
    clock.now += 1.5
    bar.start_fingerprint()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "conformance: 2/2 cases (100%), 1.5 s elapsed, 0 failed, now the numerics fingerprint"
    )


def test_disabled_progress_writes_nothing():
    stream = io.StringIO()
    clock = _Clock()
    bar = RunProgress(3, enabled=False, stream=stream, terminal=False, interval=0, clock=clock)
    for i in range(3):
        bar.start_case(str(i))
        clock.now += 10
        bar.end_case(True)
    bar.start_fingerprint()
    bar.close()
    disabled_bar = RunProgress(3, enabled=False, stream=stream, terminal=True)
    disabled_bar.close()
    assert stream.getvalue() == ""


def test_the_heartbeat_writes_lines_while_one_slow_case_runs():
    stream = io.StringIO()
    with RunProgress(2, stream=stream, terminal=False, interval=0.1) as bar:
        bar.start_case("gemm/slow")
        time.sleep(1.0)  # no event for 10 intervals: the heartbeat writes the lines
        bar.end_case(False)
    slow = [line for line in stream.getvalue().splitlines() if line.endswith("at gemm/slow")]
    assert len(slow) >= 2, stream.getvalue()


def test_a_terminal_gets_a_tqdm_bar_with_the_case_and_counts():
    stream = io.StringIO()
    with RunProgress(4, stream=stream, terminal=True, heartbeat=False) as bar:
        for i in range(4):
            bar.start_case(f"quantize/e4m3fn/{i}")
            bar.end_case(failed=i == 0)
    out = stream.getvalue()
    assert "\r" in out and "4/4 cases" in out and "failed 1" in out
    assert out.endswith("\n")  # the bar's line is finished before the summary prints


def test_run_suite_in_a_log_writes_lines_not_a_bar(capsys):
    report = run_suite("reference", select="amax/rowwise/*", progress=True, fingerprint=False)
    err = capsys.readouterr().err
    n = len(report.records)
    assert f"conformance: {n}/{n} cases (100%)" in err and "\r" not in err


def _cli(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PORTABLE_FP8_BACKEND"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "portable_fp8", "conformance", "--backend", "reference",
           "--case", "amax/rowwise/*", "--no-fingerprint", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_piped_cli_stderr_has_plain_periodic_lines(tmp_path):
    proc = _cli(tmp_path, "--progress-interval", "0")  # 0: a line at every event
    lines = [line for line in proc.stderr.splitlines() if _LINE.match(line)]
    n = int(re.search(r"running (\d+) cases", proc.stderr).group(1))
    done = sorted({int(_LINE.match(line).group(1)) for line in lines})
    assert done == list(range(n + 1)), proc.stderr  # 0/n ... n/n
    assert "\r" not in proc.stderr
    assert lines[-1].startswith(f"conformance: {n}/{n} cases (100%)") and "finished" in lines[-1]


@pytest.mark.parametrize("interval", ["0", "5"])
def test_no_progress_silences_the_progress(tmp_path, interval):
    proc = _cli(tmp_path, "--no-progress", "--progress-interval", interval)
    assert not any(_LINE.match(line) for line in proc.stderr.splitlines()), proc.stderr
    assert "\r" not in proc.stderr and "cases [" not in proc.stderr


def test_an_interrupted_run_ends_its_log_saying_so():
    clock = _Clock()
    bar, stream = _log_progress(5, clock)
    with pytest.raises(KeyboardInterrupt), bar:
        bar.start_case("cast/a")
        clock.now += 1
        bar.end_case(False)
        raise KeyboardInterrupt
    assert (
        stream.getvalue() == "conformance: 1/5 cases (20%), 1.0 s elapsed, 0 failed, interrupted\n"
    )
