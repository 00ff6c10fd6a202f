"""The parts of a profile in the YAML file that a GPU worker reads: ``checks`` (a site's own questions, answered by
``vl2-ask``) and ``vl2`` (decoding and batching settings for this profile's VL2 analyzers).

```yaml
profiles:
  dock:
    analyzers: [vl2-ground]          # vl2-ask is added when checks are set
    phrases: [pallet]
    checks:
      fire-exit-clear: {question: "Is the fire exit blocked by any object?", kind: yes_no, expect: "no", severity: high}
      pallets-on-dock: {question: "How many pallets are on the dock?", kind: number, expect: {max: 12}}
      dock-door:       {question: "Is the dock door open or closed?", kind: choice, choices: [open, closed]}
      summary:         {question: "Describe anything unsafe in this image.", kind: text, grounded: true}
      pallet-moved:    {question: "Has the pallet on the left moved?", kind: yes_no, with_previous: true}
    vl2: {max_new_tokens: 64, images_per_batch: 2, prefill_chunk: 512, dtype: bfloat16}
```
Kinds, parsing and prompts are ``model.vl2.answers``' and ``model.vl2.prompts``' (pure Python, no torch); an
expectation is stored normalised: ``{"equals": true|false|"<choice>"|<number>}`` or ``{"min": .., "max": ..}``.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from model.vl2.answers import KINDS
from services.settings import check_dtype

SEVERITIES = ("info", "low", "warning", "high", "critical")
CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def one_of(what: str, v: Any, known: tuple[str, ...]) -> Any:
    """``v`` when it is one of ``known``; else the error every field of this kind gives."""
    if v not in known:
        raise ValueError(f"unknown {what} {v!r} (known: {', '.join(known)})")
    return v


def check_severity(v: str) -> str:
    return one_of("severity", v, SEVERITIES)


class CheckConfig(_Strict):
    question: str = Field(min_length=1, max_length=2000)
    kind: str
    choices: tuple[str, ...] = ()
    expect: Any = None  # normalised by _expect (see the module's text)
    severity: str = "warning"
    grounded: bool = False  # VL2's <|grounding|> mode: the answer's phrases carry boxes (stored as objects)
    with_previous: bool = False  # the prompt holds the source's previous image, then this one

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return one_of("kind", v, KINDS)

    @field_validator("choices")
    @classmethod
    def _choices(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("kind") not in ("choice", None):
            raise ValueError("only a choice check has choices")
        folded = [c.strip().lower() for c in v]
        if len(set(folded)) != len(folded):
            raise ValueError(f"choices must differ (ignoring case): {list(v)}")
        if any(not re.search(r"[A-Za-z0-9]", c) for c in v):
            raise ValueError(f"every choice needs a letter or digit: {list(v)}")
        return tuple(c.strip() for c in v)

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: Any, info: ValidationInfo) -> Optional[dict[str, Any]]:
        kind, choices = info.data.get("kind"), info.data.get("choices", ())
        if v is None or kind is None:
            return v
        if kind == "yes_no":
            said = {True: True, False: False, "yes": True, "no": False}.get(v.lower() if isinstance(v, str) else v)
            if said is None:
                raise ValueError(f"a yes_no check expects \"yes\" or \"no\", got {v!r}")
            return {"equals": said}
        if kind == "number":
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return {"equals": v}
            if not isinstance(v, dict) or not v or set(v) - {"min", "max"}:
                raise ValueError(f"a number check expects a number or {{min: .., max: ..}}, got {v!r}")
            if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v.values()):
                raise ValueError(f"min and max must be numbers, got {v!r}")
            if "min" in v and "max" in v and v["min"] > v["max"]:
                raise ValueError(f"min {v['min']} is above max {v['max']}")
            return dict(v)
        if kind == "choice":
            match = [c for c in choices if isinstance(v, str) and c.lower() == v.strip().lower()]
            if not match:
                raise ValueError(f"{v!r} is not one of the choices ({', '.join(choices)})")
            return {"equals": match[0]}
        raise ValueError("a text check has no expected answer")

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        return check_severity(v)

    @model_validator(mode="after")
    def _prompt(self) -> "CheckConfig":
        if self.kind == "choice" and len(self.choices) < 2:
            raise ValueError("choices: a choice check needs at least two choices")
        from model.vl2.prompts import check_prompt  # numpy comes with it: only where checks are configured

        check_prompt(self.question, self.kind, self.choices, self.grounded, self.with_previous)  # markup refused
        return self

    def as_options(self, name: str) -> dict[str, Any]:
        """The plain form ``model.vl2.ask.Check.from_dict`` reads."""
        return {"name": name, "question": self.question, "kind": self.kind, "choices": list(self.choices),
                "expect": self.expect, "severity": self.severity, "grounded": self.grounded,
                "with_previous": self.with_previous}


class VL2Settings(_Strict):
    """Per-profile VL2 settings; each one left out comes from the worker (``VLWATCH_VL2_*``)."""

    max_new_tokens: Optional[int] = Field(None, ge=1, le=8192)
    images_per_batch: Optional[int] = Field(None, ge=1, le=1024)
    prefill_chunk: Optional[int] = Field(None, ge=16)
    dtype: Optional[str] = None  # a second dtype loads a second copy of the weights in that worker

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: Optional[str]) -> Optional[str]:
        return check_dtype(v)


def checks_field(v: dict[str, CheckConfig]) -> dict[str, CheckConfig]:
    """Check names are used in SQL, events and rules: letters, digits, ``-``, ``_``, ``.``; at most 64."""
    for name in v:
        if not CHECK_NAME.match(name):
            raise ValueError(f"check name {name!r}: letters, digits, '-', '_' and '.' only, at most 64 characters")
    return v
