"""The HTML report: built from its jinja2 template, escaped, readable (words and tables, not
Python reprs), failures first, cases grouped by kind; the error-versus-K plot on bad data."""

from __future__ import annotations

import fnmatch
import math
import re
from importlib import resources
from pathlib import Path

import pytest
from portable_fp8.backends.reference import ReferenceBackend
from portable_fp8.conformance.model import CaseResult, Verdict
from portable_fp8.conformance.report_html import error_vs_k_svg, render_html
from portable_fp8.conformance.runner import CaseRecord, SuiteReport

_ROOT = Path(__file__).resolve().parents[1]
_EVIL = "<script>alert('x')</script> & \"quotes\""


def _sweep(k: int, err: float, bound: float, data: str = "randn") -> CaseRecord:
    case_id = f"gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x{k}x32/nn/out=float32/{data}"
    extra = {"k": k, "m": 32, "rel_err": err, "rel_bound": bound, "data": data}
    verdict = Verdict.PASSED if err <= bound else Verdict.FAILED
    return CaseRecord(case_id, "gemm", "sweep", CaseResult(verdict, err, bound, extra=extra))


def _report(records: list[CaseRecord], **kw) -> SuiteReport:
    fields = dict(
        backend="mock",
        profile="quick",
        device="cpu",
        versions={"portable_fp8": "0.1.0", "torch": "2.x", "python": "3.11",
                  "backend_describe": {"gemm_path": "numpy", "ipex": None}},
        capabilities=ReferenceBackend().capabilities.as_dict(),
        records=records,
        fingerprint={"accumulator fraction bits by distance": {"1": 23, "8": 23},
                     "subnormals": {"fp8 subnormal input": "kept"}},
    )  # fmt: skip
    fields.update(kw)
    return SuiteReport(**fields)


def _records() -> list[CaseRecord]:
    failed = CaseRecord(
        "cast/e4m3fn/fp32-edge/sat/scale=2^0",
        "cast",
        f"edge values {_EVIL}",
        CaseResult(Verdict.FAILED, 3.0, 0.0, detail=f"3 codes differ {_EVIL}",
                   reproducer="import portable_fp8 as fp8\nprint(fp8.cast_to_fp8)"),
    )  # fmt: skip
    passed = CaseRecord("cast/e5m2/bf16-all/sat/scale=2^0", "cast", "all bf16",
                        CaseResult(Verdict.PASSED, 0.0, 0.0))  # fmt: skip
    amax = CaseRecord("amax/rowwise/nan/float32", "amax", "NaN row",
                      CaseResult(Verdict.PASSED, 0.0, 0.0))  # fmt: skip
    not_declared = CaseResult(Verdict.NOT_SUPPORTED, detail="no fast accumulator")
    unsupported = CaseRecord("fingerprint/fast-accumulator", "fingerprint", "probe", not_declared)
    return [passed, amax, failed, unsupported, _sweep(16, 1e-8, 1e-6), _sweep(256, 2e-8, 1e-5)]


# -- the error-versus-K plot ---------------------------------------------------------------


def test_plot_draws_points_and_the_bound():
    svg = error_vs_k_svg([_sweep(k, 1e-7 * k**0.5, 6e-8 * k).result.extra for k in (16, 256)])
    assert svg.count("<circle") == 2 + 1  # two points and the legend's marker
    assert "<polyline" in svg and "nan" not in svg.lower()


def test_plot_of_nothing_says_so():
    assert error_vs_k_svg([]) == "<p>No GEMM results with an error bound to plot.</p>"


@pytest.mark.parametrize(
    "bad",
    [
        {"rel_err": math.nan},
        {"rel_err": math.inf},
        {"rel_bound": math.inf},
        {"rel_bound": math.nan},
        {"rel_bound": 0.0},
        {"rel_bound": -1e-6},
        {"rel_err": -1e-9},
        {"k": 0},
        {"rel_err": None},
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_plot_leaves_out_points_it_cannot_draw(bad):
    good = _sweep(256, 1e-8, 1e-6).result.extra
    point = {**_sweep(16, 1e-8, 1e-6).result.extra, **bad}
    svg = error_vs_k_svg([good, point])
    assert svg.count("<circle") == 1 + 1  # the good point and the legend's marker
    assert not re.search(r"nan|inf", svg, re.IGNORECASE)
    only_bad = error_vs_k_svg([point])
    assert only_bad.startswith("<p>No GEMM results")


def test_plot_with_one_k_and_zero_errors_is_drawn():
    svg = error_vs_k_svg([_sweep(64, 0.0, 1e-6).result.extra, _sweep(64, 0.0, 2e-6).result.extra])
    assert svg.count("<circle") == 2 + 1 and "<polyline" in svg
    assert not re.search(r"nan|inf", svg, re.IGNORECASE)


# -- the page --------------------------------------------------------------------------


def test_every_text_is_escaped():
    page = render_html(_report(_records(), command=f"portable-fp8 conformance {_EVIL}"))
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;quotes&#34;" in page


def test_capabilities_and_environment_read_as_words_not_reprs():
    page = render_html(_report(_records()))
    body = page[page.index('id="capabilities"') :]
    for reprs in ("['", "{'", "tensorwisextensorwise"):
        assert reprs not in body, reprs
    cells = re.findall(r"<td>([^<]*)</td>", body)
    assert cells and not {"None", "True", "False", "[]", "{}", ""} & set(cells)
    assert "tensorwise \N{MULTIPLICATION SIGN} tensorwise" in body
    assert "exact (each block sum exact, rounded once to the output dtype)" in body
    assert "<th>backend: ipex</th><td>not reported</td>" in body


def test_failures_come_first_with_their_reproducer():
    page = render_html(_report(_records()))
    failures = page.index('id="failures"')
    fail = page.index("cast/e4m3fn/fp32-edge/sat/scale=2^0", failures)
    assert fail < page.index('id="cases"')
    assert "3 elements differ from the reference" in page
    assert "<pre>import portable_fp8 as fp8\nprint(fp8.cast_to_fp8)</pre>" in page
    assert "Not conformant: 1 of 6 cases failed." in page


def test_cases_are_grouped_by_kind_in_collapsible_sections_with_counts():
    page = render_html(_report(_records()))
    sections = re.findall(r'<details id="kind-(\w+)"( open)?>', page)
    assert sections == [("cast", " open"), ("amax", ""), ("fingerprint", ""), ("gemm", "")]
    cast = page[page.index('id="kind-cast"') : page.index('id="kind-amax"')]
    assert "2 cases:" in cast and "1 passed" in cast and "1 failed" in cast
    rows = re.findall(r"<tr><td>(cast/[^<]+)</td>", cast)
    assert rows[0].startswith("cast/e4m3fn")  # the failure first within its kind


def test_points_left_out_of_the_plot_are_named():
    records = [*_records(), _sweep(2048, math.nan, 1e-4)]
    page = render_html(_report(records))
    assert "Not drawn" in page and "32x2048x32" in page


def test_a_run_without_fingerprint_says_so():
    page = render_html(_report(_records(), fingerprint={}))
    assert "Not measured in this run" in page


def test_the_template_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    template = resources.files("portable_fp8.conformance").joinpath("templates/report.html.j2")
    assert template.is_file()
    config = tomllib.loads((_ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["portable_fp8.conformance"]
    assert any(fnmatch.fnmatch("templates/report.html.j2", g) for g in globs)
    assert "jinja2" in " ".join(config["project"]["dependencies"])
