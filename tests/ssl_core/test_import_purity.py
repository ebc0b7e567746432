"""ssl_core must import without the pipeline's dependencies: it runs on bare GPU machines.

torch itself imports ``tqdm`` when it is installed (``torch.hub`` uses it for
optional progress bars), so "not in sys.modules" is checked relative to what
ssl_core's own dependencies import, and a second check blocks the packages
outright, as on a machine where they are not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys

SUBMODULES = [
    "augment", "backbones", "data", "embed", "engine", "export", "heads", "knn", "losses",
    "manifest", "methods", "model_file", "onnx_embedder", "precision", "schedules", "teachers",
]
FORBIDDEN = ["prefect", "mlflow", "dvc", "fastapi", "pydantic", "yaml", "tqdm", "matplotlib"]

IMPORT_ALL = (
    "import importlib, json, sys\n"
    "def loaded():\n"
    f"    return sorted(m for m in {FORBIDDEN!r} if sys.modules.get(m) is not None)\n"
    "import numpy, PIL, torch, torchvision\n"
    "baseline = loaded()\n"
    "import ssl_core\n"
    f"for name in {SUBMODULES!r}:\n"
    "    importlib.import_module('ssl_core.' + name)\n"
    "print(json.dumps({'baseline': baseline, 'after': loaded()}))\n"
)

# A None entry in sys.modules makes `import name` raise ModuleNotFoundError, as if not installed.
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({FORBIDDEN!r}))\n"


def run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ssl_core_adds_no_pipeline_dependency_to_sys_modules():
    modules = run_python(IMPORT_ALL)
    added = sorted(set(modules["after"]) - set(modules["baseline"]))
    assert added == [], f"ssl_core pulled in pipeline dependencies: {added}"


def test_ssl_core_imports_when_pipeline_dependencies_are_not_installed():
    modules = run_python(BLOCKER + IMPORT_ALL)
    assert modules["after"] == []
