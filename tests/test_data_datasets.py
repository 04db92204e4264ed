"""Image folders, flat folders and file lists: labels, keys, pixels, flips, bad files, loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.config import load_config
from vq3d.data.depth_cache import DepthCache
from vq3d.data.images import UNLABELED, ImageDataset, list_flat
from vq3d.data.loader import build_dataset, build_loader, detect_kind, write_dataset_info
from vq3d.errors import UserError

RES = 8
COLOURS = {"cat/a.png": (255, 0, 0), "cat/b.png": (0, 255, 0), "dog/c.png": (0, 0, 255),
           "emu/d.png": (255, 255, 0)}


def solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def expected_image(colour: tuple[int, int, int]) -> torch.Tensor:
    return (torch.tensor(colour, dtype=torch.float32) / 127.5 - 1.0).view(3, 1, 1).expand(3, RES, RES)


def data_cfg(path: Path, **fields):
    cfg = load_config("tiny").data
    cfg.path, cfg.resolution = str(path), RES
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "folder"
    for key, colour in COLOURS.items():
        solid(root / key, colour)
    return root


def test_class_folders_give_sorted_labels_keys_and_pixels(class_folder, tmp_path):
    dataset = build_dataset(data_cfg(class_folder))
    assert detect_kind(class_folder) == "folder"
    assert dataset.class_names == ["cat", "dog", "emu"]
    items = [dataset[i] for i in range(len(dataset))]
    assert [it["key"] for it in items] == sorted(COLOURS)
    assert [it["label"] for it in items] == [0, 0, 1, 2]
    for item in items:
        assert item["image"].shape == (3, RES, RES) and item["image"].dtype == torch.float32
        torch.testing.assert_close(item["image"], expected_image(COLOURS[item["key"]]))
        assert "disparity" not in item
    dataset.write_class_index(tmp_path / "run" / "classes.json")
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == {"cat": 0, "dog": 1, "emu": 2}


def test_flat_folder_is_unlabeled(tmp_path):
    for i, colour in enumerate([(10, 20, 30), (40, 50, 60)]):
        solid(tmp_path / "flat" / f"{i}.jpg", colour)
    dataset = build_dataset(data_cfg(tmp_path / "flat"))
    assert detect_kind(tmp_path / "flat") == "flat"
    assert [dataset[i]["label"] for i in range(2)] == [UNLABELED, UNLABELED]
    assert dataset.num_classes == 0


def test_csv_file_list_with_header_relative_paths_and_class_names(class_folder, tmp_path):
    listing = class_folder / "list.csv"
    listing.write_text("path,label\ndog/c.png,dog\ncat/a.png,cat\nemu/d.png,\n")
    dataset = build_dataset(data_cfg(listing))
    assert detect_kind(listing) == "filelist"
    assert dataset.class_names == ["cat", "dog"]
    assert [(dataset[i]["key"], dataset[i]["label"]) for i in range(3)] == [
        ("dog/c.png", 1), ("cat/a.png", 0), ("emu/d.png", UNLABELED)]
    torch.testing.assert_close(dataset[0]["image"], expected_image(COLOURS["dog/c.png"]))


def test_jsonl_file_list_with_integer_labels_and_absolute_path(class_folder, tmp_path):
    listing = tmp_path / "lists" / "train.jsonl"
    listing.parent.mkdir()
    rows = [{"path": str(class_folder / "cat/b.png"), "label": 7},
            {"path": "../folder/dog/c.png", "label": 3}]
    listing.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = build_dataset(data_cfg(listing))
    assert [dataset[i]["label"] for i in range(2)] == [7, 3]
    torch.testing.assert_close(dataset[1]["image"], expected_image(COLOURS["dog/c.png"]))


def test_headerless_csv_and_bad_list_rows(class_folder):
    (class_folder / "plain.csv").write_text("cat/a.png,2\ndog/c.png,0\n")
    dataset = build_dataset(data_cfg(class_folder / "plain.csv"))
    assert [dataset[i]["label"] for i in range(2)] == [2, 0]
    (class_folder / "broken.jsonl").write_text('{"path": "cat/a.png"}\nnot json\n')
    with pytest.raises(UserError, match="broken.jsonl:2"):
        build_dataset(data_cfg(class_folder / "broken.jsonl"))


def test_bad_files_are_skipped_counted_and_logged(tmp_path, caplog):
    root = tmp_path / "mixed"
    solid(root / "good1.png", (255, 0, 0))
    solid(root / "good2.png", (0, 255, 0))
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.jpg", quality=95)
    whole = (tmp_path / "whole.jpg").read_bytes()
    (root / "half.jpg").write_bytes(whole[: len(whole) // 2])  # passes the header check
    with caplog.at_level(logging.WARNING, logger="vq3d.data"):
        dataset = build_dataset(data_cfg(root))
    assert set(dataset.bad_files) == {"empty.jpg", "notes.jpg", "gone.jpg"}
    assert [r.key for r in dataset.records] == ["good1.png", "good2.png", "half.jpg"]
    for name in ("empty.jpg", "notes.jpg", "gone.jpg"):
        assert name in caplog.text
    # The truncated file is met when read: the next good item comes instead, and it is reported.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vq3d.data"):
        item = dataset[2]
    assert item["key"] == "good1.png"
    assert dataset.bad_files["half.jpg"].startswith("truncated")
    assert "half.jpg" in caplog.text


def test_loader_collects_bad_files_from_workers_and_converts_to_float(tmp_path, caplog):
    root = tmp_path / "mixed"
    for i in range(5):
        solid(root / f"{i}.png", (50 * i, 10, 200))
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(root / "1.png")
    (root / "1.png").write_bytes((root / "1.png").read_bytes()[:1000])  # header intact, data cut
    dataset = build_dataset(data_cfg(root))
    with caplog.at_level(logging.WARNING, logger="vq3d.data"):
        loader = build_loader(dataset, batch_size=5, num_workers=1, shuffle=False, drop_last=False)
        (batch,) = list(loader)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (5, 3, RES, RES)
    assert batch["key"] == ["0.png", "2.png", "2.png", "3.png", "4.png"]
    torch.testing.assert_close(batch["image"][3], expected_image((150, 10, 200)))
    assert list(loader.bad_files) == ["1.png"]
    assert "1.png" in caplog.text
    write_dataset_info(loader, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "bad_files.json").read_text())["1.png"].startswith("truncated")


def test_ranks_of_a_map_style_loader_are_disjoint(class_folder):
    dataset = build_dataset(data_cfg(class_folder))
    keys = []
    for rank in range(2):
        loader = build_loader(dataset, 2, num_workers=0, rank=rank, world_size=2, seed=3)
        keys.append([k for batch in loader for k in batch["key"]])
    assert set(keys[0]).isdisjoint(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(COLOURS)


def make_depth_cache(root: Path, dataset_root: Path, res: int, value_of) -> None:
    """A cache whose disparity for each image is value_of(key) (R, R)."""
    cache = DepthCache(root, res)
    cache.claim("test-model", "disparity")
    for record in list_flat(dataset_root):
        cache.save(record.source_id(), value_of(record.key))


def test_hflip_flips_image_and_disparity_together(tmp_path):
    root = tmp_path / "lr"
    pixels = np.zeros((RES, RES, 3), np.uint8)
    pixels[:, : RES // 2] = (255, 0, 0)  # left red, right blue
    pixels[:, RES // 2:] = (0, 0, 255)
    root.mkdir()
    Image.fromarray(pixels).save(root / "lr.png")
    ramp = np.tile(np.linspace(0, 1, RES, dtype=np.float32), (RES, 1))  # 0 at left, 1 at right
    make_depth_cache(tmp_path / "cache", root, RES, lambda key: ramp)
    dataset = build_dataset(data_cfg(root, hflip=True, depth_cache=str(tmp_path / "cache")))
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        item = dataset[0]
        red_on_left = bool(item["image"][0, 0, 0] > 0)
        low_disparity_on_left = bool(item["disparity"][0, 0, 0] < item["disparity"][0, 0, -1])
        assert red_on_left == low_disparity_on_left
        seen.add(red_on_left)
    assert seen == {True, False}  # both orientations happen
    no_flip = build_dataset(data_cfg(root, hflip=True, depth_cache=str(tmp_path / "cache")),
                            split="val")
    assert all(bool(no_flip[0]["image"][0, 0, 0] > 0) for _ in range(8))


def test_missing_depth_fails_fast_unless_skipped(class_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    full = np.full((RES, RES), 0.5, np.float32)
    make_depth_cache(cache_dir, class_folder, RES, lambda key: full)
    (class_folder / "emu" / "new1.png").write_bytes((class_folder / "emu/d.png").read_bytes())
    solid(class_folder / "emu" / "new2.png", (1, 2, 3))
    with pytest.raises(UserError) as info:
        build_dataset(data_cfg(class_folder, depth_cache=str(cache_dir)))
    message = str(info.value)
    assert "2 of 6 images have no cached depth" in message and "emu/new1.png" in message
    dataset = build_dataset(data_cfg(class_folder, depth_cache=str(cache_dir),
                                     skip_missing_depth=True))
    assert len(dataset) == 4
    torch.testing.assert_close(dataset[0]["disparity"], torch.full((1, RES, RES), 0.5),
                               atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="vq3d depth"):
        build_dataset(data_cfg(class_folder), require_depth=True)


def test_empty_or_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_dataset(data_cfg(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        build_dataset(data_cfg(tmp_path / "empty"))
    (tmp_path / "allbad").mkdir()
    (tmp_path / "allbad" / "x.png").write_text("nope")
    with pytest.raises(UserError, match="no usable images"):
        ImageDataset(list_flat(tmp_path / "allbad"), resolution=RES, source="allbad")


def test_loader_leaves_the_callers_dataset_returning_float_items(class_folder):
    dataset = build_dataset(data_cfg(class_folder))
    build_loader(dataset, 2, num_workers=0)
    assert dataset[0]["image"].dtype == torch.float32


def test_synthetic_folder_dispatches_to_the_synthetic_dataset(tmp_path, monkeypatch):
    import sys
    import types

    created = []

    class FakeSynthetic:
        def __init__(self, root, split="train", novel_views=True, cache_mb=0.0,
                     depth_cache=None, skip_missing_depth=False, hflip=False):
            created.append((str(root), split, novel_views))
            self.cache_mb = cache_mb
            self.depth_cache, self.hflip = depth_cache, hflip

    module = types.ModuleType("vq3d.data.synthetic_dataset")
    module.SyntheticDataset = FakeSynthetic
    monkeypatch.setitem(sys.modules, "vq3d.data.synthetic_dataset", module)
    root = tmp_path / "synth"
    solid(root / "images" / "000000.png", (1, 2, 3))  # images alone would look like a folder
    (root / "dataset.json").write_text(json.dumps({"kind": "vq3d-synthetic", "count": 1}))
    assert detect_kind(root) == "synthetic"
    dataset = build_dataset(data_cfg(root), split="test", require_depth=True)
    assert isinstance(dataset, FakeSynthetic) and created == [(str(root), "test", True)]
    build_dataset(data_cfg(root), split="val")  # the synthetic splits are train and test
    assert created[-1] == (str(root), "test", True)
    cfg = data_cfg(root)
    cfg.cache_mb = 12.0
    dataset = build_dataset(cfg, split="train", novel_views=False)  # what training asks for
    assert created[-1] == (str(root), "train", False) and dataset.cache_mb == 12.0
    assert dataset.depth_cache is None  # synthetic data needs no cache...
    cfg.depth_cache = str(tmp_path / "est")
    dataset = build_dataset(cfg, split="train")  # ...but reads estimator-like targets from one
    assert dataset.depth_cache == str(tmp_path / "est") and not dataset.hflip
    cfg.hflip = True  # flips reach the training split only
    assert build_dataset(cfg, split="train").hflip and not build_dataset(cfg, split="test").hflip


def test_split_folders_are_used_when_present(tmp_path):
    solid(tmp_path / "root" / "train" / "n01" / "a.png", (9, 9, 9))
    solid(tmp_path / "root" / "train" / "n02" / "b.png", (9, 9, 9))
    solid(tmp_path / "root" / "val" / "x.png", (9, 9, 9))  # flat validation images
    train = build_dataset(data_cfg(tmp_path / "root"), "train")
    val = build_dataset(data_cfg(tmp_path / "root"), "val")
    assert train.class_names == ["n01", "n02"]
    assert [r.key for r in train.records] == ["n01/a.png", "n02/b.png"]
    assert [r.key for r in val.records] == ["x.png"] and val[0]["label"] == UNLABELED


def test_uint8_view_batches_convert_to_the_float_images(class_folder):
    from torch.utils.data import DataLoader

    from vq3d.data.loader import collate_items, images_to_float, loader_view

    dataset = build_dataset(data_cfg(class_folder))
    view = loader_view(dataset, uint8=True)
    (batch,) = list(DataLoader(view, batch_size=4, collate_fn=collate_items))
    assert batch["image"].dtype == torch.uint8 and batch.pop("_skipped") == []
    expected = torch.stack([dataset[i]["image"] for i in range(4)])
    torch.testing.assert_close(images_to_float(batch["image"]), expected)
