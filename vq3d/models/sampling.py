"""Stage-2 sampling: logit filters (top-k, top-p), classifier-free guidance, the sampling loop.

Per step, in this order (docs/design.md, pitfalls):
  1. guidance on raw logits: `uncond + guidance * (cond - uncond)` (classifier-free guidance,
     Ho & Salimans 2022), from one doubled batch [labels; null class];
  2. temperature (near 0: greedy argmax, never NaN);
  3. top-k and top-p (nucleus, Holtzman et al. 2020) filtering, each on its own: taming's cached
     sampler applies top-p only when top-k is set, ours does not;
  4. a draw from a `torch.Generator`, so a seed reproduces samples and the global RNG is untouched.
"""

from __future__ import annotations

import torch

from vq3d.models.gpt import GPT, unwrap

GREEDY_TEMPERATURE = 1e-6  # temperatures at or below this pick the argmax
TOP_P_TOLERANCE = 1e-6  # a cumulative probability within this of p counts as reaching p (fp rounding)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits of filtered-out tokens to -inf. logits (..., V) -> (..., V).

    top_k: keep exactly the k largest (ties at the boundary go to the lower index); 0 or >= V
    is off. top_p: keep the smallest set of most probable tokens whose total probability is
    >= p (at least one token); 1.0 is off. The two are independent; with both, top-p acts on
    the distribution renormalised over the top-k survivors.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must lie in [0, 1] (1 = off), got {top_p}")
    vocab = logits.shape[-1]
    use_k = 0 < top_k < vocab
    use_p = top_p < 1.0
    if not (use_k or use_p):
        return logits
    # a stable descending sort ranks ties by index, so the kept set is deterministic
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    remove_sorted = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if use_k:
        remove_sorted[..., top_k:] = True
        sorted_logits = sorted_logits.masked_fill(remove_sorted, float("-inf"))
    if use_p:
        probs = torch.softmax(sorted_logits.double(), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly better tokens
        # keep a token while the better ones have not yet reached p; the top token always stays
        remove_sorted |= mass_before >= top_p - TOP_P_TOLERANCE
        remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + guidance * (cond - uncond); (B, V) each -> (B, V)."""
    return uncond + guidance * (cond - uncond)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row: logits (B, V) -> ids (B,) long.

    temperature <= GREEDY_TEMPERATURE returns the argmax (first index on ties).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature <= GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    # shift the row maximum to 0 first: a tiny temperature can then only push other logits
    # towards -inf (probability 0), never overflow to +inf (softmax would give NaN)
    logits = logits.float()
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    scaled = filter_logits(scaled, top_k, top_p)
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _NextLogits:
    """Logits for the next image id of every sample (guidance applied), cached or not.

    The stream runs once a token: its output state is kept for the token's later ids, which the
    model's depth steps read off it (`GPT.id_logits`); with one id a token that is every id.
    """

    def __init__(self, model: GPT, labels: torch.Tensor | None, guidance: float, use_cache: bool):
        self.model = model
        self.guided = model.conditional and labels is not None and guidance != 1.0
        self.guidance = guidance
        if self.guided:  # one doubled batch: [labels; null]
            null = torch.full_like(labels, model.null_class)
            labels = torch.cat([labels, null])
        self.labels = labels
        self.cache = model.new_cache() if use_cache else None
        self.state: torch.Tensor | None = None  # (n or 2n, C): the current token's position output

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (n, t): the samples so far (t = 0 at the start) -> logits (n, V) for id t."""
        G = self.model.ids_per_token
        token, group = divmod(ids.shape[1], G)
        if group == 0:  # a new token: run the stream up to its position
            if self.cache is None:
                new = ids  # recompute the whole prefix
            elif self.cache.length == 0:
                new = ids  # first call: class/start token (+ any prefix)
            else:
                new = ids[:, (self.cache.length - 1) * G:]  # the tokens not in the cache yet
            if self.guided:
                new = torch.cat([new, new])
            self.state = self.model.stream(new, self.labels, self.cache)[:, -1]
        given = ids[:, token * G:]  # (n, group): this token's ids so far
        if self.guided:
            given = torch.cat([given, given])
        logits = self.model.id_logits(self.state, given)  # (B, V)
        if self.guided:
            cond, uncond = logits.chunk(2)
            logits = guided_logits(cond, uncond, self.guidance)
        return logits


def sample(
    model: GPT,
    n: int,
    labels: torch.Tensor | None = None,
    seq_len: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Sample n token sequences: -> ids (n, seq_len) long, on the model's device.

    labels (n,) long for a class-conditional model (None: the null class); ignored by an
    unconditional one. seq_len (ids, whole tokens of model.ids_per_token) defaults to
    model.seq_len. guidance != 1 doubles the batch
    (conditional + null class). Randomness comes from `generator` (on the model's device) or a
    new one seeded with `seed` (default 0); the global RNG is not used. The model runs in eval
    mode under no_grad; its train/eval mode is restored afterwards. `use_cache=False`
    recomputes the full prefix every step (same samples, much slower).
    """
    model = unwrap(model)
    device = next(model.parameters()).device
    seq_len = seq_len or model.seq_len
    if not 1 <= seq_len <= model.seq_len or seq_len % model.ids_per_token:
        raise ValueError(f"seq_len must lie in [1, {model.seq_len}] and hold whole tokens of "
                         f"{model.ids_per_token} ids, got {seq_len}")
    if model.conditional and labels is not None:
        labels = labels.to(device=device, dtype=torch.long)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if n and (labels.min() < 0 or labels.max() > model.num_classes):
            raise ValueError(f"labels must lie in [0, {model.num_classes}] (the last is the null class)")
    else:
        labels = None
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else seed)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            next_logits = _NextLogits(model, labels, guidance, use_cache)
            ids = torch.zeros(n, seq_len, dtype=torch.long, device=device)
            for t in range(seq_len):
                logits = next_logits(ids[:, :t])
                ids[:, t] = sample_next(logits, temperature, top_k, top_p, generator)
    finally:
        model.train(was_training)
    return ids
