"""Helpers shared by the benchmark scripts: data entries, truth examples, the nearest-template baseline,
scoring of any atom14 prediction with immunofold's own metric code, and machine description.

Nothing here needs the peer tools (FlashABB, ImmuneBuilder); tests/test_benchmarks.py covers it.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

import numpy as np
import torch

from immunofold.constants import IMGT_CDRS, KIND_CHAIN_IDS, KIND_INDEX, KINDS, is_cdr
from immunofold.metrics import ca_deviation, cdr3_reach, error_spearman, region_rmsds

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_ROOT = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
# Same folder the training configs use (configs/*.yaml: cache_dir: cache), so featurised splits are shared.
DEFAULT_CACHE_DIR = os.path.join(REPO_ROOT, "cache")

TRASTUZUMAB_HEAVY = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
)
TRASTUZUMAB_LIGHT = (
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
)

BACKBONE_COPY_SLOTS = (0, 1, 2, 3, 4)  # atom14 N, CA, C, O, CB: what the template baseline copies
# Virtual CB from N, CA, C (the AlphaFold/trRosetta ideal-geometry formula), for template glycines.
_CB_A, _CB_B, _CB_C = -0.58273431, 0.56802827, -0.54067466

Key = tuple[int, tuple[int, str]]  # (chain slot, IMGT (number, insertion))


def number_antibodies(items: list[tuple[str, str, str]]) -> list[tuple[str, str, list]]:
    """(name, "antibody", numbered chains) of (name, heavy, light) items, numbered as immunofold numbers them: one
    receptor as `immunofold predict` does (`sequences.number_receptor`: the two chains in two threads), several as
    `immunofold batch` does (`inputs.resolve_records`: batch.NUMBERING_CHUNK records per anarcism call)."""
    from immunofold.batch import NUMBERING_CHUNK
    from immunofold.inputs import Record, resolve_records
    from immunofold.sequences import number_receptor

    if len(items) == 1:
        (name, heavy, light), = items
        return [(name, "antibody", number_receptor("antibody", {"heavy": heavy, "light": light}, name))]
    records = [Record(i, name, (("heavy", heavy), ("light", light)), "antibody") for i, (name, heavy, light) in enumerate(items)]
    resolved = [result for start in range(0, len(records), NUMBERING_CHUNK)
                for result, _ in resolve_records(records[start:start + NUMBERING_CHUNK], "antibody")]
    failed = [(record.name, result) for record, result in zip(records, resolved) if isinstance(result, str)]
    if failed:
        raise ValueError(f"numbering failed: {failed[0][0]}: {failed[0][1]}")
    return [(record.name, result.kind, result.chains) for record, result in zip(records, resolved)]


def example_keys(example: dict) -> list[Key]:
    """(chain slot, IMGT position) of every residue of an example, in residue order."""
    return [(slot, tuple(pos)) for slot, positions in enumerate(example["positions"]) for pos in positions]


def example_sequence(example: dict) -> str:
    return "".join(example["sequences"])


# --- scoring ---------------------------------------------------------------------------------


def score_atom14(kind: str, pred_atom14, pred_keys: list[Key], truth: dict, predicted_error=None) -> dict:
    """Region RMSDs (Å) of a prediction [N, 14, 3] whose residues are `pred_keys`, against a truth example.

    The same code path as `immunofold.evaluate.score_entry`: residues matched by (chain, IMGT position),
    `immunofold.metrics.region_rmsds` (N, CA, C, CB; per-chain framework superposition; IMGT CDRs).
    With a per-residue error estimate `predicted_error` [N] (Å), also as `score_entry`: `error_spearman`
    (against the real CA deviation of the matched residues) and `<chain id>3_predicted_error` (predicted CDR3
    RMSD: its root mean square over the chain's CDR3 residues, IMGT 105-117, as `Prediction.cdr3_errors`).
    """
    predicted = torch.as_tensor(np.asarray(pred_atom14), dtype=torch.float32)
    truth_index = {key: i for i, key in enumerate(example_keys(truth))}
    common = [(i, truth_index[key]) for i, key in enumerate(pred_keys) if key in truth_index]
    pred_idx = torch.tensor([i for i, _ in common], dtype=torch.long)
    true_idx = torch.tensor([j for _, j in common], dtype=torch.long)
    row = region_rmsds(
        kind,
        predicted[pred_idx],
        truth["atom14"][true_idx],
        truth["atom_mask"][true_idx],
        truth["chain_slot"][true_idx],
        truth["imgt_position"][true_idx],
    )
    if predicted_error is not None:
        predicted_error = np.asarray(predicted_error, dtype=np.float64)
        deviation = ca_deviation(predicted[pred_idx], truth["atom14"][true_idx], truth["atom_mask"][true_idx],
                                 truth["chain_slot"][true_idx], truth["imgt_position"][true_idx]).numpy()
        row["error_spearman"] = error_spearman(predicted_error[pred_idx.numpy()], deviation)
        for slot, chain_id in enumerate(KIND_CHAIN_IDS[kind]):
            in_cdr3 = np.array([key[0] == slot and is_cdr(key[1][0], 3) for key in pred_keys], dtype=bool)
            in_cdr3_error = predicted_error[in_cdr3]
            row[f"{chain_id}3_predicted_error"] = float(np.sqrt(np.mean(in_cdr3_error**2))) if in_cdr3.any() else None
    row["matched_residues"] = len(common)
    row.update(truth_cdr3_reaches(kind, truth))
    return row


def truth_cdr3_reaches(kind: str, truth: dict) -> dict[str, float | None]:
    """{'H3_truth_reach': Å, ...}: how far each CDR3 of the experimental structure reaches out of its domain."""
    args = (truth["atom14"], truth["atom_mask"], truth["chain_slot"], truth["imgt_position"])
    return {f"{chain_id}3_truth_reach": cdr3_reach(*args, slot) for slot, chain_id in enumerate(KIND_CHAIN_IDS[kind])}


# --- nearest-template baseline ------------------------------------------------------------------


@dataclass
class Template:
    name: str
    residues: dict[Key, tuple[str, np.ndarray, np.ndarray]]  # key -> (one-letter, atom14 [14, 3], mask [14])
    order: dict[int, list[Key]]  # chain slot -> keys in sequence order


def make_template(example: dict) -> Template:
    """A template from a featurised example; residues without a complete N, CA, C are left out."""
    atom14 = np.asarray(example["atom14"], dtype=np.float32)
    mask = np.asarray(example["atom_mask"], dtype=bool)
    sequence = example_sequence(example)
    residues, order = {}, {}
    for i, key in enumerate(example_keys(example)):
        if not mask[i, :3].all():
            continue
        residues[key] = (sequence[i], atom14[i], mask[i])
        order.setdefault(key[0], []).append(key)
    return Template(example["name"], residues, order)


def sequence_identity(query_keys: list[Key], query_sequence: str, template: Template, cdr3_weight: float = 1.0) -> float:
    """Identity of the template to the query over the query's IMGT positions.

    Matches at the same (chain, IMGT position) divided by the number of query positions, so a position
    the template lacks counts as a mismatch (coverage is part of the score). CDR3 positions (IMGT 105-117)
    count `cdr3_weight` times (1 = unweighted).
    """
    lo, hi = IMGT_CDRS[3]
    matched = total = 0.0
    for key, aa in zip(query_keys, query_sequence):
        weight = cdr3_weight if lo <= key[1][0] <= hi else 1.0
        total += weight
        residue = template.residues.get(key)
        if residue is not None and residue[0] == aa:
            matched += weight
    return matched / total if total else 0.0


def nearest_template(query_keys, query_sequence, templates: list[Template], cdr3_weight: float = 1.0):
    """(template, identity) with the highest identity to the query (first one on ties)."""
    best, best_identity = None, -1.0
    for template in templates:
        identity = sequence_identity(query_keys, query_sequence, template, cdr3_weight)
        if identity > best_identity:
            best, best_identity = template, identity
    return best, best_identity


def virtual_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    b = ca - n
    cc = c - ca
    a = np.cross(b, cc)
    return _CB_A * a + _CB_B * b + _CB_C * cc + ca


def thread_template(query_keys: list[Key], template: Template) -> tuple[np.ndarray, int]:
    """Coordinates [N, 14, 3] for the query residues copied from the template by IMGT position.

    Copies N, CA, C, O and CB (a virtual CB where the template residue has none, e.g. a glycine); other
    atom14 slots stay at the residue's CA. A query position the template lacks takes the coordinates of
    the nearest query residue of the same chain (in sequence order) that the template has; if the
    template has no residue of that chain, the template's residue at the same sequence index of the chain.
    Returns (coordinates, number of query residues that fell back).
    """
    n = len(query_keys)
    coords = np.zeros((n, 14, 3), dtype=np.float32)
    source: list[Key | None] = [key if key in template.residues else None for key in query_keys]
    fallbacks = sum(s is None for s in source)
    by_chain: dict[int, list[int]] = {}
    for i, key in enumerate(query_keys):
        by_chain.setdefault(key[0], []).append(i)
    for slot, indices in by_chain.items():
        hits = [i for i in indices if source[i] is not None]
        for rank, i in enumerate(indices):
            if source[i] is not None:
                continue
            if hits:
                j = min(hits, key=lambda h: (abs(h - i), h))
                source[i] = source[j]
            else:
                chain = template.order.get(slot) or next(iter(template.order.values()))
                source[i] = chain[min(rank, len(chain) - 1)]
    for i, key in enumerate(source):
        _, atoms, mask = template.residues[key]
        residue = np.repeat(atoms[1][None], 14, axis=0)
        for slot in BACKBONE_COPY_SLOTS:
            if mask[slot]:
                residue[slot] = atoms[slot]
        if not mask[4]:
            residue[4] = virtual_cb(atoms[0], atoms[1], atoms[2])
        coords[i] = residue
    return coords, fallbacks


def templates_by_kind(examples: list[dict]) -> dict[str, list[Template]]:
    kind_names = {v: k for k, v in KIND_INDEX.items()}
    result: dict[str, list[Template]] = {kind: [] for kind in KINDS}
    for example in examples:
        kind = example["kind"]
        kind = kind_names[int(kind)] if not isinstance(kind, str) else kind
        result[kind].append(make_template(example))
    return result


# --- summaries --------------------------------------------------------------------------------


def region_names(kind: str) -> list[str]:
    return [f"{cid}{region}" for cid in KIND_CHAIN_IDS[kind] for region in ("1", "2", "3", "fr")]


def summarise_rows(rows: list[dict], kind: str) -> dict:
    """{'n': .., 'mean': {region: ..}, 'median': {region: ..}} over the rows scored ok."""
    ok = [r for r in rows if r.get("status") == "ok"]
    mean, median = {}, {}
    for region in region_names(kind):
        values = np.array([r[region] for r in ok if r.get(region) is not None and np.isfinite(r[region])])
        mean[region] = round(float(values.mean()), 3) if len(values) else None
        median[region] = round(float(np.median(values)), 3) if len(values) else None
    return {"n": len(ok), "mean": mean, "median": median}


# --- machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_start": load,
    }


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
