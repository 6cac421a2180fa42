"""`immunofold batch --engine ray` on a local Ray runtime (2 CPUs, 2 actors): the same outputs as the local engine,
a worker killed with SIGKILL mid-run costs nothing but time. Skipped when Ray is not installed."""

import os
import random
import signal

import pytest

from immunofold import ray_engine
from immunofold.batch import run_batch

from test_batch import (  # noqa: F401
    AB1_H, AB1_L, AB2_H, AB2_L, MIXED_FASTA, NB1, NB2, TCR1_A, TCR1_B, outputs, predictor, weights_env,
)

ray = pytest.importorskip("ray")

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def mutant(sequence: str, rng: random.Random) -> str:
    """A CDR3 variant: one substitution and sometimes one insertion a few residues before the J motif (so lengths
    vary and some records share a model pass)."""
    site = len(sequence) - rng.randint(13, 16)
    sequence = sequence[:site] + rng.choice(AMINO_ACIDS) + sequence[site + 1 :]
    if rng.random() < 0.3:
        sequence = sequence[:site] + rng.choice(AMINO_ACIDS) + sequence[site:]
    return sequence


def repertoire_fasta(n_variants: int, seed: int = 0) -> str:
    """MIXED_FASTA (7 good, 6 bad records) plus CDR3 variants of an antibody, a nanobody and a TCR, and bad ones."""
    rng = random.Random(seed)
    parts = [MIXED_FASTA]
    for i in range(n_variants):
        choice = i % 4
        if choice == 0:
            parts.append(f">ab_v{i}|H\n{mutant(AB1_H, rng)}\n>ab_v{i}|L\n{AB1_L}\n")
        elif choice == 1:
            parts.append(f">nb_v{i}\n{mutant(NB1, rng)}\n")
        elif choice == 2:
            parts.append(f">tcr_v{i}|A\n{TCR1_A}\n>tcr_v{i}|B\n{mutant(TCR1_B, rng)}\n")
        else:
            parts.append(f">nb2_v{i}\n{mutant(NB2, rng)}\n" if i % 8 == 3 else f">bad_v{i}\n{NB2[:40]}\n")
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
    path.write_text(repertoire_fasta(48))
    return path


@pytest.fixture(scope="module")
def local_run(repertoire, predictor, tmp_path_factory):  # noqa: F811
    outdir = tmp_path_factory.mktemp("local")
    report = run_batch(repertoire, outdir, refine=False, workers=0, batch_size=4, predictor=predictor, threads=1)
    return outdir, report


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
    report = run_batch(repertoire, tmp_path / "ray", refine=False, batch_size=4, engine="ray", ray_workers=2)
    assert (report.total, report.ok_total, report.failed_total) == (local.total, local.ok_total, local.failed_total)
    assert report.ok_total > 30 and report.failed_total > 10
    assert outputs(tmp_path / "ray") == outputs(reference)  # structures byte for byte, summary but its timing


def test_killed_worker_costs_only_its_chunk(repertoire, local_run, ray_runtime, tmp_path, monkeypatch):
    reference, _ = local_run
    monkeypatch.setattr(ray_engine, "CHUNK", 6)  # several chunks per actor, so one is in flight at the kill
    killed = []

    def kill_one_worker(event, record):
        if event == "record_done" and not killed:
            pids = ray_worker_pids()
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    report = run_batch(repertoire, tmp_path / "ray", refine=False, batch_size=4, engine="ray", ray_workers=2,
                       on_event=kill_one_worker)
    assert killed and killed[0] not in ray_worker_pids()
    assert report.done + report.failed == report.total
    assert outputs(tmp_path / "ray") == outputs(reference)


def test_ray_engine_refines_in_the_actors(ray_runtime, predictor, tmp_path):  # noqa: F811
    fasta = tmp_path / "two.fasta"
    fasta.write_text(f">nb1\n{NB1}\n>ab2\n{AB2_H}:{AB2_L}\n")
    local = run_batch(fasta, tmp_path / "local", refine=True, workers=1, predictor=predictor, threads=1)
    remote = run_batch(fasta, tmp_path / "ray", refine=True, engine="ray", ray_workers=2)
    assert local.ok_total == remote.ok_total == 2
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")
