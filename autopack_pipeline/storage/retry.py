"""Writes that must not be given up on at the first failure: retried while the database is unavailable.

An event that cannot be written goes to the spool; a phase's state cannot (it is read back when a run
resumes), so its write is retried with exponential back-off and jitter for a bounded time. When the
budget runs out the caller gets :class:`DatabaseUnavailable` and stops cleanly; a resumed run then
picks the phase up again (see :mod:`autopack_pipeline.storage.runs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import backoff

from autopack_pipeline.storage.database import safe_error_text
from autopack_pipeline.storage.spool import is_transient_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RETRY_SECONDS = 120.0  # long enough for a PostgreSQL restart or a 75 s SQLite lock
MAX_BACKOFF_SECONDS = 5.0


class DatabaseUnavailable(RuntimeError):
    """The telemetry database stayed locked, down or unwritable for the whole retry budget."""

    def __init__(self, what: str, seconds: float, error: str) -> None:
        super().__init__(
            f"the telemetry database was unavailable for {seconds:g} s while writing {what} ({error})"
        )
        self.what = what
        self.error = error


def retry_while_unavailable(write: Callable[[], T], *, what: str, budget_seconds: float,
                            also_retry: tuple[type[BaseException], ...] = ()) -> T:
    """``write()``, retried on transient database failures for up to ``budget_seconds``.

    Errors about the data itself are raised at once: retrying them cannot help. ``also_retry`` names
    the caller's own exceptions that mean "the database is not ready yet" as well.
    """

    def retryable(exc: BaseException) -> bool:
        return is_transient_failure(exc) or isinstance(exc, also_retry)

    def log_retry(details: dict) -> None:
        logger.warning("writing %s failed (%s); retrying in %.1f s", what,
                       safe_error_text(details["exception"]), details["wait"])

    retrying = backoff.on_exception(
        backoff.expo,
        Exception,
        max_time=budget_seconds,
        max_value=MAX_BACKOFF_SECONDS,
        factor=0.1,
        giveup=lambda exc: not retryable(exc),
        on_backoff=log_retry,
        logger=None,
    )(write)
    try:
        return retrying()
    except Exception as exc:
        if retryable(exc):
            raise DatabaseUnavailable(what, budget_seconds, safe_error_text(exc)) from exc
        raise
