"""Refining a one-pass reconstruction to its photo (`vq3d reconstruct --refine N`).

The paper turns a photo into a NeRF in one forward pass (Sec. 4, Fig. 5-6). Like GAN inversion
(EG3D's projection script), `refine_scene` then optimizes the decoded scene against the photo for
N steps, with the Stage-1 model's MLPs frozen. Two things can be optimized (`target`):
- "planes": the decoded triplanes themselves (most freedom; nothing ties them to the codebook);
- "latents": the decoder's input as continuous vectors (l2-normalized as the quantizer's are),
  starting from the one pass's codes and free to leave the codebook, decoded by the frozen
  decoder at every step, so the scene stays one the decoder can make.
The losses are the run's own Eq. 4 through the same assembly as training
(`vq3d.losses.stage1.generator_losses`), with the parts refinement has: the reconstruction terms
(MSE, logit-Laplace with the run's learned scale, LPIPS when its weights are configured), the
depth loss of the run's `loss.depth_target` (Eq. 1-3 with its floor, convention and units, or the
canonical band) when a target disparity is given (a photo's target is relative, so a run trained
with the metric loss on synthetic truth is refined with Eq. 1-3), the look-at prior when the run used it, and the
NeRF regularizers, at the run's weights; no VQ term (nothing is quantized) and no GAN terms (no
discriminators). Measured against ground truth on held-out synthetic scenes by `vq3d eval refine`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vq3d.errors import UserError
from vq3d.losses.perceptual import build_perceptual
from vq3d.losses.reconstruction import LogitLaplaceLoss
from vq3d.losses.stage1 import generator_losses
from vq3d.train.checkpoint import latest_checkpoint, load_checkpoint

RefineTarget = Literal["planes", "latents"]
TARGETS = ("planes", "latents")


class Refiner:
    """The loss terms a refinement uses, built once per Stage-1 run."""

    # the step the run's schedules are read at: after training (a fading floor has faded, the
    # GAN weight is whole though no discriminator is there to use it)
    AFTER_TRAINING = 10**9

    def __init__(self, model, run_dir: str | Path | None = None) -> None:
        self.model, cfg = model, model.cfg
        device = next(model.parameters()).device
        self.logit_laplace = LogitLaplaceLoss(cfg.loss.logit_laplace_eps).to(device)
        self.logit_laplace_source = _load_logit_laplace_scale(self.logit_laplace, model, run_dir)
        self.logit_laplace.requires_grad_(False)
        self.perceptual = build_perceptual(cfg.loss)
        if self.perceptual is not None:
            self.perceptual = self.perceptual.to(device)

    def loss(self, scene, image: Tensor, target_disparity: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The refinement objective of one scene against its photo (1, 3, H, W) in [-1, 1], and its
        terms (detached tensors: read on the host only once, after the last step)."""
        cfg, model = self.model.cfg, self.model
        out = model.render(scene, model.canonical_cameras(1, image.device), train=True, step=self.AFTER_TRAINING)
        total, terms = generator_losses(image, target_disparity, None, out, None, cfg.loss, cfg.render,
                                        self.logit_laplace, self.perceptual, None, None, self.AFTER_TRAINING)
        return total, {k: v.detach() for k, v in terms.items() if k not in ("gan_weight", "novel_gan_weight")}


def _load_logit_laplace_scale(loss: LogitLaplaceLoss, model, run_dir: str | Path | None) -> str:
    """Load the run's learned logit-Laplace scale into `loss`: from the run's checkpoint, or from an
    export's meta (`vq3d export-run` keeps it); says where it came from."""
    ckpt = latest_checkpoint(run_dir) if run_dir is not None and Path(run_dir).is_dir() else None
    if ckpt is not None and (ckpt / "logit_laplace.safetensors").is_file():
        load_checkpoint(ckpt, {"logit_laplace": loss}, restore_rng=False)
        return f"checkpoint {ckpt}"
    saved = getattr(model, "hub_meta", {}).get("logit_laplace_log_scale")
    if saved is not None:
        with torch.no_grad():
            loss.log_scale.copy_(torch.tensor(saved, dtype=loss.log_scale.dtype))
        return "export meta"
    if model.cfg.loss.logit_laplace:
        warnings.warn("the run's learned logit-Laplace scale is not available (an export made before "
                      "vq3d export-run kept it): refining with b = 1", stacklevel=3)
    return "b = 1 (not saved)"


def refine_scene(refiner: Refiner, image: Tensor, steps: int, target: RefineTarget = "planes", lr: float = 0.01,
                 target_disparity: Tensor | None = None, progress: bool = True,
                 at: tuple[int, ...] = ()) -> tuple[object, dict[str, float], dict[int, object]]:
    """The scene of `image` (1, 3, H, W) in [-1, 1] after the one-pass reconstruction and `steps`
    Adam steps on `target` (module docstring); MLPs and codebook stay frozen.

    `target_disparity` (1, 1, H, W): relative pseudo-GT disparity for the depth loss, or None.
    Returns (scene, the loss terms of the last step, {n: the scene after n steps for n in `at`}).
    """
    if target not in TARGETS:
        raise UserError(f"refine target {target!r} is not one of {', '.join(TARGETS)}")
    model = refiner.model
    with torch.no_grad():
        codes = model.quantize(image).codes  # (1, T, code_dim), l2-normalized
        one_pass = model.decode_codes(codes)
    snapshots = {0: one_pass} if 0 in at else {}
    if steps <= 0:
        return one_pass, {}, snapshots
    if target == "planes" and not isinstance(one_pass, Tensor):
        raise UserError("--refine-target planes needs a triplane model; this run decodes an implicit field "
                        "(use --refine-target latents)")
    param = (one_pass if target == "planes" else codes).detach().clone().requires_grad_(True)

    def scene_of(p: Tensor):
        return p if target == "planes" else model.decode_codes(F.normalize(p, dim=-1))

    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam([param], lr=lr)
    last: dict[str, Tensor] = {}
    try:
        for k in tqdm(range(1, steps + 1), desc="refine", disable=not progress, leave=False):
            total, last = refiner.loss(scene_of(param), image, target_disparity)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            if k in at:
                with torch.no_grad():
                    snapshots[k] = scene_of(param.detach().clone())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        return scene_of(param.detach()), {k: float(v) for k, v in last.items()}, snapshots
