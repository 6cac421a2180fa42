"""`immunofold batch --engine ray` on a local Ray runtime (2 CPUs, 2 actors): on a 500-record mixed repertoire
(antibodies, nanobodies, TCRs, 25 bad records) the same outputs as the local engine; a worker killed with SIGKILL
mid-run costs nothing but time. One local-engine run of the repertoire is the reference of every test here. Skipped
when Ray is not installed."""

import os
import random
import signal

import pytest

from immunofold import ray_engine
from immunofold.batch import run_batch

from test_batch import (  # noqa: F401
    AB1_H, AB1_L, AB2_H, AB2_L, LYSOZYME, MIXED_FASTA, NB1, NB2, TCR1_A, TCR1_B, TCR2_A, TCR2_B, outputs, predictor,
    weights_env,
)

ray = pytest.importorskip("ray")

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
VARIANTS = 487  # + MIXED_FASTA's 13 records (7 good, 6 bad) = 500 records
BAD_EVERY = 25  # every 25th variant is bad: 19 + 6 = 25 bad records
KILL_VARIANTS = 48  # the worker-kill test's file: the repertoire's first 61 records
BAD_VARIANTS = (  # (name) -> FASTA entry that cannot be modelled
    lambda name: f">{name}\n{NB2[:40]}\n",  # a truncated V domain
    lambda name: f">{name}\n{NB1}XZ\n",  # letters that are not amino acids
    lambda name: f">{name}|L\n{AB1_L}\n",  # a lone light chain
    lambda name: f">{name}\n{LYSOZYME}\n",  # not an immune receptor
    lambda name: f">nb_v1\n{NB1}\n",  # a name used before (the driver's duplicate check)
)


def mutant(sequence: str, rng: random.Random) -> str:
    """A CDR3 variant: one substitution and sometimes one insertion a few residues before the J motif (so lengths
    vary and some records share a model pass)."""
    site = len(sequence) - rng.randint(13, 16)
    sequence = sequence[:site] + rng.choice(AMINO_ACIDS) + sequence[site + 1 :]
    if rng.random() < 0.3:
        sequence = sequence[:site] + rng.choice(AMINO_ACIDS) + sequence[site:]
    return sequence


def repertoire_fasta(n_variants: int, seed: int = 0) -> str:
    """MIXED_FASTA plus CDR3 variants of two antibodies, two nanobodies and two TCRs in turn, every BAD_EVERY-th
    one replaced by a bad record. The file of fewer variants is the start of the file of more."""
    rng = random.Random(seed)
    parts = [MIXED_FASTA]
    for i in range(n_variants):
        first = (i // 3) % 2 == 0  # alternate the two receptors of each kind
        if i % BAD_EVERY == BAD_EVERY - 1:
            parts.append(BAD_VARIANTS[(i // BAD_EVERY) % len(BAD_VARIANTS)](f"bad_v{i}"))
        elif i % 3 == 0:
            heavy, light = (AB1_H, AB1_L) if first else (AB2_H, AB2_L)
            parts.append(f">ab_v{i}|H\n{mutant(heavy, rng)}\n>ab_v{i}|L\n{light}\n")
        elif i % 3 == 1:
            parts.append(f">nb_v{i}\n{mutant(NB1 if first else NB2, rng)}\n")
        else:
            alpha, beta = (TCR1_A, TCR1_B) if first else (TCR2_A, TCR2_B)
            parts.append(f">tcr_v{i}|A\n{alpha}\n>tcr_v{i}|B\n{mutant(beta, rng)}\n")
    return "".join(parts)


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime for the module (2 CPUs, as `--engine ray` starts without --address)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def repertoire(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "repertoire.fasta"
    path.write_text(repertoire_fasta(VARIANTS))
    return path


@pytest.fixture(scope="module")
def local_run(repertoire, weights_env, tmp_path_factory):  # noqa: F811
    """The local engine's run of the repertoire as `immunofold batch --no-refine` does it on 2 cores: numbering in one
    worker process, the ensemble's members side by side on 2 threads of one torch thread each (the same arithmetic
    as an actor's one thread)."""
    outdir = tmp_path_factory.mktemp("local")
    report = run_batch(repertoire, outdir, refine=False, workers=1, batch_size=4, threads=2)
    return outdir, report


def first_records(outdir, n: int) -> dict:
    """`outputs(outdir)` of its first n records: their structure files, summary rows and failures.csv lines."""
    every = outputs(outdir)
    rows = every["summary.csv"][:n]
    header, *lines = every["failures.csv"].decode().splitlines(keepends=True)
    failed = sum(row["status"] != "ok" for row in rows)
    files = {row["file"] for row in rows if row["file"]}
    return {**{rel: data for rel, data in every.items() if rel in files}, "summary.csv": rows,
            "summary.parquet": every["summary.parquet"][:n], "failures.csv": "".join([header, *lines[:failed]]).encode()}


def ray_worker_pids() -> list[int]:
    """PIDs of this user's Ray actor processes running `ray_engine.RayWorker` (what `ps` shows a user)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().startswith(b"ray::RayWorker"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_ray_engine_matches_local_engine(repertoire, local_run, ray_runtime, tmp_path):
    reference, local = local_run
    assert (local.total, local.ok_total, local.failed_total) == (500, 475, 25)
    report = run_batch(repertoire, tmp_path / "ray", refine=False, batch_size=4, engine="ray", ray_workers=2)
    assert (report.total, report.ok_total, report.failed_total) == (500, 475, 25)
    assert outputs(tmp_path / "ray") == outputs(reference)  # structures byte for byte, summary but its timing


def test_killed_worker_costs_only_its_chunk(local_run, ray_runtime, tmp_path, monkeypatch):
    reference, _ = local_run
    fasta = tmp_path / "first.fasta"
    fasta.write_text(repertoire_fasta(KILL_VARIANTS))
    assert repertoire_fasta(VARIANTS).startswith(fasta.read_text())  # the reference's first records
    monkeypatch.setattr(ray_engine, "CHUNK", 6)  # several chunks per actor, so one is in flight at the kill
    killed = []

    def kill_one_worker(event, record):
        if event == "record_done" and not killed:
            pids = ray_worker_pids()
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    report = run_batch(fasta, tmp_path / "ray", refine=False, batch_size=4, engine="ray", ray_workers=2,
                       on_event=kill_one_worker)
    assert killed and killed[0] not in ray_worker_pids()
    assert report.done + report.failed == report.total == 13 + KILL_VARIANTS
    assert outputs(tmp_path / "ray") == first_records(reference, report.total)


def test_ray_engine_refines_in_the_actors(ray_runtime, predictor, tmp_path):  # noqa: F811
    fasta = tmp_path / "two.fasta"
    fasta.write_text(f">nb1\n{NB1}\n>ab2\n{AB2_H}:{AB2_L}\n")
    local = run_batch(fasta, tmp_path / "local", refine=True, workers=1, predictor=predictor, threads=1)
    remote = run_batch(fasta, tmp_path / "ray", refine=True, engine="ray", ray_workers=2)
    assert local.ok_total == remote.ok_total == 2
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_an_address_where_no_cluster_answers_is_a_one_line_error_at_once(tmp_path):
    """ray.init retried an unreachable head for minutes, silently; the run now stops before any folder is made."""
    import socket
    import time

    with socket.socket() as unused:  # a port nothing listens on: bound, never listening
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        fasta = tmp_path / "one.fasta"
        fasta.write_text(f">nb1\n{NB1}\n")
        start = time.perf_counter()
        for address, words in ((f"127.0.0.1:{port}", "no Ray cluster answers at"), ("headnode", "is not HOST:PORT")):
            with pytest.raises(ray_engine.InputError, match=words):
                run_batch(fasta, tmp_path / "out", refine=False, engine="ray", address=address)
        assert time.perf_counter() - start < ray_engine.ADDRESS_TIMEOUT_S
        with pytest.raises(ray_engine.InputError, match="--address: names a Ray cluster: add --engine ray"):
            run_batch(fasta, tmp_path / "out", refine=False, address=f"127.0.0.1:{port}")  # the local engine
    assert not (tmp_path / "out").exists()


def test_an_address_where_a_web_server_listens_is_refused_and_the_head_node_is_accepted(ray_runtime, tmp_path):
    """The dashboard's port (HTTP) passed a TCP check and then ray.init hung; Ray's GCS answers HTTP/2."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ray_engine.InputError, match="is a web server"):
            ray_engine.check_address(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    ray_engine.check_address(ray.get_runtime_context().gcs_address)  # the running head: no error


def test_ray_actors_predict_with_the_fast_set_when_the_run_asks(ray_runtime, tmp_path):
    from immunofold.ensemble import Ensemble

    fasta = tmp_path / "one.fasta"
    fasta.write_text(f">ab2\n{AB2_H}:{AB2_L}\n")
    local = run_batch(fasta, tmp_path / "local", refine=False, workers=0, threads=1, fast=True)
    remote = run_batch(fasta, tmp_path / "ray", refine=False, engine="ray", ray_workers=1, fast=True)
    assert local.ok_total == remote.ok_total == 1
    ray_files = outputs(tmp_path / "ray")
    assert ray_files == outputs(tmp_path / "local")
    assert f"WEIGHTS {Ensemble.packaged(fast=True).version}".encode() in ray_files["ab2.pdb"]
