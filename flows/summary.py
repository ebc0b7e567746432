"""What a pipeline run did, as the Markdown of its Prefect artifact: stages, scores, curation, the registry's decision.

Read from the stage outputs (tasks/layout.py), so a fully cached run reports the
numbers of the outputs DVC kept. Pure: no Prefect here, the flow publishes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks import layout
from tasks.mlflow_setup import local_ui_command, web_links


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_summary(states: dict[str, str], project_dir: Path) -> str:
    """Markdown: each stage's state (ran or Cached), the evaluation, curation counts, and the registry decision."""
    lines = ["# ssl-pipeline run", "", "| stage | state |", "|---|---|"]
    lines += [f"| {stage} | {state} |" for stage, state in states.items()]
    metrics = _read(project_dir / layout.EVALUATION / layout.METRICS_FILE)
    if metrics is not None:
        lines += ["", "## Evaluation", "", *_evaluation(metrics)]
    curation = _read(project_dir / layout.CURATED / layout.CURATION_REPORT)
    if curation is not None:
        counts = curation.get("counts", {})
        dropped = ", ".join(f"{reason} {n}" for reason, n in counts.get("dropped", {}).items() if n) or "none"
        lines += [
            "",
            "## Curation",
            "",
            f"{counts.get('kept')} of {counts.get('images')} images kept; dropped: {dropped}; "
            f"{counts.get('leaked_test_images', 0)} test images leaked into training.",
        ]
    registration = _read(project_dir / layout.REGISTRATION)
    if registration is not None:
        lines += ["", "## Registry", "", *_registry(registration)]
    return "\n".join(lines) + "\n"


def _evaluation(metrics: dict[str, Any]) -> list[str]:
    student, baseline = metrics["student"], metrics["random_init"]
    lines = []
    if "top1" in student:
        lines.append(
            f"- kNN top-1 (k={metrics['k']}, {metrics['num_queries']} labeled queries): **{student['top1']:.4f}**, "
            f"random init {baseline['top1']:.4f} ({metrics['gain_top1']:+.4f})"
        )
        if "linear_top1" in student:
            lines.append(
                f"- linear probe top-1: **{student['linear_top1']:.4f}**, random init {baseline['linear_top1']:.4f}"
            )
    else:
        lines.append(f"- no labeled images ({metrics['labels']['skipped']}): label-free metrics only")
    lines.append(
        f"- RankMe {student['rankme']:.1f} (random init {baseline['rankme']:.1f}); "
        f"uniformity {student['uniformity']:.3f} ({baseline['uniformity']:.3f}); "
        f"alignment {student['alignment']:.3f} ({baseline['alignment']:.3f})"
    )
    if metrics.get("collapsed"):
        lines.append("- **the embeddings collapsed during training**")
    return lines


def _registry(registration: dict[str, Any]) -> list[str]:
    name, version = registration["model_name"], registration["version"]
    decision = "promoted to champion" if registration["promoted_to_champion"] else "not promoted"
    lines = [
        f"- model `models:/{name}/{version}`, aliases {', '.join(registration['aliases']) or 'none'}: "
        f"{decision} ({registration['reason']})",
    ]
    links = web_links(registration)
    if links:
        lines += [f"- MLflow run: {links['mlflow-run']}", f"- model version: {links['mlflow-model-version']}"]
    else:
        lines.append(f"- MLflow run `{registration['run_id']}`: `{local_ui_command(registration['tracking_uri'])}`")
    return lines


def mlflow_links(project_dir: Path) -> dict[str, str]:
    """Links to the MLflow run and model version when the tracking server is reachable over HTTP."""
    registration = _read(project_dir / layout.REGISTRATION)
    return {} if registration is None else web_links(registration)
