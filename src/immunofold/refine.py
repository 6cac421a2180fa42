"""Energy minimisation of predicted structures (OpenMM) and geometry checks.

In the spirit of ImmuneBuilder's refinement: hydrogens are added at pH 7 (`immunofold.protonation`);
the Amber14 force field in vacuum is minimised (from the prediction, or from a given start such as the prediction
with its geometry cleaned) with harmonic restraints holding heavy atoms near the prediction (backbone and CB ten
times harder than side chains) and torsion terms that push every non-proline peptide bond to trans (as ImmuneBuilder does
for cis peptides), every X-Pro peptide to cis or trans, and every CB to the L side (N-CA-C-CB -122°).
If the result still has a cis non-proline peptide, a D-amino acid, a steric clash or a broken peptide bond,
minimisation continues with weaker restraints; if problems survive every round, the input is returned
unrefined. Backbone outliers (twisted peptides, bond angles far from Engh & Huber's) left by a round are
minimised once more with their residues held only as loosely as side chains; any that remain are named in
the result's message (and so in the model's REFINED remark).

Nonbonded forces use a 0.7 nm cutoff with OpenMM's reaction field (CutoffNonPeriodic): several
times faster than no cutoff for an Fv, and the reaction field damps vacuum electrostatics. A round ends at the
first check (every CHECK_INTERVAL iterations) where the heavy atoms pass `find_problems` and the RMS force is below
EARLY_STOP_RMS_FORCE, or when the minimiser converges to MINIMISATION_TOLERANCE, whichever comes first; a round
where only backbone outliers are left also ends once they have stopped falling (ROUND_PATIENCE checks).

Output keeps chain ids, residue numbers and insertion codes, and each residue's B-factor
(our per-residue error estimate, Å) is copied back from the input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gemmi
import numpy as np
import openmm
from openmm import app, unit

from immunofold.constants import (
    BACKBONE_ATOMS,
    C_N_CA_ANGLE,
    CA_C_N_ANGLE,
    CIS_OMEGA_LIMIT,
    CLASH_CHECK_DISTANCE,
    N_CA_C_ANGLE,
    O_C_N_ANGLE,
    ONE_TO_THREE,
    PEPTIDE_BOND_LENGTH,
    PEPTIDE_BOND_TOLERANCE,
    THREE_TO_ONE,
)
from immunofold.io import ChainAtoms, atom14_names, read_chains, to_pdb_string

DEFAULT_RESTRAINT_K = 1000.0  # kJ/mol/nm^2 (about 2.4 kcal/mol/Å^2, ImmuneBuilder's first stiffness)
# One minimisation round per (scale of restraint_k, torsion strength). The torsion terms are on from the first
# round: with them off in a first round of its own (0.9.0), 2 of 3 val antibodies needed a second full-restraint
# round with them on, and refinement took ~15 % more CPU time. Restraints are weakened only if problems remain.
RESTRAINT_SCALES = (1.0, 0.1, 0.01)
TORSION_K = (1000.0, 1000.0, 1000.0)  # kJ/mol, trans-peptide and L-chirality terms
# Torsion energies (OpenMM expressions of theta, times k_torsion) of CA-C-N-CA. Non-proline peptides: zero for trans,
# highest (1) for cis, harmonic near trans: 0.10.1's 0.25*(1+cos(theta))^2 is flat near trans and left 3.9 twisted
# peptides per val model (docs/benchmarks.md, refinement item 7). X-Pro peptides: zero for cis and trans.
OMEGA_ENERGY = "0.5*(1+cos(theta))"
PROLINE_OMEGA_ENERGY = "sin(theta)^2"
# Backbone atoms (and CB, which places the side chain) are restrained this many times harder than side-chain
# atoms: side chains resolve clashes, the predicted fold stays where the model put it. On val (v0.7, 149 models,
# all refined either way) factor 10 against 1: antibody H3 3.21 vs 3.24 Å, nanobody CDR3 4.20 vs 4.24, TCR CDR3-beta
# 2.04 vs 2.07, frameworks as unrefined, no slower; 100 gained nothing more and was 50 % slower.
BACKBONE_RESTRAINT_FACTOR = 10.0
# Restraint weight of the heavy atoms around backbone outliers (twisted peptides, distorted angles) left after a round,
# in one more minimisation: their backbone is then held like side chains. On 30 val models (14 antibodies) twisted
# peptides went from 3.9 to 0 per model and models with any outlier from 26 to 7 (with OMEGA_ENERGY), antibody H3
# unchanged, nanobody CDR3 +0.015 Å; weight 0 left 3 with outliers but cost H3 +0.02 and nanobody CDR3 +0.05 Å. On all
# of val the refined CDR3s moved 0.03-0.05 Å further from the crystal (docs/benchmarks.md, refinement item 7).
RELEASED_RESTRAINT_WEIGHT = 1.0
HARD_RESTRAINED_ATOMS = frozenset((*BACKBONE_ATOMS, "CB"))  # restrained BACKBONE_RESTRAINT_FACTOR times harder
L_CHIRALITY_DIHEDRAL = -122.0  # degrees, N-CA-C-CB of L-amino acids (-122 ± 2 in the test nanobody)
# kJ/mol/nm, root-mean-square force at convergence. On val (v0.7, 149 models, all refined clean either way) 10 took
# ~2x the CPU time of 30 for RMSDs within 0.008 Å (antibody H3 3.208 vs 3.217, nanobody CDR3 4.200 vs 4.200, TCR
# CDR3-beta 2.023 vs 2.031); 100 was ~1.5x faster again but 0.016-0.020 Å worse (H3, TCR B2).
MINIMISATION_TOLERANCE = 30.0
# A round stops early once the structure is acceptable: heavy atoms without problems and RMS force (kJ/mol/nm) below
# this, checked every CHECK_INTERVAL iterations. On 12 val antibodies problems were gone after 10-110 iterations
# (median 40) of the ~140 to convergence, and the heavy atoms then moved 0.05-0.29 Å RMS more. A check costs ~5 ms
# (under one iteration); checking every 5 instead of 10 iterations ends rounds a few iterations sooner.
EARLY_STOP_RMS_FORCE = 100.0
CHECK_INTERVAL = 5
# A round also ends once only backbone outliers are left and their number has not fallen for this many checks (the
# release minimisation then takes them on). Until 0.10.2 a round ended as soon as only outliers were left: on val
# (149 models, the same run) going on while they still fall took refined TCR CDR2-beta 0.904 -> 0.846 Å, CDR3-beta
# 2.050 -> 2.031, antibody H3 3.241 -> 3.228, no region worse by more than 0.003, as many models without an outlier
# (docs/benchmarks.md, refinement item 8). Counted in checks: 6 checks of CHECK_INTERVAL, 30 iterations (3 checks
# of 5 iterations cost TCR CDR2-beta +0.011 Å on val, refinement item 9).
ROUND_PATIENCE = 6
# Amber14's protein force field: amber14-all.xml's protein part, the same parameters, whose residue templates
# match ~20 ms faster per Fv without the nucleic-acid and lipid ones
FORCE_FIELD = "amber14/protein.ff14SB.xml"
# 1 nm -> 0.8 nm: ~18 % less CPU time on val antibodies; 0.8 -> 0.7 nm (with CHECK_INTERVAL 5): ~9 % less again,
# refined RMSDs within 0.003 Å in every region but nanobody CDR1 (+0.007 ± 0.004), more models without outliers
# (docs/benchmarks.md, refinement item 9)
NONBONDED_CUTOFF = 0.7 * unit.nanometer
CPU_THREADS = 1  # one thread: minimisation is deterministic and, on 2 cores, about as fast as two

TWISTED_OMEGA_LIMIT = 150.0  # degrees: |omega| from CIS_OMEGA_LIMIT to this is a twisted peptide (MolProbity's rule)
# Degrees a backbone bond angle (N-CA-C, CA-C-N, C-N-CA, O-C-N) may deviate from Engh & Huber's value. 30 val
# crystal structures: largest deviation 12.3°, 0.13 per structure above 10° (MolProbity flags ~4 sigma, 8-10°).
BACKBONE_ANGLE_TOLERANCE = 15.0
# Heavy-atom pairs (atom of residue i, atom of residue i+1) within two bonds across a peptide bond.
PEPTIDE_NEIGHBOUR_PAIRS = frozenset({("C", "N"), ("O", "N"), ("CA", "N"), ("C", "CA"), ("C", "CD")})


@dataclass
class RefineResult:
    """pdb_string: refined structure with hydrogens, or the input if refinement failed.
    refined: whether pdb_string is the refined structure.
    message: "" on success, else a one-line reason.
    """

    pdb_string: str
    refined: bool
    message: str


def refine(pdb_string: str, max_iterations: int = 0, restraint_k: float = DEFAULT_RESTRAINT_K,
           seed: int = 0, start_pdb: str | None = None) -> RefineResult:
    """Minimise a PDB structure with heavy-atom position restraints; never raises.

    max_iterations: limit per minimisation round (0 = until converged).
    restraint_k: harmonic restraint stiffness on heavy atoms, kJ/mol/nm^2; later rounds use
        restraint_k times each of RESTRAINT_SCALES.
    seed: random seed for completing residues that miss heavy atoms (same input and seed, same output).
    start_pdb: the same residues at other coordinates to start from (the prediction with its geometry cleaned,
        `cleanup.clean_geometry`: about a third fewer minimiser iterations); the restraints still hold each heavy atom
        at its place in pdb_string.
    """
    try:
        return _refine(pdb_string, max_iterations, restraint_k, seed, start_pdb)
    except Exception as error:  # refinement is best effort: report, never raise
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        return RefineResult(pdb_string, False, f"refinement failed: {reason}")


def _refine(pdb_string: str, max_iterations: int, restraint_k: float, seed: int,
            start_pdb: str | None) -> RefineResult:
    """refine() without the exception guard."""
    from immunofold.protonation import protonated  # Biotite and hydride load at the first refinement (~0.5 s)

    topology, positions = protonated(start_pdb or pdb_string, seed)
    targets = None if start_pdb is None else restraint_targets(topology, positions, pdb_string)
    return minimised(topology, positions, pdb_string, max_iterations, restraint_k, targets=targets)


def restraint_targets(topology: app.Topology, positions: np.ndarray, pdb_string: str) -> np.ndarray:
    """[N_atoms, 3] nm: `positions` with each heavy atom that pdb_string holds (matched by chain, residue number,
    insertion code and atom name) at its place there; hydrogens and atoms pdb_string lacks (the terminal OXT) keep
    their positions. Raises ValueError if a residue of the topology is not in pdb_string under the same name."""
    model = gemmi.read_pdb_string(pdb_string)[0]
    places = {(chain.name, residue.seqid.num, residue.seqid.icode.strip(), residue.name): {a.name: a.pos for a in residue}
              for chain in model for residue in chain}
    targets = np.array(positions, dtype=np.float64)
    for residue in topology.residues():
        atoms = places.get((residue.chain.id, int(residue.id), residue.insertionCode.strip(), residue.name))
        if atoms is None:
            raise ValueError(f"residue {residue.chain.id}{residue.id}{residue.insertionCode.strip()} {residue.name} "
                             "of the start structure is not in the structure to restrain to")
        for atom in residue.atoms():
            place = atoms.get(atom.name)
            if place is not None and atom.element.symbol != "H":
                targets[atom.index] = (place.x / 10.0, place.y / 10.0, place.z / 10.0)
    return targets


def minimised(topology: app.Topology, positions: np.ndarray, pdb_string: str, max_iterations: int = 0,
              restraint_k: float = DEFAULT_RESTRAINT_K, tolerance: float = MINIMISATION_TOLERANCE,
              targets: np.ndarray | None = None) -> RefineResult:
    """The rounds of restrained minimisation of a protonated structure (positions [N_atoms, 3] nm) until
    `find_problems` finds nothing but backbone outliers (SOFT_PROBLEM_KINDS). Where those remain, their residues
    (and neighbours) are minimised once more with their restraints released (`_release_residues`); any still left are
    named in the message. pdb_string is the input, whose annotations the result keeps.
    tolerance: root-mean-square force at convergence, kJ/mol/nm.
    targets: [N_atoms, 3] nm where the restraints hold the heavy atoms (default: positions)."""
    context, restraint = _restrained_context(topology, positions if targets is None else targets)
    context.setPositions(positions)  # the start; the restraints hold the targets
    layout = _chain_layout(topology)
    for scale, torsion_k in zip(RESTRAINT_SCALES, TORSION_K):
        context.setParameter("k", restraint_k * scale)
        context.setParameter("k_torsion", torsion_k)
        stop_when_acceptable = _StopWhenAcceptable(layout, patience=ROUND_PATIENCE)
        openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations, stop_when_acceptable)
        refined = _positions_nm(context)
        problems = _problems_at(refined, layout)
        if problems and all(p.kind in SOFT_PROBLEM_KINDS for p in problems):
            _release_residues(context, restraint, topology, problems)
            stop_when_clean = _StopWhenAcceptable(layout)
            openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations, stop_when_clean)
            released = _positions_nm(context)
            released_problems = _problems_at(released, layout)
            if all(p.kind in SOFT_PROBLEM_KINDS for p in released_problems):
                refined, problems = released, released_problems
        if all(p.kind in SOFT_PROBLEM_KINDS for p in problems):
            message = f"backbone outliers remain: {_listed(problems)}" if problems else ""
            return RefineResult(_pdb_text(topology, refined, pdb_string), True, message)
    return RefineResult(pdb_string, False, f"problems remain after refinement: {_listed(problems)}")


def _positions_nm(context: openmm.Context) -> np.ndarray:
    """[N_atoms, 3] nm, the context's coordinates."""
    return context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


def _written_angstroms(positions_nm: np.ndarray) -> np.ndarray:
    """[N_atoms, 3] Å as a PDB file holds them (3 decimals): what the checks see is what a reader of the file sees."""
    return np.round(np.asarray(positions_nm, dtype=np.float64) * 10.0, 3)


def _problems_at(positions_nm: np.ndarray, layout: tuple[list[ChainAtoms], list[np.ndarray]]) -> list:
    """`find_problems` of the heavy atoms at these coordinates ([N_atoms, 3] nm), as written to PDB text, through
    the topology's `_chain_layout` (filled in place)."""
    chains, atom_index = layout
    angstroms = _written_angstroms(positions_nm)
    for chain, index in zip(chains, atom_index):
        chain.atom14[chain.atom_mask] = angstroms[index[chain.atom_mask]]
    return _problems_of_chains(chains, CLASH_CHECK_DISTANCE)


def _pdb_text(topology: app.Topology, positions_nm: np.ndarray, input_pdb: str) -> str:
    """PDB text of the protonated structure at these coordinates ([N_atoms, 3] nm), keeping chain ids, residue
    numbers and insertion codes, with the input's per-residue B-factors and remarks."""
    source = gemmi.read_pdb_string(input_pdb)
    bfactors = {(chain.name, str(residue.seqid)): float(np.mean([atom.b_iso for atom in residue]))
                for chain in source[0] for residue in chain if len(residue)}
    angstroms = _written_angstroms(positions_nm).tolist()
    model = gemmi.Model("1")
    for chain in topology.chains():
        written = gemmi.Chain(chain.id)
        for residue in chain.residues():
            seqid = gemmi.SeqId(int(residue.id), residue.insertionCode.strip() or " ")
            bfactor = bfactors.get((chain.id, str(seqid)), 0.0)
            entry = gemmi.Residue()
            entry.name, entry.seqid, entry.het_flag = residue.name, seqid, "A"
            for atom in residue.atoms():
                written_atom = gemmi.Atom()
                written_atom.name = atom.name
                written_atom.element = gemmi.Element(atom.element.symbol)
                written_atom.pos = gemmi.Position(*angstroms[atom.index])
                written_atom.occ, written_atom.b_iso = 1.0, bfactor
                entry.add_atom(written_atom)
            written.add_residue(entry)
        model.add_chain(written)
    structure = gemmi.Structure()
    structure.add_model(model)
    structure.raw_remarks = list(source.raw_remarks)
    structure.setup_entities()
    return to_pdb_string(structure)


def _release_residues(context: openmm.Context, restraint: openmm.CustomExternalForce, topology: app.Topology,
                      problems: list) -> None:
    """Set the restraint weight of every heavy atom of the residues named in `problems`, and of their sequence
    neighbours, to RELEASED_RESTRAINT_WEIGHT (in the context)."""
    labels = [_format_residue(r.chain.id, r.id, r.insertionCode.strip(), r.name) for r in topology.residues()]
    named = {label for problem in problems for label in problem.residues}
    released = set()
    residues = list(topology.residues())
    for i, label in enumerate(labels):
        if label in named:
            released |= {j for j in (i - 1, i, i + 1) if 0 <= j < len(residues) and residues[j].chain is residues[i].chain}
    atoms = {atom.index for j in released for atom in residues[j].atoms()}
    for particle in range(restraint.getNumParticles()):
        atom, parameters = restraint.getParticleParameters(particle)
        if atom in atoms:
            restraint.setParticleParameters(particle, atom, [RELEASED_RESTRAINT_WEIGHT, *parameters[1:]])
    restraint.updateParametersInContext(context)


def _listed(problems: list) -> str:
    """The first three problems and how many more, on one line."""
    return "; ".join(str(p) for p in problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


class _StopWhenAcceptable(openmm.MinimizationReporter):
    """Ends a minimisation at the first check (every CHECK_INTERVAL iterations) where the RMS force is below
    EARLY_STOP_RMS_FORCE and the heavy atoms have no `find_problems` problem. layout: the topology's `_chain_layout`.
    patience: also end at such a check once only backbone outliers (SOFT_PROBLEM_KINDS) are left and their number has
    not fallen for this many checks (None: never)."""

    def __init__(self, layout: tuple[list[ChainAtoms], list[np.ndarray]], patience: int | None = None):
        super().__init__()
        self.layout = layout
        self.patience = patience
        self.fewest_outliers = None
        self.checks_without_fewer = 0

    def report(self, iteration, x, grad, args) -> bool:
        if iteration == 0 or iteration % CHECK_INTERVAL:
            return False
        if np.sqrt(np.mean(np.square(np.asarray(grad)))) > EARLY_STOP_RMS_FORCE:
            return False
        problems = _problems_at(np.asarray(x).reshape(-1, 3), self.layout)
        if not problems:
            return True
        if self.patience is None or any(p.kind not in SOFT_PROBLEM_KINDS for p in problems):
            return False
        if self.fewest_outliers is None or len(problems) < self.fewest_outliers:
            self.fewest_outliers, self.checks_without_fewer = len(problems), 0
        else:
            self.checks_without_fewer += 1
        return self.checks_without_fewer >= self.patience


def _chain_layout(topology: app.Topology) -> tuple[list[ChainAtoms], list[np.ndarray]]:
    """Protein chains of an OpenMM topology as ChainAtoms (heavy atoms; coordinates zero, float32 as `read_chains`
    reads them from text) and, per chain, the topology atom index of each atom14 slot [N_res, 14] (-1 where absent),
    to fill coordinates in later."""
    chains, indices = [], []
    for chain in topology.chains():
        residues = list(chain.residues())
        index = np.full((len(residues), 14), -1, dtype=np.int64)
        for r, residue in enumerate(residues):
            slots = {name: slot for slot, name in enumerate(atom14_names(residue.name))}
            for atom in residue.atoms():
                if atom.name in slots:
                    index[r, slots[atom.name]] = atom.index
        mask = index >= 0
        chains.append(ChainAtoms(
            chain.id, "".join(THREE_TO_ONE.get(residue.name, "X") for residue in residues),
            [(int(residue.id), residue.insertionCode.strip()) for residue in residues],
            np.zeros((len(residues), 14, 3), np.float32), mask, np.zeros(len(residues))))
        indices.append(index)
    return chains, indices


@functools.lru_cache(maxsize=2)
def _force_field(name: str) -> app.ForceField:
    """An OpenMM force field by file name (each loaded once)."""
    return app.ForceField(name)


def _restrained_context(topology: app.Topology, targets: np.ndarray) -> tuple[openmm.Context, openmm.CustomExternalForce]:
    """Vacuum Amber14 system (NONBONDED_CUTOFF) with harmonic restraints (global parameter k,
    kJ/mol/nm^2, times BACKBONE_RESTRAINT_FACTOR for backbone atoms and CB) holding each heavy
    atom at targets [N_atoms, 3] nm. The context's atoms are not placed yet.

    A one-thread CPU context, or Reference if the CPU platform is unavailable; returned with its restraint force.
    """
    system = _force_field(FORCE_FIELD).createSystem(topology, nonbondedMethod=app.CutoffNonPeriodic,
                                            nonbondedCutoff=NONBONDED_CUTOFF, constraints=None)
    restraint = openmm.CustomExternalForce("0.5*k*weight*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    restraint.addGlobalParameter("k", 0.0)
    for name in ("weight", "x0", "y0", "z0"):
        restraint.addPerParticleParameter(name)
    for atom, position in zip(topology.atoms(), targets.tolist()):
        if atom.element is not None and atom.element.symbol != "H":
            weight = BACKBONE_RESTRAINT_FACTOR if atom.name in HARD_RESTRAINED_ATOMS else 1.0
            restraint.addParticle(atom.index, [weight, *position])
    system.addForce(restraint)
    system.addForce(_geometry_torsions(topology))
    integrator = openmm.VerletIntegrator(0.001)
    try:
        platform = openmm.Platform.getPlatformByName("CPU")
        context = openmm.Context(system, integrator, platform, {"Threads": str(CPU_THREADS)})
    except openmm.OpenMMException:
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    return context, restraint


def _geometry_torsions(topology: app.Topology) -> openmm.CustomTorsionForce:
    """Torsion terms (global strength k_torsion, kJ/mol; zero when satisfied) towards trans omega
    (CA-C-N-CA) for each bonded non-proline peptide, towards cis or trans for each X-Pro peptide, and
    towards L chirality (N-CA-C-CB) per residue."""
    force = openmm.CustomTorsionForce(
        f"k_torsion*(chirality*(1-cos(theta-target)) + trans*{OMEGA_ENERGY} + planar*{PROLINE_OMEGA_ENERGY})")
    force.addGlobalParameter("k_torsion", 0.0)
    for name in ("chirality", "trans", "planar"):  # which term a torsion has (one of them 1, the others 0)
        force.addPerTorsionParameter(name)
    force.addPerTorsionParameter("target")  # radians, chirality only
    atoms = [{atom.name: atom.index for atom in residue.atoms()} for residue in topology.residues()]
    residues = list(topology.residues())
    peptide_bonds = {
        (a.residue.index, b.residue.index)
        for a, b in topology.bonds()
        if a.name == "C" and b.name == "N" and b.residue.index == a.residue.index + 1
    }
    for first, second in sorted(peptide_bonds):
        a, b = atoms[first], atoms[second]
        proline = residues[second].name == "PRO"
        force.addTorsion(a["CA"], a["C"], b["N"], b["CA"], [0.0, float(not proline), float(proline), 0.0])
    target = np.radians(L_CHIRALITY_DIHEDRAL)
    for names in atoms:
        if all(name in names for name in ("N", "CA", "C", "CB")):
            force.addTorsion(names["N"], names["CA"], names["C"], names["CB"], [1.0, 0.0, 0.0, target])
    return force


# --- geometry checks ---------------------------------------------------------------------------

PROBLEM_KINDS = ("broken", "cis", "twisted", "angle", "D-amino", "clash")  # GeometryProblem.kind values
# Backbone outliers a refined model may keep (its message names them): restrained minimisation leaves some where the
# predicted loop is strained (docs/benchmarks.md), and weaker restraints to remove them cost accuracy and time
SOFT_PROBLEM_KINDS = ("twisted", "angle")


@dataclass(frozen=True)
class GeometryProblem:
    """One geometry problem: its kind (PROBLEM_KINDS), the residues involved ('H111A SER'), the atoms of a clash or
    an angle, and its value (C-N length or clash distance in Å, omega or bond angle in degrees; None for a D-amino
    acid).
    str() is a one-line description, e.g. 'clash B59 TYR OH - B69 ILE CG2: 1.60 Å'."""

    kind: str
    residues: tuple[str, ...]
    value: float | None = None
    atoms: tuple[str, ...] = ()

    def __str__(self) -> str:
        pair = " - ".join(self.residues)
        if self.kind == "broken":
            return f"broken peptide bond {pair}: C-N {self.value:.2f} Å"
        if self.kind == "cis":
            return f"cis peptide {pair}: omega {self.value:.0f}°"
        if self.kind == "twisted":
            return f"twisted peptide {pair}: omega {self.value:.0f}°"
        if self.kind == "angle":
            return f"distorted backbone angle {'-'.join(self.atoms)} at {pair}: {self.value:.0f}°"
        if self.kind == "D-amino":
            return f"D-amino acid {self.residues[0]}"
        (first, second), (atom_a, atom_b) = self.residues, self.atoms
        return f"clash {first} {atom_a} - {second} {atom_b}: {self.value:.2f} Å"


def find_problems(pdb_string: str, clash_distance: float = CLASH_CHECK_DISTANCE) -> list[GeometryProblem]:
    """Geometry problems among heavy atoms of a PDB structure (str() of each is one line).

    Reports non-proline cis peptides (|omega CA-C-N-CA| < 30°), twisted peptides (30-150°), backbone
    bond angles (N-CA-C, CA-C-N, C-N-CA, O-C-N) more than 15° from Engh & Huber's, D-amino acids (N-CA-C-CB
    chirality), broken peptide bonds (C-N outside 1.33 ± 0.1 Å) and clashes: non-bonded heavy
    atoms of different residues closer than `clash_distance` (Å), excluding pairs within two
    bonds across a peptide bond and disulfide SG-SG pairs. Hydrogens are ignored.
    Raises ValueError if the text holds no protein.
    """
    return _problems_of_chains(list(read_chains(pdb_string).values()), clash_distance)


def _problems_of_chains(chains: list[ChainAtoms], clash_distance: float) -> list[GeometryProblem]:
    """`find_problems` of chains already read."""
    problems = []
    for chain in chains:
        problems += _peptide_bond_problems(chain)
        problems += _backbone_angle_problems(chain)
        problems += _chirality_problems(chain)
    problems += _clash_problems(chains, clash_distance)
    return problems


def _residue_label(chain: ChainAtoms, index: int) -> str:
    """E.g. 'H111A SER'."""
    number, insertion = chain.residue_ids[index]
    return _format_residue(chain.chain_id, number, insertion, ONE_TO_THREE.get(chain.sequence[index], "UNK"))


def _format_residue(chain_id: str, number, insertion: str, residue_name: str) -> str:
    """The label problems name residues by (and `_release_residues` finds them by), e.g. 'H111A SER'."""
    return f"{chain_id}{number}{insertion} {residue_name}"


def _dihedral_degrees(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Dihedral angles a-b-c-d in degrees, points [N, 3] -> [N]."""
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, axis=-1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, axis=-1, keepdims=True) * b1
    x = np.sum(v * w, axis=-1)
    y = np.sum(np.cross(b1, v) * w, axis=-1)
    return np.degrees(np.arctan2(y, x))


def _peptide_bond_problems(chain: ChainAtoms) -> list[GeometryProblem]:
    """Broken peptide bonds and cis non-proline peptides between consecutive residues."""
    x, mask = chain.atom14, chain.atom_mask
    ca, c, n = x[:-1, 1], x[:-1, 2], x[1:, 0]
    next_ca = x[1:, 1]
    has_bond_atoms = mask[:-1, 2] & mask[1:, 0]
    has_omega_atoms = has_bond_atoms & mask[:-1, 1] & mask[1:, 1]
    bond_length = np.linalg.norm(c - n, axis=-1)
    omega = _dihedral_degrees(ca, c, n, next_ca)
    problems = []
    for i in range(len(chain.sequence) - 1):
        pair = (_residue_label(chain, i), _residue_label(chain, i + 1))
        if has_bond_atoms[i] and abs(bond_length[i] - PEPTIDE_BOND_LENGTH) > PEPTIDE_BOND_TOLERANCE:
            problems.append(GeometryProblem("broken", pair, float(bond_length[i])))
        if has_omega_atoms[i] and abs(omega[i]) < CIS_OMEGA_LIMIT and chain.sequence[i + 1] != "P":
            problems.append(GeometryProblem("cis", pair, float(omega[i])))
        if has_omega_atoms[i] and CIS_OMEGA_LIMIT <= abs(omega[i]) < TWISTED_OMEGA_LIMIT:
            problems.append(GeometryProblem("twisted", pair, float(omega[i])))
    return problems


def _angle_degrees(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Angles a-b-c in degrees, points [N, 3] -> [N]."""
    u, v = a - b, c - b
    cosine = np.sum(u * v, axis=-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1) + 1e-12)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def _backbone_angle_problems(chain: ChainAtoms) -> list[GeometryProblem]:
    """Backbone bond angles more than BACKBONE_ANGLE_TOLERANCE from Engh & Huber's: N-CA-C in each residue,
    CA-C-N, C-N-CA and O-C-N at each bonded peptide (C-N within the broken-bond limit)."""
    x, mask = chain.atom14, chain.atom_mask
    n, ca, c, o = x[:, 0], x[:, 1], x[:, 2], x[:, 3]
    bonded = mask[:-1, 2] & mask[1:, 0] & (
        np.abs(np.linalg.norm(c[:-1] - n[1:], axis=-1) - PEPTIDE_BOND_LENGTH) <= PEPTIDE_BOND_TOLERANCE)
    # (atom names, ideal angle, angles [M], which exist [M], residue index of the first atom, of the last)
    checks = [
        (("N", "CA", "C"), N_CA_C_ANGLE, _angle_degrees(n, ca, c), mask[:, :3].all(-1), 0),
        (("CA", "C", "N"), CA_C_N_ANGLE, _angle_degrees(ca[:-1], c[:-1], n[1:]), bonded & mask[:-1, 1], 1),
        (("C", "N", "CA"), C_N_CA_ANGLE, _angle_degrees(c[:-1], n[1:], ca[1:]), bonded & mask[1:, 1], 1),
        (("O", "C", "N"), O_C_N_ANGLE, _angle_degrees(o[:-1], c[:-1], n[1:]), bonded & mask[:-1, 3], 1),
    ]
    problems = []
    for atoms, ideal, angles, exists, span in checks:
        for i in np.flatnonzero(exists & (np.abs(angles - ideal) > BACKBONE_ANGLE_TOLERANCE)):
            residues = tuple(_residue_label(chain, j) for j in range(i, i + span + 1))
            problems.append(GeometryProblem("angle", residues, float(angles[i]), atoms))
    return problems


def _chirality_problems(chain: ChainAtoms) -> list[GeometryProblem]:
    """Residues whose CB lies on the D side of the N-CA-C plane."""
    x, mask = chain.atom14, chain.atom_mask
    n, ca, c, cb = x[:, 0], x[:, 1], x[:, 2], x[:, 4]
    has_atoms = mask[:, :3].all(axis=-1) & mask[:, 4]
    # Signed volume (N-CA) x (C-CA) . (CB-CA) is positive for L-amino acids.
    volume = np.sum(np.cross(n - ca, c - ca) * (cb - ca), axis=-1)
    return [GeometryProblem("D-amino", (_residue_label(chain, i),)) for i in np.flatnonzero(has_atoms & (volume < 0))]


def _clash_problems(chains: list[ChainAtoms], clash_distance: float) -> list[GeometryProblem]:
    """Pairs of non-bonded heavy atoms in different residues closer than clash_distance (Å)."""
    from scipy.spatial import cKDTree  # imported when first needed: scipy.spatial costs ~0.3 s at start-up

    located = [np.nonzero(chain.atom_mask) for chain in chains]  # (residue, slot) of each atom, in file order
    coords = np.concatenate([chain.atom14[r, s] for chain, (r, s) in zip(chains, located)]).astype(np.float64)
    chain_index = np.concatenate([np.full(len(r), c) for c, (r, _) in enumerate(located)]).tolist()
    residue_index = np.concatenate([r for r, _ in located]).tolist()
    atom_names = [atom14_names(ONE_TO_THREE.get(chain.sequence[r], "UNK"))[slot]
                  for chain, (residues, slots) in zip(chains, located) for r, slot in zip(residues.tolist(), slots.tolist())]
    pairs = cKDTree(coords).query_pairs(clash_distance, output_type="ndarray")  # [P, 2], a < b, any order
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].tolist()
    problems = []
    for a, b in pairs:
        if chain_index[a] == chain_index[b] and residue_index[a] == residue_index[b]:
            continue
        if _bonded_across_residues(chain_index, residue_index, atom_names, a, b):
            continue
        chain_a, chain_b = chains[chain_index[a]], chains[chain_index[b]]
        problems.append(GeometryProblem(
            "clash", (_residue_label(chain_a, residue_index[a]), _residue_label(chain_b, residue_index[b])),
            float(np.linalg.norm(coords[a] - coords[b])), (atom_names[a], atom_names[b])))
    return problems


def _bonded_across_residues(chain_index: list[int], residue_index: list[int], atom_names: list[str],
                            a: int, b: int) -> bool:
    """Whether atoms a and b (different residues) are a disulfide SG pair or within two bonds
    across the peptide bond of consecutive residues."""
    if atom_names[a] == atom_names[b] == "SG":
        return True
    if chain_index[a] != chain_index[b] or abs(residue_index[a] - residue_index[b]) != 1:
        return False
    first, second = (a, b) if residue_index[a] < residue_index[b] else (b, a)
    return (atom_names[first], atom_names[second]) in PEPTIDE_NEIGHBOUR_PAIRS
