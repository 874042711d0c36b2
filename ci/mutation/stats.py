"""Counts of a cosmic-ray session, with the survivors' dispositions from SURVIVORS.md.

    python ci/mutation/stats.py SESSION.sqlite [SURVIVORS.md]

Prints: mutants in the session; skipped (not executed by the test command, an argued
equivalence class, not in the time-budget sample); run; killed (the test command failed,
timed out or the mutant did not import); survived; pending (not run yet). With SURVIVORS.md,
each survivor's job id (first 8 hex digits) is looked up in it: a line holding the id and
"equivalent" counts it as equivalent, "unreachable" as unkillable on this machine (the
mutated code, or the difference the mutation makes, exists only with an optional dependency
that cannot be installed here), "killed-by-new-case" as killed after the new cases (its
re-run is recorded there too); the kill rate is killed / (run - equivalent - unreachable),
with a 95% Wilson interval (the run may be a sample or a partial session).
"""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _compiles(diff: str) -> bool:
    """Whether the mutated module (``diff`` applied to this checkout's file) is valid Python."""
    path = re.search(r"^--- a/(\S+)", diff, re.M)
    if path is None:
        return True
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "m.py"
        shutil.copy(path.group(1), target)
        done = subprocess.run(["patch", "-s", str(target)], input=diff, text=True,
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:  # the file changed since: count the mutant as valid Python
            print(f"note: a diff no longer applies to {path.group(1)}", file=sys.stderr)
            return True
        try:
            with warnings.catch_warnings():  # e.g. a mutant's "is not" with a literal
                warnings.simplefilter("ignore")
                compile(target.read_text(), str(target), "exec")
        except SyntaxError:
            return False
    return True


def main() -> int:
    session, *md = sys.argv[1:]
    db = sqlite3.connect(session)
    total = db.execute("SELECT count(*) FROM work_items").fetchone()[0]
    rows = db.execute("SELECT job_id, worker_outcome, test_outcome, output, diff FROM work_results")
    kinds: Counter[str] = Counter()
    survivors = []
    for job, worker, test, output, diff in rows:
        if worker == "SKIPPED":
            kinds["skipped: " + (output or "").removeprefix("skipped: ")] += 1
        elif worker == "NORMAL" and test == "SURVIVED":
            survivors.append(job)
        else:  # KILLED, INCOMPETENT, or a worker outcome ABNORMAL/EXCEPTION (timeout, crash)
            kinds["killed"] += 1
            if diff and not _compiles(diff):
                kinds["invalid"] += 1
    done = sum(kinds.values()) - kinds["invalid"] + len(survivors)
    print(f"mutants: {total}")
    for kind, n in sorted(kinds.items()):
        if kind.startswith("skipped"):
            print(f"  {kind}: {n}")
    run = kinds["killed"] + len(survivors)
    print(
        f"run: {run}; killed: {kinds['killed']} (of which {kinds['invalid']} are not valid "
        f"Python, e.g. the bare `*` of a signature turned into `//`); survived: {len(survivors)}"
    )
    print(f"pending (not run yet): {total - done}")
    if md:
        text = Path(md[0]).read_text()
        equivalent = unreachable = killed_new = 0
        for job in survivors:
            line = next((ln for ln in text.splitlines() if job[:8] in ln), "")
            if re.search(r"\bequivalent\b", line):
                equivalent += 1
            elif re.search(r"\bunreachable\b", line):
                unreachable += 1
            elif "killed-by-new-case" in line:
                killed_new += 1
        unexplained = len(survivors) - equivalent - unreachable - killed_new
        killed = kinds["killed"] + killed_new
        live = run - equivalent - unreachable
        lo, hi = _wilson(killed, live)
        print(
            f"survivors: {equivalent} equivalent, {unreachable} unreachable here, "
            f"{killed_new} killed by new cases, "
            f"{unexplained} not killed"
        )
        rate = killed / live if live else float("nan")
        print(
            f"kill rate among non-equivalent mutants run: {killed}/{live} = {rate:.1%} "
            f"(95% Wilson interval {lo:.1%}-{hi:.1%})"
        )
        valid_killed, valid_live = killed - kinds["invalid"], live - kinds["invalid"]
        lo, hi = _wilson(valid_killed, valid_live)
        rate = valid_killed / valid_live if valid_live else float("nan")
        print(
            f"the same without the invalid-Python mutants: {valid_killed}/{valid_live} = "
            f"{rate:.1%} (95% Wilson interval {lo:.1%}-{hi:.1%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
