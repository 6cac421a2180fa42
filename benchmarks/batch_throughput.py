"""Throughput of `immunofold batch` on nanobodies, unrefined, batched.

    python benchmarks/batch_throughput.py [--n 400] [--workers 1] [--batch-size 32] [--profile]

Takes the val-split nanobodies of ../shared/data/sabdab/summary.tsv (repeated with distinct names
up to N records), writes them as FASTA, runs `run_batch(..., refine=False)` into a fresh folder
and prints structures/s. The ensemble is loaded before the clock starts (it is loaded once per
run; the load time is reported separately). Results go to benchmarks/results/batch_throughput.md.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SUMMARY = os.path.join(HERE, "..", "..", "shared", "data", "sabdab", "summary.tsv")


def nanobody_sequences(summary: str) -> list[tuple[str, str]]:
    with open(summary) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [(r["pdb"], r["heavy_seq"]) for r in rows if r["split"] == "val" and r["kind"] == "nanobody"]


def write_fasta(path: str, sequences: list[tuple[str, str]], n: int) -> None:
    with open(path, "w") as handle:
        for i in range(n):
            name, sequence = sequences[i % len(sequences)]
            handle.write(f">{name}_{i:05d}\n{sequence}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="number of nanobody records (default 400)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to try (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--summary", default=DEFAULT_SUMMARY, help="SAbDab-like summary.tsv")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the command line's, batch.default_threads)")
    parser.add_argument("--profile", action="store_true", help="also profile a run with workers 0, threads 1")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "batch_throughput.md"))
    parser.add_argument("--note", default="", help="free text added to the results (e.g. machine load)")
    args = parser.parse_args(argv)

    import torch

    from immunofold.allocator import keep_freed_memory
    from immunofold.batch import default_threads, run_batch
    from immunofold.prediction import Predictor

    sequences = nanobody_sequences(args.summary)
    if not sequences:
        print(f"no val nanobodies in {args.summary}", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="immunofold-bench-")
    fasta = os.path.join(work, "nanobodies.fasta")
    write_fasta(fasta, sequences, args.n)

    keep_freed_memory()  # as the command line does
    start = time.perf_counter()
    predictor = Predictor(members_side_by_side=True)  # as `immunofold batch` runs it
    load_seconds = time.perf_counter() - start
    # warm-up (first torch pass allocates), not timed
    warm = os.path.join(work, "warm.fasta")
    write_fasta(warm, sequences[:4], 4)
    run_batch(warm, os.path.join(work, "warm"), refine=False, workers=0, predictor=predictor)

    results = []
    def timed(workers, threads, label):
        outdir = os.path.join(work, f"out_{label}")
        start = time.perf_counter()
        threads = threads or default_threads(workers, refine=False)
        report = run_batch(fasta, outdir, refine=False, workers=workers, batch_size=args.batch_size,
                           predictor=predictor, progress=False, threads=threads)
        seconds = time.perf_counter() - start
        rate = report.ok_total / seconds
        results.append((workers, threads, report, seconds, rate))
        print(f"workers={workers} threads={threads} batch_size={args.batch_size}: {report.ok_total} structures "
              f"({report.failed_total} failed) in {seconds:.1f} s = {rate:.1f} structures/s", flush=True)

    for workers in args.workers:
        timed(workers, args.threads, f"w{workers}")

    profile_text = ""
    if args.profile:  # everything in this process, one torch thread, so the profile shows where time goes
        profiler = cProfile.Profile()
        profiler.enable()
        timed(0, 1, "profile")
        profiler.disable()
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(20)
        profile_text = buffer.getvalue()
        print(profile_text)

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    lines = [
        "# Batch throughput (nanobodies, unrefined)",
        "",
        (
            f"Command: `python benchmarks/batch_throughput.py --n {args.n} --workers {' '.join(map(str, args.workers))} "
            f"--batch-size {args.batch_size}{' --profile' if args.profile else ''}`"
        ),
        "",
        (
            f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"torch default {torch.get_num_threads()} threads; load average at the end {', '.join(f'{x:.1f}' for x in load)}"
        ),
        f"- weights: {predictor.ensemble.version} ({len(predictor.ensemble.models)} members); ensemble load {load_seconds:.1f} s (not timed)",
        f"- input: {args.n} records = the {len(sequences)} val-split SAbDab nanobodies repeated with distinct names",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| workers | torch threads | batch size | structures | failed | seconds | structures/s |",
              "|---|---|---|---|---|---|---|"]
    for workers, threads, report, seconds, rate in results:
        lines.append(f"| {workers} | {threads} | {args.batch_size} | {report.ok_total} | {report.failed_total} | "
                     f"{seconds:.1f} | {rate:.1f} |")
    if profile_text:
        lines += ["", "Profile of the workers-0 / 1-thread run (under cProfile, so slower), by own time:", "", "```",
                  profile_text.strip()[:6000], "```"]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
