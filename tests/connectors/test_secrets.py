"""Credentials in webhook and connector URLs are never printed: `webhooks add/list`, configuration errors,
`connectors check/status`, `dispatch`'s refusals and stored errors show them masked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import select

from services.cli.main import main as vlwatch
from services.db import session_scope
from services.events import event_row
from services.safetext import mask_secrets
from services.schema import ConnectorDelivery, ConnectorTarget, OutboxEvent, utcnow
from tests.connectors.tcpproxy import closed_port

SECRET = "hunter2"


def run(env: dict[str, str], *args: str) -> Result:
    res = CliRunner().invoke(vlwatch, list(args), env={"VLWATCH_OUTBOUND_ALLOW": "", "VLWATCH_CONFIG": None, **env})
    assert SECRET not in res.output, res.output
    return res


def test_mask_secrets_masks_passwords_and_secret_parameters_only():
    assert mask_secrets("postgresql+psycopg://inv:hunter2@db/inventory") == "postgresql+psycopg://inv:***@db/inventory"
    assert mask_secrets("mysql://u:p@ss@h/db") == "mysql://u:***@h/db"  # an unescaped @ in the password
    assert mask_secrets("https://h.example/in?token=abc&x=1&api_key=z#f") == \
        "https://h.example/in?token=***&x=1&api_key=***#f"
    assert mask_secrets("see https://u:pw@a.example/x and https://b.example/y") == \
        "see https://u:***@a.example/x and https://b.example/y"
    for plain in ("postgresql://inv@db/inventory", "https://a.example/path@v2", "user@example.com"):
        assert mask_secrets(plain) == plain


@pytest.mark.services
def test_webhooks_add_and_list_mask_url_credentials(db_url: str):
    env = {"VLWATCH_DATABASE_URL": db_url}
    url = f"https://erp:{SECRET}@hooks.example.com/in?token={SECRET}&site=7"
    res = run(env, "webhooks", "add", "erp", url)
    assert res.exit_code == 0, res.output
    assert "added erp -> https://erp:***@hooks.example.com/in?token=***&site=7" in res.output
    listing = run(env, "webhooks", "list")
    assert listing.exit_code == 0 and "https://erp:***@hooks.example.com/in?token=***&site=7" in listing.output
    refused = run(env, "webhooks", "add", "inside", f"http://admin:{SECRET}@127.0.0.1:6379/")
    assert refused.exit_code != 0 and "http://admin:***@127.0.0.1:6379/: refused" in refused.output
    bad = run(env, "webhooks", "add", "bad", f"ftp://u:{SECRET}@h/", "--secret", SECRET)
    assert bad.exit_code != 0 and "url: must start with http://" in bad.output and "secret: must start" in bad.output


def test_configuration_errors_mask_url_credentials(tmp_path: Path):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"connectors": {"stock": {
        "kind": "inventory", "url": f"postgresql+psycopg://inv:{SECRET}@db:port/inventory"}}}))
    res = run({"VLWATCH_CONFIG": str(cfg)}, "connectors", "check")
    assert res.exit_code != 0 and "connectors.stock.url: not a database URL" in res.output
    cfg.write_text(f"connectors:\n  stock: {{kind: inventory, url: 'postgresql://inv:{SECRET}@db/x'\n")
    res = run({"VLWATCH_CONFIG": str(cfg)}, "connectors", "check")
    assert res.exit_code != 0 and "not valid YAML" in res.output


@pytest.mark.services
def test_connectors_check_and_dispatch_mask_url_credentials(db_url: str, tmp_path: Path):
    cfg = tmp_path / "site.yaml"
    target = f"postgresql+psycopg://inv:{SECRET}@127.0.0.1:{closed_port()}/inv"
    cfg.write_text(yaml.safe_dump({"connectors": {"stock": {"kind": "inventory", "url": target}},
                                   "webhooks": [{"name": "in", "url": f"http://a:{SECRET}@10.0.0.7/x"}]}))
    env = {"VLWATCH_DATABASE_URL": db_url, "VLWATCH_CONFIG": str(cfg)}
    res = run(env, "connectors", "check")
    assert res.exit_code == 1 and "connectors.stock.url: refused: 127.0.0.1 is a loopback address" in res.output
    res = run({**env, "VLWATCH_OUTBOUND_ALLOW": "127.0.0.0/8"}, "connectors", "check")
    assert res.exit_code == 1 and "cannot connect to postgresql+psycopg://inv:***@127.0.0.1" in res.output
    res = run(env, "dispatch")
    assert res.exit_code != 0 and "webhooks[0].url: refused: 10.0.0.7 is a private address" in res.output


@pytest.mark.services
def test_connectors_status_masks_stored_errors(db_url: str, tmp_path: Path):
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"connectors": {"stock": {"kind": "inventory",
                                                            "url": "postgresql+psycopg://inv@127.0.0.1/inv"}}}))
    env = {"VLWATCH_DATABASE_URL": db_url, "VLWATCH_CONFIG": str(cfg)}
    assert run(env, "connectors", "status").exit_code == 0  # the connectors table follows the file
    with session_scope(db_url) as s:  # an error stored before errors were masked
        event = OutboxEvent(**event_row("job.succeeded", None, {}))
        s.add(event)
        s.flush()
        connector = s.scalars(select(ConnectorTarget)).one()
        s.add(ConnectorDelivery(event_id=event.id, connector_id=connector.id, status="pending", attempts=1,
                                next_attempt_at=utcnow(), last_attempt_at=utcnow(),
                                last_error=f"could not reach postgresql://inv:{SECRET}@10.0.0.9/inv"))
    for args in (("connectors", "status"), ("connectors", "status", "--json")):
        res = run(env, *args)
        assert res.exit_code == 0 and "postgresql://inv:***@10.0.0.9/inv" in res.output
