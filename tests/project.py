"""A user's project in a temporary folder: a copy of this repository on a tiny dataset, and its commands."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

from tasks.stages import STAGE_NAMES
from tests.datasets import REPO_ROOT

TINY = {
    "teacher": {"epochs": 1, "batch_size": 64, "num_workers": 0},
    "pretrain": {"epochs": 1, "batch_size": 64, "num_workers": 0},
    # Alignment and uniformity from the view pairs of 64 train images, not of all 200: the e2e tests check the
    # plumbing, and each evaluate run renders and embeds a third of the views.
    "evaluate": {"num_workers": 0, "view_pairs": 64},
}


def make_project(destination: Path, archive: Path) -> Path:
    """A copy of this repository's tracked files, on the tiny dataset, as a fresh git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for relative in listed:
        if (REPO_ROOT / relative).is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, destination / relative)
    shutil.copy(archive, destination / "data/default/cifar10-subset.tar.gz")
    params = yaml.safe_load((destination / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qm", "init"],
    ):
        subprocess.run(command, cwd=destination, check=True)
    return destination


def flat_unlabeled_folder(archive: Path, destination: Path, count: int) -> Path:
    """The first ``count`` train images of the archive, renamed into one flat folder: no labels, no splits."""
    destination.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in m.name][:count]
        for i, member in enumerate(members):
            (destination / f"frame_{i:04d}.jpg").write_bytes(tar.extractfile(member).read())
    return destination


def environment(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["PREFECT_HOME"] = str(project / ".prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def sh(project: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=project, env=environment(project), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGE_NAMES if f"Running stage '{s}'" in output]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(server: subprocess.Popen, health_url: str, seconds: float) -> None:
    """Polls ``health_url`` until it answers 200; fails if ``server`` exits or ``seconds`` pass."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, f"{server.args[0]} exited with {server.returncode}"
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{health_url} did not answer within {seconds:g} s"
        time.sleep(0.5)
