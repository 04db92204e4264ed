"""Refining a reconstruction to its photo (vq3d.refine, `vq3d reconstruct --refine`, `vq3d eval
refine`): 0 steps is the one pass exactly; refinement lowers its own objective and moves only the
scene (the MLPs stay frozen); the depth loss joins when a target is given; the CLI paths work."""

import json

import pytest
import torch
from PIL import Image

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


def test_a_target_disparity_adds_the_depth_loss(run):
    model, _ = load_stage1(run[1])
    _, terms, _ = refine_scene(Refiner(model, run[1]), _image(), 2, "planes", target_disparity=torch.rand(1, 1, 16, 16),
                               progress=False)
    assert terms["depth"] > 0


def test_reconstruct_refine_and_eval_refine_from_the_command_line(run, tmp_path, tiny_dpt, capsys):
    data, stage1 = run
    photo = tmp_path / "photo.png"
    Image.new("RGB", (20, 16), (200, 40, 30)).save(photo)
    out = tmp_path / "out"
    assert main(["reconstruct", "--stage1", str(stage1), str(photo), "--out", str(out), "--frames", "0",
                 "--mesh-res", "8", "--refine", "3", "--depth-model", tiny_dpt]) == 0
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["refine_steps"] == 3 and summary["images"][0]["refine"]["last_losses"]["depth"] >= 0
    capsys.readouterr()
    assert main(["eval", "refine", "--run", str(stage1), "--data", str(data), "--steps", "0,2", "--max-scenes", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["planes"]["0"] == result["latents"]["0"]  # both start from the one pass
    assert set(result["planes"]) == {"0", "2", "seconds_per_scene"}
    assert main(["eval", "refine", "--run", str(stage1), "--data", str(data), "--steps", "x"]) == 2
