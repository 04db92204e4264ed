"""The rotation trick (`model.vq_gradient=rotation`, Fifty et al. 2024) against its definition:
the code forward, and the code's gradient rotated back by the explicit matrix R (z -> e)."""

import pytest
import torch

from vq3d.config import demo, load_config, paper
from vq3d.models.quantizer import Quantizer, rotation_trick
from vq3d.models.stage1 import Stage1Model


def _rotation_matrix(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(d, d): the Householder-pair rotation taking z / |z| to e / |e|, scaled by |e| / |z|."""
    u, q = z / z.norm(), e / e.norm()
    r = (u + q) / (u + q).norm()
    eye = torch.eye(z.shape[0], dtype=z.dtype)
    return (e.norm() / z.norm()) * (eye - 2 * torch.outer(r, r) + 2 * torch.outer(q, u))


def test_forward_is_the_code_and_the_gradient_is_rotated_back():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    e = torch.randn(6, 5, generator=g, dtype=torch.float64)
    upstream = torch.randn(6, 5, generator=g, dtype=torch.float64)
    out = rotation_trick(z, e)
    assert torch.allclose(out, e, atol=1e-12)
    (out * upstream).sum().backward()
    for i in range(6):
        rot = _rotation_matrix(z[i].detach(), e[i])
        assert torch.allclose(rot @ z[i].detach(), e[i], atol=1e-10)  # R maps z onto e
        assert torch.allclose(z.grad[i], rot.T @ upstream[i], atol=1e-10)


def test_equal_vectors_pass_the_gradient_unchanged_and_opposite_ones_stay_finite():
    z = torch.tensor([[0.6, 0.8, 0.0]], requires_grad=True)
    upstream = torch.tensor([[1.0, -2.0, 3.0]])
    (rotation_trick(z, z.detach().clone()) * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream, atol=1e-6)  # R = I: straight-through
    z.grad = None
    (rotation_trick(z, -z.detach()) * upstream).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_quantizer_rotation_changes_only_the_encoders_gradient():
    feats = torch.randn(2, 7, 8)
    grads, outs = {}, {}
    for gradient in ("straight_through", "rotation"):
        torch.manual_seed(0)
        q = Quantizer(in_dim=8, codebook_size=16, codebook_dim=4, commitment=0.25, dead_code_steps=3,
                      gradient=gradient)
        x = feats.clone().requires_grad_()
        out = q(x)
        (out.codes * torch.linspace(-1, 1, 4)).sum().backward()
        grads[gradient], outs[gradient] = x.grad, out
        assert q.codebook.weight.grad is None  # the codes pass no gradient to the codebook
    st, rot = outs["straight_through"], outs["rotation"]
    assert torch.equal(st.ids, rot.ids) and torch.allclose(st.codes, rot.codes, atol=1e-6)
    assert torch.allclose(st.loss, rot.loss)
    assert not torch.allclose(grads["straight_through"], grads["rotation"], atol=1e-4)


def test_the_config_switch_reaches_the_quantizer():
    assert Stage1Model(load_config("tiny", [], [])).quantizer.gradient == "straight_through"  # the paper's
    assert paper().model.vq_gradient == "straight_through" and demo().model.vq_gradient == "rotation"
    model = Stage1Model(load_config("tiny", [], ["model.vq_gradient=rotation"]))
    assert model.quantizer.gradient == "rotation"
    with pytest.raises(ValueError, match="VQ gradient"):
        Quantizer(8, 16, 4, 0.25, 3, gradient="copy")  # type: ignore[arg-type]
