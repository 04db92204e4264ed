"""`train.compile` compiles the ViT encoder and decoder (inductor, on CPU here) as one graph each:
the same training steps as eager, and no recompilation as the step number changes."""

import torch
import torch._dynamo

from vq3d.config import load_config
from vq3d.train.panels import stage1_panel
from vq3d.train.stage1 import Stage1Trainer, read_scalars

OVERRIDES = ["train.device=cpu", "loss.gan_start_steps=2", "loss.r1_every=2"]


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "disparity": torch.rand(4, 1, 16, 16, generator=g)}


def _five_steps(tmp_path, compile_: bool) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    trainer = Stage1Trainer(load_config("tiny", [], OVERRIDES + [f"train.compile={str(compile_).lower()}"]), tmp_path)
    logs = []
    for step in range(5):  # steps 0-1 before the GAN, 2-4 with it (novel views, discriminators)
        logs.append(read_scalars(trainer.train_step(_batch(step))))
        trainer.step += 1
        if compile_ and step == 0:
            torch.compiler.set_stance("fail_on_recompile")  # any later recompilation raises
    torch.compiler.set_stance("default")
    return logs, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_compiled_regions_match_eager_and_never_recompile(tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_logs, compiled_state = _five_steps(tmp_path / "compiled", compile_=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # encoder, decoder: no breaks
    eager_logs, eager_state = _five_steps(tmp_path / "eager", compile_=False)
    for a, b in zip(compiled_logs, eager_logs):
        for key in ("loss", "mse", "vq", "depth"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (key, a[key], b[key])
    for key, value in eager_state.items():  # same names (compiled in place) and weights
        assert torch.allclose(compiled_state[key].float(), value.float(), atol=1e-4), key


def test_log_panel_runs_eager_under_compiled_regions(tmp_path):
    """The panel's no-grad reconstruction (ray-subset steps) does not compile the regions again."""
    torch._dynamo.reset()
    cfg = load_config("tiny", [], ["train.device=cpu", "train.compile=true", "render.train_rays=32",
                                  "train.image_every=1", "loss.gan_start_steps=100"])
    trainer = Stage1Trainer(cfg, tmp_path)
    trainer.train_step(_batch(0))
    images, out = trainer._last
    assert out["canonical"].rgb.shape[-2:] != images.shape[-2:]  # a ray subset: the panel renders again
    with torch.compiler.set_stance("fail_on_recompile"):
        panel = stage1_panel(trainer.model, images, out, cfg)
    assert panel.shape[0] == 3 and torch.isfinite(panel).all()
    assert trainer.model.training  # the panel restores training mode
