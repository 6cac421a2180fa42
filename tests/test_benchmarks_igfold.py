"""IgFold as a benchmark method, without IgFold: reading its PDBs (input order, B-factor = pRMSD) and the
subprocess path of accuracy.py, with a stand-in `igfold` package that writes the crystal structure."""

import gzip
import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import NANOBODY_PDB

from immunofold.data.sabdab import read_summary
from immunofold.evaluate import number_entry
from immunofold.io import read_chains

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from peers import igfold_peer  # noqa: E402


def atom_line(serial, name, resname, chain, resseq, xyz, bfactor):
    return (f"ATOM  {serial:5d}  {name:<3s} {resname} {chain}{resseq:4d}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00{bfactor:6.2f}           {name[0]}")


def tiny_pdb(path):
    """Chain L (SV) written before chain H (GAW); IgFold's atoms N, CA, C, CB, O; no CB for glycine.
    Atom coordinates encode (residue, atom): x = residue index in H-then-L order, y = atom slot."""
    slots = {"N": 0, "CA": 1, "C": 2, "O": 3, "CB": 4}
    residues = [("L", 1, "SER", 3, 0.5), ("L", 2, "VAL", 4, 0.75),
                ("H", 1, "GLY", 0, 1.25), ("H", 2, "ALA", 1, 2.5), ("H", 3, "TRP", 2, 7.0)]
    lines, serial = [], 1
    for chain, resseq, resname, index, bfactor in residues:
        for name in ("N", "CA", "C", "CB", "O"):
            if resname == "GLY" and name == "CB":
                continue
            lines.append(atom_line(serial, name, resname, chain, resseq, (index, slots[name], 0.0), bfactor))
            serial += 1
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def test_read_pdb_gives_residues_in_input_order_and_prmsd_from_bfactor(tmp_path):
    atom14, prmsd = igfold_peer.read_pdb(str(tiny_pdb(tmp_path / "x.pdb")), {"H": "GAW", "L": "SV"})
    assert atom14.shape == (5, 14, 3) and prmsd.shape == (5,)
    np.testing.assert_allclose(prmsd, [1.25, 2.5, 7.0, 0.5, 0.75])
    np.testing.assert_allclose(atom14[:, 1, 0], [0, 1, 2, 3, 4])  # CA x = residue index, H first
    np.testing.assert_allclose(atom14[1, :5, 1], [0, 1, 2, 3, 4])  # N, CA, C, O, CB in atom14 slots
    np.testing.assert_allclose(atom14[0, 4], atom14[0, 1])  # glycine: CB slot holds CA
    np.testing.assert_allclose(atom14[2, 5:], np.repeat(atom14[2, 1:2], 9, axis=0))  # side-chain slots hold CA


@pytest.mark.parametrize("chains, reason", [({"H": "GAY", "L": "SV"}, "chain H is not the input sequence"),
                                            ({"H": "GAW", "K": "SV"}, "no chain K")])
def test_read_pdb_refuses_output_that_is_not_the_input(tmp_path, chains, reason):
    with pytest.raises(ValueError, match=reason):
        igfold_peer.read_pdb(str(tiny_pdb(tmp_path / "x.pdb")), chains)


def test_read_result_names_the_record_that_failed(tmp_path):
    (tmp_path / "7abc.json").write_text(json.dumps({"chains": {"H": "GAW"}, "error": "ValueError: bad residue"}))
    with pytest.raises(ValueError, match="7abc: IgFold failed: ValueError: bad residue"):
        igfold_peer.read_result(str(tmp_path), "7abc", {"H": "GAW"})
    (tmp_path / "7abd.json").write_text(json.dumps({"chains": {"H": "GAV"}, "seconds": [1.0]}))
    with pytest.raises(ValueError, match="7abd: IgFold result is for other sequences"):
        igfold_peer.read_result(str(tmp_path), "7abd", {"H": "GAW"})


FAKE_IGFOLD = os.path.join(os.path.dirname(NANOBODY_PDB), "fake_igfold")


def one_nanobody_folder(root):
    chain_id, chain = next(iter(read_chains(NANOBODY_PDB).items()))
    folder = root / "data" / "sabdab"
    (folder / "structures").mkdir(parents=True)
    with open(NANOBODY_PDB, "rb") as src, gzip.open(folder / "structures" / "7f5g.pdb.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    header = ["pdb", "Hchain", "Lchain", "model", "antigen_chain", "date", "resolution", "method", "heavy_species",
              "light_species", "kind", "split", "source", "heavy_seq", "light_seq"]
    row = dict.fromkeys(header, "NA")
    row.update(pdb="7f5g", Hchain=chain_id, kind="nanobody", split="val", heavy_seq=chain.sequence)
    (folder / "summary.tsv").write_text("\t".join(header) + "\n" + "\t".join(row[c] for c in header) + "\n")
    return root / "data"


@pytest.fixture
def fake_igfold(monkeypatch):
    """tests/fixtures/fake_igfold (a stand-in igfold that writes the 7F5G crystal) on subprocesses' PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", FAKE_IGFOLD)
    monkeypatch.setenv("FAKE_IGFOLD_CRYSTAL", NANOBODY_PDB)


def test_accuracy_runs_igfold_in_a_subprocess_and_scores_its_prmsd(tmp_path, fake_igfold):
    import accuracy

    data, out, pdbs = one_nanobody_folder(tmp_path), tmp_path / "out", tmp_path / "igfold"
    args = ["--data", str(data), "--methods", "igfold", "--kinds", "nanobody", "--out-dir", str(out)]
    assert accuracy.main(args + ["--igfold-python", sys.executable, "--igfold-out", str(pdbs)]) == 0
    report = json.loads((out / "accuracy.json").read_text())
    (row,) = report["rows"]["igfold"]
    assert row["status"] == "ok" and row["H3"] < 1e-3 and row["Hfr"] < 1e-3 and row["seconds"] > 0
    (entry,) = read_summary(str(data))
    (chain,) = number_entry(entry)
    cdr3 = [i for i, (number, _) in enumerate(chain.positions) if 105 <= number <= 117]
    expected = np.sqrt(np.mean([(0.5 + 2 * (i % 2)) ** 2 for i in cdr3]))  # RMS over CDR3, as Prediction.cdr3_errors
    assert row["H3_predicted_error"] == pytest.approx(expected, abs=1e-4)
    assert "error_spearman" in row and report["error_estimates"]["igfold"]["nanobody"]["n"] == 1  # NaN: no deviation
    text = (out / "accuracy.md").read_text()
    assert "| IgFold 1.0.1 | 1 |" in text and "| nanobody | IgFold 1.0.1 | pRMSD (B-factor column) | 1 |" in text
    assert (pdbs / f"{row['name']}.pdb").exists()


def test_accuracy_notes_a_missing_igfold_venv(tmp_path):
    import accuracy

    data, out = one_nanobody_folder(tmp_path), tmp_path / "out"
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    assert accuracy.main(["--data", str(data), "--methods", "igfold", "--kinds", "nanobody", "--out-dir", str(out),
                          "--igfold-python", missing]) == 0
    text = (out / "accuracy.md").read_text()
    assert f"Not run: --igfold-python {missing} does not exist" in text and "setup_igfold.sh" in text


def test_speed_times_igfold_at_batch_1(tmp_path, fake_igfold):
    import speed

    data, out = one_nanobody_folder(tmp_path), tmp_path / "out"
    assert speed.main(["--data", str(data), "--tools", "igfold", "--batch-sizes", "1", "--repeats", "2",
                       "--igfold-python", sys.executable, "--out-dir", str(out), "--out-name", "speed_igfold"]) == 0
    block = json.loads((out / "speed_igfold.json").read_text())["tools"]["igfold"]
    stat = block["throughput"]["unrefined, batch 1"]
    assert stat["runs"] == 2 and 0 < stat["best"] <= stat["median"] and block["members"] == 4
    assert "| IgFold | unrefined | 1 |" in (out / "speed_igfold.md").read_text()


def test_accuracy_scores_existing_igfold_models_without_running_igfold(tmp_path):
    """--igfold-existing: no IgFold venv needed; an entry without a model is listed as not folded."""
    import accuracy

    data, out = one_nanobody_folder(tmp_path), tmp_path / "out"
    assert accuracy.main(["--data", str(data), "--methods", "igfold", "--kinds", "nanobody", "--out-dir", str(out),
                          "--igfold-python", str(tmp_path / "none"), "--igfold-out", str(tmp_path / "empty"),
                          "--igfold-existing"]) == 0
    (row,) = json.loads((out / "accuracy.json").read_text())["rows"]["igfold"]
    assert row["status"] == "skipped: not folded by IgFold"
