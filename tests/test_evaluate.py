"""`immunofold evaluate`: predicts from sequence alone and scores in ImmuneBuilder's convention."""

import json

import torch

from conftest import NANOBODY_PDB
from test_data import NANOBODY_ROW, make_folder
from immunofold.cli import main
from immunofold.io import read_chains
from immunofold.metrics import region_rmsds
from immunofold.sequences import number_chain


def test_evaluate_writes_the_documented_json_and_a_csv(tmp_path, capsys):
    sequence = read_chains(NANOBODY_PDB)["B"].sequence
    row = NANOBODY_ROW.replace("\ttrain\t", "\tval\t").replace("\tQV\t", f"\t{sequence}\t")
    folder = make_folder(tmp_path / "data", [row])
    out = tmp_path / "results.json"
    assert main(["evaluate", "--data", folder, "--split", "val", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["refined"] is False and summary["weights"]
    assert summary["nanobody"]["n"] == 1 and summary["antibody"]["n"] == 0
    assert set(summary["nanobody"]["rmsd"]) == {"H1", "H2", "H3", "Hfr"}
    assert 0 < summary["nanobody"]["rmsd"]["Hfr"] < 1.5  # a recognisably right framework
    assert -1 <= summary["nanobody"]["error_spearman"] <= 1
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[0].startswith("name,kind,status") and rows[1].startswith("7f5g_B,nanobody,ok")
    header, values = rows[0].split(","), rows[1].split(",")
    assert values[header.index("truth_chain_breaks")] == "0"

    fast = tmp_path / "fast.json"
    assert main(["evaluate", "--data", folder, "--split", "val", "--out", str(fast), "--fast"]) == 0
    from immunofold.ensemble import Ensemble

    assert json.loads(fast.read_text())["weights"] == Ensemble.packaged(fast=True).version != summary["weights"]


def test_chain_breaks_count_missing_residues_within_a_chain_only():
    from immunofold.metrics import count_chain_breaks

    chain = read_chains(NANOBODY_PDB)["B"]
    atom14, mask = torch.tensor(chain.atom14), torch.tensor(chain.atom_mask)
    slot = torch.zeros(len(atom14), dtype=torch.long)
    assert count_chain_breaks(atom14, mask, slot) == 0
    keep = torch.ones(len(atom14), dtype=torch.bool)
    keep[[40, 100]] = False  # two residues missing from the experimental model
    assert count_chain_breaks(atom14[keep], mask[keep], slot[keep]) == 2
    keep = torch.ones(len(atom14), dtype=torch.bool)
    keep[60] = False
    assert count_chain_breaks(atom14[keep], mask[keep], slot[keep]) == 1
    two_chains = (torch.arange(len(atom14) - 1) >= 60).long()
    assert count_chain_breaks(atom14[keep], mask[keep], two_chains) == 0  # the gap is where the chains meet


def test_region_rmsd_is_zero_for_the_truth_and_sees_a_moved_loop():
    chain = read_chains(NANOBODY_PDB)["B"]
    atom14, mask = torch.tensor(chain.atom14), torch.tensor(chain.atom_mask)
    numbered = number_chain(chain.sequence, "7f5g")  # the file is in Chothia numbering; renumber in IMGT
    assert numbered.sequence == chain.sequence
    position = torch.tensor([number for number, _ in numbered.positions])
    slot = torch.zeros(len(position), dtype=torch.long)
    assert max(region_rmsds("nanobody", atom14, atom14, mask, slot, position).values()) < 1e-4
    moved = atom14.clone()
    cdr3 = (position >= 105) & (position <= 117)
    moved[cdr3] += torch.tensor([2.0, 0.0, 0.0])
    rmsd = region_rmsds("nanobody", moved, atom14, mask, slot, position)
    assert abs(rmsd["H3"] - 2.0) < 1e-3 and rmsd["Hfr"] < 1e-4


def test_cdr3_reach_grows_when_the_loop_stands_out_of_the_domain():
    from immunofold.metrics import cdr3_reach

    chain = read_chains(NANOBODY_PDB)["B"]
    atom14, mask = torch.tensor(chain.atom14), torch.tensor(chain.atom_mask)
    position = torch.tensor([number for number, _ in number_chain(chain.sequence, "7f5g").positions])
    slot = torch.zeros(len(position), dtype=torch.long)
    folded = cdr3_reach(atom14, mask, slot, position)
    assert 15 < folded < 27  # 7F5G's CDR3 lies on its domain
    framework = (position < 105) | (position > 117)
    out = atom14.clone()
    tip = out[~framework, 1].mean(0) - out[framework, 1].mean(0)
    out[~framework] += 8.0 * tip / tip.norm()  # the loop pushed 8 Å further from the framework's centre
    assert abs(cdr3_reach(out, mask, slot, position) - (folded + 8.0)) < 2.0
    assert cdr3_reach(atom14, mask, slot, position, slot=1) is None  # a nanobody has no second chain


def test_summary_ranks_entries_by_predicted_cdr3_error():
    from immunofold.evaluate import summarise

    actual, predicted = [1.0, 2.0, 6.0, 3.0], [0.8, 1.1, 3.0, 1.5]  # same order: Spearman 1
    rows = [
        {"name": f"e{i}", "kind": "nanobody", "status": "ok", "H3": a, "H3_predicted_error": p}
        for i, (a, p) in enumerate(zip(actual, predicted))
    ]
    rows.append({"name": "bad", "kind": "nanobody", "status": "skipped: not an immune receptor"})
    summary = summarise(rows, "test", refined=False)
    assert summary["nanobody"]["cdr3_error_spearman"] == {"H3": 1.0}
    rows[2]["H3_predicted_error"] = 0.1  # the worst CDR3 predicted as the best
    assert summarise(rows, "test", refined=False)["nanobody"]["cdr3_error_spearman"]["H3"] == -0.2
    assert summary["tcr"]["cdr3_error_spearman"] == {"A3": None, "B3": None}  # no entries of that kind


def test_evaluate_takes_a_weights_folder_with_its_members_file_and_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    from test_ensemble import small_member_files

    sequence = read_chains(NANOBODY_PDB)["B"].sequence
    row = NANOBODY_ROW.replace("\ttrain\t", "\tval\t").replace("\tQV\t", f"\t{sequence}\t")
    folder = make_folder(tmp_path / "data", [row])
    weights = tmp_path / "weights"
    weights.mkdir()
    small_member_files(weights, range(3))
    kinds = {"antibody": ["m0.safetensors"], "nanobody": ["m1.safetensors", "m2.safetensors"], "tcr": ["m0.safetensors"]}
    (weights / "members.json").write_text(json.dumps(kinds))
    out = tmp_path / "results.json"
    assert main(["evaluate", "--data", folder, "--weights", str(weights), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["nanobody"]["n"] == 1

    del kinds["tcr"]
    (weights / "members.json").write_text(json.dumps(kinds))
    capsys.readouterr()
    assert main(["evaluate", "--data", folder, "--weights", str(weights), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: weights: {weights / 'members.json'}: no ensemble members for tcr"


def test_the_printed_summary_says_n_a_where_a_ranking_needs_more_entries():
    from immunofold.evaluate import print_summary

    summary = {"weights": "w", "refined": False, "split": "val", "nanobody": {"n": 0}, "tcr": {"n": 0},
               "antibody": {"n": 1, "rmsd": {"H3": 3.0}, "error_spearman": 0.5, "cdr3_error_spearman": {"H3": None}}}
    lines = []
    print_summary(summary, echo=lines.append)
    assert lines[1].endswith("H3 n/a (CDR3 error across entries)") and "None" not in "".join(lines)


def test_evaluate_refuses_what_it_cannot_do_in_one_line_before_predicting(tmp_path, capsys):
    folder = make_folder(tmp_path / "data", [NANOBODY_ROW])  # one entry, split "train"
    out = str(tmp_path / "x.json")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not data")
    cases = [
        (["--data", folder, "--split", "nope"], f"--split nope: no entries with that split in {folder} (splits: train)"),
        (["--data", str(tmp_path / "none")], f"--data {tmp_path / 'none'}: no such folder"),
        (["--data", str(a_file)], f"--data {a_file}: a file, not a folder"),
        (["--data", str(tmp_path)], f"--data {tmp_path}: no summary.tsv under it"),
        (["--data", folder, "--split", "train", "--limit", "-3"], "--limit -3: give 1 or more"),
        (["--data", folder, "--split", "train", "--limit", "0"], "--limit 0: give 1 or more"),
        (["--data", folder, "--split", "train", "--fast", "--weights", folder],
         "--fast picks the packaged fast member set: leave out --weights"),
    ]
    import torch

    if not torch.cuda.is_available():  # as predict and batch say it
        cases.append((["--data", folder, "--device", "cuda"],
                      "--device: device 'cuda' requested but no CUDA GPU is available (use cpu)"))
    for options, message in cases:
        assert main(["evaluate", *options, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert main(["evaluate", "--data", folder, "--split", "train", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path} is a folder")
    assert main(["evaluate", "--data", folder, "--split", "train", "--out", "/proc/x/x.json"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: cannot create folder /proc/x")
    assert not (tmp_path / "x.json").exists()
