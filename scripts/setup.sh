#!/usr/bin/env bash
# Create .venv (if missing) and install cebench with the tested, pinned dependencies. Idempotent.
# pyproject.toml gives ranges (what `pip install cebench` needs); requirements/pins.txt the exact
# versions this project is tested with, applied here as pip constraints.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PINS=requirements/pins.txt
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
STAMP=.venv/.cebench-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ "$PINS" -nt "$STAMP" ]; then
  # torch/torchvision first, at their pins: pip takes them from the local wheel cache when present.
  .venv/bin/python -m pip install --quiet -c "$PINS" torch torchvision
  .venv/bin/python -m pip install --quiet -c "$PINS" -e ".[test]"
  touch "$STAMP"
fi
