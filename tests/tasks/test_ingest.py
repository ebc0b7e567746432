"""Ingest: real images in, manifest out; bad files quarantined, unsafe members and links refused."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from ssl_core.manifest import MANIFEST_NAME, read_manifest, sha256_file
from tasks.ingest import (
    REPORT_NAME,
    IngestError,
    IngestReport,
    _read_regular_file,
    run,
    split_and_label,
    unsafe_member_reason,
)
from tasks.params import IngestParams


def extract(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "cifar10-subset"


def jpeg_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_archive_gives_labeled_splits_and_a_faithful_manifest(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    report = run(IngestParams(source=str(tiny_cifar_archive)), tmp_path / "out")
    assert report.num_images == 300 and report.splits == {"test": 100, "train": 200}
    assert len(report.labels) == 10 and set(report.labels.values()) == {30}
    records = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    first = records[0]
    assert first.path.startswith("images/test/airplane/") and first.label == "airplane" and first.split == "test"
    assert (first.width, first.height) == (32, 32)
    assert first.sha256 == sha256_file(tmp_path / "out" / first.path)
    assert report.manifest_sha256 == sha256_file(tmp_path / "out" / MANIFEST_NAME)


def test_ingest_is_deterministic(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    run(IngestParams(source=str(tiny_cifar_archive)), tmp_path / "a")
    run(IngestParams(source=str(tiny_cifar_archive)), tmp_path / "b")
    assert (tmp_path / "a" / MANIFEST_NAME).read_bytes() == (tmp_path / "b" / MANIFEST_NAME).read_bytes()


def test_image_folder_source(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    folder = extract(tiny_cifar_archive, tmp_path / "src")
    report = run(IngestParams(source=str(folder)), tmp_path / "out")
    assert report.num_images == 300 and report.num_unlabeled == 0


def test_flat_folder_is_unlabeled_in_the_default_split(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    folder = extract(tiny_cifar_archive, tmp_path / "src")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(sorted((folder / "train").rglob("*.jpg"))[:12]):
        shutil.copy(image, flat / f"img{i:02d}.jpg")
    report = run(IngestParams(source=str(flat), default_split="unlabeled"), tmp_path / "out")
    assert report.num_images == 12 and report.num_unlabeled == 12 and report.splits == {"unlabeled": 12}
    assert all(r.label is None for r in read_manifest(tmp_path / "out" / MANIFEST_NAME))


def test_zip_source(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    folder = extract(tiny_cifar_archive, tmp_path / "src")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.jpg"))[:40]:
            zf.writestr(path.relative_to(folder.parent).as_posix(), path.read_bytes())
    report = run(IngestParams(source=str(archive)), tmp_path / "out")
    assert report.num_images == 40 and set(report.splits) == {"test"}


def test_undecodable_files_are_quarantined_with_a_reason_not_dropped(tiny_cifar_archive: Path, tmp_path: Path) -> None:
    folder = extract(tiny_cifar_archive, tmp_path / "src")
    good = (folder / "train" / "cat" / "0000.jpg").read_bytes()
    (folder / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "train" / "cat" / "notes.jpg").write_text("this is not an image")
    (folder / "README.txt").write_text("hello")
    report = run(IngestParams(source=str(folder)), tmp_path / "out")
    assert report.num_images == 300
    reasons = {q["path"]: q["reason"] for q in report.quarantined}
    assert set(reasons) == {"train/cat/truncated.jpg", "train/cat/notes.jpg", "README.txt"}
    assert "corrupt" in reasons["train/cat/truncated.jpg"]
    assert "UnidentifiedImageError" in reasons["train/cat/notes.jpg"]
    assert (tmp_path / "out" / "quarantine" / "train" / "cat" / "truncated.jpg").is_file()
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert len(saved["quarantined"]) == 3


def test_unsafe_archive_members_are_refused_and_never_written(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    data = jpeg_bytes()
    with tarfile.open(archive, "w") as tar:
        for name in ("set/train/cat/ok.jpg", "../escape.jpg", "/tmp/absolute.jpg", "set/train/../../up.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("set/train/cat/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    out = tmp_path / "nested" / "out"
    report = run(IngestParams(source=str(archive)), out)
    assert report.num_images == 1
    assert {r["member"] for r in report.refused} == {
        "../escape.jpg",
        "/tmp/absolute.jpg",
        "set/train/../../up.jpg",
        "set/train/cat/link.jpg",
    }
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "nested" / "escape.jpg").exists()
    assert not (tmp_path / "up.jpg").exists() and not Path("/tmp/absolute.jpg").exists()
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {"images/train/cat/ok.jpg", MANIFEST_NAME, REPORT_NAME}


def test_unsafe_member_rules() -> None:
    assert unsafe_member_reason("a/b.jpg") is None
    assert unsafe_member_reason("../b.jpg") and unsafe_member_reason("/b.jpg") and unsafe_member_reason("C:/b.jpg")
    assert unsafe_member_reason("a\\..\\..\\b.jpg")


def test_split_and_label_from_paths() -> None:
    from pathlib import PurePosixPath as P

    assert split_and_label(P("train/cat/1.jpg"), "train") == ("train", "cat")
    assert split_and_label(P("VAL/n01/1.jpg"), "train") == ("val", "n01")
    assert split_and_label(P("cat/1.jpg"), "train") == ("train", "cat")
    assert split_and_label(P("1.jpg"), "unlabeled") == ("unlabeled", None)
    # A few labeled class folders next to many unlabeled images (STL-10's layout).
    assert split_and_label(P("unlabeled/1.jpg"), "train") == ("train", None)
    assert split_and_label(P("Unlabeled/drive-3/1.jpg"), "train") == ("train", None)
    assert split_and_label(P("train/unlabeled/1.jpg"), "train") == ("train", None)
    assert split_and_label(P("test/unlabeled/1.jpg"), "train") == ("test", None)


def test_missing_and_empty_sources_fail_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"ingest.source '.*nope' does not exist: set it to an image folder"):
        run(IngestParams(source=str(tmp_path / "nope")), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="is empty"):
        run(IngestParams(source=str(tmp_path / "empty")), tmp_path / "out")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("x")
    with pytest.raises(IngestError, match="No decodable image"):
        run(IngestParams(source=str(junk)), tmp_path / "out2")


def test_decompression_bomb_is_quarantined(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "big.jpg").write_bytes(jpeg_bytes(size=(300, 300)))
    (source / "small.jpg").write_bytes(jpeg_bytes(size=(10, 10)))
    report = run(IngestParams(source=str(source), max_image_pixels=1000), tmp_path / "out")
    assert report.num_images == 1
    assert "DecompressionBomb" in report.quarantined[0]["reason"]


def test_torchvision_cifar10_local_copy(
    tiny_cifar_archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CIFAR10 folder in torchvision's pickle format, built from real CIFAR images."""
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR10

    folder = extract(tiny_cifar_archive, tmp_path / "src")
    classes = sorted(p.name for p in (folder / "train").iterdir())
    root = tmp_path / "cifar-root"
    batches = root / CIFAR10.base_folder
    batches.mkdir(parents=True)
    for split, files in (("train", CIFAR10.train_list), ("test", CIFAR10.test_list)):
        images = sorted((folder / split).rglob("*.jpg"))
        data = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1).reshape(-1) for p in images])
        labels = [classes.index(p.parent.name) for p in images]
        for i, (name, _) in enumerate(files):  # torchvision concatenates the batch files
            part = slice(i, None, len(files))
            with open(batches / name, "wb") as f:
                pickle.dump({"data": data[part], "labels": labels[part]}, f)
    with open(batches / CIFAR10.meta["filename"], "wb") as f:
        pickle.dump({"label_names": classes}, f)
    # The md5 sums of the official files cannot match files we wrote ourselves.
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)

    report = run(IngestParams(source=str(root), format="torchvision-cifar10"), tmp_path / "out")
    assert report.num_images == 300 and report.splits == {"test": 100, "train": 200}
    assert set(report.labels) == set(classes)
    records = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    assert all(r.path.endswith(".png") and (r.width, r.height) == (32, 32) for r in records)


def test_torchvision_cifar10_without_copy_or_internet_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import CIFAR10

    def offline(self) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)  # never touch the network from a test
    with pytest.raises(IngestError, match="could not be downloaded .*network unreachable"):
        run(IngestParams(source=str(tmp_path / "nothing"), format="torchvision-cifar10"), tmp_path / "out")


# Links and special files inside a folder source: never followed, never read, always reported.

PASSWD_LIKE = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
SOURCE_IMAGES = ("test/dog/0.jpg", "train/cat/0.jpg", "train/cat/1.jpg", "train/dog/0.jpg")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``tmp_path/src`` with four small real JPEGs in train/test class folders."""
    source = tmp_path / "src"
    for i, name in enumerate(SOURCE_IMAGES):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(jpeg_bytes(color=(40 * i, 100, 200 - 40 * i)))
    return source


def ingested_paths(out: Path) -> set[str]:
    return {r.path for r in read_manifest(out / MANIFEST_NAME)}


def assert_rest_of_folder_ingested(report: IngestReport, out: Path) -> None:
    assert report.num_images == len(SOURCE_IMAGES)
    assert ingested_paths(out) == {f"images/{name}" for name in SOURCE_IMAGES}


def refusals(out: Path) -> dict[str, str]:
    """member -> reason, as saved in the report on disk."""
    return {r["member"]: r["reason"] for r in json.loads((out / REPORT_NAME).read_text())["refused"]}


def test_link_to_a_file_outside_the_source_is_refused_and_never_read(image_folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "passwd"
    secret.write_bytes(PASSWD_LIKE)
    (image_folder / "train" / "cat" / "x.jpg").symlink_to(secret)
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    # Not copied anywhere, under any name: images/, quarantine/, the report.
    assert all(PASSWD_LIKE[:20] not in p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert report.quarantined == [] and not (out / "quarantine").exists()
    assert report.refused == [{"member": "train/cat/x.jpg", "reason": "symbolic link: never followed"}]
    assert refusals(out) == {"train/cat/x.jpg": "symbolic link: never followed"}
    assert_rest_of_folder_ingested(report, out)


def test_link_to_a_valid_image_outside_the_source_is_refused_not_ingested(image_folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.jpg"
    elsewhere.write_bytes(jpeg_bytes(color=(1, 2, 3)))
    (image_folder / "train" / "cat" / "stolen.jpg").symlink_to(elsewhere)
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    assert_rest_of_folder_ingested(report, out)
    assert "images/train/cat/stolen.jpg" not in ingested_paths(out)
    assert refusals(out) == {"train/cat/stolen.jpg": "symbolic link: never followed"}
    assert not (out / "images" / "train" / "cat" / "stolen.jpg").exists()


def test_link_to_a_folder_outside_the_source_is_not_descended_into(image_folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "other-dataset" / "bird"
    outside.mkdir(parents=True)
    for i in range(3):
        (outside / f"{i}.jpg").write_bytes(jpeg_bytes(color=(10, 10 * i, 10)))
    (image_folder / "train" / "bird").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    assert_rest_of_folder_ingested(report, out)
    assert "bird" not in report.labels and not (out / "images" / "train" / "bird").exists()
    assert refusals(out) == {"train/bird": "symbolic link: never followed"}


def test_link_loops_do_not_hang_or_crash(image_folder: Path, tmp_path: Path) -> None:
    cat = image_folder / "train" / "cat"
    (cat / "a.jpg").symlink_to(cat / "b.jpg")
    (cat / "b.jpg").symlink_to(cat / "a.jpg")
    (cat / "parent").symlink_to("..", target_is_directory=True)  # train/cat/parent -> train/
    (image_folder / "self").symlink_to(".", target_is_directory=True)
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    assert_rest_of_folder_ingested(report, out)
    assert set(refusals(out)) == {"train/cat/a.jpg", "train/cat/b.jpg", "train/cat/parent", "self"}
    assert {r["reason"] for r in report.refused} == {"symbolic link: never followed"}


def test_hard_link_inside_the_source_is_ingested_as_a_normal_image(image_folder: Path, tmp_path: Path) -> None:
    original = image_folder / "train" / "cat" / "0.jpg"
    os.link(original, image_folder / "train" / "dog" / "same-as-cat.jpg")
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    assert report.num_images == len(SOURCE_IMAGES) + 1 and report.refused == []
    copy = out / "images" / "train" / "dog" / "same-as-cat.jpg"
    assert copy.read_bytes() == original.read_bytes() and not copy.is_symlink()
    assert "images/train/dog/same-as-cat.jpg" in ingested_paths(out)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_in_the_source_is_refused_without_blocking(image_folder: Path, tmp_path: Path) -> None:
    os.mkfifo(image_folder / "train" / "cat" / "pipe.jpg")  # reading it would wait forever for a writer
    out = tmp_path / "out"
    report = run(IngestParams(source=str(image_folder)), out)
    assert_rest_of_folder_ingested(report, out)
    assert refusals(out) == {"train/cat/pipe.jpg": "FIFO: never read"}


def test_source_that_is_itself_a_link_to_a_folder_is_followed(image_folder: Path, tmp_path: Path) -> None:
    """Naming a linked folder as ingest.source is the user's choice; only links below it are refused."""
    alias = tmp_path / "alias"
    alias.symlink_to(image_folder, target_is_directory=True)
    out = tmp_path / "out"
    report = run(IngestParams(source=str(alias)), out)
    assert_rest_of_folder_ingested(report, out)
    assert report.refused == []


def test_folder_holding_only_links_has_no_image_and_says_so(tmp_path: Path) -> None:
    source = tmp_path / "links-only"
    source.mkdir()
    (tmp_path / "real.jpg").write_bytes(jpeg_bytes())
    (source / "real.jpg").symlink_to(tmp_path / "real.jpg")
    with pytest.raises(IngestError, match=r"No decodable image .*\(0 quarantined, 1 refused\)"):
        run(IngestParams(source=str(source)), tmp_path / "out")


def test_a_file_swapped_for_a_link_or_fifo_after_listing_is_not_read(tmp_path: Path) -> None:
    """The open itself refuses links (O_NOFOLLOW) and non-regular files (fstat): no check-then-open race."""
    secret = tmp_path / "passwd"
    secret.write_bytes(PASSWD_LIKE)
    (tmp_path / "link.jpg").symlink_to(secret)
    assert _read_regular_file(tmp_path / "link.jpg") == (b"", "symbolic link: never followed")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        assert _read_regular_file(tmp_path / "pipe.jpg") == (b"", "not a regular file when opened: never read")
    (tmp_path / "ok.jpg").write_bytes(b"bytes")
    assert _read_regular_file(tmp_path / "ok.jpg") == (b"bytes", None)
