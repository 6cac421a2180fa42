"""`immunofold serve`: every API endpoint, valid, invalid, oversized and concurrent input (FastAPI TestClient)."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import gemmi
import pytest

from fastapi.testclient import TestClient  # noqa: E402

from conftest import (  # noqa: E402
    TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT, WEB_BASE_URL, hard_problems, start_serve, web_clients,
)
from immunofold.cli import build_parser  # noqa: E402
from immunofold.sequences import InputError, number_receptor  # noqa: E402
from immunofold.web import assets as web_assets  # noqa: E402
from immunofold.web.jobs import JobStore  # noqa: E402
from immunofold.web.app import (  # noqa: E402
    MAX_SINGLE_BYTES,
    MAX_UPLOAD_BYTES,
    STATIC_DIR,
    chains_from_fasta,
    clean_name,
    create_app,
    download_stem,
)

NANOBODY = (
    "QVQLQESGGGSVQAGGSLRLSCAASGYTYRDYYMGWFRQAPGREREGVASIYTRGSREGSTRYSSSVEGRFTITLDTAKNTLYLQMNSLKPEDTAMYYCAADDRTWLPRVQLGGPRENEYNYWGQGTQVTVSS"
)
TCR_ALPHA = "QSVSQHNHHVILSEAASLELGCNYSYGGTVNLFWYVQYPGQHLQLLLKYFSGDPLVKGIKGFEAEFIKSKFSFNLRKPSVQWSDTAEYFCAVNARRNTPLVFGKGTRLSVIA"
TCR_BETA = "GITQSPKYLFRKEGQNVTLSCEQNLNHDAMYWYRQDPGQGLRLIYYSQIVNDFQKGDIAEGYSVSREKKESFPLTVTSAQKNPTAFYLCASSITLSSYNEQFFGPGTRLTVL"
DEV_WEIGHTS = "/tmp/devweights"
BASE_URL = WEB_BASE_URL
TRASTUZUMAB = {"kind": "antibody", "name": "trastuzumab", "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}


@pytest.fixture(scope="module")
def predictor():
    """One real predictor for the module: the shipped weights, else the dev weights if present."""
    from immunofold.prediction import Predictor
    from immunofold.weights import WEIGHTS_ENV, packaged_weight_files

    saved = os.environ.get(WEIGHTS_ENV)
    if not packaged_weight_files() and os.path.isdir(DEV_WEIGHTS):
        os.environ[WEIGHTS_ENV] = DEV_WEIGHTS
    try:
        yield Predictor()
    finally:
        if saved is None:
            os.environ.pop(WEIGHTS_ENV, None)
        else:
            os.environ[WEIGHTS_ENV] = saved


@pytest.fixture
def make_client(tmp_path, predictor):
    """make_client(**create_app options) -> a started TestClient on a fresh job database."""
    with web_clients(tmp_path, predictor_factory=lambda: predictor) as make:
        yield make


@pytest.fixture
def client(make_client):
    return make_client()


def wait_done(client, job_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")


class BlockingPredictor:
    """Wraps the real predictor; predictions wait until `release` is set."""

    def __init__(self, inner):
        self.inner = inner
        self.release = threading.Event()
        self.started = threading.Event()

    def number(self, *args, **kwargs):
        return self.inner.number(*args, **kwargs)

    def predict_numbered(self, *args, **kwargs):
        self.started.set()
        assert self.release.wait(30)
        return self.inner.predict_numbered(*args, **kwargs)

    def refine(self, prediction):
        return prediction


# --- pages and assets --------------------------------------------------------------------------
def test_page_and_viewer_are_served_from_the_installed_assets(client, tmp_path, monkeypatch):
    viewer = tmp_path / "assets" / web_assets.VIEWER_FILE
    viewer.parent.mkdir(parents=True)
    viewer.write_text("/* 3Dmol stand-in */")
    monkeypatch.setenv(web_assets.ASSETS_ENV, str(tmp_path / "assets"))
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/vendor/3Dmol-min.js"' in page.text and "cdn" not in page.text.lower()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/vendor/3Dmol-min.js")
    assert js.status_code == 200 and js.text == "/* 3Dmol stand-in */"
    assert "javascript" in js.headers["content-type"]
    for path in ("/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/api/health").json()["viewer_installed"] is True


def test_missing_viewer_gives_an_error_page_that_says_how_to_install(client, tmp_path, monkeypatch):
    monkeypatch.setenv(web_assets.ASSETS_ENV, str(tmp_path / "nothing-here"))
    page = client.get("/")
    assert page.status_code == 503
    assert "immunofold serve --install-assets" in page.text
    assert client.get("/vendor/3Dmol-min.js").status_code == 404
    health = client.get("/api/health").json()
    assert health["viewer_installed"] is False and health["viewer_install_command"] == "immunofold serve --install-assets"


def test_page_script_never_puts_text_into_html():
    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


# --- single predictions --------------------------------------------------------------------------
def test_predict_antibody_result_downloads_and_numbering(client):
    response = client.post("/api/predict", json={**TRASTUZUMAB, "name": "trastuzumab <Fv>/../x"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert len(job_id) == 32
    job = wait_done(client, job_id)
    assert job["status"] == "done", job
    result = job["result"]
    assert result["name"] == "trastuzumab <Fv>/../x"  # returned as data; the page inserts it as text
    assert [c["id"] for c in result["chains"]] == ["H", "L"]
    heavy = result["chains"][0]["residues"]
    assert "".join(r["aa"] for r in heavy) == TRASTUZUMAB_HEAVY
    assert {r["region"] for r in heavy} == {"FR", "CDR1", "CDR2", "CDR3"}
    assert all(27 <= r["imgt_number"] <= 38 for r in heavy if r["region"] == "CDR1")
    assert result["refined"] is False and result["cdrs"]["CDR3"] == [105, 117]
    assert result["error_calibrated"] is True  # the shipped calibrator belongs to the shipped weights

    pdb = client.get(f"/api/jobs/{job_id}/model.pdb")
    assert pdb.status_code == 200
    assert result["geometry_cleaned"] is True and hard_problems(pdb.text) == []  # real peptide bonds, no clashes
    disposition = pdb.headers["content-disposition"]
    assert disposition.startswith("attachment;") and "/" not in disposition and ".." not in disposition.split("=")[1][:3]
    structure = gemmi.read_pdb_string(pdb.text)
    first = structure[0]["H"][0]
    assert first[0].b_iso == pytest.approx(heavy[0]["error"], abs=0.01)  # B-factor = error, Å
    cif = client.get(f"/api/jobs/{job_id}/model.cif")
    assert cif.status_code == 200 and cif.text.startswith("data_")
    block = gemmi.cif.read_string(cif.text).sole_block()
    assert len(block.find_values("_atom_site.id")) == sum(1 for _ in structure[0].all())
    assert client.get(f"/api/jobs/{job_id}/results.zip").status_code == 404  # single jobs have no archive

    listed = client.get("/api/jobs").json()["jobs"]
    assert listed[0]["id"] == job_id and listed[0]["status"] == "done"


def test_single_job_carries_the_developability_profile(client, predictor):
    """Antibody: the TAP profile of the same prediction, each patch residue one of the model file's residues
    (chain, number, insertion code) for the 3D view; nanobody: TNP; TCR: none."""
    from immunofold.developability import TAP_BANDS, TNP_BANDS

    job_id = client.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    profile = wait_done(client, job_id)["result"]["developability"]
    expected = predictor.predict("antibody", {"heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}, "trastuzumab",
                                 refine=False).developability()  # fmt: skip
    assert profile["profiler"] == "TAP" and list(profile["metrics"]) == list(TAP_BANDS)
    structure = gemmi.read_pdb_string(client.get(f"/api/jobs/{job_id}/model.pdb").text)
    in_file = {(chain.name, r.seqid.num, r.seqid.icode.strip()) for chain in structure[0] for r in chain}
    for metric in expected.metrics:
        shown = profile["metrics"][metric.name]
        assert shown["value"] == pytest.approx(metric.value, abs=1e-3) and shown["flag"] == metric.flag
        assert len(shown["residues"]) == len(metric.residues)
        assert {(r["chain"], r["resi"], r["icode"]) for r in shown["residues"]} <= in_file
    assert profile["metrics"]["cdr_length"]["value"] == 47
    archive = client.get(f"/api/jobs/{job_id}/results.zip")  # batch jobs have one; a single job has its model
    assert archive.status_code == 404 and "single prediction: download its model" in archive.text

    nanobody = wait_done(client, client.post("/api/predict", json={"kind": "nanobody", "heavy": NANOBODY}).json()["id"])
    metrics = nanobody["result"]["developability"]["metrics"]
    assert list(metrics) == list(TNP_BANDS)
    cdr3 = metrics["cdr3_length"]["residues"]
    assert len(cdr3) == metrics["cdr3_length"]["value"] and any(r["icode"] for r in cdr3)  # long CDR3: 111A, 112A...
    tcr = {"kind": "tcr", "alpha": TCR_ALPHA, "beta": TCR_BETA}
    assert wait_done(client, client.post("/api/predict", json=tcr).json()["id"])["result"]["developability"] is None


def test_predict_from_fasta_assigns_chains_by_type(client):
    fasta = f">light of trastuzumab\n{TRASTUZUMAB_LIGHT}\n>heavy\n{TRASTUZUMAB_HEAVY[:60]}\n{TRASTUZUMAB_HEAVY[60:]}\n"
    job = wait_done(client, client.post("/api/predict", json={"kind": "antibody", "fasta": fasta}).json()["id"])
    assert job["status"] == "done" and job["name"] == "light"
    assert job["result"]["chains"][0]["sequence"] == TRASTUZUMAB_HEAVY
    nanobody = client.post("/api/predict", json={"kind": "nanobody", "name": "vhh", "fasta": f">vhh\n{NANOBODY}"})
    job = wait_done(client, nanobody.json()["id"])
    assert job["status"] == "done" and [c["id"] for c in job["result"]["chains"]] == ["H"]


def test_an_scfv_in_the_fasta_box_is_split_into_its_two_domains_as_batch_does(client):
    linker = "GGGGS" * 3
    for scfv in (TRASTUZUMAB_LIGHT + linker + TRASTUZUMAB_HEAVY, TRASTUZUMAB_HEAVY + linker + TRASTUZUMAB_LIGHT):
        job = wait_done(client, client.post("/api/predict", json={"kind": "antibody", "fasta": f">scfv\n{scfv}"}).json()["id"])
        assert job["status"] == "done" and job["name"] == "scfv"
        assert [c["sequence"] for c in job["result"]["chains"]] == [TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT]
    one_domain = client.post("/api/predict", json={"kind": "antibody", "fasta": f">vh\n{TRASTUZUMAB_HEAVY}"})
    assert one_domain.status_code == 422 and "needs 2 FASTA chain(s) (heavy + light), found 1" in one_domain.json()["detail"]


def cli_message(kind, chains, name="model"):
    with pytest.raises(InputError) as caught:
        number_receptor(kind, chains, name)
    return str(caught.value)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY[:40] + "XB" + TRASTUZUMAB_HEAVY[42:], "light": TRASTUZUMAB_LIGHT}, "heavy"),
        ({"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY, "light": ""}, "light"),
        ({"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_HEAVY}, "light"),
        ({"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY, "light": "DIQMTQSPSSLSASVGDRVT"}, "light"),
        ({"kind": "tcr", "alpha": TRASTUZUMAB_HEAVY, "beta": TRASTUZUMAB_LIGHT}, "alpha"),
        ({"kind": "nanobody", "heavy": "ACDEFGHIKLMNPQRSTVWY" * 5}, "heavy"),
    ],
)
def test_bad_sequences_are_refused_next_to_their_field_with_the_cli_message(client, body, field):
    response = client.post("/api/predict", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["field"] == field
    chains = {k: v for k, v in body.items() if k in ("heavy", "light", "alpha", "beta") and v}
    assert error["detail"] == cli_message(body["kind"], chains)
    assert "\n" not in error["detail"]
    assert client.get("/api/jobs").json()["jobs"] == []  # nothing was queued


@pytest.mark.parametrize(
    "body, field, needle",
    [
        ({"kind": "antibody", "fasta": f">a\n{TRASTUZUMAB_HEAVY}\n"}, "fasta", "needs 2 FASTA chain(s)"),
        ({"kind": "antibody", "fasta": f">h\n{TRASTUZUMAB_HEAVY}\n>l\nDIQMTQ1234!!\n"}, "fasta", "digit '1' at position 7"),
        ({"kind": "fish", "heavy": TRASTUZUMAB_HEAVY}, "kind", "kind"),
        ({"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT, "refine": "maybe"}, "refine", "refine"),
        ({"kind": "antibody", "heavy": "A" * 10_001, "light": TRASTUZUMAB_LIGHT}, "heavy", "heavy"),
        ({"kind": "antibody", "name": "n" * 1001, "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}, "name", "name"),
    ],
)
def test_malformed_requests_name_their_field(client, body, field, needle):
    response = client.post("/api/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and needle in response.json()["detail"]


def test_not_json_is_refused(client):
    for body, offset in ((b"heavy=EVQL", 0), (b'{"kind": "antibody", "heavy":', 29)):
        response = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["field"] is None  # not a form field
        assert response.json()["detail"].startswith("the request body is not valid JSON (")
        assert response.json()["detail"].endswith(f"at character {offset})")


def test_an_option_the_api_does_not_have_is_refused_not_ignored(client):
    response = client.post("/api/predict", json={**TRASTUZUMAB, "numbering": "kabat"})
    assert response.status_code == 422
    assert response.json()["field"] == "numbering" and response.json()["detail"].startswith("numbering: ")


def test_oversized_requests_are_refused_before_parsing(client):
    big = {"kind": "antibody", "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT, "notes": "x" * MAX_SINGLE_BYTES}
    response = client.post("/api/predict", json=big)
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced on the bytes received
        for _ in range(MAX_SINGLE_BYTES // 65536 + 2):
            yield b" " * 65536

    response = client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    upload = io.BytesIO(b">x\n" + b"A" * (MAX_UPLOAD_BYTES + 1024))
    response = client.post("/api/batch", files={"file": ("big.fasta", upload, "text/plain")})
    assert response.status_code == 413
    assert client.get("/api/jobs").json()["jobs"] == []


def test_unknown_jobs_and_unfinished_downloads(client, predictor, make_client, tmp_path):
    assert client.get("/api/jobs/not-a-job").status_code == 404
    assert client.get("/api/jobs/" + "0" * 32).status_code == 404
    assert client.get("/api/jobs/" + "0" * 32 + "/model.pdb").status_code == 404
    assert client.get("/api/jobs/..%2F..%2Fetc%2Fpasswd/model.pdb").status_code == 404

    blocking = BlockingPredictor(predictor)
    slow = make_client(db_path=str(tmp_path / "slow.sqlite"), predictor_factory=lambda: blocking)
    job_id = slow.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    assert blocking.started.wait(30)
    running = slow.get(f"/api/jobs/{job_id}").json()
    assert running["status"] == "running" and running["stage"] == "predicting"
    assert slow.get(f"/api/jobs/{job_id}/model.pdb").status_code == 409
    queued = slow.get(f"/api/jobs/{slow.post('/api/predict', json=TRASTUZUMAB).json()['id']}").json()
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    t0 = time.monotonic()
    assert slow.get("/api/health").status_code == 200  # responsive while a job runs
    assert time.monotonic() - t0 < 2
    blocking.release.set()
    assert wait_done(slow, job_id)["status"] == "done"
    assert wait_done(slow, queued["id"])["status"] == "done"


def test_concurrent_submissions_from_several_tabs(client):
    bodies = [
        TRASTUZUMAB,
        {"kind": "nanobody", "name": "vhh", "heavy": NANOBODY},
        {**TRASTUZUMAB, "name": "tab3"},
        {"kind": "nanobody", "name": "bad", "heavy": "EVQLVES"},
        {"kind": "nanobody", "name": "tab5", "heavy": NANOBODY},
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/api/predict", json=body), bodies))
    assert [r.status_code for r in responses] == [202, 202, 202, 422, 202]
    ids = [r.json()["id"] for r in responses if r.status_code == 202]
    assert len(set(ids)) == 4
    jobs = [wait_done(client, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["done"] * 4
    assert [job["name"] for job in jobs] == ["trastuzumab", "vhh", "tab3", "tab5"]
    assert len(jobs[1]["result"]["chains"]) == 1 and len(jobs[2]["result"]["chains"]) == 2


def test_finished_and_unfinished_jobs_survive_a_restart(make_client, tmp_path, predictor):
    db = str(tmp_path / "restart.sqlite")
    first = make_client(db_path=db)
    job_id = first.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    assert wait_done(first, job_id)["status"] == "done"
    pdb = first.get(f"/api/jobs/{job_id}/model.pdb").text
    first.__exit__(None, None, None)
    # a job the previous server accepted but never finished
    store = JobStore(db)
    request = {"kind": "nanobody", "name": "left over", "chains": {"heavy": NANOBODY}, "refine": False}
    pending = store.create("single", "left over", request, total=1)
    store.update(pending, status="running", stage="predicting")

    second = make_client(db_path=db)
    assert second.get(f"/api/jobs/{job_id}/model.pdb").text == pdb
    assert wait_done(second, pending)["status"] == "done"


def test_a_stopping_server_ends_its_running_batch_and_the_next_one_runs_it_again(make_client, tmp_path):
    """Shutting down waits for the running batch, which stops at its next record (no job thread outlives the
    server's claim on the database); the next server runs the job again from its upload."""
    from immunofold.inputs import parse_input

    started, calls = threading.Event(), []

    def slow_batch(input_path, outdir, on_event=None, **options):
        calls.append(0)
        for record in parse_input(input_path):
            started.set()
            time.sleep(0.05)
            calls[-1] += 1
            on_event("record_done", record)
        with open(os.path.join(outdir, "summary.csv"), "w") as handle:
            handle.write("name\n")

    db = str(tmp_path / "stop.sqlite")
    first = make_client(db_path=db, batch_runner=slow_batch)
    fasta = "".join(f">nb{i}\n{NANOBODY}\n" for i in range(400)).encode()
    job_id = first.post("/api/batch", files={"file": ("many.fasta", fasta)}).json()["id"]
    assert started.wait(30)
    t0 = time.monotonic()
    first.__exit__(None, None, None)  # the server's lifespan shutdown
    assert time.monotonic() - t0 < 10
    assert 1 <= calls[0] < 400  # stopped at a record, not run to the end
    left = JobStore(db).get(job_id)
    assert left["status"] == "running" and left["stage"] == "stopped with the server; runs again at its next start"

    second = make_client(db_path=db, batch_runner=slow_batch)
    assert wait_done(second, job_id, timeout=120)["status"] == "done"
    assert calls[1] == 400


def test_refined_prediction(client):
    job_id = client.post("/api/predict", json={**TRASTUZUMAB, "refine": True}).json()["id"]
    job = wait_done(client, job_id, timeout=120)
    assert job["status"] == "done" and job["result"]["refined"] is True, job["result"]["refine_message"]
    assert "REFINED YES" in client.get(f"/api/jobs/{job_id}/model.pdb").text


def test_full_queue_refuses_new_jobs_with_429(make_client, predictor, tmp_path):
    blocking = BlockingPredictor(predictor)
    client = make_client(db_path=str(tmp_path / "full.sqlite"), predictor_factory=lambda: blocking, max_queued=2)
    first = client.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    assert client.post("/api/predict", json=TRASTUZUMAB).status_code == 202
    refused = client.post("/api/predict", json=TRASTUZUMAB)
    assert refused.status_code == 429 and "too many single jobs waiting (2)" in refused.json()["detail"]
    blocking.release.set()
    assert wait_done(client, first)["status"] == "done"


# --- database faults ---------------------------------------------------------------------------------
def set_immutable(path, on: bool) -> bool:
    """chattr +i / -i: the kernel then refuses to open the file for writing, even to root (ext4, xfs, btrfs)."""
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


def test_read_only_database_gives_503_fails_the_running_job_and_recovers(make_client, predictor, tmp_path):
    db = tmp_path / "ro.sqlite"
    blocking = BlockingPredictor(predictor)
    client = make_client(db_path=str(db), predictor_factory=lambda: blocking)
    job_id = client.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    assert blocking.started.wait(30)
    if not set_immutable(db, True):
        pytest.skip("chattr +i is not available here (needs root on ext4/xfs/btrfs): no way to make the file read-only to root")
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # writes really fail, also for root
            with sqlite3.connect(db) as other:
                other.execute("UPDATE jobs SET name = 'x'")
        health = client.get("/api/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert health.json()["problem"] == f"job database {db} is read-only"
        refused = client.post("/api/predict", json=TRASTUZUMAB)
        assert refused.status_code == 503 and refused.json() == {"detail": f"job database {db} is read-only", "field": None}
        blocking.release.set()
        job = wait_done(client, job_id)
        assert job["status"] == "failed" and job["error"] == f"job database {db} is read-only"
        assert client.get("/api/jobs").json()["jobs"][0]["status"] == "failed"
    finally:
        set_immutable(db, False)
    assert client.get("/api/health").json()["status"] == "ok"
    assert JobStore(db).get(job_id)["status"] == "failed"  # the failure reached the file once it was writable
    again = client.post("/api/predict", json=TRASTUZUMAB)
    assert again.status_code == 202 and wait_done(client, again.json()["id"])["status"] == "done"


def test_deleted_database_gives_503_and_recovers_when_restored(make_client, tmp_path):
    db = tmp_path / "gone.sqlite"
    client = make_client(db_path=str(db))
    job_id = client.post("/api/predict", json=TRASTUZUMAB).json()["id"]
    assert wait_done(client, job_id)["status"] == "done"
    moved = tmp_path / "moved.sqlite"
    db.rename(moved)
    missing = f"job database {db} is missing (deleted or moved while the server ran?): restore it, or restart the server for a new one"
    assert client.get("/api/health").json()["problem"] == missing
    for response in (client.get("/api/jobs"), client.get(f"/api/jobs/{job_id}"), client.post("/api/predict", json=TRASTUZUMAB)):
        assert response.status_code == 503 and response.json()["detail"] == missing
    assert not db.exists()  # no empty database was created in its place
    moved.rename(db)
    assert client.get("/api/health").status_code == 200
    assert client.get(f"/api/jobs/{job_id}").json()["status"] == "done"


# --- a big batch does not hold up single predictions ----------------------------------------------------
def test_single_job_behind_a_200_record_batch_finishes_in_seconds(make_client, tmp_path):
    from immunofold.inputs import parse_input

    release, started = threading.Event(), threading.Event()

    def slow_batch(input_path, outdir, on_event=None, **options):
        """Stands in for run_batch: the 200 records take as long as the test says."""
        for record in parse_input(input_path):
            started.set()
            assert release.wait(60)
            on_event("record_done", record)
        with open(os.path.join(outdir, "summary.csv"), "w") as handle:
            handle.write("name\n")

    client = make_client(db_path=str(tmp_path / "busy.sqlite"), batch_runner=slow_batch)
    fasta = "".join(f">nb{i}\n{NANOBODY}\n" for i in range(200)).encode()
    batch = client.post("/api/batch", files={"file": ("many.fasta", fasta)}).json()
    assert started.wait(30) and client.get(f"/api/jobs/{batch['id']}").json()["total"] == 200
    t0 = time.monotonic()
    single = wait_done(client, client.post("/api/predict", json=TRASTUZUMAB).json()["id"], timeout=30)
    elapsed = time.monotonic() - t0
    assert single["status"] == "done" and elapsed < 20, elapsed
    assert client.get(f"/api/jobs/{batch['id']}").json()["status"] == "running"  # the batch was still going
    release.set()
    assert wait_done(client, batch["id"])["status"] == "done"


# --- batch uploads --------------------------------------------------------------------------------
def test_batch_upload_gives_one_zip_with_summary(client):
    fasta = (
        f">trastuzumab|H\n{TRASTUZUMAB_HEAVY}\n>trastuzumab|L\n{TRASTUZUMAB_LIGHT}\n"
        f">vhh\n{NANOBODY}\n>not_a_receptor\n{'ACDEFGHIKLMNPQRSTVWY' * 5}\n"
    )
    response = client.post(
        "/api/batch",
        files={"file": ("../../my batch.fasta", fasta.encode(), "text/plain")},
        data={"kind": "auto", "refine": "false"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["name"] == "my batch"
    job = wait_done(client, job_id, timeout=120)
    assert job["status"] == "done", job
    assert job["total"] == 3 and job["done"] == 3
    result = job["result"]
    assert result["n_ok"] == 2 and result["n_failed"] == 1
    assert result["summary_header"][0] == "name" and len(result["summary"]) >= 2
    assert result["failures"][0][0] == "not_a_receptor"
    archive = client.get(f"/api/jobs/{job_id}/results.zip")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    assert archive.headers["content-disposition"] == 'attachment; filename="my_batch_results.zip"'
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        names = set(zf.namelist())
        assert {"immunofold_results/summary.csv", "immunofold_results/failures.csv"} <= names
        assert {"immunofold_results/trastuzumab.pdb", "immunofold_results/vhh.pdb"} <= names
        assert not any("/." in name for name in names)
        vhh = zf.read("immunofold_results/vhh.pdb").decode()
        assert "REMARK 250" in vhh and "GEOMETRY CLEANED" in vhh
        assert hard_problems(vhh) == [] and hard_problems(zf.read("immunofold_results/trastuzumab.pdb").decode()) == []


def test_batch_csv_upload(client):
    csv_text = f"name,heavy,light\ntz,{TRASTUZUMAB_HEAVY},{TRASTUZUMAB_LIGHT}\n"
    response = client.post("/api/batch", files={"file": ("set.csv", csv_text.encode(), "text/csv")})
    assert response.status_code == 202, response.text
    job = wait_done(client, response.json()["id"], timeout=120)
    assert job["status"] == "done" and job["result"]["n_ok"] == 1


@pytest.mark.parametrize(
    "filename, content, needle",
    [
        ("run.exe", b">a\nEVQL\n", "expected a FASTA, CSV, TSV or AIRR"),
        ("empty.fasta", b"   \n", "empty"),
        ("binary.fasta", b"\xff\xfe\x00\x01" * 10, "not a text file"),
        ("nocols.csv", b"foo,bar\n1,2\n", "file:"),
    ],
)
def test_bad_batch_uploads_are_refused_next_to_the_file_field(client, filename, content, needle):
    response = client.post("/api/batch", files={"file": (filename, content, "application/octet-stream")})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "file" and needle in response.json()["detail"]


def test_batch_requires_a_file_and_a_known_kind(client):
    assert client.post("/api/batch").json()["field"] == "file"
    response = client.post("/api/batch", files={"file": ("a.fasta", b">a\nEVQL\n")}, data={"kind": "fish"})
    assert response.status_code == 422 and response.json()["field"] == "kind"


def test_batch_unavailable_is_reported(make_client, tmp_path, monkeypatch):
    from immunofold.web import jobs

    monkeypatch.setattr(jobs.JobRunner, "batch_runner", lambda self: None)
    client = make_client(db_path=str(tmp_path / "nobatch.sqlite"))
    response = client.post("/api/batch", files={"file": ("a.fasta", b">a\nEVQL\n")})
    assert response.status_code == 503 and response.json()["field"] == "file"


# --- helpers and the command line -------------------------------------------------------------------
def test_names_and_file_stems_are_cleaned():
    assert clean_name("  a\nb\t<c>\x00 ") == "a b <c>"
    assert clean_name("") == "model" and len(clean_name("x" * 500)) == 80
    assert download_stem("../../etc/passwd") == "etc_passwd"
    assert download_stem("<script>") == "script" and download_stem("...") == "model"
    with pytest.raises(InputError, match="needs 2 FASTA"):
        chains_from_fasta("tcr", ">a\nAAA\n", "model")


def test_serve_command_defaults_to_loopback(tmp_path, monkeypatch):
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.install_assets) == ("127.0.0.1", 8000, False)
    args = build_parser().parse_args(["serve", "--port", "9001", "--db", str(tmp_path / "j.sqlite")])
    assert args.port == 9001
    # the loopback-only server refuses other Host headers (DNS rebinding)
    client = TestClient(create_app(db_path=str(tmp_path / "h.sqlite"), allowed_hosts=["127.0.0.1", "localhost"]))
    assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/api/health", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_the_fasta_box_and_chain_fields_together_are_refused_not_half_ignored(client):
    response = client.post("/api/predict", json={"kind": "antibody", "fasta": f">x|H\n{TRASTUZUMAB_HEAVY}\n>x|L\n{TRASTUZUMAB_LIGHT}\n",
                                                 "heavy": TRASTUZUMAB_HEAVY})
    assert response.status_code == 422
    assert "give either the FASTA box or the chain fields (heavy), not both" in response.text


def test_the_page_template_redirects_to_the_page_that_carries_the_token(client):
    response = client.get("/static/index.html", follow_redirects=False)
    assert response.status_code == 308 and response.headers["location"] == "/"


# --- the serve command's own life cycle (a subprocess, as users run it) ------------------------------------------
def test_ctrl_c_stops_the_server_and_its_batch_and_frees_the_database(tmp_path):
    """Ctrl-C on `immunofold serve` with a batch running: the process ends within seconds (the batch stops at its
    next record), the job database is free for the next server, and the job is left to run again."""
    import json
    import signal
    import urllib.request

    from immunofold.web.jobs import claim_database

    db = tmp_path / "jobs.sqlite"
    log = open(tmp_path / "serve.log", "w+")
    process, url = start_serve(db, log)
    try:
        fasta = "".join(f">nb{i}\n{NANOBODY}\n" for i in range(300)).encode()
        boundary = "immunofoldtestboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"many.fasta\"\r\n\r\n"
                .encode() + fasta + f"\r\n--{boundary}--\r\n".encode())
        request = urllib.request.Request(f"{url}/api/batch", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            job_id = json.load(response)["id"]
        deadline = time.monotonic() + 120
        while JobStore(db).get(job_id)["done"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log.seek(0)
    assert "Traceback" not in log.read()
    job = JobStore(db).get(job_id)
    assert job["status"] == "running" and 1 <= job["done"] < 300  # left for the next start, not run to the end
    claim_database(db).close()  # free: no thread of the stopped server holds it
