"""Stage 2, teacher: prepare the frozen teacher that ``distillation`` learns from.

By ``teacher.source``:
  * ``pretrain``: pretrain a teacher here with an SSL method (default; offline).
  * a file path: copy that embedding-model file (checked to load).
  * ``models:/name@alias`` / ``models:/name/version``: the checkpoint logged with
    that MLflow model version by the register stage.
  * ``dinov2:<model>``: record the choice; the weights come from torch.hub when
    the pretrain stage runs (internet needed).
When the student's method (``pretrain.method``) needs no teacher, the stage records
that and does nothing.

Output: ``<out>/teacher.json`` describing the teacher (``kind``: ``none``, ``file`` or
``dinov2``), plus ``model.pt`` for the first three sources;
:func:`tasks.pretrain.load_teacher` reads it back.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from ssl_core.methods.factory import method_class
from ssl_core.model_file import load_embedding_model
from tasks import pretrain
from tasks.errors import UserError
from tasks.layout import MODEL_FILE, TEACHER_SPEC
from tasks.model_uris import MODELS_PREFIX, download_checkpoint
from tasks.params import DataParams, Params, ParamsError, TeacherParams

logger = logging.getLogger(__name__)

DINOV2_PREFIX = "dinov2:"


class TeacherError(UserError):
    """The teacher cannot be prepared or loaded; the message says what to do."""


def main(params: Params, args: argparse.Namespace) -> None:
    run(
        params.teacher,
        params.pretrain.method,
        params.data,
        args.data,
        args.out,
        args.checkpoints,
        experiment=params.registry.experiment,
    )


def run(
    teacher: TeacherParams,
    student_method: str,
    data: DataParams,
    ingested: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    experiment: str | None = None,
) -> dict:
    """Prepares the teacher of a ``student_method`` student in ``out_dir`` and returns its spec.

    ``experiment``: the MLflow experiment that tracks a teacher pretrained here (None: not tracked).
    """
    source = teacher.source
    if source == "pretrain" and method_class(teacher.method).needs_teacher:
        raise ParamsError(
            f"teacher.method = {teacher.method!r}: a teacher pretrained here cannot itself need a "
            f"teacher; use a method that learns alone, e.g. 'simclr'"
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if not method_class(student_method).needs_teacher:
        spec = {"kind": "none", "reason": f"pretrain.method {student_method!r} needs no teacher"}
    elif source == "pretrain":
        pretrain.train_on_processes(
            teacher,
            "teacher",
            pretrain.run,
            teacher,
            data,
            ingested,
            out_dir,
            checkpoint_dir,
            section="teacher",
            experiment=experiment,
        )
        spec = {"kind": "file", "source": "pretrain", "method": teacher.method, "backbone": teacher.backbone}
    elif source.startswith(MODELS_PREFIX):
        download_checkpoint(source, out_dir / MODEL_FILE)
        spec = {"kind": "file", "source": source}
    elif source.startswith(DINOV2_PREFIX):
        spec = {"kind": "dinov2", "name": source.removeprefix(DINOV2_PREFIX), "image_size": teacher.dinov2_image_size}
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
    (out_dir / TEACHER_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    logger.info("Teacher: %s", spec)
    return spec
