"""Connectors as an operator runs them: YAML targets, `vlwatch connectors check|migrate|status|replay`, and
`vlwatch dispatch` applying real job results to an inventory database on MariaDB, with one unreachable target
that holds its own deliveries pending without blocking the other."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from services.db import session_scope
from services.queries import job_counts
from tests import images
from tests.connectors.tcpproxy import closed_port
from tests.pipeline.conftest import CONFIG, wait_for
from tests.pipeline.test_cli import vlwatch

pytestmark = [pytest.mark.services, pytest.mark.mariadb]


def test_connectors_from_the_command_line(app_env, db_url, start_worker, mariadb_url, tmp_path: Path):
    target = "mysql+pymysql://" + mariadb_url[len("mysql://"):] if mariadb_url.startswith("mysql://") else mariadb_url
    engine = create_engine(target)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS inventory_observations"))
        conn.execute(text("DROP TABLE IF EXISTS inventory_stock"))
    cfg = {**CONFIG,
           "locations": {"shelf": {"site": "dc-north", "aisle": "7", "bay": "03"}},
           "connectors": {"stock": {"kind": "inventory", "url": target},
                          "offline": {"kind": "inventory",
                                      "url": f"postgresql+psycopg://nobody@127.0.0.1:{closed_port()}/inv"}}}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(cfg))
    env = {**app_env, "VLWATCH_CONFIG": str(tmp_path / "site.yaml")}

    proc = vlwatch(env, "connectors", "check", ok=False)
    assert proc.returncode == 1
    assert "connectors.stock.url: reachable, but table(s) inventory_observations, inventory_stock missing" in proc.stderr
    assert "connectors.offline.url: cannot connect to postgresql+psycopg://nobody@127.0.0.1:" in proc.stderr
    assert "stock: target schema ready" in vlwatch(env, "connectors", "migrate", "stock").stdout
    proc = vlwatch(env, "connectors", "check", ok=False)
    assert "stock: ok (inventory)" in proc.stdout and "connectors.offline.url" in proc.stderr

    start_worker()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(images.label_png("WH-51001"))
    (folder / "b.png").write_bytes(images.label_png("WH-51002", qr=False))
    t0 = datetime.now(timezone.utc) - timedelta(seconds=5)
    vlwatch(env, "upload", str(folder), "--source", "shelf")

    def done() -> bool:
        with session_scope(db_url) as s:
            return job_counts(s)["succeeded"] == 2

    wait_for(done, 120, "both jobs")
    vlwatch(env, "dispatch")  # one round: the reachable target gets both events, the offline one retries
    with engine.connect() as conn:
        stock = conn.execute(text("SELECT site, aisle, bay, sku, image_key FROM inventory_stock ORDER BY sku")).all()
    # Code128 and OCR read the label's code; a.png's QR code carries a URL, which is a code of its own.
    assert {tuple(r[:4]) for r in stock} == {("dc-north", "7", "03", "WH-51001"), ("dc-north", "7", "03", "WH-51002"),
                                            ("dc-north", "7", "03", "https://wh.example/sku/WH-51001")}
    assert {r.sku: r.image_key for r in stock}["WH-51002"] == "shelf/b.png"

    out = vlwatch(env, "connectors", "status").stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(" ")}
    assert "delivered=2" in lines["stock"] and "dead=0" in lines["stock"]
    assert "pending=2" in lines["offline"] and "delivered=0" in lines["offline"]
    assert "last error:" in out and "connection" in out.lower()

    out = vlwatch(env, "connectors", "replay", "--since", t0.isoformat(), "--name", "stock").stdout
    assert "2 connector delivery(ies) due again" in out
    vlwatch(env, "dispatch")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM inventory_stock")).scalar() == 3  # nothing duplicated

    bad = {**cfg, "zones": {"door": {"source": "dock", "points": [[0, 0], [10, 0]]}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = vlwatch({**env, "VLWATCH_CONFIG": str(tmp_path / "bad.yaml")}, "connectors", "status", ok=False)
    assert proc.returncode != 0 and "zones.door.points" in proc.stderr and "at least three points" in proc.stderr
    engine.dispose()
