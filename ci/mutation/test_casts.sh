#!/usr/bin/env bash
# Test command for casts.toml: the quick profile on the triton backend in Triton's
# interpreter (which runs the NVIDIA casts' host code and kernels on the CPU), -x, only the
# case kinds that reach backends/nvidia/_casts.py: amax, cast, dequant, quantize,
# quantize_transpose and sr (one fnmatch glob, "[acdqs]*"; the gemm and linear kinds are left
# out: they reach _casts.py only through decode_table, which the dequant cases cover).
set -euo pipefail
source "$(dirname "$0")/env.sh"
export TRITON_INTERPRET=1
exec "$PY" -m portable_fp8.cli conformance --profile quick --backend triton -x \
    --case "${MUTATION_CASES:-[acdqs]*}" --no-progress --no-fingerprint >/dev/null
