"""``python -m portable_fp8``: the ``portable-fp8`` command line (same options, same exit
statuses)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
