"""Which images kNN and the linear probe use: whichever have labels.

Users have many unlabeled images and few labels, so labels may exist for part of the
data only. The bank (and the probe's training set) is every labeled image of the
train split; the queries are the labeled images of the test split. When the test
split has none, a share of each class's labeled train images is held out as queries
(stratified, seeded), so a small labeled subset inside the training folder is still
scored. Unlabeled images count only for the label-free metrics.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from ssl_core.data import UNLABELED


@dataclass(frozen=True)
class LabeledSplit:
    """Rows of the embedded splits that kNN uses.

    Attributes:
        bank: (n,) rows of the train split's embeddings.
        queries: (q,) rows of the test split's embeddings if ``queries_from_test``, else of the train split's.
        queries_from_test: whether the queries are the test split's labeled images (else held-out train images).
        num_classes_in_bank: distinct labels among the bank.
    """

    bank: torch.Tensor
    queries: torch.Tensor
    queries_from_test: bool
    num_classes_in_bank: int

    def describe(self, train_split: str, test_split: str, num_unlabeled: int) -> str:
        queries = (
            f"{len(self.queries)} labeled {test_split!r} images"
            if self.queries_from_test
            else f"{len(self.queries)} labeled {train_split!r} images held out"
        )
        unlabeled = f"; {num_unlabeled} unlabeled images count for the label-free metrics only" if num_unlabeled else ""
        return (
            f"kNN and linear probe: bank {len(self.bank)} labeled {train_split!r} images "
            f"({self.num_classes_in_bank} classes), queries {queries}{unlabeled}"
        )

    def to_dict(self) -> dict[str, int | str]:
        return {
            "bank": len(self.bank),
            "queries": len(self.queries),
            "queries_from": "test split" if self.queries_from_test else "train split, held out",
            "classes": self.num_classes_in_bank,
        }


def choose_labeled(
    train_labels: list[int], test_labels: list[int], holdout_fraction: float, seed: int
) -> LabeledSplit | str:
    """The bank and queries among labeled images, or why there can be none (a sentence).

    Args:
        train_labels: label index of each train-split image (``UNLABELED`` for none).
        test_labels: the same for the test split.
        holdout_fraction: share of each class's labeled train images held out as queries
            when no test image is labeled; at least one per class that has two or more.
        seed: draws the held-out images.
    """
    labeled_train = [row for row, label in enumerate(train_labels) if label != UNLABELED]
    labeled_test = [row for row, label in enumerate(test_labels) if label != UNLABELED]
    if not labeled_train:
        return "no image of the train split has a label"
    if labeled_test:
        bank, queries = labeled_train, labeled_test
    else:
        bank, queries = _hold_out(labeled_train, train_labels, holdout_fraction, seed)
        if not queries:
            return "the test split has no labeled images and no class has two labeled train images to hold one out"
    classes = len({train_labels[row] for row in bank})
    if classes < 2:
        return f"the labeled train images are all of one class ({len(bank)} images): kNN needs two classes"
    return LabeledSplit(torch.tensor(bank), torch.tensor(queries), bool(labeled_test), classes)


def _hold_out(rows: list[int], labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Splits ``rows`` per class into (kept, held out): round(fraction * n), at least 1, never the last image."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        by_class[labels[row]].append(row)
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        held += order[:count]
        kept += order[count:]
    return sorted(kept), sorted(held)
