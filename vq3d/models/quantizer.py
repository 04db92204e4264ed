"""Factorized, l2-normalized vector quantizer (ViT-VQGAN, Yu et al. 2021, Sec. 3.2).

Encoder features are linearly projected to a low dimension (`codebook_dim`, 32 in the paper
preset) and l2-normalized; codes are l2-normalized too, so the nearest code is the one with the
largest cosine similarity. Gradients pass to the encoder with the straight-through estimator
(the paper's), or with the rotation trick (`gradient="rotation"`, Fifty et al. 2024,
"Restructuring Vector Quantization with the Rotation Trick"): the code is the latent rotated onto
it by a fixed rotation, so the encoder's gradient is the code's gradient rotated back, which
carries the angle between the two (straight-through copies it unchanged).

VQ loss (van den Oord et al. 2017): ||sg(z) - e||^2 moves the codebook (weight 1) plus
beta * ||z - sg(e)||^2, the encoder's commitment (beta = `commitment`, 0.25). Taming's default
`legacy=True` swaps the two sides; we do not.

Codes unused for `dead_code_steps` training steps are restarted from recent latents, so the
codebook does not collapse.

Groups (`groups` G, a departure; 1 is the paper's): each token's latent is cut into G equal parts,
each l2-normalized and matched to its own block of the codebook's columns (product quantization,
Jegou et al. 2011), so a token carries G ids, G x log2(K) bits, for the same decoder input (the G
unit parts joined and scaled by 1/sqrt(G), a unit vector). Ids are laid out token-major: token t's
G ids at t*G .. t*G + G - 1.

Precision and synchronisation: latents, codes, distances and the VQ loss are fp32 under
autocast too (in bf16 near codes tie); usage counts, dead-code restarts and the usage window
stay on the device with no host synchronisation (no `nonzero`, `bincount` or `.cpu()` per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vq3d.precision import full_precision


@dataclass
class QuantizerOutput:
    codes: Tensor  # (B, T, code_dim) quantized vectors; the gradient reaches the latents (see `gradient`)
    ids: Tensor  # (B, T * groups) long, token-major
    loss: Tensor  # scalar VQ loss (codebook + commitment)
    latents: Tensor  # (B, T, code_dim) l2-normalized encoder latents (before quantization)
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code histogram


VQGradient = Literal["straight_through", "rotation"]


def rotation_trick(z: Tensor, e: Tensor) -> Tensor:
    """(..., d) vectors equal to `e` whose gradient reaches `z` as R^T g, where R is the fixed
    rotation (and |e| / |z| scaling) taking z to e: R = I - 2 r r^T + 2 e_hat z_hat^T with
    r = (z_hat + e_hat) / |z_hat + e_hat| (Fifty et al. 2024, Sec. 4). No gradient reaches `e`
    (the VQ loss moves the codebook)."""
    z_norm, e_norm = z.norm(dim=-1, keepdim=True).clamp_min(1e-12), e.norm(dim=-1, keepdim=True)
    z_hat, e_hat = (z / z_norm).detach(), (e / e_norm.clamp_min(1e-12)).detach()
    # z_hat = -e_hat leaves r undefined: eps keeps it finite (the rotation is then a reflection)
    r = F.normalize(z_hat + e_hat, dim=-1, eps=1e-6)
    rotated = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * e_hat * (z_hat * z).sum(-1, keepdim=True)
    rotated = rotated * (e_norm / z_norm).detach()
    return e.detach() + (rotated - rotated.detach())  # the exact code forward, R^T g backward


class Quantizer(nn.Module):
    def __init__(self, in_dim: int, codebook_size: int, codebook_dim: int, commitment: float,
                 dead_code_steps: int, gradient: VQGradient = "straight_through", groups: int = 1) -> None:
        super().__init__()
        if gradient not in ("straight_through", "rotation"):
            raise ValueError(f"unknown VQ gradient {gradient!r}: use straight_through or rotation")
        if groups < 1 or codebook_dim % groups:
            raise ValueError(f"codebook_dim {codebook_dim} must split into {groups} equal groups")
        self.gradient = gradient
        self.groups = groups
        self.proj = nn.Linear(in_dim, codebook_dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        nn.init.normal_(self.codebook.weight)
        self.commitment = commitment
        self.dead_code_steps = dead_code_steps
        # Training steps since each code was last chosen (a buffer, so it is checkpointed).
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    @property
    def codebook_size(self) -> int:
        return self.codebook.num_embeddings

    def normalized_codebook(self) -> Tensor:
        """(K, code_dim) codes, each group's part of unit length (with one group: unit codes)."""
        return self._code_parts().flatten(1)

    def _code_parts(self) -> Tensor:
        """(K, groups, code_dim / groups) unit-length parts of the codes."""
        weight = self.codebook.weight
        return F.normalize(weight.view(weight.shape[0], self.groups, -1), dim=-1)

    def _pick(self, parts: Tensor, ids: Tensor) -> Tensor:
        """(K, G, d / G) code parts, ids (..., G) -> each group's chosen part (..., G, d / G)."""
        return parts[ids, torch.arange(self.groups, device=ids.device)]

    def _join(self, parts: Tensor) -> Tensor:
        """(B, T, G, d / G) unit parts -> (B, T, d) unit vectors."""
        return parts.flatten(-2) * self.groups ** -0.5

    def lookup(self, ids: Tensor) -> Tensor:
        """ids (B, T * groups) -> unit code vectors (B, T, code_dim)."""
        ids = ids.reshape(ids.shape[0], -1, self.groups)
        return self._join(self._pick(self._code_parts(), ids))

    def forward(self, features: Tensor) -> QuantizerOutput:
        """features (B, T, in_dim) -> QuantizerOutput (codes, latents and loss in fp32)."""
        B, T = features.shape[:2]
        with full_precision():  # a tiny projection: in bf16 its rounding alone flips near codes
            z = F.normalize(self.proj(features.float()).view(B, T, self.groups, -1), dim=-1)  # (B, T, G, d/G)
            codebook = self._code_parts()  # (K, G, d/G)
            with torch.no_grad():  # each group's nearest code by cosine: (G, B*T, K) -> (B*T, G)
                # a batched matmul and `max` over contiguous rows: 3.5 ms where the einsum's strided
                # (B*T, G, K) view and `argmax` took 5.2 ms, of a ~105 ms demo step (2 cores)
                similarity = torch.bmm(z.detach().flatten(0, 1).transpose(0, 1), codebook.permute(1, 2, 0))
                ids = similarity.max(dim=-1).indices.t().contiguous()
            e = self._pick(codebook, ids).view_as(z)
            codebook_loss = F.mse_loss(e, z.detach())
            commitment_loss = F.mse_loss(z, e.detach())
        loss = codebook_loss + self.commitment * commitment_loss
        codes = self._join(rotation_trick(z, e) if self.gradient == "rotation" else z + (e - z).detach())
        ids = ids.view(B, T * self.groups)
        z = self._join(z)
        counts = code_counts(ids, self.codebook_size).float()
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
        if self.training:
            self._update_usage(counts)
        return QuantizerOutput(codes, ids, loss, z, perplexity)

    @torch.no_grad()
    def _update_usage(self, counts: Tensor) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.steps_unused.copy_(torch.where(counts > 0, 0, self.steps_unused + 1))  # no boolean indexing

    @torch.no_grad()
    def restart_dead_codes(self, latents: Tensor, generator: torch.Generator | None = None,
                           allowed: Tensor | bool = True) -> Tensor:
        """Replace codes unused for `dead_code_steps` steps by random recent latents (N, d).

        Every code draws a candidate (a random latent plus 1% noise, from `generator`, which
        must live on the latents' device) and the dead ones take it, so nothing waits on the
        host to learn how many are dead. `allowed` (a 0-d bool tensor) False restarts none (a
        skipped step's latents may be nan). Under DDP every rank must call this with its latents;
        rank 0's candidates are broadcast so the codebooks stay identical. Returns the number
        of codes restarted, a 0-d tensor on the device.
        """
        latents = latents.detach().reshape(-1, latents.shape[-1])
        size, dim = self.codebook_size, latents.shape[-1]
        dead = (self.steps_unused >= self.dead_code_steps) & allowed  # (K,)
        pick = torch.randint(latents.shape[0], (size,), generator=generator, device=latents.device)
        noise = torch.randn(size, dim, generator=generator, device=latents.device)
        candidates = F.normalize(latents[pick].float() + 0.01 * noise, dim=-1).to(self.codebook.weight.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(candidates, src=0)
        self.codebook.weight.copy_(torch.where(dead[:, None], candidates, self.codebook.weight))
        self.steps_unused.masked_fill_(dead, 0)
        return dead.sum()


def code_counts(ids: Tensor, codebook_size: int) -> Tensor:
    """How often each code occurs in `ids` (any shape) -> (K,) int64, on ids' device (a scatter:
    `bincount` asks the host for the largest id on CUDA)."""
    flat = ids.reshape(-1)
    counts = torch.zeros(codebook_size, dtype=torch.long, device=ids.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


class CodebookUsage:
    """Unique codes used over a sliding window of the most recent `window` ids (docs/design.md).

    The window lives on the ids' device and `update` runs there without host synchronisation;
    `fraction_used` reads it (call it when logging)."""

    def __init__(self, codebook_size: int, window: int = 65536) -> None:
        self.codebook_size = codebook_size
        self.window = window
        self.buffer: Tensor | None = None  # (window,) ids, -1 where none yet; made on first update
        self.position = 0

    def update(self, ids: Tensor) -> None:
        ids = ids.detach().flatten()[-self.window:]
        if self.buffer is None or self.buffer.device != ids.device:
            self.buffer = torch.full((self.window,), -1, dtype=torch.long, device=ids.device)
        n = ids.numel()
        slots = (self.position + torch.arange(n, device=ids.device)) % self.window
        self.buffer.index_copy_(0, slots, ids.long())
        self.position = (self.position + n) % self.window

    def fraction_used(self) -> float:
        if self.buffer is None:
            return 0.0
        seen = self.buffer[self.buffer >= 0]
        return float(torch.unique(seen).numel()) / self.codebook_size
