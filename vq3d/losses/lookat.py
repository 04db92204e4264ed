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

A subject's visible front is nearer than its centre, so the target is `loss.lookat_depth` times
the camera distance. 1 (the orbit's centre) left the object 10% too far at 16,000 steps;
`exact_lookat_depth` gives the value exact geometry has on a dataset with true depth (0.90 on
the synthetic training scenes), the minimizer of the prior over those scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vq3d.precision import fp32


def central_pixels(height: int, width: int, fraction: float, device: torch.device | str = "cpu") -> Tensor:
    """Raster indices (M,) of the central square whose side is `fraction` of the image's (at
    least one pixel; odd sizes centre exactly)."""
    side_h = max(1, round(height * fraction))
    side_w = max(1, round(width * fraction))
    top, left = (height - side_h) // 2, (width - side_w) // 2
    rows = torch.arange(top, top + side_h, device=device)
    cols = torch.arange(left, left + side_w, device=device)
    return (rows[:, None] * width + cols[None, :]).flatten()


@fp32
def lookat_loss(values: Tensor, central: Tensor, target_depth: float, statistic: str = "disparity") -> Tensor:
    """The prior's value: values (B, N) per ray, central (B, N) bool, the rays of the central square
    (each image needs at least one); target_depth: lookat_depth x camera_distance.

    statistic "disparity": `values` are camera-axis disparities 1 / z; the central mean m is put
    at 1 / target_depth (its depth, the harmonic mean of the central depths, at the target): a
    few weights far along a ray barely move a disparity, while they drag an expected depth far.
    statistic "depth": `values` are expected ray depths, their central mean put at target_depth.
    Either way the error is in log depth, so nearer and farther by one ratio cost alike."""
    weight = central.to(values.dtype)
    mean = (values * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    if statistic == "depth":
        return torch.log(mean.clamp_min(1e-6) / target_depth).square().mean()
    if statistic != "disparity":
        raise ValueError(f"unknown loss.lookat_statistic {statistic!r}: use disparity or depth")
    return torch.log(mean.clamp_min(1e-6) * target_depth).square().mean()


@torch.no_grad()
def exact_lookat_depth(true_depth: Tensor, fraction: float, camera_distance: float) -> float:
    """The `loss.lookat_depth` that exact geometry has: true_depth (B, H, W) ray distances of the
    canonical views. The prior summed over these images, sum_b (log m_b - log(x * camera_distance))^2
    with m_b the central mean depth, is least at log x = mean_b log(m_b / camera_distance)."""
    _, height, width = true_depth.shape
    central = central_pixels(height, width, fraction, true_depth.device)
    mean_depth = true_depth.flatten(1)[:, central].double().mean(1)
    return float(torch.log(mean_depth / camera_distance).mean().exp())
