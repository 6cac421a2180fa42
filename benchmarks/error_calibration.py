"""How far to trust a model from its error estimate, on val (never fitted on): the raw estimate
sqrt(spread² + head²) against the calibrated one (immunofold.calibration), per kind.

Scores: per-structure error Spearman (per-residue error vs real CA deviation, mean over receptors); predicted CDR3
RMSD (RMS of the per-residue errors over IMGT 105-117) against the real CDR3 RMSD (N, CA, C, CB after superposing
the chain on its framework): Spearman across receptors, ROC AUC for flagging a real CDR3 RMSD above FLAG Å, and
calibration by quintile of predicted CDR3 RMSD (mean real / mean predicted). Writes
benchmarks/results/error_calibration.md and .png (reliability diagram); the markdown printed is the file's content.

Usage: python benchmarks/error_calibration.py [--data ../shared/data] [--cache /tmp/immunofold-calibration]
[--previous calibration.json] [--calibrator calibration.json] (the shipped ensemble's unrefined val predictions, made once by
scripts/calibration_data.py and cached; --previous adds an earlier calibrator's file, e.g. from `git show`, as a
third estimate).
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from common import RESULTS_DIR  # noqa: E402

from immunofold.calibration import Calibrator, borrowed_calibrators, packaged_calibrator  # noqa: E402
from immunofold.weights import packaged_member_sets  # noqa: E402
from immunofold.constants import KIND_CHAIN_IDS, KINDS  # noqa: E402
from immunofold.metrics import error_spearman, roc_auc  # noqa: E402

FLAG = 4.0  # Å real CDR3 RMSD a user wants flagged
QUINTILES = 5
CALIBRATED_WITHIN = 0.25  # a quintile is calibrated when mean real / mean predicted is within 1 ± this
MEANING_BINS = (0.0, 1.5, 2.5, 3.5, 5.0, float("inf"))  # Å predicted CDR3 RMSD, for "what an estimate means"


def raw_errors(records: list[dict]) -> list[np.ndarray]:
    """The uncalibrated estimate sqrt(spread² + head²) [N] Å of each record."""
    return [np.sqrt(r["spread"] ** 2 + r["head_error"] ** 2) for r in records]


def cdr3_pairs(records: list[dict], errors: list[np.ndarray], kind: str, chain_id: str | None = None) -> np.ndarray:
    """[n, 2] (predicted CDR3 RMSD = RMS error over the CDR3, real CDR3 RMSD) Å of each CDR3 of `kind`
    (of chain `chain_id`, or every chain)."""
    pairs = []
    for record, error in zip(records, errors):
        if record["kind"] != kind:
            continue
        for slot, cid in enumerate(KIND_CHAIN_IDS[kind]):
            loop = (record["slot"] == slot) & (record["position"] >= 105) & (record["position"] <= 117)
            if (chain_id in (None, cid)) and loop.any() and f"{cid}3" in record["rmsd"]:
                pairs.append((float(np.sqrt(np.mean(error[loop] ** 2))), record["rmsd"][f"{cid}3"]))
    return np.array(pairs).reshape(-1, 2)


def quintiles(pairs: np.ndarray) -> list[dict]:
    """Receptors sorted by predicted CDR3 RMSD in QUINTILES near-equal groups: n, mean predicted, mean real (Å)."""
    groups = np.array_split(pairs[np.argsort(pairs[:, 0])], QUINTILES) if len(pairs) >= QUINTILES else []
    return [{"n": len(g), "predicted": float(g[:, 0].mean()), "real": float(g[:, 1].mean())} for g in groups]


def scores(records: list[dict], errors: list[np.ndarray], kind: str) -> dict:
    """Error Spearman per structure (mean), and for all CDR3s of the kind: Spearman across receptors, ROC AUC
    for real RMSD > FLAG, quintiles calibrated (count), worst quintile ratio real / predicted."""
    per_structure = [error_spearman(e, r["deviation"]) for r, e in zip(records, errors) if r["kind"] == kind]
    pairs = cdr3_pairs(records, errors, kind)
    groups = quintiles(pairs)
    ratios = [g["real"] / g["predicted"] for g in groups]
    return {
        "n": len(per_structure),
        "spearman": float(np.nanmean(per_structure)),
        "cdr3_spearman": error_spearman(pairs[:, 0], pairs[:, 1]),
        "auc": roc_auc(pairs[:, 0], pairs[:, 1] > FLAG),
        "flagged": int((pairs[:, 1] > FLAG).sum()),
        "loops": len(pairs),
        "calibrated": sum(abs(x - 1) <= CALIBRATED_WITHIN for x in ratios),
        "worst_ratio": max(ratios, key=lambda x: abs(x - 1)) if ratios else float("nan"),
    }


def score_table(records: list[dict], estimates: dict[str, list[np.ndarray]]) -> list[str]:
    """Markdown rows: one per kind and estimate."""
    lines = [f"| kind | estimate | error Spearman per structure | CDR3 Spearman across receptors | ROC AUC CDR3 > {FLAG:.0f} Å "
             f"(loops above / all) | quintiles within {CALIBRATED_WITHIN:.0%} | worst quintile real / predicted |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for kind in KINDS:
        for label, errors in estimates.items():
            s = scores(records, errors, kind)
            lines.append(f"| {kind} ({s['n']}) | {label} | {s['spearman']:.3f} | {s['cdr3_spearman']:.3f} | "
                         f"{s['auc']:.3f} ({s['flagged']}/{s['loops']}) | {s['calibrated']}/{QUINTILES} | {s['worst_ratio']:.2f} |")
    return lines


def reliability_plot(records: list[dict], estimates: dict[str, list[np.ndarray]], path: str) -> None:
    """Predicted vs real CDR3 RMSD per kind: each loop, quintile means, the diagonal; one colour per estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(KINDS), figsize=(4.2 * len(KINDS), 4.2))
    colours = {"raw": "0.6", "previous calibrated": "tab:orange", "calibrated": "tab:blue"}
    for axis, kind in zip(axes, KINDS):
        top = 1.0
        for label, errors in estimates.items():
            colour = colours[label]
            pairs = cdr3_pairs(records, errors, kind)
            groups = quintiles(pairs)
            axis.scatter(pairs[:, 0], pairs[:, 1], s=8, color=colour, alpha=0.5)
            axis.plot([g["predicted"] for g in groups], [g["real"] for g in groups], "o-", color=colour, label=f"{label}, quintile means")
            top = max(top, pairs.max())
        axis.plot([0, top], [0, top], "k--", lw=0.8)
        axis.fill_between([0, top], [0, top * (1 - CALIBRATED_WITHIN)], [0, top * (1 + CALIBRATED_WITHIN)], color="k", alpha=0.07)
        axis.set(title=f"val {kind}: CDR3 loops", xlabel="predicted CDR3 RMSD (Å)", ylabel="real CDR3 RMSD (Å)",
                 xlim=(0, top), ylim=(0, top))
        axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def meaning_table(records: list[dict], errors: list[np.ndarray]) -> list[str]:
    """Markdown rows: real CDR3 RMSD (mean, median, share above FLAG) per bin of predicted CDR3 RMSD, all kinds."""
    pairs = np.concatenate([cdr3_pairs(records, errors, kind) for kind in KINDS])
    lines = ["| predicted CDR3 RMSD (Å) | loops | real mean | real median | real above 4 Å |", "|---|--:|--:|--:|--:|"]
    for low, high in zip(MEANING_BINS[:-1], MEANING_BINS[1:]):
        real = pairs[(pairs[:, 0] >= low) & (pairs[:, 0] < high), 1]
        if len(real):
            name = f"{low:.1f}-{high:.1f}" if np.isfinite(high) else f">= {low:.1f}"
            lines.append(f"| {name} | {len(real)} | {real.mean():.2f} | {np.median(real):.2f} | {np.mean(real > FLAG):.0%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import calibration_data

    parser = calibration_data.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", help="report path (default: benchmarks/results/error_calibration.md, with --fast "
                        "error_calibration_fast.md)")
    parser.add_argument("--previous", help="an earlier calibration.json to score beside the shipped one")
    parser.add_argument("--calibrator", help="score this calibration.json instead of the shipped one, whatever weights "
                        "it was fitted for (does a calibrator carry over to new weights? set $IMMUNOFOLD_WEIGHTS to them)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(RESULTS_DIR, "error_calibration_fast.md" if args.fast else "error_calibration.md")
    data = calibration_data.load(args.data, args.cache, fast=args.fast)
    if args.calibrator:
        with open(args.calibrator) as handle:
            calibrator = Calibrator.from_json(handle.read())
    else:
        calibrator = packaged_calibrator(data["weights"])
    if calibrator is None:
        raise SystemExit(f"no shipped calibrator for weights {data['weights']}: run scripts/fit_calibration.py")
    records = data["val"]
    # kinds the fast set shares with the default one get the default's calibrator, as prediction does
    borrowed = {} if args.calibrator else borrowed_calibrators(packaged_member_sets(args.fast))
    calibrated = [borrowed.get(r["kind"], calibrator).apply(r["kind"], r["slot"], r["position"], r["spread"],
                                                            r["head_error"]) for r in records]
    estimates = {"raw": raw_errors(records), "calibrated": calibrated}
    if args.previous:
        with open(args.previous) as handle:
            previous = Calibrator.from_json(handle.read())
        estimates = {"raw": estimates["raw"], "previous calibrated": [previous.apply(r["kind"], r["slot"], r["position"],
                     r["spread"], r["head_error"]) for r in records], "calibrated": calibrated}
    png = os.path.splitext(args.out)[0] + ".png"
    reliability_plot(records, estimates, png)
    lines = [
        "# Error estimate on val: raw vs calibrated",
        "",
        f"By `python benchmarks/error_calibration.py{' --fast' if args.fast else ''}`: weights `{data['weights']}`, "
        "unrefined, val split (never fitted "
        "on). Raw: sqrt(spread² + head²) (v0.7's B-factor column); calibrated: `immunofold.calibration` fitted on the "
        "out-of-fold set (benchmarks/results/calibration_fit.md). Predicted CDR3 RMSD: RMS of the per-residue errors "
        "over IMGT 105-117, as `prediction.cdr3_errors()` gives it; real: CDR3 RMSD over N, CA, C, CB after superposing "
        f"the chain on its framework. A quintile is calibrated when its mean real RMSD is within {CALIBRATED_WITHIN:.0%} "
        "of its mean predicted. CDR3 columns pool all CDR3 loops of a kind (antibody H3 + L3, TCR A3 + B3).",
        *([f"Calibrated here: the parameters of `{args.calibrator}`, fitted for weights "
           f"`{calibrator.weights_version}`, applied unchanged."] if args.calibrator else []),
        *([f"Previous calibrated: the calibrator of `--previous` ({previous.fitted_on.get('receptors')} receptors, "
           f"{len(previous.position_offsets)} position offsets)."] if args.previous else []),
        "",
        *score_table(records, estimates),
        "",
        f"![reliability diagram]({os.path.basename(png)})",
        "",
        "## What a calibrated predicted CDR3 RMSD means (val, all kinds)",
        "",
        *meaning_table(records, calibrated),
    ]
    for kind in KINDS:
        for cid in KIND_CHAIN_IDS[kind]:
            pairs = cdr3_pairs(records, calibrated, kind, cid)
            lines += ["", f"## {kind} {cid}3, calibrated, by quintile of predicted CDR3 RMSD", "",
                      "| n | mean predicted (Å) | mean real (Å) | real / predicted |", "|--:|--:|--:|--:|"]
            lines += [f"| {g['n']} | {g['predicted']:.2f} | {g['real']:.2f} | {g['real'] / g['predicted']:.2f} |" for g in quintiles(pairs)]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
