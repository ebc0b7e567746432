"""A corpus of real images with planted problems, and the truth about each, for the curation benchmark.

Originals are drawn at random from a real dataset's train and test splits. Real
datasets hold their own near duplicates (CIFAR-10 many: ciFAIR), which would count
as errors against a truth that does not know them, so by default originals with
a twin among the originals (aligned similarity >= ``twin_similarity``, lower
than any threshold the stage uses) are left out first; the number left out is in
the truth. Planted into it, each from a different
original:

- exact duplicates: the same pixels under another name and format (PNG, BMP);
- near duplicates: one mild edit each (:data:`NEAR_DUPLICATE_EDITS`), a few with two;
- leaks: a test original copied into the training split, edited or not;
- quality problems: dark, overexposed, blank and blurry versions (``benchmarks.planted``).

The corpus is an ingested folder (``images/`` + ``manifest.csv``) that the curate
stage reads as is; ``truth.json`` says which file came from which original.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from benchmarks.planted import PLANTED
from ssl_core.curation.alignment import aligned_similarity, alignment_rendition
from ssl_core.curation.embedders import pixel_embedding
from ssl_core.curation.neighbors import SearchSettings, build_index, pairs_above, search
from ssl_core.manifest import ManifestRecord, sha256_file, write_manifest


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(30, 71)))
    return Image.open(buffer).convert("RGB")


def _shift(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """1-3 pixels per 32 cut off the left/top, resized back: the frame moved."""
    w, h = image.size
    dx, dy = (rng.integers(1, 4, size=2) * max(w, h) // 32).tolist()
    return image.crop((dx, dy, w, h)).resize((w, h), Image.Resampling.BICUBIC)


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """2-3 pixels per 32 cut off every side, resized back: a slight zoom."""
    w, h = image.size
    m = int(rng.integers(2, 4)) * max(w, h) // 32
    return image.crop((m, m, w - m, h - m)).resize((w, h), Image.Resampling.BICUBIC)


def _brightness(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))


def _contrast(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(rng.choice([rng.uniform(0.7, 0.85), rng.uniform(1.15, 1.3)]))


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another resolution (x0.5 to x2): a thumbnail or an upscaled copy."""
    scale = float(rng.choice([0.5, 0.75, 1.5, 2.0]))
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0) * max(image.size) / 32))


NEAR_DUPLICATE_EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "jpeg": _jpeg,
    "shift": _shift,
    "crop": _crop,
    "brightness": _brightness,
    "contrast": _contrast,
    "resize": _resize,
    "blur": _blur,
}


@dataclass(frozen=True)
class CorpusSize:
    train_originals: int = 4000
    test_originals: int = 1000
    exact_duplicates: int = 100
    near_duplicates_per_edit: int = 60  # x 7 edits, plus as many with two edits: 840
    leaks: int = 100
    quality_per_issue: int = 50


def read_originals(archive: Path, split: str, count: int, seed: int) -> list[tuple[str, Image.Image]]:
    """``count`` random images of ``split`` from a dataset archive laid out ``<top>/<split>/<class>/<file>``."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.split("/")[1:2] == [split]]
        chosen = np.random.default_rng(seed).choice(len(members), size=min(count, len(members)), replace=False)
        out = []
        for i in sorted(chosen):
            member = members[i]
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                out.append(("/".join(member.name.split("/")[2:]), image.convert("RGB")))
    return out


def without_twins(images: list[tuple[str, Image.Image]], twin_similarity: float) -> list[tuple[str, Image.Image]]:
    """``images`` minus every one with an aligned-similarity twin among them."""
    embeddings = np.stack([pixel_embedding(image) for _, image in images])
    renditions = np.stack([alignment_rendition(image) for _, image in images])
    similarities, ids = search(build_index(embeddings, SearchSettings()), embeddings, 11)
    first, second, _ = pairs_above(similarities, ids, -np.inf)
    twins = aligned_similarity(renditions, first, second) >= twin_similarity
    excluded = set(first[twins].tolist()) | set(second[twins].tolist())
    return [item for i, item in enumerate(images) if i not in excluded]


def build_corpus(
    archive: Path, out_dir: Path, size: CorpusSize = CorpusSize(), seed: int = 0, twin_similarity: float | None = 0.85
) -> dict:
    """Writes the corpus into ``out_dir`` (an ingested folder) and returns the truth, also in truth.json.

    Truth: ``origin`` maps every path to the original it was made from (itself for
    originals); ``planted`` lists each planted file with its kind and edit.
    """
    rng = np.random.default_rng(seed)
    train = read_originals(archive, "train", size.train_originals, seed)
    test_split = "val" if "imagenette" in archive.name else "test"
    test = read_originals(archive, test_split, size.test_originals, seed + 1)
    num_drawn = len(train) + len(test)
    if twin_similarity is not None:
        both = without_twins(train + test, twin_similarity)
        kept = {id(image) for _, image in both}
        train = [item for item in train if id(item[1]) in kept]
        test = [item for item in test if id(item[1]) in kept]
    records: list[ManifestRecord] = []
    origin: dict[str, str] = {}
    planted: list[dict] = []

    def save(image: Image.Image, split: str, name: str, label: str, source: str, kind: str, edit: str = "") -> str:
        path = f"images/{split}/{label}/{name}"
        file = out_dir / path
        file.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".png": "PNG", ".bmp": "BMP", ".jpg": "JPEG"}[file.suffix]
        image.save(file, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        with Image.open(file) as check:
            width, height = check.size
        records.append(
            ManifestRecord(path, sha256_file(file), label, "test" if split == "test" else "train", width, height)
        )
        origin[path] = source or path
        if kind != "original":
            planted.append({"path": path, "kind": kind, "edit": edit, "origin": origin[path]})
        return path

    # Originals are stored as PNG: their pixels are then exactly the decoded ones.
    train_paths = [
        save(img, "train", name.replace(".jpg", ".png"), name.split("/")[0], "", "original") for name, img in train
    ]
    test_paths = [
        save(img, "test", name.replace(".jpg", ".png"), name.split("/")[0], "", "original") for name, img in test
    ]
    pool = iter(rng.permutation(len(train)).tolist())  # each planted file from its own original

    for n in range(size.exact_duplicates):
        i = next(pool)
        name, image = train[i]
        suffix = ".bmp" if n % 2 else ".png"
        save(image, "train", f"exact_{n}{suffix}", name.split("/")[0], train_paths[i], "exact_duplicate")
    edits = list(NEAR_DUPLICATE_EDITS.items())
    for edit_name, edit in edits:
        for n in range(size.near_duplicates_per_edit):
            i = next(pool)
            name, image = train[i]
            save(
                edit(image, rng),
                "train",
                f"near_{edit_name}_{n}.jpg",
                name.split("/")[0],
                train_paths[i],
                "near_duplicate",
                edit_name,
            )
    for n in range(size.near_duplicates_per_edit * len(edits)):
        i = next(pool)
        name, image = train[i]
        (a_name, a), (b_name, b) = (edits[j] for j in rng.choice(len(edits), size=2, replace=False))
        save(
            b(a(image, rng), rng),
            "train",
            f"near_two_{n}.jpg",
            name.split("/")[0],
            train_paths[i],
            "near_duplicate",
            f"{a_name}+{b_name}",
        )
    for n, i in enumerate(rng.choice(len(test), size=size.leaks, replace=False).tolist()):
        name, image = test[i]
        edit_name, edit = edits[n % len(edits)] if n % 4 else ("none", lambda im, _: im)
        save(
            edit(image, rng),
            "train",
            f"leak_{n}.jpg" if edit_name != "none" else f"leak_{n}.png",
            name.split("/")[0],
            test_paths[i],
            "leak",
            edit_name,
        )
    for issue, make in PLANTED.items():
        for n in range(size.quality_per_issue):
            i = next(pool)
            name, image = train[i]
            save(make(image, rng), "train", f"{issue}_{n}.png", name.split("/")[0], train_paths[i], issue)

    write_manifest(records, out_dir / "manifest.csv")
    truth = {
        "archive": archive.name,
        "seed": seed,
        "size": vars(size),
        "twin_similarity": twin_similarity,
        "originals_left_out_as_twins": num_drawn - len(train) - len(test),
        "origin": origin,
        "planted": planted,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return truth
