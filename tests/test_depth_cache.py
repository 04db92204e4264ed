"""Pseudo-GT depth cache with a tiny random DPT saved by the test (nothing downloaded)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vq3d.cli import main
from vq3d.config import load_config
from vq3d.data import depth_compute
from vq3d.data.depth_cache import DepthCache, SourceId
from vq3d.data.depth_compute import compute_depth_cache
from vq3d.data.depth_model import DepthEstimator
from vq3d.data.loader import build_dataset
from vq3d.data.shards import ShardDataset
from vq3d.errors import UserError

RES = 16
MODEL_INPUT = 32


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    from transformers import DPTConfig, DPTForDepthEstimation
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    folder = tmp_path_factory.mktemp("tiny-dpt")
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=32, image_size=MODEL_INPUT, patch_size=8,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8],
                       fusion_hidden_size=8, head_hidden_size=8,
                       reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessorPil(size={"height": MODEL_INPUT, "width": MODEL_INPUT},
                         image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def estimator(tiny_dpt):
    return DepthEstimator(tiny_dpt, device="cpu")


def textured(path, size, seed):
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    pixels = np.stack([(x * rng.uniform(1, 5)) % 255, (y * rng.uniform(1, 5)) % 255,
                       rng.random((h, w)) * 255], -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    textured(root / "a.png", (48, 40), 1)
    textured(root / "b.png", (30, 50), 2)
    textured(root / "c.png", (MODEL_INPUT, MODEL_INPUT), 3)
    return root


def run(data, out, estimator, **kwargs):
    kwargs.setdefault("num_workers", 0)
    return compute_depth_cache(str(data), out, resolution=RES, batch_size=2, progress=False,
                               estimator=estimator, **kwargs)


def reference_disparity(model_dir, path) -> np.ndarray:
    """Independent pipeline: crop, resize, normalize with the processor's JSON, DPT, min-max."""
    from transformers import DPTForDepthEstimation

    model = DPTForDepthEstimation.from_pretrained(model_dir, local_files_only=True).eval()
    img = Image.open(path).convert("RGB")
    side = min(img.size)
    left, top = (img.size[0] - side) // 2, (img.size[1] - side) // 2
    crop = img.crop((left, top, left + side, top + side))
    if crop.size != (MODEL_INPUT, MODEL_INPUT):
        crop = crop.resize((MODEL_INPUT, MODEL_INPUT), Image.BICUBIC)
    x = torch.tensor(np.asarray(crop), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    x = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        raw = model(pixel_values=x).predicted_depth[:, None]
    d = F.interpolate(raw, size=(RES, RES), mode="bilinear", antialias=True)[0, 0].numpy()
    return (d - d.min()) / (d.max() - d.min())


def test_entries_are_per_image_normalized_model_disparity(images, tmp_path, estimator, tiny_dpt):
    report = run(images, tmp_path / "cache", estimator)
    assert (report.total, report.computed, report.already_cached) == (3, 3, 0)
    cache = DepthCache(tmp_path / "cache", RES)
    for name in ("a.png", "b.png", "c.png"):
        disparity = cache.load(SourceId.of_file(images / name, name))
        assert disparity.shape == (RES, RES)
        assert disparity.min() == 0.0 and disparity.max() == 1.0
    # c.png is a square of the model's input size: no crop, no resize (crop and resize are
    # tested in test_data_decode.py), so this checks normalization, inference and min-max.
    expected = reference_disparity(tiny_dpt, images / "c.png")
    np.testing.assert_allclose(cache.load(SourceId.of_file(images / "c.png", "c.png")),
                               expected, atol=2e-4)


def test_resume_computes_nothing_and_loads_no_model(images, tmp_path, estimator, monkeypatch):
    run(images, tmp_path / "cache", estimator)
    monkeypatch.setattr(depth_compute, "DepthEstimator",
                        lambda *a, **k: pytest.fail("model loaded although everything is cached"))
    again = compute_depth_cache(str(images), tmp_path / "cache", model=estimator.name,
                                resolution=RES, progress=False, num_workers=0)
    assert (again.computed, again.already_cached) == (0, 3)


def test_changed_and_renamed_images_are_recomputed_and_stale_entries_pruned(
        images, tmp_path, estimator):
    run(images, tmp_path / "cache", estimator)
    cache = DepthCache(tmp_path / "cache", RES)
    old_a = cache.load(SourceId.of_file(images / "a.png", "a.png"))
    textured(images / "a.png", (48, 40), 99)  # new content
    stat = os.stat(images / "a.png")
    os.utime(images / "a.png", (stat.st_atime, stat.st_mtime + 10))
    os.rename(images / "b.png", images / "b2.png")
    report = run(images, tmp_path / "cache", estimator, prune=True)
    assert (report.computed, report.already_cached, report.pruned) == (2, 1, 2)
    new_a = cache.load(SourceId.of_file(images / "a.png", "a.png"))
    assert not np.allclose(old_a, new_a)
    assert len(cache.existing_digests()) == 3


def test_training_dataset_reads_the_cache(images, tmp_path, estimator):
    run(images, tmp_path / "cache", estimator)
    cfg = load_config("tiny").data
    cfg.path, cfg.resolution, cfg.depth_cache = str(images), RES, str(tmp_path / "cache")
    dataset = build_dataset(cfg, require_depth=True)
    item = dataset[1]
    assert item["key"] == "b.png" and item["disparity"].shape == (1, RES, RES)
    expected = DepthCache(tmp_path / "cache", RES).load(SourceId.of_file(images / "b.png", "b.png"))
    torch.testing.assert_close(item["disparity"][0], torch.from_numpy(expected))
    cfg.resolution = 8  # no entries at another resolution: fail fast with the count
    with pytest.raises(UserError, match="3 of 3 images have no cached depth"):
        build_dataset(cfg)


def test_unusable_images_are_remembered_not_retried_and_skipped_in_training(
        images, tmp_path, estimator):
    data = (images / "a.png").read_bytes()
    (images / "cut.png").write_bytes(data[: len(data) // 3])  # header fine, pixels cut
    first = run(images, tmp_path / "cache", estimator)
    assert first.computed == 3 and list(first.bad) == ["cut.png"]
    second = run(images, tmp_path / "cache", estimator)
    assert (second.computed, second.known_bad, second.bad) == (0, 1, {})
    cfg = load_config("tiny").data
    cfg.path, cfg.resolution, cfg.depth_cache = str(images), RES, str(tmp_path / "cache")
    dataset = build_dataset(cfg)  # no "missing depth" error: cut.png is a known bad file
    assert len(dataset) == 3 and "cut.png" in dataset.bad_files


def test_cli_runs_the_tiny_model_and_reports(images, tmp_path, tiny_dpt, capsys):
    args = ["depth", "--data", str(images), "--model", tiny_dpt, "--out", str(tmp_path / "c"),
            "--res", str(RES), "--device", "cpu", "--workers", "0", "--batch-size", "2",
            "--no-progress"]
    assert main(args) == 0
    assert "3 computed, 0 images already cached" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 computed, 3 images already cached" in capsys.readouterr().out


def test_unavailable_model_says_how_to_provide_it(images, tmp_path, capsys):
    code = main(["depth", "--data", str(images), "--model", "no-such-org/no-such-depth-model",
                 "--out", str(tmp_path / "c"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "not available offline" in err and "huggingface-cli download" in err
    assert "--allow-download" in err


def test_cache_made_by_another_model_is_refused(images, tmp_path, estimator):
    run(images, tmp_path / "cache", estimator)
    with pytest.raises(UserError, match="was made with model"):
        compute_depth_cache(str(images), tmp_path / "cache", model="other/model",
                            resolution=RES, progress=False)


def write_shards(folder, n_shards, per_shard):
    import webdataset as wds

    folder.mkdir(parents=True)
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"part-{s}.tar")) as writer:
            for i in range(per_shard):
                textured(folder / "tmp.png", (40, 36), s * 10 + i)
                writer.write({"__key__": f"k{s}{i}", "png": (folder / "tmp.png").read_bytes(),
                              "cls": i})
    (folder / "tmp.png").unlink()


def test_shards_cache_markers_resume_and_shards_with_depth(tmp_path, estimator):
    write_shards(tmp_path / "shards", 2, 3)
    report = run(tmp_path / "shards", tmp_path / "cache", estimator,
                 write_shards=tmp_path / "with-depth")
    assert (report.unit, report.computed, report.shards_written) == ("shards", 6, 2)
    again = run(tmp_path / "shards", tmp_path / "cache", estimator)
    assert (again.computed, again.already_cached) == (0, 2)

    from_cache = {it["key"]: it for it in ShardDataset(
        sorted(map(str, (tmp_path / "shards").glob("*.tar"))), resolution=RES, shuffle=False,
        depth_cache=tmp_path / "cache")}
    in_shards = {it["key"]: it for it in ShardDataset(
        sorted(map(str, (tmp_path / "with-depth").glob("*.tar"))), resolution=RES, shuffle=False,
        depth_in_shards=True)}
    assert sorted(from_cache) == sorted(in_shards) and len(from_cache) == 6
    for key, item in from_cache.items():
        assert item["disparity"].shape == (1, RES, RES)
        torch.testing.assert_close(item["disparity"], in_shards[key]["disparity"])
        torch.testing.assert_close(item["image"], in_shards[key]["image"])

    cfg = load_config("tiny").data
    cfg.path, cfg.resolution, cfg.depth_in_shards = str(tmp_path / "with-depth"), RES, True
    streamed = list(build_dataset(cfg, split="val", require_depth=True))
    assert sorted(it["key"] for it in streamed) == sorted(from_cache)

    shutil.copy(tmp_path / "shards" / "part-0.tar", tmp_path / "shards" / "part-9.tar")
    with pytest.raises(UserError, match="1 of 3 shards have no cached depth"):
        ShardDataset(sorted(map(str, (tmp_path / "shards").glob("*.tar"))), resolution=RES,
                     depth_cache=tmp_path / "cache")


def test_input_spec_from_published_processor_configs():
    from vq3d.data.depth_model import input_spec_from_settings

    # Intel/dpt-large's preprocessor_config.json (an int size, mean/std 0.5)
    dpt = input_spec_from_settings({"do_normalize": True, "do_resize": True, "resample": 2,
                                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                                    "size": 384})
    assert (dpt.height, dpt.width, dpt.mean, dpt.std) == (384, 384, (0.5,) * 3, (0.5,) * 3)
    # Depth Anything: 518 = 37 * 14 with keep_aspect_ratio and ensure_multiple_of 14
    anything = input_spec_from_settings({
        "size": {"height": 518, "width": 518}, "keep_aspect_ratio": True,
        "ensure_multiple_of": 14, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_rescale": True, "rescale_factor": 1 / 255})
    assert (anything.height, anything.width) == (518, 518)
    assert anything.mean == (0.485, 0.456, 0.406)
    odd = input_spec_from_settings({"size": {"height": 500, "width": 500}, "ensure_multiple_of": 14})
    assert odd.height % 14 == 0 and abs(odd.height - 500) <= 7
