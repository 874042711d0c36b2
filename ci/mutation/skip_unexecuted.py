"""Mark as skipped the pending mutants of a cosmic-ray session that no test can reach.

    python ci/mutation/skip_unexecuted.py SESSION.sqlite LINES.json [annotations]
        [FILE:FIRST-LAST:CLASS ...]

LINES.json is lines_run.py's record of the lines the unmutated test command executes. A
mutant is skipped when the *statement* holding it never runs: the innermost simple
statement, or compound-statement header (decorators and signature of a ``def``, the test of
an ``if``/``while``, the iterable of a ``for``, the type of an ``except``), that contains the
mutated line, with none of that statement's lines in LINES.json. Whole statements, not
lines, because a line of a multi-line statement may have no line event of its own (a
folded constant tuple, the right operand of a short-circuited ``and``) although mutating it
changes what the statement does; a ``def`` header runs at import, so signature mutants
always run. Code the test command never reaches (here: the intel-extension-for-pytorch
paths of backends/cpu.py, not installable next to torch 2.13) survives by construction; it
is marked SKIPPED with that reason instead of costing a full test run, and SURVIVORS.md
lists it.

Each ``FILE:FIRST-LAST:CLASS`` also skips the pending mutants lying wholly within those
lines of FILE, recording CLASS (a name of an equivalence class that SURVIVORS.md argues for
every mutant of those lines, e.g. annotations, which ``from __future__ import annotations``
never evaluates). The word ``annotations`` skips, as class *annotation*, every pending mutant
that lies inside a parameter, return or variable annotation of a module that has
``from __future__ import annotations`` (found with ``ast``, by line and column).
"""

from __future__ import annotations

import ast
import json
import sys
from functools import cache

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

REASON = "skipped: not executed by the unmutated test command (ci/mutation/lines_run.py)"


@cache
def _regions(path: str) -> list[tuple[int, int]]:
    """(first, last) line of every simple statement and compound-statement header."""
    regions = []
    for node in ast.walk(ast.parse(open(path).read())):  # noqa: SIM115
        if not isinstance(node, (ast.stmt, ast.ExceptHandler)):
            continue
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            last = max(first, body[0].lineno - 1) if body[0].lineno > node.lineno else node.lineno
        else:
            last = node.end_lineno or node.lineno
        regions.append((first, last))
    return regions


@cache
def _annotation_spans(path: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every annotation, if annotations are never evaluated."""
    tree = ast.parse(open(path).read())  # noqa: SIM115
    lazy = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    if not lazy:
        return []
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            nodes.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            nodes.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            nodes.append(node.annotation)
    return [((n.lineno, n.col_offset), (n.end_lineno, n.end_col_offset)) for n in nodes]


def _in_annotation(path: str, start: tuple[int, int], end: tuple[int, int]) -> bool:
    return any(a <= tuple(start) and tuple(end) <= b for a, b in _annotation_spans(path))


def _statement_ran(path: str, line: int, ran: set[int]) -> bool:
    """Whether the innermost statement (or header) holding ``line`` executed."""
    holding = [r for r in _regions(path) if r[0] <= line <= r[1]]
    if not holding:  # not inside any statement: be safe, run it
        return True
    first, last = min(holding, key=lambda r: r[1] - r[0])
    return bool(ran & set(range(first, last + 1)))


def main() -> int:
    session, lines_json, *ranges = sys.argv[1:]
    with open(lines_json) as fh:
        ran = {path: set(lines) for path, lines in json.load(fh).items()}
    skip = []
    with use_db(session, WorkDB.Mode.open) as db:
        if "annotations" in ranges:
            ranges.remove("annotations")
            hits = [
                item.job_id
                for item in db.pending_work_items
                if all(
                    _in_annotation(str(m.module_path), m.start_pos, m.end_pos)
                    for m in item.mutations
                )
            ]
            if hits:
                db.set_multiple_results(
                    hits,
                    WorkResult(
                        output="skipped: equivalent, class annotation",
                        worker_outcome=WorkerOutcome.SKIPPED,
                    ),
                )
            print(f"{len(hits)} pending mutants inside never-evaluated annotations skipped")
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
                and not _statement_ran(str(m.module_path), m.start_pos[0], ran[str(m.module_path)])
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
