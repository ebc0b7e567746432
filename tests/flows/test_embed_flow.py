"""The embed-folder flow: one real run publishes its summary; retries only what may pass; bad schedules refused.

The flow's function runs with ``.fn`` and its tasks as plain functions for the
sequencing, retry options and summary, without a Prefect server. The real run
needs a Prefect API: ``prefect_test_harness`` starts a temporary one (10-15 s), so
that one test is marked slow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

# First: it sets Prefect's environment (home folder, no telemetry) before prefect is imported.
from flows import embed as flows_embed
from flows.embed import (
    SUMMARY_ARTIFACT,
    TRANSIENT_RETRIES,
    embed_folder,
    main,
    may_pass_on_retry,
    may_pass_on_retry_error,
    summary_markdown,
)

# isort: split
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from tasks import model_uris
from tasks.embed import EmbedError, EmbedReport, report_path
from tasks.model_uris import RegistryError
from tests.tasks.test_embed import tiny_onnx


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """Five small images in two class folders, and a text file that is no image."""
    for i in range(5):
        path = tmp_path / "photos" / ("cat" if i % 2 else "dog") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24 + i, 20), (40 * i, 10, 200)).save(path)
    (tmp_path / "photos" / "readme.txt").write_text("not an image")
    return tmp_path / "photos"


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


class StandIn:
    """A task replaced by its function; records the options it was given."""

    def __init__(self, task) -> None:
        self.function, self.options = task.fn, {}

    def with_options(self, **options) -> StandIn:
        self.options = options
        return self

    def __call__(self, *args):
        return self.function(*args)


def test_the_flow_resolves_the_model_with_retries_then_embeds_and_summarizes(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve, embed = StandIn(flows_embed.resolve_embedding_model), StandIn(flows_embed.embed_images)
    monkeypatch.setattr(flows_embed, "resolve_embedding_model", resolve)
    monkeypatch.setattr(flows_embed, "embed_images", embed)
    monkeypatch.setattr(flows_embed, "get_run_logger", lambda: logging.getLogger("test"))
    artifacts = []
    monkeypatch.setattr(flows_embed, "create_markdown_artifact", lambda text, key, description: artifacts.append(key))
    out = tmp_path / "photos.npy"
    summary = embed_folder.fn(
        str(photos), str(out), model=str(tiny_onnx(tmp_path / "m.onnx")), project_dir=str(tmp_path)
    )
    assert (summary["num_embedded"], summary["out"], artifacts) == (
        5,
        [str(out), str(out.with_suffix(".csv"))],
        [SUMMARY_ARTIFACT],
    )
    assert (
        resolve.options["retries"] == TRANSIENT_RETRIES and resolve.options["retry_condition_fn"] is may_pass_on_retry
    )
    assert resolve.options["retry_delay_seconds"](TRANSIENT_RETRIES) == [10, 20, 40]  # exponential backoff
    assert embed.options == {}  # embedding reads local files: a failure there is not retried


@pytest.mark.slow  # Prefect's temporary API server takes 10-15 s to start
def test_the_flow_embeds_a_folder_and_publishes_its_summary(prefect_api: None, photos: Path, tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "photos.parquet"
    state = embed_folder(str(photos), str(out), model=str(model), project_dir=str(tmp_path), return_state=True)
    summary = state.result()
    assert (summary["num_embedded"], summary["num_skipped"], summary["out"]) == (5, 1, [str(out)])
    assert json.loads(report_path(out).read_text())["skipped"][0]["path"] == "readme.txt"
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert f"| output | `{out}` |" in artifact.data and "| embedded | 5 (5 labeled) |" in artifact.data
    assert "| `readme.txt` | UnidentifiedImageError" in artifact.data
    # A second night replaces the output (atomically), as a schedule needs.
    assert embed_folder(str(photos), str(out), model=str(model), project_dir=str(tmp_path))["num_embedded"] == 5


class Registry:
    """An MLflow client whose registry fails every lookup with ``error_code``."""

    def __init__(self, error_code: int) -> None:
        self.error_code = error_code

    def get_model_version_by_alias(self, name: str, alias: str):
        raise MlflowException(f"lookup of {name}@{alias} failed", error_code=self.error_code)


def test_only_a_registry_that_may_answer_later_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    for error_code, retried in [
        (INTERNAL_ERROR, True),
        (TEMPORARILY_UNAVAILABLE, True),
        (RESOURCE_DOES_NOT_EXIST, False),
    ]:
        monkeypatch.setattr(model_uris, "connect", lambda project_dir, code=error_code: Registry(code))
        with pytest.raises(RegistryError) as raised:  # what model_uris makes of it: a one-line UserError
            model_uris.resolve_version("models:/m@champion")
        assert may_pass_on_retry_error(raised.value) is retried, error_code
    assert not may_pass_on_retry_error(EmbedError("--out x.csv: unknown format"))
    assert may_pass_on_retry_error(OSError("connection reset while downloading"))


def test_the_summary_lists_skipped_files_and_where_the_rest_are() -> None:
    report = EmbedReport("d", "folder", ["o.npy", "o.csv"], "models:/m@champion", "3", 64, 16, 64, 2)
    report.num_embedded, report.num_skipped = 10, 25
    report.skipped = [{"path": f"{i}.jpg", "reason": "empty file"} for i in range(25)]
    markdown = summary_markdown(report)
    assert "| model | `models:/m@champion` (version 3) |" in markdown and "| output | `o.npy`, `o.csv` |" in markdown
    assert "| `19.jpg` | empty file |" in markdown and "20.jpg" not in markdown and "| ... | 5 more" in markdown


def test_bad_arguments_and_a_schedule_without_a_server_fail_in_one_line(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["--data", str(photos), "--out", str(tmp_path / "photos.parquet")]
    cases = [
        (["--data", str(tmp_path / "none"), "--out", str(tmp_path / "x.npy")], "does not exist"),
        (["--data", str(photos), "--out", str(tmp_path / "x.txt")], "unknown format '.txt'"),
        ([*base, "--cron", "0 3 * *"], "--cron '0 3 * *': not a cron expression"),
        ([*base, "--cron", "0 3 * * *"], "PREFECT_API_URL is not set"),
    ]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        for argv, message in cases:
            assert main(argv) == 2, argv
            error = capsys.readouterr().err
            assert error.startswith("python -m flows.embed: error: ") and message in error and error.count("\n") == 1
