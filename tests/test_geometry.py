"""Frames, torsions and the torsion -> atoms construction."""

import math

import torch

from immunofold.geometry import (
    Frames,
    atom14_from_frames,
    backbone_frames,
    dihedral,
    kabsch,
    quaternion_to_rotation,
    residue_tables,
    torsion_angles,
)


def random_rotation(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    quat = torch.randn(4, generator=generator)
    return quaternion_to_rotation(quat / quat.norm())


def rebuild(atom14, mask, restype):
    frames, _ = backbone_frames(atom14, mask)
    sin_cos, _, _ = torsion_angles(atom14, mask, restype)
    return atom14_from_frames(frames, sin_cos, restype)


def test_round_trip_reproduces_real_backbone_within_0_1_angstrom(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    rebuilt = rebuild(atom14, mask, restype)
    sq = ((rebuilt - atom14) ** 2).sum(-1)
    backbone = mask[:, :4]
    assert math.sqrt(sq[:, :4][backbone].mean()) < 0.1  # N, CA, C, O
    assert math.sqrt(sq[mask].mean()) < 0.3  # all heavy atoms (ideal bond geometry)
    assert sq[:, 1][mask[:, 1]].max() < 1e-8  # CA is the frame origin


def test_constructed_atoms_carry_the_requested_torsions(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    frames, _ = backbone_frames(atom14, mask)
    angles = torch.rand(len(restype), 5, generator=torch.Generator().manual_seed(0)) * 2 * math.pi - math.pi
    sin_cos = torch.stack([angles.sin(), angles.cos()], dim=-1)
    built = atom14_from_frames(frames, sin_cos, restype)
    exists = residue_tables().atom_exists[restype]
    measured, torsion_mask, _ = torsion_angles(built, exists, restype)
    assert torsion_mask.any()
    assert torch.allclose(measured[torsion_mask], sin_cos[torsion_mask], atol=1e-4)


def test_construction_is_equivariant_to_rigid_motion(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    rot, shift = random_rotation(1), torch.tensor([3.0, -7.0, 11.0])
    moved = atom14 @ rot.T + shift
    expected = rebuild(atom14, mask, restype) @ rot.T + shift
    assert torch.allclose(rebuild(moved, mask, restype)[mask], expected[mask], atol=1e-3)


def test_dihedral_sign_follows_iupac():
    a, b, c = torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 0, 0]), torch.tensor([0.0, 1, 0])
    d_plus = torch.tensor([0.0, 1, -1.0])  # clockwise seen along b->c
    assert torch.isclose(dihedral(a, b, c, d_plus), torch.tensor(math.pi / 2), atol=1e-5)
    assert torch.isclose(dihedral(a, b, c, torch.tensor([1.0, 1, 0])), torch.tensor(0.0), atol=1e-5)


def test_kabsch_recovers_a_known_transform():
    points = torch.randn(30, 3, generator=torch.Generator().manual_seed(2))
    rot, shift = random_rotation(3), torch.tensor([1.0, 2.0, 3.0])
    frame = kabsch(points, points @ rot.T + shift, torch.ones(30))
    assert torch.allclose(frame.rot, rot, atol=1e-4)
    assert torch.allclose(frame.apply(points), points @ rot.T + shift, atol=1e-4)


def test_frames_compose_and_invert():
    f = Frames(random_rotation(4), torch.tensor([1.0, 0.0, -2.0]))
    g = Frames(random_rotation(5), torch.tensor([0.5, 3.0, 1.0]))
    x = torch.randn(7, 3)
    assert torch.allclose(f.compose(g).apply(x), f.apply(g.apply(x)), atol=1e-5)
    assert torch.allclose(f.invert_apply(f.apply(x)), x, atol=1e-5)
