"""Linear probe against scikit-learn's logistic regression on the bundled digits set, plus few-label cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssl_core.linear_probe import (
    DEFAULT_WEIGHT_DECAY,
    DEFAULT_WEIGHT_DECAYS,
    LinearProbeResult,
    _stratified_split,
    fit_logistic_regression,
    linear_probe,
)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1797 8x8 digit images as (n, 64) raw pixel features in [0, 16], shuffled once."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return torch.from_numpy(x[order]).float(), torch.from_numpy(y[order])


def one_per_class(y: torch.Tensor, num_classes: int, per_class: int = 1) -> torch.Tensor:
    return torch.cat([(y == c).nonzero().squeeze(1)[:per_class] for c in range(num_classes)])


@pytest.mark.parametrize("weight_decay", [1e-2, 1e-1])
def test_fit_reaches_the_scikit_learn_optimum(digits, weight_decay):
    x, y = digits
    train_x, train_y, n = x[:600].double(), y[:600], 600
    # Standardized with the train rows, as fit_logistic_regression does inside, so both penalize the same W.
    scaler = StandardScaler().fit(train_x.numpy())
    # sklearn: 0.5 ||W||^2 + C sum_i loss_i = C n (mean_i loss_i + 1 / (2 C n) ||W||^2), so C = 1 / (weight_decay n).
    reference = LogisticRegression(C=1.0 / (weight_decay * n), tol=1e-12, max_iter=10_000)
    reference.fit(scaler.transform(train_x.numpy()), train_y.numpy())
    expected = reference.predict_proba(scaler.transform(x.double().numpy()))  # (1797, 10)

    weight, bias = fit_logistic_regression(train_x, train_y, num_classes=10, weight_decay=weight_decay)
    assert weight.shape == (10, 64) and bias.shape == (10,)
    probabilities = torch.softmax(x.double() @ weight.T + bias, dim=1)  # raw x: W, b were mapped back
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=1e-4)


def test_fit_runs_under_inference_mode(digits):
    # The evaluate stage embeds under inference_mode; the fit must still get gradients.
    x, y = digits
    expected = fit_logistic_regression(x[:200], y[:200], num_classes=10, weight_decay=1e-1)
    with torch.inference_mode():
        x_inference = x[:200].clone()
        weight, bias = fit_logistic_regression(x_inference, y[:200], num_classes=10, weight_decay=1e-1)
    torch.testing.assert_close((weight, bias), expected)


def test_probe_on_digits_matches_scikit_learn(digits):
    x, y = digits
    train_x, train_y, test_x, test_y = x[:1200], y[:1200], x[1200:], y[1200:]
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)

    assert isinstance(result, LinearProbeResult)
    assert result.weight_decay in DEFAULT_WEIGHT_DECAYS
    assert (result.num_train, result.num_test) == (1200, 597)
    assert result.top1 > 0.9
    assert result.top1 <= result.top5 <= 1.0
    scaler = StandardScaler().fit(train_x.numpy())
    reference = LogisticRegression(C=1.0 / (result.weight_decay * len(train_y)), max_iter=10_000)
    reference.fit(scaler.transform(train_x.numpy()), train_y.numpy())
    reference_top1 = reference.score(scaler.transform(test_x.numpy()), test_y.numpy())
    assert abs(result.top1 - reference_top1) <= 0.01
    assert result.to_dict() == {
        "top1": result.top1,
        "top5": result.top5,
        "weight_decay": result.weight_decay,
        "num_train": 1200,
        "num_test": 597,
    }


def test_top5_is_clipped_to_the_number_of_classes():
    # Three classes: top-5 means all three, so every test image is a top-5 hit.
    generator = torch.Generator().manual_seed(0)
    train_y, test_y = torch.arange(30) % 3, torch.arange(9) % 3
    train_x, test_x = torch.randn(30, 4, generator=generator), torch.randn(9, 4, generator=generator)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=3, weight_decays=(1e-1,))
    assert result.top5 == 1.0


def test_ties_go_to_the_stronger_regularization():
    # Far-apart clusters: every weight decay classifies the validation split perfectly.
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[20.0, 0.0], [0.0, 20.0], [-20.0, -20.0]])
    train_y, test_y = torch.arange(60) % 3, torch.arange(15) % 3
    train_x = centers[train_y] + torch.randn(60, 2, generator=generator)
    test_x = centers[test_y] + torch.randn(15, 2, generator=generator)
    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=3, weight_decays=(1e-4, 1e-1, 1e-2))
    assert result.weight_decay == 1e-1
    assert result.top1 == 1.0


def test_split_is_stratified_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit_idx, val_idx = _stratified_split(y, validation_fraction=0.2, seed=0)
    assert sorted(torch.cat([fit_idx, val_idx]).tolist()) == list(range(17))  # a partition of the train set
    assert torch.bincount(y[val_idx], minlength=3).tolist() == [2, 1, 0]  # round(0.2 n_c) per class
    assert torch.equal(_stratified_split(y, 0.2, seed=0)[1], val_idx)
    assert any(not torch.equal(_stratified_split(y, 0.2, seed=s)[1], val_idx) for s in range(1, 5))


def test_one_image_per_class_skips_the_sweep(digits):
    x, y = digits
    train_idx = one_per_class(y[:1200], num_classes=10)
    result = linear_probe(x[train_idx], y[train_idx], x[1200:], y[1200:], num_classes=10)
    assert result.weight_decay == DEFAULT_WEIGHT_DECAY
    assert result.num_train == 10
    assert result.top1 > 0.3  # one digit of each class is far better than chance (0.1)


def test_empty_validation_split_skips_the_sweep(digits):
    # Two images per class: round(0.2 * 2) = 0, so no class gives one up for validation.
    x, y = digits
    train_idx = one_per_class(y[:1200], num_classes=10, per_class=2)
    result = linear_probe(x[train_idx], y[train_idx], x[1200:], y[1200:], num_classes=10, weight_decays=(1e-4,))
    assert result.weight_decay == DEFAULT_WEIGHT_DECAY


def test_single_train_class_raises():
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 3), torch.zeros(2).long(), 4)


def test_empty_test_set_raises():
    train_y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="test split is empty"):
        linear_probe(torch.randn(4, 3), train_y, torch.empty(0, 3), torch.empty(0, dtype=torch.long), 2)


def test_label_out_of_range_raises():
    train_y = torch.tensor([0, 1, 0, 3])
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, 2\)"):
        linear_probe(torch.randn(4, 3), train_y, torch.randn(2, 3), torch.tensor([0, 1]), num_classes=2)


def test_same_seed_same_result(digits):
    x, y = digits
    args = (x[:300], y[:300], x[1200:], y[1200:], 10, (1e-3, 1e-2, 1e-1))
    assert linear_probe(*args, seed=3) == linear_probe(*args, seed=3)


@pytest.mark.cuda  # skipped without a CUDA GPU (tests/conftest.py)
def test_cuda_matches_cpu(digits):
    x, y = digits
    args = (x[:300], y[:300], x[1200:], y[1200:])
    on_cpu = linear_probe(*args, num_classes=10, weight_decays=(1e-2, 1e-1))
    on_cuda = linear_probe(*(t.cuda() for t in args), num_classes=10, weight_decays=(1e-2, 1e-1))
    assert on_cuda.weight_decay == on_cpu.weight_decay
    assert abs(on_cuda.top1 - on_cpu.top1) <= 1 / len(args[3])  # float64 sums may flip one borderline image
