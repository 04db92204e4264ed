"""Evaluation building blocks against hand-computed cases: median-weight depth, radius lists,
plot ticks, the reference-statistics cache, and exact ground truth of the synthetic scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.data.synthetic import CameraSettings
from vq3d.data.synthetic_dataset import SyntheticDataset
from vq3d.data.synthetic_writer import generate_dataset
from vq3d.errors import UserError
from vq3d.eval.extractors import Extractor, FeatureSet, quantize_8bit
from vq3d.eval.metrics import depth_at_accumulated_weight, fid_from_features
from vq3d.eval.plot import line_plot, nice_ticks
from vq3d.eval.radius import parse_radii
from vq3d.eval.real_stats import reference_statistics
from vq3d.eval.synthetic_gt import GroundTruth
from vq3d.render.cameras import disc_offsets_to_cameras

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("evu") / "data"
    generate_dataset(root, n=20, resolution=16, views=2, seed=3, camera=CameraSettings(), progress=False)
    return root


def test_depth_at_accumulated_weight_hand_case() -> None:
    # sample distances 1, 2, 4, 8 (disparities 1, 1/2, 1/4, 1/8)
    disparity = torch.tensor([1.0, 0.5, 0.25, 0.125]).expand(1, 3, 4)
    weights = torch.tensor([[[0.1, 0.3, 0.4, 0.1],    # cumulative 0.1, 0.4, 0.8 -> third sample, t = 4
                             [0.6, 0.2, 0.0, 0.0],    # reached at the first sample, t = 1
                             [0.1, 0.1, 0.1, 0.1]]])  # never reaches 0.5 -> far
    got = depth_at_accumulated_weight(weights, disparity, far=20.0)
    assert got.tolist() == [[4.0, 1.0, 20.0]]


@pytest.mark.parametrize("text, expected", [("0,0.1,0.25", [0.0, 0.1, 0.25]), (" 0.3 ", [0.3]), ("0,", [0.0])])
def test_parse_radii_accepts_comma_lists(text, expected) -> None:
    assert parse_radii(text) == expected


@pytest.mark.parametrize("text", ["", "0,a", "0,-0.1", "0.1,0.1", "nan", "0;0.1"])
def test_parse_radii_rejects_malformed_lists(text) -> None:
    with pytest.raises(UserError, match="--radii"):
        parse_radii(text)


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.0, 0.3) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # range 24.7 / 5 ticks = 4.94 -> the next round step is 5; multiples of 5 covering [17.3, 42]
    assert nice_ticks(17.3, 42.0) == pytest.approx([15, 20, 25, 30, 35, 40, 45])
    assert len(nice_ticks(5.0, 5.0)) >= 2  # a flat series still gets an axis


def test_line_plot_writes_a_png(tmp_path) -> None:
    line_plot(tmp_path / "p.png", [0, 0.1, 0.2], {"a": [1.0, None, 3.0], "b": [float("nan"), 2.0, 2.5]},
              title="t", xlabel="x", ylabel="y")
    with Image.open(tmp_path / "p.png") as img:
        assert img.size == (640, 420)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temp file left


class CountingExtractor(Extractor):
    """Mean colour per channel as 'features': FID of a set with itself is 0, and calls are counted."""

    def __init__(self, tag: str = "a") -> None:
        self.name, self.feature_name, self.class_names = "domain", "mean-rgb", []
        self.identity = {"network": "mean-rgb", "tag": tag}
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        x = quantize_8bit(images)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1), torch.zeros(x.shape[0], 2)


def test_reference_statistics_are_cached_and_keyed(synth, tmp_path) -> None:
    dataset = SyntheticDataset(synth, "train")
    extractor = CountingExtractor()
    first = reference_statistics({"domain": extractor}, dataset, "train", tmp_path, batch_size=8, progress=False)
    calls = extractor.calls
    assert not first["domain"].cached and first["domain"].n == len(dataset) and calls > 0
    again = reference_statistics({"domain": extractor}, dataset, "train", tmp_path, batch_size=8, progress=False)
    assert again["domain"].cached and extractor.calls == calls  # nothing recomputed
    np.testing.assert_allclose(again["domain"].mu, first["domain"].mu)
    # the statistics are those of the real images: FID of the same features against them is 0
    feats = FeatureSet()
    for i in range(len(dataset)):
        feats.add(*extractor(dataset[i]["image"][None]))
    assert fid_from_features(feats.features(), first["domain"].features) == pytest.approx(0.0, abs=1e-6)
    # another image count, extractor or split gives another key
    keys = {first["domain"].key}
    keys.add(reference_statistics({"domain": extractor}, dataset, "train", tmp_path, max_images=5,
                                  progress=False)["domain"].key)
    keys.add(reference_statistics({"domain": CountingExtractor("b")}, dataset, "train", tmp_path,
                                  progress=False)["domain"].key)
    keys.add(reference_statistics({"domain": extractor}, SyntheticDataset(synth, "test"), "test", tmp_path,
                                  progress=False)["domain"].key)
    assert len(keys) == 4
    assert len(list((tmp_path / "fid_ref").glob("*.npz"))) == 4
    assert not list((tmp_path / "fid_ref").glob("*.tmp*"))


def test_ground_truth_rerenders_the_stored_novel_views(synth) -> None:
    dataset = SyntheticDataset(synth, "test")
    truth = GroundTruth(dataset)
    item = dataset[1]
    images, depth = truth.render(1, item["novel_c2w"])
    torch.testing.assert_close(images, item["novel_images"], atol=1e-6, rtol=0)
    torch.testing.assert_close(depth, item["novel_depths"], atol=1e-4, rtol=1e-5)
    # a camera the dataset never stored: the canonical camera moved by exactly 0.2
    cams = disc_offsets_to_cameras(torch.tensor([[0.2, 0.0]]), dataset.card["camera_distance"],
                                   dataset.card["fov_deg"])
    images, depth = truth.render(1, cams.c2w)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(depth).all() and (depth > 0).all()
    assert not torch.allclose(images[0], item["image"])


def test_ground_truth_refuses_a_scene_that_does_not_rerender(synth, tmp_path) -> None:
    dataset = SyntheticDataset(synth, "test")
    dataset.card = {**dataset.card, "seed": dataset.card["seed"] + 1}  # as if another generator made it
    with pytest.raises(UserError, match="regenerate"):
        GroundTruth(dataset).render(0, dataset[0]["novel_c2w"])


@pytest.mark.parametrize("na, nb, dim", [(3, 2, 64), (30, 50, 40), (6, 9, 300)])
def test_low_rank_frechet_equals_the_covariance_route(na, nb, dim) -> None:
    from vq3d.eval.metrics import feature_stats, frechet_distance, frechet_distance_low_rank

    rng = np.random.default_rng(na)
    a = rng.normal(size=(na, dim))
    b = rng.normal(size=(nb, dim)) @ rng.normal(size=(dim, dim)) * 0.2 + 0.5
    expected = frechet_distance(*feature_stats(a), *feature_stats(b), method="eig")
    assert frechet_distance_low_rank(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)


def test_warp_with_the_same_camera_is_the_identity() -> None:
    from vq3d.eval.warp import warp_to_view

    image = torch.rand(2, 3, 8, 8) * 2 - 1
    c2w = disc_offsets_to_cameras(torch.tensor([[0.0, 0.0], [0.2, -0.1]]), 1.5, 45.0).c2w
    depth = torch.rand(2, 1, 8, 8) + 1.0
    torch.testing.assert_close(warp_to_view(image, c2w, c2w, depth, 45.0), image, atol=1e-4, rtol=0)


def test_warp_by_true_depth_predicts_novel_views_better_than_copying(synth) -> None:
    """On real scenes the true geometry moves pixels where the novel view shows them."""
    from vq3d.eval.metrics import psnr
    from vq3d.eval.warp import warp_to_view

    dataset = SyntheticDataset(synth, "train")
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    truth, depth = batch["novel_images"][:, 0], batch["novel_depths"][:, 0]
    warped = warp_to_view(batch["image"], batch["c2w"], batch["novel_c2w"][:, 0], depth, dataset.fov_deg)
    assert psnr(warped, truth) > psnr(batch["image"], truth) + 1.0
