"""Teacher stage: every source ends as a loadable frozen teacher or a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.manifest import sha256_file
from ssl_core.methods import METHOD_NAMES
from ssl_core.methods.factory import method_class
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from tasks import cli, pretrain, teacher
from tasks.layout import MODEL_FILE
from tasks.params import ParamsError, parse_params
from tasks.pretrain import load_teacher
from tests.datasets import random_ingested_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_teacher(tmp_path: Path, student_method: str = "distillation", out: str = "teacher", **teacher_section) -> dict:
    """The teacher stage for a ``student_method`` student, with ``teacher_section`` as params.yaml's teacher."""
    params = parse_params({"teacher": teacher_section, "pretrain": {"method": student_method}})
    return teacher.run(
        params.teacher, params.pretrain.method, params.data, tmp_path / "data", tmp_path / out, tmp_path / "ckpt"
    )


def saved_model(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_embedding_model(
        path,
        build_backbone("resnet18_cifar").module,
        EmbeddingModelInfo("resnet18_cifar", 512, 32, Normalization(), "simclr"),
    )
    return path


def test_checkpoint_file_source_is_copied_and_loads_frozen(tmp_path: Path) -> None:
    source = saved_model(tmp_path / "mine.pt")
    spec = run_teacher(tmp_path, source=str(source))
    assert spec == {"kind": "file", "source": str(source)}
    loaded = load_teacher(tmp_path / "teacher")
    assert loaded.embedding_dim == 512 and not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_missing_or_invalid_file_says_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(teacher.TeacherError, match=r"teacher.source = .*nope.pt.*no such file.*'pretrain'"):
        run_teacher(tmp_path, source=str(tmp_path / "nope.pt"))
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(teacher.TeacherError, match="not an embedding-model file"):
        run_teacher(tmp_path, source=str(junk))


def test_dinov2_source_is_recorded_not_downloaded(tmp_path: Path) -> None:
    spec = run_teacher(tmp_path, source="dinov2:dinov2_vits14")
    assert spec == {"kind": "dinov2", "name": "dinov2_vits14", "image_size": 224}
    assert json.loads((tmp_path / "teacher" / "teacher.json").read_text()) == spec


@pytest.mark.parametrize("student_method", [name for name in METHOD_NAMES if not method_class(name).needs_teacher])
def test_methods_without_teacher_skip_the_stage(student_method: str, tmp_path: Path) -> None:
    spec = run_teacher(tmp_path, student_method)
    assert spec["kind"] == "none" and load_teacher(tmp_path / "teacher") is None


def test_a_pretrained_teacher_cannot_itself_need_a_teacher(tmp_path: Path) -> None:
    # params.yaml loads: the teacher stage refuses it, naming the key, before touching its output.
    with pytest.raises(ParamsError, match=r"^teacher\.method = 'distillation': .*e\.g\. 'simclr'"):
        run_teacher(tmp_path, source="pretrain", method="distillation")
    assert not (tmp_path / "teacher").exists()
    # From a file, teacher.method plays no part.
    source = saved_model(tmp_path / "mine.pt")
    assert run_teacher(tmp_path, source=str(source), method="distillation")["kind"] == "file"


def test_pretrain_before_the_teacher_stage_ran_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "curated").mkdir(parents=True)
    (tmp_path / "data" / "curated" / "manifest.csv").write_text("")
    assert cli.main(["pretrain", "--params", str(REPO_ROOT / "params.yaml")]) == 2
    error = capsys.readouterr().err
    assert "models/teacher/teacher.json not found: run `sslpipe teacher` first" in error
    assert "\n" not in error.strip()  # one line, no traceback


def test_a_student_resumes_only_from_a_run_distilled_from_the_same_teacher_weights(tmp_path: Path) -> None:
    # `dvc repro` after a teacher change retrains the teacher into the same models/teacher/model.pt,
    # then runs the student with resume on: its finished checkpoint of the old teacher must not be taken.
    params = parse_params(
        {
            "pretrain": {
                "method": "distillation",
                "epochs": 1,
                "batch_size": 4,
                "device": "cpu",
                "precision": "fp32",
                "num_workers": 0,
                "monitor": {"knn_bank": 0, "system_metrics": False},
            }
        }
    )
    ingested = random_ingested_folder(tmp_path / "data", 8)
    teacher_dir = tmp_path / "teacher"

    def distill() -> int:
        """Distils the student from the teacher now in teacher_dir; the epoch it resumed from."""
        result = pretrain.run(
            params.pretrain, params.data, ingested, tmp_path / "student", tmp_path / "ckpt", load_teacher(teacher_dir)
        )
        return result.history.resumed_from_epoch

    run_teacher(tmp_path, source=str(saved_model(tmp_path / "first.pt", seed=0)))
    assert distill() == 0
    assert distill() == 1  # the same teacher: the finished run is resumed, nothing retrained
    first = json.loads((tmp_path / "student" / "config.json").read_text())["teacher_sha256"]

    run_teacher(tmp_path, source=str(saved_model(tmp_path / "second.pt", seed=1)))  # same path, other weights
    assert distill() == 0
    second = json.loads((tmp_path / "student" / "config.json").read_text())["teacher_sha256"]
    assert first != second and second == sha256_file(teacher_dir / MODEL_FILE)
