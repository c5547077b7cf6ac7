"""Sweep executors: the :class:`SweepExecutor` protocol and the local one, spawned worker processes
that each hold one ``worker.Worker`` and talk to the driver through a pipe (the Ray one is
``ray_executor.RayExecutor``)."""

from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import tqdm

from mlflow_tflite.sweep.worker import Job, Worker, task_name


class SweepExecutor(Protocol):
    """Runs the sweep's tasks (``worker.Describe``, ``BuildModel``, ``BuildFloat``, ``RunVariant``).

    A task is a picklable value; a worker holding a ``worker.Worker`` of the executor's
    ``Job`` answers ``("ok", value)`` or ``("error", message)``.
    """

    def run(self, tasks: list) -> Iterator[tuple[Any, str, Any]]:
        """Yield ``(task, status, value)`` as tasks finish (any order); a task whose worker dies
        yields ``(task, "error", message)`` and the others go on."""

    def close(self) -> None:
        """Stop the workers (the sweep times latency with the machine quiet afterwards)."""


def serve(connection: Connection, job: Job) -> None:
    """A worker process's loop: open the job, then answer each task until the pipe closes (or the
    driver terminates the process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it ends the runs and stops us
    # The LiteRT Quantizer's (hidden) tqdm bars would create tqdm's cross-process lock, a named semaphore;
    # a worker ends by SIGTERM, so Python's resource tracker would print it as "leaked" when the sweep ends.
    tqdm.tqdm.set_lock(threading.RLock())
    worker = Worker(job)
    worker.warm_up()
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(worker.run(task))


@dataclass
class _Process:
    process: Any
    connection: Connection


class LocalExecutor:
    """``count`` spawned worker processes, started together (each opens the job once).

    A worker that dies (a native crash in a converter, an OOM kill) fails the task it was
    running, ``"worker process crashed while running <variant> (exit code N)"``, and is replaced
    by a fresh one; the other workers go on.
    """

    def __init__(self, count: int, job: Job):
        """Start ``count`` processes now: each imports TensorFlow and opens the job while the caller goes on."""
        self.count, self.job, self.started = count, job, []
        self._context = get_context("spawn")
        self.idle = [self._start() for _ in range(count)]

    def _start(self) -> _Process:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve, args=(child, self.job), daemon=True)
        process.start()
        child.close()
        self.started.append(_Process(process, parent))
        return self.started[-1]

    def run(self, tasks: list) -> Iterator[tuple[Any, str, Any]]:
        """Yield ``(task, status, value)`` as tasks finish (see :class:`SweepExecutor`)."""
        pending, busy = deque(tasks), {}
        while pending or busy:
            while pending and self.idle:
                worker, task = self.idle.pop(), pending.popleft()
                worker.connection.send(task)
                busy[worker.connection] = (worker, task)
            for connection in wait(list(busy)):
                worker, task = busy.pop(connection)
                try:
                    status, value = connection.recv()
                except (EOFError, OSError):
                    worker.process.join()
                    self.idle.append(self._start())
                    yield task, "error", (f"worker process crashed while running {task_name(task)} "
                                          f"(exit code {worker.process.exitcode})")
                    continue
                self.idle.append(worker)
                yield task, status, value

    def close(self) -> None:
        """Stop the workers (SIGTERM: a worker holds nothing to save, and TensorFlow's orderly exit
        takes seconds) and wait until they are gone, so latency is then timed on quiet cores."""
        for worker in self.started:
            if worker.process.is_alive():
                worker.process.terminate()
            worker.process.join()
            worker.connection.close()
        self.idle, self.started = [], []
