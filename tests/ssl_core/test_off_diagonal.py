"""off_diagonal (ssl_core/losses/off_diagonal.py): the entries a mask of the diagonal selects, in the same order."""

from __future__ import annotations

import pytest
import torch

from ssl_core.losses.off_diagonal import off_diagonal


@pytest.mark.parametrize("d", [1, 2, 3, 64])
def test_off_diagonal_is_what_a_mask_of_the_diagonal_selects(d: int) -> None:
    matrix = torch.randn(d, d, generator=torch.Generator().manual_seed(d))
    expected = matrix.masked_select(~torch.eye(d, dtype=torch.bool))
    assert torch.equal(off_diagonal(matrix), expected)


def test_off_diagonal_carries_the_gradient_of_the_off_diagonal_entries_only() -> None:
    matrix = torch.randn(4, 4, requires_grad=True)
    off_diagonal(matrix).pow(2).sum().backward()
    assert torch.equal(matrix.grad, 2 * matrix.detach() * (1 - torch.eye(4)))


def test_off_diagonal_refuses_a_matrix_that_is_not_square() -> None:
    with pytest.raises(ValueError, match=r"square matrix, got \(2, 3\)"):
        off_diagonal(torch.zeros(2, 3))
