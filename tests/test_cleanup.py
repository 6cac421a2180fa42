"""Geometry clean-up: real peptide bonds, no clashes, small moves, independent of the batch; on val predictions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from immunofold.cleanup import clean_geometry, problem_counts
from immunofold.constants import RESTYPE_INDEX, UNKNOWN_RESTYPE
from immunofold.data.sabdab import read_summary
from immunofold.ensemble import Ensemble
from immunofold.evaluate import number_entry
from immunofold.geometry import Frames, atom14_from_frames, residue_tables, torsion_angles
from immunofold.io import ChainAtoms, build_structure, to_pdb_string
from immunofold.prediction import Predictor
from immunofold.refine import SOFT_PROBLEM_KINDS, find_problems

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data, as `immunofold evaluate` is run


def ideal(atom14: torch.Tensor, mask: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    """The structure rebuilt with ideal residue geometry from its own frames and torsions (as the ensemble builds)."""
    frames = Frames.from_3_points(atom14[..., 0, :], atom14[..., 1, :], atom14[..., 2, :])
    sin_cos, _, _ = torsion_angles(atom14, mask, restype)
    return atom14_from_frames(frames, sin_cos, restype)


def jiggled(atom14: torch.Tensor, seed: int, shift: float = 0.5, turn: float = 0.15) -> torch.Tensor:
    """Each residue moved as a rigid body about its CA: random shift (Å, per axis) and rotation (radians, per axis)."""
    generator = torch.Generator().manual_seed(seed)
    n = atom14.shape[0]
    angles = (torch.rand(n, 3, generator=generator) - 0.5) * 2 * turn
    rotation = torch.linalg.matrix_exp(torch.cross(angles[:, None, :].expand(n, 3, 3), torch.eye(3).expand(n, 3, 3), dim=-1))
    ca = atom14[:, 1:2]
    moved = torch.einsum("nij,naj->nai", rotation, atom14 - ca) + ca
    return moved + (torch.rand(n, 1, 3, generator=generator) - 0.5) * 2 * shift


def problems(atom14: np.ndarray, sequence: str, exists: np.ndarray) -> Counter:
    """Counts of refinement's geometry problems by kind (refine.PROBLEM_KINDS) of one chain."""
    chain = ChainAtoms("H", sequence, [(i + 1, "") for i in range(len(sequence))], atom14, exists, np.zeros(len(sequence)))
    return Counter(p.kind for p in find_problems(to_pdb_string(build_structure([chain], []))))


@pytest.fixture(scope="module")
def nanobody(nanobody_atoms):
    """(ideal-geometry 7F5G nanobody [N, 14, 3] Å, restype [N], sequence, atom exists [N, 14])."""
    atom14, mask, restype, sequence = nanobody_atoms
    exists = residue_tables().atom_exists[restype]
    return ideal(atom14, mask, restype) * exists[..., None], restype, sequence, exists


def clean_one(atom14: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    n = len(restype)
    return clean_geometry(atom14[None], restype[None], torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long))[0]


def rms_move(a: torch.Tensor, b: torch.Tensor, exists: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum(-1)[exists].mean().sqrt())


def test_an_experimental_structure_barely_moves(nanobody):
    atom14, restype, sequence, exists = nanobody
    cleaned = clean_one(atom14, restype)
    assert rms_move(cleaned, atom14, exists) < 0.05
    assert not problems(cleaned.numpy(), sequence, exists.numpy())


def test_broken_bonds_and_clashes_are_repaired_with_small_moves(nanobody):
    atom14, restype, sequence, exists = nanobody
    broken = jiggled(atom14, seed=0) * exists[..., None]
    before = problems(broken.numpy(), sequence, exists.numpy())
    assert before["broken"] > 20 and before["clash"] > 0  # the test input really is broken
    cleaned = clean_one(broken, restype)
    assert not problems(cleaned.numpy(), sequence, exists.numpy())
    assert rms_move(cleaned, broken, exists) < 0.4  # 0.31 Å
    assert (cleaned[~exists] == 0).all()  # absent atoms stay at zero


def test_each_receptor_is_cleaned_as_if_alone(nanobody):
    atom14, restype, _, _ = nanobody
    n, short = len(restype), 60
    batch = torch.zeros(2, n, 14, 3)
    batch[0] = jiggled(atom14, seed=1)
    batch[1, :short] = jiggled(atom14[:short], seed=2)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[0], mask[1, :short] = True, True
    types = torch.stack([restype, restype])
    together = clean_geometry(batch, types, mask, torch.zeros(2, n, dtype=torch.long))
    assert torch.equal(together[0], clean_one(batch[0], restype))
    assert torch.equal(together[1, :short], clean_one(batch[1, :short], restype[:short]))
    assert (together[1, short:] == 0).all()


def test_a_chain_break_gets_no_peptide_bond(nanobody):
    atom14, restype, _, exists = nanobody
    n, cut = len(restype), 50
    apart = atom14.clone()
    apart[cut:] += torch.tensor([50.0, 0.0, 0.0])  # second half 50 Å away: a separate chain
    cleaned = clean_geometry(apart[None], restype[None], torch.ones(1, n, dtype=torch.bool),
                             (torch.arange(n) >= cut).long()[None])[0]
    assert torch.linalg.norm(cleaned[cut - 1, 2] - cleaned[cut, 0]) > 5.0
    assert rms_move(cleaned, apart, exists) < 0.05


@pytest.fixture(scope="module")
def val_predictions():
    """(predictor, unrefined predictions of the first val antibody, nanobody and TCR, the same without clean-up)."""
    entries = [e for e in read_summary(str(DATA)) if e.split == "val"]
    chosen = [next(e for e in entries if e.kind == kind) for kind in ("antibody", "nanobody", "tcr")]
    items = [(e.name, e.kind, number_entry(e)) for e in chosen]
    predictor = Predictor(Ensemble.packaged())
    cleaning = predictor.with_clean_geometry()
    assert cleaning.ensemble.models is predictor.ensemble.models and not predictor.ensemble.clean  # no second copy
    cleaned, raw = cleaning.predict_numbered(items), predictor.predict_numbered(items)
    assert all(p.geometry_cleaned for p in cleaned) and not any(p.geometry_cleaned for p in raw)
    return cleaning, cleaned, raw


def test_unrefined_val_models_have_real_protein_geometry(val_predictions):
    _, predictions, raw = val_predictions
    for prediction, before in zip(predictions, raw):
        found = Counter(p.kind for p in find_problems(prediction.to_pdb_string()))
        assert found["broken"] == found["cis"] == found["D-amino"] == 0, (prediction.name, found)
        assert found["clash"] <= 1, (prediction.name, found)
        assert len(find_problems(before.to_pdb_string())) > 10  # what the clean-up had to repair


def test_clean_up_moves_val_models_little(val_predictions):
    _, predictions, raw = val_predictions
    for prediction, before in zip(predictions, raw):
        restype = [RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for chain in prediction.chains for aa in chain.sequence]
        exists = residue_tables().atom_exists[restype].numpy()
        moved = np.linalg.norm(prediction.atom14 - before.atom14, axis=-1)[exists]
        assert np.sqrt((moved**2).mean()) < 0.5, prediction.name  # val, 149 models: 0.25 Å on average, 0.6 at most
        assert np.sqrt((moved**2).mean()) > 0.01, prediction.name  # it did move them


HARD_PROBLEMS = ("broken", "cis", "D-amino", "clash")  # what problem_counts counts


def test_problem_counts_count_what_find_problems_finds(val_predictions, nanobody):
    """The clean-up checks its own result without PDB text; it must count as refinement's check does."""
    _, _, raw = val_predictions
    atom14, restype, _, exists = nanobody
    broken = jiggled(atom14, seed=3) * exists[..., None]
    n = len(restype)
    one = problem_counts(broken[None], restype[None], torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long))
    chain = ChainAtoms("H", nanobody[2], [(i + 1, "") for i in range(n)], broken.numpy(), exists.numpy(), np.zeros(n))
    found = Counter(p.kind for p in find_problems(to_pdb_string(build_structure([chain], []))))
    assert int(one[0]) == sum(found[k] for k in HARD_PROBLEMS) > 20
    for prediction in raw:  # two chains, padding-free: one receptor at a time
        restype_ = torch.tensor([RESTYPE_INDEX.get(aa, UNKNOWN_RESTYPE) for c in prediction.chains for aa in c.sequence])
        slot = torch.tensor([s for s, c in enumerate(prediction.chains) for _ in c.sequence])
        counted = problem_counts(torch.from_numpy(prediction.atom14)[None], restype_[None],
                                 torch.ones(1, len(restype_), dtype=torch.bool), slot[None])
        found = Counter(p.kind for p in find_problems(prediction.to_pdb_string()))
        assert int(counted[0]) == sum(found[k] for k in HARD_PROBLEMS) > 10, prediction.name


@pytest.mark.parametrize("entry", ["7phu_H-L", "7rfb_H-L"])
def test_a_model_left_with_a_problem_is_cleaned_again_holding_the_backbone_harder(entry):
    """With the 0.12.0 antibody set these two val models kept a broken (7phu) or cis (7rfb) CDR-H3 peptide after one
    clean-up pass at BACKBONE_RESTRAINT; the retry at RETRY_BACKBONE_RESTRAINT repairs them."""
    chosen, = (e for e in read_summary(str(DATA)) if e.name == entry)
    prediction, = Predictor(Ensemble.packaged(clean=True)).predict_numbered([(chosen.name, chosen.kind, number_entry(chosen))])
    found = Counter(p.kind for p in find_problems(prediction.to_pdb_string()))
    assert sum(found[k] for k in HARD_PROBLEMS) == 0, found


def test_refined_val_model_has_real_protein_geometry(val_predictions):
    predictor, predictions, _ = val_predictions
    refined = predictor.refine(predictions[0])
    assert refined.refined
    assert any(atom.is_hydrogen() for chain in refined.structure()[0] for residue in chain for atom in residue)
    found = find_problems(refined.to_pdb_string())
    assert all(p.kind in SOFT_PROBLEM_KINDS and str(p) in refined.refine_message for p in found[:3])
