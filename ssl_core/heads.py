"""Projection heads placed on top of the backbone during pretraining only."""

from __future__ import annotations

from torch import nn


def projection_mlp(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int = 2) -> nn.Sequential:
    """Linear-BN-ReLU blocks followed by a plain linear layer (SimCLR's g(.)).

    SimCLR (https://arxiv.org/abs/2002.05709, sec. 2.1) computes the contrastive
    loss on z = g(h) and keeps h, the backbone feature, as the representation.

    Args:
        num_layers: total linear layers, >= 1; the last has no BN or activation.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers: list[nn.Module] = []
    dim = input_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, output_dim))
    return nn.Sequential(*layers)
