#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel into a fresh virtual environment (torch
# and the other dependencies come from the calling environment) and use it from outside the
# source tree, as a user would.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip install --quiet build
python3 -m build --sdist --wheel --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
python3 -m venv --system-site-packages "$work/venv"
py="$work/venv/bin/python"
# The calling environment may hold an editable install of the checkout; hide it.
"$py" -m pip install --quiet --no-deps --force-reinstall "$work"/dist/*.whl
cd "$work"
export PYTHONNOUSERSITE=1
loc="$("$py" -c 'import portable_fp8, sys; print(portable_fp8.__file__)')"
case "$loc" in "$work/venv/"*) ;; *) echo "wheel check imported $loc, not the wheel"; exit 1 ;; esac
"$work/venv/bin/portable-fp8" backends
"$work/venv/bin/portable-fp8" conformance --profile quick --backend cpu --no-progress \
    --json "$work/quick.json" --report "$work/quick.html"  # the HTML template ships too
# The pytest11 entry point must not break an unrelated project's test run.
mkdir -p "$work/other"
printf 'def test_unrelated():\n    assert 1 + 1 == 2\n' >"$work/other/test_other.py"
(cd "$work/other" && "$py" -m pytest -q -p no:cacheprovider test_other.py)
echo "wheel check: OK ($(basename "$work"/dist/*.whl))"
