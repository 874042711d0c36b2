#!/usr/bin/env bash
# Conformance of the `gaudi` backend on a real Intel Gaudi2 or Gaudi3 machine.
#
# Run on a Gaudi host (or inside Intel's Gaudi PyTorch container) whose Python already has
# the Intel Gaudi software stack: habana_frameworks (package habana-torch-plugin) and the
# Gaudi build of torch. Neither is on PyPI; docs/gaudi.md says how to get them. This script
# never installs or replaces torch: portable-fp8 goes in with --no-deps.
#
# It then checks that the `gaudi` backend is available and which generation it detected,
# runs the conformance suite (profile full by default) and writes
#   docs/conformance/gaudi-<generation>/gaudi-<profile>.{json,html,md,txt}
# plus the `portable-fp8 backends` listing; attach them to the bring-up ticket or commit them.
# With SR=device it also runs the stochastic cases with the bridge's own stochastic rounding
# (PORTABLE_FP8_GAUDI_SR=device); its explicit-random-bits cases are declared deviations.
#
# Environment: PROFILE=full|quick, PYTHON=python3, OUT=<dir>, SR=device (optional).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-full}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c "import habana_frameworks.torch.core" 2>/dev/null; then
    echo "habana_frameworks is not importable by $PYTHON." >&2
    echo "Install the Intel Gaudi software stack (not on PyPI): see docs/gaudi.md." >&2
    exit 2
fi

echo "== installing portable-fp8 (no dependencies: the Gaudi torch build stays as it is)"
"$PYTHON" -m pip install --quiet "pluggy>=1.3" "numpy>=1.24"
"$PYTHON" -m pip install --quiet --no-deps -e .

echo "== backend availability"
generation=$("$PYTHON" - <<'EOF'
import sys

import portable_fp8 as fp8
from portable_fp8 import registry

backend = registry.list_backends()["gaudi"]
reason = registry.unavailable_reason(backend)
if reason is not None:
    sys.exit(f"the gaudi backend is unavailable: {reason}")
print(backend.generation)
EOF
)
echo "detected $generation"
OUT="${OUT:-docs/conformance/gaudi-$generation}"
mkdir -p "$OUT"
"$PYTHON" -m portable_fp8.cli backends | tee "$OUT/backends.txt"

stem="$OUT/gaudi-$PROFILE"
echo "== conformance ($PROFILE) -> $stem.{json,html,md,txt}"
set +e
"$PYTHON" -m portable_fp8.cli conformance --backend gaudi --profile "$PROFILE" --no-progress \
    --json "$stem.json" --report "$stem.html" --markdown "$stem.md" | tee "$stem.txt"
status=${PIPESTATUS[0]}
if [ "${SR:-}" = "device" ]; then
    echo "== stochastic rounding with the bridge's own RNG"
    # The bridge takes no random bits, so the explicit-bits cases cannot match: declared.
    devs="$OUT/device-sr.deviations"
    for fmt in e4m3fn e4m3_gaudi2 e5m2; do
        echo "sr/$fmt/explicit-bits the bridge's stochastic rounding draws its own bits"
    done > "$devs"
    PORTABLE_FP8_GAUDI_SR=device "$PYTHON" -m portable_fp8.cli conformance --backend gaudi \
        --profile "$PROFILE" --case 'sr/*' --deviations "$devs" --no-progress \
        --json "$stem-device-sr.json" --report "$stem-device-sr.html" | tee "$stem-device-sr.txt"
fi
set -e
echo "== conformance exit status $status (0: nothing failed)"
exit "$status"
