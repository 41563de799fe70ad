#!/usr/bin/env bash
# Install (if needed) and run the demo benchmark pipeline on the built-in data; report in runs/demo/report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cebench run --config demo --out runs/demo "$@"
