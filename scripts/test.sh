#!/usr/bin/env bash
# Install (if needed), lint (ruff, rules in pyproject.toml) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CEBENCH_NO_PROGRESS=1 OMP_NUM_THREADS=1
.venv/bin/ruff check .
# two workers: most tests wait on a pipeline subprocess; the tests sharing the tiny run stay on one worker
exec .venv/bin/python -m pytest -q --timeout=900 -n 2 --dist loadgroup "$@"
