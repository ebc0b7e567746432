"""The one list of pipeline stages: name, order, code, and the paths each reads and writes.

The CLI builds one subcommand per stage from it, ``sslpipe run`` runs it in order,
the Prefect flow makes one task per stage, and dvc.yaml must agree with it: each
stage's command, its code dependencies (the project files its command imports) and
its params (the sections its ``main`` reads). ``tests/tasks/test_dvc_yaml.py``
checks all three, and ``python scripts/dvc_deps.py --write`` brings dvc.yaml's
code deps and params up to date.

Each stage is a module ``tasks.<module>`` with ``main(params, args)``, the thin CLI
entry over its plain ``run`` function. The module is imported only when its stage
runs, so ``sslpipe --help`` imports no stage at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks import layout


@dataclass(frozen=True)
class PathOption:
    """A ``--<name>`` path option of a stage command, with its default from :mod:`tasks.layout`.

    Attributes:
        name: the option (``data`` gives ``--data``).
        default: where the pipeline keeps it.
        help: what it is, for ``--help``.
        requires: for an input, the file inside it that must exist (``""``: the path itself).
        versioned: for an output, whether DVC tracks it (a dvc.yaml out, cached and pushed).
            Resume checkpoints are not: they are local scratch that a clone pulling the
            outputs does not need, and DVC never deletes a path it does not track.
    """

    name: str
    default: Path
    help: str
    requires: str = ""
    versioned: bool = True

    def required_under(self, path: Path) -> Path:
        """What must exist when the option is given ``path``: the file it requires inside, or the path itself."""
        return path / self.requires if self.requires else path

    @property
    def required_path(self) -> Path:
        return self.required_under(self.default)


@dataclass(frozen=True)
class Stage:
    """One DVC stage and ``sslpipe`` subcommand."""

    name: str
    module: str
    help: str
    inputs: tuple[PathOption, ...] = ()
    outputs: tuple[PathOption, ...] = ()
    # Whether it reaches something that can fail and then work again (a data source, the
    # model registry, a download): the Prefect flow retries it with backoff.
    may_fail_transiently: bool = False

    @property
    def options(self) -> tuple[PathOption, ...]:
        return self.inputs + self.outputs

    def command(self) -> str:
        """The stage's command with the default paths: what dvc.yaml runs."""
        return " ".join([f"sslpipe {self.name}", *(f"--{o.name} {o.default.as_posix()}" for o in self.options)])


INGESTED = PathOption("data", layout.INGESTED, "ingested dataset", requires=layout.MANIFEST_FILE)
# What every stage after curate reads: the curated dataset (any ingested one works too).
DATA = PathOption("data", layout.CURATED, "curated dataset", requires=layout.MANIFEST_FILE)
STUDENT = PathOption("model", layout.STUDENT, "model folder of the pretrain stage", requires=layout.MODEL_FILE)

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "tasks.ingest",
        "decode and catalogue the images of ingest.source",
        outputs=(PathOption("out", layout.INGESTED, "output folder: images/, manifest.csv, ingest_report.json"),),
        may_fail_transiently=True,  # the source may be a network mount, or torchvision's download
    ),
    Stage(
        "curate",
        "tasks.curate",
        "find duplicates, leaks, quality problems and outliers; drop what curate.drop lists",
        inputs=(INGESTED,),
        outputs=(
            PathOption("out", layout.CURATED, "curated dataset: images/, manifest.csv, report.json, report.html"),
        ),
        may_fail_transiently=True,  # curate.embedder may be a registry model
    ),
    Stage(
        "teacher",
        "tasks.teacher",
        "prepare the distillation teacher (teacher.source)",
        inputs=(DATA,),
        outputs=(
            PathOption("out", layout.TEACHER, "teacher folder"),
            PathOption(
                "checkpoints", layout.TEACHER_CHECKPOINTS, "epoch checkpoints, kept for resume", versioned=False
            ),
        ),
        may_fail_transiently=True,  # teacher.source may be a registry model or a torch.hub download
    ),
    Stage(
        "pretrain",
        "tasks.pretrain",
        "self-supervised pretraining of the student (pretrain.*)",
        inputs=(DATA, PathOption("teacher", layout.TEACHER, "prepared teacher folder", requires=layout.TEACHER_SPEC)),
        outputs=(
            PathOption("out", layout.STUDENT, "model folder: model.pt, history.json, training.png"),
            PathOption(
                "checkpoints", layout.STUDENT_CHECKPOINTS, "epoch checkpoints, kept for resume", versioned=False
            ),
        ),
    ),
    Stage(
        "evaluate",
        "tasks.evaluate",
        "label-free metrics (RankMe, alignment, uniformity), and kNN and a linear probe on labeled images, "
        "of the student and of a random-init baseline",
        inputs=(DATA, STUDENT),
        outputs=(PathOption("out", layout.EVALUATION, f"metrics.json, per_class.json, {layout.EVALUATION_PLOT}"),),
    ),
    Stage(
        "export",
        "tasks.export",
        "export the student to ONNX, check it against PyTorch, quantize it to int8 (export.quantize)",
        inputs=(DATA, STUDENT),  # DATA: the check images, and with int8 the calibration and kNN images
        outputs=(PathOption("out", layout.ONNX_DIR, "model.onnx, export_report.json; with int8 also model.fp32.onnx"),),
    ),
    Stage(
        "register",
        "tasks.register",
        "log to MLflow, register the ONNX model, set aliases",
        inputs=(
            DATA,
            STUDENT,
            PathOption("evaluation", layout.EVALUATION, "evaluation folder", requires=layout.METRICS_FILE),
            PathOption("onnx", layout.ONNX_DIR, "ONNX folder", requires=layout.ONNX_FILE),
        ),
        outputs=(PathOption("out", layout.REGISTRATION, "registration summary"),),
        may_fail_transiently=True,  # the MLflow tracking server
    ),
)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def producer_of(path: Path) -> Stage | None:
    """The stage that writes ``path`` (or the folder holding it), for "run it first" hints."""
    return next((s for s in STAGES for o in s.outputs if path == o.default or o.default in path.parents), None)
