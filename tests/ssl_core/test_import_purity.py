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

FORBIDDEN = ["prefect", "mlflow", "dvc", "fastapi", "pydantic", "yaml", "tqdm", "matplotlib"]

IMPORT_ALL = (
    "import importlib, json, sys\n"
    "def loaded():\n"
    f"    return sorted(m for m in {FORBIDDEN!r} if sys.modules.get(m) is not None)\n"
    "import numpy, PIL, torch, torchvision\n"
    "baseline = loaded()\n"
    "import pkgutil, ssl_core\n"
    "for module in pkgutil.walk_packages(ssl_core.__path__, 'ssl_core.'):\n"
    "    importlib.import_module(module.name)\n"
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


# What must import without torch: the params schema and CLI (so `sslpipe --help` and a
# params error answer at once), and the ONNX consumer side (a serving image can skip torch).
TORCH_FREE = [
    "ssl_core.methods",
    "ssl_core.methods.recipes",
    "ssl_core.onnx_format",
    "ssl_core.onnx_embedder",
    "ssl_core.manifest",
    "tasks.params",
    "tasks.stages",
    "tasks.cli",
]


def test_schema_cli_and_onnx_consumers_import_without_torch():
    code = (
        "import importlib, json, sys\n"
        "sys.modules.update(dict.fromkeys(['torch', 'torchvision', 'mlflow']))\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'ok': True}))\n"
    )
    assert run_python(code) == {"ok": True}
