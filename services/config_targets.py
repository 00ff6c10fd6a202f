"""Where detections go, as the YAML file says: ``locations`` (where each source's camera or scanner is),
``zones`` (polygons per source), ``rules`` (labels seen in zones, or checks that failed, in time windows) and
``connectors`` (the inventory and security databases they are written to). ``services.config`` reads the file and
checks the references between these sections and the others (a zone's source, a rule's zones and checks, a
connector's rules).
"""

from __future__ import annotations

import re
from datetime import time
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.config_checks import check_severity
from services.safetext import compile_untrusted


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def zone_name(v: str) -> str:
    """An IANA time zone name that this machine's zone database knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Berlin)") from None
    return v


class LocationConfig(_Strict):
    site: str = Field("", max_length=64)
    aisle: str = Field("", max_length=64)
    bay: str = Field("", max_length=64)


class ZoneConfig(_Strict):
    source: str
    points: tuple[tuple[float, float], ...]
    normalised: bool = False

    @field_validator("points")
    @classmethod
    def _polygon(cls, v: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
        if len(v) < 3:
            raise ValueError(f"a zone needs at least three points, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _range(self) -> "ZoneConfig":
        if self.normalised and any(not (0.0 <= c <= 1.0) for p in self.points for c in p):
            raise ValueError("points: normalised coordinates must lie in 0..1")
        if not self.normalised and any(c < 0 for p in self.points for c in p):
            raise ValueError("points: pixel coordinates cannot be negative")
        return self


_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)$")


def parse_window(text: str) -> tuple[time, time]:
    """``"22:00-06:00"`` -> (22:00, 06:00); a window may cross midnight; ``24:00`` ends at midnight."""
    m = _WINDOW.match(text.strip())
    if not m:
        raise ValueError(f"window {text!r}: expected HH:MM-HH:MM, e.g. 22:00-06:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    end = time(0, 0) if (h2, m2) == (24, 0) else time(h2 % 24, m2)
    if h2 == 24 and m2:
        raise ValueError(f"window {text!r}: 24:MM is not a time")
    if (h1, m1) == (h2 % 24, m2):
        raise ValueError(f"window {text!r}: start and end are the same")
    return time(h1, m1), end


class RuleConfig(_Strict):
    """Labels seen in zones, and/or checks that failed (a check is about the whole image: no zone)."""

    labels: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    windows: tuple[str, ...] = ()  # empty: at any time
    min_score: float = Field(0.0, ge=0.0, le=1.0)
    cooldown_seconds: float = Field(0.0, ge=0.0)
    severity: str = "warning"

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for w in v:
            parse_window(w)
        return v

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        return check_severity(v)

    @model_validator(mode="after")
    def _what(self) -> "RuleConfig":
        if not self.labels and not self.checks:
            raise ValueError("a rule needs labels (seen in zones) or checks (that failed)")
        if self.labels and not self.zones:
            raise ValueError("zones: a rule on labels needs at least one zone")
        if self.zones and not self.labels:
            raise ValueError("zones: only labels are matched in zones; a rule on checks alone has no zones")
        return self


CONNECTOR_KINDS = ("inventory", "security")


class ConnectorConfig(_Strict):
    kind: str
    url: str  # SQLAlchemy URL of the target database (PostgreSQL or MariaDB/MySQL)
    # inventory
    sku_patterns: tuple[str, ...] = (r"\b[A-Z]{2,4}-\d{3,8}\b",)
    # security
    timezone: str = "UTC"  # the site's time zone: rule windows are local times there
    rules: Optional[tuple[str, ...]] = None  # default: every rule
    snapshot_lifetime_seconds: float = Field(3600.0, gt=0, le=7 * 86400)  # presigned link, at most 7 days

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in CONNECTOR_KINDS:
            raise ValueError(f"unknown connector kind {v!r} (known: {', '.join(CONNECTOR_KINDS)})")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            u = make_url(v)
        except (ArgumentError, ValueError):  # the URL itself is not repeated: it may hold a password
            raise ValueError("not a database URL (e.g. postgresql+psycopg://user@host/db)") from None
        if u.get_backend_name() not in ("postgresql", "mysql", "mariadb"):
            raise ValueError(f"unsupported target database {u.get_backend_name()!r} (postgresql, mysql, mariadb)")
        return v

    @field_validator("sku_patterns")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, p in enumerate(v):
            try:
                compile_untrusted(p)
            except ValueError as exc:
                raise ValueError(f"[{i}] {p!r}: {exc}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return zone_name(v)
