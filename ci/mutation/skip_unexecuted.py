"""Mark as skipped the pending mutants of a cosmic-ray session that no test can reach.

    python ci/mutation/skip_unexecuted.py SESSION.sqlite LINES.json [FILE:FIRST-LAST:CLASS ...]

LINES.json is lines_run.py's record of the lines the unmutated test command executes. A
mutant all of whose lines (start to end of the mutated node) are absent from it sits in code
the test command never runs (here: the intel-extension-for-pytorch paths of backends/cpu.py,
which is not installable next to torch 2.13), so it survives by construction; it is marked
SKIPPED with that reason instead of costing a full test run, and SURVIVORS.md lists it.
Lines that run at import (``def``, class bodies, module constants) are in LINES.json, so
their mutants still run.

Each ``FILE:FIRST-LAST:CLASS`` also skips the pending mutants lying wholly within those
lines of FILE, recording CLASS (a name of an equivalence class that SURVIVORS.md argues for
every mutant of those lines, e.g. annotations, which ``from __future__ import annotations``
never evaluates).
"""

from __future__ import annotations

import json
import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

REASON = "skipped: not executed by the unmutated test command (ci/mutation/lines_run.py)"


def main() -> int:
    session, lines_json, *ranges = sys.argv[1:]
    with open(lines_json) as fh:
        ran = {path: set(lines) for path, lines in json.load(fh).items()}
    skip = []
    with use_db(session, WorkDB.Mode.open) as db:
        for spec in ranges:
            path, span, name = spec.split(":", 2)
            first, last = (int(n) for n in span.split("-"))
            hits = [
                item.job_id
                for item in db.pending_work_items
                if all(
                    str(m.module_path) == path and first <= m.start_pos[0] <= m.end_pos[0] <= last
                    for m in item.mutations
                )
            ]
            if hits:
                db.set_multiple_results(
                    hits,
                    WorkResult(
                        output=f"skipped: equivalent, class {name}",
                        worker_outcome=WorkerOutcome.SKIPPED,
                    ),
                )
            print(f"{len(hits)} pending mutants of {path}:{first}-{last} skipped as {name}")
        for item in db.pending_work_items:
            if all(
                str(m.module_path) in ran
                and not ran[str(m.module_path)] & set(range(m.start_pos[0], m.end_pos[0] + 1))
                for m in item.mutations
            ):
                skip.append(item.job_id)
        if skip:
            db.set_multiple_results(
                skip, WorkResult(output=REASON, worker_outcome=WorkerOutcome.SKIPPED)
            )
    print(f"{len(skip)} pending mutants skipped as unexecuted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
