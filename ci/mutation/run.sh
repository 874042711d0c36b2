#!/usr/bin/env bash
# Mutation-test the conformance suite and the emulator's oracle tests with cosmic-ray.
#   bash ci/mutation/run.sh backends|emulator [OUTDIR]
# Works in a scratch copy of the tree (cosmic-ray edits the files it mutates), installed
# editable into its own virtual environment; writes OUTDIR/<target>.sqlite (resumable: run
# again to continue), OUTDIR/<target>-report.txt and OUTDIR/<target>-survivors.txt.
set -euo pipefail
target="${1:?backends or emulator}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(realpath -m "${2:-$root/ci/mutation/results}")"
mkdir -p "$out"
scratch="${MUTATION_SCRATCH:-/tmp/portable-fp8-mutation}"
if [ ! -d "$scratch/.venv" ]; then
    rm -rf "$scratch"; mkdir -p "$scratch"
    (cd "$root" && git ls-files -z | xargs -0 cp --parents -t "$scratch")
    python3 -m venv --system-site-packages "$scratch/.venv"
    "$scratch/.venv/bin/pip" install --quiet --no-deps -e "$scratch"
    "$scratch/.venv/bin/pip" install --quiet 'cosmic-ray==8.7.0'
fi
export PATH="$scratch/.venv/bin:$PATH"
cd "$scratch"
session="$out/$target.sqlite"
[ -f "$session" ] || cosmic-ray init "ci/mutation/$target.toml" "$session"
cosmic-ray baseline "ci/mutation/$target.toml"
cosmic-ray exec "ci/mutation/$target.toml" "$session"
cr-report --no-show-output "$session" >"$out/$target-report.txt"
cr-report --surviving-only --show-diff --no-show-output "$session" >"$out/$target-survivors.txt"
tail -3 "$out/$target-report.txt"
