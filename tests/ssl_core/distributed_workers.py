"""What each process of ``test_distributed.py`` runs, and the fixed inputs it shares with the parent.

``torch.multiprocessing`` starts fresh interpreters that import the function they run by
module and name, so the workers live here rather than in the test module. Every worker
returns a dict that the parent process compares with one process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from ssl_core.augment import Normalization
from ssl_core.device_data import DeviceImages
from ssl_core.distributed import rank_seed
from ssl_core.engine import CHECKPOINT_NAME, StepInfo, TrainConfig, train
from ssl_core.losses import BarlowTwinsLoss, InfoNCELoss, NTXentLoss, VICRegLoss, next_center
from ssl_core.methods.dino import DINO
from ssl_core.methods.distillation import Distillation
from ssl_core.methods.moco import MoCo
from ssl_core.methods.recipes import DINOConfig, DistillationConfig, MoCoConfig, MultiCropConfig, SimCLRConfig
from ssl_core.methods.simclr import SimCLR
from tests.ssl_core.tiny import tiny_backbone

WORLD_SIZE = 2
BATCH = 8  # the whole batch; each rank holds BATCH / WORLD_SIZE rows
DIM = 16
IMAGE_SIDE = 4  # method steps: (BATCH, 3, 4, 4) images through a linear backbone
FEATURE_DIM = 8


def run_on_ranks(worker: Callable[..., dict], folder: Path, *args: Any) -> list[dict]:
    """``worker(*args)`` on WORLD_SIZE processes of a gloo group; their results, by rank."""
    mp.start_processes(_rank_main, args=(worker, folder, args), nprocs=WORLD_SIZE, start_method="spawn")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def _rank_main(rank: int, worker: Callable[..., dict], folder: Path, args: tuple) -> None:
    torch.set_num_threads(1)  # the processes share two cores
    # A file rendezvous in the test's own folder: no TCP port to race other test runs for.
    dist.init_process_group("gloo", init_method=(folder / "rendezvous").as_uri(), rank=rank, world_size=WORLD_SIZE)
    try:
        torch.save(worker(*args), folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a batch: rank r holds the r-th of WORLD_SIZE equal chunks."""
    return x.chunk(WORLD_SIZE)[dist.get_rank()]


# --- Losses and method steps: one fixed batch, whole on one process or split over the ranks.


def loss_cases() -> dict[str, tuple[Callable[..., torch.Tensor], list[torch.Tensor]]]:
    """Each loss with its (BATCH, DIM) inputs; InfoNCE against a fixed bank, the same on every rank."""
    generator = torch.Generator().manual_seed(0)

    def z() -> torch.Tensor:
        return torch.randn(BATCH, DIM, generator=generator)

    bank = torch.randn(3 * BATCH, DIM, generator=generator)
    return {
        "ntxent": (NTXentLoss(0.5), [z(), z()]),
        "infonce": (lambda query, key: InfoNCELoss(0.1)(query, key, bank), [z(), z()]),
        "barlowtwins": (BarlowTwinsLoss(), [z(), z()]),
        "vicreg": (VICRegLoss(), [z(), z()]),
    }


def loss_and_grads(loss: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> dict:
    """The loss of ``inputs`` and its gradient with respect to each of them."""
    leaves = [x.clone().requires_grad_() for x in inputs]
    value = loss(*leaves)
    value.backward()
    return {"loss": value.detach(), "grads": [leaf.grad for leaf in leaves]}


def teacher_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """A DINO center (1, K) and the teacher logits (BATCH, K) of a batch."""
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, DIM, generator=generator), torch.randn(BATCH, DIM, generator=generator)


def step_views(num_views: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(BATCH, 3, IMAGE_SIDE, IMAGE_SIDE, generator=generator) for _ in range(num_views)]


def linear_backbone() -> nn.Module:
    """No BatchNorm: its output for an image does not depend on the rest of the batch."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIDE * IMAGE_SIDE, FEATURE_DIM))


def moco_step(views: list[torch.Tensor]) -> dict:
    """One MoCo step: its loss, its memory bank after the step and its parameter gradients."""
    torch.manual_seed(0)
    config = MoCoConfig(memory_bank_size=3 * BATCH, projection_hidden_dim=16, projection_dim=8)
    method = MoCo(linear_backbone(), FEATURE_DIM, config)
    output = method.training_step(views)
    output.loss.backward()
    grads = [p.grad.clone() for p in method.trainable_parameters()]
    return {"loss": output.loss.detach(), "bank": method.memory_bank.clone(), "grads": grads}


def distillation_step(views: list[torch.Tensor]) -> dict:
    """One distillation step (no mixup): its loss, its queue after the step and its parameter gradients."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIDE * IMAGE_SIDE, 8))
    config = DistillationConfig(queue_size=3 * BATCH, mixup=False)
    method = Distillation(linear_backbone(), FEATURE_DIM, teacher, 8, config)
    output = method.training_step(views)
    output.loss.backward()
    grads = [p.grad.clone() for p in method.trainable_parameters()]
    return {"loss": output.loss.detach(), "queue": method.queue.clone(), "grads": grads}


def losses_on_shards() -> dict:
    """Every loss, DINO's center update and the MoCo and distillation steps on this rank's rows."""
    results: dict[str, Any] = {
        name: loss_and_grads(loss, [shard(x) for x in inputs]) for name, (loss, inputs) in loss_cases().items()
    }
    center, logits = teacher_logits()
    results["center"] = next_center(center, shard(logits), 0.9)
    results["moco"] = moco_step([shard(v) for v in step_views(2)])
    results["distillation"] = distillation_step([shard(v) for v in step_views(1)])
    results["rank_seed"] = rank_seed(12345)
    return results


# --- Training through the engine.

TRAIN_IMAGES = 65  # odd: one image sits each epoch out, so that both ranks run as many steps
TRAIN_SIDE = 16


def simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(tiny_backbone(16), 16, SimCLRConfig(projection_hidden_dim=32, projection_dim=16))


def tiny_dino(freeze_last_layer_fraction: float) -> DINO:
    torch.manual_seed(0)
    config = DINOConfig(
        multicrop=MultiCropConfig(num_local_crops=2),
        hidden_dim=32,
        bottleneck_dim=16,
        output_dim=64,
        freeze_last_layer_fraction=freeze_last_layer_fraction,
    )
    return DINO(tiny_backbone(16), 16, config)


def train_config(epochs: int, **settings: Any) -> TrainConfig:
    settings = {"checkpoint_interval_s": 0.0, **settings}  # a checkpoint after every epoch, for the resume tests
    return TrainConfig(epochs=epochs, batch_size=8, lr=0.1, warmup_epochs=1, seed=7, device="cpu", **settings)


class RecordingViews:
    """A method's BatchViews that remembers which images (by their first pixel) and which stream it rendered."""

    def __init__(self, views: Callable[[torch.Tensor, torch.Generator], list[torch.Tensor]]) -> None:
        self.views = views
        self.images: list[int] = []
        self.seeds: set[int] = set()

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        self.images += batch[:, 0, 0, 0].tolist()
        self.seeds.add(generator.initial_seed())
        return self.views(batch, generator)

    def compile(self) -> None:
        self.views.compile()


def device_images(method: SimCLR | DINO) -> DeviceImages:
    """Random uint8 images, the same on every rank; image i's first pixel is i, to tell them apart."""
    shape = (TRAIN_IMAGES, 3, TRAIN_SIDE, TRAIN_SIDE)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    images[:, 0, 0, 0] = torch.arange(TRAIN_IMAGES, dtype=torch.uint8)
    views = RecordingViews(method.batch_transform(method.view_config(TRAIN_SIDE), Normalization()))
    return DeviceImages(images, torch.full((TRAIN_IMAGES,), -1), views)


class NoisyPairs(Dataset):
    """Two noisy copies of each of a few fixed images (noise from the global RNG); remembers what it served."""

    def __init__(self, num_images: int) -> None:
        self.images = torch.randn(num_images, 3, TRAIN_SIDE, TRAIN_SIDE, generator=torch.Generator().manual_seed(3))
        self.served: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        self.served.append(index)
        image = self.images[index]
        return [image + 0.1 * torch.randn_like(image) for _ in range(2)], 0


class Interrupt(Exception):
    """Stands in for a crash in the middle of an epoch."""


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def train_on_ranks(folder: Path) -> dict:
    """SimCLR on DeviceImages (with an interrupted and resumed twin), on a DataLoader, and a DINO run."""
    saves: list[str] = []
    save = torch.save

    def counting_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(str(path))
        save(obj, path, *args, **kwargs)

    torch.save = counting_save
    try:
        method = simclr()
        data = device_images(method)
        history = train(method, data, train_config(epochs=2), folder / "simclr", fingerprint="ddp")
        results: dict[str, Any] = {
            "weights": weights(method),
            "losses": [e.loss for e in history.epochs],
            "images": data.views.images,
            "seeds": data.views.seeds,
            "saves": list(saves),
        }

        def crash_in_second_epoch(info: StepInfo) -> None:
            if info.epoch == 1 and info.step_in_epoch == 1:
                raise Interrupt

        interrupted = simclr()
        try:
            train(
                interrupted,
                device_images(interrupted),
                train_config(epochs=2),
                folder / "resumed",
                fingerprint="ddp",
                on_step=crash_in_second_epoch,
            )
        except Interrupt:
            pass
        resumed = simclr()  # a new process would rebuild the model from scratch
        history = train(
            resumed, device_images(resumed), train_config(epochs=2), folder / "resumed", resume=True, fingerprint="ddp"
        )
        results["resumed_weights"] = weights(resumed)
        results["resumed_from_epoch"] = history.resumed_from_epoch
    finally:
        torch.save = save
    results["checkpoint"] = torch.load(folder / "simclr" / CHECKPOINT_NAME, weights_only=True)

    # LARS's trust ratios come from the averaged gradients, so every rank takes the same step.
    method = simclr()
    train(method, device_images(method), train_config(epochs=1, optimizer="lars"), folder / "lars")
    results["lars_weights"] = weights(method)

    # Compiled inside DDP, the networks on their own or the whole step (NT-Xent's negatives gathered from the
    # other rank in it), and the views: the same training as the eager run above, up to rounding.
    for scope in ("networks", "step"):
        method = simclr()
        train(method, device_images(method), train_config(epochs=2, compile=scope), folder / f"compiled-{scope}")
        results[f"compiled_{scope}_weights"] = weights(method)

    method = simclr()
    pairs = NoisyPairs(66)
    train(method, pairs, train_config(epochs=1), folder / "loader")
    results["loader_weights"] = weights(method)
    results["loader_served"] = pairs.served

    # Half of the 4 steps with DINO's last layer frozen: DDP must skip it, then average it again.
    dino = tiny_dino(freeze_last_layer_fraction=0.5)
    initial = dino.head.last_layer_direction.detach().clone()
    frozen_after: list[bool] = []

    def last_layer_unchanged(info: StepInfo) -> None:
        frozen_after.append(torch.equal(dino.head.last_layer_direction, initial))

    train(dino, device_images(dino), train_config(epochs=1), folder / "dino", on_step=last_layer_unchanged)
    results["dino_weights"] = weights(dino)
    results["dino_last_layer_unchanged"] = frozen_after

    method = simclr()
    try:
        train(method, device_images(method), train_config(epochs=1, sync_batchnorm=True), folder / "sync")
        results["sync_batchnorm_error"] = None
    except ValueError as error:
        results["sync_batchnorm_error"] = str(error)
    return results
