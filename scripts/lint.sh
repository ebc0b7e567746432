#!/usr/bin/env bash
# Install with the dev extras, then lint and check the formatting with ruff (configured in pyproject.toml).
# `.venv/bin/ruff format . && .venv/bin/ruff check --fix .` repairs most of what this reports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
