"""End-to-end behaviour of the training and application commands on the `tiny` presets."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vq3d.cli import main
from vq3d.config import load_config
from vq3d.losses.stage1 import discriminator_losses, with_depth
from vq3d.models.discriminator import Discriminator
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import sample_novel_cameras
from vq3d.train.logger import read_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe") / "data"
    assert main(["synth", "--out", str(root), "--n", "20", "--res", "16", "--views", "2", "--no-progress"]) == 0
    return root


@pytest.fixture(scope="module")
def stage1_run(synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("pipe") / "s1"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run),
                 "--steps", "4"]) == 0
    return run


def test_stage1_shapes_for_tiny_preset():
    cfg = load_config("tiny")
    model = Stage1Model(cfg)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.encode(images)
    assert ids.shape == (2, (16 // cfg.model.patch_size) ** 2)
    planes = model.decode(ids)
    R, C = cfg.model.plane_resolution, cfg.model.plane_channels
    assert planes.shape == (2, 3, C, R, R)
    out = model.reconstruct(images)
    assert out.rgb.shape == (2, 3, 16, 16) and out.depth.shape == (2, 1, 16, 16)
    assert out.rgb.min() >= -1 and out.rgb.max() <= 1


@pytest.mark.parametrize("override", ["model.representation=implicit", "model.backbone=cnn"])
def test_ablation_variants_render(override):
    cfg = load_config("tiny", [], [override])
    out = Stage1Model(cfg).reconstruct(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert out.rgb.shape == (1, 3, 16, 16) and torch.isfinite(out.rgb).all()


def test_novel_view_discriminator_sends_no_gradient_into_canonical_reconstruction():
    cfg = load_config("tiny")
    model = Stage1Model(cfg)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    novel = sample_novel_cameras(2, 1.5, 45.0, 0.3, torch.Generator().manual_seed(0)).c2w
    out = model(images, novel, 0)
    canonical = out["canonical"]
    canonical.rgb.retain_grad()
    d_main, d_novel = Discriminator(16, 3), Discriminator(16, 4)
    total, _ = discriminator_losses(images, canonical, out["novel"], d_main, d_novel, cfg.loss, cfg.render, False)
    total.backward()
    assert canonical.rgb.grad is None or canonical.rgb.grad.abs().sum() == 0
    assert all(p.grad is None for p in model.parameters())
    # ...while the novel-view discriminator does read the canonical render with depth
    assert with_depth(canonical, cfg.render.near).shape == (2, 4, 16, 16)


def test_a_few_tiny_steps_lower_the_loss(synth, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run), "--steps", "30",
                 "--set", "loss.gan=0"]) == 0
    mse = [m["mse"] for m in read_metrics(run)]
    assert np.mean(mse[-5:]) < np.mean(mse[:3])


def test_discriminators_and_novel_views_wait_for_gan_start(synth, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run), "--steps", "5",
                 "--set", "loss.gan_start_steps=3", "--set", "loss.gan_warmup_steps=2"]) == 0
    records = {m["step"]: m for m in read_metrics(run)}
    for step in (1, 2, 3):  # logged after steps 0, 1, 2: no D update, no novel-view GAN term
        assert records[step]["gan_weight"] == 0 and "d_main" not in records[step] and "gan_novel" not in records[step]
    assert records[4]["gan_weight"] == pytest.approx(0.05) and "d_novel" in records[4] and "gan_novel" in records[4]
    assert records[5]["gan_weight"] == pytest.approx(0.1)


def test_ray_subset_losses_match_whole_image_losses_at_those_pixels():
    cfg = load_config("tiny")
    model = Stage1Model(cfg).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    disparity = torch.rand(2, 1, 16, 16) + 0.5
    pixels = torch.stack([torch.randperm(256)[:40] for _ in range(2)])
    from vq3d.losses.reconstruction import LogitLaplaceLoss
    from vq3d.losses.stage1 import gather_pixels, generator_losses

    with torch.no_grad():
        out = model(images, pixels=pixels)
        total, terms = generator_losses(images, disparity, out["quant"], out["canonical"], None, cfg.loss,
                                        cfg.render, LogitLaplaceLoss(), None, None, None, step=0, pixels=pixels)
    picked = gather_pixels(images, pixels)
    assert picked.shape == (2, 3, 1, 40)
    assert torch.allclose(picked[1, :, 0, 5], images[1].flatten(1)[:, pixels[1, 5]])
    assert torch.isclose(terms["mse"], (out["canonical"].rgb - picked).square().mean())
    assert torch.isfinite(total) and "depth" in terms
    d = Discriminator(16, 3)
    with pytest.raises(ValueError, match="whole images"):
        generator_losses(images, disparity, out["quant"], out["canonical"], None, cfg.loss, cfg.render,
                         LogitLaplaceLoss(), None, d, None, step=0, pixels=pixels)


def test_ray_subsets_then_whole_images_of_a_smaller_batch_once_the_gan_starts(synth, tmp_path, monkeypatch):
    rays_per_step = []
    forward = Stage1Model.forward

    def recording_forward(self, images, novel_c2w=None, step=None, generator=None, pixels=None, novel_size=None):
        rays_per_step.append((images.shape[0], None if pixels is None else pixels.shape[1]))
        return forward(self, images, novel_c2w, step, generator, pixels, novel_size)

    monkeypatch.setattr(Stage1Model, "forward", recording_forward)
    run = tmp_path / "run"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run), "--steps", "6",
                 "--set", "render.train_rays=40", "--set", "loss.gan_start_steps=3",
                 "--set", "train.gan_batch_size=2", "--set", "train.image_every=2"]) == 0
    # steps 0-2: 4 images, 40 rays each; then the GAN: the first 2 images, whole
    assert rays_per_step == [(4, 40)] * 3 + [(2, None)] * 3
    records = {m["step"]: m for m in read_metrics(run)}
    assert "d_main" not in records[3] and "d_novel" in records[4]
    assert all(math.isfinite(m["loss"]) for m in records.values())
    assert len(list((run / "images" / "panel").glob("*.png"))) == 3  # panels re-render whole images


@pytest.mark.parametrize("gan_start", [0, 4])  # 4: the discriminators start after the resume
def test_resume_continues_the_same_loss_curve(synth, tmp_path, gan_start):
    # a warm-up of 2 (kept: --set) ends where both plans still agree on the rate (steps 0-2)
    common = ["--preset", "tiny", "--data", str(synth), "--set", "data.num_workers=0",
              "--set", f"loss.gan_start_steps={gan_start}", "--set", "train.warmup_steps=2"]
    assert main(["train", "stage1", *common, "--out", str(tmp_path / "a"), "--steps", "6"]) == 0
    assert main(["train", "stage1", *common, "--out", str(tmp_path / "b"), "--steps", "3"]) == 0
    assert main(["train", "stage1", "--out", str(tmp_path / "b"), "--resume", "--steps", "6"]) == 0
    a = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "a")}
    b = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "b")}
    assert sorted(b) == sorted(a) == list(range(1, 7))
    for step in range(4, 7):
        assert math.isclose(a[step], b[step], rel_tol=1e-5), (step, a[step], b[step])


def test_a_run_fitted_to_its_time_ends_its_schedule_within_it(synth, tmp_path, monkeypatch):
    from vq3d.train.stage1 import Stage1Trainer

    # The probe's timing is replaced by a fixed, pessimistic step time (0.4 s, ~10x a tiny step),
    # so the plan does not depend on how busy the machine is while the suite runs.
    fit = Stage1Trainer._fit_to_time
    monkeypatch.setattr(Stage1Trainer, "_fit_to_time", lambda self, rc, _s, gan=False: fit(self, rc, 0.4, gan))
    run = tmp_path / "fit"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run),
                 "--set", "data.num_workers=0", "--set", "train.fit_to_time=true",
                 "--set", "train.steps=100000", "--set", "loss.gan=0", "--set", "loss.gan_start_steps=50000",
                 "--max-minutes", "1"]) == 0
    cfg = load_config("tiny", [str(run / "config.yaml")], [])  # the fitted plan is saved for --resume
    assert 40 < cfg.train.steps < 300 and abs(cfg.loss.gan_start_steps - cfg.train.steps / 2) <= 1
    # it ends by its fitted steps, not by the time bound
    assert max(m["step"] for m in read_metrics(run) if "loss" in m) == cfg.train.steps
    # steps given on the command line are kept (a minute bounds them too: 45 tiny steps take ~2 s
    # alone, but 6 s held only 38 on a 2-core machine running five other jobs)
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(tmp_path / "kept"),
                 "--set", "data.num_workers=0", "--set", "train.fit_to_time=true", "--set", "loss.gan=0",
                 "--steps", "45", "--max-minutes", "1"]) == 0
    kept = load_config("tiny", [str(tmp_path / "kept" / "config.yaml")], [])
    assert kept.train.steps == 45 and not kept.train.fit_to_time
    assert max(m["step"] for m in read_metrics(tmp_path / "kept") if "loss" in m) == 45


def test_a_fitted_run_refits_its_steps_once_the_gan_steps_are_timed(synth, tmp_path, monkeypatch):
    from vq3d.train.stage1 import Stage1Trainer

    # fixed step times, so the plan does not depend on the load: 0.2 s before the GAN, and 0.8 s
    # with it, twice what the first plan assumes (GAN steps cost 2x on these rays)
    fit, calls = Stage1Trainer._fit_to_time, []

    def fixed(self, rc, _seconds, gan=False):
        calls.append((self.step, gan, self.cfg.train.steps))
        fit(self, rc, 0.8 if gan else 0.2, gan)

    monkeypatch.setattr(Stage1Trainer, "_fit_to_time", fixed)
    run = tmp_path / "gan"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run),
                 "--set", "data.num_workers=0", "--set", "train.fit_to_time=true", "--set", "train.steps=200",
                 "--set", "loss.gan_start_steps=50", "--max-minutes", "1"]) == 0
    cfg = load_config("tiny", [str(run / "config.yaml")], [])
    assert calls[0][:2] == (40, False)
    gan_refits = [c for c in calls if c[1]]
    # the GAN's steps are timed after 10 settling ones, and 50 of them refit the plan, which shrinks
    assert gan_refits and gan_refits[0][0] == max(40, cfg.loss.gan_start_steps) + 60
    assert cfg.train.steps < gan_refits[0][2]
    assert max(m["step"] for m in read_metrics(run) if "loss" in m) == cfg.train.steps


def test_training_refuses_to_overwrite_and_reports_bad_data(stage1_run, tmp_path, capsys):
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(tmp_path), "--out", str(stage1_run),
                 "--steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / "a.png")
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert "depth" in capsys.readouterr().err  # real images need pseudo-GT depth for the depth loss
    for bad, key in (("train.gan_batch_size=99", "train.gan_batch_size"), ("render.train_rays=-1", "train_rays")):
        assert main(["train", "stage1", "--preset", "tiny", "--data", str(tmp_path / "imgs"),
                     "--out", str(tmp_path / "r2"), "--steps", "1", "--set", bad]) == 2
        assert key in capsys.readouterr().err


def test_eval_stage1_reports_every_metric(stage1_run, synth, capsys):
    assert main(["eval", "stage1", "--run", str(stage1_run), "--data", str(synth), "--split", "train",
                 "--max-scenes", "4", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("psnr", "depth_accuracy", "novel_view_psnr", "copy_baseline_psnr", "warp_baseline_psnr",
                "disparity_scale", "codebook_usage"):
        assert key in metrics and math.isfinite(metrics[key])
    assert metrics["warp_baseline_psnr"] > metrics["copy_baseline_psnr"]


def test_tokens_stage2_and_generate_write_every_promised_file(stage1_run, synth, tmp_path):
    tok, run2, out = tmp_path / "tok", tmp_path / "s2", tmp_path / "gen"
    assert main(["tokens", "--stage1", str(stage1_run), "--data", str(synth), "--out", str(tok)]) == 0
    info = json.loads((tok / "tokens.json").read_text())
    ids = np.load(tok / "ids.npy")
    assert ids.shape == (info["count"], info["seq_len"]) and info["done"] == info["count"]
    assert ids.max() < info["codebook_size"]
    # rerunning is a no-op (resumable), not an error
    assert main(["tokens", "--stage1", str(stage1_run), "--data", str(synth), "--out", str(tok)]) == 0
    assert main(["train", "stage2", "--stage1", str(stage1_run), "--tokens", str(tok), "--out", str(run2),
                 "--preset", "tiny", "--steps", "3"]) == 0
    assert main(["generate", "--stage1", str(stage1_run), "--stage2", str(run2), "-n", "2", "--out", str(out),
                 "--frames", "4", "--class", "sphere"]) == 0
    for name in ("canonical.png", "depth.png", "disparity.npy", "novel_0.png", "orbit.mp4", "orbit.gif",
                 "triplanes.safetensors", "tokens.npy"):
        assert (out / "sample_000" / name).is_file(), name
    assert (out / "grid.png").is_file()
    assert json.loads((out / "samples.json").read_text())["samples"][1]["class_name"] == "sphere"
    assert main(["generate", "--stage1", str(stage1_run), "--stage2", str(run2), "-n", "1",
                 "--out", str(out), "--class", "dodecahedron"]) == 2


def test_stage2_fitted_to_its_time_ends_its_cosine_within_it(stage1_run, synth, tmp_path, monkeypatch):
    import vq3d.train.stage2 as stage2_module

    # a fixed, pessimistic step time (0.4 s, far above a tiny step's), so the plan does not depend
    # on how busy the machine is while the suite runs
    fit = stage2_module.stage2_steps_to_minutes
    monkeypatch.setattr(stage2_module, "stage2_steps_to_minutes",
                        lambda cfg, most, done, _s, elapsed: fit(cfg, most, done, 0.4, elapsed))
    tok, run = tmp_path / "tok", tmp_path / "fit"
    assert main(["tokens", "--stage1", str(stage1_run), "--data", str(synth), "--out", str(tok)]) == 0
    args = ["train", "stage2", "--stage1", str(stage1_run), "--tokens", str(tok), "--preset", "tiny",
            "--set", "train.fit_to_time=true"]
    assert main([*args, "--out", str(run), "--set", "stage2.steps=100000", "--max-minutes", "1"]) == 0
    cfg = load_config("tiny", [str(run / "config.yaml")], [])  # the fitted steps are saved for --resume
    # 57 s (95% of the minute) at 0.4 s a step, after the 40 steps of the probe
    assert 150 < cfg.stage2.steps < 190
    steps_logged = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert max(steps_logged) == cfg.stage2.steps  # it ends by its fitted steps, not by the time bound
    # at most the configured steps: a roomy budget keeps them
    assert main([*args, "--out", str(tmp_path / "roomy"), "--set", "stage2.steps=60", "--max-minutes", "1"]) == 0
    assert load_config("tiny", [str(tmp_path / "roomy" / "config.yaml")], []).stage2.steps == 60
    # steps given on the command line are kept, not fitted
    assert main([*args, "--out", str(tmp_path / "kept"), "--steps", "45", "--max-minutes", "0.01"]) == 0
    kept = load_config("tiny", [str(tmp_path / "kept" / "config.yaml")], [])
    assert kept.stage2.steps == 45 and not kept.train.fit_to_time


def test_mirrored_tokens_encode_flipped_images_and_keep_pairs_on_one_side(stage1_run, synth, tmp_path):
    from vq3d.data.synthetic_dataset import SyntheticDataset
    from vq3d.data.tokens import mirror_pairs
    from vq3d.train.runs import load_stage1
    from vq3d.train.stage2 import split_rows

    tok = tmp_path / "tok"
    assert main(["tokens", "--stage1", str(stage1_run), "--data", str(synth), "--out", str(tok),
                 "--hflip"]) == 0
    info = json.loads((tok / "tokens.json").read_text())
    ids, labels = np.load(tok / "ids.npy"), np.load(tok / "labels.npy")
    dataset = SyntheticDataset(synth, split="train", novel_views=False)
    images = torch.stack([item["image"] for item in dataset])
    n = len(images)
    assert info["mirrored"] and info["count"] == info["done"] == 2 * n and ids.shape[0] == 2 * n
    model, _ = load_stage1(stage1_run, "cpu")
    with torch.no_grad():
        assert np.array_equal(ids[:n], model.encode(images).numpy())
        assert np.array_equal(ids[n:], model.encode(images.flip(-1)).numpy())
    assert np.array_equal(labels[:n], labels[n:])
    # a mirrored folder is another folder: reusing --out without --hflip is refused
    assert main(["tokens", "--stage1", str(stage1_run), "--data", str(synth), "--out", str(tok)]) == 2
    train, val = (mirror_pairs(r, info) for r in split_rows(n, 0.25, seed=0))
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 2 * n
    assert set((val % n).tolist()).isdisjoint((train % n).tolist())  # no image on both sides
    run2 = tmp_path / "s2"
    assert main(["train", "stage2", "--stage1", str(stage1_run), "--tokens", str(tok), "--out", str(run2),
                 "--preset", "tiny", "--steps", "2"]) == 0
    assert json.loads((run2 / "stage2.json").read_text())["train_rows"] == len(train)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_reconstruct_writes_every_promised_file(stage1_run, tmp_path, mode):
    src = tmp_path / "in"
    src.mkdir()
    if mode == "I;16":
        img = Image.fromarray((np.random.rand(24, 30) * 65535).astype(np.uint16))
    else:
        img = Image.new(mode, (30, 24), color=(200, 30, 30, 128)[: len(mode)] if mode != "L" else 100)
    img.save(src / "photo.png")
    Image.new("RGB", (40, 20), (10, 200, 10)).save(src / "other.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert main(["reconstruct", "--stage1", str(stage1_run), str(src), "--out", str(out), "--frames", "3",
                 "--mesh-res", "16"]) == 0
    for name in ("input.png", "canonical.png", "depth.png", "disparity.npy", "novel_0.png", "orbit.mp4",
                 "orbit.gif", "points.ply", "mesh.ply", "mesh.obj", "mesh.glb", "triplanes.safetensors"):
        assert (out / "photo" / name).is_file(), name
        assert (out / "other" / name).is_file(), name
    summary = json.loads((out / "reconstruct.json").read_text())
    assert len(summary["images"]) == 2 and any("broken" in k for k in summary["skipped"])
    # and what the files hold: the model's resolution, a depth map, one mesh in three formats
    import trimesh
    from safetensors.torch import load_file

    folder = out / "photo"
    assert Image.open(folder / "canonical.png").size == Image.open(folder / "novel_0.png").size == (16, 16)
    disparity = np.load(folder / "disparity.npy")
    assert disparity.shape[-2:] == (16, 16) and np.isfinite(disparity).all() and (disparity >= 0).all()
    meshes = [trimesh.load(folder / f"mesh.{fmt}", process=False, force="mesh") for fmt in ("ply", "obj", "glb")]
    assert len({(len(m.vertices), len(m.faces)) for m in meshes}) == 1
    assert next(r for r in summary["images"] if r["folder"] == "photo")["mesh_faces"] == len(meshes[0].faces)
    assert load_file(str(folder / "triplanes.safetensors"))["triplanes"].shape[:2] == (1, 3)


def test_synthetic_truth_becomes_camera_axis_disparity_for_the_relative_loss(synth, tmp_path):
    """Without a depth cache the relative loss's target is the scene's true depth: in the
    camera-axis convention it must be 1 / z, z = t times the cosine of the ray to the optical
    axis, here taken from the canonical camera's own rays."""
    from dataclasses import replace

    from vq3d.render.cameras import canonical_cameras
    from vq3d.train.stage1 import truth_target_factor

    cfg = load_config("tiny")
    cfg.data.path = str(synth)
    assert cfg.loss.depth_convention == "camera_axis" and cfg.loss.depth_target == "relative"
    factor = truth_target_factor(cfg, metric_depth=False)
    res = cfg.data.resolution
    cams = canonical_cameras(1, cfg.render.camera_distance, cfg.render.fov_deg)
    _, dirs = cams.rays(res, res)  # (1, H, W, 3) unit directions
    forward = -cams.c2w[0, :3, 2]  # the camera looks down its -z axis
    cos = (dirs[0] @ forward).float()
    t = torch.rand(1, 1, res, res) + 1.0
    torch.testing.assert_close((1.0 / t) * factor, 1.0 / (t * cos), rtol=1e-5, atol=0)
    # already right: the metric loss (1 / t against the samples' 1 / t), the ray convention, a cache
    assert truth_target_factor(cfg, metric_depth=True) is None
    assert truth_target_factor(replace(cfg, loss=replace(cfg.loss, depth_convention="ray")), False) is None
    assert truth_target_factor(replace(cfg, data=replace(cfg.data, depth_cache=str(tmp_path))), False) is None


def test_metric_depth_target_is_chosen_for_synthetic_data_and_refused_for_relative_depth(synth, tmp_path):
    from PIL import Image

    from vq3d.config import ConfigError
    from vq3d.losses.reconstruction import LogitLaplaceLoss
    from vq3d.losses.stage1 import generator_losses
    from vq3d.train.stage1 import uses_metric_depth

    cfg = load_config("tiny")
    cfg.data.path = str(synth)
    assert not uses_metric_depth(cfg)  # the paper's relative loss is the default
    cfg.loss.depth_target = "auto"
    assert uses_metric_depth(cfg)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 16)).save(photos / "a.png")
    cfg.data.path = str(photos)
    assert not uses_metric_depth(cfg)  # pseudo-GT depth is relative
    cfg.loss.depth_target = "metric"
    with pytest.raises(ConfigError, match="only synthetic data"):
        uses_metric_depth(cfg)

    model = Stage1Model(cfg).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(images)
        args = (images, torch.rand(2, 1, 16, 16) + 0.3, out["quant"], out["canonical"], None, cfg.loss,
                cfg.render, LogitLaplaceLoss(), None, None, None)
        _, metric = generator_losses(*args, step=0, metric_depth=True)
        _, relative = generator_losses(*args, step=0)
    assert "scale" not in metric and "scale" in relative  # Eq. 3 is moot at s = 1
    assert metric["depth"] != relative["depth"]


def test_steps_scale_the_schedule_shape_and_keep_what_was_set(synth, tmp_path):
    from vq3d.config import demo
    from vq3d.train.runs import read_run_config
    from vq3d.train.planner import scale_schedule

    cfg = demo()  # 9,200 steps: GAN from 8,740, warm-ups of 100
    cfg.loss.depth_scale_floor_steps = 600  # a fading s* floor scales too (0, the whole run, stays 0)
    scale_schedule(cfg, 16000)
    f = 16000 / 9200
    assert (cfg.train.steps, cfg.loss.gan_start_steps) == (16000, round(8740 * f))
    assert (cfg.train.warmup_steps, cfg.loss.gan_warmup_steps) == (round(100 * f), round(100 * f))
    assert cfg.loss.depth_scale_floor_steps == round(600 * f)
    assert cfg.loss.gan_start_steps / cfg.train.steps == pytest.approx(8740 / 9200, abs=1e-4)
    # through the CLI: --set values are kept, the rest follows --steps (tiny: 20 steps, warm-up 2)
    run = tmp_path / "r"
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(run), "--steps", "40",
                 "--set", "loss.gan_start_steps=30", "--set", "loss.gan_warmup_steps=5"]) == 0
    saved = read_run_config(run)
    assert (saved.train.steps, saved.train.warmup_steps) == (40, 4)
    assert (saved.loss.gan_start_steps, saved.loss.gan_warmup_steps) == (30, 5)
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(synth), "--out", str(tmp_path / "x"),
                 "--steps", "5", "--set", "train.steps=7"]) == 2  # one number of steps, not two
