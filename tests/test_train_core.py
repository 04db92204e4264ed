"""Trainer core: checkpoints, lr schedule, resumable sampler, EMA."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vq3d.train import checkpoint as ckpt_mod
from vq3d.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from vq3d.train.ema import EMA
from vq3d.train.sampler import ResumableBatchSampler
from vq3d.train.planner import FitClock, fit_to_time
from vq3d.train.schedule import lr_at, set_lr


class Tiny(nn.Module):
    """Tied weights, a BatchNorm (float and int64 buffers), and a nested submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5)
        self.head.weight = self.emb.weight  # tied, as in a GPT
        self.norm = nn.BatchNorm1d(5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(self.emb(ids)))


class FakeCompiled(nn.Module):
    """Same structure as torch.compile's OptimizedModule (keys gain `_orig_mod.`), without dynamo."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(*args)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(0, 5, (6,), generator=g)
        loss = model(ids).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    return model, opt


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_bit_exact_including_next_step(tmp_path):
    model, opt = make(0)
    train_steps(model, opt, 3, seed=1)
    save_checkpoint(tmp_path, 3, {"model": model}, {"opt": opt}, {"best": 1.5, "tag": "x"})

    model2, opt2 = make(123)  # different init: everything must come from the checkpoint
    state = load_checkpoint(tmp_path, {"model": model2}, {"opt": opt2})
    assert state == {"best": 1.5, "tag": "x", "step": 3}
    assert_same_state(model.state_dict(), model2.state_dict())
    assert model2.head.weight is model2.emb.weight  # tie survives
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]  # betas stay a tuple
    for pid in s1["state"]:
        assert_same_state(s1["state"][pid], s2["state"][pid])
        assert s2["state"][pid]["step"].dim() == 0

    train_steps(model, opt, 1, seed=9)
    train_steps(model2, opt2, 1, seed=9)
    assert_same_state(model.state_dict(), model2.state_dict())


def test_rng_states_are_restored(tmp_path):
    model, _ = make(0)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path, 1, {"model": model})
    expected = (torch.rand(4), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    load_checkpoint(tmp_path, {"model": model})
    got = (torch.rand(4), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_checkpoint_has_no_pickle_and_loads_without_unpickling(tmp_path, monkeypatch):
    model, opt = make(0)
    train_steps(model, opt, 1, seed=1)
    folder = save_checkpoint(tmp_path, 1, {"model": model}, {"opt": opt})
    assert {p.suffix for p in folder.iterdir()} == {".safetensors", ".json"}

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model2, opt2 = make(1)
    load_checkpoint(folder, {"model": model2}, {"opt": opt2})
    assert_same_state(model.state_dict(), model2.state_dict())


def test_saved_keys_have_no_wrapper_prefixes_and_load_into_wrapped_models(tmp_path):
    torch.manual_seed(0)
    outer = nn.Module()
    outer.enc = FakeCompiled(nn.Linear(3, 2))  # a compiled submodule
    outer.dec = nn.Linear(2, 3)
    wrapped = FakeCompiled(outer)
    folder = save_checkpoint(tmp_path, 1, {"model": wrapped}, rng=False)
    keys = set(load_file(str(folder / "model.safetensors")))
    assert keys == {"enc.weight", "enc.bias", "dec.weight", "dec.bias"}

    plain = nn.Module()
    plain.enc, plain.dec = nn.Linear(3, 2), nn.Linear(2, 3)
    load_checkpoint(tmp_path, {"model": plain})
    assert torch.equal(plain.enc.weight, outer.enc._orig_mod.weight)
    again = FakeCompiled(nn.Module())
    again._orig_mod.enc = FakeCompiled(nn.Linear(3, 2))
    again._orig_mod.dec = nn.Linear(2, 3)
    load_checkpoint(tmp_path, {"model": again})
    assert torch.equal(again._orig_mod.enc._orig_mod.bias, outer.enc._orig_mod.bias)


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = make(0)
    save_checkpoint(tmp_path, 10, {"model": model}, {"opt": opt})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, opt, 1, seed=1)

    real_save = ckpt_mod.save_file
    calls = []

    def crash_on_second_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_on_second_file)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, 20, {"model": model}, {"opt": opt})
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)

    assert latest_checkpoint(tmp_path).name == "step_00000010"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000010"
    assert not (tmp_path / "checkpoints" / "step_00000020").exists()
    fresh, fresh_opt = make(7)
    assert load_checkpoint(tmp_path, {"model": fresh}, {"opt": fresh_opt})["step"] == 10
    assert_same_state(before, fresh.state_dict())


def test_killed_save_leftovers_are_ignored_and_cleaned(tmp_path):
    model, _ = make(0)
    save_checkpoint(tmp_path, 1, {"model": model})
    root = tmp_path / "checkpoints"
    (root / ".tmp_step_00000002_999").mkdir()  # a save killed before its rename
    (root / "latest").write_text("step_00000002\n")  # pointer to something that is not there
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    save_checkpoint(tmp_path, 3, {"model": model})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001", "step_00000003"]


def test_pruning_keeps_newest_and_resaving_a_step_replaces_it(tmp_path):
    model, _ = make(0)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"model": model}, rng=False, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000004", "step_00000005"]
    nn.init.zeros_(model.emb.weight)
    save_checkpoint(tmp_path, 4, {"model": model}, rng=False, keep=2)  # resumed run re-saves 4
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    resaved = load_file(str(root / "step_00000004" / "model.safetensors"))
    assert torch.count_nonzero(resaved["emb.weight"]) == 0
    for step in range(6, 9):
        save_checkpoint(tmp_path, step, {"model": model}, rng=False, keep=0)
    assert len(list(root.glob("step_*"))) == 5


def test_mismatched_model_gives_a_clear_error(tmp_path):
    model, _ = make(0)
    save_checkpoint(tmp_path, 1, {"model": model}, rng=False)
    other = nn.Sequential(nn.Linear(4, 5))
    with pytest.raises(CheckpointError, match=r"missing keys: 0\.bias, 0\.weight.*unexpected keys"):
        load_checkpoint(tmp_path, {"model": other})
    bigger = Tiny()
    bigger.emb = nn.Embedding(7, 4)
    bigger.head.weight = bigger.emb.weight
    with pytest.raises(CheckpointError, match=r"emb\.weight \(5, 4\) vs \(7, 4\)"):
        load_checkpoint(tmp_path, {"model": bigger})
    with pytest.raises(CheckpointError, match="no module 'disc'"):
        load_checkpoint(tmp_path, {"disc": model})
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_checkpoint(tmp_path / "elsewhere", {"model": model})


def test_save_and_load_weights_round_trip(tmp_path):
    model, _ = make(0)
    save_weights(tmp_path / "w" / "ema.safetensors", FakeCompiled(model), {"step": "7"})
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["ema.safetensors"]
    fresh, _ = make(3)
    load_weights(tmp_path / "w" / "ema.safetensors", fresh)
    assert_same_state(model.state_dict(), fresh.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_checkpoint_from_cpu_loads_into_gpu_model_and_optimizer(tmp_path):
    model, opt = make(0)
    train_steps(model, opt, 2, seed=1)
    save_checkpoint(tmp_path, 2, {"model": model}, {"opt": opt})
    gpu_model, _ = make(1)
    gpu_model.cuda()
    gpu_opt = torch.optim.AdamW(gpu_model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    load_checkpoint(tmp_path, {"model": gpu_model}, {"opt": gpu_opt})
    assert gpu_model.emb.weight.is_cuda
    assert torch.equal(gpu_model.emb.weight.cpu(), model.emb.weight)
    exp_avg = next(iter(gpu_opt.state.values()))["exp_avg"]
    assert exp_avg.is_cuda


# ----------------------------------------------------------------------------- lr schedule


def test_lr_schedule_values_at_known_steps():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(4, **kw) == pytest.approx(0.5)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(35, **kw) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(10_000, **kw) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 100, 0.0) == pytest.approx(2.0)


def test_fit_to_time_scales_steps_and_gan_start_to_fill_the_time_left():
    # 0.1 s per step, GAN steps 2x: 1000 pre-GAN + 200 GAN steps take 100 + 40 = 140 s
    assert fit_to_time(1200, 1000, 0, 0.1, 2.0, 140.0) == (1200, 1000)
    steps, gan = fit_to_time(1200, 1000, 40, 0.1, 2.0, 280.0 - 4.0)  # twice the time, 40 steps done
    assert (steps, gan) == (2400, 2000)
    steps, gan = fit_to_time(1200, 1000, 0, 0.1, 2.0, 70.0)  # a machine half as fast
    assert (steps, gan) == (600, 500)
    assert fit_to_time(1200, 5000, 0, 0.1, 2.0, 60.0) == (600, 2500)  # no GAN in the run: steps only count
    assert fit_to_time(1200, 1000, 40, 0.1, 2.0, 0.0)[0] == 41  # no time left: stop after the next step


def test_fit_clock_refits_from_the_mean_of_each_phase():
    # start-up steps take 5 s, later ones 1 s; GAN steps (from step index 400) 2 s, the first 3 of them 9 s
    clock, now, refits = FitClock(probe=(10, 40), every=250, gan_probe=50, settle=10), 0.0, {}
    for step in range(700):
        gan = step >= 400
        now += 5.0 if step < 3 else 9.0 if 400 <= step < 403 else 2.0 if gan else 1.0
        due = clock.tick(step + 1, now, gan)
        if due is not None:
            refits[step + 1] = due
    # first at step 40 (timed from step 10, like the probe), then every 250 steps; the GAN phase
    # refits once 50 of its steps are timed after 10 settling ones, then 250 steps after that
    assert sorted(refits) == [40, 290, 460]
    assert refits[40] == pytest.approx((1.0, False)) and refits[290] == pytest.approx((1.0, False))
    assert refits[460] == pytest.approx((2.0, True))
    assert clock.tick(711, now + 22.0, True) == pytest.approx((2.0, True))  # 250 after the last one


def test_set_lr_applies_group_scales():
    p, q = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [p]}, {"params": [q], "lr_scale": 0.5}], lr=1.0)
    set_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1]


# ----------------------------------------------------------------------------- sampler


def test_sampler_is_deterministic_and_each_epoch_is_a_permutation():
    a = ResumableBatchSampler(12, 3, seed=4, total_steps=12)
    b = ResumableBatchSampler(12, 3, seed=4, total_steps=12)
    seq = list(a)
    assert seq == list(b) and len(seq) == len(a) == 12
    assert a.steps_per_epoch == 4
    for epoch in range(3):
        flat = sum(seq[epoch * 4 : (epoch + 1) * 4], [])
        assert sorted(flat) == list(range(12))
    assert seq[:4] != seq[4:8]  # a new order each epoch
    assert list(ResumableBatchSampler(12, 3, seed=5, total_steps=4)) != seq[:4]


def test_sampler_resume_continues_the_uninterrupted_sequence():
    full = list(ResumableBatchSampler(10, 3, seed=1, total_steps=20))  # drops 1 item per epoch
    resumed = list(ResumableBatchSampler(10, 3, seed=1, start_step=7, total_steps=20))
    assert resumed == full[7:]


def test_sampler_ranks_are_disjoint_and_cover_the_global_batch():
    single = ResumableBatchSampler(16, 4, seed=2, total_steps=8)
    r0 = ResumableBatchSampler(16, 2, seed=2, rank=0, world_size=2, total_steps=8)
    r1 = ResumableBatchSampler(16, 2, seed=2, rank=1, world_size=2, total_steps=8)
    for g, a, b in zip(single, r0, r1):
        assert len(a) == len(b) == 2
        assert not set(a) & set(b)
        assert a + b == g


def test_sampler_wraps_when_not_dropping_and_rejects_tiny_datasets():
    s = ResumableBatchSampler(5, 2, seed=0, total_steps=3, drop_last=False)
    assert s.steps_per_epoch == 3
    flat = sum(list(s), [])
    assert set(flat) == set(range(5)) and len(flat) == 6
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(3, 2, seed=0, world_size=2)


def test_sampler_drives_a_dataloader_with_workers():
    data = torch.arange(20).float()
    sampler = ResumableBatchSampler(20, 4, seed=3, start_step=2, total_steps=7)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=2)
    batches = [b.long().tolist() for b in loader]
    assert batches == [sampler.batch_indices(s) for s in range(2, 7)]


# ----------------------------------------------------------------------------- EMA


def test_ema_math_on_a_scalar_parameter():
    model = nn.Linear(1, 1, bias=False)
    model.register_buffer("count", torch.tensor(0))
    nn.init.constant_(model.weight, 2.0)
    ema = EMA(FakeCompiled(model), decay=0.9)
    nn.init.constant_(model.weight, 4.0)
    model.count += 3
    ema.update(FakeCompiled(model))
    assert ema.shadow.weight.item() == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    assert ema.shadow.count.item() == 3
    ema.update(model)
    assert ema.shadow.weight.item() == pytest.approx(0.9 * 2.2 + 0.1 * 4.0)
    assert not ema.shadow.weight.requires_grad
    ema.copy_to(model)
    assert model.weight.item() == pytest.approx(2.38)
    assert model.weight.requires_grad


def test_ema_decay_warms_up_with_the_step():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = EMA(model, decay=0.999)
    assert [ema.decay_at(s) for s in (0, 10, 100_000)] == pytest.approx([0.1, 11 / 20, 0.999])
    assert ema.decay_at(None) == 0.999
    nn.init.constant_(model.weight, 1.0)
    ema.update(model, step=0)  # keeps only 10% of the initial weights at the first step
    assert ema.shadow.weight.item() == pytest.approx(0.9)


def test_ema_shadow_is_fp32_for_a_bf16_model(tmp_path):
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.5)
    assert ema.shadow.weight.dtype == torch.float32
    ema.update(model)
    ema.copy_to(model)
    assert model.weight.dtype == torch.bfloat16
    save_weights(tmp_path / "ema.safetensors", ema.shadow)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    load_weights(tmp_path / "ema.safetensors", other.shadow)
    assert torch.equal(other.shadow.weight, ema.shadow.weight)
