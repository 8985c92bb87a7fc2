"""Overlap a run's three stages: read the domain, score it, write it.

The reader and the writer each run in a thread, with small bounded queues between them
and the scorer (the calling thread), so a run takes about as long as its slowest stage
instead of the sum of the three, and holds at most a few chunks in memory. Drivers,
numpy and scikit-learn release the GIL in their heavy loops, which is what makes threads
enough here.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
U = TypeVar("U")

_END = object()
_POLL = 0.1


class _Stop(Exception):
    """Raised inside a stage when another stage failed."""


@contextlib.contextmanager
def closing(source: Iterable[Any]) -> Iterator[Iterable[Any]]:
    """Close ``source`` however a loop over it ends, where it can be closed: a generator that wraps another
    (a domain stream holding a database cursor) must close it, or the cursor stays open until the garbage
    collector runs, holding its transaction and the locks that come with it."""
    try:
        yield source
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def overlapped(source: Iterator[T], transform: Callable[[T], U], sink: Callable[[U], None], depth: int = 2) -> None:
    """Feed ``source`` (in a thread) through ``transform`` (here) into ``sink`` (in a thread).

    The first error of any stage stops the others and is raised here; ``source`` is
    closed in its own thread, so cursors it holds are released.
    """
    inbox: queue.Queue[Any] = queue.Queue(depth)
    outbox: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    errors: list[BaseException] = []

    def fail(exc: BaseException) -> None:
        if not isinstance(exc, _Stop):
            errors.append(exc)
        stop.set()

    def put(box: queue.Queue[Any], item: Any) -> None:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                box.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def get(box: queue.Queue[Any]) -> Any:
        while True:
            if stop.is_set():
                raise _Stop
            try:
                return box.get(timeout=_POLL)
            except queue.Empty:
                continue

    def read() -> None:
        try:
            with closing(source):
                for item in source:
                    put(inbox, item)
            put(inbox, _END)
        except BaseException as exc:  # handed to the calling thread
            fail(exc)

    def write() -> None:
        try:
            while (item := get(outbox)) is not _END:
                sink(item)
        except BaseException as exc:  # handed to the calling thread
            fail(exc)

    threads = [threading.Thread(target=read, name="pipeline-read", daemon=True),
               threading.Thread(target=write, name="pipeline-write", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while (item := get(inbox)) is not _END:
            put(outbox, transform(item))
        put(outbox, _END)
    except BaseException as exc:
        fail(exc)
    finally:
        if not stop.is_set():
            threads[1].join()  # let the writer finish what was scored
        stop.set()  # the reader may still be blocked on a full inbox
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
