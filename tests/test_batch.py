"""`immunofold batch` / run_batch: a mixed batch, failures, resume after SIGKILL, batch independence."""

import csv
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from immunofold import weights
from immunofold.batch import STATE_DIR, run_batch
from immunofold.cli import main
from immunofold.inputs import parse_input, resolve_record

DEV_WEIGHTS = "/tmp/devweights"

# Real val-split sequences: SAbDab 7b0b, 7bbg (antibodies), 7b5g, 7dv4 (nanobodies); STCRDab 6vm7, 6vm9 (TCRs).
AB1_H = "MQLVQSGPEVKKPGTSVKVSCKASGFTFTSSAVQWVRQARGQRLEWIGWIVVGSGNTNYAQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPHCSSTICYDGFDIWGQGTMVTVSS"
AB1_L = "EIVLTQSPGTLSLSPGERATLSCRASQSVSSSYLAWYQQKPGQAPRLLIYGASSRATGIPDRFSGSGSGTDFTLTISRVEPEDFAVYYCQQYGSSPWTFGQGTKVEIK"
AB2_H = "VQLVQSGAEVKKPGSSVKVSCKASGGTFSSYAISWVRQAPGQGLEWMGGIIPIFGTANYAQKFQGRVTITADKSTSTAYMELSSLRSEDTAVYYCARSIELWWGGFDYWGQGTTVTVSS"
AB2_L = "DIQMTQSPSTLSASVGDRVTITCRASQSISSWLAWYQQKPGKAPKLLIYDASSLESGVPSRFSGSGSGTEFTLTIGSLQPDDFATYYCQQYEDYTTFGQGTKVEIK"
NB1 = "QVQLVESGGGVVQAGGSLRLSCAASGSIFSSNAMAWYRQAPGNVRRLVAAISSRGDNTNYEDSVRGRFTISRDNAENTVSLQMNSLKPEDTAIYYCNVGSFYRGNYYGGSSWGQGTQVTVSS"
NB2 = "EVQLVESGGGLIQPGGSLRLSCAVSGFTVSKNYMSWVRQAPGKGLEWVSVVYSGGSKTYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCARAVPHSPSSFDIWGQGTMVTVSS"
TCR1_A = "QSVSQHNHHVILSEAASLELGCNYSYGGTVNLFWYVQYPGQHLQLLLKYFSGDPLVKGIKGFEAEFIKSKFSFNLRKPSVQWSDTAEYFCAVNARRNTPLVFGKGTRLSVIA"
TCR1_B = "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSVSREKKESFPLTVTSAQKNPTAFYLCASSITLSSYNEQFFGPGTRLTVL"
TCR2_A = "QKEVEQNSGPLSVPEGAIASLNCTYSDRGSQSFFWYRQYSGKSPELIMSIYSNGDKEDGRFTAQLNKASQYVSLLIRDSQPSDSATYLCAVNALLGNQFYFGTGTSLTVIP"
TCR2_B = "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSVSREKKESFPLTVTSAQKNPTAFYLCASSMGGTYEQYFGPGTRLTVT"
LYSOZYME = "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITASVNCAKKIVSDGNGMNAWVAWRNRCKGTDVQAWIRGCRL"

MIXED_FASTA = f""">ab1|H
{AB1_H}
>ab1|L
{AB1_L}
>ab2
{AB2_H.lower()}:{AB2_L}*
>nb1
{NB1[:60]}
{NB1[60:]}
>tcr1|A
{TCR1_A}
>tcr1|B
{TCR1_B}
>lone_vl
{AB1_L}
>nb2
{NB2}
>lyso
{LYSOZYME}
>nb1
{NB1}
>tcr2|A
{TCR2_A}
>tcr2|B
{TCR2_B}
>../../escape
{NB1}
>badletters
{NB2}XB
>empty
>huge
{"A" * 10000}
"""
GOOD = ["ab1", "ab2", "nb1", "tcr1", "nb2", "tcr2", "../../escape"]
KINDS = {"ab1": "antibody", "ab2": "antibody", "nb1": "nanobody", "tcr1": "tcr", "nb2": "nanobody", "tcr2": "tcr",
         "../../escape": "nanobody"}
FAILED = {
    "lone_vl": "lone light chain",
    "lyso": "no antibody or TCR variable domain",
    "nb1": "duplicate name",
    "badletters": "invalid letters 'BX'",
    "empty": "empty sequence",
    "huge": "longer than",
}


@pytest.fixture(scope="module", autouse=True)
def weights_env():
    """The shipped weights when present, else the development members (plumbing only)."""
    if weights.packaged_weight_files():
        yield
        return
    old = os.environ.get(weights.WEIGHTS_ENV)
    os.environ[weights.WEIGHTS_ENV] = DEV_WEIGHTS
    yield
    if old is None:
        os.environ.pop(weights.WEIGHTS_ENV, None)
    else:
        os.environ[weights.WEIGHTS_ENV] = old


@pytest.fixture(scope="module")
def predictor(weights_env):
    import torch

    from immunofold.prediction import Predictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine running the tests may be busy; one thread is predictable
    yield Predictor()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "mixed.fasta"
    path.write_text(MIXED_FASTA)
    return path


@pytest.fixture(scope="module")
def reference_run(mixed_input, predictor, tmp_path_factory):
    """One uninterrupted run of the mixed batch."""
    outdir = tmp_path_factory.mktemp("reference")
    report = run_batch(mixed_input, outdir, refine=False, workers=0, batch_size=4, predictor=predictor, threads=1)
    return outdir, report


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def outputs(outdir):
    """Every output file's content, with the timing column of summary.csv blanked."""
    result = {}
    for root, _, files in os.walk(outdir):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, outdir)
            if rel.startswith(STATE_DIR):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            if rel == "summary.csv":
                rows = read_csv(path)
                data = [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
            result[rel] = data
    return result


def test_mixed_batch_summary_and_failures(reference_run):
    outdir, report = reference_run
    assert (report.total, report.ok_total, report.failed_total, report.skipped) == (13, 7, 6, 0)
    summary = read_csv(outdir / "summary.csv")
    assert [row["name"] for row in summary] == [
        "ab1", "ab2", "nb1", "tcr1", "lone_vl", "nb2", "lyso", "nb1", "tcr2", "../../escape", "badletters", "empty", "huge"
    ]
    ok = [row for row in summary if row["status"] == "ok"]
    assert [row["name"] for row in ok] == GOOD
    for row in ok:
        assert row["kind"] == KINDS[row["name"]]
        assert os.path.isfile(outdir / row["file"]) and os.sep not in row["file"] and not row["file"].startswith(".")
        assert float(row["mean_error"]) >= 0 and row["refined"] == "no" and float(row["seconds"]) >= 0
        chain_ids = {"antibody": "HL", "nanobody": "H", "tcr": "AB"}[row["kind"]]
        for chain_id in "HLAB":
            assert bool(row[f"length_{chain_id}"]) == (chain_id in chain_ids)
            if chain_id in chain_ids:
                assert 100 <= int(row[f"length_{chain_id}"]) <= 140
                assert float(row[f"cdr3_error_{chain_id}"]) >= 0
    lengths = {row["name"]: (row["length_H"], row["length_L"]) for row in ok}
    assert lengths["ab1"] == (str(len(AB1_H)), str(len(AB1_L)))
    failures = read_csv(outdir / "failures.csv")
    assert [(row["name"], row["source"]) for row in failures] == [
        ("lone_vl", "line 14"), ("lyso", "line 18"), ("nb1", "line 20"), ("badletters", "line 28"), ("empty", "line 30"),
        ("huge", "line 31"),
    ]
    for row in failures:
        assert FAILED[row["name"]] in row["reason"] and "\n" not in row["reason"]
    # no temp files, nothing outside outdir, structures parse
    files = sorted(f for f in os.listdir(outdir) if not f.startswith("."))
    assert not any(f.endswith(".tmp") for f in os.listdir(outdir))
    assert len([f for f in files if f.endswith(".pdb")]) == 7
    assert not os.path.exists(outdir.parent / "escape.pdb")
    text = (outdir / "tcr1.pdb").read_text()
    assert " A " in text and " B " in text and "REMARK 250 RECEPTOR TCR" in text


def test_rerun_skips_everything(mixed_input, reference_run, predictor):
    outdir, _ = reference_run
    before = outputs(outdir)
    report = run_batch(mixed_input, outdir, refine=False, workers=0, batch_size=4, predictor=predictor, threads=1)
    assert (report.done, report.failed, report.skipped) == (0, 0, 13)
    assert outputs(outdir) == before


def test_same_output_alone_and_in_any_batch(mixed_input, reference_run, predictor):
    """A record's structure file is the same whether it runs alone or batched with others."""
    outdir, _ = reference_run
    records = {r.name: r for r in parse_input(mixed_input) if r.error is None}
    for name in ("ab1", "nb1", "tcr1"):
        resolved = resolve_record(records[name])
        alone = predictor.predict_numbered([(name, resolved.kind, resolved.chains)])[0]
        assert alone.to_pdb_string() == (outdir / f"{name}.pdb").read_text()


def test_same_length_records_share_a_pass_and_match_alone(tmp_path, predictor):
    # nb1 three times under different names: one model pass of three (same length), vs batch size 1.
    fasta = tmp_path / "same.fasta"
    fasta.write_text("".join(f">copy{i}\n{NB1}\n" for i in range(3)) + f">other\n{NB2}\n")
    batched = run_batch(fasta, tmp_path / "batched", refine=False, workers=0, batch_size=8, predictor=predictor, threads=1)
    single = run_batch(fasta, tmp_path / "single", refine=False, workers=0, batch_size=1, predictor=predictor, threads=1)
    assert batched.ok_total == single.ok_total == 4
    assert outputs(tmp_path / "batched") == outputs(tmp_path / "single")
    assert (tmp_path / "batched" / "copy0.pdb").read_text().split("REMARK")[-1] == (
        (tmp_path / "batched" / "copy2.pdb").read_text().split("REMARK")[-1]
    )


def test_resume_after_sigkill_matches_uninterrupted_run(mixed_input, reference_run, predictor, tmp_path):
    """Kill -9 the run right after the 3rd structure file is written (before its sidecar), resume, compare."""
    outdir = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from immunofold.batch import run_batch
        written = []
        def hook(event, record):
            if event == "structure_written":
                written.append(record.name)
                if len(written) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
        run_batch({str(mixed_input)!r}, {str(outdir)!r}, refine=False, workers=0, batch_size=1, on_event=hook, threads=1)
    """)
    process = subprocess.run([sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True, check=False,
                             timeout=300)
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert not (outdir / "summary.csv").exists()
    finished = os.listdir(outdir / STATE_DIR / "records")
    assert 2 <= len([f for f in finished if f.endswith(".json")])
    report = run_batch(mixed_input, outdir, refine=False, workers=0, batch_size=4, predictor=predictor, threads=1)
    assert report.skipped >= 2 and report.done + report.failed + report.skipped == 13
    assert outputs(outdir) == outputs(reference_run[0])


def test_resume_after_exception_in_the_middle(mixed_input, reference_run, predictor, tmp_path):
    class Stop(Exception):
        pass

    def hook(event, record):
        if event == "record_done" and record.name == "nb2":
            raise Stop

    with pytest.raises(Stop):
        run_batch(mixed_input, tmp_path, refine=False, workers=0, batch_size=2, predictor=predictor, on_event=hook, threads=1)
    report = run_batch(mixed_input, tmp_path, refine=False, workers=0, batch_size=3, predictor=predictor, threads=1)
    assert report.skipped > 0
    assert outputs(tmp_path) == outputs(reference_run[0])


def test_workers_csv_input_and_plots(tmp_path, predictor):
    table = tmp_path / "in.tsv"
    table.write_text(f"name\theavy\tlight\talpha\tbeta\nab1\t{AB1_H}\t{AB1_L}\t\t\nnb1\t{NB1}\t\t\t\n"
                     f"tcr1\t\t\t{TCR1_A}\t{TCR1_B}\nvl\t\t{AB1_L}\t\t\n")
    report = run_batch(table, tmp_path / "out", refine=False, workers=1, batch_size=4, predictor=predictor, plots=True, threads=1)
    assert (report.ok_total, report.failed_total) == (3, 1)
    plots = sorted(os.listdir(tmp_path / "out" / "plots"))
    assert plots == ["ab1.png", "nb1.png", "overview.png", "tcr1.png"]
    assert all(os.path.getsize(tmp_path / "out" / "plots" / p) > 1000 for p in plots)
    inline = run_batch(table, tmp_path / "inline", refine=False, workers=0, batch_size=1, predictor=predictor, threads=1)
    assert inline.ok_total == 3
    for name in ("ab1", "nb1", "tcr1"):
        assert (tmp_path / "out" / f"{name}.pdb").read_bytes() == (tmp_path / "inline" / f"{name}.pdb").read_bytes()


def test_cli_batch(tmp_path, capsys):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n>bad\nNOTANANTIBODY\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--no-refine", "--workers", "0", "--threads", "1", "-q",
                 "--format", "cif"]) == 0
    assert "1 predicted, 1 failed" in capsys.readouterr().out
    assert (tmp_path / "out" / "nb1.cif").read_text().startswith("data_")
    assert main(["batch", str(tmp_path / "missing.fasta"), "-o", str(tmp_path / "out2"), "-q"]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_plots_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--plots", "-q"]) == 2
    assert "pip install 'immunofold[plots]'" in capsys.readouterr().err
