"""The embedding server: answers equal the ONNX file's; bad input gets a 4xx with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.export import export_onnx
from ssl_core.onnx_embedder import OnnxEmbedder
from ssl_core.onnx_format import OnnxMetadata
from tasks.errors import UserError
from tasks.params import ServeParams
from tasks.serve import ServedModel, ServeError, create_app, resolve_model


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar").module.eval()
    norm = Normalization()
    metadata = OnnxMetadata(32, norm.mean, norm.std, 512, "resnet18_cifar", "test")
    return export_onnx(backbone, metadata, tmp_path_factory.mktemp("onnx") / "model.onnx", opset=18)


@pytest.fixture(scope="module")
def client(onnx_model: Path):
    app = create_app(
        ServedModel(onnx_model, str(onnx_model)), ServeParams(max_upload_mb=0.05, max_images_per_request=3)
    )
    with TestClient(app) as test_client:
        yield test_client


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def cifar_images(tiny_cifar_archive: Path, count: int) -> list[tuple[str, bytes]]:
    import tarfile

    with tarfile.open(tiny_cifar_archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()][:count]
        return [(Path(m.name).name, tar.extractfile(m).read()) for m in members]


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["embedding_dim"] == 512 and body["image_size"] == 32


def test_embeddings_equal_running_the_onnx_file(client: TestClient, onnx_model: Path, tiny_cifar_archive: Path) -> None:
    images = cifar_images(tiny_cifar_archive, 3)
    response = client.post("/embed", files=[("files", (name, data, "image/jpeg")) for name, data in images])
    assert response.status_code == 200
    served = np.array(response.json()["embeddings"], dtype=np.float32)
    direct = OnnxEmbedder(onnx_model).embed([Image.open(io.BytesIO(data)) for _, data in images])
    assert served.shape == (3, 512)
    np.testing.assert_allclose(served, direct, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_non_image_is_415_with_reason(client: TestClient) -> None:
    response = client.post("/embed", files=[("files", ("notes.txt", b"hello", "text/plain"))])
    assert response.status_code == 415 and "notes.txt" in response.json()["detail"]
    truncated = png((1, 2, 3))[:30]
    response = client.post("/embed", files=[("files", ("cut.png", truncated, "image/png"))])
    assert response.status_code == 415
    response = client.post("/embed", files=[("files", ("empty.png", b"", "image/png"))])
    assert response.status_code == 415 and "empty" in response.json()["detail"]


def test_oversized_upload_and_too_many_images_are_413(client: TestClient) -> None:
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")  # ~120 kB > 0.05 MB limit
    response = client.post("/embed", files=[("files", ("big.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    four = [("files", (f"{i}.png", png((i, i, i)), "image/png")) for i in range(4)]
    response = client.post("/embed", files=four)
    assert response.status_code == 413 and "limit is 3" in response.json()["detail"]


def test_missing_files_field_is_422_not_500(client: TestClient) -> None:
    assert client.post("/embed").status_code == 422


def test_binds_to_loopback_by_default_and_missing_model_is_clear(tmp_path: Path) -> None:
    assert ServeParams().host == "127.0.0.1"
    with pytest.raises(ServeError, match="sslpipe export") as error:
        resolve_model(str(tmp_path / "missing.onnx"), tmp_path)
    assert isinstance(error.value, UserError)  # the CLI prints it as one line
