"""Light tests of the benchmark helpers: the nearest-template baseline and scoring (no FlashABB needed)."""

import gzip
import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import NANOBODY_PDB

from immunofold.data.sabdab import Entry, load_example
from immunofold.io import read_chains

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import common


@pytest.fixture(scope="module")
def nanobody_example():
    chain_id, chain = next(iter(read_chains(NANOBODY_PDB).items()))
    entry = Entry("7f5g", "nanobody", "val", NANOBODY_PDB, (chain_id,), (chain.sequence,))
    return load_example(entry)


def test_self_template_scores_zero(nanobody_example):
    keys = common.example_keys(nanobody_example)
    template = common.make_template(nanobody_example)
    coords, fallbacks = common.thread_template(keys, template)
    row = common.score_atom14("nanobody", coords, keys, nanobody_example)
    assert fallbacks == sum(not m[:3].all() for m in nanobody_example["atom_mask"].numpy())
    for region in ("H1", "H2", "H3", "Hfr"):
        assert row[region] < 1e-3, (region, row[region])
    assert row["matched_residues"] == len(keys)


def test_score_is_invariant_to_rigid_motion(nanobody_example):
    keys = common.example_keys(nanobody_example)
    coords, _ = common.thread_template(keys, common.make_template(nanobody_example))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    moved = coords @ rotation.T + np.array([5.0, -3.0, 12.0])
    row = common.score_atom14("nanobody", moved.astype(np.float32), keys, nanobody_example)
    assert row["Hfr"] < 1e-3 and row["H3"] < 1e-3


def test_missing_template_positions_fall_back_to_nearest(nanobody_example):
    keys = common.example_keys(nanobody_example)
    template = common.make_template(nanobody_example)
    cdr3 = [k for k in keys if 105 <= k[1][0] <= 117 and k in template.residues]
    dropped = cdr3[2:5]
    for key in dropped:
        del template.residues[key]
    coords, fallbacks = common.thread_template(keys, template)
    assert fallbacks >= len(dropped)
    # The first dropped residue takes the coordinates of its threaded neighbour before it.
    i = keys.index(dropped[0])
    np.testing.assert_allclose(coords[i, :3], coords[i - 1, :3])
    row = common.score_atom14("nanobody", coords, keys, nanobody_example)
    assert row["H3"] > 0.1 and row["Hfr"] < 1e-3


def test_virtual_cb_close_to_real_cb(nanobody_example):
    atoms = nanobody_example["atom14"].numpy()
    mask = nanobody_example["atom_mask"].numpy()
    has = mask[:, [0, 1, 2, 4]].all(-1)
    cb = common.virtual_cb(atoms[has, 0], atoms[has, 1], atoms[has, 2])
    deviation = np.linalg.norm(cb - atoms[has, 4], axis=-1)
    assert np.median(deviation) < 0.2


def test_identity_and_nearest_template(nanobody_example):
    keys = common.example_keys(nanobody_example)
    sequence = common.example_sequence(nanobody_example)
    template = common.make_template(nanobody_example)
    complete = sum(1 for k in keys if k in template.residues) / len(keys)
    assert common.sequence_identity(keys, sequence, template) == pytest.approx(complete)
    # A decoy with a mutated CDR3 is less identical, more so when CDR3 is weighted.
    decoy = common.make_template(nanobody_example)
    decoy.name = "decoy"
    cdr3 = [k for k in keys if 105 <= k[1][0] <= 117 and k in decoy.residues]
    for key in cdr3[:4]:
        aa, xyz, m = decoy.residues[key]
        decoy.residues[key] = ("W" if aa != "W" else "A", xyz, m)
    plain = common.sequence_identity(keys, sequence, decoy)
    weighted = common.sequence_identity(keys, sequence, decoy, cdr3_weight=3.0)
    assert weighted < plain < complete
    best, identity = common.nearest_template(keys, sequence, [decoy, template])
    assert best is template and identity == pytest.approx(complete)


def test_summarise_rows_mean_and_median():
    rows = [{"status": "ok", "H3": 1.0, "Hfr": 0.5}, {"status": "ok", "H3": 3.0, "Hfr": None},
            {"status": "ok", "H3": 5.0}, {"status": "skipped: x"}]
    block = common.summarise_rows(rows, "nanobody")
    assert block["n"] == 3
    assert block["mean"]["H3"] == 3.0 and block["median"]["H3"] == 3.0
    assert block["mean"]["Hfr"] == 0.5 and block["mean"]["H1"] is None


def test_machine_info_fields():
    info = common.machine_info()
    assert info["cpu_count"] == os.cpu_count() and info["torch_threads"] >= 1
    assert isinstance(info["cpu_model"], str)


def test_accuracy_script_template_only(tmp_path, nanobody_example):
    """End to end on a two-entry folder (the same nanobody as train and val): the template is exact."""
    import accuracy

    chain_id, chain = next(iter(read_chains(NANOBODY_PDB).items()))
    folder = tmp_path / "data" / "sabdab"
    (folder / "structures").mkdir(parents=True)
    with open(NANOBODY_PDB, "rb") as src, gzip.open(folder / "structures" / "7f5g.pdb.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    header = ["pdb", "Hchain", "Lchain", "model", "antigen_chain", "date", "resolution", "method", "heavy_species", "light_species", "kind", "split", "source", "heavy_seq", "light_seq"]
    lines = ["\t".join(header)]
    for split in ("train", "val"):
        row = dict.fromkeys(header, "NA")
        row.update(pdb="7f5g", Hchain=chain_id, kind="nanobody", split=split, heavy_seq=chain.sequence)
        lines.append("\t".join(row[c] for c in header))
    (folder / "summary.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = accuracy.main(["--data", str(tmp_path / "data"), "--methods", "template", "--kinds", "nanobody",
                          "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)])
    assert code == 0
    report = json.loads((out / "accuracy.json").read_text())
    block = report["summary"]["template"]["nanobody"]
    assert block["n"] == 1 and block["mean"]["H3"] < 1e-3
    assert report["rows"]["template"][0]["template"] == "7f5g_" + chain_id
    text = (out / "accuracy.md").read_text()
    assert "| nearest template | 1 |" in text and "N, CA, C, CB" in text
    assert 15 < report["rows"]["template"][0]["H3_truth_reach"] < 27  # 7F5G's CDR3 is folded onto its domain
    assert "| nearest template | 1 | 0.00 / 0.00 | 0 | – / – |" in text  # counted as folded, none standing out


def test_ensemble_consensus_benchmark_scores_every_choice(nanobody_example):
    import torch

    import ensemble_consensus
    from immunofold.ensemble import Ensemble
    from immunofold.weights import packaged_weight_files

    ensemble = Ensemble(packaged_weight_files()[:2])
    results = list(ensemble_consensus.structures_by_choice(ensemble, [nanobody_example]))
    assert len(results) == 1
    example, choices = results[0]
    assert set(choices) == {"consensus (returned)", "member closest to the mean", "member 0 alone", "member 1 alone"}
    n = len(example["restype"])
    assert all(atoms.shape == (n, 14, 3) and torch.isfinite(atoms).all() for atoms in choices.values())


def test_error_calibration_scores_predicted_cdr3_rmsd_against_real():
    import error_calibration

    position = np.array([*range(100, 120), *range(100, 120)])
    slot = np.repeat([0, 1], 20)
    loop = (position >= 105) & (position <= 117)
    records, errors = [], []
    for i, real in enumerate([1.0, 2.0, 3.0, 5.0, 6.0, 8.0]):  # H3 RMSD; L3 always 1 Å
        deviation = np.where(loop, real, 0.5)
        records.append({"kind": "antibody", "slot": slot, "position": position, "deviation": deviation,
                        "rmsd": {"H3": real, "L3": 1.0}})
        errors.append(np.where(loop & (slot == 0), real, 1.0) * (1 + 0.01 * np.arange(40)))
    pairs = error_calibration.cdr3_pairs(records, errors, "antibody", "H")
    assert pairs.shape == (6, 2) and (np.abs(pairs[:, 0] / pairs[:, 1] - 1.1) < 0.1).all()  # RMS over the CDR3
    assert error_calibration.cdr3_pairs(records, errors, "antibody").shape == (12, 2)  # H3 and L3
    assert error_calibration.roc_auc(pairs[:, 0], pairs[:, 1] > 4) == 1.0
    assert error_calibration.roc_auc(-pairs[:, 0], pairs[:, 1] > 4) == 0.0
    assert np.isnan(error_calibration.roc_auc(pairs[:, 0], pairs[:, 1] > 100))
    groups = error_calibration.quintiles(pairs)
    assert [g["n"] for g in groups] == [2, 1, 1, 1, 1] and groups[-1]["real"] == 8.0
    scores = error_calibration.scores(records, errors, "antibody")
    assert scores["n"] == 6 and scores["loops"] == 12 and scores["flagged"] == 3 and scores["auc"] == 1.0
    assert scores["calibrated"] == 5  # every quintile's mean real RMSD within 25 % of its mean predicted
    halved = [e / 2 for e in errors]  # overconfident by half: no quintile calibrated, ranking unchanged
    assert error_calibration.scores(records, halved, "antibody")["calibrated"] == 0
    assert error_calibration.scores(records, halved, "antibody")["auc"] == 1.0


def test_geometry_benchmark_counts_a_stretched_peptide_bond(nanobody_example):
    import geometry
    from immunofold.ensemble import Ensemble
    from immunofold.prediction import Predictor
    from immunofold.weights import packaged_weight_files

    sequence = common.example_sequence(nanobody_example)
    prediction = Predictor(Ensemble(packaged_weight_files()[:2])).predict("nanobody", {"heavy": sequence}, refine=False)
    before = geometry.structure_stats(prediction, None)
    assert len(before["bond_deviation"]) == len(sequence) - 1
    k = 1 + int(np.argmin(before["bond_deviation"][:60]))  # residues k... move away from a well-formed bond k-1 -> k
    atom14 = prediction.atom14.copy()
    atom14[k:] += np.array([0.0, 0.0, 1.5])
    prediction.atom14 = atom14
    after = geometry.structure_stats(prediction, None)
    assert after["bond_deviation"][k - 1] > 0.5
    assert after["problems"]["broken"] == before["problems"]["broken"] + 1
    summary = geometry.summarise([before, after])
    assert summary["models"] == 2 and summary["broken_per_model"] == (2 * before["problems"]["broken"] + 1) / 2


def test_developability_ceiling_pairs_structures_of_one_sequence(tmp_path):
    """Two entries with the same sequence make one pair; a third with another sequence makes none."""
    import developability_ceiling

    chain_id, chain = next(iter(read_chains(NANOBODY_PDB).items()))
    folder = tmp_path / "sabdab"
    (folder / "structures").mkdir(parents=True)
    header = ["pdb", "Hchain", "Lchain", "model", "antigen_chain", "date", "resolution", "method", "heavy_species",
              "light_species", "kind", "split", "source", "heavy_seq", "light_seq"]  # fmt: skip
    lines = ["\t".join(header)]
    for pdb, sequence in (("7f5g", chain.sequence), ("9abc", chain.sequence), ("9xyz", chain.sequence[:-1] + "A")):
        with open(NANOBODY_PDB, "rb") as src, gzip.open(folder / "structures" / f"{pdb}.pdb.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        row = dict.fromkeys(header, "NA")
        row.update(pdb=pdb, Hchain=chain_id, kind="nanobody", split="train", heavy_seq=sequence)
        lines.append("\t".join(row[c] for c in header))
    (folder / "summary.tsv").write_text("\n".join(lines) + "\n")
    pairs, skipped = developability_ceiling.crystal_pairs(str(tmp_path))
    assert skipped == [] and len(pairs) == 1
    assert pairs[0]["kind"] == "nanobody" and pairs[0]["names"] == [f"7f5g_{chain_id}", f"9abc_{chain_id}"]
    assert pairs[0]["first"] == pairs[0]["second"] and pairs[0]["first"]["cdr3_length"]["value"] > 5
    summary = developability_ceiling.summarise(pairs)
    assert summary["nanobody/ppc"] == {"n": 1, "pearson": None, "spearman": None, "flag_agreement": 1.0}


def test_benchmark_numbering_of_a_batch_equals_numbering_each_receptor():
    """speed.py and profile_speed.py number batches as `immunofold batch` does; the chains are those of
    `number_receptor`, as `immunofold predict` numbers one receptor."""
    from immunofold.sequences import number_receptor
    from test_batch import AB1_H, AB1_L, AB2_H, AB2_L

    items = [("a", AB1_H, AB1_L), ("b", AB2_H, AB2_L), ("c", AB1_H, AB2_L)]
    together = common.number_antibodies(items)
    assert [(name, kind) for name, kind, _ in together] == [("a", "antibody"), ("b", "antibody"), ("c", "antibody")]
    for (name, heavy, light), (_, _, chains) in zip(items, together):
        assert chains == number_receptor("antibody", {"heavy": heavy, "light": light}, name)
    assert common.number_antibodies(items[:1])[0][2] == together[0][2]
    with pytest.raises(ValueError, match="numbering failed: d"):
        common.number_antibodies([*items, ("d", "EVQL", AB1_L)])
