"""IgFold 1.0.1 as a benchmark method, seen from immunofold's venv: runs igfold_runner.py with the IgFold venv's
python in a subprocess (IgFold needs antiberty>=1.0, immunofold's extras pin 0.1.3) and reads its PDB files back.

IgFold's output keeps the input order: chain ids as given, residues numbered 1..len(sequence) in sequence order,
atoms N, CA, C, CB, O, and the B-factor column holds its per-residue pRMSD (Å; the root mean square of its
predicted N, CA, C, CB deviations), which the benchmarks score as an error estimate beside immunofold's.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

import gemmi
import numpy as np

from immunofold.constants import KIND_CHAIN_IDS

VERSION = "1.0.1"
KINDS = ("antibody", "nanobody")  # IgFold folds antibodies and nanobodies only
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PYTHON = os.path.join(REPO_ROOT, ".venv-igfold", "bin", "python")
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "igfold_runner.py")
SETUP_HINT = "bash scripts/setup_igfold.sh (a separate venv), or --igfold-python PATH"
BACKBONE_SLOTS = {"N": 0, "CA": 1, "C": 2, "O": 3, "CB": 4}  # atom14 slots (immunofold.constants.ATOM14_NAMES)


@dataclass(frozen=True)
class IgFoldModel:
    """One IgFold prediction: atom14 [N_res, 14, 3] (Å; slots other than N, CA, C, O, CB hold CA; a glycine's CB
    slot too), prmsd [N_res] (Å), fold seconds (one per timed repeat)."""

    atom14: np.ndarray
    prmsd: np.ndarray
    seconds: tuple[float, ...]


def find_python(option: str | None) -> tuple[str | None, str | None]:
    """(python of the IgFold venv, None) or (None, why IgFold is not run): `option` if given, else the default venv."""
    path = option or DEFAULT_PYTHON
    if not os.path.exists(path):
        where = f"--igfold-python {path} does not exist" if option else f"no IgFold venv at {DEFAULT_PYTHON}"
        return None, f"{where}; {SETUP_HINT}"
    return path, None


def igfold_chains(kind: str, sequences: list[str]) -> dict[str, str]:
    """IgFold's input for one receptor: {"H": heavy, "L": light} or {"H": vhh} (chain ids as immunofold's)."""
    return dict(zip(KIND_CHAIN_IDS[kind], sequences))


def run_runner(python: str, records: list[dict], out_dir: str, repeats: int = 1, warm_up: bool = False,
               threads: int | None = None, log=None) -> dict:
    """Fold `records` ([{"name", "chains"}]) into `out_dir` with igfold_runner.py under `python`; returns the
    runner's igfold_run.json (load_seconds, models, threads). Raises RuntimeError with the runner's last output
    line if it fails as a whole (a record that fails is written to its <name>.json instead)."""
    os.makedirs(out_dir, exist_ok=True)
    records_path = os.path.join(out_dir, "records.json")
    with open(records_path, "w") as handle:
        json.dump(records, handle)
    command = [python, RUNNER, records_path, out_dir, "--repeats", str(repeats)]
    command += ["--warm-up"] if warm_up else []
    command += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    tail = []
    for line in process.stderr:
        tail = (tail + [line.rstrip()])[-20:]
        if log and line.startswith("igfold "):
            log("  " + line.rstrip())
    if process.wait() != 0:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise RuntimeError(f"IgFold runner exited with {process.returncode}: {last}")
    with open(os.path.join(out_dir, "igfold_run.json")) as handle:
        return json.load(handle)


def read_result(out_dir: str, name: str, chains: dict[str, str]) -> IgFoldModel:
    """The runner's model of record `name`; ValueError naming the record if it failed or its files disagree."""
    try:
        with open(os.path.join(out_dir, name + ".json")) as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        raise ValueError(f"{name}: not folded by IgFold") from None
    if "error" in status:
        raise ValueError(f"{name}: IgFold failed: {status['error']}")
    if status.get("chains") != chains:
        raise ValueError(f"{name}: IgFold result is for other sequences")
    atom14, prmsd = read_pdb(os.path.join(out_dir, name + ".pdb"), chains)
    return IgFoldModel(atom14, prmsd, tuple(status["seconds"]))


def read_pdb(path: str, chains: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(atom14 [N_res, 14, 3] Å, prmsd [N_res] Å) of an IgFold PDB, residues in the order of `chains` ({id: sequence}).

    Each chain must hold exactly its sequence in order (ValueError naming the file and chain otherwise), so
    residue i of the result is residue i of the concatenated input. pRMSD is the CA atom's B-factor.
    """
    model = gemmi.read_structure(path)[0]
    atom14, prmsd = [], []
    for chain_id, sequence in chains.items():
        chain = model.find_chain(chain_id)
        if chain is None:
            raise ValueError(f"{os.path.basename(path)}: no chain {chain_id}")
        letters = "".join(gemmi.find_tabulated_residue(r.name).one_letter_code.upper() for r in chain)
        if letters != sequence:
            raise ValueError(f"{os.path.basename(path)}: chain {chain_id} is not the input sequence in order")
        for residue in chain:
            ca = residue.find_atom("CA", "*")
            if ca is None:
                raise ValueError(f"{os.path.basename(path)}: chain {chain_id} residue {residue.seqid} has no CA")
            coords = np.repeat(np.array(ca.pos.tolist(), dtype=np.float32)[None], 14, axis=0)
            for atom in residue:
                if atom.name in BACKBONE_SLOTS:
                    coords[BACKBONE_SLOTS[atom.name]] = atom.pos.tolist()
            atom14.append(coords)
            prmsd.append(ca.b_iso)
    return np.stack(atom14), np.asarray(prmsd, dtype=np.float32)
