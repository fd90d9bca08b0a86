# pyright: basic
"""A few worker threads running calls in the order they were submitted: what the device path needs
of ``concurrent.futures.ThreadPoolExecutor``, whose import brings ``logging``, ``traceback`` and
``queue`` (~0.6 MB of Python objects, ~0.8 MB of peak RSS on `screen`)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Task:
    """One submitted call: :meth:`result` waits for it and returns its value or raises its error."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self._call: tuple[Callable[..., Any], tuple] | None = (fn, args)
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        assert self._call is not None  # each task runs once
        fn, args = self._call
        self._call = None  # its arguments are not held once it has run
        try:
            self._value = fn(*args)
        except BaseException as exc:  # handed to the caller, as a future does
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        value, self._value = self._value, None  # handed over: the task no longer holds it
        return value


class Pool:
    """``n`` threads taking submitted calls in order. :meth:`shutdown` drops the calls not yet started
    and waits for those running."""

    def __init__(self, n: int, name: str = "edgekit-worker") -> None:
        self._todo: deque[Task] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Task:
        task = Task(fn, args)
        with self._ready:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            self._todo.append(task)
            self._ready.notify()
        return task

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._todo and not self._closed:
                    self._ready.wait()
                if not self._todo:
                    return
                task = self._todo.popleft()
            task.run()

    def shutdown(self) -> None:
        with self._ready:
            for task in self._todo:  # never run: waiting on one raises instead of hanging
                task._error = RuntimeError("cancelled: its pool was shut down")
                task._done.set()
            self._todo.clear()
            self._closed = True
            self._ready.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
