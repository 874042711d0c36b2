"""Known deviations: a per-backend file listing cases that are expected to fail, and why.

Format: one case per line, ``<case id> <reason>`` (the id has no spaces; the reason is the
rest of the line and must not be empty). Blank lines and lines starting with ``#`` are
ignored. A case listed here that fails is reported as "known deviation" with the reason; a
listed id that matches no case of the run is warned about (it is probably stale or misspelt).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

from portable_fp8.errors import Fp8ValueError

__all__ = ["parse_deviations", "load_deviations", "unmatched_deviations"]


def parse_deviations(text: str, source: str = "<deviations>") -> dict[str, str]:
    """Case id -> reason, from the file format above (errors name the line)."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            raise Fp8ValueError(f"{source}:{lineno}: a known deviation needs a reason: {line!r}")
        out[parts[0]] = parts[1].strip()
    return out


def load_deviations(path: str | Path | None) -> dict[str, str]:
    """Read a known-deviations file (None: no deviations). A file that is missing,
    unreadable or not UTF-8 raises Fp8ValueError naming the file."""
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise Fp8ValueError(
            f"known-deviations file {str(p)!r} is not UTF-8 text (byte {exc.start}): "
            "save it as UTF-8"
        ) from None
    except OSError as exc:
        raise Fp8ValueError(
            f"cannot read known-deviations file {str(p)!r}: {exc.strerror or exc}"
        ) from None
    return parse_deviations(text, str(p))


def unmatched_deviations(deviations: dict[str, str], case_ids: Iterable[str]) -> list[str]:
    """Listed ids that match no case; each is warned about."""
    known = set(case_ids)
    stale = sorted(i for i in deviations if i not in known)
    for i in stale:
        warnings.warn(f"known deviation {i!r} matches no conformance case", stacklevel=2)
    return stale
