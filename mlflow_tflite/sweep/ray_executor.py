"""The Ray sweep executor (``executor=ray``): the sweep's tasks on Ray actors.

``workers`` actors (one CPU each) on the cluster at ``ray_address`` (``None``: the running
cluster Ray finds, else a local one it starts) each hold one ``worker.Worker``, as a local
worker process does. The package reaches the actors through the job's Ray ``runtime_env``
(``py_modules``, set when this executor joins the cluster): a worker machine needs Ray and
TensorFlow, not mlflow-tflite (a Ray session the caller started already keeps its own runtime_env).

Values move through the object store, once each: the job (data set arrays, and a local model
file or SavedModel directory as bytes) is put by the driver and given to every actor; each
model or float flatbuffer a task needs is put once by the driver (the first time a task carries
it) and fetched by an actor with the task. Only the driver writes to MLflow.

Failures use Ray's own actor fault tolerance: a task whose actor process dies (a native crash,
an OOM kill, a lost node) is retried once on the restarted actor (``max_restarts=-1``,
``max_task_retries=1``); if it dies again, its variant is reported as an error and the sweep
goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from collections import deque
from urllib.parse import urlparse

import mlflow_tflite
from mlflow_tflite.errors import TFLiteError, first_line
from mlflow_tflite.sweep.worker import Job, Worker, task_name, with_shipped

logger = logging.getLogger(__name__)
ATTEMPTS = 2  # a task whose worker dies runs at most this often (max_task_retries = ATTEMPTS - 1)
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS and its client
# server both are) answers with a SETTINGS frame; anything else at that port is not Ray.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
HTTP2_SETTINGS_FRAME = 0x04


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TFLiteError("executor=ray needs Ray; pip install 'mlflow-tflite[ray]', or use executor=local") from None
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` / ``ray://host:port`` that does not answer, or answers but not
    as gRPC (``ray.init`` would retry for minutes, printing Ray's connection warnings).

    Raises:
        TFLiteError: the address has no port, nothing listens there, or what listens is not a
            gRPC server (not checked with ``RAY_USE_TLS=1``).
    """
    if address is None or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise TFLiteError(f"ray_address {address!r} is not host:port or ray://host:port; e.g. 127.0.0.1:6379, "
                          "or auto to join a running cluster or start a local one")
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            tls = os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")
            grpc = tls or _answers_grpc(connection, timeout)
    except OSError as error:
        raise TFLiteError(f"ray_address {address!r} does not answer ({first_line(error)}); start the cluster "
                          "(ray start --head) or pass its address, or auto") from None
    if not grpc:
        raise TFLiteError(f"ray_address {address!r} answers but not as a Ray cluster (no gRPC reply); pass the "
                          "address ray start --head printed, e.g. 127.0.0.1:6379, or auto")


def _answers_grpc(connection: socket.socket, timeout: float) -> bool:
    """True when the peer answers the HTTP/2 preface with a SETTINGS frame (as every gRPC server does)."""
    connection.settimeout(timeout)
    try:
        connection.sendall(HTTP2_HELLO)
        header = b""
        while len(header) < 9:  # an HTTP/2 frame header: length (3), type (1), flags (1), stream (4)
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == HTTP2_SETTINGS_FRAME


@contextlib.contextmanager
def stderr_captured(lines: list[str]):
    """Send file descriptor 2 to a temporary file during the block and put its lines in ``lines``.

    Ray's C++ core writes its connection warnings (``gcs_client``, ``rpc_client``) there directly,
    past Python's ``sys.stderr``; the caller reports one line instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode(errors="replace").splitlines())


class RayWorker:
    """A Ray actor holding one ``worker.Worker``; object references in a task are fetched here."""

    def __init__(self, job: Job):
        self.worker = Worker(job)
        self.worker.warm_up()

    def run(self, task, shipped_refs: dict):
        """``Worker.run`` of ``task`` with its shipped values fetched from the object store."""
        import ray

        keys = list(shipped_refs)
        values = ray.get([shipped_refs[key] for key in keys]) if keys else []
        return self.worker.run(with_shipped(task, dict(zip(keys, values))))

    def close(self) -> None:
        """``Worker.close`` before the executor kills this actor."""
        self.worker.close()


class RayExecutor:
    """``workers`` Ray actors (one CPU each) running the sweep's tasks; see the module docstring."""

    def __init__(self, count: int, job: Job, address: str | None = None):
        """Join (or start) the cluster, put the job into the object store, start the actors.

        Raises:
            TFLiteError: Ray is not installed, or ``address`` does not answer.
        """
        ray = _import_ray()
        self.ray, self.owns_ray, self.refs, self.actors, self.running = ray, False, {}, [], {}
        if not ray.is_initialized():
            check_address(address or os.environ.get("RAY_ADDRESS") or None)  # ray.init reads RAY_ADDRESS too
            self._init(ray, address)
            self.owns_ray = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if cpus < 1:
            raise TFLiteError(f"the Ray cluster at {address or 'auto'} has no CPUs for workers; add a node")
        actor_class = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=ATTEMPTS - 1)(RayWorker)
        # Kept for the executor's life: a restarted actor is constructed again from this object.
        self.job_ref = ray.put(job)
        self.actors = [actor_class.remote(self.job_ref)
                       for _ in range(min(count, cpus))]  # more actors than CPUs would wait forever for one

    @staticmethod
    def _init(ray, address: str | None) -> None:
        """``ray.init``; joining a cluster, Ray's connection warnings are kept and logged at debug
        level (a failure is one line). Starting a local cluster is not captured: its daemons would
        inherit the capture file."""
        captured: list[str] = []
        joining = (address or os.environ.get("RAY_ADDRESS")) is not None
        capture = stderr_captured(captured) if joining else contextlib.nullcontext()
        try:
            with capture:
                # The workers import this package from Ray (its runtime-env cache), not from their own disk;
                # a local directory can be uploaded only at the job level, here.
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         configure_logging=True, runtime_env={"py_modules": [str(Path(mlflow_tflite.__file__).parent)]})
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise TFLiteError(f"Ray could not start or join a cluster at ray_address={address or 'auto'} "
                              f"({first_line(error, 300)})") from None
        finally:
            for line in captured:
                logger.debug("ray.init: %s", line)

    def _shipped_refs(self, task) -> dict:
        """The task's shipped values as object references, each put once (by key)."""
        for key, value in task.shipped.items():
            if key not in self.refs:
                self.refs[key] = self.ray.put(value)
        return {key: self.refs[key] for key in task.shipped}

    def run(self, tasks: list):
        """Yield ``(task, status, value)`` as tasks finish; a task whose actor died twice is an error."""
        from ray.exceptions import RayActorError, RayError

        ray = self.ray
        pending, idle, running = deque(tasks), list(self.actors), {}
        self.running = running  # close() after Ctrl-C kills busy actors at once
        while pending or running:
            while pending and idle:
                actor, task = idle.pop(), pending.popleft()
                running[actor.run.remote(with_shipped(task, {}), self._shipped_refs(task))] = (actor, task)
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, task = running.pop(done)
            idle.append(actor)
            try:
                status, value = ray.get(done)
            except RayActorError as error:
                yield task, "error", (f"Ray worker died while running {task_name(task)} ({ATTEMPTS} attempts): "
                                      f"{_death_reason(error)}")
                continue
            except RayError as error:
                yield task, "error", f"Ray task for {task_name(task)} failed: {type(error).__name__}: {first_line(error, 300)}"
                continue
            yield task, status, value

    def close(self) -> None:
        """Kill the actors and free the objects; leave the cluster (stop it if this executor started it)."""
        ray = self.ray
        if not ray.is_initialized():  # closed already (any Ray call now would start a new local Ray)
            return
        from ray.exceptions import GetTimeoutError, RayError

        if not self.running:  # idle actors delete their copies of the source; busy ones (Ctrl-C) are just killed
            try:
                ray.get([actor.close.remote() for actor in self.actors], timeout=10)
            except (GetTimeoutError, RayError) as error:
                logger.debug("Ray workers not closed before kill: %s", first_line(error))
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.refs, self.job_ref = [], {}, None
        if self.owns_ray:
            ray.shutdown()
            self.owns_ray = False


def _death_reason(error) -> str:
    """One line on why an actor died (Ray's message is many lines)."""
    text = str(error)
    for marker in ("The actor died unexpectedly", "The actor is dead because", "exit_detail", "Worker exit"):
        line = next((line.strip() for line in text.splitlines() if marker in line), None)
        if line:
            return line[:300]
    return first_line(error, 300)
