"""WebDataset shards: round trip, rank/worker splitting, shuffling, bad samples."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from vq3d.config import load_config
from vq3d.data import shards as shards_module
from vq3d.data.loader import build_dataset, build_loader, detect_kind
from vq3d.data.shards import ShardDataset, expand_shard_spec, partition, split_sample_name

RES = 8


def image_bytes(colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 12), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def colour_of(index: int) -> tuple[int, int, int]:
    return (index * 7 % 256, index * 13 % 256, 255 - index % 256)


def write_shards(folder, num_shards: int, per_shard: int, bad: dict[int, bytes] = ()) -> list[str]:
    """Shards written with the webdataset library itself; sample i has label i % 5."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, index = [], 0
    for s in range(num_shards):
        path = str(folder / f"train-{s:04d}.tar")
        with wds.TarWriter(path) as writer:
            for _ in range(per_shard):
                data = dict(bad).get(index, image_bytes(colour_of(index)))
                writer.write({"__key__": f"s{index:05d}", "png": data, "cls": index % 5})
                index += 1
        paths.append(path)
    return paths


def stream(dataset: ShardDataset, worker: int, num_workers: int, monkeypatch) -> list[dict]:
    """Iterate as loader worker `worker` of `num_workers` would (no processes needed)."""
    info = SimpleNamespace(id=worker, num_workers=num_workers)
    monkeypatch.setattr(shards_module, "get_worker_info", lambda: info)
    return list(dataset)


def test_round_trip_keys_labels_and_pixels(tmp_path):
    paths = write_shards(tmp_path / "shards", 2, 3)
    assert detect_kind(tmp_path / "shards") == "webdataset"
    dataset = ShardDataset(paths, resolution=RES, shuffle=False)
    items = list(dataset)
    assert [it["key"] for it in items] == [f"train-{i // 3:04d}/s{i:05d}" for i in range(6)]
    assert [it["label"] for it in items] == [i % 5 for i in range(6)]
    for i, item in enumerate(items):
        expected = torch.tensor(colour_of(i), dtype=torch.float32) / 127.5 - 1
        torch.testing.assert_close(item["image"], expected.view(3, 1, 1).expand(3, RES, RES))


@pytest.mark.parametrize("num_shards, per_shard", [(8, 3), (3, 5)])
def test_two_ranks_and_two_workers_read_disjoint_data_covering_everything(
        tmp_path, monkeypatch, num_shards, per_shard):
    paths = write_shards(tmp_path / "shards", num_shards, per_shard)
    seen: list[list[str]] = []
    for rank in range(2):
        dataset = ShardDataset(paths, resolution=RES, shuffle=True, shuffle_buffer=4, seed=1,
                               rank=rank, world_size=2)
        dataset.set_epoch(2)
        for worker in range(2):
            seen.append([it["key"] for it in stream(dataset, worker, 2, monkeypatch)])
    flat = [k for keys in seen for k in keys]
    assert len(flat) == len(set(flat)) == num_shards * per_shard  # disjoint and complete
    assert all(seen)  # every reader got something


def test_partition_assigns_each_shard_once():
    owners = {}
    for rank in range(3):
        for worker in range(2):
            positions, modulus, offset = partition(13, rank, 3, worker, 2)
            assert modulus == 1
            for p in positions:
                assert p not in owners
                owners[p] = (rank, worker)
    assert sorted(owners) == list(range(13))


def test_shuffle_is_deterministic_per_epoch_and_differs_between_epochs(tmp_path):
    paths = write_shards(tmp_path / "shards", 4, 6)
    dataset = ShardDataset(paths, resolution=RES, shuffle_buffer=8, seed=5)
    dataset.set_epoch(0)
    first = [it["key"] for it in dataset]
    again = [it["key"] for it in dataset]
    dataset.set_epoch(1)
    other = [it["key"] for it in dataset]
    assert first == again and first != other
    assert sorted(first) == sorted(other) and len(first) == 24
    assert first != sorted(first)


def test_bad_samples_are_skipped_and_reported(tmp_path):
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    paths = write_shards(tmp_path / "shards", 1, 4, bad={1: b"not an image", 2: truncated})
    dataset = ShardDataset(paths, resolution=RES, shuffle=False)
    keys = [it["key"] for it in dataset]
    assert keys == ["train-0000/s00000", "train-0000/s00003"]
    assert dataset.bad_files["train-0000/s00001"] == "not an image"
    assert dataset.bad_files["train-0000/s00002"].startswith("truncated")


def test_loader_with_two_workers_streams_every_sample_once(tmp_path):
    write_shards(tmp_path / "shards", 4, 3)
    cfg = load_config("tiny").data
    cfg.path, cfg.resolution = str(tmp_path / "shards" / "train-{0000..0003}.tar"), RES
    dataset = build_dataset(cfg, split="val")  # finite stream, no shuffling
    loader = build_loader(dataset, batch_size=4, num_workers=2, drop_last=False)
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"train-{i // 3:04d}/s{i:05d}" for i in range(12)]
    assert all(b["image"].dtype == torch.float32 for b in batches)


def test_shard_spec_forms(tmp_path):
    paths = write_shards(tmp_path / "shards", 3, 1)
    assert expand_shard_spec(str(tmp_path / "shards")) == paths
    assert expand_shard_spec(str(tmp_path / "shards" / "train-{0000..0002}.tar")) == paths
    assert expand_shard_spec(str(tmp_path / "shards" / "train-*.tar")) == paths
    assert expand_shard_spec(f"{paths[0]}::{paths[2]}") == [paths[0], paths[2]]
    assert split_sample_name("a/b.c/key.disp.png") == ("a/b.c/key", "disp.png")
