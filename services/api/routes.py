"""The JSON API, version 1: search, one image (results, annotated PNG, upright JPEG), jobs, deliveries, uploads.

Thin routes over ``services.api.search`` (the SQL) and ``services.api.pictures`` (decoding and drawing)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from sqlalchemy import select

from services.api.app import Api, Caller, Conn, api, scope_for, uploader, visible_image
from services.api.models import Deliveries, ImageDetail, JobsPage, SearchPage, UploadRequest, UploadTicket
from services.api.pictures import annotated_png, upright_jpeg
from services.api.search import Search, deliveries, list_jobs, search_images
from services.queries import image_results
from services.schema import Image, Source
from services.storage import ObjectNotFound, PresignUnsupported
from services.tokens import Principal

router = APIRouter(prefix="/api/v1")
Status = Literal["queued", "running", "succeeded", "failed"]
UPLOAD_LIFETIME = timedelta(minutes=15)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _utc(t: Optional[datetime]) -> Optional[datetime]:
    return t if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)


def search_from(who: Principal, source: Optional[str] = None, since: Optional[datetime] = None,
                until: Optional[datetime] = None, label: Optional[str] = None, barcode: Optional[str] = None,
                text: Optional[str] = None, min_score: Optional[float] = None, status: Optional[Status] = None,
                check: Optional[str] = None, passed: Optional[bool] = None, before_id: Optional[int] = None,
                limit: int = 50) -> Search:
    """The search a request asks for (blank form fields mean no filter), after the scope check."""
    def given(v: Optional[str]) -> Optional[str]:
        return v.strip() if v is not None and v.strip() else None

    scope_for(who, given(source))
    return Search(source=given(source), since=_utc(since), until=_utc(until), label=given(label),
                  barcode=given(barcode), text=given(text), min_score=min_score, status=status, check=given(check),
                  passed=passed, before_id=before_id, limit=limit)


def run_search(conn: Conn, who: Principal, q: Search) -> SearchPage:
    items, cursor = search_images(conn, q, who.sources)
    return SearchPage(items=items, next_before_id=cursor)


@router.get("/images", response_model=SearchPage, summary="Search images")
def search(conn: Conn, who: Caller, source: Optional[str] = None, since: Optional[datetime] = None,
           until: Optional[datetime] = None, label: Optional[str] = None, barcode: Optional[str] = None,
           text: Optional[str] = Query(None, description="part of an OCR line, case-insensitive"),
           min_score: Optional[float] = Query(None, ge=0, le=1), status: Optional[Status] = None,
           check: Optional[str] = None, passed: Optional[bool] = None, before_id: Optional[int] = None,
           limit: int = Query(50, ge=1, le=200)) -> SearchPage:
    """Images by source, time (capture, else upload), label, barcode value, text, confidence, job status and check
    result; newest first, ``limit`` a page; ``next_before_id`` continues."""
    return run_search(conn, who, search_from(who, source, since, until, label, barcode, text, min_score, status,
                                             check, passed, before_id, limit))


def detail(conn: Conn, who: Principal, image_id: int) -> dict:
    """Everything about one image the caller may see (404 otherwise), as ``ImageDetail`` fields."""
    from sqlalchemy.orm import Session

    visible_image(conn, who, image_id)
    with Session(bind=conn) as s:
        image = s.get(Image, image_id)
        res = image_results(s, image)
        source = s.scalar(select(Source.name).where(Source.id == image.source_id)) if image.source_id else None
        job = res.job
        return {"id": image.id, "key": image.key, "bucket": image.bucket, "etag": image.etag, "source": source,
                "width": image.width, "height": image.height, "sha256": image.sha256,
                "captured_at": image.captured_at, "uploaded_at": image.uploaded_at,
                "registered_at": image.registered_at, "results": res.rows,
                "job": None if job is None else {c: getattr(job, c) for c in (
                    "id", "status", "profile", "queue", "attempts", "error", "queued_at", "started_at",
                    "finished_at", "timings", "lineage")}}


@router.get("/images/{image_id}", response_model=ImageDetail, summary="One image's results and lineage")
def image(image_id: int, conn: Conn, who: Caller) -> dict:
    return detail(conn, who, image_id)


def _picture(make, key: str) -> Response:  # noqa: ANN001
    try:
        return make()
    except ObjectNotFound:
        raise HTTPException(410, f"the object {key!r} is no longer in the bucket") from None


@router.get("/images/{image_id}/annotated.png", summary="The image with its boxes drawn",
            responses={200: {"content": {"image/png": {}}}}, response_class=Response)
def annotated(image_id: int, conn: Conn, who: Caller, app: Annotated[Api, Depends(api)],
              min_score: Optional[float] = Query(None, ge=0, le=1),
              max_side: Optional[int] = Query(None, ge=16, le=4096)) -> Response:
    d = detail(conn, who, image_id)
    return _picture(lambda: Response(annotated_png(app.store, d["key"], app.settings, d["results"], min_score,
                                                   max_side), media_type="image/png",
                                     headers={"Cache-Control": "private, max-age=300"}), d["key"])


@router.get("/images/{image_id}/image.jpg", summary="The image, upright",
            responses={200: {"content": {"image/jpeg": {}}}}, response_class=Response)
def upright(image_id: int, conn: Conn, who: Caller, app: Annotated[Api, Depends(api)],
            max_side: Optional[int] = Query(None, ge=16, le=4096)) -> Response:
    visible_image(conn, who, image_id)
    key = conn.scalar(select(Image.key).where(Image.id == image_id))
    return _picture(lambda: Response(upright_jpeg(app.store, key, app.settings, max_side), media_type="image/jpeg",
                                     headers={"Cache-Control": "private, max-age=300"}), key)


@router.get("/jobs", response_model=JobsPage, summary="Jobs by status, with reasons")
def jobs(conn: Conn, who: Caller, status: Optional[Status] = None, before_id: Optional[int] = None,
         limit: int = Query(50, ge=1, le=200)) -> JobsPage:
    counts, items, cursor = list_jobs(conn, who.sources, status, before_id, limit)
    return JobsPage(counts=counts, items=items, next_before_id=cursor)


@router.get("/deliveries", response_model=Deliveries, summary="Webhook and connector delivery status")
def delivery_status(conn: Conn, who: Caller) -> dict:
    return deliveries(conn, who.sources)


@router.post("/uploads", response_model=UploadTicket, status_code=201, summary="A presigned upload URL")
def upload(req: UploadRequest, who: Annotated[Principal, Depends(uploader)],
           app: Annotated[Api, Depends(api)]) -> UploadTicket:
    """A URL to PUT one image into the source's prefix without S3 credentials (valid 15 minutes). The object
    then becomes a job like any other: the bucket's notifications (``vlwatch listen``) or the scanner
    (``vlwatch scan --watch``) register it."""
    scope_for(who, req.source)
    if req.source not in app.config.sources:  # the scanner and the listener match configured prefixes only
        raise HTTPException(404, f"no source {req.source!r} in the configuration file")
    name = _SAFE_NAME.sub("_", req.filename.rsplit("/", 1)[-1]).strip("._") or "upload"
    key = f"{app.config.sources[req.source].prefix}{uuid.uuid4().hex[:12]}-{name}"
    try:
        url = app.store.presigned_put(key, UPLOAD_LIFETIME)
    except PresignUnsupported as exc:
        raise HTTPException(501, str(exc)) from None
    return UploadTicket(url=url, bucket=app.store.bucket, key=key, headers={"Content-Type": req.content_type},
                        expires_at=datetime.now(timezone.utc) + UPLOAD_LIFETIME,
                        registration="registered by the bucket notification listener or the scanner")
