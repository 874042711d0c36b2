#!/usr/bin/env bash
# The test command for backends.toml: the quick profile on cpu, then on triton (in Triton's
# interpreter, which runs the NVIDIA casts' host code and kernels on the CPU).
set -euo pipefail
export TRITON_INTERPRET=1
python -m portable_fp8.cli conformance --profile quick --backend cpu --no-progress >/dev/null
python -m portable_fp8.cli conformance --profile quick --backend triton --no-progress >/dev/null
