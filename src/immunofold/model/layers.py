"""Building blocks: relative-position attention bias, pair-free transformer layer, transition, distogram head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MAX_RELATIVE_OFFSET = 32  # residues; longer sequence separations share one bucket


def relative_position_buckets(chain_slot: torch.Tensor) -> torch.Tensor:
    """Bucket of each residue pair [*, N, N]: clipped sequence offset within a chain, one bucket per chain pair otherwise.

    chain_slot [*, N] (0 or 1). Buckets 0..2*MAX_RELATIVE_OFFSET for the same chain,
    2*MAX+1 (first -> second chain) and 2*MAX+2 (second -> first).
    """
    n = chain_slot.shape[-1]
    index = torch.arange(n, device=chain_slot.device)
    offset = (index[None, :] - index[:, None]).clamp(-MAX_RELATIVE_OFFSET, MAX_RELATIVE_OFFSET) + MAX_RELATIVE_OFFSET
    same_chain = chain_slot.unsqueeze(-1) == chain_slot.unsqueeze(-2)
    cross = 2 * MAX_RELATIVE_OFFSET + 1 + (chain_slot.unsqueeze(-1) > chain_slot.unsqueeze(-2)).long()
    return torch.where(same_chain, offset.expand_as(same_chain), cross)


NUM_RELATIVE_BUCKETS = 2 * MAX_RELATIVE_OFFSET + 3
MASKED_BIAS = -1e9  # attention bias of a padded key: its softmax weight is 0
CYSTEINE_BIAS_SCALE = 5.0  # the cysteine-pair bias is scale x parameter: with Adam it learns 5x faster than at 1


def cysteine_pairs(is_cysteine: torch.Tensor) -> torch.Tensor:
    """[*, N] bool -> [*, N, N] bool: pairs of two different cysteines (possible disulfides)."""
    pairs = is_cysteine.unsqueeze(-1) & is_cysteine.unsqueeze(-2)
    return pairs & ~torch.eye(is_cysteine.shape[-1], dtype=torch.bool, device=is_cysteine.device)


class RelativePositionBias(nn.Module):
    """Learned per-head attention bias for each relative position bucket; `attention_biases` looks them up.

    With `cysteine_pair`, also a learned per-head bias (zero at start) for pairs of two cysteines, so attention
    can find a disulfide partner, e.g. the extra CDR3-CDR2 or CDR3-CDR1 cysteine pair of many nanobodies. It is
    CYSTEINE_BIAS_SCALE x its parameter: starting at zero, unscaled it moved only ~0.1 in two epochs.
    """

    def __init__(self, num_heads: int, cysteine_pair: bool = False):
        super().__init__()
        self.embedding = nn.Embedding(NUM_RELATIVE_BUCKETS, num_heads)
        self.cysteine = nn.Parameter(torch.zeros(num_heads)) if cysteine_pair else None


def attention_biases(
    modules: list[RelativePositionBias],
    buckets: torch.Tensor,
    key_mask: torch.Tensor,
    cysteine_pair: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Each module's bias plus the padding mask, [B, H, N, N] each, from one lookup in the modules' joined tables.

    buckets [B, N, N] (relative_position_buckets); key_mask [B, N] bool (False: padding, never attended to);
    cysteine_pair [B, N, N] bool (cysteine_pairs), used by modules that have a cysteine-pair bias.
    """
    table = torch.cat([module.embedding.weight for module in modules], dim=-1).T  # [sum of H, buckets]
    # The padding mask is one more bucket, MASKED_BIAS for every head, that padded keys are looked up in: one pass
    # over the [B, sum of H, N, N] maps instead of a lookup and then an add of the mask (the same softmax).
    table = torch.cat([table, table.new_full((table.shape[0], 1), MASKED_BIAS)], dim=1)  # [sum of H, buckets + 1]
    buckets = torch.where(key_mask[:, None, :], buckets, NUM_RELATIVE_BUCKETS)
    # Looked up head by head, so that each head's N x N map is contiguous: the attention kernels read it in rows, and
    # a [B, N, N, H] lookup permuted to [B, H, N, N] makes every later add and copy of the maps strided and slow.
    biases = table.index_select(1, buckets.flatten()).unflatten(1, buckets.shape).transpose(0, 1)  # [B, sum of H, N, N]
    if cysteine_pair is not None and any(module.cysteine is not None for module in modules):
        zeros = [m.embedding.weight.new_zeros(m.embedding.embedding_dim) for m in modules]
        per_head = torch.cat([zero if m.cysteine is None else m.cysteine for m, zero in zip(modules, zeros)])  # [sum of H]
        per_head = CYSTEINE_BIAS_SCALE * per_head
        biases = biases + cysteine_pair[:, None].to(biases.dtype) * per_head[:, None, None]  # [B, sum of H, N, N]
    return list(biases.split([module.embedding.embedding_dim for module in modules], dim=1))


PAIR_ROWS = 16  # query rows per chunk of PairBias at inference


class PairBias(nn.Module):
    """Per-head attention biases from pair features of the single representation, for `num_targets` attention modules.

    z_ij = relu(a_i + b_j + r(bucket_ij)) [B, N, N, P] is additive (not bilinear) in i and j, so it can express what a
    query-key dot product cannot; bias_ij = W z_ij [B, targets * H, N, N]. W starts at zero: no effect at first, and
    weights trained without it load unchanged.
    """

    def __init__(self, dim: int, pair_dim: int, num_heads: int, num_targets: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.left = nn.Linear(dim, pair_dim)
        self.right = nn.Linear(dim, pair_dim, bias=False)
        self.relative = nn.Embedding(NUM_RELATIVE_BUCKETS, pair_dim)
        self.to_bias = nn.Linear(pair_dim, num_heads * num_targets)
        nn.init.zeros_(self.to_bias.weight)
        nn.init.zeros_(self.to_bias.bias)
        self.num_heads = num_heads

    def forward(self, s: torch.Tensor, buckets: torch.Tensor, biases: list[torch.Tensor]) -> list[torch.Tensor]:
        """s [B, N, C], buckets [B, N, N], biases: one [B, H, N, N] per target -> each bias plus its pair term.

        At inference the pair terms are added into `biases` in place (and those tensors returned)."""
        h = self.norm(s)
        left, right = self.left(h)[:, :, None], self.right(h)[:, None, :]  # [B, N, 1, P], [B, 1, N, P]
        if torch.is_grad_enabled():
            pair = F.relu(left + right + self.relative(buckets))  # [B, N, N, P]
            pair_terms = self.to_bias(pair).permute(0, 3, 1, 2).split(self.num_heads, dim=1)
            return [bias + term for bias, term in zip(biases, pair_terms)]
        # Inference: the same numbers, PAIR_ROWS query rows at a time and in place, so that the pair tensor never
        # exists whole (at batch 64 this halves the module's time), channels first ([P, B, rows, N]), each chunk's
        # terms added straight into the biases' rows (no [B, targets * H, N, N] tensor of pair terms either).
        left, right = left.permute(3, 0, 1, 2), right.permute(3, 0, 1, 2)  # [P, B, N, 1], [P, B, 1, N]
        table = self.relative.weight.T  # [P, buckets]
        heads_first = [bias.transpose(0, 1) for bias in biases]  # [H, B, N, N] views
        for start in range(0, s.shape[1], PAIR_ROWS):
            rows = slice(start, start + PAIR_ROWS)
            chunk = buckets[:, rows]
            pair = table.index_select(1, chunk.flatten()).unflatten(1, chunk.shape)  # [P, B, rows, N]
            pair += left[:, :, rows]
            pair += right
            readout = torch.addmm(self.to_bias.bias[:, None], self.to_bias.weight, pair.relu_().flatten(1))
            for bias, term in zip(heads_first, readout.view(-1, *chunk.shape).split(self.num_heads)):
                bias[:, :, rows] += term  # [H, B, rows, N]
        return biases


DISTOGRAM_MIN = 2.0  # Å; lower edge of the second distogram bin (the first holds everything closer)
DISTOGRAM_MAX = 22.0  # Å; upper edge of the second-last bin (the last holds everything farther)


def distogram_bin_edges(num_bins: int, device=None) -> torch.Tensor:
    """The num_bins - 1 inner bin edges [num_bins - 1] in Å, evenly spaced from DISTOGRAM_MIN to DISTOGRAM_MAX."""
    return torch.linspace(DISTOGRAM_MIN, DISTOGRAM_MAX, num_bins - 1, device=device)


DISTOGRAM_ROWS = 32  # residues per example whose distance rows the distogram head predicts in one training step


class DistogramHead(nn.Module):
    """Logits of binned CB-CB distances [B, R, N, bins] from residues `rows` [R] to all, from the trunk output s [B, N, C].

    An auxiliary training target (AlphaFold's distogram): it asks the pair-free trunk to encode where every residue
    sits relative to every other, e.g. which framework residues a CDR3 packs on, before the structure module.
    z_ij = relu(a_i + b_j + p_i * q_j + r(bucket_ij)) [B, R, N, P] (additive and bilinear terms), logits = W z.
    Only R sampled rows are computed per step (an unbiased sample of the loss at a fraction of the N x N cost).
    """

    def __init__(self, dim: int, hidden: int, num_bins: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, 4 * hidden)
        self.relative = nn.Embedding(NUM_RELATIVE_BUCKETS, hidden)
        self.to_logits = nn.Linear(hidden, num_bins)

    def forward(self, s: torch.Tensor, buckets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        a, b, p, q = self.project(self.norm(s)).chunk(4, dim=-1)  # [B, N, P] each
        a, p = a[:, rows, None], p[:, rows, None]  # [B, R, 1, P]
        pair = a + b[:, None] + p * q[:, None] + self.relative(buckets[:, rows])  # [B, R, N, P]
        return self.to_logits(F.relu(pair))


class Transition(nn.Module):
    """Residual two-layer MLP with pre-layer-norm: [*, N, C] -> [*, N, C]."""

    def __init__(self, dim: int, expansion: int = 2, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * expansion)
        self.down = nn.Linear(dim * expansion, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down(F.gelu(self.up(self.norm(x)))))


class SequenceAttentionLayer(nn.Module):
    """Pre-LN multi-head self-attention over residues with a relative-position bias, then a transition.

    `dropout` (training only) drops elements of both residual updates.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, cysteine_pair: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.gate = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.bias = RelativePositionBias(num_heads, cysteine_pair)
        self.transition = Transition(dim, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x [B, N, C]; attn_bias [B, H, N, N]: this layer's relative-position bias with the padding mask (attention_biases)."""
        h = self.norm(x)
        q, k, v = self.qkv(h).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # [B, H, N, c] each
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # [B, H, N, c]
        attended = attended.transpose(1, 2).flatten(-2)
        x = x + self.dropout(self.out(torch.sigmoid(self.gate(h)) * attended))
        return self.transition(x)
