"""`vq3d eval train-features | generation | radius | stage1` end to end on tiny runs, with weight
files of random values saved by the test in the published layouts (nothing downloaded)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.cli import main
from vq3d.data.raycast import SHAPES
from vq3d.errors import UserError
from vq3d.eval.extractors import FEATURE_INFO_FILE, domain_extractor
from vq3d.eval.feature_net import FeatureNet, FeatureNetConfig, save_feature_net
from vq3d.eval.generation import evaluate_generation
from vq3d.eval.inception import InceptionFeatures
from vq3d.eval.radius import evaluate_radius
from vq3d.eval.stage1 import evaluate_stage1
from vq3d.losses.perceptual import LPIPS_CHANNELS, vgg16_features
from vq3d.utils.io import atomic_write_json

torch.set_num_threads(1)
QUIET = {"progress": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 16 px synthetic set (18 train / 2 test scenes), Stage-1 and Stage-2 runs, a feature net."""
    root = tmp_path_factory.mktemp("evr")
    data, s1, tok, s2, feat = (root / name for name in ("data", "s1", "tok", "s2", "feat"))
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "2", "--no-progress"]) == 0
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(data), "--out", str(s1), "--steps", "2"]) == 0
    assert main(["tokens", "--stage1", str(s1), "--data", str(data), "--out", str(tok)]) == 0
    assert main(["train", "stage2", "--stage1", str(s1), "--tokens", str(tok), "--out", str(s2), "--preset", "tiny",
                 "--steps", "2"]) == 0
    return {"data": data, "s1": s1, "s2": s2, "feat": feat, "root": root}


@pytest.fixture(scope="module")
def features(runs):
    """The domain feature net trained by the CLI (a few steps)."""
    assert main(["eval", "train-features", "--data", str(runs["data"]), "--out", str(runs["feat"]), "--steps", "6",
                 "--width", "8", "--feature-dim", "16", "--batch-size", "16", "--no-progress"]) == 0
    return runs["feat"]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    state = InceptionFeatures().state_dict()
    for key, value in state.items():
        if key.endswith("conv.weight"):
            state[key] = torch.nn.init.kaiming_normal_(torch.empty_like(value))
    path = tmp_path_factory.mktemp("inc") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random VGG16 (torchvision layout) and LPIPS lin weights (lpips package layout)."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("lpips")
    vgg = {f"features.{k}": v for k, v in vgg16_features().state_dict().items()}
    torch.save(vgg, folder / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)},
               folder / "vgg.pth")
    return str(folder / "vgg16.pth"), str(folder / "vgg.pth")


def test_train_features_saves_a_loadable_net_with_its_info(runs, features) -> None:
    info = json.loads((features / FEATURE_INFO_FILE).read_text())
    assert info["trained_steps"] == info["steps"] == 6
    assert info["train_images"] == 18 * 3 and info["heldout_images"] == 2  # canonical + 2 novel views per scene
    assert 0.0 <= info["heldout_accuracy"] <= 1.0 and info["class_names"] == list(SHAPES)
    extractor = domain_extractor(features)
    assert extractor.resolution == 16 and extractor.class_names == list(SHAPES)
    feats, logits = extractor(torch.rand(3, 3, 32, 32) * 2 - 1)  # other sizes are resized to 16
    assert feats.shape == (3, 16) and logits.shape == (3, len(SHAPES))
    assert sorted(p.name for p in features.iterdir()) == ["feature_net.json", "feature_net.safetensors",
                                                          FEATURE_INFO_FILE]


def test_generation_with_every_weight_file(runs, features, inception_file, tiny_dpt, monkeypatch) -> None:
    monkeypatch.setattr("vq3d.eval.inception.INPUT_SIZE", 75)  # fully convolutional: small input, fast test
    result = evaluate_generation(runs["s1"], runs["data"], stage2_run=runs["s2"], n=3, inception=inception_file,
                                 features=features, depth_model=tiny_dpt, **QUIET)
    assert result["skipped"] == {}
    assert result["real_images"] == 2 and result["s1_images"] == 2 and result["s2_samples"] == 3
    for key in ("s1_fid_canonical", "s1_fid_novel", "s1_fd_domain_canonical", "s1_fd_domain_novel",
                "s2_fid", "s2_fid_canonical", "s2_kid", "s2_fd_domain", "s2_fd_domain_canonical",
                "s1_disparity_scale_depth_model", "s2_disparity_scale_depth_model", "s1_disparity_scale_gt"):
        assert math.isfinite(result[key]), key
    for key in ("s1_depth_accuracy_depth_model", "s2_depth_accuracy_depth_model", "s1_depth_accuracy_gt"):
        assert 0.0 <= result[key] <= 4.0 + 1e-6, key  # 2 (1 - Pearson r)
    assert 1.0 - 1e-6 <= result["s2_is"] <= 3.0 + 1e-6  # IS lies in [1, number of samples per split]
    assert 0.0 <= result["s2_class_accuracy"] <= 1.0
    assert 1.0 <= result["s1_non_flatness"] <= 64.0 and 1.0 <= result["s2_non_flatness"] <= 64.0


def test_generation_without_weights_lists_what_is_skipped(runs, capsys) -> None:
    assert main(["eval", "generation", "--stage1", str(runs["s1"]), "--data", str(runs["data"]), "--n", "2",
                 "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    for key in ("s1_fid_canonical", "s1_fd_domain_novel", "s1_depth_accuracy_depth_model"):
        assert key not in result and result["skipped"][key]
    assert "--inception" in result["skipped"]["s1_fid_canonical"]
    assert "train-features" in result["skipped"]["s1_fd_domain_novel"]
    assert "--depth-model" in result["skipped"]["s1_depth_accuracy_depth_model"]
    assert not any(k.startswith("s2_") for k in result["skipped"])  # no Stage-2 run asked for
    assert math.isfinite(result["s1_depth_accuracy_gt"]) and result["s1_non_flatness"] >= 1.0
    assert captured.err.count("--inception PATH") == 1  # each reason printed once on stderr


def test_class_accuracy_is_the_share_of_samples_classified_as_requested(runs, tmp_path) -> None:
    """A feature net that always answers class 0: of 10 samples cycling through 5 classes, 2 match."""
    net = FeatureNet(FeatureNetConfig(num_classes=len(SHAPES), width=8, feature_dim=16))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0]))
    save_feature_net(net, tmp_path / "biased")
    atomic_write_json(tmp_path / "biased" / FEATURE_INFO_FILE, {"resolution": 16, "class_names": list(SHAPES)})
    result = evaluate_generation(runs["s1"], runs["data"], stage2_run=runs["s2"], n=10,
                                 features=tmp_path / "biased", batch_size=4, **QUIET)
    assert result["s2_class_accuracy"] == pytest.approx(0.2)
    # on reconstructions it is scored against the real images' labels
    from vq3d.data.synthetic_dataset import SyntheticDataset

    labels = [item["label"] for item in SyntheticDataset(runs["data"], split="test", novel_views=False)]
    assert result["s1_class_accuracy"] == pytest.approx(sum(label == 0 for label in labels) / len(labels))
    # a feature net of other classes is not used for class accuracy
    atomic_write_json(tmp_path / "biased" / FEATURE_INFO_FILE, {"resolution": 16, "class_names": list("abcde")})
    result = evaluate_generation(runs["s1"], runs["data"], stage2_run=runs["s2"], n=2,
                                 features=tmp_path / "biased", **QUIET)
    assert "s2_class_accuracy" not in result and "classes" in result["skipped"]["s2_class_accuracy"]
    assert "s1_class_accuracy" not in result


def test_radius_curves_match_stage1_eval_at_radius_zero(runs, features, lpips_files, tmp_path) -> None:
    vgg, lin = lpips_files
    result = evaluate_radius(runs["s1"], runs["data"], [0.0, 0.25], tmp_path / "rad", n=8, features=features,
                             lpips_vgg=vgg, lpips_lin=lin, **QUIET)
    assert result["radii"] == [0.0, 0.25] and result["skipped"].keys() == {"s1_fid"}
    at0, at25 = result["rows"]
    # radius 0 is the canonical camera: the ground truth is the stored input image itself
    stage1 = evaluate_stage1(runs["s1"], runs["data"], lpips_vgg=vgg, lpips_lin=lin)
    assert at0["gt_psnr"] == pytest.approx(stage1["psnr"], rel=1e-5)
    assert at0["gt_ssim"] == pytest.approx(stage1["ssim"], rel=1e-5)
    assert at0["gt_lpips"] == pytest.approx(stage1["lpips"], rel=1e-4)
    assert at0["gt_depth_accuracy"] == pytest.approx(stage1["depth_accuracy"], rel=1e-4)  # depth with depth
    assert stage1["novel_view_lpips"] >= 0 and math.isfinite(stage1["novel_view_ssim"])
    assert at0["gt_copy_psnr"] == math.inf and math.isfinite(at25["gt_copy_psnr"])
    assert all(math.isfinite(row[k]) for row in result["rows"] for k in ("s1_fd_domain", "gt_depth_accuracy"))
    with open(result["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert [float(r["radius"]) for r in table] == [0.0, 0.25]
    assert float(table[1]["gt_psnr"]) == pytest.approx(at25["gt_psnr"], rel=1e-4)
    names = sorted(p.name for p in (tmp_path / "rad").iterdir())
    assert names == ["depth_vs_radius.png", "fd_domain_vs_radius.png", "psnr_vs_radius.png", "radius.csv",
                     "ssim_lpips_vs_radius.png"]


def test_radius_with_stage2_and_the_cli(runs, features, tmp_path, capsys) -> None:
    assert main(["eval", "radius", "--stage1", str(runs["s1"]), "--stage2", str(runs["s2"]), "--data",
                 str(runs["data"]), "--features", str(features), "--radii", "0,0.3", "--n", "2",
                 "--out", str(tmp_path / "r"), "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)  # strict JSON: the infinite copy PSNR at r = 0 is null
    assert result["rows"][0]["gt_copy_psnr"] is None
    assert all(math.isfinite(row["s2_fd_domain"]) for row in result["rows"])
    assert result["skipped"]["gt_lpips"].startswith("no LPIPS weights")


def test_eval_stage1_lists_lpips_as_skipped_without_weights(runs) -> None:
    result = evaluate_stage1(runs["s1"], runs["data"], max_scenes=1)
    assert "lpips" not in result and "lpips_vgg_path" in result["skipped"]["lpips"]
    assert result["object_depth_ratio"] > 0 and result["background_depth_ratio"] > 0  # medians, per scene


def test_eval_stage1_split_help_and_behaviour_agree(runs, capsys) -> None:
    counts = {split: evaluate_stage1(runs["s1"], runs["data"], split=split)["scenes"] for split in ("test", "train", "all")}
    assert counts == {"test": 2, "train": 18, "all": 20}  # the fixture's 18 train / 2 test scenes
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses what the help does not offer
        main(["eval", "stage1", "--run", str(runs["s1"]), "--data", str(runs["data"]), "--split", "val"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'val'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["radius", "--radii", "0,x", "--out", "o"], "--radii"),
    (["radius", "--radii", "", "--out", "o"], "--radii"),
    (["generation", "--n", "0"], "--n"),
])
def test_bad_input_exits_with_a_one_line_error(runs, args, message, capsys) -> None:
    kind, rest = args[0], args[1:]
    assert main(["eval", kind, "--stage1", str(runs["s1"]), "--data", str(runs["data"]), *rest]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_runs_and_data_without_ground_truth_are_user_errors(runs, tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist: pass a vq3d run folder"):
        evaluate_generation(tmp_path / "nope", runs["data"], **QUIET)
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(images / f"{i}.png")
    with pytest.raises(UserError, match="not a synthetic dataset"):
        evaluate_stage1(runs["s1"], images)
    with pytest.raises(UserError, match="nothing to measure"):
        evaluate_radius(runs["s1"], images, [0.0], tmp_path / "out", **QUIET)
    with pytest.raises(UserError, match="not a synthetic dataset"):
        from vq3d.eval.train_features import train_features

        train_features(images, tmp_path / "feat", **QUIET)


def test_eval_stage1_panel_shows_each_scene_against_its_truth(runs, tmp_path, capsys) -> None:
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.utils.images import to_uint8, to_unit

    panel = tmp_path / "panel.png"
    # batch size 1: the rows are gathered across batches; 3 rows asked, the split has 2 scenes
    assert main(["eval", "stage1", "--run", str(runs["s1"]), "--data", str(runs["data"]), "--json",
                 "--panel", str(panel), "--panel-rows", "3", "--batch-size", "1"]) == 0
    assert "psnr" in json.loads(capsys.readouterr().out)
    picture = Image.open(panel)
    tile, gap, header, cols = 96, 4, 14, 4 + 3 * 2  # 16 px tiles enlarged 6x; 2 novel views
    assert picture.size == (cols * (tile + gap) + gap, header + 2 * (tile + gap) + gap)
    pixels = torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1)
    scenes = SyntheticDataset(runs["data"], split="test")
    for row in range(2):
        item = scenes[row]
        y = header + gap + row * (tile + gap)
        for col, truth in ((0, item["image"]), (4, item["novel_images"][0]), (7, item["novel_images"][1])):
            x = gap + col * (tile + gap)
            shown = pixels[:, y:y + tile:6, x:x + tile:6]  # one pixel of each enlarged texel
            expected = torch.from_numpy(to_uint8(to_unit(truth))).permute(2, 0, 1)
            assert torch.equal(shown, expected), (row, col)
    assert main(["eval", "stage1", "--run", str(runs["s1"]), "--data", str(runs["data"]),
                 "--panel", str(panel), "--panel-rows", "0"]) == 2
    assert "--panel-rows" in capsys.readouterr().err
