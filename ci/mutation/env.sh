# Sourced by the test commands: the project's Python importing the scratch tree (see
# shim/sitecustomize.py), one torch thread (on a shared 2-core machine torch's intra-op
# threads spin-wait on each other: the cpu quick profile takes ~60 s with them, ~12 s
# without; numerics are judged by bounds, so the thread count changes no verdict).
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MUTATION_ROOT="$(cd "$here/../.." && pwd)"
export PYTHONPATH="$here/shim${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY="${MUTATION_PY:-python}"
