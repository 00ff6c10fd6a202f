"""What one worker process holds: settings, config, the object store and analyzers, each made once.

Analyzers are built on first use and kept for the life of the process (one model instance per process).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Optional

from services.config import AppConfig, load_config
from services.settings import Settings, load_settings
from services.storage import ObjectStore, open_store


def make_store(settings: Settings) -> ObjectStore:
    return open_store(
        endpoint=settings.s3_endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
        bucket=settings.bucket, secure=settings.s3_secure, region=settings.s3_region,
        local_root=settings.local_objects_dir,
    )


@dataclass
class Runtime:
    settings: Settings
    config: AppConfig
    store: ObjectStore
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    _analyzers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        return cls(settings, load_config(settings.config), make_store(settings))

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    def analyzer(self, name: str, phrases: tuple[str, ...] = ()):  # noqa: ANN201
        """The process-wide instance of analyzer ``name`` (raises AnalyzerUnavailable where it cannot run)."""
        from model.registry import build_analyzer

        key = (name, phrases)
        with self._lock:
            if key not in self._analyzers:
                options = {"phrases": list(phrases)} if phrases else {}
                if name.startswith("vl2"):
                    options.update(checkpoint=self.settings.vl2_checkpoint, device=self.settings.vl2_device,
                                   dtype=self.settings.vl2_dtype)
                self._analyzers[key] = build_analyzer(name, options)
            return self._analyzers[key]


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
