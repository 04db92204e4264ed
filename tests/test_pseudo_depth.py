"""Estimator-like depth targets for the synthetic benchmark (vq3d.data.pseudo_depth): monotone,
seeded and recorded, and read through the depth cache like photos' pseudo-GT."""

import json

import numpy as np
import pytest
import torch

from vq3d.cli import main
from vq3d.config import ConfigError, load_config
from vq3d.data.loader import build_dataset
from vq3d.data.pseudo_depth import Corruption, estimator_like
from vq3d.errors import UserError
from vq3d.render.cameras import axis_cosines
from vq3d.train.stage1 import uses_metric_depth


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo") / "data"
    assert main(["synth", "--out", str(root), "--n", "12", "--res", "16", "--views", "1", "--no-progress"]) == 0
    return root


def test_the_gamma_distortion_is_monotone_and_seeded_per_scene():
    true = 1.0 / np.random.default_rng(0).uniform(1.0, 4.0, size=(16, 16))
    gamma_only = Corruption(gamma=2.0, blur=0.0, noise=0.0, seed=3)
    out = estimator_like(true, gamma_only, index=5)
    order = np.argsort(true.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # the same order as the truth
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    normalized = (true - true.min()) / (true.max() - true.min())
    assert not np.allclose(out, normalized, atol=1e-3)  # it is distorted
    assert np.array_equal(out, estimator_like(true, gamma_only, index=5))  # seeded
    assert not np.array_equal(out, estimator_like(true, gamma_only, index=6))  # per scene
    # without the distortion the affine ambiguity vanishes in the cache's normalization; with it,
    # the shift moves the curve's origin, so two draws of it differ beyond the exponent's
    none = Corruption(gamma=1.0, blur=0.0, noise=0.0)
    assert np.allclose(estimator_like(true, none, index=0), normalized, atol=1e-6)
    no_affine = Corruption(gamma=2.0, blur=0.0, noise=0.0, seed=3, scale=1.0, shift=0.0)
    plain = estimator_like(true, no_affine, index=5)
    exponent = np.log(plain.ravel()[order][1:-1]) / np.log(normalized.ravel()[order][1:-1])
    assert np.allclose(exponent, exponent[len(exponent) // 2], rtol=1e-4)  # a pure power of the truth
    shifted = estimator_like(true, Corruption(gamma=2.0, blur=0.0, noise=0.0, seed=3, scale=1.0, shift=0.5), 5)
    with np.errstate(divide="ignore"):
        ratio = np.log(shifted.ravel()[order][1:-1]) / np.log(normalized.ravel()[order][1:-1])
    assert not np.allclose(ratio, ratio[len(ratio) // 2], rtol=1e-3)  # no longer a power of the truth
    blurred = estimator_like(true, Corruption(gamma=1.0, blur=0.1, noise=0.0), index=0)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(normalized, axis=1)).mean()  # smoother


def test_a_run_on_estimator_like_maps_reads_them_through_the_depth_cache(synth, tmp_path):
    cache = tmp_path / "cache"
    assert main(["depth", "--data", str(synth), "--out", str(cache), "--estimator-like", "--gamma", "1.5",
                 "--blur", "0.05", "--noise", "0.02", "--seed", "4", "--no-progress"]) == 0
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["model"] == ("vq3d-estimator-like(gamma=1.5, blur=0.05, noise=0.02, seed=4, scale=2, shift=0.5, "
                             "axis=camera)")  # recorded
    cfg = load_config("tiny", [], [f"data.path={synth}", f"data.depth_cache={cache}", "loss.depth_target=auto"])
    assert not uses_metric_depth(cfg)  # a cache holds relative pseudo-GT: the paper's Eq. 1-3
    with pytest.raises(ConfigError, match="needs true depth"):
        uses_metric_depth(load_config("tiny", [], [f"data.path={synth}", f"data.depth_cache={cache}",
                                                   "loss.depth_target=metric"]))
    cached = build_dataset(cfg.data, "train", require_depth=True, novel_views=False)
    truth = build_dataset(load_config("tiny", [], [f"data.path={synth}"]).data, "train", novel_views=False)
    item, true_item = cached[0], truth[0]
    # built from the camera-axis disparity 1 / z = 1 / (t cos), what an estimator predicts
    cos = axis_cosines(cached.fov_deg, 16, 16).numpy()
    expected = estimator_like(true_item["disparity"][0].numpy() / cos, Corruption(1.5, 0.05, 0.02, 4),
                              cached.records[0]["index"])
    assert np.abs(item["disparity"][0].numpy() - expected).max() <= 1 / 65535  # the cache's uint16 step
    assert torch.equal(item["depth"], true_item["depth"])  # evaluation still sees the truth
    run = tmp_path / "run"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run), "--steps", "2",
                 "--set", f"data.depth_cache={cache}"]) == 0
    assert "vq3d-estimator-like(gamma=1.5" in json.loads((run / "dataset_info.json").read_text())["depth_targets"]
    cached.depth_cache.entry_path(cached.source_id(0)).unlink()  # a scene without its map: an error, as for photos
    with pytest.raises(UserError, match="no cached depth"):
        build_dataset(cfg.data, "train", require_depth=True, novel_views=False)
