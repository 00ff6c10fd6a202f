"""CPU time of CLI start-up: ``vlwatch --help`` and ``vlwatch jobs`` against a bare ``python -c pass`` and the
imports every command that reads SQL pays for, measured in one run.

    .venv/bin/python bench/cli_start.py [--runs 7] [--database-url URL]

Each command runs ``--runs`` times as a separate process; the figure is the median of its user + system CPU
time (``resource.getrusage(RUSAGE_CHILDREN)``), which a loaded machine inflates less than wall time. ``jobs``
runs against a migrated SQLite database in a scratch folder (the embedded default) unless ``--database-url``
names another. The goal (issue 12) is 0.4 s of CPU for ``--help`` and ``jobs``; the import lines show the
floor that the libraries alone set on this machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.4


def cpu_seconds(cmd: list[str], env: dict[str, str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()

    py = sys.executable
    with tempfile.TemporaryDirectory() as data:
        # An installed command starts from compiled modules (__pycache__, written by its first run): so do these,
        # whatever this shell says (PYTHONDONTWRITEBYTECODE would compile the project's modules on every run).
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLWATCH_") and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(VLWATCH_DATA_DIR=data, PYTHONPATH=str(ROOT))
        if args.database_url:
            env["VLWATCH_DATABASE_URL"] = args.database_url
        for first in (["db", "upgrade"], ["jobs"]):  # untimed: the database, and the modules' compiled code
            subprocess.run([py, "-m", "services", *first], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cases = {
            "python -c pass": [py, "-c", "pass"],
            "import click": [py, "-c", "import click"],
            "import sqlalchemy": [py, "-c", "import sqlalchemy"],
            "import sqlalchemy.orm": [py, "-c", "import sqlalchemy.orm"],
            "import psycopg": [py, "-c", "import psycopg"],
            "vlwatch --help": [py, "-m", "services", "--help"],
            "vlwatch jobs": [py, "-m", "services", "jobs"],
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):  # alternated: a burst of load hits every case alike
            for name, cmd in cases.items():
                samples[name].append(cpu_seconds(cmd, env))
    bare = statistics.median(samples["python -c pass"])
    print(f"{'case':<26}{'CPU s (median)':>16}{'x bare python':>15}")
    for name, values in samples.items():
        m = statistics.median(values)
        goal = f"   goal <= {GOAL_S} s: {'met' if m <= GOAL_S else 'NOT met'}" if name.startswith("vlwatch") else ""
        print(f"{name:<26}{m:>16.3f}{m / bare:>15.1f}{goal}")


if __name__ == "__main__":
    main()
