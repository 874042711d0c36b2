"""``python -m portable_fp8``: the ``portable-fp8`` command line (same options, same exit
statuses)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
