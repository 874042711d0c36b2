#!/usr/bin/env bash
# The H100 run behind docs/training/ and benchmarks/results/mlp_h100*.md, in one go.
# Usage (repository root, on a machine with an NVIDIA GPU): OUT=some/dir examples/run_gpu.sh
# Optional: a .whl/ folder of wheels (torchao) to install into /tmp/site first.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT/train"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip.log 2>&1 || cat /tmp/pip.log
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -c "import torchao; print('torchao', torchao.__version__)" || echo "torchao: not importable"
portable-fp8 backends 2>&1 | grep -E "^[a-z]"
python3 -m pytest -q -p no:cacheprovider tests/test_nn.py -k cuda 2>&1 | tail -3
timeout "${BENCH_S:-150}" python3 benchmarks/bench_mlp.py --backend cuda \
  --out "$OUT/mlp_h100.md" 2>&1 | tee "$OUT/bench.log" | grep -v Warning
# The cuda backend's documented switch for Hopper fast accumulation (all its GEMMs).
PORTABLE_FP8_CUDA_FAST_ACCUM=1 timeout "${FAST_S:-45}" python3 benchmarks/bench_mlp.py \
  --backend cuda --variants ours-tensorwise --out "$OUT/mlp_h100_fastaccum.md" 2>&1 \
  | grep -v Warning | tee -a "$OUT/bench.log"
timeout "${TRAIN_S:-200}" python3 examples/train_charlm.py --preset gpu --device cuda --dtype bf16 \
  --backend cuda --out "$OUT/train" --log-every 250 2>&1 | tee "$OUT/train.log"
