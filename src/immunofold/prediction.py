"""The Python API: sequences in, a refined full-atom structure with per-residue error out.

    >>> import immunofold
    >>> prediction = immunofold.predict(heavy="EVQLVESGG...", light="DIQMTQSP...")
    >>> prediction.save("model.pdb"); prediction.error  # Å per residue

Data flow: sequences -> numbered chains -> features -> ensemble -> atoms -> refinement -> files.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
import warnings
from dataclasses import dataclass, field

import gemmi
import numpy as np
import torch

from immunofold import __version__
from immunofold.calibration import borrowed_calibrators, packaged_calibrator
from immunofold.constants import KIND_CHAIN_IDS, KIND_INDEX, RESTYPE_INDEX, UNKNOWN_RESTYPE, is_cdr
from immunofold.cleanup import clean_geometry
from immunofold.data.features import collate, featurise
from immunofold.ensemble import Ensemble, EnsembleOutput
from immunofold.geometry import residue_tables
from immunofold.inputs import safe_name
from immunofold.io import (
    STRUCTURE_FORMATS,
    ChainAtoms,
    build_structure,
    finish_structure,
    to_cif_string,
    to_pdb_string,
    write_structure,
)
from immunofold.numbering import SCHEMES as NUMBERING_SCHEMES, renumber
from immunofold.refine import refine as refine_structure
from immunofold.sequences import InputError, NumberedChain, number_receptor

# Receptors per ensemble forward pass. On a 2-core CPU, 64 val antibodies took 4.2 s in groups of 4, 4.9 s
# of 8, 6.3 s of 16 and 10.1 s of 32: the attention maps of large batches fall out of the CPU caches.
MAX_FORWARD_BATCH = 4

ERROR_REMARK = (
    "B-FACTOR COLUMN: PREDICTED ERROR PER RESIDUE IN ANGSTROM = SQRT(S^2 + H^2), S = RMS DEVIATION OF "
    "THE ENSEMBLE MEMBERS' BACKBONE ATOMS FROM THEIR MEAN, H = THE MEMBERS' PREDICTED CA DEVIATION"
)
CALIBRATED_ERROR_REMARK = (
    "B-FACTOR COLUMN: PREDICTED ERROR PER RESIDUE IN ANGSTROM = EXPECTED CA DEVIATION AFTER FRAMEWORK "
    "SUPERPOSITION, CALIBRATED FROM THE ENSEMBLE SPREAD AND ERROR HEADS ON HELD-OUT STRUCTURES (DOCS/CALIBRATION.MD)"
)


@dataclass
class Prediction:
    """One predicted receptor. Coordinates in Å; per-residue arrays follow the chains in order."""

    name: str
    kind: str
    chains: list[NumberedChain]
    chain_ids: tuple[str, ...]
    residue_ids: list[list[tuple[int, str]]]  # output numbering per chain (scheme: `numbering_scheme`)
    numbering_scheme: str
    atom14: np.ndarray  # [N, 14, 3] the ensemble's consensus structure (or the member refined instead), before refinement
    error: np.ndarray  # [N] Å, calibrated (immunofold.calibration) when `error_calibrated`, else sqrt(spread² + head²)
    members: np.ndarray  # [M, N, 14, 3] all ensemble members, superposed
    spread: np.ndarray  # [N] Å, RMS backbone deviation of the members from their mean
    head_error: np.ndarray  # [N] Å, the members' error heads (expected CA deviation), averaged
    weights_version: str
    refined: bool = False
    geometry_cleaned: bool = False  # the consensus went through cleanup.clean_geometry
    error_calibrated: bool = False
    refine_message: str = ""
    notes: list[str] = field(default_factory=list)
    _refined_pdb: str | None = None

    def __repr__(self) -> str:
        """One line (the dataclass default printed every coordinate array and the refined PDB text)."""
        residues = sum(len(chain) for chain in self.chains)
        state = "refined" if self.refined else "unrefined"
        return (f"Prediction(name={self.name!r}, kind={self.kind!r}, chains={'+'.join(self.chain_ids)}, "
                f"residues={residues}, {state}, mean_error={self.mean_error:.2f} Å, weights={self.weights_version!r})")

    @property
    def sequences(self) -> dict[str, str]:
        return {cid: chain.sequence for cid, chain in zip(self.chain_ids, self.chains)}

    @property
    def numbering(self) -> dict[str, list[tuple[int, str]]]:
        return dict(zip(self.chain_ids, self.residue_ids))

    @property
    def mean_error(self) -> float:
        return float(np.mean(self.error))

    def developability(self):
        """TAP (antibody) or TNP (nanobody) profile: the mean over the cleaned ensemble members, not the final
        structure, so refinement leaves it as it is (`developability.profile_prediction`); InputError for a TCR."""
        from immunofold.developability import profile_prediction

        return profile_prediction(self)

    def cdr3_errors(self) -> dict[str, float]:
        """Predicted CDR3 RMSD (Å) of each chain, by chain id: the RMS of the per-residue errors over its CDR3
        (IMGT 105-117); NaN for a chain without CDR3 residues."""
        result, start = {}, 0
        for chain_id, chain in zip(self.chain_ids, self.chains):
            errors = self.error[start : start + len(chain)]
            in_cdr3 = is_cdr(np.array([number for number, _ in chain.positions]), 3)
            result[chain_id] = float(np.sqrt(np.mean(errors[in_cdr3] ** 2))) if in_cdr3.any() else float("nan")
            start += len(chain)
        return result

    def remarks(self) -> list[str]:
        lines = [
            f"IMMUNOFOLD {__version__} WEIGHTS {self.weights_version}",
            f"RECEPTOR {self.kind.upper()} NUMBERING {self.numbering_scheme.upper()}",
            CALIBRATED_ERROR_REMARK if self.error_calibrated else ERROR_REMARK,
            f"REFINED {'YES' if self.refined else 'NO'}" + (f" ({self.refine_message.upper()})" if self.refine_message else ""),
        ]
        if self.geometry_cleaned:
            lines.append("CONSENSUS GEOMETRY CLEANED WITHOUT A FORCE FIELD (PEPTIDE BONDS, CLASHES)")
        return lines + [note.upper() for note in self.notes]

    def _chain_atoms(self, atom14: np.ndarray) -> list[ChainAtoms]:
        exists = residue_tables().atom_exists.numpy()
        chains, start = [], 0
        for chain_id, chain, ids in zip(self.chain_ids, self.chains, self.residue_ids):
            end = start + len(chain)
            restype = [RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for aa in chain.sequence]
            chains.append(ChainAtoms(chain_id, chain.sequence, list(ids), atom14[start:end], exists[restype], self.error[start:end]))
            start = end
        return chains

    def with_clean_geometry(self) -> "Prediction":
        """A copy whose consensus went through `cleanup.clean_geometry` (real peptide bonds, no clashes, ~35 ms);
        itself if refined or already cleaned."""
        if self.refined or self.geometry_cleaned:
            return self
        return dataclasses.replace(self, atom14=self._cleaned(self.atom14[None])[0], geometry_cleaned=True)

    def cleaned_members(self) -> np.ndarray:
        """[M, N, 14, 3] Å, every ensemble member after `cleanup.clean_geometry` (one batched call)."""
        return self._cleaned(self.members)

    def _cleaned(self, atom14: np.ndarray) -> np.ndarray:
        """[B, N, 14, 3] Å structures of this receptor through `cleanup.clean_geometry`."""
        batch = len(atom14)
        restype = torch.tensor([[RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for chain in self.chains for aa in chain.sequence]])
        chain_slot = torch.tensor([[slot for slot, chain in enumerate(self.chains) for _ in chain.sequence]])
        cleaned = clean_geometry(torch.from_numpy(np.ascontiguousarray(atom14)), restype.repeat(batch, 1),
                                 torch.ones((batch, restype.shape[1]), dtype=torch.bool), chain_slot.repeat(batch, 1))
        return cleaned.numpy()

    def unrefined_structure(self, member: int | None = None) -> gemmi.Structure:
        atoms = self.atom14 if member is None else self.members[member]
        return self.structure_of(atoms)

    def structure_of(self, atom14: np.ndarray) -> gemmi.Structure:
        """This receptor's chains, numbering and errors with the coordinates `atom14` [N, 14, 3] Å."""
        shape = np.shape(atom14)
        if shape != (len(self.error), 14, 3):
            raise ValueError(f"atom14 must be [{len(self.error)}, 14, 3] coordinates (Å), not of shape {shape}")
        return build_structure(self._chain_atoms(atom14), self.remarks())

    def structure(self) -> gemmi.Structure:
        """The final structure: refined (with hydrogens) when refinement succeeded."""
        if self._refined_pdb is not None:
            structure = gemmi.read_pdb_string(self._refined_pdb)
            structure.name = "model"  # the mmCIF block name of unrefined models; gemmi names a parsed string "string"
            return finish_structure(structure, self.remarks())
        return self.unrefined_structure()

    def to_pdb_string(self) -> str:
        return to_pdb_string(self.structure())

    def to_cif_string(self) -> str:
        return to_cif_string(self.structure())

    def save(self, path: str | os.PathLike, fmt: str | None = None) -> None:
        """Write the structure to `path` (.pdb or .cif, or `fmt` = "pdb" | "cif"), atomically, creating its folder
        if needed (as the command line does)."""
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        write_structure(self.structure(), path, fmt)

    def save_ensemble(self, folder: str | os.PathLike, fmt: str = "pdb") -> list[str]:
        """Write every ensemble member (the networks' raw models, never refined or cleaned, their remarks say so; the
        B-factor column holds the ensemble's error) as <safe name>_member<i>.<fmt> inside `folder` (a name such as
        '../x' cannot lead outside it); returns the paths."""
        if fmt not in STRUCTURE_FORMATS:
            raise ValueError(f"fmt={fmt!r}: give 'pdb' or 'cif'")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder} is a file; save_ensemble writes one file per member into a folder")
        os.makedirs(folder, exist_ok=True)
        paths = []
        for i in range(len(self.members)):
            path = os.path.join(folder, f"{safe_name(self.name)}_member{i}.{fmt}")
            note = f"ensemble member {i}: the network's raw model; B-factor: the ensemble's error"
            raw = dataclasses.replace(self, refined=False, refine_message="", geometry_cleaned=False,
                                      notes=[*self.notes, note])
            write_structure(raw.unrefined_structure(i), path, fmt)
            paths.append(path)
        return paths


def refine_prediction(prediction: Prediction) -> Prediction:
    """A refined copy of `prediction` (the input is left as it is): the consensus refined, else the members from
    the one closest to the mean on, else an unrefined copy with the reason in `refine_message` and a warning.
    Minimisation starts from the structure with its geometry cleaned (`cleanup.clean_geometry`, ~60 ms; a third
    fewer minimiser iterations on val antibodies) and is restrained to the predicted atoms."""
    message = ""
    for member in [None, *range(len(prediction.members))]:
        candidate = dataclasses.replace(prediction, refined=True)  # the remarks written into the refined file say so
        if member is not None:
            candidate = dataclasses.replace(candidate, atom14=prediction.members[member])
        cleaned_already = member is None and prediction.geometry_cleaned
        start = None if cleaned_already else to_pdb_string(candidate.structure_of(candidate._cleaned(candidate.atom14[None])[0]))
        result = refine_structure(to_pdb_string(candidate.unrefined_structure()), start_pdb=start)
        if result.refined:  # its message names any backbone outliers left
            return dataclasses.replace(candidate, _refined_pdb=result.pdb_string, refine_message=result.message)
        message = result.message
    failed = dataclasses.replace(prediction, refined=False,
                                 refine_message=f"refinement failed, unrefined model returned: {message}")
    warnings.warn(f"{prediction.name}: {failed.refine_message}", stacklevel=2)
    return failed


def infer_kind(heavy=None, light=None, alpha=None, beta=None) -> str:
    """Receptor kind from which chains were given."""
    if alpha or beta:
        return "tcr"
    return "antibody" if light else "nanobody"


class Predictor:
    """Holds a loaded ensemble and, when one was fitted for its weights, the error calibrator; predicts one
    receptor or many at once."""

    def __init__(self, ensemble: Ensemble | None = None, device: str = "cpu", clean_geometry: bool = False,
                 members_side_by_side: bool = False, fast: bool = False):
        """ensemble: a loaded one, else the packaged ensemble on `device` (its fast member set if `fast`), cleaning
        its consensus geometry (`cleanup.clean_geometry`) when `clean_geometry` (members_side_by_side: see
        `Ensemble`)."""
        self.ensemble = ensemble or Ensemble.packaged(device, clean_geometry, members_side_by_side, fast)
        self.calibrator = packaged_calibrator(self.ensemble.version)
        self.kind_calibrators = borrowed_calibrators(self.ensemble.member_sets)  # kinds the set shares with the default

    def with_clean_geometry(self) -> "Predictor":
        """A Predictor over the same loaded members whose consensus goes through `cleanup.clean_geometry`;
        itself if its ensemble already cleans."""
        if self.ensemble.clean:
            return self
        ensemble = copy.copy(self.ensemble)  # shares the loaded member models
        ensemble.clean = True
        return Predictor(ensemble)

    def number(self, kind: str, chains: dict[str, str], name: str) -> list[NumberedChain]:
        return number_receptor(kind, chains, name)

    def predict_numbered(
        self, items: list[tuple[str, str, list[NumberedChain]]], numbering: str = "imgt"
    ) -> list[Prediction]:
        """Predict already-numbered receptors (name, kind, chains), unrefined, in the order given.

        The ensemble runs on groups of at most MAX_FORWARD_BATCH receptors of one kind and similar length (less
        padding).
        """
        features = [featurise(kind, chains) for _, kind, chains in items]
        lengths = [sum(len(c) for c in chains) for _, _, chains in items]
        kinds = [kind for _, kind, _ in items]
        order = sorted(range(len(items)), key=lambda i: (KIND_INDEX[kinds[i]], lengths[i]))
        groups: list[list[int]] = []
        for i in order:
            if groups and len(groups[-1]) < MAX_FORWARD_BATCH and kinds[groups[-1][0]] == kinds[i]:
                groups[-1].append(i)
            else:
                groups.append([i])
        predictions: list[Prediction | None] = [None] * len(items)
        for group in groups:
            output = self.ensemble.run(collate([features[i] for i in group]))
            for row, i in enumerate(group):
                predictions[i] = self._prediction(items[i], lengths[i], output, row, numbering)
        return predictions

    def _prediction(
        self, item: tuple[str, str, list[NumberedChain]], n: int, output: EnsembleOutput, row: int, numbering: str
    ) -> Prediction:
        """The Prediction of one receptor (name, kind, chains) of n residues from row `row` of an ensemble output."""
        name, kind, chains = item
        spread, head_error = output.spread[row, :n].numpy(), output.head_error[row, :n].numpy()
        error = output.error[row, :n].numpy()
        calibrator = self.kind_calibrators.get(kind, self.calibrator)
        if calibrator is not None:
            slot = np.concatenate([np.full(len(c), s) for s, c in enumerate(chains)])
            position = np.array([number for c in chains for number, _ in c.positions])
            error = calibrator.apply(kind, slot, position, spread, head_error).astype(np.float32)
        return Prediction(
            name=name,
            kind=kind,
            chains=chains,
            chain_ids=KIND_CHAIN_IDS[kind],
            residue_ids=[renumber(c, numbering, f"{name} {cid}") for c, cid in zip(chains, KIND_CHAIN_IDS[kind])],
            numbering_scheme=numbering,
            atom14=output.consensus[row, :n].numpy(),
            error=error,
            members=output.members[output.ranking[row], row, :n].numpy(),
            spread=spread,
            head_error=head_error,
            weights_version=self.ensemble.version,
            geometry_cleaned=self.ensemble.clean,
            error_calibrated=calibrator is not None,
            notes=[note for c in chains for note in c.notes],
        )

    def refine(self, prediction: Prediction) -> Prediction:
        """`refine_prediction(prediction)` (needs no loaded ensemble)."""
        return refine_prediction(prediction)

    def predict(
        self, kind: str, chains: dict[str, str], name: str = "input", refine: bool = True, numbering: str = "imgt"
    ) -> Prediction:
        numbered = self.number(kind, chains, name)
        prediction = self.predict_numbered([(name, kind, numbered)], numbering)[0]
        return self.refine(prediction) if refine else prediction


DEVICES = ("cpu", "cuda")
_predictors: dict[str, Predictor] = {}
_predictors_lock = threading.Lock()


def check_device(device: str, record: str = "device") -> str:
    """`device` if it is "cpu" or "cuda" with a CUDA GPU present; else an InputError with a one-line reason."""
    if device not in DEVICES:
        raise InputError(record, f"unknown device {device!r} (cpu or cuda)", field="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(record, "device 'cuda' requested but no CUDA GPU is available (use cpu)", field="device")
    return device


def default_predictor(device: str = "cpu", clean_geometry: bool = False, fast: bool = False) -> Predictor:
    """The shared Predictor of the packaged ensemble (its fast set if `fast`) on `device`, loaded once even when
    threads ask at once."""
    key = (device, clean_geometry, fast)
    with _predictors_lock:
        if key not in _predictors:
            _predictors[key] = Predictor(device=device, clean_geometry=clean_geometry, fast=fast)
        return _predictors[key]


def predict(
    heavy: str | None = None,
    light: str | None = None,
    alpha: str | None = None,
    beta: str | None = None,
    kind: str | None = None,
    refine: bool = True,
    numbering: str = "imgt",
    device: str = "cpu",
    name: str = "input",
    clean_geometry: bool = False,
    fast: bool = False,
) -> Prediction:
    """Predict one antibody (heavy + light), nanobody (heavy) or TCR (alpha + beta) from sequence.

    fast: the fast member set (antibodies by two distilled members, a model pass about twice as fast; nanobodies and
    TCRs keep the full ensemble); its val accuracy beside the default's is in the README.

    Raises TypeError for a sequence or name that is not a string or a refine/clean_geometry/fast that is not a bool,
    and InputError (one line: '<name>: <reason>') for anything else that cannot be modelled: no or bad sequences,
    unknown kind, numbering or device.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, not {type(name).__name__}")
    for option, value in (("refine", refine), ("clean_geometry", clean_geometry), ("fast", fast)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}: {option} must be True or False, not {value!r}")
    chains = {"heavy": heavy, "light": light, "alpha": alpha, "beta": beta}
    for slot, sequence in chains.items():
        if sequence is not None and not isinstance(sequence, str):
            raise TypeError(f"{name}: {slot} must be a sequence string, not {type(sequence).__name__}")
    chains = {k: v for k, v in chains.items() if v}
    if not chains:
        raise InputError(name, "no chain given: heavy= (and light=) for an antibody or nanobody, alpha= and beta= for a "
                               "TCR")
    kind = kind or infer_kind(**chains)
    if numbering not in NUMBERING_SCHEMES:
        raise InputError(name, f"unknown numbering scheme {numbering!r} ({', '.join(NUMBERING_SCHEMES)})", field="numbering")
    check_device(device, name)
    if clean_geometry and refine:
        raise InputError(name, "clean_geometry applies to unrefined models: add refine=False (refined models have real "
                               "geometry)", field="clean_geometry")
    predictor = default_predictor(device, clean_geometry, fast)
    return predictor.predict(kind, chains, name=name, refine=refine, numbering=numbering)
