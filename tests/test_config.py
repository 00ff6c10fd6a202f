"""Settings and the YAML file are validated at start-up with errors that name the field."""

from __future__ import annotations

import pytest

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
