"""Which images kNN uses: every labeled one, the test split's as queries, else held-out train images."""

from __future__ import annotations

from collections import Counter

from tasks.labeled_split import LabeledSplit, choose_labeled

U = -1  # unlabeled


def test_labeled_test_images_are_the_queries_and_unlabeled_images_are_left_out() -> None:
    split = choose_labeled([0, U, 1, U, 0], [U, 1, 0], holdout_fraction=0.2, seed=0)
    assert isinstance(split, LabeledSplit)
    assert split.bank.tolist() == [0, 2, 4] and split.queries.tolist() == [1, 2]
    assert split.to_dict() == {"bank": 3, "queries": 2, "queries_from": "test split", "classes": 2}
    assert "bank 3 labeled 'train' images (2 classes), queries 2 labeled 'test' images" in split.describe(
        "train", "test", num_unlabeled=3
    )


def test_without_labeled_test_images_a_share_of_each_class_is_held_out() -> None:
    labels = [0] * 10 + [1] * 5 + [2] * 1 + [U] * 7
    split = choose_labeled(labels, [U, U], holdout_fraction=0.2, seed=0)
    assert isinstance(split, LabeledSplit) and not split.queries_from_test
    held = Counter(labels[row] for row in split.queries.tolist())
    # round(0.2 n), at least one, and never a class's only image.
    assert held == {0: 2, 1: 1}
    assert set(split.bank.tolist()).isdisjoint(split.queries.tolist())
    assert sorted(split.bank.tolist() + split.queries.tolist()) == list(range(16))
    assert choose_labeled(labels, [], 0.2, seed=0).queries.tolist() == split.queries.tolist()
    assert choose_labeled(labels, [], 0.2, seed=1).queries.tolist() != split.queries.tolist()


def test_why_there_is_no_knn() -> None:
    assert choose_labeled([U, U], [0, 1], 0.2, 0) == "no image of the train split has a label"
    assert "one class" in choose_labeled([0, 0, U], [0], 0.2, 0)
    # One image per class and no labeled test image: nothing can be held out.
    assert "no class has two labeled train images" in choose_labeled([0, 1, 2], [U], 0.2, 0)
