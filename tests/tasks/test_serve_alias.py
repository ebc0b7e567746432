"""Serving a registry alias on a real (SQLite) MLflow: lineage in /info, and a swap under load that loses nothing."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mlflow import MlflowClient
from onnx import numpy_helper
from PIL import Image
from torch import nn

from ssl_core.augment import Normalization
from ssl_core.export import export_onnx
from ssl_core.onnx_embedder import OnnxEmbedder
from ssl_core.onnx_format import OnnxMetadata
from tasks.params import ServeParams
from tasks.serve import create_app, resolve_model
from tasks.serve.model_source import AliasWatcher
from tests.tasks.test_serve import png, running

NAME = "served"
LINEAGE = {"git_commit": "abc123", "dataset_manifest_sha256": "f" * 64, "params_hash": "0123456789abcdef"}


def two_models(folder: Path) -> dict[str, Path]:
    """A tiny exported embedder, and a copy with its first weights negated: two versions that embed differently."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    norm = Normalization()
    first = export_onnx(
        backbone, OnnxMetadata(32, norm.mean, norm.std, 8, "tiny", "simclr"), folder / "1" / "model.onnx", opset=18
    )
    proto = onnx.load(str(first))
    weights = next(t for t in proto.graph.initializer if len(t.dims) == 4)  # the conv kernel
    weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
    (folder / "2").mkdir()
    onnx.save(proto, str(folder / "2" / "model.onnx"))
    return {"1": first, "2": folder / "2" / "model.onnx"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowClient, dict[str, Path]]]:
    """Two registered versions of a tiny embedder with the register stage's lineage tags."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model(NAME)
        files = two_models(folder / "models")
        for number, path in files.items():
            # The version's source is the folder holding its model.onnx, as a logged ONNX model's is.
            version = client.create_model_version(NAME, source=path.parent.as_uri()).version
            assert str(version) == number
            for key, value in {**LINEAGE, "gate_metric": "rankme", "gate_value": f"{number}.0"}.items():
                client.set_model_version_tag(NAME, number, key, value)
        yield client, files


@pytest.fixture()
def champion_at_1(registry) -> tuple[MlflowClient, dict[str, Path]]:
    client, files = registry
    client.set_registered_model_alias(NAME, "champion", "1")
    return client, files


def test_registry_source_serves_its_version_with_lineage(champion_at_1, tmp_path: Path) -> None:
    _, files = champion_at_1
    served = resolve_model(f"models:/{NAME}@champion", tmp_path / "cache")
    assert served.version == "1" and served.onnx_path.is_relative_to(tmp_path / "cache" / NAME / "1")
    assert served.lineage == {**LINEAGE, "gate_metric": "rankme", "gate_value": "1.0"}
    assert resolve_model(f"models:/{NAME}/2", tmp_path / "cache").onnx_path.read_bytes() == files["2"].read_bytes()


def test_the_alias_moves_under_load_and_no_request_fails(champion_at_1, tmp_path: Path) -> None:
    client, files = champion_at_1
    source = f"models:/{NAME}@champion"
    app = create_app(
        resolve_model(source, tmp_path / "cache"),
        ServeParams(alias_poll_seconds=0.05),
        cache_dir=tmp_path / "cache",
    )
    image = png((40, 120, 200))

    async def scenario():
        async with running(app) as http:
            moved = asyncio.Event()  # set once /info showed the new version
            answers = []  # (sent after moved was set, response)
            after = 0

            async def worker() -> None:
                nonlocal after
                while len(answers) < 400 and after < 40:
                    sent_after = moved.is_set()
                    response = await http.post("/embed", files=[("files", ("a.png", image, "image/png"))])
                    answers.append((sent_after, response))
                    after += sent_after

            workers = [asyncio.create_task(worker()) for _ in range(6)]
            while len(answers) < 20:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(client.set_registered_model_alias, NAME, "champion", "2")
            for _ in range(500):
                info = (await http.get("/info")).json()
                if info["model"]["version"] == "2":
                    moved.set()
                    break
                await asyncio.sleep(0.01)
            await asyncio.gather(*workers)
            metrics = (await http.get("/metrics")).text
            return answers, moved.is_set(), info, metrics

    answers, moved, info, metrics = asyncio.run(scenario())
    assert moved, "the server never followed the alias"
    assert [response.status_code for _, response in answers] == [200] * len(answers)
    versions = [response.json()["model_version"] for _, response in answers]
    assert versions[0] == "1" and set(versions) == {"1", "2"}
    assert all(response.json()["model_version"] == "2" for sent_after, response in answers if sent_after)
    assert sum(sent_after for sent_after, _ in answers) >= 40
    direct = {v: OnnxEmbedder(files[v]).embed([Image.open(io.BytesIO(image))])[0] for v in files}
    for _, response in answers:
        np.testing.assert_allclose(
            response.json()["embeddings"][0], direct[response.json()["model_version"]], atol=1e-6
        )
    assert info["previous_model"]["version"] == "1" and info["switched_at"] is not None
    assert info["model"]["lineage"]["gate_value"] == "2.0" and info["alias_watch"]["alias"] == "champion"
    assert "sslpipe_serve_model_swaps_total 1.0" in metrics


def test_a_registry_that_fails_leaves_the_served_version(champion_at_1, tmp_path: Path) -> None:
    client, _ = champion_at_1
    served = resolve_model(f"models:/{NAME}@champion", tmp_path / "cache")
    installed = []

    async def install(model) -> None:
        installed.append(model)

    watcher = AliasWatcher(served, install, tmp_path / "cache", interval_s=1)
    assert asyncio.run(watcher.check()) is False and watcher.last_error is None
    client.delete_registered_model_alias(NAME, "champion")
    assert asyncio.run(watcher.check()) is False
    assert "champion" in watcher.last_error and watcher.version == "1" and installed == []
