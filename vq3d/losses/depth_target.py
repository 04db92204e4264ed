"""Which depth loss a run's data gets (`loss.depth_target`), and the target and rendered
disparities it compares.

    "relative":  Eq. 1-3 against per-image normalized pseudo-GT (the paper; every photo);
    "canonical": G3DR's way (Reddy et al. 2024): the normalized pseudo-GT mapped into a fixed band
                 of depths around the orbit's centre (`canonical_target`), then Eq. 2 at s = 1,
                 t = 0 against it (no Eq. 3, no free shift: the band places the scene);
    "metric":    s = 1, t = 0 against true disparity; an upper bound, synthetic data only;
    "auto":      metric on synthetic data without a depth cache, else relative.

An estimator's target (every relative one) is inverse depth along the camera's axis, 1 / z, so
`loss_disparity` turns the renderer's per-sample 1 / t into 1 / z = 1 / (t cos) when
`loss.depth_convention` is "camera_axis" (1 / t is up to 14% off at the corners of a 45-degree
view, which no per-image s*, t* absorbs: a flat wall would be learned curved). It also measures
them in units of the look-at point's disparity (`loss.scale_unit`: camera_distance / z), so that
Eq. 3's threshold of 1 reads in the camera model: a scene whose disparities span less than from
infinity to the orbit's centre (over the target's normalized range) is flatter than any scene the
cameras are built for. The metric loss keeps the renderer's own convention (1 / t against the
synthetic scenes' true 1 / t).
"""

from __future__ import annotations

from torch import Tensor

from vq3d.config import ConfigError, LossConfig, RenderConfig
from vq3d.losses.depth import normalize_disparity, robust_normalize_disparity, solve_scale_shift
from vq3d.render.renderer import RenderOutput


def relative_target(disparity: Tensor, loss: LossConfig) -> Tensor:
    """Eq. 1-2's target from pseudo-GT disparity (B, 1, H, W): normalized per image, robustly
    (2nd-98th percentile to 0-1) or min-max (`loss.target_normalization`); same shape."""
    if loss.target_normalization == "robust":
        return robust_normalize_disparity(disparity)
    return normalize_disparity(disparity)


def canonical_target(relative: Tensor, loss: LossConfig, render_cfg: RenderConfig) -> Tensor:
    """G3DR's canonical target: a normalized relative disparity (0 far, 1 near; any shape) mapped
    linearly into the disparities of depths camera_distance x (1 +- loss.canonical_band), in the
    units of `loss_disparity`. G3DR maps normalized depth into 4..6 for cameras at distance 5,
    the box its triplanes span (band 0.2); an estimator's output is affine in disparity, so the
    map is linear in disparity here."""
    band = loss.canonical_band
    far, near = 1.0 / (1.0 + band), 1.0 / (1.0 - band)  # look-at units (camera_distance / z)
    if loss.scale_unit == "world":
        far, near = far / render_cfg.camera_distance, near / render_cfg.camera_distance
    return far + relative * (near - far)


def loss_disparity(render: RenderOutput, loss: LossConfig, render_cfg: RenderConfig) -> Tensor:
    """The NeRF level's sample disparities D_ik (B, N, L) as Eq. 1-3 compare them with an
    estimator's target: along the camera's axis and in look-at units, per the config."""
    d = render.sample_disparity
    if loss.depth_convention == "camera_axis":
        if render.axis_cos is None:
            raise ValueError("camera-axis disparity needs the render's axis_cos (render with render_cameras)")
        d = d / render.axis_cos[..., None]
    if loss.scale_unit == "lookat":
        d = d * render_cfg.camera_distance
    return d


def axis_disparity_map(render: RenderOutput, loss: LossConfig) -> Tensor:
    """The render's expected disparity (B, 1, H, W) in the convention of an estimator's target
    (1 / z when `loss.depth_convention` is "camera_axis")."""
    if loss.depth_convention != "camera_axis":
        return render.disparity
    if render.axis_cos is None:
        raise ValueError("camera-axis disparity needs the render's axis_cos (render with render_cameras)")
    return render.disparity / render.axis_cos.view_as(render.disparity)


def metric_depth_target(loss: LossConfig, data_kind: str | None, depth_cache: str, data_path: str = "") -> bool:
    """Whether the depth loss is the metric one. data_kind: "synthetic", "folder", "webdataset",
    ... or None when the data cannot be told yet (building the dataset will say what is wrong).
    Raises ConfigError when "metric" is asked of data without true depth."""
    mode = loss.depth_target
    if mode in ("relative", "canonical") or not (loss.depth or loss.scale):
        return False
    if depth_cache:  # pseudo-GT from a cache (photos, or estimator-like synthetic maps)
        if mode == "metric":
            raise ConfigError("loss.depth_target=metric needs true depth, but data.depth_cache gives "
                              f"relative pseudo-GT ({depth_cache}): use relative or auto")
        return False
    if data_kind == "synthetic":
        return True
    if mode == "metric":
        raise ConfigError(f"loss.depth_target=metric needs true depth, which only synthetic data has "
                          f"({data_path} is {data_kind or 'unreadable'} data, whose pseudo-GT depth is "
                          "relative): use loss.depth_target=relative or auto")
    return False


def true_target_disparity(true_depth: Tensor, render: RenderOutput, loss: LossConfig) -> Tensor:
    """The disparity an exact estimator would give (B, 1, H, W) from true ray distances t (B, 1, H, W)
    of `render`'s view: 1 / (t cos) in the camera-axis convention, else 1 / t."""
    disparity = 1.0 / true_depth
    if loss.depth_convention == "camera_axis":
        disparity = disparity / render.axis_cos.view_as(disparity)
    return disparity


def disparity_scale(render: RenderOutput, target_disparity: Tensor, loss: LossConfig,
                    render_cfg: RenderConfig) -> Tensor:
    """Eq. 1's s* (B,) of a render against a target disparity (B, 1, H, W), as the run's depth loss
    solves it (its normalization, convention and units): the paper's "disparity scale"."""
    target = relative_target(target_disparity, loss).flatten(1)
    s, _ = solve_scale_shift(render.weights, loss_disparity(render, loss, render_cfg), target)
    return s
