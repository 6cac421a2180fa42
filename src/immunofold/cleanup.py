"""Geometry clean-up of predicted structures in torch, without a force field.

Ensemble members place each residue as its own rigid body, so consecutive residues rarely meet at a
real peptide bond and atoms of different residues can overlap. `clean_geometry` moves every atom a
little (restrained to the prediction) until:
- peptide bonds have ideal geometry: C(i)-N(i+1) length, CA-C-N and C-N-CA angles
  (constants.PEPTIDE_BOND_LENGTH, CA_C_N_ANGLE, C_N_CA_ANGLE), O in the peptide plane, and trans
  (cis kept only before a proline predicted cis), all as target distances between atoms up to
  three bonds apart across the bond;
- each residue keeps its internal geometry: distances between atoms of one rigid group (and the two
  atoms its torsion turns about) stay as in the input, which is built with ideal geometry
  (`geometry.atom14_from_frames`), so bond lengths, angles, ring planarity and L chirality hold while
  side-chain torsions may turn;
- heavy atoms of different residues are no closer than CLASH_DISTANCE (pairs up to three bonds
  apart across a peptide bond and disulfide SG-SG pairs excepted).

All terms are squared distance errors over pair lists built once from the input, minimised by
L-BFGS over the whole batch at once. Shapes: B receptors, N residues, 14 atom slots (atom14).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from immunofold.constants import (
    C_N_CA_ANGLE,
    CA_C_N_ANGLE,
    CIS_OMEGA_LIMIT,
    CLASH_CHECK_DISTANCE,
    NUM_RESTYPES,
    NUM_RIGID_GROUPS,
    PEPTIDE_BOND_LENGTH,
    PEPTIDE_BOND_TOLERANCE,
    RESTYPE_INDEX,
)
from immunofold.geometry import dihedral, residue_tables

N, CA, C, O, CB = 0, 1, 2, 3, 4  # atom14 slots of the backbone and CB
SG = 5  # atom14 slot of cysteine's SG
PROLINE_CD = 6  # atom14 slot of proline's CD

# Atoms of different residues are pushed apart below CLASH_DISTANCE (Å); atoms three bonds apart across a peptide
# bond (N(i)-N(i+1), CB(i)-N(i+1), ...) below ONE_FOUR_DISTANCE. The val split's experimental structures have 2.8
# such pairs per structure under 2.5 Å (hydrogen bonds, salt bridges) and 134 under 3.0 Å; 1-4 pairs 0.03 under 2.5 Å.
CLASH_DISTANCE = 2.5
ONE_FOUR_DISTANCE = 2.5
SEARCH_MARGIN = 1.0  # Å: pairs closer than CLASH_DISTANCE + SEARCH_MARGIN at the start are watched throughout
GEOMETRY_WEIGHT = 100.0  # per Å², bond-geometry distance terms
PEPTIDE_BOND_FACTOR = 10.0  # C(i)-N(i+1) length held this many times harder (5: a few bonds stayed at 1.44 Å)
CLASH_WEIGHT = 100.0  # per Å², clash terms
# Per Å², N, CA, C, O, CB held at the prediction. On val (v0.7, 149 models): 1.0 left one cis non-proline peptide
# (148/149 models clean), 3.0 none (149/149) and CDR RMSDs 0.005-0.03 Å lower; 10.0 lower still by ~0.015 Å but
# left 4 models with a clash or cis peptide (benchmarks/results/geometry.md, docs/benchmarks.md).
BACKBONE_RESTRAINT = 3.0
# Per Å²: a receptor left with a problem (`problem_counts`) at BACKBONE_RESTRAINT is cleaned again from its prediction
# with this, and the result with fewer problems kept. On val (v0.8+7506c390aa, 149 models) 3.0 left 2 antibody models
# with a broken or cis CDR-H3 peptide and 5.0 alone one nanobody model; with the retry none is left.
RETRY_BACKBONE_RESTRAINT = 5.0
SIDE_CHAIN_RESTRAINT = 0.1  # per Å², other atoms
# Minimisation stages: (fraction of the geometry and clash weights, L-BFGS iterations at most). Soft terms first
# converge in few iterations; the full weights then only polish.
STAGES = ((0.2, 30), (1.0, 30))
HISTORY = 4  # L-BFGS correction pairs kept (val: 8 gave the same models, 15 % slower)
LINE_SEARCH_TRIES = 10  # step halvings before giving up
INITIAL_STEP = 0.1  # Å, largest atom move of the first (steepest descent) step
TOLERANCE = 1e-4  # stop when an iteration lowers the energy by less than this fraction
# Peptide-bond geometry is held within these of ideal (val split's experimental structures, 1st-99th percentile:
# CA-C-N 114.3-119.6°, C-N-CA 118.7-126.5°, O-C-N 121.2-125.2°, |omega| from 160.7°).
BOND_SLACK = 0.02  # Å, C-N
ANGLE_SLACK = 3.0  # degrees, CA-C-N, C-N-CA, O-C-N
OMEGA_SLACK = 15.0  # degrees

# Bond distance of each atom14 slot from C(i) and N(i+1) across a peptide bond (larger: three or more bonds).
_FROM_C = {N: 2, CA: 1, C: 0, O: 1, CB: 2}
_FROM_N = {N: 0, CA: 1, C: 2, CB: 2}
_FROM_N_PROLINE = {N: 0, CA: 1, C: 2, CB: 2, PROLINE_CD: 1, 5: 2}  # proline's CD is bonded to N, CG (slot 5) to CD
_FAR = 9


@functools.lru_cache(maxsize=None)
def _intra_pairs(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of atom14 slots that keep their distance inside each residue type: ([21, P, 2] long, [21, P] bool).

    A rigid group's atoms plus the two atoms its torsion turns about (group 0: N, CA, C, CB).
    """
    tables = residue_tables("cpu")
    per_type = []
    for restype in range(NUM_RESTYPES):
        exists, group, quad = tables.atom_exists[restype], tables.atom_group[restype], tables.torsion_atoms[restype]
        pairs = set()
        for g in range(NUM_RIGID_GROUPS):
            members = {int(s) for s in torch.nonzero(exists & (group == g)).flatten()}
            if g > 0 and members:
                members |= {int(quad[g - 1, 1]), int(quad[g - 1, 2])}
            pairs |= {(a, b) for a in members for b in members if a < b}
        per_type.append(sorted(pairs))
    width = max(len(p) for p in per_type)
    index = torch.zeros(NUM_RESTYPES, width, 2, dtype=torch.long)
    mask = torch.zeros(NUM_RESTYPES, width, dtype=torch.bool)
    for restype, pairs in enumerate(per_type):
        if pairs:
            index[restype, : len(pairs)] = torch.tensor(pairs)
            mask[restype, : len(pairs)] = True
    return index.to(device), mask.to(device)


@functools.lru_cache(maxsize=None)
def _bonds_across_peptide(device: str) -> torch.Tensor:
    """[21, 14, 14] long by the type of residue i+1: bonds between slot a of residue i and slot b of residue i+1
    through the peptide bond (capped at 2 * _FAR + 1)."""
    table = torch.zeros(NUM_RESTYPES, 14, 14, dtype=torch.long)
    for restype in range(NUM_RESTYPES):
        from_n = _FROM_N_PROLINE if restype == RESTYPE_INDEX["P"] else _FROM_N
        for a in range(14):
            for b in range(14):
                table[restype, a, b] = _FROM_C.get(a, _FAR) + from_n.get(b, _FAR) + 1
    return table.to(device)


def _law_of_cosines(a: torch.Tensor, b: torch.Tensor, angle: torch.Tensor | float) -> torch.Tensor:
    """Third side (Å) of a triangle with sides a, b (Å) meeting at `angle` (radians)."""
    return torch.sqrt(a**2 + b**2 - 2 * a * b * torch.cos(torch.as_tensor(angle, dtype=a.dtype)))


def _end_to_end(l1, l2, l3, angle1, angle2, torsion) -> torch.Tensor:
    """Distance (Å) a-d of a chain a-b-c-d with bond lengths l1, l2, l3 (Å), angles a-b-c, b-c-d and
    dihedral a-b-c-d (radians; 0 = cis). Tensors broadcast."""
    angle1, angle2, torsion = (torch.as_tensor(v, dtype=l1.dtype) for v in (angle1, angle2, torsion))
    a = torch.stack([l1 * torch.cos(angle1), l1 * torch.sin(angle1), torch.zeros_like(l1 * angle1)], -1)
    d = torch.stack([l2 - l3 * torch.cos(angle2), l3 * torch.sin(angle2) * torch.cos(torsion),
                     l3 * torch.sin(angle2) * torch.sin(torsion)], -1)
    return torch.linalg.norm(a - d, dim=-1)


def _distance(x: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Distances (Å) between atoms first[k] and second[k] of flat coordinates x [A, 3] -> [K]."""
    return torch.sqrt(((x[first] - x[second]) ** 2).sum(-1) + 1e-12)


def _angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Angle a-b-c in radians, points [*, 3] -> [*]."""
    u, v = a - b, c - b
    cosine = (u * v).sum(-1) / (torch.linalg.norm(u, dim=-1) * torch.linalg.norm(v, dim=-1)).clamp(min=1e-8)
    return torch.acos(cosine.clamp(-1.0, 1.0))


def peptide_bonded(residue_mask: torch.Tensor, chain_slot: torch.Tensor) -> torch.Tensor:
    """[B, N-1] bool: residues i and i+1 are both present and in the same chain (joined by a peptide bond)."""
    return residue_mask[:, :-1] & residue_mask[:, 1:] & (chain_slot[:, :-1] == chain_slot[:, 1:])


def _geometry_terms(x0: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor,
                    bonded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first [K], second [K], lower [K], upper [K]): atom pairs of the intra-residue and peptide-bond terms and the
    range (Å) each pair's distance is held in.

    x0 [B, N, 14, 3] Å; indices into x0 flattened to [B * N * 14, 3].
    """
    b, n = restype.shape
    base = (torch.arange(b * n, device=x0.device) * 14).view(b, n)
    flat = x0.reshape(-1, 3)

    intra_index, intra_mask = _intra_pairs(str(x0.device))
    pairs = intra_index[restype] + base[..., None, None]  # [B, N, P, 2]
    pairs = pairs[intra_mask[restype] & residue_mask[..., None]]  # [K1, 2]
    intra_target = _distance(flat, pairs[:, 0], pairs[:, 1])

    ca, c, o = x0[:, :-1, CA], x0[:, :-1, C], x0[:, :-1, O]  # residue i
    next_n, next_ca = x0[:, 1:, N], x0[:, 1:, CA]  # residue i+1
    ca_c, c_o = torch.linalg.norm(c - ca, dim=-1), torch.linalg.norm(o - c, dim=-1)
    n_ca = torch.linalg.norm(next_ca - next_n, dim=-1)
    c_n = torch.full_like(ca_c, PEPTIDE_BOND_LENGTH)
    ca_c_n, c_n_ca = math.radians(CA_C_N_ANGLE), math.radians(C_N_CA_ANGLE)
    o_c_n = 2 * math.pi - ca_c_n - _angle(ca, c, o)  # O in the peptide plane
    # Trans, except cis before a proline the prediction already has cis.
    cis = (restype[:, 1:] == RESTYPE_INDEX["P"]) & (dihedral(ca, c, next_n, next_ca).abs() < math.pi / 2)
    omega = torch.where(cis, 0.0, math.pi)
    slack, twist = math.radians(ANGLE_SLACK), torch.where(cis, -1.0, 1.0) * math.radians(OMEGA_SLACK)
    # Proline's CD (bonded to its N) in the peptide plane, on the side away from CA(i+1).
    next_cd = x0[:, 1:, PROLINE_CD]
    n_cd = torch.linalg.norm(next_cd - next_n, dim=-1).clamp(min=1e-3)
    c_n_cd = 2 * math.pi - c_n_ca - _angle(next_ca, next_n, next_cd)
    bounds = [
        (c_n - BOND_SLACK, c_n + BOND_SLACK),
        (_law_of_cosines(ca_c, c_n, ca_c_n - slack), _law_of_cosines(ca_c, c_n, ca_c_n + slack)),
        (_law_of_cosines(c_o, c_n, o_c_n - slack), _law_of_cosines(c_o, c_n, o_c_n + slack)),
        (_law_of_cosines(c_n, n_ca, c_n_ca - slack), _law_of_cosines(c_n, n_ca, c_n_ca + slack)),
        # CA(i)-CA(i+1) grows and O(i)-CA(i+1) shrinks as omega turns to trans (they are 180 degrees apart)
        (_end_to_end(ca_c, c_n, n_ca, ca_c_n, c_n_ca, omega - twist), _end_to_end(ca_c, c_n, n_ca, ca_c_n, c_n_ca, omega)),
        (_end_to_end(c_o, c_n, n_ca, o_c_n, c_n_ca, omega + math.pi),
         _end_to_end(c_o, c_n, n_ca, o_c_n, c_n_ca, omega + math.pi - twist)),
        (_law_of_cosines(c_n, n_cd, c_n_cd - slack), _law_of_cosines(c_n, n_cd, c_n_cd + slack)),
        (_end_to_end(ca_c, c_n, n_cd, ca_c_n, c_n_cd, omega + math.pi),
         _end_to_end(ca_c, c_n, n_cd, ca_c_n, c_n_cd, omega + math.pi - twist)),
        (_end_to_end(c_o, c_n, n_cd, o_c_n, c_n_cd, omega - twist), _end_to_end(c_o, c_n, n_cd, o_c_n, c_n_cd, omega)),
    ]
    proline = restype[:, 1:] == RESTYPE_INDEX["P"]
    used = torch.stack([bonded] * 6 + [bonded & proline] * 3, -1)  # [B, N-1, 9]
    lower = torch.stack([lo for lo, _ in bounds], -1)[used]
    upper = torch.stack([hi for _, hi in bounds], -1)[used]
    slots = torch.tensor([[C, N], [CA, N], [O, N], [C, CA], [CA, CA], [O, CA], [C, PROLINE_CD], [CA, PROLINE_CD],
                          [O, PROLINE_CD]], device=x0.device)
    first = (base[:, :-1, None] + slots[:, 0])[used]
    second = (base[:, 1:, None] + slots[:, 1])[used]
    weight = torch.where(torch.zeros_like(used).index_fill_(-1, torch.tensor([0], device=x0.device), True)[used],
                         GEOMETRY_WEIGHT * PEPTIDE_BOND_FACTOR, GEOMETRY_WEIGHT)
    return (torch.cat([pairs[:, 0], first]), torch.cat([pairs[:, 1], second]),
            torch.cat([intra_target, lower]), torch.cat([intra_target, upper]),
            torch.cat([torch.full_like(intra_target, GEOMETRY_WEIGHT), weight]))


@functools.lru_cache(maxsize=None)
def _chiral_centres(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Chiral centres per residue type: ([21, 2, 4] long atom14 slots (centre, three substituents), [21, 2] bool).

    CA (N, C, CB) of every residue but glycine; CB of isoleucine (CA, CG1, CG2) and threonine (CA, OG1, CG2).
    """
    index = torch.zeros(NUM_RESTYPES, 2, 4, dtype=torch.long)
    mask = torch.zeros(NUM_RESTYPES, 2, dtype=torch.bool)
    for restype in range(NUM_RESTYPES):
        if restype != RESTYPE_INDEX["G"]:
            index[restype, 0], mask[restype, 0] = torch.tensor([CA, N, C, CB]), True
    for letter in "IT":  # ILE: CG1 5, CG2 6; THR: OG1 5, CG2 6
        index[RESTYPE_INDEX[letter], 1], mask[RESTYPE_INDEX[letter], 1] = torch.tensor([CB, CA, 5, 6]), True
    return index.to(device), mask.to(device)


def _signed_volume(x: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """(a - centre) x (b - centre) . (c - centre) in Å³ for quads [K, 4] (centre, a, b, c) of flat x [A, 3] -> [K]."""
    centre, a, b, c = x[quads].unbind(-2)
    return (torch.cross(a - centre, b - centre, dim=-1) * (c - centre)).sum(-1)


def _clash_pairs(x0: torch.Tensor, exists: torch.Tensor, restype: torch.Tensor, chain_slot: torch.Tensor,
                 cutoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first [K], second [K], closest [K] Å): heavy atoms of different residues closer than `cutoff` (Å) in
    x0 [B, N, 14, 3] (flat atom indices) and how close each pair may come: CLASH_DISTANCE, or
    ONE_FOUR_DISTANCE for atoms three bonds apart across a peptide bond. Atoms one or two bonds apart and
    disulfide SG-SG pairs are left out.

    Neighbours are found with a k-d tree per receptor (scipy), on the CPU.
    """
    from scipy.spatial import cKDTree  # imported when first needed: scipy.spatial costs ~0.3 s at start-up

    b, n = restype.shape
    points = x0.detach().cpu().reshape(b, n * 14, 3).numpy()
    present = exists.cpu().reshape(b, n * 14).numpy()
    found = []
    for row in range(b):
        atoms = np.flatnonzero(present[row])
        pairs = cKDTree(points[row, atoms]).query_pairs(cutoff, output_type="ndarray")
        found.append(torch.from_numpy(atoms[pairs] + row * n * 14))
    pairs = torch.cat(found).to(x0.device)  # [K, 2], first < second
    residue, slot = pairs // 14, pairs % 14  # flat residue index (b * N + n) and atom14 slot
    first_residue, second_residue = residue.unbind(-1)
    flat_restype, flat_chain = restype.reshape(-1), chain_slot.reshape(-1)
    sequential = (second_residue == first_residue + 1) & (flat_chain[first_residue] == flat_chain[second_residue])
    sequential &= second_residue % n != 0  # not across receptors
    bonds = _bonds_across_peptide(str(x0.device))[flat_restype[second_residue], slot[:, 0], slot[:, 1]]
    bonds = torch.where(sequential, bonds, 2 * _FAR + 1)
    disulfide = ((flat_restype[first_residue] == RESTYPE_INDEX["C"]) & (flat_restype[second_residue] == RESTYPE_INDEX["C"])
                 & (slot[:, 0] == SG) & (slot[:, 1] == SG))
    keep = (first_residue != second_residue) & (bonds > 2) & ~disulfide
    closest = torch.where(bonds[keep] == 3, min(ONE_FOUR_DISTANCE, CLASH_DISTANCE), CLASH_DISTANCE)
    return pairs[keep, 0], pairs[keep, 1], closest.to(x0.dtype)


@dataclass(frozen=True)
class _Terms:
    """Everything the energy needs. Atoms are [B, M, 3] (each receptor's present atoms, padded); pair indices
    count them flattened, [B * M]."""

    start: torch.Tensor  # [B, M, 3] Å, the input
    restraint: torch.Tensor  # [B, M, 1] per Å², 0 for absent atoms
    first_xyz: torch.Tensor  # [K x 3] coordinates of the first atom of each distance term (see _coordinate_index)
    second_xyz: torch.Tensor  # [K x 3] and of the second
    lower: torch.Tensor  # [K] Å, the distance is held above ...
    upper: torch.Tensor  # [K] Å, ... and below these
    weight: torch.Tensor  # [K] per Å²
    pair_owner: torch.Tensor  # [K] receptor of each pair
    chiral_xyz: torch.Tensor  # [C x 4 x 3] coordinates of each chiral centre and its three substituents
    volume: torch.Tensor  # [C] Å³, their signed volume in the input
    chiral_weight: float  # per Å⁶
    chiral_owner: torch.Tensor  # [C] receptor of each chiral centre


def _coordinate_index(atoms: torch.Tensor) -> torch.Tensor:
    """Flat atom indices [*] -> indices of their x, y, z in the coordinates flattened to one dimension, [* x 3].

    One-dimensional index_select / index_add_ are several times faster than the same on rows of three.
    """
    return (atoms[..., None] * 3 + torch.arange(3, device=atoms.device)).reshape(-1)


def _energy(x: torch.Tensor, terms: _Terms) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy per receptor [B] in weight x Å², its gradient [B, M, 3]) at coordinates x [B, M, 3] (Å)."""
    flat = x.reshape(-1)
    k = terms.lower.shape[0]
    difference = (flat.index_select(0, terms.first_xyz) - flat.index_select(0, terms.second_xyz)).view(k, 3)
    distance = difference.square().sum(-1).add(1e-12).sqrt()
    under, over = torch.relu(terms.lower - distance), torch.relu(distance - terms.upper)
    energy = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    energy.index_add_(0, terms.pair_owner, terms.weight * (under.square() + over.square()))
    pull = ((2 * terms.weight * (over - under) / distance).unsqueeze(-1) * difference).view(-1)
    gradient = torch.zeros_like(flat).index_add_(0, terms.first_xyz, pull).index_add_(0, terms.second_xyz, pull, alpha=-1)

    centre, a, b, c = flat.index_select(0, terms.chiral_xyz).view(-1, 4, 3).unbind(-2)  # [C, 3] each
    u, v, w = a - centre, b - centre, c - centre
    error = (torch.cross(u, v, dim=-1) * w).sum(-1) - terms.volume
    energy.index_add_(0, terms.chiral_owner, terms.chiral_weight * error.square())
    scale = (2 * terms.chiral_weight * error)[:, None, None]
    d_u, d_v, d_w = torch.cross(v, w, dim=-1), torch.cross(w, u, dim=-1), torch.cross(u, v, dim=-1)
    per_atom = torch.stack([-(d_u + d_v + d_w), d_u, d_v, d_w], 1) * scale  # [C, 4, 3]
    gradient.index_add_(0, terms.chiral_xyz, per_atom.view(-1))

    offset = x - terms.start
    energy = energy + (terms.restraint * offset.square()).sum((1, 2))
    return energy, gradient.view_as(x) + 2 * terms.restraint * offset


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-receptor dot product of [B, M, 3] tensors -> [B], summed in float64 so that it rounds to the same float32
    whatever the other receptors of the batch."""
    return (a * b).sum((1, 2), dtype=torch.float64).to(a.dtype)


def _minimise(x: torch.Tensor, terms: _Terms, iterations: int) -> torch.Tensor:
    """L-BFGS from x [B, M, 3] Å -> coordinates [B, M, 3] Å, each receptor on its own (own history, step
    lengths and stopping), so the result does not depend on the other receptors of the batch."""
    energy, gradient = _energy(x, terms)
    active = torch.ones_like(energy, dtype=torch.bool)  # receptors still being minimised
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho [B]); rho 0: no update
    gamma = torch.zeros_like(energy)  # [B] Å² per energy unit, scale of the initial inverse Hessian
    for _ in range(iterations):
        if not active.any():
            break
        direction = -gradient
        alphas = []
        for s, y, rho in reversed(history):
            alpha = rho * _dot(s, direction)
            direction.addcmul_(alpha[:, None, None], y, value=-1)
            alphas.append(alpha)
        first_step = INITIAL_STEP / gradient.abs().amax((1, 2)).clamp(min=1e-12)
        direction.mul_(torch.where(gamma > 0, gamma, first_step)[:, None, None])
        for (s, y, rho), alpha in zip(history, reversed(alphas)):
            direction.addcmul_((alpha - rho * _dot(y, direction))[:, None, None], s)
        slope = _dot(gradient, direction)
        downhill = slope < 0  # otherwise fall back to steepest descent
        direction = torch.where(downhill[:, None, None], direction, -gradient * first_step[:, None, None])
        slope = torch.where(downhill, slope, _dot(gradient, direction))
        direction = direction * active[:, None, None]

        step = torch.ones_like(energy)
        accepted = torch.zeros_like(active)
        new_x, new_energy, new_gradient = x, energy, gradient
        for attempt in range(LINE_SEARCH_TRIES):  # backtracking until each receptor's energy drops enough (Armijo)
            trial = x + step[:, None, None] * direction
            trial_energy, trial_gradient = _energy(trial, terms)
            good = active & ~accepted & (trial_energy <= energy + 1e-4 * step * slope)
            if attempt == 0 and torch.equal(good, active):  # the usual case: every receptor takes the full step
                new_x, new_energy, new_gradient, accepted = trial, trial_energy, trial_gradient, good
                break
            new_x = torch.where(good[:, None, None], trial, new_x)
            new_energy = torch.where(good, trial_energy, new_energy)
            new_gradient = torch.where(good[:, None, None], trial_gradient, new_gradient)
            accepted = accepted | good
            if torch.equal(accepted, active):
                break
            step = torch.where(accepted, step, step / 2)
        moved = accepted
        s, y = new_x - x, new_gradient - gradient
        sy = _dot(s, y)
        valid = moved & (sy > 1e-10)
        history = [*history[-(HISTORY - 1):], (s, y, torch.where(valid, 1 / sy.clamp(min=1e-10), 0.0))]
        gamma = torch.where(valid, sy / _dot(y, y).clamp(min=1e-20), gamma)
        # stop a receptor when no step lowered its energy, or by less than TOLERANCE of it
        active = moved & (energy - new_energy > TOLERANCE * energy)
        x, energy, gradient = new_x, new_energy, new_gradient
    return x


def problem_counts(atom14: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor,
                   chain_slot: torch.Tensor) -> torch.Tensor:
    """[B] long: each structure's broken peptide bonds, non-proline cis peptides, D-amino acids and clashes among
    heavy atoms, by refine.find_problems' limits, straight from atom14 [B, N, 14, 3] Å (no PDB text; the written file's
    3-decimal rounding can move a distance at a limit across it)."""
    exists = residue_tables(atom14.device).atom_exists[restype] & residue_mask[..., None]  # [B, N, 14]
    bonded = peptide_bonded(residue_mask, chain_slot)  # [B, N-1]
    c, next_n = atom14[:, :-1, C], atom14[:, 1:, N]
    bond_off = (torch.linalg.norm(c - next_n, dim=-1) - PEPTIDE_BOND_LENGTH).abs() > PEPTIDE_BOND_TOLERANCE
    omega = dihedral(atom14[:, :-1, CA], c, next_n, atom14[:, 1:, CA])
    cis = (omega.abs() < math.radians(CIS_OMEGA_LIMIT)) & (restype[:, 1:] != RESTYPE_INDEX["P"])
    backbone_n, backbone_ca, backbone_c, cb = (atom14[..., slot, :] for slot in (N, CA, C, CB))  # [B, N, 3] each
    volume = (torch.linalg.cross(backbone_n - backbone_ca, backbone_c - backbone_ca) * (cb - backbone_ca)).sum(-1)
    d_amino = exists[..., CB] & (volume < 0)  # [B, N]: CB on the D side of the N-CA-C plane
    first, second, _ = _clash_pairs(atom14, exists, restype, chain_slot, CLASH_CHECK_DISTANCE)
    flat = atom14.reshape(-1, 3)
    clashing = first[torch.linalg.norm(flat[first] - flat[second], dim=-1) < CLASH_CHECK_DISTANCE]
    clashes = torch.zeros(len(restype), dtype=torch.long, device=atom14.device)
    clashes.index_add_(0, clashing // (restype.shape[1] * 14), torch.ones_like(clashing))
    return (bonded & (bond_off | cis)).sum(-1) + d_amino.sum(-1) + clashes


def clean_geometry(atom14: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor,
                   chain_slot: torch.Tensor, stages: tuple[tuple[float, int], ...] | None = None) -> torch.Tensor:
    """Predicted structures [B, N, 14, 3] (Å, built with ideal residue geometry) -> cleaned [B, N, 14, 3] Å.

    restype, residue_mask, chain_slot [B, N]: residue types, present residues, chain of each residue
    (consecutive present residues of one chain are joined by peptide bonds). Absent atoms stay zero.
    A structure left with a problem (`problem_counts`) is cleaned again with the backbone held harder
    (RETRY_BACKBONE_RESTRAINT) and the result with fewer problems kept. Deterministic on the CPU, each structure
    cleaned as if alone; returns a new tensor.
    """
    cleaned = _cleaned(atom14, restype, residue_mask, chain_slot, stages, BACKBONE_RESTRAINT)
    left = problem_counts(cleaned, restype, residue_mask, chain_slot)
    retry = torch.nonzero(left > 0).flatten()
    if len(retry):
        again = _cleaned(atom14[retry], restype[retry], residue_mask[retry], chain_slot[retry], stages,
                         RETRY_BACKBONE_RESTRAINT)
        fewer = problem_counts(again, restype[retry], residue_mask[retry], chain_slot[retry]) < left[retry]
        cleaned[retry[fewer]] = again[fewer]
    return cleaned


def _cleaned(atom14: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor, chain_slot: torch.Tensor,
             stages: tuple[tuple[float, int], ...] | None, backbone_restraint: float) -> torch.Tensor:
    """`clean_geometry` in one pass, N, CA, C, O and CB held at the prediction with `backbone_restraint` per Å²."""
    exists = residue_tables(atom14.device).atom_exists[restype] & residue_mask[..., None]  # [B, N, 14]
    x0 = atom14.detach().to(torch.float32) * exists[..., None]
    b, n = restype.shape
    # Only present atoms are minimised: each receptor's, first in atom14 order, padded to the largest count M.
    present = exists.reshape(b, n * 14)
    # M is a multiple of 16 so every receptor's row starts equally aligned in memory and its sums round as alone.
    m = -(-int(present.sum(-1).max()) // 16) * 16
    order = torch.argsort((~present).to(torch.uint8), dim=-1, stable=True)
    slots = torch.nn.functional.pad(order, (0, max(0, m - n * 14)))[:, :m]  # [B, M] atom14 index in receptor
    kept = torch.gather(present, 1, slots) & (torch.arange(m, device=x0.device) < n * 14)  # [B, M]
    receptor = torch.arange(b, device=x0.device)[:, None]
    compact = torch.zeros(b * n * 14, dtype=torch.long, device=x0.device)  # atom14 flat index -> compact flat index
    compact[(receptor * n * 14 + slots)[kept]] = (receptor * m + torch.arange(m, device=x0.device))[kept]
    start = torch.gather(x0.reshape(b, n * 14, 3), 1, slots[..., None].expand(b, m, 3))  # [B, M, 3]

    first, second, lower, upper, weight = _geometry_terms(x0, restype, residue_mask, peptide_bonded(residue_mask, chain_slot))
    first, second = compact[first], compact[second]
    chiral_index, chiral_mask = _chiral_centres(str(x0.device))
    base = (torch.arange(restype.numel(), device=x0.device) * 14).view(restype.shape)
    chiral = compact[(chiral_index[restype] + base[..., None, None])[chiral_mask[restype] & residue_mask[..., None]]]
    restraint = torch.full(exists.shape, SIDE_CHAIN_RESTRAINT, device=x0.device)
    restraint[..., : CB + 1] = backbone_restraint
    restraint = torch.gather((restraint * exists).reshape(b, n * 14), 1, slots)[..., None]  # [B, M, 1] per Å²
    volume = _signed_volume(start.reshape(-1, 3), chiral)
    cleaned = start
    for fraction, iterations in stages or STAGES:
        # clash pairs from the current coordinates: atoms may have moved close to new neighbours
        current = x0.reshape(b, n * 14, 3).scatter(1, slots[..., None].expand(b, m, 3), cleaned).view_as(x0)
        clash_first, clash_second, closest = _clash_pairs(current, exists, restype, chain_slot,
                                                          CLASH_DISTANCE + SEARCH_MARGIN)
        clashes = torch.ones_like(closest)
        pair_first = torch.cat([first, compact[clash_first]])
        terms = _Terms(
            start=start,
            restraint=restraint,
            first_xyz=_coordinate_index(pair_first),
            second_xyz=_coordinate_index(torch.cat([second, compact[clash_second]])),
            lower=torch.cat([lower, closest]),
            upper=torch.cat([upper, clashes * math.inf]),
            weight=torch.cat([weight, clashes * CLASH_WEIGHT]) * fraction,
            pair_owner=pair_first // m,
            chiral_xyz=_coordinate_index(chiral),
            volume=volume,
            chiral_weight=GEOMETRY_WEIGHT * fraction,
            chiral_owner=chiral[:, 0] // m,
        )
        cleaned = _minimise(cleaned, terms, iterations)
    result = x0.reshape(b, n * 14, 3).scatter(1, slots[..., None].expand(b, m, 3), cleaned).view_as(x0)
    return (result * exists[..., None]).to(atom14.dtype)
