"""Nanobody CDR3 conformation labels as sequence-only training examples (issue 22, item 2).

`../shared/data/aux/nbframe_cdr3_classes.tsv` (NbFrame) labels 808 nanobody chains, ~500 of them without
coordinates here: `Extended` (the CDR3 stands out of the domain) or `Kinked` (folded over framework 2), the
manual curation where NbFrame has one, its structure classifier's call otherwise. Each row is numbered with the
same code as prediction and featurised; `cdr3_extended` is 1.0 for Extended, 0.0 for Kinked. There are no atoms:
these examples train the model's CDR3-class head only. Rows redundant with a val heavy chain by the data README's
rule (aux.redundant_with) are left out, so that val stays unseen.
"""

from __future__ import annotations

import csv
import hashlib
import os

import torch

from immunofold.data.aux import HeavyChain, redundant_with, val_heavy_chains
from immunofold.data.features import featurise
from immunofold.data.sabdab import cached
from immunofold.sequences import InputError, number_receptor

CLASS_FILE = os.path.join("aux", "nbframe_cdr3_classes.tsv")
CLASS_CACHE_NAME = "cdr3-classes-v1"  # + a digest of the table and the val split (cached_class_examples)
REQUIRED_COLUMNS = ("structure_id", "sequence", "cdr3_class", "manual_label")
CLASSES = ("Extended", "Kinked")


def class_label(row: dict) -> float:
    """1.0 if the row's CDR3 is Extended, 0.0 if Kinked (NbFrame's manual label over its classifier's);
    ValueError for any other class."""
    label = row["manual_label"] or row["cdr3_class"]
    if label not in CLASSES:
        raise ValueError(f"unknown CDR3 class {label!r} (Extended or Kinked)")
    return float(label == "Extended")


def read_class_examples(path: str, val_heavy_chains: list[HeavyChain] = ()) -> tuple[list[dict], list[str]]:
    """(sequence-only examples, one-line reasons for skipped rows) from NbFrame's label table; ValueError naming
    the file (and line) for a missing column or an unknown class."""
    examples, skipped = [], []
    val_heavy_chains = list(val_heavy_chains)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            try:
                label = class_label({k: v or "" for k, v in row.items()})
            except ValueError as error:
                raise ValueError(f"{path} line {reader.line_num}: {error}") from None
            name = f"nbframe:{row['structure_id']}"
            try:
                (chain,) = number_receptor("nanobody", {"heavy": row["sequence"] or ""}, name)
            except InputError as error:
                skipped.append(str(error))
                continue
            example = featurise("nanobody", [chain])
            example.update(name=name, sequences=(chain.sequence,), positions=(tuple(chain.positions),),
                           cdr3_extended=torch.tensor(label))
            reason = redundant_with(example, val_heavy_chains)
            if reason:
                skipped.append(f"{name}: {reason}")
            else:
                examples.append(example)
    return examples, skipped


def cached_class_examples(root: str, cache_dir: str, val_split: str = "val") -> list[dict]:
    """The label table's examples, built once per table content and val split and cached in `cache_dir` (skip
    report beside them)."""
    path = os.path.join(root, CLASS_FILE)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read() + val_split.encode()).hexdigest()[:12]

    def build() -> tuple[list[dict], list[str], str]:
        examples, skipped = read_class_examples(path, val_heavy_chains(root, val_split, cache_dir))
        return examples, skipped, f"{len(skipped)} of {len(examples) + len(skipped)} CDR3-class rows skipped"

    return cached(cache_dir, f"{CLASS_CACHE_NAME}-{digest}", build)
