"""The benchmark script runs end to end on a tiny subset and writes its figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks import label_free_vs_knn, lightly_benchmark, summarize
from benchmarks.benchmark_data import DATASETS
from benchmarks.lightly_benchmark import main
from benchmarks.lightly_reference import LIGHTLY_CIFAR10_BACKBONE, import_lightly
from ssl_core.backbones import build_backbone
from ssl_core.engine import CHECKPOINT_NAME
from ssl_core.manifest import sha256_file
from ssl_core.methods.factory import build_method
from ssl_core.model_file import load_embedding_model, save_embedding_model
from tests.datasets import cut_cifar10

TRAIN_PER_CLASS = 8
TEST_PER_CLASS = 4
# torchvision's ResNet-18 at 32 px: its ImageNet stem leaves 8x8 maps, 16x fewer FLOPs than the benchmark's
# resnet18_cifar for the same 512-d features. What these tests check is the script, not the network
# (lightly's own network is the exception, below).
BACKBONE = "resnet18"


@pytest.fixture
def datasets_dir(tmp_path: Path) -> Path:
    """A ``--datasets`` folder whose CIFAR-10 archive has the benchmark's name and layout.

    It holds twice the images the test selects, so the script's own class-balanced
    selection is exercised too.
    """
    spec = DATASETS["cifar10"]
    cut_cifar10(tmp_path / "datasets" / spec.archive, 2 * TRAIN_PER_CLASS, 2 * TEST_PER_CLASS, top=spec.top)
    return tmp_path / "datasets"


def run_benchmark(tmp_path: Path, datasets_dir: Path, *options: str) -> None:
    """The script on the tiny subset; a ``--backbone`` in ``options`` replaces :data:`BACKBONE`."""
    main(
        [
            "--dataset",
            "cifar10",
            "--backbone",
            BACKBONE,
            "--batch-size",
            "32",
            "--lr",
            "0.02",
            "--train-per-class",
            str(TRAIN_PER_CLASS),
            "--test-per-class",
            str(TEST_PER_CLASS),
            "--num-workers",
            "0",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--datasets",
            str(datasets_dir),
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            *options,
        ]
    )


def test_methods_run_in_separate_calls_add_up_to_one_table(tmp_path: Path, datasets_dir: Path) -> None:
    """As on a GPU machine with a time limit per call: one method per call, results merged."""
    out = tmp_path / "out"
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "1")
    # Distillation's teacher: the SimCLR of the first call.
    run_benchmark(tmp_path, datasets_dir, "--methods", "distillation", "--epochs", "1")
    report = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in report["results"]] == ["simclr", "distillation"]
    assert len(report["header"]["commands"]) == 2 and "--methods distillation" in report["header"]["commands"][1]
    assert report["header"]["train_images"] == 10 * TRAIN_PER_CLASS
    assert report["header"]["test_images"] == 10 * TEST_PER_CLASS
    assert report["header"]["label_free_pairs"] == 10 * TRAIN_PER_CLASS  # the default 1024, capped at the split
    random_init = report["results"][0]["random_init"]
    for result in report["results"]:
        assert len(result["knn_per_epoch"]) == 1 and 0.0 <= result["final_knn_top1"] <= 1.0
        # Every evaluation records the label-free scores next to kNN, within their ranges (512-d ResNet-18).
        [epoch] = result["per_epoch"]
        assert epoch["epoch"] == 1 and epoch["knn_top1"] == result["final_knn_top1"]
        assert 1.0 <= epoch["rankme"] <= 10 * TRAIN_PER_CLASS and 0.0 <= epoch["alignment"] <= 4.0
        assert -4.0 <= epoch["uniformity"] <= 0.0
        # One random init per run, the same backbone and sample whichever call measured it.
        assert result["random_init"] == pytest.approx(random_init)
        assert result["random_init"]["knn_top1"] == result["random_init_knn_top1"]
        assert result["best_knn_top1"] == result["final_knn_top1"] and result["train_seconds"] > 0
        # Wall time holds the epoch's training and its evaluation, and more (building, the checkpoint, saving).
        assert result["calls"] == 1
        assert result["wall_seconds"] > result["train_seconds"] + result["per_epoch"][0]["eval_seconds"]
        assert result["lr"] == 0.02  # --lr overrides the lightly recipe's 0.06 x 32/128
        # Per-method peak RSS from /proc: at least the ~0.3 GB that torch itself occupies.
        assert 0.2 < result["peak_host_memory_gb"] <= report["header"]["peak_host_memory_gb"]
    table = (out / "results.md").read_text()
    assert "| simclr | 1 | 0.02 |" in table and "| distillation | 1 | 0.02 |" in table
    assert f"| {report['results'][0]['wall_seconds']:.0f} s (1 call) |" in table
    setup_seconds = report["header"]["setup_seconds"]
    assert f"set-up (extracting and decoding the data, the random-init evaluation), {setup_seconds:.0f} s" in table
    assert f"| {report['results'][0]['per_epoch'][0]['rankme']:.1f} |" in table  # final RankMe column

    with pytest.raises(SystemExit):  # another setup in the same --out would mix incomparable numbers
        run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "2")
    assert json.loads((out / "results.json").read_text()) == report

    # A resumed run trains nothing more and takes each epoch's scores from the method's log.
    log_path = tmp_path / "work" / "cifar10" / "runs" / "simclr" / "knn_per_epoch.json"
    log = json.loads(log_path.read_text())
    log["1"]["rankme"] = 123.0
    log_path.write_text(json.dumps(log))
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "1")
    resumed = json.loads((out / "results.json").read_text())["results"][0]
    assert resumed["per_epoch"] == [{**report["results"][0]["per_epoch"][0], "rankme": 123.0}]
    # The checkpoint keeps each epoch's training time; the call trained nothing, so it measured no memory.
    assert resumed["train_seconds"] == report["results"][0]["train_seconds"]
    # Nor does it add to the wall time: that is still the one call that trained.
    assert (resumed["wall_seconds"], resumed["calls"]) == (report["results"][0]["wall_seconds"], 1)
    assert resumed["peak_host_memory_gb"] is None

    # The distillation benchmark's report also names a dataset, but its rows are models, not methods' kNN curves.
    distillation = tmp_path / "distillation" / "results.json"
    distillation.parent.mkdir()
    distillation.write_text(json.dumps({"header": {"dataset": "cifar10"}, "results": [{"role": "teacher"}]}))
    summarize.main(["--results", str(tmp_path)])  # the overview of every run folder under tmp_path
    overview = (tmp_path / "README.md").read_text()
    simclr = report["results"][0]
    gain = simclr["final_knn_top1"] - simclr["random_init_knn_top1"]
    assert f"| simclr | {simclr['final_knn_top1']:.3f} ({gain:+.3f}) | 0.848 |" in overview
    assert (out / "knn_per_epoch.png").read_bytes().startswith(b"\x89PNG")
    assert not (distillation.parent / "knn_per_epoch.png").exists()


def scores(knn_top1: float) -> dict[str, float]:
    """Label-free scores that all move with kNN: RankMe up, uniformity down (better), alignment up (worse)."""
    return {"knn_top1": knn_top1, "rankme": 100 * knn_top1, "alignment": knn_top1, "uniformity": -5 * knn_top1}


def hand_made_run(path: Path) -> Path:
    """A results.json whose checkpoints' kNN top-1 are known; byol's last epoch is within 1 point of simclr's."""
    trajectories = {"simclr": [0.20, 0.30, 0.40], "byol": [0.25, 0.35, 0.405], "moco": [0.15]}
    header = {"dataset": "cifar10", "backbone": "resnet18_cifar", "train_images": 80, "test_images": 40}
    header |= {"epochs": 3, "device": "CPU", "commands": ["python benchmarks/lightly_benchmark.py --epochs 3"]}
    results = [
        {
            "method": method,
            "random_init": scores(0.10),
            "per_epoch": [{"epoch": e, **scores(knn)} for e, knn in enumerate(knn_per_epoch, start=1)],
        }
        for method, knn_per_epoch in trajectories.items()
    ]
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"header": header, "results": results}))
    return path / "results.json"


def test_distillation_resumes_only_from_the_same_teacher_weights(tmp_path: Path, datasets_dir: Path) -> None:
    """A later call may find a retrained teacher (or another best method) where the old one was: it distils afresh."""
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr,distillation", "--epochs", "1")
    work_dir = tmp_path / "work" / "cifar10"  # the script keeps each dataset's runs apart
    checkpoint = work_dir / "runs" / "distillation" / "checkpoints" / CHECKPOINT_NAME
    distilled_from_first = checkpoint.stat().st_mtime_ns
    run_benchmark(tmp_path, datasets_dir, "--methods", "distillation", "--epochs", "1")
    assert checkpoint.stat().st_mtime_ns == distilled_from_first  # the same teacher: finished, nothing retrained

    teacher_file = lightly_benchmark.trained_model_path(argparse.Namespace(work_dir=work_dir), "simclr")
    _, info = load_embedding_model(teacher_file)
    torch.manual_seed(1)
    save_embedding_model(teacher_file, build_backbone(info.backbone).module, info)  # other weights, same path
    run_benchmark(tmp_path, datasets_dir, "--methods", "distillation", "--epochs", "1")
    assert checkpoint.stat().st_mtime_ns != distilled_from_first
    assert f"-teacher-{sha256_file(teacher_file)}" in torch.load(checkpoint, weights_only=True)["fingerprint"]


def test_label_free_vs_knn_on_scores_with_known_correlations(tmp_path: Path) -> None:
    out = tmp_path / "analysis"
    label_free_vs_knn.main(["--results", str(hand_made_run(tmp_path / "run")), "--out", str(out)])
    analysis = json.loads((out / "results.json").read_text())
    # The random init once, then 3 + 3 + 1 epochs.
    assert len(analysis["points"]) == 8 and analysis["points"][0]["method"] == "random init"
    overall = analysis["correlations"]["all checkpoints"]
    assert overall["rankme"]["spearman"] == pytest.approx(1.0) and overall["rankme"]["kendall"] == pytest.approx(1.0)
    assert overall["uniformity"]["spearman"] == pytest.approx(1.0)  # -uniformity rises with kNN
    assert overall["alignment"]["spearman"] == pytest.approx(-1.0)  # -alignment falls as kNN rises
    simclr = analysis["per_method"]["simclr"]
    assert simclr["rankme"]["n"] == 4 and simclr["alignment"]["spearman"] == pytest.approx(-1.0)
    assert analysis["per_method"]["moco"]["rankme"]["spearman"] is None  # two points rank nothing

    pairwise = analysis["pairwise"]
    # 8 points make 28 pairs; simclr's 0.40 and byol's 0.405 are within the 1-point gap.
    everything = pairwise["all checkpoints"]
    assert everything["rankme"] == {"pairs": 27, "agree": 27, "ties": 0, "fraction": 1.0}
    assert everything["alignment"]["fraction"] == 0.0
    # Final checkpoints: simclr-moco and byol-moco; simclr-byol is too close to call.
    assert pairwise["final checkpoints of different methods"]["rankme"]["pairs"] == 2
    # Without the random init: 7 points, 21 pairs, the same one too close.
    assert pairwise["trained checkpoints"]["rankme"]["pairs"] == 20
    assert analysis["correlations"]["trained checkpoints"]["rankme"]["n"] == 7
    # Random init against each of the 7 checkpoints, plus 3 epoch pairs within simclr and 3 within byol.
    assert pairwise["one method's checkpoints and the random init"]["uniformity"]["pairs"] == 13
    assert pairwise["one method's epochs"]["uniformity"]["pairs"] == 6

    table = (out / "results.md").read_text()
    assert "| all checkpoints | RankMe | 8 | +1.00 (" in table
    assert "| trained checkpoints | -alignment | 7 | -1.00 (" in table
    assert "python benchmarks/lightly_benchmark.py --epochs 3" in table  # the benchmark's command, then this one's
    assert (out / "label_free_vs_knn.png").read_bytes().startswith(b"\x89PNG")


def test_a_diverged_method_is_reported_and_the_others_still_run(
    tmp_path: Path, datasets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverge(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("Loss became nan in epoch 1; lower the learning rate.")

    monkeypatch.setattr(lightly_benchmark, "train", diverge)
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr,moco", "--epochs", "1")
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["results"] == []
    assert report["header"]["failed"] == {
        m: "Loss became nan in epoch 1; lower the learning rate. (lr 0.02)" for m in ("simclr", "moco")
    }
    assert "**moco failed** and has no result: Loss became nan" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize(("dataset", "views", "local_side"), [("cifar10", 2, None), ("imagenette", 8, 64)])
def test_dino_trains_on_the_crops_of_lightlys_benchmark(dataset: str, views: int, local_side: int | None) -> None:
    """CIFAR-10: 2 global crops only (lightly's n_local_views=0); Imagenette: 6 more local crops of half the side."""
    spec = DATASETS[dataset]
    dino = build_method("dino", build_backbone(spec.backbone, spec.image_size), lightly_benchmark.recipe("dino", spec))
    specs = dino.view_specs(dino.view_config(spec.image_size, blur_prob=spec.blur_prob))
    assert dino.num_views == len(specs) == views
    assert {s.size for s in specs[2:]} == ({local_side} if local_side else set())


@pytest.mark.parametrize(
    ("method", "option", "optimizer"),
    [("simclr", "auto", "sgd"), ("vicreg", "auto", "lars"), ("barlowtwins", "sgd", "sgd"), ("simclr", "lars", "lars")],
)
def test_optimizer_is_the_methods_own_unless_named(method: str, option: str, optimizer: str) -> None:
    """``--optimizer auto`` trains each method as the product does; ``sgd`` reproduces the lightly recipe."""
    settings = {
        "device": "cpu",
        "precision": "fp32",
        "num_workers": 0,
        "compile": "off",
        "compile_mode": None,
        "optimizer": option,
    }
    args = argparse.Namespace(lr=None, batch_size=512, epochs=1, seed=0, **settings)
    config = lightly_benchmark.train_config(args, method)
    assert config.optimizer == optimizer
    assert config.lr == pytest.approx(0.24)  # the lightly recipe's lr either way


def test_simclrs_per_view_forward_trains_as_a_setup_of_its_own(tmp_path: Path, datasets_dir: Path) -> None:
    """``--simclr-forward per-view``, lightly's forward: a table and a checkpoint of its own."""
    simclr = ("--methods", "simclr", "--epochs", "1")
    run_benchmark(tmp_path, datasets_dir, *simclr, "--simclr-forward", "per-view")
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["header"]["simclr_forward"] == "per-view"
    assert "SimCLR forwards each view on its own" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(SystemExit):  # the joint forward's numbers would mix with these in one table
        run_benchmark(tmp_path, datasets_dir, *simclr)
    # In the same work folder, the joint forward trains afresh rather than resume the per-view checkpoint
    # (a finished run resumed trains nothing and measures no memory).
    run_benchmark(tmp_path, datasets_dir, *simclr, "--out", str(tmp_path / "joint"))
    [joint] = json.loads((tmp_path / "joint" / "results.json").read_text())["results"]
    assert joint["peak_host_memory_gb"] is not None
    with pytest.raises(SystemExit):  # nothing to apply it to
        run_benchmark(tmp_path, datasets_dir, "--methods", "byol", "--simclr-forward", "per-view")


def test_lightlys_own_resnet18_trains_as_a_setup_of_its_own(tmp_path: Path, datasets_dir: Path) -> None:
    """``--backbone lightly_resnet18_cifar``: lightly's benchmark network, which differs from ours where documented."""
    try:
        import_lightly()
    except ImportError as error:
        pytest.skip(str(error))
    torch.manual_seed(0)
    ours = build_backbone("resnet18_cifar").module
    theirs = lightly_benchmark.benchmark_backbone(LIGHTLY_CIFAR10_BACKBONE, 32)
    assert theirs.feature_dim == 512 and theirs.name == LIGHTLY_CIFAR10_BACKBONE
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(theirs.module) == count(ours)
    # No ReLU after the stem: the first block receives the stem BatchNorm's negative values; ours receives none.
    seen = {}
    ours.layer1.register_forward_pre_hook(lambda _, inputs: seen.update(ours=inputs[0].min().item()))
    theirs.module[2].register_forward_pre_hook(lambda _, inputs: seen.update(theirs=inputs[0].min().item()))
    images = torch.randn(4, 3, 32, 32)
    assert ours(images).shape == theirs.module(images).shape == (4, 512)
    assert seen["ours"] >= 0 > seen["theirs"]
    # PyTorch's default init: the block convolutions' squared norms are 3x (a downsampling block's first
    # convolution and its shortcut) or 6x (every other) smaller than torchvision's.
    block_conv = theirs.module.get_submodule("5.1.conv2")  # layer4's last convolution, as ours.layer4[1].conv2
    ratio = ours.layer4[1].conv2.weight.norm() ** 2 / block_conv.weight.norm() ** 2
    assert ratio.item() == pytest.approx(6, rel=0.05)

    lightlys = ("--backbone", LIGHTLY_CIFAR10_BACKBONE)
    run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "1", *lightlys)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["header"]["backbone"] == LIGHTLY_CIFAR10_BACKBONE
    [result] = report["results"]
    assert 0.0 <= result["final_knn_top1"] <= 1.0 and result["random_init"]["rankme"] >= 1.0
    assert f"backbone {LIGHTLY_CIFAR10_BACKBONE}" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(SystemExit):  # our backbone's numbers would mix with lightly's in one table
        run_benchmark(tmp_path, datasets_dir, "--methods", "simclr", "--epochs", "1")
    with pytest.raises(SystemExit):  # a teacher of this backbone could not be loaded back
        run_benchmark(tmp_path, datasets_dir, "--methods", "distillation", *lightlys)
