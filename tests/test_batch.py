"""`immunofold batch` / run_batch: a mixed batch, failures, resume after SIGKILL, batch independence."""

import csv
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent import futures

import pytest

from immunofold import weights
from immunofold.batch import STATE_DIR, run_batch
from immunofold.cli import main
from immunofold.inputs import parse_input, resolve_record
from immunofold.sequences import InputError

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
    """Every output file's content, with the timing column of summary.csv and summary.parquet left out."""
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
            if rel == "summary.parquet":
                import pyarrow.parquet as pq

                data = pq.read_table(path).drop_columns(["seconds"]).to_pylist()
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
        assert row["error_calibrated"] == "yes"  # the shipped calibrator is fitted for the shipped weights
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


def test_workers_csv_input_and_plots(tmp_path, predictor, monkeypatch):
    import immunofold.plots

    overview_rows = []
    plot_overview = immunofold.plots.plot_overview
    monkeypatch.setattr(immunofold.plots, "plot_overview", lambda rows, path: overview_rows.extend(rows) or plot_overview(rows, path))
    table = tmp_path / "in.tsv"
    table.write_text(f"name\theavy\tlight\talpha\tbeta\nab1\t{AB1_H}\t{AB1_L}\t\t\nnb1\t{NB1}\t\t\t\n"
                     f"tcr1\t\t\t{TCR1_A}\t{TCR1_B}\nvl\t\t{AB1_L}\t\t\n")
    report = run_batch(table, tmp_path / "out", refine=False, workers=1, batch_size=4, predictor=predictor, plots=True, threads=1)
    assert (report.ok_total, report.failed_total) == (3, 1)
    plots = sorted(os.listdir(tmp_path / "out" / "plots"))
    assert plots == ["ab1.png", "nb1.png", "overview.png", "tcr1.png"]
    assert all(os.path.getsize(tmp_path / "out" / "plots" / p) > 1000 for p in plots)
    # the run holds only what the overview reads of each record, not whole sidecars (memory at repertoire scale)
    assert sorted(r["kind"] for r in overview_rows) == ["antibody", "nanobody", "tcr"]
    assert all(set(r) == {"kind", "mean_error", "cdr3_error"} for r in overview_rows)
    inline = run_batch(table, tmp_path / "inline", refine=False, workers=0, batch_size=1, predictor=predictor, threads=1)
    assert inline.ok_total == 3
    for name in ("ab1", "nb1", "tcr1"):
        assert (tmp_path / "out" / f"{name}.pdb").read_bytes() == (tmp_path / "inline" / f"{name}.pdb").read_bytes()
    # a changed record gets a new plot; a record that now fails loses its plot with its model; the others stay
    drawn = {p: (tmp_path / "out" / "plots" / p).read_bytes() for p in plots}
    table.write_text(f"name\theavy\tlight\talpha\tbeta\nab1\t{AB1_H}\t{AB1_L}\t\t\nnb1\t{NB2}\t\t\t\n"
                     f"tcr1\t\t\t{TCR1_A}\tNOTATCR\nvl\t\t{AB1_L}\t\t\n")
    run_batch(table, tmp_path / "out", refine=False, workers=0, batch_size=4, predictor=predictor, plots=True, threads=1)
    assert sorted(os.listdir(tmp_path / "out" / "plots")) == ["ab1.png", "nb1.png", "overview.png"]
    assert (tmp_path / "out" / "plots" / "ab1.png").read_bytes() == drawn["ab1.png"]
    assert (tmp_path / "out" / "plots" / "nb1.png").read_bytes() != drawn["nb1.png"]


class _SlowNumbering:
    """A stand-in for the numbering worker pool whose results are never ready before they are asked for (numbering
    slower than the model); `log` records when each chunk's result is taken."""

    def __init__(self, log, *args, **kwargs):
        self.log = log

    def submit(self, fn, *args):
        log = self.log

        class Pending(futures.Future):
            def result(self, timeout=None):
                if not super().done():
                    self.set_result(fn(*args))
                    log.append(("numbered", [record.name for record in args[0]]))
                return super().result()

            def done(self):
                return False

        return Pending()

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_the_model_runs_while_the_workers_are_still_numbering(tmp_path, predictor, monkeypatch):
    """Records whose same-length bucket is not full are predicted as soon as the next numbering result is not ready,
    not after the last record is numbered; the files are those of a run without workers."""
    import immunofold.batch

    log = []
    monkeypatch.setattr(immunofold.batch, "NUMBERING_CHUNK", 1)
    monkeypatch.setattr(immunofold.batch.futures, "ProcessPoolExecutor", lambda *a, **k: _SlowNumbering(log))
    predict_numbered = predictor.predict_numbered
    monkeypatch.setattr(predictor, "predict_numbered",
                        lambda items, *a: log.append(("predicted", [i[0] for i in items])) or predict_numbered(items, *a))
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">ab1\n{AB1_H}:{AB1_L}\n>nb1\n{NB1}\n>tcr1|A\n{TCR1_A}\n>tcr1|B\n{TCR1_B}\n")
    report = run_batch(fasta, tmp_path / "out", refine=False, workers=1, batch_size=4, predictor=predictor, threads=1)
    assert report.ok_total == 3
    assert log == [("numbered", ["ab1"]), ("predicted", ["ab1"]), ("numbered", ["nb1"]), ("predicted", ["nb1"]),
                   ("numbered", ["tcr1"]), ("predicted", ["tcr1"])]
    monkeypatch.undo()
    inline = run_batch(fasta, tmp_path / "inline", refine=False, workers=0, batch_size=4, predictor=predictor, threads=1)
    assert inline.ok_total == 3
    for name in ("ab1", "nb1", "tcr1"):
        assert (tmp_path / "out" / f"{name}.pdb").read_bytes() == (tmp_path / "inline" / f"{name}.pdb").read_bytes()


def test_refinement_in_a_worker_never_falls_far_behind_the_model(tmp_path, predictor, monkeypatch):
    """A refined run holds at most REFINING_PER_WORKER predictions per worker waiting for refinement (the model pass
    is ~7x faster and would otherwise hold every prediction of a large input in memory); every record is refined,
    as in a run without workers."""
    import immunofold.batch

    in_flight = []
    predict_group = immunofold.batch._Pipeline._predict_group

    def counted(self, group, executor, refining):
        predict_group(self, group, executor, refining)
        in_flight.append(len(refining))

    monkeypatch.setattr(immunofold.batch, "REFINING_PER_WORKER", 1)
    monkeypatch.setattr(immunofold.batch._Pipeline, "_predict_group", counted)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n>nb3\n{NB1[:-2]}\n")
    report = run_batch(fasta, tmp_path / "out", refine=True, workers=1, batch_size=1, predictor=predictor, threads=1)
    assert report.ok_total == 3 and in_flight and max(in_flight) <= 1
    with open(tmp_path / "out" / "summary.csv") as handle:
        assert [row["refined"] for row in csv.DictReader(handle)] == ["yes", "yes", "yes"]
    monkeypatch.undo()
    inline = run_batch(fasta, tmp_path / "inline", refine=True, workers=0, batch_size=1, predictor=predictor, threads=1)
    assert inline.ok_total == 3
    for name in ("nb1", "nb2", "nb3"):
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


@pytest.mark.parametrize("cores, memory_gib, refine, workers, threads", [
    (2, 24, True, 2, 1), (2, 24, False, 1, 2), (16, 64, True, 14, 2), (16, 64, False, 1, 16), (1, 24, True, 1, 1),
    (16, 4, True, 2, 14)])
def test_the_command_lines_default_workers_refine_side_by_side(tmp_path, monkeypatch, cores, memory_gib, refine,
                                                               workers, threads):
    """Refined runs get a worker per usable core (less one per 8 cores, at most what half the memory holds),
    unrefined runs one; the model pass the cores left."""
    import immunofold.batch

    seen = {}

    def run_batch_stopped_at_once(*args, **options):  # the options the command chose; then a Ctrl-C ends it
        seen.update(options)
        raise KeyboardInterrupt

    page = 4096
    sysconf = {"SC_PHYS_PAGES": memory_gib * (1 << 30) // page, "SC_PAGE_SIZE": page}
    monkeypatch.setattr(immunofold.batch, "usable_cores", lambda: cores)
    monkeypatch.setattr(immunofold.batch.os, "sysconf", lambda name: sysconf[name])
    monkeypatch.setattr(immunofold.batch, "run_batch", run_batch_stopped_at_once)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    main(["batch", str(fasta), "-o", str(tmp_path / "out"), "-q", *([] if refine else ["--no-refine"])])
    assert (seen["workers"], seen["threads"]) == (workers, threads)
    main(["batch", str(fasta), "-o", str(tmp_path / "out"), "-q", "--workers", "3", *([] if refine else ["--no-refine"])])
    assert seen["workers"] == 3


def test_usable_cores_follow_the_affinity(monkeypatch):
    import immunofold.batch

    monkeypatch.setattr(immunofold.batch.os, "sched_getaffinity", lambda pid: {0})
    assert immunofold.batch.usable_cores() == 1


def test_a_worker_pool_broken_before_a_submit_stops_the_run_with_the_resume_message(tmp_path, predictor, monkeypatch):
    """A dead worker breaks the pool; the next task handed to it is BatchStopped (one line, resume), not a
    traceback."""
    from concurrent.futures.process import BrokenProcessPool

    import immunofold.batch

    class BrokenPool:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, *args):
            raise BrokenProcessPool("A child process terminated abruptly")

        def shutdown(self, wait=True, cancel_futures=False):
            pass

    monkeypatch.setattr(immunofold.batch.futures, "ProcessPoolExecutor", BrokenPool)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    with pytest.raises(immunofold.batch.BatchStopped, match="numbering stopped"):
        run_batch(fasta, tmp_path / "out", refine=False, workers=1, predictor=predictor, threads=1)


def test_an_empty_or_impossible_output_folder_is_a_bad_option_not_a_stopped_run(tmp_path, monkeypatch, capsys):
    """-o '' wrote into the current folder; -o A_FILE said 'rerun the same command to resume' (exit 1)."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    (tmp_path / "a_file").write_text("x")
    monkeypatch.chdir(tmp_path)
    for outdir, words in (("", "give an output folder"), ("a_file", "cannot create the output folder (Not a directory)")):
        assert main(["batch", str(fasta), "-o", outdir, "--no-refine", "--workers", "0", "-q"]) == 2
        err = capsys.readouterr().err
        assert words in err and "resume" not in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["a_file", "in.fasta"]


def test_an_output_folder_the_user_may_not_write_is_a_bad_option_and_a_full_disk_a_stopped_run(tmp_path, monkeypatch,
                                                                                                  capsys):
    """Permission denied creating -o said 'rerun the same command to resume' (exit 1), which cannot help; a full disk
    still stops the run with the resume message (free space, rerun)."""
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n")
    makedirs = os.makedirs

    def refuse(error_number):
        def refusing_makedirs(path, exist_ok=False):
            if os.fspath(path).startswith(os.fspath(outdir)):
                raise OSError(error_number, os.strerror(error_number), path)
            return makedirs(path, exist_ok=exist_ok)
        return refusing_makedirs

    monkeypatch.setattr(os, "makedirs", refuse(errno.EACCES))
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: -o: ") and "Permission denied" in err and "resume" not in err
    assert len(err.splitlines()) == 1
    monkeypatch.setattr(os, "makedirs", refuse(errno.ENOSPC))
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "resume" in err


def test_chothia_or_kabat_for_tcrs_is_refused_before_the_model_runs(tmp_path, capsys):
    """They were accepted, the model loaded, and every record then failed on its numbering."""
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    for scheme in ("chothia", "kabat"):
        assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--kind", "tcr", "--numbering", scheme,
                     "--no-refine", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"error: --numbering: {scheme} numbering is defined for antibodies only; TCRs take imgt"
    assert not (tmp_path / "out").exists()


def test_plots_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--plots", "-q"]) == 2
    assert "pip install 'immunofold[plots]'" in capsys.readouterr().err


# --- hardening: identity of a record, one run per folder, faults of the machine, CSV cells, Ctrl-C ----------


def read_summary(outdir):
    with open(outdir / "summary.csv", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def test_inputs_sharing_a_record_name_never_leave_a_stale_structure(tmp_path, predictor):
    """A (ab00 = H+L), then B (ab00 = heavy only), then A again into one folder: the file always matches the summary."""
    a_input, b_input, outdir = tmp_path / "A.fasta", tmp_path / "B.fasta", tmp_path / "out"
    a_input.write_text(f">ab00|H\n{AB1_H}\n>ab00|L\n{AB1_L}\n")
    b_input.write_text(f">ab00\n{NB1}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    first = run_batch(a_input, outdir, **options)
    a_structure = (outdir / "ab00.pdb").read_text()
    second = run_batch(b_input, outdir, **options)
    assert second.done == 1 and read_summary(outdir)["ab00"]["kind"] == "nanobody"
    third = run_batch(a_input, outdir, **options)
    assert (first.done, third.done, third.skipped) == (1, 1, 0)  # recomputed, not "already finished"
    assert read_summary(outdir)["ab00"]["kind"] == "antibody"
    assert (outdir / "ab00.pdb").read_text() == a_structure
    chains = {line[21] for line in a_structure.splitlines() if line.startswith("ATOM")}
    assert chains == {"H", "L"}
    assert run_batch(a_input, outdir, **options).skipped == 1  # unchanged: finished


def test_a_changed_sequence_or_option_is_recomputed(tmp_path, predictor):
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb\n{NB1}\n")
    run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
    fasta.write_text(f">nb\n{NB2}\n")
    assert run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1).done == 1
    assert run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1, numbering="kabat").done == 1


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, predictor, capsys):
    from immunofold.batch import BatchStopped, folder_lock

    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb\n{NB1}\n")
    (outdir / STATE_DIR).mkdir(parents=True)
    with folder_lock(str(outdir)):
        with pytest.raises(BatchStopped, match="another immunofold batch"):
            run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
        assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q"]) == 1
        assert "another immunofold batch (pid" in capsys.readouterr().err
    assert not (outdir / "nb.pdb").exists()
    assert run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1).done == 1


class _FailingEnsemble:
    """Stands in for the ensemble of a machine that runs out of memory."""

    version = "test"
    member_sets: dict = {}

    def run(self, batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_machine_faults_stop_the_run_and_mark_no_record(tmp_path, predictor, monkeypatch):
    from immunofold.batch import BatchStopped
    from immunofold.prediction import Predictor

    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n")
    broken = Predictor(ensemble=_FailingEnsemble())
    with pytest.raises(BatchStopped, match="out of memory"):
        run_batch(fasta, outdir, refine=False, workers=0, predictor=broken, threads=1)
    assert not os.listdir(outdir / STATE_DIR / "records")

    import immunofold.batch as batch

    real_write = batch.write_text_atomic

    def disk_full(path, text):
        if str(path).endswith(".pdb"):
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(batch, "write_text_atomic", disk_full)
    with pytest.raises(BatchStopped, match="No space left on device"):
        run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
    assert not os.listdir(outdir / STATE_DIR / "records")
    monkeypatch.setattr(batch, "write_text_atomic", real_write)
    report = run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
    assert (report.done, report.skipped, report.ok_total) == (2, 0, 2)


def test_cuda_without_a_gpu_stops_before_any_record(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--device", "cuda", "-q"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (outdir / STATE_DIR / "records").exists() or not os.listdir(outdir / STATE_DIR / "records")


def test_a_run_where_every_record_failed_exits_non_zero(tmp_path, capsys):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">lyso\n{LYSOZYME}\n>short\nEVQLVESGG\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--no-refine", "--workers", "0", "-q"]) == 1
    assert "no record could be modelled" in capsys.readouterr().err


def test_a_heavy_only_table_says_once_that_it_is_read_as_nanobodies(tmp_path, predictor, capsys):
    table = tmp_path / "in.csv"
    table.write_text(f"name,heavy\nnb1,{NB1}\nnb2,{NB2}\n")
    notes = []
    run_batch(table, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1, on_note=notes.append)
    assert notes == ["no light chains in the table: treating heavy chains as nanobodies (use --kind antibody to require light chains)"]
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    notes.clear()
    run_batch(fasta, tmp_path / "out2", refine=False, workers=0, predictor=predictor, threads=1, on_note=notes.append)
    assert notes == []


def test_summary_cells_cannot_run_as_spreadsheet_formulas(tmp_path, predictor):
    names = ["=HYPERLINK(\"http://x\")", "+1+2", "-cmd", "@SUM(A1)", "plain"]
    table = tmp_path / "in.csv"
    table.write_text("name,heavy\n" + "".join(f"\"{n.replace(chr(34), chr(34) * 2)}\",{NB1 if i % 2 else 'BAD'}\n"
                                             for i, n in enumerate(names)))
    run_batch(table, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    summary = read_summary(tmp_path / "out")
    assert set(summary) == {"'" + n for n in names[:4]} | {"plain"}
    with open(tmp_path / "out" / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert failures and all(not row["name"].startswith(("=", "+", "-", "@")) for row in failures)
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in summary.values() for cell in row.values())


@pytest.mark.parametrize("stop, engine", [("ctrl-c", "local"), ("sigterm", "local"), ("sigterm", "ray")])
def test_ctrl_c_or_sigterm_prints_one_line_with_the_resume_command(tmp_path, stop, engine):
    """Ctrl-C signals the terminal's whole process group; `kill`, `timeout` and job schedulers send SIGTERM to the
    batch process alone. Either way, on either engine (Ray's driver would dump its stack and exit 1 on SIGTERM): the
    finished records kept, summaries written, one line."""
    if engine == "ray":
        pytest.importorskip("ray")
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">nb{i}\n{NB1 if i % 2 else NB2}\n" for i in range(40)))
    outdir = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "immunofold.cli", "batch", str(fasta), "-o", str(outdir),
                                "--no-refine", "--workers", "1", "--engine", engine, "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    records = outdir / STATE_DIR / "records"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (records.exists() and any(records.glob("*.json"))):
        time.sleep(0.2)
    if stop == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group, workers included
    else:
        process.terminate()  # SIGTERM to the batch process only
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted; finished records are kept, resume with: immunofold batch ")
    finished = len(list(records.glob("*.json")))
    assert 1 <= finished < 40 and len(read_summary(outdir)) == 40
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q"]) == 0
    assert len(list(records.glob("*.json"))) == 40


def test_clean_geometry_is_part_of_a_records_identity(tmp_path):
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q"]) == 0
    raw = (outdir / "nb1.pdb").read_text()
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q", "--clean-geometry"]) == 0
    cleaned = (outdir / "nb1.pdb").read_text()
    assert cleaned != raw and "GEOMETRY CLEANED" in cleaned
    with pytest.raises(InputError, match="--clean-geometry: applies to unrefined models"):
        run_batch(fasta, tmp_path / "refined", clean_geometry=True, workers=0)
    assert not (tmp_path / "refined").exists()


def test_developability_of_tcrs_is_refused_before_any_folder_is_made(tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    with pytest.raises(InputError, match="--developability: profiles cover antibodies and nanobodies, not TCRs"):
        run_batch(fasta, tmp_path / "tcrs", kind="tcr", developability=True, refine=False, workers=0)
    assert not (tmp_path / "tcrs").exists()


@pytest.mark.parametrize("option, value, message", [("--batch-size", "0", "--batch-size 0: give 1 or more"),
                                                     ("--workers", "-1", "--workers -1: give 0 or more")])
def test_batch_size_and_workers_out_of_range_are_named(tmp_path, capsys, option, value, message):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), option, value]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_threads_below_one_is_refused_before_any_folder_is_made(tmp_path, capsys, threads):
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(outdir), "--no-refine", "--workers", "0", "-q", "--threads", threads]) == 2
    assert capsys.readouterr().err == f"error: --threads {threads}: give 1 or more\n"
    assert not outdir.exists()


def test_run_batch_without_threads_leaves_torchs_thread_count_alone(tmp_path, predictor, monkeypatch):
    import torch

    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or real(n))
    before = torch.get_num_threads()
    run_batch(fasta, tmp_path / "out", refine=False, workers=0, predictor=predictor)
    assert all(n == before for n in calls) and torch.get_num_threads() == before


def test_a_resume_trusts_untouched_structure_files_without_reading_them(tmp_path, predictor, monkeypatch):
    """Finished records are checked by the size and modification time taken when their file was written; only a
    file whose stat changed is hashed again (and counts as unfinished if its content changed). A changed file is
    the user's now: the rerun fails that record rather than overwrite it, and predicts it again once it is moved."""
    import immunofold.batch

    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB1[:-3]}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    assert run_batch(fasta, outdir, **options).ok_total == 2
    hashed = []
    digest = immunofold.batch._file_digest
    monkeypatch.setattr(immunofold.batch, "_file_digest", lambda path: hashed.append(os.path.basename(path)) or digest(path))
    again = run_batch(fasta, outdir, **options)
    assert (again.done, again.skipped, hashed) == (0, 2, [])
    structure = outdir / "nb2.pdb"
    structure.write_text(structure.read_text().replace("ATOM  ", "HETATM", 1))  # changed content, new stat
    third = run_batch(fasta, outdir, **options)
    assert (third.done, third.failed, third.skipped) == (0, 1, 1) and "nb2.pdb" in hashed
    assert "HETATM" in structure.read_text()  # left as the user changed it
    assert "nb2.pdb is in the way: the model batch wrote, changed since (edited?), has the model's name" in (outdir / "failures.csv").read_text()
    structure.unlink()
    fourth = run_batch(fasta, outdir, **options)
    assert (fourth.done, fourth.failed, fourth.ok_total) == (1, 0, 2)
    assert "HETATM" not in structure.read_text()  # predicted and written again


def test_a_rerun_with_other_options_leaves_only_what_the_summary_lists(tmp_path, predictor):
    """Once a rerun finishes, a record's earlier file (another format, another file name) is gone and a record that
    now fails has no model; files this folder's batch runs did not write, or that changed since, stay."""
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    outdir.mkdir()
    fasta.write_text(f">nb1\n{NB1}\n>ab1|H\n{AB1_H}\n>ab1|L\n{AB1_L}\n>Nb2\n{NB2}\n>nb2\n{NB2}\n")
    (outdir / "nb1.cif").write_text("data_model\n# REMARK 250 'IMMUNOFOLD 0.9.1' (immunofold predict -o out/nb1.cif)\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    assert run_batch(fasta, outdir, **options).ok_total == 4
    stems = sorted(p.name for p in outdir.glob("*.pdb"))  # nb2's stem is changed: Nb2 came first
    assert stems[:3] == ["Nb2.pdb", "ab1.pdb", "nb1.pdb"] and stems[3].startswith("nb2_")
    assert "predict -o" in (outdir / "nb1.cif").read_text()  # not this folder's batch: left alone
    (outdir / "ab1.pdb").write_text((outdir / "ab1.pdb").read_text() + "REMARK   1 EDITED BY HAND\n")

    fasta.write_text(f">nb1\n{NB1}\n>ab1|H\n{AB1_H}\n>ab1|L\n{AB1_L}\n>nb2\n{NB2}\n")
    report = run_batch(fasta, outdir, fmt="cif", **options)
    assert (report.ok_total, report.failed_total) == (2, 1)  # nb1.cif, the user's own file, is in nb1's way
    assert "predict -o" in (outdir / "nb1.cif").read_text() and "nb1.cif is in the way" in (outdir / "failures.csv").read_text()
    # ab1.pdb: edited; Nb2.pdb: an earlier input's; nb1.pdb: nb1 has not finished (its path is taken), so it stays
    assert sorted(p.name for p in outdir.glob("*.pdb")) == ["Nb2.pdb", "ab1.pdb", "nb1.pdb"]
    assert (outdir / "nb2.cif").is_file()

    report = run_batch(fasta, outdir, fmt="cif", kind="antibody", **options)
    assert (report.ok_total, report.failed_total) == (1, 2)
    assert sorted(p.name for p in outdir.glob("*.cif")) == ["ab1.cif", "nb1.cif"]  # nb1.cif: still the user's
    # nb1 is still blocked by the user's nb1.cif (checked before its kind), so its earlier nb1.pdb still stays
    assert sorted(p.name for p in outdir.glob("*.pdb")) == ["Nb2.pdb", "ab1.pdb", "nb1.pdb"]
    assert {name: row["file"] for name, row in read_summary(outdir).items()} == {"nb1": "", "ab1": "ab1.cif", "nb2": ""}


def test_a_run_killed_after_writing_a_model_overwrites_it_on_resume(tmp_path, predictor, monkeypatch):
    """Killed between a model file and its final sidecar: the rerun knows the file as its own (the sidecar saved
    before the file names it) and predicts the record again instead of calling the file in the way."""
    import immunofold.batch as batch

    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)

    def killed(path):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(batch, "_file_stat", killed)  # called right after the first model file is written
        with pytest.raises(KeyboardInterrupt):
            run_batch(fasta, outdir, **options)
    assert (outdir / "nb1.pdb").is_file() and not (outdir / "nb2.pdb").exists()
    report = run_batch(fasta, outdir, **options)
    assert (report.done, report.failed, report.ok_total) == (2, 0, 2)


def test_anything_batch_did_not_write_in_a_records_way_fails_that_record_only(tmp_path, predictor):
    """A folder, a file no batch run here wrote, a link (even to a file batch wrote) or a pipe at a record's model
    path is left as it is, never read or followed: that record fails with the reason before it is predicted, the
    others are predicted, and a rerun after moving it predicts the record."""
    fasta, outdir, elsewhere = tmp_path / "in.fasta", tmp_path / "out", tmp_path / "kept.pdb"
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    fasta.write_text(f">nb5\n{NB1}\n")
    run_batch(fasta, outdir, **options)
    os.replace(outdir / "nb5.pdb", elsewhere)  # a model batch wrote, moved out and linked back
    (outdir / "nb5.pdb").symlink_to(elsewhere)
    kept = elsewhere.read_bytes()
    (outdir / "nb1.pdb").mkdir(parents=True)
    (outdir / "nb2.pdb").write_text("my own notes\n")
    os.mkfifo(outdir / "nb3.pdb")
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n>nb3\n{NB1[:-2]}\n>nb4\n{NB1[:-3]}\n>nb5\n{NB1}\n")
    report = run_batch(fasta, outdir, numbering="kabat", **options)
    assert (report.done, report.failed) == (1, 4) and (outdir / "nb4.pdb").is_file()
    assert (outdir / "nb1.pdb").is_dir() and (outdir / "nb2.pdb").read_text() == "my own notes\n"
    assert elsewhere.read_bytes() == kept and (outdir / "nb5.pdb").is_symlink()
    failures = (outdir / "failures.csv").read_text()
    for name, what in (("nb1", "a folder"), ("nb2", "a file no batch run in this folder wrote"),
                       ("nb3", "a special file (pipe, socket or device)"), ("nb5", "a symbolic link")):
        assert f"{name}.pdb is in the way: {what} has the model's name" in failures
    assert all(float(row["seconds"]) == 0 for name, row in read_summary(outdir).items() if name != "nb4")  # not predicted
    for name in ("nb2", "nb3", "nb5"):
        (outdir / f"{name}.pdb").unlink()
    (outdir / "nb1.pdb").rmdir()
    again = run_batch(fasta, outdir, numbering="kabat", **options)
    assert (again.done, again.failed, again.skipped, again.ok_total) == (4, 0, 1, 5)


def test_a_record_in_the_way_keeps_its_earlier_model_and_its_own_file_is_known_again(tmp_path, predictor):
    """While a record fails only because of a file in its way, its model in another format is not removed; and the
    model batch wrote, put back byte for byte after an edit, is batch's own again."""
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    run_batch(fasta, outdir, **options)
    model = outdir / "nb1.pdb"
    original = model.read_bytes()
    model.write_bytes(b"REMARK   1 MY NOTE\n" + original)
    assert run_batch(fasta, outdir, **options).failed == 1
    model.write_bytes(original)
    report = run_batch(fasta, outdir, **options)
    assert (report.failed, report.skipped, report.ok_total) == (0, 0, 1) and model.read_bytes() == original

    model.write_bytes(b"REMARK   1 MY NOTE\n" + original)
    assert run_batch(fasta, outdir, fmt="cif", **options).ok_total == 1
    assert run_batch(fasta, outdir, **options).failed == 1  # in the way again: nb1.cif stays
    assert (outdir / "nb1.cif").is_file() and model.read_bytes().startswith(b"REMARK   1 MY NOTE")


def test_a_users_file_that_looks_temporary_is_not_removed(tmp_path, predictor):
    """Only temp files of batch's own outputs left by a killed run are cleaned up at the start."""
    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    outdir.mkdir()
    (outdir / ".draft.tmp").write_text("keep\n")
    (outdir / ".nb1.pdb.k3j9x_2a.tmp").write_text("half a model")
    fasta.write_text(f">nb1\n{NB1}\n")
    run_batch(fasta, outdir, refine=False, workers=0, predictor=predictor, threads=1)
    assert (outdir / ".draft.tmp").read_text() == "keep\n" and not (outdir / ".nb1.pdb.k3j9x_2a.tmp").exists()


def test_a_rerun_with_other_options_overwrites_its_own_files_without_reading_them(tmp_path, predictor, monkeypatch):
    """Every record of a rerun under other options finds its earlier model at its path: an untouched one is known
    as batch's own by the size and modification time its sidecar holds, so no file is read to hash it."""
    import immunofold.batch

    fasta, outdir = tmp_path / "in.fasta", tmp_path / "out"
    fasta.write_text(f">nb1\n{NB1}\n>nb2\n{NB2}\n")
    options = dict(refine=False, workers=0, predictor=predictor, threads=1)
    run_batch(fasta, outdir, **options)
    hashed = []
    digest = immunofold.batch._file_digest
    monkeypatch.setattr(immunofold.batch, "_file_digest", lambda path: hashed.append(os.path.basename(path)) or digest(path))
    report = run_batch(fasta, outdir, numbering="kabat", **options)
    assert (report.done, report.failed, hashed) == (2, 0, [])
    assert "KABAT" in (outdir / "nb1.pdb").read_text()


def test_a_model_that_cannot_be_written_fails_its_record_and_the_run_goes_on(tmp_path, predictor, monkeypatch):
    import immunofold.batch

    real_render = immunofold.batch.render

    def render_failing_for_bad(prediction, fmt, developability=False):
        if prediction.name == "bad":
            raise TypeError("an atom name gemmi refuses")
        return real_render(prediction, fmt, developability)

    monkeypatch.setattr(immunofold.batch, "render", render_failing_for_bad)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">bad\n{NB1}\n>good\n{NB2}\n")
    report = run_batch(fasta, tmp_path / "out", refine=False, workers=0, predictor=predictor, threads=1)
    summary = read_summary(tmp_path / "out")
    assert report.ok_total == 1 and summary["good"]["status"] == "ok" and (tmp_path / "out" / "good.pdb").exists()
    assert summary["bad"]["status"] == "failed" and not (tmp_path / "out" / "bad.pdb").exists()
    failures = {row["name"]: row for row in read_csv(tmp_path / "out" / "failures.csv")}
    assert failures["bad"]["reason"] == "writing the model failed (TypeError: an atom name gemmi refuses)"


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_the_ray_engine_refuses_fewer_than_one_worker_in_one_line(tmp_path, capsys, workers):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">nb1\n{NB1}\n")
    assert main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--engine", "ray", "--workers", workers]) == 2
    assert capsys.readouterr().err == f"error: --workers {workers}: the Ray engine needs 1 or more actors (default: one per CPU)\n"
    assert not (tmp_path / "out").exists()


def test_the_summary_notes_say_what_refinement_left_or_why_it_failed():
    from immunofold.batch import _summary_row
    from immunofold.inputs import Record

    record = Record(0, "fv", (("heavy", "QV"),), "antibody", "input.fasta:1", None)
    data = {"status": "ok", "kind": "antibody", "file": "fv.pdb", "mean_error": 1.0, "refined": True,
            "refine_message": "backbone outliers remain: distorted backbone angle N-CA-C at H112A TYR: 92°",
            "notes": ["kept the V domain"], "chains": [], "cdr3_error": {}}
    row = _summary_row(record, data)
    assert row["notes"] == "kept the V domain; backbone outliers remain: distorted backbone angle N-CA-C at H112A TYR: 92°"
    assert _summary_row(record, {**data, "refine_message": "", "notes": []})["notes"] is None


def test_an_interrupted_runs_workers_are_stopped_at_once():
    """_stop_pool ends workers busy with a long task at once (an interrupted run waited for them, and a second
    Ctrl-C then hung at exit)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from immunofold.batch import _stop_pool

    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    busy = [pool.submit(time.sleep, 60) for _ in range(2)]
    while not all(f.running() for f in busy):
        time.sleep(0.05)
    processes = list(pool._processes.values())
    start = time.perf_counter()
    _stop_pool(pool)
    assert time.perf_counter() - start < 10
    assert not any(p.is_alive() for p in processes)


def test_fast_runs_record_the_fast_sets_weights_and_a_rerun_without_it_predicts_again(tmp_path):
    """`immunofold batch --fast`: antibodies by the fast member set, nanobodies and TCRs as by default; resuming
    follows the set (a record finished by one set is predicted again by the other)."""
    from immunofold.ensemble import Ensemble

    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">ab1|H\n{AB1_H}\n>ab1|L\n{AB1_L}\n>nb1\n{NB1}\n")
    fast_version, default_version = Ensemble.packaged(fast=True).version, Ensemble.packaged().version
    assert fast_version != default_version
    code = main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--no-refine", "--fast", "--quiet"])
    assert code == 0
    summary = {row["name"]: row for row in read_csv(tmp_path / "out" / "summary.csv")}
    assert {row["status"] for row in summary.values()} == {"ok"}
    antibody, nanobody = ((tmp_path / "out" / f"{name}.pdb").read_text() for name in ("ab1", "nb1"))
    assert f"WEIGHTS {fast_version}" in antibody and f"WEIGHTS {fast_version}" in nanobody
    code = main(["batch", str(fasta), "-o", str(tmp_path / "out"), "--no-refine", "--quiet"])
    assert code == 0
    again, nanobody_again = ((tmp_path / "out" / f"{name}.pdb").read_text() for name in ("ab1", "nb1"))
    assert f"WEIGHTS {default_version}" in again
    assert again.split("\nATOM", 1)[1] != antibody.split("\nATOM", 1)[1]  # other members, other atoms
    assert nanobody_again.split("\nATOM", 1)[1] == nanobody.split("\nATOM", 1)[1]  # the same four members
