"""The generated evaluation set (scripts/make_evalset.py), made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.make_evalset import build


@pytest.fixture(scope="session")
def evalset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default set: six close-up labels and sixteen camera scenes."""
    folder = tmp_path_factory.mktemp("evalset")
    build(folder)
    return folder


@pytest.fixture(scope="session")
def small_evalset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six close-up labels and two scenes: enough for OCR twice within the suite's time."""
    folder = tmp_path_factory.mktemp("evalset_small")
    build(folder, scenes=2)
    return folder
