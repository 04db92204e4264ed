"""The precision policy (vq3d.precision) under CPU autocast, which runs the same code as CUDA's:
geometry stays fp32 and equal to an fp32 run, bf16 is confined to features and MLPs, and the
results agree with fp32 within what bf16's 8-bit significand allows."""

import torch
import torch.nn.functional as F

from vq3d.config import RenderConfig, load_config
from vq3d.losses.stage1 import generator_losses
from vq3d.losses.reconstruction import LogitLaplaceLoss
from vq3d.models.quantizer import Quantizer
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import canonical_cameras
from vq3d.render.renderer import Renderer
from vq3d.render.samplers import anneal_power, dilation_for_level, propose_edges, stratified_u

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
SIZE = 256  # the paper's image size: bf16 cannot tell its neighbouring ray directions apart


def _smooth_planes(channels: int = 8, resolution: int = 64) -> torch.Tensor:
    """A smooth random scene (B=1): a bicubic upsampling of an 8x8 random grid per channel."""
    coarse = torch.randn(1, 3 * channels, 8, 8)
    fine = F.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    return fine.view(1, 3, channels, resolution, resolution)


def _render(renderer, planes, cams, pixels, seed):
    """Render with the renderer's plane coordinates recorded per level."""
    coords = []
    original = Renderer.plane_coords

    def recording(points):
        out = original(renderer, points)
        coords.append(out)
        return out

    renderer.plane_coords = recording
    try:
        out = renderer.render_cameras(planes, cams, SIZE, SIZE, pixels=pixels, train=True, step=10**6,
                                      generator=torch.Generator().manual_seed(seed))
    finally:
        del renderer.plane_coords
    return out, coords


def test_bf16_autocast_keeps_rays_edges_disparities_and_coordinates_fp32_and_exact():
    cfg = RenderConfig(proposal_samples=(64, 64), nerf_samples=32, near=0.2)  # the paper's sampling
    renderer = Renderer(cfg, feature_dim=8)
    planes = _smooth_planes()
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    pixels = torch.randperm(SIZE * SIZE)[:2048][None]

    _, dirs32 = cams.rays(SIZE, SIZE)
    with torch.autocast(**BF16):
        _, dirs16 = cams.rays(SIZE, SIZE)
    assert dirs16.dtype == torch.float32 and torch.equal(dirs16, dirs32)
    assert len(torch.unique(dirs16[0, 0, :, 0])) == SIZE  # every column keeps its own direction

    planes32 = planes.clone().requires_grad_(True)
    out32, coords32 = _render(renderer, planes32, cams, pixels, seed=3)
    planes16 = planes.bfloat16().requires_grad_(True)  # what the decoder gives under autocast
    with torch.autocast(**BF16):
        out16, coords16 = _render(renderer, planes16, cams, pixels, seed=3)

    geometry = [out16.spacing_edges, out16.sample_disparity, out16.weights, out16.depth, out16.disparity,
                *out16.proposal_spacing_edges, *out16.proposal_weights, *coords16]
    assert all(t.dtype == torch.float32 for t in geometry)
    # the first level's edges and coordinates depend on the rays and the jitter only: exact
    assert torch.equal(out16.proposal_spacing_edges[0], out32.proposal_spacing_edges[0])
    assert torch.equal(coords16[0], coords32[0])
    # resampled levels depend on the (bf16) MLP's weights, but given those weights they are the
    # exact fp32 resampling: recompute the NeRF level's edges from the proposal weights in fp32
    counts = renderer.samples_per_level
    gen = torch.Generator().manual_seed(3)  # the render's jitter, drawn again in the same order
    us = [stratified_u((1, pixels.shape[1]), n, True, gen) for n in counts]
    edges = propose_edges(out16.proposal_spacing_edges[1], out16.proposal_weights[1], us[2],
                          dilation_for_level(2, counts, cfg.proposal_dilation, cfg.proposal_dilation_bias),
                          anneal_power(10**6, cfg.proposal_anneal_steps, cfg.proposal_anneal_slope))
    assert torch.equal(edges, out16.spacing_edges)
    # no edges merge: 33 distinct edges on every ray (bf16 left 7 of 33)
    assert bool((out16.spacing_edges.diff(dim=-1) > 0).all())

    # results: bf16 rounds to 2^-8 (0.4%) relative; features and two MLP layers add a few such
    # errors to each density, and depth and colour are weighted means over 32 samples, so
    # errors of about 0.1% are expected. Bounds: depth within 1% relative, colour within 0.01.
    rel_depth = (out16.depth - out32.depth).abs() / out32.depth
    rel_depth = rel_depth.detach()
    assert float(rel_depth.max()) < 0.01, float(rel_depth.max())
    assert float((out16.rgb - out32.rgb).detach().abs().max()) < 0.01

    # gradients flow into the bf16 planes, finite and parallel to the fp32 ones
    (out16.rgb.sum() + out16.depth.mean()).backward()
    (out32.rgb.sum() + out32.depth.mean()).backward()
    assert planes16.grad.dtype == torch.bfloat16 and bool(torch.isfinite(planes16.grad).all())
    cos = F.cosine_similarity(planes16.grad.float().flatten(), planes32.grad.flatten(), dim=0)
    assert float(cos) > 0.99, float(cos)


def test_the_quantizer_picks_the_same_codes_under_bf16_autocast():
    quantizer = Quantizer(in_dim=64, codebook_size=8192, codebook_dim=32, commitment=0.25, dead_code_steps=10)
    features = torch.randn(2, 256, 64)
    ref = quantizer(features)
    with torch.autocast(**BF16):
        out = quantizer(features)
    # 8,192 unit codes in 32 dimensions sit close together: bf16 similarities would tie or flip
    assert torch.equal(out.ids, ref.ids)
    assert out.codes.dtype == out.latents.dtype == out.loss.dtype == torch.float32


def test_a_stage1_step_under_bf16_autocast_keeps_losses_fp32_and_gradients_finite():
    cfg = load_config("tiny", [], ["loss.gan=0"])
    model = Stage1Model(cfg)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    disparity = torch.rand(2, 1, 16, 16)
    with torch.autocast(**BF16):
        out = model(images, step=5, generator=torch.Generator().manual_seed(0))
        total, terms = generator_losses(images, disparity, out["quant"], out["canonical"], None, cfg.loss,
                                        cfg.render, LogitLaplaceLoss(0.1), None, None, None, 5)
    canonical = out["canonical"]
    assert canonical.rgb.dtype == canonical.depth.dtype == canonical.weights.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in terms.values() if v.is_floating_point())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(model.decoder.head.weight.grad.abs().sum()) > 0


def test_a_bf16_render_makes_no_fp32_copy_of_the_planes():
    from vq3d.bench.fake_step import PeakMemory

    cfg = RenderConfig(proposal_samples=(16,), nerf_samples=8, near=0.5)
    renderer = Renderer(cfg, feature_dim=16)
    # channel-last bf16 planes, as the decoder's head writes them: 6.3 MB, 12.6 MB in fp32
    planes = torch.randn(1, 3, 256, 256, 16).bfloat16().permute(0, 1, 4, 2, 3)
    cams = canonical_cameras(1, cfg.camera_distance, cfg.fov_deg)
    pixels = torch.arange(64)[None]
    with torch.no_grad(), torch.autocast(**BF16), PeakMemory() as memory:
        renderer.render_cameras(planes, cams, SIZE, SIZE, pixels=pixels)
    fp32_copy = planes.numel() * 4
    # the 256x256 camera's rays (~2 MB) and a few rays' temporaries, but no copy of the planes
    assert memory.peak < 0.25 * fp32_copy, memory.peak
