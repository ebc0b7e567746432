"""Re-encoding an archive's JPEGs (benchmarks/reencode_jpeg.py) on real CIFAR-10 images."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import reencode_jpeg
from tests.datasets import cifar10_archive

IMAGES = 40


def small_archive(tmp_path: Path) -> Path:
    """The first IMAGES members of a real CIFAR-10 archive, their folders, and one text file."""
    target = tmp_path / "src" / "cifar10-jpeg.tar.gz"
    target.parent.mkdir()
    with tarfile.open(cifar10_archive(1, 1)) as source, tarfile.open(target, "w:gz") as out:
        taken = 0
        for member in source:
            if member.isfile():
                if taken == IMAGES:
                    break
                taken += 1
            out.addfile(member, source.extractfile(member) if member.isfile() else None)
        note = b"not an image\n"
        info = tarfile.TarInfo("cifar10/README.txt")
        info.size = len(note)
        out.addfile(info, io.BytesIO(note))
    return target


def read_members(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path) as archive:
        return {m.name: (archive.extractfile(m).read() if m.isfile() else None) for m in archive}


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_every_jpeg_is_reencoded_in_place_and_the_rest_is_copied(tmp_path: Path) -> None:
    source = small_archive(tmp_path)
    summary = reencode_jpeg.reencode_archive(source, tmp_path / "q30", quality=30)

    before, after = read_members(source), read_members(tmp_path / "q30" / source.name)
    assert list(after) == list(before)  # same members, same order
    assert after["cifar10/README.txt"] == before["cifar10/README.txt"]
    jpegs = [name for name in before if name.endswith(".jpg")]
    assert len(jpegs) == IMAGES == summary["images"]
    errors = []
    for name in jpegs:
        assert after[name] != before[name], name
        old, new = pixels(before[name]), pixels(after[name])
        assert new.shape == old.shape == (32, 32, 3)
        errors.append(np.abs(new - old).mean())
    # The summary's error is the pixels' own, and a quality-30 re-encoding of 32 px images visibly changes them.
    assert summary["mean_abs_error_vs_source_over_255"] == pytest.approx(float(np.mean(errors)), abs=1e-3)
    assert 2 < summary["mean_abs_error_vs_source_over_255"] < 30
    assert json.loads((tmp_path / "q30" / f"{source.name}.reencode.json").read_text()) == summary


def test_a_lower_quality_is_a_larger_dose(tmp_path: Path) -> None:
    source = small_archive(tmp_path)
    mild = reencode_jpeg.reencode_archive(source, tmp_path / "q90", quality=90)
    strong = reencode_jpeg.reencode_archive(source, tmp_path / "q20", quality=20)
    assert strong["mean_abs_error_vs_source_over_255"] > 2 * mild["mean_abs_error_vs_source_over_255"]
    assert strong["reencoded_mean_bytes"] < mild["reencoded_mean_bytes"]


def test_bad_arguments_fail_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = small_archive(tmp_path)
    assert reencode_jpeg.main([str(source), str(tmp_path / "out"), "--quality", "0"]) == 2
    assert "--quality 0: must be 1-95" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # the source's own folder: it would be overwritten
        reencode_jpeg.main([str(source), str(source.parent)])
    assert "would be overwritten" in capsys.readouterr().err
