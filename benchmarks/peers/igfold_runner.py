"""Fold receptors with IgFold 1.0.1; run by the IgFold venv's python (scripts/setup_igfold.sh), not immunofold's.

    .venv-igfold/bin/python benchmarks/peers/igfold_runner.py records.json OUT_DIR [--repeats 3 --warm-up]

records.json: a JSON list of {"name": str, "chains": {"H": heavy, "L": light}} (a nanobody: {"H": vhh}).
For each record, OUT_DIR gets <name>.pdb (IgFold's unrefined model, chains and residues in input order,
B-factor = IgFold's per-residue pRMSD in Å) and <name>.json ({"chains", "seconds": [one per repeat]} or
{"chains", "error"}). A record whose <name>.json holds the same chains and no error is not folded again, so an
interrupted run resumes and several runners can share OUT_DIR. Imports nothing from immunofold (it lives in another venv); one line per record on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

WEIGHTS_DIR_ENV = "ANTIBERTY_WEIGHTS_DIR"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", help="JSON list of {name, chains}")
    parser.add_argument("out_dir")
    parser.add_argument("--repeats", type=int, default=1, help="timed folds per record (the PDB is the last one's)")
    parser.add_argument("--warm-up", action="store_true", help="fold the first record once, untimed, before the rest")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def offline_environment() -> None:
    """AntiBERTy from the folder setup_igfold.sh unpacked beside this venv; never the network."""
    os.environ.setdefault(WEIGHTS_DIR_ENV, os.path.join(sys.prefix, "antiberty_weights"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def is_done(status_path: str, chains: dict) -> bool:
    try:
        with open(status_path) as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return False
    return status.get("chains") == chains and "seconds" in status


def write_json(path: str, value: dict) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    args = parse_args(argv)
    offline_environment()
    import torch
    from igfold import IgFoldRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.records) as handle:
        records = json.load(handle)
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.perf_counter()
    runner = IgFoldRunner(device="cpu", verbose=False)
    load_seconds = time.perf_counter() - start
    write_json(os.path.join(args.out_dir, "igfold_run.json"),
               {"load_seconds": round(load_seconds, 3), "models": runner.num_models, "threads": torch.get_num_threads()})
    if args.warm_up and records:
        runner.fold(os.path.join(args.out_dir, "warm-up.pdb"), sequences=records[0]["chains"], do_refine=False,
                    do_renum=False)
        os.remove(os.path.join(args.out_dir, "warm-up.pdb"))
    for number, record in enumerate(records, start=1):
        name, chains = record["name"], record["chains"]
        pdb_path, status_path = (os.path.join(args.out_dir, name + ext) for ext in (".pdb", ".json"))
        if is_done(status_path, chains) and os.path.exists(pdb_path):
            continue
        seconds, partial = [], f"{pdb_path}.{os.getpid()}.tmp.pdb"  # runners may share OUT_DIR
        try:
            for _ in range(args.repeats):
                started = time.perf_counter()
                runner.fold(partial, sequences=chains, do_refine=False, do_renum=False)
                seconds.append(round(time.perf_counter() - started, 3))
            os.replace(partial, pdb_path)
            write_json(status_path, {"chains": chains, "seconds": seconds})
            print(f"igfold {number}/{len(records)} {name}: {min(seconds):.1f} s", file=sys.stderr, flush=True)
        except Exception as error:  # noqa: BLE001 - one bad record must not stop the run; the reason is kept
            write_json(status_path, {"chains": chains, "error": f"{type(error).__name__}: {error}"})
            print(f"igfold {number}/{len(records)} {name}: failed: {error}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
