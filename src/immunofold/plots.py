"""Error plots for batch runs (matplotlib, Agg backend; optional extra: pip install 'immunofold[plots]').

Per record: predicted error (Å) per residue along IMGT positions, one panel per chain, CDRs
shaded. Per batch: `overview.png` with the distribution of mean errors and CDR3 errors.
Plots are drawn from the per-record sidecar data, so they can be made (or remade) for
records finished in earlier runs. Files are written atomically.
"""

from __future__ import annotations

import os

from immunofold.constants import IMGT_CDRS
from immunofold.io import atomic_output

CDR_COLOURS = {1: "#f4c7c3", 2: "#c6dbef", 3: "#c7e9c0"}
KIND_COLOURS = {"antibody": "#1f77b4", "nanobody": "#ff7f0e", "tcr": "#2ca02c"}
OVERVIEW_FILE = "overview.png"
_PNG_METADATA = {"Software": None}  # no version string: the same plot gives the same bytes


class PlotsUnavailable(ImportError):
    """--plots without matplotlib."""


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or PlotsUnavailable with the install command."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable(
            "--plots needs matplotlib, which is not installed: pip install 'immunofold[plots]'"
        ) from None
    return plt


def _save(figure, path: str) -> None:
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, format="png", dpi=100, metadata=_PNG_METADATA)


def _imgt_number(label: str) -> int:
    digits = "".join(ch for ch in label if ch.isdigit())
    return int(digits) if digits else 0


def plot_record(data: dict, path: str) -> str:
    """Error per IMGT position for one record (a sidecar dict with 'chains'); returns path."""
    plt = require_matplotlib()
    chains = data["chains"]
    figure, axes = plt.subplots(len(chains), 1, figsize=(10, 2.6 * len(chains)), squeeze=False)
    top = max([max(c["error"]) if c["error"] else 0.0 for c in chains] + [1.0]) * 1.1
    for axis, chain in zip(axes[:, 0], chains):
        numbers = [_imgt_number(label) for label in chain["imgt"]]
        x = list(range(len(numbers)))
        for k, (lo, hi) in IMGT_CDRS.items():
            inside = [i for i, n in enumerate(numbers) if lo <= n <= hi]
            if inside:
                axis.axvspan(inside[0] - 0.5, inside[-1] + 0.5, color=CDR_COLOURS[k], zorder=0)
                axis.text((inside[0] + inside[-1]) / 2, top * 0.93, f"CDR{k}", ha="center", va="top", fontsize=8)
        axis.plot(x, chain["error"], color="black", linewidth=1.2, zorder=2)
        ticks = [i for i, label in enumerate(chain["imgt"]) if label.isdigit() and int(label) % 10 == 0]
        axis.set_xticks(ticks)
        axis.set_xticklabels([chain["imgt"][i] for i in ticks], fontsize=8)
        axis.set_xlim(-0.5, len(x) - 0.5)
        axis.set_ylim(0, top)
        axis.set_ylabel("error (Å)")
        axis.set_title(f"{data['name']} chain {chain['id']} ({chain['class']}, {chain['length']} residues)", fontsize=9)
    axes[-1, 0].set_xlabel("IMGT position")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return path


def plot_overview(rows: list[dict], path: str) -> str:
    """Distributions over a batch: mean error per record (by kind) and CDR3 error per chain."""
    plt = require_matplotlib()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = [k for k in KIND_COLOURS if any(r["kind"] == k for r in rows)]
    if rows:
        values = [[r["mean_error"] for r in rows if r["kind"] == k] for k in kinds]
        left.hist(values, bins=20, stacked=True, label=[f"{k} ({len(v)})" for k, v in zip(kinds, values)],
                  color=[KIND_COLOURS[k] for k in kinds])
        left.legend(fontsize=8)
    left.set_xlabel("mean predicted error per record (Å)")
    left.set_ylabel("records")
    left.set_title(f"{len(rows)} records")
    chain_ids = [c for c in ("H", "L", "A", "B") if any(c in r["cdr3_error"] for r in rows)]
    cdr3 = [[r["cdr3_error"][c] for r in rows if r["cdr3_error"].get(c) is not None] for c in chain_ids]
    if any(cdr3):
        right.boxplot(cdr3)
        right.set_xticks(range(1, len(chain_ids) + 1))
        right.set_xticklabels([f"{c}3" for c in chain_ids])
    right.set_ylabel("mean predicted CDR3 error (Å)")
    right.set_title("CDR3 error by chain")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return path


def write_plots(ok_rows: list[dict], stems: dict, records, store, folder: str) -> list[str]:
    """Per-record PNGs (drawn when missing or older than the record's result; removed for a record that has no
    model now) and the overview PNG (always remade); returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for record in records:
        data = store.load(record)  # a batch.RecordStore
        path = os.path.join(folder, f"{stems[record.index]}.png")
        if data is None or data.get("status") != "ok":
            if os.path.isfile(path):
                os.remove(path)  # the plot of a model this run removed or never made
            continue
        if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(store.path(record)):
            plot_record(data, path)
        paths.append(path)
    paths.append(plot_overview(ok_rows, os.path.join(folder, OVERVIEW_FILE)))
    return paths
