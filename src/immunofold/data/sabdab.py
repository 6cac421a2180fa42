"""Import SAbDab / STCRDab-like folders (summary.tsv + structures/) into featurised examples.

Each entry's chains are renumbered in IMGT from their observed sequence with the same code as
prediction (`sequences.find_domains`). Residues with missing atoms are kept and masked.
Entries that cannot be used are reported with the reason, never silently dropped.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from immunofold.constants import KIND_CHAIN_IDS
from immunofold.data.features import featurise
from immunofold.io import read_chains
from immunofold.sequences import KIND_SLOTS, InputError, find_domains

MIN_BACKBONE_FRACTION = 0.8  # an entry with fewer complete backbone residues is skipped
SUMMARY_FILES = {  # database folder -> (chain id columns, sequence columns)
    "sabdab": (("Hchain", "Lchain"), ("heavy_seq", "light_seq")),
    "stcrdab": (("Achain", "Bchain"), ("alpha_seq", "beta_seq")),
}


@dataclass(frozen=True)
class Entry:
    """One receptor of a summary.tsv: its kind, split, structure file and chain ids in output order."""

    pdb: str
    kind: str
    split: str
    path: str
    chain_ids: tuple[str, ...]
    sequences: tuple[str, ...]
    source: str = ""  # the collection the entry came from (summary.tsv `source`), where given

    @property
    def name(self) -> str:
        return f"{self.pdb}_{'-'.join(self.chain_ids)}"


def read_summary(root: str) -> list[Entry]:
    """All entries of the summary.tsv files found under `root` (sabdab/ and/or stcrdab/, or root itself)."""
    entries = []
    folders = [os.path.join(root, d) for d in SUMMARY_FILES if os.path.isdir(os.path.join(root, d))] or [root]
    for folder in folders:
        path = os.path.join(folder, "summary.tsv")
        if not os.path.exists(path):
            continue
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                id_columns, seq_columns = next(v for v in SUMMARY_FILES.values() if v[0][0] in row)
                kind = row.get("kind") or _infer_kind(row)
                n_chains = len(KIND_CHAIN_IDS[kind])
                entries.append(
                    Entry(
                        pdb=row["pdb"],
                        kind=kind,
                        split=row.get("split", ""),
                        path=_structure_path(folder, row["pdb"]),
                        chain_ids=tuple(row[c] for c in id_columns[:n_chains]),
                        sequences=tuple(row.get(c, "") for c in seq_columns[:n_chains]),
                        source=row.get("source") or "",
                    )
                )
    return entries


def names_of_sources(root: str, sources: Iterable[str]) -> set[str]:
    """Names (`Entry.name`) of the entries under `root` whose summary.tsv `source` is one of `sources`."""
    sources = set(sources)
    return {entry.name for entry in read_summary(root) if entry.source in sources}


MISSING_VALUES = {"", "NA", "None", "nan"}
# Where structure files live: our layout, then SAbDab/STCRDab download layouts.
STRUCTURE_FOLDERS = ("structures", "imgt", "chothia", os.path.join("all_structures", "imgt"), os.path.join("all_structures", "raw"))


def _infer_kind(row: dict) -> str:
    """Kind of a summary row without a `kind` column (as downloaded from SAbDab/STCRDab)."""
    if "Achain" in row:
        return "tcr"
    return "nanobody" if row.get("Lchain", "") in MISSING_VALUES else "antibody"


def _structure_path(folder: str, pdb: str) -> str:
    for subfolder in STRUCTURE_FOLDERS:
        for suffix in (".pdb.gz", ".pdb", ".cif.gz", ".cif"):
            path = os.path.join(folder, subfolder, pdb + suffix)
            if os.path.exists(path):
                return path
    return os.path.join(folder, "structures", pdb + ".pdb.gz")


def load_example(entry: Entry) -> dict:
    """Featurised training example of one entry, with atom14 coordinates; raises InputError if unusable."""
    if not os.path.exists(entry.path):
        raise InputError(entry.name, f"structure file missing: {entry.path}")
    try:
        chains = read_chains(entry.path, list(dict.fromkeys(entry.chain_ids)))
    except ValueError as error:
        raise InputError(entry.name, str(error)) from None
    numbered, coords, masks = [], [], []
    used: dict[str, set[int]] = {}
    for (slot, classes), chain_id in zip(KIND_SLOTS[entry.kind], entry.chain_ids):
        atoms = chains[chain_id]
        candidates = [
            d
            for d in find_domains(atoms.sequence, f"{entry.name} {slot}")
            if d.chain_class in classes and d.trimmed_before not in used.get(chain_id, set())
        ]
        if not candidates:
            raise InputError(entry.name, f"no {slot} V domain found in chain {chain_id}")
        domain = candidates[0]
        used.setdefault(chain_id, set()).add(domain.trimmed_before)
        index = torch.tensor(domain.source_indices)
        numbered.append(domain)
        coords.append(torch.as_tensor(atoms.atom14, dtype=torch.float32)[index])
        masks.append(torch.as_tensor(atoms.atom_mask, dtype=torch.bool)[index])
    example = featurise(entry.kind, numbered)
    example["atom14"] = torch.cat(coords)
    example["atom_mask"] = torch.cat(masks)
    complete = example["atom_mask"][:, :3].all(-1).float().mean().item()
    if complete < MIN_BACKBONE_FRACTION:
        raise InputError(entry.name, f"only {complete:.0%} of residues have a complete backbone")
    example["name"] = entry.name
    example["sequences"] = tuple(d.sequence for d in numbered)
    example["positions"] = tuple(d.positions for d in numbered)
    return example


def _load_or_reason(entry: Entry):
    """(example with numpy arrays, None) or (None, reason); numpy crosses process boundaries cheaply."""
    try:
        example = load_example(entry)
        return {k: v.numpy() if torch.is_tensor(v) else v for k, v in example.items()}, None
    except InputError as error:
        return None, str(error)
    except Exception as error:  # a broken file must not stop the import of the others
        return None, f"{entry.name}: {type(error).__name__}: {error}"


def _ignore_ctrl_c() -> None:
    """Pool workers leave Ctrl-C (sent to the whole process group) to the parent, which stops them; each would
    otherwise print its own KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_examples(entries: list[Entry], workers: int = 2) -> tuple[list[dict], list[str]]:
    """Featurise entries in parallel; returns (examples, one-line reasons for skipped entries)."""
    if workers <= 1:
        results = [_load_or_reason(entry) for entry in entries]
    else:  # spawn, not fork: forking after torch has started its thread pool can deadlock
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_ctrl_c) as pool:
            results = pool.map(_load_or_reason, entries, chunksize=8)
    examples = [
        {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in e.items()}
        for e, _ in results
        if e is not None
    ]
    skipped = [r for _, r in results if r is not None]
    return examples, skipped


def cached_examples(root: str, split: str, cache_dir: str, workers: int = 2) -> list[dict]:
    """Examples of one split, featurised once and cached in `cache_dir` (with a skip report beside them)."""

    def build() -> tuple[list[dict], list[str], str]:
        entries = [e for e in read_summary(root) if e.split == split]
        examples, skipped = build_examples(entries, workers)
        return examples, skipped, f"{len(skipped)} of {len(entries)} {split} entries skipped"

    return cached(cache_dir, split, build)


def cached(cache_dir: str, name: str, build) -> list[dict]:
    """`<cache_dir>/examples-<name>.pt`, or on a miss `build()` -> (examples, skipped reasons, summary line),
    saved atomically with the reasons in `skipped-<name>.txt` under the summary line."""
    cache = os.path.join(cache_dir, f"examples-{name}.pt")
    if os.path.exists(cache):
        return torch.load(cache, weights_only=False)
    os.makedirs(cache_dir, exist_ok=True)
    examples, skipped, summary = build()
    with open(os.path.join(cache_dir, f"skipped-{name}.txt"), "w") as handle:
        handle.write(f"# {summary}\n")
        handle.writelines(line + "\n" for line in skipped)
    tmp = cache + ".tmp"
    torch.save(examples, tmp)
    os.replace(tmp, cache)
    return examples
