"""Records/s of `immunofold batch --no-refine` (the command as users run it) vs FlashABB on the same antibodies.

    python benchmarks/batch_vs_flashabb.py [--n 128] [--data ../shared/data]

Input: the val-split SAbDab antibodies (heavy + light), repeated with distinct names up to --n records.
immunofold: `immunofold batch records.fasta -o out --no-refine` with default options (and, where the package has a
fast member set, the same with `--fast`), each timed as one subprocess
(Python start-up, imports, loading the ensemble, numbering, the model, structure files, summary.csv/parquet).
FlashABB: one subprocess that imports it, loads its model and writes a PDB per record (`to_pdbs`) in batches of
--flashabb-batch (8: its fastest per structure in speed.md); it gets the IMGT-trimmed V domains immunofold numbered,
numbered before its clock starts (it does no numbering of its own). Both run on the same machine, one after the
other, twice in alternation; the best of each is reported with the load average. Writes
benchmarks/results/batch_vs_flashabb.md and .json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info  # noqa: E402

FLASHABB_RUNNER = """
import json, sys, time
start = time.perf_counter()
import torch
from flash_abb import pretrained
records, out, batch, threads = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
model = pretrained(device="cpu")
with torch.inference_mode():
    for i in range(0, len(records), batch):
        group = records[i : i + batch]
        model([r["sequence"] for r in group]).to_pdbs([r["name"] for r in group], pdb_dir=out)
print(time.perf_counter() - start)
"""


def val_antibodies(data_root: str) -> list[tuple[str, str, str]]:
    with open(os.path.join(data_root, "sabdab", "summary.tsv")) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(r["pdb"], r["heavy_seq"], r["light_seq"]) for r in rows if r["split"] == "val" and r["kind"] == "antibody"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--n", type=int, default=128, help="records (val antibodies repeated with distinct names)")
    parser.add_argument("--flashabb-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed runs of each tool (best reported)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for both (immunofold batch --threads N); default: each tool's own default. "
                             "On a busy machine use 1: FlashABB's 2 OpenMP threads stall each other when descheduled")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    from immunofold.sequences import number_receptor

    antibodies = val_antibodies(args.data)
    if not antibodies:
        print(f"no val antibodies under {args.data}", file=sys.stderr)
        return 2
    records = [(f"{name}_{i:04d}", heavy, light)
               for i, (name, heavy, light) in ((i, antibodies[i % len(antibodies)]) for i in range(args.n))]
    machine = machine_info()
    work = tempfile.mkdtemp(prefix="immunofold-batch-vs-flashabb-")
    fasta = os.path.join(work, "records.fasta")
    with open(fasta, "w") as handle:
        for name, heavy, light in records:
            handle.write(f">{name}|H\n{heavy}\n>{name}|L\n{light}\n")
    trimmed = []
    for name, heavy, light in records:
        chains = number_receptor("antibody", {"heavy": heavy, "light": light}, name)
        trimmed.append({"name": name, "sequence": "|".join(chain.sequence for chain in chains)})
    with open(os.path.join(work, "flashabb.json"), "w") as handle:
        json.dump(trimmed, handle)

    from immunofold.weights import packaged_member_sets

    immunofold_cli = os.path.join(os.path.dirname(sys.executable), "immunofold")
    variants = {"immunofold": []} | ({"immunofold-fast": ["--fast"]} if packaged_member_sets(fast=True) else {})
    runs: dict[str, list[float]] = {**{variant: [] for variant in variants}, "flashabb": []}
    for round_ in range(args.rounds):
        for variant, options in variants.items():
            out = os.path.join(work, f"{variant}_{round_}")
            start = time.perf_counter()
            threads = ["--threads", str(args.threads)] if args.threads else []
            subprocess.run([immunofold_cli, "batch", fasta, "-o", out, "--no-refine", *options, *threads], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs[variant].append(time.perf_counter() - start)
            written = sum(name.endswith(".pdb") for _, _, names in os.walk(out) for name in names)
            if written != args.n:
                print(f"{variant} wrote {written} of {args.n} structures", file=sys.stderr)
                return 1
        out = os.path.join(work, f"flashabb_{round_}")
        os.makedirs(out)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", FLASHABB_RUNNER, os.path.join(work, "flashabb.json"), out,
                        str(args.flashabb_batch), str(args.threads)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs["flashabb"].append(time.perf_counter() - start)
        print(f"round {round_ + 1}: " + ", ".join(f"{tool} {seconds[-1]:.1f} s" for tool, seconds in runs.items()),
              file=sys.stderr)
    load_end = list(os.getloadavg())
    best = {tool: min(seconds) for tool, seconds in runs.items()}
    report = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, "load_average_at_end": load_end,
              "records": args.n, "threads": args.threads or None, "flashabb_batch": args.flashabb_batch,
              "seconds": runs,
              "records_per_s": {tool: round(args.n / s, 2) for tool, s in best.items()},
              "ratio_flashabb_over_immunofold_time": round(best["flashabb"] / best["immunofold"], 2)}
    if "immunofold-fast" in best:
        report["ratio_flashabb_over_immunofold_fast_time"] = round(best["flashabb"] / best["immunofold-fast"], 2)
    lines = [
        "# `immunofold batch` vs FlashABB: records/s on val antibodies, start-up included",
        "",
        f"Generated {report['generated']} by `python benchmarks/batch_vs_flashabb.py --n {args.n} --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}`. Machine: "
        f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch_version']}; load average at start "
        f"{machine['load_average_at_start']}, at end {[round(x, 2) for x in load_end]} (1, 5, 15 min).",
        "",
        f"{args.n} records: the {len(antibodies)} val-split antibodies repeated with distinct names. immunofold: "
        f"`immunofold batch records.fasta -o out --no-refine{f' --threads {args.threads}' if args.threads else ''}`, "
        "otherwise default options, one subprocess (start-up, loading, "
        "numbering, model, files, summaries). FlashABB: one subprocess (start-up, loading, forward and `to_pdbs` in "
        f"batches of {args.flashabb_batch}) on the IMGT-trimmed V domains, numbered before its clock. "
        f"{args.rounds} alternating rounds; best shown, all runs in brackets.",
        "",
        "| tool | seconds (runs) | records / s |",
        "|---|--:|--:|",
    ]
    labels = {"immunofold": "immunofold batch --no-refine", "immunofold-fast": "immunofold batch --no-refine --fast",
              "flashabb": "FlashABB"}
    for tool, label in ((tool, labels[tool]) for tool in runs):
        lines.append(f"| {label} | {best[tool]:.1f} ({', '.join(f'{s:.1f}' for s in runs[tool])}) | "
                     f"{report['records_per_s'][tool]:.2f} |")
    lines += ["", f"FlashABB time / immunofold time: **{report['ratio_flashabb_over_immunofold_time']:.2f}x** "
              "(> 1: immunofold faster)" + (f"; with `--fast` (two distilled members for antibodies): "
                                            f"**{report['ratio_flashabb_over_immunofold_fast_time']:.2f}x**"
                                            if "immunofold-fast" in best else "") + ".", ""]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "batch_vs_flashabb.md"), "w") as handle:
        handle.write("\n".join(lines))
    with open(os.path.join(args.out_dir, "batch_vs_flashabb.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
