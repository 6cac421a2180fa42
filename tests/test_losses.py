"""Training losses vanish on the truth and grow with errors."""

import torch

from immunofold.geometry import backbone_frames
from immunofold.train.losses import clash_loss, fape, peptide_bond_loss


def batch_of(nanobody_atoms):
    atom14, mask, restype, _ = nanobody_atoms
    return atom14[None], mask[None], restype[None]


def test_fape_is_zero_on_truth_and_invariant_to_rigid_motion(nanobody_atoms):
    atom14, mask, _ = batch_of(nanobody_atoms)
    frames, frame_mask = backbone_frames(atom14, mask)
    ca, ca_mask = atom14[..., 1, :], mask[..., 1]
    assert fape(frames, frames, frame_mask, ca, ca, ca_mask).item() < 1e-3
    moved = atom14 @ torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]).T + 5.0
    moved_frames, _ = backbone_frames(moved, mask)
    assert fape(moved_frames, frames, frame_mask, moved[..., 1, :], ca, ca_mask).item() < 1e-3
    noisy = atom14 + torch.randn(atom14.shape, generator=torch.Generator().manual_seed(0))
    noisy_frames, _ = backbone_frames(noisy, mask)
    assert fape(noisy_frames, frames, frame_mask, noisy[..., 1, :], ca, ca_mask).item() > 0.05


def test_violation_losses_small_on_a_crystal_structure_and_large_when_broken(nanobody_atoms):
    atom14, mask, restype = batch_of(nanobody_atoms)
    residue_mask = torch.ones(restype.shape, dtype=torch.bool)
    slot = torch.zeros_like(restype)
    assert peptide_bond_loss(atom14, atom14, mask, residue_mask, slot).item() < 0.01
    crystal_clash = clash_loss(atom14, mask, residue_mask, slot, restype).item()
    assert crystal_clash < 0.05
    squashed = atom14.clone()
    squashed[:, 40:50] = squashed[:, 40:50] * 0.9 + squashed[:, 60:70].mean((1, 2), keepdim=True) * 0.1
    squashed[:, 50] = squashed[:, 20]  # a residue on top of another
    assert peptide_bond_loss(squashed, atom14, mask, residue_mask, slot).item() > 0.01
    assert clash_loss(squashed, mask, residue_mask, slot, restype).item() > 0.2 + 10 * crystal_clash
