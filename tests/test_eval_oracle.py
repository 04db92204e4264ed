"""`vq3d eval stage1` against an oracle: a stand-in model that renders each scene's ground truth
must score depth accuracy 0 in the canonical and the novel views, object and background depth
ratios of 1, and the disparity scale that exact geometry has (derived here from the rays)."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import vq3d.eval.stage1 as eval_stage1
from vq3d.cli import main
from vq3d.config import load_config
from vq3d.data.synthetic_dataset import SyntheticDataset
from vq3d.render.cameras import Cameras, axis_cosines
from vq3d.render.renderer import RenderOutput


class TruthModel(nn.Module):
    """Renders the ground truth of the dataset's scenes at their canonical and novel cameras."""

    def __init__(self, dataset: SyntheticDataset, cfg) -> None:
        super().__init__()
        self.cfg, self.resolution = cfg, dataset.resolution
        self.items = [dataset[i] for i in range(len(dataset))]
        self.dummy = nn.Parameter(torch.zeros(1))

    def quantize(self, images):
        keys = [min(range(len(self.items)), key=lambda i: float((self.items[i]["image"] - im).abs().max()))
                for im in images]
        return type("Quant", (), {"ids": torch.zeros(len(images), 16, dtype=torch.long), "codes": keys})()

    def decode_codes(self, keys):
        return keys

    def canonical_cameras(self, batch, device="cpu"):
        return Cameras(torch.stack([self.items[0]["c2w"]] * batch), self.cfg.render.fov_deg)

    def render(self, keys, cameras: Cameras) -> RenderOutput:
        depths, images = [], []
        for key, c2w in zip(keys, cameras.c2w):
            item = self.items[key]
            views = [(item["c2w"], item["depth"], item["image"])] + [
                (item["novel_c2w"][k], item["novel_depths"][k], item["novel_images"][k])
                for k in range(len(item["novel_c2w"]))]
            _, depth, image = next(v for v in views if torch.allclose(v[0], c2w))
            depths.append(depth)
            images.append(image)
        depth, res = torch.stack(depths), self.resolution
        n = res * res
        return RenderOutput(rgb=torch.stack(images), depth=depth, disparity=1 / depth,
                            opacity=torch.ones_like(depth), weights=torch.ones(len(keys), n, 1),
                            sample_disparity=(1 / depth).reshape(len(keys), n, 1),
                            spacing_edges=torch.zeros(len(keys), n, 2),
                            axis_cos=axis_cosines(cameras.fov_deg, res, res).reshape(1, n).expand(len(keys), n))


def test_a_model_that_renders_the_truth_scores_perfect_geometry(tmp_path, monkeypatch):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "--n", "24", "--res", "16", "--views", "2", "--no-progress"]) == 0
    cfg = load_config("tiny", [], ["train.device=cpu"])
    dataset = SyntheticDataset(data, split="test")
    cfg = replace(cfg, render=replace(cfg.render, fov_deg=dataset.fov_deg))
    monkeypatch.setattr(eval_stage1, "load_stage1", lambda *a, **k: (TruthModel(dataset, cfg), cfg))
    metrics = eval_stage1.evaluate_stage1("unused", data, split="test", batch_size=2)
    assert metrics["scenes"] == len(dataset) >= 2
    assert metrics["depth_accuracy"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["novel_depth_accuracy"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["object_depth_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["background_depth_ratio"] == pytest.approx(1.0, abs=1e-6)
    # exact geometry's s*: one sample per ray at D = c / z (look-at units) against the target
    # (1/z - lo) / (hi - lo) (2nd and 98th percentiles) fits exactly with s = 1 / (c (hi - lo))
    c, res = cfg.render.camera_distance, dataset.resolution
    _, dirs = Cameras(dataset[0]["c2w"][None], dataset.fov_deg).rays(res, res)
    cos = -(dirs[0] @ dataset[0]["c2w"][:3, 2])  # each ray along the optical axis (the camera looks down -z)
    expected = []
    for i in range(len(dataset)):
        inv_z = (1 / (dataset[i]["depth"][0] * cos)).flatten().double().sort().values
        n = inv_z.numel()
        expected.append(float(1 / (c * (inv_z[round(0.98 * (n - 1))] - inv_z[round(0.02 * (n - 1))]))))
    assert float(cos.min()) > 0.8  # a 45-degree view: no ray is 37 degrees off axis
    assert metrics["disparity_scale"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
