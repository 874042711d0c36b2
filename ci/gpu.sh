#!/usr/bin/env bash
# GPU CI for the NVIDIA backends (cuda, triton): tests, conformance, benchmark.
#
# Usage: ci/gpu.sh [tests] [conformance-quick|conformance-full] [bench|bench-quick]
#   (default: tests conformance-full bench). Outputs go to $OUT (default: ci-out/).
#   Env: PYTEST_ARGS (one word, e.g. '-kgemm'), CONF_TIMEOUT (s per backend, default 540),
#   BENCH_ARGS (e.g. '--skip sweep,probe').
# Needs: a CUDA GPU of compute capability >= 8.9, torch with CUDA, triton; installs this
# project without dependencies (the GPU machine may have no network).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-ci-out}"
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests conformance-full bench)
export PYTHONUNBUFFERED=1
status=0

python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pf8-install.log 2>&1 \
  || { echo "install failed"; tail -20 /tmp/pf8-install.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
portable-fp8 backends 2>&1 | grep -E '^(cuda|triton) ' || true

for step in "${steps[@]}"; do
  case "$step" in
    tests)
      python3 -m pytest -q -p no:cacheprovider tests/test_nvidia_gpu.py tests/test_nn.py \
        tests/test_quantize_transpose.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25
      [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
    conformance-quick|conformance-full)
      profile="${step#conformance-}"
      for be in cuda triton; do
        timeout "${CONF_TIMEOUT:-540}" portable-fp8 conformance --backend "$be" --profile "$profile" --no-progress \
          --json "$OUT/conformance_${be}.json" --report "$OUT/conformance_${be}.html" \
          --markdown "$OUT/conformance_${be}.md" 2>&1 | tail -15
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
      done ;;
    bench)
      python3 benchmarks/bench_nvidia.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tail -60 ;;
    bench-quick)
      python3 benchmarks/bench_nvidia.py --quick --out "$OUT" 2>&1 | tail -60 ;;
    *) echo "unknown step $step"; status=1 ;;
  esac
done
exit $status
