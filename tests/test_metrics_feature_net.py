"""Domain feature net: learns a trivial split, any size 16..256, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch

from vq3d.errors import UserError
from vq3d.eval.feature_net import (
    FeatureNet,
    FeatureNetConfig,
    extract_features,
    load_feature_net,
    save_feature_net,
    train_feature_net,
)


def red_blue_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: reddish noisy images, class 1: bluish ones, in [-1,1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.rand(n, 3, size, size, generator=g) * 0.8 - 0.9
    images[labels == 0, 0] += 1.0
    images[labels == 1, 2] += 1.0
    return images.clamp(-1, 1), labels


def test_learns_red_versus_blue() -> None:
    images, labels = red_blue_images(32, 16, seed=0)
    model = train_feature_net(
        images, labels, num_classes=2, steps=20, seed=0, batch_size=16, width=8, feature_dim=32
    )
    test_images, test_labels = red_blue_images(20, 16, seed=1)
    features, logits = extract_features(model, test_images)
    assert features.shape == (20, 32) and logits.shape == (20, 2)
    assert (logits.argmax(1) == test_labels).float().mean() == 1.0
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_training_is_deterministic_given_seed() -> None:
    images, labels = red_blue_images(8, 16, seed=0)
    a = train_feature_net(images, labels, 2, steps=3, seed=5, batch_size=4, width=8, feature_dim=16)
    b = train_feature_net(images, labels, 2, steps=3, seed=5, batch_size=4, width=8, feature_dim=16)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


@pytest.mark.parametrize("size", [16, 40, 256])
def test_accepts_square_sizes(size) -> None:
    model = FeatureNet(FeatureNetConfig(num_classes=3, width=8, feature_dim=128)).eval()
    features, logits = model(torch.zeros(1, 3, size, size))
    assert features.shape == (1, 128) and logits.shape == (1, 3)


def test_save_load_round_trip(tmp_path) -> None:
    model = FeatureNet(FeatureNetConfig(num_classes=4, width=8, feature_dim=24)).eval()
    save_feature_net(model, tmp_path / "fnet")
    assert json.loads((tmp_path / "fnet" / "feature_net.json").read_text())["num_classes"] == 4
    written = sorted(p.name for p in (tmp_path / "fnet").iterdir())
    assert written == ["feature_net.json", "feature_net.safetensors"]  # no temp files left
    loaded = load_feature_net(tmp_path / "fnet")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for a, b in zip(model(x), loaded(x)):
        torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="no domain feature net"):
        load_feature_net(tmp_path / "missing")
