"""The Prefect flow sequences one task per stage of tasks.stages, retries only what may pass, and publishes a summary.

The flow's function runs with ``.fn`` and its task replaced by a stand-in, so only the
sequencing, the retry options and the summary are checked here without a Prefect
server; tests/test_pipeline_e2e.py runs the real flow over DVC and reads its artifact.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc.exceptions import ReproductionError
from dvc.stage.exceptions import StageCmdFailedError

from flows import pipeline
from tasks.errors import USER_ERROR_EXIT_STATUS
from tasks.stages import STAGE_NAMES, STAGES


class StandIn:
    """Replaces the DVC task: records the stages asked for and the options each got; every stage answers Cached."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.options: dict[str, dict] = {}
        self._pending: dict = {}

    def with_options(self, **options) -> StandIn:
        self._pending = options
        return self

    def __call__(self, stage: str, project_dir: str, return_state: bool) -> SimpleNamespace:
        self.asked.append(stage)
        self.options[stage], self._pending = self._pending, {}
        return SimpleNamespace(name="Cached", message="", is_failed=lambda: False)


@pytest.fixture()
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    fake = StandIn()
    monkeypatch.setattr(pipeline, "reproduce_stage", fake)
    published: list[dict] = []
    monkeypatch.setattr(pipeline, "publish_summary", lambda states, project_dir: published.append(states))
    # The one-run-per-project slot needs a Prefect API; tests/test_pipeline_e2e.py holds a real one.
    monkeypatch.setattr(pipeline, "one_run_per_project", lambda project_dir, wait_seconds: contextlib.nullcontext())
    fake.published = published
    return fake


def test_the_flow_runs_every_stage_in_order_curate_after_ingest(stand_in: StandIn) -> None:
    states = pipeline.ssl_pipeline.fn(project_dir=".")
    assert stand_in.asked == list(STAGE_NAMES) and list(states) == list(STAGE_NAMES)
    assert STAGE_NAMES.index("curate") == STAGE_NAMES.index("ingest") + 1
    assert stand_in.published == [states]


def test_a_subset_keeps_pipeline_order_and_unknown_stages_are_refused(stand_in: StandIn) -> None:
    pipeline.ssl_pipeline.fn(stages=["teacher", "curate"], project_dir=".")
    assert stand_in.asked == ["curate", "teacher"]
    with pytest.raises(ValueError, match="Unknown stages \\['curation'\\]"):
        pipeline.ssl_pipeline.fn(stages=["curation"], project_dir=".")


def test_stages_that_may_fail_transiently_are_retried_with_backoff(stand_in: StandIn) -> None:
    pipeline.ssl_pipeline.fn(project_dir=".")
    retried = {name for name, options in stand_in.options.items() if options}
    assert retried == {s.name for s in STAGES if s.may_fail_transiently} == {"ingest", "curate", "teacher", "register"}
    options = stand_in.options["register"]
    assert options["retries"] == pipeline.TRANSIENT_RETRIES
    assert options["retry_delay_seconds"](options["retries"]) == [10, 20, 40]  # exponential backoff
    assert options["retry_condition_fn"] is pipeline.may_pass_on_retry


def dvc_failure(status: int) -> ReproductionError:
    """What DVC raises when a stage's command exits with ``status``: the command's failure as the cause."""
    try:
        try:
            raise StageCmdFailedError("sslpipe register --out reports/registration.json", status)
        except StageCmdFailedError as failure:
            raise ReproductionError("failed to reproduce 'register'") from failure
    except ReproductionError as error:
        return error


def test_a_users_mistake_is_not_retried_and_anything_else_is() -> None:
    assert pipeline.is_user_error(dvc_failure(USER_ERROR_EXIT_STATUS))
    assert not pipeline.is_user_error(dvc_failure(1))  # e.g. the tracking server did not answer
    assert not pipeline.is_user_error(dvc_failure(-9))  # killed
    assert not pipeline.is_user_error(ConnectionError("registry unreachable")) and not pipeline.is_user_error(None)
    failed = SimpleNamespace(result=lambda raise_on_failure: dvc_failure(USER_ERROR_EXIT_STATUS))
    assert not pipeline.may_pass_on_retry(None, None, failed)
    transient = SimpleNamespace(result=lambda raise_on_failure: dvc_failure(1))
    assert pipeline.may_pass_on_retry(None, None, transient)


def test_the_summary_names_each_stage_and_reads_the_outputs(tmp_path: Path) -> None:
    from flows.summary import mlflow_links, run_summary

    (tmp_path / "reports/evaluate").mkdir(parents=True)
    (tmp_path / "data/curated").mkdir(parents=True)
    metrics = {
        "student": {"top1": 0.332, "linear_top1": 0.421, "rankme": 108.8, "uniformity": -1.57, "alignment": 0.46},
        "random_init": {"top1": 0.285, "linear_top1": 0.375, "rankme": 72.0, "uniformity": -0.06, "alignment": 0.02},
        "gain_top1": 0.047,
        "k": 200,
        "num_queries": 1000,
        "collapsed": False,
    }
    (tmp_path / "reports/evaluate/metrics.json").write_text(json.dumps(metrics))
    report = {"counts": {"images": 6000, "kept": 5969, "dropped": {"near_duplicates": 25, "dark": 0}}}
    (tmp_path / "data/curated/report.json").write_text(json.dumps(report))
    registration = {
        "tracking_uri": "http://127.0.0.1:5000/",
        "experiment_id": "7",
        "run_id": "abc",
        "model_name": "ssl-embedder",
        "version": "3",
        "aliases": ["challenger"],
        "promoted_to_champion": False,
        "reason": "kNN top-1 0.3320 <= champion v2 0.3400 + margin 0.0",
    }
    (tmp_path / "reports/registration.json").write_text(json.dumps(registration))

    markdown = run_summary({"ingest": "Cached", "evaluate": "Completed"}, tmp_path)

    assert "| ingest | Cached |" in markdown and "| evaluate | Completed |" in markdown
    assert "kNN top-1 (k=200, 1000 labeled queries): **0.3320**, random init 0.2850 (+0.0470)" in markdown
    assert "linear probe top-1: **0.4210**" in markdown and "RankMe 108.8 (random init 72.0)" in markdown
    assert "5969 of 6000 images kept; dropped: near_duplicates 25;" in markdown
    assert "not promoted (kNN top-1 0.3320 <= champion v2 0.3400 + margin 0.0)" in markdown
    assert "http://127.0.0.1:5000/#/experiments/7/runs/abc" in markdown
    assert mlflow_links(tmp_path)["mlflow-model-version"] == "http://127.0.0.1:5000/#/models/ssl-embedder/versions/3"
    # A local SQLite store has no web address: the summary says how to open it instead.
    registration["tracking_uri"] = "sqlite:////project/mlflow.db"
    (tmp_path / "reports/registration.json").write_text(json.dumps(registration))
    assert mlflow_links(tmp_path) == {}
    assert "mlflow ui --backend-store-uri sqlite:////project/mlflow.db" in run_summary({}, tmp_path)


def test_each_project_has_its_own_limit(tmp_path: Path) -> None:
    (tmp_path / "a" / "proj").mkdir(parents=True)
    (tmp_path / "b" / "proj").mkdir(parents=True)
    first, second = (pipeline.pipeline_limit_name(tmp_path / x / "proj") for x in ("a", "b"))
    assert first.startswith("ssl-pipeline-proj-") and second.startswith("ssl-pipeline-proj-") and first != second
    assert pipeline.pipeline_limit_name(tmp_path / "a" / "proj") == first
