"""edgekit.device.threads: the device path's worker threads (concurrent.futures' ThreadPoolExecutor
without its import: ~0.8 MB of peak RSS on `screen`)."""

from __future__ import annotations

import threading
import weakref

import pytest

from edgekit.device.pipeline import prefetch
from edgekit.device.threads import Pool


def test_results_in_order_and_errors_reach_the_caller():
    pool = Pool(2)
    try:
        tasks = [pool.submit(lambda x: x * x, i) for i in range(20)]
        assert [t.result() for t in tasks] == [i * i for i in range(20)]
        bad = pool.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            bad.result()
        assert pool.submit(lambda a, b: a + b, 2, 3).result() == 5  # the pool goes on after an error
    finally:
        pool.shutdown()


def test_shutdown_drops_what_has_not_started_and_waits_for_what_runs():
    started, release, ran = threading.Event(), threading.Event(), []

    def slow():
        started.set()
        release.wait(5)
        ran.append("slow")
        return "slow"

    pool = Pool(1)
    first = pool.submit(slow)
    later = pool.submit(ran.append, "later")
    started.wait(5)
    threading.Timer(0.05, release.set).start()
    pool.shutdown()
    assert ran == ["slow"] and first.result() == "slow"
    with pytest.raises(RuntimeError, match="cancelled"):
        later.result()  # raises, never hangs
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)
    assert not any(t.is_alive() for t in pool._threads)


def test_a_task_holds_neither_its_arguments_once_run_nor_its_value_once_handed_over():
    class Big:
        pass

    arg = Big()
    pool = Pool(1)
    task = pool.submit(lambda a: Big(), arg)
    ref_arg = weakref.ref(arg)
    got = task.result()
    ref_out = weakref.ref(got)
    del arg
    assert ref_arg() is None
    del got
    assert ref_out() is None
    pool.shutdown()


def test_prefetch_keeps_order_and_stops_its_threads_when_closed():
    before = threading.active_count()
    it = prefetch(lambda x: x + 1, range(10), 1, ahead=1)
    assert next(iter(it)) == 1
    it.close()  # a caller that stops early (an error, Ctrl-C): the thread is stopped, nothing left behind
    assert threading.active_count() == before
    assert list(prefetch(lambda x: -x, range(7), 2)) == [-x for x in range(7)]
    with pytest.raises(ValueError):
        list(prefetch(lambda x: int("x") if x == 3 else x, range(6), 2))
    assert threading.active_count() == before
