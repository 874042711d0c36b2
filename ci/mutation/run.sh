#!/usr/bin/env bash
# Mutation-test the conformance suite and the emulator's oracle tests with cosmic-ray 8.7.
#   bash ci/mutation/run.sh cpu|casts|emulator [OUTDIR]
# Targets (ci/mutation/<target>.toml, test command ci/mutation/test_<target>.sh):
#   cpu       backends/cpu.py                  x the quick profile on cpu, -x
#   casts     backends/nvidia/_casts.py        x the quick profile on triton (interpreter),
#                                                cast/quantize/transpose/dequant cases, -x
#   emulator  portable_fp8/numerics/{cast,gemm}.py x the oracle tests, pytest -x
# cosmic-ray edits the files it mutates, so it works in a scratch copy of the committed tree
# ($MUTATION_SCRATCH/<target>), imported through this tree's virtual environment by
# shim/sitecustomize.py. Writes OUTDIR/<target>.sqlite (resumable: run again to continue),
# OUTDIR/<target>-report.txt and OUTDIR/<target>-survivors.txt. Runs niced, one worker.
set -euo pipefail
target="${1:?cpu, casts or emulator}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(realpath -m "${2:-$root/ci/mutation/results}")"
mkdir -p "$out"
scratch="${MUTATION_SCRATCH:-/tmp/portable-fp8-mutation}/$target"
if [ ! -d "$scratch" ]; then
    mkdir -p "$scratch"
    (cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$scratch")
fi
export MUTATION_PY="${MUTATION_PY:-$root/.venv/bin/python}"
cd "$scratch"
session="$out/$target.sqlite"
[ -f "$session" ] || cosmic-ray init "ci/mutation/$target.toml" "$session"
nice -n 19 cosmic-ray baseline "ci/mutation/$target.toml"
nice -n 19 cosmic-ray exec "ci/mutation/$target.toml" "$session" || true
cr-report --no-show-output "$session" >"$out/$target-report.txt"
cr-report --surviving-only --show-diff --no-show-output "$session" >"$out/$target-survivors.txt"
tail -3 "$out/$target-report.txt"
