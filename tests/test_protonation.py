"""Hydrogens at pH 7 for refinement (immunofold.protonation) on the nanobody fixture."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from immunofold.io import atom14_names, build_structure, read_chains, to_pdb_string
from immunofold.protonation import protonated
from immunofold.refine import FORCE_FIELD, _force_field

FIXTURE = Path(__file__).parent / "fixtures" / "nanobody_7f5g.pdb"


@pytest.fixture(scope="module")
def protonated_fixture():
    return protonated(FIXTURE.read_text())


def hydrogens(residue) -> set[str]:
    return {atom.name for atom in residue.atoms() if atom.element.symbol == "H"}


def test_protonation_states_are_those_of_ph_7(protonated_fixture):
    topology, _ = protonated_fixture
    residues = list(topology.residues())
    first = {name: next(r for r in residues[1:-1] if r.name == name) for name in ("LYS", "ARG", "ASP", "GLU", "HIS")}
    assert {"HZ1", "HZ2", "HZ3"} <= hydrogens(first["LYS"])  # NZ+
    assert {"HH11", "HH12", "HH21", "HH22", "HE"} <= hydrogens(first["ARG"])
    assert not hydrogens(first["ASP"]) & {"HD1", "HD2"}  # carboxylates
    assert not hydrogens(first["GLU"]) & {"HE1", "HE2"}
    assert "HE2" in hydrogens(first["HIS"]) and "HD1" not in hydrogens(first["HIS"])  # neutral, Amber's HIE
    assert len([a for a in residues[0].atoms() if a.element.symbol == "H" and a.name in ("H", "H2", "H3")]) == 3
    assert "OXT" in {atom.name for atom in residues[-1].atoms()}


def test_disulfide_cysteines_are_bonded_without_thiol_hydrogen(protonated_fixture):
    topology, _ = protonated_fixture
    cysteines = [r for r in topology.residues() if r.name == "CYS"]
    assert len(cysteines) == 2
    assert all("HG" not in hydrogens(r) for r in cysteines)
    assert sum(1 for a, b in topology.bonds() if a.name == b.name == "SG") == 1


def test_every_residue_matches_an_amber_template_and_positions_are_in_nm(protonated_fixture):
    topology, positions = protonated_fixture
    system = _force_field(FORCE_FIELD).createSystem(topology)  # raises if any residue has no template
    assert system.getNumParticles() == topology.getNumAtoms() == len(positions)
    heavy = read_chains(FIXTURE)["B"]
    ca = np.array([positions[a.index] for a in topology.atoms() if a.name == "CA"])
    np.testing.assert_allclose(ca * 10.0, heavy.atom14[:, 1], atol=1e-3)


def test_hydrogens_are_placed_deterministically_at_bond_length():
    topology, positions = protonated(FIXTURE.read_text())
    again = protonated(FIXTURE.read_text())[1]
    np.testing.assert_array_equal(positions, again)
    lengths = [np.linalg.norm(positions[a.index] - positions[b.index]) for a, b in topology.bonds()
               if "H" in (a.element.symbol, b.element.symbol)]
    assert 0.09 < min(lengths) and max(lengths) < 0.11  # nm


def test_missing_heavy_atoms_are_completed():
    chain = read_chains(FIXTURE)["B"]
    mask = chain.atom_mask.copy()
    mask[0, 5:] = False  # GLN 1 loses CG, CD, OE1, NE2
    topology, _ = protonated(to_pdb_string(build_structure([replace(chain, atom_mask=mask)])))
    assert {"CG", "CD", "OE1", "NE2", "HE21"} <= {atom.name for atom in next(topology.residues()).atoms()}


def test_text_without_amino_acids_is_a_value_error():
    with pytest.raises(ValueError, match="no amino acid"):
        protonated("HETATM    1  O   HOH A   1       0.000   0.000   0.000  1.00  0.00           O\nEND\n")


def test_chains_residue_numbers_and_insertion_codes_are_kept():
    """Two chains, the second renumbered with insertion codes: the topology keeps each residue's chain, number and
    code in order, and every atom of a residue stays in it."""
    chain = read_chains(FIXTURE)["B"]
    ids = [(100 + i // 3, "" if i % 3 == 0 else "AB"[i % 3 - 1]) for i in range(len(chain.residue_ids))]
    second = replace(chain, chain_id="C", residue_ids=ids, atom14=chain.atom14 + 50.0)
    topology, _ = protonated(to_pdb_string(build_structure([chain, second])))
    chains = list(topology.chains())
    assert [c.id for c in chains] == ["B", "C"]
    assert [(r.id, r.insertionCode) for r in chains[0].residues()] == [(str(n), c) for n, c in chain.residue_ids]
    assert [(r.id, r.insertionCode) for r in chains[1].residues()] == [(str(n), c) for n, c in ids]
    for residues in (list(c.residues()) for c in chains):  # each residue holds its own heavy atoms, no other's
        for residue in residues:
            heavy = {a.name for a in residue.atoms() if a.element.symbol != "H"}
            expected = {name for name in atom14_names(residue.name) if name} | ({"OXT"} if residue is residues[-1] else set())
            assert heavy == expected, (residue, heavy ^ expected)
