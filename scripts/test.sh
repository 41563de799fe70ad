#!/usr/bin/env bash
# Install (if needed), lint (ruff, rules in pyproject.toml) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CEBENCH_NO_PROGRESS=1 OMP_NUM_THREADS=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
