"""The YAML file: sources, profiles and webhook subscriptions, validated at start-up.

```yaml
profiles:
  shelf: {analyzers: [barcode, ocr], options: {barcode: {scene_pass: true}, ocr: {text_score: 0.6}}}
  dock:  {analyzers: [vl2-ground], phrases: [pallet, forklift, person],
          checks: {fire-exit-clear: {question: "Is the fire exit blocked?", kind: yes_no, expect: "no"}}}
sources:
  aisle-7: {prefix: "aisle-7/", profile: shelf}
  dock-cam: {prefix: "dock-cam/", profile: dock, timezone: Europe/Berlin, retain_days: 30}
webhooks:
  - {name: erp, url: "https://erp.example/hooks", events: [job.succeeded]}
locations:                      # source -> where its camera or scanner is
  aisle-7: {site: dc-north, aisle: "7", bay: "03"}
zones:                          # polygons per source, pixels or normalised 0..1
  dock-door: {source: dock-cam, points: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], normalised: true}
rules:
  forklift-at-night: {labels: [forklift], zones: [dock-door], windows: ["22:00-06:00"],
                      min_score: 0.5, cooldown_seconds: 300, severity: high}
  exit-blocked: {checks: [fire-exit-clear]}   # a failed check: an event with the check's severity
connectors:
  stock: {kind: inventory, url: "postgresql+psycopg://inv@db/inventory", sku_patterns: ["SKU-(\\d{6})"]}
  guard: {kind: security, url: "mysql+pymysql://sec@db/security", timezone: Europe/Berlin}
```
Errors name the field: ``profiles.dock.analyzers[0]: unknown analyzer 'vl3'``. A profile's ``checks`` and ``vl2``
settings are described in ``services.config_checks``.

The sections about where detections go (locations, zones, rules, connectors) are in ``services.config_targets``;
the references between sections are checked here, in one place (``AppConfig``).
"""

from __future__ import annotations

from datetime import timezone, tzinfo
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.config_checks import CheckConfig, VL2Settings, checks_field
from services.config_targets import ConnectorConfig, LocationConfig, RuleConfig, ZoneConfig, zone_name
from services.safetext import mask_secrets

# model.registry.ANALYZER_NAMES, without importing model.registry (it would import the engines)
ANALYZERS = ("barcode", "ocr", "vl2-ground", "vl2-ocr", "vl2-ask")
GPU_ANALYZERS = ("vl2-ground", "vl2-ocr", "vl2-ask")
EVENT_TYPES = ("job.succeeded", "job.failed", "check.failed")  # services.events.EVENT_TYPES


class ConfigError(ValueError):
    """The YAML file is invalid; the message names the file and the field (secrets it quotes are masked)."""

    def __init__(self, message: str) -> None:
        super().__init__(mask_secrets(message))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(_Strict):
    analyzers: tuple[str, ...] = Field(min_length=1)
    phrases: tuple[str, ...] = ()  # grounding prompts for vl2-ground
    checks: dict[str, CheckConfig] = Field(default_factory=dict)  # questions for vl2-ask
    vl2: VL2Settings = Field(default_factory=VL2Settings)
    queue: Optional[str] = None  # default: "gpu" when a VL2 analyzer is named, else "cpu"
    # per analyzer of the profile, the options its engine takes (model.registry names them; an unknown one fails
    # the analyzer's jobs and `vlwatch eval` with a message that lists the known ones)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _ask_for_checks(cls, data: Any) -> Any:
        """Checks are answered by vl2-ask: a profile with checks runs it (listed or not; listing sets its place)."""
        if isinstance(data, dict) and data.get("checks"):
            analyzers = data.get("analyzers") or []
            if isinstance(analyzers, (list, tuple)) and "vl2-ask" not in analyzers:
                data = {**data, "analyzers": [*analyzers, "vl2-ask"]}
        return data

    @field_validator("checks")
    @classmethod
    def _check_names(cls, v: dict[str, CheckConfig]) -> dict[str, CheckConfig]:
        return checks_field(v)

    @field_validator("analyzers")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for a in v:
            if a not in ANALYZERS:
                raise ValueError(f"unknown analyzer {a!r} (known: {', '.join(ANALYZERS)})")
        return v

    @model_validator(mode="after")
    def _phrases(self) -> "Profile":
        if "vl2-ground" in self.analyzers and not self.phrases:
            raise ValueError("vl2-ground needs at least one phrase in 'phrases'")
        if "vl2-ask" in self.analyzers and not self.checks:
            raise ValueError("vl2-ask needs at least one check in 'checks'")
        for name in self.options:
            if name not in self.analyzers:
                raise ValueError(f"options.{name}: the profile does not run analyzer {name!r}")
        return self

    def analyzer_options(self, name: str) -> dict[str, Any]:
        """What the profile asks of analyzer ``name``: its options, and the phrases for ``vl2-ground``."""
        options = dict(self.options.get(name, {}))
        if name == "vl2-ground":
            options["phrases"] = list(self.phrases)
        return options

    @property
    def queue_name(self) -> str:
        if self.queue:
            return self.queue
        return "gpu" if any(a in GPU_ANALYZERS for a in self.analyzers) else "cpu"


class SourceConfig(_Strict):
    profile: str
    prefix: str = ""
    # The zone of the camera's clock: EXIF capture times without an OffsetTimeOriginal are read in it.
    timezone: str = "UTC"
    retain_days: Optional[float] = Field(None, gt=0)  # `vlwatch purge` deletes images older than this

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return zone_name(v)


class WebhookConfig(_Strict):
    name: str
    url: str
    events: tuple[str, ...] = EVENT_TYPES
    secret: Optional[str] = None

    @field_validator("events")
    @classmethod
    def _events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for e in v:
            if e != "*" and e not in EVENT_TYPES:
                raise ValueError(f"unknown event type {e!r} (known: {', '.join(EVENT_TYPES)}, *)")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.startswith("whsec_"):
            raise ValueError("must start with whsec_ (Standard Webhooks secret)")
        return v


DEFAULT_PROFILE = "default"


class AppConfig(_Strict):
    profiles: dict[str, Profile] = Field(default_factory=lambda: {DEFAULT_PROFILE: Profile(analyzers=("barcode", "ocr"))})
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    webhooks: tuple[WebhookConfig, ...] = ()
    locations: dict[str, LocationConfig] = Field(default_factory=dict)  # by source name
    zones: dict[str, ZoneConfig] = Field(default_factory=dict)
    rules: dict[str, RuleConfig] = Field(default_factory=dict)
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> "AppConfig":
        for name, src in self.sources.items():
            if src.profile not in self.profiles:
                raise ValueError(f"sources.{name}.profile: unknown profile {src.profile!r}")
        names = [w.name for w in self.webhooks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"webhooks: duplicate name {sorted(dup)[0]!r}")
        for src in self.locations:
            if src not in self.sources:
                raise ValueError(f"locations.{src}: unknown source {src!r} (configure it under sources)")
        for zname, zone in self.zones.items():
            if zone.source not in self.sources:
                raise ValueError(f"zones.{zname}.source: unknown source {zone.source!r}")
        for rname, rule in self.rules.items():
            for i, z in enumerate(rule.zones):
                if z not in self.zones:
                    raise ValueError(f"rules.{rname}.zones[{i}]: unknown zone {z!r}")
            known = self.labels_for([self.zones[z].source for z in rule.zones])
            for i, label in enumerate(rule.labels):
                if label not in known:
                    have = ", ".join(sorted(known)) or "none: no profile of these sources runs vl2-ground"
                    raise ValueError(f"rules.{rname}.labels[{i}]: unknown label {label!r} "
                                     f"(labels the zones' sources ground: {have})")
            checks = {c for p in self.profiles.values() for c in p.checks}
            for i, check in enumerate(rule.checks):
                if check not in checks:
                    have = ", ".join(sorted(checks)) or "none"
                    raise ValueError(f"rules.{rname}.checks[{i}]: unknown check {check!r} (checks configured: {have})")
        for cname, conn in self.connectors.items():
            for i, r in enumerate(conn.rules or ()):
                if r not in self.rules:
                    raise ValueError(f"connectors.{cname}.rules[{i}]: unknown rule {r!r}")
            if conn.kind == "security" and not self.rules:
                raise ValueError(f"connectors.{cname}: a security connector needs rules (none configured)")
        return self

    def labels_for(self, sources: list[str]) -> set[str]:
        """Labels the given sources' profiles can produce: the phrases they ground."""
        return {p for s in sources for p in self.profiles[self.sources[s].profile].phrases}

    def source_for_key(self, key: str) -> Optional[str]:
        """The source whose prefix is the longest match for an object key."""
        best: Optional[str] = None
        for name, src in self.sources.items():
            if key.startswith(src.prefix) and (best is None or len(src.prefix) > len(self.sources[best].prefix)):
                best = name
        return best

    def with_source(self, name: str) -> "AppConfig":
        """This config, plus an implicit source ``name`` (prefix ``name/``, default profile) if not configured."""
        if name in self.sources:
            return self
        implicit = SourceConfig(profile=self.profile_name(None), prefix=f"{name}/")
        return self.model_copy(update={"sources": {**self.sources, name: implicit}})

    def source_zone(self, source: Optional[str]) -> tzinfo:
        """The zone a source's camera clock runs in (``sources.NAME.timezone``); UTC for unconfigured sources."""
        from zoneinfo import ZoneInfo

        src = self.sources.get(source) if source is not None else None
        return ZoneInfo(src.timezone) if src is not None else timezone.utc

    def profile_name(self, source: Optional[str]) -> str:
        if source is not None:
            return self.sources[source].profile
        if DEFAULT_PROFILE in self.profiles:
            return DEFAULT_PROFILE
        return next(iter(self.profiles))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_config(text: str, origin: str = "<config>") -> AppConfig:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping with profiles, sources, webhooks")
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{_loc(err['loc'])}: {msg}" if err["loc"] else msg)
        raise ConfigError(f"{origin}: " + "; ".join(lines)) from None


def load_config(path: Optional[Path]) -> AppConfig:
    if path is None:
        return AppConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(path))
