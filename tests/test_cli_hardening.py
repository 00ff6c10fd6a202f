"""The CLI's errors are messages a person can act on, never tracebacks, and never show a secret. Run as
separate processes in an empty folder with the embedded default (SQLite, local store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def vlwatch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_")}
    environ.update({"VLWATCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT), **env})
    return subprocess.run([sys.executable, "-m", "services", *args], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=120)


def _clean_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    for w in words:
        assert w in out, out
    return out


def test_jobs_on_a_fresh_machine_says_to_migrate(tmp_path: Path) -> None:
    _clean_error(vlwatch(tmp_path, "jobs"), "vlwatch db upgrade")
    (tmp_path / "data").mkdir()  # the folder exists, the database file is empty
    _clean_error(vlwatch(tmp_path, "jobs"), "no vlwatch tables", "vlwatch db upgrade")
    assert vlwatch(tmp_path, "db", "upgrade").returncode == 0
    assert vlwatch(tmp_path, "jobs").returncode == 0


def test_out_of_range_limit_is_a_usage_error(tmp_path: Path) -> None:
    assert vlwatch(tmp_path, "db", "upgrade").returncode == 0
    proc = vlwatch(tmp_path, "jobs", "--limit", "99999999999999999999")
    assert proc.returncode == 2
    _clean_error(proc, "--limit", "not in the range")


def test_replay_since_not_a_date_is_a_usage_error(tmp_path: Path) -> None:
    _clean_error(vlwatch(tmp_path, "webhooks", "replay", "--since", "not-a-date"), "not an ISO time")


def test_unreachable_database_names_what_to_check_without_its_password(tmp_path: Path) -> None:
    out = _clean_error(vlwatch(tmp_path, "jobs", VLWATCH_DATABASE_URL="postgresql+psycopg://app:hunter2@127.0.0.1:9/x"),
                       "VLWATCH_DATABASE_URL")
    assert "hunter2" not in out


def test_config_errors_do_not_show_passwords(tmp_path: Path) -> None:
    cfg = tmp_path / "vlwatch.yaml"
    cfg.write_text('connectors: {stock: {kind: inventory, url: "inv:hunter2@db/inventory"}}\n')
    out = _clean_error(vlwatch(tmp_path, "connectors", "check", VLWATCH_CONFIG=str(cfg)), "connectors.stock.url")
    assert "hunter2" not in out
    cfg.write_text('webhooks: [{name: a, url: "ftp://u:hunter2@hooks.example/in"}]\n')
    out = _clean_error(vlwatch(tmp_path, "connectors", "check", VLWATCH_CONFIG=str(cfg)), "webhooks[0].url")
    assert "hunter2" not in out


def test_demo_refuses_to_delete_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"irreplaceable")
    _clean_error(vlwatch(tmp_path, "demo", "--out", str(precious)), "not a folder `vlwatch demo` made")
    assert (precious / "holiday.jpg").read_bytes() == b"irreplaceable"
    (tmp_path / "a-file").write_text("x")
    _clean_error(vlwatch(tmp_path, "demo", "--out", str(tmp_path / "a-file")), "is a file")


@pytest.mark.parametrize("folder", ["empty", "earlier-demo"])
def test_demo_accepts_an_empty_folder_or_its_own(tmp_path: Path, folder: str) -> None:
    from services.cli.demo import MARKER, _fresh_folder

    out = tmp_path / folder
    out.mkdir()
    if folder == "earlier-demo":
        (out / MARKER).write_text("")
        (out / "vlwatch.db").write_text("old")
    _fresh_folder(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def _imports(tmp_path: Path, args: list[str], packages: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``vlwatch ARGS`` in a process of its own, which exits with status 1 naming the modules of ``packages`` it
    imported, 0 when none."""
    code = ("import sys; from services.cli import main\n"
            f"try: main({args!r}, prog_name='vlwatch')\n"
            "except SystemExit: pass\n"
            f"sys.exit(sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {packages!r}))"
            " or 0)")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_")}
    environ.update({"VLWATCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)})
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args", [["--help"], ["jobs", "--help"], ["db", "--help"], ["jobs", "--limit", "0"]])
def test_help_and_usage_errors_import_no_sql_library(tmp_path: Path, args: list[str]) -> None:
    """Only a command that runs SQL pays for SQLAlchemy's import (issue 12: quick commands start in 0.4 s of CPU)."""
    proc = _imports(tmp_path, args, ("sqlalchemy", "pydantic"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_jobs_on_sqlite_imports_neither_pydantic_nor_the_postgresql_dialect(tmp_path: Path) -> None:
    """The settings need no pydantic, and the models load no SQL dialect: the indexes with PostgreSQL options are
    declared for DDL only (services/schema_ddl.py). Issue 12: `vlwatch jobs` starts in 0.4 s of CPU."""
    assert vlwatch(tmp_path, "db", "upgrade").returncode == 0
    proc = _imports(tmp_path, ["jobs"], ("pydantic", "sqlalchemy.dialects.postgresql"))
    assert proc.returncode == 0 and "queued=0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
