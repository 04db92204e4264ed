"""Stage-2 GPT: causality, KV cache, class conditioning, overfitting, compile-safe saving."""

import pytest
import torch
import torch.nn.functional as F

from vq3d.config import Stage2Config, demo, paper, tiny
from vq3d.models.gpt import GPT, gpt_param_count, unwrap
from vq3d.models.sampling import sample

VOCAB, SEQ, CLASSES = 11, 9, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make_gpt(num_classes=CLASSES, seed=0, ids_per_token=1, seq=SEQ, **overrides):
    torch.manual_seed(seed)
    cfg = Stage2Config(layers=2, width=32, heads=4, class_dropout=0.0)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return GPT(VOCAB, seq, num_classes, cfg, ids_per_token).eval()


def random_ids(batch, length=SEQ, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_shape_and_loss_is_cross_entropy():
    model = make_gpt()
    ids, labels = random_ids(4), torch.tensor([0, 1, 2, 3])  # 3 = the null class
    logits, loss = model(ids, labels, targets=ids)
    assert logits.shape == (4, SEQ, VOCAB)
    expected = -torch.log_softmax(logits, -1).gather(-1, ids[..., None]).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("ids_per_token", [1, 3])
def test_changing_a_future_token_never_changes_past_logits(ids_per_token):
    model = make_gpt(ids_per_token=ids_per_token)  # SEQ = 9: three tokens of three ids
    ids, labels = random_ids(2), torch.tensor([0, 2])
    base = model(ids, labels)
    for t in range(SEQ):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        logits = model(changed, labels)
        # logits[:, s] predicts ids[:, s] from ids[:, :s]: positions s <= t cannot see ids[:, t]
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        if t + 1 < SEQ:
            assert not torch.allclose(logits[:, t + 1], base[:, t + 1])


def test_first_position_depends_on_class_only():
    model = make_gpt()
    ids = random_ids(2)
    other = random_ids(2, seed=5)
    labels = torch.tensor([1, 1])
    torch.testing.assert_close(model(ids, labels)[:, 0], model(other, labels)[:, 0])
    assert not torch.allclose(model(ids, labels)[:, 0], model(ids, torch.tensor([2, 2]))[:, 0])


def test_class_and_image_ids_have_separate_tables():
    model = make_gpt()
    assert model.tok_emb.num_embeddings == VOCAB
    assert model.class_emb.num_embeddings == CLASSES + 1  # + null class
    # shifting every image embedding leaves position 0 (the class token) untouched
    ids, labels = random_ids(2), torch.tensor([0, 1])
    before = model(ids, labels)[:, 0]
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    torch.testing.assert_close(model(ids, labels)[:, 0], before)


def test_kv_cache_gives_the_full_forward_logits_at_every_position():
    for num_classes in (CLASSES, 0):
        model = make_gpt(num_classes)
        ids = random_ids(3)
        labels = torch.tensor([0, 2, 3]) if num_classes else None
        full = model(ids, labels)  # (B, T, V)
        cache = model.new_cache()
        stepwise = [model.decode(ids[:, :0], labels, cache)]  # class token -> predicts ids[:, 0]
        for t in range(1, SEQ):
            stepwise.append(model.decode(ids[:, t - 1:t], None, cache))
        torch.testing.assert_close(torch.cat(stepwise, 1), full, rtol=0, atol=1e-5)
        # chunked: a prefix of 4 ids at once, then chunks of 2 (needs the offset causal mask)
        cache = model.new_cache()
        chunks = [model.decode(ids[:, :4], labels, cache)]
        for t in range(4, SEQ - 1, 2):
            chunks.append(model.decode(ids[:, t:t + 2], None, cache))
        torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=0, atol=1e-5)


def test_several_ids_a_token_share_one_stream_position():
    model = make_gpt(ids_per_token=3)
    assert model.positions == 3 and model.pos_emb.shape[1] == 3 and len(model.depth) == 2
    assert model.tok_emb.num_embeddings == 3 * VOCAB  # each group its own rows
    ids, labels = random_ids(2), torch.tensor([0, 1])
    full = model(ids, labels)
    # a token's first id is read off its position as with one id a token; the cache gives the same
    cache = model.new_cache()
    firsts = [model.decode(ids[:, :0], labels, cache)] + [model.decode(ids[:, t:t + 3], None, cache)
                                                          for t in (0, 3)]
    torch.testing.assert_close(torch.cat(firsts, 1), full[:, 0::3], rtol=0, atol=1e-5)
    # id g of a token: the depth steps from its position's output and the token's ids before g
    states = model.stream(ids[:, :6], labels)  # (2, 3, C): position p predicts token p
    for p in range(3):
        for g in range(3):
            torch.testing.assert_close(model.id_logits(states[:, p], ids[:, 3 * p: 3 * p + g]),
                                       full[:, 3 * p + g], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="whole tokens"):
        model(ids[:, :8], labels)
    with pytest.raises(ValueError, match="ids a token"):
        make_gpt(ids_per_token=2)  # 9 ids do not make tokens of 2


def test_one_id_a_token_keeps_the_papers_parameters():
    plain = make_gpt()  # the model before ids a token existed: these tensors, these shapes
    outside_blocks = {k: tuple(v.shape) for k, v in plain.state_dict().items() if not k.startswith("blocks.")}
    assert outside_blocks == {"tok_emb.weight": (VOCAB, 32), "class_emb.weight": (CLASSES + 1, 32),
                              "pos_emb": (1, SEQ, 32), "ln_f.weight": (32,), "ln_f.bias": (32,),
                              "head.weight": (VOCAB, 32)}
    three = make_gpt(ids_per_token=3)
    width, mlp = 32, 4 * 32
    depth_step = VOCAB * width + 2 * (2 * width) + (width * mlp + mlp) + (mlp * width + width) + width * VOCAB
    spatial = gpt_param_count(plain) - SEQ * width + 3 * width  # 3 positions, not 9
    assert gpt_param_count(three) == spatial + 2 * VOCAB * width + 2 * depth_step


def test_class_dropout_replaces_labels_only_in_training():
    model = make_gpt(class_dropout=1.0)
    ids, labels = random_ids(2), torch.tensor([0, 1])
    null = torch.full_like(labels, model.null_class)
    model.eval()
    cond, uncond = model(ids, labels), model(ids, null)
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model(ids, labels), cond)  # eval: labels kept
    model.train()  # dropout rate 0 inside blocks, so train mode is deterministic otherwise
    torch.testing.assert_close(model(ids, labels), uncond)


def test_class_dropout_rate_is_respected():
    model = make_gpt(class_dropout=0.5)
    n = 400
    ids, labels = random_ids(n, length=1), torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        model.eval()
        cond, uncond = model(ids, labels)[:, 0], model(ids, torch.full_like(labels, CLASSES))[:, 0]
        torch.manual_seed(0)
        model.train()
        out = model(ids, labels)[:, 0]
    is_null = (out - uncond).abs().amax(-1) < 1e-6
    is_cond = (out - cond).abs().amax(-1) < 1e-6
    assert bool((is_null ^ is_cond).all())
    assert 0.4 < is_null.float().mean().item() < 0.6


def test_param_count_matches_hand_count():
    width, layers, mlp = 32, 2, 4 * 32
    per_block = 2 * 2 * width + (3 * width * width + 3 * width) + (width * width + width) \
        + (width * mlp + mlp) + (mlp * width + width)
    expected = VOCAB * width + (CLASSES + 1) * width + SEQ * width + layers * per_block \
        + 2 * width + width * VOCAB
    assert gpt_param_count(make_gpt()) == expected


def test_presets_build_a_gpt_with_divisible_heads():
    for preset, tokens in ((tiny(), (16 // 4) ** 2), (demo(), (32 // 4) ** 2)):
        model = GPT(preset.model.codebook_size, tokens, 4, preset.stage2)
        assert model(torch.zeros(1, tokens, dtype=torch.long), torch.tensor([0])).shape[-1] \
            == preset.model.codebook_size
    s2 = paper().stage2
    assert (s2.layers, s2.width, s2.heads, s2.mlp_ratio) == (24, 1536, 16, 4)  # VIM-Base


def test_unwrap_saves_without_compile_prefix():
    model = make_gpt()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is model and unwrap(model) is model
    state = unwrap(compiled).state_dict()
    fresh = make_gpt(seed=7)
    fresh.load_state_dict(state)  # strict: same keys, no prefix
    ids, labels = random_ids(1), torch.tensor([1])
    torch.testing.assert_close(fresh(ids, labels), model(ids, labels))


def test_param_groups_cover_every_parameter_once():
    model = make_gpt()
    groups = model.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(model.head.weight) in decayed and id(model.tok_emb.weight) not in decayed


@pytest.mark.parametrize("ids_per_token", [1, 2])
def test_tiny_gpt_memorises_sequences_and_greedy_sampling_recalls_them(ids_per_token):
    torch.manual_seed(0)
    cfg = Stage2Config(layers=2, width=64, heads=4, class_dropout=0.0)
    model = GPT(16, 8, 4, cfg, ids_per_token)
    data = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(3))
    labels = torch.arange(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        _, loss = model(data, labels, targets=data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert model.training
    for cache in (True, False):
        out = sample(model, 4, labels, temperature=0.0, use_cache=cache)
        assert torch.equal(out, data)
    assert model.training  # sample() restores the mode
    stochastic = sample(model, 4, labels, temperature=1.0, top_p=0.9, seed=1)
    assert torch.equal(stochastic, data)  # memorised: nucleus keeps only the learnt token
    assert F.cross_entropy(model.eval()(data, labels).transpose(1, 2), data).item() < 0.05
