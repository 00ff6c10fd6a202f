"""The results page: server-rendered HTML (Jinja2) with a little inline JavaScript and no external resources.

``/``: search form and a grid of thumbnails with boxes drawn (the API's annotated PNG); ``/images/{id}``: the
upright image with its boxes as SVG (a confidence slider hides boxes below it), every result row and the lineage;
``/login``: the token form (it sets an HttpOnly cookie); ``/logout``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.api.app import COOKIE, Api, Conn, LoginRequired, api, viewer
from services.api.routes import Status, detail, run_search, search_from
from services.tokens import Principal

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
Viewer = Annotated[Principal, Depends(viewer)]
COLOURS = {"objects": "#e63946", "text_lines": "#1d78e6", "barcodes": "#14a05a"}  # as services.render draws them


def install(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    def _login(request: Request, _: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/login?" + urlencode({"next": request.url.path + (
            "?" + request.url.query if request.url.query else "")}), 303)


def _local_path(target: Optional[str]) -> str:
    """Where to go after login: a path on this site only (never another host)."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002
    return templates.TemplateResponse(request, "login.html", {"next": _local_path(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> HTMLResponse:
    form = parse_qs((await request.body()).decode(errors="replace"))
    token, target = (form.get("token") or [""])[0].strip(), _local_path((form.get("next") or ["/"])[0])
    if request.app.state.api.auth.principal(token) is None:
        return templates.TemplateResponse(request, "login.html", {"next": target, "error": "unknown or revoked token"},
                                          status_code=401)
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def index(request: Request, conn: Conn, who: Viewer, app: Annotated[Api, Depends(api)], source: Optional[str] = None,
          since: Optional[str] = None, until: Optional[str] = None, label: Optional[str] = None,
          barcode: Optional[str] = None, text: Optional[str] = None, min_score: Optional[str] = None,
          status: Optional[str] = None, before_id: Optional[int] = None) -> HTMLResponse:
    """Search form and one page of results. Form fields arrive as text (blank = no filter)."""
    def when(v: Optional[str]) -> Optional[datetime]:
        return datetime.fromisoformat(v) if v and v.strip() else None

    score = float(min_score) if min_score and min_score.strip() else None
    state: Optional[Status] = status if status in ("queued", "running", "succeeded", "failed") else None  # type: ignore[assignment]
    q = search_from(who, source, when(since), when(until), label, barcode, text, score, state, None, None,
                    before_id, 24)
    page = run_search(conn, who, q)
    asked = {k: v for k, v in dict(source=source, since=since, until=until, label=label, barcode=barcode, text=text,
                                   min_score=min_score, status=status).items() if v}
    more = "/?" + urlencode({**asked, "before_id": page.next_before_id}) if page.next_before_id else None
    sources = sorted(s for s in app.config.sources if who.sees(s))
    thumb = {"max_side": 320, **({"min_score": score} if score is not None else {})}
    return templates.TemplateResponse(request, "index.html", {
        "who": who, "items": page.items, "asked": asked, "more": more, "sources": sources,
        "thumb_query": urlencode(thumb)})


@router.get("/images/{image_id}", response_class=HTMLResponse)
def image_page(request: Request, image_id: int, conn: Conn, who: Viewer) -> HTMLResponse:
    d = detail(conn, who, image_id)
    boxes = [{"kind": kind, "colour": COLOURS[kind], "x": r["x1"], "y": r["y1"], "w": r["x2"] - r["x1"],
              "h": r["y2"] - r["y1"], "score": r.get("score"),
              "label": r.get("label") or r.get("text") or r.get("value") or ""}
             for kind, rows in d["results"].items() for r in rows]
    return templates.TemplateResponse(request, "image.html", {"who": who, "image": d, "boxes": boxes})
