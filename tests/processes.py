"""``vlwatch`` commands as separate processes, for tests that run the service as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


class Proc:
    """A ``vlwatch`` command in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str | None = None) -> None:
        self.args, self.log = args, log
        self._fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "services", *args], env=env, cwd=ROOT, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if ready:
            wait_for(lambda: self._has(ready), 90, f"`vlwatch {' '.join(args)}` to be ready (log {log})")

    def _has(self, text: str) -> bool:
        self.check_alive()
        return text in self.log.read_text()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"`vlwatch {' '.join(self.args)}` exited with {self.proc.returncode}:\n"
                                 f"{self.log.read_text()[-4000:]}")

    def children(self) -> list[int]:
        """Pids of this process's children (a prefork worker's pool processes)."""
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL the process group: no cleanup, as a machine losing power."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident memory (VmHWM) of this process and each of its children, in MiB."""
        out = {}
        for pid in (self.proc.pid, *self.children()):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            out[pid] = kb / 1024
        return out
