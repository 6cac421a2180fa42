"""Ensemble distillation: receptors without a crystal structure, with the shipped ensemble's prediction as target.

A single model trained on crystal structures alone learns to commit to one loop conformation; the ensemble's
consensus (the members' mean) hedges where members disagree, which is why it scores better than any member. To
teach one model that hedging, it also trains on receptors the train split does not hold, targets predicted by the
ensemble (the student sees inputs the teacher was not fitted to, where teacher and truth differ):

- antibodies: the heavy chain of one train antibody with the light chain of another (chain shuffling);
- TCRs: the alpha chain of one train TCR with the beta chain of another;
- nanobodies: NbFrame's nanobody sequences (data.cdr3_classes) whose PDB entry has no structure here.

Every example's `atom14` [N, 14, 3] (Å) is the ensemble's unrefined consensus and `teacher_target` is True (the
error head does not train on them: its target is the deviation from a crystal structure). Nothing here comes from
val: the chains are train chains, and the NbFrame rows are filtered against val (data.cdr3_classes).
"""

from __future__ import annotations

import os
import random

import torch

from immunofold.constants import KINDS
from immunofold.data.cdr3_classes import CLASS_FILE, cached_class_examples
from immunofold.data.features import collate
from immunofold.data.sabdab import cached, cached_examples, names_of_sources, read_summary
from immunofold.geometry import residue_tables

PER_RESIDUE = ("restype", "chain_class", "chain_slot", "imgt_position", "imgt_insertion")
SHUFFLED_PAIRS = {"antibody": 800, "tcr": 150}  # synthetic receptors per kind (chain shuffling)
TEACHER_GROUP = 4  # receptors per ensemble forward pass (as in prediction)
SEED = 2612


def shuffled_receptor(first: dict, second: dict) -> dict:
    """Sequence features of chain slot 0 of `first` with chain slot 1 of `second` (one receptor kind)."""
    parts = [(first, first["chain_slot"] == 0), (second, second["chain_slot"] == 1)]
    example = {key: torch.cat([torch.as_tensor(e[key])[keep] for e, keep in parts]) for key in PER_RESIDUE}
    example["kind"] = torch.as_tensor(first["kind"])
    return example


def synthetic_receptors(train: list[dict], nanobodies: list[dict], known_pdbs: set[str], rng: random.Random,
                        pairs: dict[str, int] = SHUFFLED_PAIRS) -> list[dict]:
    """Chain-shuffled antibodies and TCRs from `train` (`pairs[kind]` of each kind that has two paired receptors),
    plus the sequence-only nanobody rows (data.cdr3_classes) whose PDB id is not in `known_pdbs`."""
    receptors = []
    for kind, count in pairs.items():
        paired = [e for e in train if KINDS[int(e["kind"])] == kind and (torch.as_tensor(e["chain_slot"]) == 1).any()]
        for _ in range(count if len(paired) >= 2 else 0):
            first, second = rng.sample(paired, 2)
            receptors.append(shuffled_receptor(first, second))
    for row in nanobodies:
        if row["name"].split(":", 1)[1][:4].lower() not in known_pdbs:
            receptors.append({key: torch.as_tensor(row[key]) for key in (*PER_RESIDUE, "kind")})
    return receptors


@torch.no_grad()
def teacher_examples(receptors: list[dict], ensemble) -> list[dict]:
    """`receptors` (sequence features) with the ensemble's consensus as atom14 and atom_mask from the residue types."""
    order = sorted(range(len(receptors)), key=lambda i: (int(receptors[i]["kind"]), len(receptors[i]["restype"])))
    examples: list[dict | None] = [None] * len(receptors)
    for start in range(0, len(order), TEACHER_GROUP):
        group = order[start : start + TEACHER_GROUP]
        kinds = {int(receptors[i]["kind"]) for i in group}
        for kind in kinds:
            members = [i for i in group if int(receptors[i]["kind"]) == kind]
            output = ensemble.run(collate([receptors[i] for i in members]))
            for row, i in enumerate(members):
                n = len(receptors[i]["restype"])
                exists = residue_tables().atom_exists[receptors[i]["restype"]]
                examples[i] = {**receptors[i], "atom14": output.consensus[row, :n] * exists[..., None],
                               "atom_mask": exists, "teacher_target": torch.tensor(True)}
    return examples


def cached_distillation_examples(root: str, cache_dir: str, train_split: str = "train", val_split: str = "val",
                                 pairs: dict[str, int] | None = None, exclude_sources: list[str] = ()) -> list[dict]:
    """The distillation set of the packaged ensemble from the chains of `train_split` less the entries of
    `exclude_sources` (`pairs`: chain-shuffled receptors per kind, default SHUFFLED_PAIRS), built once per weights
    version, splits, counts and exclusions and cached in `cache_dir`."""
    pairs = {**SHUFFLED_PAIRS, **(pairs or {})}
    from immunofold.ensemble import Ensemble  # the model package; data modules stay importable without it

    ensemble = Ensemble.packaged()

    def build() -> tuple[list[dict], list[str], str]:
        excluded = names_of_sources(root, exclude_sources)
        train = [e for e in cached_examples(root, train_split, cache_dir) if e["name"] not in excluded]
        known = {entry.pdb.lower() for entry in read_summary(root)}
        labelled = os.path.exists(os.path.join(root, CLASS_FILE))
        nanobodies = cached_class_examples(root, cache_dir, val_split) if labelled else []
        receptors = synthetic_receptors(train, nanobodies, known, random.Random(SEED), pairs)
        examples = teacher_examples(receptors, ensemble)
        counts = {kind: sum(int(e["kind"]) == k for e in examples) for k, kind in enumerate(KINDS)}
        return examples, [], f"{len(examples)} distillation examples {counts} from weights {ensemble.version}"

    counts = "" if pairs == SHUFFLED_PAIRS else "-" + "-".join(f"{kind}{count}" for kind, count in sorted(pairs.items()))
    without = "-without-" + "-".join(sorted(exclude_sources)) if exclude_sources else ""
    return cached(cache_dir, f"distillation-{ensemble.version}-{train_split}-{val_split}{counts}{without}", build)
