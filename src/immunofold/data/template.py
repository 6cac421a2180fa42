"""Mean backbone per (receptor kind, chain slot, IMGT position, insertion rank), the model's starting structure.

Built once from training examples: every example is superposed on the running mean by its
framework CA atoms (all chains together, so the inter-chain orientation is averaged too), then
N, CA, C are averaged per IMGT key. Keys never seen borrow from the nearest seen key.
"""

from __future__ import annotations

import torch

from immunofold.constants import KINDS, NUM_IMGT_POSITIONS, is_framework
from immunofold.data.features import MAX_INSERTION_RANK
from immunofold.geometry import kabsch

NUM_RANKS = MAX_INSERTION_RANK + 1
NUM_KEYS = 2 * NUM_IMGT_POSITIONS * NUM_RANKS


def imgt_key(example: dict) -> torch.Tensor:
    """Flat key index [N] of (chain slot, IMGT position, insertion rank)."""
    return (example["chain_slot"] * NUM_IMGT_POSITIONS + example["imgt_position"]) * NUM_RANKS + example["imgt_insertion"]


def _mean_backbone(examples: list[dict], iterations: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean N, CA, C per key [NUM_KEYS, 3, 3] and observation counts [NUM_KEYS]."""
    reference, ref_counts = None, None  # the running mean and its observation counts
    for _ in range(iterations):
        sums = torch.zeros(NUM_KEYS, 3, 3, dtype=torch.float64)
        counts = torch.zeros(NUM_KEYS, dtype=torch.float64)
        for example in examples:
            keys = imgt_key(example)
            backbone = example["atom14"][:, :3].double()
            present = example["atom_mask"][:, :3].all(-1)
            if reference is not None:
                anchor = present & is_framework(example["imgt_position"]) & (ref_counts[keys] > 0)
                if anchor.sum() < 20:
                    continue
                frame = kabsch(backbone[anchor, 1], reference[keys[anchor], 1], torch.ones(int(anchor.sum())))
                backbone = frame.apply(backbone)
            sums.index_add_(0, keys[present], backbone[present])
            counts.index_add_(0, keys[present], torch.ones(int(present.sum()), dtype=torch.float64))
        reference, ref_counts = sums / counts.clamp(min=1)[:, None, None], counts
    return reference, ref_counts


def _fill_missing(mean: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Give every unseen key the coordinates of the nearest seen one (lower insertion rank, then nearest position)."""
    table = mean.view(2, NUM_IMGT_POSITIONS, NUM_RANKS, 3, 3).clone()
    seen = (counts > 0).view(2, NUM_IMGT_POSITIONS, NUM_RANKS)
    for slot in range(2):
        seen_positions = torch.nonzero(seen[slot, :, 0]).flatten()
        if len(seen_positions) == 0:
            continue
        for position in range(NUM_IMGT_POSITIONS):
            if not seen[slot, position, 0]:
                nearest = seen_positions[(seen_positions - position).abs().argmin()]
                table[slot, position, 0] = table[slot, nearest, 0]
            for rank in range(1, NUM_RANKS):
                if not seen[slot, position, rank]:
                    table[slot, position, rank] = table[slot, position, rank - 1]
    return table


def build_template(examples: list[dict]) -> torch.Tensor:
    """Template table [len(KINDS), 2, NUM_IMGT_POSITIONS, NUM_RANKS, 3 (N, CA, C), 3] Å, centred per kind."""
    template = torch.zeros(len(KINDS), 2, NUM_IMGT_POSITIONS, NUM_RANKS, 3, 3)
    for kind_index, _ in enumerate(KINDS):
        chosen = [e for e in examples if int(e["kind"]) == kind_index]
        if not chosen:
            continue
        mean, counts = _mean_backbone(chosen)
        table = _fill_missing(mean, counts)
        seen = (counts > 0).view(2, NUM_IMGT_POSITIONS, NUM_RANKS)
        center = table[seen][:, 1].mean(0)
        template[kind_index] = (table - center).float()
    return template
