"""The overlapped read -> score -> write stages: order, back-pressure, errors from any stage."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.run.stages import overlapped


class Source:
    """An iterator that records whether it was closed, and in which thread it ran."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.closed, self.made, self.threads = n, fail_at, False, 0, set()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        self.threads.add(threading.current_thread().name)
        if self.made == self.fail_at:
            raise ValueError("source broke")
        if self.made == self.n:
            raise StopIteration
        self.made += 1
        return self.made

    def close(self) -> None:
        self.closed = True


def test_every_item_arrives_in_order_through_three_threads():
    got, where = [], set()
    source = Source(50)

    def sink(x: int) -> None:
        where.add(threading.current_thread().name)
        got.append(x)

    overlapped(source, lambda x: x * 10, sink)
    assert got == [x * 10 for x in range(1, 51)]
    assert source.threads == {"pipeline-read"} and where == {"pipeline-write"} and source.closed


def test_the_reader_runs_at_most_a_few_chunks_ahead():
    source, seen = Source(100), []

    def slow_sink(x: int) -> None:
        seen.append(source.made - x)  # how far the reader got beyond what is written now
        time.sleep(0.002)

    overlapped(source, lambda x: x, slow_sink, depth=2)
    assert max(seen) <= 6


@pytest.mark.parametrize("stage", ["source", "transform", "sink"])
def test_an_error_in_any_stage_stops_the_others_and_is_raised(stage):
    source = Source(10_000, fail_at=5 if stage == "source" else None)
    written = []

    def transform(x: int) -> int:
        if stage == "transform" and x == 5:
            raise KeyError("transform broke")
        return x

    def sink(x: int) -> None:
        if stage == "sink" and x == 5:
            raise RuntimeError("sink broke")
        written.append(x)

    started = time.monotonic()
    with pytest.raises((ValueError, KeyError, RuntimeError), match="broke"):
        overlapped(source, transform, sink)
    assert time.monotonic() - started < 5
    assert source.closed and source.made < 10_000 and written == list(range(1, len(written) + 1))
    assert not [t for t in threading.enumerate() if t.name.startswith("pipeline-")]
