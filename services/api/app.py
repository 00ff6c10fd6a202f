"""The HTTP API and results page (FastAPI on uvicorn; ``vlwatch serve`` starts it).

Routes: ``/api/v1/...`` (JSON, read-only except presigned uploads; OpenAPI at ``/openapi.json``), the results page
(``/``, ``/images/{id}``, ``/login``), ``/healthz`` and ``/metrics``. Every route but those last two and the login
page needs a token (``vlwatch tokens add``): ``Authorization: Bearer <token>``, or the cookie the login page sets
(HttpOnly, SameSite=Strict). Uploads take the header only, so another site cannot make a browser ask for one.
Images of sources outside a token's scope answer 404, as if they did not exist; naming such a source, 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Iterator, Optional

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from sqlalchemy import Connection, text

from services import metrics
from services.api.search import image_source
from services.config import AppConfig
from services.db import get_engine
from services.settings import Settings
from services.storage import ObjectStore
from services.tokens import Authenticator, Principal

COOKIE = "vlwatch_token"


@dataclass(frozen=True)
class Api:
    """What the routes share, built once by the entry point."""

    settings: Settings
    config: AppConfig
    store: ObjectStore
    auth: Authenticator


def api(request: Request) -> Api:
    return request.app.state.api


def connection(request: Request) -> Iterator[Connection]:
    """A connection for one request (read-only routes: no transaction to commit)."""
    with get_engine(request.app.state.api.settings.db_url).connect() as conn:
        yield conn


class LoginRequired(Exception):
    """A page request without a valid token: the page answers with the login form."""


def _principal(request: Request, cookie_allowed: bool) -> Optional[Principal]:
    header = request.headers.get("authorization")
    if header is None and cookie_allowed:
        header = request.cookies.get(COOKIE)
    return request.app.state.api.auth.principal(header)


def principal(request: Request) -> Principal:
    """The caller of an API route: 401 without a valid token."""
    who = _principal(request, cookie_allowed=True)
    if who is None:
        raise HTTPException(401, "a valid bearer token is needed (vlwatch tokens add NAME)",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def uploader(request: Request) -> Principal:
    """The caller of an upload route: a token in the Authorization header with the upload right."""
    who = _principal(request, cookie_allowed=False)
    if who is None:
        raise HTTPException(401, "uploads need a bearer token in the Authorization header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not who.can_upload:
        raise HTTPException(403, f"token {who.name!r} may not upload (vlwatch tokens add NAME --upload)")
    return who


def viewer(request: Request) -> Principal:
    """The caller of a page: the login form without a valid token."""
    who = _principal(request, cookie_allowed=True)
    if who is None:
        raise LoginRequired()
    return who


Caller = Annotated[Principal, Depends(principal)]
Conn = Annotated[Connection, Depends(connection)]


def visible_image(conn: Connection, who: Principal, image_id: int) -> None:
    """404 for an image that does not exist or that ``who`` may not see (the two look the same)."""
    found, source = image_source(conn, image_id)
    if not found or not who.sees(source):
        raise HTTPException(404, f"no image {image_id}")


def scope_for(who: Principal, source: Optional[str]) -> None:
    """403 when a request names a source outside the caller's scope."""
    if source is not None and not who.sees(source):
        raise HTTPException(403, f"token {who.name!r} may not see source {source!r}")


def create_app(settings: Settings, config: AppConfig, store: ObjectStore, auth: Authenticator) -> FastAPI:
    from services.api import page, routes

    app = FastAPI(title="vlwatch", version="1.0", summary="Results of vision analytics: search, images, jobs, "
                  "deliveries, uploads", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.api = Api(settings, config, store, auth)
    app.include_router(routes.router)
    app.include_router(page.router)
    page.install(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.HTTP_REQUESTS.labels(route=getattr(route, "path", "unmatched"), status=str(response.status_code)).inc()
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        """200 while the database answers (the probe of compose and Kubernetes)."""
        t = time.perf_counter()
        try:
            with get_engine(settings.db_url).connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready"
            return Response(f'{{"ok": false, "database": "{type(exc).__name__}"}}', 503,
                            media_type="application/json")
        return Response(f'{{"ok": true, "database_ms": {1000 * (time.perf_counter() - t):.1f}}}',
                        media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    def metrics_route() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return app
