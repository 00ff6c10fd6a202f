"""Long-running ``vlwatch`` commands in their own processes, for the operations tests: a free loopback port, the
log in a file, readiness by polling, and a stop that always ends the process group."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path
from typing import Callable, Optional

import httpx

from tests.pipeline.conftest import ROOT, VLWATCH, WorkerProcess
from tests.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc(WorkerProcess):
    """``vlwatch ARGS`` with ``env``; ready when ``ready()`` is true (it fails early if the process exits). Stopped
    as a worker process is (the whole process group)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: Callable[["Proc"], bool],
                 timeout: float = 90) -> None:
        self.args, self.log = args, log
        self._fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([*VLWATCH, *args], env=env, cwd=ROOT, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_for(lambda: self._alive() and ready(self), timeout, f"vlwatch {' '.join(args)} ready (log {log})",
                     poll=0.1)
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"vlwatch {' '.join(self.args)} exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text()[-3000:]}")
        return True

    def text(self) -> str:
        return self.log.read_text()


def answers(url: str) -> Callable[[Proc], bool]:
    def ready(_: Proc) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def scrape(url: str) -> str:
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.text


def sample(text: str, name: str, **labels: str) -> Optional[float]:
    """The value of series ``name{labels}`` in a Prometheus text exposition (labels matched exactly, in any
    order); None when absent."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if found == labels:
            return float(m.group(4))
    return None
