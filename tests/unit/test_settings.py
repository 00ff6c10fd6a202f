"""services.settings: ``VLWATCH_*`` variables read by each field's type, bounds and checks, every problem reported
at once naming its variable (secrets masked), and Python overrides read and checked alike."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from services.settings import Settings, SettingsError, load_settings


def test_variables_are_read_by_the_type_of_their_field() -> None:
    s = load_settings({"VLWATCH_DATA_DIR": "/srv/vlwatch", "VLWATCH_DATABASE_URL": "postgresql+psycopg://db/vlwatch",
                       "VLWATCH_LEASE_SECONDS": "30", "VLWATCH_MAX_ATTEMPTS": " 5 ", "VLWATCH_S3_SECURE": "on",
                       "VLWATCH_CONFIG": "site.yaml", "VLWATCH_VL2_PREFILL_CHUNK": "512",
                       "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "1, 2.5,,10 ",
                       "VLWATCH_OUTBOUND_ALLOW": "127.0.0.1/32, 10.0.0.0/8,"})
    assert s.data_dir == Path("/srv/vlwatch") and s.db_url == "postgresql+psycopg://db/vlwatch"
    assert s.lease_seconds == 30.0 and type(s.lease_seconds) is float
    assert s.max_attempts == 5 and type(s.max_attempts) is int
    assert s.s3_secure is True and s.config == Path("site.yaml") and s.vl2_prefill_chunk == 512
    assert s.webhook_retry_schedule == (1.0, 2.5, 10.0)
    assert s.outbound_allow == ("127.0.0.1/32", "10.0.0.0/8")


def test_other_variables_are_ignored() -> None:
    s = load_settings({"VLWATCH_NOT_A_SETTING": "x", "VLWATCH_TEST_REDIS_URL": "redis://h", "PATH": "/usr/bin",
                       "LEASE_SECONDS": "7"})
    assert s == Settings()


def test_unset_is_the_default() -> None:
    s = load_settings({"VLWATCH_DATA_DIR": "/srv/vlwatch"})
    assert (s.broker_url, s.bucket, s.lease_seconds, s.vl2_scheduler) == ("filesystem://", "vlwatch", 120.0, True)
    assert s.db_url == "sqlite:////srv/vlwatch/vlwatch.db" and s.broker_dir == Path("/srv/vlwatch/broker")
    assert s.webhook_retry_schedule == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0) and s.outbound_allow == ()


@pytest.mark.parametrize("text", ["1", "true", "True", "T", "yes", "Y", "on", "ON"])
def test_true_is_spelled_as_pydantic_spells_it(text: str) -> None:
    assert load_settings({"VLWATCH_S3_SECURE": text}).s3_secure is True


@pytest.mark.parametrize("text", ["0", "false", "FALSE", "f", "no", "N", "off", "Off"])
def test_false_is_spelled_as_pydantic_spells_it(text: str) -> None:
    assert load_settings({"VLWATCH_VL2_SCHEDULER": text}).vl2_scheduler is False


@pytest.mark.parametrize("text", ["maybe", "", "2", "enabled"])
def test_anything_else_is_not_a_boolean(text: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"VLWATCH_S3_SECURE: '{text}' is not a boolean")):
        load_settings({"VLWATCH_S3_SECURE": text})


def test_an_empty_optional_is_none() -> None:
    s = load_settings({"VLWATCH_REQUEUE_AFTER_SECONDS": "", "VLWATCH_VL2_PREFILL_CHUNK": "", "VLWATCH_CONFIG": "",
                       "VLWATCH_DATABASE_URL": "", "VLWATCH_TASK_HARD_TIME_LIMIT_SECONDS": "",
                       "VLWATCH_LEASE_SECONDS": "10"})
    assert (s.requeue_after_seconds, s.vl2_prefill_chunk, s.config, s.database_url) == (None, None, None, None)
    assert (s.requeue_after, s.reconcile_every, s.hard_time_limit) == (20.0, 2.5, 660.0)  # derived from the lease


def test_every_problem_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"VLWATCH_LEASE_SECONDS": "-3", "VLWATCH_MAX_ATTEMPTS": "many", "VLWATCH_BATCH_SIZE": "0",
                       "VLWATCH_VL2_MAX_NEW_TOKENS": "9000", "VLWATCH_WEBHOOK_RETRY_SCHEDULE": "5,soon",
                       "VLWATCH_REQUEUE_AFTER_SECONDS": "nan", "VLWATCH_WORKER_MAX_MEMORY_MB": "4.5"})
    assert str(err.value) == "\n  ".join([
        "invalid settings:",
        "VLWATCH_LEASE_SECONDS: must be greater than 0 (got -3.0)",
        "VLWATCH_REQUEUE_AFTER_SECONDS: must be greater than 0 (got nan)",
        "VLWATCH_MAX_ATTEMPTS: 'many' is not an integer",
        "VLWATCH_BATCH_SIZE: must be at least 1 (got 0)",
        "VLWATCH_WORKER_MAX_MEMORY_MB: '4.5' is not an integer",
        "VLWATCH_WEBHOOK_RETRY_SCHEDULE: 'soon' is not a number",
        "VLWATCH_VL2_MAX_NEW_TOKENS: must be at most 8192 (got 9000)",
    ])


@pytest.mark.parametrize(("env", "message"), [
    ({"VLWATCH_VL2_DTYPE": "fp8"}, "VLWATCH_VL2_DTYPE: unknown dtype 'fp8' (known: bfloat16, float16, float32)"),
    ({"VLWATCH_OUTBOUND_ALLOW": "10.0.0.0/8,intranet"}, "VLWATCH_OUTBOUND_ALLOW: 'intranet' is not a network"),
    ({"VLWATCH_TASK_TIME_LIMIT_SECONDS": "600", "VLWATCH_TASK_HARD_TIME_LIMIT_SECONDS": "600"},
     "VLWATCH_TASK_HARD_TIME_LIMIT_SECONDS: 600 must be above VLWATCH_TASK_TIME_LIMIT_SECONDS (600)"),
])
def test_the_checks_of_a_field_and_between_fields(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert message in str(err.value)


def test_a_secret_in_a_refused_value_is_masked() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"VLWATCH_OUTBOUND_ALLOW": "redis://:hunter2@cache:6379/0", "VLWATCH_S3_SECURE": "inv:hunter2@db"})
    assert "hunter2" not in str(err.value)
    assert "VLWATCH_OUTBOUND_ALLOW: 'redis://:***@cache:6379/0' is not a network" in str(err.value)
    assert "VLWATCH_S3_SECURE: 'inv:***@db' is not a boolean" in str(err.value)


def test_overrides_are_python_values_or_text_over_the_environment() -> None:
    s = load_settings({"VLWATCH_LEASE_SECONDS": "30", "VLWATCH_BUCKET": "from-env"}, lease_seconds=8,
                      max_attempts="7", s3_secure="yes", data_dir="/srv/x", outbound_allow=["127.0.0.1/32"],
                      webhook_retry_schedule=[1, 2], database_url=None)
    assert s.lease_seconds == 8.0 and type(s.lease_seconds) is float and s.bucket == "from-env"
    assert (s.max_attempts, s.s3_secure, s.data_dir) == (7, True, Path("/srv/x"))
    assert s.outbound_allow == ("127.0.0.1/32",) and s.webhook_retry_schedule == (1.0, 2.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_attempts", True, "True is not an integer"),
    ("max_attempts", 2.5, "2.5 is not an integer"),
    ("lease_seconds", None, "None is not a number"),
    ("lease_seconds", 0, "must be greater than 0 (got 0.0)"),
    ("data_dir", 3, "3 is not a path"),
    ("outbound_allow", "intranet", "'intranet' is not a network"),
])
def test_python_values_are_checked_like_the_environment_s(field: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"VLWATCH_{field.upper()}: {message}")):
        Settings(**{field: value})


def test_settings_are_frozen_and_replace_checks_again() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lease_seconds = 1.0  # type: ignore[misc]
    assert dataclasses.replace(s, lease_seconds="10").reconcile_every == 2.5
    with pytest.raises(SettingsError, match="VLWATCH_LEASE_SECONDS"):
        dataclasses.replace(s, lease_seconds=-1)
