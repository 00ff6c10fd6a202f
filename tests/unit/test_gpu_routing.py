"""Which task messages the GPU worker's scheduler serves (``workers.gpu.scheduled``): those of a queue whose
profiles all run a VL2 analyzer, while ``VLWATCH_VL2_SCHEDULER`` is on; every other queue keeps the batch path."""

from __future__ import annotations

from typing import Optional

import pytest
import yaml

from services.config import parse_config
from services.settings import Settings
from workers.gpu import scheduled
from workers.runtime import Runtime

CONFIG = {"profiles": {
    "shelf": {"analyzers": ["barcode", "ocr"]},  # cpu
    "dock": {"analyzers": ["vl2-ground", "vl2-ask"], "phrases": ["pallet"],
             "checks": {"exit": {"question": "Is the exit blocked?", "kind": "yes_no"}}},  # gpu
    "labels": {"analyzers": ["vl2-ocr", "barcode"]},  # gpu: a CPU analyzer beside a VL2 one
    "mixed-a": {"analyzers": ["vl2-ocr"], "queue": "mixed"},
    "mixed-b": {"analyzers": ["barcode"], "queue": "mixed"},
}}


@pytest.mark.parametrize(("queue", "on", "expected"), [
    ("gpu", True, True), ("gpu", False, False), ("cpu", True, False), ("mixed", True, False), ("none", True, False),
    (None, True, False)])
def test_scheduled_queues(queue: Optional[str], on: bool, expected: bool) -> None:
    rt = Runtime(Settings(vl2_scheduler=on), parse_config(yaml.safe_dump(CONFIG)), store=None)
    assert scheduled(rt, queue) is expected
