"""A Stage-1 training step under the GPU execution policy: no host synchronisation at all (it is
read only when logging), and a non-finite update is skipped on the device."""

import pytest
import torch

from vq3d.config import load_config
from vq3d.train.run_control import NonFiniteLossError
from vq3d.train.panels import stage1_panel
from vq3d.train.stage1 import Stage1Trainer, read_scalars
from vq3d.utils.host_sync import HostSyncRecorder

# every path of a step: ray subsets before the GAN, whole images, novel views and both
# discriminators after it, lazy R1, EMA, dead-code restarts; the scatter a GPU would use
OVERRIDES = ["train.device=cpu", "render.scatter=index_add", "render.train_rays=32", "loss.gan_start_steps=2",
             "loss.r1_every=2", "model.dead_code_steps=1", "train.ema_decay=0.9", "train.image_every=1000",
             "train.max_bad_steps=3"]


def _batch(seed: int, nan: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    if nan:
        image[0, 0, 0, 0] = float("nan")
    return {"image": image, "disparity": torch.rand(4, 1, 16, 16, generator=g)}


def _trainer(tmp_path) -> Stage1Trainer:
    return Stage1Trainer(load_config("tiny", [], OVERRIDES), tmp_path)


def test_a_training_step_never_synchronises_with_the_host(tmp_path):
    trainer = _trainer(tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with HostSyncRecorder() as recorder:
        for step in range(5):
            logs = trainer.train_step(_batch(step))
            trainer.step += 1
    assert recorder.syncs == [], "\n".join(f"{s.why}: {s.where}" for s in recorder.syncs)
    values = read_scalars(logs)  # the log step's one read
    assert values["skipped"] == 0 and "d_main" in values and "r1_main" in values  # step 4: an R1 step
    assert values["codes_restarted"] >= 0
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("decoder" in k for k in changed) and any("codebook" in k for k in changed)


def test_a_non_finite_step_is_skipped_on_the_device_and_too_many_stop_the_run(tmp_path):
    trainer = _trainer(tmp_path)
    for step in range(3):  # into the GAN phase, so both optimizers hold state
        trainer.train_step(_batch(step))
        trainer.step += 1
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    d_weights = {k: v.clone() for k, v in trainer.d_main.state_dict().items()}
    g_state = {k: v.clone() for k, v in trainer.opt_g.state[trainer.opt_g.param_groups[0]["params"][0]].items()}

    logs = read_scalars(trainer.train_step(_batch(3, nan=True)))
    trainer.step += 1
    assert logs["skipped"] == 1 and logs["d_skipped"] == 1 and logs["codes_restarted"] == 0
    for k, v in trainer.model.state_dict().items():
        if k.endswith("steps_unused"):
            continue  # the usage counter counts the step's codes, as for any forward
        assert torch.equal(v, weights[k]), k
    assert all(torch.equal(v, d_weights[k]) for k, v in trainer.d_main.state_dict().items())
    state = trainer.opt_g.state[trainer.opt_g.param_groups[0]["params"][0]]
    assert all(torch.equal(state[k], g_state[k]) for k in g_state)  # moments and step count too
    assert trainer.guard.check() == 1

    trainer.train_step(_batch(4))  # a good step resets the run of bad ones
    trainer.step += 1
    for step in range(5, 8):
        trainer.train_step(_batch(step, nan=True))
        trainer.step += 1
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row; last finite step 4"):
        trainer.guard.check()


def test_a_non_fused_optimizer_state_loads_into_the_fused_guarded_one():
    from vq3d.train.step_guard import StepGuard, fused_adamw, keep_fused

    p = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.AdamW([p], lr=0.1)  # what checkpoints of earlier versions hold
    p.grad = torch.ones(3)
    old.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt = fused_adamw([q], lr=0.1)
    opt.load_state_dict(old.state_dict())
    assert not opt.param_groups[0]["fused"]  # loading took the old options
    keep_fused(opt)
    assert opt.param_groups[0]["fused"] and opt.state[q]["step"].dtype == torch.float32
    guard = StepGuard(torch.device("cpu"), max_bad_steps=5)
    q.grad = torch.full((3,), float("nan"))
    before = q.detach().clone()
    guard.step(opt, guard.flag(q.grad))
    assert torch.equal(q, before) and float(opt.state[q]["step"]) == 1.0  # skipped: nothing moved


def test_ema_leaves_its_average_alone_on_a_skipped_step():
    from vq3d.train.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    shadow = ema.shadow.weight.clone()
    ema.update(model, skip=torch.tensor(1.0))
    assert torch.equal(ema.shadow.weight, shadow)
    ema.update(model, skip=torch.tensor(0.0))
    assert torch.allclose(ema.shadow.weight, 0.5 * shadow + 0.5 * model.weight)


def test_an_early_low_resolution_novel_view_gan_runs_before_the_main_one(tmp_path, monkeypatch):
    from vq3d.models.stage1 import Stage1Model

    sizes = []
    forward = Stage1Model.forward

    def recording(self, images, novel_c2w=None, step=None, generator=None, pixels=None, novel_size=None):
        out = forward(self, images, novel_c2w, step, generator, pixels, novel_size)
        novel = out["novel"]
        sizes.append((pixels is not None, None if novel is None else tuple(novel.rgb.shape[-2:]),
                      out["novel_real"] is not None))
        return out

    monkeypatch.setattr(Stage1Model, "forward", recording)
    cfg = load_config("tiny", [], OVERRIDES + ["loss.novel_gan_start_steps=1", "loss.novel_gan_resolution=8",
                                               "loss.gan_start_steps=3", "loss.gan_warmup_steps=0",
                                               "train.image_every=2"])
    trainer = Stage1Trainer(cfg, tmp_path)
    logs = []
    with HostSyncRecorder() as recorder:
        for step in range(4):
            logs.append(read_scalars(trainer.train_step(_batch(step))))
            trainer.step += 1
    assert recorder.syncs == []
    # step 0: nothing adversarial; 1-2: ray subsets and 8x8 novel views against 8x8 canonical
    # renders, the novel-view discriminator alone; 3: whole images, both
    assert sizes == [(True, None, False), (True, (8, 8), True), (True, (8, 8), True), (False, (8, 8), True)]
    assert "gan_novel" not in logs[0] and "d_novel" not in logs[0]
    assert "gan_novel" in logs[1] and "d_novel" in logs[1] and "gan_main" not in logs[1] and "d_main" not in logs[1]
    assert logs[1]["novel_gan_weight"] == pytest.approx(0.1) and logs[1]["gan_weight"] == 0.0
    assert "gan_main" in logs[3] and "d_main" in logs[3] and "gan_novel" in logs[3]
    panel = stage1_panel(trainer.model, *trainer._last, cfg)  # the log picture shows 8x8 views at 16x16
    assert panel.shape[0] == 3 and panel.shape[-1] >= 5 * 16


def _first_updates(tmp_path, sets: list[str]) -> tuple[Stage1Trainer, dict[str, torch.Tensor]]:
    """A fresh tiny trainer's parameters' changes over one step (the same init and batch each call)."""
    torch.manual_seed(0)
    trainer = Stage1Trainer(load_config("tiny", [], ["train.device=cpu", "render.train_rays=32", *sets]),
                            tmp_path / "_".join(sets or ["default"]))
    named = {**dict(trainer.model.named_parameters()),
             **{f"logit_laplace.{k}": v for k, v in trainer.logit_laplace.named_parameters()}}
    before = {k: v.detach().clone() for k, v in named.items()}
    trainer.train_step(_batch(0))
    trainer.step += 1
    return trainer, {k: v.detach() - before[k] for k, v in named.items()}


def test_field_lr_scale_multiplies_the_field_mlps_update_and_no_other(tmp_path):
    """Adam's first update is lr * g / (|g| + eps) per element, so with the same gradients the
    field MLPs' first step is `field_lr_scale` times as long and every other parameter's
    (the logit-Laplace scale's too) is the same; a resumed run rebuilds the groups and loads
    their optimizer state."""
    _, plain = _first_updates(tmp_path, [])
    trainer, scaled = _first_updates(tmp_path, ["train.field_lr_scale=4"])
    assert [g.get("lr_scale", 1.0) for g in trainer.opt_g.param_groups] == [1.0, 4.0]
    own = [k for k in plain if k.startswith(("renderer.proposal_mlp", "renderer.nerf_mlp"))]
    assert own and len(trainer.opt_g.param_groups[1]["params"]) == len(own)
    for k, d1 in plain.items():
        if k in own:
            assert d1.abs().max() > 0
            torch.testing.assert_close(scaled[k], 4.0 * d1, rtol=1e-3, atol=1e-9)
        else:
            torch.testing.assert_close(scaled[k], d1, rtol=0, atol=0)
    trainer.save()
    resumed = Stage1Trainer(trainer.cfg, trainer.run_dir, start_step=1)
    assert [g.get("lr_scale", 1.0) for g in resumed.opt_g.param_groups] == [1.0, 4.0]
    for new, old in zip(resumed.opt_g.param_groups, trainer.opt_g.param_groups):
        assert all(torch.equal(resumed.opt_g.state[p]["exp_avg"], trainer.opt_g.state[q]["exp_avg"])
                   for p, q in zip(new["params"], old["params"]))


@pytest.mark.parametrize("setting", ["train.field_lr_scale=0", "train.field_lr_ramp_steps=-1"])
def test_the_field_rate_settings_are_checked(setting):
    from vq3d.config.schema import ConfigError

    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config("tiny", [], [setting])


def test_the_field_rate_ramps_from_the_common_rate_to_its_multiple(tmp_path):
    trainer = Stage1Trainer(load_config("tiny", [], ["train.device=cpu", "render.train_rays=32",
                                                     "train.field_lr_scale=4", "train.field_lr_ramp_steps=10"]),
                            tmp_path)
    ratios = []
    for step in (0, 5, 10, 20):
        trainer.step = step
        trainer.train_step(_batch(step))
        base, field = (g["lr"] for g in trainer.opt_g.param_groups)
        ratios.append(field / base)
    assert ratios == pytest.approx([1.0, 2.5, 4.0, 4.0])
