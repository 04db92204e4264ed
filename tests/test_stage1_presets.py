"""Stage-1 shapes for every preset (the paper preset on the meta device: no memory, no FLOPs)."""

import pytest
import torch

from vq3d.config import load_config
from vq3d.models.stage1 import Stage1Model


def expected(cfg):
    m, res = cfg.model, cfg.data.resolution
    grid = res // m.patch_size
    return grid, (1, 3, m.plane_channels, m.plane_resolution, m.plane_resolution)


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_real_forward_shapes(preset):
    cfg = load_config(preset)
    torch.manual_seed(0)
    model = Stage1Model(cfg)
    res = cfg.data.resolution
    images = torch.rand(1, 3, res, res) * 2 - 1
    grid, planes_shape = expected(cfg)
    ids = model.encode(images)
    assert ids.shape == (1, grid * grid * cfg.model.codebook_groups) and int(ids.max()) < cfg.model.codebook_size
    planes = model.decode(ids)
    assert tuple(planes.shape) == planes_shape
    out = model.render(planes, model.canonical_cameras(1))
    assert out.rgb.shape == (1, 3, res, res) and out.depth.shape == (1, 1, res, res)


def test_paper_preset_shapes_on_meta_device():
    cfg = load_config("paper")
    grid, planes_shape = expected(cfg)
    assert grid == 32 and planes_shape == (1, 3, 32, 512, 512)  # 256 px, patch 8, 512^2 x 32 planes
    with torch.device("meta"):
        model = Stage1Model(cfg)
        latents = model.encoder(torch.empty(1, 3, 256, 256))
        assert latents.shape == (1, grid * grid, cfg.model.enc_width)
        planes = model.decode_codes(torch.empty(1, grid * grid, cfg.model.codebook_dim))
        assert tuple(planes.shape) == planes_shape  # (rendering at this size: `vq3d bench paper-step`)
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    assert 5e8 < decoder_params < 8e8  # ViT-L-sized: 32 layers of width 1280
