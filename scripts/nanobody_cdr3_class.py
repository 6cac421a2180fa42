"""Issue 22 item 2, as far as a classifier goes: can a nanobody's sequence tell a CDR3 that stands out of the domain
(NbFrame "Extended") from one folded over framework 2 ("Kinked")?

A logistic regression on the CDR3 length and the VHH hallmark residues (IMGT 42, 49, 50, 52) plus IMGT 118 is
trained on ../shared/data/aux/nbframe_cdr3_classes.tsv, leaving out every row >= 95 % identical to a val entry or
sharing a val entry's CDR3. Reported: 5-fold cross-validated accuracy on those rows, and accuracy on the val
nanobodies against the class of their crystal structure, read as Extended when the CDR3 reaches more than
STANDING_OUT_REACH Å from the framework centroid (immunofold.metrics.cdr3_reach; docs/training-log.md). Writes
benchmarks/results/nanobody_cdr3_class.md.

Usage: python scripts/nanobody_cdr3_class.py [--data ../shared/data] [--cache /tmp/immunofold-calibration]
"""

from __future__ import annotations

import csv
import os
import pickle
import sys

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibration_data  # noqa: E402

from immunofold.metrics import STANDING_OUT_REACH  # noqa: E402
from immunofold.sequences import InputError, number_receptor  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
HALLMARKS = {42: "FY", 49: "EQ", 50: "RL", 52: "FGLW", 118: "W"}  # IMGT position -> residues given their own feature
RIDGE = 1.0


def features(chain) -> np.ndarray:
    """[F] CDR3 length (centred on 15, per 5 residues), one-hot hallmark residues, intercept."""
    residues = {n: aa for aa, (n, ins) in zip(chain.sequence, chain.positions) if not ins}
    length = sum(105 <= n <= 117 for n, _ in chain.positions)
    row = [(length - 15) / 5]
    for position, letters in HALLMARKS.items():
        row += [float(residues.get(position) == aa) for aa in letters]
    return np.array(row + [1.0])


def fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """L2-penalised (RIDGE, intercept free) logistic regression weights [F]."""
    def loss(w):
        z = x @ w
        p = 1 / (1 + np.exp(-z))
        penalty = 0.5 * RIDGE * np.sum(w[:-1] ** 2)
        value = np.sum(np.logaddexp(0, z) - y * z) + penalty
        grad = x.T @ (p - y) + RIDGE * np.append(w[:-1], 0)
        return value, grad
    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def probability(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(x @ w)))


def labelled_rows(data_root: str, cache_dir: str) -> list[tuple[str, object, int]]:
    """(pdb, numbered chain, 1 if Extended) of every NbFrame row that numbers (cached)."""
    path = os.path.join(cache_dir, "nbframe.pkl")
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return pickle.load(handle)
    rows = []
    with open(os.path.join(data_root, "aux", "nbframe_cdr3_classes.tsv"), newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            try:
                chain = number_receptor("nanobody", {"heavy": row["sequence"]}, row["structure_id"])[0]
            except InputError as error:
                print(f"skipped {error}")
                continue
            rows.append((row["pdb"], chain, int(row["cdr3_class"] == "Extended")))
    with open(path, "wb") as handle:
        pickle.dump(rows, handle)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = calibration_data.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    data = calibration_data.load(args.data, args.cache)
    numbered = calibration_data.numbered_entries(args.data, args.cache)
    rows = labelled_rows(args.data, args.cache)
    val = [(e, c) for e, c in numbered.values() if e.split == "val" and e.kind in ("antibody", "nanobody")]
    val_cdr3 = set().union(*(calibration_data.cdr3_keys(e.kind, c) for e, c in val))
    identity = calibration_data.max_identity([[c] for _, c, _ in rows], [c[:1] for e, c in val if e.kind == "nanobody"])
    kept = [(c, y) for (_, c, y), ident in zip(rows, identity)
            if ident < calibration_data.MAX_IDENTITY and not (calibration_data.cdr3_keys("nanobody", [c]) & val_cdr3)]
    x, y = np.array([features(c) for c, _ in kept]), np.array([y for _, y in kept], dtype=float)

    order = np.random.default_rng(0).permutation(len(y))
    correct = 0
    for k in range(5):
        test = order[k::5]
        train = np.setdiff1d(order, test)
        correct += ((probability(fit_logistic(x[train], y[train]), x[test]) > 0.5) == y[test]).sum()
    w = fit_logistic(x, y)

    val_records = [r for r in data["val"] if r["kind"] == "nanobody" and r["reach"][0] is not None]
    val_x = np.array([features(r["chains"][0]) for r in val_records])
    val_y = np.array([r["reach"][0] > STANDING_OUT_REACH for r in val_records])
    val_p = probability(w, val_x)
    cdr3_rmsd = np.array([r["rmsd"]["H3"] for r in val_records])
    predicted_ext = val_p > 0.5
    lines = [
        "# Nanobody CDR3 class from sequence (NbFrame labels)",
        "",
        f"By `python scripts/nanobody_cdr3_class.py`. Logistic regression (ridge {RIDGE}) on CDR3 length and IMGT "
        f"{', '.join(map(str, HALLMARKS))} residues, trained on {len(y)} NbFrame rows ({int(y.sum())} Extended) of "
        f"{len(rows)} numbered: {len(rows) - len(y)} left out as >= 95 % identical to a val entry or sharing its CDR3.",
        "",
        f"- 5-fold cross-validated accuracy on NbFrame rows: {correct / len(y):.3f} (majority class {max(y.mean(), 1 - y.mean()):.3f}).",
        f"- Val nanobodies ({len(val_y)}; crystal class Extended when CDR3 reach > {STANDING_OUT_REACH:.0f} Å: {int(val_y.sum())}): "
        f"accuracy {np.mean(predicted_ext == val_y):.3f} (majority class {max(val_y.mean(), 1 - val_y.mean()):.3f}); "
        f"{int((predicted_ext & val_y).sum())} of {int(val_y.sum())} standing-out loops predicted Extended, "
        f"{int((predicted_ext & ~val_y).sum())} of {int((~val_y).sum())} others.",
        f"- Real val CDR3 RMSD: predicted Extended {cdr3_rmsd[predicted_ext].mean():.2f} Å (n={predicted_ext.sum()}), "
        f"predicted Kinked {cdr3_rmsd[~predicted_ext].mean():.2f} Å (n={(~predicted_ext).sum()}); standing out "
        f"{cdr3_rmsd[val_y].mean():.2f} Å, the rest {cdr3_rmsd[~val_y].mean():.2f} Å.",
        "",
        "Weights (features: length, " + ", ".join(f"{p}{aa}" for p, letters in HALLMARKS.items() for aa in letters)
        + ", intercept): " + ", ".join(f"{v:.2f}" for v in w),
    ]
    path = os.path.join(ROOT, "benchmarks", "results", "nanobody_cdr3_class.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
