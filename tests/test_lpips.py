"""LPIPS-VGG: published key layouts load strictly; distance properties; frozen but differentiable."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vq3d.errors import UserError
from vq3d.losses import perceptual
from vq3d.losses.perceptual import LPIPS, build_perceptual, vgg16_features

# torchvision vgg16().features: the 13 convolutions sit at these indices (ReLUs and pools between).
VGG_CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
             14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
             26: (512, 512), 28: (512, 512)}
POOLS = {4, 9, 16, 23}
TAPS = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 -> lin index
LIN_CHANNELS = (64, 128, 256, 512, 512)


def published_vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the layout of torchvision's vgg16-397923af.pth (features + classifier)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for idx, (c_out, c_in) in VGG_CONVS.items():
        std = (2 / (9 * c_in)) ** 0.5  # He init keeps activations alive through 13 layers
        state[f"features.{idx}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * std
        state[f"features.{idx}.bias"] = torch.randn(c_out, generator=g) * 0.01
    state["classifier.0.weight"] = torch.zeros(8, 4)  # ignored by LPIPS
    state["classifier.0.bias"] = torch.zeros(8)
    return state


def published_lin_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Random non-negative weights in the layout of the lpips package's weights/v0.1/vgg.pth."""
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(LIN_CHANNELS)}


def reference_lpips(x: torch.Tensor, y: torch.Tensor, vgg: dict, lin: dict) -> torch.Tensor:
    """Straight from the LPIPS paper with functional ops over the raw state dicts."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img - shift) / scale, []
        for i in range(30):
            if i in VGG_CONVS:
                h = F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1)
            elif i in POOLS:
                h = F.max_pool2d(h, 2)
            else:
                h = F.relu(h)
            if i in TAPS:
                out.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    total = torch.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        w = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += ((a - b) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    vgg, lin = published_vgg_state(), published_lin_state()
    torch.save(vgg, d / "vgg16-397923af.pth")
    torch.save(lin, d / "vgg.pth")
    return d / "vgg16-397923af.pth", d / "vgg.pth", vgg, lin


@pytest.fixture(scope="module")
def lpips(weight_files) -> LPIPS:
    return LPIPS.from_files(weight_files[0], weight_files[1])


def test_vgg_trunk_matches_torchvision_layout() -> None:
    state = vgg16_features().state_dict()
    expected = {f"features.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}
    assert {f"features.{k}" for k in state} == expected
    assert state["28.weight"].shape == (512, 512, 3, 3)
    # torchvision vgg16: 138,357,544 parameters, of which the classifier holds 123,642,856.
    assert sum(p.numel() for p in vgg16_features().parameters()) == 138_357_544 - 123_642_856


def test_loads_published_layouts_strictly(weight_files, lpips) -> None:
    _, _, vgg, lin = weight_files
    torch.testing.assert_close(lpips.features[28].bias, vgg["features.28.bias"])
    torch.testing.assert_close(lpips.lin4.model[1].weight, lin["lin4.model.1.weight"])
    assert set(lpips.state_dict()) == {k for k in vgg if k.startswith("features.")} | set(lin)


def test_accepts_features_only_safetensors(tmp_path, weight_files) -> None:
    from safetensors.torch import save_file

    _, lin_path, vgg, _ = weight_files
    save_file({k: v for k, v in vgg.items() if k.startswith("features.")}, str(tmp_path / "vgg.safetensors"))
    model = LPIPS.from_files(tmp_path / "vgg.safetensors", lin_path)
    torch.testing.assert_close(model.features[0].weight, vgg["features.0.weight"])


def test_matches_functional_reference(weight_files, lpips) -> None:
    _, _, vgg, lin = weight_files
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(lpips(x, y), reference_lpips(x, y, vgg, lin), rtol=1e-4, atol=1e-6)


def test_zero_for_identical_and_positive_for_different(lpips) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(lpips(x, x), torch.zeros(2))
    d = lpips(x, (x + 0.3 * torch.randn_like(x)).clamp(-1, 1))
    assert d.shape == (2,) and (d > 0).all()


def test_frozen_but_gradient_reaches_input(lpips) -> None:
    lpips.train()
    assert not lpips.training
    assert not any(p.requires_grad for p in lpips.parameters())
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    lpips(x, torch.zeros(1, 3, 16, 16)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips.parameters())


def test_build_perceptual_off_without_paths_logs_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(perceptual, "_logged_off", False)
    cfg = SimpleNamespace(lpips_vgg_path="", lpips_lin_path="")
    with caplog.at_level(logging.INFO, logger="vq3d.losses.perceptual"):
        assert build_perceptual(cfg) is None
        assert build_perceptual(cfg) is None
    msgs = [r.getMessage() for r in caplog.records if "perceptual loss off" in r.getMessage()]
    assert len(msgs) == 1 and "loss.lpips_vgg_path" in msgs[0]


def test_build_perceptual_loads_or_rejects(weight_files, tmp_path) -> None:
    vgg_path, lin_path, _, _ = weight_files
    cfg = SimpleNamespace(lpips_vgg_path=str(vgg_path), lpips_lin_path=str(lin_path))
    assert isinstance(build_perceptual(cfg), LPIPS)
    with pytest.raises(UserError, match="both"):
        build_perceptual(SimpleNamespace(lpips_vgg_path=str(vgg_path), lpips_lin_path=""))
    with pytest.raises(UserError, match="not found"):
        build_perceptual(SimpleNamespace(lpips_vgg_path=str(tmp_path / "no.pth"), lpips_lin_path=lin_path))


def test_wrong_lin_file_is_a_user_error(weight_files, tmp_path) -> None:
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="do not match"):
        LPIPS.from_files(weight_files[0], tmp_path / "partial.pth")
