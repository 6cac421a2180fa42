"""`immunofold predict` as a user runs it: a fresh process, bad output paths, a missing GPU, Ctrl-C, the umask."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT

ANTIBODY = ["predict", "antibody", "--heavy", TRASTUZUMAB_HEAVY, "--light", TRASTUZUMAB_LIGHT, "--no-refine"]


def immunofold(*args, umask=None, timeout=300):
    """Run the installed command in a fresh process; (exit code, stdout, stderr)."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    result = subprocess.run(
        [sys.executable, "-m", "immunofold.cli", *args], capture_output=True, text=True, timeout=timeout, preexec_fn=preexec
    )
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(stderr: str, *words: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], stderr


@pytest.mark.parametrize(
    "output, words",
    [
        ("{tmp}", ["is a folder"]),
        ("/proc/immunofold_model.pdb", ["-o", "cannot write into folder /proc"]),
        ("{tmp}/a_file.txt/model.pdb", ["-o", "is a file, not a folder"]),
    ],
)
def test_unwritable_output_is_a_one_line_error_before_the_model_runs(tmp_path, output, words):
    (tmp_path / "a_file.txt").write_text("x")
    start = time.perf_counter()
    code, _, stderr = immunofold(*ANTIBODY, "-o", output.format(tmp=tmp_path))
    assert code == 2
    assert_one_line_error(stderr, *words)
    assert time.perf_counter() - start < 20  # refused before the ensemble is loaded and run


def test_output_without_a_file_name_or_onto_a_device_or_pipe_is_refused_before_any_folder_is_made(tmp_path):
    """`-o new/` used to create new/, run the model, then fail; `-o PIPE` (or /dev/null as root) replaced the node."""
    os.mkfifo(tmp_path / "pipe")
    for output, words in ((f"{tmp_path}/new/", ["names no file", "new/model.pdb"]), ("", ["names no file"]),
                          (str(tmp_path / "pipe"), ["not a regular file"])):
        code, stdout, stderr = immunofold(*ANTIBODY, "-o", output)
        assert code == 2 and stdout == ""
        assert_one_line_error(stderr, *words)
    assert not (tmp_path / "new").exists() and stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)


def test_an_unwritable_developability_file_is_a_one_line_error_before_the_model_runs(tmp_path):
    (tmp_path / "m.developability.json").mkdir()
    code, stdout, stderr = immunofold(*ANTIBODY, "--developability", "-o", str(tmp_path / "m.pdb"))
    assert code == 2 and stdout == "" and not (tmp_path / "m.pdb").exists()
    assert_one_line_error(stderr, "--developability", "m.developability.json is not a regular file")


def test_developability_of_a_tcr_is_refused_before_the_model_runs(tmp_path):
    tcr = ["predict", "tcr", "--alpha", "QSVSQHNHHVILSEAASLELGCNYSYGGTVNLFWYVQYPGQHLQLLLKYFSGDPLVKGIKGFEAEFIKSKFSFNLRKPSVQW"
           "SDTAEYFCAVNARRNTPLVFGKGTRLSVIA", "--beta", "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSV"
           "SREKKESFPLTVTSAQKNPTAFYLCASSITLSSYNEQFFGPGTRLTVL"]
    code, stdout, stderr = immunofold(*tcr, "--no-refine", "--developability", "-o", str(tmp_path / "new" / "tcr.pdb"))
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, "--developability", "not TCRs")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "options, words",
    [
        (["--format", "cif", "-o", "{tmp}/model.pdb"], ["ends in .pdb but --format is cif", "model.cif"]),
        (["--format", "pdb", "-o", "{tmp}/model.CIF"], ["ends in .cif but --format is pdb"]),
        (["--clean-geometry", "-o", "{tmp}/model.pdb"], ["--clean-geometry", "add --no-refine"]),
        (["--threads", "0", "-o", "{tmp}/model.pdb"], ["--threads 0: give 1 or more"]),
        (["-o", "{tmp}/model.pdb.gz"], ["written uncompressed"]),
    ],
)
def test_contradicting_options_are_refused_before_the_model_runs(tmp_path, options, words):
    args = ["predict", "nanobody", "--heavy", TRASTUZUMAB_HEAVY] + [o.format(tmp=tmp_path / "new") for o in options]
    code, stdout, stderr = immunofold(*args)
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, *words)
    assert not (tmp_path / "new").exists()


def test_clean_geometry_is_said_in_the_summary_line(tmp_path):
    code, stdout, stderr = immunofold(*ANTIBODY, "--clean-geometry", "-o", str(tmp_path / "m.cif"), "--format", "cif",
                                      "--threads", "1")
    assert code == 0, stderr
    assert "unrefined, geometry cleaned" in stdout and (tmp_path / "m.cif").read_text().startswith("data_")


def test_unwritable_ensemble_folder_and_a_name_with_folders_are_refused(tmp_path):
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(tmp_path / "m.pdb"), "--save-ensemble", "/proc/members")
    assert code == 2
    assert_one_line_error(stderr, "--save-ensemble", "cannot create folder /proc/members")
    assert "Errno" not in stderr
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(tmp_path / "m.pdb"), "--name", "../escape")
    assert code == 2
    assert_one_line_error(stderr, "--name", "plain name")
    assert not list(tmp_path.parent.glob("escape*")) and not (tmp_path / "m.pdb").exists()


def test_a_bad_sequence_is_refused_before_any_folder_is_made(tmp_path):
    output = tmp_path / "new" / "model.pdb"
    code, stdout, stderr = immunofold("predict", "nanobody", "--heavy", "XXXX", "-o", str(output), "--save-ensemble",
                                      str(tmp_path / "members"))
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, "heavy chain", "invalid letters")
    assert "created folder" not in stderr and not (tmp_path / "new").exists() and not (tmp_path / "members").exists()


def test_missing_output_folder_is_created_and_said_and_files_follow_the_umask(tmp_path):
    output = tmp_path / "new" / "deeper" / "model.pdb"
    code, stdout, stderr = immunofold(*ANTIBODY, "-o", str(output), "--save-ensemble", str(tmp_path / "members"), umask=0o022)
    assert code == 0, stderr
    assert f"created folder {output.parent}" in stderr and "wrote" in stdout
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    members = sorted((tmp_path / "members").iterdir())
    assert members and all(stat.S_IMODE(m.stat().st_mode) == 0o644 for m in members)
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(tmp_path / "private.pdb"), umask=0o077)
    assert code == 0, stderr
    assert stat.S_IMODE((tmp_path / "private.pdb").stat().st_mode) == 0o600


def test_an_output_that_is_a_symbolic_link_is_written_through(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "current.pdb"
    target.write_text("old")
    link = tmp_path / "latest.pdb"
    link.symlink_to(target)
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(link))
    assert code == 0, stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("REMARK") and sorted(os.listdir(tmp_path / "models")) == ["current.pdb"]


def test_a_link_whose_target_folder_is_missing_is_named_in_the_error(tmp_path):
    (tmp_path / "latest.pdb").symlink_to("nowhere/model.pdb")
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(tmp_path / "latest.pdb"))
    assert code == 2
    assert_one_line_error(stderr, "links to nowhere/model.pdb, whose folder does not exist")


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, stderr = immunofold(*ANTIBODY, "-o", str(tmp_path / "m.pdb"), "--device", "cuda")
    assert code == 2
    assert_one_line_error(stderr, "no CUDA GPU")


@pytest.mark.parametrize(
    "heavy, words",
    [
        (TRASTUZUMAB_HEAVY[:40] + "*" + TRASTUZUMAB_HEAVY[40:], ["heavy chain", "stop codon '*' at position 41"]),
        (TRASTUZUMAB_HEAVY[:40] + "3" + TRASTUZUMAB_HEAVY[40:], ["heavy chain", "digit '3' at position 41"]),
        (">trastuzumab_H " + TRASTUZUMAB_HEAVY, ["heavy chain", "looks like a FASTA header"]),
    ],
)
def test_typos_inside_a_sequence_are_refused_with_the_chain_and_position(tmp_path, heavy, words):
    args = ["predict", "antibody", "--heavy", heavy, "--light", TRASTUZUMAB_LIGHT, "--no-refine"]
    code, _, stderr = immunofold(*args, "-o", str(tmp_path / "m.pdb"))
    assert code == 2
    assert_one_line_error(stderr, *words)


def test_ctrl_c_that_a_library_turns_into_its_own_error_is_still_an_interruption(monkeypatch, capsys):
    """Ctrl-C while safetensors loads the weights surfaced as its ValueError (a traceback, exit 1)."""
    import immunofold.cli

    def interrupted_inside_a_library(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None

    monkeypatch.setattr(immunofold.cli, "_predict", interrupted_inside_a_library)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    try:
        assert immunofold.cli.main(["predict", "nanobody", "--heavy", "EVQL", "-o", "x.pdb"]) == 130
        assert capsys.readouterr().err == "\ninterrupted\n"
        monkeypatch.setattr(immunofold.cli, "_predict", lambda args: (_ for _ in ()).throw(ValueError("a real bug")))
        with pytest.raises(ValueError, match="a real bug"):  # without an interruption an error stays an error
            immunofold.cli.main(["predict", "nanobody", "--heavy", "EVQL", "-o", "x.pdb"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main leaves the handler as it found it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script: SIGINT stays ignored
        monkeypatch.setattr(immunofold.cli, "_predict", lambda args: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        assert immunofold.cli.main(["predict", "nanobody", "--heavy", "EVQL", "-o", "x.pdb"]) is True
    finally:
        signal.signal(signal.SIGINT, outer)


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    output = tmp_path / "new" / "m.pdb"
    process = subprocess.Popen(
        [sys.executable, "-m", "immunofold.cli", "predict", "antibody", "--heavy", TRASTUZUMAB_HEAVY, "--light",
         TRASTUZUMAB_LIGHT, "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, even if pytest ignores it
    )
    # The folder note comes after the output checks, before the ensemble loads: the interrupt lands while it loads,
    # predicts or refines (a fixed sleep raced a prediction that finished in under 3 s).
    first_line = process.stderr.readline()
    assert first_line.startswith("note: created folder"), first_line
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert not output.exists() and not list(output.parent.glob(".*.tmp"))


def test_clean_geometry_gives_an_unrefined_model_real_peptide_bonds(tmp_path):
    from immunofold.refine import find_problems

    raw, clean = tmp_path / "raw.pdb", tmp_path / "clean.pdb"
    assert immunofold(*ANTIBODY, "-o", str(raw))[0] == 0
    code, _, stderr = immunofold(*ANTIBODY, "--clean-geometry", "-o", str(clean))
    assert code == 0, stderr
    broken = lambda path: [p for p in find_problems(path.read_text()) if "peptide bond" in str(p)]  # noqa: E731
    assert broken(raw) and not broken(clean)
    assert "GEOMETRY CLEANED" in clean.read_text() and "GEOMETRY CLEANED" not in raw.read_text()


def test_starting_a_prediction_does_not_load_the_fitting_and_geometry_check_libraries():
    """scipy.optimize (the calibrator's fit) and scipy.spatial (clash searches) cost ~0.3 s each at start-up; the
    unrefined path needs neither, so they are imported where they are used."""
    code = "import sys, immunofold.prediction, immunofold.batch; print(sorted(m for m in sys.modules if m in " \
           "('scipy.optimize', 'scipy.spatial')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_unusable_weights_are_one_line_naming_the_file_in_every_command_and_batch_makes_no_folder(tmp_path, monkeypatch):
    import json

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "a.safetensors").write_bytes(b"")  # never read: the members file is refused first
    (weights / "members.json").write_text(json.dumps({"antibody": ["a.safetensors"], "nanobody": ["a.safetensors"]}))
    monkeypatch.setenv("IMMUNOFOLD_WEIGHTS", str(weights))
    reason = f"{weights / 'members.json'}: no ensemble members for tcr"
    code, out, err = immunofold("--version")
    assert code == 2 and out.strip().endswith(f"weights unusable: {reason}") and "Traceback" not in err
    nanobody = ["predict", "nanobody", "--heavy", TRASTUZUMAB_HEAVY, "-o", str(tmp_path / "nb.pdb"), "--no-refine"]
    code, _, err = immunofold(*nanobody)
    assert code == 2
    assert_one_line_error(err, f"weights: {reason}")
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb\n{TRASTUZUMAB_HEAVY}\n")
    code, _, err = immunofold("batch", str(fasta), "-o", str(tmp_path / "out"), "--no-refine", "-q")
    assert code == 2 and not (tmp_path / "out").exists()
    assert_one_line_error(err, f"weights: {reason}")
    code, _, err = immunofold("serve", "--port", "0", "--db", str(tmp_path / "jobs.db"), timeout=60)
    assert code == 2  # refuses to start rather than failing every job
    assert f"error: weights: {reason}" in err.splitlines() and "Traceback" not in err

    monkeypatch.setenv("IMMUNOFOLD_WEIGHTS", str(tmp_path / "empty"))  # no such folder: nothing to predict with
    code, _, err = immunofold(*nanobody)
    assert code == 2
    assert_one_line_error(err, "weights: no weight files", str(tmp_path / "empty"))


def test_a_chain_without_cdr3_prints_n_a_for_its_cdr3_error(tmp_path):
    code, stdout, stderr = immunofold("predict", "nanobody", "--heavy", TRASTUZUMAB_HEAVY[:96], "-o",
                                      str(tmp_path / "cut.pdb"), "--no-refine")
    assert code == 0, stderr
    assert "(H3 n/a Å)" in stdout and "H3 nan" not in stdout
    assert "before FR4 (IMGT 118-128)" in stderr


def test_fast_predicts_with_the_fast_sets_members_and_says_so_in_the_file(tmp_path):
    from immunofold.ensemble import Ensemble

    fast, default = tmp_path / "fast.pdb", tmp_path / "default.pdb"
    code, stdout, stderr = immunofold(*ANTIBODY, "--fast", "--save-ensemble", str(tmp_path / "members"), "-o", str(fast))
    assert code == 0, stderr
    assert f"WEIGHTS {Ensemble.packaged(fast=True).version}" in fast.read_text()
    assert len(list((tmp_path / "members").iterdir())) == 2  # the fast set's two members, not the default's three
    assert immunofold(*ANTIBODY, "-o", str(default))[0] == 0
    assert f"WEIGHTS {Ensemble.packaged().version}" in default.read_text()
