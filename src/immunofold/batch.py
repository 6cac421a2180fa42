"""Batch prediction: `immunofold batch INPUT -o OUTDIR` and `run_batch(...)`.

INPUT is FASTA, CSV/TSV or an AIRR rearrangement TSV (see `immunofold.inputs`). OUTDIR receives one
structure file per record (`<safe name>.pdb`; `structures/<2 hex>/<safe name>.pdb` in runs of more than
SHARD_THRESHOLD records), `summary.csv` and `summary.parquet` (every record, in input order; with
`developability=True` also each antibody's TAP and each nanobody's TNP metrics and flags; `notes`: what was
trimmed or guessed), `failures.csv`
(one line per record that could not be modelled, with its one-line reason) and, with `plots=True`,
`plots/<safe name>.png` plus `plots/overview.png`.

Streaming
    The input is read as a stream, several times (count, predict, reports): memory does not grow with
    the number of records: the names seen (duplicates, unique file names) are kept on disk (`inputs.NameSet`) and
    summary.parquet is written one row group at a time.

Engines
    local (default): the processes of this machine (below). ray: Ray actors on this machine or a
    cluster (`immunofold.ray_engine`). Both write every outcome through one `Recorder`, so the files,
    sidecars and summary are the same whichever engine predicted a record.

Resumable and atomic
    Every record's outcome is a JSON sidecar `OUTDIR/.immunofold/records/<fingerprint>.json`,
    written (temp file + os.replace) after its structure file; just before that file, the sidecar
    names it with status "writing", so a run killed in between knows the file as its own. A record is
    finished when its sidecar holds an outcome (and, for a success, its structure file has the content
    the sidecar's hash names). A file or folder already at a record's path that no run in OUTDIR wrote
    is never overwritten: the record fails with the reason and is tried again by the next run.
    The fingerprint covers the record's sequences and every option that changes its output, so an edited
    record or another input reusing a name is predicted again; a record predicted again in another format or
    folder layout replaces its earlier file, and one that now fails loses it, once the run has finished and the
    summary lists the new files (`remove_superseded`; only files this folder's runs wrote and nobody changed), so
    the files of this input's records are those the summary lists. One run at a time per folder (a lock file
    in OUTDIR/.immunofold). Faults of the machine (no GPU, out of memory, disk full) stop the run
    without marking any record; a rerun resumes. Re-running the same command skips
    finished records; summary.csv and failures.csv are rebuilt from the sidecars, in input
    order, at the end of every run. Only the `seconds` column of summary.csv (wall time spent
    on the record in the run that made it) differs between an interrupted-and-resumed run and
    an uninterrupted one; everything else, and every structure file, is byte-identical.
    No file is ever left half-written under its final name.

Independent of batch composition
    Records are batched only with records of the same total length, so a model pass never pads
    a record, and the ensemble combines each receptor's members on their own (`Ensemble._combine`):
    its output is bit-identical whether it runs alone or with any others (padding changes float
    rounding at the 1e-5 Å level, a batched consensus at 1e-6 Å, and refinement or the clean-up
    amplify either to tenths of an Å). See tests/test_batch.py and tests/test_predict.py.

Work split (local engine)
    Numbering (anarcism) and refinement (OpenMM) run in `workers` worker processes; the
    ensemble pass runs batched in the main process, on the fullest same-length bucket whenever a bucket
    reaches `batch_size` or the next numbered record is not ready yet (the model never waits for the numbering
    while it has records).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import fcntl
import glob
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shlex
import signal
import stat
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from immunofold.inputs import (
    KIND_CHOICES,
    NameSet,
    Record,
    Resolved,
    StemAssigner,
    input_error_reason,
    input_notes,
    iter_records,
    one_line,
    resolve_records,
)
from immunofold.numbering import SCHEMES
from immunofold.io import STRUCTURE_FORMATS, atomic_output, write_text_atomic
from immunofold.sequences import InputError

STATE_DIR = ".immunofold"
RECORDS_DIR = "records"
WRITING = "writing"  # status of a sidecar saved just before its structure file is written
LOCK_FILE = "lock"
PLOTS_DIR = "plots"
OVERVIEW_FIELDS = ("kind", "mean_error", "cdr3_error")  # sidecar fields plots.plot_overview reads
SUMMARY_FILE = "summary.csv"
FAILURES_FILE = "failures.csv"
DEFAULT_BATCH_SIZE = 16
NUMBERING_CHUNK = 8  # records per task sent to a worker process
MAX_HELD = 512  # numbered records waiting for a same-length batch before the fullest bucket runs anyway
# _Pipeline._numbered's signal that the workers are still numbering the next records. The fullest bucket then runs
# at once: waiting for full buckets left the model idle while the worker numbered (128 val antibodies, default
# options: the model started only after the last record was numbered).
NUMBERING_BUSY = object()
# Predictions waiting for or in refinement, per worker: enough to keep every worker busy. The model pass is ~7x
# faster than refinement, and without a bound it ran ahead of the workers, holding every prediction of a large
# refined run in memory (~0.2 MB each for an Fv) until its refinement.
REFINING_PER_WORKER = 4
CHAIN_COLUMNS = ("H", "L", "A", "B")
SUMMARY_COLUMNS = (
    ["name", "kind", "status", "file", "mean_error"]
    + [f"cdr3_error_{c}" for c in CHAIN_COLUMNS]
    + [f"length_{c}" for c in CHAIN_COLUMNS]
    + ["refined", "error_calibrated", "seconds", "notes"]
)
DEVELOPABILITY_PROFILERS = {"antibody": "tap", "nanobody": "tnp"}  # column prefix of each kind's profile
FAILURE_COLUMNS = ["name", "source", "reason"]
PARQUET_FILE = "summary.parquet"
PARQUET_ROWS = 50_000  # rows per Parquet row group
ARROW_ROWS = 1_000  # summary rows held as Python dicts before they become a compact Arrow record batch
STRUCTURES_DIR = "structures"
SHARD_THRESHOLD = 10_000  # records: larger runs write structures/<2 hex>/<stem>.<format>
ENGINES = ("local", "ray")
SIDECAR_VERSION = 2  # 2: options include the weights version; successes hold their file's SHA-256


@dataclass
class BatchReport:
    """Outcome of one `run_batch` call. done/failed count records finished in this run;
    skipped counts records already finished by an earlier run (successes and failures)."""

    total: int
    done: int
    failed: int
    skipped: int
    ok_total: int  # successful records in summary.csv
    failed_total: int  # lines in failures.csv
    outdir: str
    summary_path: str
    failures_path: str
    seconds: float
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine: str = "local"

    @property
    def records_per_second(self) -> float:
        """Records finished in this run (predicted or failed) per second of the run."""
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.total} record{'' if self.total == 1 else 's'}: {self.done} predicted, {self.failed} failed, "
            f"{self.skipped} already finished "
            f"({self.ok_total} ok, {self.failed_total} failed in total) in {self.seconds:.1f} s, "
            f"{self.records_per_second:.1f} records/s ({self.engine} engine)"
        )


class BatchStopped(RuntimeError):
    """The run cannot go on for a reason that is not the record's (device, memory, disk, a second run on the
    folder). Nothing is recorded for the records left: rerunning the command resumes once the cause is gone."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
# io.atomic_output's temp files for what batch writes: '.<name>.<ext>.<8 random characters of mkstemp>.tmp'
STALE_TEMP_FILE = re.compile(r"\..+\.(pdb|cif|csv|parquet|json|png)\.[a-z0-9_]{8}\.tmp")


def _remove_stale_temp_files(*folders: str) -> None:
    """Temp files of batch's own outputs (STALE_TEMP_FILE) left by a killed run; never a final output, nor a
    user's file that merely looks temporary."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if STALE_TEMP_FILE.fullmatch(entry):
                try:
                    os.unlink(os.path.join(folder, entry))
                except OSError:
                    pass


def _position_label(position: tuple[int, str]) -> str:
    return f"{position[0]}{position[1]}"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (OWASP CSV injection: a leading
    =, +, -, @, tab or carriage return gets a single quote in front)."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def _file_stat(path: str) -> list[int] | None:
    """[size in bytes, modification time in ns] of a file, None if it cannot be read: a structure file whose stat
    still equals the one taken when it was written is not read again to check its SHA-256 (as git trusts its index)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_sidecar(path: str) -> dict | None:
    """A sidecar's content, None if it is missing or cannot be read."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _file_digest(path: str) -> str | None:
    """SHA-256 of a regular file (read in chunks), None for anything else (a link, folder or pipe is not opened)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


def _stop_if_machine_fault(error: BaseException, stage: str) -> None:
    """Raise BatchStopped ('<stage>: <error>') when `error` is the machine's fault (`_is_environment_fault`)."""
    if _is_environment_fault(error):
        raise BatchStopped(f"{stage}: {type(error).__name__}: {one_line(error)}") from None


def _is_environment_fault(error: BaseException) -> bool:
    """Out of memory, a full or read-only disk, a dead worker pool: the machine's problem, not the record's."""
    if isinstance(error, (MemoryError, BrokenProcessPool)):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM)
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


# --------------------------------------------------------------------------------------------
# worker-process tasks (top level: picklable)
# --------------------------------------------------------------------------------------------
def _refine_in_worker(prediction):
    import torch

    torch.set_num_threads(1)  # this process's own setting: OpenMM does the work beside the model pass
    return _refine_task(prediction)


def _refine_task(prediction):
    from immunofold.prediction import refine_prediction

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refined = refine_prediction(prediction)
    return refined, time.perf_counter() - start


def _submit(executor, stage: str, task, *args):
    """executor.submit(task, *args); a pool broken by a dead worker stops the run (BatchStopped: '<stage>: ...')."""
    try:
        return executor.submit(task, *args)
    except Exception as error:  # noqa: BLE001
        _stop_if_machine_fault(error, stage)
        raise


def _stop_pool(executor: futures.ProcessPoolExecutor) -> None:
    """Shut a worker pool down at once, its workers terminated: an interrupted run waited for the tasks running in
    them, and a second Ctrl-C during that wait left the process hanging at exit on an idle worker."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())  # no public way before Python 3.14
    manager = getattr(executor, "_executor_manager_thread", None)
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    if manager is not None:  # it reaps the terminated workers too: a join racing it may see a reaped worker as alive
        manager.join(timeout=2)
    for process in processes:
        process.join(timeout=2)
        if process.is_alive():  # SIGTERM ignored (a disposition inherited from the parent) or not yet handled
            process.kill()
            process.join()


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # the batch process died (e.g. SIGKILL): do not linger as an orphan
            os._exit(0)


def _worker_init(parent: int) -> None:
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the batch process handles it
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


# --------------------------------------------------------------------------------------------
# record state: one sidecar per record, a lock per output folder
# --------------------------------------------------------------------------------------------
@contextmanager
def folder_lock(outdir: str) -> Iterator[None]:
    """Hold `OUTDIR/.immunofold/lock` for the run; a second run on the same folder stops with BatchStopped."""
    path = os.path.join(outdir, STATE_DIR, LOCK_FILE)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BatchStopped(f"{outdir}: another immunofold batch ({holder}) is writing into this folder; "
                               "wait for it to finish or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RecordStore:
    """Which records are finished: `OUTDIR/.immunofold/records/<fingerprint>.json` per record.

    A record's fingerprint covers its name, sequences and kind and every option that changes its output (kind,
    numbering, refinement, format, file name, weights version, developability), so a changed record is a new record. A success
    also holds the SHA-256 of its structure file (and its size and modification time, so an untouched file is not
    read again): when another input wrote a different structure under the same file name, the record counts as
    unfinished and is predicted again.

    The store reads the input as a stream: `scan` names each record as it passes (the same names on every pass over
    the same input) and `forget` drops a finished record's names, so memory does not grow with the input. A run of
    more than SHARD_THRESHOLD records writes `structures/<2 hex digits>/<stem>.<format>`: 256 folders, none with
    more than about 40,000 files at 10^7 records.
    """

    def __init__(self, outdir: str, options: dict, total: int):
        self.outdir = outdir
        self.options = options
        self.folder = os.path.join(outdir, STATE_DIR, RECORDS_DIR)
        self.sharded = total > SHARD_THRESHOLD
        self.stems: dict[int, str] = {}  # index -> file stem, for the records passing now
        self.fingerprints: dict[int, str] = {}
        self._written: NameSet | None = None  # "<file>\0<sha256>" of every file a sidecar here names, read when needed

    def scan(self, records: Iterable[Record]) -> Iterator[Record]:
        """Pass `records` through, naming each one (file stem, fingerprint) before it is given out."""
        assign = StemAssigner()
        for record in records:
            stem = None
            if record.error is None:
                stem = self.stems[record.index] = assign(record.name)
            self.fingerprints[record.index] = record.fingerprint(
                **self.options, stem=self.file_stem(stem) if stem else None, version=SIDECAR_VERSION)
            yield record

    def forget(self, record: Record) -> None:
        self.stems.pop(record.index, None)
        self.fingerprints.pop(record.index, None)

    def file_stem(self, stem: str) -> str:
        """The structure file's path under OUTDIR, without the format suffix."""
        if not self.sharded:
            return stem
        return f"{STRUCTURES_DIR}/{hashlib.sha1(stem.encode()).hexdigest()[:2]}/{stem}"

    def structure_file(self, record: Record) -> str:
        return f"{self.file_stem(self.stems[record.index])}.{self.options['fmt']}"

    def path(self, record: Record) -> str:
        return os.path.join(self.folder, f"{self.fingerprints[record.index]}.json")

    def load_raw(self, record: Record) -> dict | None:
        """The record's sidecar as saved, None if there is none (or it cannot be read)."""
        return _read_sidecar(self.path(record))

    def load(self, record: Record) -> dict | None:
        """The record's outcome, or None if it is not finished (or its structure file is gone or was replaced)."""
        data = self.load_raw(record)
        if data is None or data.get("status") == WRITING:
            return None
        if data.get("status") == "ok":
            path = os.path.join(self.outdir, data.get("file", ""))
            file_stat = _file_stat(path)
            if file_stat is None or (file_stat != data.get("file_stat") and _file_digest(path) != data.get("sha256")):
                return None
        return data

    def finished(self, record: Record) -> bool:
        """Whether a rerun leaves the record as it is: it succeeded, or failed for a reason of its own."""
        data = self.load(record)
        return data is not None and not data.get("retry")

    def save(self, record: Record, data: dict) -> None:
        write_text_atomic(self.path(record), json.dumps(data, sort_keys=True))
        if self._written is not None:
            self._remember_written(data)

    def _remember_written(self, data: dict) -> None:
        """Add the file a sidecar names to the files known as written here: by its SHA-256 and, when the sidecar
        has it, its size and modification time (an untouched file is then recognised without being read)."""
        if data.get("file") and data.get("sha256"):
            self._written.add(f"{data['file']}\0named")
            self._written.add(f"{data['file']}\0{data['sha256']}")
            if data.get("file_stat"):
                self._written.add(f"{data['file']}\0stat {data['file_stat']}")

    def sidecar_names(self) -> Iterator[str]:
        """File names of every sidecar in the folder's state, of this run's input and earlier ones."""
        with os.scandir(self.folder) as entries:
            yield from (entry.name for entry in entries if entry.name.endswith(".json"))

    def in_the_way(self, record: Record) -> str | None:
        """Why the record's model path is taken by something batch must not overwrite, or None when it is free
        or holds a file a batch run in this folder wrote. A link, folder or pipe is never read."""
        file_name = self.structure_file(record)
        path = os.path.join(self.outdir, file_name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"{file_name} cannot be checked ({error.strerror or error})"
        if stat.S_ISLNK(mode):
            what = "a symbolic link"
        elif stat.S_ISDIR(mode):
            what = "a folder"
        elif not stat.S_ISREG(mode):
            what = "a special file (pipe, socket or device)"
        elif self.written_here(file_name):
            return None
        elif f"{file_name}\0named" in self._written:
            what = "the model batch wrote, changed since (edited?),"
        else:
            what = "a file no batch run in this folder wrote"
        return (f"{file_name} is in the way: {what} has the model's name; move it away (or write to another "
                "folder) and rerun")

    def written_here(self, file_name: str) -> bool:
        """Whether the regular file now at OUTDIR/file_name is one a batch run in this folder wrote: some sidecar here
        names it with its present SHA-256 (the sidecars are read at the first file found in a record's way)."""
        if self._written is None:
            self._written = NameSet()
            for sidecar in self.sidecar_names():
                data = _read_sidecar(os.path.join(self.folder, sidecar))
                if data is not None:
                    self._remember_written(data)
        path = os.path.join(self.outdir, file_name)
        if f"{file_name}\0stat {_file_stat(path)}" in self._written:
            return True
        digest = _file_digest(path)
        return digest is not None and f"{file_name}\0{digest}" in self._written


# --------------------------------------------------------------------------------------------
# one record's work, the same for both engines (local processes or Ray actors)
# --------------------------------------------------------------------------------------------
def check_numbering(record: Record, resolved: Resolved, numbering: str) -> str | None:
    """Why the record's chains cannot be written in `numbering`, or None."""
    from immunofold.constants import KIND_CHAIN_IDS
    from immunofold.numbering import renumber

    try:
        for chain, chain_id in zip(resolved.chains, KIND_CHAIN_IDS[resolved.kind]):
            renumber(chain, numbering, f"{record.name} chain {chain_id}")
    except InputError as error:
        return input_error_reason(error, record.name)
    return None


def predict_group(predictor, items: list[tuple[str, str, list]], numbering: str) -> list:
    """Predictions of same-length (name, kind, chains) items, in order; an item that breaks the model pass gets its
    exception instead (the others still run). Raises BatchStopped for a fault of the machine."""
    try:
        return predictor.predict_numbered(items, numbering)
    except Exception as error:  # noqa: BLE001
        _stop_if_machine_fault(error, "the model pass failed")
    predictions = []
    for item in items:  # find the record that breaks the pass
        try:
            predictions.append(predictor.predict_numbered([item], numbering)[0])
        except Exception as error:  # noqa: BLE001
            _stop_if_machine_fault(error, "the model pass failed")
            predictions.append(error)
    return predictions


def developability_columns() -> list[str]:
    """Summary columns of `developability=True`: tap_<metric>, tap_<metric>_flag for antibodies (TAP), then
    tnp_<metric>, tnp_<metric>_flag for nanobodies (TNP: other definitions and ranges, so other columns)."""
    from immunofold.developability import TAP_BANDS, TNP_BANDS

    bands = {"antibody": TAP_BANDS, "nanobody": TNP_BANDS}
    return [f"{prefix}_{metric}{suffix}" for kind, prefix in DEVELOPABILITY_PROFILERS.items()
            for metric in bands[kind] for suffix in ("", "_flag")]  # fmt: skip


def _developability_fields(prediction) -> dict:
    """Sidecar fields of the prediction's TAP/TNP profile: {"developability": {metric: {value, flag}}}, or a
    note saying why there is none; nothing for a TCR."""
    from immunofold.developability import profile_prediction

    if prediction.kind not in DEVELOPABILITY_PROFILERS:
        return {}
    try:
        profile = profile_prediction(prediction)
    except InputError as error:
        return {"notes": [*prediction.notes, f"no developability profile: {input_error_reason(error, prediction.name)}"]}
    return {"developability": {m.name: {"value": int(m.value) if m.name.endswith("_length") else round(m.value, 4),
                                        "flag": m.flag} for m in profile.metrics}}


def render(prediction, fmt: str, developability: bool = False) -> tuple[str, dict]:
    """(structure file text, the success sidecar's fields that depend on the prediction) of one prediction;
    developability: add its TAP/TNP profile (`_developability_fields`)."""
    text = prediction.to_pdb_string() if fmt == "pdb" else prediction.to_cif_string()
    chains, offset = [], 0
    for chain_id, chain in zip(prediction.chain_ids, prediction.chains):
        n = len(chain)
        chains.append({
            "id": chain_id, "class": chain.chain_class, "length": n,
            "imgt": [_position_label(p) for p in chain.positions],
            "error": [round(float(e), 3) for e in prediction.error[offset : offset + n]],
        })
        offset += n
    data = {
        "status": "ok", "kind": prediction.kind, "mean_error": round(prediction.mean_error, 6),
        "cdr3_error": {k: (None if math.isnan(v) else round(v, 6)) for k, v in prediction.cdr3_errors().items()},
        "chains": chains, "refined": bool(prediction.refined), "refine_message": prediction.refine_message,
        "error_calibrated": bool(prediction.error_calibrated),
        "notes": list(prediction.notes), "weights": prediction.weights_version,
    }
    if developability:
        data.update(_developability_fields(prediction))
    return text, data


class Recorder:
    """Writes outcomes through the RecordStore (structure file, then sidecar), counts them and moves the progress
    bar. Both engines record through it, so a record's files do not depend on where it was predicted."""

    def __init__(self, store: RecordStore, on_event=None):
        self.store = store
        self.on_event = on_event or (lambda event, record: None)
        self.done = self.failed = self.skipped = 0
        self.bar = None

    def fail(self, record: Record, reason: str, kind: str = "", seconds: float = 0.0, **extra) -> None:
        data = {"status": "failed", "name": record.name, "source": record.source, "kind": kind or "",
                "reason": one_line(reason), "seconds": round(seconds, 4), **extra}
        self.store.save(record, data)
        self.failed += 1
        self._finish(record)

    def fail_in_the_way(self, record: Record, reason: str, kind: str = "", seconds: float = 0.0) -> None:
        """A failure whose cause lies outside the record (`RecordStore.in_the_way`): the next run tries it again, an
        earlier model of it is not removed, and the file and SHA-256 an earlier sidecar of it named stay known as
        this folder's (so the model, put back unchanged, is batch's own again)."""
        earlier = self.store.load_raw(record) or {}
        known = {key: earlier[key] for key in ("file", "sha256") if earlier.get("file") and earlier.get("sha256")}
        self.fail(record, reason, kind, seconds, retry=True, **known)

    def succeed(self, record: Record, prediction, seconds: float) -> None:
        start = time.perf_counter()
        try:
            text, data = render(prediction, self.store.options["fmt"], self.store.options.get("developability", False))
        except Exception as error:  # noqa: BLE001  one record's model that cannot be written does not stop the run
            _stop_if_machine_fault(error, "writing stopped")
            self.fail(record, f"writing the model failed ({type(error).__name__}: {one_line(error)})", prediction.kind,
                      seconds + time.perf_counter() - start)
            return
        self.write(record, text, data, seconds + time.perf_counter() - start)

    def write(self, record: Record, text: str, data: dict, seconds: float) -> None:
        """Record a success from `render`'s output; seconds: time spent on the record (numbering to text)."""
        file_name = self.store.structure_file(record)
        start = time.perf_counter()
        path = os.path.join(self.store.outdir, file_name)
        blocked = self.store.in_the_way(record)
        if blocked:
            self.fail_in_the_way(record, blocked, data.get("kind", ""), seconds)
            return
        data = {**data, "name": record.name, "source": record.source, "file": file_name,
                "sha256": hashlib.sha256(text.encode()).hexdigest()}
        # the sidecar names the file before it exists, so a run killed in between knows the file as its own
        self.store.save(record, {**data, "status": WRITING})
        try:
            if self.store.sharded:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            write_text_atomic(path, text)
        except OSError as error:  # the folder's problem (full, read-only, gone), not the record's
            with contextlib.suppress(OSError):
                os.unlink(self.store.path(record))
            raise BatchStopped(f"cannot write {path}: {error.strerror or error}") from None
        self.on_event("structure_written", record)
        data = {**data, "file_stat": _file_stat(path), "seconds": round(seconds + time.perf_counter() - start, 4)}
        self.store.save(record, data)
        self.done += 1
        self._finish(record)

    def skip(self, record: Record) -> None:
        """A record finished by an earlier run: leaves this run's count (and ETA)."""
        self.skipped += 1
        self.store.forget(record)
        if self.bar is not None:
            self.bar.total -= 1

    def _finish(self, record: Record) -> None:
        self.store.forget(record)
        self.on_event("record_done", record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"ok={self.done} failed={self.failed} skipped={self.skipped}", refresh=False)


# --------------------------------------------------------------------------------------------
# local engine: numbering in workers, same-length groups through the ensemble, refinement in workers
# --------------------------------------------------------------------------------------------
def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class _Pipeline:
    def __init__(self, recorder: Recorder, kind, batch_size, workers, refine, numbering, device, predictor, threads):
        self.recorder = recorder
        self.kind, self.batch_size, self.workers = kind, batch_size, workers
        self.refine, self.numbering, self.device = refine, numbering, device
        self._predictor = predictor
        self.threads = threads  # None: torch's setting as the caller left it

    @property
    def predictor(self):
        if self._predictor is None:
            from immunofold.prediction import Predictor

            self._predictor = Predictor(device=self.device,
                                        clean_geometry=self.recorder.store.options.get("clean_geometry", False),
                                        members_side_by_side=self.threads is not None,
                                        fast=self.recorder.store.options.get("fast", False))
        return self._predictor

    def _numbered(self, records: Iterable[Record], executor):
        """(record, Resolved | reason, seconds) in input order; numbering runs ahead in the workers. Yields
        NUMBERING_BUSY, once per wait, when the next result is not ready yet, so that the caller can run the model
        meanwhile instead of waiting."""
        if executor is None:
            for record in records:
                (result, seconds), = resolve_records([record], self.kind)
                yield record, result, seconds
            return
        chunks = _chunks(records, NUMBERING_CHUNK)
        pending: deque = deque()
        ahead = max(4, 4 * self.workers)
        while True:
            while len(pending) < ahead and (chunk := next(chunks, None)) is not None:
                pending.append((chunk, _submit(executor, "numbering stopped", resolve_records, chunk, self.kind)))
            if not pending:
                return
            if not pending[0][1].done():
                yield NUMBERING_BUSY
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except Exception:  # a crashed worker: number this chunk here instead  # noqa: BLE001
                results = resolve_records(chunk, self.kind)
            for record, (result, seconds) in zip(chunk, results):
                yield record, result, seconds

    def _predict_group(self, group, executor, refining: list) -> None:
        start = time.perf_counter()
        items = [(record.name, resolved.kind, resolved.chains) for record, resolved, _ in group]
        predictions = predict_group(self.predictor, items, self.numbering)
        share = (time.perf_counter() - start) / len(group)
        for (record, resolved, seconds), prediction in zip(group, predictions):
            if isinstance(prediction, Exception):
                self.recorder.fail(record, f"prediction failed ({type(prediction).__name__}: {one_line(prediction)})",
                                   resolved.kind, seconds + share)
            elif not self.refine:
                self.recorder.succeed(record, prediction, seconds + share)
            elif executor is not None:
                self._wait_for_room(refining)
                refining.append((record, seconds + share, _submit(executor, "refinement stopped", _refine_in_worker, prediction)))
            else:
                refined, refine_seconds = _refine_task(prediction)
                self.recorder.succeed(record, refined, seconds + share + refine_seconds)

    def _predict_fullest(self, buckets: dict[int, list], executor, refining: list) -> None:
        """Predict the bucket holding the most records (the earliest made of those on a tie) and drop it."""
        self._predict_group(buckets.pop(max(buckets, key=lambda k: len(buckets[k]))), executor, refining)

    def _wait_for_room(self, refining: list) -> None:
        """Record the refinements that have finished, and wait while REFINING_PER_WORKER predictions per worker are
        still waiting for or in refinement."""
        self._collect_refined(refining, wait=False)
        while len(refining) >= REFINING_PER_WORKER * max(self.workers, 1):
            futures.wait([future for _, _, future in refining], return_when=futures.FIRST_COMPLETED)
            self._collect_refined(refining, wait=False)

    def _collect_refined(self, refining: list, wait: bool) -> None:
        still = []
        for record, seconds, future in refining:
            if not wait and not future.done():
                still.append((record, seconds, future))
                continue
            try:
                refined, refine_seconds = future.result()
            except Exception as error:  # noqa: BLE001
                _stop_if_machine_fault(error, "refinement stopped")
                self.recorder.fail(record, f"refinement crashed ({type(error).__name__}: {one_line(error)})",
                                   seconds=seconds)
                continue
            self.recorder.succeed(record, refined, seconds + refine_seconds)
        refining[:] = still

    def run(self, pending: Iterable[Record]) -> None:
        """Predict `pending` (records whose `error` is None), saving each outcome as it is known."""
        executor = None
        if self.workers > 0:
            executor = futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads or previous_threads)
        try:
            self._stream(pending, executor)
        except BaseException:  # Ctrl-C, SIGTERM, BatchStopped: stop the workers now, do not wait for them
            if executor is not None:
                _stop_pool(executor)
                executor = None
            raise
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(previous_threads)

    def _stream(self, pending: Iterable[Record], executor) -> None:
        buckets: dict[int, list] = {}  # total length -> [(record, resolved, numbering seconds)]
        refining: list = []
        for item in self._numbered(pending, executor):
            if item is NUMBERING_BUSY:  # run the model on the fullest bucket rather than wait for the numbering
                if buckets:
                    self._predict_fullest(buckets, executor, refining)
                continue
            record, result, seconds = item
            if isinstance(result, str):
                self.recorder.fail(record, result, seconds=seconds)
                continue
            problem = check_numbering(record, result, self.numbering)
            if problem:
                self.recorder.fail(record, problem, result.kind, seconds)
                continue
            bucket = buckets.setdefault(sum(len(chain) for chain in result.chains), [])
            bucket.append((record, result, seconds))
            # a bucket that reaches batch_size is the fullest: every other one ran when it reached it
            if len(bucket) >= self.batch_size or sum(map(len, buckets.values())) >= MAX_HELD:
                self._predict_fullest(buckets, executor, refining)
            if refining:
                self._collect_refined(refining, wait=False)
        for length in sorted(buckets, key=lambda k: buckets[k][0][0].index):
            self._predict_group(buckets[length], executor, refining)
        self._collect_refined(refining, wait=True)


# --------------------------------------------------------------------------------------------
# reports: summary.csv and failures.csv, rebuilt from the record store
# --------------------------------------------------------------------------------------------
PARQUET_TYPES = {"mean_error": "float64", "refined": "bool", "error_calibrated": "bool", "seconds": "float64",
                 **{f"cdr3_error_{c}": "float64" for c in CHAIN_COLUMNS}, **{f"length_{c}": "int32" for c in CHAIN_COLUMNS}}


def _summary_row(record: Record, data: dict) -> dict:
    """One summary row as typed values (None: empty; developability columns only where the sidecar has them)."""
    row = {"name": record.name, "kind": data.get("kind") or None, "status": data["status"], "seconds": data.get("seconds"),
           "file": None, "mean_error": None, "refined": None, "error_calibrated": None, "notes": None}
    if data["status"] == "ok":
        row.update(file=data["file"], mean_error=data["mean_error"], refined=bool(data["refined"]),
                   error_calibrated=data.get("error_calibrated"),  # absent from sidecars of packages before 0.10.0
                   notes="; ".join([*data.get("notes", []), *filter(None, [data.get("refine_message")])]) or None)
        for chain in data["chains"]:
            row[f"length_{chain['id']}"] = chain["length"]
            row[f"cdr3_error_{chain['id']}"] = data["cdr3_error"].get(chain["id"])
        prefix = DEVELOPABILITY_PROFILERS.get(data["kind"])
        for metric, result in data.get("developability", {}).items():
            row[f"{prefix}_{metric}"], row[f"{prefix}_{metric}_flag"] = result["value"], result["flag"]
    return row


def _csv_cell(column: str, value) -> str:
    if column in ("refined", "error_calibrated") and value is not None:
        return "yes" if value else "no"
    return spreadsheet_safe(value) if isinstance(value, str) else _fmt(value)


class FinishedRecords:
    """The fingerprints, names and structure files of this input's finished records, gathered while `write_reports`
    reads every sidecar, for `remove_superseded`; in `NameSet`s, so memory stays bounded."""

    def __init__(self):
        self.fingerprints, self.names, self.files, self.count = NameSet(), NameSet(), NameSet(), 0

    def add(self, fingerprint: str, name: str, data: dict) -> None:
        self.count += 1
        self.fingerprints.add(fingerprint)
        if not data.get("retry"):  # a record with a file in its way keeps its earlier model until it finishes
            self.names.add(name)
        if data["status"] == "ok":
            self.files.add(data["file"])


def write_reports(records: Iterable[Record], store: RecordStore, keep_ok: bool = False,
                  finished: FinishedRecords | None = None) -> tuple[int, int, list[dict]]:
    """Write summary.csv, summary.parquet (every record, in input order; SUMMARY_COLUMNS, then
    `developability_columns()` when the run has that option) and failures.csv from the record store,
    streaming: rows wait as Arrow record batches (ARROW_ROWS each) until a Parquet row group of PARQUET_ROWS
    records is written. (ok, failed, [kind, mean_error and cdr3_error of each ok record] if keep_ok else []:
    what the plots' overview needs, ~0.1 KB a record instead of the whole sidecar); each finished record also goes
    into `finished`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = SUMMARY_COLUMNS + (developability_columns() if store.options.get("developability") else [])
    types = {column: "string" if column.endswith("_flag") else "int32" if column.endswith("_length") else "float64"
             for column in columns[len(SUMMARY_COLUMNS):]}
    schema = pa.schema([(column, PARQUET_TYPES.get(column) or types.get(column, "string")) for column in columns])
    n_ok = n_failed = 0
    ok_rows: list[dict] = []
    with ExitStack() as stack:
        paths = [stack.enter_context(atomic_output(os.path.join(store.outdir, name)))
                 for name in (SUMMARY_FILE, FAILURES_FILE, PARQUET_FILE)]
        summary = stack.enter_context(open(paths[0], "w", newline=""))
        failures = stack.enter_context(open(paths[1], "w", newline=""))
        parquet = stack.enter_context(pq.ParquetWriter(paths[2], schema))
        summary_writer = csv.DictWriter(summary, columns, lineterminator="\n")
        failure_writer = csv.DictWriter(failures, FAILURE_COLUMNS, lineterminator="\n")
        summary_writer.writeheader()
        failure_writer.writeheader()
        rows: list[dict] = []  # the next record batch
        batches: list = []  # the next row group
        held = 0  # rows in `batches`
        for record in store.scan(records):
            data = store.load(record)
            if data is not None and finished is not None:
                finished.add(store.fingerprints[record.index], record.name, data)
            data = data or {"status": "failed", "kind": "", "reason": "not finished (run interrupted)", "seconds": None}
            store.forget(record)
            row = _summary_row(record, data)
            if data["status"] == "ok":
                n_ok += 1
                if keep_ok:
                    ok_rows.append({key: data[key] for key in OVERVIEW_FIELDS})
            else:
                n_failed += 1
                failure_writer.writerow({name: spreadsheet_safe(value) for name, value in
                                         (("name", record.name), ("source", record.source), ("reason", data["reason"]))})
            summary_writer.writerow({column: _csv_cell(column, value) for column, value in row.items()})
            rows.append(row)
            if len(rows) == ARROW_ROWS or held + len(rows) == PARQUET_ROWS:
                batches.append(pa.RecordBatch.from_pylist(rows, schema))
                held += len(rows)
                rows = []
            if held == PARQUET_ROWS:
                parquet.write_table(pa.Table.from_batches(batches, schema))
                batches, held = [], 0
        if rows:
            batches.append(pa.RecordBatch.from_pylist(rows, schema))
        if batches:
            parquet.write_table(pa.Table.from_batches(batches, schema))
    return n_ok, n_failed, ok_rows


def remove_superseded(store: RecordStore, finished: FinishedRecords) -> int:
    """After a finished run: drop the sidecars of earlier runs for names this input finished again (other options,
    another file name) and the structure files they name, so the folder's files for this input's records are those
    summary.csv lists. A file is removed only if this folder's batch wrote it (its sidecar's SHA-256 still matches)
    and no finished record of this input uses that name; records of earlier inputs are left alone. Returns how many
    files were removed."""

    removed = 0
    if sum(1 for _ in store.sidecar_names()) == finished.count:  # no earlier run's sidecars: nothing to look at
        return removed
    for sidecar in store.sidecar_names():
        if sidecar.removesuffix(".json") in finished.fingerprints:
            continue
        path = os.path.join(store.folder, sidecar)
        data = _read_sidecar(path)
        if data is None or data.get("name") not in finished.names:  # unreadable, or a record of an earlier input: kept
            continue
        file = data.get("file")
        if data.get("status") in ("ok", WRITING) and file and file not in finished.files:
            structure = os.path.join(store.outdir, file)
            if os.path.isfile(structure) and _file_digest(structure) == data.get("sha256"):
                os.unlink(structure)
                removed += 1
        os.unlink(path)
    return removed


def _weights_version(predictor, fast: bool) -> str:
    if predictor is not None:
        return predictor.ensemble.version
    from immunofold.weights import required_member_sets, weights_version

    return weights_version(required_member_sets(fast))


def run_batch(
    input_path: str | os.PathLike,
    outdir: str | os.PathLike,
    kind: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    refine: bool = True,
    plots: bool = False,
    fmt: str = "pdb",
    numbering: str = "imgt",
    device: str = "cpu",
    progress: bool = False,
    predictor=None,
    on_event: Callable[[str, Record], None] | None = None,
    threads: int | None = None,
    on_note: Callable[[str], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    ray_workers: int | None = None,
    developability: bool = False,
    clean_geometry: bool = False,
    fast: bool = False,
) -> BatchReport:
    """Predict every record of a FASTA/CSV/TSV/AIRR file into `outdir`; resumable (see module docs).

    kind: auto | antibody | nanobody | tcr. batch_size: records handed to the model at once (same-length
    records only; the ensemble runs them in groups of at most `prediction.MAX_FORWARD_BATCH`).
    workers: processes for numbering and refinement (0: all in this process; the command line passes
    `default_workers(refine)`).
    threads: torch threads for the model pass during the run, set for the run and restored (the command line passes
    `default_threads(workers, refine)`, and ensemble members then run side by side); None leaves torch's thread count and
    the members' order as the caller has them (what a library caller such as the web server wants). predictor: a loaded `immunofold.prediction.Predictor` to reuse. on_event(event, record) is
    called with "structure_written" and "record_done" (for progress hooks and tests); on_note(text) with
    notes about the input as a whole (e.g. heavy chains read as nanobodies), before the run starts.
    Raises InputError for an unreadable input file or bad options, plots.PlotsUnavailable when `plots`
    is asked for without matplotlib, and BatchStopped when the machine, not a record, stops the run
    (no GPU, out of memory, disk full, another run on the folder). A bad record never raises: it goes to
    failures.csv. summary.csv and failures.csv are written even when the run is interrupted.
    engine: local (this machine's processes) or ray (`immunofold.ray_engine`: a local Ray runtime, or the cluster
    at `address`, with `ray_workers` actors; `workers` and `threads` are the local engine's).
    developability: add each antibody's TAP and each nanobody's TNP profile (value and flag per metric) to the
    summary (`developability_columns()`; empty cells for other kinds), computed where the structure is rendered.
    clean_geometry: give unrefined models real peptide bonds and no clashes without OpenMM (`cleanup`).
    fast: the packaged fast member set (`prediction.predict`'s `fast`); a run resumes only with the set it began with.
    """
    start = time.perf_counter()
    if kind not in KIND_CHOICES:
        raise InputError("--kind", f"unknown receptor kind {kind!r} ({', '.join(KIND_CHOICES)})")
    if fmt not in STRUCTURE_FORMATS:
        raise InputError("--format", f"unknown format {fmt!r} (pdb or cif)")
    if numbering not in SCHEMES:
        raise InputError("--numbering", f"unknown numbering scheme {numbering!r} ({', '.join(SCHEMES)})")
    if int(batch_size) < 1:
        raise InputError(f"--batch-size {batch_size}", "give 1 or more")
    if int(workers) < 0:
        raise InputError(f"--workers {workers}", "give 0 or more")
    if ray_workers is not None and int(ray_workers) < 1:
        raise InputError(f"--workers {ray_workers}", "the Ray engine needs 1 or more actors (default: one per CPU)")
    if threads is not None and int(threads) < 1:
        raise InputError(f"--threads {threads}", "give 1 or more")
    if engine not in ENGINES:
        raise InputError("--engine", f"unknown engine {engine!r} ({', '.join(ENGINES)})")
    if address and engine != "ray":
        raise InputError("--address", "names a Ray cluster: add --engine ray")
    if clean_geometry and refine:
        raise InputError("--clean-geometry", "applies to unrefined models: add --no-refine (refined models have real "
                                             "geometry)")
    if developability and kind == "tcr":
        raise InputError("--developability", "profiles cover antibodies and nanobodies, not TCRs")
    if numbering != "imgt" and kind == "tcr":
        raise InputError("--numbering", f"{numbering} numbering is defined for antibodies only; TCRs take imgt")
    if engine == "ray":
        from immunofold.ray_engine import check_address, require_ray

        require_ray()
        check_address(address)
    if predictor is None:
        from immunofold.prediction import check_device

        check_device(device, "--device")
    if plots:
        from immunofold.plots import require_matplotlib

        require_matplotlib()
    outdir = os.fspath(outdir)
    if not outdir.strip():
        raise InputError("-o", "give an output folder (an empty name would write into the current folder)")

    def records() -> Iterator[Record]:  # one pass over the input file; each pass gives the same records
        try:
            yield from iter_records(input_path)
        except OSError as error:  # a failing disk under the input or the names' temporary file (inputs.NameSet)
            _stop_if_machine_fault(error, f"reading {os.fspath(input_path)}")
            raise

    total, notes = _count_and_notes(records(), kind)
    for note in notes:
        (on_note or (lambda text: None))(note)
    weights = _weights_version(predictor, fast)  # unusable weights stop the run before it makes a folder
    try:
        os.makedirs(os.path.join(outdir, STATE_DIR, RECORDS_DIR), exist_ok=True)
    except OSError as error:  # a full disk stops the run (free space, then resume); a path the user cannot write is theirs
        problem = f"{outdir}: cannot create the output folder ({error.strerror or error})"
        passing = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM)
        raise (BatchStopped(problem) if passing else InputError("-o", problem)) from None
    options = {"kind": kind, "numbering": numbering, "refine": bool(refine), "fmt": fmt, "weights": weights}
    if developability:  # only when asked: the fingerprints of runs without it stay as they were
        options["developability"] = True
    if fast:  # only when asked: the fingerprints of runs without it stay as they were
        options["fast"] = True
    if clean_geometry:
        if predictor is not None and not predictor.ensemble.clean:
            raise InputError("options", "clean_geometry needs a predictor whose ensemble cleans (Ensemble(clean=True))")
        options["clean_geometry"] = True
    store = RecordStore(outdir, options, total)
    recorder = Recorder(store, on_event)
    if engine == "ray":
        from immunofold.ray_engine import RayEngine

        runner = RayEngine(recorder, kind=kind, batch_size=int(batch_size), refine=bool(refine), numbering=numbering,
                           device=device, address=address, workers=ray_workers)
    else:
        runner = _Pipeline(recorder, kind, int(batch_size), int(workers), bool(refine), numbering, device, predictor,
                           threads)

    def pending() -> Iterator[Record]:
        for record in store.scan(records()):
            if store.finished(record):
                recorder.skip(record)
            elif record.error is not None:
                recorder.fail(record, record.error)
            elif blocked := store.in_the_way(record):  # not predicted while its path is taken
                recorder.fail_in_the_way(record, blocked)
            else:
                yield record

    finished = FinishedRecords()
    with folder_lock(outdir):
        _remove_stale_temp_files(outdir, store.folder, os.path.join(outdir, PLOTS_DIR),
                                 *glob.glob(os.path.join(outdir, STRUCTURES_DIR, "*")))
        if progress:
            from tqdm import tqdm

            recorder.bar = tqdm(total=total, unit="rec", desc=f"immunofold batch ({engine})", file=sys.stderr,
                                dynamic_ncols=True, smoothing=0.05)
        try:
            runner.run(pending())
        finally:
            if recorder.bar is not None:
                recorder.bar.close()
            # also when interrupted
            n_ok, n_failed, ok_rows = write_reports(records(), store, keep_ok=plots, finished=finished)
        remove_superseded(store, finished)  # only after a run that finished: the summary now lists the new files
        plot_paths = []
        if plots:
            from immunofold.plots import write_plots

            plot_paths = write_plots(ok_rows, store.stems, store.scan(records()), store,
                                     os.path.join(outdir, PLOTS_DIR))
    return BatchReport(
        total=total, done=recorder.done, failed=recorder.failed, skipped=recorder.skipped, ok_total=n_ok,
        failed_total=n_failed, outdir=outdir, summary_path=os.path.join(outdir, SUMMARY_FILE),
        failures_path=os.path.join(outdir, FAILURES_FILE), seconds=time.perf_counter() - start, plots=plot_paths,
        notes=notes, engine=engine,
    )


def _count_and_notes(records: Iterable[Record], kind: str) -> tuple[int, list[str]]:
    """(number of records, notes about the input as a whole) in one pass."""
    count = 0

    def counted():
        nonlocal count
        for record in records:
            count += 1
            yield record

    notes = input_notes(counted(), kind)
    return count, notes


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
REFINE_WORKER_BYTES = 700 << 20  # a refinement worker's peak memory (~615 MB seen on val antibodies), with a margin


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity, e.g. under taskset or a scheduler's cpuset), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(refine: bool) -> int:
    """Worker processes of a command-line run. Unrefined, 1: numbering is light beside the model pass. Refined, one
    per usable core less one per 8 cores: refinement (~1 CPU-s per Fv) outweighs the model pass (~0.15) about 7 to
    1, and the workers run it side by side (32 val antibodies on 2 cores: 46.3 s with 1 worker, 29.7 s with 2, 30.9
    with 3; the same files); at most as many as half the machine's memory holds (REFINE_WORKER_BYTES each)."""
    if not refine:
        return 1
    cores = usable_cores()
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        memory = None
    by_memory = cores if not memory else max(1, memory // 2 // REFINE_WORKER_BYTES)
    return max(1, min(cores - cores // 8, by_memory))


def default_threads(workers: int, refine: bool) -> int:
    """Torch threads for the model pass of a command-line run. Unrefined, every core: the numbering workers are
    light (64 val antibodies, 1 worker, 2 cores: 12.9 s with 2 threads, 18.7 s with 1, byte-identical files).
    Refined, the cores the workers leave free, since OpenMM keeps each worker busy; at least 1."""
    cores = usable_cores()
    return cores if not refine else max(1, cores - workers)


def _batch_command(args: argparse.Namespace) -> int:
    from immunofold.plots import PlotsUnavailable
    from immunofold.weights import WeightsError

    def note(text: str) -> None:
        print(f"note: {text}", file=sys.stderr)

    if args.engine == "ray":
        workers = 1  # the local pipeline's workers; the Ray actors are `ray_workers`
    else:
        workers = default_workers(refine=not args.no_refine) if args.workers is None else args.workers
    try:
        report = run_batch(
            args.input, args.outdir, kind=args.kind, batch_size=args.batch_size, workers=workers,
            refine=not args.no_refine, plots=args.plots, fmt=args.format, numbering=args.numbering,
            device=args.device, progress=not args.quiet, on_note=note,
            threads=default_threads(workers, refine=not args.no_refine) if args.threads is None else args.threads,
            engine=args.engine, address=args.address, ray_workers=args.workers if args.engine == "ray" else None,
            developability=args.developability, clean_geometry=args.clean_geometry, fast=args.fast,
        )
    except (InputError, PlotsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except WeightsError as error:
        print(f"error: weights: {error}", file=sys.stderr)
        return 2
    except BatchStopped as error:
        print(f"error: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        command = shlex.join(["immunofold", *sys.argv[1:]]) if sys.argv[1:2] == ["batch"] else "the same command"
        print(f"\ninterrupted; finished records are kept, resume with: {command}", file=sys.stderr)
        return 130
    print(f"{report}\nwrote {report.summary_path} and {report.failures_path}")
    if report.ok_total == 0:
        print(f"error: no record could be modelled (reasons in {report.failures_path})", file=sys.stderr)
        return 1
    return 0


def add_batch_parser(commands) -> None:
    """Register `immunofold batch` on the CLI's subcommands."""
    parser = commands.add_parser(
        "batch", help="predict many receptors from a FASTA/CSV/TSV/AIRR file (resumable)",
        description="Predict every record of INPUT into OUTDIR: <name>.pdb per record (structures/<xx>/<name>.pdb "
        f"above {SHARD_THRESHOLD} records), summary.csv, summary.parquet, failures.csv. "
        "FASTA: NAME|H + NAME|L (NAME|A + NAME|B for TCRs), or one record HEAVY:LIGHT, or a lone heavy chain "
        "(nanobody), or an scFv. CSV/TSV: columns name + heavy, light or alpha, beta. AIRR rearrangement TSV: "
        "sequence_id, locus, productive, sequence_alignment_aa or sequence_aa; chains paired by cell_id. "
        "Re-running the same command resumes: finished records are skipped. A file batch did not write (or a "
        "folder or link) at a record's model path is never overwritten: that record fails and is retried next run.",
    )
    parser.add_argument("input", help="FASTA, CSV, TSV or AIRR rearrangement TSV file")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="auto",
                        help="receptor kind (default auto: TCR chains -> tcr, heavy+light -> antibody, lone heavy -> nanobody)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local engine: worker processes for numbering and refinement (0: none; default: 1 "
                        "with --no-refine, else one per core, less one per 8 cores); "
                        "ray engine: actors, each predicting on one CPU (default: one per CPU of the cluster)")
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local (default): this machine; ray: Ray actors (pip install 'immunofold[ray]')")
    parser.add_argument("--address", default=None,
                        help="ray engine: the cluster to join ('auto', 'ray://host:10001' or host:port); "
                        "default: start a Ray runtime on this machine")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"same-length records handed to the model at once (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="skip OpenMM refinement (about 5x faster; raw network geometry: some broken peptide bonds and clashes)",
    )
    from immunofold.cli import CLEAN_GEOMETRY_HELP, FAST_HELP

    parser.add_argument("--clean-geometry", action="store_true", help=CLEAN_GEOMETRY_HELP)
    parser.add_argument("--fast", action="store_true", help=FAST_HELP)
    parser.add_argument("--developability", action="store_true",
                        help="add the TAP (antibodies) / TNP (nanobodies) developability metrics and flags to the summary "
                        "(tap_* and tnp_* columns)")
    parser.add_argument("--plots", action="store_true", help="write error plots (needs matplotlib: pip install 'immunofold[plots]')")
    parser.add_argument("--format", choices=STRUCTURE_FORMATS, default="pdb", help="structure file format (default pdb)")
    parser.add_argument("--numbering", choices=SCHEMES, default="imgt", help="residue numbering (default imgt)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model pass (default: every core with --no-refine, else the cores "
                        "the workers leave free)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_batch_command)
