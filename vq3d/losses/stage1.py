"""The Stage-1 objective, Eq. 4 of the paper:

    L = L_MSE + l_percep L_percep + l_loglap L_loglap + l_gan L_gan + l_depth L_depth
        + l_scale L_scale + l_vq L_vq + l_distort L_distort + l_interlevel L_interlevel

`generator_losses` returns every term (unweighted) and the weighted total; the discriminators'
losses are in `discriminator_losses`. The novel-view discriminator sees [rgb, depth] and its
"real" side is the canonical reconstruction, detached (the paper's stop-grad, Sec. 3.2).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from vq3d.config import LossConfig, RenderConfig
from vq3d.losses.depth import depth_loss, metric_depth_loss, scale_loss
from vq3d.losses.depth_target import axis_disparity_map, canonical_target, loss_disparity, relative_target
from vq3d.losses.gan import discriminator_loss, generator_loss, r1_penalty
from vq3d.losses.lookat import central_pixels, lookat_loss, subject_lookat_target
from vq3d.losses.nerf import distortion_loss, interlevel_loss
from vq3d.losses.reconstruction import LogitLaplaceLoss, mse_loss
from vq3d.models.quantizer import QuantizerOutput
from vq3d.render.renderer import RenderOutput


def depth_channel(disparity: Tensor, near: float) -> Tensor:
    """Disparity (B, 1, H, W) as a discriminator input channel in [-1, 1] (near plane -> 1)."""
    return (disparity * near).clamp(0.0, 1.0) * 2.0 - 1.0


def with_depth(render: RenderOutput, near: float) -> Tensor:
    """[rgb, depth] (B, 4, H, W) for the novel-view discriminator."""
    return torch.cat([render.rgb, depth_channel(render.disparity, near)], dim=1)


def gather_pixels(images: Tensor, pixels: Tensor) -> Tensor:
    """images (B, C, H, W), raster indices pixels (B, N) -> (B, C, 1, N), the layout of a
    ray-subset render."""
    flat = images.flatten(2)
    return flat.gather(2, pixels[:, None, :].expand(-1, flat.shape[1], -1)).unsqueeze(2)


def nerf_regularizers(render: RenderOutput) -> tuple[Tensor, Tensor]:
    """Mip-NeRF 360's distortion and interlevel losses of one render."""
    distortion = distortion_loss(render.weights, render.spacing_edges)
    interlevel = interlevel_loss(render.weights, render.spacing_edges, render.proposal_weights,
                                 render.proposal_spacing_edges)
    return distortion, interlevel


def gan_weight(loss_cfg: LossConfig, step: int) -> float:
    """The GAN weight: 0 before `gan_start_steps`, then ramped linearly from 0 over
    `gan_warmup_steps` (logged each step). The discriminators train from `gan_start_steps` on,
    so the generator never meets an untrained one at full weight."""
    c = loss_cfg
    if step < c.gan_start_steps:
        return 0.0
    if c.gan_warmup_steps <= 0:
        return c.gan
    return c.gan * min(1.0, (step - c.gan_start_steps + 1) / c.gan_warmup_steps)


def novel_gan_start(loss_cfg: LossConfig) -> int:
    """The step the novel-view discriminator starts at (`loss.novel_gan_start_steps`, or the
    main GAN's start)."""
    c = loss_cfg
    return c.gan_start_steps if c.novel_gan_start_steps < 0 else c.novel_gan_start_steps


def novel_gan_weight(loss_cfg: LossConfig, step: int) -> float:
    """The novel-view GAN's weight: `gan_weight`'s ramp, from the novel-view start."""
    c = loss_cfg
    start = novel_gan_start(c)
    if step < start:
        return 0.0
    if c.gan_warmup_steps <= 0:
        return c.gan
    return c.gan * min(1.0, (step - start + 1) / c.gan_warmup_steps)


def scale_floor(loss_cfg: LossConfig, step: int) -> float:
    """The s* floor of the depth loss at `step`: depth_scale_floor fading linearly to 0."""
    c = loss_cfg
    if c.depth_scale_floor <= 0:
        return 0.0
    if c.depth_scale_floor_steps <= 0:  # a floor for the whole run
        return c.depth_scale_floor
    return c.depth_scale_floor * max(0.0, 1.0 - step / c.depth_scale_floor_steps)


def lookat_target(target_disparity: Tensor | None, loss_cfg: LossConfig,
                  render_cfg: RenderConfig) -> tuple[float | Tensor, Tensor | None]:
    """The look-at prior's target depth in world units (a float, or (B,) per image) and which
    images may be farther than it ((B,) bool, or None), per `loss.lookat_placement`. Without a
    depth target (refining a photo with no estimator) "subject" has nothing to read, and the
    target is the fixed one (the orbit's centre at `loss.lookat_depth=1`)."""
    c = loss_cfg
    if c.lookat_placement == "fixed" or target_disparity is None:
        return c.lookat_depth * render_cfg.camera_distance, None
    fraction, through_hole = subject_lookat_target(target_disparity, c.lookat_fraction, render_cfg.fov_deg)
    return fraction * render_cfg.camera_distance, through_hole


def generator_losses(
    images: Tensor,
    target_disparity: Tensor | None,
    quant: QuantizerOutput | None,
    canonical: RenderOutput,
    novel: RenderOutput | None,
    loss_cfg: LossConfig,
    render_cfg: RenderConfig,
    logit_laplace: LogitLaplaceLoss,
    perceptual: Callable[[Tensor, Tensor], Tensor] | None,
    d_main: nn.Module | None,
    d_novel: nn.Module | None,
    step: int,
    pixels: Tensor | None = None,
    metric_depth: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Eq. 4. images (B, 3, H, W) in [-1, 1]; target_disparity (B, 1, H, W) or None.

    metric_depth: the target is true disparity in the renderer's units, so the depth loss is
    Eq. 2 at s = 1, t = 0 (`metric_depth_loss`) and Eq. 3 is left out; else Eq. 1-3 on the
    per-image normalized target, against camera-axis disparities (`vq3d.losses.depth_target`).
    quant, d_main, d_novel, novel: None leaves their terms out (refining a decoded scene has no
    quantizer output and no discriminators: `vq3d.refine`).

    pixels: (B, N) raster indices when `canonical` rendered only those rays (its images are then
    (B, C, 1, N)); the targets are gathered to match, after the per-image disparity normalization.
    Perceptual and GAN terms need whole images, so they must be off for such steps.
    Returns (weighted total, {term: unweighted value, plus "s_star", "gan_weight"}).
    """
    c = loss_cfg
    rgb = canonical.rgb
    height, width = images.shape[-2:]
    if pixels is not None:
        images = gather_pixels(images, pixels)
    terms: dict[str, Tensor] = {"mse": mse_loss(rgb, images)}
    total = c.mse * terms["mse"]
    if quant is not None:
        terms["vq"] = quant.loss
        total = total + c.vq * terms["vq"]
    if c.logit_laplace:
        terms["logit_laplace"] = logit_laplace(rgb, images)
        total = total + c.logit_laplace * terms["logit_laplace"]
    if c.perceptual and perceptual is not None:
        if pixels is not None:
            raise ValueError("the perceptual loss needs whole images: render every pixel while it is on")
        terms["perceptual"] = perceptual(rgb, images).mean()
        total = total + c.perceptual * terms["perceptual"]
    if target_disparity is not None and (c.depth or (c.scale and not metric_depth)):
        # metric targets are used as they are; relative ones are normalized per image first
        target = target_disparity if metric_depth else relative_target(target_disparity, c)
        target = target.flatten(1)  # (B, H*W)
        if pixels is not None:
            target = target.gather(1, pixels)  # (B, N)
        if metric_depth:
            terms["depth"], s = metric_depth_loss(canonical.weights, canonical.sample_disparity, target)
            terms["s_star"] = s.mean()  # Eq. 1's s* against true disparity: 1 for exact geometry
            total = total + c.depth * terms["depth"]
        elif c.depth_target == "canonical":  # G3DR's fixed band, then the metric loss
            terms["depth"], s = metric_depth_loss(canonical.weights, loss_disparity(canonical, c, render_cfg),
                                                  canonical_target(target, c, render_cfg))
            terms["s_star"] = s.mean()
            total = total + c.depth * terms["depth"]
        else:
            terms["depth"], s, t = depth_loss(canonical.weights, loss_disparity(canonical, c, render_cfg), target,
                                              grad_through_st=c.depth_grad_through_st,
                                              min_scale=scale_floor(c, step))
            terms["scale"] = scale_loss(s, c.small_scale, c.max_scale)
            terms["s_star"] = s.detach().mean()  # the s used (>= the floor while it is on)
            terms["t_star"] = t.detach().mean()  # Eq. 1's shift: where the scene sits in disparity
            terms["s_floor"] = s.new_full((), scale_floor(c, step))  # on the device: no host copy
            total = total + c.depth * terms["depth"] + c.scale * terms["scale"]
    if c.lookat:
        central = central_pixels(height, width, c.lookat_fraction, images.device)
        rays = pixels if pixels is not None else torch.arange(height * width, device=images.device)[None]
        is_central = (rays[..., None] == central).any(-1).expand(rgb.shape[0], -1)  # (B, N), no host sync
        values = (canonical.depth if c.lookat_statistic == "depth" else
                  axis_disparity_map(canonical, c))  # mean ray depth (as before), or mean camera-axis disparity
        target_depth, farther_ok = lookat_target(target_disparity, c, render_cfg)
        terms["lookat"] = lookat_loss(values.flatten(1), is_central, target_depth, c.lookat_statistic, farther_ok)
        total = total + c.lookat * terms["lookat"]
    if c.distortion or c.interlevel:
        renders = [canonical] + ([novel] if novel is not None else [])
        regs = [nerf_regularizers(r) for r in renders]
        terms["distortion"] = torch.stack([d for d, _ in regs]).mean()
        terms["interlevel"] = torch.stack([i for _, i in regs]).mean()
        total = total + c.distortion * terms["distortion"] + c.interlevel * terms["interlevel"]
    weight = gan_weight(c, step)
    if weight and d_main is not None:
        if pixels is not None:
            raise ValueError("the GAN losses need whole images: render every pixel once the GAN is on")
        terms["gan_main"] = generator_loss(d_main(rgb))
        total = total + weight * terms["gan_main"]
    novel_weight = novel_gan_weight(c, step)
    if novel_weight and novel is not None and d_novel is not None:
        terms["gan_novel"] = generator_loss(d_novel(with_depth(novel, render_cfg.near)))
        total = total + novel_weight * terms["gan_novel"]
    terms["gan_weight"] = total.new_full((), weight)
    if novel_weight != weight:
        terms["novel_gan_weight"] = total.new_full((), novel_weight)
    return total, terms


def discriminator_losses(
    images: Tensor,
    canonical: RenderOutput | None,
    novel: RenderOutput | None,
    d_main: nn.Module | None,
    d_novel: nn.Module | None,
    loss_cfg: LossConfig,
    render_cfg: RenderConfig,
    apply_r1: bool,
    novel_real: RenderOutput | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Both discriminators' non-saturating losses (+ lazy R1 on their real inputs).

    Main (when `d_main` and `canonical` are given): real images vs canonical reconstructions.
    Novel-view: canonical reconstruction with its depth (detached: the stop-grad; `novel_real`,
    a canonical render at the novel views' size, when given) vs novel-view renders with their
    depth.
    """
    terms: dict[str, Tensor] = {}
    total = images.new_zeros(())
    if d_main is not None and canonical is not None:
        terms["d_main"] = discriminator_loss(d_main(images), d_main(canonical.rgb.detach()))
        total = total + terms["d_main"]
    real_novel = None
    if novel is not None and d_novel is not None:
        real_novel = with_depth(novel_real if novel_real is not None else canonical, render_cfg.near).detach()
        fake_novel = with_depth(novel, render_cfg.near).detach()
        terms["d_novel"] = discriminator_loss(d_novel(real_novel), d_novel(fake_novel))
        total = total + terms["d_novel"]
    if apply_r1 and loss_cfg.r1_gamma > 0:
        # Lazy regularisation (StyleGAN2): every r1_every steps, scaled by r1_every.
        r1_weight = loss_cfg.r1_gamma / 2.0 * loss_cfg.r1_every
        if "d_main" in terms:
            terms["r1_main"] = r1_penalty(d_main, images)
            total = total + r1_weight * terms["r1_main"]
        if real_novel is not None:
            terms["r1_novel"] = r1_penalty(d_novel, real_novel)
            total = total + r1_weight * terms["r1_novel"]
    return total, terms
