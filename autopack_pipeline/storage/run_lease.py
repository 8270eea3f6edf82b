"""Who is draining a run: a lease held in the ``runs`` row itself, so it works across processes and hosts.

No new table: the lease is ``runs.state = 'PHASE_EXECUTION'`` (Autopack's own name for a run whose
phases are executing) plus ``runs.updated_at`` as the heartbeat. Claiming is one conditional UPDATE
(state is not PHASE_EXECUTION, or its heartbeat is older than the lease), which the database applies
atomically on SQLite and PostgreSQL alike, so of two processes exactly one gets the run. The owner
knows itself by the exact ``updated_at`` it last wrote: renewing and releasing are compare-and-set on
that value, so a process whose lease expired and was taken over cannot renew or release the new
owner's lease. A crashed owner stops renewing and its lease expires after ``lease_seconds``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import safe_error_text
from autopack_pipeline.storage.models import Run, utc_now
from autopack_pipeline.storage.retry import retry_while_unavailable

logger = logging.getLogger(__name__)

DRAINING_STATE = "PHASE_EXECUTION"
FINISHED_STATE = "DONE_SUCCESS"  # every phase complete
RESUMABLE_STATE = "PHASE_QUEUEING"  # phases left to drain (failed, pending): a re-run picks them up
DEFAULT_LEASE_SECONDS = 120.0

_RUNS = Run.__table__


class RunBusy(RuntimeError):
    """Another process holds the run's lease."""


@dataclass
class RunLease:
    engine: Engine
    run_id: str
    lease_seconds: float
    stamp: datetime  # the updated_at this owner last wrote: its proof of ownership

    @classmethod
    def claim(cls, engine: Engine, run_id: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> RunLease:
        """Take the run's lease, or raise :class:`RunBusy` saying who has it and until when."""
        now = utc_now()
        expired = now - timedelta(seconds=lease_seconds)
        with engine.begin() as connection:
            claimed = connection.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id, or_(_RUNS.c.state != DRAINING_STATE, _RUNS.c.updated_at < expired))
                .values(state=DRAINING_STATE, updated_at=now, started_at=func.coalesce(_RUNS.c.started_at, now))
            ).rowcount
            if claimed == 1:
                return cls(engine, run_id, lease_seconds, now)
            heartbeat = connection.execute(select(_RUNS.c.updated_at).where(_RUNS.c.id == run_id)).scalar()
        if heartbeat is None:
            raise RunBusy(f"run {run_id} does not exist")
        until = heartbeat + timedelta(seconds=lease_seconds)
        raise RunBusy(
            f"run {run_id} is being drained by another process (last heartbeat {heartbeat:%Y-%m-%d %H:%M:%S} UTC; "
            f"its lease expires at {until:%H:%M:%S} UTC unless renewed). Wait for it to finish, or collect "
            "under another --run-id."
        )

    def renew(self) -> bool:
        """Extend the lease; False when another process has taken it over."""
        now = utc_now()
        if not self._compare_and_set(state=DRAINING_STATE, updated_at=now):
            return False
        self.stamp = now
        return True

    def release(self, final_state: str, retry_seconds: float = 0) -> bool:
        """Give the run back, in ``final_state``; False when it was no longer ours or the database stayed
        unavailable for ``retry_seconds`` (the lease then expires after ``lease_seconds``)."""
        now = utc_now()
        values = {"state": final_state, "updated_at": now}
        if final_state == FINISHED_STATE:
            values["completed_at"] = now
        try:
            return retry_while_unavailable(lambda: self._compare_and_set(**values), what=f"the lease on {self.run_id}",
                                           budget_seconds=retry_seconds)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself
            logger.warning("could not release run %s (%s); its lease expires in %g s",
                           self.run_id, safe_error_text(exc), self.lease_seconds)
            return False

    def _compare_and_set(self, **values: object) -> bool:
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(_RUNS)
                .where(_RUNS.c.id == self.run_id, _RUNS.c.state == DRAINING_STATE, _RUNS.c.updated_at == self.stamp)
                .values(**values)
            ).rowcount
        return changed == 1

    @contextmanager
    def kept_alive(self, on_lost: Callable[[], None]) -> Iterator[None]:
        """Renew the lease every quarter of its length in a thread; ``on_lost()`` if it was taken over.

        A renewal that fails because the database is down is tried again at the next beat: nobody
        else can take the run over while the database is unreachable for them too.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 4):
                try:
                    if not self.renew():
                        logger.error("the lease on run %s was taken over by another process", self.run_id)
                        on_lost()
                        return
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    logger.warning("could not renew the lease on run %s: %s", self.run_id, safe_error_text(exc))

        thread = threading.Thread(target=beat, name=f"lease-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
