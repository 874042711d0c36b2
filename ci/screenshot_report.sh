#!/usr/bin/env bash
# Render the HTML conformance report of a quick run and screenshot it in headless Chromium
# (docs/conformance/report-screenshot.png; see docs/conformance/README.md).
#
#   ci/screenshot_report.sh [BACKEND] [OUT.png]      (defaults: cpu, the docs screenshot)
#
# Needs chromium (Debian: apt-get install -y chromium). --no-sandbox: Chromium refuses to
# run as root without it (containers, CI); the page has no scripts and is a local file.
set -euo pipefail
BACKEND="${1:-cpu}"
PNG="${2:-docs/conformance/report-screenshot.png}"
PYTHON="$(realpath -s "$(command -v "${PYTHON:-python}")")"  # absolute: it runs elsewhere
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser)}"
PNG="$(realpath -m "$PNG")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# From an empty folder, so the reports go to the default conformance-report/ there; one
# thread: the suite is many small kernels (see docs/conformance/README.md). A run with
# failures (exit 1) renders too.
(cd "$WORK" && OMP_NUM_THREADS=1 "$PYTHON" -m portable_fp8 conformance --backend "$BACKEND" \
    --no-progress >/dev/null) || [ $? -eq 1 ]
PAGE="$WORK/conformance-report/$BACKEND-quick.html"
test -s "$PAGE"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$PNG" --window-size=1280,2000 "file://$PAGE" 2>/dev/null
echo "screenshot of $PAGE: $PNG"
