"""Refining a reconstruction to its photo (vq3d.refine, `vq3d reconstruct --refine`, `vq3d eval
refine`): 0 steps is the one pass exactly; refinement lowers its own objective and moves only the
scene (the MLPs stay frozen); the depth loss joins when a target is given; the CLI paths work."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vq3d.cli import main
from vq3d.refine import Refiner, refine_scene
from vq3d.train.runs import load_stage1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    data, run = root / "data", root / "run"
    assert main(["synth", "--out", str(data), "--n", "20", "--res", "16", "--views", "2", "--no-progress"]) == 0
    assert main(["train", "stage1", "--preset", "tiny", "--data", str(data), "--out", str(run),
                 "--set", "train.steps=6", "--set", "loss.gan_start_steps=100"]) == 0
    return data, run


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("target", ["planes", "latents"])
def test_refinement_lowers_its_objective_and_moves_only_the_scene(run, target):
    model, _ = load_stage1(run[1])
    refiner = Refiner(model, run[1])
    image = _image()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    one_pass, _, at_zero = refine_scene(refiner, image, 0, target, at=(0,))
    with torch.no_grad():
        expected = model.decode_codes(model.quantize(image).codes)
    assert torch.equal(one_pass, expected) and torch.equal(at_zero[0], expected)  # 0 steps: the one pass
    torch.manual_seed(1)
    before, _ = refiner.loss(one_pass, image, None)
    refined, terms, snapshots = refine_scene(refiner, image, 30, target, lr=0.02, progress=False, at=(10, 30))
    torch.manual_seed(1)  # the same sample jitter for both evaluations
    after, _ = refiner.loss(refined, image, None)
    assert float(after.detach()) < float(before.detach())
    assert torch.equal(snapshots[30], refined) and not torch.equal(snapshots[10], refined)
    assert {"mse", "distortion", "interlevel"} <= set(terms) and "depth" not in terms
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # the model is untouched
    assert all(p.requires_grad for p in model.parameters())  # and left trainable as it was


def test_the_refine_objective_is_eq4_without_vq_and_gan_recomputed_from_primitives(run):
    """The run's weights times each term, the terms written out here from the render: MSE,
    logit-Laplace at the run's learned scale (read from its checkpoint file), Eq. 1-2 by a
    weighted lstsq on camera-axis disparities in look-at units against the robust target, and
    Mip-NeRF 360's regularizers; no VQ and no GAN term (nothing is quantized, no discriminator)."""
    from safetensors.torch import load_file

    from vq3d.losses.nerf import distortion_loss, interlevel_loss
    from vq3d.train.checkpoint import latest_checkpoint

    model, cfg = load_stage1(run[1])
    refiner = Refiner(model, run[1])
    log_b = load_file(str(latest_checkpoint(run[1]) / "logit_laplace.safetensors"))["log_scale"]
    assert torch.equal(refiner.logit_laplace.log_scale.detach(), log_b) and float(log_b.abs().sum()) > 0
    image, target = _image(), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        scene = model.decode_codes(model.quantize(image).codes)
        torch.manual_seed(7)
        total, terms = refiner.loss(scene, image, target)
        torch.manual_seed(7)  # the same jitter
        out = model.render(scene, model.canonical_cameras(1), train=True, step=Refiner.AFTER_TRAINING)
    assert not {"vq", "gan_main", "gan_novel"} & set(terms)
    c, eps = cfg.loss, cfg.loss.logit_laplace_eps
    mse = ((out.rgb - image) ** 2).mean()
    x = eps + (1 - 2 * eps) * (image + 1) / 2
    mu = torch.logit(eps + (1 - 2 * eps) * ((out.rgb + 1) / 2).clamp(0, 1))
    b = log_b.view(1, 3, 1, 1)
    loglap = ((torch.logit(x) - mu).abs() * torch.exp(-b) + b + torch.log(2 * x * (1 - x))).mean()
    D = (out.sample_disparity / out.axis_cos[..., None] * cfg.render.camera_distance)[0].double()
    W = out.weights[0].double()
    flat = target.flatten().double()
    srt, n = flat.sort().values, flat.numel()
    d = (flat - srt[round(0.02 * (n - 1))]) / (srt[round(0.98 * (n - 1))] - srt[round(0.02 * (n - 1))])
    A = torch.stack([D.flatten(), torch.ones_like(D.flatten())], dim=1)
    sw = W.flatten().sqrt()
    s, t = torch.linalg.lstsq(A * sw[:, None], (d[:, None].expand_as(D).flatten() * sw)[:, None]).solution.flatten()
    depth = (W * (s * D + t - d[:, None]) ** 2).sum() / n
    scale = max(0.0, -float(s)) + c.small_scale * max(float(s) - c.max_scale, 0.0)
    distortion = distortion_loss(out.weights, out.spacing_edges)
    interlevel = interlevel_loss(out.weights, out.spacing_edges, out.proposal_weights, out.proposal_spacing_edges)
    for name, value in (("mse", mse), ("logit_laplace", loglap), ("depth", depth), ("scale", scale),
                        ("distortion", distortion), ("interlevel", interlevel)):
        assert float(terms[name]) == pytest.approx(float(value), rel=1e-3, abs=1e-6), name
    expected = (c.mse * mse + c.logit_laplace * loglap + c.depth * depth + c.scale * scale
                + c.distortion * distortion + c.interlevel * interlevel)
    assert float(total) == pytest.approx(float(expected), rel=1e-4)


def test_reconstruct_refine_and_eval_refine_from_the_command_line(run, tmp_path, tiny_dpt, capsys):
    data, stage1 = run
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 16), (200, 40, 30)).save(photo)
    out = tmp_path / "out"
    assert main(["reconstruct", "--stage1", str(stage1), str(photo), "--out", str(out), "--frames", "0",
                 "--mesh-res", "8", "--refine", "3", "--depth-model", tiny_dpt]) == 0
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["refine_steps"] == 3 and "depth" in summary["images"][0]["refine"]["last_losses"]
    # without the depth model the same refinement ends elsewhere: the depth loss moved the scene
    plain = tmp_path / "plain"
    assert main(["reconstruct", "--stage1", str(stage1), str(photo), "--out", str(plain), "--frames", "0",
                 "--mesh-res", "8", "--refine", "3"]) == 0
    assert "depth" not in json.loads((plain / "reconstruct.json").read_text())["images"][0]["refine"]["last_losses"]
    planes = [load_file(str(next(o.glob("*/triplanes.safetensors")))) for o in (out, plain)]
    assert planes[0].keys() == planes[1].keys()
    assert any(not torch.equal(planes[0][k], planes[1][k]) for k in planes[0])
    capsys.readouterr()
    assert main(["eval", "refine", "--run", str(stage1), "--data", str(data), "--steps", "0,2", "--max-scenes", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["planes"]["0"] == result["latents"]["0"]  # both start from the one pass
    assert set(result["planes"]) == {"0", "2", "seconds_per_scene"}
    assert main(["eval", "refine", "--run", str(stage1), "--data", str(data), "--steps", "x"]) == 2
