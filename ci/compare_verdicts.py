"""Compare the per-case verdicts of two conformance JSON reports, by case id.

python ci/compare_verdicts.py BEFORE.json AFTER.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _verdicts(path: str) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in json.loads(Path(path).read_text())["cases"]}


def main(before_path: str, after_path: str) -> int:
    before, after = _verdicts(before_path), _verdicts(after_path)
    common = before.keys() & after.keys()
    changed = sorted(i for i in common if before[i] != after[i])
    print(
        f"{before_path} vs {after_path}: before {len(before)} cases, after {len(after)}; "
        f"common {len(common)}, same verdict {len(common) - len(changed)}, changed "
        f"{len(changed)}; only before {len(before.keys() - after.keys())}, only after "
        f"{len(after.keys() - before.keys())}"
    )
    for i in changed[:20]:
        print("  changed:", i, before[i], "->", after[i])
    for i in sorted(before.keys() - after.keys())[:20]:
        print("  only before:", i)
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
