"""`vq3d bench paper-step` on the tiny preset (the real benchmark uses the paper preset: minutes,
GiBs): the properties its numbers stand for (a renderer whose operator calls do not grow with the
rays under the GPU policy, FLOPs that scale with the work, a batch search that finds the largest
fitting batch), and the two measuring tools it rests on, each against an independent count."""

import json
import tempfile
from dataclasses import replace

import pytest
import torch

from vq3d.bench.fake_step import PeakMemory, fake_step_memory
from vq3d.bench.flops import count_flops
from vq3d.bench.opcount import count_operator_calls
from vq3d.bench.paper_step import _gpu_policy, _render_pass, flops, largest_fitting, main
from vq3d.config import load_config
from vq3d.models.vit import Transformer
from vq3d.train.stage1 import Stage1Trainer


def test_paper_step_benchmark_reports_operator_calls_flops_and_memory(capsys):
    argv = ["--preset", "tiny", "--threads", "1", "--memory-batches", "1,2", "--max-batch", "8", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step_finite"] and result["r1_this_step"]
    calls = result["operator_calls"]
    assert 0 < calls["render_fwd_bwd"]["gpu_policy"] <= calls["render_fwd_bwd"]["cpu_policy"]
    assert calls["render_meets_target"] and calls["step_gpu_policy"] > calls["render_fwd_bwd"]["gpu_policy"]
    f = result["flops"]
    assert min(f["encoder"], f["decoder"], f["renderer"], f["discriminators_and_rest"], f["r1_extra"]) > 0
    assert f["step_without_r1"] < f["step_amortized"] < f["step_with_r1"]
    memory = result["memory_bf16"]
    assert memory["largest_batch_80gb"] == 8  # tiny steps fit: the search stops at --max-batch
    assert memory["peak_gib_by_batch"]["1"] <= memory["peak_gib_by_batch"]["2"]
    assert main(argv[:-1] + ["--limit-gib", "0.01", "--json"]) == 1  # a real step over the limit fails


def _render_calls(cfg, resolution: int) -> int:
    render, cameras = _render_pass(replace(cfg, data=replace(cfg.data, resolution=resolution)))
    return sum(count_operator_calls(lambda: render(cameras[:1]))[1].values())


def test_under_the_gpu_policy_render_operator_calls_do_not_grow_with_the_rays():
    cfg = load_config("tiny", [], ["train.device=cpu", "render.chunk_mb=0.05"])  # CPU: small chunks
    cpu = {res: _render_calls(cfg, res) for res in (8, 32)}
    gpu = {res: _render_calls(_gpu_policy(cfg), res) for res in (8, 32)}
    assert gpu[8] == gpu[32]  # one chunk whatever the image size: launches are per render, not per ray
    assert cpu[32] > 2 * cpu[8]  # the chunked CPU policy launches per chunk (16x the rays here)


def test_flops_scale_with_the_batch_and_the_rays():
    def counts(batch: int, resolution: int) -> dict:
        return flops(load_config("tiny", [], ["train.device=cpu", f"train.batch_size={batch}",
                                              f"data.resolution={resolution}", "model.patch_size=4"]))
    one, two, big = counts(1, 16), counts(2, 16), counts(1, 32)
    for region in ("encoder", "decoder", "renderer"):
        assert two[region] == 2 * one[region]  # per image, nothing shared across the batch
    # 4x the rays: the renderer's MLP FLOPs grow 4x (its samples are per ray)
    assert big["renderer"] == pytest.approx(4 * one["renderer"], rel=0.02)


def test_largest_fitting_batch_agrees_with_a_scan():
    for fixed, per_image, limit in ((3.0, 2.0, 40.0), (1.0, 5.0, 5.5), (10.0, 1.0, 5.0), (0.0, 1.0, 1000.0)):
        calls = []

        def peak(b: int) -> float:
            calls.append(b)
            return fixed + per_image * b

        scan = max([b for b in range(0, 2001) if fixed + per_image * b <= limit and b <= 512], default=0)
        for guess in (1, 7, 300):
            calls.clear()
            assert largest_fitting(peak, limit, guess, cap=512) == scan
            assert len(calls) < 25  # a bracket and a bisection, not a scan


def test_flops_of_a_transformer_match_the_textbook_count():
    width, tokens, layers, mlp = 64, 16, 2, 256
    model = Transformer(tokens, width, layers, heads=4, mlp=mlp)
    _, counted = count_flops(lambda: model(torch.randn(3, tokens, width)))
    # per layer and image: 2 T (D 3D + D D + D M + M D) for the linears, 2 T^2 D each for QK^T and AV
    per_layer = 2 * tokens * (3 * width * width + width * width + 2 * width * mlp) + 4 * tokens**2 * width
    assert counted == 3 * layers * per_layer


def test_fake_tensor_steps_hold_the_same_memory_as_real_ones():
    overrides = ["train.device=cpu", "render.scatter=index_add", "loss.gan_start_steps=0", "loss.r1_every=2"]
    fake = fake_step_memory(load_config("tiny", [], overrides))
    cfg = load_config("tiny", [], overrides)
    with tempfile.TemporaryDirectory() as run_dir, PeakMemory() as memory:
        trainer = Stage1Trainer(cfg, run_dir)
        built = memory.current
        data = {"image": torch.rand(4, 3, 16, 16) * 2 - 1, "disparity": torch.rand(4, 1, 16, 16)}
        for step in (3, 4):  # as fake_step_memory: a plain step, then an R1 step
            trainer.step = step
            trainer.train_step(data)
        real = {"peak": memory.peak, "state": memory.current, "built": built}
    for key in real:
        assert abs(fake[key] - real[key]) <= 0.01 * real[key], (key, fake[key], real[key])
    # and the tracker itself counts what is allocated and freed
    with PeakMemory() as memory:
        a = torch.empty(1000)  # 4,000 bytes
        b = a[10:]  # a view: no new storage
        del a, b
        c = torch.empty(250, dtype=torch.float64)  # 2,000 bytes, after the first is freed
    assert memory.peak == 4000 and memory.current == 2000
    del c
