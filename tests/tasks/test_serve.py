"""The embedding server, in-process: answers equal the ONNX file's, bad input gets a 4xx with a reason.

Also: batching across concurrent requests, 429 and 503 under load, readiness after
the warm-up, /info and /metrics, the execution provider, the serve params.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from contextlib import asynccontextmanager
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
from tasks.params import ParamsError, ServeParams, parse_params
from tasks.serve import ServedModel, ServeError, create_app, resolve_model, runtime
from tasks.serve.runtime import LoadedModel


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


# --- JSON input ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_base64_images_equal_multipart_files(client: TestClient, tiny_cifar_archive: Path) -> None:
    images = cifar_images(tiny_cifar_archive, 2)
    by_form = client.post("/embed", files=[("files", (name, data, "image/jpeg")) for name, data in images])
    # MIME base64 (line breaks every 76 characters) and a data URL.
    encoded = [base64.encodebytes(images[0][1]).decode(), f"data:image/jpeg;base64,{b64(images[1][1])}"]
    by_json = client.post("/embed", json={"images": encoded})
    assert by_json.status_code == 200 and by_json.json()["count"] == 2
    np.testing.assert_allclose(by_json.json()["embeddings"], by_form.json()["embeddings"], atol=1e-7)


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"images": ["abc"', 400, "not valid JSON"),
        (b'{"images": ["iVBORw0K", "***"]}', 400, "images[1]: not valid base64"),
        (b'{"images": "iVBORw0K"}', 422, "list of base64 strings"),
        (b'{"pictures": []}', 422, "list of base64 strings"),
        (b'{"images": []}', 422, "No images"),
        (b'{"images": ["aGVsbG8="]}', 415, "images[0]"),  # "hello": valid base64, not an image
    ],
)
def test_bad_json_is_a_4xx_with_a_reason(client: TestClient, body: bytes, status: int, reason: str) -> None:
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and reason in response.json()["detail"]


def test_json_limits_are_the_multipart_limits(client: TestClient) -> None:
    too_many = {"images": [b64(png((i, i, i))) for i in range(4)]}
    response = client.post("/embed", json=too_many)
    assert response.status_code == 413 and "limit is 3" in response.json()["detail"]
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    response = client.post("/embed", json={"images": [b64(buffer.getvalue())]})
    assert response.status_code == 413 and "serve.max_upload_mb" in response.json()["detail"]


def test_other_content_types_are_415_and_a_chunked_body_is_limited_too(client: TestClient) -> None:
    response = client.post("/embed", content=b"raw bytes", headers={"content-type": "image/png"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"x" * 4096

    response = client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_openapi_documents_both_encodings_with_examples(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["files"]
    assert body["application/json"]["examples"]["one image"]["value"]["images"]


# --- operations: health, readiness, info, metrics ---------------------------------------------


def metric_samples(client: TestClient) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_live_info_and_metrics(client: TestClient, onnx_model: Path) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    info = client.get("/info").json()
    assert info["model"]["uri"] == str(onnx_model) and info["model"]["version"] is None
    assert info["embedding_dim"] == 512 and info["input"]["image_size"] == 32
    assert info["execution_provider"] == "CPUExecutionProvider"
    assert info["batching"]["max_batch_size"] == ServeParams().max_batch_size
    client.post("/embed", files=[("files", ("a.png", png((9, 9, 9)), "image/png"))])
    client.post("/embed", files=[("files", ("a.txt", b"text", "text/plain"))])
    samples = metric_samples(client)
    embed_ok = ("sslpipe_serve_requests_total", (("method", "POST"), ("path", "/embed"), ("status", "200")))
    assert samples[embed_ok] >= 1
    assert samples[("sslpipe_serve_errors_total", (("path", "/embed"), ("status", "415")))] >= 1
    assert samples[("sslpipe_serve_images_embedded_total", ())] >= 1
    assert samples[("sslpipe_serve_batch_size_count", ())] >= 1
    assert samples[("sslpipe_serve_request_duration_seconds_count", (("path", "/embed"),))] >= 2
    assert samples[("sslpipe_serve_queue_depth", ())] == 0


def serve_app(onnx_model: Path, **params):
    return create_app(ServedModel(onnx_model, str(onnx_model)), ServeParams(**params))


@asynccontextmanager
async def running(app):
    """The app with its lifespan, and an async client calling it in-process."""
    import httpx

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=30) as client:
            yield client


def test_concurrent_requests_are_batched_and_each_gets_its_own_vectors(
    onnx_model: Path, tiny_cifar_archive: Path
) -> None:
    images = cifar_images(tiny_cifar_archive, 24)
    app = serve_app(onnx_model, max_batch_wait_ms=50)

    async def scenario() -> list:
        async with running(app) as client:
            responses = await asyncio.gather(
                *(client.post("/embed", files=[("files", (name, data, "image/jpeg"))]) for name, data in images)
            )
            metrics = (await client.get("/metrics")).text
        return responses, metrics

    responses, metrics = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * len(images)
    served = np.array([r.json()["embeddings"][0] for r in responses], dtype=np.float32)
    direct = OnnxEmbedder(onnx_model).embed([Image.open(io.BytesIO(data)) for _, data in images])  # unbatched
    np.testing.assert_allclose(served, direct, atol=1e-5)
    from prometheus_client.parser import text_string_to_metric_families

    batch = {
        s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples if "batch_size" in s.name
    }
    assert batch["sslpipe_serve_batch_size_sum"] == len(images)
    assert batch["sslpipe_serve_batch_size_count"] < len(images)  # so some batch held more than one image


@pytest.fixture()
def gated_model(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Inference blocks until ``gate`` is set; ``entered`` says a batch reached the model. No warm-up."""
    gate, entered = threading.Event(), threading.Event()
    original = LoadedModel.embed_arrays

    def embed_arrays(self, batch):
        entered.set()
        assert gate.wait(10)
        return original(self, batch)

    monkeypatch.setattr(LoadedModel, "embed_arrays", embed_arrays)
    monkeypatch.setattr(runtime, "warm_up", lambda model, batch_size: None)
    return gate, entered


def test_a_full_queue_gets_429_with_retry_after_and_admitted_requests_finish(
    onnx_model: Path, gated_model: tuple[threading.Event, threading.Event]
) -> None:
    gate, entered = gated_model
    app = serve_app(onnx_model, max_queued_requests=1)
    one = [("files", ("a.png", png((5, 6, 7)), "image/png"))]

    async def scenario() -> None:
        async with running(app) as client:
            first = asyncio.create_task(client.post("/embed", files=one))
            await asyncio.to_thread(entered.wait, 10)  # in the model: no longer queued
            second = asyncio.create_task(client.post("/embed", files=one))
            while app.state.server.batcher.waiting_requests < 1:
                await asyncio.sleep(0.005)
            refused = await client.post("/embed", files=one)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1 and "serve.max_queued_requests" in refused.json()["detail"]
            gate.set()
            assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]

    asyncio.run(scenario())


def test_a_request_not_answered_in_time_gets_503_with_retry_after(
    onnx_model: Path, gated_model: tuple[threading.Event, threading.Event]
) -> None:
    gate, _ = gated_model
    app = serve_app(onnx_model, request_timeout_s=0.2)

    async def scenario() -> None:
        async with running(app) as client:
            response = await client.post("/embed", files=[("files", ("a.png", png((1, 1, 1)), "image/png"))])
            gate.set()
            assert response.status_code == 503 and "serve.request_timeout_s" in response.json()["detail"]
            assert int(response.headers["retry-after"]) >= 1

    asyncio.run(scenario())


def test_ready_only_after_the_warm_up_batch(onnx_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    warmed: list[int] = []

    def gated_warm_up(model, batch_size):
        assert gate.wait(10)
        runtime.LoadedModel.embed_arrays(model, np.zeros((batch_size, 3, 32, 32), dtype=np.float32))
        warmed.append(batch_size)

    monkeypatch.setattr(runtime, "warm_up", gated_warm_up)
    app = serve_app(onnx_model, max_batch_size=4)

    async def scenario() -> None:
        async with running(app) as client:
            assert (await client.get("/health/live")).status_code == 200
            not_ready = await client.get("/health/ready")
            assert not_ready.status_code == 503 and not_ready.json()["status"] == "warming up"
            assert (await client.get("/health")).json()["ready"] is False
            # Requests are served meanwhile: readiness is for load balancers.
            early = await client.post("/embed", files=[("files", ("a.png", png((1, 2, 3)), "image/png"))])
            assert early.status_code == 200
            gate.set()
            for _ in range(200):
                if (await client.get("/health/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await client.get("/health/ready")).json()["status"] == "ready"

    asyncio.run(scenario())
    assert warmed == [4]


def test_a_failed_warm_up_keeps_the_server_not_ready_and_says_why(
    onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(model, batch_size):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runtime, "warm_up", failing)

    async def scenario() -> None:
        async with running(serve_app(onnx_model)) as client:
            for _ in range(200):
                body = (await client.get("/health/ready")).json()
                if body["status"] != "warming up":
                    break
                await asyncio.sleep(0.01)
            assert body == {"status": "warm-up failed", "error": "RuntimeError: out of memory"}

    asyncio.run(scenario())


# --- the execution provider, and the params ----------------------------------------------------


def test_cuda_is_used_when_onnxruntime_has_it(monkeypatch: pytest.MonkeyPatch, onnx_model: Path) -> None:
    import onnxruntime as ort

    from ssl_core.onnx_embedder import execution_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert execution_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert execution_providers() == ["CPUExecutionProvider"]
    embedder = OnnxEmbedder(onnx_model, intra_op_threads=1)
    assert embedder.provider == "CPUExecutionProvider"
    assert embedder.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="intra_op_threads = 0"):
        OnnxEmbedder(onnx_model, intra_op_threads=0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_wait_ms", -1),
        ("max_queued_requests", 0),
        ("request_timeout_s", 0),
        ("decode_threads", 0),
        ("alias_poll_seconds", -5),
    ],
)
def test_bad_serve_params_name_the_key(key: str, value: float) -> None:
    with pytest.raises(ParamsError, match=rf"serve\.{key} = {value}"):
        parse_params({"serve": {key: value}})
