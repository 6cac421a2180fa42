"""Repertoire scale: local vs Ray engine throughput, driver memory, a two-node loopback cluster, projection.

    python benchmarks/repertoire.py [--records 300] [--memory 1000,10000,100000] [--cluster-records 60]

A part given 0 (or --memory '') is skipped and its section of the results file is kept as it was: e.g.
`--records 0` measures only the driver memory (no model), `--memory ''` only the throughput and the cluster.

1. A synthetic repertoire: val-split antibodies, nanobodies and TCRs of ../shared/data (sabdab, stcrdab) with one
   or two random CDR3 substitutions each (distinct names), as FASTA.
2. Throughput, unrefined: `run_batch` with the local engine (1 numbering worker) and with the Ray engine (a local
   runtime, 2 actors) on the same file, in fresh processes (`immunofold batch`); records/s from the run's own
   report, which includes loading the ensemble (the local engine's once, each actor's once) and Ray's start.
3. Driver memory: peak RSS (ru_maxrss) of a fresh process that does the driver's per-record work without the
   model — count pass, naming pass (RecordStore.scan: file stems, fingerprints, sidecar lookups) and the reports
   (summary.csv, summary.parquet, failures.csv) — on 10^3 .. 10^5 (or more) records; the slope between the two
   largest runs is the driver's memory per record once its bounded buffers are full.
4. A two-node cluster on loopback: `ray start --head` (1 CPU) plus `ray start --address 127.0.0.1:PORT` (1 CPU),
   then `immunofold batch --engine ray --address 127.0.0.1:PORT`; its outputs are compared with the local engine's.
5. Projection to 10^6 and 10^7 records on N machines from the measured per-actor rate and the Ray start-up cost.

Writes benchmarks/results/repertoire.md. The machine is shared (2 cores): the numbers are what this machine gave
at the time (its load average is stated), not a clean measurement.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data")
RESULTS = os.path.join(HERE, "results", "repertoire.md")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def val_receptors() -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, [(slot, sequence)]) of the val-split antibodies, nanobodies and TCRs."""
    out = []
    with open(os.path.join(DATA, "sabdab", "summary.tsv")) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["split"] == "val":
                chains = [("H", row["heavy_seq"])] + ([("L", row["light_seq"])] if row["kind"] == "antibody" else [])
                out.append((row["pdb"], chains))
    with open(os.path.join(DATA, "stcrdab", "summary.tsv")) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["split"] == "val":
                out.append((row["pdb"], [("A", row["alpha_seq"]), ("B", row["beta_seq"])]))
    return out


def mutate_cdr3(sequence: str, rng: random.Random) -> str:
    """One or two substitutions 12-17 residues before the C terminus (CDR3 of a V domain ending in its J motif)."""
    for _ in range(rng.randint(1, 2)):
        site = len(sequence) - rng.randint(12, 17)
        sequence = sequence[:site] + rng.choice(AMINO_ACIDS) + sequence[site + 1 :]
    return sequence


def write_repertoire(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    receptors = val_receptors()
    with open(path, "w") as handle:
        for i in range(n):
            name, chains = receptors[i % len(receptors)]
            mutated = rng.randrange(len(chains))  # the chain carrying the CDR3 variant
            for c, (slot, sequence) in enumerate(chains):
                sequence = mutate_cdr3(sequence, rng) if c == mutated else sequence
                handle.write(f">{name}_{i:07d}|{slot}\n{sequence}\n")


def immunofold_batch(input_path: str, outdir: str, *extra: str) -> dict:
    """Run `immunofold batch` in a fresh process; the report line parsed, plus wall time."""
    start = time.perf_counter()
    done = subprocess.run(["immunofold", "batch", input_path, "-o", outdir, "--no-refine", "-q",
                           *extra], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"immunofold batch {' '.join(extra)} failed: {done.stderr.strip()[-2000:]}")
    line = done.stdout.splitlines()[0]  # "N records: P predicted, F failed, ... in S s, R records/s (...)"
    words = line.replace(",", "").split()
    finished = int(words[words.index("predicted") - 1]) + int(words[words.index("failed") - 1])
    seconds = float(line.split(" in ")[-1].split(" s")[0])
    return {"line": line, "wall": wall, "rate": finished / seconds}  # the line's rate, unrounded


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from immunofold.batch import RecordStore, _count_and_notes, write_reports
    from immunofold.inputs import iter_records
    path, outdir = sys.argv[1], sys.argv[2]
    import os
    os.makedirs(os.path.join(outdir, ".immunofold", "records"), exist_ok=True)
    total, _ = _count_and_notes(iter_records(path), "auto")
    store = RecordStore(outdir, {"kind": "auto", "numbering": "imgt", "refine": False, "fmt": "pdb", "weights": "x"},
                        total)
    pending = 0
    for record in store.scan(iter_records(path)):
        pending += store.load(record) is None
        store.forget(record)
    write_reports(iter_records(path), store)
    print(json.dumps({"records": total, "pending": pending,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def driver_memory(n: int, folder: str) -> dict:
    path = os.path.join(folder, f"memory_{n}.fasta")
    write_repertoire(path, n)
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, path, os.path.join(folder, f"memory_{n}")],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    result["file_mb"] = os.path.getsize(path) / 1e6
    return result


def loopback_cluster(input_path: str, folder: str, port: int = 6390) -> dict:
    """Two Ray nodes on this machine (1 CPU each), the batch run joining them with --address."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if os.path.exists(os.path.expanduser("~/.ray/auth_token")):  # Ray >= 2.5x: nodes join with the local token
        env["RAY_AUTH_MODE"] = "token"
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        subprocess.run(["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                        f"--temp-dir={temp}", "--disable-usage-stats"], check=True, capture_output=True, env=env)
        subprocess.run(["ray", "start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats"], check=True,
                       capture_output=True, env=env)
        os.environ.update(env)  # the batch run joins with the same settings
        result = immunofold_batch(input_path, os.path.join(folder, "cluster"), "--engine", "ray", "--address", address)
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env)
        shutil.rmtree(temp, ignore_errors=True)
    return result


COORDINATE_TOLERANCE = 0.002  # Å, issue 23: only batching may change a coordinate's last digit


def compare_outputs(a: str, b: str) -> str:
    """How two output folders differ: 'identical', 'within 0.002 Å (...)', or what differs. Structure files by atom
    coordinates (and every other column of their atom lines), summary.csv apart from its timing column, other files
    byte for byte; the sidecars and summary.parquet (checked against summary.csv by the tests) are skipped."""
    def files(folder):  # relative paths compared (a 10^4-record run holds ~1.5 GB of PDB text: read pairs one at a time)
        paths = {os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names}
        return {rel for rel in paths if not rel.startswith(".immunofold") and rel != "summary.parquet"}

    def read(folder, rel):
        with open(os.path.join(folder, rel)) as handle:
            return handle.read()

    def summary_rows(text):
        rows = list(csv.reader(text.splitlines()))
        keep = [i for i, column in enumerate(rows[0]) if column != "seconds"]
        return [[row[i] for i in keep] for row in rows]

    left, right = files(a), files(b)
    if left != right:
        return f"different files: {sorted(left ^ right)[:3]}"
    largest, differing = 0.0, 0
    for rel in sorted(left):
        text, other = read(a, rel), read(b, rel)
        if text == other:
            continue
        if rel == "summary.csv":
            if summary_rows(text) != summary_rows(other):
                return "summary.csv differs"
            continue
        if not rel.endswith(".pdb"):
            return f"{rel} differs"
        lines, other_lines = text.splitlines(), other.splitlines()
        if len(lines) != len(other_lines):
            return f"{rel}: different atoms"
        for line, other_line in zip(lines, other_lines):
            if line == other_line:
                continue
            if not line.startswith("ATOM") or line[:30] + line[54:] != other_line[:30] + other_line[54:]:
                return f"{rel}: {line.strip()} vs {other_line.strip()}"
            deviation = max(abs(float(line[i:i + 8]) - float(other_line[i:i + 8])) for i in (30, 38, 46))
            largest = max(largest, deviation)
        differing += 1
    if not differing:
        return "identical"
    verdict = "within 0.002 Å" if largest <= COORDINATE_TOLERANCE + 1e-9 else "NOT within 0.002 Å"
    return f"{verdict} ({differing} of {len(left)} files differ, largest coordinate change {largest:.3f} Å)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300, help="records for the throughput runs (0: skip them)")
    parser.add_argument("--memory", default="1000,10000,100000",
                        help="record counts for the driver memory curve ('': skip it)")
    parser.add_argument("--cluster-records", type=int, default=60,
                        help="records for the loopback cluster run (0: skip it)")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--nice", type=int, default=10,
                        help="niceness of this script and its runs (10: polite on a shared machine)")
    args = parser.parse_args()
    os.nice(args.nice)
    command = shlex.join(["python", "benchmarks/repertoire.py", *sys.argv[1:]])
    stamp = (f"`{command}`, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, load average at the start "
             f"{os.getloadavg()[0]:.1f} (other work on the machine slows every rate).")
    sections = {}
    folder = tempfile.mkdtemp(prefix="repertoire")
    try:
        if args.memory:
            memory = []
            for n in args.memory.split(","):
                memory.append(driver_memory(int(n), folder))
                print(f"driver memory: {memory[-1]}", flush=True)
            sections[MEMORY] = memory_section(stamp, memory)
        if args.records:
            sections.update(throughput_sections(stamp, args.records, args.cluster_records, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_report(args.out, sections)


TITLE = "# Repertoire scale (issue 23)"
THROUGHPUT = "## Throughput on this machine"
MEMORY = "## Driver memory (no model: count, naming, sidecar lookups, summary.csv/.parquet/failures.csv)"
PROJECTION = "## Projection"
INTRO = ("Synthetic repertoire: val antibodies, nanobodies and TCRs of ../shared/data with 1-2 random CDR3 "
         "substitutions each, as FASTA; unrefined (`--no-refine`). Each section names the command and the day that "
         "measured it; a run that skips a part keeps that part's section as it was.")


def throughput_sections(stamp: str, records: int, cluster_records: int, folder: str) -> dict[str, list[str]]:
    """Local vs Ray engine on `records` records (and the loopback cluster on `cluster_records`), and the projection."""
    path = os.path.join(folder, "repertoire.fasta")
    write_repertoire(path, records)
    local = immunofold_batch(path, os.path.join(folder, "local"))
    print(f"local: {local}", flush=True)
    on_ray = immunofold_batch(path, os.path.join(folder, "ray"), "--engine", "ray", "--workers", "2")
    print(f"ray: {on_ray}", flush=True)
    same = compare_outputs(os.path.join(folder, "local"), os.path.join(folder, "ray"))
    rows = [("local (1 numbering worker)", records, local, "-"),
            ("ray (local runtime, 2 actors)", records, on_ray, same)]
    if cluster_records:
        small = os.path.join(folder, "small.fasta")
        write_repertoire(small, cluster_records, seed=1)
        small_local = immunofold_batch(small, os.path.join(folder, "small_local"))
        cluster = loopback_cluster(small, folder)
        print(f"cluster: {cluster}", flush=True)
        same = compare_outputs(os.path.join(folder, "small_local"), os.path.join(folder, "cluster"))
        rows += [("local", cluster_records, small_local, "-"),
                 ("ray, two-node loopback cluster (`--address`, 1 CPU per node)", cluster_records, cluster, same)]
    table = [
        stamp, "", "Rates are the run's own records/s line (ensemble loading and Ray start-up included).", "",
        "| engine | records | records/s | wall s | outputs against the local engine's |",
        "|---|---:|---:|---:|---|",
        *[f"| {label} | {n} | {run['rate']:.2f} | {run['wall']:.0f} | {same} |" for label, n, run, same in rows],
        "", f"Ray / local: {on_ray['rate'] / local['rate']:.0%}.",
    ]
    return {THROUGHPUT: table, PROJECTION: projection_section(on_ray["rate"] / 2)}


def memory_section(stamp: str, memory: list[dict]) -> list[str]:
    first, last = memory[0], memory[-1]
    previous = memory[-2] if len(memory) > 1 else first

    def slope_kb(a: dict, b: dict) -> float:  # KB of peak RSS per record between two points of the curve
        return (b["maxrss_mb"] - a["maxrss_mb"]) * 1024 / max(1, b["records"] - a["records"])

    return [
        stamp, "",
        "| records | input MB | driver peak RSS MB |",
        "|---:|---:|---:|",
        *[f"| {m['records']} | {m['file_mb']:.1f} | {m['maxrss_mb']:.0f} |" for m in memory],
        "",
        f"Slope between the two largest runs ({previous['records']} -> {last['records']} records): "
        f"{slope_kb(previous, last):.4f} KB per record; over the whole curve {slope_kb(first, last):.4f} KB per "
        f"record above a {first['maxrss_mb']:.0f} MB base (Python, pyarrow, the readers). What grows on the way to "
        "~10^5 records is bounded by constants, not by the input: records waiting for a partner chain (at most "
        "`inputs.PAIRING_WINDOW` = 10,000 entries; the synthetic FASTA labels nanobodies `|H`, so each waits the "
        "whole window) and one Parquet row group (`batch.PARQUET_ROWS` = 50,000 rows, held as Arrow record "
        "batches). The names seen (duplicate check, unique file names) are 8-byte digests in a temporary SQLite "
        "database (`inputs.NameSet`: ~2 MB of page cache, the rest in a file of the temporary folder). The Ray "
        "driver loads no model; the local engine's process adds the ensemble (a few hundred MB, constant) and at "
        "most MAX_HELD numbered records.",
    ]


def projection_section(per_actor: float) -> list[str]:
    """Hours for 10^6 and 10^7 records on 1-100 machines from the measured rate per actor (records/s)."""
    lines = [
        f"Measured per Ray actor (1 CPU, this shared machine): {per_actor:.2f} records/s. Assuming actors scale "
        "linearly across machines (each actor predicts its chunks alone; the driver only writes files) and "
        "16 actors per 16-core machine:",
        "",
        "| records | machines | actors | hours |",
        "|---:|---:|---:|---:|",
    ]
    for records in (10**6, 10**7):
        for machines in (1, 10, 100):
            actors = 16 * machines
            lines.append(f"| {records:.0e} | {machines} | {actors} | {records / (per_actor * actors) / 3600:.1f} |")
    return lines + [
        "",
        "The driver writes each structure file (~0.1-0.2 MB of PDB text) and one sidecar; at 10^3 records/s and "
        "more (above ~100 machines) the driver's disk becomes the limit, not the actors.",
    ]


def write_report(out: str, sections: dict[str, list[str]]) -> None:
    """Write `out` with the measured sections; a section not measured this time is kept from the existing file."""
    kept: dict[str, list[str]] = {}
    heading = None
    if os.path.exists(out):
        with open(out) as handle:
            for line in handle.read().splitlines():
                if line.startswith("## "):
                    heading = line
                    kept[heading] = []
                elif heading:
                    kept[heading].append(line)
    lines = [TITLE, "", INTRO]
    for heading in (THROUGHPUT, MEMORY, PROJECTION):
        body = "\n".join(sections.get(heading) or kept.get(heading, [])).strip()
        if body:
            lines += ["", heading, "", body]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
