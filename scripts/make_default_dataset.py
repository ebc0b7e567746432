"""Cuts the embedded default dataset from the shared CIFAR-10 archive.

    python scripts/make_default_dataset.py ../shared/datasets/cifar10-jpeg.tar.gz \
        data/default/cifar10-subset.tar.gz --train-per-class 500 --test-per-class 100

Takes the first N images of each class (files 0000.jpg, 0001.jpg, ...) of each
split, so the subset is class-balanced and the same every time; the archive is
written with fixed member order, owners and timestamps, so it is byte-identical too.
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="cifar10-jpeg.tar.gz (layout cifar10/<split>/<class>/NNNN.jpg)")
    parser.add_argument("output", type=Path, help="the .tar.gz to write")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--top", default="cifar10-subset", help="top-level folder inside the archive")
    args = parser.parse_args()
    quota = {"train": args.train_per_class, "test": args.test_per_class}

    selected: dict[str, bytes] = {}
    with tarfile.open(args.source) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10, split, class, file
            if not member.isfile() or len(parts) != 4:
                continue
            _, split, label, filename = parts
            if split in quota and int(Path(filename).stem) < quota[split]:
                selected[f"{args.top}/{split}/{label}/{filename}"] = archive.extractfile(member).read()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out:
            for name in sorted(selected):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(selected[name]), 0, 0o644
                out.addfile(info, io.BytesIO(selected[name]))
    print(f"wrote {len(selected)} images to {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
