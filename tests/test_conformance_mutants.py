"""The suite must be able to fail: deliberately wrong backends are each reported as failed.

Each mutant of ``tests/_mutants.py`` is a real backend (reference or cpu) with one defect.
The quick profile's cases that exercise the defect must fail (named by id glob), and cases
the defect cannot touch must still pass (so the suite is not just failing everything). The
same case ids exist in the full profile and fail there too.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
from _mutants import CLAUSES, MUTANTS, Mutant
from portable_fp8.backends.nvidia import HOPPER_FAST_ACCUMULATOR
from portable_fp8.backends.reference import ReferenceBackend
from portable_fp8.conformance import Verdict, run_suite


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run single-threaded: on a loaded 2-core machine torch's intra-op threads spin-wait
    on each other and the many small kernels here slow down 20-fold; numerics are judged
    by bounds, so the thread count changes no verdict."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _matches(case_id: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(case_id, p) for p in patterns)


def _quick_verdicts(m: Mutant) -> dict:
    """The mutant's quick-profile verdicts on the cases its globs name (the others are
    independent of these: each case builds its own inputs)."""
    report = run_suite(
        m.backend(),
        profile="quick",
        progress=False,
        fingerprint=False,
        select=lambda i: _matches(i, m.catch + m.spare),
    )
    return {r.id: r.result for r in report.records}


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.backend.name)
def test_quick_profile_catches_mutant(m: Mutant):
    results = _quick_verdicts(m)
    for pattern in m.catch:
        hits = fnmatch.filter(results, pattern)
        assert hits, f"pattern {pattern!r} matches no quick case"
        failed = [i for i in hits if results[i].verdict is Verdict.FAILED]
        assert failed, f"{m.backend.name}: no case matching {pattern!r} failed"
        assert all(results[i].detail for i in failed)  # a failure says what differs
        # ... and it is the defect that failed it, not a mutant out of step with the
        # Backend interface (a stale signature fails every case by TypeError).
        assert not [i for i in failed if "TypeError" in results[i].detail], failed[:3]
    for pattern in m.spare:
        hits = fnmatch.filter(results, pattern)
        assert hits, f"pattern {pattern!r} matches no quick case"
        wrong = [i for i in hits if results[i].verdict is not Verdict.PASSED]
        assert not wrong, f"{m.backend.name}: cases its defect cannot affect failed: {wrong[:3]}"


@pytest.mark.parametrize("m", MUTANTS, ids=lambda m: m.backend.name)
def test_full_profile_catches_mutant(m: Mutant):
    """Every glob also names full-profile cases, and some of them fail."""
    report = run_suite(
        m.backend(),
        profile="full",
        progress=False,
        fingerprint=False,
        select=lambda i: _matches(i, m.catch),
    )
    results = {r.id: r.result.verdict for r in report.records}
    for pattern in m.catch:
        hits = fnmatch.filter(results, pattern)
        assert hits, f"pattern {pattern!r} matches no full case"
        assert any(results[i] is Verdict.FAILED for i in hits), f"{pattern!r}: none failed"


def test_every_contract_clause_has_a_mutant():
    clauses = {m.clause for m in MUTANTS}
    assert clauses == set(CLAUSES), set(CLAUSES) ^ clauses
    assert len({m.backend.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("name", ["reference", "cpu"])
def test_builtin_backends_pass_quick_profile(name):
    report = run_suite(name, profile="quick", progress=False)
    failures = [(r.id, r.result.detail) for r in report.failed]
    assert report.ok, failures[:5]
    counts = report.counts()
    assert counts["passed"] > 2000
    # Both declare everything but a fast accumulator.
    unsupported = [r.id for r in report.records if r.result.verdict is Verdict.NOT_SUPPORTED]
    assert unsupported == ["fingerprint/fast-accumulator"]


def test_fast_accumulator_modelled_on_the_reference_passes_its_own_cases():
    """The reference emulating Hopper's fast accumulator: fast_accum cases run (and pass)
    under that model's bound, and are visibly less exact than the exact default."""
    backend = ReferenceBackend(fast_accumulator=HOPPER_FAST_ACCUMULATOR)
    report = run_suite(
        backend,
        profile="quick",
        progress=False,
        fingerprint=False,
        select=lambda i: i.startswith(("gemm/", "fingerprint/")),
    )
    assert report.ok, [(r.id, r.result.detail) for r in report.failed][:3]
    by_id = {r.id: r.result for r in report.records}
    assert by_id["fingerprint/fast-accumulator"].extra["measured_narrowest"] == 13
    fast = [i for i in by_id if "/fast-accum/" in i]
    assert len(fast) >= 10 and all(by_id[i].verdict is Verdict.PASSED for i in fast)
    case = "gemm/e4m3fnxe4m3fn/tensorwisextensorwise/32x2048x32/nn/out=float32/"
    # 13 truncated bits over K = 2048 against the exact sum rounded once to fp32 (2**-24).
    assert by_id[case + "fast-accum/randn"].extra["rel_err"] > 2.0**-16
    assert by_id[case + "randn"].extra["rel_err"] < 2.0**-22
