"""The web server of `immunofold serve`: its limits and the FastAPI app factory `create_app`.

Jobs persist in SQLite (see `jobs.py`); the 3D viewer (3Dmol.js) is installed from npm by
`immunofold serve --install-assets` (see `assets.py`); the HTTP guards (Host check, API token, CSRF,
security headers, body limits) are in `security.py`; the command line is in `server.py`.

Endpoints (JSON unless noted):
    GET  /                          the page (an error page if 3Dmol.js is not installed)
    GET  /static/{file}             the page's own JS/CSS
    GET  /vendor/3Dmol-min.js       the installed viewer
    GET  /api/health                {"status": "ok"|"unhealthy", "problem", "viewer_installed", ...}; 503 if unhealthy
    POST /api/predict               {kind, name, heavy, light, alpha, beta, fasta, refine} -> 202 {id}
    POST /api/batch                 multipart: file (FASTA/CSV), kind, refine -> 202 {id}
    GET  /api/jobs                  recent jobs (every job of every user of this server)
    GET  /api/jobs/{id}             status, stage, progress, result
    GET  /api/jobs/{id}/model.pdb   the model (B-factor = predicted error, Å)
    GET  /api/jobs/{id}/model.cif
    GET  /api/jobs/{id}/results.zip batch results: structures + summary.csv + failures.csv
    GET  /api/openapi.json          the API schema (no Swagger UI: it would load from a CDN)
Errors: {"detail": "<one line>", "field": "<form field or null>"} with a 4xx status, or 503 when the
job database cannot be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from immunofold import __version__
from immunofold.inputs import CSV_SUFFIXES, FASTA_SUFFIXES, TSV_SUFFIXES, parse_fasta
from immunofold.sequences import KIND_SLOTS, InputError, clean_sequence, find_domains, indefinite_article, number_receptor
from immunofold.web import assets as web_assets
from immunofold.web.jobs import JobRunner, JobStore, StoreUnavailable, count_records, default_db_path
from immunofold.web.security import (
    LOOPBACK_HOSTS,
    SECURITY_HEADERS,
    BodyLimit,
    RequestGuard,
    SecurityHeaders,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_SINGLE_BYTES = 1 * 1024 * 1024  # a single prediction request
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a batch upload
MAX_SEQUENCE_CHARS = 10_000  # per chain field, before cleaning (the model refuses > 5000 residues anyway)
MAX_NAME_CHARS = 80
MAX_QUEUED_JOBS = 100  # unfinished jobs of one type; more are refused (429) until some finish
UPLOAD_SUFFIXES = FASTA_SUFFIXES + CSV_SUFFIXES + TSV_SUFFIXES
SLOTS = {"antibody": ("heavy", "light"), "nanobody": ("heavy",), "tcr": ("alpha", "beta")}
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
CSRF_PLACEHOLDER = "__CSRF_TOKEN__"  # in static/index.html, replaced by the server's page token

MISSING_VIEWER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>immunofold: viewer not installed</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>The 3D viewer is not installed</h1>
<p>immunofold serves the 3Dmol.js viewer itself (it is never loaded from the internet), and it has
not been installed yet. Stop the server and run:</p>
<pre>immunofold serve --install-assets</pre>
<p>(it runs <code>npm install 3dmol@{version}</code> into a folder outside the git checkout), then start
<code>immunofold serve</code> again. The JSON API under <code>/api/</code> works without it.</p>
</body></html>
"""


# --- input handling -------------------------------------------------------------------------
def clean_name(name: str | None, fallback: str = "model") -> str:
    """A one-line display name: control characters and runs of whitespace collapsed, length capped."""
    name = re.sub(r"[\x00-\x1f\x7f\s]+", " ", name or "").strip()[:MAX_NAME_CHARS]
    return name or fallback


def download_stem(name: str) -> str:
    """A safe file name stem for Content-Disposition (the server never writes it to disk)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "model"


def chains_from_fasta(kind: str, text: str, name: str) -> tuple[str, dict[str, str]]:
    """(first record's name, {slot: sequence}) of the form's FASTA box, read by `immunofold.inputs.parse_fasta`.

    Chains labelled in the header (`>x|H`) go to their slot; unlabelled ones by chain type when it is
    clear, else in order. Text without any '>' is one unnamed sequence. `name` labels errors.
    """
    records = parse_fasta(text if ">" in text else f">{name}\n{text}")
    for record in records:
        if record.error:
            raise InputError(name, f"FASTA {record.source}: {record.error}")
    parts = [part for record in records for part in record.chains]
    slots = SLOTS[kind]
    if not any(sequence.strip() for _, sequence in parts):
        raise InputError(name, "no sequences found in the FASTA")
    if len(parts) == 1 and len(slots) == 2 and parts[0][0] is None:  # an scFv: its two V domains, as batch reads it
        record = f"{name} FASTA chain 1"
        try:
            domains = find_domains(clean_sequence(parts[0][1], record), record)
        except InputError:  # not a sequence to number: the count of chains is the message below
            domains = []
        allowed = dict(KIND_SLOTS[kind])
        by_slot = {slot: [d for d in domains if d.chain_class in allowed[slot]] for slot in slots}
        if len(domains) == 2 and all(len(found) == 1 for found in by_slot.values()):
            return records[0].name, {slot: found[0].sequence for slot, found in by_slot.items()}
    if len(parts) != len(slots):
        raise InputError(name, f"{indefinite_article(kind)} {kind} needs {len(slots)} FASTA chain(s) ({' + '.join(slots)}), "
                               f"found {len(parts)}")
    assigned = {slot: sequence for slot, sequence in parts if slot is not None}
    for slot in assigned:
        if slot not in slots:
            raise InputError(name, f"the FASTA labels a {slot} chain, which a {kind} does not have")
    allowed = dict(KIND_SLOTS[kind])
    free = [sequence for slot, sequence in parts if slot is None]
    for i, sequence in enumerate(free):
        record = f"{name} FASTA chain {i + 1}"
        domains = find_domains(clean_sequence(sequence, record), record)
        chain_class = domains[0].chain_class if domains else None
        slot = next((s for s in slots if chain_class in allowed[s] and s not in assigned), None)
        if slot is None:
            slot = next(s for s in slots if s not in assigned)
        assigned[slot] = sequence
    return records[0].name, {slot: assigned[slot] for slot in slots}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an option the API does not have (e.g. "numbering") is refused, not ignored

    kind: Literal["antibody", "nanobody", "tcr"] = "antibody"
    name: str = Field("", max_length=1000)
    heavy: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    light: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    alpha: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    beta: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    fasta: str = Field("", max_length=2 * MAX_SEQUENCE_CHARS + 2000)
    refine: bool = False


def error(status: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API."""
    return JSONResponse({"detail": detail, "field": field}, status_code=status, headers=headers)


# --- the app ----------------------------------------------------------------------------------
def create_app(
    db_path: str | None = None,
    predictor_factory=None,
    batch_runner=None,
    workers: int = 1,
    allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_HOSTS,
    api_token: str | None = None,
    max_queued: int = MAX_QUEUED_JOBS,
    preload: bool = False,
) -> FastAPI:
    """The FastAPI app. `predictor_factory` and `batch_runner` replace the real ones (tests).

    allowed_hosts: Host header names served (default loopback only; never empty). api_token: required from
    every API call when set (see `security.RequestGuard`). app.state holds store, runner and csrf_token.
    """
    store = JobStore(db_path or default_db_path())
    runner = JobRunner(store, predictor_factory=predictor_factory, batch_runner=batch_runner, workers=workers)
    csrf_token = secrets.token_urlsafe(32)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runner.resume()
        if preload:
            runner.preload()
        yield
        await asyncio.to_thread(runner.shutdown)  # a running batch stops at its next record

    app = FastAPI(title="immunofold", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.store = store
    app.state.runner = runner
    app.state.csrf_token = csrf_token

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":  # loc is ("body", character offset), not a field
            reason = " ".join(str(first.get("ctx", {}).get("error", "")).split())
            return error(422, f"the request body is not valid JSON ({reason or 'decode error'} at character "
                              f"{first['loc'][-1]})")
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        field = loc[0] if loc else None
        message = " ".join(str(first.get("msg", "invalid request")).split())
        return error(422, f"{field}: {message}" if field else message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, " ".join(str(exc.detail).split()), headers=exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable):
        return error(503, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # sent outside the middleware stack (Starlette's ServerErrorMiddleware): add the headers here
        return error(500, f"internal error ({type(exc).__name__}); see the server log", headers=SECURITY_HEADERS)

    # --- pages -----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index():
        if web_assets.find_viewer() is None:
            return HTMLResponse(MISSING_VIEWER_PAGE.replace("{version}", web_assets.THREEDMOL_VERSION), status_code=503)
        page = (STATIC_DIR / "index.html").read_text().replace(CSRF_PLACEHOLDER, csrf_token)
        return HTMLResponse(page)

    @app.get("/vendor/3Dmol-min.js")
    def viewer_js():
        path = web_assets.find_viewer()
        if path is None:
            return error(404, f"3Dmol.js is not installed; run `{web_assets.INSTALL_COMMAND}`")
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/index.html")
    def page_template():  # the page's template (no CSRF token in it, so its forms could not submit): the page is at /
        return RedirectResponse("/", status_code=308)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health")
    def health():
        problem = store.check()
        body = {
            "status": "unhealthy" if problem else "ok",
            "problem": problem,
            "viewer_installed": web_assets.find_viewer() is not None,
            "viewer_install_command": web_assets.INSTALL_COMMAND,
            "batch_available": runner.batch_runner() is not None,
            "limits": {"single_bytes": MAX_SINGLE_BYTES, "upload_bytes": MAX_UPLOAD_BYTES},
        }
        return JSONResponse(body, status_code=503 if problem else 200)

    # --- jobs ------------------------------------------------------------------------------
    def queue_full(job_type: str) -> JSONResponse | None:
        if len(store.unfinished(job_type)) >= max_queued:
            return error(429, f"too many {job_type} jobs waiting ({max_queued}); try again when some have finished")
        return None

    @app.post("/api/predict", status_code=202)
    def submit_prediction(body: PredictRequest):
        from_fasta = bool(body.fasta.strip())
        name = clean_name(body.name)
        given = {slot: getattr(body, slot) for slot in ("heavy", "light", "alpha", "beta") if getattr(body, slot).strip()}
        if from_fasta and given:
            return error(422, f"give either the FASTA box or the chain fields ({', '.join(given)}), not both", "fasta")
        try:
            if from_fasta:
                fasta_name, chains = chains_from_fasta(body.kind, body.fasta, name)
                name = clean_name(body.name or fasta_name)
            else:
                chains = given
            number_receptor(body.kind, chains, name)  # validate now, so errors go next to their field
        except InputError as exc:
            return error(422, " ".join(str(exc).split()), "fasta" if from_fasta else exc.field)
        full = queue_full("single")
        if full:
            return full
        request = {"kind": body.kind, "name": name, "chains": chains, "refine": body.refine}
        job_id = store.create("single", name, request, total=1)
        runner.submit(job_id, "single")
        return {"id": job_id, "status": "queued", "name": name}

    @app.post("/api/batch", status_code=202)
    def submit_batch(
        file: UploadFile = File(...),
        kind: Literal["auto", "antibody", "nanobody", "tcr"] = Form("auto"),
        refine: bool = Form(False),
    ):
        if runner.batch_runner() is None:
            return error(503, "batch prediction is not available in this installation", "file")
        suffix = Path(file.filename or "").suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            return error(422, f"file: expected a FASTA, CSV, TSV or AIRR file ({', '.join(UPLOAD_SUFFIXES)})", "file")
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            return error(413, f"request too large (limit {MAX_UPLOAD_BYTES // (1024 * 1024)} MB)", "file")
        if not data.strip():
            return error(422, "file: the file is empty", "file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return error(422, "file: not a text file (UTF-8 FASTA or CSV expected)", "file")
        name = clean_name(Path(file.filename or "").stem, "batch")
        try:
            total = count_records(data, suffix)
        except InputError as exc:
            return error(422, f"file: {' '.join(exc.reason.split())}", "file")
        if total == 0:
            return error(422, "file: no records found", "file")
        full = queue_full("batch")
        if full:
            return full
        request = {"kind": kind, "refine": refine, "suffix": suffix, "batch_size": 8}
        job_id = store.create("batch", name, request, upload=data, total=total)
        runner.submit(job_id, "batch")
        return {"id": job_id, "status": "queued", "name": name}

    @app.get("/api/jobs")
    def list_jobs(limit: int = 50):
        return {"jobs": store.list(max(1, min(limit, 500)))}

    def get_job_or_404(job_id: str):
        if not re.match(JOB_ID_PATTERN, job_id):
            return None, error(404, "no such job")
        job = store.get(job_id)
        if job is None:
            return None, error(404, "no such job")
        return job, None

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        job, failure = get_job_or_404(job_id)
        return failure or job

    def job_file(job_id: str, column: str, media_type: str, suffix: str):
        job, failure = get_job_or_404(job_id)
        if failure:
            return failure
        if job["status"] != "done":
            return error(409, f"job is {job['status']}, not done")
        content = store.get_field(job_id, column)
        if content is None:
            what = "results.zip (it is a single prediction: download its model)" if column == "archive" else f"{suffix} file"
            return error(404, f"this job has no {what}")
        filename = f"{download_stem(job['name'])}{suffix}"
        return Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/jobs/{job_id}/model.pdb")
    def download_pdb(job_id: str):
        return job_file(job_id, "pdb", "chemical/x-pdb", ".pdb")

    @app.get("/api/jobs/{job_id}/model.cif")
    def download_cif(job_id: str):
        return job_file(job_id, "cif", "chemical/x-mmcif", ".cif")

    @app.get("/api/jobs/{job_id}/results.zip")
    def download_zip(job_id: str):
        return job_file(job_id, "archive", "application/zip", "_results.zip")

    # middleware: the last added runs first
    limits = {"/api/predict": MAX_SINGLE_BYTES, "/api/batch": MAX_UPLOAD_BYTES + 64 * 1024}
    app.add_middleware(BodyLimit, default_limit=MAX_SINGLE_BYTES, limits=limits)
    app.add_middleware(RequestGuard, allowed_hosts=list(allowed_hosts), csrf_token=csrf_token, api_token=api_token)
    app.add_middleware(SecurityHeaders)
    return app
