"""Derive src/immunofold/ideal_geometry.json: mean local coordinates (Å) of every atom14 atom in its
rigid-group frame at torsion 0, over the training split's complete residues.

Usage: python scripts/derive_ideal_geometry.py [--cache cache] [--data ../shared/data]
"""

import argparse
import json

import torch

from immunofold.constants import ATOM14_NAMES, ONE_TO_THREE, RESTYPES
from immunofold.data.sabdab import cached_examples
from immunofold.geometry import IDEAL_GEOMETRY_FILE, local_coordinates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cache", default="cache")
    args = parser.parse_args()
    examples = cached_examples(args.data, "train", args.cache)
    sums = torch.zeros(len(RESTYPES), 14, 3, dtype=torch.float64)
    counts = torch.zeros(len(RESTYPES), dtype=torch.float64)
    for example in examples:
        restype = example["restype"].clamp(max=len(RESTYPES) - 1)
        local = local_coordinates(example["atom14"].double(), restype)
        for r in range(len(RESTYPES)):
            n_atoms = len(ATOM14_NAMES[ONE_TO_THREE[RESTYPES[r]]])
            complete = (restype == r) & example["atom_mask"][:, :n_atoms].all(-1) & (example["restype"] == r)
            sums[r] += local[complete].sum(0)
            counts[r] += complete.sum()
    mean = sums / counts[:, None, None]
    ideal = {}
    for r, aa in enumerate(RESTYPES):
        resname = ONE_TO_THREE[aa]
        ideal[resname] = {name: [round(float(v), 4) for v in mean[r, i]] for i, name in enumerate(ATOM14_NAMES[resname])}
    ideal["_source"] = f"mean over {int(counts.sum())} complete residues of {len(examples)} training examples"
    with open(IDEAL_GEOMETRY_FILE, "w") as handle:
        json.dump(ideal, handle, indent=1)
    print(f"wrote {IDEAL_GEOMETRY_FILE}: {ideal['_source']}")


if __name__ == "__main__":
    main()
