"""Ground truth of the synthetic dataset at any camera, by re-rendering its scenes exactly.

A synthetic scene is a function of (seed, scene index, number of views, camera settings), all
recorded in the dataset's card (`vq3d.data.synthetic.sample_scene`), so the exact ray caster can
render it again from cameras the dataset never stored (e.g. novel views at exactly radius r).
`GroundTruth.render` checks once per scene that the regenerated canonical view equals the stored
image, so a dataset made by another generator version is refused rather than mis-scored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vq3d.errors import UserError


class GroundTruth:
    """Renders scenes of a `SyntheticDataset` at arbitrary cameras (same resolution, 8-bit images)."""

    def __init__(self, dataset) -> None:
        from vq3d.data.synthetic import CameraSettings

        self.dataset = dataset
        card = dataset.card
        self.seed, self.views = int(card["seed"]), int(card["views"])
        self.camera = CameraSettings(float(card["camera_distance"]), float(card["fov_deg"]),
                                     float(card["sampling_radius"]), int(card.get("supersample", 1)))
        self.resolution = int(card["resolution"])
        self._checked: set[int] = set()

    def render(self, item: int, c2w: Tensor) -> tuple[Tensor, Tensor]:
        """Scene `item` (a dataset position) at cameras c2w (V, 4, 4) -> images (V, 3, R, R) in
        [-1, 1], quantized to 8 bits like the stored ones, and depth (V, 1, R, R) (ray distance)."""
        from vq3d.data.synthetic import render_scene, sample_scene

        index = int(self.dataset.records[item]["index"])
        scene = sample_scene(self.seed, index, self.views, self.camera)
        check = item not in self._checked
        canonical = scene.c2w[:1]
        scene.c2w = torch.cat([canonical, c2w.detach().cpu().float()]) if check else c2w.detach().cpu().float()
        out = render_scene(scene, self.resolution, self.camera.supersample)
        images = torch.from_numpy(out.to_uint8()).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (V', 3, R, R)
        depth = torch.from_numpy(out.depth.astype(np.float32))[:, None]  # (V', 1, R, R)
        if check:
            stored = self.dataset[item]["image"]
            if not torch.allclose(images[0], stored, atol=1.5 / 127.5):
                raise UserError(f"scene {index} of {self.dataset.root} does not re-render to its stored image "
                                "(made by another version of `vq3d synth`?): regenerate the dataset")
            self._checked.add(item)
            images, depth = images[1:], depth[1:]
        return images, depth
