"""Batch prediction: `immunofold batch INPUT -o OUTDIR` and `run_batch(...)`.

INPUT is FASTA or CSV/TSV (see `immunofold.inputs`). OUTDIR receives one structure file per
record (`<safe name>.pdb`), `summary.csv` (every record, in input order), `failures.csv` (one
line per record that could not be modelled, with its one-line reason) and, with `plots=True`,
`plots/<safe name>.png` plus `plots/overview.png`.

Resumable and atomic
    Every record's outcome is a JSON sidecar `OUTDIR/.immunofold/records/<fingerprint>.json`,
    written (temp file + os.replace) after its structure file. A record is finished when its
    sidecar exists (and, for a success, its structure file with the content the sidecar's hash names).
    The fingerprint covers the record's sequences and every option that changes its output, so an edited
    record or another input reusing a name is predicted again. One run at a time per folder (a lock file
    in OUTDIR/.immunofold). Faults of the machine (no GPU, out of memory, disk full) stop the run
    without marking any record; a rerun resumes. Re-running the same command skips
    finished records; summary.csv and failures.csv are rebuilt from the sidecars, in input
    order, at the end of every run. Only the `seconds` column of summary.csv (wall time spent
    on the record in the run that made it) differs between an interrupted-and-resumed run and
    an uninterrupted one; everything else, and every structure file, is byte-identical.
    No file is ever left half-written under its final name.

Independent of batch composition
    Records are batched only with records of the same total length, so a model pass never pads
    a record: its output is bit-identical whether it runs alone or with any others (padding
    changes float rounding at the 1e-5 Å level, enough to flip the third decimal of a PDB
    coordinate). See tests/test_batch.py.

Work split
    Numbering (anarcism) and refinement (OpenMM) run in `workers` worker processes; the
    ensemble pass runs batched in the main process.
"""

from __future__ import annotations

import argparse
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import multiprocessing
import os
import shlex
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field

from immunofold.inputs import (
    KIND_CHOICES,
    Record,
    Resolved,
    assign_file_stems,
    input_error_reason,
    input_notes,
    one_line,
    parse_input,
    resolve_or_reason,
)
from immunofold.numbering import SCHEMES
from immunofold.io import write_text_atomic
from immunofold.sequences import InputError

STATE_DIR = ".immunofold"
RECORDS_DIR = "records"
LOCK_FILE = "lock"
PLOTS_DIR = "plots"
SUMMARY_FILE = "summary.csv"
FAILURES_FILE = "failures.csv"
DEFAULT_BATCH_SIZE = 16
NUMBERING_CHUNK = 8  # records per task sent to a worker process
MAX_HELD = 512  # numbered records waiting for a same-length batch before the fullest bucket runs anyway
CHAIN_COLUMNS = ("H", "L", "A", "B")
SUMMARY_COLUMNS = (
    ["name", "kind", "status", "file", "mean_error"]
    + [f"cdr3_error_{c}" for c in CHAIN_COLUMNS]
    + [f"length_{c}" for c in CHAIN_COLUMNS]
    + ["refined", "seconds"]
)
FAILURE_COLUMNS = ["name", "source", "reason"]
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

    def __str__(self) -> str:
        return (
            f"{self.total} records: {self.done} predicted, {self.failed} failed, {self.skipped} already finished "
            f"({self.ok_total} ok, {self.failed_total} failed in total) in {self.seconds:.1f} s"
        )


class BatchStopped(RuntimeError):
    """The run cannot go on for a reason that is not the record's (device, memory, disk, a second run on the
    folder). Nothing is recorded for the records left: rerunning the command resumes once the cause is gone."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _remove_stale_temp_files(*folders: str) -> None:
    """Temp files ('.<name>.<random>.tmp') left by a killed run; never a final output."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(".") and entry.endswith(".tmp"):
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


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


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
def _number_chunk(records: list[Record], kind: str) -> list[tuple[Resolved | str, float]]:
    results = []
    for record in records:
        start = time.perf_counter()
        result = resolve_or_reason(record, kind)
        results.append((result, time.perf_counter() - start))
    return results


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
    numbering, refinement, format, file name, weights version), so a changed record is a new record. A success
    also holds the SHA-256 of its structure file: when another input wrote a different structure under the same
    file name, the record counts as unfinished and is predicted again.
    """

    def __init__(self, records: list[Record], outdir: str, options: dict):
        self.outdir = outdir
        self.folder = os.path.join(outdir, STATE_DIR, RECORDS_DIR)
        good = [r for r in records if r.error is None]
        self.stems = dict(zip((r.index for r in good), assign_file_stems([r.name for r in good])))
        self.fingerprints = {
            r.index: r.fingerprint(**options, stem=self.stems.get(r.index), version=SIDECAR_VERSION) for r in records
        }

    def path(self, record: Record) -> str:
        return os.path.join(self.folder, f"{self.fingerprints[record.index]}.json")

    def load(self, record: Record) -> dict | None:
        """The record's outcome, or None if it is not finished (or its structure file is gone or was replaced)."""
        try:
            with open(self.path(record)) as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        if data.get("status") == "ok":
            if _file_digest(os.path.join(self.outdir, data.get("file", ""))) != data.get("sha256"):
                return None
        return data

    def save(self, record: Record, data: dict) -> None:
        write_text_atomic(self.path(record), json.dumps(data, sort_keys=True))


# --------------------------------------------------------------------------------------------
# prediction: numbering in workers, same-length groups through the ensemble, refinement in workers
# --------------------------------------------------------------------------------------------
class _Pipeline:
    def __init__(self, store: RecordStore, kind, batch_size, workers, refine, fmt, numbering, device, predictor,
                 on_event, threads):
        self.store = store
        self.outdir = store.outdir
        self.kind, self.batch_size, self.workers = kind, batch_size, workers
        self.refine, self.fmt, self.numbering, self.device = refine, fmt, numbering, device
        self._predictor = predictor
        self.on_event = on_event or (lambda event, record: None)
        self.done = self.failed = 0
        self.bar = None
        # The model pass gets the cores the workers leave free: on a busy machine, torch threads
        # fighting the numbering workers (or each other) cost more than they give.
        self.threads = threads or max(1, (os.cpu_count() or 1) - workers)

    @property
    def predictor(self):
        if self._predictor is None:
            from immunofold.prediction import Predictor

            self._predictor = Predictor(device=self.device)
        return self._predictor

    # --- outcomes --------------------------------------------------------------------------
    def fail(self, record: Record, reason: str, kind: str = "", seconds: float = 0.0) -> None:
        data = {"status": "failed", "name": record.name, "source": record.source, "kind": kind or "",
                "reason": one_line(reason), "seconds": round(seconds, 4)}
        self.store.save(record, data)
        self.failed += 1
        self.on_event("record_done", record)
        self._tick()

    def succeed(self, record: Record, prediction, seconds: float) -> None:
        stem = self.store.stems[record.index]
        file_name = f"{stem}.{self.fmt}"
        start = time.perf_counter()
        text = prediction.to_pdb_string() if self.fmt == "pdb" else prediction.to_cif_string()
        try:
            write_text_atomic(os.path.join(self.outdir, file_name), text)
        except OSError as error:  # the folder's problem (full, read-only, gone), not the record's
            raise BatchStopped(f"cannot write {os.path.join(self.outdir, file_name)}: {error.strerror or error}") from None
        self.on_event("structure_written", record)
        seconds += time.perf_counter() - start
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
            "status": "ok", "name": record.name, "source": record.source, "kind": prediction.kind,
            "file": file_name, "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "mean_error": round(prediction.mean_error, 6),
            "cdr3_error": {k: (None if math.isnan(v) else round(v, 6)) for k, v in prediction.cdr3_errors().items()},
            "chains": chains, "refined": bool(prediction.refined), "refine_message": prediction.refine_message,
            "notes": list(prediction.notes), "weights": prediction.weights_version, "seconds": round(seconds, 4),
        }
        self.store.save(record, data)
        self.done += 1
        self.on_event("record_done", record)
        self._tick()

    def _tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"ok={self.done} failed={self.failed}", refresh=False)

    # --- stages ----------------------------------------------------------------------------
    def _numbered(self, records: list[Record], executor):
        """(record, Resolved | reason, seconds) in input order; numbering runs ahead in the workers."""
        if executor is None:
            for record in records:
                (result, seconds), = _number_chunk([record], self.kind)
                yield record, result, seconds
            return
        chunks = [records[i : i + NUMBERING_CHUNK] for i in range(0, len(records), NUMBERING_CHUNK)]
        pending: deque = deque()
        ahead = max(4, 4 * self.workers)
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < ahead:
                pending.append((chunks[next_chunk], executor.submit(_number_chunk, chunks[next_chunk], self.kind)))
                next_chunk += 1
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except Exception:  # a crashed worker: number this chunk here instead  # noqa: BLE001
                results = _number_chunk(chunk, self.kind)
            for record, (result, seconds) in zip(chunk, results):
                yield record, result, seconds

    def _check_numbering(self, record: Record, resolved: Resolved) -> str | None:
        from immunofold.constants import KIND_CHAIN_IDS
        from immunofold.numbering import renumber

        try:
            for chain, chain_id in zip(resolved.chains, KIND_CHAIN_IDS[resolved.kind]):
                renumber(chain, self.numbering, f"{record.name} chain {chain_id}")
        except InputError as error:
            return input_error_reason(error, record.name)
        return None

    def _predict_group(self, group, executor, refining: list) -> None:
        start = time.perf_counter()
        items = [(record.name, resolved.kind, resolved.chains) for record, resolved, _ in group]
        try:
            predictions = self.predictor.predict_numbered(items, self.numbering)
        except Exception as error:  # noqa: BLE001
            if _is_environment_fault(error):
                raise BatchStopped(f"the model pass failed: {type(error).__name__}: {one_line(error)}") from None
            predictions = []
            for item in items:  # find the record that breaks the pass; the others still run
                try:
                    predictions.append(self.predictor.predict_numbered([item], self.numbering)[0])
                except Exception as error:  # noqa: BLE001
                    if _is_environment_fault(error):
                        raise BatchStopped(f"the model pass failed: {type(error).__name__}: {one_line(error)}") from None
                    predictions.append(error)
        share = (time.perf_counter() - start) / len(group)
        for (record, resolved, seconds), prediction in zip(group, predictions):
            if isinstance(prediction, Exception):
                self.fail(record, f"prediction failed ({type(prediction).__name__}: {one_line(prediction)})",
                          resolved.kind, seconds + share)
            elif not self.refine:
                self.succeed(record, prediction, seconds + share)
            elif executor is not None:
                refining.append((record, seconds + share, executor.submit(_refine_in_worker, prediction)))
            else:
                refined, refine_seconds = _refine_task(prediction)
                self.succeed(record, refined, seconds + share + refine_seconds)

    def _collect_refined(self, refining: list, wait: bool) -> None:
        still = []
        for record, seconds, future in refining:
            if not wait and not future.done():
                still.append((record, seconds, future))
                continue
            try:
                refined, refine_seconds = future.result()
            except Exception as error:  # noqa: BLE001
                if _is_environment_fault(error):
                    raise BatchStopped(f"refinement stopped: {type(error).__name__}: {one_line(error)}") from None
                self.fail(record, f"refinement crashed ({type(error).__name__}: {one_line(error)})", seconds=seconds)
                continue
            self.succeed(record, refined, seconds + refine_seconds)
        refining[:] = still

    def run(self, pending: list[Record]) -> None:
        """Predict `pending` (records whose `error` is None), saving each outcome as it is known."""
        if not pending:
            return
        executor = None
        if self.workers > 0:
            executor = futures.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self._stream(pending, executor)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(previous_threads)

    def _stream(self, pending: list[Record], executor) -> None:
        buckets: dict[int, list] = {}  # total length -> [(record, resolved, numbering seconds)]
        held = 0
        refining: list = []
        for record, result, seconds in self._numbered(pending, executor):
            if isinstance(result, str):
                self.fail(record, result, seconds=seconds)
                continue
            problem = self._check_numbering(record, result)
            if problem:
                self.fail(record, problem, result.kind, seconds)
                continue
            length = sum(len(chain) for chain in result.chains)
            bucket = buckets.setdefault(length, [])
            bucket.append((record, result, seconds))
            held += 1
            if len(bucket) >= self.batch_size or held >= MAX_HELD:
                fullest = length if len(bucket) >= self.batch_size else max(buckets, key=lambda k: len(buckets[k]))
                group = buckets.pop(fullest)
                held -= len(group)
                self._predict_group(group, executor, refining)
            if refining:
                self._collect_refined(refining, wait=False)
        for length in sorted(buckets, key=lambda k: buckets[k][0][0].index):
            self._predict_group(buckets[length], executor, refining)
        self._collect_refined(refining, wait=True)


# --------------------------------------------------------------------------------------------
# reports: summary.csv and failures.csv, rebuilt from the record store
# --------------------------------------------------------------------------------------------
def write_reports(records: list[Record], store: RecordStore) -> tuple[int, int, list[dict]]:
    """Write summary.csv (every record, in input order) and failures.csv; (ok, failed, ok sidecars)."""
    summary, failures, ok_rows = io.StringIO(), io.StringIO(), []
    summary_writer = csv.DictWriter(summary, SUMMARY_COLUMNS, lineterminator="\n")
    failure_writer = csv.DictWriter(failures, FAILURE_COLUMNS, lineterminator="\n")
    summary_writer.writeheader()
    failure_writer.writeheader()
    n_ok = n_failed = 0
    for record in records:
        data = store.load(record) or {
            "status": "failed", "kind": "", "reason": "not finished (run interrupted)", "seconds": None,
        }
        row = {"name": spreadsheet_safe(record.name), "kind": data.get("kind", ""), "status": data["status"],
               "seconds": _fmt(data.get("seconds"))}
        if data["status"] == "ok":
            n_ok += 1
            ok_rows.append(data)
            row.update(file=spreadsheet_safe(data["file"]), mean_error=_fmt(data["mean_error"]),
                       refined="yes" if data["refined"] else "no")
            for chain in data["chains"]:
                row[f"length_{chain['id']}"] = chain["length"]
                row[f"cdr3_error_{chain['id']}"] = _fmt(data["cdr3_error"].get(chain["id"]))
        else:
            n_failed += 1
            failure_writer.writerow({name: spreadsheet_safe(value) for name, value in
                                     (("name", record.name), ("source", record.source), ("reason", data["reason"]))})
        summary_writer.writerow(row)
    write_text_atomic(os.path.join(store.outdir, SUMMARY_FILE), summary.getvalue())
    write_text_atomic(os.path.join(store.outdir, FAILURES_FILE), failures.getvalue())
    return n_ok, n_failed, ok_rows


def _weights_version(predictor) -> str:
    if predictor is not None:
        return predictor.ensemble.version
    from immunofold.weights import packaged_weight_files, weights_version

    return weights_version(packaged_weight_files())


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
) -> BatchReport:
    """Predict every record of a FASTA/CSV/TSV file into `outdir`; resumable (see module docs).

    kind: auto | antibody | nanobody | tcr. batch_size: records handed to the model at once (same-length
    records only; the ensemble runs them in groups of at most `prediction.MAX_FORWARD_BATCH`).
    workers: processes for numbering and refinement (0: all in this process).
    threads: torch threads for the model pass during the run (default: CPU cores minus workers,
    at least 1). predictor: a loaded `immunofold.prediction.Predictor` to reuse. on_event(event, record) is
    called with "structure_written" and "record_done" (for progress hooks and tests); on_note(text) with
    notes about the input as a whole (e.g. heavy chains read as nanobodies), before the run starts.
    Raises InputError for an unreadable input file or bad options, plots.PlotsUnavailable when `plots`
    is asked for without matplotlib, and BatchStopped when the machine, not a record, stops the run
    (no GPU, out of memory, disk full, another run on the folder). A bad record never raises: it goes to
    failures.csv. summary.csv and failures.csv are written even when the run is interrupted.
    """
    start = time.perf_counter()
    if kind not in KIND_CHOICES:
        raise InputError("--kind", f"unknown receptor kind {kind!r} ({', '.join(KIND_CHOICES)})")
    if fmt not in ("pdb", "cif"):
        raise InputError("--format", f"unknown format {fmt!r} (pdb or cif)")
    if numbering not in SCHEMES:
        raise InputError("--numbering", f"unknown numbering scheme {numbering!r} ({', '.join(SCHEMES)})")
    if int(batch_size) < 1 or int(workers) < 0:
        raise InputError("options", "batch size must be >= 1 and workers >= 0")
    if predictor is None:
        from immunofold.prediction import check_device

        check_device(device, "--device")
    if plots:
        from immunofold.plots import require_matplotlib

        require_matplotlib()
    outdir = os.fspath(outdir)
    records = parse_input(input_path)
    notes = input_notes(records, kind)
    for note in notes:
        (on_note or (lambda text: None))(note)
    try:
        os.makedirs(os.path.join(outdir, STATE_DIR, RECORDS_DIR), exist_ok=True)
    except OSError as error:
        raise BatchStopped(f"{outdir}: cannot create the output folder ({error.strerror or error})") from None
    options = {"kind": kind, "numbering": numbering, "refine": bool(refine), "fmt": fmt,
               "weights": _weights_version(predictor)}
    store = RecordStore(records, outdir, options)
    pipeline = _Pipeline(store, kind, int(batch_size), int(workers), bool(refine), fmt, numbering, device, predictor,
                         on_event, threads)
    with folder_lock(outdir):
        _remove_stale_temp_files(outdir, store.folder, os.path.join(outdir, PLOTS_DIR))
        pending = [record for record in records if store.load(record) is None]
        skipped = len(records) - len(pending)
        if progress:
            from tqdm import tqdm

            pipeline.bar = tqdm(total=len(records), initial=skipped, unit="rec", desc="immunofold batch",
                                file=sys.stderr, dynamic_ncols=True, smoothing=0.05)
        try:
            for record in [r for r in pending if r.error is not None]:
                pipeline.fail(record, record.error)
            pipeline.run([r for r in pending if r.error is None])
        finally:
            if pipeline.bar is not None:
                pipeline.bar.close()
            n_ok, n_failed, ok_rows = write_reports(records, store)  # also when interrupted: disk matches the summary
        plot_paths = []
        if plots:
            from immunofold.plots import write_plots

            plot_paths = write_plots(ok_rows, store.stems, records, store, os.path.join(outdir, PLOTS_DIR))
    return BatchReport(
        total=len(records), done=pipeline.done, failed=pipeline.failed, skipped=skipped, ok_total=n_ok,
        failed_total=n_failed, outdir=outdir, summary_path=os.path.join(outdir, SUMMARY_FILE),
        failures_path=os.path.join(outdir, FAILURES_FILE), seconds=time.perf_counter() - start, plots=plot_paths,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _batch_command(args: argparse.Namespace) -> int:
    from immunofold.plots import PlotsUnavailable

    def note(text: str) -> None:
        print(f"note: {text}", file=sys.stderr)

    try:
        report = run_batch(
            args.input, args.outdir, kind=args.kind, batch_size=args.batch_size, workers=args.workers,
            refine=not args.no_refine, plots=args.plots, fmt=args.format, numbering=args.numbering,
            device=args.device, progress=not args.quiet, threads=args.threads, on_note=note,
        )
    except (InputError, PlotsUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
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
        "batch", help="predict many receptors from a FASTA/CSV/TSV file (resumable)",
        description="Predict every record of INPUT into OUTDIR: <name>.pdb per record, summary.csv, failures.csv. "
        "FASTA: NAME|H + NAME|L (NAME|A + NAME|B for TCRs), or one record HEAVY:LIGHT, or a lone heavy chain "
        "(nanobody), or an scFv. CSV/TSV: columns name + heavy, light or alpha, beta. "
        "Re-running the same command resumes: finished records are skipped.",
    )
    parser.add_argument("input", help="FASTA, CSV or TSV file")
    parser.add_argument("-o", "--outdir", required=True, help="output folder")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="auto",
                        help="receptor kind (default auto: TCR chains -> tcr, heavy+light -> antibody, lone heavy -> nanobody)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes for numbering and refinement (0: none; default 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"same-length records handed to the model at once (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument(
        "--no-refine", action="store_true",
        help="skip OpenMM refinement (about 30x faster; raw network geometry: some broken peptide bonds and clashes)",
    )
    parser.add_argument("--plots", action="store_true", help="write error plots (needs matplotlib: pip install 'immunofold[plots]')")
    parser.add_argument("--format", choices=("pdb", "cif"), default="pdb", help="structure file format (default pdb)")
    parser.add_argument("--numbering", choices=SCHEMES, default="imgt", help="residue numbering (default imgt)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model pass (default: CPU cores minus workers, at least 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_batch_command)
