"""`render.compile_field`: the compiled lookup + MLP chunks and proposal resampling of a training
render give the eager torch path's image and gradients; only the Stage-1 trainer turns them on;
a compiler that cannot build falls back to the eager path with a warning instead of stopping
the run."""

import warnings
from dataclasses import replace

import pytest
import torch

from vq3d.config import load_config
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import canonical_cameras
from vq3d.render.execution import compile_once
from vq3d.render.renderer import Renderer
from vq3d.train.stage1 import Stage1Trainer
from tests.test_render_execution import CFG, _train_render


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_the_compiled_training_render_matches_the_eager_one():
    # annealing off, so that proposal resampling runs compiled from the first step; chunks of
    # ~700 points, so that a level is several chunks (two shapes) and the scatter runs per chunk
    cfg = replace(CFG, proposal_anneal_steps=0, chunk_mb=1.0, scatter="segment")
    ref_out, ref_grads, _ = _train_render(cfg, rays=300)
    before = _graphs()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*did not compile")  # no silent fallback to eager
        out, grads, _ = _train_render(replace(cfg, compile_field=True), rays=300)
    assert _graphs() - before >= 3  # the chunk forward, its backward and resampling ran compiled
    for name in ("rgb", "depth", "disparity", "weights", "spacing_edges"):
        assert torch.allclose(getattr(out, name), getattr(ref_out, name), atol=1e-5), name
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # a render without gradients (evaluation, any shape) stays eager: nothing new compiles
    before = _graphs()
    renderer = Renderer(replace(cfg, compile_field=True), feature_dim=4)
    renderer.compile_field = True
    with torch.no_grad():
        renderer.render_cameras(torch.randn(1, 3, 4, 16, 16), canonical_cameras(1, 1.5, 45.0), 9, 9)
    assert _graphs() == before


def test_under_bf16_autocast_the_compiled_render_matches_the_eager_one_to_bf16_rounding():
    cfg = replace(CFG, proposal_anneal_steps=0, chunk_mb=1.0, scatter="segment")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_out, ref_grads, _ = _train_render(cfg, rays=200)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*did not compile")
            out, grads, _ = _train_render(replace(cfg, compile_field=True), rays=200)
    # both round the MLP's activations to bf16 (8 bits of mantissa), at different places once fused
    assert torch.allclose(out.rgb, ref_out.rgb, atol=3e-2)
    assert torch.allclose(out.depth, ref_out.depth, rtol=3e-2)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        assert (got - want).norm() <= 0.05 * want.norm() + 1e-6


def test_only_the_stage1_trainer_compiles_its_renders(tmp_path):
    cfg = load_config("tiny", [], ["train.device=cpu", "render.compile_field=true"])
    assert not Stage1Model(cfg).renderer.compile_field  # evaluation, refinement, the viewer: eager
    assert Stage1Trainer(cfg, tmp_path).model.renderer.compile_field
    off = load_config("tiny", [], ["train.device=cpu"])
    assert not Stage1Trainer(off, tmp_path / "off").model.renderer.compile_field


def test_more_shapes_than_dynamo_keeps_graphs_for_run_eagerly():
    import torch._dynamo.config as dynamo_config

    def scaled_sum(x, indexed):
        return (x * (2.0 if indexed else 1.0)).sum(0)

    step = compile_once(scaled_sum, (("indexed", False),))
    with dynamo_config.patch(recompile_limit=2), pytest.warns(UserWarning, match="limit of graphs"):
        got = [step(torch.ones(n, 3), indexed=True) for n in range(1, 6)]
    # shapes 1-2 compiled (indexed=True), the rest eager with the eager override (indexed=False)
    assert [float(g[0]) for g in got] == [2.0, 4.0, 3.0, 4.0, 5.0]


def test_a_compiler_that_cannot_build_falls_back_to_the_eager_path():
    import torch._inductor.config as inductor_config

    def odd_sum(x):
        return (x.cos() * 3.25 - x.abs().sqrt()).sum(-1)

    step = compile_once(odd_sum)
    x = torch.randn(4, 7)
    # no C++ compiler, and no compiled artefact to reuse
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False}):
        with pytest.warns(UserWarning, match="did not compile"):
            got = step(x)
        assert torch.equal(got, odd_sum(x))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second try, no second warning
            assert torch.equal(step(x + 1), odd_sum(x + 1))
