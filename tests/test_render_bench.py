"""The render benchmark runs, compares the same image, and measures allocations."""

import json
import re
from dataclasses import replace

import torch

import vq3d.bench.render as bench_render
from vq3d.bench.render import main, peak_memory_bytes


def test_render_benchmark_smoke(capsys):
    assert main(["--json", "--settings", "tiny", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    tiny = report["settings"]["tiny"]
    assert tiny["max_abs_diff_rgb"] < 1e-4 and tiny["max_abs_diff_rgb_train"] < 1e-4
    for impl in ("ours", "reference"):
        assert tiny[impl]["fwd_bwd_rays_per_s"] > 0 and tiny[impl]["peak_memory_bytes"] > 0
    assert tiny["speedup"] > 0 and tiny["memory_ratio"] > 0
    kept = report["saved_for_backward"]  # at the paper's sample counts
    assert kept["torch"]["samples"] == [64, 64, 32] and kept["torch"]["extra_bytes_per_ray"] > 1000
    if isinstance(kept["triton"], dict):  # Triton installed: its interpreter runs the kernels here
        assert kept["triton"]["extra_bytes_per_ray"] * 20 <= kept["torch"]["extra_bytes_per_ray"]
        assert report["triton_build"]["nerf/bfloat16/bwd"]["registers"] > 0  # built for sm_90 here


def test_a_preset_that_compiles_its_renders_is_timed_compiled_beside_eager(monkeypatch, capsys):
    setting = bench_render._setting

    def tiny_compiled(name):
        cfg, spec = setting(name)
        return replace(cfg, compile_field=True), spec

    monkeypatch.setattr(bench_render, "_setting", tiny_compiled)
    compiled = bench_render._measure("tiny", repeats=1)["ours_compiled"]
    assert compiled["fwd_bwd_rays_per_s"] > 0 and compiled["first_call_s"] > 0
    assert compiled["speedup_over_eager"] > 0
    assert main(["--settings", "tiny", "--repeats", "1"]) == 0  # the text report too
    assert re.search(r"tiny: compiled training render \d+\.\d\dx eager", capsys.readouterr().out)


def test_peak_memory_counts_transient_allocations():
    def work():
        a = torch.ones(1_000_000)  # 4 MB, freed before the end
        b = a * 2
        del a, b

    assert peak_memory_bytes(work) >= 8_000_000
