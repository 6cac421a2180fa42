"""Developability profiles of a structure: TAP for antibody Fv, TNP for nanobodies.

    >>> profile = prediction.developability()     # or profile_structure(gemmi_structure, ("H", "L"))
    >>> profile["psh"].value, profile["psh"].flag  # 131.2, 'green'
    >>> profile.to_dict()                          # JSON-ready

Definitions (both profilers share them; TNP drops SFvCSP and adds CDR3 length and compactness):
- Total CDR length: residues in the IMGT CDRs (27-38, 56-65, 105-117) of every chain.
- Surface residue: relative side-chain SASA >= 7.5 % (for Gly, which has no side chain, the relative
  SASA of the whole residue). Buried residues take no part in PSH, PPC, PNC or SFvCSP.
- CDR vicinity: surface residues of the IMGT CDRs +-2 anchor residues (25-40, 54-67, 103-119), plus
  surface residues whose closest heavy atom is < 4 Å from one of them.
- Hydrophobicity: Kyte-Doolittle rescaled to 1 (Arg) - 2 (Ile). Charge: +1 Lys/Arg, -1 Asp/Glu, +0.1 His
  (pH 7.4), salt-bridged or not (as the reference code computes it; see below).
- Distance d between residues: closest heavy-atom distance (hydrogens of refined models are ignored).
- PSH = sum h_i h_j / d^2, PPC = sum q_i q_j / d^2 over positive pairs, PNC = sum q_i q_j / d^2 over
  negative pairs; over ordered pairs i != j of CDR-vicinity residues with d <= 7.5 Å (each pair counted
  in both orders, as the published code sums them, which is the scale the thresholds were set on).
- SFvCSP = (net charge of the VH surface residues) x (net charge of the VL surface residues).
- CDR3 compactness (TNP) = CDR3 length / rho, rho = distance (Å) between the centroid of the CDR3
  backbone atoms (N, CA, C of IMGT 105-117) and that of its anchors (IMGT 102, 103, 118, 119).

Sources (checked with the `search` tool, 2026):
- Raybould et al., "Five computational developability guidelines for therapeutic antibody profiling",
  PNAS 116:4025 (2019): the metric definitions above. The 2019 paper's amber/red lines for PSH, PPC, PNC
  and SFvCSP could not be read from any public source we could reach (its CDR-length band was: amber
  54-60, red > 60), so the antibody thresholds are those of the TAP update, Raybould et al., Commun.
  Biol. 7:62 (2024), Table 1 (https://www.nature.com/articles/s42003-023-05744-8/tables/1), taken from
  the 664 clinical-stage Fv modelled with ABodyBuilder2.
- OPIG's TAP annotation code as shipped inside TNP (github.com/oxpig/TNP,
  lib/python/theraprofnano/Hydrophobicity_and_Charge_Profiler): surface cut-off, CDR +-2 vicinity,
  4 Å vicinity, 7.5 Å pair cut-off, ordered pairs, His +0.1.
- Gordon et al., "The Therapeutic Nanobody Profiler" (2025), github.com/oxpig/TNP bin/TNP (flag values)
  and CDR_Profiler/CDR3_Conf_Assigner.py (compactness), calibrated on 36 clinical-stage nanobodies.
Where we differ from the reference code: SASA is computed with FreeSASA (Lee-Richards, ProtOr radii)
instead of PSA, so relative accessibilities differ slightly. Salt bridges: the 2019 paper neutralises Lys/Arg
and Asp/Glu pairs within 3.2 Å, but the reference code, whose values set the thresholds, does not: its
salt-bridge step stores the zeroed charges under keys ('Positive', 'Charge', 'Negative') that the patch sums
never read, and tests each residue against only the last one. We follow the code, so that values sit on the
thresholds' scale (FlashTAP, trained on TAP values, agrees with crystal values computed this way far better:
docs/benchmarks.md, developability).
Flags: amber and red lines are the 5th/95th percentile and the extreme value of the clinical set; a value
on an amber line is amber, a value beyond a red line is red.
"""

from __future__ import annotations

from dataclasses import dataclass

import freesasa
import gemmi
import numpy as np

from immunofold.constants import IMGT_CDRS
from immunofold.sequences import InputError

KYTE_DOOLITTLE = {
    "I": 4.5, "V": 4.2, "L": 3.8, "F": 2.8, "C": 2.5, "M": 1.9, "A": 1.8, "G": -0.4, "T": -0.7, "S": -0.8,
    "W": -0.9, "Y": -1.3, "P": -1.6, "H": -3.2, "E": -3.5, "Q": -3.5, "D": -3.5, "N": -3.5, "K": -3.9, "R": -4.5,
}  # fmt: skip
_KD_MIN, _KD_MAX = min(KYTE_DOOLITTLE.values()), max(KYTE_DOOLITTLE.values())
HYDROPHOBICITY = {aa: (kd - _KD_MIN) / (_KD_MAX - _KD_MIN) + 1.0 for aa, kd in KYTE_DOOLITTLE.items()}  # 1 (R) .. 2 (I)
CHARGE = {"K": 1.0, "R": 1.0, "D": -1.0, "E": -1.0, "H": 0.1}  # pH 7.4
SURFACE_MIN_RELATIVE_SASA = 0.075  # relative side-chain SASA (fraction) of a surface residue
VICINITY_CUTOFF = 4.0  # Å, closest heavy-atom distance to a CDR (+-2) surface residue
PAIR_CUTOFF = 7.5  # Å, residue pairs further apart do not count in PSH/PPC/PNC
CDR_WITH_ANCHORS = ((25, 40), (54, 67), (103, 119))  # IMGT CDRs +-2 residues
CDR3_ANCHORS = (102, 103, 118, 119)  # IMGT, TNP's compactness anchors
BACKBONE = ("N", "CA", "C")

FLAGS = ("green", "amber", "red")
PROFILED_KINDS = ("antibody", "nanobody")  # receptor kinds with a profile (TAP, TNP); TCRs have none


@dataclass(frozen=True)
class Band:
    """Therapeutic range of one metric: red below `red_below` or above `red_above`, amber at or below
    `amber_to` or at or above `amber_from`, green between. None: no line on that side."""

    red_below: float | None
    amber_to: float | None
    amber_from: float | None
    red_above: float | None

    def flag(self, value: float) -> str:
        if (self.red_below is not None and value < self.red_below) or (self.red_above is not None and value > self.red_above):
            return "red"
        if (self.amber_to is not None and value <= self.amber_to) or (self.amber_from is not None and value >= self.amber_from):
            return "amber"
        return "green"


# TAP update (Raybould et al. 2024, Table 1) and TNP (Gordon et al. 2025, bin/TNP)
TAP_BANDS = {
    "cdr_length": Band(37, 42, 55, 63),
    "psh": Band(95.58, 110.11, 168.06, 201.59),
    "ppc": Band(None, None, 1.32, 4.22),
    "pnc": Band(None, None, 2.00, 4.42),
    "sfvcsp": Band(-30.60, -6.00, None, None),
}
TNP_BANDS = {
    "cdr_length": Band(20, 24, 37, 39),
    "cdr3_length": Band(5, 8, 21, 23),
    "cdr3_compactness": Band(0.56, 0.81, 1.57, 1.61),
    "psh": Band(73.40, 79.59, 126.83, 155.47),
    "ppc": Band(None, None, 0.39, 1.18),
    "pnc": Band(None, None, 1.47, 1.88),
}
LABELS = {
    "cdr_length": "total IMGT CDR length",
    "cdr3_length": "IMGT CDR3 length",
    "cdr3_compactness": "CDR3 compactness (residues/Å)",
    "psh": "PSH, patches of surface hydrophobicity",
    "ppc": "PPC, patches of positive charge",
    "pnc": "PNC, patches of negative charge",
    "sfvcsp": "SFvCSP, Fv charge symmetry",
}


@dataclass(frozen=True)
class Metric:
    """One metric: its value, flag and the residues it counts (labels like 'H111A', in the structure's numbering)."""

    name: str
    value: float
    band: Band
    residues: tuple[str, ...]

    @property
    def flag(self) -> str:
        return self.band.flag(self.value)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "label": LABELS[self.name], "value": round(float(self.value), 4), "flag": self.flag,
            "red_below": self.band.red_below, "amber_to": self.band.amber_to,
            "amber_from": self.band.amber_from, "red_above": self.band.red_above, "residues": list(self.residues),
        }  # fmt: skip


@dataclass(frozen=True)
class DevelopabilityProfile:
    """TAP (antibody) or TNP (nanobody) profile of one structure."""

    name: str
    kind: str
    profiler: str  # "TAP" or "TNP"
    metrics: tuple[Metric, ...]

    def __getitem__(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    @property
    def flagged(self) -> tuple[Metric, ...]:
        """Metrics outside the green range."""
        return tuple(m for m in self.metrics if m.flag != "green")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "profiler": self.profiler,
                "metrics": {m.name: m.to_dict() for m in self.metrics}}  # fmt: skip

    def __str__(self) -> str:
        lines = [f"{self.profiler} developability profile of {self.name} ({self.kind})"]
        for m in self.metrics:
            where = f"  [{' '.join(m.residues)}]" if m.flag != "green" and m.name not in ("cdr_length", "cdr3_length") else ""
            lines.append(f"  {LABELS[m.name]:<40} {m.value:9.2f}  {m.flag}{where}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Residues:
    """Heavy atoms of the profiled residues. N residues, A atoms."""

    labels: list[str]  # [N]
    chains: np.ndarray  # [N] index of the residue's chain in the chain_ids given
    aa: list[str]  # [N] one-letter
    names: list[str]  # [N] residue names (three-letter)
    imgt: np.ndarray  # [N] IMGT position number
    coords: np.ndarray  # [A, 3] Å
    atom_names: list[str]  # [A]
    atom_residue: np.ndarray  # [A] residue index of each atom


def _collect(structure: gemmi.Structure, chain_ids: tuple[str, ...], imgt: list[dict] | None, name: str) -> _Residues:
    """Amino-acid residues of `chain_ids` (first model), heavy atoms only; IMGT numbers from `imgt` (per chain,
    {(number, icode): IMGT number}; residues missing from it are left out) or else the residue numbers."""
    if len(structure) == 0:
        raise InputError(name, "structure has no model")
    model = structure[0]
    labels, chains, aa, names, numbers, coords, atom_names, atom_residue = [], [], [], [], [], [], [], []
    for c, chain_id in enumerate(chain_ids):
        chain = model.find_chain(chain_id)
        if chain is None:
            raise InputError(name, f"no chain {chain_id} (found {', '.join(ch.name for ch in model)})")
        for residue in chain:
            info = gemmi.find_tabulated_residue(residue.name)
            if info is None or not info.is_amino_acid():
                continue
            key = (residue.seqid.num, residue.seqid.icode.strip())
            if imgt is not None and key not in imgt[c]:
                continue
            heavy = [a for a in residue if a.element.name not in ("H", "D")]
            if not heavy:
                continue
            for atom in heavy:
                coords.append(atom.pos.tolist())
                atom_names.append(atom.name)
                atom_residue.append(len(labels))
            labels.append(f"{chain_id}{key[0]}{key[1]}")
            chains.append(c)
            aa.append(info.one_letter_code.upper())
            names.append(residue.name)
            numbers.append(imgt[c][key] if imgt is not None else key[0])
    if not labels:
        raise InputError(name, f"no amino-acid residues in chain(s) {', '.join(chain_ids)}")
    return _Residues(labels, np.array(chains), aa, names, np.array(numbers), np.array(coords, dtype=np.float64),
                     atom_names, np.array(atom_residue))  # fmt: skip


def relative_side_chain_sasa(residues: _Residues) -> np.ndarray:
    """[N] relative side-chain SASA (fraction; whole residue for Gly; NaN for non-standard residues), FreeSASA."""
    freesasa.setVerbosity(freesasa.silent)
    structure = freesasa.Structure()
    for xyz, atom, r in zip(residues.coords, residues.atom_names, residues.atom_residue):
        structure.addAtom(atom, residues.names[r], str(r), "A", *xyz)
    areas = freesasa.calc(structure).residueAreas()["A"]
    relative = np.full(len(residues.labels), np.nan)
    for r, area in areas.items():
        r = int(r)
        relative[r] = area.relativeTotal if residues.aa[r] == "G" else area.relativeSideChain
    return relative


def _residue_distances(residues: _Residues, keep: np.ndarray) -> np.ndarray:
    """[K, K] closest heavy-atom distance (Å) between the kept residues (K = keep.sum())."""
    index = np.flatnonzero(keep)
    atoms = np.isin(residues.atom_residue, index)
    xyz, owner = residues.coords[atoms], residues.atom_residue[atoms]
    d = np.sqrt(((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1))  # [a, a]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])  # atoms of one residue are contiguous
    d = np.minimum.reduceat(np.minimum.reduceat(d, starts, axis=0), starts, axis=1)
    np.fill_diagonal(d, np.inf)
    return d


def _in_ranges(imgt: np.ndarray, ranges) -> np.ndarray:
    return np.any([(imgt >= lo) & (imgt <= hi) for lo, hi in ranges], axis=0)


def _cdr3_compactness(residues: _Residues, cdr3_length: int, name: str) -> float:
    """TNP CDR3 compactness: CDR3 length / distance (Å) of the CDR3 backbone centroid from its anchors'."""
    backbone = np.array([n in BACKBONE for n in residues.atom_names])
    imgt = residues.imgt[residues.atom_residue]
    loop = backbone & _in_ranges(imgt, [IMGT_CDRS[3]])
    before, after = backbone & np.isin(imgt, CDR3_ANCHORS[:2]), backbone & np.isin(imgt, CDR3_ANCHORS[2:])
    anchors = before | after
    if not loop.any() or not before.any() or not after.any():
        raise InputError(name, "CDR3 compactness needs the CDR3 and anchor residues on both sides of it (IMGT 102-103 "
                               "and 118-119); is the chain cut inside CDR3 or FR4?")
    rho = np.linalg.norm(residues.coords[loop].mean(0) - residues.coords[anchors].mean(0))
    return float(cdr3_length / rho)


def profile_structure(
    structure: gemmi.Structure,
    chain_ids: tuple[str, ...],
    imgt: list[dict] | None = None,
    name: str = "structure",
) -> DevelopabilityProfile:
    """TAP profile of an Fv (chain_ids = (heavy, light)) or TNP profile of a nanobody (chain_ids = (heavy,)).

    Residues are IMGT-numbered by `imgt` (one {(number, insertion code): IMGT number} per chain; residues not
    in it, e.g. constant domains, are left out) or else taken to carry IMGT numbers already. Other chains
    (antigen, waters) are ignored and do not shield the surface. Raises InputError naming `name`.
    """
    if len(chain_ids) not in (1, 2):
        raise InputError(name, f"give the heavy chain (nanobody) or heavy and light chains (antibody), not {chain_ids}")
    kind = "antibody" if len(chain_ids) == 2 else "nanobody"
    residues = _collect(structure, tuple(chain_ids), imgt, name)
    relative = relative_side_chain_sasa(residues)
    surface = np.nan_to_num(relative, nan=0.0) >= SURFACE_MIN_RELATIVE_SASA  # [N]
    hydrophobicity = np.array([HYDROPHOBICITY.get(a, HYDROPHOBICITY["G"]) for a in residues.aa])
    charge = np.array([CHARGE.get(a, 0.0) for a in residues.aa])
    labels = np.array(residues.labels)

    index = np.flatnonzero(surface)  # distances among surface residues only
    d = _residue_distances(residues, surface)  # [S, S]
    seeds = _in_ranges(residues.imgt[index], CDR_WITH_ANCHORS)  # [S]
    vicinity = seeds | (d[:, seeds].min(axis=1, initial=np.inf) < VICINITY_CUTOFF)
    v = index[vicinity]
    dv = d[np.ix_(vicinity, vicinity)]  # [V, V]
    weight = np.where(dv <= PAIR_CUTOFF, 1.0 / dv**2, 0.0)  # ordered pairs, diagonal is inf -> 0
    h, q = hydrophobicity[v], charge[v]
    positive, negative = q > 0, q < 0
    psh = float(h @ weight @ h)
    ppc = float((q * positive) @ weight @ (q * positive))
    pnc = float((q * negative) @ weight @ (q * negative))
    has_partner = weight > 0
    hydrophobic = np.array([KYTE_DOOLITTLE.get(residues.aa[i], 0.0) > 0 for i in v])

    cdr = _in_ranges(residues.imgt, IMGT_CDRS.values())
    bands = TAP_BANDS if kind == "antibody" else TNP_BANDS
    values = {
        "cdr_length": (int(cdr.sum()), labels[cdr]),
        "psh": (psh, labels[v][hydrophobic & has_partner.any(1)]),
        "ppc": (ppc, labels[v][positive & (has_partner & positive[None]).any(1)]),
        "pnc": (pnc, labels[v][negative & (has_partner & negative[None]).any(1)]),
    }
    if kind == "antibody":
        net = [float(charge[surface & (residues.chains == c)].sum()) for c in (0, 1)]
        values["sfvcsp"] = (net[0] * net[1], labels[surface & (charge != 0)])
    else:
        cdr3 = _in_ranges(residues.imgt, [IMGT_CDRS[3]])
        values["cdr3_length"] = (int(cdr3.sum()), labels[cdr3])
        values["cdr3_compactness"] = (_cdr3_compactness(residues, int(cdr3.sum()), name), labels[cdr3])
    metrics = tuple(Metric(key, float(values[key][0]), band, tuple(values[key][1].tolist())) for key, band in bands.items())
    return DevelopabilityProfile(name, kind, "TAP" if kind == "antibody" else "TNP", metrics)


def mean_profile(profiles: list[DevelopabilityProfile]) -> DevelopabilityProfile:
    """One profile from several structures of one receptor: each metric's value is the mean of its values, its
    residues those counted in at least half of the profiles (in the order first seen)."""
    first = profiles[0]
    metrics = []
    for metric in first.metrics:
        per_structure = [profile[metric.name] for profile in profiles]
        counts: dict[str, int] = {}
        for m in per_structure:
            for label in m.residues:
                counts[label] = counts.get(label, 0) + 1
        residues = tuple(label for label, n in counts.items() if 2 * n >= len(profiles))
        value = float(np.mean([m.value for m in per_structure]))
        metrics.append(Metric(metric.name, value, metric.band, residues))
    return DevelopabilityProfile(first.name, first.kind, first.profiler, tuple(metrics))


def profile_prediction(prediction) -> DevelopabilityProfile:
    """Profile of a `prediction.Prediction`, refined or not: the mean profile (`mean_profile`) of its ensemble
    members, each after the geometry clean-up (`Prediction.cleaned_members`; raw clashes inflate PSH), with IMGT
    CDRs whatever numbering the model was written in. Why the members and not the one final structure: TAP's
    metrics jump when one side chain crosses the surface or distance cut-offs, and the members' mean followed
    the crystal's value more closely than any single model did (val antibodies, Spearman against the crystal,
    measured with 0.10.0's salt-bridge rule: PPC 0.72 vs 0.59 for the cleaned consensus and 0.61 for the refined
    model, PNC 0.78 vs 0.73 and 0.78; docs/benchmarks.md). Raises InputError for a TCR."""
    if prediction.kind not in PROFILED_KINDS:
        raise InputError(prediction.name, f"developability profiles cover antibodies and nanobodies, not {prediction.kind}s")
    imgt = [{rid: number for rid, (number, _) in zip(ids, chain.positions)}
            for ids, chain in zip(prediction.residue_ids, prediction.chains)]  # fmt: skip
    members = [profile_structure(prediction.structure_of(atom14), tuple(prediction.chain_ids), imgt, prediction.name)
               for atom14 in prediction.cleaned_members()]  # fmt: skip
    return mean_profile(members)
