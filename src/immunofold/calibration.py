"""Calibrated per-residue error: what the ensemble's spread and error heads say, mapped to the CA deviation
(Å, after superposing the chain on its framework) seen on structures that no shipped member was trained on.

The members' error heads learnt their deviations on their own training structures, where they are far more
accurate than on new ones, so the raw estimate sqrt(spread² + head²) is overconfident where it matters. The
calibrator is a log-linear model of the expected squared CA deviation of each residue:

    log error = offset[kind, chain, region] + offset[kind, chain, IMGT position] + a · log spread + b · log head
                + (CDR3 residues) c[kind] · (CDR3 length - 13) + d · log(1 + depth in the CDR3)

(region: framework, CDR1, CDR2, CDR3 by IMGT; position: the IMGT number, insertions sharing their position's offset,
shrunk to 0 by a Gaussian prior so that positions rare in the fit data keep their region's offset; depth: residues
to the nearer end of the CDR3; a, b >= 0 so the error never falls as spread or head rises). It is fitted by maximum likelihood with error² as the variance of the
deviation (`fit`), so error² estimates the mean squared deviation and the RMS of the errors over a loop estimates
its RMSD. Parameters live in weights/calibration.json with the weights version they were fitted for and the data
they were fitted on; `scripts/fit_calibration.py` refits them (see docs/calibration.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

from immunofold.constants import IMGT_CDRS, KIND_CHAIN_IDS, is_cdr

REGIONS = ("fr", "cdr1", "cdr2", "cdr3")
GROUPS = tuple(f"{kind} {chain} {region}" for kind, chains in KIND_CHAIN_IDS.items() for chain in chains for region in REGIONS)
KINDS = tuple(KIND_CHAIN_IDS)
REFERENCE_CDR3_LENGTH = 13  # residues; the CDR3 length term is 0 here
MIN_ESTIMATE = 0.05  # Å; spread and head below this are read as this (log of 0)
MIN_DEVIATION = 0.05  # Å; real deviations below this are read as this in the ranking fit (log of 0)
# A kind's CDR3-length slope is fitted only from at least this many receptors of that kind, else held at 0: with the
# 19 out-of-fold nanobodies of v0.7 a fitted slope reordered val nanobody CDR3s (ROC AUC 0.75 -> 0.66; see
# docs/calibration.md), and 5-fold cross-validation on those 19 was at chance.
MIN_RECEPTORS_FOR_LENGTH_SLOPE = 50
# Standard deviation (log units) of the Gaussian prior on each position offset; chosen by 5-fold cross-validation
# over receptors of the out-of-fold set (scripts/fit_calibration.py, benchmarks/results/calibration_fit.md).
POSITION_PRIOR = 0.15
PACKAGED_FILE = "weights/calibration.json"
FAST_FILE = "weights/calibration-fast.json"  # the fast member set's (weights.FAST_MEMBERS_FILE)


@dataclass(frozen=True)
class Calibrator:
    """Fitted parameters of the calibrated error model (module docstring); `apply` maps estimates to Å."""

    weights_version: str  # the ensemble these parameters were fitted for
    offsets: dict[str, float]  # GROUPS -> log Å
    spread_power: float
    head_power: float
    cdr3_length_slope: dict[str, float]  # kind -> per residue of CDR3 length
    depth_slope: float
    fitted_on: dict = field(default_factory=dict)  # provenance: data set, counts, fit statistics
    position_offsets: dict[str, float] = field(default_factory=dict)  # position_keys -> log Å; absent keys are 0

    def apply(self, kind: str, slot: np.ndarray, position: np.ndarray, spread: np.ndarray,
              head_error: np.ndarray) -> np.ndarray:
        """Calibrated error [N] Å of one receptor from its residues' chain slot [N], IMGT position number [N],
        spread [N] Å and head error [N] Å."""
        shift = np.array([self.position_offsets.get(k, 0.0) for k in position_keys(kind, slot, position)])
        return np.exp(self._parameters() @ design(kind, slot, position, spread, head_error).T + shift)

    def _parameters(self) -> np.ndarray:
        return np.array([*(self.offsets[g] for g in GROUPS), self.spread_power, self.head_power,
                         *(self.cdr3_length_slope[k] for k in KINDS), self.depth_slope])

    @classmethod
    def from_vector(cls, theta: np.ndarray, weights_version: str, fitted_on: dict,
                    position_offsets: dict[str, float] | None = None) -> "Calibrator":
        n = len(GROUPS)
        return cls(weights_version, {g: float(v) for g, v in zip(GROUPS, theta[:n])}, float(theta[n]),
                   float(theta[n + 1]), {k: float(v) for k, v in zip(KINDS, theta[n + 2 : n + 5])},
                   float(theta[n + 5]), fitted_on, dict(position_offsets or {}))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Calibrator":
        """Parameters from `to_json`'s text; files written before position offsets existed load with none (0)."""
        return cls(**json.loads(text))


def position_keys(kind: str, slot: np.ndarray, position: np.ndarray) -> list[str]:
    """Names "kind chain position" [N] of the position offsets of one receptor's residues (e.g. "antibody L 40")."""
    chains = KIND_CHAIN_IDS[kind]
    return [f"{kind} {chains[s]} {p}" for s, p in zip(np.asarray(slot), np.asarray(position))]


def design(kind: str, slot: np.ndarray, position: np.ndarray, spread: np.ndarray, head_error: np.ndarray) -> np.ndarray:
    """Feature rows [N, P] of one receptor's residues, in `Calibrator._parameters` order."""
    slot, position = np.asarray(slot), np.asarray(position)
    chains = KIND_CHAIN_IDS[kind]
    region = np.zeros(len(position), dtype=int)  # 0 = framework
    for k in IMGT_CDRS:
        region[is_cdr(position, k)] = k
    rows = np.zeros((len(position), len(GROUPS) + 6))
    group = np.array([GROUPS.index(f"{kind} {chains[s]} {REGIONS[r]}") for s, r in zip(slot, region)], dtype=int)
    rows[np.arange(len(position)), group] = 1.0
    n = len(GROUPS)
    rows[:, n] = np.log(np.maximum(spread, MIN_ESTIMATE))
    rows[:, n + 1] = np.log(np.maximum(head_error, MIN_ESTIMATE))
    for s in np.unique(slot):
        loop = np.flatnonzero((slot == s) & (region == 3))
        if len(loop):
            index = np.arange(len(loop))
            rows[loop, n + 2 + KINDS.index(kind)] = len(loop) - REFERENCE_CDR3_LENGTH
            rows[loop, n + 5] = np.log1p(np.minimum(index, len(loop) - 1 - index))
    return rows


def fit(receptors: list[dict], weights_version: str, fitted_on: dict, prior: float = 1.0,
        position_prior: float = POSITION_PRIOR) -> Calibrator:
    """Parameters from receptors, each a dict with kind, slot, position, spread, head_error and deviation (real CA
    deviation [N] Å, NaN where unknown), in two stages:

    1. ranking: every parameter by least squares on log deviation (floored at MIN_DEVIATION); the position offsets,
       which only order residues within a region, are kept from this fit (log deviations are not dominated by a few
       large ones the way squared deviations are);
    2. scale: the other parameters (region offsets, spread and head powers, CDR3 length and depth slopes) by maximum
       likelihood, the deviation of a residue read as a Gaussian displacement of variance error², so error² fits the
       mean square deviation and the RMS of the errors over a loop its RMSD.

    Against the likelihood alone (v0.7's out-of-fold set, 5-fold cross-validated, and val), the position offsets of
    stage 1 ranked residues within a structure better (per-structure Spearman on val antibody 0.537 -> 0.570,
    nanobody 0.698 -> 0.704) with every CDR3 quintile still calibrated (docs/calibration.md). A weak Gaussian prior (standard deviation `prior`, log units)
    pulls each nanobody offset towards the same region's antibody H offset (few nanobodies); each position offset
    has a Gaussian prior of mean 0 and standard deviation `position_prior` (log units; 0: no position offsets).
    Groups without residues take the mean offset of their region; positions without residues get no offset (0); a
    kind with fewer than MIN_RECEPTORS_FOR_LENGTH_SLOPE receptors gets no CDR3-length slope."""
    from scipy.optimize import minimize  # here, not at the top: every prediction imports this module (~0.3 s)

    rows, deviation, keys = [], [], []
    for r in receptors:
        keep = np.isfinite(r["deviation"])
        rows.append(design(r["kind"], r["slot"], r["position"], r["spread"], r["head_error"])[keep])
        deviation.append(r["deviation"][keep])
        keys += [k for k, kept in zip(position_keys(r["kind"], r["slot"], r["position"]), keep) if kept]
    x, d = np.concatenate(rows), np.concatenate(deviation)
    d2, log_d = d**2, np.log(np.maximum(d, MIN_DEVIATION))
    names, key_index = np.unique(keys, return_inverse=True) if position_prior > 0 else (np.array([]), None)
    present = x[:, : len(GROUPS)].any(0)
    n, p = len(GROUPS), x.shape[1]
    group = x[:, :n].argmax(1)
    # variance of log deviation within a region: turns the priors (log units) into least-squares weights
    log_variance = np.mean((log_d - (np.bincount(group, log_d, n) / np.maximum(np.bincount(group, None, n), 1))[group]) ** 2)

    def log_error(theta):
        z = x @ theta[:p]
        return z + theta[p:][key_index] if key_index is not None else z

    def priors(theta, scale):
        """Penalty and gradient of the priors, per residue, in units of the loss (`scale` per -2 log prior)."""
        penalty, grad = _offset_prior(theta[:n], prior, len(d2))
        grad = np.concatenate([grad, np.zeros(len(theta) - n)])
        if len(names):
            penalty += np.sum(theta[p:] ** 2) / (position_prior**2 * len(d2))
            grad[p:] += 2 * theta[p:] / (position_prior**2 * len(d2))
        return scale * penalty, scale * grad

    def gradient(residual):
        return np.concatenate([x.T @ residual, np.bincount(key_index, residual, len(names)) if len(names) else []])

    def squared_log_loss(theta):  # stage 1
        residual = log_error(theta) - log_d
        penalty, pgrad = priors(theta, log_variance)
        return np.mean(residual**2) + penalty, gradient(2 * residual / len(d2)) + pgrad

    def likelihood_loss(theta):  # stage 2: -2 log likelihood per residue
        z = log_error(theta)
        scaled = d2 * np.exp(-2 * z)
        penalty, pgrad = priors(theta, 1.0)
        return np.sum(scaled + 2 * z) / len(d2) + penalty, gradient((2 - 2 * scaled) / len(d2)) + pgrad

    start = np.zeros(p + len(names))
    start[:n] = 0.5 * np.log(max(d2.mean(), 1e-3))
    counts = {kind: sum(r["kind"] == kind for r in receptors) for kind in KINDS}
    slope_bounds = [(None, None) if counts[kind] >= MIN_RECEPTORS_FOR_LENGTH_SLOPE else (0.0, 0.0) for kind in KINDS]
    bounds = [(None, None)] * n + [(0.0, None), (0.0, None)] + slope_bounds + [(None, None)] * (1 + len(names))
    options = {"maxiter": 5000}
    ranking = minimize(squared_log_loss, start, jac=True, method="L-BFGS-B", bounds=bounds, options=options)
    held = bounds[:p] + [(value, value) for value in ranking.x[p:]]  # the position offsets of stage 1
    result = minimize(likelihood_loss, ranking.x, jac=True, method="L-BFGS-B", bounds=held, options=options)
    theta = result.x[:p].copy()
    theta[:n][~present] = np.nan
    fitted = dict(fitted_on, residues=int(len(d2)), receptors=len(receptors),
                  converged=bool(ranking.success and result.success), position_prior=position_prior)
    positions = {str(k): float(v) for k, v in zip(names, result.x[p:])}
    return Calibrator.from_vector(_fill_missing(theta), weights_version, fitted, positions)


def _offset_prior(offsets: np.ndarray, prior: float, n: int) -> tuple[float, np.ndarray]:
    """Penalty (per residue, as the loss) and gradient pulling nanobody offsets towards antibody H's."""
    penalty, grad = 0.0, np.zeros_like(offsets)
    for region in REGIONS:
        i, j = GROUPS.index(f"nanobody H {region}"), GROUPS.index(f"antibody H {region}")
        diff = offsets[i] - offsets[j]
        penalty += diff**2 / (2 * prior**2 * n)
        grad[i] += diff / (prior**2 * n)
        grad[j] -= diff / (prior**2 * n)
    return penalty, grad


def _fill_missing(theta: np.ndarray) -> np.ndarray:
    """Offsets of groups absent from the fit data take the mean of the same region (never NaN in the file)."""
    theta = theta.copy()
    for g, name in enumerate(GROUPS):
        if np.isnan(theta[g]):
            same = [theta[i] for i, other in enumerate(GROUPS) if other.endswith(name.split()[-1]) and np.isfinite(theta[i])]
            theta[g] = float(np.mean(same)) if same else 0.0
    return theta


def packaged_calibrator(weights_version: str) -> Calibrator | None:
    """The shipped calibrator fitted for `weights_version` (the default or the fast member set's), else None (error
    left uncalibrated)."""
    for name in (PACKAGED_FILE, FAST_FILE):
        path = resources.files("immunofold") / name
        if path.is_file():
            calibrator = Calibrator.from_json(path.read_text())
            if calibrator.weights_version == weights_version:
                return calibrator
    return None


def borrowed_calibrators(sets: dict[str, list[str]]) -> dict[str, Calibrator]:
    """For member sets other than the shipped default (the fast set): the default set's calibrator for each kind
    whose members are the default set's own, whose predictions, and so errors, are the default's ({} otherwise)."""
    from immunofold.weights import packaged_member_sets, weights_version

    default = packaged_member_sets()
    if not default or not sets or sets == default:
        return {}
    calibrator = packaged_calibrator(weights_version(default))
    if calibrator is None:
        return {}
    return {kind: calibrator for kind, members in sets.items() if members == default.get(kind)}

