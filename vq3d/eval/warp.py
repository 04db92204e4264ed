"""The ground-truth warp baseline for novel views: the input image moved by the true geometry.

For each novel-view pixel, its ray and ground-truth depth give a world point; that point is
projected into the canonical camera and the input image is sampled there (bilinear). This is what
a model with exact geometry and no inpainting would show: points that leave the input's frame
take its nearest border pixel, and points hidden in the input take the colour of whatever hides
them. Against `copy_baseline_psnr` (no 3D at all) it brackets the novel-view score a model can
get by re-using the pixels it was given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.render.cameras import Cameras


def warp_to_view(image: Tensor, image_c2w: Tensor, view_c2w: Tensor, view_depth: Tensor,
                 fov_deg: float) -> Tensor:
    """image (B, 3, H, W) seen from image_c2w (B, 4, 4) -> its warp (B, 3, H, W) into the cameras
    view_c2w (B, 4, 4), whose per-pixel ray distances are view_depth (B, 1, H, W)."""
    B, _, H, W = image.shape
    view = Cameras(view_c2w, fov_deg)
    origins, dirs = view.rays(H, W)  # (B, H, W, 3)
    points = (origins + dirs * view_depth[:, 0, :, :, None]).reshape(B, -1, 3)
    uv, _ = Cameras(image_c2w, fov_deg).project(points, H, W)  # pixel coordinates (u, v)
    # pixel i's centre is at u = i + 0.5, and grid_sample (align_corners=False) wants it at
    # (i + 0.5) / size * 2 - 1
    grid = (uv / torch.tensor([W, H], dtype=uv.dtype, device=uv.device) * 2 - 1).view(B, H, W, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
