"""Private PostgreSQL, Redis and SeaweedFS servers for one chaos test: their own loopback ports and folders (under
``.stack/`` of the checkout, where the postgres user can reach them), started with ``tests.stack``'s functions,
stopped and restarted at will, removed at the end. The shared servers of ``tests.stack`` (used by other test
sessions at the same time) and the machine's own services are never touched."""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests import stack


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((stack.HOST, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class PrivateServers:
    root: Path = field(default_factory=lambda: stack.STACK / f"chaos-{uuid.uuid4().hex[:8]}")
    restarts: dict[str, list[float]] = field(default_factory=lambda: {"postgres": [], "redis": [], "s3": []})

    def __post_init__(self) -> None:
        ports = free_ports(3 + len(stack.WEED_PORTS))
        self.pg_port, self.redis_port, self.s3_port = ports[:3]
        self.weed_ports = dict(zip(stack.WEED_PORTS, ports[3:]))

    # ---- addresses ------------------------------------------------------------------------------------------
    @property
    def pg_url(self) -> str:
        return f"postgresql+psycopg://postgres@{stack.HOST}:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://{stack.HOST}:{self.redis_port}/0"

    @property
    def s3_endpoint(self) -> str:
        return f"{stack.HOST}:{self.s3_port}"

    # ---- life -----------------------------------------------------------------------------------------------
    def start(self, name: str) -> None:
        if name == "postgres":
            stack.start_postgres(self.pg_port, self.root / "postgres")
        elif name == "redis":
            stack.start_redis(self.redis_port, self.root / "redis")
        else:
            stack.start_s3(self.s3_port, self.root / "seaweedfs", self.weed_ports)

    def stop(self, name: str) -> None:
        if name == "postgres":
            stack.stop_postgres(self.root / "postgres", mode="immediate")  # as a crash: connections cut
        else:
            stack.stop_pidfile(self.root / f"{'redis' if name == 'redis' else 'seaweedfs'}.pid", sig=9)

    def restart(self, name: str, down_for: float) -> float:
        """Stop ``name``, keep it down ``down_for`` seconds, start it; returns when it answers again (the time)."""
        self.stop(name)
        time.sleep(down_for)  # noqa: the outage itself (nothing to wait on)
        self.start(name)
        back = time.monotonic()
        self.restarts[name].append(back)
        return back

    def __enter__(self) -> "PrivateServers":
        self.root.mkdir(parents=True)
        for name in ("postgres", "redis", "s3"):
            self.start(name)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in ("postgres", "redis", "s3"):
            self.stop(name)
        shutil.rmtree(self.root, ignore_errors=True)
