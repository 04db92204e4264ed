"""The Stage-1 autoencoder of VQ3D (paper Sec. 3.1-3.3, Fig. 2 top).

    image (B, 3, H, W) in [-1, 1]
      -> encoder (ViT)              -> features (B, h*w, enc_width)
      -> quantizer (factorized, l2) -> codes (B, h*w, code_dim), ids (B, h*w)
      -> decoder (ViT + head)       -> triplanes (B, 3, C, R, R)
      -> renderer (any cameras)     -> rgb, depth, disparity, per-sample weights, ...

`reconstruct(images)` is the paper's single forward pass from a photo to a NeRF rendered at
the canonical camera (or any cameras given).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from vq3d.config import Config
from vq3d.models.decoder import BoundImplicitField, CNNTriplaneDecoder, ImplicitDecoder, ImplicitField, TriplaneDecoder
from vq3d.models.encoder import CNNEncoder, ViTEncoder
from vq3d.models.hub import VQ3DHubMixin
from vq3d.models.quantizer import Quantizer, QuantizerOutput
from vq3d.render.cameras import Cameras, canonical_cameras
from vq3d.render.renderer import Renderer, RenderOutput

# A decoded scene: triplanes (B, 3, C, R, R), or, for the "w/o triplanes" ablation, an MLP field.
Scene = Union[Tensor, BoundImplicitField]


class Stage1Model(nn.Module, VQ3DHubMixin):
    """The Stage-1 model of `cfg`; `Stage1Model.from_pretrained(dir_or_hub_id)` loads an exported
    one (vq3d.models.hub)."""

    hub_kind = "stage1"

    @classmethod
    def from_hub_config(cls, cfg: Config, meta: dict) -> "Stage1Model":
        return cls(cfg)

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, res = cfg.model, cfg.data.resolution
        self.cfg = cfg
        self.resolution = res
        if m.backbone == "vit":
            self.encoder: nn.Module = ViTEncoder(res, m.patch_size, m.enc_width, m.enc_layers, m.enc_heads, m.enc_mlp)
        else:
            self.encoder = CNNEncoder(res, m.patch_size, m.enc_width)
        self.grid = res // m.patch_size
        self.quantizer = Quantizer(m.enc_width, m.codebook_size, m.codebook_dim, m.commitment, m.dead_code_steps,
                                   m.vq_gradient, m.codebook_groups)
        self.implicit_field: ImplicitField | None = None
        if m.representation == "implicit":
            self.decoder: nn.Module = ImplicitDecoder(self.grid, m.codebook_dim, m.dec_width, m.dec_layers,
                                                      m.dec_heads, m.dec_mlp, m.implicit_hidden)
            self.implicit_field = ImplicitField(m.implicit_hidden, m.implicit_hidden, m.plane_channels)
        elif m.backbone == "vit":
            self.decoder = TriplaneDecoder(self.grid, m.codebook_dim, m.dec_width, m.dec_layers, m.dec_heads,
                                           m.dec_mlp, m.plane_channels, m.plane_resolution, m.plane_layout)
        else:
            self.decoder = CNNTriplaneDecoder(self.grid, m.codebook_dim, m.plane_channels, m.plane_resolution,
                                              layout=m.plane_layout)
        self.renderer = Renderer(cfg.render, m.plane_channels)

    # -- the four steps of the pipeline --------------------------------------------------------

    def quantize(self, images: Tensor) -> QuantizerOutput:
        """images (B, 3, H, W) in [-1, 1] -> quantizer output (codes, ids, VQ loss, ...)."""
        self._check_images(images)
        return self.quantizer(self.encoder(images))

    @property
    def tokens_per_image(self) -> int:
        """Ids per image, the length of a Stage-2 sequence: h*w tokens times model.codebook_groups."""
        return self.grid**2 * self.quantizer.groups

    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> token ids (B, h*w*groups), raster order, token-major."""
        return self.quantize(images).ids

    def decode_codes(self, codes: Tensor) -> Scene:
        """codes (B, h*w, code_dim) -> scene (triplanes (B, 3, C, R, R) or an implicit field)."""
        out = self.decoder(codes)
        if self.implicit_field is not None:
            return self.implicit_field.bind(out)
        return out

    def decode(self, ids: Tensor) -> Scene:
        """ids (B, h*w*groups) -> scene."""
        expected = self.tokens_per_image
        if ids.dim() != 2 or ids.shape[1] != expected:
            raise ValueError(f"expected token ids of shape (B, {expected}), got {tuple(ids.shape)}")
        return self.decode_codes(self.quantizer.lookup(ids))

    def render(self, scene: Scene, cameras: Cameras, height: int | None = None, width: int | None = None,
               *, train: bool = False, step: int | None = None,
               generator: torch.Generator | None = None, pixels: Tensor | None = None) -> RenderOutput:
        """Volume-render `scene` from `cameras` at (height, width) (default: the training resolution);
        `pixels` (B, N) renders only those raster indices (outputs shaped (B, C, 1, N))."""
        height = height or self.resolution
        width = width or height
        return self.renderer.render_cameras(scene, cameras, height, width, train=train, step=step,
                                            generator=generator, pixels=pixels)

    def density(self, scene: Scene, points: Tensor) -> Tensor:
        """NeRF density of one scene (batch 1) at world points (N, 3) -> (N,)."""
        return self.renderer.density(scene, points[None])[0]

    def colour(self, scene: Scene, points: Tensor) -> Tensor:
        """NeRF colour (N, 3) in [0, 1] of one scene (batch 1) at world points (N, 3)."""
        return self.renderer.field_at(scene, points[None])[1][0]

    def reconstruct(self, images: Tensor, cameras: Cameras | None = None) -> RenderOutput:
        """One forward pass from images to a NeRF, rendered from `cameras` (default: canonical)."""
        if cameras is None:
            cameras = self.canonical_cameras(images.shape[0], images.device)
        scene = self.decode_codes(self.quantize(images).codes)
        return self.render(scene, cameras)

    def forward(self, images: Tensor, novel_c2w: Tensor | None = None, step: int | None = None,
                generator: torch.Generator | None = None, pixels: Tensor | None = None,
                novel_size: int | None = None) -> dict:
        """The training forward pass (one call, so DistributedDataParallel can sync gradients).

        images (B, 3, H, W) in [-1, 1]; novel_c2w (B, 4, 4) novel cameras or None; pixels (B, N) raster indices of the canonical rays to render (None: the whole
        image); novel_size: the novel views' side (default: the training resolution).
        Returns {"quant": QuantizerOutput, "canonical": RenderOutput, "novel": RenderOutput | None,
        "novel_real": RenderOutput | None}: novel_real is the canonical view at the novel views'
        size, rendered without gradients (the novel-view discriminator's real side, stop-grad)
        when the canonical render is not that already.
        """
        quant = self.quantize(images)
        scene = self.decode_codes(quant.codes)
        canonical = self.render(scene, self.canonical_cameras(images.shape[0], images.device), train=True, step=step,
                                generator=generator, pixels=pixels)
        novel = novel_real = None
        if novel_c2w is not None:
            size = novel_size or self.resolution
            novel = self.render(scene, Cameras(novel_c2w, self.cfg.render.fov_deg), size, size, train=True,
                                step=step, generator=generator)
            if pixels is not None or size != self.resolution:
                with torch.no_grad():
                    novel_real = self.render(scene, self.canonical_cameras(images.shape[0], images.device), size,
                                             size, train=True, step=step, generator=generator)
        return {"quant": quant, "canonical": canonical, "novel": novel, "novel_real": novel_real}

    # -- helpers --------------------------------------------------------------------------------

    def canonical_cameras(self, batch: int, device: torch.device | str = "cpu") -> Cameras:
        r = self.cfg.render
        return canonical_cameras(batch, r.camera_distance, r.fov_deg, device)

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (self.resolution, self.resolution):
            raise ValueError(
                f"expected images of shape (B, 3, {self.resolution}, {self.resolution}), got {tuple(images.shape)}")
