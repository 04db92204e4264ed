"""The project's one renderer: contracted triplanes -> proposal + NeRF MLPs -> volume rendering.

How the pieces compose (paper Sec. 3.3; Mip-NeRF 360 for contraction and proposal sampling):

    rays (origins, unit dirs) --samplers--> intervals in s-space (linear in disparity)
      level 0 .. P-1 (proposal):  points -> contract -> features -> proposal MLP -> density
                                  -> weights -> (dilate, anneal) -> inverse-CDF resampling
      level P (NeRF):             points -> contract -> features -> NeRF MLP -> density, rgb
                                  -> weights -> rgb, opacity, disparity, depth

The feature source is either triplanes (B, 3, C, R, R) or a callable
`features(points (B, M, 3)) -> (B, M, C)` (the "w/o triplanes" ablation); both receive
*contracted* points (in the ball, or cube for `contraction="linf"`, of radius 2).

Gradients. Sample positions are never differentiated. The NeRF level's features carry
gradients into the planes (or callable). The proposal levels read the features *detached*
unless `render.proposal_feature_grad` is set: as in Mip-NeRF 360, the proposal MLP is then
trained only by the interlevel loss and does not shape the scene, and no graph is built into
the planes for the 2 x 64 proposal samples (the bulk of all samples), which saves most of the
time and memory of training. Every proposal level shares one proposal MLP (Mip-NeRF 360).

Memory. With `render.recompute` (default) lookup and MLP are one autograd Function per level
that keeps each sample's coordinates and C features and recomputes the MLP's hidden activations
chunk by chunk in backward. When the features of all samples would exceed both
`render.feature_cache_mb` and the planes' channel-last copy, it keeps the copy instead and
recomputes the features too (a sample then costs ~10 floats, compositing included; see
`fields.py`). The channel-last copy is free when the planes are channel-last in memory already.
Inference (no grad) renders `render.chunk_rays` rays at a time (0: as many as the chunk budget
allows); with `render.checkpoint_chunks` training does the same and recomputes each chunk in
backward (activation memory of one chunk).

Execution and precision (docs/design.md). Chunks of points and rays are sized by one memory
budget (`vq3d.render.execution`: `render.chunk_mb`, by default a quarter of a GPU's free memory
or 32 MB on CPU), so on a GPU a training render is a few large kernels per level. Sampling
jitter is drawn on the rays' device. Under autocast (CPU or CUDA) cameras, rays, sample edges,
disparities, plane coordinates and compositing stay fp32; only the plane features and the
field MLPs run in the autocast dtype (`vq3d.precision`).

Choices beyond the paper: samples are intervals that partition [near, far] (first edge at s=0,
last at s=1), each evaluated at its midpoint in s (disparity), so with far = inf the last
interval reaches infinity and the NeRF level's sample disparities D_ik are the interval
midpoints' disparities; `background="none"` makes that last interval opaque so every ray
saturates (weights sum to 1, as Eq. 1-2 assume).

Outputs follow docs/design.md: colours in [-1, 1], depth = ray distance t, disparity = 1 / t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vq3d.config import RenderConfig
from vq3d.precision import upcast, wide
from vq3d.render.cameras import Cameras, axis_cosines
from vq3d.render.compositing import alpha_weights, background_rgb, composite, interval_lengths
from vq3d.render.contraction import contract
from vq3d.render.execution import ExecutionPolicy, execution_policy, lookup_bytes_per_point, render_bytes_per_ray
from vq3d.render.fields import FieldMLP
from vq3d.render.fused import fused_level, resolve_kernel
from vq3d.render.samplers import (
    anneal_power,
    check_near_far,
    dilation_for_level,
    propose_edges,
    s_to_disparity,
    stratified_u,
    uniform_edges,
)
from vq3d.render.triplane import planes_to_table

FeatureFn = Callable[[Tensor], Tensor]
FeatureSource = Union[Tensor, FeatureFn]


@dataclass
class RenderOutput:
    """What one render returns.

    From `Renderer.forward` (rays (B, N)): rgb (B, N, 3) in [-1, 1]; depth, disparity,
    opacity (B, N). From `Renderer.render_cameras`: rgb (B, 3, H, W) in [-1, 1]; depth,
    disparity, opacity (B, 1, H, W). Per-sample tensors are (B, N, ...) in both (N = H * W):
    weights (B, N, S) and sample_disparity (B, N, S) of the NeRF level (W_ik and D_ik of the
    paper's Eq. 1-2); spacing_edges (B, N, S + 1) its intervals in normalized spacing s in [0, 1]
    (Mip-NeRF 360's s-space; unrelated to Eq. 1's scale s*), for the distortion loss;
    proposal_weights[k] (B, N, S_k) and proposal_spacing_edges[k] (B, N, S_k + 1) for each proposal
    level k (interlevel loss).

    depth is the weight-normalized expected distance along the ray (not z), sum(w t) / sum(w),
    as everywhere in vq3d; the depth losses compare disparities 1 / t. disparity is the
    expected disparity with the unfilled remainder at `far` (sum(w / t) + (1 - opacity) / far).
    """

    rgb: Tensor
    depth: Tensor
    disparity: Tensor
    opacity: Tensor
    weights: Tensor
    sample_disparity: Tensor
    spacing_edges: Tensor
    proposal_weights: list[Tensor] = field(default_factory=list)
    proposal_spacing_edges: list[Tensor] = field(default_factory=list)
    # (B, N) cos of each ray's angle to its camera's axis (`render_cameras` only; None from
    # `forward`, whose rays have no camera): camera-axis disparity = disparity / axis_cos
    axis_cos: Tensor | None = None


class _Features:
    """Density and colour of contracted points, from planes (via a channel-last table) or a
    feature callable, through a given MLP."""

    def __init__(self, source: FeatureSource, reduce: str):
        if isinstance(source, Tensor):
            self.table: Tensor | None = planes_to_table(source)
            self.fn: FeatureFn | None = None
            # bytes the channel-last copy adds (none when the planes were channel-last already)
            channel_last = source.permute(0, 1, 3, 4, 2).is_contiguous()
            self.copy_bytes = 0 if channel_last else self.table.numel() * self.table.element_size()
            self.feature_size = self.table.element_size()  # bytes of one feature value
        elif callable(source):
            self.table, self.fn = None, source
            self.copy_bytes = 0
            self.feature_size = 4
        else:
            raise TypeError("features must be a planes tensor (B, 3, C, R, R) or a callable")
        self.reduce = reduce

    def field(self, mlp: FieldMLP, coords: Tensor, grad: bool, keep_table: bool,
              policy: ExecutionPolicy) -> tuple[Tensor, Tensor | None]:
        """coords (B, M, 3) -> density (B, M), rgb (B, M, 3) or None (fp32); features are
        detached from their source unless `grad` (the MLP's weights always get gradients)."""
        if self.table is not None:
            table = self.table if grad else self.table.detach()
            return mlp.from_triplanes(table, coords, self.reduce, keep_table, policy)
        if grad:
            return mlp(self.fn(coords), policy)
        with torch.no_grad():
            feats = self.fn(coords)
        return mlp(feats, policy)


class Renderer(nn.Module):
    """Triplane (or implicit) NeRF renderer with proposal sampling; holds the MLPs.

    cfg: the render section of the config; feature_dim: C of the planes / callable features.
    """

    def __init__(self, cfg: RenderConfig, feature_dim: int):
        super().__init__()
        check_near_far(cfg.near, cfg.far)
        if cfg.nerf_samples < 1 or any(n < 1 for n in cfg.proposal_samples):
            raise ValueError("render.nerf_samples and render.proposal_samples must be >= 1")
        background_rgb(cfg.background, torch.float32, torch.device("cpu"))  # validates
        if not (math.isfinite(cfg.scene_scale) and cfg.scene_scale > 0):
            raise ValueError(f"render.scene_scale must be a positive number, got {cfg.scene_scale}")
        self.cfg = cfg
        self.feature_dim = feature_dim
        recompute = cfg.recompute and not cfg.checkpoint_chunks
        self.proposal_mlp = (
            FieldMLP(feature_dim, cfg.mlp_hidden, cfg.mlp_layers, with_rgb=False, recompute=recompute)
            if cfg.proposal_samples else None
        )
        self.nerf_mlp = FieldMLP(feature_dim, cfg.mlp_hidden, cfg.mlp_layers, with_rgb=True,
                                 recompute=recompute)
        # compile the torch path's chunks of renders with gradients (`render.compile_field`); off
        # until a Stage-1 trainer turns it on: its thousands of steps pay for the seconds of
        # compiling that a refinement of a few dozen steps would not
        self.compile_field = False

    @property
    def samples_per_level(self) -> list[int]:
        return list(self.cfg.proposal_samples) + [self.cfg.nerf_samples]

    # ------------------------------------------------------------------ public API

    def forward(
        self,
        features: FeatureSource,
        origins: Tensor,
        dirs: Tensor,
        *,
        train: bool,
        step: int | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render rays: origins, dirs (B, N, 3) (dirs are normalized here) -> ray-shaped output.

        train: jitter the samples (if `render.stratified`; from `generator`, which must live on
        the rays' device) and anneal the proposal weights by `step` (no annealing when step is
        None). Without gradients the rays are rendered in chunks of `render.chunk_rays` (0: from
        the chunk budget); with gradients in one pass, or in checkpointed chunks when
        `render.checkpoint_chunks` is set. Origins and directions are used in fp32.
        """
        if origins.dim() != 3 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
            raise ValueError(f"origins and dirs must both be (B, N, 3), got {tuple(origins.shape)}, "
                             f"{tuple(dirs.shape)}")
        source = _Features(features, self.cfg.plane_reduce)
        if source.table is not None:
            if source.table.shape[0] != origins.shape[0]:
                raise ValueError(f"planes have batch {source.table.shape[0]}, rays {origins.shape[0]}")
        origins, dirs = upcast(origins), upcast(dirs)  # geometry is never bf16 (the precision policy)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        policy = self.execution_policy(origins.device)
        grad = torch.is_grad_enabled()
        if policy.compiled and not grad:  # inference renders vary in shape: each would compile
            policy = replace(policy, compiled=False)
        batch, n = origins.shape[:2]
        anneal = 1.0
        if train:
            anneal = anneal_power(step, self.cfg.proposal_anneal_steps, self.cfg.proposal_anneal_slope)
        jitter = train and self.cfg.stratified
        us = [stratified_u((batch, n), num, jitter, generator, device=origins.device, dtype=origins.dtype)
              for num in self.samples_per_level]
        checkpointed = grad and self.cfg.checkpoint_chunks
        per_ray = render_bytes_per_ray(self.samples_per_level)
        if checkpointed:  # a checkpointed chunk holds its whole graph during its backward
            per_ray += sum(self.samples_per_level) * lookup_bytes_per_point(
                self.feature_dim, self.cfg.mlp_hidden, self.cfg.mlp_layers)
        rays = self.cfg.chunk_rays or policy.per_chunk(per_ray)
        chunk = max(1, rays // max(batch, 1))
        if not checkpointed and (grad or n <= chunk):  # one pass (training keeps its graph whole)
            return self._render(source, origins, dirs, us, anneal, policy)
        parts = []
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            args = (origins[:, sl], dirs[:, sl], [u[:, sl] for u in us])
            if checkpointed:
                parts.append(checkpoint(self._render_tuple, source, *args, anneal, policy, use_reentrant=False))
            else:
                parts.append(self._render_tuple(source, *args, anneal, policy))
        return _from_tuple([torch.cat(xs, dim=1) for xs in zip(*parts)], len(self.cfg.proposal_samples))

    def render_cameras(
        self,
        features: FeatureSource,
        cameras: Cameras,
        height: int,
        width: int,
        *,
        train: bool = False,
        step: int | None = None,
        generator: torch.Generator | None = None,
        pixels: Tensor | None = None,
    ) -> RenderOutput:
        """Render full images from `cameras` (B): rgb (B, 3, H, W) in [-1, 1] (sigmoid * 2 - 1),
        depth / disparity / opacity (B, 1, H, W), per-sample tensors (B, H * W, ...).

        pixels: optional (B, N) indices into each image's H * W raster: only those rays are
        rendered and the image-shaped outputs are (B, C, 1, N) (training on ray subsets)."""
        ref = features if isinstance(features, Tensor) else cameras.c2w
        # geometry in fp32 (fp64 for fp64 planes), never in bf16 (the precision policy)
        origins, dirs = cameras.to(ref.device, wide(ref.dtype)).rays(height, width)
        batch = origins.shape[0]
        origins, dirs = origins.reshape(batch, -1, 3), dirs.reshape(batch, -1, 3)
        cosines = axis_cosines(cameras.fov_deg, height, width, origins.device).to(origins.dtype)
        cosines = cosines.reshape(1, -1).expand(batch, -1)
        if pixels is not None:
            if pixels.shape[0] != batch or pixels.dim() != 2:
                raise ValueError(f"pixels must be (B={batch}, N) indices, got {tuple(pixels.shape)}")
            pixels = pixels.to(origins.device)
            index = pixels[..., None].expand(-1, -1, 3)
            origins, dirs, cosines = origins.gather(1, index), dirs.gather(1, index), cosines.gather(1, pixels)
            height, width = 1, pixels.shape[1]
        out = self(features, origins, dirs, train=train, step=step, generator=generator)
        out.axis_cos = cosines

        def image(x: Tensor) -> Tensor:
            return x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)

        out.rgb = image(out.rgb)
        out.depth, out.disparity, out.opacity = image(out.depth), image(out.disparity), image(out.opacity)
        return out

    def execution_policy(self, device: torch.device) -> ExecutionPolicy:
        """Chunk budget and scatter method of renders on `device` (`vq3d.render.execution`),
        fixed at the first render there: chunk sizes then do not drift with the memory in use.
        That makes the CPU's results repeat bit for bit from run to run; on CUDA the `index_add`
        scatter of the planes' gradient adds with atomics, whose order varies, so gradients agree
        only to rounding (fp32 sums in varying order)."""
        key = (device.type, device.index, self.cfg.chunk_mb, self.cfg.scatter, self.compile_field)
        cache = self.__dict__.setdefault("_policies", {})
        if key not in cache:
            cache[key] = execution_policy(self.cfg.chunk_mb, self.cfg.scatter, device, self.compile_field)
        return cache[key]

    def plane_coords(self, points: Tensor) -> Tensor:
        """World points (..., 3) -> the planes' coordinates (..., 3): scaled by
        `render.scene_scale`, then contracted into radius 2."""
        scale = self.cfg.scene_scale
        return contract(points * scale if scale != 1.0 else points, self.cfg.contraction)

    @torch.no_grad()
    def field_at(self, features: FeatureSource, points: Tensor) -> tuple[Tensor, Tensor]:
        """NeRF-MLP density (B, M) and colour (B, M, 3) in [0, 1] at world points (B, M, 3)
        (meshes and their vertex colours, probes). The colour does not depend on the view."""
        source = _Features(features, self.cfg.plane_reduce)
        coords = self.plane_coords(points)
        density, rgb = source.field(self.nerf_mlp, upcast(coords), grad=False, keep_table=False,
                                    policy=self.execution_policy(points.device))
        return density.reshape(points.shape[:2]), rgb.reshape(*points.shape[:2], 3)

    def density(self, features: FeatureSource, points: Tensor) -> Tensor:
        """NeRF-MLP density at world points (B, M, 3) -> (B, M) (meshes, probes)."""
        return self.field_at(features, points)[0]

    # ------------------------------------------------------------------ internals

    def _render_tuple(self, source: _Features, origins: Tensor, dirs: Tensor, us: list[Tensor],
                      anneal: float, policy: ExecutionPolicy) -> tuple[Tensor, ...]:
        return _to_tuple(self._render(source, origins, dirs, us, anneal, policy))

    def _render(self, source: _Features, origins: Tensor, dirs: Tensor, us: list[Tensor],
                anneal: float, policy: ExecutionPolicy) -> RenderOutput:
        cfg = self.cfg
        batch, n = origins.shape[:2]
        counts = self.samples_per_level
        opaque_last = cfg.background == "none"
        # save every sample's features for backward when they fit in `feature_cache_mb` or cost
        # less than the planes' channel-last copy; otherwise keep the table and recompute them
        feature_bytes = batch * n * sum(counts) * self.feature_dim * source.feature_size
        keep_table = feature_bytes > max(source.copy_bytes, cfg.feature_cache_mb * 2**20)
        fused = resolve_kernel(cfg, origins.device, implicit=source.table is None) == "triton"
        edges = weights = None
        proposal_weights, proposal_edges = [], []
        for level, num in enumerate(counts):
            is_nerf = level == len(counts) - 1
            with torch.no_grad():
                if level == 0:
                    edges = uniform_edges((batch, n), num, us[0])
                else:
                    dilation = dilation_for_level(level, counts, cfg.proposal_dilation,
                                                  cfg.proposal_dilation_bias)
                    edges = propose_edges(edges, weights.detach(), us[level], dilation, anneal, policy)
                s_mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
                disp_mid = s_to_disparity(s_mid, cfg.near, cfg.far)  # (B, n, S)
            mlp = self.nerf_mlp if is_nerf else self.proposal_mlp
            grad = is_nerf or cfg.proposal_feature_grad
            if fused:  # lookup, MLP and compositing in one kernel (vq3d.render.fused)
                table = source.table if grad else source.table.detach()
                weights, rgb01, depth, disparity, opacity = fused_level(table, origins, dirs, edges, mlp, cfg,
                                                                        source.reduce, opaque_last)
            else:
                with torch.no_grad():
                    t_mid = 1.0 / disp_mid
                    deltas = interval_lengths(1.0 / s_to_disparity(edges, cfg.near, cfg.far))
                    points = origins.unsqueeze(2) + dirs.unsqueeze(2) * t_mid.unsqueeze(-1)  # (B, n, S, 3)
                    coords = self.plane_coords(points).reshape(batch, n * num, 3)
                density, rgb = source.field(mlp, coords, grad, keep_table, policy)
                weights = alpha_weights(density.view(batch, n, num), deltas, opaque_last)
            if not is_nerf:
                proposal_weights.append(weights)
                proposal_edges.append(edges)

        if not fused:
            opacity = weights.sum(-1)
            rgb01 = composite(weights, rgb.view(batch, n, num, 3))
            inv_far = 0.0 if math.isinf(cfg.far) else 1.0 / cfg.far
            disparity = (weights * disp_mid).sum(-1) + (1.0 - opacity) * inv_far
            depth = (weights * t_mid).sum(-1) / opacity.clamp_min(1e-6)
        bg = background_rgb(cfg.background, rgb01.dtype, rgb01.device)
        if bg is not None:
            rgb01 = rgb01 + (1.0 - opacity).unsqueeze(-1) * bg
        return RenderOutput(
            rgb=rgb01 * 2.0 - 1.0, depth=depth, disparity=disparity, opacity=opacity, weights=weights,
            sample_disparity=disp_mid, spacing_edges=edges,
            proposal_weights=proposal_weights, proposal_spacing_edges=proposal_edges,
        )


def _to_tuple(out: RenderOutput) -> tuple[Tensor, ...]:
    return (out.rgb, out.depth, out.disparity, out.opacity, out.weights, out.sample_disparity, out.spacing_edges,
            *out.proposal_weights, *out.proposal_spacing_edges)


def _from_tuple(xs: list[Tensor], num_proposal: int) -> RenderOutput:
    head, rest = xs[:7], xs[7:]
    return RenderOutput(*head, proposal_weights=list(rest[:num_proposal]),
                        proposal_spacing_edges=list(rest[num_proposal:]))
