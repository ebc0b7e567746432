"""Every method is selectable by one key in params.yaml, with its recipe overridable, and
says itself what it needs: a teacher, its lr rule, its crops, its views."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ssl_core.backbones import Backbone, build_backbone
from ssl_core.engine import TrainConfig
from ssl_core.manifest import MANIFEST_NAME, ManifestRecord, write_manifest
from ssl_core.methods import (
    METHOD_NAMES,
    RECIPES,
    DINOConfig,
    MoCoConfig,
    MultiCropConfig,
)
from ssl_core.methods.dino import DINO
from ssl_core.methods.distillation import Distillation
from ssl_core.methods.factory import (
    IMPLEMENTATIONS,
    METHOD_CLASSES,
    build_method,
    method_class,
)
from ssl_core.teachers import Teacher
from tasks import pretrain
from tasks.params import DataParams, ParamsError, load_params, parse_params
from tasks.pretrain import PretrainError

REPO_ROOT = Path(__file__).resolve().parents[2]
TEACHER_DIM = 8


def toy_teacher() -> Teacher:
    return Teacher(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, TEACHER_DIM)), TEACHER_DIM, "toy")


def tiny_backbone() -> Backbone:
    return Backbone(nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 16, "tiny")


def teacher_for(name: str) -> Teacher | None:
    return toy_teacher() if method_class(name).needs_teacher else None


# --- the one list of methods ----------------------------------------------------------------


def test_all_eight_methods_are_offered() -> None:
    assert set(METHOD_NAMES) == {"distillation", "dino", "simclr", "moco", "simsiam", "barlowtwins", "byol", "vicreg"}
    assert METHOD_NAMES == tuple(RECIPES) == tuple(METHOD_CLASSES)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_recipe_has_exactly_one_class(name: str) -> None:
    implementations = [cls for cls in IMPLEMENTATIONS if cls.recipe is RECIPES[name]]
    assert implementations == [method_class(name)]


def test_unknown_method_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="Unknown method 'simclrr'; choose one of distillation, simclr"):
        method_class("simclrr")


def test_only_distillation_needs_a_teacher() -> None:
    assert [name for name in METHOD_NAMES if method_class(name).needs_teacher] == ["distillation"]


def test_crop_scales_are_the_methods_own() -> None:
    assert method_class("distillation").crop_scale == (0.14, 1.0)  # LightlyTrain's milder crops
    assert {method_class(name).crop_scale for name in METHOD_NAMES if name != "distillation"} == {(0.08, 1.0)}


def test_peak_lr_is_scaled_with_the_batch_except_for_simsiam() -> None:
    for name in METHOD_NAMES:
        expected = 0.06 if name == "simsiam" else pytest.approx(0.24)
        assert method_class(name).peak_lr(0.06, 512) == expected, name
    # An explicit scale overrides the method's rule, both ways.
    assert method_class("simsiam").peak_lr(0.06, 512, scale=True) == pytest.approx(0.24)
    assert method_class("simclr").peak_lr(0.06, 512, scale=False) == 0.06
    assert method_class("simclr").peak_lr(0.06, 128) == pytest.approx(0.06)


# --- params.yaml selects and configures the method -------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_key_selects_the_method_with_its_recipe_from_params_yaml(name: str) -> None:
    params = load_params(REPO_ROOT / "params.yaml", {"pretrain.method": name, "pretrain.backbone": "resnet18"})
    assert params.pretrain.recipe is getattr(params.pretrain, name)
    backbone = build_backbone(params.pretrain.backbone, params.data.image_size)
    method = build_method(name, backbone, params.pretrain.recipe, teacher=teacher_for(name), num_images=100)
    assert type(method) is method_class(name)


# Where params.yaml's student recipe departs from a method's defaults on purpose, and the measurement why:
# without mixup a 3-epoch CPU student gained 1.4 kNN points on each of three seeds
# (benchmarks/results/cpu-recipe-sweep); the recipe keeps LightlyTrain's mixup for long runs.
PARAMS_YAML_DEPARTURES = {"distillation": {"mixup": False}}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_params_yaml_restates_every_recipe_default(name: str) -> None:
    """Every value params.yaml writes out is the recipe's default, but for the departures listed above."""
    params = load_params(REPO_ROOT / "params.yaml")
    assert getattr(params.pretrain, name) == replace(RECIPES[name](), **PARAMS_YAML_DEPARTURES.get(name, {}))


def test_recipe_values_can_be_overridden() -> None:
    params = load_params(
        REPO_ROOT / "params.yaml",
        {"pretrain.method": "moco", "pretrain.moco.memory_bank_size": 256, "pretrain.backbone": "resnet18"},
    )
    method = build_method("moco", build_backbone("resnet18"), params.pretrain.recipe, num_images=100)
    assert method.memory_bank.shape[0] == 256


def test_distillation_sizes_its_queue_for_the_dataset() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.pretrain.method == "distillation" and params.pretrain.distillation.queue_size == "auto"
    method = build_method(
        "distillation", tiny_backbone(), params.pretrain.recipe, teacher=toy_teacher(), num_images=5000
    )
    assert isinstance(method, Distillation) and method.queue.shape == (2048, TEACHER_DIM)
    # The recipe itself keeps "auto": the resolved size is derived, not written back.
    assert params.pretrain.distillation.queue_size == "auto"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"pretrain": {"moco": {"momentum": 1.5}}}, "pretrain.moco: momentum = 1.5: must be in [0, 1]"),
        ({"pretrain": {"byol": {"momentm": 0.9}}}, "unknown key 'pretrain.byol.momentm'"),
        ({"pretrain": {"dino": {"output_dim": 0}}}, "pretrain.dino: output_dim = 0: must be > 0"),
        (
            {"pretrain": {"distillation": {"queue_size": 0}}},
            "pretrain.distillation: queue_size = 0: must be 'auto' or an integer in [1, 8192]",
        ),
        # DINO's views are its own recipe's: one crop count, no global size to disagree with data.image_size.
        ({"pretrain": {"dino": {"num_local_crops": 2}}}, "unknown key 'pretrain.dino.num_local_crops'"),
        (
            {"pretrain": {"dino": {"multicrop": {"global_size": 32}}}},
            "unknown key 'pretrain.dino.multicrop.global_size'",
        ),
        ({"pretrain": {"multicrop": {"num_local_crops": 2}}}, "unknown key 'pretrain.multicrop'"),
        ({"pretrain": {"dino": {"multicrop": {"num_local_crops": -1}}}}, "num_local_crops = -1: must be >= 0"),
    ],
)
def test_bad_recipe_values_name_the_key(override: dict, expected: str) -> None:
    with pytest.raises(ParamsError) as error:
        parse_params(override)
    assert expected in str(error.value)


# --- the factory ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_factory_refuses_another_methods_recipe(name: str) -> None:
    other = next(recipe for recipe in RECIPES.values() if recipe is not RECIPES[name])
    with pytest.raises(ValueError, match=f"takes a {RECIPES[name].__name__}, got {other.__name__}"):
        build_method(name, tiny_backbone(), other(), teacher=teacher_for(name))


@pytest.mark.parametrize("name", [name for name in METHOD_NAMES if not method_class(name).needs_teacher])
def test_factory_refuses_an_unexpected_teacher(name: str) -> None:
    with pytest.raises(ValueError, match="trains without a teacher; got toy"):
        build_method(name, tiny_backbone(), teacher=toy_teacher())


def test_factory_refuses_a_missing_teacher() -> None:
    with pytest.raises(ValueError, match="needs a frozen teacher"):
        build_method("distillation", tiny_backbone())


def test_factory_defaults_to_the_recipe_defaults() -> None:
    method = build_method("moco", tiny_backbone())
    assert method.memory_bank.shape[0] == MoCoConfig().memory_bank_size


# --- the pretrain stage asks the method -------------------------------------------------------


def fake_ingested(root: Path, count: int = 40) -> Path:
    """A manifest of ``count`` train images; pretrain reads no pixel before training starts."""
    root.mkdir(parents=True, exist_ok=True)
    records = [ManifestRecord(f"images/{i}.png", "0" * 64, None, "train", 32, 32) for i in range(count)]
    write_manifest(records, root / MANIFEST_NAME)
    return root


class StopBeforeTraining(Exception):
    pass


def config_of_a_run(overrides: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainConfig:
    """The settings pretrain.run hands the engine, without training."""

    def capture(method, dataset, config, *args, **kwargs):
        raise StopBeforeTraining(config)

    monkeypatch.setattr(pretrain, "train", capture)
    params = parse_params({"pretrain": {"backbone": "resnet18_cifar", **overrides}})
    with pytest.raises(StopBeforeTraining) as stopped:
        pretrain.run(
            params.pretrain,
            params.data,
            fake_ingested(tmp_path / "data"),
            tmp_path / "out",
            tmp_path / "ckpt",
            teacher=teacher_for(params.pretrain.method),
        )
    return stopped.value.args[0]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"method": "simclr"}, 0.24),
        ({"method": "simsiam"}, 0.06),  # scale_lr: auto, and SimSiam keeps its lr
        ({"method": "simsiam", "scale_lr": True}, 0.24),
        ({"method": "simclr", "scale_lr": False}, 0.06),
    ],
)
def test_pretrain_lr_follows_scale_lr(
    overrides: dict, expected: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"batch_size": 512, "base_lr": 0.06, **overrides}
    assert config_of_a_run(settings, tmp_path, monkeypatch).lr == pytest.approx(expected)


@pytest.mark.parametrize(
    ("overrides", "on_cuda", "scope"),
    [
        ({}, False, "off"),  # auto: compiling takes minutes on a CPU, for runs of a few epochs
        ({}, True, "networks"),  # auto: one CUDA process compiles (1.5x per epoch on an H200)
        ({"processes": 2}, True, "off"),  # auto: compiled DDP has not run on a GPU here
        ({"compile": True}, False, "networks"),
        ({"compile": "networks"}, False, "networks"),
        ({"compile": "step"}, False, "step"),
        ({"compile": False}, True, "off"),
    ],
)
def test_compile_auto_means_the_networks_on_one_cuda_process(
    overrides: dict, on_cuda: bool, scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = torch.device("cuda" if on_cuda else "cpu")
    monkeypatch.setattr(pretrain, "resolve_device", lambda name: device)
    monkeypatch.setattr(pretrain, "compile_blocker", lambda: None)  # a machine that can compile
    assert pretrain.compile_scope(parse_params({"pretrain": overrides}).pretrain) == scope


def test_compile_auto_stays_off_and_says_why_without_a_c_compiler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Triton builds its kernel launchers with the system's C compiler: without one, auto trains uncompiled."""
    pytest.importorskip("triton")  # in the CUDA torch wheels that CI installs
    monkeypatch.setattr(pretrain, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(pretrain.shutil, "which", lambda name: None)
    training = parse_params({}).pretrain
    assert pretrain.compile_blocker() is not None and "C compiler" in pretrain.compile_blocker()
    with caplog.at_level("WARNING", logger="tasks.pretrain"):
        assert pretrain.compile_scope(training) == "off"
    assert "compile: auto stays off, since no C compiler is found" in caplog.text
    # Asked for explicitly, it is the user's call: the engine compiles and any failure is shown as it is.
    assert pretrain.compile_scope(parse_params({"pretrain": {"compile": True}}).pretrain) == "networks"


@pytest.mark.parametrize(
    ("overrides", "scope"), [({}, "off"), ({"compile": True}, "networks"), ({"compile": "step"}, "step")]
)
def test_pretrain_hands_the_engine_the_resolved_compile(
    overrides: dict, scope: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("auto compiles on a CUDA machine")
    assert config_of_a_run({"method": "simclr", **overrides}, tmp_path, monkeypatch).compile == scope


@pytest.mark.parametrize(
    ("overrides", "optimizer"),
    [
        ({"method": "simclr"}, "sgd"),  # auto: the lightly benchmark's SGD
        ({"method": "vicreg"}, "lars"),  # auto: VICReg's own, as in its paper
        ({"method": "vicreg", "optimizer": "sgd"}, "sgd"),
        ({"method": "barlowtwins", "optimizer": "lars"}, "lars"),
    ],
)
def test_pretrain_hands_the_engine_the_resolved_optimizer(
    overrides: dict, optimizer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_of_a_run(overrides, tmp_path, monkeypatch).optimizer == optimizer


def test_optimizer_is_sgd_lars_or_auto() -> None:
    with pytest.raises(ParamsError, match="pretrain.optimizer") as refused:
        parse_params({"pretrain": {"optimizer": "adam"}})
    assert "'adam'" in str(refused.value) and "'lars'" in str(refused.value)


def test_compile_is_true_false_auto_networks_or_step() -> None:
    with pytest.raises(ParamsError, match="pretrain.compile") as refused:
        parse_params({"pretrain": {"compile": "yes please"}})
    assert "'yes please'" in str(refused.value) and "'step'" in str(refused.value)


def test_pretrain_refuses_a_method_that_needs_a_teacher_without_one(tmp_path: Path) -> None:
    params = parse_params({"pretrain": {"method": "distillation"}})
    with pytest.raises(PretrainError, match="pretrain.method 'distillation' needs a teacher"):
        pretrain.run(params.pretrain, params.data, tmp_path / "no-data", tmp_path / "out", tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_auto_crop_min_scale_is_the_methods_crop_scale(name: str) -> None:
    params = parse_params({"pretrain": {"method": name, "augment": {"crop_min_scale": "auto", "jitter_strength": 0.3}}})
    view = pretrain.view_config(method_class(name), params.pretrain, DataParams(image_size=48))
    assert view.crop_scale == method_class(name).crop_scale
    assert view.image_size == 48 and view.jitter_strength == 0.3


def test_explicit_crop_min_scale_overrides_the_methods() -> None:
    params = parse_params({"pretrain": {"method": "distillation", "augment": {"crop_min_scale": 0.3}}})
    assert pretrain.view_config(Distillation, params.pretrain, DataParams()).crop_scale == (0.3, 1.0)
    with pytest.raises(ParamsError, match=r"pretrain\.augment\.crop_min_scale = 0: must be 'auto' or in \(0, 1\]"):
        parse_params({"pretrain": {"augment": {"crop_min_scale": 0}}})


def test_dino_global_crops_take_data_image_size() -> None:
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")
    recipe = DINOConfig(hidden_dim=16, bottleneck_dim=8, output_dim=16, multicrop=MultiCropConfig(num_local_crops=2))
    method = build_method("dino", tiny_backbone(), recipe)
    params = parse_params({"pretrain": {"method": "dino"}})
    view = pretrain.view_config(DINO, params.pretrain, DataParams(image_size=64))
    views = method.train_transform(view, pretrain.normalization(DataParams(image_size=64)))(image)
    assert [v.shape[-1] for v in views] == [64, 64, 32, 32]
