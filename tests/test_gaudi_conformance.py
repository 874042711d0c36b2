"""The conformance suite (quick profile) on the gaudi adapter over the stand-in bridge ops.

STAND-IN, NOT HARDWARE: this checks the adapter's argument mapping through every case the
suite has for what the backend declares; docs/conformance/gaudi-standin/ holds the full
profile's reports, and ci/gaudi.sh is the run on a real Gaudi.
"""

from __future__ import annotations

import _gaudi_standin as standin
import pytest

runner = pytest.importorskip("portable_fp8.conformance.runner")

pytestmark = pytest.mark.skipif(
    standin.real_bridge_present(), reason="a real habana_frameworks is installed"
)


@pytest.fixture(autouse=True)
def _standin_off_afterwards():
    """Later tests must not find the fake habana_frameworks on sys.path."""
    yield
    standin.uninstall()


@pytest.mark.parametrize("generation", ["gaudi2", "gaudi3"])
def test_quick_profile_passes_over_the_standin(generation):
    backend = standin.standin_backend(generation)
    report = runner.run_suite(backend, profile="quick", progress=False, fingerprint=False)
    failed = [(r.id, r.result.detail[:200]) for r in report.failed]
    assert not failed, failed
    ran = {r.kind for r in report.records if r.result.verdict.value == "passed"}
    assert {"cast", "dequant", "quantize", "gemm", "stochastic", "amax"} <= ran
    e4m3 = "e4m3_gaudi2" if generation == "gaudi2" else "e4m3fn"
    other = "e4m3fn" if generation == "gaudi2" else "e4m3_gaudi2"
    ids = {r.id: r.result.verdict.value for r in report.records}
    assert any(f"/{e4m3}/" in i and v == "passed" for i, v in ids.items())
    assert all(v == "not supported" for i, v in ids.items() if f"/{other}/" in i)
