"""Prefetching: the next batches are prepared in a background thread while
the current one trains.

``Prefetcher(make, depth)`` calls ``make()`` in a daemon thread (started on
the first ``next()``) and keeps up to ``depth`` items of the iterator it
returns in a queue. An exception raised while producing is handed to the
main thread and raised there, unchanged, by the ``next()`` that would have
returned the failed item (and by every later one: the stream is broken).
``close()`` stops the thread; a Prefetcher can be closed more than once.
``depth=0`` produces synchronously in the caller's thread (for bisecting).

``make`` must not hold the owner (a layer) alive: the owner closes its
prefetcher when it is garbage collected.
"""
from __future__ import annotations

import os
import queue
import threading

_POLL = 0.05          # seconds between checks of the stop flag while blocked


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    def __init__(self, make, depth: int = 2, name: str = "netdef-prefetch"):
        self._make = make
        self.depth = int(depth)
        self.name = name
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._iter = None                  # the synchronous iterator (depth 0)
        self._failure: BaseException | None = None

    def next(self):
        """The next item; raises what producing it raised."""
        if self._failure is not None:
            raise self._failure
        if self.depth <= 0:
            if self._iter is None:
                self._iter = iter(self._make())
            try:
                return next(self._iter)
            except BaseException as err:
                self._failure = _ended(err)
                raise self._failure from None
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, _Failure):
            self._failure = item.error
            raise item.error
        return item

    __next__ = next

    def __iter__(self):
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_produce, name=self.name, daemon=True,
                                        args=(self._make, self._queue, self._stop))
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (it finishes the item it is making) and drop the queue."""
        thread, stop, q = self._thread, self._stop, self._queue
        self._thread = self._queue = self._stop = None
        self._iter = None
        if thread is None:
            return
        stop.set()
        while thread.is_alive():
            _drain(q)                       # a producer blocked on a full queue wakes up
            thread.join(_POLL)
            timeout -= _POLL
            if timeout <= 0:
                break
        _drain(q)


def _ended(err: BaseException) -> BaseException:
    if isinstance(err, StopIteration):
        return RuntimeError("the data stream ended")
    return err


def _drain(q: queue.Queue) -> None:
    try:
        while True:
            q.get_nowait()
    except queue.Empty:
        pass


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _produce(make, q: queue.Queue, stop: threading.Event) -> None:
    from netdef import _CALLER_CPUS

    if _CALLER_CPUS is not None:
        # started during a forward pass, the thread inherited the caller's
        # OpenMP place (kernels._jit.master_place): it gets every CPU back
        try:
            os.sched_setaffinity(0, _CALLER_CPUS)
        except OSError:
            pass
    try:
        it = iter(make())
        while not stop.is_set():
            if not _put(q, stop, next(it)):
                return
    except BaseException as err:        # handed over to the consumer, raised there
        _put(q, stop, _Failure(_ended(err)))
