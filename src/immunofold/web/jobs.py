"""Jobs for the web app: persisted in SQLite, run in worker threads that share one model loaded once.

A job is a single prediction ("single") or a batch upload ("batch"); each type has its own worker
pool, so a long batch never holds up single predictions. Finished results (PDB, mmCIF, per-residue
error and numbering; or a zip archive for a batch) are stored in the database, so a restart of the
server loses nothing; jobs that were queued or running when the server stopped are run again at the
next start. A stopping server ends a running batch at its next record (`JobRunner.shutdown`) and waits
for it, so no job outlives the server's claim on its database. Job ids are server-generated UUIDs and
never become file paths. A database that cannot be used (deleted, read-only, locked, disk full) raises
StoreUnavailable with a one-line reason; a job running then ends as failed.
"""

from __future__ import annotations

import csv
import fcntl
import inspect
import io
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from immunofold.constants import IMGT_CDRS, imgt_region

STATUSES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    request TEXT NOT NULL,
    upload BLOB,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    result TEXT,
    pdb TEXT,
    cif TEXT,
    archive BLOB
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created);
"""

_PUBLIC_COLUMNS = "id, type, status, stage, name, created, updated, done, total, error, result"


def claim_database(path: str | os.PathLike):
    """An exclusive lock on `path`'s job database (a '<name>.lock' file beside it, created if needed), held while the
    returned file stays open; StoreUnavailable naming the holder if another process holds it."""
    lock_path = Path(f"{path}.lock")
    if Path(path).is_dir():
        raise StoreUnavailable(f"job database {path} is a folder; give a file name such as {Path(path) / 'jobs.sqlite'}")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise StoreUnavailable(f"cannot use job database {path}: {error.strerror or error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreUnavailable(f"job database {path} is in use by another immunofold serve ({holder}); stop it, or "
                               "give this server its own --db") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def default_db_path() -> Path:
    from immunofold.web.assets import user_data_dir

    return user_data_dir() / "jobs.sqlite"


class StoreUnavailable(RuntimeError):
    """The job database cannot be read or written; str() is one line naming the problem."""


def _problem(error: sqlite3.Error, path: str) -> str:
    """One line saying what is wrong with the job database, from an sqlite3 error."""
    message = str(error).lower()
    if "readonly" in message or "read-only" in message:
        what = "is read-only"
    elif "unable to open" in message or "no such table" in message:
        what = "is missing (deleted or moved while the server ran?): restore it, or restart the server for a new one"
    elif "locked" in message or "busy" in message:
        what = "is locked by another process"
    elif "full" in message:
        what = "cannot grow: the disk is full"
    elif "not a database" in message or "malformed" in message:
        what = "is damaged (not an SQLite database)"
    else:
        what = f"failed ({str(error).splitlines()[0][:200]})"
    return f"job database {path} {what}"


class JobStore:
    """Thread-safe access to the jobs table (one short connection per operation, WAL mode).

    Any database fault raises StoreUnavailable. The final state of a job that could not be written
    (`fail` while the database is read-only) is kept in memory, shown by `get`/`list`, and written
    as soon as a write succeeds again.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._unsaved: dict[str, dict] = {}  # job id -> final fields not yet written
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=timeout)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            finally:
                db.close()
        except sqlite3.Error as error:
            raise StoreUnavailable(_problem(error, self.path)) from None

    def _connect(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            db = sqlite3.connect(self.path, timeout=self.timeout)
        else:  # mode=rw: a deleted file is an error, not a new empty database
            db = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=rw", uri=True, timeout=self.timeout)
        db.row_factory = sqlite3.Row
        return db

    def _execute(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                db = self._connect()
                try:
                    with db:
                        rows = db.execute(sql, params).fetchall()
                        if self._unsaved and not sql.lstrip().upper().startswith("SELECT"):
                            self._write_unsaved(db)
                        return rows
                finally:
                    db.close()
            except sqlite3.Error as error:
                raise StoreUnavailable(_problem(error, self.path)) from None

    def _write_unsaved(self, db: sqlite3.Connection) -> None:
        for job_id, fields in list(self._unsaved.items()):
            columns = ", ".join(f"{key} = ?" for key in fields)
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), job_id))
        self._unsaved.clear()

    def check(self) -> str | None:
        """None when the database can be written (and unsaved job states are written now), else the problem."""
        try:
            self._execute("UPDATE jobs SET updated = updated WHERE id = ''")  # a real write, changes nothing
        except StoreUnavailable as error:
            return str(error)
        return None

    def create(self, job_type: str, name: str, request: dict, upload: bytes | None = None, total: int = 0) -> str:
        job_id = uuid.uuid4().hex
        now = time.time()
        self._execute(
            "INSERT INTO jobs (id, type, status, stage, name, created, updated, request, upload, total)"
            " VALUES (?, ?, 'queued', 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, job_type, name, now, now, json.dumps(request), upload, total),
        )
        return job_id

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        columns = ", ".join(f"{key} = ?" for key in fields)
        self._execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*fields.values(), job_id))

    def fail(self, job_id: str, message: str) -> None:
        """Mark a job failed; if the database refuses, keep that in memory until it can be written."""
        fields = {"status": "failed", "stage": "failed", "error": message[:2000]}
        try:
            self.update(job_id, **fields)
        except StoreUnavailable:
            with self._lock:
                self._unsaved[job_id] = {**fields, "updated": time.time()}

    def _overlay(self, job: dict) -> dict:
        unsaved = self._unsaved.get(job["id"])
        if unsaved:
            job.update({k: v for k, v in unsaved.items() if k in job})
        return job

    def get(self, job_id: str) -> dict | None:
        rows = self._execute(f"SELECT {_PUBLIC_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = self._overlay(dict(rows[0]))
        job["result"] = json.loads(job["result"]) if job["result"] else None
        if job["status"] == "queued":  # jobs of the same type run in their own queue
            ahead = self._execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND type = ? AND created < ?",
                (job["type"], job["created"]),
            )
            job["queue_position"] = int(ahead[0][0])
        return job

    def get_field(self, job_id: str, column: str):
        assert column in ("pdb", "cif", "archive", "request", "upload", "name", "status", "type")
        rows = self._execute(f"SELECT {column} FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def list(self, limit: int = 50) -> list[dict]:
        rows = self._execute(
            "SELECT id, type, status, stage, name, created, updated, done, total, error FROM jobs"
            " ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [self._overlay(dict(row)) for row in rows]

    def unfinished(self, job_type: str | None = None) -> list[str]:
        """Ids of queued or running jobs (of one type, if given), oldest first."""
        rows = self._execute(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') AND (? IS NULL OR type = ?) ORDER BY created",
            (job_type, job_type),
        )
        return [row[0] for row in rows if row[0] not in self._unsaved]


def cdr_ranges() -> dict[str, list[int]]:
    return {f"CDR{k}": [lo, hi] for k, (lo, hi) in IMGT_CDRS.items()}


def developability_result(prediction) -> dict | None:
    """The TAP/TNP profile of an antibody or nanobody (`DevelopabilityProfile.to_dict()`, each metric's residues
    as {chain, resi, icode} of the model file, for the 3D view), {"error": reason} when it cannot be computed,
    None for a TCR."""
    from immunofold.developability import PROFILED_KINDS, profile_prediction
    from immunofold.sequences import InputError

    if prediction.kind not in PROFILED_KINDS:
        return None
    try:
        profile = profile_prediction(prediction).to_dict()
    except InputError as error:
        return {"error": error.reason}
    where = {f"{chain_id}{number}{icode}": {"chain": chain_id, "resi": number, "icode": icode}
             for chain_id, ids in zip(prediction.chain_ids, prediction.residue_ids) for number, icode in ids}  # fmt: skip
    for metric in profile["metrics"].values():
        metric["residues"] = [where[label] for label in metric["residues"]]
    return profile


def prediction_result(prediction) -> dict:
    """The JSON part of a finished single job: per-residue error, numbering, CDR positions, developability."""
    chains, start = [], 0
    for chain_id, chain, ids in zip(prediction.chain_ids, prediction.chains, prediction.residue_ids):
        errors = prediction.error[start : start + len(chain)]
        residues = []
        for aa, (imgt, imgt_ins), (number, ins), err in zip(chain.sequence, chain.positions, ids, errors):
            residues.append(
                {
                    "aa": aa,
                    "imgt": f"{imgt}{imgt_ins}",
                    "imgt_number": int(imgt),
                    "resi": int(number),
                    "icode": ins,
                    "region": imgt_region(int(imgt)),
                    "error": round(float(err), 3),
                }
            )
        chains.append({"id": chain_id, "chain_class": chain.chain_class, "sequence": chain.sequence, "residues": residues})
        start += len(chain)
    return {
        "kind": prediction.kind,
        "name": prediction.name,
        "chains": chains,
        "mean_error": round(prediction.mean_error, 3),
        "max_error": round(float(prediction.error.max()), 3),
        "refined": bool(prediction.refined),
        "geometry_cleaned": bool(prediction.geometry_cleaned),
        "error_calibrated": bool(prediction.error_calibrated),
        "refine_message": prediction.refine_message,
        "notes": list(prediction.notes),
        "weights_version": prediction.weights_version,
        "cdrs": cdr_ranges(),
        "developability": developability_result(prediction),
    }


def _all_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def _read_table(path: Path, limit: int = 500) -> tuple[list[str], list[list[str]]]:
    """(header, first `limit` rows) of a CSV file; empty when it does not exist."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1 : limit + 1]) if rows else ([], [])


def count_records(data: bytes, suffix: str) -> int:
    """Number of receptors in an upload (parsed as `immunofold batch` would); raises InputError if unreadable."""
    from immunofold.inputs import parse_input

    with tempfile.TemporaryDirectory(prefix="immunofold-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        return len(parse_input(path))


class ServerStopping(Exception):
    """Raised inside a running batch when the server stops: the job is left unfinished, to run again at the next
    start."""


class JobRunner:
    """Runs jobs in two thread pools, so a long batch never holds up single predictions: single jobs use
    `workers` threads, batches one thread of their own. The model is loaded once, on first use, and shared."""

    def __init__(
        self,
        store: JobStore,
        predictor_factory: Callable | None = None,
        batch_runner: Callable | None = None,
        workers: int = 1,
        work_dir: str | os.PathLike | None = None,
    ):
        self.store = store
        self._predictor_factory = predictor_factory
        self._predictor = None
        self._cleaning_predictor = None
        self._predictor_lock = threading.Lock()
        self._batch_runner = batch_runner
        self._pools = {
            "single": ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="immunofold-single"),
            "batch": ThreadPoolExecutor(max_workers=1, thread_name_prefix="immunofold-batch"),
        }
        self._work_dir = Path(work_dir) if work_dir else None
        self._stopping = threading.Event()

    # --- model -----------------------------------------------------------------------------
    def predictor(self, clean_geometry: bool = False):
        """The shared predictor; with `clean_geometry`, one over the same members whose consensus is cleaned."""
        with self._predictor_lock:
            if self._predictor is None:
                if self._predictor_factory is None:
                    from immunofold.prediction import Predictor

                    self._predictor = Predictor()
                else:
                    self._predictor = self._predictor_factory()
            if not clean_geometry:
                return self._predictor
            if self._cleaning_predictor is None:
                self._cleaning_predictor = self._predictor.with_clean_geometry()
            return self._cleaning_predictor

    def preload(self) -> None:
        """Start loading the model in the background (the first job then does not wait for it)."""
        if not self._stopping.is_set():
            self._pools["single"].submit(self.predictor)

    def batch_runner(self) -> Callable | None:
        if self._batch_runner is not None:
            return self._batch_runner
        try:
            from immunofold.batch import run_batch
        except ImportError:
            return None
        return run_batch

    # --- scheduling ------------------------------------------------------------------------
    def submit(self, job_id: str, job_type: str) -> None:
        """Queue a job of type "single" or "batch" in its own pool."""
        if not self._stopping.is_set():
            self._pools[job_type].submit(self._run, job_id, job_type)

    def resume(self) -> int:
        """Queue again the jobs a previous server left unfinished; returns how many."""
        count = 0
        for job_type in self._pools:
            for job_id in self.store.unfinished(job_type):
                self.store.update(job_id, status="queued", stage="queued (restarted)")
                self.submit(job_id, job_type)
                count += 1
        return count

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs: queued ones stay queued, a running batch ends at its next record (both run again at the
        next start), a running single prediction finishes. wait: return once no job thread runs."""
        self._stopping.set()
        for pool in self._pools.values():
            pool.shutdown(wait=wait, cancel_futures=True)

    def _run(self, job_id: str, job_type: str) -> None:
        if self._stopping.is_set():
            return
        try:
            self.store.update(job_id, status="running", stage="starting")
            if job_type == "single":
                self._run_single(job_id)
            else:
                self._run_batch(job_id)
        except ServerStopping:
            self.store.update(job_id, stage="stopped with the server; runs again at its next start")
        except Exception as error:  # noqa: BLE001 - a job failure is reported to the user, not raised
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.store.fail(job_id, message)

    def _run_single(self, job_id: str) -> None:
        request = json.loads(self.store.get_field(job_id, "request"))
        self.store.update(job_id, stage="loading model")
        predictor = self.predictor()
        self.store.update(job_id, stage="predicting")
        kind, chains, name = request["kind"], request["chains"], request["name"]
        numbered = predictor.number(kind, chains, name)
        prediction = predictor.predict_numbered([(name, kind, numbered)])[0]
        if request.get("refine"):
            self.store.update(job_id, stage="refining")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prediction = predictor.refine(prediction)
        else:  # a model someone downloads from a web page gets real peptide bonds and no clashes (~35 ms)
            prediction = prediction.with_clean_geometry()
        self.store.update(job_id, stage="writing files")
        result = prediction_result(prediction)
        self.store.update(
            job_id,
            status="done",
            stage="done",
            done=1,
            total=1,
            result=json.dumps(result),
            pdb=prediction.to_pdb_string(),
            cif=prediction.to_cif_string(),
        )

    def _run_batch(self, job_id: str) -> None:
        run_batch = self.batch_runner()
        if run_batch is None:
            raise RuntimeError("batch prediction is not available in this installation (immunofold.batch.run_batch)")
        request = json.loads(self.store.get_field(job_id, "request"))
        upload = self.store.get_field(job_id, "upload")
        suffix = request["suffix"]  # chosen by the server from a fixed list, never the user's file name
        with tempfile.TemporaryDirectory(prefix="immunofold-web-", dir=self._work_dir) as tmp:
            tmp_path = Path(tmp)
            input_path = tmp_path / f"input{suffix}"
            input_path.write_bytes(upload)
            outdir = tmp_path / "results"
            outdir.mkdir()
            self.store.update(job_id, stage="loading model")
            refine = bool(request.get("refine"))
            predictor = self.predictor(clean_geometry=not refine)  # downloaded models have real peptide bonds
            self.store.update(job_id, stage="predicting")
            counter = {"done": 0}
            lock = threading.Lock()

            def on_event(event: str, record) -> None:
                if event == "record_done":
                    with lock:
                        counter["done"] += 1
                        self.store.update(job_id, done=counter["done"])
                    if self._stopping.is_set():
                        raise ServerStopping

            options = {
                "kind": request.get("kind", "auto"),
                "batch_size": request.get("batch_size", 8),
                "workers": 0,  # numbering and refinement in this process: the server stays light
                "refine": refine,
                "clean_geometry": not refine,
                "plots": False,
                "predictor": predictor,
                "on_event": on_event,
            }
            accepted = inspect.signature(run_batch).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
                options = {k: v for k, v in options.items() if k in accepted}
            report = run_batch(str(input_path), str(outdir), **options)
            self.store.update(job_id, stage="packing results")
            header, rows = _read_table(outdir / "summary.csv")
            failures_header, failures = _read_table(outdir / "failures.csv")
            n_ok = int(getattr(report, "ok_total", len(_all_rows(outdir / "summary.csv"))))
            n_failed = int(getattr(report, "failed_total", len(_all_rows(outdir / "failures.csv"))))
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(outdir.rglob("*")):
                    relative = path.relative_to(outdir)
                    if path.is_file() and not relative.parts[0].startswith("."):  # not the resume state
                        zf.write(path, f"immunofold_results/{relative.as_posix()}")
            result = {
                "summary_header": header,
                "summary": rows,
                "failures_header": failures_header,
                "failures": failures,
                "n_ok": n_ok,
                "n_failed": n_failed,
            }
            self.store.update(
                job_id,
                status="done",
                stage="done",
                upload=None,  # the upload is needed only to run the job (again, after a restart)
                done=int(getattr(report, "total", n_ok + n_failed)),
                total=int(getattr(report, "total", n_ok + n_failed)),
                result=json.dumps(result),
                archive=archive.getvalue(),
            )
