"""Stage-2 GPT: a decoder-only transformer over Stage-1 image tokens in raster order.

The transformer's input stream is `x_0 = class (or start) embedding, x_p = embedding(ids[p-1])`
for p >= 1, so the output at position t predicts image token `ids[t]`:

    ids (B,T) --[class | ids[:, :-1]]--> embeddings + positions --N pre-norm blocks--> LN --> head
      --> logits (B,T,V), logits[:, t] predicts ids[:, t]

Class-conditional models give classes their OWN embedding table with `num_classes + 1` rows;
the last row is the null class of classifier-free guidance (labels are replaced by it with
probability `class_dropout` in training). Class and image ids never share a table (taming's
class-conditional GPT offsets class ids into the image vocabulary; docs/design.md, pitfalls).
Unconditional models (`num_classes = 0`) use one learned start embedding at position 0.

Sizes follow ViT-VQGAN's VIM-Base for the paper preset (24 layers, width 1536, 16 heads, MLP 4x;
the VQ3D paper: "We follow the hyperparameters in the base model of VIM"). The layout follows
nanoGPT (pre-norm blocks, GELU MLP, learned positions, N(0, 0.02) init with residual projections
scaled by 1/sqrt(2 * layers)). The output head is untied from the token embedding.

`stream` (and `decode`, its first-id logits) runs the stream incrementally with a `KVCache`
(preallocated per-layer key/value buffers), giving the same states as the full forward pass;
`vq3d.models.sampling` drives it, reading each id with `id_logits`.

Several ids a token (`ids_per_token` G > 1, Stage 1's `model.codebook_groups` with
`stage2.group_ids=position`): the stream holds one position per token, not per id, so its
transformer runs over h*w positions whatever G is. A token enters the stream as the sum of its G
ids' embeddings (each group its own table). Its first id is read off the position's output as
above; id g > 0 from a depth step that adds the embedding of id g-1 to that output and applies one
residual MLP, so it depends on the token's earlier ids (the RQ-Transformer's split of a token's
ids between a spatial and a depth model, Lee et al. 2022, with an MLP for the depth model). Ids
stay token-major outside: (B, h*w*G), logits (B, h*w*G, V). G = 1 is the model above, parameter
for parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vq3d.config import Stage2Config
from vq3d.models.hub import VQ3DHubMixin


class KVCache:
    """Keys and values of every layer for positions `[0, length)` of the input stream.

    Buffers `(B, heads, max_len, head_dim)` are allocated on the first write of each layer with
    the batch size, dtype and device of that write (so autocast dtypes work), then filled in place.
    """

    def __init__(self, num_layers: int, max_len: int):
        self.max_len = max_len
        self.length = 0  # positions already stored (the next write starts here)
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, S, hs) at positions [length, length+S); return all (B, nh, length+S, hs)."""
        B, nh, S, hs = k.shape
        end = self.length + S
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end}")
        if self.keys[layer] is None:
            self.keys[layer] = k.new_zeros(B, nh, self.max_len, hs)
            self.values[layer] = v.new_zeros(B, nh, self.max_len, hs)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more positions as stored (called once per `GPT.stream`, after every layer)."""
        self.length += n


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, layer_index: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"stage2 width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.layer_index = layer_index  # which KV-cache slot this layer uses
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, S, C) at stream positions [start, start+S), start = cache.length (0 without cache)."""
        B, S, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, S, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, S, hs)
        k = k.view(B, S, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, S, self.heads, C // self.heads).transpose(1, 2)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(self.layer_index, k, v)  # (B, nh, start+S, hs)
        mask, is_causal = None, False
        if start == 0:
            is_causal = S > 1  # square causal mask
        elif S > 1:
            # queries at absolute positions start+i see keys j <= start+i (SDPA's is_causal
            # would align the mask top-left, which is wrong when keys outnumber queries)
            q_pos = torch.arange(start, start + S, device=x.device)[:, None]
            mask = torch.arange(start + S, device=x.device)[None, :] <= q_pos  # (S, start+S)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, S, hs)
        y = y.transpose(1, 2).reshape(B, S, C)
        return self.proj_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, cfg: Stage2Config, layer_index: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg.width, cfg.heads, cfg.dropout, layer_index)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio * cfg.width, cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class DepthStep(nn.Module):
    """From the output for a token's id g-1 to its id g: x + emb(id) then a residual MLP."""

    def __init__(self, vocab_size: int, cfg: Stage2Config):
        super().__init__()
        self.prev_emb = nn.Embedding(vocab_size, cfg.width)
        self.ln = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg.width, cfg.mlp_ratio * cfg.width, cfg.dropout)
        self.ln_out = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size, bias=False)

    def forward(self, x: torch.Tensor, prev_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., C) the state for id g-1, prev_ids (...) long -> (state for id g, its logits (..., V))."""
        x = x + self.prev_emb(prev_ids)
        x = x + self.mlp(self.ln(x))
        return x, self.head(self.ln_out(x))


class GPT(nn.Module, VQ3DHubMixin):
    """Next-image-token model. `GPT(vocab_size, seq_len, num_classes, cfg)`;
    `GPT.from_pretrained(dir_or_hub_id)` loads an exported one (vq3d.models.hub).

    vocab_size: Stage-1 codebook size K. seq_len: image ids per image (h*w*G). num_classes: 0 for
    an unconditional model, else the number of classes (labels 0..num_classes-1; label
    `num_classes` is the null class). ids_per_token: G, the ids that share a stream position.
    """

    hub_kind = "stage2"

    @classmethod
    def from_hub_config(cls, cfg, meta: dict) -> "GPT":
        return cls(meta["codebook_size"], meta["seq_len"], meta["num_classes"], cfg.stage2,
                   meta.get("ids_per_token", 1))

    def __init__(self, vocab_size: int, seq_len: int, num_classes: int, cfg: Stage2Config,
                 ids_per_token: int = 1):
        super().__init__()
        if vocab_size < 1 or seq_len < 1 or num_classes < 0 or ids_per_token < 1 or seq_len % ids_per_token:
            raise ValueError(f"bad GPT sizes: vocab {vocab_size}, seq_len {seq_len}, classes {num_classes}, "
                             f"ids a token {ids_per_token}")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.ids_per_token = ids_per_token
        self.positions = seq_len // ids_per_token  # stream positions: one a token
        self.num_classes = num_classes
        self.class_dropout = cfg.class_dropout
        self.num_layers = cfg.layers
        width = cfg.width

        # image ids only; group g's ids are rows [g K, (g+1) K)
        self.tok_emb = nn.Embedding(ids_per_token * vocab_size, width)
        if num_classes > 0:
            self.class_emb = nn.Embedding(num_classes + 1, width)  # last row: null class
        else:
            self.start_emb = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_emb = nn.Parameter(torch.zeros(1, self.positions, width))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)  # a token's first id
        self.depth = nn.ModuleList(DepthStep(vocab_size, cfg) for _ in range(ids_per_token - 1))
        self._init_weights(cfg.layers)

    @property
    def null_class(self) -> int:
        """Label of the null class (classifier-free guidance); only for conditional models."""
        if self.num_classes == 0:
            raise ValueError("an unconditional GPT has no null class")
        return self.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def spec(self) -> dict[str, int]:
        """The constructor's sizes (store them beside a checkpoint's state dict)."""
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "num_classes": self.num_classes,
                "ids_per_token": self.ids_per_token}

    def _init_weights(self, layers: int) -> None:
        # nanoGPT / GPT-2: N(0, 0.02) everywhere, residual projections N(0, 0.02 / sqrt(2 L))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * layers))
        nn.init.normal_(self.pos_emb, std=0.02)
        if not self.conditional:
            nn.init.normal_(self.start_emb, std=0.02)

    def new_cache(self, max_len: int | None = None) -> KVCache:
        """An empty KV cache for up to `max_len` (default: one a token) stream positions."""
        return KVCache(self.num_layers, max_len or self.positions)

    def _check_labels(
        self, labels: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if labels is None:  # a conditional model without labels samples from the null class
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        if labels.shape != (batch,):  # (values are checked in `sample`: no GPU sync per step here)
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        return labels

    def stream(
        self, ids: torch.Tensor, labels: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Append whole tokens to the input stream and return the processed positions' states.

        ids (B, S*G) long in [0, V) (not checked: with G > 1 an id out of range reads another
        group's row): the ids of S tokens, token-major. If the stream is empty (no cache, or
        cache.length == 0) the class/start embedding is prepended, so S+1 positions are processed
        and `labels` (B,) is used; otherwise `labels` is ignored (the class sits in the cache).
        Returns (B, S', C), S' = S or S+1, before the final norm: each predicts the next token.
        """
        B, n = ids.shape
        G = self.ids_per_token
        if n % G:
            raise ValueError(f"ids must hold whole tokens of {G} ids, got {n}")
        start = cache.length if cache is not None else 0
        groups = torch.arange(G, device=ids.device) * self.vocab_size  # each group's rows of tok_emb
        x = self.tok_emb(ids.reshape(B, n // G, G) + groups).sum(2)  # (B, S, C)
        if start == 0:
            labels = self._check_labels(labels, B, ids.device)
            first = self.class_emb(labels)[:, None] if self.conditional else self.start_emb.expand(B, 1, -1)
            x = torch.cat([first.to(x.dtype), x], dim=1)  # (B, S+1, C)
        S = x.shape[1]
        if start + S > self.positions:
            raise ValueError(f"stream length {start + S} exceeds its {self.positions} positions")
        x = self.drop(x + self.pos_emb[:, start:start + S])
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.advance(S)
        return x

    def decode(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """`stream`, then the logits of each processed position's first id: (B, S', V), or (B, 1,
        V) for the last position only if `last_only` (with one id a token: the next image id)."""
        x = self.stream(ids, labels, cache)
        if last_only:
            x = x[:, -1:]
        return self.first_id_logits(x)  # (B, S', V)

    def first_id_logits(self, state: torch.Tensor) -> torch.Tensor:
        """state (..., C) a position's stream output -> logits (..., V) of its token's first id."""
        return self.head(self.ln_f(state))

    def id_logits(self, state: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Logits of a token's id g: state (B, C) its position's output, given (B, g) long the
        token's ids 0..g-1 already drawn -> (B, V)."""
        if given.shape[1] == 0:
            return self.first_id_logits(state)
        for g in range(given.shape[1]):
            state, logits = self.depth[g](state, given[:, g])
        return logits

    def forward(
        self, ids: torch.Tensor, labels: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits: ids (B, T) long, labels (B,) long or None -> logits (B, T, V).

        logits[:, t] predicts ids[:, t] from the class and ids[:, :t]. In train mode labels are
        replaced by the null class with probability `class_dropout`. With `targets` (B, T) long
        (usually `ids`; -1 entries are ignored) returns (logits, mean cross-entropy).
        """
        B, T = ids.shape
        G = self.ids_per_token
        if T < G or T % G:
            raise ValueError(f"ids must hold whole tokens of {G} ids, got {T}")
        if self.conditional and labels is not None and self.training and self.class_dropout > 0:
            drop = torch.rand(B, device=ids.device) < self.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        state = self.stream(ids[:, :-G], labels)  # (B, T/G, C): position p predicts token p
        per_id = [self.first_id_logits(state)]
        tokens = ids.reshape(B, T // G, G)
        for g, step in enumerate(self.depth):  # id g+1 of each token, from its true id g
            state, logits = step(state, tokens[..., g])
            per_id.append(logits)
        logits = torch.stack(per_id, dim=2).reshape(B, T, self.vocab_size)  # token-major, as ids
        if targets is None:
            return logits
        flat_logits = logits.reshape(-1, self.vocab_size).float()
        loss = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups (nanoGPT): decay matrices of linear layers; not biases, norms, embeddings."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def unwrap(model: nn.Module) -> nn.Module:
    """The module under `torch.compile` (its state dict has no `_orig_mod.` prefix); save this one."""
    return getattr(model, "_orig_mod", model)


def gpt_param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (of the unwrapped model)."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad or not trainable_only)
