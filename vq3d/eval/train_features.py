"""`vq3d eval train-features`: train the synthetic benchmark's domain feature net (feature_net.py).

    info = train_features("runs/demo/data", "runs/demo/features", steps=500)
    info["heldout_accuracy"]   # shape-class accuracy on the held-out ("test") scenes' canonical images

Trains on the "train" split's images (canonical and, by default, the ground-truth novel views,
so renders from novel cameras are in-domain too) with their shape-class labels, measures the
accuracy on the held-out scenes' canonical images, and writes `feature_net.safetensors`,
`feature_net.json` and `feature_net_info.json` (resolution, classes, dataset, accuracy) into the
output folder, each atomically, the info file last.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.eval.extractors import FEATURE_INFO_FILE
from vq3d.eval.feature_net import extract_features, save_feature_net, train_feature_net
from vq3d.utils.io import atomic_write_json

DEFAULT_STEPS = 500


def _load_split(dataset: Any, novel_views: bool, progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a SyntheticDataset as uint8 (M, 3, R, R) and its labels (M,)."""
    images, labels = [], []
    for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False):
        item = dataset[i]
        views = torch.cat([item["image"][None], item["novel_images"]]) if novel_views else item["image"][None]
        images.append(torch.round((views + 1.0) * 127.5).clamp(0, 255).to(torch.uint8))
        labels.append(torch.full((views.shape[0],), item["label"], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def train_features(data_path: str | Path, out_dir: str | Path, *, steps: int | None = None,
                   epochs: float | None = None, minutes: float | None = None, batch_size: int = 64,
                   seed: int = 0, width: int = 32, feature_dim: int = 128, novel_views: bool = True,
                   device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Train and save the domain feature net of the synthetic dataset at `data_path`.

    Length: `steps`, or `epochs` passes over the training images, (default 500 steps), cut short
    after `minutes` when given. Returns the info written to feature_net_info.json.
    """
    from vq3d.data.loader import is_synthetic_root
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.eval.real_stats import dataset_identity

    if not is_synthetic_root(data_path):
        raise UserError(f"{data_path} is not a synthetic dataset: the domain feature net learns the shape classes "
                        "of `vq3d synth` data")
    if steps is not None and epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    if (steps is not None and steps < 1) or (epochs is not None and epochs <= 0) or (minutes is not None
                                                                                   and minutes <= 0):
        raise UserError("--steps, --epochs and --minutes must be positive")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be positive")
    started = time.time()
    train_set, test_set = SyntheticDataset(data_path, "train"), SyntheticDataset(data_path, "test")
    images, labels = _load_split(train_set, novel_views, progress, "load train")
    if epochs is not None:
        steps = max(1, math.ceil(epochs * images.shape[0] / batch_size))
    steps = DEFAULT_STEPS if steps is None else steps
    num_classes = len(train_set.class_names)
    model = train_feature_net(images, labels, num_classes, steps=steps, seed=seed, batch_size=batch_size,
                              width=width, feature_dim=feature_dim, max_seconds=60.0 * (minutes or 0.0),
                              device=device, progress=progress)
    test_images, test_labels = _load_split(test_set, False, progress, "load test")
    _, logits = extract_features(model, test_images)
    heldout = float((logits.argmax(dim=1) == test_labels).float().mean())
    out_dir = Path(out_dir)
    save_feature_net(model.cpu(), out_dir)
    info = {"data": str(data_path), "dataset": dataset_identity(train_set, "train"),
            "resolution": train_set.resolution, "class_names": train_set.class_names, "steps": steps,
            "trained_steps": model.trained_steps, "batch_size": batch_size, "seed": seed, "novel_views": novel_views,
            "train_images": int(images.shape[0]), "heldout_images": int(test_images.shape[0]),
            "heldout_accuracy": heldout, "seconds": round(time.time() - started, 2)}
    atomic_write_json(out_dir / FEATURE_INFO_FILE, info)
    return info
