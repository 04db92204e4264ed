"""model.plane_layout: which texels each decoder token writes, against the canonical camera's
projection (an independent derivation: `Cameras.project`, not the layout code)."""

from __future__ import annotations

import pytest
import torch

from vq3d.config.presets import tiny
from vq3d.models.decoder import arrange_planes
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import canonical_cameras
from vq3d.render.contraction import contract
from vq3d.render.triplane import sample_triplanes

RES, TOKENS = 32, 8  # plane texels per side, token grid per side


def _token_patches() -> torch.Tensor:
    """(1, 3, 2, R, R) patches in image order: channel 0 holds the writing token's image row,
    channel 1 its column, on every plane."""
    token_index = (torch.arange(RES) // (RES // TOKENS)).float()  # the token over each texel index
    grid = torch.stack([token_index[:, None].expand(RES, RES), token_index[None, :].expand(RES, RES)])  # (2, R, R)
    return grid[None, None].expand(1, 3, 2, RES, RES).clone()


def _read(planes: torch.Tensor, plane: int, points: torch.Tensor, scene_scale: float) -> torch.Tensor:
    """(N, 2) token (row, column) that plane `plane` gives each point (N, 3)."""
    only = torch.zeros_like(planes)
    only[:, plane] = planes[:, plane]
    coords = contract(points * scene_scale)[None]
    return sample_triplanes(only, coords)[0]


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("layout, sign", [("aligned", 1.0), ("raster", -1.0)])
def test_tokens_write_the_texels_behind_their_patch(layout: str, sign: float) -> None:
    """Points of the plane z = 0 in the canonical view: with "aligned" the XY texel each reads was
    written by a token whose image row and column grow with the point's projected row and column,
    the YZ texel by one whose row grows with it and the ZX texel by one whose column does. With
    "raster" the XY plane is upside down against the image (its row correlation is -1)."""
    g = torch.linspace(-0.3, 0.3, 13)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten(), torch.zeros(xx.numel())], dim=1)
    pixels, _ = canonical_cameras(1, 1.5, 45.0).project(points[None], RES, RES)
    col_px, row_px = pixels[0, :, 0], pixels[0, :, 1]
    planes = arrange_planes(_token_patches(), layout)
    xy = _read(planes, 0, points, 3.0)
    assert _corr(xy[:, 0], row_px) == pytest.approx(sign, abs=0.05)
    assert _corr(xy[:, 1], col_px) == pytest.approx(1.0, abs=0.05)
    if layout == "aligned":
        assert _corr(_read(planes, 1, points, 3.0)[:, 0], row_px) == pytest.approx(1.0, abs=0.05)
        assert _corr(_read(planes, 2, points, 3.0)[:, 1], col_px) == pytest.approx(1.0, abs=0.05)


def test_aligned_is_a_permutation_and_the_decoder_uses_it() -> None:
    """The layout moves texels and changes no value; the model's decoder applies the config's."""
    patches = torch.randn(2, 3, 4, 8, 8)
    aligned = arrange_planes(patches, "aligned")
    for k in range(3):
        assert torch.equal(aligned[:, k].flatten(1).sort(1).values, patches[:, k].flatten(1).sort(1).values)
    assert not torch.equal(aligned, patches)
    with pytest.raises(ValueError, match="plane_layout"):
        arrange_planes(patches, "diagonal")
    cfg = tiny()
    cfg.model.plane_layout = "aligned"
    assert Stage1Model(cfg).decoder.layout == "aligned"
