"""Recorded notification documents (tests/ingest/events/) and the object contents they describe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

EVENTS = Path(__file__).resolve().parent / "events"
RECORDED_BUCKET = "vlwatch-recorded"
QUEUE = "notify-tests"  # the profiles' queue in these tests: no worker of the suite consumes it

ONE = b"vlwatch notify sample one"
ONE_V2 = b"vlwatch notify sample one2"
TWO = b"vlwatch notify sample two"
THREE = b"vlwatch notify sample three"


def raw(name: str, bucket: Optional[str] = None) -> bytes:
    """The document as bytes, with ``bucket`` substituted for the recorded bucket name."""
    text = (EVENTS / name).read_text()
    if bucket is not None:
        text = text.replace(RECORDED_BUCKET, bucket)
    return text.encode()


def doc(name: str, bucket: Optional[str] = None) -> Any:
    return json.loads(raw(name, bucket))


