"""What the ensemble returns: its consensus structure against each member alone and the member closest to the mean.

    python benchmarks/ensemble_consensus.py                  # shipped weights, val split of ../shared/data
    python benchmarks/ensemble_consensus.py --weights-dir runs/some_members

Region RMSDs (Å) by `immunofold.metrics.region_rmsds` (ImmuneBuilder's convention: N, CA, C, CB; each chain
superposed on its framework; IMGT CDRs), unrefined, mean over the val entries of each kind, computed on the
cached IMGT-numbered val examples. Writes <out-dir>/ensemble_consensus.md and .json and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEFAULT_CACHE_DIR, DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info, region_names

from immunofold.constants import KINDS
from immunofold.data.features import collate
from immunofold.data.sabdab import cached_examples
from immunofold.ensemble import Ensemble
from immunofold.metrics import region_rmsds
from immunofold.weights import folder_member_sets, packaged_member_sets

BATCH_SIZE = 8
KIND_LABELS = {"antibody": "Ab", "nanobody": "Nb", "tcr": "TCR"}


def structures_by_choice(ensemble: Ensemble, examples: list[dict]):
    """Yield (example, {choice: atom14 [N, 14, 3]}) for the consensus, the closest member and each member."""
    for kind in sorted({int(e["kind"]) for e in examples}):  # an ensemble batch holds one receptor kind
        of_kind = [e for e in examples if int(e["kind"]) == kind]
        yield from _structures_by_choice(ensemble, of_kind)


def _structures_by_choice(ensemble: Ensemble, examples: list[dict]):
    """`structures_by_choice` for examples of one kind."""
    for start in range(0, len(examples), BATCH_SIZE):
        chunk = examples[start : start + BATCH_SIZE]
        output = ensemble.run(collate(chunk))
        for i, example in enumerate(chunk):
            n = len(example["restype"])
            choices = {"consensus (returned)": output.consensus[i, :n], "member closest to the mean": output.members[output.ranking[i, 0], i, :n]}
            choices.update({f"member {m} alone": output.members[m, i, :n] for m in range(output.members.shape[0])})
            yield example, choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--split", default="val")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--weights-dir", default=None, help="folder of members, with its members.json if any (default: shipped)")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args()

    ensemble = Ensemble(folder_member_sets(args.weights_dir) if args.weights_dir else packaged_member_sets())
    examples = cached_examples(args.data, args.split, args.cache_dir)
    rows: dict[str, dict[str, list[dict]]] = {}
    for example, choices in structures_by_choice(ensemble, examples):
        kind = KINDS[int(example["kind"])]
        for choice, atom14 in choices.items():
            scores = region_rmsds(kind, atom14, example["atom14"], example["atom_mask"], example["chain_slot"], example["imgt_position"])
            rows.setdefault(choice, {}).setdefault(kind, []).append(scores)
    summary = {
        choice: {kind: {r: round(float(np.mean([s[r] for s in scores if r in s])), 3) for r in region_names(kind)} for kind, scores in kinds.items()}
        for choice, kinds in rows.items()
    }
    counts = {kind: len(scores) for kind, scores in next(iter(rows.values())).items()}
    columns = [("antibody", "H3"), ("antibody", "Hfr"), ("antibody", "L3"), ("nanobody", "H3"), ("nanobody", "Hfr"), ("tcr", "A3"), ("tcr", "B3")]
    lines = [
        f"# Ensemble consensus vs members ({args.split} split, weights {ensemble.version}, unrefined)",
        "",
        "Mean RMSD (Å), ImmuneBuilder's convention (N, CA, C, CB; each chain superposed on its framework; IMGT CDRs). "
        f"Entries: {', '.join(f'{k} {n}' for k, n in counts.items())}. Member i is the i-th member of each kind's set: "
        + "; ".join(f"{kind} " + ", ".join(os.path.basename(ensemble.files[i]).removesuffix(".safetensors")
                                           for i in ensemble.kind_members[kind]) for kind in KINDS) + ".",
        "",
        "| structure | " + " | ".join(f"{KIND_LABELS[k]} {r}" for k, r in columns) + " |",
        "|---|" + "--:|" * len(columns),
    ]
    for choice, kinds in summary.items():
        # "-" where a kind's set has no such member (the sets may differ in size)
        lines.append(f"| {choice} | " + " | ".join(f"{kinds[k][r]:.2f}" if k in kinds else "-" for k, r in columns) + " |")
    markdown = "\n".join(lines) + "\n"
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "ensemble_consensus.md"), "w") as handle:
        handle.write(markdown)
    with open(os.path.join(args.out_dir, "ensemble_consensus.json"), "w") as handle:
        json.dump({"weights": ensemble.version, "split": args.split, "counts": counts, "rmsd": summary, "machine": machine_info()}, handle, indent=1)
    print(markdown)


if __name__ == "__main__":
    main()
