"""Hydrogens for refinement: heavy-atom PDB text -> OpenMM topology and positions with hydrogens (pH 7).

Hydrogens come from hydride (the Biotite authors' fragment-based hydrogen builder, ~0.1 s per Fv), placed
without its relaxation: the restrained Amber minimisation that follows places them (on val models that
minimisation took no longer). PDBFixer's `addMissingHydrogens` (OpenMM's Modeller) took ~1.5 s per Fv for the
same atoms, most of it Python unit arithmetic and a hydrogen-only minimisation.

Protonation states at pH 7 follow residue type: Lys, Arg and N-termini charged; Asp, Glu and C-termini (OXT)
charged; His neutral with N-epsilon protonated (Amber's HIE); a Cys in a disulfide has no HG.
Residues missing heavy atoms are completed by PDBFixer first (immunofold's own models never miss any).
"""

from __future__ import annotations

import io as text_io

import biotite.structure as struc
import biotite.structure.io.pdb as biotite_pdb
import hydride
import numpy as np
from openmm import app
from pdbfixer import PDBFixer

from immunofold.io import atom14_names

CARBOXYL_CO_LENGTH = 1.25  # Å, C-OXT of a C-terminal carboxylate
DISULFIDE_CUTOFF = 3.0  # Å between SG atoms, as OpenMM's Topology.createDisulfideBonds
# Formal charge of each (residue, atom) at pH 7; termini are set separately.
PH7_CHARGES = {("LYS", "NZ"): 1, ("ARG", "NH2"): 1, ("ASP", "OD2"): -1, ("GLU", "OE2"): -1}


def protonated(pdb_string: str, seed: int = 0) -> tuple[app.Topology, np.ndarray]:
    """OpenMM topology (all bonds) and positions [N_atoms, 3] in nm of the structure's amino acids with
    hydrogens (pH 7) and a terminal OXT per chain; hetero groups and water are dropped.

    seed: random seed for PDBFixer when it completes residues missing heavy atoms.
    Raises ValueError if the text holds no amino acid.
    """
    atoms = _with_terminal_oxygens(_heavy_atoms(pdb_string, seed))
    atoms.bonds = _bonds(atoms)
    atoms.set_annotation("charge", _ph7_charges(atoms))
    atoms, _ = hydride.add_hydrogen(atoms)
    return _openmm_topology(atoms), atoms.coord.astype(np.float64) / 10.0


def _read_heavy_atoms(pdb_string: str) -> struc.AtomArray:
    """Heavy atoms of the canonical amino acids of the first model."""
    atoms = biotite_pdb.PDBFile.read(text_io.StringIO(pdb_string)).get_structure(model=1)
    atoms = atoms[struc.filter_canonical_amino_acids(atoms) & (atoms.element != "H") & (atoms.atom_name != "OXT")]
    if len(atoms) == 0:
        raise ValueError("no amino acid in the structure")
    return atoms


def _heavy_atoms(pdb_string: str, seed: int) -> struc.AtomArray:
    """`_read_heavy_atoms`, with residues missing heavy atoms completed by PDBFixer."""
    atoms = _read_heavy_atoms(pdb_string)
    if all(_is_complete(residue) for residue in struc.residue_iter(atoms)):
        return atoms
    fixer = PDBFixer(pdbfile=text_io.StringIO(pdb_string))
    fixer.removeHeterogens(keepWater=False)
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=seed)
    completed = text_io.StringIO()
    app.PDBFile.writeFile(fixer.topology, fixer.positions, completed, keepIds=True)
    return _read_heavy_atoms(completed.getvalue())


def _is_complete(residue: struc.AtomArray) -> bool:
    expected = {name for name in atom14_names(str(residue.res_name[0])) if name}
    return expected <= set(residue.atom_name.tolist())


def _with_terminal_oxygens(atoms: struc.AtomArray) -> struc.AtomArray:
    """Atoms with an OXT on the last residue of each chain, in the C-CA-O plane opposite the bisector of
    C->CA and C->O (hand-written: one trigonal placement; hydride and Biotite add hydrogens only)."""
    chain_starts = struc.get_chain_starts(atoms, add_exclusive_stop=True)
    pieces = []
    for start, end in zip(chain_starts[:-1], chain_starts[1:]):
        last = atoms[struc.get_residue_starts(atoms[start:end])[-1] + start:end]
        names = last.atom_name.tolist()
        c, ca, o = (last.coord[names.index(name)] for name in ("C", "CA", "O"))
        bisector = (ca - c) / np.linalg.norm(ca - c) + (o - c) / np.linalg.norm(o - c)
        oxt = last[names.index("O")]
        oxt.atom_name = "OXT"
        oxt.coord = c - CARBOXYL_CO_LENGTH * bisector / np.linalg.norm(bisector)
        pieces += [atoms[start:end], struc.array([oxt])]
    return struc.concatenate(pieces)


def _bonds(atoms: struc.AtomArray) -> struc.BondList:
    """Bonds within residues (Biotite's residue dictionary), C-N between consecutive residues of a chain (always,
    as OpenMM's Topology.createStandardBonds: a broken model bond is what refinement mends) and SG-SG of
    cysteines closer than DISULFIDE_CUTOFF."""
    bonds = struc.connect_via_residue_names(atoms, inter_residue=False)
    starts = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    names = atoms.atom_name
    for first, second, stop in zip(starts[:-2], starts[1:-1], starts[2:]):
        if atoms.chain_id[first] == atoms.chain_id[second]:
            carbon = first + np.flatnonzero(names[first:second] == "C")[0]
            nitrogen = second + np.flatnonzero(names[second:stop] == "N")[0]
            bonds.add_bond(int(carbon), int(nitrogen), struc.BondType.SINGLE)
    sulfur = np.flatnonzero((atoms.res_name == "CYS") & (names == "SG"))
    distance = np.linalg.norm(atoms.coord[sulfur, None] - atoms.coord[None, sulfur], axis=-1)
    for a, b in zip(*np.nonzero(np.triu(distance < DISULFIDE_CUTOFF, k=1))):
        bonds.add_bond(int(sulfur[a]), int(sulfur[b]), struc.BondType.SINGLE)
    return bonds


def _ph7_charges(atoms: struc.AtomArray) -> np.ndarray:
    """Formal charge per atom [N_atoms] at pH 7 (what hydride protonates by)."""
    charge = np.zeros(len(atoms), dtype=int)
    for (residue, name), value in PH7_CHARGES.items():
        charge[(atoms.res_name == residue) & (atoms.atom_name == name)] = value
    charge[atoms.atom_name == "OXT"] = -1
    residue_starts = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    for start in struc.get_chain_starts(atoms):
        stop = residue_starts[residue_starts > start][0]
        charge[start + np.flatnonzero(atoms.atom_name[start:stop] == "N")] = 1
    return charge


def _openmm_topology(atoms: struc.AtomArray) -> app.Topology:
    """OpenMM topology with the atoms' chains, residues (number and insertion code), names, elements and bonds."""
    topology = app.Topology()
    elements = {symbol: app.Element.getBySymbol(symbol.capitalize()) for symbol in set(atoms.element.tolist())}
    names, symbols = atoms.atom_name.tolist(), atoms.element.tolist()
    chain_ids, residue_names = atoms.chain_id.tolist(), atoms.res_name.tolist()
    residue_ids, insertion_codes = atoms.res_id.tolist(), atoms.ins_code.tolist()
    residue_starts = struc.get_residue_starts(atoms, add_exclusive_stop=True)
    chain_starts = set(struc.get_chain_starts(atoms).tolist())
    added, chain = [], None
    for start, stop in zip(residue_starts[:-1].tolist(), residue_starts[1:].tolist()):
        if start in chain_starts:
            chain = topology.addChain(chain_ids[start])
        residue = topology.addResidue(residue_names[start], chain, str(residue_ids[start]), insertion_codes[start])
        added += [topology.addAtom(names[i], elements[symbols[i]], residue) for i in range(start, stop)]
    for a, b in atoms.bonds.as_array()[:, :2].tolist():
        topology.addBond(added[a], added[b])
    return topology
