"""Checks end to end: a ``vl2-ground`` + ``vl2-ask`` profile (checks of all four kinds, a grounded one and a
``with_previous`` one) through a real worker process on the ``gpu`` queue, on PostgreSQL, Redis and SeaweedFS, with a
tiny checkpoint in the official layout on CPU, and ``check.failed`` webhooks verified with ``standardwebhooks``.

The checkpoint is scripted (tests/model/tiny.py ``scripted_model``): whatever the image, greedy decoding answers
"No, 2 open." to every prompt, so which checks pass, fail or stay unparsed is known in advance:
yes_no "no" (expect no: passed; expect yes: failed), number 2 (max 1: failed), choice "open" (expect closed:
failed), a choice among red/green (unparsed: neither passes nor fails, no event), text (no expectation).
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from PIL import Image as PILImage
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from model.vl2.prompts import check_prompt
from services.config import parse_config
from services.db import session_scope
from services.ingest.register import register_and_send
from services.schema import AnswerRow, Image, Job, ObjectRow, OutboxEvent
from services.settings import load_settings
from tests.pipeline.conftest import wait_for
from tests.pipeline.test_cli import vlwatch

pytestmark = pytest.mark.services

ANSWER = "No, 2 open."
CONFIG = {
    "profiles": {"dock": {
        "analyzers": ["vl2-ground", "vl2-ask"], "phrases": ["pallet"],
        "checks": {
            "fire-exit-clear": {"question": "Is the fire exit blocked by any object?", "kind": "yes_no",
                                "expect": "no", "severity": "high"},
            "dock-empty": {"question": "Is the dock empty?", "kind": "yes_no", "expect": "yes"},
            "pallets-on-dock": {"question": "How many pallets are on the dock?", "kind": "number",
                                "expect": {"max": 1}},
            "dock-door": {"question": "Is the dock door open or closed?", "kind": "choice",
                          "choices": ["open", "closed"], "expect": "closed", "severity": "critical"},
            "light": {"question": "Is the signal light red or green?", "kind": "choice", "choices": ["red", "green"],
                      "expect": "green"},
            "summary": {"question": "Describe anything unsafe in this image.", "kind": "text", "grounded": True},
            "pallet-moved": {"question": "Has the pallet on the left moved?", "kind": "yes_no",
                             "with_previous": True, "expect": "no"},
        },
        "vl2": {"max_new_tokens": 12, "images_per_batch": 2, "dtype": "float32"},
    }},
    "sources": {"dock-cam": {"prefix": "dock/", "profile": "dock"}},
}
FAILING = {"dock-empty", "pallets-on-dock", "dock-door"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from model.vl2.loader import checkpoint_digest
    from model.vl2.tokenizer import VL2Tokenizer
    from tests.model.tiny import TOKENIZER_DIR, scripted_model, tiny_config, write_release_dir

    model = scripted_model(tiny_config("mha", vocab=400), VL2Tokenizer.from_dir(TOKENIZER_DIR), ANSWER)
    path = write_release_dir(tmp_path_factory.mktemp("vl2"), model)
    return path, checkpoint_digest([path / "model.safetensors"])


class Recorder:
    """An HTTP endpoint that keeps every request's raw body and headers (verification happens in the test)."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                rec.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __enter__(self) -> "Recorder":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (64, 48), colour).save(buf, format="PNG")
    return buf.getvalue()


def _finished(db_url: str, job_id: int) -> bool:
    with session_scope(db_url) as s:
        return s.get(Job, job_id).status in ("succeeded", "failed")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as rec:
        yield rec


def test_checks_through_a_gpu_worker(app_env, db_url, send_job, start_worker, checkpoint, recorder,  # noqa: ANN001
                                     tmp_path):
    from services.storage import store_from_settings

    ckpt, digest = checkpoint
    cfg_file = tmp_path / "checks.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    env = {"VLWATCH_CONFIG": str(cfg_file), "VLWATCH_VL2_CHECKPOINT": str(ckpt), "VLWATCH_VL2_DEVICE": "cpu",
           "VLWATCH_VL2_DTYPE": "float32"}
    full_env = {**app_env, **env}
    settings = load_settings(full_env)
    config, store = parse_config(cfg_file.read_text()), store_from_settings(settings)
    secret = "whsec_c2VjcmV0LWZvci1jaGVja3MtdGVzdA=="
    vlwatch(full_env, "webhooks", "add", "ops", recorder.url, "--secret", secret, "--event", "check.failed")
    worker = start_worker("gpu", **env)

    job_ids, image_ids = [], []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):  # the second is paired with the first
        info = store.put(f"dock/cam-1/{i:04d}.png", _png(colour), content_type="image/png")
        (reg,) = register_and_send(db_url, config, store.bucket, [info], send_job)
        wait_for(lambda: _finished(db_url, reg.job_id), 120, f"job {reg.job_id} (worker log {worker.log})")
        job_ids.append(reg.job_id)
        image_ids.append(reg.image_id)

    with session_scope(db_url) as s:
        jobs = [s.get(Job, j) for j in job_ids]
        assert [j.status for j in jobs] == ["succeeded", "succeeded"], [j.error for j in jobs]
        assert {j.queue for j in jobs} == {"gpu"}
        for job in jobs:
            lineage = {e["analyzer"]: e for e in job.lineage}
            assert set(lineage) == {"vl2-ground", "vl2-ask"}
            assert {e["checkpoint_digest"] for e in lineage.values()} == {digest}
            assert lineage["vl2-ground"]["prompt"] == "<image>\nFind all the <|ref|>pallet<|/ref|>."
            for check in CONFIG["profiles"]["dock"]["checks"].values():
                assert check["question"] in lineage["vl2-ask"]["prompt"]
            assert lineage["vl2-ask"]["settings"]["max_new_tokens"] == 12
        assert "paired_image" not in {e["analyzer"]: e for e in jobs[0].lineage}["vl2-ask"]
        assert {e["analyzer"]: e for e in jobs[1].lineage}["vl2-ask"]["paired_image"] == {
            "id": image_ids[0], "key": "dock/cam-1/0000.png"}

        rows = s.scalars(select(AnswerRow).order_by(AnswerRow.job_id, AnswerRow.id)).all()
        assert len(rows) == 2 * len(CONFIG["profiles"]["dock"]["checks"])
        got = {(r.image_id, r.check_name): r for r in rows}
        for image_id in image_ids:
            a = {name: got[(image_id, name)] for name in CONFIG["profiles"]["dock"]["checks"]}
            assert (a["fire-exit-clear"].status, a["fire-exit-clear"].value_bool, a["fire-exit-clear"].passed) == (
                "ok", False, True)
            assert (a["dock-empty"].value_bool, a["dock-empty"].passed) == (False, False)
            assert (a["pallets-on-dock"].value_number, a["pallets-on-dock"].expected, a["pallets-on-dock"].passed
                    ) == (2.0, {"max": 1}, False)
            assert (a["dock-door"].value_text, a["dock-door"].passed, a["dock-door"].severity) == ("open", False,
                                                                                                  "critical")
            light = a["light"]
            assert (light.status, light.raw_text, light.passed, light.value_text) == ("unparsed", ANSWER, None, None)
            assert light.reason == "none of the choices"
            assert (a["summary"].kind, a["summary"].value_text, a["summary"].passed) == ("text", ANSWER, None)
            for name, r in a.items():
                c = CONFIG["profiles"]["dock"]["checks"][name]
                assert r.lineage["checkpoint_digest"] == digest and r.lineage["prompt"] == check_prompt(
                    c["question"], c["kind"], c.get("choices", ()), c.get("grounded", False),
                    c.get("with_previous", False))
                assert r.status == "no_previous" or (r.confidence is not None and r.confidence > 0.99)
        first, second = got[(image_ids[0], "pallet-moved")], got[(image_ids[1], "pallet-moved")]
        assert (first.status, first.raw_text, first.passed, first.paired_image_id) == ("no_previous", None, None, None)
        assert (second.status, second.value_bool, second.passed, second.paired_image_id) == (
            "ok", False, True, image_ids[0])
        assert second.lineage["paired_image_id"] == image_ids[0]
        assert "This is the previous image: <image>" in second.lineage["prompt"]
        assert s.scalar(select(func.count()).select_from(ObjectRow)) == 0  # the scripted answer carries no boxes

        events = s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
        assert sorted(e.type for e in events) == ["check.failed"] * 6 + ["job.succeeded"] * 2
        succeeded = [e.payload["data"] for e in events if e.type == "job.succeeded"]
        assert [len(d["answers"]) for d in succeeded] == [7, 7]
        assert {a["id"] for d in succeeded for a in d["answers"]} == {r.id for r in rows}
        failed_rows = {(r.job_id, r.check_name): r.id for r in rows if r.passed is False}
        assert set(failed_rows) == {(j, c) for j in job_ids for c in FAILING}

    shown = json.loads(vlwatch(full_env, "results", "dock/cam-1/0001.png", "--json").stdout)
    assert {a["check_name"]: a["status"] for a in shown["answers"]}["light"] == "unparsed"
    assert {a["check_name"]: a["paired_image_id"] for a in shown["answers"]}["pallet-moved"] == image_ids[0]

    def delivered() -> bool:
        vlwatch(full_env, "dispatch")
        return len(recorder.requests) >= 6

    wait_for(delivered, 60, "six check.failed webhooks")
    verifier = Webhook(secret)
    seen = set()
    for body, headers in recorder.requests:
        payload = verifier.verify(body, headers)  # raises on a bad signature
        assert payload["type"] == "check.failed"
        data = payload["data"]
        answer = data["answer"]
        assert failed_rows[(data["job"]["id"], answer["check_name"])] == answer["id"]
        assert answer["passed"] is False and answer["raw_text"] == ANSWER
        assert answer["severity"] == CONFIG["profiles"]["dock"]["checks"][answer["check_name"]].get("severity",
                                                                                                  "warning")
        assert data["image"]["key"].startswith("dock/cam-1/") and data["job"]["profile"] == "dock"
        seen.add((data["job"]["id"], answer["check_name"]))
    assert seen == set(failed_rows)
    body, headers = recorder.requests[0]
    with pytest.raises(WebhookVerificationError):  # a changed body does not verify
        verifier.verify(body + b" ", headers)
