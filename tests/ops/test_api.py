"""The HTTP API through a real uvicorn process (`vlwatch serve`) over what a prefork worker analysed: search with
every filter and paging, one image, its pictures, jobs, deliveries, presigned uploads, OpenAPI; and access by
token scope (source A's token gets 404/403 on everything of source B)."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image as PILImage

from tests.ops.conftest import BROKEN, DOCK, NIGHT, PHOTO, SHELF, Site

pytestmark = pytest.mark.services

DOCK_ALL = (*DOCK, NIGHT, BROKEN, "presigned")
EVENTS = len(SHELF) + len(DOCK_ALL)  # one job, one event per image


def keys(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [i["key"].rsplit("/", 1)[-1] for i in r.json()["items"]]


def ids(r: httpx.Response) -> list[int]:
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def test_search_by_source_time_label_barcode_text_score_and_status(site: Site) -> None:
    every = ids(site.get("/api/v1/images", "all"))
    assert every == sorted(site.ids.values(), reverse=True) and len(every) == EVENTS  # newest first
    assert keys(site.get("/api/v1/images", "all", source="shelf")) == SHELF
    assert set(ids(site.get("/api/v1/images", "all", source="dock"))) == {site.ids[k] for k in DOCK_ALL}
    # The night picture: 23:30 in Berlin (no EXIF offset; the source's zone) is 22:30 UTC.
    night = keys(site.get("/api/v1/images", "all", since="2026-01-15T22:00:00Z", until="2026-01-15T23:00:00Z"))
    assert night == [NIGHT]
    assert keys(site.get("/api/v1/images", "all", since="2026-01-15T22:31:00Z", until="2026-01-15T23:31:00Z")) == []
    assert ids(site.get("/api/v1/images", "all", barcode="WH-40075")) == [site.ids["presigned"], site.ids[DOCK[1]]]
    assert keys(site.get("/api/v1/images", "all", barcode="https://wh.example/sku/WH-38812")) == [DOCK[0]]
    assert keys(site.get("/api/v1/images", "all", label="pallet")) == [PHOTO]
    assert keys(site.get("/api/v1/images", "all", label="person", min_score=0.5)) == []
    assert keys(site.get("/api/v1/images", "all", label="person", min_score=0.3)) == [PHOTO]
    assert keys(site.get("/api/v1/images", "all", status="failed")) == [BROKEN]
    assert keys(site.get("/api/v1/images", "all", text="wh-10427")) == SHELF  # OCR lines, case-insensitive
    assert keys(site.get("/api/v1/images", "all", text="no such words anywhere")) == []
    # min_score alone: some object or OCR line reaches it (the dock runs no OCR: only the photo's pallet counts)
    assert set(ids(site.get("/api/v1/images", "all", min_score=0.5))) == {site.ids[SHELF[0]], site.ids[PHOTO]}


def test_paging_and_the_check_hook(site: Site) -> None:
    seen, cursor = [], None
    while True:
        page = site.get("/api/v1/images", "all", limit=3, **({"before_id": cursor} if cursor else {})).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_before_id"]
        if cursor is None:
            break
    assert seen == sorted(site.ids.values(), reverse=True)
    failed = site.get("/api/v1/images", "all", check="fire-exit-clear", passed="false").json()["items"]
    assert [i["id"] for i in failed] == [site.ids[PHOTO]]
    answered = site.get("/api/v1/images", "all", check="fire-exit-clear").json()["items"]
    assert sorted(i["id"] for i in answered) == sorted([site.ids[PHOTO], site.ids[SHELF[0]]])


def test_one_image_its_results_lineage_and_pictures(site: Site) -> None:
    photo = site.ids[PHOTO]
    d = site.get(f"/api/v1/images/{photo}", "all").json()
    assert d["source"] == "dock" and d["job"]["status"] == "succeeded" and (d["width"], d["height"]) == (1612, 620)
    assert {"WH-51200", "WH-51201"} <= {r["value"] for r in d["results"]["barcodes"]}
    assert {r["label"] for r in d["results"]["objects"]} == {"pallet", "person"}
    assert [entry["analyzer"] for entry in d["job"]["lineage"]] == ["barcode"]
    assert [r["text"] for r in site.get(f"/api/v1/images/{site.ids[SHELF[0]]}", "all").json()["results"][
        "text_lines"] if "10427" in r["text"]]  # the shelf runs OCR
    png = site.get(f"/api/v1/images/{photo}/annotated.png", "all", max_side=400)
    assert png.headers["content-type"] == "image/png"
    drawn = PILImage.open(io.BytesIO(png.content))
    assert drawn.size == (400, round(620 * 400 / 1612))
    full = PILImage.open(io.BytesIO(site.get(f"/api/v1/images/{photo}/annotated.png", "all").content)).convert("RGB")
    plain = PILImage.open(io.BytesIO(site.get(f"/api/v1/images/{photo}/image.jpg", "all").content)).convert("RGB")
    assert full.size == plain.size == (1612, 620)
    assert full.getpixel((40, 300)) == (230, 57, 70)  # the pallet box's left edge, in the objects' colour
    low = site.get(f"/api/v1/images/{photo}/annotated.png", "all", min_score=0.5).content
    above = PILImage.open(io.BytesIO(low)).convert("RGB")
    assert above.getpixel((900, 400)) != (230, 57, 70) and full.getpixel((900, 400)) == (230, 57, 70)  # person 0.35
    assert site.get("/api/v1/images/999999", "all").status_code == 404


def test_jobs_with_reasons_and_delivery_status(site: Site) -> None:
    page = site.get("/api/v1/jobs", "all", status="failed").json()
    assert page["counts"] == {"queued": 0, "running": 0, "succeeded": EVENTS - 1, "failed": 1}
    (failed,) = page["items"]
    assert failed["key"].endswith(BROKEN) and failed["error"].startswith("bad image") and "not an image" in failed["error"]
    deliveries = site.get("/api/v1/deliveries", "all").json()
    (gone,) = deliveries["webhooks"]["targets"]
    assert gone["name"] == "gone" and gone["counts"] == {"pending": 0, "delivered": 0, "dead": EVENTS}
    assert len(deliveries["webhooks"]["dead"]) == EVENTS and all(d["attempts"] == 3 for d in deliveries["webhooks"]["dead"])
    assert deliveries["connectors"] == {"targets": [], "dead": []}


def test_presigned_upload_became_a_job_of_its_source(site: Site) -> None:
    d = site.get(f"/api/v1/images/{site.ids['presigned']}", "dock").json()
    assert d["source"] == "dock" and d["key"].startswith("dock/") and d["job"]["status"] == "succeeded"
    assert [r["value"] for r in d["results"]["barcodes"]] == ["WH-40075"]


def test_openapi_and_health_are_served(site: Site) -> None:
    spec = httpx.get(site.api + "/openapi.json").json()
    assert {"/api/v1/images", "/api/v1/images/{image_id}", "/api/v1/images/{image_id}/annotated.png",
            "/api/v1/jobs", "/api/v1/deliveries", "/api/v1/uploads"} <= set(spec["paths"])
    assert httpx.get(site.api + "/healthz").json()["ok"] is True


def test_a_token_for_one_source_sees_nothing_of_another(site: Site) -> None:
    shelf_image, dock_image = site.ids[SHELF[0]], site.ids[DOCK[0]]
    assert keys(site.get("/api/v1/images", "shelf")) == SHELF
    assert site.get("/api/v1/images", "shelf", source="dock").status_code == 403
    assert keys(site.get("/api/v1/images", "shelf", barcode="WH-38812")) == []
    for path in (f"/api/v1/images/{dock_image}", f"/api/v1/images/{dock_image}/annotated.png",
                 f"/api/v1/images/{dock_image}/image.jpg"):
        assert site.get(path, "shelf").status_code == 404, path
        assert site.get(path, "dock").status_code == 200, path
    assert site.get(f"/api/v1/images/{shelf_image}", "dock").status_code == 404
    jobs = site.get("/api/v1/jobs", "dock").json()
    assert {j["source"] for j in jobs["items"]} == {"dock"} and jobs["counts"]["succeeded"] == len(DOCK_ALL) - 1
    assert site.get("/api/v1/deliveries", "shelf").json()["webhooks"]["targets"][0]["counts"]["dead"] == len(SHELF)
    # pages, with the token as the login cookie
    cookie = {"vlwatch_token": site.tokens["shelf"]}
    assert httpx.get(f"{site.api}/images/{dock_image}", cookies=cookie).status_code == 404
    assert httpx.get(f"{site.api}/images/{shelf_image}", cookies=cookie).status_code == 200
    listing = httpx.get(f"{site.api}/", cookies=cookie).text
    assert f'data-image-id="{shelf_image}"' in listing and f'data-image-id="{dock_image}"' not in listing
    assert httpx.get(f"{site.api}/?source=dock", cookies=cookie).status_code == 403
    # uploads: only with the right, only into the token's sources
    up = site.api + "/api/v1/uploads"
    ask = {"source": "shelf", "filename": "x.png"}
    assert httpx.post(up, json=ask, headers={"Authorization": f"Bearer {site.tokens['dock-upload']}"}
                      ).status_code == 403
    assert httpx.post(up, json=ask, headers={"Authorization": f"Bearer {site.tokens['shelf']}"}).status_code == 403
    assert httpx.post(up, json=ask, cookies={"vlwatch_token": site.tokens["bucket"]}).status_code == 401


def test_requests_without_a_valid_token_are_refused(site: Site) -> None:
    image = site.ids[SHELF[0]]
    for path in ("/api/v1/images", f"/api/v1/images/{image}", f"/api/v1/images/{image}/annotated.png", "/api/v1/jobs",
                 "/api/v1/deliveries"):
        assert httpx.get(site.api + path).status_code == 401, path
        assert httpx.get(site.api + path, headers={"Authorization": "Bearer vlw_guessed"}).status_code == 401, path
    assert httpx.post(site.api + "/api/v1/uploads", json={"source": "shelf", "filename": "a.png"}).status_code == 401
    page = httpx.get(f"{site.api}/images/{image}")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    # the listener: no token 401, a source-scoped token 403, an unknown one 401
    assert site.scrapes["listener_refusals"] == "401|403|401"


def test_metrics_of_api_worker_dispatcher_and_listener(site: Site) -> None:
    from tests.ops.procs import sample

    before, after, pending = site.scrapes["api_before_worker"], site.scrapes["api_after_run"], site.scrapes["api_pending"]
    assert sample(before, "vlwatch_queue_depth", queue="cpu") == 2  # one task message per upload call
    assert sample(before, "vlwatch_jobs", status="queued", queue="cpu") == EVENTS - 1
    assert sample(after, "vlwatch_queue_depth", queue="cpu") == 0
    assert sample(after, "vlwatch_jobs", status="succeeded", queue="cpu") == EVENTS - 1
    assert sample(after, "vlwatch_jobs", status="failed", queue="cpu") == 1
    assert sample(after, "vlwatch_jobs", status="queued", queue="gpu") == 0
    assert sample(after, "vlwatch_images") == EVENTS
    assert sample(after, "vlwatch_outbox_undispatched") == EVENTS
    assert sample(after, "vlwatch_delivery_lag_seconds", kind="outbox", target="") > 0
    # one round of `vlwatch dispatch`: every delivery failed once and waits for its retry
    assert sample(pending, "vlwatch_deliveries", kind="webhook", target="gone", status="pending") == EVENTS
    assert sample(pending, "vlwatch_delivery_lag_seconds", kind="webhook", target="gone") > 0
    assert sample(pending, "vlwatch_outbox_undispatched") == 0
    # the dispatcher's own /metrics once the retries are spent
    dispatcher = site.scrapes["dispatcher"]
    assert sample(dispatcher, "vlwatch_deliveries", kind="webhook", target="gone", status="dead") == EVENTS
    assert sample(dispatcher, "vlwatch_deliveries", kind="webhook", target="gone", status="pending") == 0
    assert sample(dispatcher, "vlwatch_delivery_lag_seconds", kind="webhook", target="gone") == 0
    # the prefork worker: samples of both children, summed by the parent
    worker = site.scrapes["worker"]
    assert sample(worker, "vlwatch_jobs_finished_total", queue="cpu", status="succeeded") == EVENTS - 1
    assert sample(worker, "vlwatch_jobs_finished_total", queue="cpu", status="failed") == 1
    assert sample(worker, "vlwatch_job_failures_total", reason="bad_image") == 1
    for stage, n in (("fetch", EVENTS), ("decode", EVENTS), ("barcode", EVENTS - 1), ("ocr", len(SHELF))):
        assert sample(worker, "vlwatch_stage_seconds_count", stage=stage) == n, stage
        assert sample(worker, "vlwatch_stage_seconds_bucket", stage=stage, le="+Inf") == n, stage
    assert sample(worker, "vlwatch_stage_seconds_count", stage="commit") >= 2  # at least one per task run
    assert sample(worker, "vlwatch_stage_seconds_sum", stage="ocr") > 0
    listener = site.scrapes["listener"]
    assert sample(listener, "vlwatch_images_registered_total") == 1
    assert sample(listener, "vlwatch_notifications_total", outcome="registered") == 1
    assert sample(listener, "vlwatch_notifications_total", outcome="refused") == 3
    final = site.scrapes["api_final"]
    assert sample(final, "vlwatch_http_requests_total", route="/api/v1/uploads", status="201") == 1


@pytest.fixture(scope="module")
def chromium():  # noqa: ANN201
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests import stack

    binary, driver = stack.browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    yield browser
    browser.quit()


def test_the_page_in_chromium_search_filter_and_boxes(site: Site, chromium) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(chromium, 30)
    chromium.get(site.api + "/")  # no token yet: the login form
    wait.until(lambda b: b.current_url.startswith(site.api + "/login"))
    chromium.find_element(By.ID, "token").send_keys(site.tokens["all"])
    chromium.find_element(By.ID, "login").click()
    wait.until(lambda b: b.find_elements(By.ID, "results"))
    cards = chromium.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == EVENTS
    assert chromium.find_element(By.CSS_SELECTOR, ".card .reason").text.startswith("bad image")
    # search: a barcode value, then the confidence threshold
    chromium.find_element(By.ID, "barcode").send_keys("WH-40075")
    chromium.find_element(By.ID, "go").click()
    wait.until(lambda b: "barcode=WH-40075" in b.current_url)
    found = {int(c.get_attribute("data-image-id")) for c in chromium.find_elements(By.CSS_SELECTOR, ".card")}
    assert found == {site.ids["presigned"], site.ids[DOCK[1]]}
    chromium.get(site.api + "/")
    chromium.find_element(By.ID, "min_score").send_keys("0.5")
    chromium.find_element(By.ID, "go").click()
    wait.until(lambda b: "min_score=0.5" in b.current_url)
    found = {int(c.get_attribute("data-image-id")) for c in chromium.find_elements(By.CSS_SELECTOR, ".card")}
    assert found == {site.ids[SHELF[0]], site.ids[PHOTO]}
    # the thumbnails are the annotated pictures, loaded
    wait.until(lambda b: all(b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                             for i in b.find_elements(By.CSS_SELECTOR, ".card img")))
    chromium.save_screenshot(str(site.shots / "search.png"))
    # open the photo: its picture and one SVG box per result row
    chromium.find_element(By.CSS_SELECTOR, f'.card[data-image-id="{site.ids[PHOTO]}"]').click()
    wait.until(lambda b: b.find_elements(By.ID, "boxes"))
    wait.until(lambda b: b.execute_script("return document.getElementById('picture').naturalWidth") == 1612)
    boxes = chromium.find_elements(By.CSS_SELECTOR, "#boxes rect.box")
    detail = site.get(f"/api/v1/images/{site.ids[PHOTO]}", "all").json()["results"]
    assert len(boxes) == sum(len(rows) for rows in detail.values()) >= 4
    pallet = chromium.find_element(By.CSS_SELECTOR, 'rect.box[data-label="pallet"]')
    assert (pallet.get_attribute("x"), pallet.get_attribute("width")) == ("40.0", "660.0")
    assert pallet.is_displayed() and pallet.size["width"] > 100  # drawn over the picture at its scale
    person = chromium.find_element(By.CSS_SELECTOR, 'rect.box[data-label="person"]')
    assert person.is_displayed()
    chromium.execute_script("const s = document.getElementById('confidence'); s.value = 0.5;"
                            "s.dispatchEvent(new Event('input'))")
    assert not person.is_displayed() and pallet.is_displayed()  # below the threshold: hidden
    assert all(b.is_displayed() for b in chromium.find_elements(By.CSS_SELECTOR, 'rect.box[data-kind="barcodes"]'))
    chromium.save_screenshot(str(site.shots / "image.png"))
    assert (site.shots / "image.png").stat().st_size > 10_000
