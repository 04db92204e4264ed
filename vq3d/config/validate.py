"""Checks across fields: settings that contradict each other are refused with the keys named."""

from __future__ import annotations

from vq3d.config.schema import Config, ConfigError, RenderConfig


def validate(cfg: Config) -> Config:
    """Raise ConfigError for contradictory settings; returns `cfg`."""
    L = cfg.loss
    if L.depth_scale_floor < 0 or L.max_scale < 0:
        raise ConfigError(f"loss.depth_scale_floor ({L.depth_scale_floor}) and loss.max_scale ({L.max_scale}) "
                          "must be >= 0")
    relative = L.depth_target in ("relative", "auto")
    if relative and L.scale > 0 and L.depth_scale_floor > L.max_scale:
        raise ConfigError(f"loss.depth_scale_floor ({L.depth_scale_floor}) is above Eq. 3's threshold "
                          f"loss.max_scale ({L.max_scale}): the floor would hold s* where Eq. 3 penalizes it; "
                          "lower the floor or raise the threshold (both are in loss.scale_unit)")
    if not 0 < L.canonical_band < 1:
        raise ConfigError(f"loss.canonical_band ({L.canonical_band}) must be in (0, 1): the band is "
                          "camera_distance x (1 +- band)")
    if L.lookat and not (L.lookat_depth > 0 and 0 < L.lookat_fraction <= 1):
        raise ConfigError(f"loss.lookat_depth {L.lookat_depth} must be > 0 and loss.lookat_fraction "
                          f"{L.lookat_fraction} in (0, 1]")
    if L.lookat and L.lookat_placement == "subject" and L.lookat_depth != 1.0:
        raise ConfigError(f"loss.lookat_placement=subject sets each image's target from its subject's width, "
                          f"so loss.lookat_depth {L.lookat_depth} would contradict it: leave it at 1 "
                          "or use loss.lookat_placement=fixed")
    if not cfg.train.field_lr_scale > 0 or cfg.train.field_lr_ramp_steps < 0:
        raise ConfigError(f"train.field_lr_scale ({cfg.train.field_lr_scale}) must be > 0 (the field MLPs' "
                          f"rate is train.lr times it) and train.field_lr_ramp_steps "
                          f"({cfg.train.field_lr_ramp_steps}) >= 0")
    m = cfg.model
    if m.codebook_groups < 1 or m.codebook_dim % m.codebook_groups:
        raise ConfigError(f"model.codebook_groups ({m.codebook_groups}) must be >= 1 and divide "
                          f"model.codebook_dim ({m.codebook_dim}): each group is an equal part of a "
                          "token's code")
    if cfg.render.kernel == "triton":
        reason = fused_unsupported(cfg.render, implicit=cfg.model.representation == "implicit")
        if reason:
            raise ConfigError(f"render.kernel=triton: {reason}")
    return cfg


def fused_unsupported(render: RenderConfig, implicit: bool = False) -> str | None:
    """Why the fused renderer kernels (render.kernel=triton) cannot render a config, or None."""
    if implicit:
        return "the fused kernels read triplanes; the implicit-field ablation renders with render.kernel=torch"
    if render.mlp_layers != 2:
        return f"the fused kernels run 2-layer field MLPs (the paper's); render.mlp_layers is {render.mlp_layers}"
    return None
