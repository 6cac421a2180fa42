"""The Ray engine of `immunofold batch --engine ray`: the same records, files and summary as the local engine,
predicted by Ray actors on this machine or on a cluster (`pip install 'immunofold[ray]'`).

The driver (the `immunofold batch` process) reads the input as a stream, sends chunks of CHUNK records to the
actors and writes every outcome through the same `batch.Recorder` as the local engine, so a record's identity,
file names and sidecars do not depend on the engine. Each actor loads the ensemble once, then per chunk numbers the
records, predicts same-length groups (a model pass never pads, so coordinates do not depend on the grouping),
refines when asked and renders the structure text (`batch.render`); the driver only writes files.

Faults: an actor whose process dies (kill -9, a lost node) is restarted by Ray and its in-flight chunks are retried
(`max_task_retries`), so a kill costs at most those chunks. A chunk that still fails is retried one record at a
time; a record that kills its worker every time is a failure row, never an endless retry. A bad record never
kills a worker: it comes back as a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterable

from immunofold.batch import (
    BatchStopped,
    Recorder,
    _chunks,
    _refine_task,
    check_numbering,
    predict_group,
    render,
)
from immunofold.inputs import Record, one_line, resolve_records
from immunofold.sequences import InputError

CHUNK = 16  # records per actor task: big enough for same-length groups, small enough that a kill costs little
IN_FLIGHT_PER_ACTOR = 2  # chunks queued per actor, so an actor never waits for the driver
TASK_RETRIES = 2  # retries of a chunk whose actor died (then one record at a time)
LOCAL_CPUS = 2  # CPUs of the Ray runtime started on this machine when no --address is given


def require_ray() -> None:
    """InputError with the install command when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError("--engine ray", "Ray is not installed: pip install 'immunofold[ray]'") from None


ADDRESS_TIMEOUT_S = 5.0  # a head node answers a TCP connection at once; ray.init itself retries for minutes
# Ray's head (GCS) and Ray Client servers speak gRPC, i.e. HTTP/2: to the client connection preface plus an empty
# SETTINGS frame they answer with a SETTINGS frame (9-byte header, type 4). Anything else is not a Ray address.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def check_address(address: str | None) -> None:
    """InputError unless a gRPC server answers at a Ray address ("HOST:PORT" or "ray://HOST:PORT"; "auto" and no
    address are left to Ray): ray.init retries an unreachable head, or a port where something else listens, for
    minutes without raising."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError("--address", f"{address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S) as connection:
            connection.sendall(HTTP2_PREFACE)
            reply = b""
            while len(reply) < 9 and (chunk := connection.recv(9 - len(reply))):
                reply += chunk
    except OSError as error:
        raise InputError("--address", f"no Ray cluster answers at {address} ({error.strerror or error}); start one "
                                      "with `ray start --head` or check the address") from None
    if not (len(reply) == 9 and reply[3] == HTTP2_SETTINGS):
        web = reply.startswith(b"HTTP/") or reply.lstrip().startswith(b"<")  # a status line, or HTML
        what = "a web server (the dashboard's port, 8265, is not the cluster's address)" if web else "something that is not Ray"
        raise InputError("--address", f"{address} is {what}; give the head node's port (`ray start --head` prints it, "
                                      "6379 by default; ray://HOST:10001 for Ray Client)")


class RayWorker:
    """One Ray actor: loads the ensemble once, then predicts chunks of records."""

    def __init__(self, kind: str, batch_size: int, refine: bool, numbering: str, fmt: str, device: str,
                 developability: bool = False, clean_geometry: bool = False, fast: bool = False):
        import torch

        from immunofold.allocator import keep_freed_memory
        from immunofold.prediction import Predictor

        torch.set_num_threads(1)  # one actor per CPU
        keep_freed_memory()  # the actor owns its process, as the command line does
        self.kind, self.batch_size, self.refine, self.numbering, self.fmt = kind, batch_size, refine, numbering, fmt
        self.developability = developability
        self.predictor = Predictor(device=device, clean_geometry=clean_geometry, fast=fast)

    def pid(self) -> int:
        return os.getpid()

    def weights_version(self) -> str:
        return self.predictor.ensemble.version

    def run(self, records: list[Record]) -> list[tuple]:
        """Per record, in order: ('ok', text, sidecar fields, seconds) or ('failed', reason, kind, seconds)."""
        outcomes: list[tuple | None] = [None] * len(records)
        buckets: dict[int, list] = {}  # total length -> [(position, record, resolved, seconds)]
        for position, (record, (result, seconds)) in enumerate(zip(records, resolve_records(records, self.kind))):
            start = time.perf_counter()
            problem = result if isinstance(result, str) else check_numbering(record, result, self.numbering)
            seconds += time.perf_counter() - start
            if problem:
                outcomes[position] = ("failed", problem, "" if isinstance(result, str) else result.kind, seconds)
                continue
            buckets.setdefault(sum(len(c) for c in result.chains), []).append((position, record, result, seconds))
        for bucket in buckets.values():
            for group in (bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size)):
                start = time.perf_counter()
                items = [(record.name, resolved.kind, resolved.chains) for _, record, resolved, _ in group]
                predictions = predict_group(self.predictor, items, self.numbering)
                share = (time.perf_counter() - start) / len(group)
                for (position, record, resolved, seconds), prediction in zip(group, predictions):
                    outcomes[position] = self._finish(prediction, resolved.kind, seconds + share)
        return outcomes

    def _finish(self, prediction, kind: str, seconds: float) -> tuple:
        if isinstance(prediction, Exception):
            return "failed", f"prediction failed ({type(prediction).__name__}: {one_line(prediction)})", kind, seconds
        start = time.perf_counter()
        if self.refine:
            try:
                prediction, _ = _refine_task(prediction)
            except Exception as error:  # noqa: BLE001  (as the local engine: the record fails, the run goes on)
                return "failed", f"refinement crashed ({type(error).__name__}: {one_line(error)})", "", seconds
        text, data = render(prediction, self.fmt, self.developability)
        return "ok", text, data, seconds + time.perf_counter() - start


class RayEngine:
    """Runs pending records on Ray actors and records their outcomes through `recorder` (see the module docs).

    address: None starts a Ray runtime on this machine (LOCAL_CPUS CPUs, no dashboard) unless one is already
    running in this process; 'auto' or 'ray://host:port' joins a cluster. workers: actors (default: one per CPU of
    the cluster)."""

    def __init__(self, recorder: Recorder, kind: str, batch_size: int, refine: bool, numbering: str, device: str,
                 address: str | None = None, workers: int | None = None):
        self.recorder = recorder
        options = recorder.store.options
        self.worker_args = (kind, batch_size, refine, numbering, options["fmt"], device, options.get("developability", False),
                            options.get("clean_geometry", False), options.get("fast", False))
        self.address, self.workers = address, workers
        self.actors: list = []
        self.in_flight: dict = {}  # future of a task sent to an actor -> (actor index, its records)

    def _connect(self) -> bool:
        """Join or start Ray; True if this call started it (and so must stop it)."""
        import ray

        if ray.is_initialized():
            return False
        settings = dict(log_to_driver=False, logging_level="ERROR", configure_logging=True)
        # Ray's driver installs its own SIGTERM handling (a stack dump, exit 1): `kill` and schedulers must stop the run
        # as Ctrl-C does, through the command's handler (summaries written, "interrupted; ... resume with")
        on_main_thread = threading.current_thread() is threading.main_thread()
        handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)} if on_main_thread else {}
        try:
            if self.address:
                ray.init(address=self.address, **settings)
            else:
                ray.init(num_cpus=max(LOCAL_CPUS, self.workers or 0), include_dashboard=False, **settings)
        except Exception as error:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ValueError...)
            if self.address:  # the user's address (e.g. "auto" with no cluster here): rerunning will not help
                raise InputError("--address", f"cannot join Ray at {self.address}: {one_line(error)}") from None
            raise BatchStopped(f"cannot start Ray here: {type(error).__name__}: {one_line(error)}") from None
        finally:
            for number, handler in handlers.items():
                if handler is not None:
                    signal.signal(number, handler)
        return True

    def _start_actors(self) -> None:
        import ray

        from immunofold import weights

        count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        env = {name: os.environ[name] for name in (weights.WEIGHTS_ENV,) if name in os.environ}
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=TASK_RETRIES)(RayWorker)
        options = {"runtime_env": {"env_vars": env}} if env else {}
        self.actors = [actor.options(**options).remote(*self.worker_args) for _ in range(count)]
        versions = set(ray.get([a.weights_version.remote() for a in self.actors]))
        wanted = self.recorder.store.options["weights"]
        if versions != {wanted}:
            raise BatchStopped(f"the Ray workers load weights {', '.join(sorted(versions))}, this run needs {wanted} "
                               "(install the same immunofold on every node)")

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (for tests and for users who want to see them)."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def run(self, pending: Iterable[Record]) -> None:
        import ray

        started = self._connect()
        try:
            self._start_actors()
            self._schedule(pending)
        finally:
            for future in self.in_flight:  # an interrupted run: tasks still running end quietly, not as failures
                ray.cancel(future)
            self.in_flight.clear()
            if started:  # the runtime this run started ends with its actors (a ray.kill first would make Ray warn
                ray.shutdown()  # once per in-flight task when a run is interrupted)
            else:  # a cluster's: free its CPUs
                for actor in self.actors:
                    ray.kill(actor)
            self.actors = []

    def _schedule(self, pending: Iterable[Record]) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        chunks = _chunks(pending, CHUNK)
        retry: list[list[Record]] = []  # records of failed chunks, sent again one at a time
        in_flight = self.in_flight  # future -> (actor index, chunk)
        load = [0] * len(self.actors)

        def submit(index: int) -> bool:
            chunk = [retry.pop()] if retry else next(chunks, None)
            if chunk is None:
                return False
            in_flight[self.actors[index].run.remote(chunk)] = (index, chunk)
            load[index] += 1
            return True

        for _ in range(IN_FLIGHT_PER_ACTOR):
            for index in range(len(self.actors)):
                submit(index)
        while in_flight:
            (future,), _ = ray.wait(list(in_flight), num_returns=1)
            index, chunk = in_flight.pop(future)
            load[index] -= 1
            try:
                outcomes = ray.get(future)
            except RayTaskError as error:
                cause = error.cause if isinstance(error.cause, BaseException) else error
                if isinstance(cause, BatchStopped):
                    raise BatchStopped(str(cause)) from None
                raise BatchStopped(f"a Ray worker failed: {type(cause).__name__}: {cause}") from None
            except RayActorError as error:
                if len(chunk) > 1:
                    retry.extend(reversed(chunk))
                else:
                    self.recorder.fail(chunk[0], f"the worker process died on this record {TASK_RETRIES + 1} times "
                                                 f"({type(error).__name__})")
                outcomes = None
            for record, outcome in zip(chunk, outcomes or []):
                if outcome[0] == "ok":
                    _, text, data, seconds = outcome
                    self.recorder.write(record, text, data, seconds)
                else:
                    _, reason, kind, seconds = outcome
                    self.recorder.fail(record, reason, kind, seconds)
            while load[index] < IN_FLIGHT_PER_ACTOR and submit(index):
                pass
