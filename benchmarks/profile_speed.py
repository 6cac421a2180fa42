"""Where an unrefined prediction spends its CPU time: stages and torch operators at batch 1, 8 and 64.

    python benchmarks/profile_speed.py                       # writes benchmarks/results/profile.md
    python benchmarks/profile_speed.py --default-allocator   # glibc's default allocator (before allocator.py)

Runs on one torch thread, so that CPU time is the work done (robust to other load on a shared machine, unlike wall
time): per stage (numbering, ensemble incl. features and post-processing, writing PDBs) CPU ms per structure from
`time.process_time`, then the torch operators with the most self CPU time under `torch.profiler` (its times are
wall-clock inside each operator: only the shares are meaningful on a busy machine). Inputs as benchmarks/speed.py:
trastuzumab, then val antibodies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info, number_antibodies  # noqa: E402
from speed import batch_sequences  # noqa: E402

from immunofold.allocator import keep_freed_memory  # noqa: E402

TOP_OPERATORS = 12


def shapes(input_shapes) -> str:
    """The tensor inputs' shapes of a profiler event, e.g. [4, 8, 230, 230] + [4, 1, 1, 230]."""
    return " + ".join(str(shape) for shape in input_shapes if shape) or "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--default-allocator", action="store_true", help="leave glibc's allocator settings alone")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "profile.md"))
    args = parser.parse_args(argv)
    if not args.default_allocator:
        keep_freed_memory()
    torch.set_num_threads(1)
    from torch.profiler import ProfilerActivity, profile

    from immunofold.prediction import Predictor

    machine = machine_info()
    predictor = Predictor()
    tmp = tempfile.mkdtemp(prefix="immunofold-profile-")

    def stages(items) -> dict[str, float]:
        """CPU seconds of each stage for `items`."""
        times = {}
        start = time.process_time()
        numbered = number_antibodies(items)
        times["numbering"] = time.process_time() - start
        start = time.process_time()
        predictions = predictor.predict_numbered(numbered)
        times["ensemble (features, 4 members, consensus, error)"] = time.process_time() - start
        start = time.process_time()
        for p in predictions:
            p.save(os.path.join(tmp, f"{p.name}.pdb"))
        times["writing PDBs"] = time.process_time() - start
        return times

    stages(batch_sequences(args.data, "val", 2))  # warm-up
    lines = [
        "# Profile of an unrefined prediction (CPU time, one torch thread)",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python benchmarks/profile_speed.py"
        f"{' --default-allocator' if args.default_allocator else ''}`; weights `{predictor.ensemble.version}`; "
        f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch_version']}; load average at start "
        f"{machine['load_average_at_start']}. glibc allocator: "
        f"{'default' if args.default_allocator else 'keeps freed memory (immunofold.allocator, as the command line)'}.",
        "",
        "## CPU ms per structure by stage",
        "",
        "| batch | " + " | ".join(["numbering", "ensemble", "writing PDBs", "total"]) + " |",
        "|--:|--:|--:|--:|--:|",
    ]
    operator_tables = []
    for size in args.batch_sizes:
        items = batch_sequences(args.data, "val", size)
        runs = [stages(items) for _ in range(2 if size <= 8 else 1)]
        best = {name: min(run[name] for run in runs) * 1000 / size for name in runs[0]}
        lines.append(f"| {size} | " + " | ".join(f"{v:.1f}" for v in best.values()) + f" | {sum(best.values()):.1f} |")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            stages(items)
        by_operator: dict[str, list] = {}  # name -> [self time, calls, (self time, shapes) of its costliest shape]
        for e in prof.key_averages(group_by_input_shape=True):
            entry = by_operator.setdefault(e.key, [0.0, 0, (0.0, "")])
            entry[0] += e.self_cpu_time_total
            entry[1] += e.count
            entry[2] = max(entry[2], (e.self_cpu_time_total, shapes(e.input_shapes)))
        total = sum(entry[0] for entry in by_operator.values())
        operator_tables += [f"### batch {size}", "",
                            "| operator | share of self time | calls | its costliest input shapes |", "|---|--:|--:|---|"]
        operator_tables += [f"| `{name}` | {100 * own / total:.1f} % | {calls} | {costliest[1]} |"
                            for name, (own, calls, costliest) in sorted(by_operator.items(), key=lambda kv: -kv[1][0])
                            [:TOP_OPERATORS]]
        operator_tables.append("")
    lines += ["", "## torch operators with the most self time (torch.profiler)", "", *operator_tables]
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        handle.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
