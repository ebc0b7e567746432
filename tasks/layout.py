"""Where each stage reads and writes, relative to the project folder.

dvc.yaml passes the same paths on each stage's command line (a test checks the
two agree); ``sslpipe run`` uses these defaults directly.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
INGESTED = Path("data/ingested")
TEACHER = Path("models/teacher")
TEACHER_CHECKPOINTS = Path("checkpoints/teacher")
STUDENT = Path("models/student")
STUDENT_CHECKPOINTS = Path("checkpoints/student")
EVALUATION = Path("reports/evaluate")
ONNX_DIR = Path("models/onnx")
REGISTRATION = Path("reports/registration.json")

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
