"""Image panels for logs: what a person looks at to judge a run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vq3d.config import Config
from vq3d.utils.images import colorize, grid, to_unit


@torch.no_grad()
def stage1_panel(model, images: Tensor, out: dict, cfg: Config, rows: int = 4) -> Tensor:
    """(3, H', W') in [0, 1]: per row input | reconstruction | disparity | novel view | its disparity."""
    n = min(rows, images.shape[0])
    canonical, novel = out["canonical"], out["novel"]
    if canonical.rgb.shape[-2:] != images.shape[-2:]:  # the step rendered a ray subset
        was_training = model.training
        model.eval()  # eval: no codebook-usage bookkeeping from a log picture
        # eager under train.compile: a no-grad call would compile the regions once more (~25 s on
        # 2 CPU cores) for one picture
        with torch.compiler.set_stance("force_eager"):
            canonical = model.reconstruct(images[:n])
        model.train(was_training)
    columns = [to_unit(images[:n]), to_unit(canonical.rgb[:n].float()), colorize(canonical.disparity[:n].float())]
    if novel is not None:  # novel views may be smaller (loss.novel_gan_resolution): shown at full size
        size = images.shape[-2:]
        columns += [F.interpolate(to_unit(novel.rgb[:n].float()), size=size, mode="nearest"),
                    F.interpolate(colorize(novel.disparity[:n].float()), size=size, mode="nearest")]
    tiles = torch.stack([c.cpu() for c in columns], dim=1).flatten(0, 1)  # (n * cols, 3, H, W)
    return grid(tiles, rows=n)
