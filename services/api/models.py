"""The API's external shapes (version 1, under ``/api/v1``): fields are added, never renamed, without a new
version. Times are UTC ISO 8601; boxes are pixels ``x1, y1, x2, y2`` in the upright image."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, Field


class JobRef(BaseModel):
    id: int
    status: str
    error: Optional[str] = None


class ImageSummary(BaseModel):
    id: int
    key: str
    source: Optional[str]
    width: Optional[int]
    height: Optional[int]
    captured_at: Optional[datetime]
    uploaded_at: Optional[datetime]
    job: Optional[JobRef]
    counts: dict[str, int] = Field(description="result rows by kind: objects, text_lines, barcodes")


class SearchPage(BaseModel):
    items: list[ImageSummary]
    next_before_id: Optional[int] = Field(description="pass as before_id for the next page; null on the last")


class JobDetail(BaseModel):
    id: int
    status: str
    profile: str
    queue: str
    attempts: int
    error: Optional[str]
    queued_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    timings: Optional[dict[str, float]]
    lineage: Optional[list[dict[str, Any]]] = Field(description="per analyzer: engine, model id, checkpoint digest, "
                                                               "prompt, settings")


class ImageDetail(BaseModel):
    id: int
    key: str
    bucket: str
    etag: str
    source: Optional[str]
    width: Optional[int]
    height: Optional[int]
    sha256: Optional[str]
    captured_at: Optional[datetime]
    uploaded_at: Optional[datetime]
    registered_at: datetime
    job: Optional[JobDetail]
    results: dict[str, list[dict[str, Any]]] = Field(description="rows by kind: objects, text_lines, barcodes")


class JobItem(BaseModel):
    id: int
    image_id: int
    key: str
    source: Optional[str]
    queue: str
    profile: str
    status: str
    error: Optional[str]
    attempts: int
    queued_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    timings: Optional[dict[str, float]]


class JobsPage(BaseModel):
    counts: dict[str, int]
    items: list[JobItem]
    next_before_id: Optional[int]


class DeliveryTarget(BaseModel):
    name: str
    active: bool
    counts: dict[str, int] = Field(description="deliveries by status: pending, delivered, dead")
    oldest_pending: Optional[datetime]


class DeadDelivery(BaseModel):
    target: str
    delivery_id: int
    event_id: str
    type: str
    job_id: Optional[int]
    attempts: int
    last_attempt_at: Optional[datetime]
    last_error: Optional[str]


class DeliveryKind(BaseModel):
    targets: list[DeliveryTarget]
    dead: list[DeadDelivery]


class Deliveries(BaseModel):
    webhooks: DeliveryKind
    connectors: DeliveryKind


class UploadRequest(BaseModel):
    source: str
    filename: str = Field(min_length=1, max_length=200, description="the object's name under the source's prefix")
    content_type: str = "application/octet-stream"


class UploadTicket(BaseModel):
    method: str = "PUT"
    url: str
    bucket: str
    key: str
    headers: dict[str, str]
    expires_at: datetime
    registration: str = Field(description="how the object becomes a job once uploaded")
