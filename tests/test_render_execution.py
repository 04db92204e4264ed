"""Chunk sizes from a memory budget (vq3d.render.execution): any budget and either scatter
method render the same image with the same gradients, and with a budget that holds a level,
a training render is a fixed number of operator calls whatever the number of rays."""

from dataclasses import replace

import pytest
import torch

from vq3d.bench.opcount import count_operator_calls
from vq3d.config import RenderConfig
from vq3d.losses.stage1 import nerf_regularizers
from vq3d.render.cameras import canonical_cameras
from vq3d.render.execution import ExecutionPolicy, execution_policy, lookup_bytes_per_point
from vq3d.render.renderer import Renderer

CFG = RenderConfig(proposal_samples=(16, 16), nerf_samples=8, near=0.5, mlp_hidden=16)


def _train_render(cfg: RenderConfig, rays: int, seed: int = 0, count: bool = False):
    """One training render of `rays` canonical pixels and its backward: the render, the gradients
    of the planes and the MLPs, and (with `count`) the operator calls of both passes."""
    torch.manual_seed(0)
    renderer = Renderer(cfg, feature_dim=4)
    renderer.compile_field = cfg.compile_field  # as the Stage-1 trainer sets it
    planes = (torch.randn(1, 3, 4, 16, 16) * 0.5).requires_grad_(True)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    pixels = torch.randperm(64 * 64, generator=torch.Generator().manual_seed(1))[:rays][None]

    def step():
        out = renderer.render_cameras(planes, cams, 64, 64, pixels=pixels, train=True, step=50,
                                      generator=torch.Generator().manual_seed(seed))
        distortion, interlevel = nerf_regularizers(out)
        (out.rgb.square().mean() + out.depth.mean() + 0.01 * distortion + interlevel).backward()
        return out

    out, calls = count_operator_calls(step) if count else (step(), {})
    grads = [planes.grad] + [p.grad for p in renderer.parameters()]
    return out, grads, sum(calls.values())


@pytest.mark.parametrize("scatter", ["segment", "index_add"])
def test_any_chunk_budget_renders_the_same_image_and_gradients(scatter):
    ref_out, ref_grads, _ = _train_render(replace(CFG, chunk_mb=1024.0, scatter="segment"), rays=300)
    out, grads, _ = _train_render(replace(CFG, chunk_mb=0.1, scatter=scatter), rays=300)  # ~70 points a chunk
    # equal to fp32 rounding: the MLPs' matrix products sum in another order at another chunk size
    # (on an AVX-512 CPU the weights moved by 3e-6 and the proposal's resampled edges by 2e-6; a
    # chunk read at the wrong offset moves them by tenths)
    for name in ("rgb", "depth", "weights", "spacing_edges"):
        assert torch.allclose(getattr(out, name), getattr(ref_out, name), atol=1e-5), name
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_with_a_budget_that_holds_a_level_the_operator_calls_do_not_grow_with_the_rays():
    big = replace(CFG, chunk_mb=1024.0)
    _, _, few = _train_render(big, rays=256, count=True)
    _, _, many = _train_render(big, rays=2048, count=True)
    assert few == many  # one chunk per level: the same kernels, only larger
    small = replace(CFG, chunk_mb=1.0)  # ~700 points a chunk
    _, _, chunked = _train_render(small, rays=2048, count=True)
    assert chunked > 3 * many


def test_the_budget_comes_from_the_config_or_the_device():
    cpu = torch.device("cpu")
    assert execution_policy(8.0, "auto", cpu) == ExecutionPolicy(8 * 2**20, "segment")
    assert execution_policy(0.0, "index_add", cpu).chunk_bytes == 32 * 2**20  # the CPU default
    per_point = lookup_bytes_per_point(32, 32, 2)
    assert ExecutionPolicy(10 * per_point, "segment").per_chunk(per_point) == 10
    with pytest.raises(ValueError, match="render.scatter"):
        execution_policy(0.0, "atomic", cpu)
