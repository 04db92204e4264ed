"""Grouped codes (`model.codebook_groups`, product quantization): each part of a token's latent
matched to its own block of codebook columns, checked against a brute-force nearest-part search,
the token-major ids carried through Stage 1's encode and decode, and Stage 2 giving a token's ids
one stream position."""

import pytest
import torch
import torch.nn.functional as F

from vq3d.config import ConfigError, demo, load_config, paper
from vq3d.models.quantizer import Quantizer
from vq3d.models.stage1 import Stage1Model


def _quantizer(groups: int, gradient: str = "straight_through") -> Quantizer:
    torch.manual_seed(0)
    return Quantizer(in_dim=8, codebook_size=16, codebook_dim=6, commitment=0.25, dead_code_steps=3,
                     gradient=gradient, groups=groups)  # type: ignore[arg-type]


@pytest.mark.parametrize("gradient", ["straight_through", "rotation"])
def test_each_part_takes_its_nearest_code_in_its_own_columns(gradient):
    q = _quantizer(groups=3, gradient=gradient)
    feats = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    out = q(feats)
    assert out.ids.shape == (2, 15)  # three ids a token, token-major
    latent = q.proj(feats).detach()
    weight = q.codebook.weight.detach()
    parts, expected_ids = [], []
    for g in range(3):  # an independent derivation: Euclidean nearest between unit parts
        z_part = F.normalize(latent[..., 2 * g: 2 * g + 2], dim=-1).reshape(-1, 2)
        book = F.normalize(weight[:, 2 * g: 2 * g + 2], dim=-1)
        nearest = torch.cdist(z_part, book).argmin(dim=-1)
        expected_ids.append(nearest)
        parts.append(book[nearest])
    assert torch.equal(out.ids.view(10, 3), torch.stack(expected_ids, dim=-1))
    expected_codes = torch.cat(parts, dim=-1).view(2, 5, 6) / 3 ** 0.5
    assert torch.allclose(out.codes, expected_codes, atol=1e-6)
    assert torch.allclose(out.codes.norm(dim=-1), torch.ones(2, 5), atol=1e-5)  # unit decoder input
    assert torch.allclose(q.lookup(out.ids), out.codes, atol=1e-6)
    # the VQ loss: each part's codebook and commitment terms, averaged over the parts
    z_parts = F.normalize(latent.view(2, 5, 3, 2), dim=-1)
    e_parts = (expected_codes * 3 ** 0.5).view(2, 5, 3, 2)
    assert torch.allclose(out.loss, 1.25 * F.mse_loss(z_parts, e_parts), atol=1e-6)


def test_one_group_is_the_papers_quantizer():
    q = _quantizer(groups=1)
    feats = torch.randn(3, 4, 8)
    out = q(feats)
    z = F.normalize(q.proj(feats), dim=-1)
    codebook = F.normalize(q.codebook.weight, dim=-1)
    assert torch.equal(out.ids, (z @ codebook.t()).argmax(dim=-1))
    assert torch.allclose(out.codes, codebook[out.ids], atol=1e-6)


def test_a_dead_code_is_one_unused_by_every_group():
    q = _quantizer(groups=2)
    q.train()
    out = q(torch.randn(1, 6, 8))
    used = torch.zeros(16, dtype=torch.bool)
    used[out.ids.flatten()] = True
    assert torch.equal(q.steps_unused == 0, used)


def test_stage1_encodes_and_decodes_grouped_ids():
    cfg = load_config("tiny", [], ["model.codebook_groups=2"])
    model = Stage1Model(cfg).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.encode(images)
    assert model.tokens_per_image == model.grid**2 * 2 and ids.shape == (2, model.tokens_per_image)
    with torch.no_grad():
        direct = model.decode_codes(model.quantize(images).codes)
        from_ids = model.decode(ids)
    assert torch.allclose(direct, from_ids, atol=1e-5)
    with pytest.raises(ValueError, match="token ids of shape"):
        model.decode(ids[:, : model.grid**2])


def test_the_switch_is_checked_and_the_paper_keeps_one_group():
    assert paper().model.codebook_groups == 1
    assert demo().model.codebook_dim % demo().model.codebook_groups == 0
    with pytest.raises(ConfigError, match="codebook_groups"):
        load_config("tiny", [], ["model.codebook_groups=3"])  # tiny's codes have 8 dimensions


def test_a_stage2_run_of_another_sequence_length_is_refused(monkeypatch):
    import vq3d.data.tokens as tokens
    from vq3d.errors import UserError

    monkeypatch.setattr(tokens, "check_same_codebook", lambda *args: None)  # the codebook check is tested elsewhere
    model = Stage1Model(load_config("tiny", [], ["model.codebook_groups=2"]))
    tokens.check_stage2_matches("s1", model, {"codebook_hash": "h", "seq_len": model.grid**2 * 2}, "s2")
    with pytest.raises(UserError, match="Stage 2 models 16 ids an image but Stage 1 makes 32"):
        tokens.check_stage2_matches("s1", model, {"codebook_hash": "h", "seq_len": model.grid**2}, "s2")


def test_stage2_gives_a_token_one_position_and_its_samples_decode():
    from vq3d.models.sampling import sample
    from vq3d.train.stage2 import build_gpt, ids_per_position

    cfg = load_config("tiny", [], ["model.codebook_groups=2", "stage2.group_ids=position"])
    torch.manual_seed(0)
    stage1 = Stage1Model(cfg).eval()
    info = {"seq_len": stage1.tokens_per_image, "grid": stage1.grid, "codebook_size": cfg.model.codebook_size,
            "num_classes": 2}
    assert ids_per_position(cfg, info) == 2
    flat = load_config("tiny", [], ["model.codebook_groups=2"])  # the default: an id a position
    assert ids_per_position(flat, info) == 1
    assert demo().stage2.group_ids == "position"
    assert build_gpt(cfg, info).ids_per_token == 1  # a run made before the key: one id a position
    gpt = build_gpt(cfg, info | {"ids_per_token": 2})
    assert gpt.positions == stage1.grid**2 and gpt.seq_len == stage1.tokens_per_image
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = stage1.encode(images)
    _, loss = gpt(ids, torch.tensor([0, 1]), targets=ids)
    assert loss.isfinite()
    sampled = sample(gpt, 2, torch.tensor([0, 1]), seed=0)
    assert sampled.shape == ids.shape and int(sampled.max()) < cfg.model.codebook_size
    stage1.decode(sampled)  # whole tokens, token-major: what Stage 1's decoder reads
