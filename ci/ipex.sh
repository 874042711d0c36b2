#!/usr/bin/env bash
# Conformance of the `cpu` backend with intel-extension-for-pytorch (IPEX) active.
#
# IPEX's last release (2.8) pins torch 2.8, older than the torch this project develops on, so
# this builds a separate virtual environment (default build/ipex-venv, git-ignored) with
#   torch 2.8 + intel-extension-for-pytorch 2.8 + portable-fp8 (editable, from this checkout),
# checks that the cpu backend reports the IPEX path, runs the conformance suite on it and
# writes the reports to docs/conformance/cpu-ipex/ (commit them).
#
# Size: torch 2.8 from PyPI for x86_64 Linux is the CUDA build (~0.9 GB wheel, ~2.5 GB of
# nvidia-* wheels; it runs on CPU-only machines). The venv is ~7 GB. Pass extra pip options
# (for instance a CPU-only wheel index) in PIP_EXTRA. Needs x86_64 Linux, Python 3.9-3.13.
#
# Environment: PROFILE=full|quick (default full), IPEX_VENV=path, PYTHON=python3,
#              OUT=docs/conformance/cpu-ipex, PIP_EXTRA="...".
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-full}"
VENV="${IPEX_VENV:-build/ipex-venv}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-docs/conformance/cpu-ipex}"
# shellcheck disable=SC2086
PIP_EXTRA_ARGS=(${PIP_EXTRA:-})

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
echo "== installing torch 2.8 and intel-extension-for-pytorch 2.8"
"$PY" -m pip install --quiet "${PIP_EXTRA_ARGS[@]}" "torch==2.8.*" "intel-extension-for-pytorch==2.8.*"
echo "== installing portable-fp8 from this checkout"
"$PY" -m pip install --quiet "${PIP_EXTRA_ARGS[@]}" -e .

echo "== checking that the cpu backend runs the IPEX path"
"$PY" - <<'EOF'
import json

import torch
import intel_extension_for_pytorch as ipex

import portable_fp8 as fp8

backend = fp8.get_backend("cpu")
info = backend.describe()
print(json.dumps({"torch": torch.__version__, "ipex": ipex.__version__, **info}, indent=1))
assert "torch_ipex::cast_to_fp8" in info["cast_path"], "IPEX path not active"
EOF

mkdir -p "$OUT"
stem="$OUT/cpu-ipex-$PROFILE"
echo "== conformance ($PROFILE) -> $stem.{json,html,md,txt}"
set +e
"$VENV/bin/portable-fp8" conformance --backend cpu --profile "$PROFILE" --no-progress \
    --json "$stem.json" --report "$stem.html" --markdown "$stem.md" | tee "$stem.txt"
status=${PIPESTATUS[0]}
set -e
echo "== conformance exit status $status (0: nothing failed)"
exit "$status"
