"""How far to trust a model from its predicted CDR3 error: bins val entries by predicted CDR3 error
(mean error estimate over the chain's IMGT 105-117 residues) and reports the real CDR3 RMSD in each bin.

Reads the per-entry CSV that `immunofold evaluate` writes (default benchmarks/results/val.csv) and writes
benchmarks/results/error_calibration.md; the markdown printed is the file's content.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR  # noqa: E402

from immunofold.constants import KIND_CHAIN_IDS, KINDS  # noqa: E402
from immunofold.metrics import error_spearman  # noqa: E402

BIN_EDGES = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, float("inf"))  # Å, predicted mean CDR3 error
FAR_OFF = 5.0  # Å CDR3 RMSD counted as "far off"


def read_rows(csv_path: str) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["status"] == "ok"]


def calibration_table(rows: list[dict], kind: str, chain_id: str) -> tuple[list[dict], float]:
    """(one dict per non-empty predicted-error bin: n, mean / median / max real CDR3 RMSD (Å), count above FAR_OFF;
    Spearman correlation of predicted error and real RMSD across entries)."""
    pairs = [
        (float(r[f"{chain_id}3_predicted_error"]), float(r[f"{chain_id}3"]))
        for r in rows
        if r["kind"] == kind and r.get(f"{chain_id}3_predicted_error") and r.get(f"{chain_id}3")
    ]
    table = []
    for low, high in zip(BIN_EDGES[:-1], BIN_EDGES[1:]):
        real = np.array([rmsd for predicted, rmsd in pairs if low <= predicted < high])
        if not len(real):
            continue
        table.append({
            "predicted": f"{low:.1f}-{high:.1f}" if np.isfinite(high) else f">= {low:.1f}",
            "n": len(real),
            "mean": round(float(real.mean()), 2),
            "median": round(float(np.median(real)), 2),
            "max": round(float(real.max()), 2),
            "far_off": int((real > FAR_OFF).sum()),
        })
    spearman = error_spearman([predicted for predicted, _ in pairs], [rmsd for _, rmsd in pairs])
    return table, round(spearman, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=os.path.join(RESULTS_DIR, "val.csv"), help="per-entry CSV of `immunofold evaluate`")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "error_calibration.md"))
    args = parser.parse_args(argv)
    rows = read_rows(args.csv)
    summary_path = os.path.splitext(args.csv)[0] + ".json"
    with open(summary_path) as handle:
        summary = json.load(handle)
    lines = [
        "# Predicted CDR3 error vs real CDR3 RMSD, per entry",
        "",
        f"From `{os.path.relpath(args.csv)}` (`immunofold evaluate`, split {summary.get('split')}, weights "
        f"`{summary['weights']}`, refined={summary['refined']}) by `python benchmarks/error_calibration.py`.",
        "",
        "Predicted CDR3 error: the mean per-residue error estimate (Å, expected CA deviation) over the chain's "
        "IMGT 105-117 residues, as `prediction.cdr3_errors()` and a batch's `summary.csv` give it. Real: CDR3 "
        "RMSD over N, CA, C, CB after superposing the chain on its framework (ImmuneBuilder's convention). "
        f"Far off: real CDR3 RMSD above {FAR_OFF:.0f} Å.",
    ]
    for kind in KINDS:
        for chain_id in KIND_CHAIN_IDS[kind]:
            table, spearman = calibration_table(rows, kind, chain_id)
            if not table:
                continue
            lines += ["", f"## {kind} {chain_id}3 (Spearman across entries {spearman})", "",
                      "| predicted CDR3 error (Å) | n | real mean | median | max | far off |", "|---|--:|--:|--:|--:|--:|"]
            lines += [f"| {b['predicted']} | {b['n']} | {b['mean']} | {b['median']} | {b['max']} | {b['far_off']} |" for b in table]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
