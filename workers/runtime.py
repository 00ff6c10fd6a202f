"""What one worker process holds: settings, config, the object store, analyzers and the fetch threads, each made
once.

Analyzers are built on first use, or before the first task by ``warm_up``, and kept for the life of the process
(one model instance per process).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Collection, Optional

from services.config import AppConfig, Profile, load_config
from services.settings import Settings, load_settings
from services.storage import ObjectStore, store_from_settings

log = logging.getLogger(__name__)

FETCH_THREADS = 8  # object storage is I/O: a batch's objects are fetched concurrently


def analyzer_options(name: str, profile: Optional[Profile], settings: Settings) -> dict[str, Any]:
    """The options a worker builds analyzer ``name`` of ``profile`` with (``vlwatch eval`` builds them the same
    way): the profile's ``options`` for it and its phrases (vl2-ground) or checks (vl2-ask); for VL2 analyzers the
    worker's checkpoint and device and the decoding settings of the profile's ``vl2:`` block, else of the worker's
    ``VLWATCH_VL2_*``. A profile's ``options`` win over both."""
    options = profile.analyzer_options(name) if profile is not None else {}
    if profile is not None and name == "vl2-ask":
        options["checks"] = [c.as_options(n) for n, c in profile.checks.items()]
    if name.startswith("vl2"):
        p = profile.vl2 if profile is not None else None
        options = dict(checkpoint=settings.vl2_checkpoint, device=settings.vl2_device,
                       dtype=(p and p.dtype) or settings.vl2_dtype,
                       max_new_tokens=(p and p.max_new_tokens) or settings.vl2_max_new_tokens,
                       images_per_batch=(p and p.images_per_batch) or settings.vl2_images_per_batch,
                       prefill_chunk=(p and p.prefill_chunk) or settings.vl2_prefill_chunk) | options
    return options


@dataclass
class Runtime:
    settings: Settings
    config: AppConfig
    store: ObjectStore
    deferred_give_back: set[int] = field(default_factory=set)  # jobs whose release a database outage stopped
    _owner: tuple[int, str] = (0, "")  # (pid, lease owner id made in that process)
    _analyzers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: Optional[tuple[int, ThreadPoolExecutor]] = None  # (pid that made it, pool): threads do not survive fork
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)  # not _lock: held while a model loads
    _warmed_in: Optional[int] = None  # pid of the process warm_up ran in

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        """For ``celery -A workers.celery_app``, whose process has no CLI to build the runtime."""
        return cls(settings, load_config(settings.config), store_from_settings(settings))

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    @property
    def worker_id(self) -> str:
        """The lease owner id of this process: host, pid and a random part, made in the process that asks, so the
        prefork children of one worker (which inherit the runtime made before the fork) each have their own."""
        pid = os.getpid()
        if self._owner[0] != pid:
            self._owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
        return self._owner[1]

    def analyzer(self, name: str, profile: Optional[Profile] = None):  # noqa: ANN201
        """The process-wide instance of analyzer ``name`` as ``profile`` configures it (one per distinct set of
        options; VL2 analyzers share the loaded weights); raises AnalyzerUnavailable where it cannot run."""
        from model.registry import build_analyzer

        options = self.analyzer_options(name, profile)
        key = (name, json.dumps(options, sort_keys=True, default=str))
        with self._lock:
            if key not in self._analyzers:
                self._analyzers[key] = build_analyzer(name, options)
            return self._analyzers[key]

    def analyzer_options(self, name: str, profile: Optional[Profile] = None) -> dict[str, Any]:
        return analyzer_options(name, profile, self.settings)

    def fetch_pool(self) -> ThreadPoolExecutor:
        """Threads for fetching a batch's objects, made once per process (not once per batch)."""
        with self._pool_lock:
            if self._pool is None or self._pool[0] != os.getpid():
                self._pool = (os.getpid(), ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="vlwatch-fetch"))
            return self._pool[1]

    def warm_up(self, queues: Optional[Collection[str]] = None) -> None:
        """Before the first task: connect to the database and build the analyzers of the profiles whose queue is
        in ``queues`` (all when None), so the first batch does not pay for imports, connections and engine set-up
        (~0.3 s of CPU for the barcode engine; a VL2 checkpoint takes far longer) and a broken set-up shows in the
        log at start. Nothing here raises: jobs meet the same faults later and fail or retry with their reasons.
        Once per process."""
        from model.analyzers import AnalyzerUnavailable
        from services.db import get_engine

        if self._warmed_in == os.getpid():
            return
        self._warmed_in = os.getpid()

        from sqlalchemy.orm import configure_mappers

        t = time.perf_counter()
        configure_mappers()
        try:
            with get_engine(self.db_url).connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:  # noqa: BLE001
            log.warning("warm-up: the database is not reachable (%s); jobs retry until it is", exc)
        pool = self.fetch_pool()
        list(pool.map(time.sleep, [0.01] * FETCH_THREADS))  # its threads are started on demand: start them now
        built = []
        for profile_name, profile in self.config.profiles.items():
            if queues is not None and profile.queue_name not in queues:
                continue
            for name in profile.analyzers:
                try:
                    self.analyzer(name, profile)
                    built.append(name)
                except AnalyzerUnavailable as exc:
                    log.warning("warm-up: analyzer %s of profile %s is not available here: %s", name, profile_name,
                                exc)
                except Exception:  # noqa: BLE001
                    log.exception("warm-up: analyzer %s of profile %s failed to load", name, profile_name)
        # What start-up made lives as long as the process: collect once, then keep it out of every later
        # collection (a full collection of a fresh worker's ~90k objects costs ~75 ms; the first one otherwise
        # falls into the first batch, and later ones recur).
        gc.collect()
        gc.freeze()
        log.info("warm-up: database connected, analyzers %s ready in %.2fs", sorted(set(built)),
                 time.perf_counter() - t)
        from workers.limits import apply_memory_cap

        apply_memory_cap(self.settings.worker_max_memory_mb)  # what start-up mapped stays outside the cap


_runtime: Optional[Runtime] = None
_runtime_lock = threading.Lock()


def set_runtime(rt: Optional[Runtime]) -> None:
    global _runtime
    _runtime = rt


def get_runtime() -> Runtime:
    """The process's runtime; a worker started without one reads the environment once."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(load_settings())
        return _runtime
