"""Shared fixtures: a real nanobody structure (7F5G, val split) committed under tests/fixtures."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from immunofold.constants import RESTYPE_INDEX
from immunofold.io import read_chains

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
NANOBODY_PDB = os.path.join(FIXTURES, "nanobody_7f5g.pdb")
TRASTUZUMAB_HEAVY = (
    "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"
)
TRASTUZUMAB_LIGHT = (
    "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK"
)


@pytest.fixture(scope="session")
def nanobody_atoms():
    """(atom14 [N, 14, 3] Å, atom_mask [N, 14], restype [N], sequence) of the 7F5G nanobody."""
    chain = next(iter(read_chains(NANOBODY_PDB).values()))
    atom14 = torch.tensor(chain.atom14, dtype=torch.float32)
    mask = torch.tensor(chain.atom_mask)
    restype = torch.tensor([RESTYPE_INDEX[aa] for aa in chain.sequence])
    return atom14, mask, restype, chain.sequence


WEB_BASE_URL = "http://127.0.0.1:8000"  # a loopback Host header: the only kind a default web app serves


@contextlib.contextmanager
def web_clients(tmp_path, **defaults):
    """make(base_url=WEB_BASE_URL, **create_app options) -> a started TestClient on tmp_path/jobs.sqlite (options
    not given take `defaults`); every client is closed when the block ends."""
    from fastapi.testclient import TestClient

    from immunofold.web.app import create_app

    clients = []

    def make(base_url=WEB_BASE_URL, **options):
        options = {"db_path": str(tmp_path / "jobs.sqlite"), **defaults, **options}
        client = TestClient(create_app(**options), base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.__exit__(None, None, None)


def hard_problems(pdb_string: str) -> list:
    """`refine.find_problems` without the backbone outliers (twisted peptides, bent backbone angles) that a
    refined model may keep (naming them) and the clean-up does not remove: broken bonds, clashes, cis, D."""
    from immunofold.refine import SOFT_PROBLEM_KINDS, find_problems

    return [p for p in find_problems(pdb_string) if p.kind not in SOFT_PROBLEM_KINDS]


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(db, log, env=None, cwd=None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """`immunofold serve` in a subprocess of its own session on a free loopback port with job database `db`, output
    to the open file `log`; (process, base URL) once /api/health answers, else the test fails with the log."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "immunofold.cli", "serve", "--port", str(port), "--db", str(db)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.fail(f"immunofold serve did not start:\n{log.read()}")
        time.sleep(0.2)
