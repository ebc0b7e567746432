"""Where each stage reads and writes, relative to the project folder.

dvc.yaml passes the same paths on each stage's command line
(``tests/tasks/test_dvc_yaml.py`` checks that the two agree); ``sslpipe run``
uses these defaults directly.
"""

from __future__ import annotations

from pathlib import Path

from ssl_core.manifest import MANIFEST_NAME

PARAMS = Path("params.yaml")
INGESTED = Path("data/ingested")
CURATED = Path("data/curated")
TEACHER = Path("models/teacher")
TEACHER_CHECKPOINTS = Path("checkpoints/teacher")
STUDENT = Path("models/student")
STUDENT_CHECKPOINTS = Path("checkpoints/student")
EVALUATION = Path("reports/evaluate")
ONNX_DIR = Path("models/onnx")
REGISTRATION = Path("reports/registration.json")
SERVING_CACHE = Path("models/serving")

MANIFEST_FILE = MANIFEST_NAME
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
TEACHER_SPEC = "teacher.json"
METRICS_FILE = "metrics.json"
EVALUATION_PLOT = "evaluation.png"  # label-free metrics, and kNN per class where there are labels
INGEST_REPORT = "ingest_report.json"  # in an ingested folder, and copied into a curated one
CURATION_REPORT = "report.json"  # in a curated folder: what curate found and dropped
CURATION_PAGE = "report.html"
