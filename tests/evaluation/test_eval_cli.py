"""``vlwatch eval`` on the generated set: metrics printed, the run stored in PostgreSQL, JSON and HTML written,
the HTML's plots rendered by headless Chromium, and two runs with the same settings scoring identically."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from services.cli.main import main
from services.db import session_scope
from services.schema import EvalImage, EvalRun
from tests import stack

pytestmark = pytest.mark.services

PROFILES = {"profiles": {"default": {"analyzers": ["barcode", "ocr"]}, "codes": {"analyzers": ["barcode"]}}}


@pytest.fixture
def run_cli(db_url: str, tmp_path: Path):  # noqa: ANN201
    config = tmp_path / "vlwatch.yaml"
    config.write_text(yaml.safe_dump(PROFILES))
    env = {"VLWATCH_DATABASE_URL": db_url, "VLWATCH_CONFIG": str(config), "VLWATCH_DATA_DIR": str(tmp_path / "data")}

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    return run


def open_in_chromium(page: Path, shot: Path) -> str:
    """The DOM after the page's scripts ran, and a screenshot, from headless Chromium."""
    browser = stack.chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2600"]
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return dom


def test_eval_stores_reports_renders_and_repeats(run_cli, db_url: str, small_evalset: Path, tmp_path: Path) -> None:
    out = run_cli("eval", str(small_evalset), "--out", str(tmp_path / "r1"))
    for line in ("barcode decode rate", "barcode recall (by value)", "OCR character error rate",
                 "OCR exact-line recall", "latency ocr", "images/s", "run 1 stored"):
        assert line in out, out
    assert "checks: 16 labelled answers, none answered" in out  # the hook: no checks analyzer in this profile
    doc = json.loads((tmp_path / "r1" / "report.json").read_text())
    clean = doc["metrics"]["clean"]
    assert clean["barcodes"]["symbols"] == sum(len(i["barcodes"]) for i in json.loads(
        (small_evalset / "truth.json").read_text())["images"])
    assert clean["barcodes"]["decode_rate"] >= 0.95 and clean["barcodes"]["wrong_values"] == 0
    assert clean["text_lines"]["cer"] < 0.1 and clean["text_lines"]["exact_line_recall"] > 0.6
    assert [x["analyzer"] for x in doc["lineage"]] == ["barcode", "ocr"] and doc["lineage"][0]["version"]

    with session_scope(db_url) as s:
        run = s.get(EvalRun, 1)
        assert (run.profile, run.analyzers, run.images) == ("default", ["barcode", "ocr"], 8)
        assert run.metrics == doc["metrics"] and run.set_digest == doc["set"]["digest"]
        assert run.report_dir == str(tmp_path / "r1")
        assert len(s.execute(select(EvalImage).where(EvalImage.run_id == 1)).all()) == 8

    dom = open_in_chromium(tmp_path / "r1" / "report.html", tmp_path / "shot.png")
    assert 'data-plots="2"' in dom and 'data-plots-rendered="2"' in dom, dom[:400]
    with Image.open(tmp_path / "shot.png") as shot:
        pixels = np.asarray(shot.convert("RGB"))
    assert (np.abs(pixels.astype(int) - [29, 120, 230]).sum(axis=2) < 30).sum() > 2000  # the score bars are drawn

    run_cli("eval", str(small_evalset), "--out", str(tmp_path / "r2"))
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert again["metrics"] == doc["metrics"] and again["set"] == doc["set"] and again["images"] == doc["images"]
    assert "0 image(s) changed" in run_cli("diff", "eval:1", "eval:2")


def test_degrade_curves_per_metric(run_cli, small_evalset: Path, tmp_path: Path) -> None:
    out = run_cli("eval", str(small_evalset), "--profile", "codes", "--degrade", "blur,tilt", "--out", str(tmp_path / "d"))
    doc = json.loads((tmp_path / "d" / "report.json").read_text())
    degraded = doc["metrics"]["degraded"]
    assert set(degraded) == {"blur", "tilt"} and set(degraded["blur"]) == {"1", "2", "3"}
    assert degraded["blur"]["3"]["level"] == 3.0
    blur = [degraded["blur"][s]["barcodes"]["decode_rate"] for s in "123"]
    assert blur[2] < doc["metrics"]["clean"]["barcodes"]["decode_rate"]  # sigma 3 px blur costs reads
    assert "barcode decode rate under blur: 0:" in out
    page = (tmp_path / "d" / "report.html").read_text()
    assert page.count('data-plot="curve: ') == 3  # decode rate, recall, precision
    assert 'data-plots="5"' in page
