"""The bucket scanner: lists a prefix and registers every object not registered yet, the fallback that catches
whatever bucket events missed (``vlwatch scan [--watch]``)."""

from __future__ import annotations

from services.config import AppConfig
from services.db import session_scope
from services.ingest.register import SendJob, known_etags, register_and_send
from services.storage import ObjectInfo, ObjectStore


def scan(db_url: str, config: AppConfig, store: ObjectStore, send_job: SendJob, prefix: str = "",
         batch: int = 500) -> int:
    """Register every object under ``prefix`` that is not registered yet (the fallback for missed events)."""
    created = 0
    pending: list[ObjectInfo] = []

    def flush() -> None:
        nonlocal created
        with session_scope(db_url) as s:
            known = known_etags(s, store.bucket, [o.key for o in pending])
        fresh = [o for o in pending if (o.key, o.etag) not in known]
        if fresh:
            created += sum(r.created for r in register_and_send(db_url, config, store.bucket, fresh, send_job))
        pending.clear()

    for obj in store.list(prefix):
        if obj.key.endswith("/"):
            continue
        pending.append(obj)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return created
