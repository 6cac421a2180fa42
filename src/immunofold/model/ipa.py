"""Pair-free invariant point attention (AlphaFold's IPA without the pair representation).

The pair term is replaced by a learned relative-position bias, which keeps the cost at
O(N^2 H) scalars instead of O(N^2 C_pair) and needs no pair stack.
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

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int = 16, query_points: int = 4, value_points: int = 8):
        super().__init__()
        self.h, self.c, self.pq, self.pv = num_heads, head_dim, query_points, value_points
        self.scalar_qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.point_qk = nn.Linear(dim, 2 * num_heads * query_points * 3)
        self.point_v = nn.Linear(dim, num_heads * value_points * 3)
        self.point_weight = nn.Parameter(torch.full((num_heads,), math.log(math.e - 1)))  # softplus -> 1
        self.bias = RelativePositionBias(num_heads)
        self.out = nn.Linear(num_heads * (head_dim + value_points * 4), dim)

    def forward(self, s: torch.Tensor, frames: Frames, buckets: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = s.shape
        q, k, v = self.scalar_qkv(s).view(b, n, 3, self.h, self.c).unbind(2)  # [B, N, H, c]
        local_qk = self.point_qk(s).view(b, n, 2, self.h * self.pq, 3)
        global_qk = frames.unsqueeze(-1).apply(local_qk.flatten(2, 3)).view(b, n, 2, self.h, self.pq, 3)
        q_pts, k_pts = global_qk.unbind(2)  # [B, N, H, Pq, 3]
        v_pts = frames.unsqueeze(-1).apply(self.point_v(s).view(b, n, self.h * self.pv, 3)).view(b, n, self.h, self.pv, 3)

        scalar_logits = torch.einsum("bihc,bjhc->bhij", q, k) / math.sqrt(self.c)
        sq_dist = (
            (q_pts**2).sum((-1, -2))[:, :, None, :].permute(0, 3, 1, 2)
            + (k_pts**2).sum((-1, -2))[:, None, :, :].permute(0, 3, 1, 2)
            - 2 * torch.einsum("bihpx,bjhpx->bhij", q_pts, k_pts)
        )  # [B, H, N, N] Å^2
        point_scale = F.softplus(self.point_weight)[None, :, None, None] * math.sqrt(2 / (9 * self.pq)) / 2
        logits = (scalar_logits - point_scale * sq_dist) * math.sqrt(1 / 3) + self.bias(buckets)
        logits = logits + torch.where(key_mask, 0.0, -1e9)[:, None, None, :]
        attention = torch.softmax(logits, dim=-1)  # [B, H, N, N]

        out_scalar = torch.einsum("bhij,bjhc->bihc", attention, v).flatten(2)
        out_points_global = torch.einsum("bhij,bjhpx->bihpx", attention, v_pts)
        out_points = frames.unsqueeze(-1).invert_apply(out_points_global.flatten(2, 3))  # [B, N, H*Pv, 3]
        out_norm = torch.sqrt((out_points**2).sum(-1) + 1e-8)
        features = torch.cat([out_scalar, out_points.flatten(2), out_norm], dim=-1)
        return self.out(features)
