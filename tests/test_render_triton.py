"""The fused renderer (render.kernel=triton) against the torch path, on CPU under Triton's
interpreter: the same outputs and the same gradients of the planes and the MLP weights.

Tolerances: both paths compute in fp32 the same formulas in a different order (a running sum of
optical depth against a cumulative sum, a Taylor series for 1 - exp(-x) below 1e-3 against
expm1, the MLP's dot products and the planes' gradient summed by atomics in another order), so
values agree to a few float32 ulps of their magnitude: 2e-5 absolute on colours, weights and
opacities, 1e-4 relative on depths; gradients to 1e-4 of their largest entry. bf16 planes: the
torch path sums the 12 corner features in bf16 (`embedding_bag` in the table's dtype), the kernel
in fp32, so features differ by up to bf16's resolution (2^-8 relative) and outputs by ~1e-2."""

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from vq3d.config import ConfigError, RenderConfig, load_config  # noqa: E402
from vq3d.render.cameras import canonical_cameras, sample_novel_cameras  # noqa: E402
from vq3d.render.fused import resolve_kernel, triton_available  # noqa: E402
from vq3d.render.renderer import Renderer  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here (no GPU, no interpreter)")


def _planes(batch: int, channels: int, res: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, channels, res, res, generator=g) * 0.7).to(dtype)


def _render(cfg: RenderConfig, kernel: str, planes: torch.Tensor, rays: tuple, seed: int = 0):
    """A training render (jittered, proposal annealing on) of rays (origins, dirs); returns the
    output and the gradients of the planes and of every MLP parameter."""
    torch.manual_seed(0)
    renderer = Renderer(replace(cfg, kernel=kernel), planes.shape[2])
    with torch.no_grad():  # non-trivial MLPs: a visible scene
        for p in renderer.parameters():
            p.mul_(3.0)
    leaf = planes.clone().requires_grad_(True)
    origins, dirs = rays
    out = renderer(leaf, origins, dirs, train=True, step=50, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(9)
    loss = ((out.rgb * torch.randn(out.rgb.shape, generator=g)).sum() + (out.depth * 0.1).sum()
            + out.disparity.sum() + (out.opacity * 0.5).sum()
            + (out.weights * torch.randn(out.weights.shape, generator=g)).sum()
            + sum((w * torch.randn(w.shape, generator=g)).sum() for w in out.proposal_weights))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in renderer.named_parameters() if p.grad is not None}
    return out, leaf.grad, grads


def _rays(batch: int, n: int, seed: int, distance: float = 1.5):
    cams = sample_novel_cameras(batch, distance, 45.0, 0.3, torch.Generator().manual_seed(seed))
    origins, dirs = cams.rays(8, 8)
    pick = torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:n]
    return origins.reshape(batch, 64, 3)[:, pick].contiguous(), dirs.reshape(batch, 64, 3)[:, pick].contiguous()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    assert float((a.float() - b.float()).abs().max()) <= rel * scale, float((a.float() - b.float()).abs().max()) / scale


CASES = {
    # 37 rays a batch (74 in all: not a multiple of the forward's 32-ray or the backward's 16-ray
    # block; the backward's 3 programs walk 2, 2 and 1 blocks), infinite far, opaque last interval
    "default": dict(cfg=RenderConfig(proposal_samples=(12,), nerf_samples=8, mlp_hidden=16, near=0.3), n=37),
    # two proposal rounds with feature gradients, a finite far, the mean of the planes, black background
    "proposals": dict(cfg=RenderConfig(proposal_samples=(10, 9), nerf_samples=7, mlp_hidden=16, near=0.4, far=6.0,
                                       plane_reduce="mean", background="black", proposal_feature_grad=True), n=33),
    # samples leave the planes: scene scale 3 and the L-inf contraction put many at the border
    "border": dict(cfg=RenderConfig(proposal_samples=(8,), nerf_samples=9, mlp_hidden=20, near=0.2,
                                    scene_scale=3.0, contraction="linf", background="white"), n=20),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fused_kernels_match_the_torch_path_in_outputs_and_gradients(case):
    cfg, n = CASES[case]["cfg"], CASES[case]["n"]
    planes, rays = _planes(2, 24, 16, seed=1), _rays(2, n, seed=2)
    ref, ref_planes, ref_grads = _render(cfg, "torch", planes, rays)
    out, out_planes, grads = _render(cfg, "triton", planes, rays)
    for name in ("rgb", "opacity", "weights", "sample_disparity", "spacing_edges"):
        assert torch.allclose(getattr(out, name), getattr(ref, name), atol=2e-5), name
    assert torch.allclose(out.depth, ref.depth, rtol=1e-4) and torch.allclose(out.disparity, ref.disparity, rtol=1e-4)
    for a, b in zip(out.proposal_weights, ref.proposal_weights):
        assert torch.allclose(a, b, atol=2e-5)
    if case == "border":  # the case is what it claims: samples at the planes' border texels
        assert float(out.opacity.min()) > 0.5
    _close(out_planes, ref_planes, 1e-4)
    assert set(grads) == set(ref_grads) and len(grads) == 8  # both MLPs' weights and biases
    for name in ref_grads:
        _close(grads[name], ref_grads[name], 1e-4)


def test_another_launch_shape_renders_the_same():
    """Rays and warps per program change only the order of the sums (the MLP's gradient partials
    are per program): 64-ray forward blocks (one per batch of 37 rays, half empty), 32-ray backward
    blocks, against the default."""
    from vq3d.render.fused import launch_shape

    cfg, n = CASES["default"]["cfg"], CASES["default"]["n"]
    planes, rays = _planes(2, 24, 16, seed=1), _rays(2, n, seed=2)
    ref, ref_planes, ref_grads = _render(cfg, "triton", planes, rays)
    with launch_shape(fwd_rays=64, fwd_warps=4, bwd_rays=32, bwd_warps=4):
        out, out_planes, grads = _render(cfg, "triton", planes, rays)
    assert torch.allclose(out.rgb, ref.rgb, atol=2e-5) and torch.allclose(out.weights, ref.weights, atol=2e-5)
    _close(out_planes, ref_planes, 1e-4)
    for name in ref_grads:
        _close(grads[name], ref_grads[name], 1e-4)


def test_bf16_planes_agree_to_bf16_resolution():
    cfg = CASES["default"]["cfg"]
    planes, rays = _planes(2, 24, 16, seed=3, dtype=torch.bfloat16), _rays(2, 29, seed=4)
    ref, ref_planes, ref_grads = _render(cfg, "torch", planes, rays)
    out, out_planes, grads = _render(cfg, "triton", planes, rays)
    assert out_planes.dtype == torch.bfloat16
    assert float((out.rgb - ref.rgb).abs().max()) < 2e-2 and float((out.weights - ref.weights).abs().max()) < 2e-2
    _close(out_planes, ref_planes, 5e-2)
    for name in ref_grads:
        _close(grads[name], ref_grads[name], 5e-2)


def test_camera_renders_with_ray_subsets_match_and_inference_chunks_too():
    cfg = replace(CASES["default"]["cfg"], chunk_rays=24)
    planes = _planes(2, 16, 12, seed=5)
    cams = canonical_cameras(2, 1.5, 45.0)
    pixels = torch.stack([torch.randperm(100, generator=torch.Generator().manual_seed(s))[:27] for s in (0, 1)])
    outs = {}
    for kernel in ("torch", "triton"):
        torch.manual_seed(0)
        renderer = Renderer(replace(cfg, kernel=kernel), 16)
        with torch.no_grad():
            outs[kernel] = (renderer.render_cameras(planes, cams, 10, 10),  # 100 rays in chunks of 24
                            renderer.render_cameras(planes, cams, 10, 10, pixels=pixels))
    for a, b in zip(outs["triton"], outs["torch"]):
        assert torch.allclose(a.rgb, b.rgb, atol=2e-5) and torch.allclose(a.depth, b.depth, rtol=1e-4)


def test_the_kernel_setting_resolves_and_refuses_what_the_kernels_cannot_render():
    cpu = torch.device("cpu")
    assert resolve_kernel(RenderConfig(kernel="auto"), cpu) == "torch"  # auto: triton only on CUDA
    assert resolve_kernel(RenderConfig(kernel="triton"), cpu) == "triton"  # the interpreter here
    with pytest.raises(ConfigError, match="2-layer"):
        load_config("tiny", [], ["render.kernel=triton", "render.mlp_layers=3"])
    with pytest.raises(ConfigError, match="triplanes"):
        load_config("tiny", [], ["render.kernel=triton", "model.representation=implicit"])
    assert load_config("tiny", [], ["render.kernel=triton"]).render.kernel == "triton"
