"""Sweep executors: the :class:`SweepExecutor` protocol and the local one, a pool of spawned worker
processes that survives a worker crash (the Ray one is ``ray_executor.RayExecutor``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, Protocol


class SweepExecutor(Protocol):
    """Runs the sweep's worker tasks (``sweep.describe``, ``build_variant_model``, ``run_variant_task``).

    A task is a picklable function of one item returning ``("ok", value)`` or ``("error", message)``;
    it runs in a worker whose state ``sweep._worker_init`` set up. Files a task writes into the
    worker directory (``sweep._WORKER["workdir"]``: the pruned/resized models of phase 2) are
    seen by every later task, on any worker.
    """

    def run(self, task: Callable, items: list) -> Iterator[tuple[Any, str, Any]]:
        """Yield ``(item, status, value)`` as tasks finish (any order); a task whose worker dies
        yields ``(item, "error", message)`` and the others go on."""

    def close(self) -> None:
        """Stop the workers (the sweep times latency with the machine quiet afterwards)."""


class Workers:
    """The local executor: a pool of worker processes that survives a worker crash.

    ``run`` yields ``(item, status, value)`` as tasks finish. If a worker dies (the pool breaks),
    the unfinished tasks are rerun one at a time in a fresh pool, so the one that crashes again
    is identified and reported as ``("error", "worker process crashed ...")``.
    """

    def __init__(self, count: int, initializer, initargs: tuple, warm_up):
        """``count`` spawned processes, each started with ``initializer(*initargs)``.

        ``warm_up`` is a picklable task (called with no argument) submitted once per worker so
        all of them start at once instead of on demand.
        """
        self.count, self.initializer, self.initargs, self.warm_up, self.pool = count, initializer, initargs, warm_up, None

    def _pool(self, count: int | None = None) -> ProcessPoolExecutor:
        if self.pool is None:
            count = count or self.count
            self.pool = ProcessPoolExecutor(
                count, mp_context=get_context("spawn"), initializer=self.initializer, initargs=self.initargs
            )
            # Workers start on demand; one warm-up task each starts them all now, in parallel.
            for _ in range(count if count > 1 else 0):
                self.pool.submit(self.warm_up)
        return self.pool

    def _reset(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None

    def close(self) -> None:
        """Shut the workers down (waits for them to exit)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None

    def run(self, task, items: list):
        futures = {self._pool().submit(task, item): item for item in items}
        unfinished = []
        for future in as_completed(futures):
            try:
                status, value = future.result()
            except BrokenProcessPool:
                unfinished.append(futures[future])
                continue
            yield futures[future], status, value
        if not unfinished:
            return
        self._reset()
        for item in sorted(unfinished, key=items.index):
            try:
                status, value = self._pool(1).submit(task, item).result()
            except BrokenProcessPool:
                self._reset()
                status, value = "error", f"worker process crashed while running {getattr(item, 'name', item)}"
            yield item, status, value
        self._reset()
