"""The look-at prior: the subject sits at the point the cameras orbit (a departure from the paper,
off by default: `loss.lookat = 0`).

Why: Eq. 1-2 fit the rendered disparity D to the relative target d up to a per-image scale and
shift, d ~ s* D + t*. The shift says where the scene sits, and nothing in Eq. 1-4 but the
novel-view GAN fixes it. Measured on the demo preset (paper's loss, 6,000 steps): s* settles near
the truth (2.1 against 1.9 for exact geometry) while t* stays near 0, the value that renders the
farthest target (d = 0: the walls) at infinity; the object is then 2.2x its true distance and
novel views are 3 dB worse than copying the input.

The paper's camera model already assumes where the subject is: the canonical camera looks at
the origin from `render.camera_distance`, and novel views orbit that point (Sec. 3.2), which
only makes sense for a subject there. The prior states it for the canonical view: the rendered
depth of the central pixels (the subject) should be the camera distance,

    L_lookat = mean over images of ( log( mean_{central pixels} depth / camera_distance ) )^2

in log depth, so nearer and farther errors of the same ratio cost alike. Eq. 2 is flat along
t*, so a small weight picks the shift without pulling against the depth loss. It holds for
subjects centred at the look-at point (the synthetic benchmark; centred ImageNet-like photos).

A subject's visible front is nearer than its centre. `loss.lookat_placement=fixed` puts every
image's central pixels at `loss.lookat_depth` times the camera distance: 1 (the orbit's centre)
left the object 10% too far at 16,000 steps; `exact_lookat_depth` gives the value exact geometry
has on a dataset with true depth (0.90 on the synthetic training scenes), the minimizer of the
prior over those scenes, a number no photo has. `loss.lookat_placement=subject` reads each
image's front from its own depth target instead (`subject_lookat_target`): the front of a ball
centred at the orbit's centre, as wide as the subject looks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vq3d.precision import fp32


def central_span(size: int, fraction: float) -> slice:
    """The central square's rows (or columns) along one side of `size` pixels: `fraction` of it,
    at least one pixel, centred (exactly for odd sizes)."""
    side = max(1, round(size * fraction))
    start = (size - side) // 2
    return slice(start, start + side)


def central_pixels(height: int, width: int, fraction: float, device: torch.device | str = "cpu") -> Tensor:
    """Raster indices (M,) of the central square whose side is `fraction` of the image's
    (`central_span` along each side)."""
    span_h, span_w = central_span(height, fraction), central_span(width, fraction)
    rows = torch.arange(span_h.start, span_h.stop, device=device)
    cols = torch.arange(span_w.start, span_w.stop, device=device)
    return (rows[:, None] * width + cols[None, :]).flatten()


@fp32
def lookat_loss(values: Tensor, central: Tensor, target_depth: float | Tensor, statistic: str = "disparity",
                farther_ok: Tensor | None = None) -> Tensor:
    """The prior's value: values (B, N) per ray, central (B, N) bool, the rays of the central square
    (each image needs at least one); target_depth: lookat_depth x camera_distance, or one per
    image (B,); farther_ok (B,) bool: those images pay only for being nearer than their target.

    statistic "disparity": `values` are camera-axis disparities 1 / z; the central mean m is put
    at 1 / target_depth (its depth, the harmonic mean of the central depths, at the target): a
    few weights far along a ray barely move a disparity, while they drag an expected depth far.
    statistic "depth": `values` are expected ray depths, their central mean put at target_depth.
    Either way the error is in log depth, so nearer and farther by one ratio cost alike."""
    weight = central.to(values.dtype)
    mean = (values * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    if statistic == "depth":
        log_ratio = torch.log(mean.clamp_min(1e-6) / target_depth)  # log(depth / target): > 0 is farther
    elif statistic == "disparity":
        log_ratio = -torch.log(mean.clamp_min(1e-6) * target_depth)
    else:
        raise ValueError(f"unknown loss.lookat_statistic {statistic!r}: use disparity or depth")
    if farther_ok is not None:
        log_ratio = torch.where(farther_ok, log_ratio.clamp_max(0.0), log_ratio)
    return log_ratio.square().mean()


@torch.no_grad()
def exact_lookat_depth(true_depth: Tensor, fraction: float, camera_distance: float) -> float:
    """The `loss.lookat_depth` that exact geometry has: true_depth (B, H, W) ray distances of the
    canonical views. The prior summed over these images, sum_b (log m_b - log(x * camera_distance))^2
    with m_b the central mean depth, is least at log x = mean_b log(m_b / camera_distance)."""
    _, height, width = true_depth.shape
    central = central_pixels(height, width, fraction, true_depth.device)
    mean_depth = true_depth.flatten(1)[:, central].double().mean(1)
    return float(torch.log(mean_depth / camera_distance).mean().exp())


@torch.no_grad()
def subject_lookat_target(target_disparity: Tensor, fraction: float, fov_deg: float) -> tuple[Tensor, Tensor]:
    """Each image's look-at target, for a subject centred at the orbit's centre, from the image's
    own depth target (`loss.lookat_placement=subject`).

    target_disparity (B, 1, H, W): any per-image affine disparity, larger = nearer (an estimator's
    output). Returns (target (B,), through_hole (B,) bool), target as a fraction of the camera
    distance D: the subject's front where the central square sees the subject; 1 (the orbit's
    centre) where it sees past it, which the central pixels must then be no nearer than
    (`lookat_loss`'s `farther_ok`); 1 both ways for a flat target, which says nothing.

    The camera model puts the subject's centre at the orbit's centre. Taken as a ball (a single
    image says nothing of the subject's depth extent; a ball's is its width), a subject spanning
    w pixels of a row has angular radius a, tan a = (w / H) tan(fov / 2) (the field of view spans
    the H rows), so radius D sin a: the rays through its centre meet its front at D (1 - sin a).
    w is read on each row of the central square: the run of pixels from the middle outwards that
    are nearer than halfway from the central square's median disparity to the row's farthest; the
    median over those rows. An affine change of the disparity leaves the run as it is, so the
    target's unknown scale and shift do not matter. A subject wider than the view whose own edges
    are the rows' farthest pixels reads narrower than it is (its target too far).

    The central square sees past the subject (a hole, as through a ring) when its median disparity
    is below halfway from the rows' farthest to their nearest (the median over its rows), or when
    the run is empty (the middle columns are past the subject). A thing nearer than the subject
    anywhere on those rows therefore reads as the subject, and the prior as one-sided. (Asking for
    something nearer on both sides of the middle instead missed 124 of the 753 views through a
    hole among the benchmark's 7,200 training targets.)
    """
    d = target_disparity[:, 0].float()  # (B, H, W)
    _, height, width = d.shape
    rows = d[:, central_span(height, fraction)]  # (B, S, W) the central square's rows
    central = central_pixels(height, width, fraction, d.device)
    centre = d.flatten(1)[:, central].median(1).values[:, None]  # (B, 1)
    half = width // 2  # the run is counted outwards from the middle, both ways
    far = rows.amin(2)  # (B, S)
    is_subject = rows >= (0.5 * (centre + far))[..., None]  # (B, S, W)
    left = is_subject[..., :half].flip(-1).long().cumprod(-1).sum(-1)
    right = is_subject[..., half:].long().cumprod(-1).sum(-1)
    run = (left + right).float().median(1).values  # (B,) pixels
    tan_a = run / height * math.tan(math.radians(fov_deg) / 2)
    front = 1.0 - tan_a / torch.sqrt(1.0 + tan_a.square())  # 1 - sin a
    past = centre < (0.5 * (far + rows.amax(2))).median(1).values[:, None]  # (B, 1)
    through_hole = past[:, 0] | (run == 0)
    flat = d.flatten(1).amax(1) <= d.flatten(1).amin(1)
    return torch.where(through_hole | flat, torch.ones_like(front), front), through_hole & ~flat
