"""One settings object, read once at start-up from ``VLWATCH_*`` environment variables and passed down.

The embedded default needs nothing set: a SQLite file, a local-folder object store and a folder broker
(kombu's filesystem transport), all under ``VLWATCH_DATA_DIR`` (default ``./vlwatch-data``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable (secrets it quotes are masked)."""

    def __init__(self, message: str) -> None:
        from services.safetext import mask_secrets

        super().__init__(mask_secrets(message))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VLWATCH_", extra="ignore", frozen=True)

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

    lease_seconds: float = Field(120.0, gt=0)  # a running job whose lease expires is reclaimed
    # A queued job whose task was sent this long ago and never started is sent again (its message was lost:
    # broker restarted empty, a process killed holding it). Default: two lease periods.
    requeue_after_seconds: Optional[float] = Field(None, gt=0)
    max_attempts: int = Field(3, ge=1)  # claims that ended with the worker lost or the batch failing as a whole
    batch_size: int = Field(16, ge=1)  # a worker claims up to this many queued jobs of its queue at once
    max_image_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(80_000_000, gt=0)
    max_jpeg_scans: int = Field(100, ge=1)  # progressive scans a JPEG may have (cameras write about 10)
    # One batch's analysis (fetch, decode, analyzers) may take this long: past it the job fails with a reason
    # (a batch of several is split and each job run on its own first). The process running it is ended past
    # the hard limit, default this plus 60 s (prefork pool: Celery's time_limit; the pool starts a new child).
    task_time_limit_seconds: float = Field(600.0, gt=0)
    task_hard_time_limit_seconds: Optional[float] = Field(None, gt=0)
    # Memory a worker process may use, in MiB (0: no cap): an analysis that would pass it fails its job with a
    # reason (RLIMIT_AS, set after the engines are loaded, not in processes that use CUDA); a prefork child
    # whose resident memory is above it after a task is replaced (Celery's worker_max_memory_per_child).
    worker_max_memory_mb: int = Field(4096, ge=0)
    worker_reconciles: bool = True  # `vlwatch worker` also runs the reconciler, in a thread of its main process
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    dispatch_interval_seconds: float = Field(1.0, gt=0)  # idle poll of `vlwatch dispatch --watch`
    webhook_concurrency: int = Field(4, ge=1)  # POSTs at once per subscription
    delivery_lease_seconds: float = Field(60.0, gt=0)  # deliveries claimed by a dispatcher that died are due again
    # Outbound connections (webhooks, connector targets) reach public addresses only; these networks too
    # (comma-separated, e.g. "127.0.0.1/32,10.0.0.0/8"). See connectors/outbound.py.
    outbound_allow: Annotated[tuple[str, ...], NoDecode] = ()
    reconcile_interval_seconds: Optional[float] = Field(None, gt=0)  # default: a quarter lease, at most 15 s
    vl2_checkpoint: Optional[Path] = None  # a DeepSeek-VL2 checkpoint directory in the official layout
    vl2_device: str = "cuda"
    # a profile's `vl2:` block in the YAML file overrides these four for its jobs
    vl2_dtype: str = "bfloat16"
    vl2_max_new_tokens: int = Field(256, ge=1, le=8192)
    vl2_images_per_batch: int = Field(4, ge=1, le=1024)  # images decoded together (x prompts = generation batch)
    vl2_prefill_chunk: Optional[int] = Field(None, ge=16)  # prompt positions per prefill step (caps activations)
    # The GPU worker (docs/gpu.md): jobs of the queues whose profiles run VL2 go through the continuous-batching
    # scheduler (workers/gpu.py); off, they run as batches like the CPU analyzers'.
    vl2_scheduler: bool = True
    vl2_gpu_memory: Optional[str] = None  # per GPU: weights + KV pool + activations ("10GiB"; `vlwatch model plan`)
    vl2_max_batch: int = Field(64, ge=1, le=1024)  # prompts decoded together at most
    vl2_exact_pixels: bool = False  # the official pixel path, bit for bit, instead of the fast one (same token ids)
    # The bucket-notification listener (`vlwatch listen`, services/ingest/listener.py): a request's line, headers
    # and body must all arrive within the timeout (an idle keep-alive connection is closed after as long); at
    # most max_connections are served at once (one more is answered 503); a longer body is refused unread (413).
    notify_timeout_seconds: float = Field(5.0, gt=0)
    notify_max_connections: int = Field(32, ge=1)
    notify_max_body_bytes: int = Field(8 * 1024 * 1024, ge=1)

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, v: object) -> object:
        if isinstance(v, str):  # "5,300,1800"
            return tuple(float(x) for x in v.split(",") if x.strip())
        return v

    @field_validator("vl2_dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        from services.config_checks import check_dtype

        return check_dtype(v) or v

    @field_validator("vl2_gpu_memory")
    @classmethod
    def _memory(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from model.vl2.plan import parse_size  # imports torch: only where a GPU budget is set

            parse_size(v)  # ValueError: "not a memory size: '10 gigs' (examples: 10GiB, ...)"
        return v

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _networks(cls, v: object) -> object:
        import ipaddress

        items = [x.strip() for x in v.split(",")] if isinstance(v, str) else list(v)  # type: ignore[call-overload]
        for x in items:
            if x:
                try:
                    ipaddress.ip_network(x, strict=False)
                except ValueError:
                    raise ValueError(f"{x!r} is not a network (e.g. 127.0.0.1/32, 10.0.0.0/8, ::1/128)") from None
        return tuple(x for x in items if x)

    @model_validator(mode="after")
    def _limits(self) -> "Settings":
        hard = self.task_hard_time_limit_seconds
        if hard is not None and hard <= self.task_time_limit_seconds:
            raise ValueError(f"task_hard_time_limit_seconds ({hard:g}) must be above task_time_limit_seconds "
                             f"({self.task_time_limit_seconds:g})")
        return self

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


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; errors name the variable (``VLWATCH_LEASE_SECONDS: ...``)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except _SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"VLWATCH_{field.upper()}: {err['msg']}" if field else f"VLWATCH_*: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
