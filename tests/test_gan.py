import math

import pytest
import torch

from vq3d.losses.gan import discriminator_loss, generator_loss, r1_penalty
from vq3d.losses.reconstruction import LogitLaplaceLoss
from vq3d.models.discriminator import Discriminator


@pytest.mark.parametrize("res, ch", [(16, 3), (32, 4)])
def test_discriminator_shapes(res, ch):
    d = Discriminator(res, in_channels=ch, base=8, max_channels=16)
    assert d(torch.randn(6, ch, res, res)).shape == (6,)


def test_non_saturating_losses_at_known_logits():
    zero = torch.zeros(4)
    assert math.isclose(generator_loss(zero).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(discriminator_loss(zero, zero).item(), 2 * math.log(2), rel_tol=1e-6)
    assert generator_loss(torch.full((4,), 10.0)) < 1e-4


def test_r1_penalty_of_linear_discriminator():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1, bias=False))
    x = torch.randn(3, 3, 2, 2)
    expected = lin[1].weight.square().sum()
    assert torch.allclose(r1_penalty(lambda v: lin(v).squeeze(1), x), expected)


def test_logit_laplace_is_a_likelihood_minimised_at_the_target():
    loss = LogitLaplaceLoss(eps=0.1)
    target = torch.rand(2, 3, 4, 4) * 2 - 1
    at_target = loss(target, target)
    off = loss((target + 0.3).clamp(-1, 1), target)
    assert off > at_target
    # at the target the NLL is log(2b) + log(x'(1-x')) with b = 1
    x = 0.1 + 0.8 * (target + 1) / 2
    assert torch.allclose(at_target, (math.log(2.0) + torch.log(x * (1 - x))).mean(), atol=1e-6)
    # not an L1 on pixels: the same pixel error costs more near the ends of the range
    dark, mid = torch.full((1, 3, 1, 1), -0.9), torch.zeros(1, 3, 1, 1)
    assert loss(dark + 0.1, dark) - loss(dark, dark) > loss(mid + 0.1, mid) - loss(mid, mid)


def test_gan_weight_starts_late_and_ramps_and_scale_floor_fades():
    from vq3d.config import LossConfig
    from vq3d.losses.stage1 import gan_weight, scale_floor

    c = LossConfig(gan=0.1, gan_start_steps=100, gan_warmup_steps=10)
    assert [gan_weight(c, s) for s in (0, 99)] == [0.0, 0.0]
    assert gan_weight(c, 100) == pytest.approx(0.01) and gan_weight(c, 104) == pytest.approx(0.05)
    assert gan_weight(c, 109) == pytest.approx(0.1) and gan_weight(c, 5000) == pytest.approx(0.1)
    assert gan_weight(LossConfig(gan=0.1), 0) == pytest.approx(0.1)
    f = LossConfig(depth_scale_floor=2.0, depth_scale_floor_steps=100)
    assert [scale_floor(f, s) for s in (0, 50, 100, 200)] == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert scale_floor(LossConfig(), 0) == 0.0
    assert scale_floor(LossConfig(depth_scale_floor=0.5), 10**6) == 0.5  # no fade: the whole run
