"""How well two crystal structures of one receptor agree on its developability profile: the ceiling for any
predicted structure's agreement with a crystal (benchmarks/developability.py).

    python benchmarks/developability_ceiling.py [--data ../shared/data]

Every antibody and nanobody sequence (all V-domain chains identical) with two or more crystal structures in the
data folder, train and val alike (no model is involved, so nothing here is trained on), gives one pair: its two
entries first by name, profiled by the same code as developability.py's crystal side (`crystal_profile`). Per
metric: Spearman and Pearson between the two structures over the pairs, and how often their flags agree. Writes
benchmarks/results/developability_ceiling.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_DATA_ROOT, RESULTS_DIR, machine_info  # noqa: E402
from developability import correlations, crystal_profile  # noqa: E402

from immunofold.data.sabdab import read_summary  # noqa: E402
from immunofold.developability import PROFILED_KINDS, TAP_BANDS, TNP_BANDS  # noqa: E402
from immunofold.sequences import InputError  # noqa: E402


def crystal_pairs(data_root: str) -> tuple[list[dict], list[str]]:
    """([{kind, names, first, second}] one per sequence with two profiled crystal structures, first and second
    holding {metric: {value, flag}}; skipped reasons)."""
    groups = collections.defaultdict(list)
    for entry in read_summary(data_root):
        if entry.kind in PROFILED_KINDS:
            groups[(entry.kind, *entry.sequences)].append(entry)
    pairs, skipped = [], []
    for (kind, *_), entries in groups.items():
        profiles = []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                profiles.append((entry.name, crystal_profile(entry)))
            except (InputError, RuntimeError, ValueError) as error:
                skipped.append(str(error))
            if len(profiles) == 2:
                first, second = ({m.name: {"value": round(m.value, 4), "flag": m.flag} for m in profile.metrics}
                                 for _, profile in profiles)  # fmt: skip
                pairs.append({"kind": kind, "names": [name for name, _ in profiles], "first": first, "second": second})
                break
    return pairs, skipped


def summarise(pairs: list[dict]) -> dict:
    summary = {}
    for kind, bands in (("antibody", TAP_BANDS), ("nanobody", TNP_BANDS)):
        kind_pairs = [p for p in pairs if p["kind"] == kind]
        for metric in bands:
            values = [(p["first"][metric]["value"], p["second"][metric]["value"]) for p in kind_pairs]
            same = [p["first"][metric]["flag"] == p["second"][metric]["flag"] for p in kind_pairs]
            summary[f"{kind}/{metric}"] = {**correlations(values),
                                           "flag_agreement": round(sum(same) / len(same), 3) if same else None}  # fmt: skip
    return summary


def markdown(report: dict) -> str:
    lines = [
        "# Developability profile: crystal vs crystal of the same receptor",
        "",
        f"`python benchmarks/developability_ceiling.py`, {report['date']}, {report['seconds']:.0f} s on "
        f"{report['machine']['cpu_count']} CPUs. Every antibody ({report['n']['antibody']}) and nanobody "
        f"({report['n']['nanobody']}) sequence with two or more crystal structures in the data folder (train and val; "
        "no model involved): its first two entries by name, profiled by `immunofold.developability` as "
        "developability.md profiles a crystal. Two crystals of one receptor differ by bound antigen, crystal "
        "packing and resolution; how well they agree is the most any predicted structure can agree with one "
        f"crystal. Entries that could not be profiled: {len(report['skipped'])}.",
        "",
        "| receptor | metric | pairs | Spearman | Pearson | flag agreement |",
        "|---|---|--:|--:|--:|--:|",
    ]
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    for key, line in report["summary"].items():
        kind, metric = key.split("/")
        lines.append(f"| {kind} | {metric} | {line['n']} | {fmt(line['spearman'])} | {fmt(line['pearson'])} | "
                     f"{fmt(line['flag_agreement'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args()
    start = time.time()
    pairs, skipped = crystal_pairs(args.data)
    report = {"date": datetime.date.today().isoformat(), "seconds": time.time() - start, "machine": machine_info(),
              "n": {kind: sum(p["kind"] == kind for p in pairs) for kind in PROFILED_KINDS},
              "skipped": skipped, "summary": summarise(pairs), "pairs": pairs}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "developability_ceiling.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    text = markdown(report)
    with open(os.path.join(args.out, "developability_ceiling.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
