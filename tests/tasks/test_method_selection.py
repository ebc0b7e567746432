"""Every method is selectable by one key in params.yaml, with its recipe overridable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_core.methods import METHOD_NAMES, SELF_SUPERVISED, Distillation
from ssl_core.teachers import Teacher
from tasks.params import ParamsError, load_params, parse_params
from tasks.pretrain import PretrainError, build_method

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_all_seven_methods_are_offered() -> None:
    assert set(METHOD_NAMES) == {"distillation", "dino", "simclr", "moco", "simsiam", "barlowtwins", "byol"}


@pytest.mark.parametrize("name", sorted(SELF_SUPERVISED))
def test_one_key_selects_the_method_with_its_recipe_from_params_yaml(name: str) -> None:
    params = load_params(REPO_ROOT / "params.yaml", {"pretrain.method": name, "pretrain.backbone": "resnet18"})
    method = build_method(params.pretrain, num_images=100, teacher=None)
    method_class, config_class = SELF_SUPERVISED[name]
    assert type(method) is method_class
    # params.yaml restates every default of the recipe.
    assert getattr(params.pretrain, name) == config_class()


def test_recipe_values_can_be_overridden() -> None:
    params = load_params(REPO_ROOT / "params.yaml", {"pretrain.method": "moco", "pretrain.moco.memory_bank_size": 256,
                                                      "pretrain.backbone": "resnet18"})
    method = build_method(params.pretrain, num_images=100, teacher=None)
    assert method.memory_bank.shape[0] == 256


def test_distillation_needs_a_teacher_and_sizes_its_queue() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    with pytest.raises(PretrainError, match="needs a teacher"):
        build_method(params.pretrain, num_images=100, teacher=None)
    teacher = Teacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 8)), 8, "toy")
    method = build_method(params.pretrain, num_images=5000, teacher=teacher)
    assert isinstance(method, Distillation) and method.queue.shape == (2048, 8)


def test_lr_scaling_rule() -> None:
    assert parse_params({"pretrain": {"method": "simclr", "batch_size": 512, "base_lr": 0.06}}).pretrain.lr == pytest.approx(0.24)
    assert parse_params({"pretrain": {"method": "simsiam", "batch_size": 512, "base_lr": 0.06}}).pretrain.lr == 0.06
    assert parse_params({"pretrain": {"method": "simsiam", "batch_size": 512, "base_lr": 0.06,
                                      "scale_lr": True}}).pretrain.lr == pytest.approx(0.24)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"pretrain": {"moco": {"momentum": 1.5}}}, "pretrain.moco: momentum = 1.5: must be in [0, 1]"),
        ({"pretrain": {"byol": {"momentm": 0.9}}}, "unknown key 'pretrain.byol.momentm'"),
        ({"pretrain": {"dino": {"output_dim": 0}}}, "output_dim must be >= 1"),
        ({"pretrain": {"method": "dino", "dino": {"num_local_crops": 2}}}, "must equal dino.num_local_crops"),
        ({"data": {"image_size": 64}, "pretrain": {"method": "dino"}}, "global_size = 32 must equal data.image_size = 64"),
    ],
)
def test_bad_recipe_values_name_the_key(override: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as error:
        parse_params(override)
    assert expected in str(error.value)
