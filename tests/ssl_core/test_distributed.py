"""Two processes (DDP over gloo, on CPU) against one process on the concatenated batch.

Each module fixture spawns the two processes once (they run
``tests/ssl_core/distributed_workers.py``); the tests compare what they computed
with a single process. Losses: each rank holds half of a fixed batch; the mean of
the ranks' losses must be the loss of the whole batch, and the gradients the
optimizer sees must be the whole batch's. Training: the ranks must end in the same
state, each having trained on its own shard, and resume exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ssl_core.distributed import is_distributed
from ssl_core.engine import CHECKPOINT_NAME, train
from ssl_core.losses import next_center
from tests.ssl_core.distributed_workers import (
    TRAIN_IMAGES,
    WORLD_SIZE,
    device_images,
    distillation_step,
    loss_and_grads,
    loss_cases,
    losses_on_shards,
    moco_step,
    run_on_ranks,
    simclr,
    step_views,
    teacher_logits,
    train_config,
    train_on_ranks,
)

STEPS_PER_EPOCH = 4  # 65 images, 32 per rank, batches of 8
IMAGES_PER_EPOCH = STEPS_PER_EPOCH * 8


@pytest.fixture(scope="module")
def shard_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return run_on_ranks(losses_on_shards, tmp_path_factory.mktemp("losses"))


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("training")
    return folder, run_on_ranks(train_on_ranks, folder, folder)


def optimizer_sees(rank_grads: list[torch.Tensor]) -> torch.Tensor:
    """The input gradient the optimizer acts on, from each rank's gradient of its own rows.

    A rank's rows receive the gradients of every rank's loss (the all-gather's backward
    sums them), and DDP divides the parameter gradients by the world size: the optimizer
    sees d(mean of the ranks' losses), which for the rows of rank r is grad_r / WORLD_SIZE.
    """
    return torch.cat(rank_grads) / WORLD_SIZE


def mean_over_ranks(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean(dim=0)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("name", list(loss_cases()))
def test_loss_and_gradients_are_those_of_the_whole_batch(name: str, shard_results: list[dict]) -> None:
    loss, inputs = loss_cases()[name]
    expected = loss_and_grads(loss, inputs)
    ranks = [result[name] for result in shard_results]
    torch.testing.assert_close(mean_over_ranks([r["loss"] for r in ranks]), expected["loss"])
    for i, grad in enumerate(expected["grads"]):
        torch.testing.assert_close(optimizer_sees([r["grads"][i] for r in ranks]), grad)


def test_dino_center_follows_the_whole_batch_on_every_rank(shard_results: list[dict]) -> None:
    center, logits = teacher_logits()
    expected = next_center(center, logits, 0.9)
    for result in shard_results:
        torch.testing.assert_close(result["center"], expected)


@pytest.mark.parametrize(
    ("name", "step", "num_views", "state"),
    [("moco", moco_step, 2, "bank"), ("distillation", distillation_step, 1, "queue")],
)
def test_queues_receive_every_ranks_keys(name: str, step, num_views: int, state: str, shard_results) -> None:
    """MoCo's memory bank and the distillation queue: equal on all ranks, as one process's after the whole batch."""
    expected = step(step_views(num_views))
    ranks = [result[name] for result in shard_results]
    assert torch.equal(ranks[0][state], ranks[1][state])
    torch.testing.assert_close(ranks[0][state], expected[state])
    torch.testing.assert_close(mean_over_ranks([r["loss"] for r in ranks]), expected["loss"])
    # DDP averages the parameter gradients over the ranks.
    for i, grad in enumerate(expected["grads"]):
        torch.testing.assert_close(mean_over_ranks([r["grads"][i] for r in ranks]), grad)


def test_rank_0_keeps_the_seed_and_the_others_get_their_own(shard_results: list[dict]) -> None:
    seeds = [result["rank_seed"] for result in shard_results]
    assert seeds[0] == 12345 and len(set(seeds)) == WORLD_SIZE


def test_ranks_end_in_the_same_state(training: tuple[Path, list[dict]]) -> None:
    """Weights through DDP's averaged gradients; BatchNorm statistics averaged before each checkpoint."""
    _, (first, second) = training
    for key in (
        "weights",
        "loader_weights",
        "dino_weights",
        "lars_weights",
        "compiled_networks_weights",
        "compiled_step_weights",
    ):
        assert_same_state(first[key], second[key])
    assert first["losses"] == second["losses"]  # the epoch losses are means over the ranks


@pytest.mark.parametrize("scope", ["networks", "step"])
def test_a_compiled_run_on_two_ranks_trains_like_the_eager_one(scope: str, training: tuple[Path, list[dict]]) -> None:
    """torch.compile inside DDP: the backbone and the views (``compile: true`` with ``processes: 2``), or the
    whole step, whose NT-Xent gathers the other rank's projections with their gradients."""
    _, ranks = training
    for result in ranks:
        for key, eager in result["weights"].items():
            compiled = result[f"compiled_{scope}_weights"][key]
            torch.testing.assert_close(
                compiled, eager, atol=1e-3, rtol=1e-3, msg=lambda detail, key=key: f"{key}: {detail}"
            )


def test_each_rank_trains_on_its_own_shard_with_its_own_augmentations(training: tuple[Path, list[dict]]) -> None:
    _, ranks = training
    device_shards = [set(r["images"][:IMAGES_PER_EPOCH]) for r in ranks]  # the first epoch's images
    loader_shards = [set(r["loader_served"]) for r in ranks]
    for shards in (device_shards, loader_shards):
        assert [len(s) for s in shards] == [IMAGES_PER_EPOCH] * WORLD_SIZE
        assert not shards[0] & shards[1]
    assert len(device_shards[0] | device_shards[1]) == WORLD_SIZE * IMAGES_PER_EPOCH <= TRAIN_IMAGES
    assert not ranks[0]["seeds"] & ranks[1]["seeds"]  # the views' random streams


def test_only_rank_0_writes_the_checkpoint(training: tuple[Path, list[dict]]) -> None:
    folder, (first, second) = training
    assert len(first["saves"]) == 2 and second["saves"] == []  # one per epoch
    assert [p.name for p in (folder / "simclr").iterdir()] == [CHECKPOINT_NAME]
    checkpoint = first["checkpoint"]
    assert checkpoint["epoch"] == 2 and checkpoint["world_size"] == WORLD_SIZE
    assert_same_state(checkpoint["method"], first["weights"])


def test_resume_on_two_ranks_is_exact(training: tuple[Path, list[dict]]) -> None:
    _, ranks = training
    for result in ranks:
        assert result["resumed_from_epoch"] == 1
        assert_same_state(result["resumed_weights"], result["weights"])


def test_dino_last_layer_sits_out_its_frozen_steps(training: tuple[Path, list[dict]]) -> None:
    """No gradient at all (not a zero one, which weight decay would act on) while frozen, then averaged again."""
    _, ranks = training
    for result in ranks:
        assert result["dino_last_layer_unchanged"] == [True, True, False, False]


def test_sync_batchnorm_is_refused_without_cuda(training: tuple[Path, list[dict]]) -> None:
    _, ranks = training
    for result in ranks:
        assert "CUDA" in result["sync_batchnorm_error"]


def test_a_group_of_one_process_trains_as_no_group(tmp_path: Path) -> None:
    """torchrun --nproc_per_node=1: no DDP, no sharding, the single-process result bit for bit."""
    alone = simclr()
    train(alone, device_images(alone), train_config(epochs=1), tmp_path / "alone")
    dist.init_process_group("gloo", init_method=(tmp_path / "rendezvous").as_uri(), rank=0, world_size=1)
    try:
        assert not is_distributed()
        grouped = simclr()
        train(grouped, device_images(grouped), train_config(epochs=1), tmp_path / "grouped")
    finally:
        dist.destroy_process_group()
    assert_same_state(alone.state_dict(), grouped.state_dict())
