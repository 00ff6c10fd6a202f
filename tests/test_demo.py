"""The README's first command: `vlwatch demo` on the embedded default (SQLite, folder store, folder broker,
in-process worker), nothing else running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_processes_the_samples_and_verifies_webhooks(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, not whichever one the environment has installed
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "services", "demo", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = json.loads((ROOT / "samples" / "expected.json").read_text())
    text = proc.stdout
    for name, facts in expected.items():
        assert f"demo/{name}" in text
        for value in facts.get("barcodes", []):
            assert value in text, f"barcode {value} of {name} missing from the table"
    pngs = sorted((out / "annotated").glob("*.png"))
    assert len(pngs) == len(expected)
    assert f"verified {len(expected)} signed event(s)" in text
    assert (out / "vlwatch.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # everything it writes is under --out
