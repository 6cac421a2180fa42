"""Training losses vanish on the truth and grow with errors."""

import pytest
import torch

from immunofold.constants import RESTYPE_INDEX
from immunofold.geometry import backbone_frames
from immunofold.train.losses import clash_loss, disulfide_loss, fape, peptide_bond_loss


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


def test_disulfide_loss_is_the_sg_distance_error_of_bonded_cysteines_only(nanobody_atoms):
    """Zero on the truth; moving one SG of the 7F5G disulfide by 3 Å along the bond costs 3 Å (/ FAPE_SCALE = 10),
    moving an SG-free atom or a cysteine's CB costs nothing."""
    atom14, mask, restype = batch_of(nanobody_atoms)
    cysteines = (restype[0] == RESTYPE_INDEX["C"]).nonzero().flatten()
    first, second = cysteines[:2]
    assert (atom14[0, first, 5] - atom14[0, second, 5]).norm() < 2.5  # the canonical IMGT 23-104 disulfide
    assert disulfide_loss(atom14, atom14, mask, restype).item() < 1e-3
    moved = atom14.clone()
    bond = atom14[0, second, 5] - atom14[0, first, 5]
    moved[0, second, 5] += 3.0 * bond / bond.norm()
    assert disulfide_loss(moved, atom14, mask, restype).item() == pytest.approx(0.3, abs=1e-3)
    elsewhere = atom14.clone()
    elsewhere[0, first, 4] += 3.0
    elsewhere[0, 10, 1] += 3.0
    assert disulfide_loss(elsewhere, atom14, mask, restype).item() < 1e-3


def test_cdr3_weight_scales_only_the_cdr3_share_of_fape(nanobody_atoms):
    from immunofold.sequences import number_chain
    from immunofold.train.losses import cdr3_point_weight

    atom14, mask, _ = batch_of(nanobody_atoms)
    positions = torch.tensor([number for number, _ in number_chain(nanobody_atoms[3], "7f5g").positions])[None]
    assert positions.shape[1] == atom14.shape[1]
    weight = cdr3_point_weight(positions, 3.0)
    in_cdr3 = (positions >= 105) & (positions <= 117)
    assert torch.equal(weight[in_cdr3], torch.full((int(in_cdr3.sum()),), 3.0)) and (weight[~in_cdr3] == 1).all()

    frames, frame_mask = backbone_frames(atom14, mask)
    ca, ca_mask = atom14[..., 1, :], mask[..., 1]
    moved_loop = ca.clone()
    moved_loop[in_cdr3] += 3.0  # only CDR3 CAs are wrong
    plain = fape(frames, frames, frame_mask, moved_loop, ca, ca_mask).item()
    weighted = fape(frames, frames, frame_mask, moved_loop, ca, ca_mask * weight).item()
    share = in_cdr3.float().mean().item()
    assert weighted == pytest.approx(plain * 3 / (1 + 2 * share), rel=2e-3)  # weighted mean: 3x the CDR3 share (others ~1e-3 Å)


def test_model_and_losses_create_no_tensor_off_the_input_device(nanobody_atoms):
    """Forward and loss on the 'meta' device fail at the first tensor made on the CPU (a GPU would, too)."""
    from immunofold.data.features import collate
    from immunofold.model.network import ImmunoFoldNet, ModelConfig
    from immunofold.sequences import number_chain
    from immunofold.data.features import featurise
    from immunofold.train.config import DEFAULT_LOSS_WEIGHTS
    from immunofold.train.losses import total_loss

    atom14, mask, _, sequence = nanobody_atoms
    example = featurise("nanobody", [number_chain(sequence, "7f5g")])
    example.update(atom14=atom14, atom_mask=mask)
    batch = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in collate([example, example]).items()}
    config = ModelConfig(dim=32, trunk_layers=1, ipa_blocks=2, ipa_heads=4, trunk_heads=4, dropout=0.1, restype_dropout=0.2,
                         distogram_bins=16)
    model = ImmunoFoldNet(config).to("meta")  # training mode: the dropouts draw random numbers too
    loss, terms = total_loss(model(batch), batch, DEFAULT_LOSS_WEIGHTS, 8.0, cdr3_weight=2.0)
    assert loss.device.type == "meta" and all(t.device.type == "meta" for t in terms.values())
    assert "distogram" in terms


def test_cdr_rmsd_after_superposition_matches_the_evaluation_metric_and_ignores_rigid_motion(nanobody_atoms):
    from immunofold.metrics import region_rmsds, superpose_chains
    from immunofold.sequences import number_chain
    from immunofold.train.losses import CDR_RMSD_WEIGHTS, FAPE_SCALE, cdr_rmsd

    atom14, mask, _ = batch_of(nanobody_atoms)
    positions = torch.tensor([number for number, _ in number_chain(nanobody_atoms[3], "7f5g").positions])[None]
    slot = torch.zeros_like(positions)

    def loss(pred):
        return cdr_rmsd(superpose_chains(pred, atom14, mask, slot, positions), atom14, mask, slot, positions)

    assert loss(atom14).item() < 1e-3
    rotation = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    assert loss(atom14 @ rotation.T + 7.0).item() < 1e-3

    wrong = atom14.clone()
    in_cdr3 = (positions >= 105) & (positions <= 117)
    wrong[in_cdr3] += torch.tensor([2.0, -1.0, 0.5])  # CDR3 shifted; CDR1/2 exact
    wrong = wrong @ rotation.T  # and the whole chain turned
    rmsds = region_rmsds("nanobody", wrong[0], atom14[0], mask[0], slot[0], positions[0])
    expected = sum(CDR_RMSD_WEIGHTS[c] * rmsds[f"H{c}"] for c in (1, 2, 3)) / sum(CDR_RMSD_WEIGHTS.values())
    assert loss(wrong).item() * FAPE_SCALE == pytest.approx(expected, abs=2e-3)

    wrong.requires_grad_(True)
    loss(wrong).sum().backward()  # one chain of two slots: the empty slot must not poison the gradient
    assert torch.isfinite(wrong.grad).all() and wrong.grad[in_cdr3].abs().sum() > 0


def test_distogram_loss_is_low_on_the_true_bins_and_counts_only_present_residues(nanobody_atoms):
    from immunofold.model.layers import distogram_bin_edges
    from immunofold.train.losses import distogram_loss

    atom14, mask, restype = batch_of(nanobody_atoms)
    residue_mask = torch.ones(restype.shape, dtype=torch.bool)
    bins = 16
    beta = torch.where(mask[..., 4:5], atom14[..., 4, :], atom14[..., 1, :])
    true_bins = torch.bucketize(torch.cdist(beta, beta), distogram_bin_edges(bins))  # [1, N, N]
    confident = 20.0 * torch.nn.functional.one_hot(true_bins, bins).float()
    every = torch.arange(restype.shape[1])
    assert distogram_loss(confident, every, atom14, mask, residue_mask).item() < 1e-3
    uniform = torch.zeros_like(confident)
    assert distogram_loss(uniform, every, atom14, mask, residue_mask).item() == pytest.approx(torch.log(torch.tensor(16.0)).item(), rel=1e-5)
    shifted = 20.0 * torch.nn.functional.one_hot((true_bins + 3).clamp(max=bins - 1), bins).float()
    assert distogram_loss(shifted, every, atom14, mask, residue_mask).item() > 10.0
    # Wrong logits on residues that are padding (or have no CA/CB) do not count.
    padded = confident.clone()
    padded[:, :5] = shifted[:, :5]
    padded[:, :, :5] = shifted[:, :, :5]
    assert distogram_loss(padded, every, atom14, mask, residue_mask & (every >= 5)).item() < 1e-3
    # A sample of rows is scored against those rows of the truth.
    rows = torch.tensor([7, 30, 61])
    assert distogram_loss(confident[:, rows], rows, atom14, mask, residue_mask).item() < 1e-3
    assert distogram_loss(confident[:, rows + 1], rows, atom14, mask, residue_mask).item() > 1.0
