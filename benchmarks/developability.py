"""Developability profile (TAP / TNP) of our predicted structure vs the crystal structure, val antibodies and
nanobodies: Pearson / Spearman per metric and flag agreement; FlashTAP's sequence-based TAP predictions side
by side for the antibodies when flash_abb is importable (bench extra).

    nice -n 10 python benchmarks/developability.py [--no-refine] [--jobs N] [--limit N]

Writes benchmarks/results/developability.md and developability.json, one section per mode (refined, unrefined):
a run replaces its own mode's section and keeps the other. Each entry's row is appended to a rows file
(--rows, default in the temp folder, one per mode, package and weights version) as soon as it is known, so an
interrupted run resumes where it stopped (antibodies and nanobodies taken in turn, so a part-run covers both;
--report-only reports the rows file as it stands). --jobs N profiles N entries at a time (each process loads the
ensemble once). The crystal side is numbered from its observed residues with the prediction code's IMGT
numbering (sequences.find_domains); only the V-domain chains of the entry are profiled (antigens ignored),
exactly as for a prediction.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time

import gemmi
import numpy as np
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEFAULT_DATA_ROOT, RESULTS_DIR  # noqa: E402

from immunofold.data.sabdab import read_summary  # noqa: E402
from immunofold.developability import TAP_BANDS, TNP_BANDS, profile_prediction, profile_structure  # noqa: E402
from immunofold.evaluate import number_entry  # noqa: E402
from immunofold.prediction import Predictor  # noqa: E402
from immunofold.sequences import KIND_SLOTS, InputError, find_domains  # noqa: E402

FLASHTAP_KEYS = {"psh": "PSH", "ppc": "PPC", "pnc": "PNC", "sfvcsp": "SFvCSP"}


def crystal_imgt(structure: gemmi.Structure, entry) -> list[dict]:
    """Per chain of the entry, {(number, icode): IMGT number} of its V-domain residues."""
    model, maps = structure[0], []
    for (slot, classes), chain_id in zip(KIND_SLOTS[entry.kind], entry.chain_ids):
        keys, sequence = [], ""
        for residue in model[chain_id]:
            info = gemmi.find_tabulated_residue(residue.name)
            if info is None or not info.is_amino_acid() or info.one_letter_code.upper() not in "ACDEFGHIKLMNPQRSTVWY":
                continue
            keys.append((residue.seqid.num, residue.seqid.icode.strip()))
            sequence += info.one_letter_code.upper()
        domains = [d for d in find_domains(sequence, f"{entry.name} {slot}") if d.chain_class in classes]
        if not domains:
            raise InputError(entry.name, f"no {slot} V domain in chain {chain_id}")
        maps.append({keys[i]: number for i, (number, _) in zip(domains[0].source_indices, domains[0].positions)})
    return maps


def crystal_profile(entry):
    structure = gemmi.read_structure(entry.path)
    structure.remove_alternative_conformations()
    structure.merge_chain_parts()
    return profile_structure(structure, entry.chain_ids, crystal_imgt(structure, entry), entry.name)


def flashtap_scores(entries) -> dict[str, dict]:
    """FlashTAP predictions {name: {PSH, PPC, PNC, SFvCSP, flag probabilities}} for antibodies, {} without flash_abb."""
    try:
        from flash_abb import pretrained_tap
    except ImportError as error:
        print(f"FlashTAP not run: {error}", file=sys.stderr)
        return {}
    antibodies = [e for e in entries if e.kind == "antibody"]
    result = pretrained_tap(device="cpu")([f"{e.sequences[0]}|{e.sequences[1]}" for e in antibodies])
    return {e.name: {"scores": s, "flag_probs": p} for e, s, p in zip(antibodies, result.scores, result.flag_probs or [{}] * len(antibodies))}


def correlations(pairs: list[tuple[float, float]]) -> dict:
    x, y = np.array(pairs, dtype=float).T if pairs else (np.array([]), np.array([]))
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return {"n": len(x), "pearson": None, "spearman": None}
    return {"n": len(x), "pearson": round(float(pearsonr(x, y)[0]), 3), "spearman": round(float(spearmanr(x, y)[0]), 3)}


def summarise(rows: list[dict], flash: dict) -> dict:
    summary = {}
    for kind, bands in (("antibody", TAP_BANDS), ("nanobody", TNP_BANDS)):
        kind_rows = [r for r in rows if r["kind"] == kind]
        for metric, band in bands.items():
            pairs = [(r["crystal"][metric]["value"], r["predicted"][metric]["value"]) for r in kind_rows]
            same = [r["crystal"][metric]["flag"] == r["predicted"][metric]["flag"] for r in kind_rows]
            green = [r["crystal"][metric]["flag"] == "green" for r in kind_rows]
            line = {"predicted": correlations(pairs), "flag_agreement": round(float(np.mean(same)), 3) if same else None,
                    "crystal_not_green": int(len(green) - sum(green)),
                    "predicted_not_green": sum(r["predicted"][metric]["flag"] != "green" for r in kind_rows)}  # fmt: skip
            if kind == "antibody" and metric in FLASHTAP_KEYS and flash:
                fpairs = [(r["crystal"][metric]["value"], flash[r["name"]]["scores"][FLASHTAP_KEYS[metric]])
                          for r in kind_rows if r["name"] in flash]  # fmt: skip
                fflags = [band.flag(flash[r["name"]]["scores"][FLASHTAP_KEYS[metric]]) == r["crystal"][metric]["flag"]
                          for r in kind_rows if r["name"] in flash]  # fmt: skip
                line["flashtap"] = correlations(fpairs)
                line["flashtap_flag_agreement"] = round(float(np.mean(fflags)), 3) if fflags else None
            summary[f"{kind}/{metric}"] = line
    return summary


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


MODES = ("refined", "unrefined")


def section_markdown(mode: str, section: dict) -> list[str]:
    """The markdown section of one mode's results."""
    meta, summary = section["meta"], section["summary"]
    lines = [
        f"## {mode.capitalize()} predictions",
        "",
        f"immunofold {meta['weights']} ({'refined' if meta['refined'] else 'unrefined, --no-refine'}"
        f"{', code ' + meta['commit'] if meta.get('commit') else ''}{', ' + meta['date'] if meta.get('date') else ''}) "
        f"vs the crystal structure of {'' if meta.get('not_run') else 'every '}val antibody ({meta['n_antibody']}) and "
        f"nanobody ({meta['n_nanobody']}) in /work/shared/data; skipped: {meta['skipped'] or 'none'}.",
        "",
        "| receptor | metric | n | Pearson | Spearman | flag agreement | crystal not green | predicted not green "
        "| FlashTAP Pearson | FlashTAP Spearman | FlashTAP flag agreement |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, line in summary.items():
        kind, metric = key.split("/")
        flash = line.get("flashtap", {})
        lines.append(
            f"| {kind} | {metric} | {line['predicted']['n']} | {_fmt(line['predicted']['pearson'])} | "
            f"{_fmt(line['predicted']['spearman'])} | {_fmt(line['flag_agreement'])} | {line['crystal_not_green']} | "
            f"{line['predicted_not_green']} | {_fmt(flash.get('pearson'))} | {_fmt(flash.get('spearman'))} | "
            f"{_fmt(line.get('flashtap_flag_agreement'))} |"
        )
    if meta.get("not_run"):
        lines += ["", f"**Partial**: {meta['not_run']} of the val entries were not profiled yet (the run was stopped; "
                  "the same command resumes it from its rows file)."]
    took = f"{meta['seconds']:.0f} s" if meta.get("seconds") is not None else "reported from its rows file"
    lines += ["", f"Run: `{meta['command']}`, {took} on {meta['machine']}.", ""]
    return lines


def write_markdown(sections: dict, path: str) -> None:
    lines = [
        "# Developability profile: predicted vs crystal structure (val)",
        "",
        "Antibodies: TAP metrics (thresholds of the TAP update, Raybould et al. 2024); nanobodies: TNP metrics "
        "(Gordon et al. 2025). Same code (`immunofold.developability`) on the predicted and the crystal structures; "
        "a prediction's profile is the mean over its four ensemble members, each geometry-cleaned "
        "(`profile_prediction`), so refined and unrefined predictions give the same profile (immunofold 0.9.0 "
        "profiled the one final model: refined PPC / PNC / SFvCSP Spearman 0.61 / 0.78 / 0.81; docs/benchmarks.md). "
        "Flag agreement: fraction of entries whose predicted-structure flag (green/amber/red) equals the crystal's. "
        "FlashTAP: FlashABB 0.0.5 `pretrained_tap` (sequence in, TAP scores out), scored against the same crystal "
        "values and flagged with the same thresholds (it does not depend on our structure, so its columns are the "
        "same in both sections). How well two crystal structures of one receptor agree with each other, the ceiling "
        "for these columns: [developability_ceiling.md](developability_ceiling.md).",
        "",
    ]
    for mode in MODES:
        if mode in sections:
            lines += section_markdown(mode, sections[mode])
    lines += same_entries_markdown(sections)
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def same_entries_markdown(sections: dict) -> list[str]:
    """Spearman of each metric, refined vs unrefined, on the entries both sections hold (when one is partial)."""
    if not all(mode in sections for mode in MODES):
        return []
    rows = {mode: {r["name"]: r for r in sections[mode]["rows"]} for mode in MODES}
    names = [name for name in rows["refined"] if name in rows["unrefined"]]
    if not names or set(rows["refined"]) == set(rows["unrefined"]):  # the sections already compare the same entries
        return []
    lines = ["## Refined vs unrefined on the same entries", "",
             f"Spearman (predicted vs crystal) over the {len(names)} entries both sections hold.", "",
             "| receptor | metric | n | refined | unrefined |", "|---|---|--:|--:|--:|"]  # fmt: skip
    for kind, bands in (("antibody", TAP_BANDS), ("nanobody", TNP_BANDS)):
        kind_names = [n for n in names if rows["refined"][n]["kind"] == kind]
        for metric in bands:
            result = {mode: correlations([(rows[mode][n]["crystal"][metric]["value"], rows[mode][n]["predicted"][metric]["value"])
                                          for n in kind_names]) for mode in MODES}  # fmt: skip
            lines.append(f"| {kind} | {metric} | {len(kind_names)} | {_fmt(result['refined']['spearman'])} | "
                         f"{_fmt(result['unrefined']['spearman'])} |")
    return lines + [""]


def read_sections(path: str) -> dict:
    """{mode: {meta, summary, rows}} of an earlier developability.json (the one-mode layout read as its mode)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if "meta" in data:
        return {"refined" if data["meta"]["refined"] else "unrefined": data}
    return {mode: data[mode] for mode in MODES if mode in data}


_predictor = None


def profile_entry(entry, refine: bool) -> dict:
    """One entry's row (crystal and predicted profile, residues left out), or {"name", "skipped": reason}."""
    global _predictor
    if _predictor is None:
        import torch

        torch.set_num_threads(1)
        _predictor = Predictor()
    try:
        crystal = crystal_profile(entry)
        prediction = _predictor.predict_numbered([(entry.name, entry.kind, number_entry(entry))])[0]
        if refine:
            prediction = _predictor.refine(prediction)
        predicted = profile_prediction(prediction)
    except InputError as error:
        return {"name": entry.name, "skipped": str(error)}
    row = {"name": entry.name, "kind": entry.kind, "refined": prediction.refined,
           "crystal": crystal.to_dict()["metrics"], "predicted": predicted.to_dict()["metrics"]}  # fmt: skip
    for side in ("crystal", "predicted"):
        for metric in row[side].values():
            metric.pop("residues")  # keep the JSON small
    return row


def read_rows(path: str) -> dict[str, dict]:
    rows = {}
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    rows[row["name"]] = row
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N entries of each kind (smoke runs)")
    parser.add_argument("--jobs", type=int, default=1, help="entries profiled at a time (processes)")
    parser.add_argument("--rows", default=None, help="rows file to resume from and append to")
    parser.add_argument("--report-only", action="store_true",
                        help="profile nothing: report the rows file as it stands (e.g. of a run stopped part way)")
    parser.add_argument("--code", default=None, help="with --report-only: the commit the rows were computed with")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args()
    start = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() if not args.code else args.code  # fmt: skip
    mode = "unrefined" if args.no_refine else "refined"
    entries = [e for e in read_summary(args.data) if e.split == "val" and e.kind in ("antibody", "nanobody")]
    if args.limit:
        entries = [e for k in ("antibody", "nanobody") for e in [e for e in entries if e.kind == k][: args.limit]]
    from immunofold.weights import packaged_member_sets, weights_version

    version = weights_version(packaged_member_sets())
    from immunofold import __version__

    # rows of another package or weights version are not resumed (the profile's code may differ)
    rows_path = args.rows or os.path.join(tempfile.gettempdir(),
                                          f"immunofold-developability-{mode}-{__version__}-{version}.jsonl")
    done = read_rows(rows_path)
    by_kind = [[e for e in entries if e.kind == kind and e.name not in done] for kind in ("antibody", "nanobody")]
    todo = [] if args.report_only else [e for pair in itertools.zip_longest(*by_kind) for e in pair if e is not None]
    print(f"{len(entries) - len(todo)} of {len(entries)} entries already in {rows_path}", flush=True)
    jobs = [(entry, not args.no_refine) for entry in todo]
    with open(rows_path, "a") as handle:
        pool = multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 and jobs else None
        results = pool.imap_unordered(_profile_job, jobs) if pool else map(_profile_job, jobs)
        for row in results:
            done[row["name"]] = row
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            print(f"{len(done)}/{len(entries)} {row['name']}{' skipped: ' + row['skipped'] if 'skipped' in row else ''}",
                  flush=True)
        if pool:
            pool.close()
    rows = [done[e.name] for e in entries if e.name in done and "skipped" not in done[e.name]]
    skipped = [done[e.name]["skipped"] for e in entries if e.name in done and "skipped" in done[e.name]]
    flash = flashtap_scores([e for e in entries if e.name in {r["name"] for r in rows}])
    for row in rows:
        if row["name"] in flash:
            row["flashtap"] = flash[row["name"]]
    summary = summarise(rows, flash)
    meta = {"weights": version, "refined": not args.no_refine, "seconds": None if args.report_only else time.time() - start,
            "commit": commit, "not_run": sum(e.name not in done for e in entries),
            "date": datetime.date.today().isoformat(), "jobs": args.jobs,
            "n_antibody": sum(r["kind"] == "antibody" for r in rows), "n_nanobody": sum(r["kind"] == "nanobody" for r in rows),
            "skipped": "; ".join(skipped), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "command": "nice -n 10 python benchmarks/developability.py" + (" --no-refine" if args.no_refine else "")
            + (f" --jobs {args.jobs}" if args.jobs > 1 else "")}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "developability.json")
    sections = {**read_sections(json_path), mode: {"meta": meta, "summary": summary, "rows": rows}}
    with open(json_path, "w") as handle:
        json.dump({m: sections[m] for m in MODES if m in sections}, handle, indent=1)
    write_markdown(sections, os.path.join(args.out, "developability.md"))
    print(open(os.path.join(args.out, "developability.md")).read())
    return 0


def _profile_job(job):
    return profile_entry(*job)


if __name__ == "__main__":
    sys.exit(main())
