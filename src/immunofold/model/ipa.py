"""Pair-free invariant point attention (AlphaFold's IPA without the pair representation).

The pair term is replaced by a learned relative-position bias, which keeps the cost at
O(N^2 H) scalars instead of O(N^2 C_pair) and needs no pair stack. Optional extras arrive in the same
bias: a cysteine-pair bias and light pair features of the trunk output (`layers.PairBias`, no pair stack).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from immunofold.geometry import Frames
from immunofold.model.layers import RelativePositionBias


class InvariantPointAttention(nn.Module):
    """s [B, N, C], frames [B, N] -> update [B, N, C]; invariant to global rotations and translations."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int = 16,
        query_points: int = 4,
        value_points: int = 8,
        cysteine_pair: bool = False,
    ):
        super().__init__()
        self.h, self.c, self.pq, self.pv = num_heads, head_dim, query_points, value_points
        self.scalar_qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.point_qk = nn.Linear(dim, 2 * num_heads * query_points * 3)
        self.point_v = nn.Linear(dim, num_heads * value_points * 3)
        self.point_weight = nn.Parameter(torch.full((num_heads,), math.log(math.e - 1)))  # softplus -> 1
        self.bias = RelativePositionBias(num_heads, cysteine_pair)
        self.out = nn.Linear(num_heads * (head_dim + value_points * 4), dim)

    def forward(self, s: torch.Tensor, frames: Frames, attn_bias: torch.Tensor) -> torch.Tensor:
        """attn_bias [B, H, N, N]: this module's relative-position bias with the padding mask (layers.attention_biases)."""
        b, n, _ = s.shape
        h, c, pq, pv = self.h, self.c, self.pq, self.pv
        q, k, v = self.scalar_qkv(s).view(b, n, 3, h, c).unbind(2)  # [B, N, H, c]
        local_qk = self.point_qk(s).view(b, n, 2, h * pq, 3)
        global_qk = frames.unsqueeze(-1).apply(local_qk.flatten(2, 3)).view(b, n, 2, h, pq * 3)
        q_pts, k_pts = global_qk.unbind(2)  # [B, N, H, Pq*3] Å
        v_pts = frames.unsqueeze(-1).apply(self.point_v(s).view(b, n, h * pv, 3)).view(b, n, h, pv * 3)

        # logit_ij = w_L (q_i.k_j / sqrt(c) - gamma |q_pts_i - k_pts_j|^2) + bias_ij. The |q_pts_i|^2 part of the distance
        # is the same for every key j, so the softmax over j drops it; the rest is one dot product of extended vectors
        # [q / sqrt(c), 2 gamma q_pts, 1] . [k, k_pts, -gamma |k_pts|^2], so one fused attention call does the work.
        weight_l = math.sqrt(1 / 3)
        gamma = (F.softplus(self.point_weight) * math.sqrt(2 / (9 * pq)) / 2)[:, None]  # [H, 1] per Å^2
        query = torch.cat([q / math.sqrt(c), 2 * gamma * q_pts, torch.ones_like(q[..., :1])], dim=-1) * weight_l
        key = torch.cat([k, k_pts, -gamma * (k_pts**2).sum(-1, keepdim=True)], dim=-1)  # [B, N, H, c + 3 Pq + 1]
        values = torch.cat([v, v_pts], dim=-1)  # [B, N, H, c + 3 Pv]
        # The CPU's fused (flash) kernel needs one width for query, key and value, else a ~3x slower unfused path
        # runs: zero columns widen the narrower side and change no logit (outputs differ by float rounding only).
        width = max(query.shape[-1], values.shape[-1])
        query, key = (F.pad(x, (0, width - x.shape[-1])) for x in (query, key))
        attended = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), F.pad(values, (0, width - values.shape[-1])).transpose(1, 2),
            attn_mask=attn_bias, scale=1.0,
        ).transpose(1, 2)[..., : values.shape[-1]]  # [B, N, H, c + 3 Pv]
        out_scalar = attended[..., :c].flatten(2)  # [B, N, H*c]
        out_points_global = attended[..., c:].reshape(b, n, h * pv, 3)
        out_points = frames.unsqueeze(-1).invert_apply(out_points_global)  # [B, N, H*Pv, 3]
        out_norm = torch.sqrt((out_points**2).sum(-1) + 1e-8)
        features = torch.cat([out_scalar, out_points.flatten(2), out_norm], dim=-1)
        return self.out(features)
