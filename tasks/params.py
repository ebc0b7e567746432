"""The one typed schema of ``params.yaml``: a frozen section per pipeline stage.

Loaded and validated once, before any work. A bad value fails with a message that
names the key, the value and what is allowed, e.g.::

    params.yaml: pretrain.epochs = -1: must be >= 1
    params.yaml: pretrain.method = 'simclrr': must be one of 'distillation', 'simclr'

Derived values (the learning rate scaled by batch size, the queue size) are
computed where they are used, never written back here.

Loading is fast (no torch): ``sslpipe --help`` and a params error answer at once.
The one check that needs torchvision, whether a backbone name exists, runs when a
stage that trains starts (:func:`tasks.pretrain.check_training`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ssl_core.config_checks import PRECISION_SETTINGS
from ssl_core.curation.settings import QUALITY_ISSUES, SELECTION_STRATEGIES, QualityThresholds
from ssl_core.methods import METHOD_NAMES, RECIPES
from tasks.errors import UserError
from tasks.gate_metrics import GATE_CHOICES


def _forbid_unknown_keys(recipe: type) -> None:
    """Unknown keys in a recipe (and the dataclasses inside it) are errors, as everywhere else."""
    recipe.__pydantic_config__ = ConfigDict(extra="forbid")
    for field in dataclasses.fields(recipe):
        if isinstance(field.default_factory, type) and dataclasses.is_dataclass(field.default_factory):
            _forbid_unknown_keys(field.default_factory)


# The method recipes are ssl_core's frozen dataclasses, validated here as they are:
# one definition of each default.
for _recipe in RECIPES.values():
    _forbid_unknown_keys(_recipe)

DEFAULT_PARAMS_PATH = Path("params.yaml")


def _valid_device(value: str) -> str:
    if value not in ("auto", "cpu") and not value.startswith(("cuda", "mps")):
        raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'")
    return value


def _valid_precision(value: str) -> str:
    if value not in PRECISION_SETTINGS:
        raise ValueError(f"must be one of {', '.join(repr(p) for p in PRECISION_SETTINGS)}")
    return value


class _Section(BaseModel):
    # Frozen, and unknown keys are errors: a typo must not silently use a default.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class IngestParams(_Section):
    """Where the images come from.

    ``source`` is an image folder (class subfolders, or flat and unlabeled), a
    .tar/.tar.gz/.tgz/.zip archive, or, with ``format: torchvision-cifar10``, the root
    folder of torchvision's CIFAR10 (downloaded there when internet exists).
    """

    source: str = "data/default/cifar10-subset.tar.gz"
    format: Literal["auto", "folder", "archive", "torchvision-cifar10"] = "auto"
    # Split of images whose path names none (no train/test/val folder).
    default_split: str = "train"
    # Larger images are quarantined: protects against decompression bombs.
    max_image_pixels: int = Field(default=89_478_485, ge=1)


QualityThresholds.__pydantic_config__ = ConfigDict(extra="forbid")  # ssl_core's defaults, validated here

# What curate may drop: each is a check of the report (docs/curation.md).
DROP_REASONS = ("exact_duplicates", "near_duplicates", "leakage", *QUALITY_ISSUES, "outliers")


class NearDuplicateParams(_Section):
    # Neighbours of each image checked as candidates (ssl_core.curation.neighbors).
    neighbors: int = Field(default=10, ge=1)
    # Aligned pixel similarity (ssl_core.curation.alignment) from which a pair is the same shot.
    similarity: float = Field(default=0.88, gt=0, le=1)


class OutlierParams(_Section):
    neighbors: int = Field(default=10, ge=1)
    # Robust z-score of the mean distance to the nearest images, from which an image is an outlier.
    z: float = Field(default=5.0, gt=0)


class SelectionParams(_Section):
    # Images of the training split to pick for labeling; 0 picks none.
    size: int = Field(default=0, ge=0)
    strategy: Literal[SELECTION_STRATEGIES] = "typicality"  # type: ignore[valid-type]
    seed: int = 0


class SearchParams(_Section):
    # Up to this many images the neighbour search is exact; above, faiss IVF-SQ8.
    exact_up_to: int = Field(default=100_000, ge=1)
    nprobe: int = Field(default=16, ge=1)


class CurateParams(_Section):
    """Duplicates, leaks, quality problems, outliers, and what to drop or label (docs/curation.md)."""

    # pixels (offline, no model) | path/to/model.pt | models:/<name>@<alias> (e.g. last run's champion)
    embedder: str = "pixels"
    # Dropped by default: the checks that were right on every image we looked at. Not
    # overexposed: on CIFAR-10 most images it flags are white-background product shots.
    drop: tuple[str, ...] = ("exact_duplicates", "near_duplicates", "leakage", "dark", "low_information")
    # Whether drop applies to the test split too; by default the test split stays whole
    # (its problems are reported), so accuracies stay comparable across curations.
    drop_test_images: bool = False
    near_duplicates: NearDuplicateParams = NearDuplicateParams()
    # Test images whose aligned similarity to a training image reaches this are leaks.
    leakage_similarity: float = Field(default=0.88, gt=0, le=1)
    quality: QualityThresholds = Field(default_factory=QualityThresholds)
    outliers: OutlierParams = OutlierParams()
    selection: SelectionParams = SelectionParams()
    search: SearchParams = SearchParams()
    map_points: int = Field(default=3000, ge=0)  # points on the report's 2-D map; 0 draws none
    batch_size: int = Field(default=256, ge=1)  # for a model embedder
    device: str = "auto"
    precision: str = "auto"  # bf16-mixed where native, fp16-mixed on a V100/T4, else fp32 (resolve_precision)
    num_workers: int = Field(default=2, ge=0)  # processes decoding images

    _check_device = field_validator("device")(lambda cls, v: _valid_device(v))
    _check_precision = field_validator("precision")(lambda cls, v: _valid_precision(v))

    @field_validator("drop")
    @classmethod
    def _known_reasons(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [reason for reason in value if reason not in DROP_REASONS]
        if unknown:
            raise ValueError(f"unknown {unknown}; each must be one of {', '.join(DROP_REASONS)}")
        return value

    @field_validator("embedder")
    @classmethod
    def _named_embedder(cls, value: str) -> str:
        if not value:
            raise ValueError("must be 'pixels', a model.pt path or 'models:/<name>@<alias>'")
        return value


class AugmentParams(_Section):
    """SimCLR-style views (see ssl_core.augment.ViewConfig)."""

    # "auto": the method's own crops (SimCLR's 0.08; 0.14 for distillation, as LightlyTrain).
    crop_min_scale: float | Literal["auto"] = "auto"
    jitter_strength: float = Field(default=0.5, ge=0)
    jitter_prob: float = Field(default=0.8, ge=0, le=1)
    grayscale_prob: float = Field(default=0.2, ge=0, le=1)
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    blur_prob: float = Field(default=0.0, ge=0, le=1)

    @field_validator("crop_min_scale")
    @classmethod
    def _crop_range(cls, value: float | str) -> float | str:
        if value != "auto" and not 0 < value <= 1:
            raise ValueError("must be 'auto' or in (0, 1]")
        return value


class MonitorParams(_Section):
    """What a training run reports live to MLflow while it runs (tasks/live_tracking.py)."""

    # kNN top-1 after every epoch on a fixed sample of labeled images (ssl_core/knn_monitor.py):
    # this many bank images from the train split and query images from the test split
    # (the train split's other labeled images when the test split has none). 0 turns it off.
    knn_bank: int = Field(default=1000, ge=0)
    knn_queries: int = Field(default=500, ge=0)
    # Loss and learning rate every this many optimizer steps (epoch means are always logged).
    log_every_steps: int = Field(default=10, ge=1)
    # CPU, memory and GPU use, sampled by MLflow every few seconds.
    system_metrics: bool = True


class _TrainingSettings(_Section):
    """A pretraining run: method, backbone and optimization (the method recipes are added below)."""

    method: str = "distillation"
    backbone: str = Field(default="resnet18_cifar", min_length=1)
    epochs: int = Field(default=200, ge=1)
    # Images per step on each training process: the global batch is batch_size x processes.
    batch_size: int = Field(default=512, ge=2)
    # Training processes, one per GPU (DDP; tasks.pretrain.train_on_processes starts them with
    # torchrun's launcher). More than 1 needs as many visible GPUs, or the CPU (gloo, for tests).
    processes: int = Field(default=1, ge=1)
    # Peak lr = base_lr * batch_size * processes / 128 (linear scaling with the global batch,
    # Goyal et al. 2017) when scale_lr is true; base_lr as is when false. "auto": what the method
    # says (SSLMethod.scales_lr_with_batch; SimSiam keeps the lightly benchmark's fixed 0.06).
    base_lr: float = Field(default=0.06, gt=0)
    scale_lr: bool | Literal["auto"] = "auto"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=5e-4, ge=0)
    # sgd, or lars (SGD with layer-wise trust ratios; ssl_core/optimizers.py). "auto": what the
    # method says (SSLMethod.optimizer): SGD as in the lightly benchmark, LARS for Barlow Twins and VICReg.
    optimizer: Literal["auto", "sgd", "lars"] = "auto"
    warmup_epochs: int = Field(default=0, ge=0)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16-mixed where native, fp16-mixed on a V100/T4, else fp32 (resolve_precision)
    # torch.compile, and what of the step (ssl_core.engine.COMPILE_SCOPES), always with the device-side
    # view rendering: true or "networks", the method's networks each on its own (the backbone, and a
    # momentum or teacher network beside it); "step", the whole training step as one graph (heads and
    # loss too); false, nothing. "auto": networks on a single CUDA process, where an H200 trained a
    # SimCLR epoch 1.51x faster after ~35 s of compiling (benchmarks/README.md); off on the CPU (minutes
    # of compiling for a few epochs) and under DDP (compiled DDP trains like eager DDP on 2 CPU processes
    # over gloo, tests/ssl_core/test_distributed.py, but has not run over NCCL on GPUs here).
    compile: bool | Literal["auto", "networks", "step"] = "auto"
    num_workers: int = Field(default=1, ge=0)
    # Continue from the last epoch checkpoint of an interrupted run.
    resume: bool = True
    augment: AugmentParams = AugmentParams()
    monitor: MonitorParams = MonitorParams()

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHOD_NAMES:
            raise ValueError(f"must be one of {', '.join(repr(m) for m in METHOD_NAMES)}")
        return value

    _check_device = field_validator("device")(lambda cls, v: _valid_device(v))
    _check_precision = field_validator("precision")(lambda cls, v: _valid_precision(v))

    @property
    def recipe(self) -> Any:
        """The recipe of ``method`` (its section, e.g. ``pretrain.simclr``)."""
        return getattr(self, self.method)


# One section per method, named and typed by ssl_core.methods.RECIPES: a new method
# needs no change here. Only the section of ``method`` is used.
TrainingParams = create_model(
    "TrainingParams",
    __base__=_TrainingSettings,
    __doc__="""A pretraining run: method, backbone, optimization, and every method's recipe.

    Defaults are the lightly CIFAR-10 benchmark recipe (ResNet-18 CIFAR variant,
    SGD momentum 0.9, weight decay 5e-4, lr 0.06 x batch/128 with cosine decay,
    batch 512, 200 epochs); the shipped params.yaml shortens the schedule so the
    demo runs on a 2-core CPU.
    """,
    **{name: (recipe, Field(default_factory=recipe)) for name, recipe in RECIPES.items()},
)


class TeacherParams(TrainingParams):
    """The frozen teacher for ``distillation``.

    ``source``:
      * ``pretrain``: pretrain this teacher here with ``method`` (default; offline).
      * a path to an embedding-model file (``model.pt`` from a pretrain run).
      * ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a model
        registered in MLflow by the register stage.
      * ``dinov2:<model>``, e.g. ``dinov2:dinov2_vitb14``: DINOv2 from torch.hub
        (needs internet).
    """

    source: str = "pretrain"
    method: str = "simclr"
    # Input side for DINOv2 teachers (a multiple of 14).
    dinov2_image_size: int = Field(default=224, ge=14)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not value:
            raise ValueError("must be 'pretrain', a model.pt path, 'models:/name@alias' or 'dinov2:<model>'")
        return value


class DataParams(_Section):
    """How images are fed to every network (training, evaluation, export, serving)."""

    image_size: int = Field(default=32, ge=8)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    train_split: str = "train"
    test_split: str = "test"

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value


class EvaluateParams(_Section):
    """Label-free metrics always; kNN and a linear probe on whichever images have labels (tasks/evaluate)."""

    k: int = Field(default=200, ge=1)
    temperature: float = Field(default=0.1, gt=0)
    # Logistic regression on the frozen embeddings of the kNN bank, tested on the kNN queries.
    linear_probe: bool = True
    # When the test split has no labels: this share of the labeled train images (per class) become the queries.
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    # RankMe on at most this many train images (the RankMe paper's 25,600).
    rankme_images: int = Field(default=25_600, ge=2)
    # Train images whose two augmented views give alignment and uniformity.
    view_pairs: int = Field(default=1024, ge=2)
    # Draws the held-out queries, the image samples and their views.
    seed: int = 0
    batch_size: int = Field(default=256, ge=1)
    # The random-init baseline uses this seed for its weights.
    baseline_seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16-mixed where native, fp16-mixed on a V100/T4, else fp32 (resolve_precision)
    num_workers: int = Field(default=1, ge=0)

    _check_device = field_validator("device")(lambda cls, v: _valid_device(v))
    _check_precision = field_validator("precision")(lambda cls, v: _valid_precision(v))


class ExportParams(_Section):
    """ONNX export checked against PyTorch, optionally quantized to int8 (tasks/export.py, ssl_core/quantize.py)."""

    opset: int = Field(default=18, ge=13)
    # Max |ONNX - PyTorch| allowed on the check images; the stage fails above it.
    tolerance: float = Field(default=1e-4, gt=0)
    num_check_images: int = Field(default=64, ge=1)
    # int8: model.onnx (registered, served) is the static int8 quantization; the fp32 one stays as model.fp32.onnx.
    quantize: Literal["none", "int8"] = "none"
    # Training images whose activations set the int8 ranges.
    calibration_images: int = Field(default=256, ge=1)
    # How a range is drawn from them (ssl_core.quantize.CALIBRATION_METHODS).
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    # The stage fails if int8 loses more kNN top-1 than this against fp32 (0.01 = 1 point).
    max_knn_drop: float = Field(default=0.01, ge=0, le=1)
    # The kNN comparison (evaluate's k and temperature) on at most this many labeled bank and query images.
    knn_bank: int = Field(default=5000, ge=1)
    knn_queries: int = Field(default=1000, ge=1)


class RegisterParams(_Section):
    experiment: str = "ssl-pipeline"
    model_name: str = "ssl-embedder"
    # What decides promotion (tasks.gate_metrics, tasks.promotion): auto = kNN top-1 when the evaluation had
    # labels, RankMe when it had none; or knn_top1 | linear_top1 | rankme | uniformity (docs/evaluation.md).
    metric: Literal[GATE_CHOICES] = "auto"  # type: ignore[valid-type]
    # The challenger becomes champion only if its gate metric beats the champion's by this
    # (in the metric's units: accuracy for top-1, dimensions for RankMe).
    champion_margin: float = Field(default=0.0, ge=0)


class ServeParams(_Section):
    """The embedding server (``sslpipe serve``, :mod:`tasks.serve`): limits, dynamic batching, alias watching."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Request body limit (base64 included): larger uploads get 413 before they are read.
    max_upload_mb: float = Field(default=10.0, gt=0)
    max_images_per_request: int = Field(default=64, ge=1)
    # Images in one ONNX run: requests waiting together share it (a larger request is split).
    max_batch_size: int = Field(default=32, ge=1)
    # Longest a batch waits for requests still being decoded; a batch never waits when none are.
    max_batch_wait_ms: float = Field(default=5.0, ge=0, le=1000)
    # Requests admitted and not yet handed to the model; one more gets 429 with Retry-After.
    max_queued_requests: int = Field(default=128, ge=1)
    # A request not answered in this time gets 503 with Retry-After (the server is busy, not broken).
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Threads decoding and preprocessing images, beside the one inference thread.
    decode_threads: int = Field(default=2, ge=1)
    # onnxruntime threads per inference; 0 = the cores this process may run on (taskset respected).
    inference_threads: int = Field(default=0, ge=0)
    # Serving models:/<name>@<alias>: seconds between checks of where the alias points; 0 = never.
    alias_poll_seconds: float = Field(default=30.0, ge=0)
    # One log line per request (uvicorn's access log); /metrics counts them either way.
    access_log: bool = False


class Params(_Section):
    """All of params.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    data: DataParams = DataParams()
    ingest: IngestParams = IngestParams()
    curate: CurateParams = CurateParams()
    teacher: TeacherParams = TeacherParams()
    pretrain: TrainingParams = TrainingParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    # "register" would shadow BaseModel.register (ABC); the YAML key stays "register".
    registry: RegisterParams = Field(default=RegisterParams(), alias="register")
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.data.train_split == self.data.test_split:
            raise ValueError(
                f"data.train_split and data.test_split are both {self.data.train_split!r}; they must differ"
            )
        return self


class ParamsError(UserError, ValueError):
    """params.yaml is invalid; the message lists every bad key."""


def load_params(path: Path = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> Params:
    """Reads and validates params.yaml.

    Args:
        path: the YAML file.
        overrides: dotted keys to replace, e.g. ``{"pretrain.epochs": 1}``.

    Raises:
        ParamsError: naming each bad key, its value and what is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_params(raw, source=str(path))


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, raw, source)) from None


def format_validation_error(error: ValidationError, raw: dict[str, Any], source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{source}: unknown key {key!r} (check the spelling; see README for the keys)")
        elif item["type"] == "missing":
            lines.append(f"{source}: {key} is required")
        elif isinstance(item.get("input"), dict):
            # A whole section failed its own check; the message names the field.
            lines.append(f"{source}: {key}: {message}")
        else:
            lines.append(f"{source}: {key} = {item.get('input')!r}: {message}")
    return "\n".join(lines)


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ParamsError(f"override {dotted}: {part} is not a section")
    node[leaf] = value
