"""``portable-fp8 conformance``'s failure modes and exit statuses (0 passed, 1 failed,
2 usage error before any case runs, 3 interrupted or internal error)."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from portable_fp8.conformance import cli as conformance_cli
from portable_fp8.conformance import runner

import portable_fp8
from portable_fp8 import cli

_FAST = ["--backend", "reference", "--case", "amax/rowwise/*", "--no-fingerprint",
         "--no-progress"]  # fmt: skip


def _main(*argv: str) -> int:
    return cli.main(["conformance", *argv])


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Run in an empty folder: a run without report paths writes conformance-report/."""
    monkeypatch.chdir(tmp_path)


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
    """Bytes read from ``fd`` until the regular expression ``needle`` matches (or
    ``timeout`` seconds pass)."""
    seen, deadline = b"", time.monotonic() + timeout
    while not re.search(needle, seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return seen


def test_sigint_in_a_real_process_exits_3_with_an_interrupted_report(tmp_path):
    """Ctrl-C after the first case: exit 3 and a parseable JSON report marked interrupted.
    stderr is a pseudo-terminal, so the CLI shows its tqdm bar ("| 1/N cases" once a case
    has run): the signal is sent then, however slow this machine is."""
    out = tmp_path / "r.json"
    env = {k: v for k, v in os.environ.items() if k != "PORTABLE_FP8_BACKEND"}
    cmd = [sys.executable, "-m", "portable_fp8.cli", "conformance", "--backend", "reference",
           "--profile", "full", "--json", str(out)]  # fmt: skip
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    try:
        progress = _read_until(master, rb"\| [1-9][0-9]*/[0-9]+ cases", timeout=240)
        assert re.search(rb"\| [1-9][0-9]*/[0-9]+ cases", progress), progress[-2000:]
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


# -- help, version, default outputs, the backends listing --------------------------------


def test_top_level_help_describes_the_tool_and_its_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "FP8 arithmetic that computes the same on every accelerator" in out
    assert "backends" in out and "conformance" in out and "examples:" in out


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"portable-fp8 {portable_fp8.__version__}"


def test_python_dash_m_portable_fp8_is_the_same_tool(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "portable_fp8", "conformance", *_FAST],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PASSED" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "portable_fp8", "conformance", "--case",
                          "no/such/*", "--backend", "reference"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "matches none" in bad.stderr


def _options(parser: argparse.ArgumentParser):
    """(subcommand, action) for every option of every subcommand but -h."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                yield name, p, action


def test_every_option_has_help_saying_its_default():
    parser = cli._build_parser()
    seen = 0
    for name, p, action in _options(parser):
        text = p._get_formatter()._get_help_string(action)
        assert action.help and "default" in text, (name, action.option_strings, text)
        seen += 1
    assert seen >= 12  # backends --json and the conformance options


def test_profile_help_says_what_quick_and_full_hold(capsys):
    with pytest.raises(SystemExit):
        _main("--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "quick: every op, format, granularity pair" in out
    assert "full: adds" in out and "(default: quick)" in out


def test_reports_go_to_conformance_report_by_default(tmp_path, capsys):
    assert _main(*_FAST) == 0
    folder = tmp_path / "conformance-report"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["reference-quick.html", "reference-quick.json", "reference-quick.md"]
    assert json.loads((folder / "reference-quick.json").read_text())["ok"] is True
    assert "conformance-report/reference-quick.html" in capsys.readouterr().err


def test_an_explicit_path_writes_only_that_report_unless_out_dir_is_given(tmp_path):
    assert _main(*_FAST, "--json", "only.json") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.json"]
    assert _main(*_FAST, "--json", "r.json", "--out-dir", "reports") == 0
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "reference-quick.html", "reference-quick.md"]  # fmt: skip
    assert (tmp_path / "r.json").exists()


def test_out_dir_that_cannot_be_created_is_a_usage_error(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_one", lambda *a: ran.append(a))
    (tmp_path / "file").write_text("not a folder")
    assert _main(*_FAST, "--out-dir", "file/sub") == 2
    assert "--out-dir" in capsys.readouterr().err and ran == []


def test_backends_listing_reads_as_words(capsys):
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "tensorwise \N{MULTIPLICATION SIGN} tensorwise" in out
    assert "block_1x128 \N{MULTIPLICATION SIGN} block_128x128" in out
    assert "tensorwisextensorwise" not in out
    for repr_text in ("{'", "['", "None"):  # (reasons may quote "is False")
        assert repr_text not in out, repr_text
    assert "IEEE fp32 (23 fraction bits), round to nearest even" in out  # cpu's accumulator


def test_backends_json_keeps_the_machine_form(capsys):
    assert cli.main(["backends", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ref = next(b for b in data["backends"] if b["name"] == "reference")
    assert "tensorwisextensorwise" in ref["capabilities"]["gemm_granularities"]


def test_backends_listing_falls_back_to_x_where_the_terminal_cannot_show_the_sign(tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "portable_fp8", "backends"],
                          capture_output=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert b"tensorwise x tensorwise" in proc.stdout
