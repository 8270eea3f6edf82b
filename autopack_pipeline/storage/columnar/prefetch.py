"""Work on the next item in a helper thread while the caller handles the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def prefetch(items: Iterable, convert: Callable[[Any], Any], depth: int = 2) -> Iterator[tuple[Any, Any]]:
    """``(item, convert(item))`` for every item, with ``convert`` running in a helper thread ahead.

    Database drivers and pyarrow release the GIL while they work, so reading the next batch
    overlaps with handling the current one. An exception in the helper is raised here.
    """
    finished = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, convert(item)))
            buffer.put((finished, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((finished, exc))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, converted = buffer.get()
            if item is finished:
                if converted is not None:
                    raise converted
                return
            yield item, converted
    finally:
        stop.set()
        while worker.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
