"""The columnar store's helper threads: results in order, a bounded number ahead, errors raised."""

from __future__ import annotations

import threading
import time

import pytest

from autopack_pipeline.storage.columnar.prefetch import converted_in_order


def test_converted_in_order_keeps_the_order_with_at_most_workers_ahead():
    running, most = 0, 0
    lock = threading.Lock()

    def convert(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01 * (5 - item % 5))  # later items finish first
        with lock:
            running -= 1
        return item * item

    seen = []
    for item, square in converted_in_order(range(12), convert, workers=3):
        seen.append((item, square))
    assert seen == [(i, i * i) for i in range(12)]
    assert most <= 3


def test_converted_in_order_raises_a_helpers_error_at_its_item():
    def convert(item: int) -> int:
        if item == 2:
            raise ValueError("part 2 unreadable")
        return item

    got = []
    with pytest.raises(ValueError, match="part 2 unreadable"):
        for item, _value in converted_in_order(range(5), convert):
            got.append(item)
    assert got == [0, 1]


def test_converted_in_order_of_nothing():
    assert list(converted_in_order([], lambda item: item)) == []
