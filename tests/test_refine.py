"""Refinement of the nanobody fixture and detection of broken geometry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from immunofold.io import ChainAtoms, build_structure, read_chains, to_pdb_string
from immunofold.refine import SOFT_PROBLEM_KINDS, find_problems, refine

FIXTURE = Path(__file__).parent / "fixtures" / "nanobody_7f5g.pdb"


@pytest.fixture(scope="module")
def nanobody() -> ChainAtoms:
    chain = read_chains(FIXTURE)["B"]
    return replace(chain, bfactor=np.round(np.linspace(0.5, 6.0, len(chain.sequence)), 2))


def pdb_of(chain: ChainAtoms) -> str:
    return to_pdb_string(build_structure([chain], remarks=["immunofold refine test"]))


def residue_index(chain: ChainAtoms, residue_id: tuple[int, str]) -> int:
    return chain.residue_ids.index(residue_id)


def test_refine_is_deterministic(nanobody):
    assert refine(pdb_of(nanobody)).pdb_string == refine(pdb_of(nanobody)).pdb_string


def test_refine_fixture_keeps_structure_and_bfactors(nanobody):
    result = refine(pdb_of(nanobody))
    assert result.refined, result.message
    assert result.message == ""
    assert find_problems(result.pdb_string) == []
    assert "REMARK 250 immunofold refine test" in result.pdb_string
    assert any(line.startswith("ATOM") and line[76:78] == " H" for line in result.pdb_string.splitlines())
    refined = read_chains(result.pdb_string)["B"]
    assert refined.sequence == nanobody.sequence
    assert refined.residue_ids == nanobody.residue_ids
    np.testing.assert_array_equal(refined.atom_mask, nanobody.atom_mask)
    deviation = refined.atom14[nanobody.atom_mask] - nanobody.atom14[nanobody.atom_mask]
    assert np.sqrt(np.mean(np.sum(deviation**2, axis=-1))) < 1.0
    np.testing.assert_allclose(refined.bfactor, nanobody.bfactor, atol=1e-3)


def test_refine_holds_the_backbone_harder_than_side_chains(nanobody, monkeypatch):
    """An experimental structure relaxes in vacuum Amber: side chains may move, the backbone (the atoms
    the accuracy is scored on) stays within 0.1 Å RMS (0.2 Å when held as loosely as side chains).
    Minimised to convergence: a crystal has no problems, so by default minimisation stops at the first check."""
    import immunofold.refine

    monkeypatch.setattr(immunofold.refine, "EARLY_STOP_RMS_FORCE", 0.0)
    refined = read_chains(refine(pdb_of(nanobody)).pdb_string)["B"]
    moved = np.linalg.norm(refined.atom14 - nanobody.atom14, axis=-1)  # [N_res, 14] Å
    backbone, side_chain = moved[:, :5][nanobody.atom_mask[:, :5]], moved[:, 5:][nanobody.atom_mask[:, 5:]]
    assert np.sqrt(np.mean(backbone**2)) < 0.1
    assert np.sqrt(np.mean(backbone**2)) < 0.5 * np.sqrt(np.mean(side_chain**2))


def test_refine_completes_missing_side_chain(nanobody):
    mask = nanobody.atom_mask.copy()
    mask[0, 5:] = False  # GLN 1 loses CG, CD, OE1, NE2
    result = refine(pdb_of(replace(nanobody, atom_mask=mask)))
    assert result.refined, result.message
    np.testing.assert_array_equal(read_chains(result.pdb_string)["B"].atom_mask, nanobody.atom_mask)


def test_fixture_has_no_problems(nanobody):
    assert find_problems(pdb_of(nanobody)) == []


def with_d_serine_7(chain: ChainAtoms) -> str:
    """PDB text of the chain with the CB of SER 7 mirrored through its N-CA-C plane."""
    i = residue_index(chain, (7, ""))
    atom14 = chain.atom14.copy()
    n, ca, c, cb = atom14[i, 0], atom14[i, 1], atom14[i, 2], atom14[i, 4]
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    atom14[i, 4] = cb - 2 * np.dot(cb - ca, normal) * normal
    return pdb_of(replace(chain, atom14=atom14))


def with_clash(chain: ChainAtoms) -> str:
    """PDB text of the chain with the OH of TYR 59 moved from 3.5 Å to 1.6 Å of CG2 of residue 69."""
    atom14 = chain.atom14.copy()
    tyr, other = residue_index(chain, (59, "")), residue_index(chain, (69, ""))
    hydroxyl, cg2 = atom14[tyr, 11], atom14[other, 6]
    atom14[tyr, 11] = cg2 + 1.6 * (hydroxyl - cg2) / np.linalg.norm(hydroxyl - cg2)
    return pdb_of(replace(chain, atom14=atom14))


def with_cis_peptide_5(chain: ChainAtoms) -> ChainAtoms:
    """The chain with residue 6 turned 180° about the GLN 5 - GLU 6 peptide bond (trans -> cis)."""
    i = residue_index(chain, (5, ""))
    atom14 = chain.atom14.copy()
    c, n = atom14[i, 2], atom14[i + 1, 0]
    axis = (n - c) / np.linalg.norm(n - c)
    present = chain.atom_mask[i + 1]
    offsets = atom14[i + 1, present] - n
    atom14[i + 1, present] = n + 2 * np.outer(offsets @ axis, axis) - offsets  # 180° about the C-N axis
    return replace(chain, atom14=atom14)


def test_detects_d_amino_acid(nanobody):
    problems = find_problems(with_d_serine_7(nanobody))
    assert [str(p) for p in problems] == ["D-amino acid B7 SER"]
    assert problems[0].kind == "D-amino" and problems[0].residues == ("B7 SER",)


def test_refine_turns_a_d_amino_acid_into_l(nanobody):
    result = refine(with_d_serine_7(nanobody))
    assert result.refined, result.message
    assert find_problems(result.pdb_string) == []
    refined = read_chains(result.pdb_string)["B"]
    i = residue_index(nanobody, (7, ""))
    deviation = refined.atom14[i, :4] - nanobody.atom14[i, :4]  # its backbone stays where it was
    assert np.sqrt(np.mean(np.sum(deviation**2, axis=-1))) < 1.5  # N and CA move about 1.4 Å to let CB through


def test_refine_turns_a_cis_peptide_trans(nanobody):
    result = refine(pdb_of(with_cis_peptide_5(nanobody)))
    assert result.refined, result.message
    remaining = find_problems(result.pdb_string)
    assert all(p.kind in SOFT_PROBLEM_KINDS for p in remaining)  # the cis peptide is gone
    assert all(str(p) in result.message for p in remaining[:3])  # backbone outliers left are named


def rotated_about(points: np.ndarray, origin: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """points [M, 3] turned by `degrees` about the line through origin along axis (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    v = points - origin
    t = np.radians(degrees)
    return origin + v * np.cos(t) + np.cross(k, v) * np.sin(t) + np.outer(v @ k, k) * (1 - np.cos(t))


def test_detects_a_twisted_peptide(nanobody):
    i = residue_index(nanobody, (5, ""))
    atom14 = nanobody.atom14.copy()
    present = nanobody.atom_mask[i + 1]
    atom14[i + 1, present] = rotated_about(atom14[i + 1, present], atom14[i, 2], atom14[i + 1, 0] - atom14[i, 2], 90.0)
    twisted = [p for p in find_problems(pdb_of(replace(nanobody, atom14=atom14))) if p.kind == "twisted"]
    # residue 6 turned as a whole twists both of its peptides
    assert [p.residues for p in twisted] == [("B5 GLN", "B6 GLU"), ("B6 GLU", "B7 SER")]
    assert all(60 < abs(p.value) < 120 for p in twisted)
    assert str(twisted[0]).startswith("twisted peptide B5 GLN - B6 GLU: omega ")


def test_detects_a_distorted_backbone_angle(nanobody):
    i = residue_index(nanobody, (10, ""))
    atom14 = nanobody.atom14.copy()
    ca, c, n_next = atom14[i, 1], atom14[i, 2], atom14[i + 1, 0]
    atom14[i, 3] = rotated_about(atom14[i, 3][None], c, np.cross(ca - c, n_next - c), 25.0)[0]  # O turned in the plane
    problems = find_problems(pdb_of(replace(nanobody, atom14=atom14)))
    assert [(p.kind, p.atoms, p.residues) for p in problems] == [("angle", ("O", "C", "N"), ("B10 GLY", "B11 LEU"))]
    assert abs(problems[0].value - 122.7) > 15
    assert str(problems[0]).startswith("distorted backbone angle O-C-N at B10 GLY - B11 LEU: ")


def test_problems_left_after_every_round_return_the_input(nanobody, monkeypatch):
    import immunofold.refine

    no_torsions = tuple(0.0 for _ in immunofold.refine.TORSION_K)
    monkeypatch.setattr(immunofold.refine, "TORSION_K", no_torsions)  # minimisation alone cannot flip it
    # ... to convergence: the restraint on the mirrored CB pulls it back; on the way it passes through L, where
    # the default early stop would end the round clean
    monkeypatch.setattr(immunofold.refine, "EARLY_STOP_RMS_FORCE", 0.0)
    broken = with_d_serine_7(nanobody)
    result = refine(broken)
    assert not result.refined
    assert result.pdb_string == broken
    assert result.message.startswith("problems remain after refinement: ") and "D-amino acid B7 SER" in result.message


def test_detects_clash(nanobody):
    problems = find_problems(with_clash(nanobody))
    assert [str(p) for p in problems] == ["clash B59 TYR OH - B69 ILE CG2: 1.60 Å"]
    assert problems[0].kind == "clash" and problems[0].atoms == ("OH", "CG2") and abs(problems[0].value - 1.60) < 0.005


def test_refine_resolves_clash(nanobody):
    result = refine(with_clash(nanobody))
    assert result.refined, result.message
    assert find_problems(result.pdb_string) == []


def test_detects_broken_peptide_bond_and_cis_peptide(nanobody):
    atom14 = nanobody.atom14.copy()
    i = residue_index(nanobody, (5, ""))  # GLN 5 - GLU 6
    atom14[i + 1:] += np.array([0.0, 0.0, 1.0], np.float32)  # stretches C(5)-N(6)
    problems = find_problems(pdb_of(replace(nanobody, atom14=atom14)))
    assert any(str(p).startswith("broken peptide bond B5 GLN") and p.kind == "broken" for p in problems), problems

    problems = find_problems(pdb_of(with_cis_peptide_5(nanobody)))
    assert any(str(p).startswith("cis peptide B5 GLN") and p.kind == "cis" for p in problems), problems


@pytest.mark.parametrize("garbage", ["", "not a pdb file\n", "ATOM      1  N   GLN B   1     -1.0\n"])
def test_garbage_input_is_reported_not_raised(garbage):
    result = refine(garbage)
    assert not result.refined
    assert result.pdb_string == garbage
    assert result.message.startswith("refinement failed") and "\n" not in result.message


def protonated_clash(chain: ChainAtoms):
    """OpenMM topology and positions [N_atoms, 3] (nm) of the chain with the clash of `with_clash`."""
    from immunofold.protonation import protonated

    return protonated(with_clash(chain))


def test_the_checks_during_refinement_see_what_the_written_file_holds(nanobody):
    """Refinement checks coordinates straight from OpenMM's arrays, rounded as PDB text holds them, and writes the
    text once: the check must report exactly what find_problems reports on that text, and the text must hold every
    atom of the topology at those coordinates."""
    import gemmi

    import immunofold.refine as refine_module

    topology, positions = protonated_clash(nanobody)
    layout = refine_module._chain_layout(topology)
    noisy = positions + np.random.default_rng(0).normal(0.0, 0.02, positions.shape)  # 0.2 Å: many problems
    for coordinates in (positions, noisy):
        text = refine_module._pdb_text(topology, coordinates, with_clash(nanobody))
        found = refine_module._problems_at(coordinates, layout)
        assert [str(p) for p in found] == [str(p) for p in find_problems(text)]
        written = [(residue.seqid.num, atom.name, atom.pos.tolist()) for residue in gemmi.read_pdb_string(text)[0]["B"]
                   for atom in residue]
        expected = [(int(atom.residue.id), atom.name, np.round(coordinates[atom.index] * 10.0, 3).tolist())
                    for atom in topology.atoms()]
        assert written == expected
    assert [str(p) for p in refine_module._problems_at(positions, layout)] == ["clash B59 TYR OH - B69 ILE CG2: 1.60 Å"]
    assert len(refine_module._problems_at(noisy, layout)) > 10


def test_a_round_stops_early_only_at_a_check_with_low_force_and_no_problems(nanobody):
    import immunofold.refine as refine_module

    topology, clashing = protonated_clash(nanobody)
    reporter = refine_module._StopWhenAcceptable(refine_module._chain_layout(topology))
    interval, limit = refine_module.CHECK_INTERVAL, refine_module.EARLY_STOP_RMS_FORCE
    fixed = clashing.copy()
    tyr_oh = next(atom.index for atom in topology.atoms() if atom.residue.id == "59" and atom.name == "OH")
    fixed[tyr_oh] = nanobody.atom14[residue_index(nanobody, (59, "")), 11] / 10.0  # the crystal's place, nm
    low, high = np.full(fixed.size, 0.5 * limit), np.full(fixed.size, 2.0 * limit)  # RMS force, kJ/mol/nm
    assert reporter.report(interval, fixed.ravel(), low, {})
    assert not reporter.report(interval + 1, fixed.ravel(), low, {})  # between checks
    assert not reporter.report(interval, fixed.ravel(), high, {})  # force still high
    assert not reporter.report(interval, clashing.ravel(), low, {})  # the clash is still there


def test_a_round_left_with_backbone_outliers_stops_once_they_stop_falling(nanobody):
    """With patience, a minimisation that only backbone outliers keep from ending stops after that many checks
    without fewer outliers; a hard problem (a clash) never lets it stop; without patience only a clean check does."""
    import immunofold.refine as refine_module
    from immunofold.protonation import protonated

    i = residue_index(nanobody, (10, ""))
    atom14 = nanobody.atom14.copy()
    ca, c, n_next = atom14[i, 1], atom14[i, 2], atom14[i + 1, 0]
    atom14[i, 3] = rotated_about(atom14[i, 3][None], c, np.cross(ca - c, n_next - c), 25.0)[0]  # O-C-N outlier
    topology, bent = protonated(pdb_of(replace(nanobody, atom14=atom14)))
    interval = refine_module.CHECK_INTERVAL
    low = np.full(bent.size, 0.5 * refine_module.EARLY_STOP_RMS_FORCE)
    patient = refine_module._StopWhenAcceptable(refine_module._chain_layout(topology), patience=2)
    assert [patient.report(k * interval, bent.ravel(), low, {}) for k in (1, 2, 3)] == [False, False, True]
    without_patience = refine_module._StopWhenAcceptable(refine_module._chain_layout(topology))
    assert not any(without_patience.report(k * interval, bent.ravel(), low, {}) for k in range(1, 6))
    clash_topology, clashing = protonated_clash(nanobody)
    patient_with_clash = refine_module._StopWhenAcceptable(refine_module._chain_layout(clash_topology), patience=2)
    assert not any(patient_with_clash.report(k * interval, clashing.ravel(), low, {}) for k in range(1, 6))


def test_a_start_structure_is_minimised_with_restraints_on_the_given_one(nanobody):
    """With start_pdb, minimisation starts from its atoms (hydrogens placed on them) while every heavy atom is
    restrained to its place in the structure given to refine; a start with other residues is a one-line failure."""
    import immunofold.refine as refine_module
    from immunofold.protonation import protonated

    moved = replace(nanobody, atom14=nanobody.atom14 + np.array([0.3, 0.0, 0.0]))  # 0.3 Å along x
    topology, start = protonated(pdb_of(moved))
    targets = refine_module.restraint_targets(topology, start, pdb_of(nanobody))
    heavy = np.array([atom.element.symbol != "H" and atom.name != "OXT" for atom in topology.atoms()])
    np.testing.assert_allclose((start - targets)[heavy], np.tile([0.03, 0.0, 0.0], (heavy.sum(), 1)), atol=2e-5)  # nm
    np.testing.assert_array_equal(targets[~heavy], start[~heavy])  # hydrogens (and OXT) start where they are

    result = refine(pdb_of(nanobody), start_pdb=pdb_of(moved))
    assert result.refined and find_problems(result.pdb_string) == []
    refined = read_chains(result.pdb_string)["B"]
    ca_shift = np.linalg.norm(refined.atom14[:, 1] - nanobody.atom14[:, 1], axis=-1)
    assert np.median(ca_shift) < 0.15  # held at the given structure, not the start 0.3 Å away

    other = replace(nanobody, sequence="A" + nanobody.sequence[1:])  # residue 1 is not the given one's
    failed = refine(pdb_of(nanobody), start_pdb=pdb_of(other))
    assert not failed.refined and failed.pdb_string == pdb_of(nanobody)
    assert "not in the structure to restrain to" in failed.message and "\n" not in failed.message
