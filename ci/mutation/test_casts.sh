#!/usr/bin/env bash
# Test command for casts.toml: the quick profile on the triton backend in Triton's
# interpreter (which runs the NVIDIA casts' host code and kernels on the CPU), only the
# case kinds that reach backends/nvidia/_casts.py (CASES, a glob per kind), -x.
set -euo pipefail
source "$(dirname "$0")/env.sh"
export TRITON_INTERPRET=1
for glob in ${MUTATION_CASES:-cast/* quantize/* transpose/* dequant*}; do
    "$PY" -m portable_fp8.cli conformance --profile quick --backend triton -x \
        --case "$glob" --no-progress --no-fingerprint >/dev/null
done
