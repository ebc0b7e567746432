"""An image archive with every JPEG re-encoded at another quality: a dose of compression loss.

The CIFAR-10 we train on is a JPEG re-encoding (quality 75, 4:2:0 chroma; a mean
absolute error of about 5.8/255 against the original pixels, ../shared/datasets),
while lightly's table was made on the lossless originals, which no machine here
has. What the first dose costs cannot be measured without them; a second dose can:
training on this archive against the source tells whether the loss matters at all
(``gpu_session.sh PLAN=accuracy-long``).

The layout stays as it was, member for member; the summary (JSON, printed and
written next to the archive) gives the added error against the source's pixels.

    python benchmarks/reencode_jpeg.py ../shared/datasets/cifar10-jpeg.tar.gz /tmp/q50 --quality 50
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_SUFFIXES = (".jpg", ".jpeg")
CHUNK = 2000  # images per task of the process pool


def reencode(data: bytes, quality: int) -> tuple[bytes, float]:
    """One JPEG re-encoded at ``quality`` with PIL's other defaults (4:2:0 chroma, as the source), and its
    mean absolute pixel error against the source's decoded pixels, in 1/255 units."""
    with Image.open(io.BytesIO(data)) as image:
        source = image.convert("RGB")
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", quality=quality)
    encoded = buffer.getvalue()
    with Image.open(io.BytesIO(encoded)) as image:
        decoded = np.asarray(image.convert("RGB"), dtype=np.int16)
    error = float(np.abs(decoded - np.asarray(source, dtype=np.int16)).mean())
    return encoded, error


def reencode_chunk(payloads: list[bytes], quality: int) -> list[tuple[bytes, float]]:
    return [reencode(data, quality) for data in payloads]


def reencode_archive(source: Path, out_dir: Path, quality: int, workers: int = 1) -> dict:
    """Writes ``out_dir/<source name>`` with every JPEG member re-encoded; returns the summary.

    Members that are not JPEG files (folders, anything else) are copied as they are.

    Raises:
        ValueError: for a quality outside 1-95 (PIL's range for ``quality``), or an archive without JPEGs.
    """
    if not 1 <= quality <= 95:
        raise ValueError(f"--quality {quality}: must be 1-95 (PIL's JPEG quality range)")
    started = time.perf_counter()
    with tarfile.open(source) as archive:
        members = [(member, archive.extractfile(member).read() if member.isfile() else None) for member in archive]
    jpeg_indices = [i for i, (m, _) in enumerate(members) if m.isfile() and m.name.lower().endswith(JPEG_SUFFIXES)]
    if not jpeg_indices:
        raise ValueError(f"{source} holds no .jpg/.jpeg files")
    payloads = [members[i][1] for i in jpeg_indices]
    chunks = [payloads[start : start + CHUNK] for start in range(0, len(payloads), CHUNK)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = [item for chunk in pool.map(reencode_chunk, chunks, [quality] * len(chunks)) for item in chunk]
    replaced = dict(zip(jpeg_indices, results, strict=True))

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / source.name
    with tarfile.open(target, "w:gz") as archive:
        for index, (member, data) in enumerate(members):
            if index in replaced:
                data = replaced[index][0]
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    errors = np.array([error for _, error in results])
    summary = {
        "source": str(source),
        "archive": str(target),
        "quality": quality,
        "images": len(errors),
        "mean_abs_error_vs_source_over_255": round(float(errors.mean()), 3),
        "source_mean_bytes": round(float(np.mean([len(p) for p in payloads])), 1),
        "reencoded_mean_bytes": round(float(np.mean([len(data) for data, _ in results])), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / f"{source.name}.reencode.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a .tar.gz of JPEG images")
    parser.add_argument("out_dir", type=Path, help="folder for the re-encoded archive (same file name)")
    parser.add_argument("--quality", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="encoding processes")
    args = parser.parse_args(argv)
    if args.out_dir.resolve() == args.source.resolve().parent:
        parser.error(f"out_dir {args.out_dir} is the source's folder: the source would be overwritten")
    try:
        summary = reencode_archive(args.source, args.out_dir, args.quality, args.workers)
    except (ValueError, OSError, tarfile.TarError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
