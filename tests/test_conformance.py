"""The conformance suite's own machinery: verdicts, deviations, fingerprint, reports, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _mutants import IgnoresBias, NarrowAccumulator, TiesAwayFromZero
from portable_fp8.backends.nvidia import DEEPGEMM_PROMOTED_ACCUMULATOR, HOPPER_FAST_ACCUMULATOR
from portable_fp8.backends.reference import ReferenceBackend
from portable_fp8.conformance import Verdict, list_cases, resolve_backend, run_case, run_suite
from portable_fp8.conformance.cases.stochastic import hoeffding_tolerance
from portable_fp8.conformance.data import all_bf16, fp32_edge_cases
from portable_fp8.conformance.deviations import parse_deviations
from portable_fp8.conformance.fingerprint import numerics_fingerprint
from portable_fp8.conformance.model import Env
from portable_fp8.conformance.report_html import error_vs_k_svg, render_html, write_html
from portable_fp8.conformance.report_json import report_to_dict

import portable_fp8.cli
from portable_fp8.dispatch import registry
from portable_fp8.errors import NotSupportedError
from portable_fp8.numerics.formats import FORMATS
from portable_fp8.numerics.gemm import AccumulatorModel

_BIAS_CASE = "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/48x160x64/nn/out=float32/bias/randn"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: on a loaded 2-core machine torch's intra-op threads spin-wait
    on each other and the many small kernels here slow down 20-fold; numerics are judged
    by bounds, so the thread count changes no verdict."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def registered(monkeypatch):
    """Register a backend object under its name for the duration of a test."""

    def add(backend):
        monkeypatch.setitem(registry._registry().backends, backend.name, backend)
        return backend

    return add


# -- inputs ------------------------------------------------------------------------------


def test_all_bf16_is_every_pattern_once():
    x = all_bf16()
    bits = x.view(torch.int16).to(torch.int32) & 0xFFFF
    assert bits.unique().numel() == 65536


def test_edge_cases_hold_every_tie_and_the_overflow_tie():
    fmt = FORMATS["e4m3fn"]
    x = fp32_edge_cases(fmt, 1.0).double()
    # Ties between neighbouring values, derived from the format's fields: 1 + 1/16 lies
    # halfway between 1 and 1 + 2**-3; half the smallest subnormal (2**-10); max + half an
    # ulp of the top binade (448 + 16 = 464).
    for tie in (1 + 2.0**-4, fmt.min_subnormal / 2, fmt.max + 2.0 ** (8 - 3) / 2):
        assert (x == tie).any() and (x == -tie).any()
    assert torch.isnan(x).any() and torch.isinf(x).any()
    assert ((x == 0) & (torch.sign(1 / x) < 0)).any()  # -0


def test_hoeffding_tolerance_meets_its_false_alarm_rate():
    for n in (1 << 10, 1 << 15, 1 << 20):
        t = hoeffding_tolerance(n, 1e-9)
        assert math.isclose(2 * math.exp(-2 * n * t * t), 1e-9, rel_tol=1e-9)


# -- verdicts ----------------------------------------------------------------------------


def test_undeclared_features_are_not_supported_and_the_rest_runs():
    backend = ReferenceBackend()
    backend.capabilities = dataclasses.replace(
        backend.capabilities,
        cast_formats=frozenset({"e4m3fn"}),
        gemm_formats=frozenset({("e4m3fn", "e4m3fn")}),
        rounding=frozenset({"nearest"}),
        non_saturating=False,
        gemm_dim_multiple=16,
        gemm_bias=False,
    )
    report = run_suite(backend, fingerprint=False, progress=False)
    v = {r.id: r.result.verdict for r in report.records}
    assert report.ok
    assert v["cast/e5m2/bf16-all/sat/scale=2^0"] is Verdict.NOT_SUPPORTED
    assert v["cast/e4m3fn/bf16-all/nosat/scale=2^0"] is Verdict.NOT_SUPPORTED
    assert v["cast/e4m3fn/bf16-all/sat/scale=2^0"] is Verdict.PASSED
    assert v["sr/e4m3fn/explicit-bits"] is Verdict.NOT_SUPPORTED
    assert v[_BIAS_CASE] is Verdict.NOT_SUPPORTED
    shape_17 = "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/17x33x65/nn/out=bfloat16/codes"
    assert v[shape_17] is Verdict.NOT_SUPPORTED  # K, N not multiples of 16
    assert v["gemm/e4m3fnxe4m3fn/tensorwisextensorwise/16x16x16/nn/out=bfloat16/codes"] is (
        Verdict.PASSED
    )


class _RaisesOnBias(ReferenceBackend):
    name = "raises-on-bias"

    def scaled_mm(self, a, b, *, out_dtype, bias, c, fast_accum=False):
        if bias is not None:
            raise NotSupportedError(self.name, "bias")
        return super().scaled_mm(a, b, out_dtype=out_dtype, bias=bias, c=c)


def test_a_claimed_feature_that_raises_fails():
    report = run_suite(_RaisesOnBias(), select="gemm/*", fingerprint=False, progress=False)
    v = {r.id: r.result for r in report.records}
    assert v[_BIAS_CASE].verdict is Verdict.FAILED
    assert "NotSupportedError" in v[_BIAS_CASE].detail
    assert v[_BIAS_CASE.replace("/bias/", "/c/")].verdict is Verdict.PASSED


def test_known_deviations_and_stale_ids():
    devs = parse_deviations(
        f"# comment\n\n{_BIAS_CASE}  bias is applied by the caller on this hardware\n"
        "gemm/no/such/case  stale entry\n"
    )
    assert devs[_BIAS_CASE] == "bias is applied by the caller on this hardware"
    with pytest.warns(UserWarning, match="gemm/no/such/case"):
        report = run_suite(
            IgnoresBias(),
            select="gemm/*/bias/*",
            deviations=devs,
            fingerprint=False,
            progress=False,
        )
    v = {r.id: r.result for r in report.records}
    assert v[_BIAS_CASE].verdict is Verdict.KNOWN_DEVIATION
    assert "applied by the caller" in v[_BIAS_CASE].detail
    assert report.unmatched_deviations == ["gemm/no/such/case"]
    assert not report.ok  # the other bias cases are not listed and still fail
    with pytest.raises(ValueError, match="reason"):
        parse_deviations("cast/e4m3fn/bf16-all/sat/scale=2^0\n")


def test_example_deviations_file_names_real_cases():
    path = Path(__file__).resolve().parent.parent / "docs/conformance/deviations.example.txt"
    devs = parse_deviations(path.read_text(), str(path))
    ids = {c.id for c in list_cases("reference", "quick")}
    assert devs and set(devs) <= ids


_HASH_SCRIPT = """
import json, sys, torch
torch.manual_seed(int(sys.argv[1]))  # a different global generator state in each process
torch.rand(int(sys.argv[1]) % 97 + 1)
from portable_fp8.conformance import list_cases, run_suite
ids = [c.id for c in list_cases("cpu", "quick")][::{step}]
r = run_suite("cpu", progress=False, fingerprint=False, select=set(ids).__contains__)
print(json.dumps({{x.id: [x.result.input_sha256, x.result.verdict.value] for x in r.records}}))
"""


def test_inputs_and_verdicts_are_reproducible_across_processes():
    """A sample of cases (every kind) run in two processes whose global generators differ
    sends the same inputs (equal sha256) and reaches the same verdicts."""
    runs = []
    for seed in (1, 987654):
        out = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT.format(step=29), str(seed)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
    first, second = runs
    assert first == second
    kinds = {i.split("/")[0] for i in first}
    assert {"cast", "dequant", "amax", "quantize", "quantize_transpose", "gemm"} <= kinds
    hashes = [h for h, v in first.values() if v != "not supported"]
    assert all(len(h) == 64 for h in hashes)
    assert len(set(hashes)) > len(hashes) // 2  # distinct cases send distinct inputs


def test_case_seeds_depend_on_the_case_id_only():
    env = Env(ReferenceBackend(), torch.device("cpu"))
    a = env.for_case("x/1").generator(3)
    b = env.for_case("x/1").generator(3)
    c = env.for_case("x/2").generator(3)
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert not torch.equal(torch.rand(8, generator=b), torch.rand(8, generator=c))


def test_a_backend_writing_into_its_input_fails_the_case():
    class InPlace(ReferenceBackend):
        name = "mutant-in-place-amax"

        def amax(self, x, granularity):
            out = super().amax(x, granularity)
            x.zero_()
            return out

    result = run_case("amax/rowwise/random/float32", InPlace(), profile="quick")
    assert result.verdict is Verdict.FAILED
    assert "modified 1 of its 1 input tensors in place" in result.detail


def test_case_ids_are_stable_and_unique():
    ids = [c.id for c in list_cases("reference", "full")]
    assert len(ids) == len(set(ids))
    assert ids == [c.id for c in list_cases("reference", "full")]
    assert "cast/e4m3fn/bf16-all/sat/scale=3.7" in ids
    assert any(i.startswith("gemm/") and "x16384x" in i for i in ids)


def test_gemm_bound_admits_accumulator_error_and_catches_more():
    # A 10-bit accumulator declared as such passes with a visible error; declared as fp32
    # (the mutant) the same computation fails. At K=256, (K+4) 2**-11 < 1: a finite bound.
    honest = ReferenceBackend(accumulator=AccumulatorModel(10, "nearest", 1))
    case = "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x256x32/nn/out=float32/positive"
    result = run_case(case, backend=honest)
    assert result.verdict is Verdict.PASSED
    assert 0.001 < result.extra["max_error_over_bound"] <= 1
    lying = run_case(case, backend=NarrowAccumulator())
    assert lying.verdict is Verdict.FAILED
    assert lying.extra["max_error_over_bound"] > 1


# -- fingerprint -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "acc, bits, rounding, promoted",
    [
        (HOPPER_FAST_ACCUMULATOR, 13, "truncation", False),
        (DEEPGEMM_PROMOTED_ACCUMULATOR, 13, "truncation", True),
        (AccumulatorModel(10, "nearest", 1), 10, "nearest", False),
    ],
)
def test_fingerprint_measures_the_accumulator(acc, bits, rounding, promoted):
    fp = numerics_fingerprint(Env(ReferenceBackend(acc), torch.device("cpu")))
    assert fp["effective accumulator precision (fraction bits)"] == bits
    assert rounding in fp["accumulator rounding"]
    assert ("from distance 128" in fp["promotion interval"]) is promoted
    assert fp["GEMM NaN/inf propagation"]["inf x 0"] == "nan"
    assert fp["subnormals"]["fp8 subnormal input"] == "kept"


# -- reports and CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_report():
    return run_suite(TiesAwayFromZero(), select="cast/e4m3fn/*", progress=False)


def test_json_report_is_complete_and_strict_json(failing_report):
    d = json.loads(json.dumps(report_to_dict(failing_report), allow_nan=False))
    assert d["backend"] == "mutant-ties" and d["ok"] is False
    assert {"torch", "python", "portable_fp8", "backend_describe"} <= set(d["versions"])
    assert d["capabilities"]["cast_formats"]
    assert d["summary"]["failed"] == sum(c["verdict"] == "failed" for c in d["cases"])
    case = next(c for c in d["cases"] if c["verdict"] == "failed")
    assert {"id", "inputs", "error", "bound", "verdict", "reproducer"} <= set(case)
    assert case["error"] > 0 and case["bound"] == 0
    assert all(len(c["input_sha256"]) == 64 for c in d["cases"] if c["verdict"] != "not supported")


def test_html_report_lists_failures_first_with_a_reproducer(failing_report):
    page = render_html(failing_report)
    first_fail = failing_report.failed[0].id
    assert page.index(first_fail) < page.index('id="cases"')  # before the cases by kind
    assert "fp8.cast_to_fp8(" in page and "<svg" in page or "No GEMM results" in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_cast_reproducer_runs_and_shows_the_difference(failing_report, registered, capsys):
    registered(TiesAwayFromZero())
    rec = next(r for r in failing_report.failed if r.result.reproducer)
    exec(rec.result.reproducer, {})
    printed = capsys.readouterr().out
    want = rec.result.reproducer.split("# reference: ")[1].strip()
    assert printed.strip() != want  # the backend's codes differ from the reference's


def test_error_vs_k_plot_draws_points_and_bound():
    pts = [
        {"k": k, "rel_err": 1e-7 * k**0.5, "rel_bound": 6e-8 * k, "data": "randn"}
        for k in (16, 256, 4096)
    ]
    svg = error_vs_k_svg(pts)
    assert svg.count("<circle") == 3 + 1  # three points and the legend's marker
    assert "<polyline" in svg and "bound" in svg


def test_cli_exit_status_and_outputs(tmp_path, registered, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run without report paths writes conformance-report/
    out_json, out_html, out_md = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "r.md"
    rc = portable_fp8.cli.main(
        [
            "conformance",
            "--backend",
            "reference",
            "--case",
            "cast/e4m3fn/*",
            "--no-progress",
            "--json",
            str(out_json),
            "--report",
            str(out_html),
            "--markdown",
            str(out_md),
        ]
    )
    assert rc == 0
    assert json.loads(out_json.read_text())["ok"] is True
    assert "<svg" in out_html.read_text() or "No GEMM" in out_html.read_text()
    assert "| **total** |" in out_md.read_text()
    table = capsys.readouterr().out
    assert "total" in table and "PASSED" in table
    registered(IgnoresBias())
    rc = portable_fp8.cli.main(
        ["conformance", "--backend", "mutant-nobias", "--case", "gemm/*bias*", "--no-fingerprint"]
    )
    assert rc == 1
    assert "FAILED gemm/" in capsys.readouterr().out


def test_exitfirst_stops_at_the_first_failed_case(tmp_path, registered, capsys):
    registered(IgnoresBias())
    common = ["--backend", "mutant-nobias", "--case", "gemm/*bias*", "--no-progress"]
    everything = run_suite("mutant-nobias", select="gemm/*bias*", fingerprint=False)
    assert len(everything.failed) > 1  # so stopping after one is observable
    first = run_suite("mutant-nobias", select="gemm/*bias*", exitfirst=True)
    assert [r.result.verdict for r in first.records][-1] is Verdict.FAILED
    assert len(first.failed) == 1 and not first.ok and not first.interrupted
    assert first.fingerprint == {}  # a stopped run skips the probes
    assert [r.id for r in first.records] == [r.id for r in everything.records][: len(first.records)]
    out = tmp_path / "r.json"
    assert portable_fp8.cli.main(["conformance", *common, "-x", "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    assert data["status"] == "failed" and len(data["cases"]) == len(first.records)
    assert capsys.readouterr().out.count("FAILED gemm/") == 1


def test_cli_backend_defaults_to_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # reports go to conformance-report/ here
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    rc = portable_fp8.cli.main(["conformance", "--case", "amax/rowwise/*", "--no-fingerprint"])
    assert rc == 0
    assert "backend reference" in capsys.readouterr().out


def test_pytest_plugin_runs_cases_as_items(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "portable_fp8.conformance",
            "--fp8-backend",
            "reference",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "amax and rowwise",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "8 passed" in proc.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_html_report_renders_in_a_headless_browser(failing_report, tmp_path):
    page, png = tmp_path / "report.html", tmp_path / "shot.png"
    write_html(failing_report, page)
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={png}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert png.exists()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to a few kB; text, tables and colours take far more.
    assert len(data) > 30_000


def test_automatic_backend_is_the_available_one_of_highest_priority(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    available = [
        b for b in registry.list_backends().values() if registry.unavailable_reason(b) is None
    ]
    assert resolve_backend(None).priority == max(b.priority for b in available)
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert resolve_backend(None).name == "reference"
