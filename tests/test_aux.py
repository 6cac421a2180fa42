"""Extra heavy-chain backbones (RefineGNN records): numbering, masks, kind, exclusions."""

import gzip
import json

import pytest

from immunofold.data.aux import aux_example, count_vhh_hallmarks, read_aux_examples
from immunofold.sequences import InputError

BACKBONE = ("N", "CA", "C", "O")


def record_from(nanobody_atoms, pdb="1abc", sequence=None, missing=()):
    """A RefineGNN-style record of the 7F5G nanobody; residues in `missing` written as 'NaN'."""
    atom14, _, _, chain_sequence = nanobody_atoms
    coords = {
        atom: [["NaN"] * 3 if i in missing else [round(float(v), 3) for v in atom14[i, slot]] for i in range(len(atom14))]
        for slot, atom in enumerate(BACKBONE)
    }
    return {"pdb": pdb, "seq": sequence or chain_sequence, "cdr": "", "coords": coords}


def test_a_vhh_record_becomes_a_backbone_only_nanobody_example(nanobody_atoms):
    example = aux_example(record_from(nanobody_atoms, missing={60}))
    assert example["kind"].item() == 1  # nanobody
    assert example["backbone_only"]
    assert example["atom_mask"][:, 4:].sum() == 0  # no side-chain atoms
    missing = 60 - nanobody_atoms[3].index(example["sequences"][0])  # residue 60 of the record, in the example
    assert not example["atom_mask"][missing, :4].any()
    assert example["atom_mask"][:, :4].sum() == 4 * (len(example["restype"]) - 1)
    assert example["atom14"].isfinite().all()
    assert count_vhh_hallmarks(example["positions"][0], example["sequences"][0]) >= 2


def test_a_heavy_chain_without_hallmarks_becomes_an_antibody_example(nanobody_atoms):
    sequence = nanobody_atoms[3]
    example = aux_example(record_from(nanobody_atoms))
    residue_at = {number: i for i, (number, code) in enumerate(example["positions"][0]) if not code}
    human = list(sequence)
    offset = sequence.index(example["sequences"][0])
    for number, aa in {42: "V", 49: "G", 50: "L", 52: "W"}.items():  # human VH residues at the VHH hallmarks
        human[offset + residue_at[number]] = aa
    example = aux_example(record_from(nanobody_atoms, sequence="".join(human)))
    assert example["kind"].item() == 0  # antibody, heavy chain only
    assert set(example["chain_slot"].tolist()) == {0}


def test_records_with_too_little_backbone_or_of_known_entries_are_skipped(nanobody_atoms, tmp_path):
    with pytest.raises(InputError, match="aux:2bad: fewer than 80% of residues have a complete backbone"):
        aux_example(record_from(nanobody_atoms, pdb="2bad", missing=set(range(60))))
    path = tmp_path / "aux.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        for pdb in ("1new", "7F5G", "2bad"):
            missing = set(range(60)) if pdb == "2bad" else set()
            handle.write(json.dumps(record_from(nanobody_atoms, pdb=pdb, missing=missing)) + "\n")
    examples, skipped = read_aux_examples(str(path), exclude_pdb_ids={"7f5g"})
    assert [e["name"] for e in examples] == ["aux:1new"]
    assert skipped == [
        "aux:7F5G: already a train or val entry",
        "aux:2bad: fewer than 80% of residues have a complete backbone",
    ]


def test_records_redundant_with_a_val_heavy_chain_are_skipped(nanobody_atoms, tmp_path):
    """The data README's rule for train applies to aux records too: identical CDR3, or >= 95% identity over the
    shared IMGT positions, to a val heavy chain."""
    example = aux_example(record_from(nanobody_atoms))
    positions, sequence = example["positions"][0], example["sequences"][0]
    cdr3_index = [i for i, (number, _) in enumerate(positions) if 105 <= number <= 117]
    framework_index = [i for i, (number, _) in enumerate(positions) if number < 105][:20]
    other_cdr3 = list(sequence)
    other_cdr3[cdr3_index[2]] = "W" if sequence[cdr3_index[2]] != "W" else "Y"  # one CDR3 change: 99% identity
    far = list(other_cdr3)
    for i in framework_index:  # 20 framework changes as well: identity well below 95%
        far[i] = "W" if sequence[i] != "W" else "Y"
    path = tmp_path / "aux.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(record_from(nanobody_atoms, pdb="1new")) + "\n")
    for val_sequence, expected in (
        (sequence, "CDR3 identical to val entry v"),
        ("".join(other_cdr3), "99% identical to val entry v"),
        ("".join(far), None),
    ):
        examples, skipped = read_aux_examples(str(path), set(), [("v", positions, val_sequence)])
        if expected is None:
            assert [e["name"] for e in examples] == ["aux:1new"] and skipped == []
        else:
            assert examples == [] and skipped == [f"aux:1new: {expected}"]
