"""Extra heavy-chain backbones (RefineGNN records in ../shared/data/aux) as training examples.

Each record is one heavy chain with N, CA, C, O coordinates and no numbering. It is numbered with the
same code as prediction (IMGT, anarcism) and becomes a backbone-only example (side-chain atoms masked):
kind `nanobody` when the domain carries at least two VHH hallmarks, otherwise kind `antibody` with the
heavy chain alone (an antibody example without its light chain). Records whose PDB id is already a
train or val entry are left out, so that no structure is counted twice and val stays unseen.
"""

from __future__ import annotations

import gzip
import json
import os

import torch

from immunofold.constants import ATOM14_NAMES, ONE_TO_THREE
from immunofold.data.features import featurise
from immunofold.data.sabdab import MIN_BACKBONE_FRACTION, cached, read_summary
from immunofold.sequences import InputError, clean_sequence, find_domains

BACKBONE_WITH_O = ("N", "CA", "C", "O")  # the atoms a record holds, atom14 slots 0-3 for every residue type
# VHH hallmark residues at IMGT 42, 49, 50, 52 (the data README's nanobody definition).
VHH_HALLMARKS = {42: "FY", 49: "EQ", 50: "RC", 52: "FGL"}
MIN_HALLMARKS = 2


def count_vhh_hallmarks(positions: tuple[tuple[int, str], ...], sequence: str) -> int:
    """Number of IMGT hallmark positions (42, 49, 50, 52) holding a VHH-type residue."""
    residue_at = {number: aa for (number, code), aa in zip(positions, sequence) if not code}
    return sum(residue_at.get(number, "") in allowed for number, allowed in VHH_HALLMARKS.items())


def aux_example(record: dict) -> dict:
    """Backbone-only training example of one RefineGNN record; raises InputError if it cannot be used."""
    name = f"aux:{record['pdb']}"
    sequence = clean_sequence(record["seq"], name)
    domains = [d for d in find_domains(sequence, name) if d.chain_class == "heavy"]
    if len(domains) != 1:
        raise InputError(name, f"{len(domains)} heavy V domains found, expected 1")
    domain = domains[0]
    coords = torch.tensor(  # [4, L, 3] Å; missing atoms are written as the string 'NaN'
        [[[float(v) for v in point] for point in record["coords"][atom]] for atom in BACKBONE_WITH_O], dtype=torch.float32
    )
    if coords.shape[1] != len(sequence):
        raise InputError(name, f"{coords.shape[1]} coordinates for {len(sequence)} residues")
    index = torch.tensor(domain.source_indices)
    atom14 = torch.zeros(len(index), 14, 3)
    atom14[:, :4] = coords[:, index].transpose(0, 1)
    atom_mask = torch.zeros(len(index), 14, dtype=torch.bool)
    atom_mask[:, :4] = torch.isfinite(atom14[:, :4]).all(-1)
    atom14 = torch.nan_to_num(atom14)
    if atom_mask[:, :3].all(-1).float().mean() < MIN_BACKBONE_FRACTION:
        raise InputError(name, "fewer than 80% of residues have a complete backbone")
    assert all(ATOM14_NAMES[ONE_TO_THREE[aa]][:4] == BACKBONE_WITH_O for aa in domain.sequence)
    kind = "nanobody" if count_vhh_hallmarks(domain.positions, domain.sequence) >= MIN_HALLMARKS else "antibody"
    example = featurise(kind, [domain])
    example.update(
        atom14=atom14, atom_mask=atom_mask, name=name, sequences=(domain.sequence,), positions=(domain.positions,),
        backbone_only=True,
    )
    return example


def read_aux_examples(path: str, exclude_pdb_ids: set[str]) -> tuple[list[dict], list[str]]:
    """(examples, one-line reasons for skipped records) from a RefineGNN .jsonl.gz file."""
    examples, skipped = [], []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            record = json.loads(line)
            if record["pdb"].lower() in exclude_pdb_ids:
                skipped.append(f"aux:{record['pdb']}: already a train or val entry")
                continue
            try:
                examples.append(aux_example(record))
            except InputError as error:
                skipped.append(str(error))
    return examples, skipped


AUX_FILE = os.path.join("aux", "refinegnn_heavy_backbone.jsonl.gz")


def cached_aux_examples(root: str, cache_dir: str) -> list[dict]:
    """Examples from `<root>/aux/`, built once and cached in `cache_dir` (skip report beside them)."""

    def build() -> tuple[list[dict], list[str], str]:
        known = {entry.pdb.lower() for entry in read_summary(root)}
        examples, skipped = read_aux_examples(os.path.join(root, AUX_FILE), known)
        return examples, skipped, f"{len(skipped)} of {len(examples) + len(skipped)} aux records skipped"

    return cached(cache_dir, "aux", build)
