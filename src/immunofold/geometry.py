"""Rigid frames, torsion angles and the torsion -> all-heavy-atom construction.

A frame is a rotation `rot` [*, 3, 3] and a translation `trans` [*, 3] (Å) mapping local to
global coordinates: x_global = rot @ x_local + trans. A residue's backbone frame has its origin
at CA, x axis from N to CA and C in the xy plane (AlphaFold's convention).

Torsion slots per residue: 0 = N-CA-C-O, 1..4 = chi1..chi4. Each rigid group's atoms are placed
in a frame built from three already-placed atoms (a, b, c) of its torsion a-b-c-d (origin c,
x axis b -> c, a in the xy plane) and rotated by the torsion angle about x. Ideal local
coordinates are the mean over our training structures (ideal_geometry.json), not hand-typed.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, fields

import torch

from immunofold.constants import (
    ATOM14_NAMES,
    CHI_ATOMS,
    NUM_RESTYPES,
    NUM_RIGID_GROUPS,
    NUM_TORSIONS,
    ONE_TO_THREE,
    RESTYPES,
    SYMMETRIC_ATOM_SWAPS,
    rigid_group_of_atom,
)

EPS = 1e-8


@dataclass
class Frames:
    """Batch of rigid transforms: rot [*, 3, 3], trans [*, 3] (Å)."""

    rot: torch.Tensor
    trans: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Local -> global. points [*, 3] broadcastable against the frame batch."""
        return torch.einsum("...ij,...j->...i", self.rot, points) + self.trans

    def invert_apply(self, points: torch.Tensor) -> torch.Tensor:
        """Global -> local. points [*, 3]."""
        return torch.einsum("...ji,...j->...i", self.rot, points - self.trans)

    def compose(self, other: "Frames") -> "Frames":
        """self ∘ other (apply other first)."""
        return Frames(self.rot @ other.rot, self.apply(other.trans))

    def unsqueeze(self, dim: int) -> "Frames":
        """Insert a batch dimension (dim counts batch dimensions only)."""
        if dim < 0:
            return Frames(self.rot.unsqueeze(dim - 2), self.trans.unsqueeze(dim - 1))
        return Frames(self.rot.unsqueeze(dim), self.trans.unsqueeze(dim))

    def detach_rot(self) -> "Frames":
        return Frames(self.rot.detach(), self.trans)

    @staticmethod
    def from_3_points(p_neg_x: torch.Tensor, origin: torch.Tensor, p_xy: torch.Tensor) -> "Frames":
        """Gram-Schmidt frame: origin, x axis from p_neg_x to origin, p_xy in the xy plane. [*, 3] each."""
        e0 = origin - p_neg_x
        e0 = e0 / torch.sqrt((e0**2).sum(-1, keepdim=True) + EPS)
        v1 = p_xy - origin
        e1 = v1 - (v1 * e0).sum(-1, keepdim=True) * e0
        e1 = e1 / torch.sqrt((e1**2).sum(-1, keepdim=True) + EPS)
        e2 = torch.cross(e0, e1, dim=-1)
        return Frames(torch.stack([e0, e1, e2], dim=-1), origin)


def quaternion_to_rotation(quat: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [*, 4] -> rotation matrices [*, 3, 3]."""
    w, x, y, z = quat.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def rotation_about_x(sin_cos: torch.Tensor) -> torch.Tensor:
    """Rotation matrices about the x axis from (sin, cos) [*, 2] -> [*, 3, 3]."""
    s, c = sin_cos.unbind(-1)
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    return torch.stack([one, zero, zero, zero, c, -s, zero, s, c], dim=-1).unflatten(-1, (3, 3))


def dihedral(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """IUPAC dihedral angle a-b-c-d in radians, (-pi, pi]. Inputs [*, 3]."""
    b0, b1, b2 = b - a, c - b, d - c
    n1 = torch.cross(b0, b1, dim=-1)
    n2 = torch.cross(b1, b2, dim=-1)
    b1_norm = torch.sqrt((b1**2).sum(-1) + EPS)
    y = b1_norm * (b0 * n2).sum(-1)
    x = (n1 * n2).sum(-1)
    return torch.atan2(y, x)


# --- residue tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResidueTables:
    """Per-residue-type lookup tables, indexed by restype (0..20)."""

    atom_exists: torch.Tensor  # [21, 14] bool
    atom_group: torch.Tensor  # [21, 14] long, rigid group of each atom
    local_coords: torch.Tensor  # [21, 14, 3] Å, in the group frame at torsion 0
    torsion_atoms: torch.Tensor  # [21, 5, 4] long, atom14 indices of a, b, c, d
    torsion_exists: torch.Tensor  # [21, 5] bool
    torsion_pi_periodic: torch.Tensor  # [21, 5] bool, symmetric last chi
    swap_perm: torch.Tensor  # [21, 14] long, atom14 permutation of the symmetric alternative


IDEAL_GEOMETRY_FILE = os.path.join(os.path.dirname(__file__), "ideal_geometry.json")


def _torsion_atom_names(resname: str) -> list[tuple[str, str, str, str]]:
    return [("N", "CA", "C", "O"), *CHI_ATOMS[resname]]


def _index_tables():
    """Atom existence, rigid group and torsion-atom index tables (no coordinates)."""
    atom_exists = torch.zeros(NUM_RESTYPES, 14, dtype=torch.bool)
    atom_group = torch.zeros(NUM_RESTYPES, 14, dtype=torch.long)
    torsion_atoms = torch.zeros(NUM_RESTYPES, NUM_TORSIONS, 4, dtype=torch.long)
    torsion_exists = torch.zeros(NUM_RESTYPES, NUM_TORSIONS, dtype=torch.bool)
    pi_periodic = torch.zeros(NUM_RESTYPES, NUM_TORSIONS, dtype=torch.bool)
    swap_perm = torch.arange(14).repeat(NUM_RESTYPES, 1)
    for restype, aa in enumerate(RESTYPES):
        resname = ONE_TO_THREE[aa]
        names = ATOM14_NAMES[resname]
        index = {n: i for i, n in enumerate(names)}
        torsions = _torsion_atom_names(resname)
        for t, quad in enumerate(torsions):
            torsion_atoms[restype, t] = torch.tensor([index[n] for n in quad])
            torsion_exists[restype, t] = True
        for i, name in enumerate(names):
            atom_exists[restype, i] = True
            atom_group[restype, i] = rigid_group_of_atom(resname, name)
        for first, second in SYMMETRIC_ATOM_SWAPS.get(resname, ()):
            i, j = index[first], index[second]
            swap_perm[restype, i], swap_perm[restype, j] = j, i
            pi_periodic[restype, len(torsions) - 1] = True
    return atom_exists, atom_group, torsion_atoms, torsion_exists, pi_periodic, swap_perm


def local_coordinates(atom14: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    """Each atom's coordinates [*, N, 14, 3] in its rigid group's frame at torsion 0 (inverse of `atom14_from_frames`)."""
    _, atom_group, torsion_atoms, *_ = _index_tables()
    group = atom_group[restype]
    quad = torsion_atoms[restype]
    backbone = Frames.from_3_points(atom14[..., 0, :], atom14[..., 1, :], atom14[..., 2, :])
    local = backbone.unsqueeze(-1).invert_apply(atom14)
    for g in range(1, NUM_RIGID_GROUPS):
        idx = quad[..., g - 1, :]
        a, b, c, d = torch.gather(atom14, -2, idx.unsqueeze(-1).expand(*idx.shape, 3)).unbind(-2)
        angle = dihedral(a, b, c, d)
        undo = rotation_about_x(torch.stack([torch.sin(-angle), torch.cos(-angle)], dim=-1))
        in_group = Frames.from_3_points(b, c, a).unsqueeze(-1).invert_apply(atom14)
        in_group = torch.einsum("...ij,...aj->...ai", undo, in_group)
        local = torch.where((group == g).unsqueeze(-1), in_group, local)
    return local


def residue_tables(device: torch.device | str = "cpu") -> ResidueTables:
    """Lookup tables on `device`, built once per device: index tables from the atom14 layout, ideal
    coordinates from `ideal_geometry.json` (mean local coordinates over our training structures, see
    scripts/derive_ideal_geometry.py)."""
    return _residue_tables_on(str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _residue_tables_on(device: str) -> ResidueTables:
    if device != "cpu":
        cpu = _residue_tables_on("cpu")
        return ResidueTables(*(getattr(cpu, f.name).to(device) for f in fields(cpu)))
    atom_exists, atom_group, torsion_atoms, torsion_exists, pi_periodic, swap_perm = _index_tables()
    with open(IDEAL_GEOMETRY_FILE) as handle:
        ideal = json.load(handle)
    local_coords = torch.zeros(NUM_RESTYPES, 14, 3)
    for restype, aa in enumerate(RESTYPES):
        resname = ONE_TO_THREE[aa]
        for i, name in enumerate(ATOM14_NAMES[resname]):
            local_coords[restype, i] = torch.tensor(ideal[resname][name])
    # Unknown residues (X) are built as alanine.
    ala = RESTYPES.index("A")
    for table in (atom_exists, atom_group, local_coords, torsion_atoms, torsion_exists):
        table[NUM_RESTYPES - 1] = table[ala]
    return ResidueTables(atom_exists, atom_group, local_coords, torsion_atoms, torsion_exists, pi_periodic, swap_perm)


# --- structure <-> frames and torsions --------------------------------------------------------


def backbone_frames(atom14: torch.Tensor, atom_mask: torch.Tensor) -> tuple[Frames, torch.Tensor]:
    """Backbone frames from N, CA, C of atom14 coordinates [*, N, 14, 3]; mask [*, N]."""
    frames = Frames.from_3_points(atom14[..., 0, :], atom14[..., 1, :], atom14[..., 2, :])
    return frames, atom_mask[..., :3].all(-1)


def torsion_angles(atom14: torch.Tensor, atom_mask: torch.Tensor, restype: torch.Tensor):
    """Torsions of a structure: (sin, cos) [*, N, 5, 2], mask [*, N, 5], alternative (sin, cos) for symmetric chis."""
    tables = residue_tables(restype.device)
    quad = tables.torsion_atoms[restype]  # [*, N, 5, 4]
    gathered = torch.gather(
        atom14.unsqueeze(-3).expand(*quad.shape[:-1], 14, 3),
        -2,
        quad.unsqueeze(-1).expand(*quad.shape, 3),
    )  # [*, N, 5, 4, 3]
    angle = dihedral(*gathered.unbind(-2))
    present = torch.gather(atom_mask.unsqueeze(-2).expand(*quad.shape[:-1], 14), -1, quad).all(-1)
    mask = present & tables.torsion_exists[restype]
    sin_cos = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)
    flip = torch.where(tables.torsion_pi_periodic[restype], -1.0, 1.0).unsqueeze(-1)
    return sin_cos, mask, sin_cos * flip


def atom14_from_frames(frames: Frames, torsion_sin_cos: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    """All heavy atoms [*, N, 14, 3] from backbone frames [*, N], torsions (sin, cos) [*, N, 5, 2], restype [*, N].

    Rigid groups are placed in order (backbone, O, chi1..chi4); each group's frame comes from
    three atoms already placed, so the construction is exact for any torsion values.
    """
    tables = residue_tables(restype.device)
    local = tables.local_coords[restype]  # [*, N, 14, 3]
    group = tables.atom_group[restype]  # [*, N, 14]
    quad = tables.torsion_atoms[restype]  # [*, N, 5, 4]
    sin_cos = torsion_sin_cos / torch.sqrt((torsion_sin_cos**2).sum(-1, keepdim=True) + EPS)

    positions = frames.unsqueeze(-1).apply(local)  # group 0 is correct; others refined below
    for g in range(1, NUM_RIGID_GROUPS):
        idx = quad[..., g - 1, :3]  # [*, N, 3]
        abc = torch.gather(positions, -2, idx.unsqueeze(-1).expand(*idx.shape, 3))
        a, b, c = abc.unbind(-2)
        frame = Frames.from_3_points(b, c, a)
        rotated = Frames(frame.rot @ rotation_about_x(sin_cos[..., g - 1, :]), frame.trans)
        placed = rotated.unsqueeze(-1).apply(local)
        positions = torch.where((group == g).unsqueeze(-1), placed, positions)
    return positions * tables.atom_exists[restype].unsqueeze(-1)


def kabsch(mobile: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> Frames:
    """Rigid transform that best superposes mobile onto target (weighted least squares).

    mobile, target [*, M, 3] Å; weights [*, M] (0 excludes a point). Apply the result to mobile points.
    """
    w = weights.unsqueeze(-1).to(mobile.dtype)
    total = w.sum(-2, keepdim=True).clamp(min=1e-8)
    mobile_center = (mobile * w).sum(-2, keepdim=True) / total
    target_center = (target * w).sum(-2, keepdim=True) / total
    covariance = ((mobile - mobile_center) * w).transpose(-1, -2) @ (target - target_center)  # [*, 3, 3]
    u, _, vh = torch.linalg.svd(covariance)
    sign = torch.sign(torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2)))
    correction = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], dim=-1))
    rot = vh.transpose(-1, -2) @ correction @ u.transpose(-1, -2)
    trans = target_center.squeeze(-2) - torch.einsum("...ij,...j->...i", rot, mobile_center.squeeze(-2))
    return Frames(rot, trans)
