"""dvc.yaml says exactly what each stage runs: its command, code deps and params.

The derivation itself (``scripts/dvc_deps.py``) is checked on the cases the issue
named: the evaluation code belongs to ``evaluate`` and not to the training stages,
and a stage's ``main`` that hides what it reads is caught. The end-to-end test
(``tests/test_pipeline_e2e.py``) edits every file and watches ``dvc status``.
"""

from __future__ import annotations

from pathlib import Path

from scripts.dvc_deps import code_deps, depends_on, differences, params_read, params_read_by_main
from tasks.stages import STAGES, stage


def test_dvc_yaml_matches_what_every_stage_imports_and_reads() -> None:
    problems = differences()
    assert problems == [], "\n".join(problems) + "\n(run `python scripts/dvc_deps.py --write`)"


def test_evaluation_code_is_a_dep_of_evaluate_only() -> None:
    evaluate = code_deps(stage("evaluate"))
    for path in (
        "tasks/evaluate/stage.py",
        "tasks/labeled_split.py",
        "ssl_core/knn.py",
        "ssl_core/label_free.py",
        "ssl_core/linear_probe.py",
        "ssl_core/embed.py",
        "ssl_core/augment.py",
        "ssl_core/backbones.py",
        "ssl_core/data.py",
        "ssl_core/model_file.py",
    ):
        assert depends_on(evaluate, path)
    for training in ("teacher", "pretrain"):
        deps = code_deps(stage(training))
        assert not depends_on(deps, "ssl_core/linear_probe.py") and not depends_on(deps, "tasks/evaluate/stage.py")
        assert not depends_on(deps, "tasks/promotion.py")
        # The per-epoch kNN monitor is part of training's output (history.json): its classifier is a dep.
        assert depends_on(deps, "ssl_core/knn_monitor.py") and depends_on(deps, "ssl_core/knn.py")
        assert depends_on(deps, "ssl_core/engine.py") and depends_on(deps, "ssl_core/methods/dino.py")
    assert not depends_on(evaluate, "ssl_core/engine.py")  # training code does not make the metrics stale
    assert not depends_on(evaluate, "ssl_core/methods/dino.py")  # only the recipes, which the schema reads


def test_export_and_register_depend_on_what_the_issue_found_missing() -> None:
    export = code_deps(stage("export"))
    assert depends_on(export, "ssl_core/model_file.py") and depends_on(export, "ssl_core/augment.py")
    assert depends_on(code_deps(stage("register")), "tasks/mlflow_setup.py")


def test_a_package_imported_whole_is_one_folder_dep() -> None:
    """A method added to ssl_core/methods/ needs no dvc.yaml edit: the folder is the dep."""
    pretrain = code_deps(stage("pretrain"))
    assert "ssl_core/methods" in pretrain and "ssl_core/losses" in pretrain
    assert not [d for d in pretrain if d.startswith("ssl_core/methods/")]
    assert "ssl_core/methods/recipes.py" in code_deps(stage("evaluate"))  # not the whole folder


def test_ingest_runs_no_training_code() -> None:
    deps = code_deps(stage("ingest"))
    for training_code in ("ssl_core/methods/base.py", "ssl_core/engine.py", "ssl_core/losses/ntx_ent.py"):
        assert not depends_on(deps, training_code)


def test_params_are_the_keys_main_reads() -> None:
    assert params_read(stage("evaluate")).keys == ["data.test_split", "data.train_split", "evaluate"]
    # The training stages open their MLflow run in register's experiment, and only that key of it.
    assert params_read(stage("teacher")).keys == ["data", "pretrain.method", "register.experiment", "teacher"]
    assert params_read(stage("pretrain")).keys == ["data", "pretrain", "register.experiment"]
    assert params_read(stage("register")).keys == ["register"]  # the YAML key, not the field name `registry`
    assert all(not params_read(s).problems for s in STAGES)


def test_a_main_that_passes_params_on_whole_is_caught(tmp_path: Path) -> None:
    module = tmp_path / "hiding.py"
    module.write_text("def main(params, args):\n    run(params.data.image_size, params)\n")
    read = params_read_by_main(module)
    assert read.keys == ["data.image_size"]
    assert len(read.problems) == 1 and "passes `params` on whole" in read.problems[0]
