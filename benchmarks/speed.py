"""CPU speed of immunofold, FlashABB, IgFold and ImmuneBuilder's ABodyBuilder2 architecture, measured in one run.

    python benchmarks/speed.py                  # trastuzumab Fv at batch 1, + val antibodies at batch 8 and 64
    python benchmarks/speed.py --batch-sizes 1 8 --repeats 2
    python benchmarks/speed.py --tools immunofold igfold --batch-sizes 1 --out-name speed_igfold

immunofold: per-stage timings (numbering, features, model forward per member, ensemble post-processing,
refinement, writing) and end-to-end throughput (numbering -> PDB files) at each batch size, unrefined,
plus refined at batch 1. FlashABB (if installed): the same V-domain sequences, forward pass + writing PDBs,
at the same batch sizes. ImmuneBuilder (if installed): its 4-model ABodyBuilder2 ensemble with randomly
initialised parameters (its weights cannot be downloaded here; speed does not depend on weight values),
through its own load -> ANARCI numbering -> predict -> rank -> write path, and its OpenMM refinement.
IgFold 1.0.1 (if its venv exists, scripts/setup_igfold.sh; `--igfold-python`): `fold()` of the trastuzumab Fv
(AntiBERTy, its 4 models, unrefined PDB) at batch 1, timed inside benchmarks/peers/igfold_runner.py.

Times are wall-clock seconds; each figure is the best (minimum) of --repeats runs after a warm-up, with the
median beside it. Writes <out-dir>/<out-name>.md and .json (default speed.md, speed.json) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (
    DEFAULT_DATA_ROOT,
    RESULTS_DIR,
    TRASTUZUMAB_HEAVY,
    TRASTUZUMAB_LIGHT,
    machine_info,
    number_antibodies,
    package_version,
)
from peers import igfold_peer

from immunofold.allocator import keep_freed_memory
from immunofold.data.sabdab import read_summary

TOOLS = ("immunofold", "immunofold-fast", "flashabb", "igfold", "immunebuilder")
TOOL_LABELS = {"immunofold": "immunofold", "immunofold-fast": "immunofold --fast", "flashabb": "FlashABB",
               "igfold": "IgFold", "immunebuilder": "ImmuneBuilder"}
IB_EMBED_DIMS = {"antibody_model_1": 128, "antibody_model_2": 256, "antibody_model_3": 256, "antibody_model_4": 256}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT, help="folder whose val antibodies fill batches > 1")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure at batch <= 8 (best is reported)")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed runs per figure at batch > 8")
    parser.add_argument("--ib-repeats", type=int, default=1, help="timed ImmuneBuilder runs (about 6 s each, idle)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--igfold-python", default=None,
                        help=f"python of the IgFold venv (default: {os.path.relpath(igfold_peer.DEFAULT_PYTHON)} if "
                             "present; made by scripts/setup_igfold.sh)")
    parser.add_argument("--no-refine", action="store_true", help="skip all refinement timings")
    parser.add_argument("--weights-dir", default=None, help="folder of immunofold members, with its members.json if any (default: shipped)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out-dir", default=RESULTS_DIR)
    parser.add_argument("--out-name", default="speed", help="result file names: <out-name>.md, .json")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Timer:
    """Collects named wall-clock samples (and this process's CPU time, all threads, for `time`); best = min, med =
    median. CPU time is the work done, which other load on a shared machine inflates far less than wall time."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def time(self, name: str, fn, *args, **kwargs):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.add(name, time.perf_counter() - start)
        self.cpu.setdefault(name, []).append(time.process_time() - cpu_start)
        return result

    def stats(self) -> dict:
        return {k: {"best": round(min(v), 4), "median": round(statistics.median(v), 4), "runs": len(v),
                    **({"cpu_best": round(min(self.cpu[k]), 4)} if k in self.cpu else {})}
                for k, v in self.samples.items()}


def batch_sequences(data_root: str, split: str, size: int) -> list[tuple[str, str, str]]:
    """(name, heavy, light): trastuzumab first, then val antibodies in summary order (cycled if too few)."""
    pool = [("trastuzumab", TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT)]
    others = [(e.name, *e.sequences) for e in read_summary(data_root) if e.split == split and e.kind == "antibody"]
    if size > 1 and not others:
        log(f"no {split} antibodies under {data_root}: batches repeat trastuzumab")
        others = pool
    while len(pool) < size:
        pool.append(others[(len(pool) - 1) % len(others)])
    return pool[:size]


# --- immunofold ------------------------------------------------------------------------------


def bench_immunofold(args, batches, tmp: str, result: dict, fast: bool = False) -> None:
    """immunofold's stages and throughput; with `fast`, of its fast member set (`--fast`)."""
    from immunofold.data.features import collate, featurise
    from immunofold.ensemble import Ensemble, member_spread, superpose_members
    from immunofold.prediction import Predictor
    from immunofold.weights import FAST_MEMBERS_FILE, MEMBERS_FILE, folder_member_sets, packaged_member_sets

    manifest = FAST_MEMBERS_FILE if fast else MEMBERS_FILE
    files = folder_member_sets(args.weights_dir, manifest) if args.weights_dir else packaged_member_sets(fast)
    if not files:
        result["unavailable"] = "no immunofold weights found (none shipped, no --weights-dir / $IMMUNOFOLD_WEIGHTS)"
        return
    timer = Timer()
    start = time.perf_counter()
    predictor = Predictor(Ensemble(files, members_side_by_side=True))  # as the command line runs it
    result["load_seconds"] = round(time.perf_counter() - start, 3)
    result["weights"] = predictor.ensemble.version
    models = predictor.ensemble.models_of("antibody")  # the members that predict trastuzumab
    result["members"] = len(models)

    def end_to_end(items, refine=False, out=tmp):
        predictions = predictor.predict_numbered(number_antibodies(items))
        if refine:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                predictions = [predictor.refine(p) for p in predictions]
        for p in predictions:
            p.save(os.path.join(out, f"immunofold_{p.name}.pdb"))
        return predictions

    # Per-stage timings on the trastuzumab Fv (batch 1).
    one = batches[1] if 1 in batches else batch_sequences(args.data, args.split, 1)
    end_to_end(one, refine=not args.no_refine)  # warm-up (the first refinement also imports hydride, ~0.5 s)
    stages = Timer()
    for _ in range(args.repeats):
        numbered = stages.time("numbering", number_antibodies, one)
        batch = stages.time("features", lambda: collate([featurise(k, c) for _, k, c in numbered]))
        outputs = []
        with torch.no_grad():
            for i, model in enumerate(models):
                outputs.append(stages.time(f"model forward, member {i}", model, batch))

            def post():
                members = superpose_members(torch.stack([o["atom14"] for o in outputs]), batch["residue_mask"])
                return member_spread(members, batch["residue_mask"])

            stages.time("ensemble (superpose members, spread, ranking)", post)
        prediction = predictor.predict_numbered(numbered)[0]
        stages.time("writing PDB (unrefined)", prediction.save, os.path.join(tmp, "stage.pdb"))
    if not args.no_refine:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prediction = stages.time("refinement (OpenMM)", predictor.refine, prediction)
        result["refined_ok"] = prediction.refined
        stages.time("writing PDB (refined)", prediction.save, os.path.join(tmp, "stage_refined.pdb"))
        with open(os.path.join(tmp, "immunofold_unrefined_trastuzumab.pdb"), "w") as handle:
            handle.write(_unrefined_pdb(prediction))
    result["stages"] = stages.stats()
    forward = [v["best"] for k, v in result["stages"].items() if k.startswith("model forward")]
    result["forward_all_members_best"] = round(sum(forward), 4)

    throughput = {}
    for size, items in batches.items():
        repeats = args.repeats if size <= 8 else args.large_repeats
        for _ in range(repeats):
            timer.time(f"unrefined, batch {size}", end_to_end, items)
    if 1 in batches and not args.no_refine and not fast:  # refinement does not depend on the member set
        for _ in range(args.repeats):
            timer.time("refined, batch 1", end_to_end, batches[1], True)
    for name, stat in timer.stats().items():
        size = int(name.rsplit(" ", 1)[1])
        throughput[name] = {**stat, "batch": size, "structures_per_s": round(size / stat["best"], 3),
                            "s_per_structure": round(stat["best"] / size, 4),
                            "cpu_s_per_structure": round(stat["cpu_best"] / size, 4)}
    result["throughput"] = throughput


def _unrefined_pdb(prediction) -> str:
    from immunofold.io import to_pdb_string

    return to_pdb_string(prediction.unrefined_structure())


# --- FlashABB --------------------------------------------------------------------------------


def bench_flashabb(args, batches, numbered_inputs, tmp: str, result: dict) -> None:
    try:
        from flash_abb import pretrained
    except ImportError as error:
        result["unavailable"] = f"FlashABB not installed ({error}); pip install -e .[bench]"
        return
    result["version"] = package_version("flash-abb")
    start = time.perf_counter()
    model = pretrained(device="cpu")
    result["load_seconds"] = round(time.perf_counter() - start, 3)
    timer = Timer()

    def run(seqs, names, write=True):
        with torch.inference_mode():
            out = model(seqs)
            if write:
                out.to_pdbs(names, pdb_dir=tmp)
        return out

    seqs1, names1 = numbered_inputs[min(batches)]
    run(seqs1, names1)  # warm-up
    for size in batches:
        seqs, names = numbered_inputs[size]
        repeats = args.repeats if size <= 8 else args.large_repeats
        for _ in range(repeats):
            timer.time(f"forward, batch {size}", run, seqs, names, False)
            timer.time(f"forward + write PDBs, batch {size}", run, seqs, names, True)
    throughput = {}
    for name, stat in timer.stats().items():
        size = int(name.rsplit(" ", 1)[1])
        throughput[name] = {**stat, "batch": size, "structures_per_s": round(size / stat["best"], 3),
                            "s_per_structure": round(stat["best"] / size, 4),
                            "cpu_s_per_structure": round(stat["cpu_best"] / size, 4)}
    result["throughput"] = throughput
    result["trastuzumab_pdb"] = os.path.join(tmp, f"{names1[0]}.pdb")


# --- IgFold ------------------------------------------------------------------------------------


def bench_igfold(args, heavy: str, light: str, tmp: str, result: dict) -> None:
    """IgFold's fold() of one Fv at batch 1 (it has no batched file output), timed by its runner in its own venv:
    a warm-up, then --repeats timed folds, each AntiBERTy -> 4 models -> pick by pRMSD -> unrefined PDB."""
    python, unavailable = igfold_peer.find_python(args.igfold_python)
    if unavailable:
        result["unavailable"] = unavailable
        return
    result["version"] = igfold_peer.VERSION
    chains = igfold_peer.igfold_chains("antibody", [heavy, light])
    out = os.path.join(tmp, "igfold")
    try:
        run = igfold_peer.run_runner(python, [{"name": "trastuzumab", "chains": chains}], out, repeats=args.repeats,
                                     warm_up=True, threads=args.threads, log=log)
        model = igfold_peer.read_result(out, "trastuzumab", chains)
    except (RuntimeError, ValueError) as error:
        result["unavailable"] = str(error)
        return
    result.update(load_seconds=run["load_seconds"], members=run["models"], threads=run["threads"])
    best, median = min(model.seconds), statistics.median(model.seconds)
    result["throughput"] = {"unrefined, batch 1": {"best": best, "median": round(median, 4), "runs": len(model.seconds),
                                                   "batch": 1, "structures_per_s": round(1 / best, 3),
                                                   "s_per_structure": best}}


# --- ImmuneBuilder ---------------------------------------------------------------------------


def hmmer_on_path() -> str | None:
    """Put the real hmmscan of the `hmmer` wheel first on PATH (ANARCI's parser breaks on the venv wrapper)."""
    try:
        import hmmer
    except ImportError:
        return None
    folder = os.path.join(os.path.dirname(hmmer.__file__), "data", "bin")
    if os.path.isdir(folder):
        os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
        return folder
    return None


def bench_immunebuilder(args, tmp: str, refine_input: str | None, result: dict) -> None:
    hmmer_bin = hmmer_on_path()
    try:
        import anarci  # noqa: F401
        from ImmuneBuilder.ABodyBuilder2 import ABodyBuilder2
        from ImmuneBuilder.models import StructureModule
        from ImmuneBuilder.refine import refine as ib_refine
        from ImmuneBuilder.sequence_checks import number_sequences
    except ImportError as error:
        result["unavailable"] = f"ImmuneBuilder (or ANARCI) not installed ({error}); pip install -e .[bench]"
        return
    if hmmer_bin is None:
        result["unavailable"] = "hmmscan from the PyPI `hmmer` package not found (pip install hmmer)"
        return
    result["version"] = package_version("ImmuneBuilder")
    result["weights"] = "random (torch.manual_seed(0)); real weights cannot be downloaded offline"
    weights_dir = os.path.join(tmp, "ib_weights")
    os.makedirs(weights_dir, exist_ok=True)
    torch.manual_seed(0)
    for name, dim in IB_EMBED_DIMS.items():
        torch.save(StructureModule(rel_pos_dim=64, embed_dim=dim).state_dict(), os.path.join(weights_dir, name))
    sequences = {"H": TRASTUZUMAB_HEAVY, "L": TRASTUZUMAB_LIGHT}
    start = time.perf_counter()
    builder = ABodyBuilder2(weights_dir=weights_dir)
    result["load_seconds"] = round(time.perf_counter() - start, 3)

    number_sequences(sequences)  # warm-up (ANARCI loads its HMMs)
    stages, timer = Timer(), Timer()
    for _ in range(args.ib_repeats):
        stages.time("numbering (ANARCI)", number_sequences, sequences)

        def predict_and_write():
            antibody = builder.predict(sequences)
            antibody.save_single_unrefined(os.path.join(tmp, "ib_unrefined.pdb"), index=antibody.ranking[0])
            return antibody

        timer.time("unrefined, batch 1", predict_and_write)
    # Forward pass of each model alone, on its own encoding (what predict() runs after numbering).
    from ImmuneBuilder.util import get_encoding

    numbered = number_sequences(sequences)
    seqs = {c: "".join(x[1] for x in numbered[c]) for c in numbered}
    encoding = torch.tensor(get_encoding(seqs), dtype=torch.get_default_dtype())
    with torch.no_grad():
        for _ in range(args.ib_repeats):
            for i, (name, model) in enumerate(builder.models.items()):
                stages.time(f"model forward, member {i} ({name}, dim {IB_EMBED_DIMS[name]})", model, encoding,
                            seqs["H"] + seqs["L"])
    if not args.no_refine and refine_input:
        for _ in range(args.ib_repeats):
            out = os.path.join(tmp, "ib_refined.pdb")
            ok = stages.time("refinement (OpenMM, ImmuneBuilder.refine)", ib_refine, refine_input, out)
        result["refine_input"] = os.path.basename(refine_input)
        result["refined_ok"] = bool(ok)
        unrefined = timer.stats()["unrefined, batch 1"]["best"]
        timer.add("refined, batch 1", unrefined + min(stages.samples["refinement (OpenMM, ImmuneBuilder.refine)"]))
    result["stages"] = stages.stats()
    forward = [v["best"] for k, v in result["stages"].items() if k.startswith("model forward")]
    result["forward_all_members_best"] = round(sum(forward), 4)
    result["throughput"] = {name: {**stat, "batch": 1, "structures_per_s": round(1 / stat["best"], 3),
                                   "s_per_structure": stat["best"]} for name, stat in timer.stats().items()}


def bench_immunofold_refine_same_input(refine_input: str, repeats: int, result: dict) -> None:
    """immunofold's refinement on the same input file ImmuneBuilder refined (like-for-like)."""
    from immunofold.refine import refine

    with open(refine_input) as handle:
        text = handle.read()
    timer = Timer()
    for _ in range(repeats):
        outcome = timer.time("refine", refine, text)
    result["refine_same_input"] = {**timer.stats()["refine"], "input": os.path.basename(refine_input),
                                   "refined_ok": outcome.refined}


# --- report ----------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(report: dict) -> str:
    m = report["machine"]
    imf, fab, ib = (report["tools"].get(k, {}) for k in ("immunofold", "flashabb", "immunebuilder"))
    lines = [
        "# Speed on the CPU: immunofold vs FlashABB vs IgFold vs ImmuneBuilder (ABodyBuilder2 architecture)",
        "",
        f"Generated {report['generated']} by `{report['command']}`; all tools timed in this one run.",
        "",
        f"Machine: {m['cpu_model']}; os.cpu_count() = {m['cpu_count']}; torch {m['torch_version']} with "
        f"{m['torch_threads']} threads; load average at start {m['load_average_at_start']} (1, 5, 15 min); "
        f"Python {m['python']}.",
        "",
        "Inputs: the trastuzumab Fv (VH 120 + VL 107 residues) at batch 1; at batch 8 and 64 trastuzumab plus "
        f"{report['split']}-split antibodies of `{report['data_root']}`. Times: best of the timed runs after a "
        "warm-up (median in brackets); wall clock; model loading not included (listed separately).",
        "",
    ]
    for key, label in TOOL_LABELS.items():
        block = report["tools"].get(key)
        if block is None:
            lines.append(f"- {label}: not requested.")
        elif block.get("unavailable"):
            lines.append(f"- **{label}: not run — {block['unavailable']}.**")
    lines.append("")
    for key in ("immunofold", "immunofold-fast"):
        block = report["tools"].get(key, {})
        if block.get("stages"):
            lines += [f"## {TOOL_LABELS[key]} stages (trastuzumab, batch 1; weights `{block['weights']}`, "
                      f"{block['members']} members)", "", "| stage | best | median |", "|---|--:|--:|"]
            for name, stat in block["stages"].items():
                lines.append(f"| {name} | {fmt_s(stat['best'])} | {fmt_s(stat['median'])} |")
            lines += [f"| *model forward, all members* | {fmt_s(block['forward_all_members_best'])} | |",
                      "", f"Loading the ensemble: {fmt_s(block['load_seconds'])}.", ""]
    if ib.get("stages"):
        lines += ["## ImmuneBuilder stages (trastuzumab; random weights)", "", "| stage | best | median |",
                  "|---|--:|--:|"]
        for name, stat in ib["stages"].items():
            lines.append(f"| {name} | {fmt_s(stat['best'])} | {fmt_s(stat['median'])} |")
        lines += [f"| *model forward, all 4 members* | {fmt_s(ib['forward_all_members_best'])} | |", "",
                  f"Loading the 4 models: {fmt_s(ib['load_seconds'])}. Refinement input: "
                  f"`{ib.get('refine_input', '-')}` (a real-geometry model; random-weight output is not a meaningful "
                  "refinement input).", ""]
    lines += ["Where the time goes (CPU time per stage, top torch operators at batch 1/8/64): [profile.md](profile.md), "
              "written by `python benchmarks/profile_speed.py`.", ""]
    lines += ["## Throughput (end to end)", "",
              "immunofold: numbering (one receptor as `immunofold predict` numbers it, several as `immunofold batch` "
              "does: 8 records per anarcism call) -> features -> ensemble -> PDB files. FlashABB: forward (+ writing PDBs), from "
              "the same IMGT-trimmed V-domain sequences (it does no numbering). IgFold: `fold()` of the same V "
              "domains (AntiBERTy -> 4 models -> unrefined PDB; no numbering, no refinement), timed in its own venv "
              "(model loading not included). ImmuneBuilder: ANARCI numbering -> "
              "4 models -> ranking -> unrefined PDB (it has no batching: batch 1 only); refined = that + its "
              "refinement.", "",
              "CPU / structure: this process's CPU time (all its threads) in the best run, divided by the batch: the "
              "work done, which other load on a shared machine inflates far less than wall time.", "",
              "| tool | mode | batch | s / batch (median) | s / structure | structures / s | CPU / structure |",
              "|---|---|--:|--:|--:|--:|--:|"]
    for key, label in TOOL_LABELS.items():
        for name, stat in report["tools"].get(key, {}).get("throughput", {}).items():
            mode = name.rsplit(",", 1)[0]
            cpu = fmt_s(stat["cpu_s_per_structure"]) if "cpu_s_per_structure" in stat else "-"
            lines.append(f"| {label} | {mode} | {stat['batch']} | {stat['best']:.3f} ({stat['median']:.3f}) | "
                         f"{fmt_s(stat['s_per_structure'])} | {stat['structures_per_s']:.2f} | {cpu} |")
    lines.append("")
    igfold = report["tools"].get("igfold", {})
    if igfold.get("throughput"):
        lines += [f"IgFold {igfold['version']}: loading its {igfold['members']} models and AntiBERTy "
                  f"{fmt_s(igfold['load_seconds'])}; torch with {igfold['threads']} threads in its venv.", ""]
    if report.get("ratios"):
        lines += ["## Ratios (same run; > 1 means immunofold is faster)", "", "| comparison | ratio |", "|---|--:|"]
        lines += [f"| {name} | {value:.2f}x |" for name, value in report["ratios"].items()]
        lines.append("")
    if imf.get("refine_same_input"):
        r = imf["refine_same_input"]
        lines += [f"Refinement on the same input (`{r['input']}`): immunofold {fmt_s(r['best'])}, "
                  f"ImmuneBuilder {fmt_s(ib['stages']['refinement (OpenMM, ImmuneBuilder.refine)']['best'])}.", ""]
    load = m.get("load_average_at_start")
    if load and m["cpu_count"] and load[0] > 0.5 * m["cpu_count"]:
        lines += [f"**Warning: the machine was busy (1-min load {load[0]} on {m['cpu_count']} cores).** torch with more "
                  "threads than free cores can be many times slower (threads wait for descheduled siblings); rerun on "
                  "an idle machine, or with `--threads 1`, before quoting these numbers.", ""]
    lines += ["Notes: ImmuneBuilder's timings use randomly initialised parameters of the published architecture "
              "(`StructureModule(rel_pos_dim=64, embed_dim=128/256)` x4); its speed does not depend on weight values. "
              "immunofold refines with 1 OpenMM CPU thread; ImmuneBuilder's refine uses OpenMM's default. The machine "
              "may be shared: compare tools only within one report.", ""]
    return "\n".join(lines)


def ratios(report: dict) -> dict:
    tools = report["tools"]
    imf = tools.get("immunofold", {}).get("throughput", {})
    out = {}
    for key in ("immunofold", "immunofold-fast"):
        for size in report["batch_sizes"]:
            ours = tools.get(key, {}).get("throughput", {}).get(f"unrefined, batch {size}")
            fab = tools.get("flashabb", {}).get("throughput", {}).get(f"forward + write PDBs, batch {size}")
            if ours and fab:
                label = TOOL_LABELS[key]
                out[f"FlashABB / {label} time, batch {size} (unrefined, with writing)"] = round(fab["best"] / ours["best"], 2)
                out[f"FlashABB / {label} CPU time, batch {size} (unrefined, with writing)"] = round(
                    fab["cpu_s_per_structure"] / ours["cpu_s_per_structure"], 2)
    igfold = tools.get("igfold", {}).get("throughput", {}).get("unrefined, batch 1")
    if igfold and imf.get("unrefined, batch 1"):
        out["IgFold / immunofold time, batch 1, unrefined"] = round(igfold["best"] / imf["unrefined, batch 1"]["best"], 2)
    ib = tools.get("immunebuilder", {}).get("throughput", {})
    for mode in ("unrefined", "refined"):
        if imf.get(f"{mode}, batch 1") and ib.get(f"{mode}, batch 1"):
            out[f"ImmuneBuilder / immunofold time, batch 1, {mode}"] = round(
                ib[f"{mode}, batch 1"]["best"] / imf[f"{mode}, batch 1"]["best"], 2)
    ib_stages = tools.get("immunebuilder", {}).get("forward_all_members_best")
    if ib_stages and tools.get("immunofold", {}).get("forward_all_members_best"):
        out["ImmuneBuilder / immunofold ensemble forward pass (all members, batch 1)"] = round(
            ib_stages / tools["immunofold"]["forward_all_members_best"], 2)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as the command line runs (every tool of this process gets it)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    started = time.time()
    sizes = sorted(set(args.batch_sizes))
    batches = {size: batch_sequences(args.data, args.split, size) for size in sizes}
    report = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine, "data_root": os.path.abspath(args.data), "split": args.split,
              "batch_sizes": sizes, "repeats": args.repeats, "large_repeats": args.large_repeats,
              "tools": {}}
    from immunofold.sequences import number_receptor

    numbered_inputs = {}
    for size, items in batches.items():
        chains = [number_receptor("antibody", {"heavy": h, "light": lt}, n) for n, h, lt in items]
        numbered_inputs[size] = (["|".join(c.sequence for c in pair) for pair in chains],
                                 [f"flashabb_b{size}_{i}_{n}" for i, (n, _, _) in enumerate(items)])
    with tempfile.TemporaryDirectory(prefix="immunofold-speed-") as tmp:
        refine_input = None
        if "flashabb" in args.tools:
            log("timing FlashABB")
            report["tools"]["flashabb"] = block = {}
            bench_flashabb(args, batches, numbered_inputs, tmp, block)
            refine_input = block.get("trastuzumab_pdb")
            block.pop("trastuzumab_pdb", None)
        if "immunofold" in args.tools:
            log("timing immunofold")
            report["tools"]["immunofold"] = block = {}
            bench_immunofold(args, batches, tmp, block)
            if refine_input is None and os.path.exists(os.path.join(tmp, "immunofold_unrefined_trastuzumab.pdb")):
                refine_input = os.path.join(tmp, "immunofold_unrefined_trastuzumab.pdb")
        if "immunofold-fast" in args.tools:
            log("timing immunofold --fast")
            report["tools"]["immunofold-fast"] = block = {}
            bench_immunofold(args, batches, tmp, block, fast=True)
        if "igfold" in args.tools:
            log("timing IgFold")
            report["tools"]["igfold"] = block = {}
            heavy, light = numbered_inputs[min(sizes)][0][0].split("|")
            bench_igfold(args, heavy, light, tmp, block)
        if "immunebuilder" in args.tools:
            log("timing ImmuneBuilder")
            report["tools"]["immunebuilder"] = block = {}
            bench_immunebuilder(args, tmp, refine_input, block)
            if ("immunofold" in report["tools"] and "stages" in block and refine_input
                    and not args.no_refine and not report["tools"]["immunofold"].get("unavailable")):
                bench_immunofold_refine_same_input(refine_input, args.ib_repeats, report["tools"]["immunofold"])
    for name, block in report["tools"].items():
        if block.get("unavailable"):
            log(f"{name} not run: {block['unavailable']}")
    report["ratios"] = ratios(report)
    report["seconds"] = round(time.time() - started, 1)
    text = markdown(report)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"{args.out_name}.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out_dir, f"{args.out_name}.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    print(text)
    log(f"wrote {args.out_dir}/{args.out_name}.md and .json ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
