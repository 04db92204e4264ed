"""Stage-2 sampling: top-k/top-p filters and their edge cases, temperature, guidance, seeds."""

import math

import pytest
import torch

from vq3d.config import Stage2Config
from vq3d.models.gpt import GPT
from vq3d.models.sampling import filter_logits, guided_logits, sample, sample_next

VOCAB, SEQ, CLASSES = 13, 10, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make_gpt(num_classes=CLASSES, seed=0, ids_per_token=1):
    torch.manual_seed(seed)
    cfg = Stage2Config(layers=2, width=32, heads=4, class_dropout=0.0)
    model = GPT(VOCAB, SEQ, num_classes, cfg, ids_per_token).eval()
    with torch.no_grad():  # sharper, more varied distributions than the 0.02-std init gives
        model.head.weight.mul_(100.0)
        for step in model.depth:
            step.head.weight.mul_(100.0)
    return model


def kept(logits):
    return set(torch.nonzero(torch.isfinite(logits)).flatten().tolist())


# ----------------------------------------------------------------------------- filters


def test_top_k_keeps_exactly_k_largest():
    logits = torch.tensor([0.3, 2.0, -1.0, 5.0, 1.0, 4.0])
    for k, expected in ((1, {3}), (2, {3, 5}), (3, {1, 3, 5}), (5, {0, 1, 3, 4, 5})):
        out = filter_logits(logits, top_k=k)
        assert kept(out) == expected
        torch.testing.assert_close(out[sorted(expected)], logits[sorted(expected)])  # untouched


def test_top_k_ties_keep_exactly_k_lowest_indices_first():
    logits = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
    assert kept(filter_logits(logits, top_k=2)) == {1, 2}
    assert kept(filter_logits(torch.zeros(7), top_k=3)) == {0, 1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.3, 0.5, 0.15])  # ranked: 2 (0.5), 1 (0.3), 3 (0.15), 0 (0.05)
    logits = probs.log()
    cases = {0.3: {2}, 0.5: {2}, 0.51: {2, 1}, 0.7: {2, 1}, 0.8: {2, 1}, 0.81: {2, 1, 3},
             0.95: {2, 1, 3}, 0.96: {0, 1, 2, 3}, 0.0: {2}}
    for p, expected in cases.items():
        assert kept(filter_logits(logits, top_p=p)) == expected, p


def test_top_p_works_without_top_k_and_row_by_row():
    logits = torch.stack([torch.tensor([0.5, 0.3, 0.15, 0.05]).log(),
                          torch.tensor([0.05, 0.15, 0.3, 0.5]).log()])
    out = filter_logits(logits, top_k=0, top_p=0.7)  # the taming bug: top-p ignored without top-k
    assert kept(out[0]) == {0, 1} and kept(out[1]) == {2, 3}
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, 0, 0.7, gen) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {2, 3}


def test_top_k_and_top_p_combine_with_renormalisation():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    assert kept(filter_logits(logits, top_p=0.55)) == {0, 1}
    # top-2 renormalised: 0.4/0.7 = 0.571 >= 0.55, so one token is enough
    assert kept(filter_logits(logits, top_k=2, top_p=0.55)) == {0}
    assert kept(filter_logits(logits, top_k=3, top_p=1.0)) == {0, 1, 2}


def test_filters_off_at_their_edges():
    logits = torch.randn(3, 9) * 4
    logits[0, 0] = -30.0  # a probability of ~1e-13 survives p = 1
    for k in (0, 9, 10, 1000):
        assert torch.equal(filter_logits(logits, top_k=k), logits)
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    assert torch.equal(filter_logits(logits, top_k=9, top_p=1.0), logits)
    with pytest.raises(ValueError):
        filter_logits(logits, top_k=-1)
    with pytest.raises(ValueError):
        filter_logits(logits, top_p=1.5)


def test_near_zero_temperature_is_greedy_without_nans():
    logits = torch.tensor([[0.1, 2.0, 1.9, -3.0], [5.0, 5.0, -1.0, 0.0], [1e30, 0.0, -1e30, 2e30]])
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.0, 1e-8, 1e-7):
        assert sample_next(logits, temperature, 0, 0.9, gen).tolist() == [1, 0, 3]
    # a small but non-greedy temperature that overflows float32 (1e35 / 1e-5) must not give NaN
    huge = torch.tensor([[1e35, 0.0, -1e35], [0.0, 1e35, 9.9e34]])
    for _ in range(20):
        assert sample_next(huge, 1e-5, 0, 1.0, gen).tolist() == [0, 1]
    # and temperature 1e-3 on ordinary logits is (almost surely) the argmax
    assert sample_next(logits[:1], 1e-3, 0, 1.0, gen).tolist() == [1]


def test_temperature_one_samples_the_softmax():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits.expand(1000, 2), 1.0, 0, 1.0, gen) for _ in range(4)])
    assert abs(draws.float().mean().item() - 0.75) < 0.03


# ----------------------------------------------------------------------------- the loop


def full_forward_next_logits(model, ids, labels):
    """Logits for id t from a full teacher-forced forward over ids (B, t) and dummy ids up to a
    whole token (logits at t see ids before t only)."""
    t = ids.shape[1]
    padded = torch.cat([ids, torch.zeros(len(ids), model.ids_per_token - t % model.ids_per_token,
                                         dtype=torch.long)], 1)
    return model(padded, labels)[:, t]


def reference_sample(model, labels, seed, temperature, top_k, top_p, guidance):
    """Sampling written out with the model's full forward and the guidance formula."""
    gen = torch.Generator().manual_seed(seed)
    null = torch.full_like(labels, model.null_class)
    ids = torch.zeros(len(labels), 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(SEQ):
            cond = full_forward_next_logits(model, ids, labels)
            logits = cond if guidance == 1.0 else \
                guided_logits(cond, full_forward_next_logits(model, ids, null), guidance)
            ids = torch.cat([ids, sample_next(logits, temperature, top_k, top_p, gen)[:, None]], 1)
    return ids


def test_guidance_formula():
    cond, uncond = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), torch.tensor([-1.0, 9.0]))


def test_guidance_one_equals_plain_conditional_sampling():
    model = make_gpt()
    labels = torch.tensor([0, 1, 2, 0])
    ref = reference_sample(model, labels, 4, 1.0, 5, 0.9, 1.0)
    assert torch.equal(sample(model, 4, labels, temperature=1.0, top_k=5, top_p=0.9, seed=4), ref)
    # the doubled-batch path at (almost) 1 picks the same greedy tokens as the plain one
    plain = sample(model, 4, labels, temperature=0.0, guidance=1.0)
    doubled = sample(model, 4, labels, temperature=0.0, guidance=1.0 + 1e-9)
    assert torch.equal(plain, doubled)


@pytest.mark.parametrize("ids_per_token", [1, 2])
def test_guidance_is_applied_before_temperature_and_filters(ids_per_token):
    model = make_gpt(ids_per_token=ids_per_token)
    labels = torch.tensor([0, 1, 2, 1, 0])
    for guidance, temperature, top_k, top_p in ((3.0, 0.0, 0, 1.0), (2.0, 0.7, 4, 0.8), (0.0, 1.0, 0, 0.6)):
        ref = reference_sample(model, labels, 9, temperature, top_k, top_p, guidance)
        out = sample(model, 5, labels, temperature=temperature, top_k=top_k, top_p=top_p,
                     guidance=guidance, seed=9)
        assert torch.equal(out, ref), guidance
    assert not torch.equal(sample(model, 5, labels, temperature=0.0, guidance=5.0),
                           sample(model, 5, labels, temperature=0.0, guidance=1.0))


def test_fixed_seed_reproduces_and_other_seed_differs_without_touching_global_rng():
    model = make_gpt()
    labels = torch.tensor([0, 1, 2, 3])
    state = torch.get_rng_state()
    first = sample(model, 4, labels, seed=123, guidance=2.0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(sample(model, 4, labels, seed=123, guidance=2.0), first)
    assert not torch.equal(sample(model, 4, labels, seed=124, guidance=2.0), first)
    gen = torch.Generator().manual_seed(123)
    assert torch.equal(sample(model, 4, labels, generator=gen, guidance=2.0), first)


@pytest.mark.parametrize("ids_per_token", [1, 2])
def test_cache_and_no_cache_sample_the_same_ids(ids_per_token):
    for num_classes, labels in ((CLASSES, torch.tensor([2, 0, 3])), (0, None)):
        model = make_gpt(num_classes, ids_per_token=ids_per_token)
        guidance = 1.5 if num_classes else 1.0
        with_cache = sample(model, 3, labels, guidance=guidance, top_p=0.95, seed=5)
        without = sample(model, 3, labels, guidance=guidance, top_p=0.95, seed=5, use_cache=False)
        assert with_cache.shape == (3, SEQ) and with_cache.dtype == torch.long
        assert torch.equal(with_cache, without)
        assert with_cache.min() >= 0 and with_cache.max() < VOCAB


def test_shorter_sequences_and_bad_arguments():
    model = make_gpt()
    assert sample(model, 2, torch.tensor([0, 1]), seq_len=4).shape == (2, 4)
    with pytest.raises(ValueError):
        sample(model, 2, torch.tensor([0, 1]), seq_len=SEQ + 1)
    grouped = make_gpt(ids_per_token=2)
    assert sample(grouped, 2, torch.tensor([0, 1]), seq_len=4).shape == (2, 4)
    with pytest.raises(ValueError, match="whole tokens"):
        sample(grouped, 2, torch.tensor([0, 1]), seq_len=5)
    with pytest.raises(ValueError):
        sample(model, 2, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        sample(model, 2, torch.tensor([0, CLASSES + 1]))


def test_the_sampling_benchmark_builds_the_demos_gpt():
    from vq3d.bench.sample import _settings, run_setting

    vocab, seq_len, _, ids_per_token = _settings(1024)["demo"]
    assert (seq_len, ids_per_token) == (128, 2)  # 8x8 tokens of two ids, a token a position
    row = run_setting(VOCAB, 8, Stage2Config(layers=1, width=16, heads=2), batch=2, ids_per_token=2)
    assert row["ids_per_token"] == 2 and row["identical_samples"]
