"""Records/s of `immunofold batch` with refinement (its default) for several `--workers` counts.

    python benchmarks/batch_refined.py [--n 32] [--workers 1 2 3] [--rounds 2] [--data ../shared/data]

Input: the val-split SAbDab antibodies (heavy + light), repeated with distinct names up to --n records. Each
worker count runs `immunofold batch records.fasta -o out --workers W` (otherwise default options, refinement on)
as one subprocess (start-up, loading, numbering, model, refinement, files, summaries), and once more with no
`--workers` at all (the command's default); the counts alternate round by round and the best of each is reported
with the load average. Every run must write the same structure files as the first (refinement is deterministic
whatever the worker count). Writes benchmarks/results/batch_refined.md and .json.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from batch_vs_flashabb import val_antibodies  # noqa: E402
from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info  # noqa: E402

DEFAULT = "default"  # the run without --workers


def run_batch_command(fasta: str, out: str, workers) -> float:
    """Wall seconds of one `immunofold batch` subprocess."""
    command = ["immunofold", "batch", fasta, "-o", out, "-q"] + ([] if workers == DEFAULT else ["--workers", str(workers)])
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_structures(first: str, other: str) -> bool:
    names = sorted(n for n in os.listdir(first) if n.endswith(".pdb"))
    return names == sorted(n for n in os.listdir(other) if n.endswith(".pdb")) and \
        all(filecmp.cmp(os.path.join(first, n), os.path.join(other, n), shallow=False) for n in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--n", type=int, default=32, help="records (val antibodies repeated with distinct names)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    antibodies = val_antibodies(args.data)
    machine = machine_info()
    counts = [*args.workers, DEFAULT]
    seconds = {w: [] for w in counts}
    with tempfile.TemporaryDirectory(prefix="immunofold-batch-refined-") as tmp:
        fasta = os.path.join(tmp, "records.fasta")
        with open(fasta, "w") as handle:
            for i in range(args.n):
                name, heavy, light = antibodies[i % len(antibodies)]
                handle.write(f">{name}_{i}\n{heavy}:{light}\n")
        reference = None
        for round_index in range(args.rounds):
            for workers in counts if round_index % 2 == 0 else counts[::-1]:
                out = os.path.join(tmp, f"out_{workers}_{round_index}")
                seconds[workers].append(round(run_batch_command(fasta, out, workers), 2))
                reference = reference or out
                if not same_structures(reference, out):
                    raise SystemExit(f"--workers {workers} wrote other structures than the first run")
                print(f"workers {workers}: {seconds[workers][-1]} s", flush=True)
    load_end = os.getloadavg()

    best = {w: min(s) for w, s in seconds.items()}
    lines = [
        "# `immunofold batch` with refinement: records/s by worker count",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python benchmarks/batch_refined.py --n {args.n} "
        f"--workers {' '.join(map(str, args.workers))} --rounds {args.rounds}`. Machine: {machine['cpu_model']}, "
        f"{machine['cpu_count']} cores, torch {machine['torch_version']}; load average at start "
        f"{machine['load_average_at_start']}, at end {[round(x, 2) for x in load_end]} (1, 5, 15 min).",
        "",
        f"{args.n} records: the val-split antibodies repeated with distinct names. `immunofold batch records.fasta -o "
        "out --workers W` (refinement on, otherwise default options) as one subprocess, start-up included; "
        f"\"default\": no `--workers` ({args.rounds} alternating rounds; best shown, all runs in brackets). Every run "
        "wrote the same structure files.",
        "",
        "| --workers | seconds (runs) | records / s |",
        "|---|--:|--:|",
    ]
    for workers in counts:
        runs = ", ".join(map(str, seconds[workers]))
        lines.append(f"| {workers} | {best[workers]} ({runs}) | {args.n / best[workers]:.2f} |")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "batch_refined.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(RESULTS_DIR, "batch_refined.json"), "w") as handle:
        json.dump({"n": args.n, "seconds": {str(k): v for k, v in seconds.items()}, "machine": machine,
                   "load_average_at_end": load_end}, handle, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
