"""params.yaml validation: bad values fail before any work, naming key, value and choices."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError

from ssl_core.methods.factory import method_class
from tasks.errors import UserError
from tasks.params import Params, ParamsError, load_params
from tasks.pretrain import check_training

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_params_are_valid_and_match_schema_defaults_where_documented() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.pretrain.method == "distillation"
    assert params.pretrain.backbone == "resnet18_cifar"
    assert params.evaluate.k == 200 and params.evaluate.temperature == 0.1
    assert params.serve.host == "127.0.0.1"


def test_unknown_method_names_key_value_and_choices(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(write_params(tmp_path, pretrain={"method": "simclrr"}))
    message = str(error.value)
    assert "pretrain.method" in message and "'simclrr'" in message
    assert "'distillation'" in message and "'simclr'" in message


def test_negative_epochs(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"pretrain\.epochs = -1: .*greater than or equal to 1"):
        load_params(write_params(tmp_path, pretrain={"epochs": -1}))


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"teacher\.batch_size = 'many': .*integer"):
        load_params(write_params(tmp_path, teacher={"batch_size": "many"}))


def test_unknown_key_is_an_error_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"unknown key 'pretrain.epoch'"):
        load_params(write_params(tmp_path, pretrain={"epoch": 5}))


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(write_params(tmp_path, pretrain={"epochs": 0, "method": "simclrr"}, evaluate={"k": 0}))
    message = str(error.value)
    assert "pretrain.epochs" in message and "pretrain.method = 'simclrr'" in message and "evaluate.k" in message
    assert "'distillation'" in message  # says what is allowed


@pytest.mark.parametrize("section", ["pretrain", "teacher"])
def test_unknown_backbone_names_key_value_and_choices(section: str, tmp_path: Path) -> None:
    # The schema loads without torchvision; the backbone is checked when a training stage starts.
    params = load_params(write_params(tmp_path, **{section: {"backbone": "resnet19"}}))
    with pytest.raises(ParamsError) as error:
        check_training(getattr(params, section), section)
    message = str(error.value)
    assert f"{section}.backbone = 'resnet19'" in message
    assert "resnet18_cifar" in message  # says what is allowed
    check_training(getattr(load_params(REPO_ROOT / "params.yaml"), section), section)  # the shipped one passes


def test_pretraining_checks_the_backbone_before_any_work(tmp_path: Path) -> None:
    from tasks import pretrain

    params = load_params(write_params(tmp_path, teacher={"backbone": "resnet19"}))
    with pytest.raises(ParamsError, match=r"^teacher\.backbone = 'resnet19'"):
        pretrain.run(
            params.teacher, params.data, tmp_path / "no-data", tmp_path / "out", tmp_path / "ckpt", section="teacher"
        )
    assert not (tmp_path / "out").exists()


def test_unknown_precision_names_key_value_and_choices(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(write_params(tmp_path, pretrain={"precision": "fp16"}))
    assert "pretrain.precision = 'fp16'" in str(error.value) and "'auto'" in str(error.value)


@pytest.fixture()
def t4(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA device 0 says it is a Tesla T4 (compute capability 7.5): no GPU is touched."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


@pytest.mark.parametrize("section", ["pretrain", "teacher"])
def test_bf16_on_a_gpu_without_it_is_refused_before_training_naming_the_key(section: str, t4, tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path, **{section: {"device": "cuda", "precision": "bf16-mixed"}}))
    with pytest.raises(ParamsError, match=rf"^{section}\.precision = 'bf16-mixed': .*Tesla T4 has 7\.5"):
        check_training(getattr(params, section), section)
    check_training(getattr(load_params(write_params(tmp_path, **{section: {"device": "cuda"}})), section), section)


@pytest.mark.parametrize("section", ["pretrain", "teacher"])
def test_fp16_on_a_cpu_is_refused_before_training_naming_the_key(section: str, tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path, **{section: {"device": "cpu", "precision": "fp16-mixed"}}))
    with pytest.raises(ParamsError, match=rf"^{section}\.precision = 'fp16-mixed': fp16-mixed is for CUDA GPUs"):
        check_training(getattr(params, section), section)


def test_the_evaluate_stage_refuses_bf16_on_such_a_gpu_before_reading_anything(t4, tmp_path: Path) -> None:
    from tasks.evaluate import stage

    params = load_params(write_params(tmp_path, evaluate={"device": "cuda", "precision": "bf16-mixed"}))
    with pytest.raises(ParamsError, match=r"^evaluate\.precision = 'bf16-mixed'"):
        stage.run(params.evaluate, "train", "test", tmp_path / "no-data", tmp_path / "no-student", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_split_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="train_split and data.test_split"):
        load_params(write_params(tmp_path, data={"test_split": "train"}))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overrides_and_derived_lr(tmp_path: Path) -> None:
    params = load_params(REPO_ROOT / "params.yaml", {"pretrain.batch_size": 512, "pretrain.base_lr": 0.06})
    training = params.pretrain
    assert training.batch_size == 512 and training.base_lr == 0.06 and training.scale_lr == "auto"
    # The peak lr is derived by the method, never stored in the params.
    assert method_class(training.method).peak_lr(training.base_lr, training.batch_size) == pytest.approx(
        0.06 * 512 / 128
    )
    with pytest.raises(ParamsError, match="pretrain.epochs"):
        load_params(REPO_ROOT / "params.yaml", {"pretrain.epochs": "x"})


def test_params_and_recipes_are_frozen() -> None:
    params = Params()
    with pytest.raises(ValidationError, match="frozen"):
        params.pretrain.epochs = 5  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        params.pretrain.simclr.temperature = 0.1  # type: ignore[misc]
    assert params == Params() and params != Params.model_validate({"pretrain": {"epochs": 7}})


def test_params_errors_are_user_errors() -> None:
    assert issubclass(ParamsError, UserError)
