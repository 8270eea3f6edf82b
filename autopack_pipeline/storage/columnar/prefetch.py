"""Work on the next items in helper threads while the caller handles the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def prefetch(items: Iterable, convert: Callable[[Any], Any], depth: int = 2,
             workers: int = 1) -> Iterator[tuple[Any, Any]]:
    """``(item, convert(item))`` for every item, in the items' order, with ``convert`` running ahead in
    ``workers`` helper threads (worker k converts items k, k + workers, ...; each keeps at most
    ``depth`` converted items waiting, so memory stays bounded).

    Database drivers and pyarrow release the GIL while they work, so reading the next batches
    overlaps with handling the current one, and with two workers a second core reads too. An
    exception in a helper is raised here, in the order of its item.
    """
    finished = object()
    buffers = [queue.Queue(maxsize=depth) for _ in range(workers)]
    stop = threading.Event()
    source = iter(items)
    lock = threading.Lock()  # the workers take items from one iterator, in turn
    turn = [0]  # whose item is next
    turned = threading.Condition(lock)

    def produce(me: int) -> None:
        buffer = buffers[me]
        try:
            while not stop.is_set():
                with turned:  # each worker takes every workers-th item, so the consumer knows whose is next
                    while turn[0] != me and not stop.is_set():
                        turned.wait(0.05)
                    if stop.is_set():
                        return
                    item = next(source, finished)
                    turn[0] = (me + 1) % workers
                    turned.notify_all()
                if item is finished:
                    buffer.put((finished, None))
                    return
                buffer.put((item, convert(item)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((finished, exc))

    threads = [threading.Thread(target=produce, args=(k,), name=f"prefetch-{k}", daemon=True)
               for k in range(workers)]
    for thread in threads:
        thread.start()
    try:
        at = 0
        while True:
            item, converted = buffers[at].get()
            if item is finished:
                if converted is not None:
                    raise converted
                return
            yield item, converted
            at = (at + 1) % workers
    finally:
        stop.set()
        with turned:
            turned.notify_all()
        for thread, buffer in zip(threads, buffers):
            while thread.is_alive():
                try:
                    buffer.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
