"""The dynamic batcher on its own: grouping, size/wait limits, failure isolation, queue limit, shutdown."""
import threading
import time

import pytest

from fclm.serve.batching import Batcher
from fclm.serve.limits import APIError, ServeLimits


class Recorder:
    """execute(key, payloads): records each batch; payload 'boom' makes the whole batch raise;
    blocks while ``gate`` is clear."""

    def __init__(self):
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, key, payloads):
        self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        if "boom" in payloads:
            raise ValueError("bad payload boom")
        return [f"{key}:{p}" for p in payloads]


def held_batcher(first, **kw):
    """A batcher whose worker is held (``rec.gate`` clear) on a first job, so later jobs queue up."""
    rec = Recorder()
    rec.gate.clear()
    b = Batcher(rec, max_wait_ms=0, **kw)
    fut = b.submit(*first)
    time.sleep(0.1)
    return rec, b, fut


def test_concurrent_jobs_share_a_batch_and_keys_stay_apart():
    rec, b, first = held_batcher(("a", 0), max_batch_size=4, max_queue=100)
    try:
        futs = [b.submit("a" if i % 2 else "b", i) for i in range(1, 11)]
        rec.gate.set()
        assert first.result(10) == "a:0"
        assert [f.result(10) for f in futs] == [f"{'a' if i % 2 else 'b'}:{i}" for i in range(1, 11)]
    finally:
        b.close()
    sizes = [len(p) for _, p in rec.batches]
    assert max(sizes) == 4 and sum(sizes) == 11  # batches filled up to the limit, nothing lost
    for key, payloads in rec.batches:  # a batch holds one key only
        assert all((p % 2 == 1) == (key == "a") for p in payloads if p)
    assert b.stats["jobs"] == 11 and b.stats["max_rows"] == 4


def test_rows_count_against_the_batch_size():
    rec, b, _ = held_batcher(("k", "x"), max_batch_size=5)
    try:
        futs = [b.submit("k", i, rows=3) for i in range(3)]
        rec.gate.set()
        [f.result(10) for f in futs]
    finally:
        b.close()
    assert [len(p) for _, p in rec.batches] == [1, 1, 1, 1]  # 3 + 3 rows > 5: one request per batch


def test_max_wait_gathers_requests_that_arrive_later():
    rec = Recorder()
    b = Batcher(rec, max_batch_size=8, max_wait_ms=400)
    try:
        futs = [b.submit("k", 0)]
        time.sleep(0.05)
        futs += [b.submit("k", i) for i in (1, 2)]
        [f.result(10) for f in futs]
    finally:
        b.close()
    assert [len(p) for _, p in rec.batches] == [3]


def test_a_failing_request_does_not_fail_its_batch():
    rec, b, _ = held_batcher(("k", "first"), max_batch_size=8)
    try:
        good1, bad, good2 = b.submit("k", "x"), b.submit("k", "boom"), b.submit("k", "y")
        rec.gate.set()
        assert good1.result(10) == "k:x" and good2.result(10) == "k:y"
        with pytest.raises(ValueError, match="bad payload boom"):
            bad.result(10)
    finally:
        b.close()
    assert b.stats["retried_batches"] == 1
    assert ("k", ["x", "boom", "y"]) in rec.batches  # it was tried together first


def test_cancelled_jobs_are_dropped_without_harming_the_batch():
    rec, b, _ = held_batcher(("k", "first"), max_batch_size=8)
    try:
        keep, gone, keep2 = b.submit("k", "x"), b.submit("k", "gone"), b.submit("k", "y")
        assert gone.cancel()  # the client left while its job waited
        rec.gate.set()
        assert keep.result(10) == "k:x" and keep2.result(10) == "k:y"
    finally:
        b.close()
    assert ("k", ["x", "y"]) in rec.batches and all("gone" not in p for _, p in rec.batches)


def test_queue_full_is_429_and_close_answers_waiting_jobs():
    rec, b, running = held_batcher(("k", 0), max_batch_size=1, max_queue=3)
    waiting = [b.submit("k", 1), b.submit("k", 2)]
    with pytest.raises(APIError) as e:
        b.submit("k", 3)
    assert e.value.status == 429 and e.value.code == "queue_full"
    assert b.queue_length() == 3
    rec.gate.set()
    time.sleep(0.05)
    b.close()
    assert running.result(5) == "k:0"
    for f in waiting:  # each either ran or was refused with a clear 503, none left hanging
        try:
            assert f.result(5).startswith("k:")
        except APIError as err:
            assert err.status == 503


def test_limits_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeLimits(max_batch_size=0)
    assert ServeLimits(max_wait_ms=0).max_wait_ms == 0
