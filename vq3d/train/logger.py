"""Run logging: TensorBoard scalars/images/text plus a plain `metrics.jsonl` for plotting.

    logger = RunLogger(run_dir, enabled=info.is_main, resume_step=step if resumed else None)
    logger.log_scalars(step, {"loss/total": 0.12, "lr": 1e-4})
    logger.log_image(step, "recon/canonical", image)      # (3, H, W) float in [0, 1]
    logger.close()
    records = read_metrics(run_dir)                          # [{"step": .., "time": .., ...}]

`metrics.jsonl` holds one JSON object per `log_scalars` call, appended and flushed. A resumed
run at step S first drops every line with step > S (atomic rewrite) and TensorBoard purges the
events after S, so curves have no duplicated stretch. Images are also saved as PNG under
`images/{tag}/step_XXXXXXXX.png`. Without the `tensorboard` package only the files are written.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vq3d.utils.io import atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"


def _scalar(value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return float(value)


def _parse_lines(text: str) -> list[dict[str, Any]]:
    """Parsed records; lines that are not a JSON object (a torn last write) are skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of `run_dir/metrics.jsonl` in file order ([] when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    return _parse_lines(path.read_text()) if path.is_file() else []


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records with step > `step` (and torn lines) from `metrics.jsonl`, atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in _parse_lines(path.read_text()) if r["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class RunLogger:
    """Scalars, images and text for rank 0; every method is a no-op when `enabled` is False."""

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
        save_images: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.save_images = save_images
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.run_dir, resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: logging to metrics.jsonl only")
            else:
                purge = None if resume_step is None else resume_step + 1
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def log_scalars(self, step: int, values: dict[str, Any]) -> None:
        """One metrics.jsonl line {"step", "time", **values}; each value also to TensorBoard."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _scalar(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in record.items():
                if k not in ("step", "time") and math.isfinite(v):
                    self._writer.add_scalar(k, v, step)

    def log_image(self, step: int, tag: str, image: torch.Tensor | np.ndarray) -> None:
        """`image`: (3, H, W) or (H, W) float in [0, 1] (clamped)."""
        if not self.enabled:
            return
        img = torch.as_tensor(image).detach().float().cpu().clamp(0, 1)
        if img.ndim == 2:
            img = img[None].expand(3, -1, -1)
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"log_image expects (3, H, W) or (H, W), got {tuple(img.shape)}")
        img = img.expand(3, -1, -1)
        if self._writer is not None:
            self._writer.add_image(tag, img, step, dataformats="CHW")
        if self.save_images:
            pixels = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            path = self.run_dir / "images" / tag.replace("/", "_") / f"step_{step:08d}.png"
            atomic_write(path, lambda p: Image.fromarray(pixels).save(p, format="PNG"))

    def log_text(self, step: int, tag: str, text: str) -> None:
        """TensorBoard text and a line in `log.txt`."""
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.add_text(tag, text, step)
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(f"[step {step}] {tag}: {text}\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
