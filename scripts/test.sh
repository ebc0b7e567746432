#!/usr/bin/env bash
# Install with the dev extras, then run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
