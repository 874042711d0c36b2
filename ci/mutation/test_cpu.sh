#!/usr/bin/env bash
# Test command for cpu.toml: the quick conformance profile on the cpu backend, stopping at
# the first failed case (-x), so a killed mutant costs seconds, not the whole profile.
set -euo pipefail
source "$(dirname "$0")/env.sh"
exec "$PY" -m portable_fp8.cli conformance --profile quick --backend cpu -x \
    --no-progress --no-fingerprint >/dev/null
