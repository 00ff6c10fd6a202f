"""One settings object, read once at start-up from ``VLWATCH_*`` environment variables and passed down.

The embedded default needs nothing set: a SQLite file, a local-folder object store and a folder broker
(kombu's filesystem transport), all under ``VLWATCH_DATA_DIR`` (default ``./vlwatch-data``).

Each field is declared once: its type, its default, and (through :func:`setting`) the bounds its value must keep
and a check of its own. The type says how a variable's text is read: ``bool`` takes 1/0, true/false, yes/no,
on/off, t/f, y/n (any case); ``Optional[...]`` is None when unset or empty; ``tuple[...]`` is comma-separated
items, blanks skipped. A plain dataclass rather than pydantic-settings: every CLI command reads the settings, and
importing pydantic-settings alone cost about 0.15 s of CPU (issue 12: quick commands in 0.4 s).
"""

# No ``from __future__ import annotations``: Settings.__post_init__ converts each value by its field's type, which
# must therefore be the type itself, not its text.

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, get_args, get_origin

VL2_DTYPES = ("bfloat16", "float16", "float32")

_BOOLS = {**dict.fromkeys(("1", "true", "t", "yes", "y", "on"), True),
          **dict.fromkeys(("0", "false", "f", "no", "n", "off"), False)}


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable (secrets it quotes are masked)."""

    def __init__(self, message: str) -> None:
        from services.safetext import mask_secrets

        super().__init__(mask_secrets(message))


def setting(default: Any, *, gt: Optional[float] = None, ge: Optional[float] = None, le: Optional[float] = None,
            check: Optional[Callable[[Any], object]] = None) -> Any:
    """A field with its default, the bounds its value must keep (``gt``: above, ``ge``: at least, ``le``: at most)
    and ``check``, a function that raises ValueError for a value it refuses. None is never checked."""
    return field(default=default, metadata={"gt": gt, "ge": ge, "le": le, "check": check})


def check_dtype(v: Optional[str]) -> Optional[str]:
    """``v`` when it is a dtype VL2 runs in (``VLWATCH_VL2_DTYPE``, a profile's ``vl2: {dtype: ...}``)."""
    if v is not None and v not in VL2_DTYPES:
        raise ValueError(f"unknown dtype {v!r} (known: {', '.join(VL2_DTYPES)})")
    return v


def _memory_size(v: str) -> None:
    from model.vl2.plan import parse_size  # imports torch: only where a GPU budget is set

    parse_size(v)  # ValueError: "not a memory size: '10 gigs' (examples: 10GiB, ...)"


def _networks(items: tuple[str, ...]) -> None:
    import ipaddress

    for x in items:
        try:
            ipaddress.ip_network(x, strict=False)
        except ValueError:
            raise ValueError(f"{x!r} is not a network (e.g. 127.0.0.1/32, 10.0.0.0/8, ::1/128)") from None


@dataclass(frozen=True)
class Settings:
    """The settings; :func:`load_settings` reads them from the environment. ``Settings(...)`` and
    ``dataclasses.replace`` take Python values or text (read as the environment's) and check them alike;
    fields not given keep their defaults. Invalid values are a :class:`SettingsError` naming every variable."""

    data_dir: Path = Path("vlwatch-data")
    database_url: Optional[str] = None  # default: sqlite:///<data_dir>/vlwatch.db
    broker_url: str = "filesystem://"  # embedded: a folder under data_dir; redis://..., amqp://... to scale out
    s3_endpoint: Optional[str] = None  # host:port; unset = local folder store under <data_dir>/objects
    s3_access_key: Optional[str] = None
    s3_secret_key: Optional[str] = None
    s3_secure: bool = False
    s3_region: Optional[str] = None
    bucket: str = "vlwatch"
    config: Optional[Path] = None  # the YAML file: sources, profiles, webhooks

    lease_seconds: float = setting(120.0, gt=0)  # a running job whose lease expires is reclaimed
    # A queued job whose task was sent this long ago and never started is sent again (its message was lost:
    # broker restarted empty, a process killed holding it). Default: two lease periods.
    requeue_after_seconds: Optional[float] = setting(None, gt=0)
    max_attempts: int = setting(3, ge=1)  # claims that ended with the worker lost or the batch failing as a whole
    batch_size: int = setting(16, ge=1)  # a worker claims up to this many queued jobs of its queue at once
    max_image_bytes: int = setting(50 * 1024 * 1024, gt=0)
    max_image_pixels: int = setting(80_000_000, gt=0)
    max_jpeg_scans: int = setting(100, ge=1)  # progressive scans a JPEG may have (cameras write about 10)
    # One batch's analysis (fetch, decode, analyzers) may take this long: past it the job fails with a reason
    # (a batch of several is split and each job run on its own first). The process running it is ended past
    # the hard limit, default this plus 60 s (prefork pool: Celery's time_limit; the pool starts a new child).
    task_time_limit_seconds: float = setting(600.0, gt=0)
    task_hard_time_limit_seconds: Optional[float] = setting(None, gt=0)  # must be above task_time_limit_seconds
    # Memory a worker process may use, in MiB (0: no cap): an analysis that would pass it fails its job with a
    # reason (RLIMIT_AS, set after the engines are loaded, not in processes that use CUDA); a prefork child
    # whose resident memory is above it after a task is replaced (Celery's worker_max_memory_per_child).
    worker_max_memory_mb: int = setting(4096, ge=0)
    worker_reconciles: bool = True  # `vlwatch worker` also runs the reconciler, in a thread of its main process
    webhook_retry_schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    webhook_timeout_seconds: float = setting(10.0, gt=0)
    dispatch_interval_seconds: float = setting(1.0, gt=0)  # idle poll of `vlwatch dispatch --watch`
    webhook_concurrency: int = setting(4, ge=1)  # POSTs at once per subscription
    delivery_lease_seconds: float = setting(60.0, gt=0)  # deliveries claimed by a dispatcher that died are due again
    # Outbound connections (webhooks, connector targets) reach public addresses only; these networks too
    # (comma-separated, e.g. "127.0.0.1/32,10.0.0.0/8"). See connectors/outbound.py.
    outbound_allow: tuple[str, ...] = setting((), check=_networks)
    reconcile_interval_seconds: Optional[float] = setting(None, gt=0)  # default: a quarter lease, at most 15 s
    vl2_checkpoint: Optional[Path] = None  # a DeepSeek-VL2 checkpoint directory in the official layout
    vl2_device: str = "cuda"
    # a profile's `vl2:` block in the YAML file overrides these four for its jobs
    vl2_dtype: str = setting("bfloat16", check=check_dtype)
    vl2_max_new_tokens: int = setting(256, ge=1, le=8192)
    vl2_images_per_batch: int = setting(4, ge=1, le=1024)  # images decoded together (x prompts = generation batch)
    vl2_prefill_chunk: Optional[int] = setting(None, ge=16)  # prompt positions per prefill step (caps activations)
    # The GPU worker (docs/gpu.md): jobs of the queues whose profiles run VL2 go through the continuous-batching
    # scheduler (workers/gpu.py); off, they run as batches like the CPU analyzers'.
    vl2_scheduler: bool = True
    # per GPU: weights + KV pool + activations ("10GiB"; `vlwatch model plan`)
    vl2_gpu_memory: Optional[str] = setting(None, check=_memory_size)
    vl2_max_batch: int = setting(64, ge=1, le=1024)  # prompts decoded together at most
    vl2_exact_pixels: bool = False  # the official pixel path, bit for bit, instead of the fast one (same token ids)
    # The bucket-notification listener (`vlwatch listen`, services/ingest/listener.py): a request's line, headers
    # and body must all arrive within the timeout (an idle keep-alive connection is closed after as long); at
    # most max_connections are served at once (one more is answered 503); a longer body is refused unread (413).
    notify_timeout_seconds: float = setting(5.0, gt=0)
    notify_max_connections: int = setting(32, ge=1)
    notify_max_body_bytes: int = setting(8 * 1024 * 1024, ge=1)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            try:
                value = _convert(f.type, getattr(self, f.name))
                if value is not None:
                    _check(value, **f.metadata)
            except ValueError as exc:
                problems.append(f"VLWATCH_{f.name.upper()}: {exc}")
            else:
                object.__setattr__(self, f.name, value)  # frozen: only here, before anyone sees the object
        hard = self.task_hard_time_limit_seconds
        if not problems and hard is not None and hard <= self.task_time_limit_seconds:
            problems.append(f"VLWATCH_TASK_HARD_TIME_LIMIT_SECONDS: {hard:g} must be above "
                            f"VLWATCH_TASK_TIME_LIMIT_SECONDS ({self.task_time_limit_seconds:g})")
        if problems:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))

    @property
    def requeue_after(self) -> float:
        """Seconds after which a queued job's task counts as lost and is sent again."""
        return self.requeue_after_seconds or 2 * self.lease_seconds

    @property
    def reconcile_every(self) -> float:
        """Seconds between reconciler passes."""
        return self.reconcile_interval_seconds or min(15.0, self.lease_seconds / 4)

    @property
    def hard_time_limit(self) -> float:
        return self.task_hard_time_limit_seconds or self.task_time_limit_seconds + 60

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vlwatch.db').resolve()}"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def local_objects_dir(self) -> Path:
        return self.data_dir / "objects"


def load_settings(environ: Mapping[str, str] = os.environ, /, **overrides: Any) -> Settings:
    """The settings of ``environ``'s ``VLWATCH_*`` variables (other variables, unknown ``VLWATCH_*`` ones too, are
    ignored), with ``overrides`` (field names, Python values or text) over them. Errors name the variable
    (``VLWATCH_LEASE_SECONDS: ...``)."""
    given = {f.name: environ[var] for f in fields(Settings) if (var := f"VLWATCH_{f.name.upper()}") in environ}
    return Settings(**{**given, **overrides})


def _convert(kind: Any, value: Any) -> Any:
    """``value`` as the type ``kind``: text is read as an environment variable's; a Python value of the type stays
    (an int is widened for a float). ValueError says what the value is not."""
    if type(None) in get_args(kind):  # Optional[X]
        if value is None or value == "":
            return None
        [kind] = [arg for arg in get_args(kind) if arg is not type(None)]
    if get_origin(kind) is tuple:  # tuple[X, ...]
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{value!r} is not a comma-separated list")
        return tuple(_convert(get_args(kind)[0], x) for x in value)
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        if isinstance(value, bool):
            return value
        raise ValueError(f"{value!r} is not a boolean (true/false, yes/no, on/off, 1/0)")
    if kind is int or kind is float:
        numbers = (int,) if kind is int else (int, float)
        if isinstance(value, str) or (isinstance(value, numbers) and not isinstance(value, bool)):
            try:
                return kind(value)  # int("4.5") fails; float("inf") is inf, and a bound refuses nan
            except ValueError:
                pass
        raise ValueError(f"{value!r} is not {'an integer' if kind is int else 'a number'}")
    if kind is Path and isinstance(value, (str, os.PathLike)):
        return Path(value)
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not {'a path' if kind is Path else 'text'}")


def _check(value: Any, gt: Optional[float] = None, ge: Optional[float] = None, le: Optional[float] = None,
           check: Optional[Callable[[Any], object]] = None) -> None:
    """ValueError unless ``value`` keeps the bounds of its :func:`setting` and passes its check."""
    if gt is not None and not value > gt:
        raise ValueError(f"must be greater than {gt} (got {value})")
    if ge is not None and not value >= ge:
        raise ValueError(f"must be at least {ge} (got {value})")
    if le is not None and not value <= le:
        raise ValueError(f"must be at most {le} (got {value})")
    if check is not None:
        check(value)
