"""AlphaFold-style training losses: FAPE, torsion angles, structural violations, error head.

Shapes: B examples, N residues (padded; `residue_mask` [B, N]), atom14 [B, N, 14, 3] in Å.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from immunofold.constants import PEPTIDE_BOND_LENGTH, RESTYPE_INDEX, is_cdr, is_framework
from immunofold.geometry import Frames, backbone_frames, residue_tables, torsion_angles
from immunofold.metrics import METRIC_ATOMS, ca_distance, superpose_chains
from immunofold.model.layers import distogram_bin_edges

FAPE_CLAMP = 10.0  # Å
FAPE_SCALE = 10.0  # Å
# Å; the training penalty starts where non-bonded heavy atoms of different residues come closer than this minus
# CLASH_TOLERANCE (2.6 Å): a soft margin, stricter than refinement's acceptance check (refine.CLASH_CHECK_DISTANCE).
CLASH_PENALTY_DISTANCE = 3.0
CLASH_TOLERANCE = 0.4  # Å
BOND_TOLERANCE = 0.05  # Å
CLASH_NEIGHBOURS = 16  # residues per residue considered for clashes
ALL_ATOM_FAPE_FRAMES = 48  # frames sampled per batch for the all-atom FAPE (its cost is frames x atoms)
CDR_RMSD_WEIGHTS = {1: 1.0, 2: 1.0, 3: 2.0}  # weight of each CDR in the superposed CDR RMSD loss
DISULFIDE_MAX_DISTANCE = 2.5  # Å; two cysteine SG atoms closer than this in the truth form a disulfide


def fape(pred_frames: Frames, true_frames: Frames, frame_mask, pred_points, true_points, point_weight) -> torch.Tensor:
    """Frame-aligned point error (Å / FAPE_SCALE), weighted mean over (frame, point) pairs, per example [B].

    frames [B, N]; points [B, M, 3]; frame_mask [B, N] bool; point_weight [B, M] (bool mask or float weights).
    """
    # (p - t) @ R is R^T (p - t) for row vectors; one batched matmul per frame, [B, N, M, 3].
    pred_local = torch.matmul(pred_points[:, None] - pred_frames.trans[:, :, None], pred_frames.rot)
    true_local = torch.matmul(true_points[:, None] - true_frames.trans[:, :, None], true_frames.rot)
    error = torch.sqrt(((pred_local - true_local) ** 2).sum(-1) + 1e-6).clamp(max=FAPE_CLAMP)
    pair_weight = frame_mask[:, :, None] * point_weight[:, None, :].to(error.dtype)
    return (error * pair_weight).sum((1, 2)) / pair_weight.sum((1, 2)).clamp(min=1) / FAPE_SCALE


def rename_symmetric_atoms(pred_atom14, true_atom14, true_mask, restype, pred_frames: Frames, true_frames: Frames):
    """Per residue, the naming of symmetric side-chain atoms (e.g. OD1/OD2) closer to the prediction."""
    swap = residue_tables(restype.device).swap_perm[restype]  # [B, N, 14]
    alt_atom14 = torch.gather(true_atom14, 2, swap.unsqueeze(-1).expand_as(true_atom14))
    alt_mask = torch.gather(true_mask, 2, swap)
    pred_local = pred_frames.unsqueeze(-1).invert_apply(pred_atom14)
    dev = lambda atoms, mask: (((pred_local - true_frames.unsqueeze(-1).invert_apply(atoms)) ** 2).sum(-1) * mask).sum(-1)  # noqa: E731
    use_alt = (dev(alt_atom14, alt_mask) < dev(true_atom14, true_mask))[..., None]
    return torch.where(use_alt[..., None], alt_atom14, true_atom14), torch.where(use_alt, alt_mask, true_mask)


def torsion_loss(pred_torsions, true_sin_cos, alt_sin_cos, torsion_mask) -> torch.Tensor:
    """Squared chord distance of normalised (sin, cos) to the truth (or its symmetric alternative), per example [B]."""
    norm = torch.sqrt((pred_torsions**2).sum(-1, keepdim=True) + 1e-8)
    unit = pred_torsions / norm
    error = torch.minimum(((unit - true_sin_cos) ** 2).sum(-1), ((unit - alt_sin_cos) ** 2).sum(-1))
    norm_penalty = (norm.squeeze(-1) - 1).abs()
    per_torsion = error + 0.02 * norm_penalty
    return (per_torsion * torsion_mask).sum((1, 2)) / torsion_mask.sum((1, 2)).clamp(min=1)


def peptide_bond_loss(pred_atom14, true_atom14, true_mask, residue_mask, chain_slot) -> torch.Tensor:
    """Penalty on C(i)-N(i+1) lengths outside PEPTIDE_BOND_LENGTH ± BOND_TOLERANCE where the truth is bonded, per example [B]."""
    pred_bond = torch.linalg.norm(pred_atom14[:, :-1, 2] - pred_atom14[:, 1:, 0], dim=-1)
    true_bond = torch.linalg.norm(true_atom14[:, :-1, 2] - true_atom14[:, 1:, 0], dim=-1)
    bonded = (
        residue_mask[:, :-1] & residue_mask[:, 1:] & (chain_slot[:, :-1] == chain_slot[:, 1:])
        & true_mask[:, :-1, 2] & true_mask[:, 1:, 0] & (true_bond < 2.0)
    )
    penalty = F.relu((pred_bond - PEPTIDE_BOND_LENGTH).abs() - BOND_TOLERANCE)
    return (penalty * bonded).sum(-1) / bonded.sum(-1).clamp(min=1)


def disulfide_loss(pred_atom14, true_atom14, true_mask, restype) -> torch.Tensor:
    """Mean |predicted - true| SG-SG distance (Å / FAPE_SCALE) over the truth's disulfides, per example [B].

    A direct pair signal: a loop held by a disulfide to another loop (common in nanobodies) is placed
    by its partner, which FAPE over single atoms rewards only weakly.
    """
    has_sg = (restype == RESTYPE_INDEX["C"]) & true_mask[..., 5]  # [B, N]
    pred_sg, true_sg = pred_atom14[..., 5, :], true_atom14[..., 5, :]  # [B, N, 3]
    pred_distance = torch.sqrt(((pred_sg[:, :, None] - pred_sg[:, None]) ** 2).sum(-1) + 1e-6)  # [B, N, N]
    true_distance = torch.sqrt(((true_sg[:, :, None] - true_sg[:, None]) ** 2).sum(-1) + 1e-6)
    n = restype.shape[-1]
    bonded = has_sg[:, :, None] & has_sg[:, None, :] & (true_distance < DISULFIDE_MAX_DISTANCE)
    bonded = bonded & ~torch.eye(n, dtype=torch.bool, device=restype.device)
    error = (pred_distance - true_distance).abs() * bonded
    return error.sum((1, 2)) / bonded.sum((1, 2)).clamp(min=1) / FAPE_SCALE


def clash_loss(pred_atom14, atom_exists, residue_mask, chain_slot, restype) -> torch.Tensor:
    """Penalty on heavy atoms of different, non-adjacent-bonded residues closer than CLASH_PENALTY_DISTANCE - tolerance, per example [B].

    Only the CLASH_NEIGHBOURS nearest residues (by CA) of each residue are checked, which keeps the cost O(N).
    """
    b, n = residue_mask.shape
    ca = pred_atom14[:, :, 1].detach()
    ca_dist = torch.cdist(ca, ca) + (~residue_mask[:, None, :]) * 1e4 + torch.eye(n, device=ca.device) * 1e4
    k = min(CLASH_NEIGHBOURS, n - 1)
    neighbours = ca_dist.topk(k, dim=-1, largest=False).indices  # [B, N, K]
    other = torch.gather(pred_atom14.unsqueeze(1).expand(b, n, n, 14, 3), 2,
                         neighbours[..., None, None].expand(b, n, k, 14, 3))  # [B, N, K, 14, 3]
    other_exists = torch.gather(atom_exists.unsqueeze(1).expand(b, n, n, 14), 2, neighbours[..., None].expand(b, n, k, 14))
    dist = torch.sqrt(((pred_atom14[:, :, None, :, None] - other[:, :, :, None]) ** 2).sum(-1) + 1e-8)  # [B, N, K, 14, 14]
    valid = atom_exists[:, :, None, :, None] & other_exists[:, :, :, None, :] & residue_mask[..., None, None, None]
    # Exclude the peptide bond C(i)-N(i+1) and its immediate neighbours, and disulfide SG-SG.
    index = torch.arange(n, device=neighbours.device)[None, :, None]
    sequential = (neighbours - index).abs() == 1
    same_chain = torch.gather(chain_slot.unsqueeze(1).expand(b, n, n), 2, neighbours) == chain_slot[..., None]
    valid = valid & ~(sequential & same_chain)[..., None, None]
    # Disulfide SG-SG pairs (atom14 slot 5 of CYS) are bonded at ~2.05 Å.
    is_sg = torch.zeros_like(atom_exists)
    is_sg[..., 5] = restype == RESTYPE_INDEX["C"]
    other_sg = torch.gather(is_sg.unsqueeze(1).expand(b, n, n, 14), 2, neighbours[..., None].expand(b, n, k, 14))
    valid = valid & ~(is_sg[:, :, None, :, None] & other_sg[:, :, :, None, :])
    penalty = F.relu(CLASH_PENALTY_DISTANCE - CLASH_TOLERANCE - dist) * valid
    return penalty.sum((1, 2, 3, 4)) / residue_mask.sum(-1).clamp(min=1) / 2


def cdr_rmsd(moved_atom14, true_atom14, true_mask, chain_slot, imgt_position) -> torch.Tensor:
    """Weighted mean CDR RMSD (Å / FAPE_SCALE) per example [B], as evaluated: N, CA, C, CB of a prediction
    already superposed chain by chain on its framework (metrics.superpose_chains), one RMSD per CDR
    (CDR_RMSD_WEIGHTS). true_mask [B, N, 14] must be false on padding.

    FAPE is clamped and L1-like, so for a loop it cannot place it rewards committing to one conformation;
    this RMSD term rewards the prediction closest on average, which is what the evaluation measures.
    """
    sq = ((moved_atom14[..., METRIC_ATOMS, :] - true_atom14[..., METRIC_ATOMS, :]) ** 2).sum(-1)  # [B, N, 4]
    present = true_mask[..., METRIC_ATOMS]
    total = sq.new_zeros(sq.shape[0])
    weight_sum = sq.new_zeros(sq.shape[0])
    for slot in (0, 1):
        in_chain = chain_slot == slot
        framework_atoms = (present & (in_chain & is_framework(imgt_position))[..., None]).sum((1, 2))
        for cdr, weight in CDR_RMSD_WEIGHTS.items():
            selected = present & (in_chain & is_cdr(imgt_position, cdr))[..., None]
            count = selected.sum((1, 2))
            rmsd = torch.sqrt((sq * selected).sum((1, 2)) / count.clamp(min=1) + 1e-6)
            used = (count > 0) & (framework_atoms >= 3)
            total = total + torch.where(used, weight * rmsd, torch.zeros_like(rmsd))
            weight_sum = weight_sum + weight * used
    return total / weight_sum.clamp(min=1e-6) / FAPE_SCALE


def distogram_loss(distogram_logits, rows, true_atom14, true_mask, residue_mask) -> torch.Tensor:
    """Cross-entropy of binned true CB-CB distances (CA for glycine) from residues `rows` [R] to all, mean over
    residue pairs, per example [B].

    distogram_logits [B, R, N, bins] (layers.DistogramHead); pairs with a missing CB (and CA) or padding are masked.
    """
    has_cb = true_mask[..., 4]
    beta = torch.where(has_cb[..., None], true_atom14[..., 4, :], true_atom14[..., 1, :])  # [B, N, 3]
    present = (has_cb | true_mask[..., 1]) & residue_mask  # [B, N]
    distance = torch.cdist(beta[:, rows], beta)  # [B, R, N]
    target = torch.bucketize(distance, distogram_bin_edges(distogram_logits.shape[-1], distance.device))
    pair_mask = (present[:, rows, None] & present[:, None, :]).to(distance.dtype)
    ce = F.cross_entropy(distogram_logits.permute(0, 3, 1, 2), target, reduction="none")  # [B, R, N]
    return (ce * pair_mask).sum((1, 2)) / pair_mask.sum((1, 2)).clamp(min=1)


def error_head_loss(error_logits, target_error, mask, error_max: float) -> torch.Tensor:
    """Cross-entropy of binned CA deviation, per example [B]."""
    bins = error_logits.shape[-1]
    target_bin = (target_error / error_max * bins).long().clamp(0, bins - 1)
    ce = F.cross_entropy(error_logits.flatten(0, 1), target_bin.flatten(), reduction="none").view_as(target_error)
    return (ce * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def cdr3_point_weight(imgt_position: torch.Tensor, cdr3_weight: float) -> torch.Tensor:
    """FAPE weight of each residue's points [B, N]: `cdr3_weight` inside CDR3 (IMGT 105-117), 1 elsewhere."""
    return 1.0 + (cdr3_weight - 1.0) * is_cdr(imgt_position, 3).float()


def total_loss(
    output: dict, batch: dict, weights: dict[str, float], error_max: float, cdr3_weight: float = 1.0
) -> tuple[torch.Tensor, dict]:
    """Weighted sum of all losses (mean over the batch) and each term's value for logging (0-dim tensors).

    cdr3_weight: FAPE weight of CDR3 points relative to the others (1 = plain FAPE).
    """
    restype, residue_mask = batch["restype"], batch["residue_mask"]
    true_atom14, true_mask = batch["atom14"], batch["atom_mask"] & residue_mask[..., None]
    atom_exists = residue_tables(restype.device).atom_exists[restype] & residue_mask[..., None]
    true_frames, frame_mask = backbone_frames(true_atom14, true_mask)

    terms = {}
    ca_mask = true_mask[..., 1]
    residue_weight = cdr3_point_weight(batch["imgt_position"], cdr3_weight)  # [B, N]
    backbone_terms = [
        fape(frames, true_frames, frame_mask, frames.trans, true_atom14[..., 1, :], ca_mask * residue_weight)
        for frames in output["frames"]
    ]
    terms["fape_backbone"] = torch.stack(backbone_terms).mean(0)

    final_frames = output["frames"][-1]
    pred_atom14 = output["atom14"]
    renamed, renamed_mask = rename_symmetric_atoms(pred_atom14, true_atom14, true_mask, restype, final_frames, true_frames)
    renamed_mask = renamed_mask & atom_exists
    b, n = residue_mask.shape
    sampled = torch.randperm(n, device=restype.device)[:ALL_ATOM_FAPE_FRAMES]
    terms["fape_all_atom"] = fape(
        Frames(final_frames.rot[:, sampled], final_frames.trans[:, sampled]),
        Frames(true_frames.rot[:, sampled], true_frames.trans[:, sampled]),
        frame_mask[:, sampled],
        pred_atom14.view(b, -1, 3),
        renamed.view(b, -1, 3),
        (renamed_mask * residue_weight[..., None]).view(b, -1),
    )

    true_sin_cos, torsion_mask, alt_sin_cos = torsion_angles(true_atom14, true_mask, restype)
    terms["torsion"] = torch.stack(
        [torsion_loss(t, true_sin_cos, alt_sin_cos, torsion_mask & residue_mask[..., None]) for t in output["torsions"]]
    ).mean(0)
    terms["bond"] = peptide_bond_loss(pred_atom14, true_atom14, true_mask, residue_mask, batch["chain_slot"])
    terms["clash"] = clash_loss(pred_atom14, atom_exists, residue_mask, batch["chain_slot"], restype)
    terms["disulfide"] = disulfide_loss(pred_atom14, true_atom14, true_mask, restype)
    # One framework superposition per chain serves the CDR RMSD loss and the error head's target.
    moved = superpose_chains(pred_atom14, true_atom14, true_mask, batch["chain_slot"], batch["imgt_position"])
    terms["cdr_rmsd"] = cdr_rmsd(moved, true_atom14, true_mask, batch["chain_slot"], batch["imgt_position"])
    target_error = torch.nan_to_num(ca_distance(moved.detach(), true_atom14, true_mask))  # missing CAs: masked by ca_mask
    error_mask = ca_mask & ~batch["teacher_target"][:, None] if "teacher_target" in batch else ca_mask
    terms["error"] = error_head_loss(output["error_logits"], target_error, error_mask, error_max)
    if "distogram_logits" in output:
        terms["distogram"] = distogram_loss(
            output["distogram_logits"], output["distogram_rows"], true_atom14, true_mask, residue_mask
        )

    loss = sum(weights.get(name, 0.0) * value.mean() for name, value in terms.items())
    return loss, {name: value.detach().mean() for name, value in terms.items()}  # tensors: no device sync per step
