"""Dynamic batching: requests that arrive together are decoded together.

One worker thread owns the model. Requests wait in a FIFO queue; the worker takes the oldest one and
the queued requests *compatible* with it (same task and decoding options: the same ``key``), up to
``max_batch_size`` rows (regions / queries / images), waiting at most ``max_wait_ms`` after the
oldest one arrived for more to come. While a batch runs, new requests queue up and form the next
batch, so under load batches fill without any waiting.

A batch that raises is re-run one request at a time, so a bad request only fails itself. The queue
holds at most ``max_queue`` requests (waiting + running); one more is refused (429) at once. A job
whose future was cancelled before its batch started (the client left) is dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from .limits import APIError

__all__ = ["Job", "Batcher"]

log = logging.getLogger("fclm.serve")


@dataclass
class Job:
    """One request: ``payload`` is run with every compatible job's payload by ``execute(key, payloads)``."""

    key: Hashable
    payload: Any
    rows: int = 1
    future: Future = field(default_factory=Future)
    t_enqueued: float = 0.0


class Batcher:
    """Run :class:`Job` s in batches on one worker thread.

    ``execute(key, payloads) -> results``: one result per payload, in order (an ``Exception`` instance
    as a result fails only that job).
    """

    def __init__(self, execute: Callable[[Hashable, list], list], max_batch_size: int = 16,
                 max_wait_ms: float = 10.0, max_queue: int = 256):
        self.execute = execute
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._stop = False
        self.stats = {"batches": 0, "jobs": 0, "rows": 0, "max_rows": 0, "retried_batches": 0}
        self._thread = threading.Thread(target=self._loop, name="fclm-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ client side
    def submit(self, key: Hashable, payload: Any, rows: int = 1) -> Future:
        """Queue a job; 429 :class:`APIError` when the queue is full, 503 once the batcher is closed."""
        job = Job(key, payload, max(1, rows), t_enqueued=time.monotonic())
        with self._cond:
            if self._stop:
                raise APIError(503, "shutting_down", "the server is shutting down")
            if len(self._pending) + self._running >= self.max_queue:
                raise APIError(429, "queue_full", f"the server queue is full ({self.max_queue} requests); retry later",
                               headers={"Retry-After": "1"})
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending) + self._running

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            left = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for j in left:
            if j.future.set_running_or_notify_cancel():
                j.future.set_exception(APIError(503, "shutting_down", "the server is shutting down"))
        self._thread.join(timeout)

    # ------------------------------------------------------------ worker side
    def _take(self) -> list[Job] | None:
        """Wait for work; return the next batch (oldest job + compatible ones)."""
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            first = self._pending[0]
            deadline = first.t_enqueued + self.max_wait
            while True:
                batch, rows = [], 0
                for j in self._pending:
                    if j.key == first.key and (not batch or rows + j.rows <= self.max_batch_size):
                        batch.append(j)
                        rows += j.rows
                        if rows >= self.max_batch_size:
                            break
                left = deadline - time.monotonic()
                if rows >= self.max_batch_size or left <= 0 or self._stop:
                    break
                self._cond.wait(left)
            for j in batch:
                self._pending.remove(j)
            # a client that gave up (disconnect, timeout) cancelled its future: drop its job
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            self._running = len(batch)
            return batch

    def _run(self, batch: list[Job]) -> None:
        try:
            results = self.execute(batch[0].key, [j.payload for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
        except Exception as e:
            if len(batch) == 1:
                results = [e]
            else:  # isolate the failing request(s): one at a time
                self.stats["retried_batches"] += 1
                log.info("batch of %d failed (%s); re-running its requests one by one", len(batch), e)
                results = []
                for j in batch:
                    try:
                        results += self.execute(j.key, [j.payload])
                    except Exception as e1:
                        results.append(e1)
        for j, r in zip(batch, results):
            if isinstance(r, BaseException):
                j.future.set_exception(r)
            else:
                j.future.set_result(r)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            rows = sum(j.rows for j in batch)
            self.stats["batches"] += 1
            self.stats["jobs"] += len(batch)
            self.stats["rows"] += rows
            self.stats["max_rows"] = max(self.stats["max_rows"], rows)
            try:
                self._run(batch)
            except BaseException as e:  # never let the worker die with futures unanswered
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            finally:
                with self._cond:
                    self._running = 0
