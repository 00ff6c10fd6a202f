"""Settings and the YAML file are validated at start-up with errors that name the field."""

from __future__ import annotations

import pytest
import yaml

from services.config import ConfigError, load_config, parse_config
from services.settings import SettingsError, load_settings

GOOD = """
profiles:
  shelf: {analyzers: [barcode, ocr]}
  dock: {analyzers: [vl2-ground], phrases: [pallet, forklift]}
sources:
  aisle-7: {prefix: "aisle-7/", profile: shelf}
  aisle-7-top: {prefix: "aisle-7/top/", profile: dock}
webhooks:
  - {name: erp, url: "http://127.0.0.1:8080/hook", events: [job.succeeded]}
"""


def test_good_config_routes_keys_by_longest_prefix():
    cfg = parse_config(GOOD)
    assert cfg.source_for_key("aisle-7/top/cam.jpg") == "aisle-7-top"
    assert cfg.source_for_key("aisle-7/x.jpg") == "aisle-7"
    assert cfg.source_for_key("elsewhere/x.jpg") is None
    assert cfg.profiles["dock"].queue_name == "gpu" and cfg.profiles["shelf"].queue_name == "cpu"
    assert cfg.with_source("adhoc").sources["adhoc"].prefix == "adhoc/"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("profiles: {p: {analyzers: [barcode, vl3]}}", "profiles.p.analyzers: Value error, unknown analyzer 'vl3'"),
        ("profiles: {p: {analyzers: []}}", "profiles.p.analyzers"),
        ("profiles: {p: {analyzers: [vl2-ground]}}", "vl2-ground needs at least one phrase"),
        ("sources: {cam: {profile: nope}}", "sources.cam.profile: unknown profile 'nope'"),
        ("sources: {cam: {profile: default, color: red}}", "sources.cam.color"),
        ("webhooks: [{name: a, url: 'ftp://x'}]", "webhooks[0].url"),
        ("webhooks: [{name: a, url: 'http://x', events: [job.exploded]}]", "unknown event type 'job.exploded'"),
        ("webhooks: [{name: a, url: 'http://x', secret: plain}]", "webhooks[0].secret"),
        ("webhooks: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]", "duplicate name 'a'"),
        ("[1, 2]", "the top level must be a mapping"),
        ("profiles: {p: [", "not valid YAML"),
    ],
)
def test_bad_config_names_the_field(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "site.yaml")
    assert str(err.value).startswith("site.yaml: ")
    assert message.replace("Value error, ", "") in str(err.value)


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_settings_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("VLWATCH_LEASE_SECONDS", "-3")
    monkeypatch.setenv("VLWATCH_MAX_ATTEMPTS", "many")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "VLWATCH_LEASE_SECONDS" in str(err.value) and "VLWATCH_MAX_ATTEMPTS" in str(err.value)


def test_settings_defaults_are_the_embedded_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for k in ("VLWATCH_DATABASE_URL", "VLWATCH_BROKER_URL", "VLWATCH_S3_ENDPOINT", "VLWATCH_DATA_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("VLWATCH_WEBHOOK_RETRY_SCHEDULE", "1,2.5,10")
    s = load_settings()
    assert s.db_url == f"sqlite:///{tmp_path / 'vlwatch-data' / 'vlwatch.db'}"
    assert s.broker_url == "filesystem://" and s.s3_endpoint is None
    assert s.webhook_retry_schedule == (1.0, 2.5, 10.0)


SITE = GOOD + """
locations:
  aisle-7: {site: dc-north, aisle: "7", bay: "03"}
zones:
  dock-door: {source: aisle-7-top, points: [[0, 0], [0.5, 0], [0.5, 1]], normalised: true}
rules:
  forklift-at-night: {labels: [forklift], zones: [dock-door], windows: ["22:00-06:00", "12:00-24:00"],
                      min_score: 0.5, cooldown_seconds: 300, severity: high}
connectors:
  stock: {kind: inventory, url: "postgresql+psycopg://inv@127.0.0.1/inventory", sku_patterns: ["SKU-(\\\\d{6})"]}
  guard: {kind: security, url: "mysql+pymysql://sec@127.0.0.1/security", timezone: Europe/Berlin}
"""


def test_site_config_builds_the_connectors():
    from datetime import time

    from connectors.inventory import InventoryConnector
    from connectors.registry import build_connectors
    from connectors.security import SecurityConnector

    cfg = parse_config(SITE)
    built = build_connectors(cfg)
    stock, guard = built["stock"], built["guard"]
    assert isinstance(stock, InventoryConnector) and isinstance(guard, SecurityConnector)
    assert stock.locations["aisle-7"].site == "dc-north" and stock._codes("x SKU-123456 y") == ["123456"]
    [rule] = guard.rules
    assert rule.windows == ((time(22), time(6)), (time(12), time(0))) and rule.cooldown_s == 300
    assert guard.timezone == "Europe/Berlin" and [z.name for z in guard.zones] == ["dock-door"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("zones: {z: {source: aisle-7, points: [[0, 0], [1, 1]]}}", "zones.z.points: Value error, a zone needs at "
                                                                    "least three points, got 2"),
        ("zones: {z: {source: nowhere, points: [[0, 0], [1, 1], [1, 0]]}}", "zones.z.source: unknown source 'nowhere'"),
        ("zones: {z: {source: aisle-7, points: [[0, 0], [2, 1], [1, 0]], normalised: true}}", "must lie in 0..1"),
        ("rules: {r: {labels: [forklfit], zones: [dock-door]}}",
         "rules.r.labels[0]: unknown label 'forklfit' (labels the zones' sources ground: forklift, pallet)"),
        ("rules: {r: {labels: [forklift], zones: [gate]}}", "rules.r.zones[0]: unknown zone 'gate'"),
        ("rules: {r: {labels: [forklift], zones: [dock-door], windows: ['22-06']}}", "expected HH:MM-HH:MM"),
        ("rules: {r: {labels: [forklift], zones: [dock-door], severity: apocalyptic}}", "unknown severity"),
        ("connectors: {c: {kind: ledger, url: 'postgresql://x/y'}}", "connectors.c.kind"),
        ("connectors: {c: {kind: inventory, url: 'not a url'}}", "connectors.c.url: Value error, not a database URL"),
        ("connectors: {c: {kind: inventory, url: 'sqlite:///x.db'}}", "unsupported target database 'sqlite'"),
        ("connectors: {c: {kind: inventory, url: 'postgresql://x/y', sku_patterns: ['(']}}", "connectors.c.sku_patterns"),
        ("connectors: {c: {kind: security, url: 'postgresql://x/y', timezone: Mars/Olympus}}", "unknown time zone"),
        ("connectors: {c: {kind: security, url: 'postgresql://x/y', rules: [nope]}}", "connectors.c.rules[0]: unknown rule"),
        ("locations: {nowhere: {site: s}}", "locations.nowhere: unknown source"),
    ],
)
def test_bad_site_config_names_the_field(change, message):
    base = yaml.safe_load(SITE)
    base.update(yaml.safe_load(change))
    with pytest.raises(ConfigError) as err:
        parse_config(yaml.safe_dump(base), "site.yaml")
    assert message.replace("Value error, ", "") in str(err.value)


def test_profile_options_per_analyzer():
    cfg = parse_config(yaml.safe_dump({"profiles": {
        "v1": {"analyzers": ["barcode", "vl2-ground"], "phrases": ["pallet"],
               "options": {"barcode": {"scene_pass": False}, "vl2-ground": {"max_new_tokens": 64}}}}}))
    p = cfg.profiles["v1"]
    assert p.analyzer_options("barcode") == {"scene_pass": False}
    assert p.analyzer_options("vl2-ground") == {"max_new_tokens": 64, "phrases": ["pallet"]}
    with pytest.raises(ConfigError, match=r"profiles\.v1: .*options\.ocr: the profile does not run analyzer 'ocr'"):
        parse_config(yaml.safe_dump({"profiles": {"v1": {"analyzers": ["barcode"], "options": {"ocr": {}}}}}))
