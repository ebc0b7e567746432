"""The Prefect flow sequences one task per stage of tasks.stages, curate included, without a Prefect server.

The flow's function runs with ``.fn`` and its task replaced by a stand-in, so only the
sequencing is checked here; tests/test_pipeline_e2e.py runs the real flow over DVC.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flows import pipeline
from tasks.stages import STAGE_NAMES


@pytest.fixture()
def reproduced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stages the flow asks DVC for, in order; each answers Cached."""
    asked: list[str] = []

    def reproduce_stage(stage: str, project_dir: str, return_state: bool) -> SimpleNamespace:
        asked.append(stage)
        return SimpleNamespace(name="Cached", message="", is_failed=lambda: False)

    monkeypatch.setattr(pipeline, "reproduce_stage", reproduce_stage)
    return asked


def test_the_flow_runs_every_stage_in_order_curate_after_ingest(reproduced: list[str]) -> None:
    states = pipeline.ssl_pipeline.fn(project_dir=".")
    assert reproduced == list(STAGE_NAMES) and list(states) == list(STAGE_NAMES)
    assert STAGE_NAMES.index("curate") == STAGE_NAMES.index("ingest") + 1


def test_a_subset_keeps_pipeline_order_and_unknown_stages_are_refused(reproduced: list[str]) -> None:
    pipeline.ssl_pipeline.fn(stages=["teacher", "curate"], project_dir=".")
    assert reproduced == ["curate", "teacher"]
    with pytest.raises(ValueError, match="Unknown stages \\['curation'\\]"):
        pipeline.ssl_pipeline.fn(stages=["curation"], project_dir=".")
