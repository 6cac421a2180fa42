"""`immunofold serve` against hostile pages and networks: cross-site requests, Host headers, the API token,
security headers on every response, no CDN docs, and the `serve` command's host policy (no model needed)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from conftest import TRASTUZUMAB_HEAVY, TRASTUZUMAB_LIGHT, WEB_BASE_URL, web_clients
from immunofold.cli import build_parser
from immunofold.web import server as web_server
from immunofold.web.security import SECURITY_HEADERS, TOKEN_COOKIE, host_name, is_loopback
from immunofold.web.app import MAX_SINGLE_BYTES, create_app

BASE_URL = WEB_BASE_URL
ANTIBODY = {"kind": "antibody", "name": "tz", "heavy": TRASTUZUMAB_HEAVY, "light": TRASTUZUMAB_LIGHT}
FASTA = f">tz|H\n{TRASTUZUMAB_HEAVY}\n>tz|L\n{TRASTUZUMAB_LIGHT}\n".encode()


class NoModel:
    """A predictor that is never asked to predict in these tests (jobs fail fast if they are)."""

    def number(self, *args, **kwargs):
        raise RuntimeError("no model in the security tests")


@pytest.fixture
def make_client(tmp_path):
    with web_clients(tmp_path, predictor_factory=NoModel, batch_runner=lambda *args, **kwargs: None) as make:
        yield make


def page_token(client) -> str:
    return client.app.state.csrf_token


def assert_one_line_json(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "field"} and body["detail"] and "\n" not in body["detail"]
    return body["detail"]


# --- item 12: cross-site requests ----------------------------------------------------------------
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1.evil.example:8000"])
def test_state_changing_requests_from_another_origin_are_refused(make_client, origin):
    client = make_client()
    headers = {"Origin": origin, "X-CSRF-Token": page_token(client)}  # even with a stolen token
    detail = assert_one_line_json(client.post("/api/predict", json=ANTIBODY, headers=headers), 403)
    assert "cross-site" in detail
    batch = client.post("/api/batch", files={"file": ("x.fasta", FASTA)}, headers=headers)
    assert_one_line_json(batch, 403)
    assert client.get("/api/jobs").json()["jobs"] == []


def test_foreign_referer_and_sec_fetch_site_are_refused(make_client):
    client = make_client()
    token = {"X-CSRF-Token": page_token(client)}
    refused = client.post("/api/predict", json=ANTIBODY, headers={**token, "Referer": "http://evil.example/page"})
    assert "Referer" in assert_one_line_json(refused, 403)
    refused = client.post("/api/predict", json=ANTIBODY, headers={**token, "Sec-Fetch-Site": "cross-site"})
    assert "Sec-Fetch-Site" in assert_one_line_json(refused, 403)


def test_browser_requests_need_the_page_token(make_client):
    client = make_client()
    same_origin = {"Origin": BASE_URL, "Sec-Fetch-Site": "same-origin"}
    missing = client.post("/api/predict", json=ANTIBODY, headers=same_origin)
    assert "X-CSRF-Token" in assert_one_line_json(missing, 403)
    wrong = client.post("/api/predict", json=ANTIBODY, headers={**same_origin, "X-CSRF-Token": "x" * 43})
    assert_one_line_json(wrong, 403)
    assert client.get("/api/jobs").json()["jobs"] == []
    accepted = client.post("/api/predict", json=ANTIBODY, headers={**same_origin, "X-CSRF-Token": page_token(client)})
    assert accepted.status_code == 202, accepted.text
    batch = client.post("/api/batch", files={"file": ("x.fasta", FASTA)}, headers={**same_origin, "X-CSRF-Token": page_token(client)})
    assert batch.status_code == 202, batch.text


def test_the_page_carries_its_token_and_the_script_sends_it(make_client, tmp_path, monkeypatch):
    from immunofold.web import assets as web_assets
    from immunofold.web.app import STATIC_DIR

    viewer = tmp_path / "assets" / web_assets.VIEWER_FILE
    viewer.parent.mkdir(parents=True)
    viewer.write_text("/* 3Dmol stand-in */")
    monkeypatch.setenv(web_assets.ASSETS_ENV, str(tmp_path / "assets"))
    client = make_client()
    page = client.get("/")
    assert f'<meta name="csrf-token" content="{page_token(client)}">' in page.text
    assert page.headers["cache-control"] == "no-store"
    script = (STATIC_DIR / "app.js").read_text()
    assert script.count('"X-CSRF-Token": CSRF_TOKEN') == 2  # /api/predict and /api/batch


def test_scripts_without_browser_headers_need_no_page_token(make_client):
    client = make_client()  # curl and Python clients send no Origin/Referer/Sec-Fetch-*: no page to forge them
    assert client.post("/api/predict", json=ANTIBODY).status_code == 202


# --- item 13: Host header check, on loopback and off it ------------------------------------------
def test_host_header_check_cannot_be_turned_off(make_client):
    client = make_client()  # default: loopback names only
    detail = assert_one_line_json(client.get("/api/health", headers={"host": "evil.example"}), 400)
    assert "evil.example" in detail and "--allowed-host" in detail
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/api/health", headers={"host": "[::1]:8000"}).status_code == 200
    for allowed in ([], ["*"]):
        with pytest.raises(ValueError, match="cannot be turned off"):
            with TestClient(create_app(db_path=":memory:", allowed_hosts=allowed)) as bad:
                bad.get("/api/health")


def test_serve_off_loopback_warns_keeps_the_host_check_and_needs_a_token(monkeypatch, capsys, tmp_path):
    started = {}

    def fake_run(app, host, port, log_level):
        started.update(app=app, host=host, port=port)

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.delenv(web_server.TOKEN_ENV, raising=False)
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--allowed-host", "lab-server.example", "--db", str(tmp_path / "j.sqlite")]
    )
    assert args.handler(args) == 0
    out, err = capsys.readouterr()
    assert "warning: --host 0.0.0.0" in err and "lab-server.example" in err
    token = out.split("?token=")[1].split()[0]
    assert out.startswith(f"immunofold: http://lab-server.example:8000/?token={token}") and len(token) >= 30
    with TestClient(started["app"], base_url="http://lab-server.example:8000") as client:
        assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400
        assert_one_line_json(client.get("/api/health"), 401)
        assert client.get("/api/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_serve_refuses_a_wildcard_allowed_host_and_bad_tokens(capsys, tmp_path):
    for extra in (["--allowed-host", "*"], ["--token", "short"], ["--token", "has space and;semicolon-0123456789"]):
        args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--db", str(tmp_path / "j.sqlite"), *extra])
        assert args.handler(args) == 2
        assert capsys.readouterr().err.startswith("error: ")


def test_serve_on_loopback_needs_no_token(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    monkeypatch.delenv(web_server.TOKEN_ENV, raising=False)
    args = build_parser().parse_args(["serve", "--db", str(tmp_path / "j.sqlite")])
    assert args.handler(args) == 0
    out, err = capsys.readouterr()
    assert "token" not in out and "warning: --host" not in err


def test_host_names():
    assert [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "0.0.0.0", "10.0.0.1")] == [
        True, True, True, True, True, False, False,
    ]
    assert host_name("LocalHost:8000") == "localhost" and host_name("[::1]:8000") == "::1" and host_name("::1") == "::1"


# --- item 17: the API token -----------------------------------------------------------------------
def test_with_a_token_every_api_call_needs_it(make_client, tmp_path, monkeypatch):
    from immunofold.web import assets as web_assets

    viewer = tmp_path / "assets" / web_assets.VIEWER_FILE
    viewer.parent.mkdir(parents=True)
    viewer.write_text("/* 3Dmol stand-in */")
    monkeypatch.setenv(web_assets.ASSETS_ENV, str(tmp_path / "assets"))
    token = "t0ken-for-the-tests-0123456789"
    client = make_client(api_token=token)
    for method, path in (("get", "/api/health"), ("get", "/api/jobs"), ("get", "/api/jobs/" + "0" * 32), ("get", "/"),
                         ("get", "/api/openapi.json"), ("post", "/api/predict")):
        response = getattr(client, method)(path)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/jobs", headers=bearer).status_code == 200
    assert client.post("/api/predict", json=ANTIBODY, headers=bearer).status_code == 202
    assert client.get("/static/app.js").status_code == 200  # public code needs no token
    # the printed address sets an HttpOnly, SameSite=Strict cookie and takes the token out of the address bar
    opened = client.get(f"/?token={token}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{TOKEN_COOKIE}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/api/jobs").status_code == 200  # the client now sends the cookie, as the page does
    assert client.get("/").status_code == 200
    # a cookie alone (ambient) is no licence for a cross-site or token-less browser POST
    assert client.post("/api/predict", json=ANTIBODY, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/api/predict", json=ANTIBODY, headers={"Origin": BASE_URL}).status_code == 403


# --- item 16: security headers on every response; no CDN docs --------------------------------------
def test_every_response_carries_the_security_headers(make_client, monkeypatch):
    client = make_client()
    responses = {
        "200": client.get("/api/health"),
        "202": client.post("/api/predict", json=ANTIBODY),
        "400 host": client.get("/api/health", headers={"host": "evil.example"}),
        "400 length": client.post("/api/predict", content=b"{}", headers={"content-length": "abc", "content-type": "application/json"}),
        "403": client.post("/api/predict", json=ANTIBODY, headers={"Origin": "http://evil.example"}),
        "404": client.get("/no/such/page"),
        "404 job": client.get("/api/jobs/" + "0" * 32),
        "405": client.delete("/api/jobs"),
        "413": client.post("/api/predict", content=b" " * (MAX_SINGLE_BYTES + 1), headers={"content-type": "application/json"}),
        "413 batch": client.post("/api/batch", files={"file": ("big.fasta", io.BytesIO(b"A" * (21 * 1024 * 1024)))}),
        "422": client.post("/api/predict", json={"kind": "fish"}),
        "static": client.get("/static/style.css"),
    }
    for label, response in responses.items():
        expected = int(label[:3]) if label[0].isdigit() else 200
        assert response.status_code == expected, (label, response.status_code, response.text[:200])
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (label, header)
        if label[0] in "45":
            assert_one_line_json(response, int(label[:3]))
    assert "frame-ancestors 'none'" in SECURITY_HEADERS["Content-Security-Policy"]


def test_internal_errors_are_one_line_json_with_the_headers(make_client, monkeypatch):
    from immunofold.web import jobs

    def broken(self, limit=50):
        raise KeyError("boom\nsecond line")

    monkeypatch.setattr(jobs.JobStore, "list", broken)
    app = make_client().app
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False) as client:
        response = client.get("/api/jobs")
    assert assert_one_line_json(response, 500) == "internal error (KeyError); see the server log"
    for header, value in SECURITY_HEADERS.items():
        assert response.headers.get(header) == value


def test_api_docs_are_not_loaded_from_a_cdn(make_client):
    client = make_client()
    assert_one_line_json(client.get("/api/docs"), 404)
    assert_one_line_json(client.get("/api/redoc"), 404)
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200 and "/api/predict" in schema.json()["paths"]


def test_a_second_server_on_a_job_database_in_use_refuses_to_start(monkeypatch, capsys, tmp_path):
    """A second server on the same --db would resume, and so re-run, the first one's jobs: it refuses in one line
    before it opens the database."""
    db = tmp_path / "j.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from immunofold.web.jobs import claim_database; "
                               "lock = claim_database(sys.argv[1]); print('held', flush=True); time.sleep(120)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr("immunofold.web.app.create_app", lambda **kwargs: pytest.fail("opened a database in use"))
        args = build_parser().parse_args(["serve", "--db", str(db)])
        assert args.handler(args) == 2
        err = capsys.readouterr().err
        assert err == (f"error: job database {db} is in use by another immunofold serve (pid {holder.pid}); stop it, "
                       "or give this server its own --db\n")
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.undo()
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: None)
    assert args.handler(args) == 0  # free again once the first server is gone


def test_serve_refuses_a_folder_as_database_and_a_port_out_of_range(capsys, tmp_path):
    args = build_parser().parse_args(["serve", "--db", str(tmp_path)])
    assert args.handler(args) == 2
    assert capsys.readouterr().err == (f"error: job database {tmp_path} is a folder; give a file name such as "
                                       f"{tmp_path / 'jobs.sqlite'}\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])
    assert "argument --port: '70000' is not a port (0-65535)" in capsys.readouterr().err


def test_serve_refuses_a_port_in_use_before_it_starts(monkeypatch, capsys, tmp_path):
    import socket

    monkeypatch.setattr("immunofold.web.app.create_app", lambda **kwargs: pytest.fail("started on a port in use"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        args = build_parser().parse_args(["serve", "--port", str(port), "--db", str(tmp_path / "j.sqlite")])
        assert args.handler(args) == 2
    assert capsys.readouterr().err == f"error: port {port} on 127.0.0.1 is in use (another server?); choose another with --port\n"
    assert not (tmp_path / "j.sqlite").exists()


def test_serve_on_port_0_prints_the_port_it_serves(monkeypatch, capsys, tmp_path):
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, host, port, log_level: started.update(port=port))
    args = build_parser().parse_args(["serve", "--port", "0", "--db", str(tmp_path / "j.sqlite")])
    assert args.handler(args) == 0
    assert started["port"] > 0 and capsys.readouterr().out.startswith(f"immunofold: http://127.0.0.1:{started['port']}/")
