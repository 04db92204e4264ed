"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features"), VGG16 variant, plain torch.

    d(x, y) = sum_l mean_{h,w} w_l . (n(f_l(x)) - n(f_l(y)))^2

f_l are VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the inputs mapped by
LPIPS's ScalingLayer, n() divides each feature vector by its channel-wise L2 norm, and w_l are the
published non-negative 1x1 "lin" weights. Two local files make the network:

- VGG16 ImageNet weights in torchvision's layout (`features.0.weight` ... `features.28.bias`; the
  classifier keys of a full `vgg16-397923af.pth` are ignored), as .pth state dict or .safetensors;
- LPIPS v0.1 linear layers, the `vgg.pth` of the lpips package (`lin0.model.1.weight` (1,64,1,1) ...
  `lin4.model.1.weight` (1,512,1,1)).

The module is frozen and stays in eval mode; gradients flow to its inputs (Stage-1 perceptual loss).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vq3d.errors import UserError

log = logging.getLogger(__name__)

# torchvision vgg16 "D" configuration: conv widths, "M" = 2x2 max pool. Indices in the Sequential
# below follow torchvision exactly (conv, ReLU, conv, ReLU, pool, ...), so keys match.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_SLICE_ENDS = (4, 9, 16, 23, 30)  # layers [prev_end, end) end after relu1_2, 2_2, 3_3, 4_3, 5_3
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer
_SCALE = (0.458, 0.448, 0.450)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file: .safetensors, or a torch pickle of a plain state dict (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unreadable file as bad input
        raise UserError(f"cannot read weights file {path}: {type(err).__name__}: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return dict(state)


def vgg16_features() -> nn.Sequential:
    """VGG16 convolutional trunk up to relu5_3 (indices 0..29 of torchvision's `vgg16().features`)."""
    layers: list[nn.Module] = []
    c_in = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(item), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(item)
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """LPIPS `NetLinLayer`: index 0 was Dropout (no-op in eval), index 1 the 1x1 conv (key model.1.weight)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each spatial feature vector by its L2 norm over channels (LPIPS `normalize_tensor`)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS-VGG distance. forward(x (B,3,H,W), y (B,3,H,W), both in [-1,1]) -> (B,) distances.

    Build with `LPIPS.from_files(vgg_path, lin_path)`; the bare constructor has random weights.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (LinearHead(c) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> LPIPS:
        """Load VGG16 `features.*` weights and LPIPS `lin*` weights from local files (strict)."""
        model = cls()
        vgg = {k: v for k, v in read_state_dict(vgg_path).items() if k.startswith("features.")}
        if not vgg:
            raise UserError(f"{vgg_path} has no 'features.*' keys: expected torchvision VGG16 weights")
        lin = read_state_dict(lin_path)
        try:
            model.load_state_dict({**vgg, **lin}, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise UserError(f"LPIPS weights do not match ({vgg_path}, {lin_path}): {detail}") from None
        return model

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # frozen metric network: always eval

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """(B,3,H,W) in [-1,1] -> five unit-normalized feature maps (B,C_l,H_l,W_l)."""
        h = (x - self.shift) / self.scale
        feats, start = [], 0
        for end in _SLICE_ENDS:
            for layer in self.features[start:end]:
                h = layer(h)
            feats.append(_unit_normalize(h))
            start = end
        return feats

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, fy = self.layer_features(x), self.layer_features(y)
        lins = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
        dist = sum(lin((a - b).pow(2)).mean(dim=(2, 3)) for lin, a, b in zip(lins, fx, fy))
        return dist.flatten()  # (B,)


_logged_off = False


def build_perceptual(loss_cfg: Any) -> LPIPS | None:
    """LPIPS from `loss_cfg.lpips_vgg_path` / `loss_cfg.lpips_lin_path`, or None when both are empty.

    When None, logs once that the perceptual loss is off. One path without the other is a UserError.
    """
    global _logged_off
    vgg_path, lin_path = loss_cfg.lpips_vgg_path, loss_cfg.lpips_lin_path
    if not vgg_path and not lin_path:
        if not _logged_off:
            log.warning(
                "perceptual loss off: no LPIPS weights configured (loss.lpips_vgg_path / loss.lpips_lin_path)"
            )
            _logged_off = True
        return None
    if not vgg_path or not lin_path:
        raise UserError(
            "LPIPS needs both loss.lpips_vgg_path (VGG16 weights) and loss.lpips_lin_path (LPIPS vgg.pth)"
        )
    return LPIPS.from_files(vgg_path, lin_path)
