"""sslpipe embed: every image once, with its label, the server's vectors; archives streamed; bad files reported.

The model is a tiny ONNX graph with the exported model's interface (input/output
names, metadata, L2-normalized output) built with onnx's helpers, so these tests
need no torch export and run in seconds; the server under test loads the same file.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import tarfile
import tracemalloc
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ssl_core.onnx_embedder import OnnxEmbedder
from ssl_core.onnx_format import INPUT_NAME, OUTPUT_NAME, OnnxMetadata
from tasks.cli import main as cli_main
from tasks.embed import (
    EmbeddingModel,
    EmbedError,
    NpyEmbeddingWriter,
    ParquetEmbeddingWriter,
    SourceError,
    SourceImage,
    embed_dataset,
    report_path,
    resolve_model,
)
from tasks.embed import job as embed_job
from tasks.embed.writers import npy_header
from tasks.errors import UserError
from tasks.ingest import run as ingest
from tasks.params import IngestParams
from tasks.serve import create_app
from tasks.serve import resolve_model as resolve_served_model
from tests.datasets import REPO_ROOT


def tiny_onnx(path: Path, image_size: int = 16, dim: int = 64) -> Path:
    """images (N, 3, S, S) -> 4x4 conv, stride 4 -> ReLU -> global average -> L2 norm: (N, dim)."""
    weights = np.random.default_rng(0).normal(size=(dim, 3, 4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w"], ["conv"], strides=[4, 4]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("LpNormalization", ["flat"], [OUTPUT_NAME], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    metadata = OnnxMetadata(image_size, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), dim, "tiny", "test")
    helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingModel:
    return EmbeddingModel(tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx"), "tiny.onnx")


@pytest.fixture(scope="module")
def folder(tiny_cifar_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 300 JPEGs of the tiny archive as a folder: ``train|test/<class>/NNNN.jpg``."""
    root = tmp_path_factory.mktemp("folder")
    with tarfile.open(tiny_cifar_archive) as archive:
        archive.extractall(root, filter="data")
    (top,) = root.iterdir()  # the archive's top folder, cifar10-subset
    return top


def embed(model: EmbeddingModel, data: Path, out: Path, **options) -> tuple[dict[str, dict], dict]:
    """Runs the job; returns {path: row} of a Parquet output, and the report."""
    embed_dataset(model, data, out, progress=False, **options)
    table = pq.read_table(out).to_pylist()
    return {row["path"]: row for row in table}, json.loads(report_path(out).read_text())


def images_of(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_a_folder_gives_every_image_once_with_its_label_and_the_servers_vectors(
    model: EmbeddingModel, folder: Path, tmp_path: Path
) -> None:
    rows, report = embed(model, folder, tmp_path / "out.parquet", batch_size=7)  # batches of 7: a short last one
    files = images_of(folder)
    assert len(files) == 300 and sorted(rows) == [f.relative_to(folder).as_posix() for f in files]
    assert all(
        row["label"] == Path(path).parent.name and row["split"] == Path(path).parts[0] for path, row in rows.items()
    )
    assert report["num_embedded"] == 300 and report["num_skipped"] == 0 and report["embedding_dim"] == 64
    assert report["labels"] == {label: 30 for label in sorted({row["label"] for row in rows.values()})}
    vectors = np.array([rows[f.relative_to(folder).as_posix()]["embedding"] for f in files], dtype=np.float32)
    # The same images through OnnxEmbedder.embed, and through the server's POST /embed.
    direct = OnnxEmbedder(model.onnx_path).embed([Image.open(f) for f in files])
    np.testing.assert_allclose(vectors, direct, atol=1e-6)
    with TestClient(create_app(resolve_served_model(str(model.onnx_path), tmp_path))) as client:
        served = []
        for start in range(0, len(files), 50):
            uploads = [("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files[start : start + 50]]
            response = client.post("/embed", files=uploads)
            assert response.status_code == 200, response.text
            served += response.json()["embeddings"]
    np.testing.assert_allclose(vectors, np.array(served, dtype=np.float32), atol=1e-6)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_is_streamed_and_gives_the_folders_vectors(
    kind: str, model: EmbeddingModel, folder: Path, tiny_cifar_archive: Path, tmp_path: Path
) -> None:
    archive = tiny_cifar_archive
    if kind == "zip":
        archive = tmp_path / "images.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in images_of(folder):
                zipped.writestr(f"photos/{file.relative_to(folder).as_posix()}", file.read_bytes())
    from_folder, _ = embed(model, folder, tmp_path / "folder.parquet")
    from_archive, report = embed(model, archive, tmp_path / "archive.parquet", workers=0)
    assert report["source_kind"] == "archive" and report["num_embedded"] == 300
    # Paths are the member names; labels and splits read below the one top folder, as ingest does.
    stripped = {path.split("/", 1)[1]: row for path, row in from_archive.items()}
    assert stripped.keys() == from_folder.keys()
    for path, row in from_folder.items():
        assert (stripped[path]["label"], stripped[path]["split"]) == (row["label"], row["split"])
        np.testing.assert_allclose(stripped[path]["embedding"], row["embedding"], atol=1e-6)
    # Nothing was extracted: the output folder holds the outputs and their reports only.
    made = {"folder.parquet", "archive.parquet", "folder.parquet.report.json", "archive.parquet.report.json"}
    assert {p.name for p in tmp_path.iterdir()} - {"images.zip"} == made


def png(size: tuple[int, int], color: int = 128, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_undecodable_and_unsafe_files_are_skipped_and_reported(model: EmbeddingModel, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "good.png").write_bytes(png((20, 30)))
    (data / "cat" / "gray.png").write_bytes(png((40, 40), mode="L"))  # converted to RGB, as the server does
    (data / "cat" / "notes.txt").write_text("not an image")
    (data / "cat" / "cut.png").write_bytes(png((20, 30))[:60])
    (data / "cat" / "empty.jpg").write_bytes(b"")
    (data / "cat" / "huge.png").write_bytes(png((3000, 3000), mode="L"))  # 9 Mpx, limit below: a bomb here
    os.symlink("/etc/hostname", data / "cat" / "link.jpg")
    rows, report = embed(model, data, tmp_path / "out.parquet", max_image_pixels=1_000_000)
    assert sorted(rows) == ["cat/good.png", "cat/gray.png"] and report["num_embedded"] == 2
    reasons = {skipped["path"]: skipped["reason"] for skipped in report["skipped"]}
    assert report["num_skipped"] == 5 and set(reasons) == {
        f"cat/{n}" for n in ("notes.txt", "cut.png", "empty.jpg", "huge.png", "link.jpg")
    }
    assert reasons["cat/notes.txt"].startswith("UnidentifiedImageError")
    assert reasons["cat/cut.png"].startswith("corrupt image")
    assert reasons["cat/empty.jpg"] == "empty file"
    assert reasons["cat/huge.png"].startswith("DecompressionBomb: 3000x3000 pixels exceeds the limit of 1000000")
    assert reasons["cat/link.jpg"] == "symbolic link: never followed"


def test_unsafe_archive_members_are_refused_unread(model: EmbeddingModel, tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        members = ["dog/ok.png", "cat/ok.png", "../escape.png", "/abs.png"]  # two classes: no wrapping folder
        for name, data in [(name, png((8, 8))) for name in members]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dog/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    rows, report = embed(model, archive, tmp_path / "out.parquet")
    assert list(rows) == ["dog/ok.png", "cat/ok.png"]  # archive order
    assert (rows["dog/ok.png"]["label"], rows["dog/ok.png"]["split"]) == ("dog", None)
    reasons = {skipped["path"]: skipped["reason"] for skipped in report["skipped"]}
    assert reasons == {
        "../escape.png": "'..' in path would land outside the output folder",
        "/abs.png": "absolute path would land outside the output folder",
        "dog/link.png": "link or special file: never followed",
    }


def test_an_ingested_folder_is_read_through_its_manifest(model: EmbeddingModel, folder: Path, tmp_path: Path) -> None:
    ingested = tmp_path / "ingested"
    ingest(IngestParams(source=str(folder)), ingested)
    rows, report = embed(model, ingested, tmp_path / "out.parquet")
    from_folder, _ = embed(model, folder, tmp_path / "folder.parquet")
    assert report["source_kind"] == "manifest" and len(rows) == 300
    for path, row in from_folder.items():
        twin = rows[f"images/{path}"]
        assert (twin["label"], twin["split"]) == (row["label"], row["split"])
        np.testing.assert_allclose(twin["embedding"], row["embedding"], atol=1e-6)


def test_npy_and_csv_hold_what_parquet_holds(model: EmbeddingModel, folder: Path, tmp_path: Path) -> None:
    rows, _ = embed(model, folder, tmp_path / "out.parquet")
    embed_dataset(model, folder, tmp_path / "out.npy", progress=False)
    vectors = np.load(tmp_path / "out.npy", mmap_mode="r")
    with open(tmp_path / "out.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert vectors.shape == (300, 64) and vectors.dtype == np.float32 and len(table) == 300
    for vector, line in zip(vectors, table, strict=True):
        row = rows[line["path"]]
        assert (line["label"], line["split"]) == (row["label"], row["split"])
        np.testing.assert_array_equal(vector, np.array(row["embedding"], dtype=np.float32))


def test_the_npy_header_is_numpys_and_fixed_in_length() -> None:
    for rows, dim in [(0, 512), (7, 3), (10**15, 4096)]:
        header = npy_header(rows, dim)
        assert len(header) == 128
        stream = io.BytesIO(header)
        assert np.lib.format.read_magic(stream) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        assert (shape, fortran, dtype) == ((rows, dim), False, np.dtype("<f4"))


def synthetic_tar(path: Path, count: int) -> Path:
    """``count`` distinct 8x8 PNGs in a plain tar, written member by member."""
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            data = png((8, 8), color=i % 256)
            info = tarfile.TarInfo(f"c{i % 3}/{i:05d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def traced_embedding(model_path: Path, data: Path, out: Path) -> int:
    """Peak bytes Python allocated while embedding ``data`` with the ONNX model at ``model_path``."""
    model = EmbeddingModel(model_path, model_path.name)
    tracemalloc.start()
    try:
        embed_dataset(model, data, out, batch_size=32, workers=1, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_traced_bytes(model_path: Path, data: Path, out: Path) -> int:
    """:func:`traced_embedding` in a fresh process. tracemalloc traces every thread of a process, and in pytest's
    own what other tests left behind can allocate into the trace: once, in a ``-m "not slow"`` run, the 2,000
    images peaked 15 MB above the 250 (most likely a thread an earlier test left running; not pinned down)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(traced_embedding, model_path, data, out).result()


def test_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """2,000 images cost what 250 do: nothing per image is kept (512-dim vectors alone would be 4 MB)."""
    wide = tiny_onnx(tmp_path / "wide.onnx", image_size=8, dim=512)
    few = peak_traced_bytes(wide, synthetic_tar(tmp_path / "few.tar", 250), tmp_path / "few.npy")
    many = peak_traced_bytes(wide, synthetic_tar(tmp_path / "many.tar", 2000), tmp_path / "many.npy")
    assert np.load(tmp_path / "many.npy").shape == (2000, 512)
    # Keeping the 1,750 extra vectors would add 3.5 MB; a quarter of that leaves room for allocator noise
    # (other tests' threads and caches run in the same process), and none for anything kept per image.
    kept_vectors = (2000 - 250) * 512 * 4
    assert many - few < kept_vectors / 4, (few, many)


def test_the_parquet_writer_writes_row_groups_as_it_goes(tmp_path: Path) -> None:
    writer = ParquetEmbeddingWriter(tmp_path / "out.parquet", 512, {"model": "m"}, row_group_rows=100)
    arrow_bytes = []
    for start in range(0, 1000, 50):
        rows = [SourceImage(f"{i}.png", None, None, b"") for i in range(start, start + 50)]
        writer.write(rows, np.full((50, 512), start, dtype=np.float32))
        assert writer.row_groups_written == (start + 50) // 100  # a row group every second batch
        arrow_bytes.append(pa.total_allocated_bytes())
    assert max(arrow_bytes) < 2 * 100 * 512 * 4 + 10**6  # at most a row group's worth held
    writer.close()
    metadata = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (1000, 10)
    assert pq.read_schema(tmp_path / "out.parquet").metadata[b"model"] == b"m"


def test_a_failed_run_leaves_no_file_and_an_existing_output_is_kept(
    model: EmbeddingModel, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.npy"
    embed_dataset(model, folder, out, progress=False)
    before = out.read_bytes()
    with pytest.raises(EmbedError, match="--overwrite"):
        embed_dataset(model, folder, out, progress=False)

    def fail_after_first_batch(self, rows, vectors) -> None:
        if self.rows:
            raise OSError("disk full")
        self.rows += len(rows)

    monkeypatch.setattr(NpyEmbeddingWriter, "write", fail_after_first_batch)
    with pytest.raises(OSError, match="disk full"):
        embed_dataset(model, folder, out, overwrite=True, progress=False)
    assert out.read_bytes() == before  # the last complete output stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.npy", "out.npy.report.json"]


def test_a_registry_model_is_pinned_to_the_version_its_alias_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.model_uris as model_uris

    downloads = []
    monkeypatch.setattr(
        model_uris, "resolve_version", lambda uri, project_dir: type("V", (), {"name": "ssl-embedder", "version": 7})
    )
    monkeypatch.setattr(
        model_uris, "download_onnx", lambda uri, dest, project_dir: downloads.append((uri, dest)) or dest / "m.onnx"
    )
    resolved = resolve_model("models:/ssl-embedder@champion", tmp_path)
    assert resolved == EmbeddingModel(tmp_path / "ssl-embedder" / "7" / "m.onnx", "models:/ssl-embedder@champion", "7")
    assert downloads == [("models:/ssl-embedder/7", tmp_path / "ssl-embedder" / "7")]


PARAMS = str(REPO_ROOT / "params.yaml")


def test_sslpipe_embed_runs_and_its_errors_are_one_line(
    model: EmbeddingModel, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert issubclass(EmbedError, UserError) and issubclass(SourceError, UserError)
    base = ["embed", "--params", PARAMS, "--model", str(model.onnx_path), "--data", str(folder)]
    assert cli_main([*base, "--out", str(tmp_path / "out.parquet"), "--batch-size", "16"]) == 0
    assert capsys.readouterr().out.startswith("300 images embedded (64 dims")
    assert json.loads(report_path(tmp_path / "out.parquet").read_text())["batch_size"] == 16
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    failures = {
        "--out": ([*base, "--out", str(tmp_path / "out.csv")], "unknown format '.csv'; choose one of .parquet, .npy"),
        "exists": ([*base, "--out", str(tmp_path / "out.parquet")], "exists; pass --overwrite to replace it"),
        "--data": ([*base[:-1], str(tmp_path / "none"), "--out", str(tmp_path / "b.npy")], "does not exist"),
        "--model": (
            [*base[:4], str(tmp_path / "none.onnx"), *base[5:], "--out", str(tmp_path / "c.npy")],
            "no such file",
        ),
        "no model": (
            [*base[:4], str(tmp_path / "model.onnx"), *base[5:], "--out", str(tmp_path / "d.npy")],
            "not a loadable ONNX model",
        ),
        "--workers": ([*base, "--out", str(tmp_path / "e.npy"), "--workers", "-1"], "workers >= 0"),
    }
    for case, (argv, message) in failures.items():
        assert cli_main(argv) == 2, case
        error = capsys.readouterr().err
        assert error.startswith("sslpipe embed: error: ") and message in error and error.count("\n") == 1, (case, error)
    assert cli_main([*base, "--out", str(tmp_path / "out.parquet"), "--overwrite"]) == 0


def test_cli_defaults_are_the_jobs(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_main(["embed", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert f"(default: {embed_job.DEFAULT_BATCH_SIZE})" in usage and f"(default: {embed_job.DEFAULT_WORKERS};" in usage
