"""The immunofold network: embedding -> pair-free sequence trunk -> lean IPA structure module -> atoms.

Frames start from a mean structure per (receptor kind, chain slot, IMGT position, insertion rank),
stored in the weights as `template_atoms`, so the structure module only has to refine it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from immunofold.constants import (
    CHAIN_CLASSES,
    KINDS,
    NUM_IMGT_POSITIONS,
    NUM_RESTYPES,
    NUM_TORSIONS,
    RESTYPE_INDEX,
    UNKNOWN_RESTYPE,
    is_cdr,
)
from immunofold.data.features import MAX_INSERTION_RANK
from immunofold.geometry import Frames, atom14_from_frames, quaternion_to_rotation
from immunofold.model.ipa import InvariantPointAttention
from immunofold.model.layers import (
    DISTOGRAM_ROWS,
    DistogramHead,
    PairBias,
    SequenceAttentionLayer,
    Transition,
    attention_biases,
    cysteine_pairs,
    relative_position_buckets,
)


@dataclass
class ModelConfig:
    dim: int = 128
    trunk_layers: int = 4
    trunk_heads: int = 8
    ipa_blocks: int = 4
    structure_passes: int = 1  # times the IPA block stack is applied (weights shared between passes, as AlphaFold's 8)
    ipa_heads: int = 8
    error_bins: int = 16
    error_max: float = 8.0  # Å; upper edge of the last error bin
    dropout: float = 0.0  # training only: dropout on the trunk layers' residual updates
    restype_dropout: float = 0.0  # training only: fraction of residues whose type the embedding sees as unknown
    cysteine_pair_bias: bool = False  # attention (trunk and IPA) gets a learned bias for pairs of two cysteines
    pair_dim: int = 0  # > 0: IPA attention also gets biases from pair features of the trunk output (layers.PairBias)
    language_dim: int = 0  # > 0: the embedding also reads antibody language-model features (data.language), 512 for AntiBERTy
    language_dropout: float = 0.0  # training only: fraction of examples shown without their language features
    distogram_bins: int = 0  # > 0: training also predicts binned CB-CB distances from the trunk output (layers.DistogramHead)
    distogram_dim: int = 32  # hidden width of the distogram head's pair features
    cdr3_class_head: bool = False  # the trunk output also predicts whether chain 1's CDR3 stands out (NbFrame "Extended")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidueEmbedding(nn.Module):
    """Residue type + chain class + receptor kind + IMGT position (per chain class) + insertion rank
    (+ language-model features where `language_dim` > 0) -> [B, N, C].

    In training, a `restype_dropout` fraction of residues is shown as unknown type (and without language
    features), and a `language_dropout` fraction of examples without language features, so the model cannot
    lean on memorised residue types or sequence fingerprints alone (regularisers; no effect in eval mode).
    The language projection starts at zero, so it can be added to trained weights without changing them.
    """

    def __init__(self, dim: int, restype_dropout: float = 0.0, language_dim: int = 0, language_dropout: float = 0.0):
        super().__init__()
        self.restype_dropout = restype_dropout
        self.language_dropout = language_dropout
        self.restype = nn.Embedding(NUM_RESTYPES, dim)
        self.chain_class = nn.Embedding(len(CHAIN_CLASSES), dim)
        self.kind = nn.Embedding(len(KINDS), dim)
        self.position = nn.Embedding(len(CHAIN_CLASSES) * NUM_IMGT_POSITIONS, dim)
        self.insertion = nn.Embedding(MAX_INSERTION_RANK + 1, dim)
        if language_dim > 0:
            self.language = nn.Sequential(nn.LayerNorm(language_dim), nn.Linear(language_dim, dim, bias=False))
            nn.init.zeros_(self.language[1].weight)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        position = batch["chain_class"] * NUM_IMGT_POSITIONS + batch["imgt_position"]
        restype = batch["restype"]
        hidden = torch.zeros_like(restype, dtype=torch.bool)
        if self.training and self.restype_dropout > 0:
            hidden = torch.rand(restype.shape, device=restype.device) < self.restype_dropout
            restype = torch.where(hidden, torch.full_like(restype, UNKNOWN_RESTYPE), restype)
        embedded = (
            self.restype(restype)
            + self.chain_class(batch["chain_class"])
            + self.kind(batch["kind"])[:, None, :]
            + self.position(position)
            + self.insertion(batch["imgt_insertion"])
        )
        if hasattr(self, "language"):
            features = batch["language"].float()  # [B, N, language_dim]; all-zero rows: no language input
            present = (features != 0).any(-1) & ~hidden  # [B, N]
            if self.training and self.language_dropout > 0:  # whole examples without language input
                present = present & (torch.rand(present.shape[0], 1, device=present.device) >= self.language_dropout)
            embedded = embedded + self.language(features) * present[..., None]
        return embedded


class StructureBlock(nn.Module):
    """IPA + transition, then a frame update and torsion prediction."""

    def __init__(self, dim: int, heads: int, cysteine_pair: bool = False):
        super().__init__()
        self.ipa = InvariantPointAttention(dim, num_heads=heads, cysteine_pair=cysteine_pair)
        self.ipa_norm = nn.LayerNorm(dim)
        self.transition = Transition(dim)
        self.out_norm = nn.LayerNorm(dim)
        self.frame_update = nn.Linear(dim, 6)
        nn.init.zeros_(self.frame_update.weight)
        nn.init.zeros_(self.frame_update.bias)
        self.torsion = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, NUM_TORSIONS * 2))

    def forward(self, s, s_initial, frames: Frames, attn_bias):
        s = self.ipa_norm(s + self.ipa(s, frames, attn_bias))
        s = self.out_norm(self.transition(s))
        update = self.frame_update(s)  # [B, N, 6]: quaternion vector part, translation (Å)
        quat = torch.cat([torch.ones_like(update[..., :1]), update[..., :3]], dim=-1)
        quat = quat / quat.norm(dim=-1, keepdim=True)
        frames = frames.compose(Frames(quaternion_to_rotation(quat), update[..., 3:]))
        torsions = self.torsion(torch.cat([s, s_initial], dim=-1)).unflatten(-1, (NUM_TORSIONS, 2))
        return s, frames, torsions


class ImmunoFoldNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = ResidueEmbedding(config.dim, config.restype_dropout, config.language_dim, config.language_dropout)
        self.trunk = nn.ModuleList(
            SequenceAttentionLayer(config.dim, config.trunk_heads, config.dropout, config.cysteine_pair_bias)
            for _ in range(config.trunk_layers)
        )
        self.single_norm = nn.LayerNorm(config.dim)
        self.blocks = nn.ModuleList(
            StructureBlock(config.dim, config.ipa_heads, config.cysteine_pair_bias) for _ in range(config.ipa_blocks)
        )
        if config.pair_dim > 0:
            self.pair_bias = PairBias(config.dim, config.pair_dim, config.ipa_heads, config.ipa_blocks)
        if config.distogram_bins > 0:
            self.distogram_head = DistogramHead(config.dim, config.distogram_dim, config.distogram_bins)
        self.error_head = nn.Sequential(
            nn.LayerNorm(config.dim), nn.Linear(config.dim, config.dim), nn.ReLU(), nn.Linear(config.dim, config.error_bins)
        )
        if config.cdr3_class_head:
            self.cdr3_class_head = nn.Sequential(
                nn.LayerNorm(config.dim), nn.Linear(config.dim, config.dim), nn.ReLU(), nn.Linear(config.dim, 1)
            )
        # Mean backbone (N, CA, C) per [kind, chain slot, IMGT position, insertion rank], Å; filled from training data.
        self.register_buffer(
            "template_atoms", torch.zeros(len(KINDS), 2, NUM_IMGT_POSITIONS, MAX_INSERTION_RANK + 1, 3, 3)
        )

    def initial_frames(self, batch: dict[str, torch.Tensor]) -> Frames:
        kind = batch["kind"][:, None].expand_as(batch["chain_slot"])
        atoms = self.template_atoms[kind, batch["chain_slot"], batch["imgt_position"], batch["imgt_insertion"]]
        return Frames.from_3_points(atoms[..., 0, :], atoms[..., 1, :], atoms[..., 2, :])  # [B, N]

    def error_bin_centers(self) -> torch.Tensor:
        width = self.config.error_max / self.config.error_bins
        return (torch.arange(self.config.error_bins, device=self.template_atoms.device) + 0.5) * width

    def cysteine_pairs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[B, N, N] bool pairs of two cysteines for the cysteine-pair bias; None without it."""
        if not self.config.cysteine_pair_bias:
            return None
        return cysteine_pairs((batch["restype"] == RESTYPE_INDEX["C"]) & batch["residue_mask"])

    def trunk_output(self, batch: dict[str, torch.Tensor], buckets: torch.Tensor, trunk_biases: list) -> torch.Tensor:
        """Embedding and sequence trunk: the single representation [B, N, C]."""
        s = self.embedding(batch)
        for layer, attn_bias in zip(self.trunk, trunk_biases):
            s = layer(s, attn_bias)
        return self.single_norm(s)

    def cdr3_class_logit(self, s: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logit [B] that the first chain's CDR3 (IMGT 105-117) stands out of the domain, from the trunk output
        s [B, N, C] averaged over that CDR3's residues."""
        in_cdr3 = is_cdr(batch["imgt_position"], 3) & (batch["chain_slot"] == 0) & batch["residue_mask"]  # [B, N]
        pooled = (s * in_cdr3[..., None]).sum(1) / in_cdr3.sum(1, keepdim=True).clamp(min=1)  # [B, C]
        return self.cdr3_class_head(pooled).squeeze(-1)

    def sequence_only_cdr3_class_logit(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`cdr3_class_logit` [B] without the structure module (for examples that have labels but no atoms)."""
        buckets = relative_position_buckets(batch["chain_slot"])
        trunk_biases = attention_biases([layer.bias for layer in self.trunk], buckets, batch["residue_mask"],
                                        self.cysteine_pairs(batch))
        return self.cdr3_class_logit(self.trunk_output(batch, buckets, trunk_biases), batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        """Returns frames per block, torsions per block ([B, N, 5, 2]), atom14 [B, N, 14, 3] Å, error logits [B, N, bins]
        and, in training with a distogram head, distogram logits [B, R, N, bins] for R sampled rows `distogram_rows`;
        with a CDR3-class head, `cdr3_class_logit` [B]."""
        mask = batch["residue_mask"]
        buckets = relative_position_buckets(batch["chain_slot"])
        bias_modules = [layer.bias for layer in self.trunk] + [block.ipa.bias for block in self.blocks]
        biases = attention_biases(bias_modules, buckets, mask, self.cysteine_pairs(batch))  # [B, H, N, N] per trunk layer, then per IPA block
        trunk_biases, block_biases = biases[: len(self.trunk)], biases[len(self.trunk) :]
        s = self.trunk_output(batch, buckets, trunk_biases)
        s_initial = s
        distogram = None
        if self.training and hasattr(self, "distogram_head"):
            rows = torch.randperm(s.shape[1], device=s.device)[:DISTOGRAM_ROWS]
            distogram = (self.distogram_head(s, buckets, rows), rows)
        if self.config.pair_dim > 0:
            block_biases = self.pair_bias(s, buckets, block_biases)
        frames = self.initial_frames(batch)
        all_frames, all_torsions = [], []
        steps = list(zip(self.blocks, block_biases)) * self.config.structure_passes  # [(block, its bias)] in order
        for i, (block, attn_bias) in enumerate(steps):
            s, frames, torsions = block(s, s_initial, frames, attn_bias)
            all_frames.append(frames)
            all_torsions.append(torsions)
            if i < len(steps) - 1:
                frames = frames.detach_rot()  # AlphaFold: stop rotation gradients between blocks
        atom14 = atom14_from_frames(frames, all_torsions[-1], batch["restype"])
        error_logits = self.error_head(s.detach())  # the error head learns from the structure, not the reverse
        expected_error = (torch.softmax(error_logits, -1) * self.error_bin_centers()).sum(-1)
        output = {
            "frames": all_frames,
            "torsions": all_torsions,
            "atom14": atom14,
            "error_logits": error_logits,
            "predicted_error": expected_error,  # [B, N] Å, expected CA deviation
        }
        if distogram is not None:
            output["distogram_logits"], output["distogram_rows"] = distogram
        if hasattr(self, "cdr3_class_head"):
            output["cdr3_class_logit"] = self.cdr3_class_logit(s_initial, batch)  # [B]
        return output
