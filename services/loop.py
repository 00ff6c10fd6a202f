"""The loop of a long-running process (scanner, reconciler): a round every ``interval`` seconds that rides out
an outage of the database, the broker or object storage of any length. A round that raises is logged (the
first failure of an outage with its traceback, the following ones in one line), then tried again after a
backoff that doubles from one second up to the interval; the first round that succeeds says the outage ended.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def keep_running(round_: Callable[[], T], *, interval: float, name: str, stop: Optional[threading.Event] = None,
                 on_result: Optional[Callable[[T], None]] = None, max_backoff: Optional[float] = None) -> None:
    """Call ``round_`` every ``interval`` seconds until ``stop`` is set; ``on_result`` gets each round's value.
    Nothing ``round_`` raises (an ``Exception``) ends the loop."""
    stop = stop or threading.Event()
    failures, failing_since = 0, 0.0
    cap = max(1.0, max_backoff if max_backoff is not None else interval)
    while not stop.is_set():
        try:
            result = round_()
        except Exception as exc:  # noqa: BLE001 - any fault of a dependency: log, back off, try again
            if failures == 0:
                failing_since = time.monotonic()
                log.exception("%s: round failed; retrying with backoff until it succeeds", name)
            else:
                log.warning("%s: still failing after %.0fs (%s: %s)", name, time.monotonic() - failing_since,
                            type(exc).__name__, exc)
            failures += 1
            stop.wait(min(cap, 2.0 ** (failures - 1)))
            continue
        if failures:
            log.warning("%s: recovered after %.0fs and %d failed round(s)", name, time.monotonic() - failing_since,
                        failures)
            failures = 0
        if on_result is not None:
            on_result(result)
        stop.wait(interval)
