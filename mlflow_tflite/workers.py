"""A pool of spawned worker processes that survives a worker crash (used by ``sweep.py``)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context


class Workers:
    """A pool of worker processes that survives a worker crash.

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
