"""A small domain classifier for the synthetic benchmark: its features replace Inception's there.

ImageNet-trained Inception features say little about tiny procedural renders, so the synthetic
benchmark trains this CNN on the benchmark's own training images and class labels. Its
penultimate features (`feature_dim`, 128 by default) give a domain Frechet distance
(`metrics.fid_from_features`), and its logits the class accuracy of class-conditional samples.
Input (B,3,H,W) in [-1,1], any square size 16..256 (global average pooling).
Saved as `<dir>/feature_net.safetensors` + `<dir>/feature_net.json`, both written atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.utils.io import atomic_write, atomic_write_json

WEIGHTS_FILE = "feature_net.safetensors"
CONFIG_FILE = "feature_net.json"


@dataclass
class FeatureNetConfig:
    num_classes: int
    width: int = 32  # channels of the first stage; doubled at each of the next two stages
    feature_dim: int = 128  # penultimate features used for the domain Frechet distance


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
    )


class FeatureNet(nn.Module):
    """forward(images (B,3,H,W) in [-1,1]) -> (features (B,feature_dim), logits (B,num_classes))."""

    def __init__(self, cfg: FeatureNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trained_steps = 0  # set by train_feature_net
        w = cfg.width
        self.trunk = nn.Sequential(
            _stage(3, w, 1), _stage(w, 2 * w, 2), _stage(2 * w, 4 * w, 2), _stage(4 * w, 4 * w, 2)
        )
        self.embed = nn.Sequential(nn.Linear(4 * w, cfg.feature_dim), nn.SiLU())
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(images).mean(dim=(2, 3))  # (B, 4w) global average pool
        features = self.embed(h)  # (B, feature_dim)
        return features, self.head(features)


@torch.no_grad()
def extract_features(model: FeatureNet, images: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """Run the frozen net over (N,3,H,W) images (float in [-1,1] or uint8) in batches -> features
    (N,D), logits (N,K) on CPU."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        outs.append(model(x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x))
    return torch.cat([f.cpu() for f, _ in outs]), torch.cat([lg.cpu() for _, lg in outs])


def train_feature_net(
    images: Tensor, labels: Tensor, num_classes: int, steps: int = 500, seed: int = 0,
    batch_size: int = 64, lr: float = 2e-3, width: int = 32, feature_dim: int = 128,
    max_seconds: float = 0.0, device: torch.device | str = "cpu", progress: bool = False,
) -> FeatureNet:
    """Train a FeatureNet with cross-entropy on (N,3,H,W) images (float in [-1,1] or uint8) and (N,)
    int labels.

    Adam, random batches with random horizontal flips, deterministic given `seed`. Stops after
    `steps`, or earlier once `max_seconds` (> 0) have passed; `model.trained_steps` says how many
    ran. Returns the model in eval mode with gradients off.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureNet(FeatureNetConfig(num_classes, width=width, feature_dim=feature_dim)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    labels = labels.long()
    model.train()
    start, done = time.monotonic(), 0
    for _ in tqdm(range(steps), desc="feature net", disable=not progress, leave=False):
        if max_seconds > 0 and time.monotonic() - start > max_seconds:
            break
        idx = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=gen)
        x = images[idx]
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(device)
        loss = F.cross_entropy(model(x)[1], labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    model.trained_steps = done
    return model.eval().requires_grad_(False)


def save_feature_net(model: FeatureNet, directory: str | Path) -> None:
    """Write `feature_net.safetensors` (weights) and `feature_net.json` (config) atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    atomic_write_json(directory / CONFIG_FILE, asdict(model.cfg))


def load_feature_net(directory: str | Path) -> FeatureNet:
    """Load a FeatureNet written by `save_feature_net` (eval mode, frozen)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / CONFIG_FILE).is_file():
        raise UserError(f"no domain feature net in {directory} (expected {WEIGHTS_FILE} and {CONFIG_FILE})")
    cfg = FeatureNetConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    model = FeatureNet(cfg)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.eval().requires_grad_(False)
