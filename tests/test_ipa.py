import math

import torch
from torch.nn import functional as F

from immunofold.geometry import Frames, quaternion_to_rotation
from immunofold.model.ipa import InvariantPointAttention
from immunofold.model.layers import NUM_RELATIVE_BUCKETS, attention_biases


def reference_ipa(ipa: InvariantPointAttention, s, frames: Frames, buckets, key_mask):
    """AlphaFold's IPA (Algorithm 22, pair term replaced by the bias), written out term by term with explicit distances."""
    b, n, _ = s.shape
    h, c, pq, pv = ipa.h, ipa.c, ipa.pq, ipa.pv
    q, k, v = ipa.scalar_qkv(s).view(b, n, 3, h, c).unbind(2)
    points = frames.unsqueeze(-1).apply(ipa.point_qk(s).view(b, n, 2 * h * pq, 3))
    q_pts, k_pts = points.view(b, n, 2, h, pq, 3).unbind(2)
    v_pts = frames.unsqueeze(-1).apply(ipa.point_v(s).view(b, n, h * pv, 3)).view(b, n, h, pv, 3)
    sq_dist = ((q_pts[:, :, None] - k_pts[:, None]) ** 2).sum((-1, -2))  # [B, Nq, Nk, H]
    gamma = F.softplus(ipa.point_weight) * math.sqrt(2 / (9 * pq)) / 2
    logits = math.sqrt(1 / 3) * (torch.einsum("bihc,bjhc->bijh", q, k) / math.sqrt(c) - gamma * sq_dist)
    bias = ipa.bias.embedding(buckets).permute(0, 3, 1, 2) + torch.where(key_mask, 0.0, -1e9)[:, None, None, :]
    logits = logits.permute(0, 3, 1, 2) + bias
    attention = torch.softmax(logits, -1)
    out_scalar = torch.einsum("bhij,bjhc->bihc", attention, v).flatten(2)
    out_points = frames.unsqueeze(-1).invert_apply(torch.einsum("bhij,bjhpx->bihpx", attention, v_pts).flatten(2, 3))
    out_norm = torch.sqrt((out_points**2).sum(-1) + 1e-8)
    return ipa.out(torch.cat([out_scalar, out_points.flatten(2), out_norm], dim=-1))


def random_frames(b, n, spread=15.0):
    rotation = quaternion_to_rotation(F.normalize(torch.randn(b, n, 4), dim=-1))
    return Frames(rotation, torch.randn(b, n, 3) * spread)


def test_fused_ipa_matches_the_written_out_formula_and_its_gradients():
    torch.manual_seed(0)
    ipa = InvariantPointAttention(64)
    s = torch.randn(2, 40, 64, requires_grad=True)
    frames = random_frames(2, 40)
    buckets = torch.randint(0, NUM_RELATIVE_BUCKETS, (2, 40, 40))
    key_mask = torch.ones(2, 40, dtype=torch.bool)
    key_mask[1, 30:] = False  # a shorter second record, padded

    fused = ipa(s, frames, attention_biases([ipa.bias], buckets, key_mask)[0])
    reference = reference_ipa(ipa, s, frames, buckets, key_mask)
    assert torch.allclose(fused[key_mask], reference[key_mask], atol=1e-4)
    grad_fused, = torch.autograd.grad(fused[key_mask].sum(), s)
    grad_reference, = torch.autograd.grad(reference[key_mask].sum(), s)
    assert torch.allclose(grad_fused, grad_reference, atol=1e-4)


def test_ipa_is_invariant_to_a_global_rotation_and_translation():
    torch.manual_seed(1)
    ipa = InvariantPointAttention(32, num_heads=4)
    s, frames = torch.randn(1, 25, 32), random_frames(1, 25)
    buckets, key_mask = torch.randint(0, NUM_RELATIVE_BUCKETS, (1, 25, 25)), torch.ones(1, 25, dtype=torch.bool)
    turn = random_frames(1, 1, spread=30.0)  # one global rotation and translation
    moved = turn.compose(frames)
    attn_bias = attention_biases([ipa.bias], buckets, key_mask)[0]
    assert torch.allclose(ipa(s, frames, attn_bias), ipa(s, moved, attn_bias), atol=1e-4)
