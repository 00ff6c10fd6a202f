"""Riding out an outage of the database, the broker or object storage, of any length.

:class:`Backoff` is one loop's run of failures: logged (the first with its traceback, later ones in a line),
waits that double up to a cap, the recovery said. :func:`keep_running` is the loop of a long-running process
(scanner, reconciler): a round every ``interval`` seconds that nothing a dependency raises can end. The
dispatcher's lanes use :class:`Backoff` for each of their database steps.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, TypeVar

from services.safetext import mask_secrets

T = TypeVar("T")

log = logging.getLogger(__name__)


class Backoff:
    """One loop's run of failures: the first is logged with its traceback, later ones in a line, the recovery
    is said; the wait doubles from ``first`` up to ``cap`` seconds."""

    def __init__(self, name: str, cap: float, first: float = 0.5) -> None:
        self.name, self.cap, self.first = name, max(first, cap), first
        self.failures, self._since = 0, 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException) -> float:
        """Log ``exc``; returns the seconds to wait before trying again."""
        if self.failures == 0:
            self._since = time.monotonic()
            log.error("%s failed; trying again with backoff until it succeeds", self.name, exc_info=exc)
        else:
            log.warning("%s still failing after %.0fs: %s: %s", self.name, time.monotonic() - self._since,
                        type(exc).__name__, mask_secrets(str(exc))[:300])
        self.failures += 1
        return min(self.cap, self.first * 2 ** (self.failures - 1))

    def ok(self) -> None:
        if self.failures:
            log.warning("%s recovered: works again after %.0fs and %d failed tries", self.name,
                        time.monotonic() - self._since, self.failures)
            self.failures = 0


def keep_running(round_: Callable[[], T], *, interval: float, name: str, stop: Optional[threading.Event] = None,
                 on_result: Optional[Callable[[T], None]] = None, max_backoff: Optional[float] = None) -> None:
    """Call ``round_`` every ``interval`` seconds until ``stop`` is set; ``on_result`` gets each round's value.
    Nothing ``round_`` raises (an ``Exception``) ends the loop: it is logged and tried again after a backoff
    that doubles from one second up to ``max_backoff`` (default: the interval)."""
    stop = stop or threading.Event()
    backoff = Backoff(name, max(1.0, max_backoff if max_backoff is not None else interval), first=1.0)
    while not stop.is_set():
        try:
            result = round_()
        except Exception as exc:  # noqa: BLE001 - any fault of a dependency: log, back off, try again
            stop.wait(backoff.failed(exc))
            continue
        backoff.ok()
        if on_result is not None:
            on_result(result)
        stop.wait(interval)
