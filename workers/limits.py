"""What bounds one batch's work inside a worker process, and the words for what stopped it.

- ``time_limit``: a batch's analysis raises ``JobTimeLimit`` once ``VLWATCH_TASK_TIME_LIMIT_SECONDS`` have
  passed. It is a SIGALRM timer, so it holds in the solo pool (GPU workers) and in prefork children alike, both
  of which run tasks in their main thread; Python code is interrupted at once, a call into native code (an
  engine's inference) when it returns. A call that never returns meets the hard limit: Celery's ``time_limit``
  ends the prefork child (the pool starts another; the job's lease expires and it runs again alone).
- ``apply_memory_cap``: the process's address space is capped (RLIMIT_AS) so that an analysis that needs more
  memory than ``VLWATCH_WORKER_MAX_MEMORY_MB`` fails with ``MemoryError`` (the job fails with a reason, the
  process goes on) instead of the kernel's OOM killer ending the worker.
- ``explain``: an exception in words for a job's reason, never an empty ``ResizeImgError: ``.
"""

from __future__ import annotations

import logging
import resource
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

log = logging.getLogger(__name__)

_PAGE = resource.getpagesize()
_MIB = 1024 * 1024
# Messages of engines that report a failed allocation as their own exception type (onnxruntime, OpenCV, C++).
_OOM_WORDS = ("bad_alloc", "bad allocation", "failed to allocate", "insufficient memory", "out of memory")


class JobTimeLimit(BaseException):
    """The batch's analysis ran past its time limit. A ``BaseException`` (as ``KeyboardInterrupt``), so that
    the ``except Exception`` of a stage that isolates one image's fault (decoding, an analyzer call) does not
    take it for that image's fault."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"analysis ran past its {seconds:g}-second time limit")
        self.seconds = seconds


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``JobTimeLimit`` in this thread once ``seconds`` have passed inside the block. Only in the main
    thread (where signals are delivered); elsewhere (the threads pool) the block runs without a limit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise JobTimeLimit(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def out_of_memory(exc: BaseException) -> bool:
    """``exc`` (or what caused it) is a failed allocation."""
    while exc is not None:
        if isinstance(exc, MemoryError) or any(w in str(exc).lower() for w in _OOM_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def explain(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` for a job's reason. An exception without a message is described by what
    caused it (RapidOCR raises an empty ``ResizeImgError()`` from OpenCV's error), else says it gave none."""
    text = str(exc).strip()
    if text:
        return f"{type(exc).__name__}: {text}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        return f"{type(exc).__name__} (caused by {explain(cause)})"
    if isinstance(exc, MemoryError):
        return "MemoryError (an allocation failed)"
    return f"{type(exc).__name__} (the engine gave no message)"


def memory_in_use() -> tuple[int, int]:
    """(address space, resident memory) of this process in bytes (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        size, resident = fh.read().split()[:2]
    return int(size) * _PAGE, int(resident) * _PAGE


def apply_memory_cap(max_mb: int) -> Optional[int]:
    """Cap this process's address space so its resident memory stays under ``max_mb`` MiB: what is mapped now
    (loaded engines, thread stacks, allocator arenas) plus the resident memory still allowed. Returns the cap in
    bytes, or None when none was set: ``max_mb`` 0, not Linux, or CUDA in use (it maps address space by the
    terabyte; GPU workers rely on ``worker_max_memory_per_child`` and the GPU's own memory budget)."""
    if max_mb <= 0 or not sys.platform.startswith("linux"):
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.info("memory cap: CUDA is in use in this process; no address-space cap")
        return None
    mapped, resident = memory_in_use()
    headroom = max_mb * _MIB - resident
    if headroom <= 0:
        log.warning("memory cap: this process already holds %d MiB, over VLWATCH_WORKER_MAX_MEMORY_MB=%d; "
                    "no cap set", resident // _MIB, max_mb)
        return None
    cap = mapped + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    log.info("memory cap: %d MiB resident allowed, %d MiB held now (address space capped at %d MiB)", max_mb,
             resident // _MIB, cap // _MIB)
    return cap
