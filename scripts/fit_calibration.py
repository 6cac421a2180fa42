"""Refit the error calibrator (immunofold.calibration) on the out-of-fold set and write
src/immunofold/weights/calibration.json and benchmarks/results/calibration_fit.md.

Usage: python scripts/fit_calibration.py [--data ../shared/data] [--cache /tmp/immunofold-calibration]

The OOF set and its predictions come from scripts/calibration_data.py (the shipped ensemble, unrefined; cached).
Val is never fitted on: benchmarks/error_calibration.py scores the result there.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibration_data  # noqa: E402

from immunofold.calibration import PACKAGED_FILE, Calibrator, fit  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
REPORT = os.path.join(ROOT, "benchmarks", "results", "calibration_fit.md")
FOLDS = 5


def cross_validated(records: list[dict], version: str, folds: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Calibrated errors of each record from a calibrator fitted without its fold (receptors split at random)."""
    order = np.random.default_rng(seed).permutation(len(records))
    errors: list = [None] * len(records)
    for k in range(folds):
        held = set(order[k::folds].tolist())
        calibrator = fit([r for i, r in enumerate(records) if i not in held], version, {})
        for i in held:
            errors[i] = apply(calibrator, records[i])
    return errors


def apply(calibrator: Calibrator, record: dict) -> np.ndarray:
    return calibrator.apply(record["kind"], record["slot"], record["position"], record["spread"], record["head_error"])


def main(argv: list[str] | None = None) -> int:
    args = calibration_data.argument_parser(__doc__.splitlines()[0]).parse_args(argv)
    data = calibration_data.load(args.data, args.cache)
    fitted_on = {
        "data": "../shared/data train rows of sources " + ", ".join(calibration_data.NEW_SOURCES)
        + " (updates 2 and 3; no shipped member saw them), less those sharing a CDR3 with, or >= 95 % identical "
        "to, an older train entry of the same kind; shipped ensemble, unrefined",
        "oof_counts": data["oof_counts"],
    }
    calibrator = fit(data["oof"], data["weights"], fitted_on)
    path = os.path.join(ROOT, "src", "immunofold", PACKAGED_FILE)
    with open(path, "w") as handle:
        handle.write(calibrator.to_json() + "\n")
    print(f"wrote {os.path.relpath(path)}")

    import error_calibration  # noqa: E402  (benchmarks/: the scores of the val benchmark)

    cv = cross_validated(data["oof"], data["weights"])
    raw = [np.sqrt(r["spread"] ** 2 + r["head_error"] ** 2) for r in data["oof"]]
    lines = [
        "# Error calibrator fit (out-of-fold set)",
        "",
        f"By `python scripts/fit_calibration.py`, weights `{data['weights']}`. Fitted on {calibrator.fitted_on['receptors']} "
        f"receptors ({calibrator.fitted_on['residues']} residues with a real CA deviation): {fitted_on['data']}.",
        "",
        "| kind | new train rows | same CDR3 as older train | >= 95 % identical | kept |",
        "|---|--:|--:|--:|--:|",
        *(f"| {k} | {c['new']} | {c['same_cdr3']} | {c['identical']} | {c['kept']} |" for k, c in data["oof_counts"].items()),
        "",
        f"Scores on the OOF set: raw = sqrt(spread² + head²); calibrated = {FOLDS}-fold cross-validated over receptors "
        "(each receptor's errors from a calibrator fitted without it). Val scores: benchmarks/results/error_calibration.md.",
        "",
        *error_calibration.score_table(data["oof"], {"raw": raw, "calibrated (CV)": cv}),
        "",
        "## Parameters",
        "",
        "```json",
        calibrator.to_json(),
        "```",
    ]
    with open(REPORT, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    raise SystemExit(main())
