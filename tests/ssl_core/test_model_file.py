"""The embedding-model file: save, load, and the errors for wrong or missing files."""

from __future__ import annotations

import pytest
import torch

from ssl_core.augment import Normalization
from ssl_core.backbones import build_backbone
from ssl_core.model_file import (
    EmbeddingModelInfo,
    load_embedding_model,
    save_embedding_model,
)

INFO = EmbeddingModelInfo(
    backbone="resnet18_cifar",
    feature_dim=512,
    image_size=32,
    normalization=Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
    method="simclr",
    config={"epochs": 3, "lr": 0.25, "view": {"image_size": 32}},
)


def test_round_trip_keeps_weights_and_info(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar").module
    # Make BatchNorm buffers non-default so that they are checked too.
    backbone.train()(torch.randn(2, 3, 16, 16))
    path = tmp_path / "sub" / "model.pt"
    save_embedding_model(path, backbone, INFO)

    loaded, info = load_embedding_model(path)
    assert info == INFO
    assert not loaded.training
    expected = backbone.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), backbone.eval()(images), rtol=0, atol=0)


def test_non_model_file_raises_value_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "method": {}}, path)
    with pytest.raises(ValueError, match="not an embedding-model file"):
        load_embedding_model(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_embedding_model(tmp_path / "missing.pt")


def test_a_vit_for_a_non_default_image_size_loads_back(tmp_path):
    """A ViT's position embeddings depend on the image size: the file's image_size rebuilds them."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_b_32", image_size=64).module.eval()
    path = tmp_path / "vit.pt"
    save_embedding_model(path, backbone, EmbeddingModelInfo("vit_b_32", 768, 64, Normalization(), "dino"))
    loaded, info = load_embedding_model(path)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), backbone(images), rtol=0, atol=0)
