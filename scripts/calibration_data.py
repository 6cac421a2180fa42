"""The data the error calibrator is fitted and checked on: the shipped ensemble's unrefined predictions of
(a) the out-of-fold (OOF) set, train entries that no shipped member saw, and (b) the val split.

OOF set: the train rows added by ../shared/data updates 2 and 3 (`source` in NEW_SOURCES; every shipped v0.7
member was trained before they existed), less those redundant with an older train entry: the same CDR3 (IMGT
105-117; CDR-H3 across antibodies and nanobodies, alpha vs alpha and beta vs beta for TCRs) or a V-domain
sequence >= 95 % identical over >= 60 shared IMGT positions to an older train entry of the same kind.

`load(data_root, cache_dir)` numbers every entry once and predicts each set once, caching both under `cache_dir`.
Used by scripts/fit_calibration.py and benchmarks/error_calibration.py.
"""

from __future__ import annotations

import argparse
import os
import pickle

import numpy as np
import torch

from immunofold.constants import KIND_CHAIN_IDS, is_cdr
from immunofold.data.sabdab import Entry, load_example, read_summary
from immunofold.ensemble import Ensemble
from immunofold.evaluate import number_entry
from immunofold.metrics import ca_deviation, cdr3_reach, region_rmsds
from immunofold.prediction import Predictor
from immunofold.sequences import InputError
from immunofold.weights import packaged_member_sets

NEW_SOURCES = ("abag_docking_benchmark", "nbframe_tests", "structcr", "abpackingangle", "abdb_greifflab",
               "attentive_parapred", "stcrpy_tests")
MAX_IDENTITY = 0.95  # an OOF candidate this identical to an older train entry of its kind is not new
MIN_SHARED_POSITIONS = 60
DEFAULT_CACHE = "/tmp/immunofold-calibration"
DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options every script on the calibration data takes: --data (the data folder) and --cache."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--fast", action="store_true", help="the shipped fast member set instead of the default one")
    return parser


def entry_sources(data_root: str) -> dict[str, str]:
    """Real structure path -> `source` column of every summary.tsv row (real paths: the numbering cache may have
    been written under another spelling of the data folder)."""
    return {os.path.realpath(entry.path): entry.source for entry in read_summary(data_root)}


def numbered_entries(data_root: str, cache_dir: str) -> dict[str, tuple[Entry, list]]:
    """Entry name -> (entry, numbered chains) for every train and val entry that numbers (cached)."""
    path = os.path.join(cache_dir, "numbered.pkl")
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    result = {}
    for entry in read_summary(data_root):
        try:
            result[entry.name] = (entry, number_entry(entry))
        except InputError as error:
            print(f"skipped {error}")
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(result, handle)
    return result


def cdr3_keys(kind: str, chains: list) -> set[tuple[str, str]]:
    """(chain role, CDR3 sequence) pairs compared for redundancy: heavy CDR3 across antibodies and nanobodies."""
    roles = {"antibody": ("heavy",), "nanobody": ("heavy",), "tcr": ("alpha", "beta")}[kind]
    return {(role, "".join(aa for aa, (n, _) in zip(chain.sequence, chain.positions) if 105 <= n <= 117))
            for role, chain in zip(roles, chains)}


def _encode(chains: list, columns: dict) -> dict:
    """{column index: residue letter} of a receptor's residues keyed by (chain slot, IMGT position)."""
    return {columns.setdefault((slot, pos), len(columns)): aa
            for slot, chain in enumerate(chains) for aa, pos in zip(chain.sequence, chain.positions)}


def max_identity(candidates: list[list], references: list[list]) -> np.ndarray:
    """Highest sequence identity [len(candidates)] of each candidate receptor to any reference receptor, over
    the (chain slot, IMGT position) pairs both have (pairs with fewer than MIN_SHARED_POSITIONS count as 0)."""
    columns: dict = {}
    encoded = [_encode(c, columns) for c in references + candidates]
    table = np.zeros((len(encoded), len(columns)), dtype=np.uint8)
    for row, residues in enumerate(encoded):
        table[row, list(residues)] = [ord(aa) for aa in residues.values()]
    ref, cand = table[: len(references)], table[len(references):]
    best = np.zeros(len(candidates))
    for i, row in enumerate(cand):
        shared = (ref > 0) & (row > 0)
        n_shared = shared.sum(1)
        identity = ((ref == row) & shared).sum(1) / np.maximum(n_shared, 1)
        identity[n_shared < MIN_SHARED_POSITIONS] = 0
        best[i] = identity.max() if len(identity) else 0
    return best


def oof_names(data_root: str, numbered: dict) -> tuple[list[str], dict]:
    """(names of the OOF entries, counts per kind before and after the redundancy filter)."""
    sources = entry_sources(data_root)
    train = [(e, c) for e, c in numbered.values() if e.split == "train"]
    is_new = [sources.get(os.path.realpath(e.path)) in NEW_SOURCES for e, _ in train]
    new = [pair for pair, fresh in zip(train, is_new) if fresh]
    old = [pair for pair, fresh in zip(train, is_new) if not fresh]
    old_cdr3 = set().union(*(cdr3_keys(e.kind, c) for e, c in old))
    kept, counts = [], {}
    for kind in KIND_CHAIN_IDS:
        candidates = [(e, c) for e, c in new if e.kind == kind]
        identity = max_identity([c for _, c in candidates], [c for e, c in old if e.kind == kind])
        by_cdr3 = [bool(cdr3_keys(kind, c) & old_cdr3) for _, c in candidates]
        keep = [not dup and ident < MAX_IDENTITY for dup, ident in zip(by_cdr3, identity)]
        kept += [e.name for (e, _), k in zip(candidates, keep) if k]
        counts[kind] = {"new": len(candidates), "same_cdr3": int(sum(by_cdr3)),
                        "identical": int(sum(i >= MAX_IDENTITY for i in identity)), "kept": int(sum(keep))}
    return kept, counts


def predicted_records(names: list[str], numbered: dict, predictor: Predictor) -> list[dict]:
    """Per entry: kind, IMGT position and chain slot per residue, spread and head error (Å), predicted CA
    coordinates [N, 3] (Å), the real CA deviation (Å, NaN where the structure lacks it), region RMSDs (Å) and the crystal CDR3 reach (Å)."""
    records = []
    items, truths = [], []
    for name in names:
        entry, chains = numbered[name]
        try:
            truths.append(load_example(entry))
        except InputError as error:
            print(f"skipped {error}")
            continue
        items.append((name, entry.kind, chains))
    for start in range(0, len(items), 16):
        predictions = predictor.predict_numbered(items[start:start + 16])
        for prediction, truth in zip(predictions, truths[start:start + 16]):
            records.append(_record(prediction, truth))
        print(f"predicted {len(records)}/{len(items)}", flush=True)
    return records


def _record(prediction, truth: dict) -> dict:
    keys = [(slot, pos) for slot, chain in enumerate(prediction.chains) for pos in chain.positions]
    truth_keys = [(slot, pos) for slot, positions in enumerate(truth["positions"]) for pos in positions]
    truth_index = {key: i for i, key in enumerate(truth_keys)}
    deviation = np.full(len(keys), np.nan)
    common = [(i, truth_index[key]) for i, key in enumerate(keys) if key in truth_index]
    pred_idx = torch.tensor([i for i, _ in common])
    true_idx = torch.tensor([j for _, j in common])
    args = (truth["atom14"][true_idx], truth["atom_mask"][true_idx], truth["chain_slot"][true_idx],
            truth["imgt_position"][true_idx])
    predicted = torch.as_tensor(prediction.atom14, dtype=torch.float32)[pred_idx]
    deviation[pred_idx.numpy()] = ca_deviation(predicted, *args).numpy()
    slot = np.array([s for s, chain in enumerate(prediction.chains) for _ in chain.positions])
    position = np.array([n for chain in prediction.chains for n, _ in chain.positions])
    reach = [cdr3_reach(truth["atom14"], truth["atom_mask"], truth["chain_slot"], truth["imgt_position"], s)
             for s in range(len(prediction.chains))]
    return {
        "name": prediction.name, "kind": prediction.kind, "chains": prediction.chains,
        "slot": slot, "position": position, "spread": prediction.spread.astype(float),
        "head_error": prediction.head_error.astype(float), "deviation": deviation, "ca": prediction.atom14[:, 1].astype(float),
        "rmsd": region_rmsds(prediction.kind, predicted, *args), "reach": reach,
        "cdr3_length": [int(is_cdr(np.array([n for n, _ in c.positions]), 3).sum()) for c in prediction.chains],
    }


def load(data_root: str, cache_dir: str = DEFAULT_CACHE, members_of: str | None = None, fast: bool = False) -> dict:
    """{"oof": records, "val": records, "oof_counts": ..., "weights": version}; predictions cached per weights version.
    members_of: predict every receptor with the shipped members of this kind (default: each kind with its own).
    fast: the shipped fast member set (weights.FAST_MEMBERS_FILE) instead of the default one."""
    numbered = numbered_entries(data_root, cache_dir)
    sets = packaged_member_sets(fast)
    predictor = Predictor(Ensemble(sets[members_of])) if members_of else Predictor(Ensemble(sets))
    path = os.path.join(cache_dir, f"predictions-{predictor.ensemble.version}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    oof, counts = oof_names(data_root, numbered)
    val = [name for name, (entry, _) in numbered.items() if entry.split == "val"]
    torch.set_num_threads(1)
    data = {"weights": predictor.ensemble.version, "oof_counts": counts,
            "oof": predicted_records(oof, numbered, predictor), "val": predicted_records(val, numbered, predictor)}
    with open(path, "wb") as handle:
        pickle.dump(data, handle)
    return data


if __name__ == "__main__":
    import sys

    loaded = load(sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "shared", "data"))
    print(loaded["oof_counts"], len(loaded["oof"]), len(loaded["val"]))
