"""Accuracy metrics in ImmuneBuilder's convention.

Backbone atoms N, CA, C, CB (CB where the residue has one); each chain superposed on its own
framework (IMGT 1-128 outside the CDRs); CDRs by IMGT definition (27-38, 56-65, 105-117).
Region names: chain letter + 1/2/3 for CDRs, + "fr" for the framework (e.g. "H3", "Lfr").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import mannwhitneyu, spearmanr

from immunofold.constants import IMGT_CDRS, KIND_CHAIN_IDS, is_cdr, is_framework
from immunofold.geometry import kabsch

METRIC_ATOMS = [0, 1, 2, 4]  # atom14 slots of N, CA, C, CB


def region_masks(imgt_position: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean residue masks [N] for '1', '2', '3' (CDRs) and 'fr'."""
    masks = {str(k): is_cdr(imgt_position, k) for k in IMGT_CDRS}
    masks["fr"] = is_framework(imgt_position)
    return masks


def superpose_chains(pred_atom14, true_atom14, true_mask, chain_slot, imgt_position) -> torch.Tensor:
    """Prediction [*, N, 14, 3] with each chain moved onto the truth by its framework N, CA, C, CB atoms.

    Batched over leading dimensions (padding must have a false `true_mask`). The superposition is computed
    in float64 without gradient; gradients flow through the moved coordinates. A chain with fewer than 3
    framework atoms stays where it is. An absent chain (a nanobody's second) gets a discarded superposition:
    skipping it would need a device-to-host sync in every training step.
    """
    moved = pred_atom14
    for slot in (0, 1):
        in_chain = chain_slot == slot  # [*, N]
        anchor = true_mask[..., METRIC_ATOMS] & (in_chain & is_framework(imgt_position))[..., None]  # [*, N, 4]
        frame = kabsch(
            pred_atom14[..., METRIC_ATOMS, :].detach().flatten(-3, -2).double(),
            true_atom14[..., METRIC_ATOMS, :].flatten(-3, -2).double(),
            anchor.flatten(-2).double(),
        )
        transformed = frame.unsqueeze(-1).unsqueeze(-1).apply(pred_atom14.double()).to(pred_atom14.dtype)
        usable = (anchor.sum((-1, -2)) >= 3)[..., None] & in_chain  # [*, N]
        moved = torch.where(usable[..., None, None], transformed, moved)
    return moved


def region_rmsds(kind: str, pred_atom14, true_atom14, true_mask, chain_slot, imgt_position) -> dict[str, float]:
    """RMSD (Å) per region, e.g. {'H1': .., 'H2': .., 'H3': .., 'Hfr': .., 'L1': ..}."""
    moved = superpose_chains(pred_atom14, true_atom14, true_mask, chain_slot, imgt_position)
    sq = ((moved - true_atom14) ** 2).sum(-1)[:, METRIC_ATOMS]  # [N, 4]
    present = true_mask[:, METRIC_ATOMS]
    result = {}
    for slot, chain_id in enumerate(KIND_CHAIN_IDS[kind]):
        for region, residues in region_masks(imgt_position).items():
            selected = present & (residues & (chain_slot == slot))[:, None]
            if selected.any():
                result[f"{chain_id}{region}"] = float(torch.sqrt(sq[selected].mean()))
    return result


def ca_deviation(pred_atom14, true_atom14, true_mask, chain_slot, imgt_position) -> torch.Tensor:
    """Per-residue CA deviation [*, N] (Å) after per-chain framework superposition; NaN where CA is missing."""
    moved = superpose_chains(pred_atom14, true_atom14, true_mask, chain_slot, imgt_position)
    return ca_distance(moved, true_atom14, true_mask)


def ca_distance(moved_atom14, true_atom14, true_mask) -> torch.Tensor:
    """Per-residue CA distance [*, N] (Å) of an already superposed prediction; NaN where CA is missing."""
    deviation = torch.linalg.norm(moved_atom14[..., 1, :] - true_atom14[..., 1, :], dim=-1)
    return torch.where(true_mask[..., 1], deviation, torch.full_like(deviation, float("nan")))


STANDING_OUT_REACH = 27.0  # Å; a CDR3 reaching further than this stands out of the domain (~16 % of train nanobodies)


def cdr3_reach(atom14, atom_mask, chain_slot, imgt_position, slot: int = 0) -> float | None:
    """How far a chain's CDR3 reaches out (Å): the largest distance of a CDR3 CA (IMGT 105-117) from the centroid of
    the chain's framework CAs. About 17-26 Å for a CDR3 folded onto its domain, above ~27 Å for one that stands out
    from it. None when the chain has no CDR3 or framework CA."""
    in_chain = atom_mask[:, 1] & (chain_slot == slot)
    loop = in_chain & is_cdr(imgt_position, 3)
    framework = in_chain & is_framework(imgt_position)
    if not loop.any() or not framework.any():
        return None
    centre = atom14[framework, 1].mean(0)
    return float(torch.linalg.norm(atom14[loop, 1] - centre, dim=-1).max())


def count_chain_breaks(atom14, atom_mask, chain_slot, max_peptide_bond: float = 2.0) -> int:
    """Consecutive residues of one chain whose C-N distance exceeds `max_peptide_bond` Å: residues missing
    from an experimental structure (a prediction from its observed sequence joins the two sides)."""
    distance = torch.linalg.norm(atom14[:-1, 2] - atom14[1:, 0], dim=-1)
    both = atom_mask[:-1, 2] & atom_mask[1:, 0] & (chain_slot[:-1] == chain_slot[1:])
    return int((both & (distance > max_peptide_bond)).sum())


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the boolean labels `positive` (NaN when one class is empty)."""
    if positive.all() or not positive.any():
        return float("nan")
    return float(mannwhitneyu(score[positive], score[~positive]).statistic / (positive.sum() * (~positive).sum()))


def error_spearman(predicted_error: np.ndarray, real_deviation: np.ndarray) -> float:
    """Spearman rank correlation between predicted per-residue error and real CA deviation (NaNs ignored)."""
    predicted_error, real_deviation = np.asarray(predicted_error), np.asarray(real_deviation)
    keep = np.isfinite(predicted_error) & np.isfinite(real_deviation)
    if keep.sum() < 3:
        return float("nan")
    return float(spearmanr(predicted_error[keep], real_deviation[keep]).statistic)
