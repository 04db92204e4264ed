import torch
import torch.nn.functional as F

from vq3d.models.quantizer import CodebookUsage, Quantizer


def make(k=16, d=4, beta=0.25, dead=3):
    torch.manual_seed(0)
    return Quantizer(in_dim=8, codebook_size=k, codebook_dim=d, commitment=beta, dead_code_steps=dead)


def test_nearest_unit_code_is_chosen():
    q = make()
    feats = torch.randn(2, 5, 8)
    out = q(feats)
    z = F.normalize(q.proj(feats), dim=-1)
    dists = torch.cdist(z.flatten(0, 1), q.normalized_codebook())
    assert torch.equal(out.ids.flatten(), dists.argmin(dim=-1))
    assert torch.allclose(out.codes.norm(dim=-1), torch.ones(2, 5), atol=1e-5)
    assert torch.allclose(out.codes, q.lookup(out.ids), atol=1e-6)


def test_straight_through_gradient_reaches_the_encoder_features():
    q = make()
    feats = torch.randn(2, 5, 8, requires_grad=True)
    out = q(feats)
    (out.codes * torch.randn_like(out.codes)).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_commitment_weight_is_on_the_encoder_side():
    """beta multiplies ||z - sg(e)||^2 (encoder); the codebook term has weight 1."""
    beta = 0.25
    grads = {}
    for name in ("encoder", "codebook"):
        q = make(beta=beta)
        feats = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
        out = q(feats)
        out.loss.backward()
        grads[name] = (q.proj.weight.grad.clone(), q.codebook.weight.grad.clone())
    z_grad, e_grad = grads["encoder"]
    # Compare with hand-built terms: codebook side weight 1, encoder side weight beta.
    q = make(beta=beta)
    feats = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    z = F.normalize(q.proj(feats), dim=-1)
    ids = q(feats).ids
    e = F.embedding(ids, q.normalized_codebook())
    (F.mse_loss(e, z.detach()) + beta * F.mse_loss(z, e.detach())).backward()
    assert torch.allclose(z_grad, q.proj.weight.grad, atol=1e-6)
    assert torch.allclose(e_grad, q.codebook.weight.grad, atol=1e-6)
    # and the swapped (taming legacy) weighting would give a different encoder gradient
    q2 = make(beta=beta)
    z2 = F.normalize(q2.proj(feats), dim=-1)
    e2 = F.embedding(ids, q2.normalized_codebook())
    (beta * F.mse_loss(e2, z2.detach()) + F.mse_loss(z2, e2.detach())).backward()
    assert not torch.allclose(z_grad, q2.proj.weight.grad, atol=1e-6)


def test_dead_codes_are_restarted_from_recent_latents():
    q = make(k=16, dead=3)
    q.train()
    feats = torch.randn(1, 4, 8)
    for _ in range(3):
        out = q(feats)
    used = set(out.ids.flatten().tolist())
    assert (q.steps_unused >= 3).sum() == 16 - len(used)
    n = q.restart_dead_codes(out.latents, torch.Generator().manual_seed(0))
    assert n == 16 - len(used)
    assert (q.steps_unused == 0).all()
    # every restarted code now sits next to one of the latents
    codebook = q.normalized_codebook()
    dead = [i for i in range(16) if i not in used]
    sims = codebook[dead] @ out.latents.flatten(0, 1).t()
    assert (sims.max(dim=1).values > 0.99).all()


def test_usage_window_counts_unique_recent_codes():
    usage = CodebookUsage(codebook_size=10, window=4)
    usage.update(torch.tensor([0, 1, 2, 3]))
    assert usage.fraction_used() == 0.4
    usage.update(torch.tensor([3, 3, 3]))  # pushes out 0, 1, 2: the window holds 3, 3, 3, 3
    assert usage.fraction_used() == 0.1
    usage.update(torch.tensor([5, 6]))
    assert usage.fraction_used() == 0.3


def test_perplexity_of_uniform_usage():
    q = make(k=4, d=4)
    with torch.no_grad():
        q.proj.weight.copy_(torch.eye(4, 8))
        q.proj.bias.zero_()
        q.codebook.weight.copy_(torch.eye(4))
    feats = torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1)[None]  # each hits its own code
    out = q.eval()(feats)
    assert torch.equal(out.ids, torch.arange(4)[None])
    assert abs(out.perplexity.item() - 4.0) < 1e-4


def test_a_trainer_step_with_dead_code_steps_1_restarts_every_code_the_step_did_not_use(tmp_path):
    """dead_code_steps = 1: after one step every code that step's batch left unused is dead, so the
    step restarts exactly K minus the number of distinct codes it used."""
    from vq3d.config import load_config
    from vq3d.train.stage1 import Stage1Trainer, read_scalars

    cfg = load_config("tiny", [], ["train.device=cpu", "model.dead_code_steps=1", "loss.gan_start_steps=100"])
    trainer = Stage1Trainer(cfg, tmp_path)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, "disparity": torch.rand(4, 1, 16, 16, generator=g)}
    seen = []
    original = trainer.model.quantizer.forward

    def recording(features):
        out = original(features)
        seen.append(out.ids.clone())
        return out

    trainer.model.quantizer.forward = recording
    logs = read_scalars(trainer.train_step(batch))
    used = len(set(seen[0].flatten().tolist()))
    assert 0 < used < cfg.model.codebook_size
    assert logs["codes_restarted"] == cfg.model.codebook_size - used
