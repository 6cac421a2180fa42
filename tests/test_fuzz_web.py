"""Fuzzing the web API (hypothesis, bounded: the file runs in well under 30 s).

Property: whatever a client sends to /api/predict or /api/batch, the answer is 202 (a job) or a 4xx with a
one-line JSON {"detail", "field"}: never a 500, a traceback or a hang. Jobs never reach a model here.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT
from immunofold.web.app import UPLOAD_SUFFIXES, create_app

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOT_NAMES = ("heavy", "light", "alpha", "beta")


class NoModel:
    def number(self, *args, **kwargs):
        raise RuntimeError("no model in the fuzz tests")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "jobs.sqlite"
    app = create_app(db_path=str(db), predictor_factory=NoModel, batch_runner=lambda *a, **k: None, max_queued=10**6)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as test_client:
        yield test_client


def check(response, ok: int = 202) -> None:
    """`ok` (a job, a listing) or a 4xx with a one-line JSON message."""
    assert response.status_code == ok or 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert "Traceback" not in response.text
    if response.status_code != ok:
        assert set(body) == {"detail", "field"}, body
        assert isinstance(body["detail"], str) and body["detail"] and "\n" not in body["detail"], body


# sequences: protein-like, random unicode, near-misses of real chains, huge
protein = st.text(alphabet="ACDEFGHIKLMNPQRSTVWYXBZJUO*-: \n\t0123456789>|", max_size=300)
mutated = st.builds(
    lambda seq, i, text: seq[:i] + text + seq[i + 1 :],
    st.sampled_from([TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT]),
    st.integers(0, 110),
    st.text(max_size=3),
)
huge = st.builds(lambda letter, n: letter * n, st.sampled_from(["A", "é", "\x00", ">", "\n"]), st.integers(5_000, 40_000))
sequence = st.one_of(protein, mutated, st.text(max_size=200), huge)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_value = st.one_of(sequence, json_value)
ODD_JSON = [b'{"heavy": NaN}', b'{"kind": Infinity}', b'{"refine": 1e999}', b"[]", b"null", b'"x"', b'{"heavy": "A"' + b"A" * 20_000 + b'"}']
fasta = st.builds(
    lambda records: "".join(f">{header}\n{body}\n" for header, body in records),
    st.lists(st.tuples(st.text(max_size=30), st.one_of(protein, mutated)), max_size=4),
)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "kind": st.one_of(st.sampled_from(["antibody", "nanobody", "tcr"]), json_value),
            "name": st.one_of(st.text(max_size=2000), json_value),
            "fasta": st.one_of(fasta, field_value),
            "refine": json_value,
            **{slot: field_value for slot in SLOT_NAMES},
        },
    )
)
def test_predict_json_bodies(client, body):
    check(client.post("/api/predict", json=body))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(str.encode), st.sampled_from(ODD_JSON)),
       content_type=st.sampled_from(["application/json", "text/plain", "multipart/form-data", ""]))
def test_predict_raw_bodies(client, raw, content_type):
    check(client.post("/api/predict", content=raw, headers={"content-type": content_type}))


csv_text = st.builds(
    lambda header, rows: "\n".join([",".join(header)] + [",".join(row) for row in rows]),
    st.lists(st.sampled_from(["name", "heavy", "light", "alpha", "beta", "kind", "x", '"']), min_size=1, max_size=5),
    st.lists(st.lists(st.one_of(protein, mutated, st.text(max_size=20)), max_size=5), max_size=5),
)


@FUZZ
@given(
    filename=st.one_of(st.text(max_size=60), st.sampled_from(UPLOAD_SUFFIXES).map(lambda s: "../x" + s)),
    content=st.one_of(fasta.map(str.encode), csv_text.map(str.encode), st.binary(max_size=3000),
                      st.text(max_size=3000).map(lambda t: t.encode("utf-8", "surrogatepass"))),
    kind=st.one_of(st.sampled_from(["auto", "antibody", "nanobody", "tcr"]), st.text(max_size=20)),
    refine=st.one_of(st.sampled_from(["true", "false"]), st.text(max_size=10)),
)
def test_batch_uploads(client, filename, content, kind, refine):
    check(client.post("/api/batch", files={"file": (filename, content)}, data={"kind": kind, "refine": refine}))


@FUZZ
@given(job_id=st.text(max_size=80), limit=st.one_of(st.integers(), st.text(max_size=20)))
def test_job_lookups(client, job_id, limit):
    check(client.get("/api/jobs/" + quote(job_id, safe="")), ok=200)
    check(client.get(f"/api/jobs/{quote(job_id, safe='')}/model.pdb"), ok=200)
    check(client.get("/api/jobs", params={"limit": limit}), ok=200)
