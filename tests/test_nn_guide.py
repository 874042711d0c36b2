"""docs/guide.md's Python examples must run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_has_examples():
    assert len(_BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(_BLOCKS)))
def test_guide_block_runs(index, capsys):
    exec(compile(_BLOCKS[index], f"{GUIDE}:block{index}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip(), "every example prints what it shows"
