"""``portable-fp8 conformance``'s failure modes and exit statuses (0 passed, 1 failed,
2 usage error before any case runs, 3 interrupted or internal error)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from portable_fp8.conformance import cli as conformance_cli
from portable_fp8.conformance import runner

from portable_fp8 import cli

_FAST = ["--backend", "reference", "--case", "amax/rowwise/*", "--no-fingerprint",
         "--no-progress"]  # fmt: skip


def _main(*argv: str) -> int:
    return cli.main(["conformance", *argv])


@pytest.mark.parametrize("option", ["--json", "--report", "--markdown"])
def test_unwritable_output_is_a_usage_error_before_any_case_runs(
    tmp_path, capsys, monkeypatch, option
):
    ran = []
    monkeypatch.setattr(runner, "run_one", lambda *a: ran.append(a))
    good = tmp_path / "ok.json"
    for bad, why in (
        (tmp_path / "missing" / "r.out", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        other = [] if option == "--json" else ["--json", str(good)]
        assert _main(*_FAST, option, str(bad), *other) == 2
        err = capsys.readouterr().err
        assert option in err and str(bad) in err and why in err
    assert ran == [] and not good.exists()  # nothing ran, no report was half-written


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only directories")
def test_read_only_directory_is_a_usage_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _main(*_FAST, "--json", str(ro / "r.json")) == 2
    finally:
        ro.chmod(0o755)
    assert "not writable" in capsys.readouterr().err


def test_case_matching_nothing_is_a_usage_error(capsys):
    assert _main("--backend", "reference", "--case", "no/such/*", "--no-fingerprint") == 2
    err = capsys.readouterr().err
    assert "--case 'no/such/*' matches none" in err


@pytest.mark.parametrize(
    "content, expected",
    [(b"cast/x \xff\xfe bad bytes\n", "is not UTF-8"), (None, "cannot read")],
    ids=["not-utf8", "missing"],
)
def test_bad_deviations_file_is_named(tmp_path, capsys, content, expected):
    path = tmp_path / "devs.txt"
    if content is not None:
        path.write_bytes(content)
    assert _main(*_FAST, "--deviations", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err


def test_reports_are_written_atomically_and_readable(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("previous run")
    assert _main(*_FAST, "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["status"] == "passed" and data["ok"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # the mode open() would give it


def test_interrupt_writes_reports_marked_interrupted(tmp_path, capsys, monkeypatch):
    real = runner.run_one
    calls = []

    def interrupted_after_two(case, env, devs):
        calls.append(case.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(case, env, devs)

    monkeypatch.setattr(runner, "run_one", interrupted_after_two)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    assert _main(*_FAST, "--json", str(out), "--markdown", str(md)) == 3
    data = json.loads(out.read_text())
    assert data["status"] == "interrupted" and data["ok"] is False
    assert [c["id"] for c in data["cases"]] == calls[:2]
    assert "INTERRUPTED" in md.read_text()


def test_internal_error_is_exit_3(capsys, monkeypatch):
    def crash(*a, **k):
        raise RuntimeError("bug in the runner")

    monkeypatch.setattr(conformance_cli, "run_suite", crash)
    assert _main(*_FAST) == 3
    assert "bug in the runner" in capsys.readouterr().err


def test_exit_statuses_are_in_help(capsys):
    with pytest.raises(SystemExit):
        _main("--help")
    out = capsys.readouterr().out
    for line in ("0  every selected case ran", "1  some case failed", "2  usage error",
                 "3  interrupted"):  # fmt: skip
        assert line in out
    assert all(f"* {n}:" in conformance_cli.__doc__ for n in range(4))


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Bytes read from ``fd`` until ``needle`` appears (or ``timeout`` seconds pass)."""
    seen, deadline = b"", time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return seen


def test_sigint_in_a_real_process_exits_3_with_an_interrupted_report(tmp_path):
    """Ctrl-C after the first case: exit 3 and a parseable JSON report marked interrupted.
    stderr is a pseudo-terminal, so the CLI shows its progress bar ("1/N" after the first
    case): the signal is sent once a case has run, however slow this machine is."""
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "PORTABLE_FP8_BACKEND"}
    cmd = [sys.executable, "-m", "portable_fp8.cli", "conformance", "--backend", "reference",
           "--profile", "full", "--json", str(out)]  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    try:
        progress = _read_until(master, b"] 1/", timeout=240)
        assert b"] 1/" in progress, progress[-2000:]
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
        stderr = _read_until(master, b"reports written", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 3, stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["status"] == "interrupted" and data["ok"] is False and data["cases"]
    assert len(data["cases"]) < len(runner.list_cases("reference", "full"))  # stopped early
    assert b"INTERRUPTED" in stdout
