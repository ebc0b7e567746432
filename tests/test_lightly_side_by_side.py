"""The side-by-side benchmark trains our step and lightly's on real CIFAR-10 images and reports both.

lightly is not a project dependency: the end-to-end test skips where it is not
importable (``pip install --no-deps lightly``), and the missing package is itself tested.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from benchmarks.benchmark_data import DATASETS
from benchmarks.lightly_side_by_side import METHODS, SIDES, import_lightly, main
from tests.datasets import cut_cifar10

TRAIN_PER_CLASS = 4  # 40 images: 2 steps of 16 per side
TEST_PER_CLASS = 4
BATCH_SIZE = 16


@pytest.fixture
def lightly_installed() -> None:
    try:
        import_lightly()
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture
def datasets_dir(tmp_path: Path) -> Path:
    """A ``--datasets`` folder whose CIFAR-10 archive has the benchmark's name and layout, twice the images used."""
    spec = DATASETS["cifar10"]
    cut_cifar10(tmp_path / "datasets" / spec.archive, 2 * TRAIN_PER_CLASS, 2 * TEST_PER_CLASS, top=spec.top)
    return tmp_path / "datasets"


def test_without_lightly_it_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "lightly", None)  # None in sys.modules: `import lightly` raises ImportError
    with pytest.raises(SystemExit):
        main(["--datasets", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])
    assert "pip install --no-deps lightly" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_both_sides_of_both_methods_train_and_are_scored(
    tmp_path: Path, datasets_dir: Path, lightly_installed: None
) -> None:
    out = tmp_path / "out"
    # fmt: off
    main([
        "--train-per-class", str(TRAIN_PER_CLASS), "--test-per-class", str(TEST_PER_CLASS),
        "--batch-size", str(BATCH_SIZE), "--epochs", "1", "--num-workers", "0", "--profile-steps", "1",
        "--device", "cpu", "--datasets", str(datasets_dir), "--work-dir", str(tmp_path / "work"), "--out", str(out),
    ])
    # fmt: on
    report = json.loads((out / "results.json").read_text())
    setup = report["setup"]
    assert setup["train_images"] == 10 * TRAIN_PER_CLASS and setup["test_images"] == 10 * TEST_PER_CLASS
    assert setup["steps_per_side"] == 10 * TRAIN_PER_CLASS // BATCH_SIZE
    assert setup["lightly"] and setup["torch"]
    assert 0.0 <= report["random_init_knn_top1"] <= 1.0
    assert set(report["methods"]) == set(METHODS)
    for name, pair in report["methods"].items():
        ours, theirs = pair["ours"], pair["lightly"]
        for side in SIDES:
            result = pair[side]
            assert result["side"] == side and result["method"] == name
            assert result["steps"] == setup["steps_per_side"]
            assert result["train_seconds"] > 0 and result["images_per_second"] > 0
            assert result["median_step_seconds"] > 0  # 2 steps: one interval
            assert result["augment_seconds_per_batch"] > 0 and result["model_step_seconds"] > 0
            assert 0.0 <= result["knn_top1"] <= 1.0
        assert pair["time_ratio_lightly_over_ours"] == pytest.approx(theirs["train_seconds"] / ours["train_seconds"])
        # The same network from the same seeded weights ...
        assert ours["init_checksum"] == theirs["init_checksum"]
        # ... trained by different code: our loss, views and loop against lightly's.
        assert ours["components"]["loss"].startswith("ssl_core.losses.")
        assert ours["components"]["loop"] == "ssl_core.engine.train"
        assert theirs["components"]["loss"].startswith("lightly.loss.")
        assert theirs["components"]["head"].startswith("lightly.models.modules.")
        assert theirs["components"]["transform"].startswith("lightly.transforms.")
    assert "lightly / ours" in (out / "results.md").read_text()
