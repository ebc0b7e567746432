"""Stage 2, teacher: prepare the frozen teacher that ``distillation`` learns from.

By ``teacher.source``:
  * ``pretrain``: pretrain a teacher here with an SSL method (default; offline).
  * a file path: copy that embedding-model file (checked to load).
  * ``models:/name@alias`` / ``models:/name/version``: the checkpoint logged with
    that MLflow model version by the register stage.
  * ``dinov2:<model>``: record the choice; the weights come from torch.hub when
    the pretrain stage runs (internet needed).
When ``pretrain.method`` needs no teacher, the stage records that and does nothing.

Output: ``<out>/teacher.json`` describing the teacher, plus ``model.pt`` for the
first three sources.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ssl_core.methods import TEACHER_METHODS
from ssl_core.model_file import load_embedding_model
from ssl_core.teachers import Teacher, load_dinov2_teacher, load_teacher_file
from tasks import pretrain
from tasks.layout import MODEL_FILE
from tasks.params import Params

logger = logging.getLogger(__name__)

SPEC_FILE = "teacher.json"
MODELS_PREFIX = "models:/"
DINOV2_PREFIX = "dinov2:"


class TeacherError(RuntimeError):
    """The teacher cannot be prepared or loaded; the message says what to do."""


def run(params: Params, ingested: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Prepares the teacher in ``out_dir`` and returns its spec."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    source = params.teacher.source
    if params.pretrain.method not in TEACHER_METHODS:
        spec = {"kind": "none", "reason": f"pretrain.method {params.pretrain.method!r} needs no teacher"}
    elif source == "pretrain":
        pretrain.run(params.teacher, params.data, ingested, out_dir, checkpoint_dir)
        spec = {"kind": "file", "source": "pretrain", "method": params.teacher.method, "backbone": params.teacher.backbone}
    elif source.startswith(MODELS_PREFIX):
        from tasks.registry import download_checkpoint  # mlflow is only needed for this source

        download_checkpoint(source, out_dir / MODEL_FILE)
        spec = {"kind": "file", "source": source}
    elif source.startswith(DINOV2_PREFIX):
        spec = {"kind": "dinov2", "name": source.removeprefix(DINOV2_PREFIX),
                "image_size": params.teacher.dinov2_image_size}
    else:
        path = Path(source)
        if not path.is_file():
            raise TeacherError(
                f"teacher.source = {source!r}: no such file. Use 'pretrain', a model.pt path, "
                f"'models:/<name>@<alias>' or 'dinov2:<model>'."
            )
        try:
            load_embedding_model(path)
        except ValueError as error:
            raise TeacherError(f"teacher.source = {source!r}: {error}") from None
        shutil.copyfile(path, out_dir / MODEL_FILE)
        spec = {"kind": "file", "source": str(path)}
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    logger.info("Teacher: %s", spec)
    return spec


def load(teacher_dir: Path) -> Teacher | None:
    """The prepared teacher, or None when the method needs none.

    Raises:
        TeacherError: if the teacher stage has not run.
    """
    spec_path = teacher_dir / SPEC_FILE
    if not spec_path.is_file():
        raise TeacherError(f"No teacher in {teacher_dir}: run the teacher stage first (`sslpipe teacher`).")
    spec = json.loads(spec_path.read_text())
    if spec["kind"] == "none":
        return None
    if spec["kind"] == "dinov2":
        try:
            return load_dinov2_teacher(spec["name"], spec["image_size"])
        except RuntimeError as error:  # no internet: the message says what to use instead
            raise TeacherError(str(error)) from None
    return load_teacher_file(teacher_dir / MODEL_FILE)
