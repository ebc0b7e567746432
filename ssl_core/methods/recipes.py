"""Every method's recipe: frozen dataclasses of its hyper-parameters, free of torch.

A recipe is what ``params.yaml`` says about a method (``pretrain.<name>``). They live
apart from the networks that use them so that the pipeline validates params.yaml
in a fraction of a second, without importing torch; each method module re-exports
its own recipe. Defaults are the lightly CIFAR-10 benchmark's unless a docstring
says otherwise; bad values fail when a recipe is built, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ssl_core.config_checks import require_positive, require_unit_interval

MAX_QUEUE_SIZE = 8192

# (dataset size below which, queue size): about a quarter to a half of the dataset,
# so that pseudo-classes are mostly other images, capped at 8192 as in LightlyTrain.
_QUEUE_BUCKETS = [
    (50, 16),
    (100, 32),
    (250, 64),
    (500, 128),
    (1_000, 256),
    (2_000, 512),
    (4_000, 1024),
    (10_000, 2048),
    (20_000, 4096),
]


def auto_queue_size(dataset_size: int) -> int:
    """Queue size scaled with the dataset size, at most 8192."""
    for limit, size in _QUEUE_BUCKETS:
        if dataset_size < limit:
            return size
    return MAX_QUEUE_SIZE


@dataclass(frozen=True)
class DistillationConfig:
    """Distillation v1 recipe (LightlyTrain).

    Attributes:
        temperature: softmax temperature of the pseudo-class logits.
        queue_size: number of queued teacher embeddings, or ``"auto"`` to scale it
            with the dataset (:func:`auto_queue_size`).
        mixup: mix each batch with a shuffled copy of itself.
        gradient_clip_norm: max gradient norm.
    """

    temperature: float = 0.07
    queue_size: int | Literal["auto"] = "auto"
    mixup: bool = True
    gradient_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        require_positive(self, "temperature", "gradient_clip_norm")
        if self.queue_size != "auto" and not 1 <= self.queue_size <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue_size = {self.queue_size!r}: must be 'auto' or an integer in [1, {MAX_QUEUE_SIZE}]")

    def resolved_queue_size(self, dataset_size: int) -> int:
        """The queue size for a dataset of ``dataset_size`` images."""
        return auto_queue_size(dataset_size) if self.queue_size == "auto" else self.queue_size


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR recipe; defaults are the lightly CIFAR-10 benchmark's but for two things: both views go
    through the network at once (see ``forward_per_view``), and the head's output has no BatchNorm
    (the head of lightly's 2023 benchmark ends with one; that of its 2021 benchmark has none at all).

    Attributes:
        temperature: NT-Xent temperature.
        projection_hidden_dim, projection_dim: widths of the 2-layer projection head.
        forward_per_view: pass each view through the backbone and head on its own, so that
            every BatchNorm normalizes a view with that view's batch statistics, as lightly's
            CIFAR-10 benchmark and solo-learn do. False (the default) passes both views at once,
            as the SimCLR paper (whose BatchNorm statistics span both views) and lightly's later
            ImageNet benchmarks do.
    """

    temperature: float = 0.5
    projection_hidden_dim: int = 512
    projection_dim: int = 128
    forward_per_view: bool = False

    def __post_init__(self) -> None:
        require_positive(self, "temperature", "projection_hidden_dim", "projection_dim")


@dataclass(frozen=True)
class MoCoConfig:
    """MoCo v2 recipe; defaults are the lightly CIFAR-10 benchmark's.

    Attributes:
        temperature: InfoNCE temperature (0.2 in MoCo v2 on ImageNet; 0.1 on CIFAR-10).
        memory_bank_size: number of negative keys kept (65536 on ImageNet; 4096 keeps
            the bank from going stale on the 50k images of CIFAR-10).
        momentum: EMA momentum of the key encoder (0.999 on ImageNet; 0.99 suits the
            far fewer steps per epoch of small datasets).
        projection_hidden_dim: hidden width of the 2-layer head (the ResNet-18 width).
        projection_dim: size of queries, keys and bank entries (128 in MoCo v2).
    """

    temperature: float = 0.1
    memory_bank_size: int = 4096
    momentum: float = 0.99
    projection_hidden_dim: int = 512
    projection_dim: int = 128

    def __post_init__(self) -> None:
        require_positive(self, "temperature", "memory_bank_size", "projection_hidden_dim", "projection_dim")
        require_unit_interval(self, "momentum")


@dataclass(frozen=True)
class SimSiamConfig:
    """SimSiam recipe; defaults are the lightly CIFAR-10 benchmark's for ResNet-18.

    That benchmark trains with SGD at a *fixed* lr of 0.06 (momentum 0.9, weight
    decay 5e-4, cosine decay): unlike its other methods, it does not scale the lr
    with the batch size ("no lr-scaling, results in better training stability");
    :class:`~ssl_core.methods.simsiam.SimSiam` says so with ``scales_lr_with_batch``.

    Attributes:
        projection_hidden_dim: width of the projection MLP's hidden layers.
        projection_dim: d, the size of z and p.
        projection_layers: linear layers of the projection MLP; 2 for CIFAR-size
            training as in the lightly benchmark, 3 in the paper's ImageNet recipe.
        prediction_hidden_dim: the predictor's bottleneck, d / 4 in the paper.
    """

    projection_hidden_dim: int = 2048
    projection_dim: int = 2048
    projection_layers: int = 2
    prediction_hidden_dim: int = 512

    def __post_init__(self) -> None:
        require_positive(self, "projection_hidden_dim", "projection_dim", "projection_layers", "prediction_hidden_dim")


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Barlow Twins recipe; defaults are the lightly CIFAR-10 benchmark's for ResNet-18.

    That benchmark trains with SGD at lr 0.06 * batch_size / 128 (momentum 0.9,
    weight decay 5e-4, cosine decay), the same linear scaling as its SimCLR. We
    train it with LARS (``BarlowTwins.optimizer``), as the paper does, at that lr:
    4 epochs on the CIFAR ResNet-18 gained +3.1 kNN points, where SGD lost 8.1
    (``benchmarks/results/cpu-cifar10-4epoch-barlowtwins-lars``).

    Under SGD, short schedules need a far smaller learning rate. The loss sums the d^2
    entries of the cross-correlation, so its gradients are about 1000x those of
    NT-Xent (measured at initialization: gradient norm 2627 vs 2.7). At lr 0.12
    the first step multiplies the conv weight norms by 20-35; BatchNorm makes
    the network blind to that scale, so every later step is effectively
    ~1000x smaller, and only weight decay over a long schedule recovers. The
    paper avoids this with LARS, which sizes each layer's step by its weight
    norm. Measured on 2,000 CIFAR-10 images: with a small conv net, 3 epochs at
    lr 1e-4 beat the random-init kNN by 2.8 points while every lr from 0.01 to
    0.24 ended below it (``tests/ssl_core/test_methods_learn.py``); with the CIFAR
    ResNet-18, 4 epochs at lr 3e-5 / 1e-4 / 1e-3 / 0.06 ended at +0.3 / -0.4 /
    -5.0 / -8.2 points (``benchmarks/results/cpu-cifar10-4epoch*``).

    Attributes:
        lambda_: weight of the redundancy-reduction term; 5e-3 in the paper.
        projection_hidden_dim: width of the projector's hidden layers.
        projection_dim: size of the embeddings whose cross-correlation is taken.
        projection_layers: linear layers of the projector; 2 for CIFAR-size training
            as in the lightly benchmark, 3 (of width 8192) in the paper's ImageNet recipe.
    """

    lambda_: float = 5e-3
    projection_hidden_dim: int = 2048
    projection_dim: int = 2048
    projection_layers: int = 2

    def __post_init__(self) -> None:
        require_positive(self, "lambda_", "projection_hidden_dim", "projection_dim", "projection_layers")


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg recipe: the paper's loss weights, the expander sized for a ResNet-18.

    Bardes, Ponce and LeCun, ICLR 2022, https://arxiv.org/abs/2105.04906. The paper's
    expander is 3 layers of 8192 on a ResNet-50 (2048-d features); for the 512-d
    ResNet-18 the CIFAR recipes in lightly's examples and solo-learn use 2048-wide
    layers.

    VICReg trains with LARS (``VICReg.optimizer``), as in the paper, at the same
    learning rate as the SGD methods. Its first gradient is on SimCLR's scale (a
    CIFAR ResNet-18 with each recipe's head: norm 28 vs SimCLR's 11 and Barlow
    Twins' 15,000; ``tests/ssl_core/test_vicreg.py``), but the loss is not
    scale-invariant: the covariance term grows with the fourth power of the
    embeddings' scale, so under SGD a step that enlarges them steepens the next one.
    With SGD (momentum 0.9) on 2,000 CIFAR-10 images and the small conv net of the
    learning test, 3 epochs gave kNN 0.298 / 0.306 / 0.305 / 0.285 / 0.268 at lr
    3e-4 / 1e-3 / 3e-3 / 0.01 / 0.02 (random init 0.252), and the loss became NaN
    within the first epoch at 0.03 and above. LARS moves each layer by a bounded
    fraction of its norm: on the CIFAR ResNet-18, 4 epochs at the lightly recipe's
    lr 0.06 gained +4.4 kNN points (SGD at 1e-3: -1.8; at 0.06: NaN;
    ``benchmarks/results/cpu-cifar10-4epoch-vicreg-lars``).

    Attributes:
        lambda_: weight of the invariance term (25 in the paper).
        mu: weight of the variance term (25 in the paper).
        nu: weight of the covariance term (1 in the paper).
        projection_hidden_dim: width of the expander's hidden layers.
        projection_dim: size of the embeddings the loss regularizes.
        projection_layers: linear layers of the expander (3 in the paper).
    """

    lambda_: float = 25.0
    mu: float = 25.0
    nu: float = 1.0
    projection_hidden_dim: int = 2048
    projection_dim: int = 2048
    projection_layers: int = 3

    def __post_init__(self) -> None:
        require_positive(self, "projection_hidden_dim", "projection_dim", "projection_layers")
        for name in ("lambda_", "mu", "nu"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be >= 0")


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL recipe; head sizes are the paper's and lightly's ``BYOL*Head`` defaults.

    Attributes:
        base_momentum: EMA momentum at step 0; it rises to 1.0 over the run (0.996 in
            the paper for ImageNet's long runs; 0.99, the lightly CIFAR-10 benchmark's
            constant momentum, lets the target move faster in short runs).
        projection_hidden_dim: hidden width of the projection MLP (4096 in the paper).
        projection_dim: size of projections and predictions (256 in the paper).
        prediction_hidden_dim: hidden width of the prediction MLP (4096 in the paper).
    """

    base_momentum: float = 0.99
    projection_hidden_dim: int = 4096
    projection_dim: int = 256
    prediction_hidden_dim: int = 4096

    def __post_init__(self) -> None:
        require_unit_interval(self, "base_momentum")
        require_positive(self, "projection_hidden_dim", "projection_dim", "prediction_hidden_dim")


@dataclass(frozen=True)
class MultiCropConfig:
    """DINO's multi-crop views (:func:`ssl_core.multicrop.multicrop_transform`).

    The two global crops take the side of the training images (``data.image_size``),
    so it is not a setting here.

    Attributes:
        local_size: side of the local crops, in pixels; None = half the global side
            (DINO's 96 px for 224 px is 0.43 of it; lightly's CIFAR-10 setting is 0.5).
        num_local_crops: number of local crops, >= 0.
        global_crop_scale: (min, max) area fraction of a global crop.
        local_crop_scale: (min, max) area fraction of a local crop.
        jitter_strength: s; brightness 0.8 s, contrast 0.8 s, saturation 0.4 s,
            hue 0.2 s (lightly's ``cj_strength``; 0.5 gives DINO's values).
        jitter_prob: probability of color jitter.
        grayscale_prob: probability of converting to grayscale.
        flip_prob: probability of a horizontal flip.
        blur_probs: Gaussian blur probability of (global crop 1, global crop 2, local
            crops); DINO's (1.0, 0.1, 0.5) is for 224 px images.
        solarize_prob: solarization probability of the second global crop.

    Raises:
        ValueError: on a size < 1, a negative crop count, a probability outside
            [0, 1] or a crop scale outside (0, 1].
    """

    local_size: int | None = None
    num_local_crops: int = 6  # lightly DINOTransform's default; the paper uses 6-10
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    jitter_strength: float = 0.5
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    flip_prob: float = 0.5
    blur_probs: tuple[float, float, float] = (0.0, 0.0, 0.0)  # no blur at 32 px
    solarize_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.local_size is not None and self.local_size < 1:
            raise ValueError(f"local_size = {self.local_size}: must be >= 1 (or None for half the global side)")
        if self.num_local_crops < 0:
            raise ValueError(f"num_local_crops = {self.num_local_crops}: must be >= 0")
        for name in ("global_crop_scale", "local_crop_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} = {(low, high)}: must satisfy 0 < min <= max <= 1")
        if len(self.blur_probs) != 3:
            raise ValueError(f"blur_probs = {self.blur_probs}: needs 3 values (global 1, global 2, local)")
        require_unit_interval(self, "jitter_prob", "grayscale_prob", "flip_prob", "solarize_prob")
        for i, p in enumerate(self.blur_probs):
            if not 0 <= p <= 1:
                raise ValueError(f"blur_probs[{i}] = {p!r}: must be in [0, 1]")

    @property
    def num_views(self) -> int:
        return 2 + self.num_local_crops

    def local_side(self, global_size: int) -> int:
        """Side of the local crops for global crops of ``global_size`` px."""
        return self.local_size if self.local_size is not None else max(1, global_size // 2)


@dataclass(frozen=True)
class DINOConfig:
    """DINO recipe: the paper's, with the head output scaled down for CIFAR-10.

    Schedules are fractions of the run, since methods see steps, not epochs.

    Attributes:
        hidden_dim: width of the head's 3-layer MLP.
        bottleneck_dim: output of the MLP, L2-normalized before the last layer.
        output_dim: K, the number of soft pseudo-classes.
        student_temperature: tau_s.
        warmup_teacher_temperature: tau_t at step 0.
        teacher_temperature: tau_t after the linear warm-up.
        warmup_fraction: share of the steps over which tau_t rises.
        center_momentum: m of the center's moving average.
        base_momentum: teacher EMA momentum at step 0; it rises to 1 on a cosine
            (the name BYOL's config uses).
        freeze_last_layer_fraction: share of the first steps during which the head's
            last layer gets no update.
        gradient_clip_norm: max global gradient norm, None for no clipping.
        multicrop: the views DINO trains on: 2 global + ``num_local_crops`` local crops.

    Raises:
        ValueError: on non-positive dims or temperatures, or a momentum or fraction
            outside [0, 1].
    """

    hidden_dim: int = 2048  # the paper's
    bottleneck_dim: int = 256  # the paper's
    output_dim: int = 2048  # lightly's CIFAR-10 benchmark; 65536 for ImageNet in the paper
    student_temperature: float = 0.1  # the paper's
    warmup_teacher_temperature: float = 0.04  # the paper's start value
    teacher_temperature: float = 0.07  # the paper's value after warm-up
    warmup_fraction: float = 0.15  # the paper's 30 epochs, as a share of a 200-epoch run
    center_momentum: float = 0.9  # the paper's
    base_momentum: float = 0.996  # the paper's, cosine to 1
    freeze_last_layer_fraction: float = 0.005  # the reference code's 1 epoch, of 200
    gradient_clip_norm: float | None = 3.0  # the reference code's clip_grad
    multicrop: MultiCropConfig = field(default_factory=MultiCropConfig)

    def __post_init__(self) -> None:
        require_positive(
            self,
            "hidden_dim",
            "bottleneck_dim",
            "output_dim",
            "student_temperature",
            "warmup_teacher_temperature",
            "teacher_temperature",
            "gradient_clip_norm",
        )
        require_unit_interval(self, "warmup_fraction", "center_momentum", "base_momentum", "freeze_last_layer_fraction")
