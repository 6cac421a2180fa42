"""Developability profile (TAP / TNP) of our predicted structure vs the crystal structure, val antibodies and
nanobodies: Pearson / Spearman per metric and flag agreement; FlashTAP's sequence-based TAP predictions side
by side for the antibodies when flash_abb is importable (bench extra).

    nice -n 10 python benchmarks/developability.py [--no-refine] [--limit N]

Writes benchmarks/results/developability.md and developability.json. The crystal side is numbered from its
observed residues with the prediction code's IMGT numbering (sequences.find_domains); only the V-domain chains
of the entry are profiled (antigens ignored), exactly as for a prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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


def write_markdown(summary: dict, meta: dict, path: str) -> None:
    lines = [
        "# Developability profile: predicted vs crystal structure (val)",
        "",
        f"immunofold {meta['weights']} ({'refined' if meta['refined'] else 'unrefined, --no-refine'}) vs the crystal "
        f"structure of every val antibody ({meta['n_antibody']}) and nanobody ({meta['n_nanobody']}) in "
        f"/work/shared/data; skipped: {meta['skipped'] or 'none'}. Antibodies: TAP metrics (thresholds of the TAP "
        "update, Raybould et al. 2024); nanobodies: TNP metrics (Gordon et al. 2025). Same code "
        "(`immunofold.developability`) on both sides. Flag agreement: fraction of entries whose predicted-structure "
        "flag (green/amber/red) equals the crystal's. FlashTAP: FlashABB 0.0.5 `pretrained_tap` (sequence in, "
        "TAP scores out), scored against the same crystal values and flagged with the same thresholds.",
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
    lines += ["", f"Run: `{meta['command']}`, {meta['seconds']:.0f} s on {meta['machine']}.", ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N entries of each kind (smoke runs)")
    parser.add_argument("--out", default=RESULTS_DIR)
    args = parser.parse_args()
    start = time.time()
    entries = [e for e in read_summary(args.data) if e.split == "val" and e.kind in ("antibody", "nanobody")]
    if args.limit:
        entries = [e for k in ("antibody", "nanobody") for e in [e for e in entries if e.kind == k][: args.limit]]
    predictor = Predictor()
    rows, skipped = [], []
    for entry in entries:
        try:
            crystal = crystal_profile(entry)
            prediction = predictor.predict_numbered([(entry.name, entry.kind, number_entry(entry))])[0]
            if not args.no_refine:
                prediction = predictor.refine(prediction)
            predicted = profile_prediction(prediction)
        except InputError as error:
            skipped.append(str(error))
            print(f"skipped {error}", file=sys.stderr)
            continue
        rows.append({"name": entry.name, "kind": entry.kind, "refined": prediction.refined,
                     "crystal": crystal.to_dict()["metrics"], "predicted": predicted.to_dict()["metrics"]})  # fmt: skip
        print(f"{len(rows)}/{len(entries)} {entry.name}", flush=True)
    flash = flashtap_scores([e for e in entries if e.name in {r["name"] for r in rows}])
    for row in rows:
        for metric in row["crystal"].values():
            metric.pop("residues")  # keep the JSON small
        for metric in row["predicted"].values():
            metric.pop("residues")
        if row["name"] in flash:
            row["flashtap"] = flash[row["name"]]
    summary = summarise(rows, flash)
    meta = {"weights": predictor.ensemble.version, "refined": not args.no_refine, "seconds": time.time() - start,
            "n_antibody": sum(r["kind"] == "antibody" for r in rows), "n_nanobody": sum(r["kind"] == "nanobody" for r in rows),
            "skipped": "; ".join(skipped), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "command": "nice -n 10 python benchmarks/developability.py" + (" --no-refine" if args.no_refine else "")}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "developability.json"), "w") as handle:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, handle, indent=1)
    write_markdown(summary, meta, os.path.join(args.out, "developability.md"))
    print(open(os.path.join(args.out, "developability.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
