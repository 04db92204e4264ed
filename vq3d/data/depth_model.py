"""A monocular depth estimator from `transformers`, run in batches: pseudo-GT disparity.

The paper uses DPT (`Intel/dpt-large`); Depth Anything and other models that
`AutoModelForDepthEstimation` loads work too, by hub name or local folder. DPT and Depth
Anything (relative) predict relative inverse depth (disparity) already; metric models
(ZoeDepth, Depth Anything "metric") predict depth, which is inverted.

Preprocessing is done here, not by the model's image processor object (whose default "fast"
backend needs torchvision): the processor's settings (input size, rescale, mean and std) are
read from it (PIL backend) or from its preprocessor_config.json; the training crop's square is
resized to that size in a loader worker (antialiased bicubic, the filter of the DPT and Depth
Anything processors) and normalized on the device in batches.

Nothing is downloaded unless `allow_download=True` (`local_files_only` otherwise).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vq3d.data.depth_cache import DEFAULT_DEPTH_MODEL
from vq3d.errors import UserError
from vq3d.utils.optional import require

log = logging.getLogger("vq3d.data")

__all__ = ["DEFAULT_DEPTH_MODEL", "DepthEstimator", "InputSpec", "input_spec_from_settings"]


@dataclass(frozen=True)
class InputSpec:
    """How the model wants its images: size (H, W), PIL filter, rescale, mean/std."""

    height: int = 384
    width: int = 384
    resample: int = 3  # the processor's PIL filter (informational: we always use bicubic)
    rescale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def input_spec_from_settings(settings: dict[str, Any]) -> InputSpec:
    """InputSpec from processor settings (an image processor's attributes or its JSON)."""
    size = settings.get("size") or {}
    if isinstance(size, (int, float)):
        height = width = int(size)
    else:
        get = size.get if hasattr(size, "get") else (lambda k, d=None: getattr(size, k, d))
        height = get("height") or get("shortest_edge") or 384
        width = get("width") or get("shortest_edge") or height
    multiple = int(settings.get("ensure_multiple_of") or 1)
    if settings.get("keep_aspect_ratio"):
        # Our inputs are square crops: keep them square.
        height = width = min(height, width)
    height, width = _round_to_multiple(height, multiple), _round_to_multiple(width, multiple)
    do_normalize = settings.get("do_normalize", True)
    mean = tuple(settings.get("image_mean") or (0.5, 0.5, 0.5)) if do_normalize else (0.0,) * 3
    std = tuple(settings.get("image_std") or (0.5, 0.5, 0.5)) if do_normalize else (1.0,) * 3
    rescale = float(settings.get("rescale_factor") or 1 / 255) if settings.get("do_rescale", True) else 1.0
    resample = settings.get("resample", 3)
    resample = int(getattr(resample, "value", resample) if resample is not None else 3)
    return InputSpec(int(height), int(width), resample, rescale,
                     tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _offline_help(name: str) -> str:
    return (f"depth model '{name}' is not available offline. On a machine with internet run "
            f"`huggingface-cli download {name} --local-dir {os.path.basename(name)}` (or, in Python, "
            f"AutoModelForDepthEstimation.from_pretrained('{name}').save_pretrained(DIR) and the "
            "same with AutoImageProcessor), copy the folder here and pass --model /path/to/folder; "
            "or pass --allow-download to fetch it now")


def _read_processor_settings(name: str, local_only: bool) -> dict[str, Any]:
    AutoImageProcessor = require("transformers", "transformers", "the depth estimator").AutoImageProcessor

    try:
        try:
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only,
                                                           backend="pil")
        except TypeError:  # transformers < 5 has no `backend`
            processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_only,
                                                           use_fast=False)
        keys = ("size", "ensure_multiple_of", "keep_aspect_ratio", "do_normalize", "image_mean",
                "image_std", "do_rescale", "rescale_factor", "resample")
        return {k: getattr(processor, k) for k in keys if hasattr(processor, k)}
    except Exception as err:  # noqa: BLE001 - fall back to the raw JSON
        log.info("image processor of %s not loadable (%s); reading its JSON", name, err)
    try:
        if os.path.isdir(name):
            path = os.path.join(name, "preprocessor_config.json")
        else:
            from transformers.utils import cached_file

            path = cached_file(name, "preprocessor_config.json", local_files_only=local_only)
        with open(path) as handle:
            return json.load(handle)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"depth model {name} has no readable preprocessor_config.json ({err}): "
                        "save its image processor next to it (processor.save_pretrained(DIR))"
                        ) from None


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; UserError for an unavailable device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"unknown device '{device}': {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available (use --device cpu)")
    return dev


class DepthEstimator:
    """Loads a depth model once; `predict_disparity` turns uint8 batches into [0,1] disparity."""

    def __init__(self, model: str = DEFAULT_DEPTH_MODEL, *, device: str = "auto",
                 allow_download: bool = False, precision: str = "auto",
                 model_output: str = "auto") -> None:
        AutoModelForDepthEstimation = require("transformers", "transformers",
                                              "the depth estimator").AutoModelForDepthEstimation
        self.name = model
        self.device = resolve_device(device)
        local_only = not allow_download
        is_local = os.path.exists(model)
        if is_local and not os.path.isdir(model):
            raise UserError(f"--model {model} is a file: pass the folder that holds config.json")
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(
                model, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as err:
            if is_local:
                raise UserError(f"cannot load the depth model in {model}: {err}") from None
            if local_only:
                raise UserError(_offline_help(model)) from None
            raise UserError(f"cannot load depth model '{model}': {err}") from None
        self.model.eval().to(self.device)
        self.spec = input_spec_from_settings(_read_processor_settings(model, local_only))
        if precision == "auto":
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        if model_output == "auto":
            metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"
            metric = metric or getattr(self.model.config, "model_type", "") == "zoedepth"
            model_output = "depth" if metric else "disparity"
        if model_output not in ("disparity", "depth"):
            raise UserError(f"model_output must be disparity or depth, not '{model_output}'")
        self.model_output = model_output
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) that images are resized to before `predict_disparity`."""
        return self.spec.height, self.spec.width

    @torch.no_grad()
    def predict_disparity(self, images: torch.Tensor, resolution: int) -> torch.Tensor:
        """uint8 (B, H, W, 3) at `input_size` -> float32 (B, R, R) disparity in [0, 1] per image.

        The raw prediction is resized to R x R (bilinear, antialiased) and min-max normalized
        per image (docs/design.md); a constant prediction gives zeros.
        """
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x * self.spec.rescale - self._mean) / self._std  # (B,3,H,W)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            raw = self.model(pixel_values=x).predicted_depth  # (B,h,w)
        raw = raw.float()
        if self.model_output == "depth":
            raw = 1.0 / raw.clamp_min(1e-6)
        down = raw.shape[-1] > resolution or raw.shape[-2] > resolution
        disp = F.interpolate(raw[:, None], size=(resolution, resolution), mode="bilinear",
                             align_corners=False, antialias=down)[:, 0]  # (B,R,R)
        flat = disp.flatten(1)
        low = flat.min(dim=1).values.view(-1, 1, 1)
        span = (flat.max(dim=1).values.view(-1, 1, 1) - low)
        return torch.where(span > 0, (disp - low) / span.clamp_min(1e-12),
                           torch.zeros_like(disp)).cpu()
