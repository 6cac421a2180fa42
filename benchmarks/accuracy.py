"""Accuracy of immunofold, FlashABB, IgFold and a nearest-template baseline on a SAbDab/STCRDab-like folder.

    python benchmarks/accuracy.py                      # val split of ../shared/data, all methods
    python benchmarks/accuracy.py --limit 5 --methods immunofold template
    python benchmarks/accuracy.py --methods igfold --igfold-out /tmp/igfold   # keeps (and resumes) IgFold's PDBs

Every method is scored by immunofold's own metric code (`immunofold.metrics.region_rmsds`, as in
`immunofold evaluate`): per chain, RMSD over N, CA, C, CB after superposing that chain's framework
backbone; CDRs by IMGT definition (27-38, 56-65, 105-117). Residues are matched to the experimental
structure by (chain, IMGT position), with the IMGT numbering of the sequences given to the methods.
Error estimates (immunofold's error column, IgFold's pRMSD) are scored as `immunofold evaluate` scores ours:
per-structure Spearman against the real CA deviation, and predicted CDR3 error vs real CDR3 RMSD across entries.
IgFold runs in its own venv (scripts/setup_igfold.sh; `--igfold-python`), through benchmarks/peers/igfold_runner.py.

Writes <out-dir>/accuracy.md, accuracy.json (summaries + per-entry rows) and accuracy_cdr3.png, and
prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (
    DEFAULT_CACHE_DIR,
    DEFAULT_DATA_ROOT,
    RESULTS_DIR,
    machine_info,
    nearest_template,
    package_version,
    region_names,
    score_atom14,
    summarise_rows,
    templates_by_kind,
    thread_template,
    truth_cdr3_reaches,
)

from peers import igfold_peer

from immunofold.constants import KIND_CHAIN_IDS, KINDS
from immunofold.data.sabdab import _load_or_reason, load_example, read_summary
from immunofold.evaluate import number_entry
from immunofold.metrics import STANDING_OUT_REACH, error_spearman
from immunofold.sequences import InputError

METHODS = ("immunofold", "flashabb", "igfold", "template")
METHOD_LABELS = {"immunofold": "immunofold", "flashabb": "FlashABB 0.0.5", "igfold": f"IgFold {igfold_peer.VERSION}",
                 "template": "nearest template"}
ERROR_ESTIMATES = {"immunofold": "error column (expected CA deviation)", "igfold": "pRMSD (B-factor column)"}
CDR3_PANELS = [("antibody", "H3"), ("antibody", "L3"), ("nanobody", "H3"), ("tcr", "A3"), ("tcr", "B3")]
CHUNK = 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT, help="SAbDab/STCRDab-like folder (default: %(default)s)")
    parser.add_argument("--split", default="val", help="split to score (default: val)")
    parser.add_argument("--template-split", default="train", help="split the template baseline draws from (default: train)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many entries per kind (for quick runs)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--refine", action="store_true", help="score immunofold's refined models (default: unrefined)")
    parser.add_argument("--weights-dir", default=None, help="folder of immunofold members, with its members.json if any (default: shipped)")
    parser.add_argument("--cdr3-weight", type=float, default=1.0,
                        help="weight of CDR3 positions in the template identity (default 1 = unweighted)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR,
                        help="featurised-split cache shared with training (default: %(default)s)")
    parser.add_argument("--out-dir", default=RESULTS_DIR, help="where result files go (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--igfold-python", default=None,
                        help=f"python of the IgFold venv (default: {os.path.relpath(igfold_peer.DEFAULT_PYTHON)} if "
                             "present, else IgFold is not run; made by scripts/setup_igfold.sh)")
    parser.add_argument("--igfold-out", default=None,
                        help="keep IgFold's PDBs here; a rerun folds only what is missing (default: a temporary folder)")
    parser.add_argument("--igfold-existing", action="store_true",
                        help="do not run IgFold: score the models already in --igfold-out (from an earlier or a "
                             "parallel run); entries without one are listed as skipped")
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------


def select_entries(root: str, split: str, kinds, limit):
    entries = read_summary(root)
    chosen = []
    for kind in kinds:
        chosen += [e for e in entries if e.split == split and e.kind == kind][:limit]
    return chosen


def load_inputs(entries):
    """Per entry: (numbered chains, truth example) or the reason it is skipped."""
    loaded = []
    for entry in entries:
        try:
            numbered = number_entry(entry)
            truth = load_example(entry)
            loaded.append((entry, numbered, truth, None))
        except InputError as error:
            loaded.append((entry, None, None, str(error)))
    return loaded


def split_examples(root: str, split: str, cache_dir: str) -> list[dict]:
    """Featurised examples of a split: from the training cache when it matches `root`, else built here."""
    entries = [e for e in read_summary(root) if e.split == split]
    names = {e.name for e in entries}
    cache = os.path.join(cache_dir, f"examples-{split}.pt")
    if os.path.exists(cache):
        examples = torch.load(cache, weights_only=False)
        cached = {e["name"] for e in examples}
        if cached <= names and len(cached) >= 0.95 * len(names):
            log(f"template library: {len(examples)} {split} examples from {cache}")
            return examples
        log(f"{cache} does not match {root} {split}; featurising the split here")
    log(f"featurising {len(entries)} {split} entries for the template library (once; cached in {cache_dir})")
    examples, skipped = featurise_entries(entries)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        if not os.path.exists(cache):
            torch.save(examples, cache + ".tmp")
            os.replace(cache + ".tmp", cache)
            with open(os.path.join(cache_dir, f"skipped-{split}.txt"), "w") as handle:
                handle.write(f"# {len(skipped)} of {len(entries)} {split} entries skipped\n")
                handle.writelines(line + "\n" for line in skipped)
    except OSError as error:
        log(f"could not cache the {split} examples: {error}")
    return examples


def featurise_entries(entries) -> tuple[list[dict], list[str]]:
    """(examples, skip reasons), in this process: about 65 ms an entry (a few minutes for train, once).
    No worker pool: forking after torch has run threads can deadlock, and spawned workers need an
    importable __main__."""
    results = [_load_or_reason(entry) for entry in entries]
    examples = [{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in e.items()}
                for e, _ in results if e is not None]
    return examples, [r for _, r in results if r is not None]


def chain_keys(numbered) -> list:
    return [(slot, tuple(pos)) for slot, chain in enumerate(numbered) for pos in chain.positions]


def skipped_row(entry, reason: str) -> dict:
    return {"name": entry.name, "kind": entry.kind, "status": f"skipped: {reason}"}


# --- methods ---------------------------------------------------------------------------------


def run_immunofold(loaded, refine: bool, weights_dir: str | None):
    from immunofold.ensemble import Ensemble
    from immunofold.evaluate import score_entry
    from immunofold.prediction import Predictor
    from immunofold.weights import folder_member_sets, packaged_member_sets

    files = folder_member_sets(weights_dir) if weights_dir else packaged_member_sets()
    if not files:
        return None, "no immunofold weights found (none shipped, no --weights-dir / $IMMUNOFOLD_WEIGHTS)", []
    predictor = Predictor(Ensemble(files))
    rows = []
    usable = [item for item in loaded if item[3] is None]
    rows += [skipped_row(e, r) for e, _, _, r in loaded if r is not None]
    for start in range(0, len(usable), CHUNK):
        chunk = usable[start : start + CHUNK]
        predictions = predictor.predict_numbered([(e.name, e.kind, numbered) for e, numbered, _, _ in chunk])
        for prediction, (entry, _, truth, _) in zip(predictions, chunk):
            if refine:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prediction = predictor.refine(prediction)
            row = {"name": entry.name, "kind": entry.kind, "status": "ok"}
            scored = score_entry(prediction, truth, refine and prediction.refined)
            row.update({k: v for k, v in scored.items() if k != "error_spearman"})
            row["error_spearman"] = scored.get("error_spearman")
            row.update(truth_cdr3_reaches(entry.kind, truth))
            if refine:
                row["refined"] = prediction.refined
            rows.append(row)
        log(f"  immunofold {min(start + CHUNK, len(usable))}/{len(usable)}")
    return predictor.ensemble.version, None, rows


def run_flashabb(loaded):
    try:
        from flash_abb import pretrained
    except ImportError as error:
        return None, f"FlashABB not installed ({error}); pip install -e .[bench]", []
    model = pretrained(device="cpu")
    rows = []
    for entry, numbered, truth, reason in loaded:
        if entry.kind != "antibody":
            continue  # heavy-only and TCR input run but give broken geometry (see benchmarks/README.md)
        if reason is not None:
            rows.append(skipped_row(entry, reason))
            continue
        with torch.inference_mode():
            result = model(["|".join(chain.sequence for chain in numbered)])
        coords = result.coords[0].float().numpy()  # [L, 14, 3]; FlashABB's atom14 order == ATOM14_NAMES
        row = {"name": entry.name, "kind": entry.kind, "status": "ok"}
        row.update(score_atom14(entry.kind, coords, chain_keys(numbered), truth))
        rows.append(row)
    return package_version("flash-abb"), None, rows


def run_igfold(loaded, python_option: str | None, out_dir: str, threads: int | None, existing_only: bool = False):
    """IgFold's unrefined models (antibodies and nanobodies) scored like the others, its pRMSD as error estimate;
    `existing_only`: score the models already in `out_dir` without running IgFold."""
    python, unavailable = igfold_peer.find_python(python_option)
    if unavailable and not existing_only:
        return None, unavailable, []
    rows, todo = [], []
    for entry, numbered, truth, reason in loaded:
        if entry.kind not in igfold_peer.KINDS:
            continue
        if reason is not None:
            rows.append(skipped_row(entry, reason))
            continue
        todo.append((entry, numbered, truth, igfold_peer.igfold_chains(entry.kind, [c.sequence for c in numbered])))
    records = [{"name": entry.name, "chains": chains} for entry, _, _, chains in todo]
    try:
        if not existing_only:
            igfold_peer.run_runner(python, records, out_dir, threads=threads, log=log)
    except RuntimeError as error:
        return None, str(error), []
    for entry, numbered, truth, chains in todo:
        try:
            model = igfold_peer.read_result(out_dir, entry.name, chains)
        except ValueError as error:
            rows.append(skipped_row(entry, str(error).removeprefix(f"{entry.name}: ")))
            continue
        row = {"name": entry.name, "kind": entry.kind, "status": "ok", "seconds": min(model.seconds)}
        row.update(score_atom14(entry.kind, model.atom14, chain_keys(numbered), truth, model.prmsd))
        rows.append(row)
    return igfold_peer.VERSION, None, rows


def igfold_seconds(rows: list[dict]) -> str:
    """IgFold's fold time per structure, by kind, from the rows it scored."""
    parts = []
    for kind, label in (("antibody", "Fv"), ("nanobody", "nanobody")):
        seconds = [r["seconds"] for r in rows if r["kind"] == kind and r["status"] == "ok"]
        if seconds:
            parts.append(f"{np.mean(seconds):.1f} s per {label} (median {np.median(seconds):.1f} s, n={len(seconds)})")
    return ("Fold time per structure as its runner timed it (wall clock; a busy machine or parallel runners inflate "
            "it: speed.py measures speed): " + "; ".join(parts) + ".") if parts else ""


def run_template(loaded, library: dict, cdr3_weight: float):
    rows = []
    for entry, numbered, truth, reason in loaded:
        if reason is not None:
            rows.append(skipped_row(entry, reason))
            continue
        keys = chain_keys(numbered)
        sequence = "".join(chain.sequence for chain in numbered)
        template, identity = nearest_template(keys, sequence, library[entry.kind], cdr3_weight)
        coords, fallbacks = thread_template(keys, template)
        row = {"name": entry.name, "kind": entry.kind, "status": "ok", "template": template.name,
               "template_identity": round(identity, 4), "template_fallback_residues": fallbacks}
        row.update(score_atom14(entry.kind, coords, keys, truth))
        rows.append(row)
    return None, None, rows


# --- output ----------------------------------------------------------------------------------


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(report: dict) -> str:
    lines = [
        "# Accuracy: immunofold vs FlashABB vs IgFold vs nearest template",
        "",
        f"Data: `{report['data_root']}`, split **{report['split']}** "
        f"(templates from split {report['template_split']}). Generated {report['generated']} by "
        f"`{report['command']}`.",
        "",
        f"immunofold weights: `{report['weights']}`, {'refined' if report['refined'] else 'unrefined'} models.",
        "",
        "Metric (same code as `immunofold evaluate`, `immunofold.metrics.region_rmsds`): RMSD in Å over backbone "
        "atoms N, CA, C, CB (CB where the experimental residue has one), each chain superposed on its own "
        "framework backbone (IMGT 1-128 outside the CDRs); CDRs by IMGT definition: 1 = 27-38, 2 = 56-65, "
        "3 = 105-117; fr = framework. Residues matched by chain and IMGT position. Cells: **mean / median** "
        "over entries; n = entries scored.",
        "",
    ]
    for kind in report["kinds"]:
        regions = region_names(kind)
        lines += [f"## {kind}", "", "| method | n | " + " | ".join(regions) + " |",
                  "|---|--:|" + "--:|" * len(regions)]
        for method in report["methods"]:
            block = report["summary"].get(method, {}).get(kind)
            if block is None or not block["n"]:
                continue
            cells = [f"{fmt(block['mean'][r])} / {fmt(block['median'][r])}" for r in regions]
            lines.append(f"| {METHOD_LABELS[method]} | {block['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += subset_section(report)
    lines += conformation_section(report)
    lines += error_estimate_section(report)
    lines += ["## Methods", ""]
    for method in report["methods"]:
        info = report["method_info"][method]
        lines.append(f"- **{METHOD_LABELS[method]}**: {info['description']}" +
                     (f" Not run: {info['unavailable']}." if info.get("unavailable") else
                      f" {info['seconds']:.0f} s for the run."))
    if "flashabb" in report["methods"]:
        lines += ["", "Caveat: FlashABB's training set is not published with the package; recent (2021+) val antibodies may "
                  "be in it, so its val numbers may be optimistic. immunofold and the template baseline see only the "
                  "train split."]
    if "igfold" in report["methods"]:
        lines += ["", "Caveat: IgFold was trained on SAbDab structures (and AlphaFold-distilled models) that this "
                  "repository cannot list; val entries may be among them, so its val numbers may be optimistic too."]
    skipped = sorted({r["name"] + ": " + r["status"] for rows in report["rows"].values() for r in rows
                      if r["status"] != "ok"})
    if skipped:
        lines += ["", "Skipped entries:", ""] + [f"- {s}" for s in skipped]
    lines += ["", f"Machine: {report['machine']['cpu_model']}, {report['machine']['cpu_count']} cores, "
              f"torch {report['machine']['torch_version']} with {report['machine']['torch_threads']} threads.",
              "", "Per-entry CDR3 RMSDs: `accuracy_cdr3.png`; all numbers: `accuracy.json`.", ""]
    return "\n".join(lines)


def subset_section(report: dict) -> list[str]:
    """Every method on the entries IgFold scored, when it scored fewer than the others (a partial IgFold run)."""
    rows = report["rows"]
    lines = []
    for kind in igfold_peer.KINDS:
        names = {r["name"] for r in rows.get("igfold", []) if r["kind"] == kind and r["status"] == "ok"}
        most = max((sum(r["kind"] == kind and r["status"] == "ok" for r in rs) for rs in rows.values()), default=0)
        if not names or len(names) == most:
            continue
        regions = region_names(kind)
        lines += [f"## {kind}, on the {len(names)} entries IgFold scored", "",
                  "| method | n | " + " | ".join(regions) + " |", "|---|--:|" + "--:|" * len(regions)]
        for method in report["methods"]:
            block = summarise_rows([r for r in rows.get(method, []) if r["kind"] == kind and r["name"] in names], kind)
            if block["n"]:
                cells = [f"{fmt(block['mean'][r])} / {fmt(block['median'][r])}" for r in regions]
                lines.append(f"| {METHOD_LABELS[method]} | {block['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def conformation_section(report: dict) -> list[str]:
    """Nanobody CDR3 RMSD split by the experimental loop's reach (`immunofold.metrics.cdr3_reach`): folded onto
    the domain or standing out of it (the conformation a single-sequence model most often misses)."""
    if "nanobody" not in report["kinds"]:
        return []
    lines = [
        "## nanobody CDR3 by conformation",
        "",
        f"Experimental CDR3 reach = largest distance (Å) of a CDR3 CA from the centroid of the framework CAs; "
        f"folded: <= {STANDING_OUT_REACH:.0f} Å, standing out: > {STANDING_OUT_REACH:.0f} Å. Cells: mean / median H3 RMSD (Å).",
        "",
        "| method | folded n | folded H3 | standing-out n | standing-out H3 |",
        "|---|--:|--:|--:|--:|",
    ]
    for method in report["methods"]:
        rows = [r for r in report["rows"].get(method, []) if r["kind"] == "nanobody" and r["status"] == "ok"
                and r.get("H3") is not None and r.get("H3_truth_reach") is not None]
        if not rows:
            continue
        cells = []
        for extended in (False, True):
            values = [r["H3"] for r in rows if (r["H3_truth_reach"] > STANDING_OUT_REACH) == extended]
            cells += [str(len(values)), f"{fmt(_mean(values))} / {fmt(_median(values))}"]
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    return lines + [""]


def error_estimate_summary(rows: list[dict], kind: str) -> dict | None:
    """How well a method's error estimate ranks its errors on `kind` (None if it gives none), as `immunofold
    evaluate` reports ours: mean per-structure Spearman (predicted per-residue error vs real CA deviation) and,
    per CDR3, the Spearman across entries of predicted CDR3 error vs real CDR3 RMSD."""
    ok = [r for r in rows if r["kind"] == kind and r["status"] == "ok" and r.get("error_spearman") is not None]
    if not ok:
        return None
    per_structure = [r["error_spearman"] for r in ok if np.isfinite(r["error_spearman"])]
    summary = {"n": len(ok), "per_structure_spearman": round(float(np.mean(per_structure)), 3) if per_structure else None}
    for chain_id in KIND_CHAIN_IDS[kind]:
        pairs = [(r[f"{chain_id}3_predicted_error"], r[f"{chain_id}3"]) for r in ok
                 if r.get(f"{chain_id}3_predicted_error") is not None and r.get(f"{chain_id}3") is not None]
        spearman = error_spearman([p for p, _ in pairs], [real for _, real in pairs])
        summary[f"{chain_id}3_spearman_across_entries"] = round(spearman, 3) if np.isfinite(spearman) else None
    return summary


def error_estimate_section(report: dict) -> list[str]:
    blocks = [(method, kind, report["error_estimates"][method][kind]) for kind in report["kinds"]
              for method in report["methods"] if report["error_estimates"].get(method, {}).get(kind)]
    if not blocks:
        return []
    lines = [
        "## Error estimates",
        "",
        "Per structure: Spearman correlation between the predicted per-residue error and the real CA deviation "
        "(after the per-chain framework superposition), mean over entries (`error_spearman` of `immunofold evaluate`). "
        "Across entries: Spearman correlation between the predicted CDR3 RMSD (root mean square of the per-residue "
        "error over IMGT 105-117, as `Prediction.cdr3_errors`) and the real CDR3 RMSD.",
        "",
        "| kind | method | error estimate | n | per structure | CDR3 across entries |",
        "|---|---|---|--:|--:|---|",
    ]
    for method, kind, block in blocks:
        across = ", ".join(f"{cid}3 {fmt(block[f'{cid}3_spearman_across_entries'])}" for cid in KIND_CHAIN_IDS[kind])
        lines.append(f"| {kind} | {METHOD_LABELS[method]} | {ERROR_ESTIMATES[method]} | {block['n']} | "
                     f"{fmt(block['per_structure_spearman'])} | {across} |")
    return lines + [""]


def _mean(values):
    return float(np.mean(values)) if values else None


def _median(values):
    return float(np.median(values)) if values else None


def plot_cdr3(report: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install -e .[bench])")
        return False
    panels = [(k, r) for k, r in CDR3_PANELS if k in report["kinds"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.2), squeeze=False)
    rng = np.random.default_rng(0)
    colours = {"immunofold": "tab:blue", "flashabb": "tab:orange", "igfold": "tab:green", "template": "tab:grey"}
    for ax, (kind, region) in zip(axes[0], panels):
        data, labels, methods = [], [], []
        for method in report["methods"]:
            values = [r[region] for r in report["rows"].get(method, [])
                      if r["kind"] == kind and r["status"] == "ok" and r.get(region) is not None]
            if values:
                data.append(values)
                labels.append(f"{METHOD_LABELS[method]}\n(n={len(values)})")
                methods.append(method)
        if data:
            ax.boxplot(data, showfliers=False, widths=0.55)
            for i, (values, method) in enumerate(zip(data, methods), start=1):
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=9, alpha=0.7,
                           color=colours[method], zorder=3)
            ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(f"{kind} CDR-{region}")
        ax.set_ylabel("RMSD (Å)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"CDR3 RMSD per entry, {report['split']} split (N, CA, C, CB; framework-superposed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    machine = machine_info()
    entries = select_entries(args.data, args.split, args.kinds, args.limit)
    if not entries:
        log(f"no {args.split} entries of kinds {args.kinds} under {args.data}")
        return 2
    log(f"{len(entries)} {args.split} entries; numbering and loading structures")
    loaded = load_inputs(entries)

    rows, method_info, weights = {}, {}, "not run"
    for method in args.methods:
        t0 = time.time()
        log(f"running {method}")
        if method == "immunofold":
            version, unavailable, rows[method] = run_immunofold(loaded, args.refine, args.weights_dir)
            weights = version or f"not available ({unavailable})"
            description = (f"ensemble forward pass, {'refined (OpenMM)' if args.refine else 'unrefined'} model "
                           "(the ensemble's consensus structure), from the IMGT-numbered V domains.")
        elif method == "flashabb":
            version, unavailable, rows[method] = run_flashabb(loaded)
            description = (f"flash-abb {version}, `pretrained(device='cpu')` (its defaults, including its dropout-LayerNorm "
                           "correction hooks, `dlc_correction=True`), one `HEAVY|LIGHT` string per entry "
                           "(the same IMGT-trimmed V domains), unrefined atom14 output; antibodies only (its heavy-only "
                           "and TCR output is not meaningful).")
        elif method == "igfold":
            with tempfile.TemporaryDirectory(prefix="immunofold-igfold-") as tmp:
                version, unavailable, rows[method] = run_igfold(loaded, args.igfold_python, args.igfold_out or tmp,
                                                                args.threads, args.igfold_existing)
            description = (f"igfold {version}, `IgFoldRunner(device='cpu').fold(..., do_refine=False, do_renum=False)` "
                           "(its 4 models; AntiBERTy 1.0.0 with the model of antiberty 0.1.3's wheel, offline) in its "
                           "own venv, one `{H, L}` (nanobody: `{H}`) per entry of the same IMGT-trimmed V domains; "
                           "unrefined N, CA, C, CB, O output in input order, its per-residue pRMSD (B-factor) as error "
                           "estimate; antibodies and nanobodies only. " + igfold_seconds(rows[method]))
        else:
            library = templates_by_kind(split_examples(args.data, args.template_split, args.cache_dir))
            version, unavailable, rows[method] = run_template(loaded, library, args.cdr3_weight)
            weighting = "unweighted" if args.cdr3_weight == 1 else f"CDR3 positions weighted x{args.cdr3_weight:g}"
            description = (f"the {args.template_split}-split entry of the same kind with the highest sequence identity "
                           f"over the query's IMGT positions (matches at the same chain + IMGT position / query "
                           f"length, a position the template lacks counts as a mismatch; {weighting}), threaded by "
                           "IMGT position: N, CA, C, O, CB copied (virtual CB for template glycines); a position the "
                           "template lacks takes the coordinates of the nearest threaded residue of the same chain.")
        method_info[method] = {"description": description, "seconds": round(time.time() - t0, 1),
                               "version": version, "unavailable": unavailable}
        if unavailable:
            log(f"  {method} not run: {unavailable}")

    summary = {m: {k: summarise_rows([r for r in rows[m] if r["kind"] == k], k) for k in args.kinds} for m in rows}
    error_estimates = {m: {k: error_estimate_summary(rows[m], k) for k in args.kinds} for m in ERROR_ESTIMATES if m in rows}
    report = {
        "data_root": os.path.abspath(args.data),
        "split": args.split,
        "template_split": args.template_split,
        "kinds": args.kinds,
        "limit_per_kind": args.limit,
        "methods": args.methods,
        "refined": args.refine,
        "weights": weights,
        "metric": "RMSD (Å) over N, CA, C, CB; per-chain framework superposition; IMGT CDRs 27-38, 56-65, 105-117",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "seconds": None,
        "method_info": method_info,
        "summary": summary,
        "error_estimates": error_estimates,
        "rows": rows,
    }
    report["seconds"] = round(time.time() - started, 1)
    os.makedirs(args.out_dir, exist_ok=True)
    text = markdown(report)
    with open(os.path.join(args.out_dir, "accuracy.md"), "w") as handle:
        handle.write(text + "\n")
    with open(os.path.join(args.out_dir, "accuracy.json"), "w") as handle:
        json.dump(report, handle, indent=1, default=float)
    plot_cdr3(report, os.path.join(args.out_dir, "accuracy_cdr3.png"))
    print(text)
    log(f"wrote {args.out_dir}/accuracy.md, accuracy.json, accuracy_cdr3.png ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
