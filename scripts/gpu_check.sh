#!/usr/bin/env bash
# The prepared GPU check: on a machine with an NVIDIA GPU and no network, with torch and torchvision
# already installed (e.g. torch 2.11 / torchvision 0.26), install cebench without dependencies and
# without the network, then run every performance benchmark (`cebench bench all`) and the paper
# protocol's rehearsal (`cebench run --config rehearsal`) on the GPU; writes results/bench_gpu.json and
# results/bench_gpu.md (about 5-8 minutes on an H100/H200; stopped at 9).
#
#   bash scripts/gpu_check.sh                  # GPU 0 (or CUDA_VISIBLE_DEVICES)
#   bash scripts/gpu_check.sh --no-rehearsal   # benchmarks only
#   bash scripts/gpu_check.sh --device cpu --quick --no-rehearsal   # a dry run of the same path on a CPU
#
# A faiss wheel carried in wheels/ (e.g. wheels/faiss_cpu-*.whl) is installed when faiss is missing.
# Exit status: 0 all ran, 1 the rehearsal failed or ran out of time, 2 something needed is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
          "cuda", torch.version.cuda, "GPUs", torch.cuda.device_count())'

# cebench itself: editable, no dependencies, nothing from the network (the machine's setuptools builds it)
if ! "$PY" -c 'import cebench.benchmarks.perf.gpu_check' >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-deps --no-index --no-build-isolation -e . \
    || { echo "error: could not install cebench offline (pip install --no-deps --no-build-isolation -e . needs setuptools>=77)" >&2; exit 2; }
fi
if ! "$PY" -c 'import faiss' >/dev/null 2>&1; then
  for whl in wheels/faiss*.whl; do
    [ -f "$whl" ] && "$PY" -m pip install --quiet --no-deps --no-index "$whl"
  done
fi

# what cebench imports, checked before anything runs (this machine cannot fetch what is missing)
"$PY" - <<'PY' || exit 2
import importlib.util, sys
need = ["numpy", "PIL", "yaml", "tqdm", "pandas", "matplotlib", "scipy", "sklearn", "skimage", "cv2"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("error: missing Python packages: " + ", ".join(missing)
             + " (no network here: carry their wheels and pip install --no-index --no-deps them)")
PY

export CEBENCH_NO_PROGRESS=1
exec timeout --signal=INT 540 "$PY" -m cebench.benchmarks.perf.gpu_check "$@"
