#!/usr/bin/env bash
# Creates .venv (if needed) and installs the project into it; idempotent and quick
# when nothing changed. Usage: scripts/install.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
python=${PYTHON:-python3}

if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

# Reinstall only when the dependency declarations change.
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)${extras:+-dev}"
if [[ ! -f "$stamp" ]]; then
  echo "==> installing ssl-pipeline${extras} (first time: torch + CUDA libraries, ~5 GB, a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
  # pip warns about every missing local index folder; those lines are noise.
  # --no-compile, then compileall on every core: pip writes the bytecode of torch, mlflow,
  # prefect & co. one file at a time (this script in a fresh clone on 2 cores: 125 s -> 98 s).
  # The bytecode is still written at install time: where PYTHONDONTWRITEBYTECODE=1 is set (as on
  # the CI machine), every process would otherwise recompile what it imports (6.5 s -> 14.5 s).
  .venv/bin/python -m pip install --quiet --no-compile --constraint constraints.txt --editable ".${extras}" 2>&1 \
    | grep -v -E "Location '.*' is ignored" || true
  # Some packages ship files that are not Python 3 (templates, test data): compileall reports them
  # and exits 1, as pip's own compile step would silently skip them. Their own test suites (pandas',
  # sympy's, scipy's: 3,700 of 21,600 files) are never imported: skipped (49 s -> 36 s on 2 cores).
  .venv/bin/python -m compileall -q -q -j 0 -x '/tests?/' \
    "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# Fail here, with the reason, rather than deep inside a stage.
.venv/bin/python - <<'PY'
import sys
try:
    import torch, torchvision
    torchvision.ops.nms  # the operator that breaks when torch and torchvision do not match
    import ssl_core, tasks, flows  # noqa: F401
except Exception as error:  # report any import failure the same way
    sys.exit(f"install check failed: {error}\n"
             "torch and torchvision must come from the same release; delete .venv and rerun scripts/install.sh.")
print(f"==> ready: torch {torch.__version__}, torchvision {torchvision.__version__}")
PY
