"""Report files: checked before a run, written atomically after it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["output_path_problem", "write_text_atomic"]


def _default_mode() -> int:
    """The mode ``open()`` would give a new file (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def output_path_problem(path: str | Path) -> str | None:
    """Why a report could not be written to ``path`` (None if it can), checked up front so
    that a bad path is found before any case runs."""
    p = Path(path)
    if p.is_dir():
        return "is a directory"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"directory {str(parent)!r} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return "exists and is not writable"
    return None


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the whole new
    one, never a part: a temporary file in the same directory, then ``os.replace``."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
