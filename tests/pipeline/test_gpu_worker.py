"""The GPU worker end to end: ``vlwatch worker --queues gpu`` on CPU (a tiny random checkpoint in the official
layout) finishes a mixed set of grounding, OCR (with a CPU barcode analyzer in the same profile) and checks jobs on
PostgreSQL, Redis and SeaweedFS through the continuous-batching scheduler (``workers.gpu``), and

- every job's rows equal those of the batch path (``VLWATCH_VL2_SCHEDULER=0``) for the same images: greedy ids do
  not depend on what else is in the batch;
- short grounding jobs commit while the long OCR jobs claimed with them are still decoding (the batch path commits
  the whole batch in one transaction);
- with a 2-second lease and at most 4 prompts decoding at once, jobs waiting in the scheduler keep their leases
  (renewed past their first expiry; a reconciler polling all along reclaims nothing);
- the worker's /metrics carries the scheduler's figures.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image as PILImage
from sqlalchemy import select

from services.config import parse_config
from services.db import session_scope
from services.ingest.register import register_and_send
from services.queries import image_results
from services.schema import Image, Job
from services.settings import load_settings
from tests.model.scheduling import same
from tests.ops.procs import free_port, scrape
from tests.pipeline.conftest import ROOT
from tests.waiting import wait_for
from workers.lease import reconcile

pytestmark = pytest.mark.services

LEASE = 2.0
LABELS = [ROOT / "samples" / n for n in ("label_WH-10427.png", "label_WH-20931.png", "label_WH-40075_code128_only.png")]
PROFILES = {
    "ground": {"analyzers": ["vl2-ground"], "phrases": ["pallet", "person"], "vl2": {"max_new_tokens": 4}},
    "read": {"analyzers": ["vl2-ocr", "barcode"], "vl2": {"max_new_tokens": 240}},
    "dock": {"analyzers": ["vl2-ground", "vl2-ask"], "phrases": ["pallet"], "vl2": {"max_new_tokens": 8},
             "checks": {"exit": {"question": "Is the fire exit blocked?", "kind": "yes_no", "expect": "no"},
                        "summary": {"question": "Describe anything unsafe.", "kind": "text", "grounded": True},
                        "moved": {"question": "Has the pallet moved?", "kind": "yes_no", "with_previous": True}}},
}
PASSES = ("batch", "sched")
CONFIG = {"profiles": {name: p | {"vl2": p["vl2"] | {"dtype": "float32"}} for name, p in PROFILES.items()},
          "sources": {f"{run}-{name}": {"prefix": f"{run}/{name}/", "profile": name}
                      for run in PASSES for name in PROFILES}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint whose greedy OCR answers of the LABELS run the full 240 tokens (weights at std 0.3
    do not fall into the short loops the OCR guard stops), while grounding answers stop at 4."""
    from tests.model.tiny import random_model, tiny_config, write_release_dir

    return write_release_dir(tmp_path_factory.mktemp("vl2"), random_model(tiny_config("mla", vocab=400), seed=3,
                                                                             std=0.3))


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    im = PILImage.new("RGB", size, colour)
    im.paste((255 - colour[0], 40, 90), (size[0] // 4, size[1] // 3, size[0] // 2, size[1] // 2))
    im.save(buf, format="PNG")
    return buf.getvalue()


IMAGES = {  # profile -> images, registered in this order (the first dock image alone, before the others)
    "dock": [_png((200, 30, 30)), _png((30, 30, 200))],
    "read": [p.read_bytes() for p in LABELS],
    "ground": [_png(c, (80 + 10 * i, 60)) for i, c in enumerate([(10, 200, 10), (90, 90, 90), (240, 240, 20),
                                                                  (20, 120, 220)])],
}


class Run:
    """One pass over IMAGES under prefix ``run`` through a worker started with ``env``."""

    def __init__(self, run: str, app_env: dict[str, str], db_url: str, send_job: Any, cfg_file: Path) -> None:
        self.run, self.db_url, self.send_job = run, db_url, send_job
        env = {**app_env, "VLWATCH_CONFIG": str(cfg_file)}
        settings = load_settings(env)
        from services.storage import store_from_settings

        self.config, self.store = parse_config(cfg_file.read_text()), store_from_settings(settings)
        self.jobs: dict[tuple[str, int], int] = {}
        self.reclaimed = 0
        self.longest_lease = 0.0  # the furthest a running job's lease reached past its claim, in seconds

    def register(self, items: list[tuple[str, int]]) -> None:
        infos = [self.store.put(f"{self.run}/{profile}/{i}.png", IMAGES[profile][i], content_type="image/png")
                 for profile, i in items]
        regs = register_and_send(self.db_url, self.config, self.store.bucket, infos, self.send_job)
        self.jobs.update({item: reg.job_id for item, reg in zip(items, regs)})

    def finished(self, watch_leases: bool) -> bool:
        with session_scope(self.db_url) as s:
            jobs = s.execute(select(Job.status, Job.started_at, Job.lease_expires_at)
                             .where(Job.id.in_(self.jobs.values()))).all()
        for status, started, expires in jobs:
            if status == "running" and expires is not None:
                self.longest_lease = max(self.longest_lease, (expires - started).total_seconds())
        if watch_leases:  # what a reconciler does to a job whose lease expired
            self.reclaimed += reconcile(self.db_url, self.send_job, requeue_after=600)["reclaimed"]
        return all(status in ("succeeded", "failed") for status, _, _ in jobs)

    def go(self, watch_leases: bool = False) -> None:
        self.register([("dock", 0)])  # the second dock image then has a previous one
        wait_for(lambda: self.finished(watch_leases), 120, f"{self.run}: the first dock job")
        self.register([("read", i) for i in range(len(LABELS))] + [("ground", i) for i in range(4)] + [("dock", 1)])
        wait_for(lambda: self.finished(watch_leases), 180, f"{self.run}: the mixed jobs")

    def results(self) -> dict[tuple[str, int], dict[str, Any]]:
        out = {}
        with session_scope(self.db_url) as s:
            for item, job_id in self.jobs.items():
                job = s.get(Job, job_id)
                got = image_results(s, s.get(Image, job.image_id))
                answers = [{k: v for k, v in a.items() if k not in ("id", "paired_image_id")}
                           | {"paired": a["paired_image_id"] is not None} for a in got.answers]
                lineage = [{k: v if k != "paired_image" else v["key"].removeprefix(f"{self.run}/")
                            for k, v in entry.items()} for entry in job.lineage or []]
                out[item] = {"status": job.status, "error": job.error, "rows": got.rows, "answers": answers,
                             "lineage": lineage, "attempts": job.attempts, "started": job.started_at,
                             "finished": job.finished_at}
        return out


def _series(text: str, name: str) -> list[float]:
    """Values of every series of ``name`` in a Prometheus exposition (any labels: a multiprocess gauge adds pid)."""
    return [float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})?\s+(\S+)$", text, re.M)]


def test_gpu_worker_serves_a_mixed_batch_like_the_batch_path(app_env, db_url, send_job, start_worker, checkpoint,
                                                             tmp_path):  # noqa: ANN001
    cfg_file = tmp_path / "gpu.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    env = {"VLWATCH_CONFIG": str(cfg_file), "VLWATCH_VL2_CHECKPOINT": str(checkpoint), "VLWATCH_VL2_DEVICE": "cpu",
           "VLWATCH_VL2_DTYPE": "float32", "VLWATCH_VL2_EXACT_PIXELS": "1",  # the batch path's pixels: same ids
           "OMP_NUM_THREADS": "1"}  # on a shared 2-core machine, a tiny model's ops wait for OpenMP threads
    runs = {run: Run(run, app_env, db_url, send_job, cfg_file) for run in PASSES}

    batch_worker = start_worker("gpu", **env, VLWATCH_VL2_SCHEDULER="0")
    runs["batch"].go()
    batch_worker.stop()
    port = free_port()
    worker = start_worker("gpu", **env, VLWATCH_LEASE_SECONDS=str(LEASE), VLWATCH_VL2_MAX_BATCH="4",
                          VLWATCH_METRICS_PORT=str(port))
    runs["sched"].go(watch_leases=True)
    metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    batch, sched = runs["batch"].results(), runs["sched"].results()

    # Every job succeeded, with the rows the batch path wrote for the same image.
    assert {item: r["status"] for item, r in sched.items()} == {item: "succeeded" for item in sched}, \
        {item: r["error"] for item, r in sched.items()}
    started = "VL2 scheduler on cpu"
    assert started not in batch_worker.log.read_text() and started in worker.log.read_text()
    for item in batch:
        keep = ("rows", "answers", "lineage")
        assert same({k: sched[item][k] for k in keep}, {k: batch[item][k] for k in keep}), item
    read = [sched[("read", i)] for i in range(len(LABELS))]
    assert all(r["rows"]["text_lines"] and r["rows"]["barcodes"] for r in read)  # OCR and barcodes both ran
    assert [e["analyzer"] for e in read[0]["lineage"]] == ["vl2-ocr", "barcode"]  # the profile's order
    answers = {a["check_name"]: a for a in sched[("dock", 1)]["answers"]}
    assert answers["moved"]["paired"] and answers["moved"]["status"] != "no_previous"
    assert {a["check_name"]: a["status"] for a in sched[("dock", 0)]["answers"]}["moved"] == "no_previous"

    # Short grounding jobs committed while the long OCR jobs claimed with them were still decoding; the batch
    # path committed all of them at once.
    ground = [sched[("ground", i)] for i in range(4)]
    assert max(g["finished"] for g in ground) < min(r["finished"] for r in read)
    assert max(r["started"] for r in read) < min(g["finished"] for g in ground)
    assert len({batch[item]["finished"] for item in batch if item != ("dock", 0)}) == 1

    # Leases of jobs waiting in the scheduler were renewed, and no job was reclaimed.
    span = max((r["finished"] - r["started"]).total_seconds() for r in read)
    assert runs["sched"].longest_lease > LEASE + 0.2, (runs["sched"].longest_lease, span)
    assert runs["sched"].reclaimed == 0 and {r["attempts"] for r in sched.values()} == {1}

    # The scheduler's figures on the worker's /metrics.
    requests = len(sched) + 1  # one request per job, and one more for the dock job's check that compares
    assert _series(metrics, "vlwatch_gpu_images_total") == [requests]
    assert _series(metrics, "vlwatch_gpu_generated_tokens_total")[0] >= len(LABELS) * 239  # 240, the first prefilled
    assert _series(metrics, "vlwatch_gpu_oom_shrinks_total") == [0]
    for gauge in ("vlwatch_gpu_decode_batch", "vlwatch_gpu_kv_cache_used_ratio", "vlwatch_gpu_memory_peak_bytes"):
        assert _series(metrics, gauge), gauge
    assert len(_series(metrics, "vlwatch_gpu_scheduler_prompts")) >= 2  # waiting and running
    assert _series(metrics, "vlwatch_jobs_finished_total") == [len(sched)]


def test_a_job_that_cannot_fit_the_memory_budget_fails_saying_so(app_env, db_url, send_job, start_worker,
                                                                checkpoint, tmp_path):  # noqa: ANN001
    """``VLWATCH_VL2_GPU_MEMORY`` sizes the worker's scheduler: under a budget smaller than the weights, the job
    fails with the scheduler's message (what one image needs, and the budget); the worker goes on."""
    cfg_file = tmp_path / "gpu.yaml"
    cfg_file.write_text(yaml.safe_dump(CONFIG))
    env = {"VLWATCH_CONFIG": str(cfg_file), "VLWATCH_VL2_CHECKPOINT": str(checkpoint), "VLWATCH_VL2_DEVICE": "cpu",
           "VLWATCH_VL2_DTYPE": "float32", "VLWATCH_VL2_GPU_MEMORY": "1MiB", "OMP_NUM_THREADS": "1"}
    start_worker("gpu", **env)
    run = Run("sched", app_env, db_url, send_job, cfg_file)
    run.register([("ground", 0), ("ground", 1)])
    wait_for(lambda: run.finished(watch_leases=False), 120, "the jobs to finish")
    for r in run.results().values():
        assert r["status"] == "failed" and r["error"].startswith("vl2-ground failed on 'sched/ground/"), r["error"]
        assert "one image alone does not fit: it needs about" in r["error"]
        assert "the memory budget is 0.00 GiB per GPU" in r["error"]
