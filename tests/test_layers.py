"""The shape of the code: the import layers of pyproject.toml's import-linter contracts hold, and modules stay
small enough to read in one sitting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "services", "workers", "connectors")
MAX_LINES = 350
LONG_REASON = "Why this module is long:"


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency: pip install -e '.[test]'"
    run = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_modules_are_short_or_say_why() -> None:
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > MAX_LINES and LONG_REASON not in text[:3000]:
                long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, (f"modules over {MAX_LINES} lines without '{LONG_REASON} ...' in their opening comment: "
                      + ", ".join(long))
