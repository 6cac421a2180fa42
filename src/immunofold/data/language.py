"""Per-residue embeddings of antibody chains from AntiBERTy, a pretrained antibody language model.

AntiBERTy (MIT licence; an 8-layer BERT, 26M parameters, trained on 558M natural antibody sequences of OAS; the
sequence features IgFold uses) ships its weights inside the `antiberty` 0.1.x wheel, so nothing is downloaded at run
time. Each heavy or light chain is embedded on its own (the model was trained on unpaired chains); TCR chains, which
it never saw, get zeros: no language input. Features are computed from the model's own inputs (residue types, chain
classes and slots), so training examples and predictions get them the same way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

from immunofold.constants import CHAIN_CLASS_INDEX, RESTYPES, UNKNOWN_RESTYPE

LANGUAGE_DIM = 512  # AntiBERTy's hidden size
EMBEDDED_CHAIN_CLASSES = tuple(CHAIN_CLASS_INDEX[c] for c in ("heavy", "kappa", "lambda"))
EMBED_BATCH = 16  # chains per language-model forward pass
CACHE_FILE = "language-antiberty.pt"


@functools.cache
def _antiberty():
    """The AntiBERTy runner (loaded once per process, about 2.5 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local files; never reach for the Hub
    try:
        from antiberty import AntiBERTyRunner
    except ImportError as error:
        raise ImportError("these weights need the AntiBERTy language model: pip install 'immunofold[language]'") from error
    return AntiBERTyRunner()


def embed_sequences(sequences: Sequence[str]) -> list[torch.Tensor]:
    """AntiBERTy's last hidden layer for each one-letter sequence ('X' = unknown): [L, 512] float32 each."""
    if not sequences:
        return []
    runner = _antiberty()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    embedded: list[torch.Tensor | None] = [None] * len(sequences)
    for start in range(0, len(order), EMBED_BATCH):
        group = order[start : start + EMBED_BATCH]
        masked = [sequences[i].replace("X", "_") for i in group]  # the runner reads '_' as its mask token
        for i, embedding in zip(group, runner.embed(masked)):
            embedded[i] = embedding[1:-1].float().cpu()  # drop the [CLS] and [SEP] tokens
    return embedded


def chain_spans(
    restype: torch.Tensor, chain_class: torch.Tensor, chain_slot: torch.Tensor, residue_mask: torch.Tensor | None = None
):
    """(residue indices, sequence) of each antibody chain of one receptor; inputs [N] (mask: all residues if None)."""
    if residue_mask is None:
        residue_mask = torch.ones_like(restype, dtype=torch.bool)
    spans = []
    for slot in chain_slot[residue_mask].unique().tolist():
        index = torch.nonzero(residue_mask & (chain_slot == slot)).flatten()
        if int(chain_class[index[0]]) not in EMBEDDED_CHAIN_CLASSES:
            continue
        sequence = "".join("X" if t == UNKNOWN_RESTYPE else RESTYPES[t] for t in restype[index].tolist())
        spans.append((index, sequence))
    return spans


def batch_language_features(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Language features of a collated batch: [B, N, 512] float32, zeros for TCR chains and padding."""
    mask = batch.get("residue_mask", torch.ones_like(batch["restype"], dtype=torch.bool))
    spans = [
        (b, index, sequence)
        for b in range(batch["restype"].shape[0])
        for index, sequence in chain_spans(batch["restype"][b], batch["chain_class"][b], batch["chain_slot"][b], mask[b])
    ]
    unique = sorted({sequence for _, _, sequence in spans})
    embedded = dict(zip(unique, embed_sequences(unique)))
    features = torch.zeros(*batch["restype"].shape, LANGUAGE_DIM)
    for b, index, sequence in spans:
        features[b, index] = embedded[sequence]
    return features


def attach_language_features(examples: list[dict], cache_dir: str) -> None:
    """Add `language` [N, 512] float16 to each example (in place), with embeddings cached per sequence in
    `<cache_dir>/language-antiberty.pt` (computed once for sequences not yet cached)."""
    path = os.path.join(cache_dir, CACHE_FILE)
    known: dict[str, torch.Tensor] = torch.load(path) if os.path.exists(path) else {}
    spans = [chain_spans(e["restype"], e["chain_class"], e["chain_slot"]) for e in examples]  # per example
    missing = sorted({sequence for example_spans in spans for _, sequence in example_spans} - known.keys())
    if missing:
        for sequence, embedding in zip(missing, embed_sequences(missing)):
            known[sequence] = embedding.half()
        os.makedirs(cache_dir, exist_ok=True)
        torch.save(known, path + ".tmp")
        os.replace(path + ".tmp", path)
    for example, example_spans in zip(examples, spans):
        features = torch.zeros(len(example["restype"]), LANGUAGE_DIM, dtype=torch.float16)
        for index, sequence in example_spans:
            features[index] = known[sequence]
        example["language"] = features
