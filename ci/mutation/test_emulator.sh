#!/usr/bin/env bash
# Test command for emulator.toml: the emulator's oracle tests (ml_dtypes, float64 and
# ONNX-style references), pytest stopping at the first failure (-x).
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec "$PY" -m pytest -x -q -p no:cacheprovider -o addopts= \
    tests/test_emulator_cast.py tests/test_emulator_gemm.py tests/test_formats.py >/dev/null
