"""Physical geometry of unrefined models: peptide bonds, clashes, cis peptides and D-amino acids.

    python benchmarks/geometry.py                          # shipped weights, val split of ../shared/data
    python benchmarks/geometry.py --weights a.safetensors b.safetensors ... --out-name geometry_candidate

Predicts every entry of the split from its sequences (as `immunofold evaluate` does) and checks the unrefined
consensus (as returned by default, and after `immunofold.cleanup.clean_geometry`: `Ensemble(clean=True)`) and each
member (ranked per entry, closest to the mean first; members are not cleaned) with `immunofold.refine.find_problems`,
the check that decides whether a refined model is accepted: peptide bonds C(i)-N(i+1) outside 1.33 ± 0.1 Å,
heavy atoms of different residues closer than 2.0 Å (bonded pairs excluded), non-proline cis peptides,
twisted peptides (|omega| 30-150°), backbone bond angles more than 15° from Engh & Huber's, D-amino acids. Also
reports how far peptide bonds are from 1.329 Å. Refined models have none of the first, third and last kinds by
construction (refinement is retried or reported failed); twisted peptides and angle outliers they may keep are
named in their REFINED remark (benchmarks/refinement.py counts them). Also times the clean-up (groups of
prediction.MAX_FORWARD_BATCH receptors of similar length, as in prediction; one torch thread) and how far it moves
atoms. Writes <out-dir>/<out-name>.md and .json and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info

from immunofold.cleanup import clean_geometry
from immunofold.constants import PEPTIDE_BOND_LENGTH, RESTYPE_INDEX, UNKNOWN_RESTYPE
from immunofold.data.sabdab import read_summary
from immunofold.ensemble import Ensemble
from immunofold.evaluate import EVAL_BATCH_SIZE, number_entry
from immunofold.io import to_pdb_string
from immunofold.prediction import MAX_FORWARD_BATCH, Prediction, Predictor
from immunofold.refine import PROBLEM_KINDS, find_problems
from immunofold.weights import packaged_member_sets



def peptide_bond_deviations(prediction: Prediction, member: int | None) -> np.ndarray:
    """|C(i)-N(i+1) - 1.329 Å| for consecutive residues of each chain (predicted chains have no gaps), Å [N_bonds]."""
    atoms = prediction.atom14 if member is None else prediction.members[member]
    deviations = [
        np.abs(np.linalg.norm(chain.atom14[:-1, 2] - chain.atom14[1:, 0], axis=-1) - PEPTIDE_BOND_LENGTH)
        for chain in prediction._chain_atoms(atoms)
    ]
    return np.concatenate(deviations)


def structure_stats(prediction: Prediction, member: int | None) -> dict:
    problems = find_problems(to_pdb_string(prediction.unrefined_structure(member)))
    counts = Counter(problem.kind for problem in problems)
    return {"problems": {key: counts.get(key, 0) for key in PROBLEM_KINDS}, "bond_deviation": peptide_bond_deviations(prediction, member)}


def summarise(stats: list[dict]) -> dict:
    deviations = np.concatenate([s["bond_deviation"] for s in stats])
    return {
        "models": len(stats),
        "models_without_problems": sum(not any(s["problems"].values()) for s in stats),
        **{f"{key}_per_model": round(float(np.mean([s["problems"][key] for s in stats])), 2) for key in PROBLEM_KINDS},
        "bond_deviation_mean": round(float(deviations.mean()), 3),
        "bonds_off_0.1_percent": round(100 * float((deviations > 0.1).mean()), 1),
        "bonds_off_0.5_percent": round(100 * float((deviations > 0.5).mean()), 2),
    }


def cleanup_timing(raw: list[Prediction], cleaned: list[Prediction]) -> tuple[list[float], list[float]]:
    """(CPU seconds per receptor of `clean_geometry` on the unclean consensus models, in groups of MAX_FORWARD_BATCH
    of similar length; RMS atom move (Å) per model from unclean to cleaned). CPU time of this process, not wall time:
    on a shared machine the wall time also counts waiting for a core."""
    seconds, moves = [], []
    order = sorted(range(len(raw)), key=lambda i: len(raw[i].atom14))
    for start in range(0, len(order), MAX_FORWARD_BATCH):
        group = [raw[i] for i in order[start : start + MAX_FORWARD_BATCH]]
        n = max(len(p.atom14) for p in group)
        atom14 = torch.zeros(len(group), n, 14, 3)
        restype = torch.full((len(group), n), UNKNOWN_RESTYPE)
        chain_slot = torch.zeros(len(group), n, dtype=torch.long)
        mask = torch.zeros(len(group), n, dtype=torch.bool)
        for row, prediction in enumerate(group):
            sequence = "".join(chain.sequence for chain in prediction.chains)
            atom14[row, : len(sequence)] = torch.as_tensor(prediction.atom14)
            restype[row, : len(sequence)] = torch.tensor([RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for aa in sequence])
            chain_slot[row, : len(sequence)] = torch.tensor([k for k, c in enumerate(prediction.chains) for _ in c.sequence])
            mask[row, : len(sequence)] = True
        began = time.process_time()
        clean_geometry(atom14, restype, mask, chain_slot)
        seconds += [(time.process_time() - began) / len(group)] * len(group)
    for before, after in zip(raw, cleaned):
        present = np.abs(before.atom14).sum(-1) > 0
        moves.append(float(np.sqrt((((after.atom14 - before.atom14) ** 2).sum(-1))[present].mean())))
    return seconds, moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", default="val")
    parser.add_argument("--weights", nargs="+", default=None, help="member weight files (default: shipped)")
    parser.add_argument("--limit", type=int, default=None, help="first N entries only")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--out-name", default="geometry")
    args = parser.parse_args()

    predictor = Predictor(Ensemble(args.weights or packaged_member_sets(), clean=True))
    entries = [e for e in read_summary(args.data) if e.split == args.split][: args.limit]
    items = [(e.name, e.kind, number_entry(e)) for e in entries]
    torch.set_num_threads(1)
    stats: dict[str, list[dict]] = {}
    seconds, moves = [], []
    for start in range(0, len(items), EVAL_BATCH_SIZE):
        chunk = items[start : start + EVAL_BATCH_SIZE]
        cleaned = predictor.predict_numbered(chunk)
        predictor.ensemble.clean = False
        try:
            raw = predictor.predict_numbered(chunk)
        finally:
            predictor.ensemble.clean = True
        chunk_seconds, chunk_moves = cleanup_timing(raw, cleaned)
        seconds, moves = seconds + chunk_seconds, moves + chunk_moves
        for prediction, unclean in zip(cleaned, raw):
            # Prediction.members is ranked per entry, closest to the mean first
            choices = {"consensus, cleaned (clean=True)": (prediction, None), "consensus (returned by default)": (unclean, None),
                       **{f"member ranked {m + 1}": (prediction, m) for m in range(len(prediction.members))}}
            for label, (source, member) in choices.items():
                stats.setdefault(label, []).append(structure_stats(source, member))
    summary = {label: summarise(rows) for label, rows in stats.items()}
    cleanup = {
        "ms_per_model_median": round(1000 * float(np.median(seconds)), 1),
        "ms_per_model_mean": round(1000 * float(np.mean(seconds)), 1),
        "rms_move_mean": round(float(np.mean(moves)), 3),
        "rms_move_max": round(float(np.max(moves)), 3),
    }

    lines = [
        f"# Geometry of unrefined models ({args.split} split, {len(items)} entries, weights {predictor.ensemble.version})",
        "",
        "Checked by `immunofold.refine.find_problems`: peptide bond C-N outside 1.33 ± 0.1 Å, heavy atoms of different "
        "residues closer than 2.0 Å, non-proline cis peptides, D-amino acids (what refinement must fix), twisted peptides "
        "(|omega| 30-150°) and backbone bond angles more than 15° from Engh & Huber's (what it removes where a local "
        "minimisation can, else names; benchmarks/refinement.py counts what refined models keep); per model, mean over "
        "entries; members ranked per entry, 1 = closest to the members' mean (members are not cleaned; only "
        "`--save-ensemble` writes them).",
        "",
        "| structure | models without problems | broken peptide bonds | clashes | cis non-Pro | D-amino acids | twisted peptides | angle outliers | mean abs(C-N - 1.329) Å | bonds off > 0.1 Å | > 0.5 Å |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, s in summary.items():
        lines.append(
            f"| {label} | {s['models_without_problems']} / {s['models']} | {s['broken_per_model']:.1f} | {s['clash_per_model']:.1f} | "
            f"{s['cis_per_model']:.2f} | {s['D-amino_per_model']:.2f} | {s['twisted_per_model']:.2f} | "
            f"{s['angle_per_model']:.2f} | {s['bond_deviation_mean']:.3f} | "
            f"{s['bonds_off_0.1_percent']:.1f} % | {s['bonds_off_0.5_percent']:.2f} % |"
        )
    lines += [
        "",
        f"Clean-up (`immunofold.cleanup.clean_geometry`, one torch thread, groups of {MAX_FORWARD_BATCH} receptors of similar "
        f"length as in prediction): {cleanup['ms_per_model_median']:.1f} ms CPU time per model (median; mean "
        f"{cleanup['ms_per_model_mean']:.1f} ms); it moves atoms {cleanup['rms_move_mean']:.2f} Å RMS per model on average, "
        f"{cleanup['rms_move_max']:.2f} Å at most.",
    ]
    markdown = "\n".join(lines) + "\n"
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{args.out_name}.md"), "w") as handle:
        handle.write(markdown)
    with open(os.path.join(args.out_dir, f"{args.out_name}.json"), "w") as handle:
        json.dump({"weights": predictor.ensemble.version, "split": args.split, "entries": len(items), "summary": summary, "cleanup": cleanup, "machine": machine_info()}, handle, indent=1)
    print(markdown)


if __name__ == "__main__":
    main()
