"""Receivers for bucket notifications: a small HTTP server and a MinIO Redis-target consumer.

HTTP (stdlib ``ThreadingHTTPServer`` within the limits below, loopback by default):

- ``POST /events/s3``: S3 event JSON, MinIO's webhook target
  (``MINIO_NOTIFY_WEBHOOK_ENDPOINT_<ID>=http://host:port/events/s3``, ``..._AUTH_TOKEN_<ID>`` for the token).
- ``POST /events/seaweedfs``: the SeaweedFS filer's webhook notifier (``notification.toml``:
  ``[notification.webhook] enabled = true, endpoint = "http://host:port/events/seaweedfs"``).
- ``GET|HEAD`` on either path and ``GET /healthz``: 200 (MinIO probes its webhook target before sending).
- ``GET /metrics``: Prometheus metrics of this process (notifications by outcome, images registered).

Access: every POST needs a bearer token, either the ``--token`` given at start (the one MinIO and SeaweedFS are
configured with) or an API token made with ``vlwatch tokens add NAME --upload`` for every source (a notification can
name any key of the bucket, so source-scoped tokens are refused with 403). Without a valid token the answer is 401.
Only ``--no-auth`` (local use) turns the check off.

Wiring the producers (``vlwatch`` listening on 127.0.0.1:8471 with token ``T``)::

    # MinIO, webhook target
    MINIO_NOTIFY_WEBHOOK_ENABLE_VLWATCH=on
    MINIO_NOTIFY_WEBHOOK_ENDPOINT_VLWATCH=http://127.0.0.1:8471/events/s3
    MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_VLWATCH=T
    mc event add ALIAS/BUCKET arn:minio:sqs::vlwatch:webhook --event put,delete

    # MinIO, Redis target (consume_minio_redis(..., key="bucketevents", format="access"))
    MINIO_NOTIFY_REDIS_ENABLE_VLWATCH=on MINIO_NOTIFY_REDIS_ADDRESS_VLWATCH=redis:6379
    MINIO_NOTIFY_REDIS_KEY_VLWATCH=bucketevents MINIO_NOTIFY_REDIS_FORMAT_VLWATCH=access

    # SeaweedFS: notification.toml in the filer's working folder, ~/.seaweedfs/ or /etc/seaweedfs/
    [notification.webhook]
    enabled = true
    endpoint = "http://127.0.0.1:8471/events/seaweedfs"
    bearer_token = "T"
    path_prefixes = ["/buckets/BUCKET/"]   # optional: only the watched bucket

A POST is registered before it is answered (a few milliseconds: one SQL round trip, one stat per new key), so
a 200 means the job exists. The answer body is the counts as JSON, or ``{"error": reason}``:

- 400: the document cannot be read (not strict JSON, nested too deeply, wrong types, out-of-range numbers or
  times: anything the pure parser raises) or its framing is wrong (a Content-Length that is not a byte count
  or that the body does not fill in time); a retry would fail the same way. 411: no Content-Length (chunked);
  413: a body over ``VLWATCH_NOTIFY_MAX_BODY_BYTES`` (default 8 MiB), refused unread.
- 401 (missing or wrong bearer token) and 403 (a token without the right to register) are answered from the
  headers, before any of the body is read, and close the connection.
- 503: PostgreSQL or the store is unreachable (or, with 32 connections already being served, the listener is
  busy); the sender retries (MinIO and the SeaweedFS filer retry non-2xx answers) and the listener, which keeps
  running, takes the document once they are back. 500 is left for faults of the listener itself.

Limits (settings; how they work: ``services.ingest.http_guard``): ``VLWATCH_NOTIFY_TIMEOUT_SECONDS`` (default
5): a request's line, headers and body must all arrive within it, and an idle keep-alive connection is closed
after as long; ``VLWATCH_NOTIFY_MAX_CONNECTIONS`` (default 32): connections served at once, a thread each.

Redis: ``consume_minio_redis`` reads MinIO's Redis target. ``access`` format (a list, RPUSH): entries are moved
atomically to ``<key>:processing`` (BLMOVE) and removed from there only after they are registered, so a crash
loses nothing; unreadable entries go to ``<key>:rejected``. ``namespace`` format (a hash of current objects):
the hash is scanned every ``poll_seconds``; registration is idempotent, so rescans only add new objects.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Optional, Sequence

from services import metrics
from services.config import AppConfig
from services.ingest.register import SendJob
from services.ingest.bucket_events import SEAWEED_BUCKETS_DIR, NotificationError, ObjectEvent, parse_minio_redis
from services.ingest.event_ingest import IngestCounts, ingest_document, ingest_events, parse_document
from services.ingest.http_guard import GuardedHandler, GuardedServer, Limits, Refused
from services.storage import StorageUnavailable
from services.tokens import Authenticator

log = logging.getLogger(__name__)

DEFAULT_PORT = 8471
ROUTES = {"/events/s3": "s3", "/events/seaweedfs": "seaweedfs"}


def _transient(exc: BaseException) -> bool:
    """Errors a sender should retry: the database or the store is unreachable."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, (StorageUnavailable, OperationalError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class NotifyServer(GuardedServer):
    """The HTTP receiver; ``serve_forever`` in a thread, ``shutdown`` to stop."""

    allow_reuse_address = True

    def __init__(self, db_url: str, config: AppConfig, store, send_job: SendJob,  # noqa: ANN001
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: Optional[str] = None,
                 verify: bool = True, buckets_dir: str = SEAWEED_BUCKETS_DIR, no_auth: bool = False,
                 limits: Limits = Limits()) -> None:
        self.db_url, self.config, self.store, self.send_job = db_url, config, store, send_job
        self.auth = Authenticator(db_url, no_auth=no_auth, static_token=token)
        self.verify, self.buckets_dir = verify, buckets_dir
        self.totals = IngestCounts()
        self._lock = threading.Lock()
        super().__init__((host, port), _Handler, limits)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def check_access(self, header: Optional[str]) -> None:
        """Return when the ``Authorization`` header may register objects; ``Refused`` (401, 403) otherwise.
        An API token is looked up in the database: unreachable, that raises as registering would (503)."""
        who = self.auth.principal(header)
        if who is None:
            raise Refused(401, "missing or wrong bearer token")
        if not who.can_upload or who.sources is not None:
            raise Refused(403, f"token {who.name!r} may not register objects (needs --upload and every source)")

    def register(self, events: Sequence[ObjectEvent]) -> IngestCounts:
        counts = ingest_events(self.db_url, self.config, self.store, events, self.send_job, verify=self.verify)
        with self._lock:
            self.totals.add(counts)
        return counts


class _Handler(GuardedHandler):
    server: NotifyServer
    wbufsize = 64 * 1024  # headers and body leave in one segment (flushed after each request) ...
    disable_nagle_algorithm = True  # ... and at once: no 40 ms delayed-ACK stall on keep-alive connections

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)

    def _answer(self, status: int, payload: dict, head: bool = False, close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", head, close)

    def _send(self, status: int, body: bytes, content_type: str, head: bool = False, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")  # also ends the connection after this answer
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802
        path = self._path()
        if path in ROUTES or path == "/healthz":
            self._answer(200, {"ok": True})
        elif path == "/metrics":
            self._send(200, *metrics.exposition())
        else:
            self._answer(404, {"error": f"no such endpoint {path}"})

    def do_HEAD(self) -> None:  # noqa: N802
        path = self._path()
        self._answer(200 if path in ROUTES or path == "/healthz" else 404, {}, head=True)

    def do_POST(self) -> None:  # noqa: N802
        """Headers first (path, token, length), then the body, then the document: see the module docstring."""
        path = self._path()
        fmt = ROUTES.get(path)
        try:
            if fmt is None:
                raise Refused(404, f"no such endpoint {path} (known: {', '.join(ROUTES)})")
            self.server.check_access(self.headers.get("Authorization"))
            body = self.read_body(self.content_length())
            if not body:
                raise Refused(400, "empty body (a JSON event document is expected)")
        except Refused as exc:  # answered from the headers (or a body cut short): the connection is closed
            if exc.status != 404:
                metrics.NOTIFICATIONS.labels(outcome="refused" if exc.status in (401, 403) else "malformed").inc()
            self._answer(exc.status, {"error": exc.reason}, close=True)
            return
        except OSError:
            raise  # the client went away while its body was read: nobody to answer
        except Exception as exc:  # noqa: BLE001 - the token lookup: the database is down (503) or a fault (500)
            self._failed(fmt or "?", exc, close=True)
            return
        try:
            events = parse_document(fmt, body, self.server.buckets_dir)
        except Exception as exc:  # noqa: BLE001 - the parser is pure: whatever it raises, a retry raises again
            log.warning("rejected %s notification: %s", fmt, exc, exc_info=not isinstance(exc, NotificationError))
            metrics.NOTIFICATIONS.labels(outcome="malformed").inc()
            reason = str(exc) if isinstance(exc, NotificationError) else f"unreadable document: {type(exc).__name__}"
            self._answer(400, {"error": reason})
            return
        try:
            counts = self.server.register(events)
        except Exception as exc:  # noqa: BLE001 - the server keeps going; the sender retries on 5xx
            self._failed(fmt, exc)
            return
        metrics.NOTIFICATIONS.labels(outcome="registered").inc()
        self._answer(200, counts.as_dict())

    def _failed(self, fmt: str, exc: Exception, close: bool = False) -> None:
        """503 when the database or the store is unreachable (the sender retries), else 500."""
        metrics.NOTIFICATIONS.labels(outcome="error").inc()
        if _transient(exc):
            log.warning("cannot register %s notification now (%s); the sender will retry", fmt, exc)
            self._answer(503, {"error": f"temporarily unavailable: {type(exc).__name__}"}, close=close)
        else:
            log.exception("failed to ingest %s notification", fmt)
            self._answer(500, {"error": f"internal error: {type(exc).__name__}"}, close=close)


def serve(
    db_url: str, config: AppConfig, store, send_job: SendJob, host: str = "127.0.0.1",  # noqa: ANN001
    port: int = DEFAULT_PORT, token: Optional[str] = None, stop_event: Optional[threading.Event] = None,
    verify: bool = True, buckets_dir: str = SEAWEED_BUCKETS_DIR,
    on_ready: Optional[Callable[[str], None]] = None, no_auth: bool = False, limits: Limits = Limits(),
) -> IngestCounts:
    """Run the HTTP receiver until ``stop_event`` is set (forever if None); returns the totals.

    ``port=0`` picks a free port; ``on_ready(url)`` is called once the socket listens.
    """
    server = NotifyServer(db_url, config, store, send_job, host, port, token, verify, buckets_dir, no_auth, limits)
    log.info("listening for bucket notifications on %s (/events/s3, /events/seaweedfs)", server.url)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                              name="notify-http")
    thread.start()
    try:
        if on_ready is not None:
            on_ready(server.url)
        (stop_event or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return server.totals


# ---- MinIO Redis target -------------------------------------------------------------------------------------

def consume_minio_redis(
    redis_url: str, key: str, format: str, db_url: str, config: AppConfig, store,  # noqa: A002, ANN001
    send_job: SendJob, stop_event: Optional[threading.Event] = None, poll_seconds: float = 1.0,
    once: bool = False, verify: bool = True,
) -> IngestCounts:
    """Consume MinIO's Redis notification target at ``key`` in ``format`` (``access`` or ``namespace``).

    Runs until ``stop_event`` is set; with ``once=True`` it drains what is there (access) or scans the hash
    once (namespace) and returns. Returns the totals.
    """
    import redis

    if format not in ("access", "namespace"):
        raise ValueError(f"format must be 'access' or 'namespace', not {format!r}")
    client = redis.Redis.from_url(redis_url)
    stop = stop_event or threading.Event()
    totals = IngestCounts()
    fmt = f"minio-redis-{format}"
    processing, rejected = f"{key}:processing", f"{key}:rejected"

    def handle(raw: bytes) -> bool:
        """True when the entry is done with (registered or rejected); False on a transient failure."""
        try:
            totals.add(ingest_document(db_url, config, store, fmt, raw, send_job, verify=verify))
            return True
        except NotificationError as exc:
            log.warning("rejected MinIO Redis entry in %s: %s", key, exc)
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the consumer
            if _transient(exc):
                log.warning("cannot register MinIO Redis entry now (%s); retrying in %.1fs", exc, poll_seconds)
                return False
            log.exception("failed to ingest MinIO Redis entry in %s; moved to %s", key, rejected)
        totals.rejected += 1
        client.rpush(rejected, raw)
        return True

    def access_step() -> bool:
        """One step of the access-format loop; False when there is nothing (more) to do right now."""
        for raw in client.lrange(processing, 0, -1):  # left over from a crash or a transient failure
            if not handle(raw):
                return False
            client.lrem(processing, 1, raw)
        if once:
            raw = client.lmove(key, processing, "LEFT", "RIGHT")
        else:
            raw = client.blmove(key, processing, poll_seconds, "LEFT", "RIGHT")
        if raw is None:
            return not once  # blocking: the timeout only lets the loop look at stop_event
        if not handle(raw):
            return False
        client.lrem(processing, 1, raw)
        return True

    bad: set[tuple[bytes, bytes]] = set()  # namespace entries that could not be ingested, already reported
    while not stop.is_set():
        try:
            if format == "namespace":
                _scan_namespace(client, key, db_url, config, store, send_job, verify, totals, bad)
                busy = False
            else:
                busy = access_step()
        except redis.RedisError as exc:
            log.warning("Redis at %s: %s; retrying in %.1fs", redis_url, exc, poll_seconds)
            busy = False
            if once:
                raise
        if once and not busy:
            break
        if not busy:
            stop.wait(poll_seconds)
    return totals


def _scan_namespace(client, key: str, db_url: str, config: AppConfig, store, send_job: SendJob,  # noqa: ANN001
                    verify: bool, totals: IngestCounts, bad: set[tuple[bytes, bytes]], batch: int = 200) -> None:
    """One pass over a namespace-format hash, ingesting ``batch`` entries per SQL round trip."""
    events: list = []
    entries: list[tuple[bytes, bytes]] = []

    def flush() -> bool:
        try:
            totals.add(ingest_events(db_url, config, store, events, send_job, verify=verify))
        except Exception as exc:  # noqa: BLE001
            if _transient(exc):
                log.warning("cannot register MinIO Redis entries now (%s); retrying on the next scan", exc)
                return False
            log.exception("failed to ingest %d MinIO Redis entries of %s; skipped until they change",
                          len(entries), key)
            bad.update(entries)
            totals.rejected += len(entries)
        finally:
            events.clear()
            entries.clear()
        return True

    for field_name, raw in client.hscan_iter(key, count=batch):
        if (field_name, raw) in bad:
            continue
        try:
            events.extend(parse_minio_redis(raw, "namespace"))
        except NotificationError as exc:
            bad.add((field_name, raw))
            log.warning("rejected MinIO Redis entry %s in %s: %s", field_name.decode(errors="replace"), key, exc)
            totals.rejected += 1
            continue
        entries.append((field_name, raw))
        if len(events) >= batch and not flush():
            return
    if events:
        flush()
