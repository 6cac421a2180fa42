"""Extra heavy-chain backbones (RefineGNN records in ../shared/data/aux) as training examples.

Each record is one heavy chain with N, CA, C, O coordinates and no numbering. It is numbered with the
same code as prediction (IMGT, anarcism) and becomes a backbone-only example (side-chain atoms masked):
kind `nanobody` when the domain carries at least two VHH hallmarks, otherwise kind `antibody` with the
heavy chain alone (an antibody example without its light chain). Records whose PDB id is already a
train or val entry are left out, so that no structure is counted twice, and so are records redundant with a
val heavy chain by the data README's rule for train (identical CDR3, or >= 95% identical over the shared IMGT
positions), so that val stays unseen.
"""

from __future__ import annotations

import gzip
import json
import os

import torch

from immunofold.constants import ATOM14_NAMES, IMGT_CDRS, KINDS, ONE_TO_THREE
from immunofold.data.features import featurise
from immunofold.data.sabdab import MIN_BACKBONE_FRACTION, cached, cached_examples, read_summary
from immunofold.sequences import MIN_HALLMARKS, count_vhh_hallmarks
from immunofold.sequences import InputError, clean_sequence, find_domains

BACKBONE_WITH_O = ("N", "CA", "C", "O")  # the atoms a record holds, atom14 slots 0-3 for every residue type
MAX_IDENTITY_TO_VAL = 0.95  # fraction of shared IMGT positions; the data README's redundancy rule


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


HeavyChain = tuple[str, tuple[tuple[int, str], ...], str]  # (entry name, IMGT positions, sequence)


def cdr3(positions: tuple[tuple[int, str], ...], sequence: str) -> str:
    """Residues at IMGT 105-117."""
    lo, hi = IMGT_CDRS[3]
    return "".join(aa for (number, _), aa in zip(positions, sequence) if lo <= number <= hi)


def redundant_with(example: dict, heavy_chains: list[HeavyChain]) -> str | None:
    """Why the example's heavy chain is redundant with one of `heavy_chains` (identical CDR3, or identity >=
    MAX_IDENTITY_TO_VAL over the shared IMGT positions), or None."""
    positions, sequence = example["positions"][0], example["sequences"][0]
    own_cdr3, residue_at = cdr3(positions, sequence), dict(zip(positions, sequence))
    for name, other_positions, other_sequence in heavy_chains:
        if cdr3(other_positions, other_sequence) == own_cdr3:
            return f"CDR3 identical to val entry {name}"
        shared = [(key, aa) for key, aa in zip(other_positions, other_sequence) if key in residue_at]
        identity = sum(residue_at[key] == aa for key, aa in shared) / max(len(shared), 1)
        if identity >= MAX_IDENTITY_TO_VAL:
            return f"{identity:.0%} identical to val entry {name}"
    return None


def val_heavy_chains(root: str, val_split: str, cache_dir: str) -> list[HeavyChain]:
    """The heavy chain of every antibody and nanobody of `val_split`, for `redundant_with`."""
    return [
        (e["name"], e["positions"][0], e["sequences"][0])
        for e in cached_examples(root, val_split, cache_dir)
        if KINDS[int(e["kind"])] in ("antibody", "nanobody")
    ]


def read_aux_examples(
    path: str, exclude_pdb_ids: set[str], val_heavy_chains: list[HeavyChain] = ()
) -> tuple[list[dict], list[str]]:
    """(examples, one-line reasons for skipped records) from a RefineGNN .jsonl.gz file."""
    examples, skipped = [], []
    val_heavy_chains = list(val_heavy_chains)
    with gzip.open(path, "rt") as handle:
        for line in handle:
            record = json.loads(line)
            if record["pdb"].lower() in exclude_pdb_ids:
                skipped.append(f"aux:{record['pdb']}: already a train or val entry")
                continue
            try:
                example = aux_example(record)
            except InputError as error:
                skipped.append(str(error))
                continue
            reason = redundant_with(example, val_heavy_chains)
            if reason:
                skipped.append(f"aux:{record['pdb']}: {reason}")
            else:
                examples.append(example)
    return examples, skipped


AUX_FILE = os.path.join("aux", "refinegnn_heavy_backbone.jsonl.gz")


AUX_CACHE_NAME = "aux-v2"  # v2: records redundant with a val heavy chain are left out (v1 kept 8 such records)


def cached_aux_examples(root: str, cache_dir: str, val_split: str = "val") -> list[dict]:
    """Examples from `<root>/aux/`, built once and cached in `cache_dir` (skip report beside them)."""

    def build() -> tuple[list[dict], list[str], str]:
        known = {entry.pdb.lower() for entry in read_summary(root)}
        val_chains = val_heavy_chains(root, val_split, cache_dir)
        examples, skipped = read_aux_examples(os.path.join(root, AUX_FILE), known, val_chains)
        return examples, skipped, f"{len(skipped)} of {len(examples) + len(skipped)} aux records skipped"

    return cached(cache_dir, AUX_CACHE_NAME, build)
