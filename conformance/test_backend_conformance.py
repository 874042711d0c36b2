"""One pytest item per conformance case (see :mod:`portable_fp8.conformance.pytest_plugin`)."""

from __future__ import annotations

import pytest
from portable_fp8.conformance.model import Verdict
from portable_fp8.conformance.pytest_plugin import suite_session
from portable_fp8.conformance.runner import run_one


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fp8_case" in metafunc.fixturenames:
        cases = suite_session(metafunc.config)["cases"]
        metafunc.parametrize("fp8_case", cases, ids=[c.id for c in cases])


def test_conformance_case(fp8_case, request: pytest.FixtureRequest) -> None:
    session = suite_session(request.config)
    result = run_one(fp8_case, session["env"], session["deviations"])
    if result.verdict is Verdict.NOT_SUPPORTED:
        pytest.skip(f"not supported: {result.detail}")
    if result.verdict is Verdict.KNOWN_DEVIATION:
        pytest.xfail(result.detail)
    message = f"{fp8_case.id}: {result.detail}"
    if result.reproducer:
        message += "\nreproducer:\n" + result.reproducer
    assert result.verdict is Verdict.PASSED, message
