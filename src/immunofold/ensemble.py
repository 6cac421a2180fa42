"""Run the ensemble members together and estimate each residue's error from them.

Members are superposed on their mean by all CA atoms; a residue's spread is the RMS deviation
(Å) of its backbone atoms (N, CA, C, O) across members from the mean. Each member also predicts
its own expected CA deviation (error head). The reported error combines both,
sqrt(spread² + head²) in Å: on the val split it ranks residues better than either alone and its
mean is close to the real mean CA deviation.

The structure returned is the members' consensus: backbone frames from their mean N, CA, C and
side chains from their mean torsion angles, so every residue keeps ideal internal geometry. On the
val split it is 0.02-0.16 Å closer to the truth in CDR3 than the member closest to the mean (weights v0.2-v0.7).
With `clean=True`, consecutive residues are then joined by real peptide bonds and clashes removed
(`cleanup.clean_geometry`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from immunofold.cleanup import clean_geometry
from immunofold.constants import KINDS
from immunofold.data.language import batch_language_features
from immunofold.geometry import Frames, atom14_from_frames, kabsch, residue_tables, torsion_angles
from immunofold.weights import (
    MemberSets,
    WeightsError,
    load_model,
    member_sets,
    required_member_sets,
    weights_version,
)

BACKBONE_SLOTS = [0, 1, 2, 3]  # atom14 slots of N, CA, C, O


@dataclass
class EnsembleOutput:
    members: torch.Tensor  # [M, B, N, 14, 3] Å, superposed on their mean
    spread: torch.Tensor  # [B, N] Å, RMS backbone deviation of members from the mean
    head_error: torch.Tensor  # [B, N] Å, mean over members of the error head's expected CA deviation
    ranking: torch.Tensor  # [B, M] member indices, closest to the mean first
    consensus: torch.Tensor  # [B, N, 14, 3] Å, the members' consensus structure (see consensus_structure), cleaned if asked

    @property
    def error(self) -> torch.Tensor:
        """Per-residue error estimate [B, N] in Å: ensemble spread and error head combined in quadrature."""
        return torch.sqrt(self.spread**2 + self.head_error**2)


def superpose_members(members: torch.Tensor, residue_mask: torch.Tensor, iterations: int = 2) -> torch.Tensor:
    """Superpose members [M, B, N, 14, 3] onto their (iteratively refined) mean using CA atoms."""
    weights = residue_mask.float().expand(members.shape[0], *residue_mask.shape)
    reference = members[0, :, :, 1]
    for _ in range(iterations):
        frames = kabsch(members[..., 1, :], reference.expand_as(members[..., 1, :]), weights)
        members = frames.unsqueeze(-1).unsqueeze(-1).apply(members)
        reference = members[..., 1, :].mean(0)
    return members


def member_spread(members: torch.Tensor, residue_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-residue RMS deviation from the mean [B, N] Å, member ranking by closeness to the mean [B, M])."""
    backbone = members[..., BACKBONE_SLOTS, :]  # [M, B, N, 4, 3]
    sq = ((backbone - backbone.mean(0)) ** 2).sum(-1).mean(-1)  # [M, B, N]
    spread = torch.sqrt(sq.mean(0)) * residue_mask
    per_member = (sq * residue_mask).sum(-1) / residue_mask.sum(-1).clamp(min=1)  # [M, B]
    return spread, per_member.T.argsort(dim=-1)


def consensus_structure(members: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
    """Consensus of superposed members [M, B, N, 14, 3] -> [B, N, 14, 3] Å.

    Backbone frames come from the members' mean N, CA, C; torsions are the normalised mean of the
    members' (sin, cos), each symmetric last chi first flipped to agree with member 0. Atoms are then
    placed with ideal geometry, so bond lengths and angles inside a residue are exact.
    """
    mean = members.mean(0)
    frames = Frames.from_3_points(mean[..., 0, :], mean[..., 1, :], mean[..., 2, :])  # [B, N]
    member_restype = restype.expand(members.shape[:3])
    exists = residue_tables(restype.device).atom_exists[member_restype]  # [M, B, N, 14]
    sin_cos, _, alternative = torsion_angles(members, exists, member_restype)  # [M, B, N, 5, 2]
    agrees = (sin_cos * sin_cos[:1]).sum(-1, keepdim=True) >= (alternative * sin_cos[:1]).sum(-1, keepdim=True)
    torsions = torch.where(agrees, sin_cos, alternative).mean(0)
    atoms = atom14_from_frames(frames, torsions, restype)
    return torch.where(residue_mask[..., None, None], atoms, torch.zeros_like(atoms))


def _loaded_member(path: str):
    """`weights.load_model(path)`, any failure to read it as a WeightsError naming the file."""
    from safetensors import SafetensorError

    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    try:
        return load_model(path)
    except OSError as error:
        raise WeightsError(f"{path}: {error.strerror or error}") from None
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as error:  # not a member's file, or damaged
        raise WeightsError(f"{path}: not a readable immunofold weights file ({' '.join(str(error).split())[:200]})") from None


class Ensemble:
    """The ensemble members of one weights release: each receptor kind's members run on a batch of that kind."""

    def __init__(self, weights: list[str] | MemberSets, device: str = "cpu", clean: bool = False,
                 members_side_by_side: bool = False):
        """weights: weight files for every kind, or each kind's own (`weights.member_sets`). clean: pass the
        consensus through `cleanup.clean_geometry` (real peptide bonds, no clashes; on val 0.05-0.10 Å worse CDR3
        RMSDs, see benchmarks/results/geometry.md). members_side_by_side: see `forward_members`; it changes
        torch's process-wide thread count during a run, so only a program that owns its process (the command line)
        should ask for it. Raises WeightsError (one line) for weights that cannot be used."""
        if not weights:
            raise WeightsError("no weight files given")
        sets = member_sets(weights)
        self.device = torch.device(device)
        self.clean = clean
        self.members_side_by_side = members_side_by_side
        self.files = list(dict.fromkeys(path for kind in KINDS for path in sets[kind]))  # each file loaded once
        self.kind_members = {kind: [self.files.index(path) for path in sets[kind]] for kind in KINDS}
        loaded = [_loaded_member(path) for path in self.files]
        self.models = [model.to(self.device) for model, _ in loaded]
        self.infos = [info for _, info in loaded]
        self.member_sets = sets  # kind -> member file paths
        self.version = weights_version(sets)
        self.needs_language = any(model.config.language_dim > 0 for model in self.models)

    @classmethod
    def packaged(cls, device: str = "cpu", clean: bool = False, members_side_by_side: bool = False,
                 fast: bool = False) -> "Ensemble":
        """The shipped members (or those of $IMMUNOFOLD_WEIGHTS), the fast set's if `fast`; WeightsError if there are
        none."""
        return cls(required_member_sets(fast), device, clean, members_side_by_side)

    def models_of(self, kind: str) -> list:
        """The members that predict receptors of `kind`, in order."""
        return [self.models[i] for i in self.kind_members[kind]]

    def forward_members(self, batch: dict[str, torch.Tensor], models: list) -> list[dict]:
        """Each of `models`' output on `batch` (already on the device), in order, without gradients.

        With `members_side_by_side`, on the CPU with n >= 2 torch threads, members run side by side in n Python
        threads of one torch thread each (torch releases the GIL in its kernels; torch's thread count is lowered for
        the run and restored): measured on 2 cores, 10-15 % faster than one member after another on 2 threads at
        batch 1, 8 and 64, where single small kernels use the cores poorly. Otherwise one after another, leaving
        torch's settings alone.
        """
        def run(models: list) -> list[dict]:
            with torch.inference_mode():  # grad mode is per thread: set it in each worker
                return [model(batch) for model in models]

        threads = torch.get_num_threads()
        workers = min(threads, len(models))
        if self.device.type != "cpu" or workers < 2 or not self.members_side_by_side:
            return run(models)
        groups = [models[i::workers] for i in range(workers)]  # member k is in group k % workers
        torch.set_num_threads(max(1, threads // workers))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                grouped = list(pool.map(run, groups))
        finally:
            torch.set_num_threads(threads)
        return [grouped[k % workers][k // workers] for k in range(len(models))]

    @torch.no_grad()
    def run(self, batch: dict[str, torch.Tensor]) -> EnsembleOutput:
        """The members of the batch's receptor kind on `batch` (features of one kind, `data.features.collate`)."""
        kinds = batch["kind"].unique().tolist()
        if len(kinds) != 1:
            raise ValueError(f"an ensemble batch holds one receptor kind, not {len(kinds)}")
        models = self.models_of(KINDS[kinds[0]])
        if self.needs_language and "language" not in batch:
            batch = {**batch, "language": batch_language_features(batch)}
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        outputs = self.forward_members(batch, models)
        atom14 = torch.stack([o["atom14"] for o in outputs])  # [M, B, N, 14, 3] Å
        head = torch.stack([o["predicted_error"] for o in outputs])  # [M, B, N] Å
        # One receptor at a time: batched superposition, means and frame products round differently with the batch's
        # size (~1e-6 Å), and refinement and the clean-up amplified that to 0.2-0.5 Å between batch compositions.
        parts = [self._combine(atom14[:, b : b + 1].contiguous(), head[:, b : b + 1].contiguous(),
                               *(batch[key][b : b + 1] for key in ("restype", "residue_mask", "chain_slot")))
                 for b in range(atom14.shape[1])]
        members, spread, head_error, ranking, consensus = zip(*parts)
        return EnsembleOutput(torch.cat(members, dim=1), torch.cat(spread), torch.cat(head_error), torch.cat(ranking),
                              torch.cat(consensus))

    def _combine(self, atom14: torch.Tensor, head: torch.Tensor, restype: torch.Tensor, residue_mask: torch.Tensor,
                 chain_slot: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One receptor's member structures [M, 1, N, 14, 3] Å and error heads [M, 1, N] Å -> (members superposed,
        spread [1, N], head error [1, N], ranking [1, M], consensus [1, N, 14, 3], cleaned if asked), on the CPU."""
        members = superpose_members(atom14, residue_mask)
        spread, ranking = member_spread(members, residue_mask)
        head_error = head.mean(0) * residue_mask
        consensus = consensus_structure(members, restype, residue_mask)
        if self.clean:
            consensus = clean_geometry(consensus, restype, residue_mask, chain_slot)
        return members.cpu(), spread.cpu(), head_error.cpu(), ranking.cpu(), consensus.cpu()
