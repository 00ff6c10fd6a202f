"""The YAML file: sources, profiles and webhook subscriptions, validated at start-up.

```yaml
profiles:
  shelf: {analyzers: [barcode, ocr]}
  dock:  {analyzers: [vl2-ground], phrases: [pallet, forklift, person]}
sources:
  aisle-7: {prefix: "aisle-7/", profile: shelf}
webhooks:
  - {name: erp, url: "https://erp.example/hooks", events: [job.succeeded]}
```
Errors name the field: ``profiles.dock.analyzers[0]: unknown analyzer 'vl3'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ANALYZERS = ("barcode", "ocr", "vl2-ground", "vl2-ocr")  # model.registry.ANALYZER_NAMES, without importing model/
GPU_ANALYZERS = ("vl2-ground", "vl2-ocr")
EVENT_TYPES = ("job.succeeded", "job.failed")


class ConfigError(ValueError):
    """The YAML file is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(_Strict):
    analyzers: tuple[str, ...] = Field(min_length=1)
    phrases: tuple[str, ...] = ()  # grounding prompts for vl2-ground
    queue: Optional[str] = None  # default: "gpu" when a VL2 analyzer is named, else "cpu"

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
        return self

    @property
    def queue_name(self) -> str:
        if self.queue:
            return self.queue
        return "gpu" if any(a in GPU_ANALYZERS for a in self.analyzers) else "cpu"


class SourceConfig(_Strict):
    profile: str
    prefix: str = ""


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

    @model_validator(mode="after")
    def _references(self) -> "AppConfig":
        for name, src in self.sources.items():
            if src.profile not in self.profiles:
                raise ValueError(f"sources.{name}.profile: unknown profile {src.profile!r}")
        names = [w.name for w in self.webhooks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"webhooks: duplicate name {sorted(dup)[0]!r}")
        return self

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
