"""The off-diagonal entries of a square matrix, for the redundancy terms of Barlow Twins and VICReg."""

from __future__ import annotations

import torch


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The d * d - d off-diagonal entries of a (d, d) matrix, row by row, as a vector.

    Dropping the last entry of the flattened matrix leaves d - 1 rows of d + 1 entries,
    each starting with a diagonal entry; the rest of each row is off the diagonal. The
    reshaping trick of the Barlow Twins code (Zbontar et al. 2021,
    https://arxiv.org/abs/2103.03230, appendix). Unlike ``masked_select``, whose output
    size depends on the mask's values, it never makes the host wait for a GPU.

    Raises:
        ValueError: for a matrix that is not square.
    """
    d, columns = matrix.shape
    if d != columns:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(matrix.shape)}")
    return matrix.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
