"""The built-in synthetic dataset: exact ray casting, determinism, resume, bad input, reader."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.cli import main
from vq3d.config import load_config
from vq3d.data import raycast, synthetic_writer
from vq3d.data.loader import build_dataset
from vq3d.data.raycast import SHAPES
from vq3d.data.synthetic import render_scene, sample_scene, scene_rays
from vq3d.data.synthetic_dataset import SyntheticDataset, mirrored
from vq3d.data.synthetic_writer import generate_dataset
from vq3d.errors import UserError
from vq3d.render.cameras import Cameras, focal_length

RES = 24


def scene_of_class(label: int, views: int = 2):
    """The first scene (seed 7) whose object is of class `label`."""
    for index in range(200):
        scene = sample_scene(7, index, views)
        if scene.label == label:
            return scene
    raise AssertionError(f"no scene of class {label}")


def camera_rays(scene, res: int = RES) -> tuple[np.ndarray, np.ndarray]:
    """Unit rays (V, H, W, 3) from vq3d's camera model, independent of the renderer's ray code."""
    origins, dirs = Cameras(scene.c2w.double(), scene.fov_deg).rays(res, res)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # float32 cameras: |d| = 1 +- 1e-7 otherwise
    return origins.numpy(), dirs.numpy()


def to_local(scene, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> the object's frame, (3, N)."""
    return ((points - scene.center) @ scene.rotation).T


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- ray caster truth


def test_sphere_depth_along_a_ray_through_its_centre_is_distance_minus_radius():
    rng = np.random.default_rng(0)
    centre, radius = np.array([0.05, -0.03, 0.02]), 0.37
    eyes = rng.normal(size=(16, 3))
    eyes = 1.5 * eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    dirs = (centre - eyes) / np.linalg.norm(centre - eyes, axis=1, keepdims=True)
    t, _ = raycast.intersect("sphere", [radius], (eyes - centre).T, dirs.T)
    np.testing.assert_allclose(t, np.linalg.norm(eyes - centre, axis=1) - radius, atol=1e-12)


def test_rendered_sphere_nearest_depth_matches_the_central_pixels_closed_form():
    scene = dataclasses.replace(sample_scene(0, 0, 0), label=SHAPES.index("sphere"), params=np.array([0.4]),
                                center=np.zeros(3))
    depth = render_scene(scene, RES).depth[0]
    # the four central pixels look off-axis by theta, tan(theta) = sqrt(2) * 0.5 / f;
    # a ray at angle theta from the line to the centre (distance D) meets the sphere at
    # t = D cos(theta) - sqrt(r^2 - D^2 sin^2(theta))
    theta = math.atan(math.sqrt(2) * 0.5 / focal_length(scene.fov_deg, RES))
    distance = 1.5
    expected = distance * math.cos(theta) - math.sqrt(0.4 ** 2 - (distance * math.sin(theta)) ** 2)
    assert depth.min() == pytest.approx(expected, abs=1e-9)
    centre = slice(RES // 2 - 1, RES // 2 + 1)
    np.testing.assert_allclose(depth[centre, centre], expected, atol=1e-9)


@pytest.mark.parametrize("label", range(len(SHAPES)), ids=SHAPES)
def test_object_pixels_reproject_onto_the_surface_and_are_first_hits(label):
    scene = scene_of_class(label)
    render = render_scene(scene, RES)
    origins, dirs = camera_rays(scene)
    hit = render.on_object
    assert 0.05 < hit[0].mean() < 0.7  # the object is visible and does not fill the frame
    points = origins[hit] + render.depth[hit][:, None] * dirs[hit]
    assert np.abs(raycast.implicit(scene.shape, scene.params, to_local(scene, points))).max() < 1e-9
    # nothing of the object lies in front of any pixel's hit (object or wall): a missed or late
    # root (the torus' quartic has up to 4) would put samples inside the object
    fractions = np.linspace(0.0, 1.0, 300, endpoint=False)[1:]
    o, d, t = origins.reshape(-1, 3), dirs.reshape(-1, 3), render.depth.reshape(-1)
    samples = o[:, None] + (t[:, None] * fractions)[..., None] * d[:, None]
    inside = raycast.implicit(scene.shape, scene.params, to_local(scene, samples.reshape(-1, 3)))
    assert inside.min() > -1e-9


def test_hits_have_unit_normals_matching_the_implicit_gradient():
    for label in range(len(SHAPES)):
        scene = scene_of_class(label)
        render = render_scene(scene, 16)
        origins, dirs = camera_rays(scene, 16)
        hit = render.on_object.reshape(-1)
        o, d = origins.reshape(-1, 3)[hit], dirs.reshape(-1, 3)[hit]
        x = to_local(scene, o + render.depth.reshape(-1)[hit, None] * d)
        _, face = raycast.intersect(scene.shape, scene.params, to_local(scene, o), (d @ scene.rotation).T)
        normal = raycast.normal(scene.shape, scene.params, x, face)
        eps = 1e-6
        grad = np.stack([(raycast.implicit(scene.shape, scene.params, x + eps * e[:, None])
                          - raycast.implicit(scene.shape, scene.params, x - eps * e[:, None])) / (2 * eps)
                         for e in np.eye(3)])
        grad /= np.linalg.norm(grad, axis=0)
        assert np.median((normal * grad).sum(axis=0)) > 0.999, scene.shape


def test_background_depth_is_the_distance_to_the_first_wall_plane():
    scene = sample_scene(7, 3, 2)
    render = render_scene(scene, RES)
    origins, dirs = camera_rays(scene)
    wall = ~render.on_object
    o, d, t = origins[wall], dirs[wall], render.depth[wall]
    # independently: intersect each of the six planes and keep the nearest point inside the room
    candidates = []
    for axis in range(3):
        for bound in (scene.room_lo[axis], scene.room_hi[axis]):
            with np.errstate(divide="ignore"):
                tk = (bound - o[:, axis]) / d[:, axis]
            p = o + tk[:, None] * d
            inside = np.all((p >= scene.room_lo - 1e-9) & (p <= scene.room_hi + 1e-9), axis=1) & (tk > 0)
            candidates.append(np.where(inside, tk, np.inf))
    np.testing.assert_allclose(t, np.min(candidates, axis=0), rtol=1e-12)
    assert np.isfinite(render.depth).all() and render.depth.max() < 10


def test_central_pixels_see_the_back_wall_at_its_plane_distance_when_the_object_is_tiny():
    scene = sample_scene(7, 5, 0)
    scene = dataclasses.replace(scene, params=scene.params * 1e-3)
    depth = render_scene(scene, RES).depth[0]
    theta = math.atan(math.sqrt(2) * 0.5 / focal_length(scene.fov_deg, RES))
    expected = (1.5 - scene.room_lo[2]) / math.cos(theta)  # plane z = lo_z seen from z = 1.5
    centre = slice(RES // 2 - 1, RES // 2 + 1)
    np.testing.assert_allclose(depth[centre, centre], expected, rtol=1e-12)
    assert 2.4 < expected < 4.0


def test_renderer_rays_are_the_camera_models_rays():
    scene = sample_scene(1, 2, 3)
    o, d = scene_rays(scene.c2w.double().numpy(), scene.fov_deg, RES)
    origins, dirs = camera_rays(scene)
    np.testing.assert_allclose(o.T, origins.reshape(-1, 3), atol=1e-12)
    np.testing.assert_allclose(d.T, dirs.reshape(-1, 3), atol=1e-12)


def test_novel_views_show_parallax_between_object_and_background():
    scene = sample_scene(7, 1, 4)
    render = render_scene(scene, RES)
    origins, dirs = camera_rays(scene)
    cams = Cameras(scene.c2w.float(), scene.fov_deg)
    far = int(np.argmax(np.linalg.norm(scene.c2w[1:, :2, 3].numpy(), axis=1))) + 1  # moved the most
    pixel = np.stack(np.meshgrid(np.arange(RES) + 0.5, np.arange(RES) + 0.5), axis=-1)  # (H, W, 2) as (u, v)
    points = origins[0] + render.depth[0][..., None] * dirs[0]  # canonical hits (H, W, 3)
    uv, _ = cams[far].project(torch.from_numpy(points.reshape(1, -1, 3)).float(), RES, RES)
    shift = (uv[0].numpy() - pixel.reshape(-1, 2))
    on_object = render.on_object[0].reshape(-1)
    gap = np.linalg.norm(np.median(shift[on_object], axis=0) - np.median(shift[~on_object], axis=0))
    assert gap > 1.0  # pixels: near object and far walls move differently


# ----------------------------------------------------------------------------- determinism and resume


def test_a_scene_depends_only_on_seed_and_index():
    a, b = render_scene(sample_scene(3, 5, 2), 16), render_scene(sample_scene(3, 5, 2), 16)
    np.testing.assert_array_equal(a.to_uint8(), b.to_uint8())
    np.testing.assert_array_equal(a.depth, b.depth)
    other = render_scene(sample_scene(4, 5, 2), 16)
    assert not np.array_equal(a.depth, other.depth)


def test_same_seed_gives_identical_files(tmp_path):
    generate_dataset(tmp_path / "a", 3, 16, views=2, seed=5, progress=False)
    generate_dataset(tmp_path / "b", 3, 16, views=2, seed=5, progress=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    generate_dataset(tmp_path / "c", 3, 16, views=2, seed=6, progress=False)
    first = "scenes/0000/000000_canonical.png"
    assert tree(tmp_path / "a")[first] != tree(tmp_path / "c")[first]


def test_growing_a_dataset_equals_generating_it_at_once(tmp_path):
    generate_dataset(tmp_path / "grown", 3, 16, views=2, progress=False)
    generate_dataset(tmp_path / "grown", 6, 16, views=2, progress=False)
    generate_dataset(tmp_path / "once", 6, 16, views=2, progress=False)
    assert tree(tmp_path / "grown") == tree(tmp_path / "once")
    assert len((tmp_path / "once" / "manifest.jsonl").read_text().splitlines()) == 6


def test_scenes_made_by_worker_processes_equal_those_made_in_one(tmp_path):
    n = synthetic_writer.PARALLEL_MIN_SCENES + 3  # enough scenes for a pool, a chunk left part-full
    generate_dataset(tmp_path / "one", n, 16, views=2, seed=2, progress=False, workers=1)
    generate_dataset(tmp_path / "two", n, 16, views=2, seed=2, progress=False, workers=2)
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert len((tmp_path / "two" / "manifest.jsonl").read_text().splitlines()) == n
    with pytest.raises(UserError, match="--workers -1"):
        generate_dataset(tmp_path / "bad", n, 16, views=2, progress=False, workers=-1)


def test_a_crash_in_a_worker_keeps_the_scenes_before_it_and_resumes_identically(tmp_path, monkeypatch):
    real_render = synthetic_writer.render_scene
    crash_at = synthetic_writer.PARALLEL_MIN_SCENES + 1  # in the pool's third chunk

    def crash(scene, resolution, supersample=1):  # forked workers inherit the patched module
        if scene.index == crash_at:
            raise RuntimeError("injected crash")
        return real_render(scene, resolution, supersample)

    monkeypatch.setattr(synthetic_writer, "render_scene", crash)
    n = crash_at + 8
    with pytest.raises(RuntimeError, match="injected"):
        generate_dataset(tmp_path / "a", n, 16, views=2, progress=False, workers=2)
    records = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    # a worker's task is a chunk of scenes: every chunk before the crash's is listed, none after
    chunk = synthetic_writer._CHUNK_SCENES
    assert [r["index"] for r in records] == list(range(crash_at // chunk * chunk))
    monkeypatch.setattr(synthetic_writer, "render_scene", real_render)
    generate_dataset(tmp_path / "a", n, 16, views=2, progress=False, workers=2)
    generate_dataset(tmp_path / "b", n, 16, views=2, progress=False, workers=1)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_an_interrupted_run_lists_only_complete_scenes_and_resumes_identically(tmp_path, monkeypatch):
    real_render = synthetic_writer.render_scene

    def crash_on_scene_4(scene, resolution, supersample=1):
        if scene.index == 4:
            raise RuntimeError("injected crash")
        return real_render(scene, resolution, supersample)

    monkeypatch.setattr(synthetic_writer, "render_scene", crash_on_scene_4)
    with pytest.raises(RuntimeError, match="injected"):
        generate_dataset(tmp_path / "a", 7, 16, views=2, progress=False)
    records = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert all((tmp_path / "a" / rel).is_file() for rel in [r["image"], *r["novel_images"], r["depth"]])
    card = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert card["n_scenes"] == 4 and card["complete"] is False

    monkeypatch.setattr(synthetic_writer, "render_scene", real_render)
    generate_dataset(tmp_path / "a", 7, 16, views=2, progress=False)
    generate_dataset(tmp_path / "b", 7, 16, views=2, progress=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


# ----------------------------------------------------------------------------- bad input (CLI)


def synth_args(out: Path, *extra: str) -> list[str]:
    return ["synth", "--out", str(out), "--n", "2", "--res", "16", "--views", "1", "--no-progress", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize("extra, says", [
    (["--n", "0"], "--n 0"),
    (["--views", "-1"], "--views -1"),
    (["--res", "6"], "--res 6"),
    (["--res", "17"], "even"),
    (["--seed", "-3"], "--seed -3"),
    (["--camera-distance", "0.8"], "camera distance"),
    (["--fov-deg", "0"], "field of view"),
    (["--sampling-radius", "-0.1"], "sampling radius"),
    (["--supersample", "0"], "supersample 0"),
])
def test_bad_settings_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, extra, says):
    out = tmp_path / "data"
    assert main(synth_args(out, *extra)) == 2
    assert says in one_line_error(capsys)
    assert not out.exists()


def test_a_folder_holding_something_else_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(synth_args(out)) == 2
    assert "not empty" in one_line_error(capsys)
    assert tree(out) == {"notes.txt": b"mine"}


def test_resuming_with_other_settings_is_refused_and_nothing_is_lost(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(synth_args(out)) == 0
    before = tree(out)
    capsys.readouterr()
    assert main(synth_args(out, "--res", "32")) == 2
    assert "resolution" in one_line_error(capsys)
    assert main(synth_args(out, "--seed", "9")) == 2
    assert "seed" in one_line_error(capsys)
    assert main(synth_args(out, "--n", "1")) == 2  # fewer scenes than the folder holds
    assert "already holds 2 scenes" in one_line_error(capsys)
    assert tree(out) == before


@pytest.mark.parametrize("damage, says", [
    ("garbage", "not valid JSON"),
    ("swap", "expected scene 0"),
    ("missing_file", "missing"),
    ("card", "unreadable"),
])
def test_a_damaged_dataset_is_refused_and_nothing_is_lost(tmp_path, capsys, damage, says):
    out = tmp_path / "data"
    assert main(synth_args(out)) == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    if damage == "garbage":
        manifest.write_text(manifest.read_text() + "{not json\n")
    elif damage == "swap":
        manifest.write_text(lines[1] + "\n" + lines[0] + "\n")
    elif damage == "missing_file":
        (out / json.loads(lines[1])["novel_images"][0]).unlink()
    else:
        (out / "dataset.json").write_text("{")
    before = tree(out)
    capsys.readouterr()
    assert main(synth_args(out, "--n", "4")) == 2
    assert says in one_line_error(capsys)
    assert tree(out) == before


# ----------------------------------------------------------------------------- reader and outputs


def test_dataset_reader_shapes_ranges_splits_and_values(tmp_path):
    generate_dataset(tmp_path, 10, 16, views=2, seed=1, progress=False)
    ds = SyntheticDataset(tmp_path)
    assert len(ds) == 10 and ds.class_names == list(SHAPES)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0 and item["image"].std() > 0.05
    assert item["depth"].shape == item["disparity"].shape == (1, 16, 16)
    assert (item["depth"] > 0.5).all() and (item["depth"] < 10).all()
    torch.testing.assert_close(item["disparity"], 1.0 / item["depth"])
    assert item["novel_images"].shape == (2, 3, 16, 16) and item["novel_depths"].shape == (2, 1, 16, 16)
    assert item["novel_c2w"].shape == (2, 4, 4) and item["c2w"].shape == (4, 4)
    assert item["fov_deg"] == 45.0 and 0 <= item["label"] < len(SHAPES)
    # values: the files hold exactly what the renderer produced (depth as float32), at the
    # default 2x2 supersampling recorded on the card
    assert ds.card["supersample"] == 2
    render = render_scene(sample_scene(1, 0, 2), 16, supersample=2)
    np.testing.assert_array_equal(item["depth"][0].numpy(), render.depth[0].astype(np.float32))
    np.testing.assert_array_equal(item["novel_depths"][:, 0].numpy(), render.depth[1:].astype(np.float32))
    expected = torch.from_numpy(render.to_uint8()[2].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    torch.testing.assert_close(item["novel_images"][1], expected)
    torch.testing.assert_close(item["c2w"][:3, 3], torch.tensor([0.0, 0.0, 1.5]))
    # splits: every 10th scene is held out; train and test are disjoint and cover the dataset
    train, test = SyntheticDataset(tmp_path, "train"), SyntheticDataset(tmp_path, "test")
    assert [r["index"] for r in test.records] == [9]
    assert len(train) == 9 and test[0]["index"] == 9
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].shape == (4,)
    # training reads no novel views: the same item without them
    lean = SyntheticDataset(tmp_path, novel_views=False)[0]
    assert not any(k.startswith("novel") for k in lean) and set(lean) | {"novel_images", "novel_depths",
                                                                         "novel_c2w"} == set(item)
    torch.testing.assert_close(lean["image"], item["image"])
    torch.testing.assert_close(lean["disparity"], item["disparity"])


def test_the_in_memory_cache_serves_the_same_items_without_rereading_files(tmp_path):
    generate_dataset(tmp_path, 6, 16, views=2, seed=1, progress=False)
    plain = SyntheticDataset(tmp_path)
    cached = SyntheticDataset(tmp_path, cache_mb=1.0)
    first = [cached[i] for i in range(len(cached))]
    for i, item in enumerate(first):
        reference = plain[i]
        assert set(item) == set(reference)
        for key, value in reference.items():
            if torch.is_tensor(value):
                torch.testing.assert_close(item[key], value, rtol=0, atol=0)
            else:
                assert item[key] == value
    # a second read comes from memory: the files may be gone
    for path in tmp_path.rglob("*.png"):
        path.unlink()
    again = cached[2]
    torch.testing.assert_close(again["novel_images"], first[2]["novel_images"], rtol=0, atol=0)
    again.pop("image")  # callers get their own dict: the cached item keeps its keys
    assert "image" in cached[2]
    # a split that does not fit the budget is not cached and reads the files (now missing)
    small = SyntheticDataset(tmp_path, cache_mb=6 * cached.item_bytes() / 2**20 * 0.9)
    with pytest.raises(UserError, match="missing"):
        small[2]


def test_cli_writes_card_and_contact_sheet(tmp_path, capsys):
    out, sheet = tmp_path / "data", tmp_path / "sheet.png"
    assert main(synth_args(out, "--n", "3", "--views", "2", "--contact-sheet", str(sheet))) == 0
    card = json.loads((out / "dataset.json").read_text())
    assert card["n_scenes"] == 3 and card["complete"] and card["resolution"] == 16 and card["views"] == 2
    assert card["camera_distance"] == 1.5 and card["fov_deg"] == 45.0 and card["sampling_radius"] == 0.3
    assert card["classes"] == list(SHAPES) and sum(card["class_counts"].values()) == 3
    with Image.open(sheet) as img:
        width, height = img.size
    assert width > 2 * height > 0  # 3 rows of 6 tiles


def test_bench_reports_json(capsys):
    assert main(["bench", "synth", "--json", "--n", "2", "--res", "16", "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "synth" and result["generate_scenes_per_s"] > 0
    assert result["raycast_scenes_per_s"] > 0 and "generate_over_raycast" in result
    assert result["workers"] >= 1 and result["generate_one_process_scenes_per_s"] > 0
    assert result["speedup_over_one_process"] > 0


def test_supersampling_box_filters_a_k_times_finer_render():
    scene = scene_of_class(0, views=1)
    coarse, fine = render_scene(scene, 8, supersample=3), render_scene(scene, 24)
    block = fine.rgb.reshape(2, 8, 3, 8, 3, 3)
    assert np.allclose(coarse.rgb, block.mean(axis=(2, 4)))
    disparity = (1.0 / fine.depth).reshape(2, 8, 3, 8, 3).mean(axis=(2, 4))
    assert np.allclose(coarse.depth, 1.0 / disparity)
    hits = fine.on_object.reshape(2, 8, 3, 8, 3).mean(axis=(2, 4))
    assert np.array_equal(coarse.on_object, hits > 0.5)
    # an edge pixel mixes object and wall: its colour is between (not one of) the two point samples
    mixed = (hits > 0) & (hits < 1)
    assert mixed.any()
    assert np.array_equal(render_scene(scene, 8, supersample=1).rgb, render_scene(scene, 8).rgb)


def test_supersample_is_a_dataset_setting_and_old_cards_mean_one_ray_per_pixel(tmp_path, capsys):
    from vq3d.data.synthetic import CameraSettings

    out = tmp_path / "data"
    generate_dataset(out, 2, 16, views=1, camera=CameraSettings(supersample=1), progress=False)
    card = json.loads((out / "dataset.json").read_text())
    assert card["supersample"] == 1
    del card["supersample"]  # a card written before supersampling existed
    (out / "dataset.json").write_text(json.dumps(card))
    generate_dataset(out, 3, 16, views=1, camera=CameraSettings(supersample=1), progress=False)  # continues
    assert main(synth_args(out, "--n", "4", "--supersample", "2")) == 2
    assert "supersample" in one_line_error(capsys)


def test_mirrored_items_flip_every_view_and_their_cameras_see_the_mirrored_object(tmp_path):
    generate_dataset(tmp_path, 4, 16, views=2, seed=3, progress=False)
    item = SyntheticDataset(tmp_path)[1]
    flipped = mirrored(item)
    for key in ("image", "depth", "disparity", "novel_images", "novel_depths"):
        torch.testing.assert_close(flipped[key], item[key].flip(-1))
    # oracle: the camera model's projection; the object's centre seen at column u by each
    # original camera is seen at column W - u, same row and distance, by the mirrored one
    cams = torch.cat([item["c2w"][None], item["novel_c2w"]])
    cams_m = torch.cat([flipped["c2w"][None], flipped["novel_c2w"]])
    uv, dist = Cameras(cams, 45.0).project(item["object_center"].expand(len(cams), 1, 3), 16, 16)
    uv_m, dist_m = Cameras(cams_m, 45.0).project(flipped["object_center"].expand(len(cams), 1, 3), 16, 16)
    torch.testing.assert_close(uv_m[..., 0], 16 - uv[..., 0])
    torch.testing.assert_close(uv_m[..., 1], uv[..., 1])
    torch.testing.assert_close(dist_m, dist)
    assert not torch.equal(uv_m[..., 0], uv[..., 0])  # the novel cameras are off the mirror plane
    torch.testing.assert_close(item["image"], SyntheticDataset(tmp_path)[1]["image"])  # input untouched


def test_training_flips_synthetic_scenes_only_when_asked_and_never_the_test_split(tmp_path):
    generate_dataset(tmp_path, 10, 16, views=1, seed=0, progress=False)
    cfg = load_config("tiny").data
    cfg.path = str(tmp_path)
    plain = build_dataset(cfg, "train")[0]["image"]
    torch.manual_seed(0)
    cfg.hflip = True
    train = build_dataset(cfg, "train", novel_views=False)
    seen = {bool(torch.equal(train[0]["image"], plain.flip(-1))) for _ in range(16)}
    assert seen == {True, False}
    test = build_dataset(cfg, "test")
    first = SyntheticDataset(tmp_path, "test")[0]["image"]
    assert all(torch.equal(test[0]["image"], first) for _ in range(8))


def test_atomic_bytes_make_their_folder_take_the_usual_mode_and_leave_nothing_on_failure(tmp_path):
    from vq3d.utils.io import _UMASK, atomic_write_bytes

    target = tmp_path / "new" / "deeper" / "a.png"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")  # replaces the file whole
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not mkstemp's 0600
    (tmp_path / "new" / "dir.png").mkdir()
    with pytest.raises(OSError):  # a file cannot replace a folder
        atomic_write_bytes(tmp_path / "new" / "dir.png", b"x")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["deeper", "dir.png"]  # no temporary left


def test_split_counts_count_what_split_of_assigns():
    for n in (0, 9, 10, 11, 4450):
        held_out = sum(synthetic_writer.split_of(i) == "test" for i in range(n))
        assert synthetic_writer.split_counts(n) == (n - held_out, held_out)
