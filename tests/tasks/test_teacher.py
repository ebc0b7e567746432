"""Teacher stage: every source ends as a loadable frozen teacher or a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.model_file import EmbeddingModelInfo, save_embedding_model
from tasks import teacher
from tasks.params import Params, parse_params


def params(**teacher_section) -> Params:
    return parse_params({"teacher": teacher_section})


def saved_model(path: Path) -> Path:
    torch.manual_seed(0)
    save_embedding_model(path, build_backbone("resnet18_cifar").module,
                         EmbeddingModelInfo("resnet18_cifar", 512, 32, Normalization(), "simclr"))
    return path


def test_checkpoint_file_source_is_copied_and_loads_frozen(tmp_path: Path) -> None:
    source = saved_model(tmp_path / "mine.pt")
    spec = teacher.run(params(source=str(source)), tmp_path / "data", tmp_path / "teacher", tmp_path / "ckpt")
    assert spec == {"kind": "file", "source": str(source)}
    loaded = teacher.load(tmp_path / "teacher")
    assert loaded.embedding_dim == 512 and not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_missing_or_invalid_file_says_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(teacher.TeacherError, match=r"teacher.source = .*nope.pt.*no such file.*'pretrain'"):
        teacher.run(params(source=str(tmp_path / "nope.pt")), tmp_path, tmp_path / "t", tmp_path / "c")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(teacher.TeacherError, match="not an embedding-model file"):
        teacher.run(params(source=str(junk)), tmp_path, tmp_path / "t", tmp_path / "c")


def test_dinov2_source_is_recorded_not_downloaded(tmp_path: Path) -> None:
    spec = teacher.run(params(source="dinov2:dinov2_vits14"), tmp_path, tmp_path / "t", tmp_path / "c")
    assert spec == {"kind": "dinov2", "name": "dinov2_vits14", "image_size": 224}
    assert json.loads((tmp_path / "t" / "teacher.json").read_text()) == spec


def test_methods_without_teacher_skip_the_stage(tmp_path: Path) -> None:
    spec = teacher.run(parse_params({"pretrain": {"method": "byol"}}), tmp_path, tmp_path / "t", tmp_path / "c")
    assert spec["kind"] == "none" and teacher.load(tmp_path / "t") is None


def test_loading_before_the_stage_ran_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(teacher.TeacherError, match="run the teacher stage first"):
        teacher.load(tmp_path / "missing")
