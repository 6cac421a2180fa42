"""Model input features from IMGT-numbered chains (the same code for training and prediction).

An example is a dict of tensors over the residues of all chains, concatenated in output order:
    restype [N] long, chain_class [N] long, chain_slot [N] long, imgt_position [N] long (1-128),
    imgt_insertion [N] long (0 = none, 1.. = insertion letter rank), kind [] long,
and, for training examples, atom14 [N, 14, 3] (Å) and atom_mask [N, 14] bool; models that read language-model
features also get language [N, 512] (data.language).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from immunofold.constants import CHAIN_CLASS_INDEX, KIND_INDEX, RESTYPE_INDEX, UNKNOWN_RESTYPE
from immunofold.sequences import NumberedChain

MAX_INSERTION_RANK = 15


def insertion_rank(code: str) -> int:
    """0 for no insertion code, 1 for 'A', 2 for 'B', ... capped at MAX_INSERTION_RANK."""
    if not code:
        return 0
    return min(ord(code.upper()[0]) - ord("A") + 1, MAX_INSERTION_RANK)


def featurise(kind: str, chains: Sequence[NumberedChain]) -> dict[str, torch.Tensor]:
    """Sequence features of one receptor; chains in output order."""
    restype, chain_class, chain_slot, position, insertion = [], [], [], [], []
    for slot, chain in enumerate(chains):
        restype += [RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for aa in chain.sequence]
        chain_class += [CHAIN_CLASS_INDEX[chain.chain_class]] * len(chain)
        chain_slot += [slot] * len(chain)
        position += [number for number, _ in chain.positions]
        insertion += [insertion_rank(code) for _, code in chain.positions]
    return {
        "restype": torch.tensor(restype, dtype=torch.long),
        "chain_class": torch.tensor(chain_class, dtype=torch.long),
        "chain_slot": torch.tensor(chain_slot, dtype=torch.long),
        "imgt_position": torch.tensor(position, dtype=torch.long),
        "imgt_insertion": torch.tensor(insertion, dtype=torch.long),
        "kind": torch.tensor(KIND_INDEX[kind], dtype=torch.long),
    }


PER_RESIDUE_KEYS = (
    "restype", "chain_class", "chain_slot", "imgt_position", "imgt_insertion", "atom14", "atom_mask", "language",
)


def collate(examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad a list of examples to a batch: per-residue tensors [B, N_max, ...], plus residue_mask [B, N_max]."""
    n_max = max(len(e["restype"]) for e in examples)
    batch: dict[str, torch.Tensor] = {}
    for key in PER_RESIDUE_KEYS:
        if key not in examples[0]:
            continue
        first = examples[0][key]
        padded = first.new_zeros((len(examples), n_max, *first.shape[1:]))
        for i, example in enumerate(examples):
            padded[i, : len(example[key])] = example[key]
        batch[key] = padded
    mask = torch.zeros(len(examples), n_max, dtype=torch.bool)
    for i, example in enumerate(examples):
        mask[i, : len(example["restype"])] = True
    batch["residue_mask"] = mask
    batch["kind"] = torch.stack([e["kind"] for e in examples])
    if any("teacher_target" in e for e in examples):  # data.distillation: the target is a prediction, not a crystal
        batch["teacher_target"] = torch.stack([torch.as_tensor(e.get("teacher_target", False)) for e in examples])
    if all("cdr3_extended" in e for e in examples):
        batch["cdr3_extended"] = torch.stack([e["cdr3_extended"] for e in examples])
    return batch
