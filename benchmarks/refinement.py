"""Refinement on the val split: seconds per model, models refined clean, and refined CDR RMSDs.

    python benchmarks/refinement.py                      # every val entry; 0.8.0's method on the antibodies too
    python benchmarks/refinement.py --baseline-limit 0   # today's refinement only

Times `Predictor.refine` (what `immunofold predict` runs: the geometry clean-up of the start, protonation by
`immunofold.protonation`, restrained Amber minimisation) on each val entry's unrefined ensemble prediction, one OpenMM thread, one model at a time.
In the same run, the first --baseline-limit val antibodies are also refined the way immunofold 0.8.0 did:
hydrogens through PDBFixer (OpenMM's Modeller, Reference platform), 0.8.0's rounds (a first one without the
torsion terms), 1 nm cutoff, every round minimised to convergence at 10 kJ/mol/nm (no early stop), with the
same restraints. RMSDs: ImmuneBuilder's metric (N, CA, C, CB; each chain on its own framework;
IMGT CDRs), mean over entries, as `immunofold evaluate`. Writes <out-dir>/refinement.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io as text_io
import json
import os
import random
import statistics
import sys
import time
import warnings
from collections import Counter

import numpy as np
import openmm
import torch
from pdbfixer import PDBFixer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info

from immunofold.constants import KINDS
from immunofold.data.sabdab import load_example, read_summary
from immunofold.ensemble import Ensemble
from immunofold.evaluate import number_entry, region_names, score_entry
from immunofold.io import to_pdb_string
from immunofold.prediction import Predictor
import immunofold.refine as refine_module
from immunofold.refine import SOFT_PROBLEM_KINDS, find_problems, minimised
from immunofold.weights import packaged_member_sets

# immunofold 0.8.0's minimisation: tolerance (kJ/mol/nm), rounds without torsion terms first, 1 nm cutoff, every
# round to convergence (no early stop), amber14-all.xml
BASELINE_TOLERANCE = 10.0
BASELINE_CONSTANTS = {"RESTRAINT_SCALES": (1.0, 1.0, 0.1, 0.01), "TORSION_K": (0.0, 1000.0, 1000.0, 1000.0),
                      "NONBONDED_CUTOFF": 1.0 * openmm.unit.nanometer, "EARLY_STOP_RMS_FORCE": 0.0,
                      "FORCE_FIELD": "amber14-all.xml"}


@contextlib.contextmanager
def constants_of_0_8_0():
    """immunofold.refine's minimisation constants set to 0.8.0's for the duration."""
    saved = {name: getattr(refine_module, name) for name in BASELINE_CONSTANTS}
    for name, value in BASELINE_CONSTANTS.items():
        setattr(refine_module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(refine_module, name, value)


def refine_as_0_8_0(pdb_string: str):
    """0.8.0's refinement of a PDB text (RefineResult): PDBFixer hydrogens, 0.8.0's minimisation rounds, cutoff and
    tolerance (10 kJ/mol/nm)."""
    fixer = PDBFixer(pdbfile=text_io.StringIO(pdb_string), platform=openmm.Platform.getPlatformByName("Reference"))
    fixer.removeHeterogens(keepWater=False)
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=0)
    random.seed(0)
    fixer.addMissingHydrogens(7.0)
    positions = np.array(fixer.positions.value_in_unit(openmm.unit.nanometer))
    with constants_of_0_8_0():
        return minimised(fixer.topology, positions, pdb_string, tolerance=BASELINE_TOLERANCE)


def summarise(rows: list[dict], kind: str) -> dict:
    ok = [r for r in rows if r["kind"] == kind]
    if not ok:
        return {}
    return {
        "n": len(ok),
        "refined": sum(r["refined"] for r in ok),
        "clean": sum(r["refined"] and not r.get("problems", {}) for r in ok),
        **{f"{kind}_per_model": round(float(np.mean([r.get("problems", {}).get(kind, 0) for r in ok])), 2)
           for kind in SOFT_PROBLEM_KINDS},
        "seconds_median": round(statistics.median(r["seconds"] for r in ok), 3),
        "seconds_mean": round(statistics.mean(r["seconds"] for r in ok), 3),
        "cpu_seconds_median": round(statistics.median(r["cpu_seconds"] for r in ok), 3),
        "rmsd": {name: round(float(np.mean([r[name] for r in ok if r.get(name) is not None])), 3)
                 for name in region_names(kind)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N entries only")
    parser.add_argument("--baseline-limit", type=int, default=69, help="antibodies refined the 0.8.0 way too")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args()

    torch.set_num_threads(1)
    predictor = Predictor(Ensemble(packaged_member_sets()))
    entries = [e for e in read_summary(args.data) if e.split == args.split][: args.limit]
    rows = {"unrefined": [], "refined": [], "refined as 0.8.0": []}
    baseline_left = args.baseline_limit
    started = time.time()
    for entry in entries:
        prediction = predictor.predict_numbered([(entry.name, entry.kind, number_entry(entry))])[0]
        truth = load_example(entry)
        rows["unrefined"].append({**score_entry(prediction, truth, False), "kind": entry.kind, "refined": False,
                                  "seconds": 0.0, "cpu_seconds": 0.0})
        start, cpu_start = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            refined = predictor.refine(prediction)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        problems = Counter(p.kind for p in find_problems(refined.to_pdb_string())) if refined.refined else Counter()
        rows["refined"].append({**score_entry(refined, truth, refined.refined), "kind": entry.kind,
                                "refined": refined.refined, "seconds": seconds, "cpu_seconds": cpu_seconds,
                                "problems": dict(problems)})
        if entry.kind == "antibody" and baseline_left > 0:
            baseline_left -= 1
            unrefined_pdb = to_pdb_string(prediction.unrefined_structure())
            start, cpu_start = time.perf_counter(), time.process_time()
            result = refine_as_0_8_0(unrefined_pdb)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            as_refined = dataclasses.replace(prediction, refined=result.refined,
                                             _refined_pdb=result.pdb_string if result.refined else None)
            rows["refined as 0.8.0"].append({**score_entry(as_refined, truth, result.refined), "kind": entry.kind,
                                             "refined": result.refined, "seconds": seconds, "cpu_seconds": cpu_seconds})
    summary = {label: {kind: summarise(r, kind) for kind in KINDS} for label, r in rows.items()}
    report = {"weights": predictor.ensemble.version, "split": args.split, "entries": len(entries),
              "wall_seconds": round(time.time() - started, 1), "summary": summary, "machine": machine_info()}
    markdown = _markdown(report)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "refinement.md"), "w") as handle:
        handle.write(markdown)
    with open(os.path.join(args.out_dir, "refinement.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    print(markdown)


def _markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"# Refinement ({report['split']} split, {report['entries']} entries, weights {report['weights']})",
        "",
        f"`python benchmarks/refinement.py`, {machine['cpu_count']} CPUs ({machine['cpu_model']}), one OpenMM thread, "
        f"load average at the start {machine['load_average_at_start']}; {report['wall_seconds']:.0f} s in all. "
        "Seconds: wall clock and CPU time (all threads of the process; steadier than wall time on a shared machine) of `Predictor.refine` on one unrefined ensemble prediction (the torch geometry clean-up of the start, protonation, restrained Amber "
        "minimisation rounds, each ending once the heavy atoms pass the geometry check and the RMS force is under "
        "100 kJ/mol/nm, or at convergence to 30; geometry check, PDB text). \"refined as 0.8.0\": the same models refined in the same "
        "run the way immunofold 0.8.0 did (PDBFixer hydrogens, a first round without torsion terms, 1 nm cutoff, every round minimised to "
        "convergence at 10 kJ/mol/nm, amber14-all.xml; its geometry check is today's, ~0.06 s faster per round than 0.8.0's). RMSD: mean Å over "
        "entries, N/CA/C/CB, each chain on its own framework, IMGT CDRs. Clean: `immunofold.refine.find_problems` finds "
        "nothing, not even the backbone outliers a refined model may keep and name in its REFINED remark (twisted "
        "peptides, |omega| 30-150°; backbone bond angles more than 15° from Engh & Huber's).",
        "",
        "| receptor | models | refined | of them clean | twisted peptides / model | angle outliers / model | wall s / model (median) | wall s / model (mean) | CPU s / model (median) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label in ("refined", "refined as 0.8.0"):
        for kind, row in report["summary"][label].items():
            if row:
                geometry = (f"{row['clean']} | {row['twisted_per_model']:.2f} | {row['angle_per_model']:.2f}"
                            if label == "refined" else "- | - | -")
                lines.append(f"| {kind} | {label} | {row['refined']} / {row['n']} | {geometry} | {row['seconds_median']:.2f} | "
                             f"{row['seconds_mean']:.2f} | {row['cpu_seconds_median']:.2f} |")
    lines += ["", "| receptor | region | unrefined | refined | refined as 0.8.0 |", "|---|---|--:|--:|--:|"]
    for kind in KINDS:
        unrefined = report["summary"]["unrefined"][kind]
        if not unrefined:
            continue
        refined = report["summary"]["refined"][kind]
        baseline = report["summary"]["refined as 0.8.0"][kind]
        for region, value in unrefined["rmsd"].items():
            old = f"{baseline['rmsd'][region]:.3f}" if baseline else "-"
            lines.append(f"| {kind} | {region} | {value:.3f} | {refined['rmsd'][region]:.3f} | {old} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
