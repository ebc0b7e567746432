#!/usr/bin/env bash
# The main job: install, then run the whole pipeline with DVC on the embedded
# default dataset (or whatever params.yaml points at), then say where things are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
started=$(date +%s)
dvc repro
sslpipe summary --seconds $(( $(date +%s) - started ))
