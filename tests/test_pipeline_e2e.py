"""End to end on real CIFAR-10 images: DVC, Prefect, MLflow registry, serving, CLI.

One project copy in a temporary folder (300 images in class folders) goes through the
whole life of a user's repository, in order: ``dvc repro`` (ingest, curate, then every
stage on the curated data); ``dvc repro`` again (a no-op); a clone that pulls the
outputs from a DVC remote; the Prefect flow (a second run refused while one holds the
project, then every stage Cached); a parameter change (only downstream stages rerun);
an edit of each project file (exactly the stages that import it go stale); the
champion served by registry alias; the champion reused as a distillation teacher.

Then what a team runs, on the data this product is for: a flat folder of 150 unlabeled
images in a second copy. The CLI's ``sslpipe run`` (no DVC, no Prefect, every stage in
one process) against a real ``mlflow server`` on SQLite reached at
``MLFLOW_TRACKING_URI=http://...``: evaluate reports the label-free metrics only and
says why there is no kNN, as does the run's summary; register promotes on RankMe;
every artifact is uploaded through the server into its ``--artifacts-destination`` and
none is left in the project; a second registration becomes version 2 and the gate,
reading the champion's tags from the server, decides; ``sslpipe serve`` downloads the
champion from the server and serves the ONNX file's embeddings. The model that run
trained is then registered into a server on PostgreSQL, where only the registry differs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from scripts.dvc_deps import stage_files
from ssl_core.manifest import read_manifest
from tasks.stages import STAGE_NAMES, STAGES
from tests import servers
from tests.datasets import REPO_ROOT
from tests.project import environment, flat_unlabeled_folder, make_project, ran_stages, sh
from tests.servers import MlflowServer, mlflow_server, postgres_server, served_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_cifar_archive: Path) -> Path:
    return make_project(tmp_path_factory.mktemp("project"), tiny_cifar_archive)


@pytest.fixture(scope="module")
def first_metrics(project: Path) -> dict:
    result = sh(project, "dvc", "repro")
    assert ran_stages(result.stdout) == list(STAGE_NAMES)
    return json.loads((project / "reports/evaluate/metrics.json").read_text())


def client_of(store_uri: str):
    """An MLflow client of the runs and the registry at ``store_uri``: a server's URL, or a project's SQLite file."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)


def test_dvc_repro_runs_the_whole_chain(project: Path, first_metrics: dict) -> None:
    assert 0.0 < first_metrics["student"]["top1"] <= 1.0 and 0.0 < first_metrics["random_init"]["top1"] <= 1.0
    # Later stages read the curated data: what curate kept of the 200 train and 100 test images.
    curated = read_manifest(project / "data/curated/manifest.csv")
    report = json.loads((project / "data/curated/report.json").read_text())
    assert report["counts"]["images"] == 300 and report["counts"]["kept"] == len(curated)
    assert first_metrics["num_bank"] == sum(r.split == "train" for r in curated) <= 200
    assert first_metrics["num_queries"] == sum(r.split == "test" for r in curated) <= 100
    assert first_metrics["num_leaked_queries"] == len({leak["test"] for leak in report["leakage"]})
    for output in (
        "data/ingested/manifest.csv",
        "data/curated/report.html",
        "models/teacher/model.pt",
        "models/student/model.pt",
        "models/student/training.png",
        "reports/evaluate/evaluation.png",
        "models/onnx/model.onnx",
    ):
        assert (project / output).is_file(), output
    export = json.loads((project / "models/onnx/export_report.json").read_text())
    assert export["max_abs_difference"] <= export["tolerance"]
    registration = json.loads((project / "reports/registration.json").read_text())
    assert registration["version"] == "1" and registration["aliases"] == ["challenger", "champion"]
    # One MLflow run from the first training step to the registered model.
    training_run = json.loads((project / "models/student/mlflow_run.json").read_text())
    assert registration["run_id"] == training_run["run_id"]


def test_training_curves_are_dvc_data_plots(project: Path, first_metrics: dict) -> None:
    """`dvc plots show` draws each epoch of the teacher (1) and the student (1) from their history.json."""
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json").stdout)["data"]
    for plot_id, field in (
        ("training loss", "loss"),
        ("embedding spread", "embedding_std"),
        ("kNN monitor", "knn_top1_monitor"),
    ):
        points = plots[plot_id][0]["content"]["data"]["values"]
        assert sorted(p["filename"] for p in points) == ["student/history.json", "teacher/history.json"]
        history = json.loads((project / "models/student/history.json").read_text())["epochs"]
        student = next(p for p in points if p["filename"] == "student/history.json")
        assert student[field] == history[0][field] and student["epoch"] == 1


def test_second_repro_is_a_no_op(project: Path, first_metrics: dict) -> None:
    result = sh(project, "dvc", "repro")
    assert ran_stages(result.stdout) == [] and "up to date" in result.stdout


def test_a_clone_that_pulls_from_the_dvc_remote_has_nothing_to_reproduce(
    project: Path, first_metrics: dict, tmp_path: Path
) -> None:
    """Push every output to a remote in a temporary folder; a clone pulls them, and `dvc repro` there is a no-op."""
    remote = tmp_path / "remote"
    sh(project, "dvc", "remote", "add", "--force", "--default", "shared", str(remote))
    sh(project, "git", "add", "dvc.lock", ".dvc/config")
    sh(project, "git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qm", "pipeline outputs")
    sh(project, "dvc", "push")
    clone = tmp_path / "clone"
    sh(project, "git", "clone", "-q", str(project), str(clone))
    sh(clone, "dvc", "pull")
    assert json.loads((clone / "reports/evaluate/metrics.json").read_text()) == first_metrics
    assert (clone / "models/onnx/model.onnx").read_bytes() == (project / "models/onnx/model.onnx").read_bytes()
    result = sh(clone, "dvc", "repro")
    assert ran_stages(result.stdout) == [] and "up to date" in result.stdout


@pytest.fixture()
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` (tests/servers.py); yields its API URL.

    Per test: a running server's background services take CPU from the tests after it (measured: +3.5 min in CI).
    """
    with servers.prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


def test_a_second_run_waits_then_is_refused_and_the_flow_reports_every_stage_cached(
    project: Path, first_metrics: dict, prefect_server: str, tmp_path: Path
) -> None:
    """Against a real Prefect server: while one run holds the project's slot, another is refused. Then the flow
    runs, every stage Cached (DVC has every output), and publishes its summary as a Markdown artifact."""
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            "env",
            f"PREFECT_API_URL={prefect_server}",
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from flows.pipeline import one_run_per_project\n"
            f"with one_run_per_project({str(project)!r}, 60):\n"
            "    print('holding', flush=True)\n"
            f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.2)\n",
        ],
        cwd=project,
        env=environment(project),
        stdout=subprocess.PIPE,
        text=True,
    )
    flow = ["env", f"PREFECT_API_URL={prefect_server}", sys.executable, "-m", "flows.pipeline"]
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = sh(project, *flow, "--wait-for-other-run", "3", check=False)
        assert refused.returncode != 0
        assert "PipelineBusyError: Another pipeline run of" in refused.stderr + refused.stdout
        assert "for more than 3 s; this run was refused" in refused.stderr + refused.stdout
    finally:
        release.touch()
        holder.wait(timeout=60)
    result = sh(project, *flow)  # the slot is free again: the run goes through every stage
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [row for row in rows if row[:1] and row[0] in STAGE_NAMES] == [[stage, "Cached"] for stage in STAGE_NAMES]
    # The run's Markdown artifact, read back from the server's database.
    inspected = sh(
        project,
        "env",
        f"PREFECT_API_URL={prefect_server}",
        *("prefect", "artifact", "inspect", "ssl-pipeline-summary", "--limit", "1", "-o", "json"),
    )
    artifact = json.loads(inspected.stdout)[0]["data"]
    assert "| register | Cached |" in artifact and "kNN top-1 (k=200" in artifact
    assert f"{first_metrics['student']['top1']:.4f}" in artifact and "## Curation" in artifact


def test_the_flow_retries_a_registry_outage_but_not_a_users_mistake(project: Path, first_metrics: dict) -> None:
    """A tracking server that does not answer: register retried with backoff. A missing source: failed at once."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["register"]["champion_margin"] = 0.5  # makes register stale, so the flow runs it
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    flow = [sys.executable, "-m", "flows.pipeline", "--project-dir", str(project), "--retry-backoff", "0.5"]
    try:
        outage = sh(
            project,
            "env",
            "MLFLOW_TRACKING_URI=http://127.0.0.1:9",  # the discard port: nothing listens
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES=0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT=5",
            *flow,
            "--stages",
            "register",
            check=False,
        )
        assert outage.returncode != 0
        log = outage.stdout + outage.stderr
        assert [f"Retry {n}/3 will start" in log for n in (1, 2, 3)] == [True] * 3 and "Retries are exhausted" in log
        # An empty source folder: `sslpipe ingest` refuses it, a user's mistake that no retry fixes.
        (project / "data/empty").mkdir()
        params["ingest"]["source"] = "data/empty"
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        mistake = sh(project, *flow, "--stages", "ingest", check=False)
        log = mistake.stdout + mistake.stderr
        assert mistake.returncode != 0 and "sslpipe ingest: error: ingest.source folder data/empty is empty" in log
        assert "will start" not in log
    finally:
        params_file.write_text(original)
        shutil.rmtree(project / "data/empty", ignore_errors=True)


def test_one_param_change_reruns_only_downstream_stages(project: Path, first_metrics: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["k"] = 50
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(project, "dvc", "repro")
    assert ran_stages(result.stdout) == ["evaluate", "register"]
    registration = json.loads((project / "reports/registration.json").read_text())
    assert registration["version"] == "2" and "challenger" in registration["aliases"]
    for tag in ("git_commit", "dataset_manifest_sha256", "params_hash", "knn_top1"):
        assert registration["tags"][tag]
    client = client_of(f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version("ssl-embedder", "2")
    assert version.tags["params_hash"] == registration["tags"]["params_hash"]
    assert "challenger" in version.aliases
    # The curation report and its counts are part of the run.
    report = json.loads((project / "data/curated/report.json").read_text())
    assert client.get_run(registration["run_id"]).data.metrics["curation_kept"] == report["counts"]["kept"]
    artifacts = {a.path for a in client.list_artifacts(registration["run_id"], "curation")}
    assert artifacts == {"curation/report.json", "curation/report.html"}


def test_editing_a_file_makes_exactly_the_stages_that_import_it_stale(project: Path, first_metrics: dict) -> None:
    """A project file of every distinct set of importing stages, edited in turn: `dvc status` names exactly
    its importers.

    What a stage imports is computed here from the code (the module-level import
    closure of ``sslpipe <stage>``), independently of the deps written in dvc.yaml.
    ``tests/tasks/test_dvc_yaml.py`` checks every file against dvc.yaml's deps; this
    test checks that DVC acts on them, one file for each distinct set of importers (the
    file a set's stages share is edited, not every one of them: each `dvc status`
    hashes the whole project). DVC reruns the stages downstream of a stale one when
    its outputs change.
    """
    from dvc.repo import Repo

    imports = {s.name: {p.relative_to(REPO_ROOT).as_posix() for p in stage_files(s)} for s in STAGES}
    assert "ssl_core/linear_probe.py" in imports["evaluate"]
    assert "ssl_core/linear_probe.py" not in imports["teacher"] | imports["pretrain"]
    by_importers: dict[frozenset[str], str] = {}
    for relative in sorted(set().union(*imports.values())):
        importers = frozenset(stage for stage, files in imports.items() if relative in files)
        by_importers.setdefault(importers, relative)
    assert len(by_importers) >= 5, by_importers  # e.g. ingest alone, training alone, all seven stages
    sh(project, "dvc", "repro")  # earlier tests may have changed params
    wrong = []
    with Repo(str(project)) as repo:
        assert repo.status() == {}, repo.status()
        for relative in sorted(by_importers.values()):
            path = project / relative
            original = path.read_bytes()
            path.write_bytes(original + b"\n# edited by the staleness test\n")
            try:
                stale = {name.rpartition(":")[2] for name in repo.status()}
            finally:
                path.write_bytes(original)
            expected = {stage for stage, files in imports.items() if relative in files}
            if stale != expected:
                wrong.append(f"{relative}: stale {sorted(stale)}, imported by {sorted(expected)}")
        assert repo.status() == {}, "restoring every file must leave the pipeline up to date"
    assert wrong == [], "\n".join(wrong)


def test_served_champion_equals_the_onnx_file(
    project: Path, first_metrics: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from ssl_core.onnx_embedder import OnnxEmbedder
    from tasks.serve import create_app, resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    model = resolve_model("models:/ssl-embedder@champion", project / "models/serving")
    images = sorted((project / "data/ingested/images/test").rglob("*.jpg"))[:4]
    with TestClient(create_app(model)) as client:
        response = client.post("/embed", files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images])
    assert response.status_code == 200
    direct = OnnxEmbedder(project / "models/onnx/model.onnx").embed([Image.open(p) for p in images])
    np.testing.assert_allclose(np.array(response.json()["embeddings"]), direct, atol=1e-5)


def test_registered_model_serves_as_distillation_teacher(project: Path, first_metrics: dict, tmp_path: Path) -> None:
    import torch

    from ssl_core.model_file import load_embedding_model

    sh(
        project,
        "sslpipe",
        "teacher",
        "--set",
        "teacher.source=models:/ssl-embedder@champion",
        "--out",
        str(tmp_path / "teacher"),
        "--checkpoints",
        str(tmp_path / "ckpt"),
    )
    teacher, _ = load_embedding_model(tmp_path / "teacher/model.pt")
    student, _ = load_embedding_model(project / "models/student/model.pt")
    for (name, a), (_, b) in zip(teacher.state_dict().items(), student.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_champion_curates_the_next_data(project: Path, first_metrics: dict, tmp_path: Path) -> None:
    """A scheduled run curates new data with the last run's model: curate.embedder = the registry alias."""
    alias = "models:/ssl-embedder@champion"
    sh(project, "sslpipe", "curate", "--set", f"curate.embedder={alias}", "--out", str(tmp_path / "curated"))
    report = json.loads((tmp_path / "curated/report.json").read_text())
    assert report["embedder"] == {"spec": alias, "dim": 512}  # the ResNet-18 student's features, not the pixels'
    pixels = json.loads((project / "data/curated/report.json").read_text())
    assert report["exact_duplicates"] == pixels["exact_duplicates"]  # pixel hashes do not depend on the embedder
    assert report["counts"]["images"] == pixels["counts"]["images"]


def test_bad_input_gets_one_line_errors(project: Path, first_metrics: dict, tmp_path: Path) -> None:
    result = sh(project, "sslpipe", "pretrain", "--set", "pretrain.method=mocov9", check=False)
    assert result.returncode == 2
    assert "pretrain.method = 'mocov9'" in result.stderr and "'distillation'" in result.stderr
    assert "Traceback" not in result.stderr
    result = sh(
        project, "sslpipe", "pretrain", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "s"), check=False
    )
    assert result.returncode == 2 and "teacher.json not found: run `sslpipe teacher` first" in result.stderr
    (tmp_path / "empty").mkdir()
    result = sh(
        project,
        "sslpipe",
        "ingest",
        "--set",
        f"ingest.source={tmp_path / 'empty'}",
        "--out",
        str(tmp_path / "ing"),
        check=False,
    )
    assert result.returncode == 2 and "is empty" in result.stderr
    result = sh(
        project, "sslpipe", "curate", "--set", "curate.embedder=nope.pt", "--out", str(tmp_path / "cur"), check=False
    )
    assert result.returncode == 2 and "curate.embedder = 'nope.pt'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cur").exists()


def test_a_temporary_dvc_experiment_registers_into_the_projects_store(project: Path, first_metrics: dict) -> None:
    """`dvc exp run --temp` runs a copy under .dvc/tmp/exps; its model version lands in the project's mlflow.db.

    Only register's params change, so the copy reuses the cached training: its registration is a new
    MLflow run nested under the training's run (the same student was registered before).
    """
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = client_of(f"sqlite:///{project / 'mlflow.db'}")
    before = {v.version for v in client.search_model_versions("name = 'ssl-embedder'")}
    result = sh(project, "dvc", "exp", "run", "--temp", "-S", "register.champion_margin=0.5")
    assert ran_stages(result.stdout) == ["register"], result.stdout[-2000:]
    (new,) = [v for v in client.search_model_versions("name = 'ssl-embedder'") if v.version not in before]
    run = client.get_run(new.run_id)
    assert run.data.params["register.champion_margin"] == "0.5"
    training_run = json.loads((project / "models/student/mlflow_run.json").read_text())["run_id"]
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == training_run
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))  # no throwaway store in the experiment's copy


# ## A team's MLflow server: the CLI's run on unlabeled images, tracked and registered over HTTP

BACKENDS = ("sqlite", "postgresql")
MODEL = "ssl-embedder"
# What the project would write for its own store if the server were not used.
LOCAL_STORE = ("mlflow.db", "mlartifacts", "mlruns")
MARGIN = 0.5  # of RankMe: more than the same model, registered again with the same score, can beat its champion by
UNLABELED_IMAGES = 150


@dataclass(frozen=True)
class Registered:
    """A project whose pipeline ran against ``server``, and the two registrations it made there."""

    server: MlflowServer
    project: Path
    run_output: str  # what `sslpipe run` printed and logged
    first: dict  # reports/registration.json after `sslpipe run`
    second: dict  # after `sslpipe register` once more, with champion_margin=MARGIN


def register_again(project: Path, server: MlflowServer) -> dict:
    """`sslpipe register` with a margin the same model cannot beat: the gate must keep the server's champion."""
    sh(
        project,
        "env",
        f"MLFLOW_TRACKING_URI={server.url}",
        "sslpipe",
        "register",
        "--set",
        f"register.champion_margin={MARGIN}",
    )
    return json.loads((project / "reports/registration.json").read_text())


@pytest.fixture(scope="module")
def on_sqlite(tiny_cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """`sslpipe run` on a flat folder of unlabeled images against a server on SQLite, then `sslpipe register` again."""
    project = make_project(tmp_path_factory.mktemp("unlabeled"), tiny_cifar_archive)
    flat_unlabeled_folder(tiny_cifar_archive, project / "data/frames", UNLABELED_IMAGES)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["source"] = "data/frames"
    params["curate"]["selection"]["size"] = 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    folder = tmp_path_factory.mktemp("mlflow-sqlite")
    with mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder / "server") as server:
        result = sh(project, "env", f"MLFLOW_TRACKING_URI={server.url}", "sslpipe", "run")
        first = json.loads((project / "reports/registration.json").read_text())
        output = result.stdout + result.stderr
        yield Registered(server, project, output, first, register_again(project, server))


@pytest.fixture(scope="module")
def on_postgresql(on_sqlite: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    """The same trained model registered into a second server, on PostgreSQL: the registry is what differs."""
    folder = tmp_path_factory.mktemp("mlflow-postgresql")
    with postgres_server() as store, mlflow_server(store, folder / "server") as server:
        project = on_sqlite.project
        result = sh(project, "env", f"MLFLOW_TRACKING_URI={server.url}", "sslpipe", "register")
        first = json.loads((project / "reports/registration.json").read_text())
        yield Registered(server, project, result.stdout, first, register_again(project, server))


@pytest.fixture(params=BACKENDS)
def registered(request: pytest.FixtureRequest) -> Registered:
    return request.getfixturevalue(f"on_{request.param}")


def test_the_cli_run_on_unlabeled_images_scores_them_without_labels_and_links_the_servers_version(
    on_sqlite: Registered,
) -> None:
    """No DVC, no Prefect, no labels, a tracking server instead of the project's store: every stage ran, the
    label-free metrics decided, and the summary says why there is no kNN and where the version is."""
    output, project = on_sqlite.run_output, on_sqlite.project
    why = "no image of the train split has a label"
    assert [f"== {stage} ==" in output for stage in STAGE_NAMES] == [True] * len(STAGE_NAMES)
    assert "Pipeline finished" in output and "kNN top-1" not in output
    assert f"no labeled images: label-free metrics only ({why})" in output
    # The summary points at the version's page on the server (a local store would need `mlflow ui`).
    assert f"MLflow UI     : {on_sqlite.server.url}/#/models/{MODEL}/versions/1" in output
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    curated = json.loads((project / "data/curated/report.json").read_text())
    assert metrics["labels"] == {"skipped": why}
    assert metrics["num_images"] == metrics["num_unlabeled"] == curated["counts"]["kept"] <= UNLABELED_IMAGES
    assert "top1" not in metrics["student"]
    for name in ("student", "random_init"):
        assert 1.0 < metrics[name]["rankme"] <= UNLABELED_IMAGES and -4.0 < metrics[name]["uniformity"] < 0.0
    assert (project / "reports/evaluate/evaluation.png").stat().st_size > 10_000
    first = on_sqlite.first
    assert first["gate_metric"] == "rankme" and first["tags"]["rankme"] == first["tags"]["gate_value"]
    assert first["tags"]["rankme"] == f"{metrics['student']['rankme']:.6f}"


def test_the_run_registers_on_the_server_with_artifacts_in_its_destination(registered: Registered) -> None:
    server, first = registered.server, registered.first
    assert first["tracking_uri"] == server.url
    assert first["version"] == "1" and first["aliases"] == ["challenger", "champion"] and first["promoted_to_champion"]
    client = client_of(server.url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.run_id == first["run_id"]
    assert champion.tags["gate_value"] == first["tags"]["gate_value"]
    run = client.get_run(first["run_id"])
    assert run.data.params["training.epochs"] == "1" and {"train_loss", "student.rankme"} <= run.data.metrics.keys()
    # Uploaded through the server (mlflow-artifacts:/), stored in its --artifacts-destination.
    assert client.get_experiment(first["experiment_id"]).artifact_location.startswith("mlflow-artifacts:/")
    checkpoints = [p for p in server.artifacts.rglob("model.pt") if first["run_id"] in p.parts]
    assert [p.parts[-2:] for p in checkpoints] == [("checkpoint", "model.pt")]
    logged_model = champion.source.removeprefix("models:/")  # MLflow 3: the version's source is a logged model
    assert [p.name for p in server.artifacts.rglob("*.onnx") if logged_model in p.parts] == ["model.onnx"]
    assert [name for name in LOCAL_STORE if (registered.project / name).exists()] == []


def test_the_training_is_tracked_live_in_the_run_that_register_continues(on_sqlite: Registered) -> None:
    """One run per pipeline execution: the run pretrain opened on the server is the registered version's."""
    from tasks.live_tracking import ROLE_TAG, RunReference

    first = on_sqlite.first
    assert RunReference.read(on_sqlite.project / "models/student") == RunReference(
        on_sqlite.server.url, first["experiment_id"], first["run_id"]
    )
    client = client_of(on_sqlite.server.url)
    run = client.get_run(first["run_id"])
    assert run.data.tags[ROLE_TAG] == "pretrain"  # opened by the pretrain stage, over HTTP
    losses = client.get_metric_history(first["run_id"], "train_loss")
    assert [m.step for m in losses] == [1]  # logged by the training itself, once per epoch


def test_a_second_registration_is_version_2_and_the_gate_decides_on_the_servers_champion(
    registered: Registered,
) -> None:
    """Same model, same score, a margin of 0.5: version 2 is the challenger; the champion (v1) is kept."""
    first, second = registered.first, registered.second
    assert second["version"] == "2" and second["aliases"] == ["challenger"]
    assert not second["promoted_to_champion"]
    assert second["gate_value"] == first["gate_value"]
    assert "champion v1" in second["reason"] and f"margin {MARGIN}" in second["reason"]
    client = client_of(registered.server.url)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'")) == ["1", "2"]
    assert len(list(registered.server.artifacts.rglob("*.onnx"))) == 2


def test_sslpipe_serve_serves_the_champion_from_the_server(on_sqlite: Registered, tmp_path: Path) -> None:
    """Serving reads the same API on either backend: checked on one."""
    from PIL import Image

    from ssl_core.onnx_embedder import OnnxEmbedder

    project, cache = on_sqlite.project, tmp_path / "serving"
    images = sorted((project / "data/frames").glob("*.jpg"))[:4]
    answer = served_embeddings(
        project,
        f"models:/{MODEL}@champion",
        images,
        tmp_path / "serve.log",
        "--cache",
        str(cache),
        MLFLOW_TRACKING_URI=on_sqlite.server.url,
    )
    assert answer["model"] == f"models:/{MODEL}@champion"
    assert len(list(cache.rglob("*.onnx"))) == 1  # downloaded from the server
    direct = OnnxEmbedder(project / "models/onnx/model.onnx").embed([Image.open(p) for p in images])
    np.testing.assert_allclose(np.array(answer["embeddings"]), direct, atol=1e-5)
