"""Linear probe: multinomial logistic regression on frozen embeddings.

The standard SSL evaluation next to kNN (solo-learn and the SSL papers report
both): a linear classifier is fit on the frozen train embeddings and scored on
the test embeddings. We follow the protocol of CLIP, Radford et al., "Learning
Transferable Visual Models From Natural Language Supervision" (2021,
https://arxiv.org/abs/2103.00020, appendix A.3): L-BFGS logistic regression whose
L2 strength is chosen on a validation split of the train set, then refit on the
whole train set. Kornblith et al., "Do Better ImageNet Models Transfer Better?"
(2019, https://arxiv.org/abs/1805.08974) used the same L-BFGS logistic regression.

The objective, with z the standardized features (train mean/std), is

    mean_i CE(W z_i + b, y_i) + weight_decay / 2 * ||W||^2      (b not penalized)

so ``weight_decay = 1 / (C * N)`` for scikit-learn's ``LogisticRegression(C=C)``
on the same N standardized rows. Letters: n = train rows, d = embedding dim,
c = classes.

Usage::

    result = linear_probe(train_x, train_y, test_x, test_y, num_classes=10)
    result.top1, result.weight_decay
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# One value per decade: each value costs a full L-BFGS fit, so this is coarser than
# CLIP's search. Below 1e-4 the fit is nearly unregularized: with fewer images than
# dimensions it interpolates, L-BFGS needs thousands of iterations, and on random-init
# CIFAR-10 embeddings (1,000 train / 500 test) 1e-4 already scored no better than 1e-3
# (0.27 vs 0.28, against 0.33 at 1e-1).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# scikit-learn's default for L-BFGS. On the embeddings above, 300 iterations gave the
# same test accuracy as 100 (within two images of 500) at every weight decay of the grid.
PROBE_MAX_ITER = 100

# Used when no validation split can be held out (a class with a single train image,
# or too few images for any class to give one up). With that few labels the fit
# interpolates the train set, so we take a strong L2 (the grid's usual winner): as
# the L2 grows, the rows of W turn towards the class means of the standardized
# features (the gradient at W = 0), a prototype classifier, instead of fitting
# single images.
DEFAULT_WEIGHT_DECAY = 1e-1

# L-BFGS stops when the largest gradient entry or the change of the loss falls below
# these. The loss is a mean, so they do not depend on n; float64 makes them reachable.
# Small weight decays make the problem ill-conditioned (curvature ~ weight_decay):
# tighter values then buy digits of the probabilities, not accuracy, at several
# times the iterations. At weight_decay >= 1e-2 the probabilities match
# scikit-learn's optimum to 1e-4 (tests/ssl_core/test_linear_probe.py).
_TOLERANCE_GRAD = 1e-9
_TOLERANCE_CHANGE = 1e-12


@dataclass(frozen=True)
class LinearProbeResult:
    """Test accuracy of the linear probe and the L2 strength it was fit with."""

    top1: float
    top5: float  # top-min(5, num_classes) accuracy
    weight_decay: float  # chosen on the validation split, or DEFAULT_WEIGHT_DECAY
    num_train: int
    num_test: int

    def to_dict(self) -> dict:
        return asdict(self)


def fit_logistic_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fits L2-regularized multinomial logistic regression with full-batch L-BFGS.

    Features are standardized with the mean/std of ``x`` before the fit, so one
    weight-decay grid suits embeddings of any scale; the returned weight and bias
    are mapped back so that ``logits = x @ weight.T + bias`` acts on raw ``x``.
    The penalty is ``weight_decay / 2 * ||W||^2`` on the standardized-space W.

    Args:
        x: (n, d) train features, any float dtype, on CPU or CUDA.
        y: (n,) int64 labels in [0, num_classes).
        num_classes: c; classes absent from ``y`` get a zero weight row.
        weight_decay: L2 strength, > 0.
        max_iter: L-BFGS iterations at most.

    Returns:
        weight (c, d) and bias (c,), float64 on ``x.device``.
    """
    if weight_decay <= 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay}.")
    # The evaluate stage may call this under no_grad/inference_mode; L-BFGS needs autograd.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().to(torch.float64)  # float64: L-BFGS curvature estimates are noisy in float32
        y = y.detach().to(x.device, torch.long)
        mean = x.mean(dim=0)  # (d,)
        # Population std, as StandardScaler; a constant feature keeps scale 1 and stays 0.
        std = x.std(dim=0, correction=0)  # (d,)
        std = torch.where(std > 0, std, torch.ones_like(std))
        z = (x - mean) / std  # (n, d)

        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,  # strong Wolfe chooses the step; 1 is the natural quasi-Newton step
            max_iter=max_iter,
            tolerance_grad=_TOLERANCE_GRAD,
            tolerance_change=_TOLERANCE_CHANGE,
            history_size=20,  # curvature pairs kept; each is two (c, d) + (c,) tensors
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            logits = z @ weight.T + bias  # (n, c)
            loss = F.cross_entropy(logits, y) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)  # one step runs the whole L-BFGS loop, up to max_iter

    weight = weight.detach()
    # W z + b = W ((x - mean) / std) + b = (W / std) x + (b - W (mean / std)).
    raw_weight = weight / std  # (c, d)
    raw_bias = bias.detach() - weight @ (mean / std)  # (c,)
    return raw_weight, raw_bias


def _stratified_split(y: torch.Tensor, validation_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/validation indices holding out ``validation_fraction`` of each class (at least one kept)."""
    generator = torch.Generator().manual_seed(seed)  # CPU generator: same split on every device
    y_cpu = y.cpu()
    train_parts, val_parts = [], []
    for c in y_cpu.unique().tolist():
        members = (y_cpu == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        # round, not floor: 0.2 * 5 must give 1 even if it lands at 0.999...
        num_val = min(round(validation_fraction * len(members)), len(members) - 1)
        val_parts.append(members[:num_val])
        train_parts.append(members[num_val:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def _top_k_hits(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) bool: is the label among the k highest logits."""
    logits = x.to(torch.float64) @ weight.T + bias  # (n, c)
    top = logits.topk(min(k, weight.shape[0]), dim=1).indices  # (n, k)
    return (top == y.to(x.device).unsqueeze(1)).any(dim=1)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = PROBE_MAX_ITER,
) -> LinearProbeResult:
    """Top-1/top-5 test accuracy of logistic regression with a validated L2 strength (CLIP, A.3).

    Fits on ``1 - validation_fraction`` of each train class (seeded), keeps the
    weight decay with the best validation accuracy (ties go to the stronger
    regularization), refits on all train embeddings and scores the test ones.
    With a class that has a single train image, or no validation image at all,
    the sweep is skipped and :data:`DEFAULT_WEIGHT_DECAY` is used.

    Args:
        train_x: (n, d) frozen train embeddings.
        train_y: (n,) int64 labels in [0, num_classes).
        test_x: (m, d) frozen test embeddings.
        test_y: (m,) int64 labels in [0, num_classes).
        num_classes: c.
        weight_decays: grid of L2 strengths, each > 0.
        validation_fraction: share of each class held out for the sweep, in (0, 1).
        seed: seeds the validation split.
        max_iter: L-BFGS iterations of each fit at most.

    Raises:
        ValueError: fewer than 2 classes in train, an empty test set, mismatched
            shapes, labels outside [0, num_classes), or a bad grid / fraction.
    """
    if test_x.shape[0] == 0:
        raise ValueError("The linear probe needs test embeddings: the test split is empty.")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(
            f"Embeddings and labels differ in length: train {train_x.shape[0]} vs {train_y.shape[0]}, "
            f"test {test_x.shape[0]} vs {test_y.shape[0]}."
        )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"Train and test embedding dims differ: {tuple(train_x.shape)} vs {tuple(test_x.shape)}.")
    train_y, test_y = train_y.to(train_x.device), test_y.to(train_x.device)
    present = train_y.unique()
    if len(present) < 2:
        raise ValueError(
            f"The linear probe needs at least 2 classes in train, got {len(present)} "
            f"({present.tolist()}) over {train_y.shape[0]} images."
        )
    for name, labels in (("train", train_y), ("test", test_y)):
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}), got [{labels.min().item()}, {labels.max().item()}]."
            )
    if len(weight_decays) == 0 or min(weight_decays) <= 0:
        raise ValueError(f"weight_decays must be a non-empty sequence of values > 0, got {list(weight_decays)}.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}.")

    fit_idx, val_idx = _stratified_split(train_y, validation_fraction, seed)
    smallest_class = torch.bincount(train_y)[present].min().item()
    if smallest_class < 2 or len(val_idx) == 0:
        chosen = DEFAULT_WEIGHT_DECAY
    else:
        fit_idx, val_idx = fit_idx.to(train_x.device), val_idx.to(train_x.device)
        best_hits = -1
        # Strongest first with a strict ">" so that ties keep the stronger regularization.
        for weight_decay in sorted(weight_decays, reverse=True):
            weight, bias = fit_logistic_regression(
                train_x[fit_idx], train_y[fit_idx], num_classes, weight_decay, max_iter
            )
            # Integer hit counts, so equal accuracies compare equal.
            hits = int(_top_k_hits(train_x[val_idx], train_y[val_idx], weight, bias, k=1).sum())
            if hits > best_hits:
                best_hits, chosen = hits, weight_decay

    weight, bias = fit_logistic_regression(train_x, train_y, num_classes, chosen, max_iter)
    test_x = test_x.to(train_x.device)
    return LinearProbeResult(
        top1=_top_k_hits(test_x, test_y, weight, bias, k=1).double().mean().item(),
        top5=_top_k_hits(test_x, test_y, weight, bias, k=5).double().mean().item(),
        weight_decay=float(chosen),
        num_train=int(train_x.shape[0]),
        num_test=int(test_x.shape[0]),
    )
