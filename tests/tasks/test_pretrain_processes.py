"""``processes: N`` trains on N processes (DDP) from params.yaml: validated before any work,
launched by the stage itself, with the global batch's learning rate and one writer (rank 0).

The real run starts two gloo processes on the CPU through the stage's entry point
(``pretrain.main``, tracked in a throwaway MLflow store); each process records the files
it writes (an audit hook), so the test sees which rank wrote what.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from ssl_core.distributed import ProcessFailedError, rank
from ssl_core.engine import CHECKPOINT_NAME
from ssl_core.model_file import load_embedding_model
from tasks import pretrain, teacher
from tasks.layout import MODEL_FILE, TEACHER_SPEC
from tasks.live_tracking import RUN_FILE, RunReference
from tasks.params import ParamsError, load_params, parse_params
from tests.datasets import random_ingested_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_IMAGES = 18  # 9 for each of 2 processes: 2 steps of 4 (drop_last); one process alone takes 4
BATCH_SIZE = 4
BASE_LR = 0.06
OUTPUTS = {MODEL_FILE, "history.json", "config.json", "training.png", RUN_FILE}


def two_process_params(**pretrain_section: Any) -> Any:
    """A 1-epoch SimCLR run of 2 CPU processes, kNN monitor and system metrics off, every value small."""
    section = {
        "method": "simclr",
        "backbone": "resnet18_cifar",
        "epochs": 1,
        "batch_size": BATCH_SIZE,
        "base_lr": BASE_LR,
        "processes": 2,
        "device": "cpu",
        "precision": "fp32",
        "num_workers": 0,
        "monitor": {"knn_bank": 0, "system_metrics": False},
        **pretrain_section,
    }
    return parse_params({"pretrain": section})


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 random 32x32 train images in a manifest."""
    return random_ingested_folder(tmp_path_factory.mktemp("ingested"), NUM_IMAGES)


def no_teacher(folder: Path) -> Path:
    """What the teacher stage leaves for a method that needs no teacher."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEACHER_SPEC).write_text(json.dumps({"kind": "none"}))
    return folder


def stage_args(root: Path, ingested: Path) -> argparse.Namespace:
    return argparse.Namespace(
        data=ingested, teacher=no_teacher(root / "teacher"), out=root / "student", checkpoints=root / "ckpt"
    )


# --- each process records what it writes ---------------------------------------------------------


def audited(folder: Path, train_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``train_fn`` in a training process that lists, in ``folder/written-<rank>.json``, every file
    it opened for writing, saved with torch.save or renamed into place."""
    written: list[str] = []

    def hook(event: str, event_args: tuple) -> None:
        if event == "open" and isinstance(event_args[0], (str, bytes, os.PathLike)):
            mode, flags = event_args[1], event_args[2] or 0
            if any(c in (mode or "") for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
                written.append(os.fsdecode(event_args[0]))
        elif event == "os.rename":  # os.replace too: the checkpoint's write-then-rename
            written.append(os.fsdecode(event_args[1]))

    def save(obj: Any, f: Any, *save_args: Any, **save_kwargs: Any) -> None:
        written.append(os.fsdecode(f))  # torch.save's zip writer opens the file in C++, unseen by the hook
        return torch_save(obj, f, *save_args, **save_kwargs)

    torch_save, torch.save = torch.save, save  # this spawned process only
    sys.addaudithook(hook)  # for the life of this process
    try:
        return train_fn(*args, **kwargs)
    finally:
        (folder / f"written-{rank()}.json").write_text(json.dumps(written))


@pytest.fixture(scope="module")
def two_processes(
    ingested: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[int, list[str]], list[logging.LogRecord]]:
    """The pretrain stage run with ``processes: 2``: its folder (with its MLflow store), the files each
    rank wrote, the parent's log."""
    root = tmp_path_factory.mktemp("two-processes")
    train_on_processes = pretrain.train_on_processes

    def with_audit(training, section, train_fn, /, *args, **kwargs):
        return train_on_processes(training, section, functools.partial(audited, root, train_fn), *args, **kwargs)

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # the parent's own log (a module fixture cannot use caplog)
    logging.getLogger(pretrain.__name__).addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pretrain, "train_on_processes", with_audit)
            patch.chdir(root)  # the processes start here: MLflow's default artifact folder is the test's
            patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
            pretrain.main(two_process_params(), stage_args(root, ingested))
    finally:
        logging.getLogger(pretrain.__name__).removeHandler(handler)
    written = {r: json.loads((root / f"written-{r}.json").read_text()) for r in range(2)}
    return root, written, records


def test_two_processes_write_the_outputs_once_from_rank_0(two_processes) -> None:
    root, written, _log = two_processes
    assert {p.name for p in (root / "student").iterdir()} == OUTPUTS
    assert {p.name for p in (root / "ckpt").iterdir()} == {CHECKPOINT_NAME}
    rank0 = {Path(p).resolve() for p in written[0]}
    assert {root / "student" / name for name in OUTPUTS} <= rank0
    assert root / "ckpt" / CHECKPOINT_NAME in rank0
    # Rank 1 trained and wrote no file at all: no output, no checkpoint, nothing to MLflow's store.
    assert [p for p in written[1] if Path(p).resolve().is_relative_to(root)] == []


def test_only_rank_0_tracks_the_training_in_mlflow(two_processes) -> None:
    root, _written, _log = two_processes
    reference = RunReference.read(root / "student")
    client = MlflowClient(tracking_uri=reference.tracking_uri)
    [run] = client.search_runs([reference.experiment_id])
    assert run.info.run_id == reference.run_id and run.info.status == "FINISHED"
    assert run.data.params["training.processes"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]


def test_two_processes_train_on_their_shards_with_the_global_batch_lr(two_processes) -> None:
    root, _written, _log = two_processes
    history = json.loads((root / "student" / "history.json").read_text())
    # Each process ran its half of the images (9, drop_last) in batches of 4.
    assert [e["steps"] for e in history["epochs"]] == [(NUM_IMAGES // 2) // BATCH_SIZE]
    config = json.loads((root / "student" / "config.json").read_text())
    assert config["training"]["processes"] == 2
    assert config["lr"] == pytest.approx(BASE_LR * BATCH_SIZE * 2 / 128)  # SimCLR scales lr with the global batch
    backbone, info = load_embedding_model(root / "student" / MODEL_FILE)
    assert info.config == config and backbone(torch.zeros(2, 3, 32, 32)).shape == (2, info.feature_dim)


def test_the_checkpoint_fingerprint_includes_processes(two_processes, ingested: Path) -> None:
    root, _written, _log = two_processes
    checkpoint = torch.load(root / "ckpt" / CHECKPOINT_NAME, weights_only=True)
    resolved = json.loads((root / "student" / "config.json").read_text())
    assert checkpoint["world_size"] == 2
    assert checkpoint["fingerprint"] == pretrain._fingerprint(resolved, ingested)
    one_process = {**resolved, "training": {**resolved["training"], "processes": 1}}
    assert pretrain._fingerprint(one_process, ingested) != checkpoint["fingerprint"]


def test_processes_on_the_cpu_are_logged_as_for_testing(two_processes) -> None:
    _root, _written, log = two_processes
    assert any("pretrain.processes = 2 on the CPU" in r.getMessage() and "testing" in r.getMessage() for r in log)


def test_a_failing_process_fails_the_stage_with_its_error(tmp_path: Path, ingested: Path) -> None:
    args = stage_args(tmp_path, ingested)
    (args.teacher / TEACHER_SPEC).unlink()  # every process fails loading the teacher
    on_interrupt = signal.getsignal(signal.SIGINT)
    with pytest.raises(ProcessFailedError, match=r"process \d of 2 failed .*FileNotFoundError: .*teacher\.json"):
        pretrain.main(two_process_params(), args)
    assert not args.out.exists()
    assert signal.getsignal(signal.SIGINT) is on_interrupt  # Ctrl-C works here as before the launch


# --- checks before any work -----------------------------------------------------------------------


@pytest.mark.parametrize("section", ["pretrain", "teacher"])
@pytest.mark.parametrize(
    ("value", "allowed"), [(0, "greater than or equal to 1"), (-1, "greater than"), ("two", "integer")]
)
def test_bad_processes_name_the_key(section: str, value: Any, allowed: str) -> None:
    with pytest.raises(ParamsError, match=rf"{section}\.processes = {value!r}: .*{allowed}"):
        parse_params({section: {"processes": value}})


def test_processes_default_to_one_and_the_shipped_params_say_so() -> None:
    assert parse_params({}).pretrain.processes == parse_params({}).teacher.processes == 1
    shipped = load_params(REPO_ROOT / "params.yaml")
    assert shipped.pretrain.processes == shipped.teacher.processes == 1


def pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """CUDA with ``count`` GPUs, as far as the checks ask (no GPU is touched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def refuse_to_launch(*args: Any) -> None:
    raise AssertionError("processes were started")


@pytest.mark.parametrize("section", ["pretrain", "teacher"])
def test_more_processes_than_gpus_fail_before_any_work(section: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setattr(pretrain, "launch", refuse_to_launch)
    training = getattr(parse_params({section: {"processes": 2, "device": "auto"}}), section)
    with pytest.raises(ParamsError, match=rf"{section}\.processes = 2: this machine has 1 visible GPU.*at most 1"):
        pretrain.train_on_processes(training, section, refuse_to_launch)


def test_as_many_processes_as_gpus_pass_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_gpus(monkeypatch, 2)
    pretrain.check_training(parse_params({"pretrain": {"processes": 2, "device": "cuda"}}).pretrain, "pretrain")


def test_one_named_gpu_for_several_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend_gpus(monkeypatch, 2)
    training = parse_params({"pretrain": {"processes": 2, "device": "cuda:1"}}).pretrain
    with pytest.raises(ParamsError, match=r"pretrain\.device = 'cuda:1' names one GPU.*use 'cuda' or 'auto'"):
        pretrain.check_training(training, "pretrain")


def test_the_cpu_allows_several_processes() -> None:
    pretrain.check_training(two_process_params().pretrain, "pretrain")


def test_run_outside_a_group_of_that_size_refuses(tmp_path: Path, ingested: Path) -> None:
    params = two_process_params()
    with pytest.raises(
        RuntimeError, match=r"pretrain\.processes = 2, but this process is one of 1.*train_on_processes"
    ):
        pretrain.run(params.pretrain, params.data, ingested, tmp_path / "out", tmp_path / "ckpt")


def test_peak_lr_and_steps_are_those_of_the_global_batch_and_the_shard() -> None:
    simclr = pretrain.method_class("simclr")
    one, two = (two_process_params(processes=n).pretrain for n in (1, 2))
    assert pretrain.peak_lr(simclr, two) == pytest.approx(2 * pretrain.peak_lr(simclr, one))
    assert pretrain.peak_lr(pretrain.method_class("simsiam"), two) == BASE_LR  # a fixed lr stays fixed
    assert pretrain.steps_per_epoch(NUM_IMAGES, one) == 4 and pretrain.steps_per_epoch(NUM_IMAGES, two) == 2


# --- what each stage hands the launcher ----------------------------------------------------------


class Launched(Exception):
    """Raised by the stand-in launcher with what it was handed."""


def capture_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    def launch(processes: int, device: str, function: Callable[..., Any], *args: Any) -> None:
        pickle.dumps((function, args))  # what spawning the processes will do
        raise Launched(processes, args)

    monkeypatch.setattr(pretrain, "launch", launch)


def test_the_pretrain_stage_hands_its_run_to_the_launcher(
    tmp_path: Path, ingested: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_launch(monkeypatch)
    with pytest.raises(Launched) as launched:
        pretrain.main(two_process_params(), stage_args(tmp_path, ingested))
    processes, (_level, train_fn, args, kwargs) = launched.value.args
    assert processes == 2 and train_fn is pretrain.train_student
    assert args[-2] == tmp_path / "teacher"  # each process loads the teacher itself


def test_the_teacher_stage_trains_on_its_processes(
    tmp_path: Path, ingested: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_launch(monkeypatch)
    params = parse_params({"teacher": {"processes": 2, "device": "cpu"}, "pretrain": {"method": "distillation"}})
    with pytest.raises(Launched) as launched:
        teacher.run(params.teacher, params.pretrain.method, params.data, ingested, tmp_path / "t", tmp_path / "ckpt")
    processes, (_level, train_fn, args, kwargs) = launched.value.args
    assert processes == 2 and train_fn is pretrain.run
    assert args[0] is params.teacher and kwargs["section"] == "teacher"
