"""Evaluate predictions against experimental structures of a SAbDab/STCRDab-like folder.

Every entry is predicted from its summary.tsv sequences alone and compared with its structure in
ImmuneBuilder's convention (see `metrics`). Writes a per-entry CSV and a JSON of means per kind.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from immunofold.constants import KIND_CHAIN_IDS, KINDS
from immunofold.data.sabdab import Entry, load_example, read_summary
from immunofold.io import read_chains
from immunofold.metrics import ca_deviation, count_chain_breaks, error_spearman, region_rmsds
from immunofold.prediction import Prediction, Predictor
from immunofold.sequences import KIND_SLOTS, InputError, NumberedChain, number_receptor

EVAL_BATCH_SIZE = 16


def region_names(kind: str) -> list[str]:
    return [f"{cid}{region}" for cid in KIND_CHAIN_IDS[kind] for region in ("1", "2", "3", "fr")]


def refined_atom14(prediction: Prediction) -> np.ndarray:
    """Heavy-atom coordinates [N, 14, 3] of the refined model, in the prediction's residue order."""
    chains = read_chains(prediction.to_pdb_string(), list(prediction.chain_ids))
    return np.concatenate([chains[cid].atom14 for cid in prediction.chain_ids])


def score_entry(prediction: Prediction, truth: dict, refined: bool) -> dict:
    """Region RMSDs and error Spearman of one prediction against its experimental example."""
    predicted = torch.as_tensor(refined_atom14(prediction) if refined else prediction.atom14, dtype=torch.float32)
    keys = [(slot, pos) for slot, chain in enumerate(prediction.chains) for pos in chain.positions]
    truth_keys = [(slot, pos) for slot, chain_positions in enumerate(truth["positions"]) for pos in chain_positions]
    truth_index = {key: i for i, key in enumerate(truth_keys)}
    common = [(i, truth_index[key]) for i, key in enumerate(keys) if key in truth_index]
    pred_idx = torch.tensor([i for i, _ in common])
    true_idx = torch.tensor([j for _, j in common])
    args = (
        truth["atom14"][true_idx], truth["atom_mask"][true_idx], truth["chain_slot"][true_idx], truth["imgt_position"][true_idx]
    )
    row = region_rmsds(prediction.kind, predicted[pred_idx], *args)
    deviation = ca_deviation(predicted[pred_idx], *args).numpy()
    row["error_spearman"] = error_spearman(prediction.error[pred_idx.numpy()], deviation)
    row["error_spearman_spread"] = error_spearman(prediction.spread[pred_idx.numpy()], deviation)
    row["error_spearman_head"] = error_spearman(prediction.head_error[pred_idx.numpy()], deviation)
    for cid, predicted_cdr3 in prediction.cdr3_errors().items():
        row[f"{cid}3_predicted_error"] = predicted_cdr3
    row["matched_residues"] = len(common)
    row["truth_chain_breaks"] = count_chain_breaks(truth["atom14"], truth["atom_mask"], truth["chain_slot"])
    return row


def evaluate(
    data_root: str,
    split: str,
    predictor: Predictor,
    refine: bool = False,
    kinds: tuple[str, ...] = KINDS,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """(summary JSON dict, per-entry rows) for every entry of `split` under `data_root`."""
    entries = [e for e in read_summary(data_root) if e.split == split and e.kind in kinds][:limit]
    rows: list[dict] = []
    started = time.time()
    bar = tqdm(total=len(entries), desc=f"evaluate {split}", disable=not progress, unit="entry")
    for start in range(0, len(entries), EVAL_BATCH_SIZE):
        chunk = entries[start : start + EVAL_BATCH_SIZE]
        rows += _evaluate_chunk(chunk, predictor, refine)
        bar.update(len(chunk))
    bar.close()
    summary = summarise(rows, predictor.ensemble.version, refine)
    summary["split"] = split
    summary["seconds"] = round(time.time() - started, 1)
    return summary, rows


def _evaluate_chunk(entries: list[Entry], predictor: Predictor, refine: bool) -> list[dict]:
    items, truths, rows = [], [], []
    for entry in entries:
        try:
            numbered, truth = number_entry(entry), load_example(entry)
        except InputError as error:
            rows.append({"name": entry.name, "kind": entry.kind, "status": f"skipped: {error}"})
            continue
        items.append((entry.name, entry.kind, numbered))
        truths.append(truth)
    if not items:
        return rows
    for prediction, truth in zip(predictor.predict_numbered(items), truths):
        if refine:
            prediction = predictor.refine(prediction)
        row = {"name": prediction.name, "kind": prediction.kind, "status": "ok", "refined": prediction.refined}
        row.update(score_entry(prediction, truth, refine and prediction.refined))
        rows.append(row)
    return rows


def number_entry(entry: Entry) -> list[NumberedChain]:
    """The entry's summary.tsv sequences numbered as for prediction; raises InputError."""
    slots = {slot: sequence for (slot, _), sequence in zip(KIND_SLOTS[entry.kind], entry.sequences)}
    return number_receptor(entry.kind, slots, entry.name)


def summarise(rows: list[dict], weights_version: str, refined: bool) -> dict:
    """Means over entries per kind, in the documented results.json layout."""
    summary: dict = {"weights": weights_version, "refined": refined}
    for kind in KINDS:
        ok = [r for r in rows if r["kind"] == kind and r["status"] == "ok"]
        rmsd = {name: _mean([r.get(name) for r in ok]) for name in region_names(kind)}
        summary[kind] = {"n": len(ok), "rmsd": rmsd, "error_spearman": _mean([r.get("error_spearman") for r in ok])}
        for source in ("spread", "head"):
            summary[kind][f"error_spearman_{source}"] = _mean([r.get(f"error_spearman_{source}") for r in ok])
        summary[kind]["cdr3_error_spearman"] = {  # across entries: does a high predicted CDR3 error flag a bad CDR3?
            f"{cid}3": _rounded(error_spearman(_column(ok, f"{cid}3_predicted_error"), _column(ok, f"{cid}3")))
            for cid in KIND_CHAIN_IDS[kind]
        }
    summary["skipped"] = [r["status"] for r in rows if r["status"] != "ok"]
    return summary


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def _rounded(value: float) -> float | None:
    return round(value, 3) if np.isfinite(value) else None


def _mean(values: list) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return round(float(np.mean(finite)), 3) if finite else None


def write_results(summary: dict, rows: list[dict], json_path: str, csv_path: str | None = None) -> str:
    """Write the JSON summary and the per-entry CSV (default: beside the JSON, .csv); returns the CSV path."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as handle:
        json.dump(summary, handle, indent=2)
    csv_path = csv_path or os.path.splitext(json_path)[0] + ".csv"
    columns = ["name", "kind", "status", "refined", "matched_residues", "error_spearman"]
    columns += sorted({k for r in rows for k in r} - set(columns))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return csv_path


def print_summary(summary: dict, echo: Callable[[str], None] = print) -> None:
    echo(f"weights {summary['weights']}, refined={summary['refined']}, split {summary.get('split')}")
    for kind in KINDS:
        block = summary[kind]
        if block["n"]:
            regions = ", ".join(f"{k} {v:.2f}" for k, v in block["rmsd"].items() if v is not None)
            ranking = ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in block["cdr3_error_spearman"].items())
            echo(
                f"  {kind:9s} n={block['n']:3d}  RMSD (Å): {regions}; error Spearman {block['error_spearman']}"
                f" (per residue), {ranking} (CDR3 error across entries)"
            )
