"""Checks and VL2 settings in the YAML file: the examples of docs/checks.md load as written, errors name the field,
and a worker's analyzer options take the profile's ``vl2:`` over its own ``VLWATCH_VL2_*``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.config import ConfigError, parse_config
from services.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]

# The issue's example, exactly as written, under a profile.
ISSUE = """
profiles:
  dock:
    analyzers: [vl2-ground]
    phrases: [pallet]
    checks:
      fire-exit-clear: {question: "Is the fire exit blocked by any object?", kind: yes_no, expect: "no", severity: high}
      pallets-on-dock: {question: "How many pallets are on the dock?", kind: number, expect: {max: 12}}
      dock-door:       {question: "Is the dock door open or closed?", kind: choice, choices: [open, closed]}
      summary:         {question: "Describe anything unsafe in this image.", kind: text, grounded: true}
"""


def test_issue_example_loads_as_written():
    dock = parse_config(ISSUE).profiles["dock"]
    assert dock.analyzers == ("vl2-ground", "vl2-ask") and dock.queue_name == "gpu"
    checks = dock.checks
    assert list(checks) == ["fire-exit-clear", "pallets-on-dock", "dock-door", "summary"]
    assert checks["fire-exit-clear"].expect == {"equals": False} and checks["fire-exit-clear"].severity == "high"
    assert checks["pallets-on-dock"].expect == {"max": 12}
    assert checks["dock-door"].choices == ("open", "closed") and checks["dock-door"].expect is None
    assert checks["summary"].grounded and checks["summary"].severity == "warning"


def test_checks_alone_make_a_vl2_ask_profile():
    cfg = parse_config("profiles: {gate: {checks: {vest: {question: 'Is anyone without a hi-vis vest?', "
                       "kind: yes_no, expect: no}}}}")
    assert cfg.profiles["gate"].analyzers == ("vl2-ask",)
    assert cfg.profiles["gate"].checks["vest"].expect == {"equals": False}  # YAML's bare no is false


def _docs_yaml() -> list[str]:
    blocks = []
    for doc in ("docs/checks.md", "README.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        blocks += [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "checks" in b]
    return blocks


@pytest.mark.parametrize("block", _docs_yaml(), ids=lambda b: b.split("\n", 1)[0][:40])
def test_docs_examples_load(block: str):
    cfg = parse_config(block, "docs")
    assert any(p.checks for p in cfg.profiles.values())


def test_the_docs_have_examples():
    assert len(_docs_yaml()) >= 2


P = "profiles.dock.checks.c"


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("{question: 'How many?', kind: count}", "profiles.dock.checks.c.kind: unknown kind 'count' (known: yes_no, "
                                                 "number, choice, text)"),
        ("{question: 'Open?', kind: yes_no, expect: maybe}", f"{P}.expect: a yes_no check expects \"yes\" or \"no\""),
        ("{question: 'How many?', kind: number, expect: {max: 2, min: 5}}", f"{P}.expect: min 5 is above max 2"),
        ("{question: 'How many?', kind: number, expect: {most: 2}}", f"{P}.expect: a number check expects"),
        ("{question: 'How many?', kind: number, expect: lots}", f"{P}.expect: a number check expects"),
        ("{question: 'Door?', kind: choice, choices: [open, closed], expect: ajar}",
         f"{P}.expect: 'ajar' is not one of the choices (open, closed)"),
        ("{question: 'Door?', kind: choice, choices: [open]}", f"{P}: choices: a choice check needs at least two"),
        ("{question: 'Door?', kind: choice}", f"{P}: choices: a choice check needs at least two"),
        ("{question: 'Door?', kind: choice, choices: [Open, open]}", f"{P}.choices: choices must differ"),
        ("{question: 'Door?', kind: yes_no, choices: [open, closed]}", f"{P}.choices: only a choice check has choices"),
        ("{question: 'Describe.', kind: text, expect: fine}", f"{P}.expect: a text check has no expected answer"),
        ("{question: 'Is <image> there?', kind: yes_no}", "must not contain markup"),
        ("{question: '', kind: yes_no}", f"{P}.question"),
        ("{question: 'Open?', kind: yes_no, severity: doom}", f"{P}.severity: unknown severity 'doom'"),
        ("{question: 'Open?', kind: yes_no, colour: red}", f"{P}.colour"),
    ],
)
def test_bad_check_names_the_field(check: str, message: str):
    with pytest.raises(ConfigError) as err:
        parse_config(f"profiles: {{dock: {{checks: {{c: {check}}}}}}}", "site.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("{checks: {'bad name': {question: 'Open?', kind: yes_no}}}", "profiles.dock.checks: Value error, check name "
                                                                       "'bad name'"),
        ("{analyzers: [vl2-ask]}", "vl2-ask needs at least one check in 'checks'"),
        ("{analyzers: [vl2-ocr], vl2: {dtype: fp8}}", "profiles.dock.vl2.dtype: Value error, unknown dtype 'fp8'"),
        ("{analyzers: [vl2-ocr], vl2: {max_new_tokens: 0}}", "profiles.dock.vl2.max_new_tokens"),
        ("{analyzers: [vl2-ocr], vl2: {images_per_batch: -1}}", "profiles.dock.vl2.images_per_batch"),
        ("{analyzers: [vl2-ocr], vl2: {prefill_chunk: 4}}", "profiles.dock.vl2.prefill_chunk"),
        ("{analyzers: [vl2-ocr], vl2: {batch: 4}}", "profiles.dock.vl2.batch"),
    ],
)
def test_bad_profile_names_the_field(profile: str, message: str):
    with pytest.raises(ConfigError) as err:
        parse_config(f"profiles: {{dock: {profile}}}", "site.yaml")
    assert message.replace("Value error, ", "") in str(err.value)


RULES = ISSUE + """
sources:
  dock-cam: {prefix: "dock/", profile: dock}
zones:
  door: {source: dock-cam, points: [[0, 0], [1, 0], [1, 1]], normalised: true}
"""


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("{r: {checks: [fire-exit-claer]}}", "rules.r.checks[0]: unknown check 'fire-exit-claer' (checks configured: "
                                             "dock-door, fire-exit-clear, pallets-on-dock, summary)"),
        ("{r: {checks: [summary], zones: [door]}}", "a rule on checks alone has no zones"),
        ("{r: {labels: [pallet]}}", "zones: a rule on labels needs at least one zone"),
        ("{r: {windows: ['22:00-06:00']}}", "a rule needs labels (seen in zones) or checks"),
    ],
)
def test_bad_rule_names_the_field(rules: str, message: str):
    with pytest.raises(ConfigError) as err:
        parse_config(RULES + f"rules: {rules}\n", "site.yaml")
    assert message in str(err.value)


def test_rule_on_checks_and_labels_builds_the_security_rule():
    from connectors.registry import build_connectors

    cfg = parse_config(RULES + """
rules:
  exit-blocked: {checks: [fire-exit-clear], windows: ["22:00-06:00"], cooldown_seconds: 600}
  pallet-at-door: {labels: [pallet], zones: [door], checks: [pallets-on-dock]}
connectors:
  guard: {kind: security, url: "postgresql+psycopg://sec@127.0.0.1/security"}
""")
    rules = {r.name: r for r in build_connectors(cfg)["guard"].rules}
    assert rules["exit-blocked"].checks == ("fire-exit-clear",) and rules["exit-blocked"].labels == ()
    assert rules["pallet-at-door"].checks == ("pallets-on-dock",) and rules["pallet-at-door"].zones == ("door",)


def test_check_failed_is_an_event_type_subscribers_can_name():
    cfg = parse_config("webhooks: [{name: ops, url: 'http://127.0.0.1:9/h', events: [check.failed]}]")
    assert cfg.webhooks[0].events == ("check.failed",)
    assert "check.failed" in parse_config("webhooks: [{name: a, url: 'http://x'}]").webhooks[0].events


def test_vl2_settings_profile_over_worker(monkeypatch):
    from workers.runtime import Runtime

    monkeypatch.setenv("VLWATCH_VL2_MAX_NEW_TOKENS", "100")
    monkeypatch.setenv("VLWATCH_VL2_IMAGES_PER_BATCH", "3")
    monkeypatch.setenv("VLWATCH_VL2_DTYPE", "float16")
    cfg = parse_config(ISSUE + """
  fast: {analyzers: [vl2-ocr], vl2: {max_new_tokens: 24, prefill_chunk: 256, dtype: float32}}
""")
    rt = Runtime(load_settings(vl2_device="cpu"), cfg, store=None)
    fast, dock = rt.analyzer_options("vl2-ocr", cfg.profiles["fast"]), rt.analyzer_options("vl2-ask", cfg.profiles["dock"])
    assert {k: fast[k] for k in ("max_new_tokens", "images_per_batch", "prefill_chunk", "dtype", "device")} == {
        "max_new_tokens": 24, "images_per_batch": 3, "prefill_chunk": 256, "dtype": "float32", "device": "cpu"}
    assert (dock["max_new_tokens"], dock["dtype"], dock["prefill_chunk"]) == (100, "float16", None)
    assert [c["name"] for c in dock["checks"]] == list(cfg.profiles["dock"].checks)
    assert rt.analyzer_options("vl2-ground", cfg.profiles["dock"])["phrases"] == ["pallet"]


@pytest.mark.parametrize(("var", "value"), [("VLWATCH_VL2_DTYPE", "fp8"), ("VLWATCH_VL2_MAX_NEW_TOKENS", "0"),
                                            ("VLWATCH_VL2_IMAGES_PER_BATCH", "none"),
                                            ("VLWATCH_VL2_PREFILL_CHUNK", "8"), ("VLWATCH_VL2_GPU_MEMORY", "10 gigs"),
                                            ("VLWATCH_VL2_MAX_BATCH", "0"), ("VLWATCH_VL2_SCHEDULER", "maybe")])
def test_worker_vl2_settings_are_validated_at_start(monkeypatch, var: str, value: str):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_issue_yaml_block_is_valid_yaml_with_the_exact_keys():
    raw = yaml.safe_load(ISSUE)["profiles"]["dock"]["checks"]
    assert raw["fire-exit-clear"]["expect"] == "no"  # quoted in the issue: a string, read as no
