"""`vq3d data check`: report contents and exit codes."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from vq3d.cli import main
from vq3d.data.check import size_bucket


def make_dataset(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (40, 30), (200, 0, 0)).save(root / "cat" / "small.png")
    Image.new("RGB", (300, 200), (0, 200, 0)).save(root / "cat" / "medium.jpg")
    Image.new("L", (600, 700), 90).save(root / "dog" / "large.png")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "readme.png").write_text("hello")
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(root / "whole.jpg", quality=95)
    data = (root / "whole.jpg").read_bytes()
    (root / "whole.jpg").unlink()
    (root / "cat" / "cut.jpg").write_bytes(data[: len(data) // 2])


def test_report_lists_usable_classes_sizes_and_every_bad_file(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    code = main(["data", "check", str(tmp_path / "ds"), "--res", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "usable images: 3 of 6" in out
    assert "classes: 2" in out and "cat: 2" in out and "dog: 1" in out
    assert "<64: 1" in out and "128-255: 1" in out and "512-1023: 1" in out
    assert "smaller than the training resolution 64 (upscaled): 1" in out
    assert "dog/empty.jpg: empty file" in out
    assert "dog/readme.png: not an image" in out
    assert "cat/cut.jpg: truncated" in out


def test_quick_mode_does_not_decode_and_json_output(tmp_path, capsys):
    make_dataset(tmp_path / "ds")
    code = main(["data", "check", str(tmp_path / "ds"), "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["usable"] == 4  # the truncated file's header is fine
    assert {b["file"] for b in report["bad"]} == {"dog/empty.jpg", "dog/readme.png"}
    assert report["classes"] == {"cat": 3, "dog": 1}


def test_exit_code_is_nonzero_when_nothing_is_usable(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("nope")
    (tmp_path / "junk" / "b.png").write_bytes(b"")
    assert main(["data", "check", str(tmp_path / "junk")]) == 1
    out = capsys.readouterr().out
    assert "usable images: 0 of 2" in out and "no usable images" in out


def test_missing_path_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_size_buckets():
    assert [size_bucket(s) for s in (1, 63, 64, 255, 256, 2047, 2048, 10_000)] == [
        "<64", "<64", "64-127", "128-255", "256-511", "1024-2047", ">=2048", ">=2048"]


def test_check_reads_webdataset_shards(tmp_path, capsys):
    import io

    import webdataset as wds

    buffer = io.BytesIO()
    Image.new("RGB", (300, 280), (1, 2, 3)).save(buffer, format="PNG")
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "s-0.tar")) as writer:
        writer.write({"__key__": "good", "png": buffer.getvalue(), "cls": 4})
        writer.write({"__key__": "junk", "png": b"garbage", "cls": 1})
    assert main(["data", "check", str(tmp_path / "shards")]) == 0
    out = capsys.readouterr().out
    assert "usable images: 1 of 2" in out and "256-511: 1" in out
    assert "s-0/junk: not an image" in out
