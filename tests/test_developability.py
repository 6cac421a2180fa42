"""Developability metrics on hand-made structures whose hydrophobicity, charges and distances give known values."""

import dataclasses
import json
import os
import subprocess
import sys

import gemmi
import numpy as np
import pytest

from immunofold.developability import HYDROPHOBICITY, TAP_BANDS, TNP_BANDS, profile_structure
from immunofold.sequences import InputError

# Side-chain atoms laid out on a line, 1.5 Å apart: every atom is exposed, so each residue is on the surface.
ATOMS = {
    "LYS": ["N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"],
    "ASP": ["OD1", "OD2", "CG", "CB", "CA", "N", "C", "O"],
    "GLY": ["N", "CA", "C", "O"],
}


def _structure(residues):
    """residues: (chain, IMGT number, name, x of the first atom, direction +1/-1, z) -> gemmi.Structure."""
    structure = gemmi.Structure()
    model = gemmi.Model("1")
    chains = {}
    for chain_id, number, name, x0, direction, z in residues:
        residue = gemmi.Residue()
        residue.name, residue.seqid = name, gemmi.SeqId(number, " ")
        for k, atom_name in enumerate(ATOMS[name]):
            atom = gemmi.Atom()
            atom.name, atom.element = atom_name, gemmi.Element(atom_name[0])
            atom.pos = gemmi.Position(x0 + direction * 1.5 * k, 0.0, z)
            residue.add_atom(atom)
        chains.setdefault(chain_id, gemmi.Chain(chain_id)).add_residue(residue)
    for chain in chains.values():
        model.add_chain(chain)
    structure.add_model(model)
    return structure


def _two_lysines(distance):
    # Two CDR-H3/CDR-L3 lysines in parallel planes `distance` Å apart: their closest atoms are exactly that far.
    return _structure([("H", 107, "LYS", 0.0, 1, 0.0), ("L", 107, "LYS", 0.0, 1, distance)])


def test_patches_and_charge_symmetry_of_two_lysines():
    profile = profile_structure(_two_lysines(5.0), ("H", "L"))
    h_k = (-3.9 + 4.5) / 9 + 1  # Kyte-Doolittle rescaled to 1-2
    assert profile.profiler == "TAP"
    assert profile["cdr_length"].value == 2
    # each pair counted in both orders: 2 * (1 * 1) / 5^2
    assert profile["ppc"].value == pytest.approx(2 * 1.0 / 25)
    assert profile["pnc"].value == 0
    assert profile["psh"].value == pytest.approx(2 * h_k * h_k / 25)
    assert profile["sfvcsp"].value == pytest.approx(1.0)  # (+1 on VH) x (+1 on VL)
    assert set(profile["ppc"].residues) == {"H107", "L107"}


def test_pairs_beyond_7_5_angstrom_do_not_count():
    profile = profile_structure(_two_lysines(8.0), ("H", "L"))
    assert profile["ppc"].value == 0 and profile["psh"].value == 0
    assert profile["sfvcsp"].value == pytest.approx(1.0)  # charge symmetry is not distance-limited


def _lysine_and_aspartate(gap):
    # Lys along -x ending with NZ at x=0; Asp along +x starting with OD1 at x=gap: NZ-OD1 is the closest pair.
    return _structure([("H", 107, "LYS", -12.0, 1, 0.0), ("L", 107, "ASP", gap, 1, 0.0)])


@pytest.mark.parametrize("gap", [3.0, 3.5])
def test_a_salt_bridge_keeps_its_charges_and_hydrophobicity_as_the_reference_code(gap):
    """A Lys NZ 3.0 Å from an Asp OD1 is a salt bridge by the paper's 3.2 Å rule, but the reference code's values
    (on which the thresholds were set) keep both charges: the same profile as at 3.5 Å, distances aside."""
    profile = profile_structure(_lysine_and_aspartate(gap), ("H", "L"))
    assert profile["sfvcsp"].value == pytest.approx(-1.0)  # (+1 on VH) x (-1 on VL)
    assert profile["psh"].value == pytest.approx(2 * HYDROPHOBICITY["K"] * HYDROPHOBICITY["D"] / gap**2)
    assert profile["ppc"].value == 0 and profile["pnc"].value == 0  # one residue of each sign: no pair


def test_cdr_vicinity_takes_framework_residues_within_4_angstrom():
    # A framework lysine (IMGT 80) near a CDR lysine joins the vicinity only when its closest atom is < 4 Å away.
    near = profile_structure(_structure([("H", 107, "LYS", 0, 1, 0.0), ("H", 80, "LYS", 0, 1, 3.9), ("L", 20, "GLY", 0, 1, 50)]), ("H", "L"))
    far = profile_structure(_structure([("H", 107, "LYS", 0, 1, 0.0), ("H", 80, "LYS", 0, 1, 4.1), ("L", 20, "GLY", 0, 1, 50)]), ("H", "L"))
    assert near["ppc"].value == pytest.approx(2 / 3.9**2)
    assert far["ppc"].value == 0


def test_nanobody_cdr3_length_and_compactness():
    # Anchors' backbone centroid at z=0, CDR3 backbone centroid at z=10 Å: compactness = 13 residues / 10 Å.
    residues = [("H", n, "GLY", -2.25, 1, 0.0) for n in (102, 103, 118, 119)]
    residues += [("H", n, "GLY", -2.25, 1, 10.0 + 0.01 * (n - 111)) for n in range(105, 118)]
    profile = profile_structure(_structure(residues), ("H",))
    assert profile.profiler == "TNP"
    assert profile["cdr3_length"].value == 13
    assert profile["cdr3_compactness"].value == pytest.approx(13 / 10.0, rel=1e-6)
    assert "sfvcsp" not in {m.name for m in profile.metrics}


def test_missing_chain_is_a_one_line_error():
    with pytest.raises(InputError, match="no chain L"):
        profile_structure(_structure([("H", 107, "LYS", 0, 1, 0.0)]), ("H", "L"), name="model_x")


@pytest.mark.parametrize(
    "band, value, flag",
    [
        (TAP_BANDS["cdr_length"], 54, "green"), (TAP_BANDS["cdr_length"], 55, "amber"),
        (TAP_BANDS["cdr_length"], 63, "amber"), (TAP_BANDS["cdr_length"], 64, "red"),
        (TAP_BANDS["cdr_length"], 42, "amber"), (TAP_BANDS["cdr_length"], 36, "red"),
        (TAP_BANDS["psh"], 110.12, "green"), (TAP_BANDS["psh"], 110.11, "amber"), (TAP_BANDS["psh"], 95.57, "red"),
        (TAP_BANDS["psh"], 168.06, "amber"), (TAP_BANDS["psh"], 201.6, "red"),
        (TAP_BANDS["ppc"], 1.31, "green"), (TAP_BANDS["ppc"], 1.32, "amber"), (TAP_BANDS["ppc"], 4.23, "red"),
        (TAP_BANDS["pnc"], 1.99, "green"), (TAP_BANDS["pnc"], 4.42, "amber"), (TAP_BANDS["pnc"], 4.43, "red"),
        (TAP_BANDS["sfvcsp"], -5.99, "green"), (TAP_BANDS["sfvcsp"], -6.0, "amber"), (TAP_BANDS["sfvcsp"], -30.61, "red"),
        (TNP_BANDS["cdr3_compactness"], 0.82, "green"), (TNP_BANDS["cdr3_compactness"], 0.81, "amber"),
        (TNP_BANDS["cdr3_compactness"], 0.55, "red"), (TNP_BANDS["ppc"], 0.38, "green"), (TNP_BANDS["ppc"], 0.39, "amber"),
        (TNP_BANDS["ppc"], 1.19, "red"), (TNP_BANDS["pnc"], 1.88, "amber"), (TNP_BANDS["pnc"], 1.89, "red"),
        (TNP_BANDS["psh"], 126.82, "green"), (TNP_BANDS["psh"], 155.47, "amber"), (TNP_BANDS["psh"], 73.39, "red"),
    ],
)  # fmt: skip
def test_flags_at_threshold_boundaries(band, value, flag):
    assert band.flag(value) == flag


def test_cli_predict_writes_developability_json(tmp_path):
    heavy = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
    light = "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
    output = tmp_path / "tz.pdb"
    result = subprocess.run(
        [sys.executable, "-m", "immunofold.cli", "predict", "antibody", "--heavy", heavy, "--light", light, "-o", str(output),
         "--no-refine", "--developability"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "TAP developability profile" in result.stdout and "PSH" in result.stdout
    profile = json.loads((tmp_path / "tz.developability.json").read_text())
    assert profile["profiler"] == "TAP" and profile["metrics"]["cdr_length"]["value"] == 47
    assert set(profile["metrics"]) == {"cdr_length", "psh", "ppc", "pnc", "sfvcsp"}


# --- batch: the profile as summary columns ---------------------------------------------------------------------
TRASTUZUMAB_H = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
TRASTUZUMAB_L = "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
NANOBODY = "QVQLVESGGGVVQAGGSLRLSCAASGSIFSSNAMAWYRQAPGNVRRLVAAISSRGDNTNYEDSVRGRFTISRDNAENTVSLQMNSLKPEDTAIYYCNVGSFYRGNYYGGSSWGQGTQVTVSS"
TCR_A = "QSVSQHNHHVILSEAASLELGCNYSYGGTVNLFWYVQYPGQHLQLLLKYFSGDPLVKGIKGFEAEFIKSKFSFNLRKPSVQWSDTAEYFCAVNARRNTPLVFGKGTRLSVIA"
TCR_B = "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSVSREKKESFPLTVTSAQKNPTAFYLCASSITLSSYNEQFFGPGTRLTVL"


def test_batch_developability_columns_resume_and_identity(tmp_path, capsys):
    """Each antibody's TAP and each nanobody's TNP profile reach summary.csv/parquet (equal to the API's profile of
    the same prediction), empty cells elsewhere; the sidecars keep them (the CLI flag resumes the run), a Ray actor
    computes the same; the option is part of the record's identity."""
    import csv

    import pyarrow.parquet as pq
    import torch

    from immunofold.batch import SUMMARY_COLUMNS, developability_columns, run_batch
    from immunofold.cli import main
    from immunofold.inputs import iter_records
    from immunofold.prediction import Predictor
    from immunofold.ray_engine import RayWorker

    torch.set_num_threads(1)
    predictor = Predictor()
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">tz|H\n{TRASTUZUMAB_H}\n>tz|L\n{TRASTUZUMAB_L}\n>nb\n{NANOBODY}\n>tcr|A\n{TCR_A}\n>tcr|B\n{TCR_B}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    assert run_batch(fasta, outdir, developability=True, **options).done == 3

    with open(outdir / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == SUMMARY_COLUMNS + developability_columns()
        rows = {row["name"]: row for row in reader}
    tap = [c for c in developability_columns() if c.startswith("tap_")]
    tnp = [c for c in developability_columns() if c.startswith("tnp_")]
    assert {c for c in tap if not c.endswith("_flag")} == {f"tap_{m}" for m in TAP_BANDS}
    assert {c for c in tnp if not c.endswith("_flag")} == {f"tnp_{m}" for m in TNP_BANDS}
    expected = {"tz": predictor.predict("antibody", {"heavy": TRASTUZUMAB_H, "light": TRASTUZUMAB_L}, "tz", refine=False),
                "nb": predictor.predict("nanobody", {"heavy": NANOBODY}, "nb", refine=False)}
    for name, prefix, filled, empty in (("tz", "tap", tap, tnp), ("nb", "tnp", tnp, tap)):
        profile = expected[name].developability()
        for metric in profile.metrics:
            assert float(rows[name][f"{prefix}_{metric.name}"]) == pytest.approx(metric.value, abs=1e-3)
            assert rows[name][f"{prefix}_{metric.name}_flag"] == metric.flag
        assert all(rows[name][c] != "" for c in filled) and all(rows[name][c] == "" for c in empty)
    assert rows["tz"]["tap_cdr_length"] == "47"
    assert all(rows["tcr"][c] == "" for c in developability_columns())

    table = pq.read_table(outdir / "summary.parquet")
    assert table.column_names == SUMMARY_COLUMNS + developability_columns()
    parquet = {row["name"]: row for row in table.to_pylist()}
    assert parquet["tz"]["tap_psh"] == pytest.approx(float(rows["tz"]["tap_psh"]), abs=1e-3)
    assert parquet["tz"]["tap_psh_flag"] == rows["tz"]["tap_psh_flag"] and parquet["tcr"]["tap_psh"] is None

    summary = (outdir / "summary.csv").read_text()
    assert main(["batch", str(fasta), "-o", str(outdir), "--developability", "--no-refine", "--workers", "0",
                 "--threads", "1", "-q"]) == 0  # resumed from the sidecars: nothing predicted again
    assert "0 predicted, 0 failed, 3 already finished" in capsys.readouterr().out
    assert _without_seconds(outdir / "summary.csv") == _without_seconds_text(summary)
    sidecars = [json.loads(path.read_text()) for path in (outdir / ".immunofold" / "records").glob("*.json")]
    local = {data["name"]: data.get("developability") for data in sidecars}
    worker = RayWorker("auto", 4, False, "imgt", "pdb", "cpu", developability=True)  # the Ray engine's actor, in-process
    outcomes = worker.run(list(iter_records(str(fasta))))
    assert dict(zip(("tz", "nb", "tcr"), (data.get("developability") for _, _, data, _ in outcomes))) == local
    plain = run_batch(fasta, outdir, **options)  # without the option: other records, no developability columns
    assert plain.done == 3 and "tap_psh" not in (outdir / "summary.csv").read_text()


def _without_seconds_text(text):
    import csv
    import io

    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(text))]


def _without_seconds(path):
    return _without_seconds_text(path.read_text())


def test_a_prediction_is_profiled_on_cleaned_geometry():
    """Raw unrefined models clash, which inflates PSH; a prediction is profiled on its members after the geometry
    clean-up (trastuzumab: the raw consensus scores PSH above 200, red; the profile lies within the green range, as
    its crystal 1N8Z), and cleaning the consensus first changes nothing."""
    import immunofold
    from immunofold.developability import profile_structure

    prediction = immunofold.predict(heavy=TRASTUZUMAB_H, light=TRASTUZUMAB_L, refine=False)
    imgt = [{rid: number for rid, (number, _) in zip(ids, chain.positions)}
            for ids, chain in zip(prediction.residue_ids, prediction.chains)]
    raw = profile_structure(prediction.structure(), tuple(prediction.chain_ids), imgt, "raw")
    cleaned = prediction.developability()
    assert not prediction.geometry_cleaned  # the prediction itself is left as it was
    assert raw["psh"].value > 200 and raw["psh"].flag == "red"
    assert cleaned["psh"].value < raw["psh"].value - 50
    assert cleaned == prediction.with_clean_geometry().developability()


def test_mean_profile_averages_values_and_keeps_residues_counted_in_half_the_structures():
    from immunofold.developability import DevelopabilityProfile, Metric, mean_profile

    def profile(ppc, residues):
        return DevelopabilityProfile("x", "antibody", "TAP", (Metric("ppc", ppc, TAP_BANDS["ppc"], residues),))

    mean = mean_profile([profile(0.0, ()), profile(1.2, ("H1", "H2")), profile(2.4, ("H2", "L3")), profile(1.2, ("H2",))])
    assert mean["ppc"].value == pytest.approx(1.2)
    assert mean["ppc"].residues == ("H2",)  # in 3 of 4; H1 and L3 in 1 of 4
    assert mean["ppc"].flag == "green" and mean_profile([profile(1.32, ()), profile(1.34, ())])["ppc"].flag == "amber"


def test_a_prediction_is_profiled_as_the_mean_of_its_cleaned_members():
    import immunofold
    from immunofold.developability import mean_profile, profile_structure

    prediction = immunofold.predict(heavy=TRASTUZUMAB_H, light=TRASTUZUMAB_L, refine=False)
    imgt = [{rid: number for rid, (number, _) in zip(ids, chain.positions)}
            for ids, chain in zip(prediction.residue_ids, prediction.chains)]
    members = [profile_structure(prediction.structure_of(x), ("H", "L"), imgt, "m") for x in prediction.cleaned_members()]
    profile = prediction.developability()
    from immunofold.weights import packaged_member_sets

    assert len(members) == len(prediction.members) == len(packaged_member_sets()["antibody"]) > 1
    assert profile == dataclasses.replace(mean_profile(members), name=prediction.name)
    assert profile["psh"].value == pytest.approx(np.mean([m["psh"].value for m in members]))
    assert len({round(m["psh"].value, 3) for m in members}) > 1  # the members differ, so the mean is not any one of them


def test_refinement_leaves_the_profile_as_it_was():
    """The profile comes from the ensemble members, which refinement does not change."""
    from immunofold.prediction import default_predictor

    predictor = default_predictor()
    unrefined = predictor.predict("nanobody", {"heavy": NANOBODY}, "nb", refine=False)
    refined = predictor.refine(unrefined)
    assert refined.refined
    assert refined.developability() == unrefined.developability()


def test_a_nanobody_cut_inside_its_cdr3_gets_no_compactness_from_one_side_of_anchors():
    """Without FR4 only the N-side anchors exist; a compactness from them alone flagged red. Refused instead."""
    import immunofold

    cut = NANOBODY[: NANOBODY.index("WGQG") - 6]  # ends inside CDR3, no FR4
    prediction = immunofold.predict(heavy=cut, refine=False)
    with pytest.raises(InputError, match="anchor residues on both sides"):
        prediction.developability()
