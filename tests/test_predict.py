"""End to end on the shipped weights: sequences -> numbered, refined, full-atom structure with errors."""

import gemmi
import numpy as np
import pytest

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT
from immunofold.cli import main
from immunofold.io import ascii_text, read_chains
from immunofold.prediction import Predictor
from immunofold.refine import SOFT_PROBLEM_KINDS, find_problems
from immunofold.sequences import InputError

# A val-split nanobody (7S2R) with a 21-residue CDR3: IMGT insertions 111A.., 112A..
LONG_CDR3_NANOBODY = (
    "QVQLQESGGGSVQAGGSLRLSCAASGYTYRDYYMGWFRQAPGREREGVASIYTRGSREGSTRYSSSVEGRFTITLDTAKNTLYLQMNSLKPEDTAMYYCAADDRTWLPRVQLGGPRENEYNYWGQGTQVTVSS"
)


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


@pytest.fixture(scope="module")
def trastuzumab(predictor):
    return predictor.predict("antibody", {"heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}, name="trastuzumab")


def peptide_bonds(structure: gemmi.Structure) -> list[float]:
    lengths = []
    for chain in structure[0]:
        residues = list(chain)
        for previous, current in zip(residues, residues[1:]):
            lengths.append(previous["C"][0].pos.dist(current["N"][0].pos))
    return lengths


def test_trastuzumab_is_refined_with_sane_geometry_and_errors(trastuzumab):
    assert trastuzumab.refined, trastuzumab.refine_message
    pdb = trastuzumab.to_pdb_string()
    structure = gemmi.read_pdb_string(pdb)
    assert [chain.name for chain in structure[0]] == ["H", "L"]
    problems = find_problems(pdb)  # no clashes < 2 Å, cis non-Pro, D-amino acids, broken bonds
    assert all(p.kind in SOFT_PROBLEM_KINDS and str(p) in trastuzumab.refine_message for p in problems[:3])
    assert all(abs(length - 1.33) < 0.1 for length in peptide_bonds(structure))
    bfactors = [atom.b_iso for residue in structure[0]["H"] for atom in residue]
    assert min(bfactors) > 0 and max(bfactors) < 30
    assert "PREDICTED ERROR PER RESIDUE IN ANGSTROM" in pdb
    assert trastuzumab.error.shape == (len(TRASTUZUMAB_HEAVY) + len(TRASTUZUMAB_LIGHT),)


def test_errors_are_higher_in_cdr3_than_in_the_framework(trastuzumab):
    positions = np.array([p for p, _ in trastuzumab.numbering["H"]])
    heavy_error = trastuzumab.error[: len(positions)]
    cdr3 = (positions >= 105) & (positions <= 117)
    framework = ~cdr3 & ~((positions >= 27) & (positions <= 38)) & ~((positions >= 56) & (positions <= 65))
    assert heavy_error[cdr3].mean() > heavy_error[framework].mean()
    cdr3_errors = trastuzumab.cdr3_errors()
    assert set(cdr3_errors) == {"H", "L"}
    assert cdr3_errors["H"] == pytest.approx(np.sqrt(np.mean(heavy_error[cdr3] ** 2)))  # predicted CDR3 RMSD


def test_long_cdr3_gets_imgt_insertion_codes_in_the_file(predictor, tmp_path):
    prediction = predictor.predict("nanobody", {"heavy": LONG_CDR3_NANOBODY}, name="7s2r", refine=False)
    path = tmp_path / "nb.pdb"
    prediction.save(path)
    chain = read_chains(str(path))["H"]
    assert (111, "A") in chain.residue_ids and (112, "A") in chain.residue_ids
    assert chain.sequence == LONG_CDR3_NANOBODY


def test_cif_output_and_ensemble_members_are_written(predictor, tmp_path):
    prediction = predictor.predict("nanobody", {"heavy": LONG_CDR3_NANOBODY}, refine=False)
    prediction.save(tmp_path / "nb.cif")
    assert set(read_chains(str(tmp_path / "nb.cif"))) == {"H"}
    paths = prediction.save_ensemble(tmp_path / "members")
    assert len(paths) >= 4


@pytest.mark.parametrize(
    "kind, chains, reason",
    [
        ("antibody", {"heavy": TRASTUZUMAB_HEAVY}, "missing light chain"),
        ("antibody", {"heavy": TRASTUZUMAB_LIGHT, "light": TRASTUZUMAB_LIGHT}, "expected heavy"),
        ("nanobody", {"heavy": TRASTUZUMAB_HEAVY[:40]}, "too short"),
        ("tcr", {"alpha": TRASTUZUMAB_HEAVY, "beta": TRASTUZUMAB_LIGHT}, "expected alpha"),
        ("nanobody", {"heavy": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQ"}, "no antibody or TCR"),
        ("nanobody", {"heavy": TRASTUZUMAB_HEAVY.replace("W", "B", 1)}, "invalid letters"),
    ],
)
def test_bad_input_is_one_line_error_naming_the_chain(predictor, kind, chains, reason):
    with pytest.raises(InputError) as error:
        predictor.predict(kind, chains, name="rec1", refine=False)
    message = str(error.value)
    assert reason in message and message.startswith("rec1") and "\n" not in message


def test_cli_predict_writes_a_file_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "nb.pdb"
    assert main(["predict", "nanobody", "--heavy", LONG_CDR3_NANOBODY, "-o", str(out), "--no-refine"]) == 0
    assert out.exists() and "mean error" in capsys.readouterr().out
    assert main(["predict", "nanobody", "--heavy", "ACDEFGHIKL", "-o", str(tmp_path / "x.pdb")]) == 2
    assert "too short" in capsys.readouterr().err
    assert not (tmp_path / "x.pdb").exists()


def test_many_receptors_come_back_in_order_and_as_predicted_alone(predictor, monkeypatch):
    import immunofold.prediction

    from conftest import NANOBODY_PDB

    nanobody = read_chains(NANOBODY_PDB)["B"].sequence
    receptors = [
        ("ab", "antibody", {"heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}),
        ("nb", "nanobody", {"heavy": nanobody}),
        ("long", "nanobody", {"heavy": LONG_CDR3_NANOBODY}),
        ("ab2", "antibody", {"heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}),
        ("nb2", "nanobody", {"heavy": nanobody}),
    ]
    items = [(name, kind, predictor.number(kind, chains, name)) for name, kind, chains in receptors]
    monkeypatch.setattr(immunofold.prediction, "MAX_FORWARD_BATCH", 2)  # 5 receptors: 3 forward passes
    passes = []
    run = predictor.ensemble.run
    monkeypatch.setattr(predictor.ensemble, "run", lambda batch: passes.append(batch["restype"].shape) or run(batch))
    together = predictor.predict_numbered(items)
    assert [p.name for p in together] == ["ab", "nb", "long", "ab2", "nb2"]
    # one kind per pass (each kind may have its own members), by length within a kind: [ab, ab2], [nb, nb2], [long]
    assert [shape[0] for shape in passes] == [2, 2, 1] and passes[1][1] < passes[2][1]
    for prediction, item in zip(together, items):
        alone = predictor.predict_numbered([item])[0]
        assert len(prediction.atom14) == sum(len(c) for c in item[2])
        np.testing.assert_allclose(prediction.atom14, alone.atom14, atol=1e-3)
        np.testing.assert_allclose(prediction.error, alone.error, atol=1e-3)


# A val antibody (7b0b) and single CDR-H3 mutants of it (index in the heavy chain, residue): five receptors of one
# length. In 0.10.4 the fourth's consensus differed by 1.9e-6 Å in this group from alone.
AB_7B0B_HEAVY = "MQLVQSGPEVKKPGTSVKVSCKASGFTFTSSAVQWVRQARGQRLEWIGWIVVGSGNTNYAQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPHCSSTICYDGFDIWGQGTMVTVSS"
AB_7B0B_LIGHT = "EIVLTQSPGTLSLSPGERATLSCRASQSVSSSYLAWYQQKPGQAPRLLIYGASSRATGIPDRFSGSGSGTDFTLTISRVEPEDFAVYYCQQYGSSPWTFGQGTKVEIK"
CDR_H3_MUTANTS = [(109, "L"), (110, "C"), (108, "E"), (102, "P"), (100, "A")]


@pytest.mark.parametrize("clean", [False, True])
def test_a_receptor_is_predicted_bit_for_bit_alike_alone_or_in_a_group(predictor, clean):
    """Members, consensus, spread and error of a receptor are identical to the bit whether it is predicted alone or
    with others of its length: the batched consensus rounded differently with the group (1e-6 Å), and the clean-up
    or refinement made that 0.2-0.5 Å, so `immunofold batch` files depended on how records were grouped."""
    chosen = predictor.with_clean_geometry() if clean else predictor
    heavies = [AB_7B0B_HEAVY[:i] + residue + AB_7B0B_HEAVY[i + 1 :] for i, residue in CDR_H3_MUTANTS]
    items = [(f"m{k}", "antibody", chosen.number("antibody", {"heavy": heavy, "light": AB_7B0B_LIGHT}, f"m{k}"))
             for k, heavy in enumerate(heavies)]
    together = chosen.predict_numbered(items)
    for prediction, item in zip(together, items):
        alone = chosen.predict_numbered([item])[0]
        for field in ("atom14", "members", "spread", "head_error", "error"):
            assert np.array_equal(getattr(prediction, field), getattr(alone, field)), (item[0], field)


def test_refining_returns_a_new_prediction_and_leaves_the_unrefined_one_as_it_was(predictor):
    unrefined = predictor.predict("nanobody", {"heavy": LONG_CDR3_NANOBODY}, name="nb", refine=False)
    before = unrefined.to_pdb_string()
    refined = predictor.refine(unrefined)
    assert refined is not unrefined and refined.refined and not unrefined.refined
    assert unrefined.to_pdb_string() == before
    assert " H" in refined.to_pdb_string() and refined.to_pdb_string() != before
    assert refined.to_cif_string().startswith("data_model\n") and unrefined.to_cif_string().startswith("data_model\n")


def test_refined_files_are_complete_for_structure_readers(trastuzumab, tmp_path):
    """Refined mmCIF has the unrefined file's polymer records (label_seq_id, label_asym_id = chain id, entity
    sequences), both V-domain disulfides are recorded (mmCIF _struct_conn, PDB SSBOND) so OpenMM bonds them from
    the file, and the remarks state the refinement as done."""
    from openmm import app

    trastuzumab.save(tmp_path / "fv.cif")
    trastuzumab.save(tmp_path / "fv.pdb")
    structure = gemmi.read_structure(str(tmp_path / "fv.cif"))
    assert [residue.subchain for residue in structure[0]["H"]][:1] == ["H"]
    assert [residue.label_seq for residue in structure[0]["L"]] == list(range(1, len(TRASTUZUMAB_LIGHT) + 1))
    assert [gemmi.one_letter_code(e.full_sequence) for e in structure.entities] == [TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT]
    for path in (tmp_path / "fv.cif", tmp_path / "fv.pdb"):
        reader = app.PDBxFile if path.suffix == ".cif" else app.PDBFile
        topology = reader(str(path)).topology
        disulfides = [(a.residue.chain.id, b.residue.chain.id) for a, b in topology.bonds() if a.name == b.name == "SG"]
        assert sorted(disulfides) == [("H", "H"), ("L", "L")], path.suffix
    assert sum(line.startswith("SSBOND") for line in (tmp_path / "fv.pdb").read_text().splitlines()) == 2
    remarks = " ".join(line[11:].strip() for line in (tmp_path / "fv.pdb").read_text().splitlines() if line.startswith("REMARK 250"))
    assert f"REFINED YES ({ascii_text(trastuzumab.refine_message).upper()})" in remarks if trastuzumab.refine_message else "REFINED YES" in remarks


def test_ensemble_member_files_say_they_are_raw(trastuzumab, tmp_path):
    for path in trastuzumab.save_ensemble(tmp_path / "members"):
        text = open(path).read()
        assert "REFINED NO" in text and "REFINED YES" not in text
        assert "ENSEMBLE MEMBER" in text and "GEOMETRY CLEANED" not in text


def test_cli_predict_notes_backbone_outliers_refinement_left(tmp_path, capsys, monkeypatch):
    import immunofold.prediction
    from immunofold.refine import RefineResult

    left = "backbone outliers remain: twisted peptide H5 VAL - H6 GLU: omega 140°"
    monkeypatch.setattr(immunofold.prediction, "refine_structure", lambda pdb, start_pdb=None: RefineResult(pdb, True, left))
    out = tmp_path / "nb.pdb"
    assert main(["predict", "nanobody", "--heavy", LONG_CDR3_NANOBODY, "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"note: {left}" in captured.err and ", refined," in captured.out
    remarks = " ".join(line[11:].strip() for line in out.read_text().splitlines() if line.startswith("REMARK 250"))
    assert "REFINED YES (BACKBONE OUTLIERS REMAIN: TWISTED PEPTIDE H5 VAL - H6 GLU: OMEGA 140 deg)" in remarks


def test_the_fast_set_predicts_antibodies_with_two_members_and_other_kinds_as_the_default_set_does():
    import immunofold
    from immunofold.ensemble import Ensemble
    from test_sequences import CAMELID_VHH, TCR_ALPHA, TCR_BETA

    fast = immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False, fast=True)
    full = immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False)
    assert fast.weights_version == Ensemble.packaged(fast=True).version != full.weights_version
    assert len(fast.members) == 2 and len(full.members) == 3  # the default: two distilled members and pass2-probe
    assert fast.error_calibrated and full.error_calibrated  # each set has its own calibrator
    assert np.abs(fast.atom14 - full.atom14).max() > 0.1
    tcr_fast = immunofold.predict(alpha=TCR_ALPHA, beta=TCR_BETA, refine=False, fast=True)
    tcr_full = immunofold.predict(alpha=TCR_ALPHA, beta=TCR_BETA, refine=False)
    assert np.array_equal(tcr_fast.atom14, tcr_full.atom14)  # TCRs keep the default's four members
    assert np.array_equal(tcr_fast.error, tcr_full.error) and tcr_fast.error_calibrated  # and their calibrator
    nanobody_fast = immunofold.predict(heavy=CAMELID_VHH, refine=False, fast=True)
    nanobody_full = immunofold.predict(heavy=CAMELID_VHH, refine=False)
    assert np.array_equal(nanobody_fast.atom14, nanobody_full.atom14) and len(nanobody_fast.members) == 4
    with pytest.raises(TypeError, match="fast must be True or False"):
        immunofold.predict(heavy=TRASTUZUMAB_HEAVY, light=TRASTUZUMAB_LIGHT, refine=False, fast="yes")
