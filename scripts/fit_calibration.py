"""Refit the error calibrator (immunofold.calibration) on the out-of-fold set and write
src/immunofold/weights/calibration.json and benchmarks/results/calibration_fit.md (with --fast, for the fast member
set: calibration-fast.json and calibration_fit_fast.md).

Usage: python scripts/fit_calibration.py [--data ../shared/data] [--cache /tmp/immunofold-calibration]
[--members-of KIND] [--fast]

The OOF set and its predictions come from scripts/calibration_data.py (the shipped ensemble, unrefined; cached);
with --members-of KIND, every receptor is predicted by the shipped members of that kind instead of its own kind's
(for a release in which some kind's members trained on the OOF rows: v0.8's TCR set holds data-r3, which did, so
v0.8 is fitted with `--members-of antibody`, v0.7's four members, and the parameters are applied to every kind's
set unchanged; benchmarks/error_calibration.py checks the result on val with the shipped sets). Receptors whose crystal framework is more than MAX_FRAMEWORK_RMSD Å from the prediction are left out of the fit.
The prior of the position offsets is chosen by 5-fold cross-validation over receptors of that set (held-out
negative log-likelihood per residue). Val is never fitted on: benchmarks/error_calibration.py scores the result there.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibration_data  # noqa: E402

from immunofold.calibration import FAST_FILE, PACKAGED_FILE, Calibrator, fit  # noqa: E402
from immunofold.constants import KINDS  # noqa: E402
from immunofold.metrics import error_spearman  # noqa: E402
from immunofold.weights import packaged_member_sets, weights_version  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REPORT = os.path.join(ROOT, "benchmarks", "results", "calibration_fit.md")
FOLDS = 5
POSITION_PRIORS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # log units; candidates for the position offsets' prior
# Å; a V-domain framework (conserved) this far from the prediction is a mis-traced or misnumbered reference:
# 3jcx (a 4.1 Å EM model, heavy framework 8.5 Å; the next OOF receptor 2.9 Å) alone held half the
# cross-validated negative log-likelihood of the v0.7 OOF set and drew the calibrator towards its deviations.
MAX_FRAMEWORK_RMSD = 4.0
LARGEST_SHOWN = 25  # position offsets listed in the report


def usable(records: list[dict]) -> tuple[list[dict], list[str]]:
    """(records whose every framework RMSD is at most MAX_FRAMEWORK_RMSD Å, names of the others)."""
    def ok(r):
        return all(v <= MAX_FRAMEWORK_RMSD for k, v in r["rmsd"].items() if k.endswith("fr"))
    return [r for r in records if ok(r)], [r["name"] for r in records if not ok(r)]


def cross_validated(records: list[dict], version: str, position_prior: float, folds: int = FOLDS,
                    seed: int = 0) -> list[np.ndarray]:
    """Calibrated errors of each record from a calibrator fitted without its fold (receptors split at random)."""
    order = np.random.default_rng(seed).permutation(len(records))
    errors: list = [None] * len(records)
    for k in range(folds):
        held = set(order[k::folds].tolist())
        calibrator = fit([r for i, r in enumerate(records) if i not in held], version, {}, position_prior=position_prior)
        for i in held:
            errors[i] = apply(calibrator, records[i])
    return errors


def negative_log_likelihood(records: list[dict], errors: list[np.ndarray]) -> float:
    """Mean over residues of the fit's loss, deviation² / error² + 2 log error, at the given errors."""
    deviation, error = np.concatenate([r["deviation"] for r in records]), np.concatenate(errors)
    keep = np.isfinite(deviation)
    return float(np.mean(deviation[keep] ** 2 / error[keep] ** 2 + 2 * np.log(error[keep])))


def choose_position_prior(records: list[dict], version: str) -> tuple[float, dict, list[str]]:
    """(the POSITION_PRIORS value of least cross-validated negative log-likelihood, its CV errors, markdown rows)."""
    lines = ["| position prior (log units) | CV negative log-likelihood per residue | CV error Spearman per structure "
             + " / ".join(KINDS) + " |", "|--:|--:|--:|"]
    best, errors = None, {}
    for prior in POSITION_PRIORS:
        errors[prior] = cross_validated(records, version, prior)
        nll = negative_log_likelihood(records, errors[prior])
        spearman = [np.nanmean([error_spearman(e, r["deviation"]) for r, e in zip(records, errors[prior]) if r["kind"] == kind])
                    for kind in KINDS]
        lines.append(f"| {prior:g} | {nll:.4f} | " + " / ".join(f"{s:.3f}" for s in spearman) + " |")
        print(lines[-1], flush=True)
        if best is None or nll < best[1]:
            best = (prior, nll)
    return best[0], errors, lines


def apply(calibrator: Calibrator, record: dict) -> np.ndarray:
    return calibrator.apply(record["kind"], record["slot"], record["position"], record["spread"], record["head_error"])


def main(argv: list[str] | None = None) -> int:
    parser = calibration_data.argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--members-of", choices=KINDS, help="predict every receptor with this kind's shipped members")
    args = parser.parse_args(argv)
    data = calibration_data.load(args.data, args.cache, args.members_of, args.fast)
    version = weights_version(packaged_member_sets(args.fast))  # the shipped ensemble, which the parameters are for
    shipped = "the shipped fast set's" if args.fast else "the shipped"
    predicted_by = (f"{shipped} {args.members_of} members ({data['weights']}) for every kind" if args.members_of
                    else ("the shipped fast set" if args.fast else "the shipped ensemble"))
    fitted_on = {
        "data": "../shared/data train rows of sources " + ", ".join(calibration_data.NEW_SOURCES)
        + " (updates 2 and 3), less those sharing a CDR3 with, or >= 95 % identical to, an older train entry of the "
        f"same kind; predicted, unrefined, by {predicted_by}, whose members never trained on them",
        "predicted_by": data["weights"],
        "oof_counts": data["oof_counts"],
    }
    records, dropped = usable(data["oof"])
    fitted_on["left_out"] = f"framework RMSD > {MAX_FRAMEWORK_RMSD:g} Å: " + (", ".join(dropped) or "none")
    prior, cv, prior_rows = choose_position_prior(records, version)
    calibrator = fit(records, version, fitted_on, position_prior=prior)
    path = os.path.join(ROOT, "src", "immunofold", FAST_FILE if args.fast else PACKAGED_FILE)
    with open(path, "w") as handle:
        handle.write(calibrator.to_json() + "\n")
    print(f"wrote {os.path.relpath(path)}")

    import error_calibration  # noqa: E402  (benchmarks/: the scores of the val benchmark)

    raw = [np.sqrt(r["spread"] ** 2 + r["head_error"] ** 2) for r in records]
    lines = [
        "# Error calibrator fit (out-of-fold set)",
        "",
        f"By `python scripts/fit_calibration.py{' --fast' if args.fast else ''}"
        f"{f' --members-of {args.members_of}' if args.members_of else ''}`, for weights "
        f"`{version}`. Fitted on {calibrator.fitted_on['receptors']} "
        f"receptors ({calibrator.fitted_on['residues']} residues with a real CA deviation): {fitted_on['data']}. "
        f"Left out, {fitted_on['left_out']}.",
        "",
        "| kind | new train rows | same CDR3 as older train | >= 95 % identical | kept |",
        "|---|--:|--:|--:|--:|",
        *(f"| {k} | {c['new']} | {c['same_cdr3']} | {c['identical']} | {c['kept']} |" for k, c in data["oof_counts"].items()),
        "",
        f"Prior of the position offsets, by {FOLDS}-fold cross-validation over receptors (the same folds for every "
        f"candidate; 0: no position offsets): chosen {prior:g}, the least held-out negative log-likelihood.",
        "",
        *prior_rows,
        "",
        f"Scores on the OOF set: raw = sqrt(spread² + head²); calibrated = {FOLDS}-fold cross-validated over receptors "
        "(each receptor's errors from a calibrator fitted without it), without and with position offsets. "
        "Val scores: benchmarks/results/error_calibration.md.",
        "",
        *error_calibration.score_table(records, {"raw": raw, "calibrated (CV), no positions": cv[0.0],
                                                 f"calibrated (CV), positions {prior:g}": cv[prior]}),
        "",
        "## Parameters",
        "",
        "```json",
        json.dumps({k: v for k, v in asdict(calibrator).items() if k != "position_offsets"}, indent=1),
        "```",
        "",
        f"Position offsets (log units; {len(calibrator.position_offsets)} kind-chain-position keys): the "
        f"{LARGEST_SHOWN} largest in size (all in src/immunofold/{PACKAGED_FILE}).",
        "",
        "| kind chain IMGT position | offset | error factor |",
        "|---|--:|--:|",
        *(f"| {k} | {v:+.3f} | {np.exp(v):.2f} |" for k, v in
          sorted(calibrator.position_offsets.items(), key=lambda kv: -abs(kv[1]))[:LARGEST_SHOWN]),
    ]
    with open(REPORT.replace(".md", "_fast.md") if args.fast else REPORT, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    raise SystemExit(main())
