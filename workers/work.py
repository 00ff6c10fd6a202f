"""What flows between the stages of a batch: ``Work`` (one claimed job, filled in stage by stage) and its
``Outcome``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from model.decode import DecodedImage
from workers.lease import Claimed
from workers.pairing import Previous


@dataclass(frozen=True)
class Outcome:
    job_id: int
    status: str  # succeeded, failed, skipped (finished already or held by a live lease), lost (lease taken over)
    reason: Optional[str] = None


@dataclass
class Work:
    """One claimed job on its way through the stages."""

    job_id: int
    image_id: int
    key: str
    profile: str
    attempts: int
    queue: str = ""
    note: Optional[str] = None  # what ended its last attempt, when there was one
    data: bytes = b""  # the object's bytes, from fetch until decode
    sha256: Optional[str] = None  # their digest, taken where they are read
    decoded: Optional[DecodedImage] = None
    previous: Optional[Previous] = None  # the source's previous image, for checks with_previous
    results: list = field(default_factory=list)  # one AnalyzerResult per analyzer run
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    failure: Optional[str] = None  # why the job failed, in words a person can act on
    failure_class: Optional[str] = None  # its class for metrics: bad_image, missing_object, analyzer_error...

    @classmethod
    def of(cls, c: Claimed) -> "Work":
        return cls(c.job_id, c.image_id, c.key, c.profile, c.attempts, c.queue, c.note)

    def fail(self, reason_class: str, reason: str) -> None:
        self.failure_class, self.failure = reason_class, reason
