"""Eq. 4 (vq3d.losses.stage1.generator_losses): the total is each weight times exactly its own
term, and the generator's novel-view loss sends no gradient into the canonical render (the
paper's stop-grad, Sec. 3.2, on the generator side; the discriminator side is in test_gan)."""

from dataclasses import replace

import pytest
import torch

from vq3d.config import load_config
from vq3d.losses.reconstruction import LogitLaplaceLoss
from vq3d.losses.stage1 import generator_losses
from vq3d.models.discriminator import Discriminator
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import sample_novel_cameras

# Eq. 4's weights and the terms each one multiplies (the GAN weight takes both GAN terms)
WEIGHTED_TERMS = {"mse": ("mse",), "perceptual": ("perceptual",), "logit_laplace": ("logit_laplace",),
                  "vq": ("vq",), "depth": ("depth",), "scale": ("scale",), "distortion": ("distortion",),
                  "interlevel": ("interlevel",), "gan": ("gan_main", "gan_novel"), "lookat": ("lookat",)}


@pytest.fixture(scope="module")
def step_inputs():
    # distinct weights, so a swapped pair changes the total; max_scale 0 makes Eq. 3 non-zero
    weights = dict(mse=1.3, perceptual=0.7, logit_laplace=0.11, vq=0.9, depth=1.7, scale=0.37,
                   distortion=0.013, interlevel=1.9, gan=0.21, lookat=0.05)
    cfg = load_config("tiny", [], ["train.device=cpu", "loss.max_scale=0", "loss.gan_start_steps=0",
                                   "loss.gan_warmup_steps=0", *[f"loss.{k}={v}" for k, v in weights.items()]])
    torch.manual_seed(0)
    model = Stage1Model(cfg)
    res = cfg.data.resolution
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, res, res, generator=g) * 2 - 1
    disparity = torch.rand(2, 1, res, res, generator=g)
    novel_c2w = sample_novel_cameras(2, cfg.render.camera_distance, cfg.render.fov_deg,
                                     cfg.render.sampling_radius, g).c2w
    out = model(images, novel_c2w, step=10, generator=g)
    parts = dict(images=images, disparity=disparity, out=out, logit_laplace=LogitLaplaceLoss(cfg.loss.logit_laplace_eps),
                 perceptual=lambda a, b: (a - b).abs().mean(dim=(1, 2, 3)),  # a stand-in: any per-image term
                 d_main=Discriminator(res, 3), d_novel=Discriminator(res, 4))
    return cfg, weights, parts


def _losses(cfg, p, loss_cfg=None):
    o = p["out"]
    return generator_losses(p["images"], p["disparity"], o["quant"], o["canonical"], o["novel"], loss_cfg or cfg.loss,
                            cfg.render, p["logit_laplace"], p["perceptual"], p["d_main"], p["d_novel"], step=10)


@torch.no_grad()
def test_the_total_is_each_weight_times_its_own_term(step_inputs):
    cfg, weights, parts = step_inputs
    total, terms = _losses(cfg, parts)
    assert set(t for ts in WEIGHTED_TERMS.values() for t in ts) <= set(terms)
    assert all(float(terms[t]) != 0 for ts in WEIGHTED_TERMS.values() for t in ts)
    # Eq. 4 written out by hand
    expected = sum(weights[w] * sum(terms[t] for t in ts) for w, ts in WEIGHTED_TERMS.items())
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    # and each weight moves the total by exactly its own term(s): swapping two weights would not
    for name, own in WEIGHTED_TERMS.items():
        moved, moved_terms = _losses(cfg, parts, replace(cfg.loss, **{name: weights[name] + 0.5}))
        # the two fp32 totals are each rounded to their own ulp, and summed in an order that the
        # thread count can change: their difference is exact to a few ulps of the totals
        rounding = 4 * torch.finfo(torch.float32).eps * max(abs(float(total)), abs(float(moved)))
        assert float(moved - total) == pytest.approx(0.5 * float(sum(terms[t] for t in own)), rel=1e-5,
                                                     abs=rounding), name
        for t in WEIGHTED_TERMS:  # the unweighted terms do not depend on the weights
            for term in WEIGHTED_TERMS[t]:
                assert float(moved_terms[term]) == pytest.approx(float(terms[term]), rel=1e-6), (name, term)


def test_the_generators_novel_view_loss_sends_no_gradient_into_the_canonical_render(step_inputs):
    cfg, _, parts = step_inputs
    _, terms = _losses(cfg, parts)
    canonical, novel = parts["out"]["canonical"], parts["out"]["novel"]
    grads = torch.autograd.grad(terms["gan_novel"], [canonical.rgb, canonical.disparity, canonical.weights,
                                                     novel.rgb, novel.disparity], retain_graph=True, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0 for g in grads[:3])  # stop-grad: canonical untouched
    assert float(grads[3].abs().max()) > 0 and float(grads[4].abs().max()) > 0  # the novel render gets it
    # the main GAN's generator loss, by contrast, is on the canonical render
    main = torch.autograd.grad(terms["gan_main"], [canonical.rgb], retain_graph=True)[0]
    assert float(main.abs().max()) > 0


@torch.no_grad()
@pytest.mark.parametrize("statistic", ["depth", "disparity"])
def test_each_term_of_eq4_equals_its_definition_recomputed_from_primitives(step_inputs, statistic):
    """Every term against its own formula, written here from the render's raw tensors (Eq. 1-2 by a
    weighted lstsq per image, as in test_depth_loss; the GAN terms by softplus of the logits)."""
    import torch.nn.functional as F

    cfg, _, p = step_inputs
    c = replace(cfg.loss, lookat_statistic=statistic)
    _, terms = _losses(cfg, p, c)
    o, images, r = p["out"], p["images"], cfg.render
    canonical, novel = o["canonical"], o["novel"]
    assert float(terms["mse"]) == pytest.approx(float(((canonical.rgb - images) ** 2).mean()), rel=1e-6)
    assert float(terms["vq"]) == pytest.approx(float(o["quant"].loss), rel=1e-6)
    # Eq. 1-2: camera-axis disparity in look-at units (the presets' convention), robust target
    D = (canonical.sample_disparity / canonical.axis_cos[..., None] * r.camera_distance).double()
    W = canonical.weights.double()
    flat = p["disparity"].flatten(1).double()
    n = flat.shape[1]
    srt = flat.sort(dim=1).values
    lo, hi = srt[:, round(0.02 * (n - 1))], srt[:, round(0.98 * (n - 1))]
    target = (flat - lo[:, None]) / (hi - lo)[:, None]
    losses, scales = [], []
    for b in range(D.shape[0]):
        A = torch.stack([D[b].flatten(), torch.ones_like(D[b].flatten())], dim=1)
        sw = W[b].flatten().sqrt()
        y = target[b][:, None].expand_as(D[b]).flatten()
        s, t = torch.linalg.lstsq(A * sw[:, None], (y * sw)[:, None]).solution.flatten()
        losses.append(float((W[b] * (s * D[b] + t - target[b][:, None]) ** 2).sum() / n))
        scales.append(float(s))
    assert float(terms["depth"]) == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    eq3 = sum(max(0.0, -s) + c.small_scale * max(s - c.max_scale, 0.0) for s in scales) / len(scales)
    assert float(terms["scale"]) == pytest.approx(eq3, rel=1e-3, abs=1e-7)
    # the look-at prior, in the run's statistic: the central pixels' mean expected ray depth against
    # lookat_depth c, or their mean camera-axis disparity against 1 / (lookat_depth c)
    res = images.shape[-1]
    side = max(1, round(res * c.lookat_fraction))
    top = (res - side) // 2
    target = c.lookat_depth * r.camera_distance
    if c.lookat_statistic == "depth":
        m = canonical.depth[:, 0, top:top + side, top:top + side].flatten(1).mean(1)
        expected = torch.log(m / target).square().mean()
    else:
        axis_disparity = canonical.disparity / canonical.axis_cos.view_as(canonical.disparity)
        m = axis_disparity[:, 0, top:top + side, top:top + side].flatten(1).mean(1)
        expected = torch.log(m * target).square().mean()
    assert float(terms["lookat"]) == pytest.approx(float(expected), rel=1e-5)
    # non-saturating generator terms: softplus(-logit), the novel one on [rgb, depth channel]
    assert float(terms["gan_main"]) == pytest.approx(float(F.softplus(-p["d_main"](canonical.rgb)).mean()), rel=1e-5)
    channel = (novel.disparity * r.near).clamp(0, 1) * 2 - 1
    fake = torch.cat([novel.rgb, channel], dim=1)
    assert float(terms["gan_novel"]) == pytest.approx(float(F.softplus(-p["d_novel"](fake)).mean()), rel=1e-5)


def test_the_novel_view_discriminator_sees_the_detached_canonical_render_as_real_and_the_novel_as_fake(step_inputs):
    from vq3d.losses.stage1 import discriminator_losses

    cfg, _, p = step_inputs
    o, near = p["out"], cfg.render.near
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(x)
            return self.inner(x)

    discriminator_losses(p["images"], o["canonical"], o["novel"], p["d_main"], Spy(p["d_novel"]), cfg.loss,
                         cfg.render, apply_r1=False, novel_real=o["novel_real"])
    real, fake = seen
    canonical = o["novel_real"] if o["novel_real"] is not None else o["canonical"]

    def with_channel(render):  # [rgb, disparity * near clamped to [0, 1], mapped to [-1, 1]]
        return torch.cat([render.rgb, (render.disparity * near).clamp(0, 1) * 2 - 1], dim=1)

    assert torch.equal(real, with_channel(canonical).detach()) and not real.requires_grad  # the stop-grad
    assert torch.equal(fake, with_channel(o["novel"]).detach()) and real.shape == fake.shape == (2, 4, 16, 16)
    assert not torch.equal(real, fake)
