"""`vlwatch purge` and `vlwatch forget` on PostgreSQL and SeaweedFS: the targeted images leave no rows, objects,
payloads, deliveries or snapshot links behind, and every other row and object is untouched (compared row by row
and key by key before and after)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml
from sqlalchemy import MetaData, create_engine, func, select, text, update

from services.config import parse_config
from services.db import get_engine, session_scope
from services.ingest.upload import md5_hex
from services.ingest.register import register_and_send
from services.schema import AuditEntry, Image, Job
from services.storage import ObjectInfo
from tests import images
from tests.ops.test_tokens import vlwatch
from tests.pipeline.conftest import app_env, runtime, settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.services
NOW = datetime.now(timezone.utc)


def config_text(target_url: str) -> str:
    return yaml.safe_dump({
        "profiles": {"codes": {"analyzers": ["barcode"]}, "cam": {"analyzers": ["vl2-ground"], "phrases": ["person"]}},
        "sources": {"dock": {"prefix": "dock/", "profile": "codes", "retain_days": 30},
                    "yard": {"prefix": "yard/", "profile": "codes"},
                    "gate": {"prefix": "gate/", "profile": "cam"}},
        "zones": {"door": {"source": "gate", "points": [[0, 0], [1, 0], [1, 1]], "normalised": True}},
        "rules": {"intruder": {"labels": ["person"], "zones": ["door"]}},
        "connectors": {"guard": {"kind": "security", "url": target_url}},
    })


def label(sku: str) -> bytes:
    return images.label_png(sku, qr=False)


class World:
    """Images of two sources run through the pipeline (in this process), their events fanned out to a webhook
    and a connector, security events with snapshot links in the target database."""

    def __init__(self, db_url: str, runtime: Any, target_url: str) -> None:
        from connectors.databases import sync_connectors
        from connectors.dispatch import dispatch_once
        from connectors.webhooks import add_subscription
        from connectors.security import SecurityConnector, events
        from workers.pipeline import run_batch

        self.db_url, self.store, self.target_url = db_url, runtime.store, target_url
        self.config = parse_config(config_text(target_url))
        runtime.config = self.config
        with session_scope(db_url) as s:
            add_subscription(s, "erp", "http://127.0.0.1:9/hook", ["*"])  # nothing listens: deliveries wait
            sync_connectors(s, {"guard": "security"})
        self.ids: dict[str, int] = {}
        for name, data in (("dock/old.png", label("WH-1")), ("dock/b.png", label("WH-2")), ("dock/c.png", label("WH-3")),
                           ("yard/a.png", label("WH-4")), ("dock/b.png#2", label("WH-5")), ("dock/c.png#2", label("WH-6")),
                           ("dock/notes.png", images.text_as_jpg())):
            key = name.split("#")[0]
            info = self.store.put(key, data, "image/png")
            (reg,) = register_and_send(db_url, self.config, self.store.bucket,
                                       [ObjectInfo(key, md5_hex(data), len(data), NOW, "image/png")], lambda *_: None)
            self.ids[name] = reg.image_id
            assert info.etag == md5_hex(data)
        with session_scope(db_url) as s:
            run_batch(runtime, list(s.scalars(select(Job.id))), 16)
        dispatch_once(db_url, (3600.0,), timeout=1.0)  # fan-out; the webhook attempt fails and waits an hour
        guard = SecurityConnector("guard", target_url, zones=[], rules=[])
        guard.migrate()
        with guard.engine.begin() as conn:  # the rows the connector writes: one per image, with a snapshot link
            conn.execute(events.delete())
            conn.execute(events.insert(), [
                {"rule": "intruder", "zone": "door", "dedupe_key": f"person|{i}", "label": "person", "image_id": i,
                 "box": "1,1,2,2", "score": 0.9, "severity": "high", "captured_at": NOW, "image_key": k.split("#")[0],
                 "snapshot_url": self.store.presigned_get(k.split("#")[0], timedelta(hours=1)),
                 "event_id": f"msg_{i}", "keep_rank": "9"} for k, i in self.ids.items()])
        guard.engine.dispose()

    def rows(self) -> dict[str, set]:
        """Every row of every table of the database, by table, as (primary key, (column, value) pairs); and the
        security events of the target database as (image id, key, link, rule)."""
        out: dict[str, set] = {}
        with get_engine(self.db_url).connect() as conn:
            meta = MetaData()
            meta.reflect(conn)
            for t in meta.sorted_tables:
                pk = list(t.primary_key.columns)[0].name
                out[t.name] = {(str(r[pk]), tuple(sorted((k, str(v)) for k, v in r.items())))
                               for r in conn.execute(select(t)).mappings()}
        engine = create_engine(self.target_url)
        with engine.connect() as conn:
            out["target:security_events"] = {tuple(str(v) for v in r) for r in conn.execute(
                text("SELECT image_id, image_key, snapshot_url, rule FROM security_events"))}
        engine.dispose()
        return out

    def objects(self) -> dict[str, str]:
        return {o.key: o.etag for o in self.store.list("")}

    def owned(self, image_ids: set[int]) -> dict[str, set[str]]:
        """Primary keys (as text) of the rows that belong to ``image_ids``, per table."""
        ids = ",".join(str(i) for i in image_ids)
        q = {
            "images": f"SELECT id FROM images WHERE id IN ({ids})",
            "jobs": f"SELECT id FROM jobs WHERE image_id IN ({ids})",
            "barcodes": f"SELECT id FROM barcodes WHERE image_id IN ({ids})",
            "outbox_events": f"SELECT e.id FROM outbox_events e JOIN jobs j ON j.id = e.job_id "
                             f"WHERE j.image_id IN ({ids})",
            "webhook_deliveries": f"SELECT d.id FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id "
                                  f"JOIN jobs j ON j.id = e.job_id WHERE j.image_id IN ({ids})",
            "connector_deliveries": f"SELECT d.id FROM connector_deliveries d JOIN outbox_events e ON "
                                    f"e.id = d.event_id JOIN jobs j ON j.id = e.job_id WHERE j.image_id IN ({ids})",
        }
        with get_engine(self.db_url).connect() as conn:
            return {t: {str(r[0]) for r in conn.execute(text(sql))} for t, sql in q.items()}

    def check_removed(self, before: dict[str, set], after: dict[str, set], gone: set[int],
                      owned: dict[str, set[str]]) -> None:
        """Exactly the rows ``owned`` by ``gone`` left (rows keyed by their first column, the id); nothing else
        changed except one new audit row; their snapshot links are cleared and no payload names them."""
        assert all(owned[t] for t in ("images", "jobs", "outbox_events", "webhook_deliveries",
                                      "connector_deliveries")), owned  # the world really had such rows
        for table in before:
            if table in ("audit_log", "target:security_events"):
                continue
            removed = {r[0] for r in before[table] - after[table]}
            assert removed == owned.get(table, set()), table
            assert after[table] <= before[table], table
        assert len(after["audit_log"]) == len(before["audit_log"]) + 1
        links = {r[0]: r for r in after["target:security_events"]}
        for r in before["target:security_events"]:
            if int(r[0]) in gone:
                assert links[r[0]][1:3] == ("None", "None")
            else:
                assert links[r[0]] == r
        def column(table: str, rows: set, name: str) -> list[str]:
            return [dict(pairs)[name] for _, pairs in rows]

        payloads = " ".join(column("outbox_events", after["outbox_events"], "payload"))
        keys_gone = set(column("images", {r for r in before["images"] if int(r[0]) in gone}, "key"))
        keys_kept = set(column("images", after["images"], "key"))
        assert keys_gone and not any(f"'key': '{k}'" in payloads for k in keys_gone - keys_kept)


@pytest.fixture
def world(db_url, runtime, target_url) -> World:  # noqa: ANN001
    return World(db_url, runtime, target_url)


def test_forget_a_key_removes_every_version_and_nothing_else(world: World, app_env, tmp_path) -> None:  # noqa: ANN001, F811
    (tmp_path / "vlwatch.yaml").write_text(config_text(world.target_url))
    env = {**app_env, "VLWATCH_DATABASE_URL": world.db_url, "VLWATCH_CONFIG": str(tmp_path / "vlwatch.yaml")}
    before, objects = world.rows(), world.objects()
    gone = {world.ids["dock/b.png"], world.ids["dock/b.png#2"]}
    owned = world.owned(gone)
    dry = vlwatch(env, "forget", "--source", "dock", "--key", "dock/b.png", "--dry-run").stdout
    assert '"images": 2' in dry and '"objects_deleted": 1' in dry and '"links_cleared": 2' in dry
    assert world.rows() == before and world.objects() == objects  # a dry run changes nothing
    out = vlwatch(env, "forget", "--source", "dock", "--key", "dock/b.png").stdout
    assert '"images": 2' in out
    world.check_removed(before, world.rows(), gone, owned)
    assert world.objects() == {k: v for k, v in objects.items() if k != "dock/b.png"}
    assert vlwatch(env, "forget", "--source", "yard", "--key", "dock/c.png").stdout.count('"images": 0') == 1
    with session_scope(world.db_url) as s:
        entry = s.execute(select(AuditEntry).where(AuditEntry.action == "forget")).scalar_one()
        assert (entry.source, entry.criteria, entry.counts["images"]) == ("dock", {"key": "dock/b.png"}, 2)
        assert entry.counts["deliveries"] == {"webhook": {"pending": 2}, "connector": {"pending": 2}}
        assert entry.counts["rows"]["barcodes"] == 2 and entry.counts["links_cleared"] == 2


def test_forget_before_a_time(world: World) -> None:
    from services.retention import forget

    with get_engine(world.db_url).begin() as conn:  # two dock images were taken long ago
        conn.execute(update(Image).where(Image.id.in_([world.ids["dock/old.png"], world.ids["dock/notes.png"]]))
                     .values(uploaded_at=NOW - timedelta(days=400)))
    before, objects = world.rows(), world.objects()
    gone = {world.ids["dock/old.png"], world.ids["dock/notes.png"]}
    owned = world.owned(gone)
    removal = forget(world.db_url, world.config, world.store, "dock", before=NOW - timedelta(days=365))
    assert removal.images == 2 and removal.objects_deleted == 2
    world.check_removed(before, world.rows(), gone, owned)
    assert world.objects() == {k: v for k, v in objects.items() if k not in ("dock/old.png", "dock/notes.png")}


def test_purge_keeps_newer_versions_and_sources_without_retention(world: World) -> None:
    from services.retention import purge

    old = NOW - timedelta(days=31)
    aged = [world.ids[k] for k in ("dock/old.png", "dock/c.png", "dock/b.png", "dock/b.png#2")]
    with get_engine(world.db_url).begin() as conn:
        conn.execute(update(Image).where(Image.id.in_([*aged, world.ids["yard/a.png"]])).values(uploaded_at=old))
    before, objects = world.rows(), world.objects()
    owned = world.owned(set(aged))
    assert purge(world.db_url, world.config, world.store, dry_run=True)["dock"].images == 4
    assert world.rows() == before
    done = purge(world.db_url, world.config, world.store)
    assert set(done) == {"dock"} and done["dock"].images == 4
    # dock/c.png's current version (#2) is recent: its object stays, only the old row goes
    assert (done["dock"].objects_deleted, done["dock"].objects_kept) == (2, 1)
    world.check_removed(before, world.rows(), set(aged), owned)
    assert world.objects() == {k: v for k, v in objects.items() if k not in ("dock/old.png", "dock/b.png")}
    with session_scope(world.db_url) as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 3  # c.png#2, notes.png, yard/a.png
        entry = s.execute(select(AuditEntry).where(AuditEntry.action == "purge")).scalar_one()
        assert entry.source == "dock" and entry.criteria["retain_days"] == 30
    assert purge(world.db_url, world.config, world.store)["dock"].images == 0  # idempotent
