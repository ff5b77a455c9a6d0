"""Throwaway PostgreSQL and mosquitto servers on free loopback ports.

Used when no database or broker is configured (`patrolgate run`, `demo`, `bench`) and by the test harness, so
nothing ever depends on a service that happens to run on the machine. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` user in a data folder that user owns; mosquitto started as root would
drop to the ``mosquitto`` user, so its config says ``user root`` instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EmbeddedMosquitto",
    "EmbeddedPostgres",
    "ServiceError",
    "find_postgres_bin",
    "free_port",
    "timescaledb_available",
]

_PG_BIN_CANDIDATES = ("/usr/lib/postgresql/{v}/bin",)
_PG_VERSIONS = ("17", "16", "15")


class ServiceError(RuntimeError):
    """A throwaway service could not be started; the message says what to install or check."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_postgres_bin() -> Path:
    """The folder with initdb/pg_ctl/postgres: PATROLGATE_PG_BIN, the Debian layout, or PATH."""
    env = os.environ.get("PATROLGATE_PG_BIN")
    if env:
        return Path(env)
    for version in _PG_VERSIONS:
        for pattern in _PG_BIN_CANDIDATES:
            path = Path(pattern.format(v=version))
            if (path / "initdb").exists():
                return path
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ServiceError(
        "PostgreSQL server binaries not found (initdb); install postgresql (>= 15) "
        "or set PATROLGATE_PG_BIN to the folder holding initdb and pg_ctl"
    )


def timescaledb_available(bin_dir: Path | None = None) -> bool:
    """True when the TimescaleDB extension is installed for this PostgreSQL server."""
    bin_dir = bin_dir or find_postgres_bin()
    try:
        sharedir = subprocess.run(
            [str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sharedir = ""
    candidates = [Path(sharedir) / "extension"] if sharedir else []
    candidates += [Path(f"/usr/share/postgresql/{v}/extension") for v in _PG_VERSIONS]
    return any((c / "timescaledb.control").exists() for c in candidates)


def _service_user() -> str | None:
    """The unprivileged user to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise ServiceError("running as root and no 'postgres' user exists to run PostgreSQL as")


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in a temporary folder, started with initdb + pg_ctl.

    ``timescaledb=None`` preloads the extension when it is installed; ``False`` never does.
    """

    timescaledb: bool | None = None
    port: int = 0
    base_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    user: str = "patrolgate"
    dbname: str = "patrolgate"
    _owner: str | None = field(default=None, init=False, repr=False)
    _bin: Path | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)

    @property
    def data_dir(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def uses_timescaledb(self) -> bool:
        return bool(self.timescaledb)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), capture_output=True, text=True, check=check, user=self._owner, cwd="/"
        )

    def start(self) -> EmbeddedPostgres:
        self._bin = find_postgres_bin()
        if self.timescaledb is None:
            self.timescaledb = timescaledb_available(self._bin)
        self._owner = _service_user()
        self._tmp = Path(tempfile.mkdtemp(prefix="patrolgate-pg-", dir=self.base_dir))
        if self._owner:
            entry = pwd.getpwnam(self._owner)
            os.chown(self._tmp, entry.pw_uid, entry.pw_gid)
        self.port = self.port or free_port()
        try:
            self._run(
                str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                "--auth=trust", "--encoding=UTF8", "--no-sync", "--locale=C",
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceError(f"initdb failed: {exc.stderr.strip()}") from exc
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self._tmp}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "100",
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "logging_collector": "off",
        }
        if self.timescaledb:
            conf["shared_preload_libraries"] = "'timescaledb'"
            conf["timescaledb.telemetry_level"] = "off"
        conf.update(self.settings)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write("\n# patrolgate embedded\n")
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        self.start_server()
        self._run(
            str(self._bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.dbname
        )
        return self

    def start_server(self) -> None:
        """Start (or restart after `stop_server`) the server process and wait until it accepts connections."""
        assert self._bin is not None
        log = self._tmp / "server.log" if self._tmp else None
        try:
            self._run(
                str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log), "-w", "-t", "60", "start"
            )
        except subprocess.CalledProcessError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise ServiceError(f"PostgreSQL did not start: {exc.stderr.strip()} {tail}") from exc

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server but keep its data, to test what happens when the database goes away."""
        if self._bin and self._tmp and (self.data_dir / "postmaster.pid").exists():
            self._run(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        self.stop_server("immediate")
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedMosquitto:
    """A mosquitto broker on a free loopback port with its own config.

    ``passwords`` maps user -> password (then anonymous access is refused); ``acl`` is the text of an ACL file.
    Persistence is on so a broker restart keeps queued QoS 1 messages, as a production broker would; it is
    also written every ``autosave_interval_s`` so that a crash loses at most that much. mosquitto writes its
    whole store each time, and stops delivering meanwhile: with a 128 MB backlog queued that was a stall of
    100-200 ms every second, so the benchmark uses mosquitto's own default (30 minutes).
    """

    port: int = 0
    passwords: dict[str, str] | None = None
    acl: str | None = None
    extra_config: str = ""
    autosave_interval_s: int = 1
    _tmp: Path | None = field(default=None, init=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> EmbeddedMosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise ServiceError("mosquitto not found; install it (apt-get install -y mosquitto)")
        self._binary = binary
        self._tmp = Path(tempfile.mkdtemp(prefix="patrolgate-mqtt-"))
        self.port = self.port or free_port()
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self._tmp}/",
            f"autosave_interval {self.autosave_interval_s}",
            "max_queued_messages 0",
            # Not 0 ("unlimited"): mosquitto 2.0 then stops honouring an MQTT 5 client's Receive Maximum after
            # the first PUBACKs (seen here: 20,000 unacknowledged messages sent to a client that asked for 5,000).
            # MQTT 5 clients get their own Receive Maximum; this is the window of MQTT 3.1.1 clients.
            "max_inflight_messages 1000",
            "max_keepalive 600",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.passwords is not None:
            pwfile = self._tmp / "passwd"
            pwfile.write_text("")
            for user, password in self.passwords.items():
                subprocess.run(
                    [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(pwfile), user,
                     password],
                    check=True, capture_output=True,
                )
            pwfile.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self._tmp / "acl"
            aclfile.write_text(self.acl)
            aclfile.chmod(0o600)
            lines.append(f"acl_file {aclfile}")
        conf = self._tmp / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
        self._conf = conf
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart after `stop_server`) the broker and wait for its port."""
        self._log = open(self._tmp / "broker.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen([self._binary, "-c", str(self._conf)], stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"mosquitto exited at start: {(self._tmp / 'broker.log').read_text(errors='replace')[-1500:]}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise ServiceError("mosquitto did not open its port within 15 s")

    def stop_server(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file) but keep its folder."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        self.stop_server()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EmbeddedMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
