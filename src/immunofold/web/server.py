"""The FastAPI app of `immunofold serve` (imported only when the server runs: FastAPI is the `web` extra)."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from immunofold.sequences import InputError, number_receptor
from immunofold.web import assets as web_assets
from immunofold.web.app import (
    CSP,
    JOB_ID_PATTERN,
    MAX_SEQUENCE_CHARS,
    MAX_SINGLE_BYTES,
    MAX_UPLOAD_BYTES,
    MISSING_VIEWER_PAGE,
    STATIC_DIR,
    UPLOAD_SUFFIXES,
    chains_from_fasta,
    clean_name,
    download_stem,
    input_error_field,
    parse_fasta,
)
from immunofold.web.jobs import JobRunner, JobStore, count_records, default_db_path


class PredictRequest(BaseModel):
    kind: Literal["antibody", "nanobody", "tcr"] = "antibody"
    name: str = Field("", max_length=1000)
    heavy: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    light: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    alpha: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    beta: str = Field("", max_length=MAX_SEQUENCE_CHARS)
    fasta: str = Field("", max_length=2 * MAX_SEQUENCE_CHARS + 2000)
    refine: bool = False


class BodyLimitMiddleware:
    """Refuse request bodies over a size limit (413), whether or not Content-Length is sent."""

    def __init__(self, app, default_limit: int, limits: dict[str, int]):
        self.app = app
        self.default_limit = default_limit
        self.limits = limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limits.get(scope["path"], self.default_limit)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return await self._refuse(send, limit)
            except ValueError:
                return await self._refuse(send, limit, status=400, message="invalid Content-Length")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                return await self._refuse(send, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        payload = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, limit: int, status: int = 413, message: str | None = None):
        detail = message or f"request too large (limit {limit // (1024 * 1024)} MB)"
        body = json.dumps({"detail": detail, "field": None}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(
    db_path: str | None = None,
    predictor_factory=None,
    batch_runner=None,
    workers: int = 1,
    allowed_hosts: list[str] | None = None,
    preload: bool = False,
):
    """The FastAPI app. `predictor_factory` and `batch_runner` replace the real ones (tests)."""
    store = JobStore(db_path or default_db_path())
    runner = JobRunner(store, predictor_factory=predictor_factory, batch_runner=batch_runner, workers=workers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runner.resume()
        if preload:
            runner._pool.submit(runner.predictor)
        yield
        runner.shutdown(wait=False)

    app = FastAPI(title="immunofold", lifespan=lifespan, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.store = store
    app.state.runner = runner

    def error(status: int, detail: str, field: str | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail, "field": field}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        field = loc[0] if loc else None
        message = first.get("msg", "invalid request")
        return error(422, f"{field}: {message}" if field else message, field)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # --- pages -----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index():
        if web_assets.find_viewer() is None:
            return HTMLResponse(MISSING_VIEWER_PAGE.replace("{version}", web_assets.THREEDMOL_VERSION), status_code=503)
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/vendor/3Dmol-min.js")
    def viewer_js():
        path = web_assets.find_viewer()
        if path is None:
            return error(404, f"3Dmol.js is not installed; run `{web_assets.INSTALL_COMMAND}`")
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health")
    def health():
        return {
            "status": "ok",
            "viewer_installed": web_assets.find_viewer() is not None,
            "viewer_install_command": web_assets.INSTALL_COMMAND,
            "batch_available": runner.batch_runner() is not None,
            "limits": {"single_bytes": MAX_SINGLE_BYTES, "upload_bytes": MAX_UPLOAD_BYTES},
        }

    # --- jobs ------------------------------------------------------------------------------
    @app.post("/api/predict", status_code=202)
    def submit_prediction(body: PredictRequest):
        from_fasta = bool(body.fasta.strip())
        fasta_name = parse_fasta(body.fasta)[0][0].split(" ")[0] if from_fasta and parse_fasta(body.fasta) else ""
        name = clean_name(body.name or fasta_name)
        try:
            if from_fasta:
                chains = chains_from_fasta(body.kind, body.fasta, name)
            else:
                given = {slot: getattr(body, slot) for slot in ("heavy", "light", "alpha", "beta")}
                chains = {slot: seq for slot, seq in given.items() if seq.strip()}
            number_receptor(body.kind, chains, name)  # validate now, so errors go next to their field
        except InputError as exc:
            return error(422, str(exc), input_error_field(exc, name, from_fasta))
        request = {"kind": body.kind, "name": name, "chains": chains, "refine": body.refine}
        job_id = store.create("single", name, request, total=1)
        runner.submit(job_id)
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
            return error(422, f"file: expected a FASTA or CSV file ({', '.join(UPLOAD_SUFFIXES)})", "file")
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
            return error(422, f"file: {exc.reason}", "file")
        if total == 0:
            return error(422, "file: no records found", "file")
        request = {"kind": kind, "refine": refine, "suffix": suffix, "batch_size": 8}
        job_id = store.create("batch", name, request, upload=data, total=total)
        runner.submit(job_id)
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
            return error(404, f"this job has no {suffix} file")
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

    limits = {"/api/predict": MAX_SINGLE_BYTES, "/api/batch": MAX_UPLOAD_BYTES + 64 * 1024}
    app.add_middleware(BodyLimitMiddleware, default_limit=MAX_SINGLE_BYTES, limits=limits)
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app
